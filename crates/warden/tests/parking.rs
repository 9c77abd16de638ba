//! Parked connections (`idle_park_after`, `warden::conn::park`): an idle plain-TCP connection gives
//! up its task, and everything that would have woken the task resumes it. Each test parks
//! its connections first (waiting on the broker's count of parked connections), then checks
//! that the protocol behaves exactly as for a connection that never parked.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use mqtt_codec::{Disconnect, Packet, Properties, Protocol, PubAck, QoS, ReasonCode};
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker, WAIT};

const V5: Protocol = Protocol::V5;
const V3: Protocol = Protocol::V311;

async fn parking_broker() -> TestBroker {
    parking_broker_with("").await
}

/// A broker whose connections park after 50 ms of quiet, with more `[limits]` lines. Unless
/// they set `idle_park_max`, the delay is fixed: tests that wait for a park, act, and wait for
/// the next would otherwise teach it to grow (each period they show is the delay plus a
/// moment).
async fn parking_broker_with(limits: &str) -> TestBroker {
    let fixed = if limits.contains("idle_park_max") { "" } else { "idle_park_max = \"50ms\"\n" };
    TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = true\n[limits]\nidle_park_after = \"50ms\"\n{fixed}{limits}"
    ))
    .await
}

/// Wait until exactly `n` connections are parked (the broker parks after 50 ms of quiet).
async fn until_parked(b: &TestBroker, n: usize) {
    let deadline = Instant::now() + WAIT;
    while b.server.parked_connections() != n {
        assert!(Instant::now() < deadline, "expected {n} parked, {} are", b.server.parked_connections());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

#[tokio::test]
async fn a_parked_subscriber_receives_and_parks_again() {
    let b = parking_broker().await;
    let (mut sub, _) = connected(b.addr(), connect_packet(V5, "sleeper", true)).await;
    sub.subscribe(1, "fleet/+/temp", QoS::AtLeastOnce).await;
    until_parked(&b, 1).await;
    // A delivery resumes it: QoS 0 and QoS 1, in order [MQTT-4.6.0-5].
    let (mut publ, _) = connected(b.addr(), connect_packet(V3, "sensor", true)).await;
    publ.send(&publish("fleet/7/temp", QoS::AtMostOnce, 0, b"21.5")).await;
    publ.send(&publish("fleet/7/temp", QoS::AtLeastOnce, 9, b"21.6")).await;
    assert_eq!(publ.recv().await, Recv::Packet(Packet::PubAck(PubAck::new(9))));
    assert_eq!(sub.expect_publish().await.payload.as_ref(), b"21.5");
    let p = sub.expect_publish().await;
    assert_eq!((p.payload.as_ref(), p.qos), (b"21.6".as_ref(), QoS::AtLeastOnce));
    sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    // Both go quiet and park again; the next delivery still arrives.
    until_parked(&b, 2).await;
    publ.send(&publish("fleet/8/temp", QoS::AtMostOnce, 0, b"19.0")).await;
    assert_eq!(sub.expect_publish().await.payload.as_ref(), b"19.0");
}

#[tokio::test]
async fn a_parked_connection_reads_its_next_packet() {
    // [MQTT-3.12.4-1]: a PINGREQ is answered, parked or not.
    let b = parking_broker().await;
    let (mut c, _) = connected(b.addr(), connect_packet(V3, "pinger", true)).await;
    for _ in 0..3 {
        until_parked(&b, 1).await;
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Recv::Packet(Packet::PingResp));
    }
}

#[tokio::test]
async fn a_parked_connection_times_out_on_its_keep_alive() {
    // [MQTT-3.1.2-24]: no packet within 1.5 × keep alive closes it (v5: DISCONNECT 0x8D),
    // and not earlier.
    let b = parking_broker().await;
    let mut cp = connect_packet(V5, "quiet", true);
    cp.keep_alive = 1;
    let start = Instant::now();
    let (mut c, _) = connected(b.addr(), cp).await;
    until_parked(&b, 1).await;
    let seen = c.expect_closed_within(Duration::from_secs(5)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
    assert!(start.elapsed() >= Duration::from_millis(1400), "closed after {:?}", start.elapsed());
    until_parked(&b, 0).await;
}

#[tokio::test]
async fn a_parked_session_is_taken_over() {
    // [MQTT-3.1.4-3]: a second CONNECT with the client id closes the first (v5: 0x8E).
    let b = parking_broker().await;
    let (mut old, _) = connected(b.addr(), connect_packet(V5, "twin", false)).await;
    until_parked(&b, 1).await;
    let (_new, ack) = connected(b.addr(), connect_packet(V5, "twin", false)).await;
    assert!(ack.session_present);
    let seen = old.expect_closed_within(WAIT).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::SESSION_TAKEN_OVER));
}

