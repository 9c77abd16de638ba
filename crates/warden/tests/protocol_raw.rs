//! Protocol conformance and protocol abuse, byte by byte, against the real broker.
//! Each test names the normative statement it guards.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use mqtt_codec::{
    Auth, Connack, Disconnect, Packet, Properties, Protocol, PubAck, QoS, ReasonCode, SubAck, SubscriptionOptions,
    UnsubAck,
};
use warden_testkit::{connect_packet, connected, publish, subscribe_with, RawClient, Recv, TestBroker};

const V5: Protocol = Protocol::V5;
const V3: Protocol = Protocol::V311;

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

async fn assert_alive(b: &TestBroker) {
    let (mut c, _) = connected(b.addr(), connect_packet(V3, "alive-check", true)).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Recv::Packet(Packet::PingResp));
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr(), V3).await;
    c.send(&publish("a", QoS::AtMostOnce, 0, b"hi")).await;
    assert!(c.expect_closed_within(Duration::from_secs(3)).await.is_empty());
    assert_alive(&b).await;
}

#[tokio::test]
async fn huge_declared_length_closes_without_allocating() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr(), V3).await;
    c.send_bytes(b"\x10\xff\xff\xff\x7f").await; // 256 MB declared, nothing follows
    c.expect_closed_within(Duration::from_secs(3)).await;
    assert_alive(&b).await;
}

#[tokio::test]
async fn five_byte_remaining_length_closes() {
    // [MQTT-1.5.5-1]
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr(), V3).await;
    c.send_bytes(b"\x10\xff\xff\xff\xff\x01").await;
    c.expect_closed_within(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn trickled_connect_is_closed_at_connect_timeout() {
    let b = TestBroker::with_config("[auth]\nallow_anonymous = true\n[limits]\nconnect_timeout = \"1s\"\n").await;
    let mut c = RawClient::open(b.addr(), V3).await;
    let start = std::time::Instant::now();
    c.send_bytes(b"\x10\x0e\x00").await; // a CONNECT that never completes
    c.expect_closed_within(Duration::from_secs(4)).await;
    assert!(start.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", start.elapsed());
    assert_alive(&b).await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    // [MQTT-3.1.2-2]
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr(), V3).await;
    c.send_bytes(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00").await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert!(matches!(&seen[..], [Packet::Connack(Connack { reason_code: ReasonCode(0x01), .. })]), "{seen:?}");
}

#[tokio::test]
async fn server_only_packets_from_a_client_close_it() {
    let b = TestBroker::start().await;
    let bad: Vec<Packet> = vec![
        Packet::Connack(Connack::default()),
        Packet::SubAck(SubAck { packet_id: 1, reason_codes: vec![ReasonCode(0)], ..Default::default() }),
        Packet::UnsubAck(UnsubAck { packet_id: 1, ..Default::default() }),
        Packet::PingResp,
        Packet::Connect(Box::new(connect_packet(V5, "again", true))), // [MQTT-3.1.0-2]
    ];
    for p in bad {
        let (mut c, _) = connected(b.addr(), connect_packet(V5, "srv-only", true)).await;
        c.send(&p).await;
        let seen = c.expect_closed_within(Duration::from_secs(3)).await;
        assert_eq!(disconnect_reason(&seen), Some(ReasonCode::PROTOCOL_ERROR), "after {p:?}");
    }
    assert_alive(&b).await;
}

/// A Remaining Length not in its shortest form is malformed [MQTT-1.5.5-1] (issue 17, smaller
/// ones): PINGREQ with a two-byte length of 0 (`0x80 0x00`) closes the connection with 0x81,
/// and a v3.1.1 connection is closed (no DISCONNECT to send there).
#[tokio::test]
async fn a_non_minimal_remaining_length_is_malformed() {
    let b = TestBroker::start().await;
    let (mut c, _) = connected(b.addr(), connect_packet(V5, "varint5", true)).await;
    c.send_bytes(b"\xC0\x80\x00").await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::MALFORMED_PACKET));
    let (mut c, _) = connected(b.addr(), connect_packet(V3, "varint3", true)).await;
    // A QoS 0 PUBLISH of topic "t" with its length 5 written as 0x85 0x00.
    c.send_bytes(b"\x30\x85\x00\x00\x01txy").await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_alive(&b).await;
}

