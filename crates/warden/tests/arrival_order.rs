//! Arrival order across connections (issue 24; docs/ARCHITECTURE.md, "Arrival order"): a
//! SUBSCRIBE whose bytes reached the broker before another client's PUBLISH applies to that
//! PUBLISH, as the Eclipse Paho v5 interoperability tests (`test_subscribe_options`,
//! `test_request_response`) expect: they subscribe with one client and, without waiting for the
//! SUBACK, publish with another. The spec orders only one connection's packets
//! [MQTT-4.6.0-5]; across connections a broker may route a PUBLISH read later than a SUBSCRIBE
//! without it, but clients and test suites expect it not to.
//!
//! The broker runs on its own multi-threaded runtime, as in production; the clients are
//! blocking sockets on the test's thread, as a separate client process would be. Each round
//! writes the SUBSCRIBE of a fresh topic on A, then at once B's PUBLISH; then, once A has its
//! SUBACK and B its PUBACK (the subscription is in force), B publishes a second message. Per
//! topic a subscriber receives one publisher's messages in order [MQTT-4.6.0-5], so A's first
//! PUBLISH of the round tells whether the first message was routed to it: no wait on a
//! timeout decides a miss.
//!
//! Two cases, both ordered: a subscriber that is parked (its SUBSCRIBE resumes it: the parking
//! lot looks at the input and announces it before the connection's task runs) — the case of
//! the Paho tests, whose steps are 0.5 s apart — and a subscriber whose connection runs but
//! whose task has not read its socket yet when the publisher's task reads (tokio polls the
//! task woken last first). In both, the publisher's read is *fresh* (after 1 ms of quiet on
//! its connection), and a fresh read yields once before it routes, which lets the subscriber's
//! task (or the lot's) read and announce first; a publisher streaming back to back does not
//! yield (yielding on every read batch cost ~25 % CPU per message with 50 pairs of
//! connections). Measured on a 2-core machine loaded by other builds (load average 4.6): 1-3
//! of 100 parked rounds and 1-4 of 200 running rounds missed, against 68 and 124 without the
//! yield; but one `.ci/run` on the otherwise idle machine missed 31 of 200 running rounds (the
//! subscriber's task on the other worker, not yet run when the yield returns), so the
//! running-subscriber test stays `#[ignore]`d, a measurement
//! (`cargo test -p warden --test arrival_order -- --ignored --nocapture`). No wait on a
//! timeout decides a miss.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt_codec::{decode, Packet, Protocol, QoS};
use warden_testkit::{connect_packet, publish, subscribe, TestBroker, WAIT};

const V5: Protocol = Protocol::V5;

/// The two tests measure timing: they run one at a time, not against each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Assert that at most `tolerated` of `rounds` missed.
fn assert_few_missed(what: &str, missed: &[u16], rounds: u16, tolerated: usize) {
    eprintln!("arrival order ({what}): {} of {rounds} rounds missed", missed.len());
    assert!(
        missed.len() <= tolerated,
        "{what}: {} of {rounds} first messages not routed to the subscription: rounds {missed:?}",
        missed.len()
    );
}

/// The clients' pause between rounds (a client's think time; Paho's steps are 0.5 s apart):
/// each round starts with both connections waiting for input, not with the broker's threads
/// still busy with the last round's deliveries. It decides nothing: whether a message was
/// missed is read from the order of the packets.
const THINK: Duration = Duration::from_millis(2);

/// A blocking MQTT 5 client (the test's thread is the client process).
struct Client {
    s: TcpStream,
    buf: BytesMut,
}

impl Client {
    fn connect(addr: SocketAddr, id: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut c = Client { s, buf: BytesMut::new() };
        c.send(&Packet::Connect(Box::new(connect_packet(V5, id, true))));
        match c.recv() {
            Packet::Connack(a) if a.reason_code.is_success() => c,
            other => panic!("{id}: expected a successful CONNACK, got {other:?}"),
        }
    }

