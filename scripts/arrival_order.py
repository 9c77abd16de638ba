#!/usr/bin/env python3
"""Arrival order across connections (issue 24) with paho-mqtt 2.x, the pattern of the Eclipse
Paho v5 interoperability tests `test_subscribe_options` and `test_request_response`: client A
subscribes and, without waiting for the SUBACK, client B publishes to the topic at once.

    python3 scripts/arrival_order.py PORT [ROUNDS] [PAUSE]

PORT is a plain MQTT listener on 127.0.0.1 allowing anonymous clients (Warden or Mosquitto);
ROUNDS (default 100) rounds, each on a fresh topic; PAUSE (default 0.1 s) between rounds, as
the interoperability tests wait between steps (long enough for Warden to park both idle
connections: its first park comes 20 ms after the CONNACK; 0 keeps them running).

Both clients are driven from this one thread without paho's network thread, so that
`subscribe` and `publish` write their packet before they return, in that order, as the
interoperability tests' own client does; their sockets are TCP_NODELAY (else Nagle holds a
SUBSCRIBE written right after an acknowledgement until that is ACKed). A round: A's SUBSCRIBE, B's QoS 1 PUBLISH "first";
once A has its SUBACK and B its PUBACK, B publishes "second". A subscriber receives one
publisher's messages on a topic in order [MQTT-4.6.0-5], so "second" arriving without "first"
before it is a miss: no timeout decides one. Prints `misses: N of ROUNDS`; exits 1 if N > 0.
"""

import socket
import sys
import time
import uuid

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError as e:  # paho 1.x has no paho.mqtt.enums
    print(f"paho-mqtt 2.x is needed ({e})")
    sys.exit(2)

HOST = "127.0.0.1"
WAIT = 10.0  # seconds for any single expected event


class Peer:
    """A paho MQTT 5 client whose events are collected as they are handled."""

    def __init__(self, port, name):
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        self.connected = False
        self.subacks = set()
        self.pubacks = set()
        self.messages = []
        self.c.on_connect = lambda c, u, f, rc, p: setattr(self, "connected", not rc.is_failure)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.add(mid)
        self.c.on_publish = lambda c, u, mid, rc, p: self.pubacks.add(mid)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.c.connect(HOST, port, keepalive=60, clean_start=True)
        # Without TCP_NODELAY a SUBSCRIBE written right after the PUBACK of the last round's
        # message waits in the client's kernel for that segment's (delayed) ACK, some 40 ms: it
        # would reach the broker after B's PUBLISH, against any broker.
        self.c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        until([self], lambda: self.connected, "CONNACK")

    def close(self):
        self.c.disconnect()


def until(peers, cond, what):
    """Run the peers' network loops until `cond()` holds (at most WAIT seconds)."""
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        for p in peers:
            p.c.loop(timeout=0.001)


def round_(a, b, topic):
    """One round on a fresh topic; True when A received the first message."""
    a.messages.clear()
    sub_mid = a.c.subscribe(topic, qos=1)[1]          # written before it returns
    first = b.c.publish(topic, b"first", qos=1).mid   # written right after it
    until([a, b], lambda: sub_mid in a.subacks and first in b.pubacks, "SUBACK and PUBACK")
    second = b.c.publish(topic, b"second", qos=1).mid
    until([a, b], lambda: second in b.pubacks and (topic, b"second") in a.messages, "the second message")
    got = [p for t, p in a.messages if t == topic]
    return got.index(b"second") > 0 and got[0] == b"first"


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    port = int(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    a, b = Peer(port, "arrival-sub"), Peer(port, "arrival-pub")
    run = uuid.uuid4().hex[:8]
    missed = []
    for i in range(1, rounds + 1):
        if pause > 0:
            time.sleep(pause)
        if not round_(a, b, f"arrival/{run}/{i}"):
            missed.append(i)
    a.close()
    b.close()
    print(f"misses: {len(missed)} of {rounds}" + (f" (rounds {missed})" if missed else ""))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