#[tokio::test]
async fn nul_and_invalid_utf8_in_topics_close_the_connection() {
    // [MQTT-1.5.4-1], [MQTT-1.5.4-2]: closed, never normalised.
    let b = TestBroker::start().await;
    let (mut sub, _) = connected(b.addr(), connect_packet(V3, "watcher", true)).await;
    sub.subscribe(1, "#", QoS::AtMostOnce).await;
    // v5 PUBLISH QoS 0: topic, then an empty property list.
    for bytes in [&b"\x30\x06\x00\x03a\x00b\x00"[..], &b"\x30\x05\x00\x02\xC3\x28\x00"[..]] {
        let (mut c, _) = connected(b.addr(), connect_packet(V5, "utf8", true)).await;
        c.send_bytes(bytes).await;
        let seen = c.expect_closed_within(Duration::from_secs(3)).await;
        assert_eq!(disconnect_reason(&seen), Some(ReasonCode::MALFORMED_PACKET));
    }
    assert_eq!(sub.recv_within(Duration::from_millis(300)).await, Recv::Timeout, "nothing was routed");
}

#[tokio::test]
async fn filter_with_tens_of_thousands_of_levels_closes() {
    let b = TestBroker::start().await;
    let (mut c, _) = connected(b.addr(), connect_packet(V5, "deep", true)).await;
    let filter = vec!["a"; 30_000].join("/");
    c.send(&subscribe_with(1, &filter, SubscriptionOptions::default())).await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::TOPIC_FILTER_INVALID));
    assert_alive(&b).await;
}

#[tokio::test]
async fn packet_larger_than_maximum_is_refused_with_0x95() {
    let b = TestBroker::with_config("[auth]\nallow_anonymous = true\n[limits]\nmax_packet_size = \"1KiB\"\n").await;
    let (mut c, ack) = connected(b.addr(), connect_packet(V5, "big", true)).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024)); // advertised in CONNACK
    c.send(&publish("t", QoS::AtMostOnce, 0, &[0u8; 2000])).await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::PACKET_TOO_LARGE));
}

#[tokio::test]
async fn client_exceeding_receive_maximum_gets_0x93() {
    // [MQTT-3.3.4-9] / §4.9: the client must not exceed the server's Receive Maximum.
    let b = TestBroker::with_config("[auth]\nallow_anonymous = true\n[limits]\nreceive_maximum = 2\n").await;
    let (mut c, ack) = connected(b.addr(), connect_packet(V5, "greedy", true)).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=3 {
        c.send(&publish("t", QoS::ExactlyOnce, id, b"x")).await;
    }
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    let recs = seen.iter().filter(|p| matches!(p, Packet::PubRec(_))).count();
    assert_eq!(recs, 2);
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
}

#[tokio::test]
async fn repeated_qos2_packet_id_is_delivered_once() {
    // [MQTT-4.3.3-?] exactly once: a re-sent QoS 2 PUBLISH with the same packet id is not
    // delivered again, and thousands of repeats keep one entry of state.
    let b = TestBroker::start().await;
    let (mut sub, _) = connected(b.addr(), connect_packet(V3, "q2sub", true)).await;
    sub.subscribe(1, "q2/#", QoS::AtMostOnce).await;
    let (mut c, _) = connected(b.addr(), connect_packet(V3, "q2pub", true)).await;
    for _ in 0..5000 {
        c.send(&publish("q2/x", QoS::ExactlyOnce, 7, b"once")).await;
    }
    for _ in 0..5000 {
        assert!(matches!(c.recv().await, Recv::Packet(Packet::PubRec(PubAck { packet_id: 7, .. }))));
    }
    c.send(&Packet::PubRel(PubAck::new(7))).await;
    assert!(matches!(
        c.recv().await,
        Recv::Packet(Packet::PubComp(PubAck { packet_id: 7, reason_code: ReasonCode(0), .. }))
    ));
    assert_eq!(sub.expect_publish().await.payload.as_ref(), b"once");
    assert_eq!(sub.recv_within(Duration::from_millis(300)).await, Recv::Timeout);
}