#[tokio::test]
async fn a_parked_connection_is_kicked_and_shut_down() {
    let b = parking_broker().await;
    let (mut kicked, _) = connected(b.addr(), connect_packet(V5, "kicked", true)).await;
    let (mut stays, _) = connected(b.addr(), connect_packet(V5, "stays", true)).await;
    until_parked(&b, 2).await;
    assert!(b.server.live.kick("kicked"));
    let seen = kicked.expect_closed_within(WAIT).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::ADMINISTRATIVE_ACTION));
    until_parked(&b, 1).await;
    // Shutdown reaches a parked connection too (v5: 0x8B).
    b.stop().await;
    let seen = stays.expect_closed_within(WAIT).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::SERVER_SHUTTING_DOWN));
}

/// A v5 CONNECT whose will says `offline` on `status/<client id>`.
fn with_will(client_id: &str) -> mqtt_codec::Connect {
    let mut cp = connect_packet(V5, client_id, true);
    cp.will = Some(mqtt_codec::LastWill {
        topic: mqtt_codec::TopicName::new(&format!("status/{client_id}")).unwrap(),
        payload: bytes::Bytes::from_static(b"offline"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    cp
}

#[tokio::test]
async fn a_parked_client_that_vanishes_sends_its_will() {
    // [MQTT-3.1.2-8]: the network connection closed without DISCONNECT: the will is published.
    let b = parking_broker().await;
    let (mut sub, _) = connected(b.addr(), connect_packet(V3, "watcher", true)).await;
    sub.subscribe(1, "status/#", QoS::AtMostOnce).await;
    let (c, _) = connected(b.addr(), with_will("device-9")).await;
    until_parked(&b, 2).await;
    drop(c);
    assert_eq!(sub.expect_publish().await.payload.as_ref(), b"offline");
    // A normal DISCONNECT from a parked client discards its will [MQTT-3.1.2-10].
    let (mut c, _) = connected(b.addr(), with_will("device-10")).await;
    until_parked(&b, 2).await;
    c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))).await;
    c.expect_closed_within(WAIT).await;
    assert_eq!(sub.recv_within(Duration::from_millis(300)).await, Recv::Timeout);
}

#[tokio::test]
async fn malformed_input_to_a_parked_connection_closes_only_it() {
    // [MQTT-4.13.1-1]: a malformed packet closes that connection (v5: DISCONNECT 0x81).
    let b = parking_broker().await;
    let (mut bad, _) = connected(b.addr(), connect_packet(V5, "bad", true)).await;
    let (mut good, _) = connected(b.addr(), connect_packet(V3, "good", true)).await;
    until_parked(&b, 2).await;
    bad.send_bytes(b"\x30\x02\x00\x05").await; // PUBLISH whose topic length runs past the packet
    let seen = bad.expect_closed_within(WAIT).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::MALFORMED_PACKET));
    good.send(&Packet::PingReq).await;
    assert_eq!(good.recv().await, Recv::Packet(Packet::PingResp));
}

#[tokio::test]
async fn parking_can_be_turned_off() {
    let b = TestBroker::with_config("[auth]\nallow_anonymous = true\n[limits]\nidle_park_after = 0\n").await;
    let (mut c, _) = connected(b.addr(), connect_packet(V3, "awake", true)).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Recv::Packet(Packet::PingResp));
    tokio::time::sleep(Duration::from_millis(300)).await; // long past any first park
    assert_eq!(b.server.parked_connections(), 0);
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Recv::Packet(Packet::PingResp));
}

#[tokio::test]
async fn many_connections_park_and_all_resume() {
    // 200 subscribers park; one PUBLISH resumes every one of them.
    let b = parking_broker().await;
    let mut subs = Vec::new();
    for i in 0..200 {
        let (mut s, _) = connected(b.addr(), connect_packet(V3, &format!("s{i}"), true)).await;
        s.subscribe(1, "all", QoS::AtMostOnce).await;
        subs.push(s);
    }
    until_parked(&b, 200).await;
    let (mut p, _) = connected(b.addr(), connect_packet(V3, "announcer", true)).await;
    p.send(&publish("all", QoS::AtMostOnce, 0, b"wake")).await;
    for s in &mut subs {
        assert_eq!(s.expect_publish().await.payload.as_ref(), b"wake");
    }
}

#[tokio::test]
async fn a_parked_connection_holds_its_address_slot_until_it_ends() {
    // The per-address limit counts parked connections (their admission slot is in the parked
    // record) and frees the slot when one ends.
    let b = parking_broker_with("max_connections_per_ip = 1\n").await;
    let (mut first, _) = connected(b.addr(), connect_packet(V3, "only-one", true)).await;
    until_parked(&b, 1).await;
    let mut second = RawClient::open(b.addr(), V3).await;
    second.send(&Packet::Connect(Box::new(connect_packet(V3, "second", true)))).await;
    assert!(second.expect_closed_within(WAIT).await.is_empty(), "refused at accept, without a CONNACK");
    first.send(&Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))).await;
    assert!(first.expect_closed_within(WAIT).await.is_empty());
    // The slot is released as the ended connection's state is dropped, just after its socket
    // closes: a new connection from the address is admitted within the wait.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = RawClient::open(b.addr(), V3).await;
        c.send(&Packet::Connect(Box::new(connect_packet(V3, "next", true)))).await;
        match c.recv_within(WAIT).await {
            Recv::Packet(Packet::Connack(a)) => {
                assert_eq!(a.reason_code, ReasonCode::SUCCESS);
                break;
            }
            other => assert!(Instant::now() < deadline, "the address's slot was not released: {other:?}"),
        }
    }
}

