//! The core in memory: protocol cases driven through `warden_core::sim::Sim` (many clients,
//! a recording waker, a virtual clock; no socket, no sleep, no store). Each case names the
//! MQTT 5 clause (or SPEC section) it checks. Time passes only through `Sim::advance`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqtt_codec::{
    Connect, Disconnect, LastWill, Packet, Properties, Protocol, PubAck, Publish, QoS, ReasonCode, RetainHandling,
    Subscribe, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
};
use warden_core::sim::{ClientId, Sim};
use warden_core::BrokerConfig;
use warden_policy::acl::AclFile;
use warden_policy::{AllowAll, PolicyAuthorizer, Principal};

// ---- Helpers -------------------------------------------------------------------------------

fn sim() -> Sim {
    sim_with(BrokerConfig::default())
}

fn sim_with(cfg: BrokerConfig) -> Sim {
    Sim::new(cfg, Arc::new(AllowAll), Instant::now())
}

fn acl(text: &str) -> Arc<PolicyAuthorizer> {
    Arc::new(PolicyAuthorizer::new(Some(AclFile::parse(text).expect("valid ACL")), false))
}

/// A v5 CONNECT, keep alive 0.
fn connect_packet(id: &str, clean: bool, expiry: u32) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: clean,
        keep_alive: 0,
        properties: Properties { session_expiry_interval: Some(expiry), ..Default::default() },
        client_id: id.to_owned(),
        will: None,
        username: None,
        password: None,
    }
}

fn will(topic: &str, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: TopicName::new(topic).expect("valid topic"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties { will_delay_interval: delay, ..Default::default() },
    }
}

/// Connect `c` (anonymous) and return its CONNACK's session present flag.
fn connect_as(s: &mut Sim, c: Connect, who: Principal) -> (ClientId, bool) {
    let (id, r) = s.connect(c, who);
    r.expect("connected");
    let present = match s.take(id).first() {
        Some(Packet::Connack(a)) => a.session_present,
        other => panic!("expected a CONNACK, got {other:?}"),
    };
    (id, present)
}

/// A clean v5 client with no session expiry.
fn join(s: &mut Sim, id: &str) -> ClientId {
    connect_as(s, connect_packet(id, true, 0), Principal::anonymous()).0
}

/// A v5 client whose session lasts `expiry` seconds after it disconnects.
fn join_persistent(s: &mut Sim, id: &str, expiry: u32) -> ClientId {
    connect_as(s, connect_packet(id, true, expiry), Principal::anonymous()).0
}

/// Reconnect slot `c` (clean start off) and return session present; what came after the
/// CONNACK (re-sent and queued deliveries) stays in the inbox.
fn resume(s: &mut Sim, c: ClientId, id: &str, expiry: u32) -> bool {
    s.reconnect(c, connect_packet(id, false, expiry), Principal::anonymous()).expect("resumed");
    let inbox = &mut s.get_mut(c).expect("a client").inbox;
    match inbox.first() {
        Some(Packet::Connack(a)) => {
            let present = a.session_present;
            inbox.remove(0);
            present
        }
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

/// Everything `c` was sent since the last look.
fn inbox(s: &mut Sim, c: ClientId) -> Vec<Packet> {
    s.take(c)
}

fn publishes(s: &mut Sim, c: ClientId) -> Vec<Publish> {
    inbox(s, c)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn payloads(ps: &[Publish]) -> Vec<&[u8]> {
    ps.iter().map(|p| &p.payload[..]).collect()
}

fn publish_packet(topic: &str, payload: &'static [u8], qos: QoS, retain: bool, pid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::new(topic).expect("valid topic"),
        packet_id: pid,
        properties: Default::default(),
        payload: Bytes::from_static(payload),
    }
}

/// `c` publishes; returns what it was sent back (its acknowledgement).
fn publish(
    s: &mut Sim,
    c: ClientId,
    topic: &str,
    payload: &'static [u8],
    qos: QoS,
    retain: bool,
    pid: u16,
) -> Vec<Packet> {
    send(s, c, Packet::Publish(publish_packet(topic, payload, qos, retain, pid)))
}

/// `c` sends `p`, which must not close it; returns what `c` was sent meanwhile.
fn send(s: &mut Sim, c: ClientId, p: Packet) -> Vec<Packet> {
    s.send(c, p).expect("connected").expect("not closed");
    inbox(s, c)
}

fn subscribe_with(
    s: &mut Sim,
    c: ClientId,
    filter: &str,
    opts: SubscriptionOptions,
    id: Option<u32>,
) -> Vec<ReasonCode> {
    let mut sub = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(TopicFilter::new(filter).expect("valid filter"), opts)],
    };
    if let Some(id) = id {
        sub.properties.subscription_identifiers = vec![id];
    }
    s.send(c, Packet::Subscribe(sub)).expect("connected").expect("not closed");
    // The SUBACK is taken out; retained messages it queued stay in the inbox.
    let inbox = &mut s.get_mut(c).expect("a client").inbox;
    let at = inbox.iter().position(|p| matches!(p, Packet::SubAck(_))).expect("a SUBACK");
    match inbox.remove(at) {
        Packet::SubAck(a) => a.reason_codes,
        _ => unreachable!(),
    }
}

fn subscribe(s: &mut Sim, c: ClientId, filter: &str, qos: QoS) -> Vec<ReasonCode> {
    subscribe_with(s, c, filter, SubscriptionOptions { qos, ..Default::default() }, None)
}

fn granted(qos: QoS) -> Vec<ReasonCode> {
    vec![ReasonCode(qos as u8)]
}

fn disconnect(s: &mut Sim, c: ClientId, code: ReasonCode) {
    let r = s.send(c, Packet::Disconnect(Disconnect::new(code))).expect("connected");
    assert!(r.is_err(), "a DISCONNECT closes");
}

fn inflight(s: &Sim, id: &str) -> usize {
    s.broker.session_summary(id, s.now).map_or(0, |x| x.inflight)
}

fn queued(s: &Sim, id: &str) -> usize {
    s.broker.session_summary(id, s.now).map_or(0, |x| x.queued)
}

fn dropped(s: &Sim) -> u64 {
    s.broker.stats.messages_dropped.load(std::sync::atomic::Ordering::Relaxed)
}

// ---- QoS 0, 1, 2 ---------------------------------------------------------------------------