#[tokio::test]
async fn keep_alive_timeout_disconnects_with_0x8d() {
    // [MQTT-3.1.2-24]: no packet within 1.5 × keep alive.
    let b = TestBroker::start().await;
    let mut cp = connect_packet(V5, "sleepy", true);
    cp.keep_alive = 1;
    let (mut c, _) = connected(b.addr(), cp).await;
    let start = std::time::Instant::now();
    let seen = c.expect_closed_within(Duration::from_secs(5)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
    assert!(start.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn server_keep_alive_is_announced() {
    // [MQTT-3.2.2-21]
    let b = TestBroker::with_config("[auth]\nallow_anonymous = true\n[limits]\nmax_keep_alive = 30\n").await;
    let mut cp = connect_packet(V5, "ka", true);
    cp.keep_alive = 0;
    let (_c, ack) = connected(b.addr(), cp).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
}

#[tokio::test]
async fn client_maximum_packet_size_is_respected() {
    // [MQTT-3.1.2-25]: never send a packet larger than the client's Maximum Packet Size.
    let b = TestBroker::start().await;
    let mut cp = connect_packet(V5, "small", true);
    cp.properties.maximum_packet_size = Some(100);
    let (mut c, _) = connected(b.addr(), cp).await;
    c.subscribe(1, "m/#", QoS::AtMostOnce).await;
    let (mut p, _) = connected(b.addr(), connect_packet(V3, "m-pub", true)).await;
    p.send(&publish("m/big", QoS::AtMostOnce, 0, &[1u8; 200])).await;
    p.send(&publish("m/small", QoS::AtMostOnce, 0, b"ok")).await;
    let got = c.expect_publish().await;
    assert_eq!(got.topic.as_str(), "m/small");
}

#[tokio::test]
async fn outbound_flow_control_honours_client_receive_maximum() {
    // [MQTT-3.3.4-7]: no more unacknowledged QoS > 0 PUBLISH than the client's Receive Maximum.
    let b = TestBroker::start().await;
    let mut cp = connect_packet(V5, "slow", true);
    cp.properties.receive_maximum = Some(2);
    let (mut c, _) = connected(b.addr(), cp).await;
    c.subscribe(1, "f/#", QoS::AtLeastOnce).await;
    let (mut p, _) = connected(b.addr(), connect_packet(V3, "f-pub", true)).await;
    for i in 1..=5u16 {
        p.send(&publish("f/x", QoS::AtLeastOnce, i, &[i as u8])).await;
    }
    let a = c.expect_publish().await;
    let b2 = c.expect_publish().await;
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, Recv::Timeout, "third held back");
    c.send(&Packet::PubAck(PubAck::new(a.packet_id))).await;
    let third = c.expect_publish().await;
    assert_eq!(third.payload.as_ref(), &[3u8]);
    c.send(&Packet::PubAck(PubAck::new(b2.packet_id))).await;
    c.send(&Packet::PubAck(PubAck::new(third.packet_id))).await;
    assert_eq!(c.expect_publish().await.payload.as_ref(), &[4u8]);
    assert_eq!(c.expect_publish().await.payload.as_ref(), &[5u8]);
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_on_reconnect() {
    // [MQTT-4.4.0-1], [MQTT-3.3.1-1]: same packet id, DUP = 1.
    let b = TestBroker::start().await;
    let (mut c, _) = connected(b.addr(), connect_packet(V3, "dup", false)).await;
    c.subscribe(1, "d/#", QoS::ExactlyOnce).await;
    let (mut p, _) = connected(b.addr(), connect_packet(V3, "d-pub", true)).await;
    p.send(&publish("d/1", QoS::AtLeastOnce, 1, b"one")).await;
    p.send(&publish("d/2", QoS::ExactlyOnce, 2, b"two")).await;
    let first = c.expect_publish().await;
    let second = c.expect_publish().await;
    assert!(!first.dup && !second.dup);
    // Acknowledge the QoS 2 one only up to PUBREC: the broker then owes a PUBREL.
    c.send(&Packet::PubRec(PubAck::new(second.packet_id))).await;
    assert!(matches!(c.recv().await, Recv::Packet(Packet::PubRel(_))));
    drop(c);
    let (mut c, ack) = connected(b.addr(), connect_packet(V3, "dup", false)).await;
    assert!(ack.session_present);
    let again = c.expect_publish().await;
    assert!(again.dup, "resent with DUP");
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(again.payload.as_ref(), b"one");
    match c.recv().await {
        Recv::Packet(Packet::PubRel(r)) => assert_eq!(r.packet_id, second.packet_id),
        other => panic!("expected PUBREL re-sent, got {other:?}"),
    }
    c.send(&Packet::PubComp(PubAck::new(second.packet_id))).await;
    c.send(&Packet::PubAck(PubAck::new(again.packet_id))).await;
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, Recv::Timeout);
}

#[tokio::test]
async fn enhanced_authentication_is_answered() {
    // No method is offered yet: CONNECT naming one gets 0x8C; AUTH after CONNECT is a
    // protocol error [MQTT-4.12.0-1].
    let b = TestBroker::start().await;
    let mut cp = connect_packet(V5, "scram", true);
    cp.properties.authentication_method = Some("SCRAM-SHA-256".into());
    let (mut c, r) = RawClient::connect(b.addr(), cp).await;
    assert!(matches!(r, Recv::Packet(Packet::Connack(Connack { reason_code: ReasonCode(0x8C), .. }))), "{r:?}");
    c.expect_closed_within(Duration::from_secs(3)).await;
    let (mut c, _) = connected(b.addr(), connect_packet(V5, "auth-pkt", true)).await;
    c.send(&Packet::Auth(Auth { reason_code: ReasonCode::REAUTHENTICATE, properties: Default::default() })).await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test]
async fn shared_subscription_with_no_local_is_a_protocol_error() {
    // [MQTT-3.8.3-4]
    let b = TestBroker::start().await;
    let (mut c, _) = connected(b.addr(), connect_packet(V5, "nl", true)).await;
    c.send(&subscribe_with(1, "$share/g/x", SubscriptionOptions { no_local: true, ..Default::default() })).await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test]
async fn topic_alias_errors() {
    // [MQTT-3.3.2-9/10]: alias above the maximum → 0x94; unknown alias with empty topic → 0x82.
    let b = TestBroker::start().await;
    let (mut c, ack) = connected(b.addr(), connect_packet(V5, "alias", true)).await;
    let max = ack.properties.topic_alias_maximum.expect("topic aliases offered");
    let mut p = publish("t", QoS::AtMostOnce, 0, b"x");
    if let Packet::Publish(ref mut pp) = p {
        pp.properties.topic_alias = Some(max + 1);
    }
    c.send(&p).await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::TOPIC_ALIAS_INVALID));

    // Alias 0 (issue 17, smaller ones): 0x94 Topic Alias invalid too, not 0x82 — the value
    // is not permitted [MQTT-3.3.2-8] and the receiver treats it as an invalid alias (§3.3.2.3.4).
    let (mut c, _) = connected(b.addr(), connect_packet(V5, "alias0", true)).await;
    c.send_bytes(b"\x30\x07\x00\x01t\x03\x23\x00\x00").await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::TOPIC_ALIAS_INVALID));

    let (mut c, _) = connected(b.addr(), connect_packet(V5, "alias2", true)).await;
    // Empty topic with alias 1 that was never bound: hand-encoded (the codec type forbids it).
    c.send_bytes(b"\x30\x06\x00\x00\x03\x23\x00\x01").await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test]