    /// One `write` per packet, as a client library does.
    fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        p.encode(V5, &mut b);
        self.s.write_all(&b).unwrap();
    }

    /// The next packet; panics after [`WAIT`] without one.
    fn recv(&mut self) -> Packet {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(p) = decode(&mut self.buf, V5, u32::MAX).unwrap() {
                return p;
            }
            assert!(Instant::now() < deadline, "no packet within {WAIT:?}");
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read within the wait");
            assert!(n > 0, "the broker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One round on `topic`: A subscribes and B publishes at once; true when A received that
/// first message.
fn round(a: &mut Client, b: &mut Client, topic: &str, id: u16) -> bool {
    a.send(&subscribe(id, topic, QoS::AtMostOnce));
    b.send(&publish(topic, QoS::AtLeastOnce, id, b"first"));
    let mut suback = false;
    let mut first = false;
    match b.recv() {
        Packet::PubAck(ack) if ack.packet_id == id => {}
        other => panic!("B: expected PUBACK {id}, got {other:?}"),
    }
    while !suback {
        match a.recv() {
            Packet::SubAck(s) if s.packet_id == id => suback = true,
            Packet::Publish(p) if p.topic.as_str() == topic && p.payload.as_ref() == b"first" => first = true,
            other => panic!("A: unexpected {other:?}"),
        }
    }
    // The subscription is in force (SUBACK) and the first message routed (PUBACK): the second
    // reaches A, after the first if that was routed to A.
    b.send(&publish(topic, QoS::AtLeastOnce, id, b"second"));
    match b.recv() {
        Packet::PubAck(ack) if ack.packet_id == id => {}
        other => panic!("B: expected PUBACK {id}, got {other:?}"),
    }
    loop {
        match a.recv() {
            Packet::Publish(p) if p.topic.as_str() == topic && p.payload.as_ref() == b"first" => first = true,
            Packet::Publish(p) if p.topic.as_str() == topic && p.payload.as_ref() == b"second" => return first,
            other => panic!("A: unexpected {other:?}"),
        }
    }
}

/// The broker on a runtime of its own, multi-threaded like the binary's (main.rs).
fn broker(config: &str) -> (tokio::runtime::Runtime, TestBroker) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let b = rt.block_on(TestBroker::with_config(config));
    (rt, b)
}

#[test]
#[ignore = "measures a race the broker narrows but does not close (a running subscriber): see the module doc"]
fn a_subscribe_written_before_a_publish_applies_to_it() {
    const ROUNDS: u16 = 200;
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (rt, broker) = broker("[auth]\nallow_anonymous = true\n");
    let mut a = Client::connect(broker.addr(), "arrival-sub");
    let mut b = Client::connect(broker.addr(), "arrival-pub");
    let missed: Vec<u16> = (1..=ROUNDS)
        .filter(|&i| {
            std::thread::sleep(THINK);
            !round(&mut a, &mut b, &format!("arrival/{i}"), i)
        })
        .collect();
    // Measured on 2 cores loaded by other builds (load average 4.6): 1-4 of 200 with the
    // ordering (a fresh PUBLISH yields), 124 without; but 31 of 200 in one `.ci/run` on the
    // otherwise idle machine: not closed, so a measurement, not a gate.
    assert_few_missed("running subscriber", &missed, ROUNDS, 12);
    rt.block_on(broker.stop());
}

/// The pattern of Paho's `test_request_response`: the subscriber has been quiet long enough to
/// park (`conn::park`; its SUBSCRIBE resumes it through the parking lot) while the
/// publisher's connection runs.
#[test]
fn a_parked_subscribers_subscribe_applies_to_a_publish_written_after_it() {
    const ROUNDS: u16 = 100;
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (rt, broker) = broker(
        "[auth]\nallow_anonymous = true\n[limits]\nidle_park_after = \"20ms\"\n\
         # a fixed delay: each round waits for both to park, which a learnt delay would stretch\n\
         idle_park_max = \"20ms\"\n",
    );
    let parked = |n: usize| {
        let deadline = Instant::now() + WAIT;
        while broker.server.parked_connections() != n {
            assert!(Instant::now() < deadline, "expected {n} parked, {} are", broker.server.parked_connections());
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut a = Client::connect(broker.addr(), "arrival-sub");
    let mut b = Client::connect(broker.addr(), "arrival-pub");
    let mut missed = Vec::new();
    for i in 1..=ROUNDS {
        parked(2);
        // B runs again (for `idle_park_after`), A stays parked.
        b.send(&Packet::PingReq);
        assert_eq!(b.recv(), Packet::PingResp);
        parked(1);
        std::thread::sleep(THINK);
        if !round(&mut a, &mut b, &format!("arrival/parked/{i}"), i) {
            missed.push(i);
        }
    }
    // Measured: 0-4 with the ordering, 55-68 without.
    assert_few_missed("parked subscriber", &missed, ROUNDS, 10);
    rt.block_on(broker.stop());
}