/// [MQTT-4.3.1-1] QoS 0: delivered once, no packet identifier, nothing in flight.
#[test]
fn qos0_is_delivered_once_with_no_packet_id() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    assert_eq!(subscribe(&mut s, q, "a/b", QoS::AtMostOnce), granted(QoS::AtMostOnce));
    assert!(publish(&mut s, p, "a/b", b"x", QoS::AtMostOnce, false, 0).is_empty(), "no acknowledgement");
    let got = publishes(&mut s, q);
    assert_eq!(payloads(&got), vec![b"x"]);
    assert_eq!((got[0].qos, got[0].packet_id), (QoS::AtMostOnce, 0));
    assert_eq!(inflight(&s, "q"), 0);
}

/// [MQTT-4.3.2-2] QoS 1: the publisher gets a PUBACK; the subscriber's copy stays in flight
/// until its PUBACK [MQTT-4.3.2-1].
#[test]
fn qos1_is_acknowledged_and_held_in_flight_until_puback() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    let ack = publish(&mut s, p, "t", b"1", QoS::AtLeastOnce, false, 7);
    assert!(matches!(ack.as_slice(), [Packet::PubAck(a)] if a.packet_id == 7 && a.reason_code == ReasonCode::SUCCESS));
    let got = publishes(&mut s, q);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_ne!(got[0].packet_id, 0, "[MQTT-2.2.1-3] a QoS 1 PUBLISH has a packet id");
    assert_eq!(inflight(&s, "q"), 1);
    send(&mut s, q, Packet::PubAck(PubAck::new(got[0].packet_id)));
    assert_eq!(inflight(&s, "q"), 0);
}

/// [MQTT-4.3.3-9..11] Inbound QoS 2: PUBREC, then PUBREL → PUBCOMP; delivered once.
#[test]
fn qos2_inbound_flow_pubrec_pubrel_pubcomp() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::ExactlyOnce);
    let rec = publish(&mut s, p, "t", b"2", QoS::ExactlyOnce, false, 3);
    assert!(matches!(rec.as_slice(), [Packet::PubRec(a)] if a.packet_id == 3));
    assert_eq!(payloads(&publishes(&mut s, q)), vec![b"2"]);
    let comp = send(&mut s, p, Packet::PubRel(PubAck::new(3)));
    assert!(
        matches!(comp.as_slice(), [Packet::PubComp(a)] if a.packet_id == 3 && a.reason_code == ReasonCode::SUCCESS)
    );
}

/// [MQTT-4.3.3-10] A QoS 2 PUBLISH sent again with DUP before its PUBREL is acknowledged
/// again and not delivered a second time.
#[test]
fn qos2_duplicate_publish_with_dup_is_not_delivered_twice() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::ExactlyOnce);
    publish(&mut s, p, "t", b"once", QoS::ExactlyOnce, false, 9);
    let mut again = publish_packet("t", b"once", QoS::ExactlyOnce, false, 9);
    again.dup = true;
    let rec = send(&mut s, p, Packet::Publish(again));
    assert!(matches!(rec.as_slice(), [Packet::PubRec(a)] if a.packet_id == 9));
    assert_eq!(publishes(&mut s, q).len(), 1);
}

/// [MQTT-2.2.1-2/3] Once PUBCOMP is sent, the packet id may be reused for a new message.
#[test]
fn qos2_packet_id_is_reusable_after_pubrel() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::ExactlyOnce);
    publish(&mut s, p, "t", b"first", QoS::ExactlyOnce, false, 1);
    send(&mut s, p, Packet::PubRel(PubAck::new(1)));
    publish(&mut s, p, "t", b"second", QoS::ExactlyOnce, false, 1);
    assert_eq!(payloads(&publishes(&mut s, q)), vec![&b"first"[..], b"second"]);
}

/// [MQTT-3.7.2-1] A PUBREL for an unknown packet id gets PUBCOMP 0x92.
#[test]
fn pubrel_for_an_unknown_id_gets_pubcomp_not_found() {
    let mut s = sim();
    let p = join(&mut s, "p");
    let comp = send(&mut s, p, Packet::PubRel(PubAck::new(42)));
    assert!(
        matches!(comp.as_slice(), [Packet::PubComp(a)] if a.reason_code == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

/// [MQTT-4.3.3-3..6] Outbound QoS 2: PUBLISH, PUBREC from the client → PUBREL, PUBCOMP ends it.
#[test]
fn qos2_outbound_flow_to_a_subscriber() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::ExactlyOnce);
    publish(&mut s, p, "t", b"x", QoS::ExactlyOnce, false, 1);
    let got = publishes(&mut s, q);
    let id = got[0].packet_id;
    let rel = send(&mut s, q, Packet::PubRec(PubAck::new(id)));
    assert!(matches!(rel.as_slice(), [Packet::PubRel(a)] if a.packet_id == id));
    assert_eq!(inflight(&s, "q"), 1, "awaiting PUBCOMP");
    assert!(send(&mut s, q, Packet::PubComp(PubAck::new(id))).is_empty());
    assert_eq!(inflight(&s, "q"), 0);
}

/// [MQTT-4.3.3-?] A PUBREC with a failure code (≥ 0x80) ends the flow: no PUBREL.
#[test]
fn failing_pubrec_ends_the_flow_without_pubrel() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::ExactlyOnce);
    publish(&mut s, p, "t", b"x", QoS::ExactlyOnce, false, 1);
    let id = publishes(&mut s, q)[0].packet_id;
    let rec = PubAck { packet_id: id, reason_code: ReasonCode::UNSPECIFIED_ERROR, ..Default::default() };
    assert!(send(&mut s, q, Packet::PubRec(rec)).is_empty());
    assert_eq!(inflight(&s, "q"), 0);
}

/// [MQTT-3.8.4-8] Delivered at the lower of the publish QoS and the subscription's.
#[test]
fn delivery_qos_is_the_lower_of_publish_and_subscription() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    publish(&mut s, p, "t", b"x", QoS::ExactlyOnce, false, 1);
    publish(&mut s, p, "t", b"y", QoS::AtMostOnce, false, 0);
    let got = publishes(&mut s, q);
    assert_eq!(got.iter().map(|p| p.qos).collect::<Vec<_>>(), vec![QoS::AtLeastOnce, QoS::AtMostOnce]);
}

/// [MQTT-4.3.2] QoS 1 is at least once: a PUBLISH re-sent with DUP is delivered again.
#[test]
fn qos1_publish_resent_with_dup_is_a_new_delivery() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    publish(&mut s, p, "t", b"x", QoS::AtLeastOnce, false, 5);
    let mut again = publish_packet("t", b"x", QoS::AtLeastOnce, false, 5);
    again.dup = true;
    send(&mut s, p, Packet::Publish(again));
    assert_eq!(publishes(&mut s, q).len(), 2);
}