async fn disconnect_cannot_set_expiry_after_zero() {
    // [MQTT-3.14.2-2]
    let b = TestBroker::start().await;
    let (mut c, _) = connected(b.addr(), connect_packet(V5, "exp0", true)).await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(60);
    c.send(&Packet::Disconnect(d)).await;
    let seen = c.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test]
async fn disconnect_with_will_publishes_the_will() {
    // [MQTT-3.14.4-3]: 0x00 discards the will, 0x04 asks for it.
    let b = TestBroker::start().await;
    let (mut sub, _) = connected(b.addr(), connect_packet(V3, "will-sub", true)).await;
    sub.subscribe(1, "will/#", QoS::AtLeastOnce).await;
    for (reason, expect) in [(ReasonCode::NORMAL_DISCONNECTION, false), (ReasonCode::DISCONNECT_WITH_WILL, true)] {
        let mut cp = connect_packet(V5, "willer", true);
        cp.will = Some(mqtt_codec::LastWill {
            topic: mqtt_codec::TopicName::new("will/x").unwrap(),
            payload: bytes::Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        });
        let (mut c, _) = connected(b.addr(), cp).await;
        c.send(&Packet::Disconnect(Disconnect::new(reason))).await;
        c.expect_closed_within(Duration::from_secs(3)).await;
        if expect {
            let w = sub.expect_publish().await;
            assert_eq!(w.payload.as_ref(), b"bye");
            sub.send(&Packet::PubAck(PubAck::new(w.packet_id))).await;
        } else {
            assert_eq!(sub.recv_within(Duration::from_millis(300)).await, Recv::Timeout);
        }
    }
}

