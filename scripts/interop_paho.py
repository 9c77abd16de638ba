#!/usr/bin/env python3
"""Interop checks against a running Warden with paho-mqtt 2.x (Eclipse Paho, Python).

    python3 scripts/interop_paho.py PORT WSPORT USER PASS

PORT is a plain MQTT listener, WSPORT a WebSocket listener serving /mqtt; USER/PASS is a valid
login, and anonymous clients must be refused. Every check runs over both transports with
MQTT 3.1.1 and MQTT 5.0. Prints `ok   NAME` or `FAIL NAME` per check, then `# paho: N passed,
M failed`; exits 1 if any check failed. All waiting is on threading primitives with timeouts.
"""

import queue
import re
import socket
import sys
import threading
import uuid

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError as e:  # paho 1.x has no paho.mqtt.enums
    print(f"FAIL paho-mqtt 2.x importable ({e})")
    sys.exit(1)

HOST = "127.0.0.1"
WAIT = 10.0  # seconds for any single expected event

# MQTT 3.1.1 CONNACK return codes by the name paho gives the equivalent MQTT 5 reason code.
V3_CONNACK_BY_NAME = {
    "Success": 0,
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}


class CheckFailed(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise CheckFailed(msg)


class Peer:
    """A paho client with its callbacks turned into waitable state."""

    def __init__(self, transport, port, protocol, client_id=None, username=None, password=None,
                 clean=True, session_expiry=None, will=None):
        self.transport, self.port, self.protocol = transport, port, protocol
        self.clean, self.session_expiry = clean, session_expiry
        self.client_id = client_id or "pi-" + uuid.uuid4().hex[:12]
        kwargs = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        # no automatic reconnection: every connection a check makes is one it asked for
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=protocol, transport=transport,
                             reconnect_on_failure=False, **kwargs)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, props = will
            self.c.will_set(topic, payload, qos=qos, retain=False, properties=props)
        self.cond = threading.Condition()
        self.connack = None            # (reason_code, session_present, properties)
        self.raw_connack_rc = None     # MQTT 3.x return code as sent, from paho's debug log
        self.disconnected = threading.Event()
        self.subacks = {}              # mid -> [granted QoS / reason code values]
        self.messages = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_log = self._on_log

    # --- callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            if self.connack is None:
                self.connack = (reason_code, bool(flags.session_present), properties)
                self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.cond.notify_all()

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _on_log(self, client, userdata, level, buf):
        m = re.match(r"Received CONNACK \((\S+), (\d+)\)$", buf)
        if m:
            self.raw_connack_rc = int(m.group(2))

    # --- driving
    def connect(self, expect_ok=True):
        kwargs = {}
        if self.protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = props
        try:
            self.c.connect(HOST, self.port, keepalive=30, **kwargs)
        except Exception as e:  # refused TCP connection, failed WebSocket upgrade, ...
            raise CheckFailed(f"connect() raised {type(e).__name__}: {e}")
        self.c.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None, WAIT)
        need(self.connack is not None, f"no CONNACK within {WAIT}s")
        if expect_ok:
            rc = self.connack[0]
            need(not rc.is_failure, f"connection refused: {rc} ({self.connack_code()})")
        return self.connack

    def connack_code(self):
        """The CONNACK code as the broker sent it: MQTT 5 reason code, or MQTT 3.x return code."""
        rc = self.connack[0]
        if self.protocol == mqtt.MQTTv5:
            return rc.value
        if self.raw_connack_rc is not None:
            return self.raw_connack_rc
        return V3_CONNACK_BY_NAME.get(rc.getName(), rc.value)

    def subscribe(self, topic, qos):
        result, mid = self.c.subscribe(topic, qos)
        need(result == mqtt.MQTT_ERR_SUCCESS, f"subscribe() failed: {result}")
        with self.cond:
            self.cond.wait_for(lambda: mid in self.subacks, WAIT)
            granted = self.subacks.get(mid)
        need(granted is not None, f"no SUBACK for {topic!r} within {WAIT}s")
        need(granted == [qos], f"SUBACK for {topic!r} at QoS {qos} granted {granted}")

    def publish(self, topic, payload, qos, properties=None):
        info = self.c.publish(topic, payload, qos=qos, properties=properties)
        need(info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish() failed: {info.rc}")
        if qos > 0:
            info.wait_for_publish(WAIT)
            need(info.is_published(), f"QoS {qos} publish to {topic!r} not acknowledged within {WAIT}s")

    def expect(self, topic, what="message"):
        """Next message on topic (messages on other topics are an error)."""
        try:
            m = self.messages.get(timeout=WAIT)
        except queue.Empty:
            raise CheckFailed(f"no {what} on {topic!r} within {WAIT}s") from None
        need(m.topic == topic, f"expected {what} on {topic!r}, got one on {m.topic!r}")
        return m

    def disconnect(self):
        """Clean DISCONNECT, waiting until paho has closed the connection."""
        self.c.disconnect()
        self.disconnected.wait(WAIT)
        self.c.loop_stop()

    def drop(self):
        """End the network connection with no DISCONNECT packet, as a crashed client would.

        Shutting the TCP socket down (under the WebSocket layer too: no close frame) leaves
        paho's thread to notice the lost connection and exit without sending anything."""
        sock = self.c.socket()
        need(sock is not None, "no socket to drop")
        getattr(sock, "_socket", sock).shutdown(socket.SHUT_RDWR)
        need(self.disconnected.wait(WAIT), "paho did not notice its own dropped connection")
        self.c.loop_stop()

    def close_quietly(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        try:
            self.c.loop_stop()
        except Exception:
            pass


class Suite:
    def __init__(self, port, wsport, user, password):
        self.ports = {"tcp": port, "websockets": wsport}
        self.user, self.password = user, password
        self.passed = self.failed = 0
        self.peers = []

    def peer(self, transport, protocol, login=True, **kw):
        if login:
            kw.setdefault("username", self.user)
            kw.setdefault("password", self.password)
        p = Peer(transport, self.ports[transport], protocol, **kw)
        self.peers.append(p)
        return p

    def run(self, name, fn, *args):
        try:
            fn(*args)
        except CheckFailed as e:
            self.failed += 1
            print(f"FAIL {name}\n    {e}", flush=True)
        except Exception as e:  # a bug in this script still shows up as a failure, with its cause
            self.failed += 1
            print(f"FAIL {name}\n    unexpected {type(e).__name__}: {e}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name}", flush=True)
        finally:
            for p in self.peers:
                p.close_quietly()
            self.peers = []

    @staticmethod
    def topic(tag, what):
        return f"interop/paho/{tag}/{what}/{uuid.uuid4().hex[:8]}"

    # --- checks; `t` is the transport, `v` the protocol, `tag` a label for topics

    def connect_with_credentials(self, t, v, tag):
        p = self.peer(t, v)
        rc, session_present, _ = p.connect()
        need(p.connack_code() == 0, f"CONNACK code {p.connack_code()}, expected 0")
        need(not session_present, "session present on a clean start")

    def qos_round_trip(self, t, v, tag):
        topic = self.topic(tag, "qos")
        sub, pub = self.peer(t, v), self.peer(t, v)
        sub.connect()
        sub.subscribe(topic, 2)
        pub.connect()
        pub.publish(topic, b"at-qos-1", 1)
        pub.publish(topic, b"at-qos-2", 2)
        for qos, payload in ((1, b"at-qos-1"), (2, b"at-qos-2")):
            m = sub.expect(topic)
            need(m.payload == payload, f"received {m.payload!r}, expected {payload!r}")
            need(m.qos == qos, f"{payload!r} delivered at QoS {m.qos}, expected {qos}")
            need(not m.retain, f"{payload!r} delivered with the retain flag")

    def refused(self, t, v, tag, username, password, want):
        p = self.peer(t, v, login=False, username=username, password=password)
        p.connect(expect_ok=False)
        code = p.connack_code()
        need(code == want, f"CONNACK code {code:#x}, expected {want:#x}")
        need(p.disconnected.wait(WAIT), "broker kept the connection open after refusing it")

    def session_resume(self, t, v, tag):
        topic = self.topic(tag, "session")
        cid = "ps-" + uuid.uuid4().hex[:12]
        expiry = 300 if v == mqtt.MQTTv5 else None
        first = self.peer(t, v, client_id=cid, clean=(v == mqtt.MQTTv5), session_expiry=expiry)
        _, present, _ = first.connect()
        need(not present, "session present on the first connection")
        first.subscribe(topic, 1)
        first.disconnect()
        pub = self.peer(t, v)
        pub.connect()
        pub.publish(topic, b"while-offline", 1)
        again = self.peer(t, v, client_id=cid, clean=False, session_expiry=expiry)
        _, present, _ = again.connect()
        need(present, "session present is 0 when resuming a stored session")
        m = again.expect(topic, "queued message")
        need(m.payload == b"while-offline", f"received {m.payload!r}")
        need(m.qos == 1, f"queued message delivered at QoS {m.qos}")
        again.disconnect()
        # leave nothing behind: a clean start discards the stored session
        done = self.peer(t, v, client_id=cid, clean=True, session_expiry=0 if expiry else None)
        done.connect()
        done.disconnect()

    def will_on_abrupt_close(self, t, v, tag):
        topic = self.topic(tag, "will")
        watcher = self.peer(t, v)
        watcher.connect()
        watcher.subscribe(topic, 1)
        doomed = self.peer(t, v, will=(topic, b"gone", 1, None))
        doomed.connect()
        doomed.drop()
        m = watcher.expect(topic, "will message")
        need(m.payload == b"gone", f"will payload {m.payload!r}")
        need(m.qos == 1, f"will delivered at QoS {m.qos}")

    def no_will_on_clean_disconnect(self, t, v, tag):
        topic = self.topic(tag, "nowill")
        watcher = self.peer(t, v)
        watcher.connect()
        watcher.subscribe(topic, 1)
        polite = self.peer(t, v, will=(topic, b"should-not-appear", 1, None))
        polite.connect()
        polite.disconnect()
        # Anything the broker published for that DISCONNECT would reach the watcher before a
        # message published afterwards on the same topic.
        marker = self.peer(t, v)
        marker.connect()
        marker.publish(topic, b"marker", 1)
        m = watcher.expect(topic)
        need(m.payload == b"marker", f"received {m.payload!r} before the marker")

    def user_properties(self, t, v, tag):
        topic = self.topic(tag, "props")
        sub, pub = self.peer(t, v), self.peer(t, v)
        sub.connect()
        sub.subscribe(topic, 1)
        pub.connect()
        sent = [("origin", "interop"), ("k", "first"), ("k", "second"), ("ünïcödé", "värde")]
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = sent
        pub.publish(topic, b"with-props", 1, props)
        m = sub.expect(topic)
        got = getattr(m.properties, "UserProperty", None)
        need(got == sent, f"user properties {got!r}, sent {sent!r} (order must be kept)")

    def publish_properties(self, t, v, tag):
        topic = self.topic(tag, "reqresp")
        sub, pub = self.peer(t, v), self.peer(t, v)
        sub.connect()
        sub.subscribe(topic, 1)
        pub.connect()
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.ResponseTopic = topic + "/reply"
        props.CorrelationData = b"\x00\x01corr"
        props.PayloadFormatIndicator = 1
        props.MessageExpiryInterval = 3600
        pub.publish(topic, b'{"a":1}', 1, props)
        m = sub.expect(topic)
        p = m.properties
        for name in ("ContentType", "ResponseTopic", "CorrelationData", "PayloadFormatIndicator"):
            sent, got = getattr(props, name), getattr(p, name, None)
            need(got == sent, f"{name} forwarded as {got!r}, sent {sent!r}")
        left = getattr(p, "MessageExpiryInterval", None)
        need(left is not None and 0 < left <= 3600, f"MessageExpiryInterval forwarded as {left!r}")


def main():
    if len(sys.argv) != 5:
        print(f"usage: {sys.argv[0]} PORT WSPORT USER PASS", file=sys.stderr)
        return 2
    port, wsport, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    s = Suite(port, wsport, user, password)
    wrong = "not-" + password
    for t, tname in (("tcp", "TCP"), ("websockets", "WS")):
        for v, vname in ((mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5")):
            label = f"paho {tname} MQTT {vname}:"
            tag = f"{tname.lower()}-v{vname}"
            v5 = v == mqtt.MQTTv5
            s.run(f"{label} connect with credentials", s.connect_with_credentials, t, v, tag)
            s.run(f"{label} subscribe QoS 2, publish QoS 1 and 2, receive", s.qos_round_trip, t, v, tag)
            s.run(f"{label} wrong password refused (CONNACK {'0x86' if v5 else '4'})",
                  s.refused, t, v, tag, user, wrong, 0x86 if v5 else 4)
            s.run(f"{label} anonymous refused (CONNACK {'0x87' if v5 else '5'})",
                  s.refused, t, v, tag, None, None, 0x87 if v5 else 5)
            s.run(f"{label} session present on resume, queued QoS 1 message delivered"
                  + (" (session expiry 300)" if v5 else " (clean session 0)"), s.session_resume, t, v, tag)
            s.run(f"{label} will published on abrupt socket close", s.will_on_abrupt_close, t, v, tag)
            s.run(f"{label} no will after a clean DISCONNECT", s.no_will_on_clean_disconnect, t, v, tag)
            if v5:
                s.run(f"{label} user properties round trip, order kept", s.user_properties, t, v, tag)
                s.run(f"{label} content type, response topic, correlation data forwarded",
                      s.publish_properties, t, v, tag)
    print(f"# paho: {s.passed} passed, {s.failed} failed (paho-mqtt {paho.mqtt.__version__})")
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