/// A device connected, parked once and resumed by its first message: the delay is learnt
/// from that park and resume on.
async fn device(b: &TestBroker, client_id: &str) -> RawClient {
    let (mut dev, _) = connected(b.addr(), connect_packet(V3, client_id, true)).await;
    until_parked(b, 1).await;
    dev.send(&publish("fleet/dev/telemetry", QoS::AtLeastOnce, 1, b"0")).await;
    assert_eq!(dev.recv().await, Recv::Packet(Packet::PubAck(PubAck::new(1))));
    dev
}

/// `dev` publishes every `period` with the packet ids `ids`: the resumes the broker counted
/// meanwhile.
async fn resumes_while_publishing(
    b: &TestBroker,
    dev: &mut RawClient,
    period: Duration,
    ids: std::ops::Range<u16>,
) -> u64 {
    let before = b.server.connection_resumes();
    let mut next = tokio::time::Instant::now();
    for id in ids {
        // The device's own pace (its telemetry period) is the workload, not a synchronisation.
        next += period;
        tokio::time::sleep_until(next).await;
        dev.send(&publish("fleet/dev/telemetry", QoS::AtLeastOnce, id, b"21.5")).await;
        assert_eq!(dev.recv().await, Recv::Packet(Packet::PubAck(PubAck::new(id))));
    }
    b.server.connection_resumes() - before
}

#[tokio::test]
async fn a_device_that_publishes_every_few_moments_stops_parking_between_messages() {
    // Issue 24: a park and a resume per message cost more CPU than the memory they save. A
    // device whose messages come within `idle_park_max` of each other waits one and a half
    // of its periods before it parks; with the bound equal to `idle_park_after` (a fixed
    // delay) it parks between every two messages.
    let period = Duration::from_millis(150);
    let adaptive = parking_broker_with("idle_park_max = \"5s\"\n").await;
    let mut dev = device(&adaptive, "steady").await;
    let resumed = resumes_while_publishing(&adaptive, &mut dev, period, 2..14).await;
    // A late wake of the test's timer (a loaded machine) may let it park once or twice.
    assert!(resumed <= 3, "adaptive: {resumed} resumes for 12 messages");

    let fixed = parking_broker_with("idle_park_max = \"50ms\"\n").await;
    let mut dev = device(&fixed, "steady").await;
    let resumed = resumes_while_publishing(&fixed, &mut dev, period, 2..14).await;
    assert!(resumed >= 10, "fixed delay: {resumed} resumes for 12 messages (one per message expected)");
}

#[tokio::test]
async fn a_device_that_goes_quiet_parks_again_after_the_configured_quiet() {
    // After a burst of messages 100 ms apart the device waits longer before it parks; quiet
    // for longer than the bound, its next park comes after `idle_park_after` (50 ms) again:
    // its memory is given back. The metrics show parked connections and resumes.
    let b = TestBroker::with_config(
        "[auth]\nallow_anonymous = true\n[http]\nbind = \"127.0.0.1:0\"\n\
         [limits]\nidle_park_after = \"50ms\"\nidle_park_max = \"2s\"\n",
    )
    .await;
    let mut dev = device(&b, "bursty").await;
    let resumed = resumes_while_publishing(&b, &mut dev, Duration::from_millis(100), 2..6).await;
    assert!(resumed <= 2, "{resumed} resumes for 4 messages 100 ms apart");
    let text = b.http("GET", "/metrics", &[], None).await.text;
    assert!(text.contains("\nwarden_connection_resumes_total "), "{text}");
    // Quiet: it parks, after the learnt delay (at most the bound).
    until_parked(&b, 1).await;
    let text = b.http("GET", "/metrics", &[], None).await.text;
    assert!(text.contains("\nwarden_connections_parked 1\n"), "{text}");
    // Quiet for longer than the bound (the device's own pause, not a synchronisation), then
    // one message: the period is over the bound, so it parks again after 50 ms (a delay that
    // kept growing with the pause would be the 2 s bound).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    dev.send(&publish("fleet/dev/telemetry", QoS::AtLeastOnce, 7, b"22.0")).await;
    assert_eq!(dev.recv().await, Recv::Packet(Packet::PubAck(PubAck::new(7))));
    let acked = Instant::now();
    until_parked(&b, 1).await;
    let waited = acked.elapsed();
    assert!(waited < Duration::from_millis(1500), "parked {waited:?} after the message: the learnt delay was kept");
}