#[tokio::test]
async fn takeover_sends_0x8e_to_the_old_connection() {
    // [MQTT-3.1.4-3]
    let b = TestBroker::start().await;
    let (mut old, _) = connected(b.addr(), connect_packet(V5, "same-id", false)).await;
    let (_new, ack) = connected(b.addr(), connect_packet(V5, "same-id", false)).await;
    assert!(ack.session_present);
    let seen = old.expect_closed_within(Duration::from_secs(3)).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::SESSION_TAKEN_OVER));
}

#[tokio::test]
async fn websocket_transport_negotiates_mqtt_subprotocol() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let b = TestBroker::start().await;
    let url = format!("ws://{}/mqtt", b.ws_addr());
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("ws upgrade");
    assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "mqtt"); // [MQTT-6.0.0-3]
    let mut buf = bytes::BytesMut::new();
    Packet::Connect(Box::new(connect_packet(V3, "ws-raw", true))).encode(V3, &mut buf);
    // Split the CONNECT across two frames: MQTT over WebSocket is a byte stream [MQTT-6.0.0-2].
    let (a, rest) = buf.split_at(5);
    ws.send(Message::Binary(a.to_vec().into())).await.unwrap();
    ws.send(Message::Binary(rest.to_vec().into())).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(msg.into_data().as_ref(), b"\x20\x02\x00\x00");

    let bad = format!("ws://{}/not-mqtt", b.ws_addr());
    assert!(tokio_tungstenite::connect_async(bad).await.is_err(), "wrong path refused");
}

/// Issue 17 (smaller ones): the WebSocket listener checks `Origin` (cross-site WebSocket
/// hijacking): a page of another site is refused (403) before any MQTT, the listener's own host
/// (as paho sends it) and clients without `Origin` are not, and `allowed_origins` adds sites.
#[tokio::test]
async fn websocket_origins_of_other_sites_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error as WsError;

    async fn upgrade(b: &TestBroker, origin: Option<&str>) -> Result<(), u16> {
        let mut req = format!("ws://{}/mqtt", b.ws_addr()).into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => Ok(()),
            Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("{e}"),
        }
    }
    let b = TestBroker::start().await;
    let own = format!("https://127.0.0.1:{}", b.ws_addr().port());
    assert_eq!(upgrade(&b, Some("https://evil.example")).await, Err(403));
    assert_eq!(upgrade(&b, Some("null")).await, Err(403));
    assert_eq!(upgrade(&b, None).await, Ok(()), "not a browser");
    assert_eq!(upgrade(&b, Some(&own)).await, Ok(()), "the listener's own host (paho sends this)");
    assert_eq!(upgrade(&b, Some("http://127.0.0.1:3000")).await, Ok(()), "a page of the same host");

    let b = TestBroker::from_toml(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"ws\"\nallowed_origins = [\"https://console.example\"]\n\
         [auth]\nallow_anonymous = true\n",
    )
    .await;
    assert_eq!(upgrade(&b, Some("https://console.example")).await, Ok(()));
    assert_eq!(upgrade(&b, Some("https://console.example.evil")).await, Err(403));
}

