#!/usr/bin/env python3
"""TLS interop checks against a running Warden with paho-mqtt 2.x: client certificates.

    python3 scripts/interop_paho_tls.py MQTTS_PORT WSS_PORT CAFILE PKI1 PKI2

MQTTS_PORT is an mqtts listener, WSS_PORT a wss listener serving /mqtt; both require a client
certificate (client_cert = "required", identity_from_cert = "cn") and the broker runs with
`[identity] client_id_must_match = "exact"`. CAFILE verifies the server certificate (which
names 127.0.0.1). PKI1 holds dev-001.pem/.key and dev-002.pem/.key (`warden cert client`), PKI2
holds two-cn.pem/.key, a certificate whose subject is /CN=admin/CN=dev-102. Every check runs over
both transports with MQTT 3.1.1 and MQTT 5.0. Output as in interop_paho.py: `ok   NAME` /
`FAIL NAME` per check, then `# paho TLS: N passed, M failed`; exits 1 if any check failed.
"""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository for the import below
from interop_paho import WAIT, Peer, Suite, mqtt, need, paho  # noqa: E402


class TlsPeer(Peer):
    """A Peer over TLS, presenting the client certificate `cert` (a path without .pem/.key)."""

    def __init__(self, transport, port, protocol, cafile, cert=None, **kw):
        super().__init__(transport, port, protocol, **kw)
        if cert is None:
            self.c.tls_set(ca_certs=cafile)
        else:
            self.c.tls_set(ca_certs=cafile, certfile=cert + ".pem", keyfile=cert + ".key")


class TlsSuite(Suite):
    def __init__(self, port, wsport, cafile, pki1, pki2):
        super().__init__(port, wsport, None, None)
        self.cafile = cafile
        self.certs = {
            "dev-001": os.path.join(pki1, "dev-001"),
            "dev-002": os.path.join(pki1, "dev-002"),
            "two-cn": os.path.join(pki2, "two-cn"),
        }

    def peer(self, transport, protocol, cert=None, **kw):
        p = TlsPeer(transport, self.ports[transport], protocol, self.cafile,
                    self.certs[cert] if cert else None, **kw)
        self.peers.append(p)
        return p

    # --- checks; `t` is the transport, `v` the protocol, `tag` a label for topics

    def cert_round_trip(self, t, v, tag):
        """dev-002 subscribes at QoS 1, dev-001 publishes at QoS 1: no password anywhere."""
        topic = self.topic(tag, "tls")
        sub = self.peer(t, v, cert="dev-002", client_id="dev-002")
        pub = self.peer(t, v, cert="dev-001", client_id="dev-001")
        sub.connect()
        need(sub.connack_code() == 0, f"dev-002: CONNACK code {sub.connack_code()}, expected 0")
        sub.subscribe(topic, 1)
        pub.connect()
        pub.publish(topic, b"over-tls", 1)
        m = sub.expect(topic)
        need(m.payload == b"over-tls", f"received {m.payload!r}")
        need(m.qos == 1, f"delivered at QoS {m.qos}, expected 1")

    def cert_refused(self, t, v, tag, cert, client_id, want):
        p = self.peer(t, v, cert=cert, client_id=client_id)
        p.connect(expect_ok=False)
        code = p.connack_code()
        need(code == want, f"CONNACK code {code:#x}, expected {want:#x}")
        need(p.disconnected.wait(WAIT), "broker kept the connection open after refusing it")

    def no_cert_refused(self, t, v, tag):
        """Without a client certificate the handshake fails: connect() raises, or (TLS 1.3,
        where the client finishes first) the connection is closed with no CONNACK."""
        p = self.peer(t, v, client_id="dev-001")
        try:
            p.c.connect("127.0.0.1", p.port, keepalive=30)
        except Exception:
            return  # refused during the handshake
        p.c.loop_start()
        need(p.disconnected.wait(WAIT), f"connection still open {WAIT}s after a certificate-less handshake")
        need(p.connack is None, f"CONNACK received without a client certificate: {p.connack}")


def main():
    if len(sys.argv) != 6:
        print(f"usage: {sys.argv[0]} MQTTS_PORT WSS_PORT CAFILE PKI1 PKI2", file=sys.stderr)
        return 2
    port, wsport = int(sys.argv[1]), int(sys.argv[2])
    s = TlsSuite(port, wsport, *sys.argv[3:6])
    for t, tname in (("tcp", "mqtts"), ("websockets", "wss")):
        for v, vname in ((mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5")):
            label = f"paho {tname} MQTT {vname}:"
            tag = f"{tname}-v{vname}"
            v5 = v == mqtt.MQTTv5
            s.run(f"{label} dev-002 (client cert, no password) QoS 1 round trip", s.cert_round_trip, t, v, tag)
            s.run(f"{label} two-CN certificate refused (CONNACK {'0x87' if v5 else '5'})",
                  s.cert_refused, t, v, tag, "two-cn", "dev-102", 0x87 if v5 else 5)
            s.run(f"{label} dev-001 as client id dev-002 refused (CONNACK {'0x85' if v5 else '2'})",
                  s.cert_refused, t, v, tag, "dev-001", "dev-002", 0x85 if v5 else 2)
            s.run(f"{label} no client certificate refused in the handshake", s.no_cert_refused, t, v, tag)
    print(f"# paho TLS: {s.passed} passed, {s.failed} failed (paho-mqtt {paho.mqtt.__version__})")
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