/// [MQTT-2.2.1-3] Outbound packet ids are distinct while in flight, and a freed one is
/// never handed to a message still in flight.
#[test]
fn outbound_packet_ids_are_distinct_while_in_flight() {
    let mut s = sim();
    let (p, q) = (join(&mut s, "p"), join(&mut s, "q"));
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    for i in 0..5 {
        publish(&mut s, p, "t", b"x", QoS::AtLeastOnce, false, i + 1);
    }
    let ids: Vec<u16> = publishes(&mut s, q).iter().map(|p| p.packet_id).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 5, "{ids:?}");
    send(&mut s, q, Packet::PubAck(PubAck::new(ids[2])));
    publish(&mut s, p, "t", b"y", QoS::AtLeastOnce, false, 9);
    let next = publishes(&mut s, q)[0].packet_id;
    assert!(!ids.iter().enumerate().any(|(i, &id)| i != 2 && id == next), "{next} is still in flight");
}

/// [MQTT-4.4.0-1] On resume, unacknowledged QoS 1 PUBLISH packets are sent again with DUP.
#[test]
fn unacknowledged_qos1_is_resent_with_dup_on_resume() {
    let mut s = sim();
    let p = join(&mut s, "p");
    let q = join_persistent(&mut s, "q", 600);
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    publish(&mut s, p, "t", b"x", QoS::AtLeastOnce, false, 1);
    let first = publishes(&mut s, q);
    assert!(!first[0].dup);
    s.drop_connection(q);
    assert!(resume(&mut s, q, "q", 600), "[MQTT-3.2.2-3] session present");
    let again = publishes(&mut s, q);
    assert_eq!(payloads(&again), vec![b"x"]);
    assert!(again[0].dup, "[MQTT-3.3.1-1] DUP on a re-delivery");
    assert_eq!(again[0].packet_id, first[0].packet_id);
}

/// [MQTT-4.4.0-1] On resume, a QoS 2 delivery awaiting PUBCOMP gets its PUBREL again.
#[test]
fn pubrel_is_resent_on_resume() {
    let mut s = sim();
    let p = join(&mut s, "p");
    let q = join_persistent(&mut s, "q", 600);
    subscribe(&mut s, q, "t", QoS::ExactlyOnce);
    publish(&mut s, p, "t", b"x", QoS::ExactlyOnce, false, 1);
    let id = publishes(&mut s, q)[0].packet_id;
    send(&mut s, q, Packet::PubRec(PubAck::new(id)));
    s.drop_connection(q);
    resume(&mut s, q, "q", 600);
    let got = inbox(&mut s, q);
    assert!(matches!(got.as_slice(), [Packet::PubRel(a)] if a.packet_id == id), "{got:?}");
}

// ---- Sessions and takeover -----------------------------------------------------------------

/// [MQTT-3.1.4-3] A second connection with the same client id takes the session over: the
/// first is told 0x8E and closed.
#[test]
fn takeover_by_the_same_client_id_closes_the_old_connection_with_0x8e() {
    let mut s = sim();
    let a = join_persistent(&mut s, "dev", 600);
    subscribe(&mut s, a, "t", QoS::AtLeastOnce);
    let (b, present) = connect_as(&mut s, connect_packet("dev", false, 600), Principal::anonymous());
    assert!(present, "the session was handed over");
    assert!(!s.is_connected(a));
    assert_eq!(s.closed(a).map(|c| c.reason), Some(ReasonCode::SESSION_TAKEN_OVER));
    assert!(
        matches!(inbox(&mut s, a).as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SESSION_TAKEN_OVER)
    );
    let p = join(&mut s, "p");
    publish(&mut s, p, "t", b"to-b", QoS::AtLeastOnce, false, 1);
    assert_eq!(payloads(&publishes(&mut s, b)), vec![b"to-b"], "subscriptions moved with the session");
}

/// SPEC §3: a client id belongs to the principal holding its session; another principal's
/// CONNECT is refused (0x87) and the holder stays connected.
#[test]
fn another_principal_cannot_take_a_client_id_over() {
    let mut s = sim();
    let (a, _) = connect_as(&mut s, connect_packet("dev", true, 0), Principal::user("alice"));
    let (_, r) = s.connect(connect_packet("dev", true, 0), Principal::user("mallory"));
    assert_eq!(r, Err(ReasonCode::NOT_AUTHORIZED));
    assert!(s.is_connected(a));
}

/// [MQTT-3.1.2-4] Clean Start discards the session: no subscriptions, session present 0.
#[test]
fn clean_start_discards_the_previous_session() {
    let mut s = sim();
    let a = join_persistent(&mut s, "dev", 600);
    subscribe(&mut s, a, "t", QoS::AtLeastOnce);
    disconnect(&mut s, a, ReasonCode::SUCCESS);
    let (b, present) = connect_as(&mut s, connect_packet("dev", true, 600), Principal::anonymous());
    assert!(!present, "[MQTT-3.2.2-2]");
    let p = join(&mut s, "p");
    publish(&mut s, p, "t", b"x", QoS::AtLeastOnce, false, 1);
    assert!(publishes(&mut s, b).is_empty());
}

/// [MQTT-3.1.2-5] Clean Start 0 resumes: subscriptions kept, QoS 1 messages queued while
/// offline are delivered [MQTT-3.1.2-23]; QoS 0 ones are not kept for an offline session.
#[test]
fn resume_delivers_what_was_queued_while_offline() {
    let mut s = sim();
    let q = join_persistent(&mut s, "q", 600);
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    disconnect(&mut s, q, ReasonCode::SUCCESS);
    let p = join(&mut s, "p");
    publish(&mut s, p, "t", b"one", QoS::AtLeastOnce, false, 1);
    publish(&mut s, p, "t", b"zero", QoS::AtMostOnce, false, 0);
    assert_eq!(queued(&s, "q"), 1);
    assert!(resume(&mut s, q, "q", 600));
    assert_eq!(payloads(&publishes(&mut s, q)), vec![b"one"]);
}

/// [MQTT-3.1.2-23 / 3.1.3] Session expiry 0: the session ends with the connection.
#[test]
fn session_with_expiry_zero_ends_with_its_connection() {
    let mut s = sim();
    let q = join(&mut s, "q");
    assert_eq!(s.broker.session_count(), 1);
    disconnect(&mut s, q, ReasonCode::SUCCESS);
    assert_eq!(s.broker.session_count(), 0);
}