#[tokio::test]
async fn max_connections_refuses_the_one_too_many() {
    let b = TestBroker::with_config("[auth]\nallow_anonymous = true\n[limits]\nmax_connections = 2\n").await;
    let (_a, _) = connected(b.addr(), connect_packet(V3, "one", true)).await;
    let (mut two, _) = connected(b.addr(), connect_packet(V3, "two", true)).await;
    let mut three = RawClient::open(b.addr(), V3).await;
    three.send(&Packet::Connect(Box::new(connect_packet(V3, "three", true)))).await;
    assert!(three.expect_closed_within(Duration::from_secs(3)).await.is_empty(), "closed without CONNACK");
    // A slot frees when a client leaves.
    two.send(&Packet::Disconnect(Disconnect::default())).await;
    two.expect_closed_within(Duration::from_secs(3)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_c, r) = RawClient::connect(b.addr(), connect_packet(V3, "four", true)).await;
        if matches!(r, Recv::Packet(Packet::Connack(_))) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn repeated_failed_logins_ban_the_address_before_any_hashing() {
    // SPEC §7: failed-auth bans per source address; a banned address gets no CONNACK at all.
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, format!("ann:{}\n", warden_policy::password::hash_password(b"annpw"))).unwrap();
    let b = TestBroker::with_config(&format!(
        "[auth]\npassword_file = \"{}\"\n[limits]\nauth_fail_ban = {{ failures = 3, within = \"60s\", ban = \"300s\" }}\n",
        passwd.display()
    ))
    .await;
    let login = |pw: &str| {
        let mut c = connect_packet(V5, "ann-dev", true);
        c.username = Some("ann".into());
        c.password = Some(bytes::Bytes::copy_from_slice(pw.as_bytes()));
        c
    };
    assert!(
        matches!(RawClient::connect(b.addr(), login("annpw")).await.1, Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode(0))
    );
    for _ in 0..3 {
        let r = RawClient::connect(b.addr(), login("wrong")).await.1;
        assert!(
            matches!(r, Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        );
    }
    // Banned: even the right password is not looked at.
    let mut c = RawClient::open(b.addr(), V5).await;
    c.send(&Packet::Connect(Box::new(login("annpw")))).await;
    assert!(c.expect_closed_within(Duration::from_secs(3)).await.is_empty(), "closed without CONNACK");
}

#[tokio::test]
async fn connections_per_address_and_connect_rate_are_limited() {
    let b = TestBroker::with_config("[auth]\nallow_anonymous = true\n[limits]\nmax_connections_per_ip = 2\n").await;
    let (_a, _) = connected(b.addr(), connect_packet(V3, "ip-1", true)).await;
    let (_b, _) = connected(b.addr(), connect_packet(V3, "ip-2", true)).await;
    let mut c = RawClient::open(b.addr(), V3).await;
    c.send(&Packet::Connect(Box::new(connect_packet(V3, "ip-3", true)))).await;
    assert!(c.expect_closed_within(Duration::from_secs(3)).await.is_empty());

    let b = TestBroker::with_config("[auth]\nallow_anonymous = true\n[limits]\nconnect_rate_per_ip = 3\n").await;
    let mut refused = 0;
    for i in 0..6 {
        let mut c = RawClient::open(b.addr(), V3).await;
        c.send(&Packet::Connect(Box::new(connect_packet(V3, &format!("r{i}"), true)))).await;
        if matches!(c.recv_within(Duration::from_secs(3)).await, Recv::Closed) {
            refused += 1;
        }
    }
    assert!(refused >= 2, "a burst beyond the rate is refused ({refused} of 6)");
}

/// Subscribe `c` to `filter` with `options` and, when given, a subscription identifier.
async fn subscribe_as(c: &mut RawClient, filter: &str, options: SubscriptionOptions, id: Option<u32>) {
    let mut s = subscribe_with(1, filter, options);
    if let (Packet::Subscribe(s), Some(id)) = (&mut s, id) {
        s.properties.subscription_identifiers = vec![id];
    }
    c.send(&s).await;
    match c.recv().await {
        Recv::Packet(Packet::SubAck(a)) => assert!(a.reason_codes.iter().all(|r| r.is_success()), "{a:?}"),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// A received PUBLISH: (topic, payload, QoS, RETAIN, topic alias, subscription ids, expiry set).
type Got = (String, Vec<u8>, QoS, bool, Option<u16>, Vec<u32>, bool);

/// The next `n` PUBLISH packets; PUBACKs what needs one.
async fn publishes(c: &mut RawClient, n: usize) -> Vec<Got> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = c.expect_publish().await;
        if p.qos == QoS::AtLeastOnce {
            c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
        }
        got.push((
            p.topic.as_str().to_owned(),
            p.payload.to_vec(),
            p.qos,
            p.retain,
            p.properties.topic_alias,
            p.properties.subscription_identifiers.clone(),
            p.properties.message_expiry_interval.is_some(),
        ));
    }
    got
}

#[tokio::test]
async fn a_batch_shared_by_many_subscribers_reaches_each_in_its_own_form() {
    // A publisher's batch on one topic is queued once for all its subscribers and its plain
    // QoS 0 packets encoded once; each subscriber must still get exactly what its protocol and
    // subscription ask: [MQTT-3.3.1-12/13] RETAIN only with Retain As Published,
    // [MQTT-3.3.4-3] subscription identifiers, [MQTT-3.3.2-12] topic aliases (the topic once),
    // [MQTT-3.1.2-25] nothing over the client's Maximum Packet Size, [MQTT-3.3.2-6] expiry
    // forwarded, [MQTT-3.8.4-8] the lower of the two QoS.
    let b = TestBroker::start().await;
    let q0 = SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() };
    let q1 = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    let (mut v3, _) = connected(b.addr(), connect_packet(V3, "fan-v3", true)).await;
    let (mut v5, _) = connected(b.addr(), connect_packet(V5, "fan-v5", true)).await;
    let mut cp = connect_packet(V5, "fan-alias", true);
    cp.properties.topic_alias_maximum = Some(4);
    let (mut alias, _) = connected(b.addr(), cp).await;
    let (mut ids, _) = connected(b.addr(), connect_packet(V5, "fan-ids", true)).await;
    let (mut rap, _) = connected(b.addr(), connect_packet(V5, "fan-rap", true)).await;
    let mut cp = connect_packet(V5, "fan-small", true);
    cp.properties.maximum_packet_size = Some(100);
    let (mut small, _) = connected(b.addr(), cp).await;
    let (mut qos1, _) = connected(b.addr(), connect_packet(V3, "fan-qos1", true)).await;
    subscribe_as(&mut v3, "fan/#", q0, None).await;
    subscribe_as(&mut v5, "fan/#", q0, None).await;
    subscribe_as(&mut alias, "fan/#", q0, None).await;
    subscribe_as(&mut ids, "fan/#", q0, Some(9)).await;
    subscribe_as(&mut rap, "fan/#", SubscriptionOptions { retain_as_published: true, ..q0 }, None).await;
    subscribe_as(&mut small, "fan/#", q0, None).await;
    subscribe_as(&mut qos1, "fan/#", q1, None).await;

    // One write, so that the broker reads it as one batch: QoS 0 messages (one too large for
    // `small`), a retained one and a QoS 1 one; then, alone (a message with an expiry is
    // encoded per subscriber, and so is a batch that holds one), one with an expiry.
    let (mut p, _) = connected(b.addr(), connect_packet(V5, "fan-pub", true)).await;
    let mut retained = publish("fan/t", QoS::AtMostOnce, 0, b"r");
    let mut expiring = publish("fan/t", QoS::AtMostOnce, 0, b"e");
    if let (Packet::Publish(r), Packet::Publish(e)) = (&mut retained, &mut expiring) {
        r.retain = true;
        e.properties.message_expiry_interval = Some(600);
    }
    let mut wire = bytes::BytesMut::new();
    for pk in [
        publish("fan/t", QoS::AtMostOnce, 0, b"1"),
        publish("fan/t", QoS::AtMostOnce, 0, &[b'x'; 200]),
        publish("fan/t", QoS::AtMostOnce, 0, b"3"),
        retained,
        publish("fan/t", QoS::AtLeastOnce, 7, b"q"),
    ] {
        pk.encode(V5, &mut wire);
    }
    p.send_bytes(&wire).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_))));
    p.send(&expiring).await;

    let big = vec![b'x'; 200];
    let plain = |payload: &[u8], qos, retain| ("fan/t".to_owned(), payload.to_vec(), qos, retain, None, vec![], false);
    let expected_plain = vec![
        plain(b"1", QoS::AtMostOnce, false),
        plain(&big, QoS::AtMostOnce, false),
        plain(b"3", QoS::AtMostOnce, false),
        plain(b"r", QoS::AtMostOnce, false),
        plain(b"q", QoS::AtMostOnce, false),
        ("fan/t".to_owned(), b"e".to_vec(), QoS::AtMostOnce, false, None, vec![], true),
    ];
    // 3.1.1 has no properties: the expiry is not sent, but the message still is.
    let mut expected_v3 = expected_plain.clone();
    expected_v3[5].6 = false;
    assert_eq!(publishes(&mut v3, 6).await, expected_v3);
    assert_eq!(publishes(&mut v5, 6).await, expected_plain);

    // Topic alias: the topic with alias 1 the first time, then the alias alone.
    let got = publishes(&mut alias, 6).await;
    assert_eq!((got[0].0.as_str(), got[0].4), ("fan/t", Some(1)));
    for g in &got[1..] {
        assert_eq!((g.0.as_str(), g.4), ("", Some(1)));
    }
    let payloads = |got: &[Got]| got.iter().map(|g| g.1.clone()).collect::<Vec<_>>();
    assert_eq!(payloads(&got), payloads(&expected_plain));

    let got = publishes(&mut ids, 6).await;
    assert!(got.iter().all(|g| g.5 == vec![9]), "{got:?}");
    assert_eq!(payloads(&got), payloads(&expected_plain));

    let got = publishes(&mut rap, 6).await;
    assert_eq!(got.iter().map(|g| g.3).collect::<Vec<_>>(), vec![false, false, false, true, false, false]);

    let got = publishes(&mut small, 5).await;
    assert_eq!(payloads(&got), vec![b"1".to_vec(), b"3".to_vec(), b"r".to_vec(), b"q".to_vec(), b"e".to_vec()]);

    let got = publishes(&mut qos1, 6).await;
    let qos: Vec<QoS> = got.iter().map(|g| g.2).collect();
    assert_eq!(qos, [[QoS::AtMostOnce; 4].as_slice(), &[QoS::AtLeastOnce, QoS::AtMostOnce]].concat());
    assert_eq!(payloads(&got), payloads(&expected_plain));
    for c in [&mut v3, &mut v5, &mut alias, &mut ids, &mut rap, &mut small, &mut qos1] {
        assert_eq!(c.recv_within(Duration::from_millis(100)).await, Recv::Timeout, "nothing more");
    }
}