/// [MQTT-3.1.2-23] A session expires its interval after the connection closed, on the
/// virtual clock; not a moment before.
#[test]
fn session_expires_after_its_interval_on_the_virtual_clock() {
    let mut s = sim();
    let q = join_persistent(&mut s, "q", 60);
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    s.drop_connection(q);
    s.advance(Duration::from_secs(59));
    assert_eq!(s.broker.session_count(), 1);
    assert_eq!(s.broker.session_summary("q", s.now).and_then(|x| x.disconnected_for), Some(59));
    s.advance(Duration::from_secs(1));
    assert_eq!(s.broker.session_count(), 0);
    assert_eq!(s.broker.subscription_count(), 0);
}

/// [MQTT-3.14.2-2] A DISCONNECT may not set a session expiry when the CONNECT had 0.
#[test]
fn disconnect_cannot_raise_an_expiry_of_zero() {
    let mut s = sim();
    let q = join(&mut s, "q");
    let mut d = Disconnect::new(ReasonCode::SUCCESS);
    d.properties.session_expiry_interval = Some(60);
    let close = s.send(q, Packet::Disconnect(d)).expect("connected").expect_err("closed");
    assert_eq!(close.reason, ReasonCode::PROTOCOL_ERROR);
}

/// [MQTT-3.14.2-?] A DISCONNECT's Session Expiry Interval replaces the CONNECT's.
#[test]
fn disconnect_can_shorten_the_session_expiry() {
    let mut s = sim();
    let q = join_persistent(&mut s, "q", 600);
    let mut d = Disconnect::new(ReasonCode::SUCCESS);
    d.properties.session_expiry_interval = Some(5);
    let _ = s.send(q, Packet::Disconnect(d));
    s.advance(Duration::from_secs(5));
    assert_eq!(s.broker.session_count(), 0);
}

/// The core is deterministic: assigned client ids come from the configured seed
/// ([MQTT-3.2.2-16] Assigned Client Identifier), so two runs with one seed agree.
#[test]
fn assigned_client_ids_follow_the_seed() {
    let assigned = |seed: u64| {
        let mut s = sim_with(BrokerConfig { id_seed: seed, ..Default::default() });
        let (c, r) = s.connect(connect_packet("", true, 0), Principal::anonymous());
        r.expect("connected");
        match s.take(c).first() {
            Some(Packet::Connack(a)) => a.properties.assigned_client_identifier.clone().expect("assigned"),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(assigned(7), assigned(7));
    assert_ne!(assigned(7), assigned(8));
}

// ---- Wills ---------------------------------------------------------------------------------

fn with_will(id: &str, expiry: u32, delay: Option<u32>) -> Connect {
    Connect { will: Some(will("status/dev", delay)), ..connect_packet(id, true, expiry) }
}

fn watcher(s: &mut Sim) -> ClientId {
    let w = join(s, "watcher");
    subscribe(s, w, "status/#", QoS::AtLeastOnce);
    w
}

/// [MQTT-3.1.2-8] The will is published when the network connection closes without a
/// DISCONNECT.
#[test]
fn will_is_published_on_abnormal_close() {
    let mut s = sim();
    let w = watcher(&mut s);
    let (d, _) = connect_as(&mut s, with_will("dev", 0, None), Principal::anonymous());
    s.drop_connection(d);
    assert_eq!(payloads(&publishes(&mut s, w)), vec![b"gone"]);
}

/// [MQTT-3.1.2-10] DISCONNECT 0x00 discards the will.
#[test]
fn no_will_after_a_normal_disconnect() {
    let mut s = sim();
    let w = watcher(&mut s);
    let (d, _) = connect_as(&mut s, with_will("dev", 0, None), Principal::anonymous());
    disconnect(&mut s, d, ReasonCode::SUCCESS);
    assert!(publishes(&mut s, w).is_empty());
}

/// [MQTT-3.14.4-3] DISCONNECT 0x04 (Disconnect with Will Message) publishes it.
#[test]
fn disconnect_with_will_publishes_it() {
    let mut s = sim();
    let w = watcher(&mut s);
    let (d, _) = connect_as(&mut s, with_will("dev", 0, None), Principal::anonymous());
    disconnect(&mut s, d, ReasonCode::DISCONNECT_WITH_WILL);
    assert_eq!(publishes(&mut s, w).len(), 1);
}

/// [MQTT-3.1.3-9] A Will Delay Interval holds the will back until it passes.
#[test]
fn will_delay_publishes_after_the_interval() {
    let mut s = sim();
    let w = watcher(&mut s);
    let (d, _) = connect_as(&mut s, with_will("dev", 600, Some(30)), Principal::anonymous());
    s.drop_connection(d);
    s.advance(Duration::from_secs(29));
    assert!(publishes(&mut s, w).is_empty());
    s.advance(Duration::from_secs(1));
    assert_eq!(publishes(&mut s, w).len(), 1);
}

/// [MQTT-3.1.3-9] A reconnect before the will delay passes cancels the will.
#[test]
fn reconnect_within_the_will_delay_cancels_it() {
    let mut s = sim();
    let w = watcher(&mut s);
    let (d, _) = connect_as(&mut s, with_will("dev", 600, Some(30)), Principal::anonymous());
    s.drop_connection(d);
    s.advance(Duration::from_secs(10));
    resume(&mut s, d, "dev", 600);
    s.advance(Duration::from_secs(60));
    assert!(publishes(&mut s, w).is_empty());
}

/// [MQTT-3.1.3-9] The session ending first publishes the will then (delay = min(delay, expiry)).
#[test]
fn session_expiry_before_the_will_delay_publishes_the_will_then() {
    let mut s = sim();
    let w = watcher(&mut s);
    let (d, _) = connect_as(&mut s, with_will("dev", 10, Some(3600)), Principal::anonymous());
    s.drop_connection(d);
    s.advance(Duration::from_secs(9));
    assert!(publishes(&mut s, w).is_empty());
    s.advance(Duration::from_secs(1));
    assert_eq!(publishes(&mut s, w).len(), 1);
}

/// [MQTT-3.1.2-24] No packet within 1.5 × keep alive: the core's timeout closes with 0x8D
/// and the will is published; a PINGREQ keeps it open [MQTT-3.12.4-1].
#[test]
fn keep_alive_timeout_on_the_virtual_clock_publishes_the_will() {
    let mut s = sim();
    let w = watcher(&mut s);
    let (d, _) = connect_as(&mut s, Connect { keep_alive: 10, ..with_will("dev", 0, None) }, Principal::anonymous());
    s.advance(Duration::from_secs(14));
    assert!(matches!(send(&mut s, d, Packet::PingReq).as_slice(), [Packet::PingResp]));
    s.advance(Duration::from_secs(14));
    assert!(s.is_connected(d));
    s.advance(Duration::from_secs(1));
    assert_eq!(s.closed(d).map(|c| c.reason), Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
    assert!(
        matches!(inbox(&mut s, d).as_slice(), [Packet::Disconnect(x)] if x.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
    assert_eq!(publishes(&mut s, w).len(), 1);
}

/// SPEC §10: the credential's expiry ends the connection (0xA0) and discards the will.
#[test]
fn credential_expiry_closes_without_the_will() {
    let mut s = sim();
    let w = watcher(&mut s);
    let (d, _) = connect_as(&mut s, with_will("dev", 0, None), Principal::anonymous());
    let at = s.now + Duration::from_secs(60);
    // The shell sets it from the token's `exp`.
    let conn = s.get(d).and_then(|c| c.conn.as_ref()).map(|c| c.poll_timeout());
    assert_eq!(conn, Some(None), "keep alive 0, no credential expiry: nothing to wait for");
    set_expiry(&mut s, d, at);
    s.advance(Duration::from_secs(60));
    assert_eq!(s.closed(d).map(|c| (c.reason, c.publish_will)), Some((ReasonCode::MAXIMUM_CONNECT_TIME, false)));
    assert!(publishes(&mut s, w).is_empty());
}

fn set_expiry(s: &mut Sim, c: ClientId, at: Instant) {
    // `Sim` hands out shared access to clients; the connection is reached through a reconnect-
    // free path: take the client's connection, set it, and put it back.
    s.with_connection(c, |conn| conn.set_credential_expiry(Some(at)));
}

// ---- Message expiry --------------------------------------------------------------------------

fn expiring(topic: &str, secs: u32) -> Packet {
    let mut p = publish_packet(topic, b"x", QoS::AtLeastOnce, false, 1);
    p.properties.message_expiry_interval = Some(secs);
    Packet::Publish(p)
}

/// [MQTT-3.3.2-5] A message whose expiry passed while queued is not delivered.
#[test]
fn expired_message_is_not_delivered() {
    let mut s = sim();
    let q = join_persistent(&mut s, "q", 600);
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    s.drop_connection(q);
    let p = join(&mut s, "p");
    send(&mut s, p, expiring("t", 10));
    s.advance(Duration::from_secs(11));
    resume(&mut s, q, "q", 600);
    assert!(publishes(&mut s, q).is_empty());
}

/// [MQTT-3.3.2-6] The expiry interval forwarded is what is left of it.
#[test]
fn forwarded_message_expiry_is_what_remains() {
    let mut s = sim();
    let q = join_persistent(&mut s, "q", 600);
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    s.drop_connection(q);
    let p = join(&mut s, "p");
    send(&mut s, p, expiring("t", 10));
    s.advance(Duration::from_secs(4));
    resume(&mut s, q, "q", 600);
    let got = publishes(&mut s, q);
    assert_eq!(got[0].properties.message_expiry_interval, Some(6));
}

// ---- Flow control and queues ---------------------------------------------------------------

fn with_receive_max(id: &str, max: u16) -> Connect {
    let mut c = connect_packet(id, true, 0);
    c.properties.receive_maximum = Some(max);
    c
}

/// [MQTT-4.9.0-2] At most Receive Maximum QoS 1/2 deliveries in flight; an acknowledgement
/// lets the next one go.
#[test]
fn receive_maximum_bounds_deliveries_in_flight() {
    let mut s = sim();
    let (q, _) = connect_as(&mut s, with_receive_max("q", 2), Principal::anonymous());
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    let p = join(&mut s, "p");
    for i in 1..=5 {
        publish(&mut s, p, "t", b"x", QoS::AtLeastOnce, false, i);
    }
    let got = publishes(&mut s, q);
    assert_eq!(got.len(), 2);
    assert_eq!((inflight(&s, "q"), queued(&s, "q")), (2, 3));
    // The shell pulls after each read batch: the freed slot goes to the next delivery.
    let next = send(&mut s, q, Packet::PubAck(PubAck::new(got[0].packet_id)));
    assert!(matches!(next.as_slice(), [Packet::Publish(_)]), "{next:?}");
    assert_eq!(inflight(&s, "q"), 2);
}

/// [MQTT-4.9.0-3] QoS 0 deliveries are not held back by the Receive Maximum.
#[test]
fn qos0_is_not_bounded_by_receive_maximum() {
    let mut s = sim();
    let (q, _) = connect_as(&mut s, with_receive_max("q", 1), Principal::anonymous());
    subscribe(&mut s, q, "t", QoS::AtMostOnce);
    let p = join(&mut s, "p");
    for _ in 0..5 {
        publish(&mut s, p, "t", b"x", QoS::AtMostOnce, false, 0);
    }
    assert_eq!(publishes(&mut s, q).len(), 5);
}

/// The broker's own `max_inflight` bounds a client that asked for more.
#[test]
fn broker_max_inflight_bounds_deliveries_too() {
    let mut s = sim_with(BrokerConfig { max_inflight: 3, ..Default::default() });
    let q = join(&mut s, "q");
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    let p = join(&mut s, "p");
    for i in 1..=6 {
        publish(&mut s, p, "t", b"x", QoS::AtLeastOnce, false, i);
    }
    assert_eq!(publishes(&mut s, q).len(), 3);
}

/// [MQTT-3.3.4-9] More inbound QoS 2 PUBLISH packets unreleased than the broker's Receive
/// Maximum: DISCONNECT 0x93.
#[test]
fn inbound_receive_maximum_exceeded_disconnects_with_0x93() {
    let mut s = sim_with(BrokerConfig { receive_maximum: 2, ..Default::default() });
    let p = join(&mut s, "p");
    publish(&mut s, p, "t", b"x", QoS::ExactlyOnce, false, 1);
    publish(&mut s, p, "t", b"x", QoS::ExactlyOnce, false, 2);
    let close = s
        .send(p, Packet::Publish(publish_packet("t", b"x", QoS::ExactlyOnce, false, 3)))
        .expect("connected")
        .expect_err("closed");
    assert_eq!(close.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

/// `max_queued_messages`: deliveries beyond it are dropped and counted; the first ones stay.
#[test]
fn queue_limit_drops_and_counts_the_excess() {
    let mut s = sim_with(BrokerConfig { max_queued_messages: 3, ..Default::default() });
    let q = join_persistent(&mut s, "q", 600);
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    s.drop_connection(q);
    let p = join(&mut s, "p");
    for (i, m) in [b"1", b"2", b"3", b"4", b"5"].into_iter().enumerate() {
        publish(&mut s, p, "t", m, QoS::AtLeastOnce, false, i as u16 + 1);
    }
    assert_eq!(dropped(&s), 2);
    resume(&mut s, q, "q", 600);
    assert_eq!(payloads(&publishes(&mut s, q)), vec![&b"1"[..], b"2", b"3"]);
}

/// `max_queued_bytes`: a delivery that would take the queue over its bytes is dropped.
#[test]
fn queue_bytes_limit_drops_a_delivery_that_does_not_fit() {
    let mut s = sim_with(BrokerConfig { max_queued_bytes: 250, ..Default::default() });
    let q = join_persistent(&mut s, "q", 600);
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    s.drop_connection(q);
    let p = join(&mut s, "p");
    static BIG: [u8; 99] = [7; 99];
    for i in 1..=3 {
        publish(&mut s, p, "t", &BIG, QoS::AtLeastOnce, false, i);
    }
    assert_eq!((queued(&s, "q"), dropped(&s)), (2, 1));
}

// ---- Retained messages -----------------------------------------------------------------------

/// [MQTT-3.3.1-6/9] A retained message is sent to a new subscriber, with RETAIN set.
#[test]
fn retained_message_is_delivered_on_subscribe_with_retain_set() {
    let mut s = sim();
    let p = join(&mut s, "p");
    publish(&mut s, p, "r/1", b"v", QoS::AtLeastOnce, true, 1);
    let q = join(&mut s, "q");
    subscribe(&mut s, q, "r/#", QoS::AtLeastOnce);
    let got = publishes(&mut s, q);
    assert_eq!(payloads(&got), vec![b"v"]);
    assert!(got[0].retain);
}

/// [MQTT-3.3.1-10/11] An empty retained payload clears the topic (and is itself not kept).
#[test]
fn empty_retained_payload_clears_the_topic() {
    let mut s = sim();
    let p = join(&mut s, "p");
    publish(&mut s, p, "r/1", b"v", QoS::AtMostOnce, true, 0);
    assert_eq!(s.broker.retained_count(), 1);
    publish(&mut s, p, "r/1", b"", QoS::AtMostOnce, true, 0);
    assert_eq!(s.broker.retained_count(), 0);
    let q = join(&mut s, "q");
    subscribe(&mut s, q, "r/#", QoS::AtLeastOnce);
    assert!(publishes(&mut s, q).is_empty());
}

/// [MQTT-3.3.1-12/13] Live delivery clears RETAIN unless the subscription asked for Retain
/// As Published.
#[test]
fn retain_as_published_keeps_the_flag_on_live_delivery() {
    let mut s = sim();
    let (plain, rap) = (join(&mut s, "plain"), join(&mut s, "rap"));
    subscribe(&mut s, plain, "r/#", QoS::AtMostOnce);
    let opts = SubscriptionOptions { retain_as_published: true, ..Default::default() };
    subscribe_with(&mut s, rap, "r/#", opts, None);
    let p = join(&mut s, "p");
    publish(&mut s, p, "r/1", b"v", QoS::AtMostOnce, true, 0);
    assert!(!publishes(&mut s, plain)[0].retain);
    assert!(publishes(&mut s, rap)[0].retain);
}

/// [MQTT-3.3.1-10] Retain Handling 1: retained messages only when the subscription is new.
#[test]
fn retain_handling_1_sends_only_for_a_new_subscription() {
    let mut s = sim();
    let p = join(&mut s, "p");
    publish(&mut s, p, "r/1", b"v", QoS::AtMostOnce, true, 0);
    let q = join(&mut s, "q");
    let opts = SubscriptionOptions { retain_handling: RetainHandling::SendIfNew, ..Default::default() };
    subscribe_with(&mut s, q, "r/#", opts, None);
    assert_eq!(publishes(&mut s, q).len(), 1);
    subscribe_with(&mut s, q, "r/#", opts, None);
    assert!(publishes(&mut s, q).is_empty());
}

/// [MQTT-3.3.1-11] Retain Handling 2: no retained messages at subscribe.
#[test]
fn retain_handling_2_sends_none() {
    let mut s = sim();
    let p = join(&mut s, "p");
    publish(&mut s, p, "r/1", b"v", QoS::AtMostOnce, true, 0);
    let q = join(&mut s, "q");
    let opts = SubscriptionOptions { retain_handling: RetainHandling::DoNotSend, ..Default::default() };
    subscribe_with(&mut s, q, "r/#", opts, None);
    assert!(publishes(&mut s, q).is_empty());
}

/// [MQTT-3.8.4-4] Retain Handling 0: sent again on a repeated SUBSCRIBE (a replaced subscription).
#[test]
fn retain_handling_0_sends_again_on_resubscribe() {
    let mut s = sim();
    let p = join(&mut s, "p");
    publish(&mut s, p, "r/1", b"v", QoS::AtMostOnce, true, 0);
    let q = join(&mut s, "q");
    subscribe(&mut s, q, "r/#", QoS::AtMostOnce);
    subscribe(&mut s, q, "r/#", QoS::AtMostOnce);
    assert_eq!(publishes(&mut s, q).len(), 2);
}

// ---- Shared subscriptions, No Local, identifiers, overlaps -------------------------------------

/// [MQTT-4.8.2-?] A shared group gets each message once, spread over its members.
#[test]
fn shared_group_delivers_each_message_to_one_member() {
    let mut s = sim();
    let (a, b) = (join(&mut s, "a"), join(&mut s, "b"));
    subscribe(&mut s, a, "$share/g/jobs/#", QoS::AtLeastOnce);
    subscribe(&mut s, b, "$share/g/jobs/#", QoS::AtLeastOnce);
    let p = join(&mut s, "p");
    for i in 1..=4 {
        publish(&mut s, p, "jobs/x", b"j", QoS::AtLeastOnce, false, i);
    }
    let (na, nb) = (publishes(&mut s, a).len(), publishes(&mut s, b).len());
    assert_eq!(na + nb, 4);
    assert!(na > 0 && nb > 0, "both members get work: {na} / {nb}");
}

/// [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let mut s = sim();
    let a = join(&mut s, "a");
    let sub = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(
            TopicFilter::new("$share/g/t").expect("valid"),
            SubscriptionOptions { no_local: true, ..Default::default() },
        )],
    };
    let close = s.send(a, Packet::Subscribe(sub)).expect("connected").expect_err("closed");
    assert_eq!(close.reason, ReasonCode::PROTOCOL_ERROR);
}

/// [MQTT-3.8.4-?] Retained messages are not sent for a shared subscription.
#[test]
fn shared_subscription_gets_no_retained_messages() {
    let mut s = sim();
    let p = join(&mut s, "p");
    publish(&mut s, p, "jobs/x", b"r", QoS::AtMostOnce, true, 0);
    let a = join(&mut s, "a");
    subscribe(&mut s, a, "$share/g/jobs/#", QoS::AtMostOnce);
    assert!(publishes(&mut s, a).is_empty());
}

/// [MQTT-3.8.3-3] No Local: a client is not sent its own publications.
#[test]
fn no_local_is_not_sent_its_own_publication() {
    let mut s = sim();
    let (a, b) = (join(&mut s, "a"), join(&mut s, "b"));
    let opts = SubscriptionOptions { no_local: true, ..Default::default() };
    subscribe_with(&mut s, a, "t", opts, None);
    subscribe(&mut s, b, "t", QoS::AtMostOnce);
    publish(&mut s, a, "t", b"mine", QoS::AtMostOnce, false, 0);
    assert!(publishes(&mut s, a).is_empty());
    assert_eq!(publishes(&mut s, b).len(), 1);
    publish(&mut s, b, "t", b"theirs", QoS::AtMostOnce, false, 0);
    assert_eq!(publishes(&mut s, a).len(), 1);
}

/// [MQTT-3.3.4-3] The Subscription Identifier is carried with each matching delivery.
#[test]
fn subscription_identifier_is_sent_with_the_delivery() {
    let mut s = sim();
    let q = join(&mut s, "q");
    subscribe_with(&mut s, q, "t/#", SubscriptionOptions::default(), Some(17));
    let p = join(&mut s, "p");
    publish(&mut s, p, "t/1", b"x", QoS::AtMostOnce, false, 0);
    assert_eq!(publishes(&mut s, q)[0].properties.subscription_identifiers, vec![17]);
}

/// [MQTT-3.3.4-2/3/5] Overlapping subscriptions of one session: one delivery, at the highest
/// QoS, carrying every matching identifier.
#[test]
fn overlapping_subscriptions_give_one_delivery_at_the_highest_qos() {
    let mut s = sim();
    let q = join(&mut s, "q");
    subscribe_with(&mut s, q, "a/+", SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() }, Some(1));
    subscribe_with(&mut s, q, "a/#", SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }, Some(2));
    let p = join(&mut s, "p");
    publish(&mut s, p, "a/b", b"x", QoS::ExactlyOnce, false, 1);
    let got = publishes(&mut s, q);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    let mut ids = got[0].properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
}

/// [MQTT-3.10.4-?] UNSUBSCRIBE stops deliveries; an unknown filter answers 0x11.
#[test]
fn unsubscribe_stops_deliveries_and_reports_unknown_filters() {
    let mut s = sim();
    let q = join(&mut s, "q");
    subscribe(&mut s, q, "t", QoS::AtMostOnce);
    let u = Unsubscribe {
        packet_id: 2,
        properties: Default::default(),
        filters: vec![TopicFilter::new("t").expect("valid"), TopicFilter::new("nope").expect("valid")],
    };
    let ack = send(&mut s, q, Packet::Unsubscribe(u));
    let codes = match ack.as_slice() {
        [Packet::UnsubAck(a)] => a.reason_codes.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(codes, vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]);
    let p = join(&mut s, "p");
    publish(&mut s, p, "t", b"x", QoS::AtMostOnce, false, 0);
    assert!(publishes(&mut s, q).is_empty());
}

// ---- Topic aliases ---------------------------------------------------------------------------

/// [MQTT-3.3.2-12] An inbound alias set with a topic is used by later PUBLISH packets with
/// an empty topic.
#[test]
fn inbound_topic_alias_stands_for_its_topic() {
    let mut s = sim();
    let q = join(&mut s, "q");
    subscribe(&mut s, q, "long/topic", QoS::AtMostOnce);
    let p = join(&mut s, "p");
    let mut first = publish_packet("long/topic", b"1", QoS::AtMostOnce, false, 0);
    first.properties.topic_alias = Some(3);
    send(&mut s, p, Packet::Publish(first));
    let mut second = publish_packet("x", b"2", QoS::AtMostOnce, false, 0);
    second.topic = TopicName::alias_placeholder();
    second.properties.topic_alias = Some(3);
    send(&mut s, p, Packet::Publish(second));
    assert_eq!(payloads(&publishes(&mut s, q)), vec![&b"1"[..], b"2"]);
}

/// [MQTT-3.3.2-9/10] An alias above the broker's Topic Alias Maximum: DISCONNECT 0x94.
#[test]
fn topic_alias_above_the_maximum_disconnects() {
    let mut s = sim_with(BrokerConfig { topic_alias_maximum: 2, ..Default::default() });
    let p = join(&mut s, "p");
    let mut pkt = publish_packet("t", b"1", QoS::AtMostOnce, false, 0);
    pkt.properties.topic_alias = Some(3);
    let close = s.send(p, Packet::Publish(pkt)).expect("connected").expect_err("closed");
    assert_eq!(close.reason, ReasonCode::TOPIC_ALIAS_INVALID);
}

/// [MQTT-3.3.4-?] The broker uses outbound aliases only up to the client's Topic Alias
/// Maximum, and sends the topic once per alias.
#[test]
fn outbound_topic_alias_replaces_the_topic_after_first_use() {
    let mut s = sim();
    let mut c = connect_packet("q", true, 0);
    c.properties.topic_alias_maximum = Some(1);
    let (q, _) = connect_as(&mut s, c, Principal::anonymous());
    subscribe(&mut s, q, "#", QoS::AtMostOnce);
    let p = join(&mut s, "p");
    publish(&mut s, p, "a", b"1", QoS::AtMostOnce, false, 0);
    publish(&mut s, p, "a", b"2", QoS::AtMostOnce, false, 0);
    publish(&mut s, p, "b", b"3", QoS::AtMostOnce, false, 0);
    let got = publishes(&mut s, q);
    let seen: Vec<(&str, Option<u16>)> = got.iter().map(|p| (p.topic.as_str(), p.properties.topic_alias)).collect();
    assert_eq!(seen, vec![("a", Some(1)), ("", Some(1)), ("b", None)]);
}

// ---- Policy ------------------------------------------------------------------------------------

/// SPEC §10: narrowing the policy drops what is queued for a receiver that may no longer
/// receive it; what it may still receive is delivered.
#[test]
fn narrowed_policy_drops_queued_deliveries_at_delivery_time() {
    let wide = "user q\ntopic read a/#\ntopic read b/#\nuser p\ntopic write #\n";
    let narrow = "user q\ntopic read b/#\nuser p\ntopic write #\n";
    let mut s = Sim::new(BrokerConfig::default(), acl(wide), Instant::now());
    let (q, _) = connect_as(&mut s, connect_packet("q", true, 600), Principal::user("q"));
    subscribe(&mut s, q, "a/#", QoS::AtLeastOnce);
    subscribe(&mut s, q, "b/#", QoS::AtLeastOnce);
    s.drop_connection(q);
    let (p, _) = connect_as(&mut s, connect_packet("p", true, 0), Principal::user("p"));
    publish(&mut s, p, "a/1", b"a", QoS::AtLeastOnce, false, 1);
    publish(&mut s, p, "b/1", b"b", QoS::AtLeastOnce, false, 2);
    assert_eq!(queued(&s, "q"), 2);
    s.broker.set_authorizer(acl(narrow));
    s.reconnect(q, connect_packet("q", false, 600), Principal::user("q")).expect("resumed");
    assert_eq!(payloads(&publishes(&mut s, q)), vec![b"b"]);
}

/// A denied QoS 1 publish gets PUBACK 0x87 and reaches nobody.
#[test]
fn denied_publish_is_acknowledged_not_authorized() {
    let mut s =
        Sim::new(BrokerConfig::default(), acl("user p\ntopic write ok/#\nuser q\ntopic read #\n"), Instant::now());
    let (q, _) = connect_as(&mut s, connect_packet("q", true, 0), Principal::user("q"));
    subscribe(&mut s, q, "#", QoS::AtLeastOnce);
    let (p, _) = connect_as(&mut s, connect_packet("p", true, 0), Principal::user("p"));
    let ack = publish(&mut s, p, "no/1", b"x", QoS::AtLeastOnce, false, 1);
    assert!(matches!(ack.as_slice(), [Packet::PubAck(a)] if a.reason_code == ReasonCode::NOT_AUTHORIZED));
    assert!(publishes(&mut s, q).is_empty());
}

// ---- $SYS --------------------------------------------------------------------------------------

/// [MQTT-4.7.2-1] `#` and `+/…` do not match `$SYS/…` topics; `$SYS/#` does.
#[test]
fn sys_topics_are_not_matched_by_leading_wildcards() {
    let mut s = sim();
    let (all, plus, sys) = (join(&mut s, "all"), join(&mut s, "plus"), join(&mut s, "sys"));
    subscribe(&mut s, all, "#", QoS::AtMostOnce);
    subscribe(&mut s, plus, "+/broker/#", QoS::AtMostOnce);
    subscribe(&mut s, sys, "$SYS/#", QoS::AtMostOnce);
    s.broker.publish_sys(s.now);
    s.settle(None);
    assert!(publishes(&mut s, all).is_empty());
    assert!(publishes(&mut s, plus).is_empty());
    assert!(!publishes(&mut s, sys).is_empty());
}

/// SPEC §10: a client may not publish to `$SYS/…` without an explicit grant.
#[test]
fn clients_cannot_publish_to_sys_by_default() {
    let mut s = sim();
    let sys = join(&mut s, "sys");
    subscribe(&mut s, sys, "$SYS/#", QoS::AtMostOnce);
    let p = join(&mut s, "p");
    let ack = publish(&mut s, p, "$SYS/fake", b"x", QoS::AtLeastOnce, false, 1);
    assert!(matches!(ack.as_slice(), [Packet::PubAck(a)] if a.reason_code == ReasonCode::NOT_AUTHORIZED));
    assert!(publishes(&mut s, sys).is_empty());
}

// ---- The simulator itself ------------------------------------------------------------------

/// The recording waker sees one wake per publisher batch, not one per message.
#[test]
fn one_wake_per_subscriber_per_batch() {
    let mut s = sim();
    let q = join(&mut s, "q");
    subscribe(&mut s, q, "t", QoS::AtMostOnce);
    let p = join(&mut s, "p");
    let before = s.get(q).map_or(0, |c| c.waker.count());
    let batch = (0..10).map(|_| Packet::Publish(publish_packet("t", b"x", QoS::AtMostOnce, false, 0))).collect();
    s.send_batch(p, batch).expect("connected").expect("open");
    assert_eq!(s.get(q).map_or(0, |c| c.waker.count()) - before, 1);
    assert_eq!(publishes(&mut s, q).len(), 10);
}

// ---- The store seam ------------------------------------------------------------------------

/// An in-memory store: every op gets the next ticket.
#[derive(Default)]
struct Tickets(std::sync::atomic::AtomicU64);

impl warden_core::persist::Persist for Tickets {
    fn submit(&self, _op: warden_core::persist::PersistOp) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    fn next_id(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

/// The crate's call order: `flush_wakes` (which routes the batch and stores the deliveries to
/// persistent sessions) comes before `take_durable`, or the PUBACK's ticket misses them.
#[test]
fn flush_wakes_before_take_durable_gives_the_ticket_the_ack_waits_for() {
    let store = Arc::new(Tickets::default());
    let mut s = Sim::with_store(BrokerConfig::default(), Arc::new(AllowAll), Some(store.clone()), Instant::now());
    let q = join_persistent(&mut s, "q", 600);
    subscribe(&mut s, q, "t", QoS::AtLeastOnce);
    s.drop_connection(q);
    let p = join(&mut s, "p");
    let now = s.now;
    let ticket = s
        .with_connection(p, |conn| {
            let mut out = bytes::BytesMut::new();
            conn.handle(Packet::Publish(publish_packet("t", b"x", QoS::AtLeastOnce, false, 1)), now, &mut out)
                .expect("open");
            let early = conn.take_durable();
            let before = store.0.load(std::sync::atomic::Ordering::Relaxed);
            conn.flush_wakes();
            let late = conn.take_durable();
            assert_eq!(early, 0, "nothing was routed (nor stored) before flush_wakes");
            assert!(late > before, "the delivery stored by routing: ticket {late}, store at {before} before");
            late
        })
        .expect("connected");
    assert!(ticket > 0);
    assert_eq!(queued(&s, "q"), 1);
}