#[tokio::test]
async fn a_batch_of_runs_on_several_topics_keeps_each_subscribers_order() {
    // Order per topic for QoS 0 and across topics from one publisher [MQTT-4.6.0-6]: a batch
    // read at once is queued in parts (long runs as shared slices, short ones as single
    // deliveries); each subscriber must see exactly its messages, in publication order.
    let b = TestBroker::start().await;
    let q0 = SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() };
    let (mut all, _) = connected(b.addr(), connect_packet(V5, "mix-all", true)).await;
    let (mut only_a, _) = connected(b.addr(), connect_packet(V3, "mix-a", true)).await;
    let (mut shared, _) = connected(b.addr(), connect_packet(V5, "mix-shared", true)).await;
    subscribe_as(&mut all, "mix/#", q0, None).await;
    subscribe_as(&mut only_a, "mix/a", q0, None).await;
    subscribe_as(&mut shared, "$share/g/mix/b", q0, None).await;

    let mut sent = Vec::new();
    for (topic, n) in [("mix/a", 10), ("mix/b", 3), ("mix/a", 2), ("mix/b", 9), ("mix/a", 10)] {
        for _ in 0..n {
            sent.push((topic, format!("{}", sent.len()).into_bytes()));
        }
    }
    let mut wire = bytes::BytesMut::new();
    for (topic, payload) in &sent {
        publish(topic, QoS::AtMostOnce, 0, payload).encode(V5, &mut wire);
    }
    let (mut p, _) = connected(b.addr(), connect_packet(V5, "mix-pub", true)).await;
    p.send_bytes(&wire).await;

    let want = |filter: &str| -> Vec<Vec<u8>> {
        sent.iter().filter(|(t, _)| filter == "#" || *t == filter).map(|(_, p)| p.clone()).collect()
    };
    let got = |v: Vec<Got>| v.into_iter().map(|g| g.1).collect::<Vec<_>>();
    assert_eq!(got(publishes(&mut all, sent.len()).await), want("#"));
    assert_eq!(got(publishes(&mut only_a, 22).await), want("mix/a"));
    assert_eq!(got(publishes(&mut shared, 12).await), want("mix/b"));
    for c in [&mut all, &mut only_a, &mut shared] {
        assert_eq!(c.recv_within(Duration::from_millis(100)).await, Recv::Timeout, "nothing more");
    }
}
