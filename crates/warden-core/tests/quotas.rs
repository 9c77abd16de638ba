//! Per-principal quotas and store writes proportional to the change (SPEC §10's last
//! paragraph; issue 17), in memory: a `Broker` driven through `Connection`s with decoded
//! packets. The tests name the issue's observation they answer:
//! - item 1: "Offline sessions with 1,000 subscriptions of ~60 KB filters each: RSS 13 MB →
//!   1.1 GB, state.redb 466 MB, no limit on sessions per user" (sessions and subscriptions);
//! - item 2: "2,000 retained messages of 200 KB: RSS 694 MB, store 514 MB; the retained store
//!   has no cap" (retained messages);
//! - item 3: "Every SUBSCRIBE rewrites the whole session record" (store writes).
//!
//! Each quota is tested for what it refuses (0x97, nothing else changed), for what it does not
//! (another principal, a replacement, what was given back) and for its counter.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    decode, Connect, LastWill, Packet, Properties, Protocol, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName, Unsubscribe,
};
use parking_lot::Mutex;
use warden_core::persist::{Persist, PersistOp};
use warden_core::{Broker, BrokerConfig, Close, Connection, Wake};
use warden_policy::{AllowAll, Principal};

struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

fn broker(config: BrokerConfig) -> Arc<Broker> {
    Broker::new(config, Arc::new(AllowAll), Instant::now())
}

fn connect_packet(protocol: Protocol, id: &str, clean: bool, expiry: u32) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 0,
        properties: Properties {
            session_expiry_interval: (protocol == Protocol::V5).then_some(expiry),
            ..Default::default()
        },
        client_id: id.to_owned(),
        will: None,
        username: None,
        password: None,
    }
}

fn packets(out: &mut BytesMut, v: Protocol) -> Vec<Packet> {
    let mut ps = Vec::new();
    while let Some(p) = decode(out, v, u32::MAX).expect("the broker writes valid packets") {
        ps.push(p);
    }
    ps
}

/// CONNECT; the connection, or the refusing CONNACK's code (as the client reads it).
fn try_connect(b: &Arc<Broker>, c: Connect, p: &Principal) -> Result<Connection, ReasonCode> {
    let v = c.protocol;
    let mut out = BytesMut::new();
    let r = b.connect(c, p.clone(), Arc::new(NoWake), None, Instant::now(), &mut out);
    match (r, packets(&mut out, v).as_slice()) {
        (Ok(conn), [Packet::Connack(a)]) if a.reason_code.is_success() => Ok(conn),
        (Err(_), [Packet::Connack(a)]) if !a.session_present => Err(a.reason_code),
        (_, other) => panic!("unexpected CONNECT answer {other:?}"),
    }
}

/// A v5 session with a one-hour expiry (persistent), or none (`expiry` 0).
fn session(b: &Arc<Broker>, id: &str, p: &Principal, expiry: u32) -> Result<Connection, ReasonCode> {
    try_connect(b, connect_packet(Protocol::V5, id, true, expiry), p)
}

fn close(c: Connection) {
    c.closed(Close { reason: ReasonCode::SUCCESS, publish_will: false }, Instant::now());
}

/// SUBSCRIBE these filters in one packet; the SUBACK's codes.
fn subscribe(c: &mut Connection, filters: &[&str]) -> Vec<ReasonCode> {
    let v = c.protocol();
    let mut out = BytesMut::new();
    let s = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|f| {
                let opts = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
                (TopicFilter::new(f).expect("valid filter"), opts)
            })
            .collect(),
    };
    c.handle(Packet::Subscribe(s), Instant::now(), &mut out).expect("not closed");
    match packets(&mut out, v).as_slice() {
        [Packet::SubAck(a)] => a.reason_codes.clone(),
        other => panic!("expected a SUBACK, got {other:?}"),
    }
}

fn unsubscribe(c: &mut Connection, filter: &str) {
    let mut out = BytesMut::new();
    let u =
        Unsubscribe { packet_id: 2, properties: Default::default(), filters: vec![TopicFilter::new(filter).unwrap()] };
    c.handle(Packet::Unsubscribe(u), Instant::now(), &mut out).expect("not closed");
}

/// PUBLISH (routed at once); what the publisher was sent back.
fn publish(c: &mut Connection, topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Vec<Packet> {
    let v = c.protocol();
    let mut out = BytesMut::new();
    let p = Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::new(topic).unwrap(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload),
    };
    c.handle(Packet::Publish(p), Instant::now(), &mut out).expect("not closed");
    c.flush_wakes();
    packets(&mut out, v)
}

/// The reason code of the acknowledgement in `ps` (PUBACK or PUBREC).
fn ack_code(ps: &[Packet]) -> ReasonCode {
    match ps {
        [Packet::PubAck(a)] | [Packet::PubRec(a)] => a.reason_code,
        other => panic!("expected one acknowledgement, got {other:?}"),
    }
}

/// Payloads of the PUBLISH packets `c` has to send now.
fn received(c: &mut Connection) -> Vec<Bytes> {
    let v = c.protocol();
    let mut out = BytesMut::new();
    c.pull(Instant::now(), &mut out, usize::MAX).expect("not taken over");
    packets(&mut out, v)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.payload),
            _ => None,
        })
        .collect()
}

fn hits(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

const QUOTA: ReasonCode = ReasonCode::QUOTA_EXCEEDED;

// ---- item 1: sessions --------------------------------------------------------------------

/// Item 1 ("no limit on sessions per user"): a principal holds at most
/// `max_sessions_per_principal` persistent sessions. The CONNECT that would make one more is
/// refused with 0x97 (v3: 0x03 Server unavailable, the return code 3.1.1 has for a server that
/// cannot serve the connection) and changes nothing; sessions without an expiry are not
/// counted; a Clean Start over one of its own replaces it; an ended session gives its place
/// back; another principal is unaffected.
#[test]
fn issue_17_item_1_sessions_per_principal() {
    let b = broker(BrokerConfig { max_sessions_per_principal: 2, ..Default::default() });
    let (m, v) = (Principal::user("m"), Principal::user("v"));
    let m1 = session(&b, "m1", &m, 3600).unwrap();
    let _m2 = session(&b, "m2", &m, 3600).unwrap();
    assert_eq!(session(&b, "m3", &m, 3600).err(), Some(QUOTA));
    assert_eq!(try_connect(&b, connect_packet(Protocol::V311, "m3", false, 0), &m).err(), Some(ReasonCode(0x03)));
    assert_eq!(b.session_count(), 2, "the refusals made nothing");
    assert_eq!(hits(&b.stats.limits.sessions_per_principal), 2);
    // Sessions that end with their connection are bounded by the connection limits instead.
    let live: Vec<_> = (0..5).map(|i| session(&b, &format!("m-live-{i}"), &m, 0).unwrap()).collect();
    // A Clean Start over its own session replaces it; another principal has its own quota.
    close(m1);
    let m1 = session(&b, "m1", &m, 3600).unwrap();
    for i in 0..2 {
        session(&b, &format!("v{i}"), &v, 3600).unwrap();
    }
    // A session that ends gives its place back: m1 closes with an expiry of 0.
    let mut out = BytesMut::new();
    let mut m1 = m1;
    let bye = mqtt_codec::Disconnect {
        properties: Properties { session_expiry_interval: Some(0), ..Default::default() }.into(),
        ..mqtt_codec::Disconnect::new(ReasonCode::SUCCESS)
    };
    let close_with = m1.handle(Packet::Disconnect(bye), Instant::now(), &mut out).unwrap_err();
    m1.closed(close_with, Instant::now());
    session(&b, "m3", &m, 3600).expect("room again");
    drop(live);
}

/// Item 1: a session made without an expiry that a second connection resumes with one becomes
/// persistent, and counts: at the quota, that resume is refused (and the session is left as
/// it was), so the quota cannot be walked around.
#[test]
fn issue_17_item_1_a_resume_that_makes_a_session_persistent_counts() {
    let b = broker(BrokerConfig { max_sessions_per_principal: 1, ..Default::default() });
    let m = Principal::user("m");
    let _kept = session(&b, "kept", &m, 3600).unwrap();
    let _live = session(&b, "live", &m, 0).unwrap();
    let resume = connect_packet(Protocol::V5, "live", false, 3600);
    assert_eq!(try_connect(&b, resume, &m).err(), Some(QUOTA));
    assert_eq!(b.session_count(), 2);
    // Resuming a persistent session is never refused: it is no new one.
    assert!(try_connect(&b, connect_packet(Protocol::V5, "kept", false, 3600), &m).is_ok());
}

// ---- item 1: subscriptions ---------------------------------------------------------------

/// Item 1 ("1,000 subscriptions of ~60 KB filters each"): the sessions of one principal share
/// `max_subscriptions_per_principal` and `max_subscription_bytes_per_principal`. A filter
/// beyond either gets 0x97 in the SUBACK (v3: 0x80) while the others of the packet are
/// granted; re-subscribing an existing filter is no new subscription; what is unsubscribed,
/// or goes with an ended session, is room again; another principal is unaffected.
#[test]
fn issue_17_item_1_subscriptions_per_principal() {
    let b = broker(BrokerConfig {
        max_subscriptions_per_principal: 3,
        max_subscription_bytes_per_principal: 64,
        ..Default::default()
    });
    let (m, v) = (Principal::user("m"), Principal::user("v"));
    let mut m1 = session(&b, "m1", &m, 3600).unwrap();
    let mut m2 = session(&b, "m2", &m, 0).unwrap();
    let ok = ReasonCode::GRANTED_QOS_1;
    let long = "x".repeat(64);
    assert_eq!(subscribe(&mut m1, &["a", long.as_str(), "b"]), vec![ok, QUOTA, ok], "bytes");
    assert_eq!(subscribe(&mut m2, &["c", "d"]), vec![ok, QUOTA], "count, across m's sessions");
    assert_eq!(subscribe(&mut m1, &["a"]), vec![ok], "a replacement is no new subscription");
    let mut m3 = try_connect(&b, connect_packet(Protocol::V311, "m3", true, 0), &m).unwrap();
    assert_eq!(subscribe(&mut m3, &["e"]), vec![ReasonCode::V3_SUBACK_FAILURE]);
    assert_eq!(hits(&b.stats.limits.subscriptions_per_principal), 3);
    // Another principal: its own quota, whatever m holds.
    let mut v1 = session(&b, "v1", &v, 3600).unwrap();
    assert_eq!(subscribe(&mut v1, &["a", "b", "c"]), vec![ok, ok, ok]);
    // Room again: an UNSUBSCRIBE, and a session's end (m2 had no expiry).
    unsubscribe(&mut m1, "b");
    assert_eq!(subscribe(&mut m1, &["e"]), vec![ok]);
    assert_eq!(subscribe(&mut m1, &["f"]), vec![QUOTA]);
    close(m2);
    assert_eq!(subscribe(&mut m1, &["f"]), vec![ok]);
    // The refused filters were never subscribed: a message to them reaches nobody.
    let mut p = session(&b, "p", &v, 0).unwrap();
    publish(&mut p, &long, b"no", QoS::AtMostOnce, false);
    publish(&mut p, "f", b"yes", QoS::AtMostOnce, false);
    assert_eq!(received(&mut m1), vec![Bytes::from_static(b"yes")]);
}

// ---- item 2: retained messages -------------------------------------------------------------

fn retained_broker() -> Arc<Broker> {
    broker(BrokerConfig {
        max_retained_messages_per_principal: 2,
        max_retained_bytes_per_principal: 100,
        ..Default::default()
    })
}

/// Item 2 ("the retained store has no cap"): a principal's retained messages are bounded by
/// `max_retained_messages_per_principal` and `max_retained_bytes_per_principal`. A v5 QoS 1
/// retained PUBLISH beyond them gets PUBACK 0x97 (QoS 2: PUBREC 0x97) and is neither retained
/// nor routed; the topic keeps what it held. Replacing one of its own with one no larger is
/// never refused, clearing a topic gives its place back, another principal is unaffected.
#[test]
fn issue_17_item_2_retained_per_principal_qos1_and_qos2_are_refused_with_0x97() {
    let b = retained_broker();
    let (m, v) = (Principal::user("m"), Principal::user("v"));
    let mut sub = session(&b, "sub", &v, 0).unwrap();
    subscribe(&mut sub, &["r/#"]);
    let mut p = session(&b, "m-pub", &m, 0).unwrap();
    assert!(ack_code(&publish(&mut p, "r/1", b"one", QoS::AtLeastOnce, true)).is_success());
    assert!(ack_code(&publish(&mut p, "r/2", b"two", QoS::AtLeastOnce, true)).is_success());
    assert_eq!(ack_code(&publish(&mut p, "r/3", b"three", QoS::AtLeastOnce, true)), QUOTA, "count");
    assert_eq!(ack_code(&publish(&mut p, "r/3", b"three", QoS::ExactlyOnce, true)), QUOTA, "QoS 2");
    let big = vec![b'x'; 100];
    assert_eq!(ack_code(&publish(&mut p, "r/1", &big, QoS::AtLeastOnce, true)), QUOTA, "bytes");
    assert_eq!(received(&mut sub), vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")], "refused: not routed");
    assert_eq!(b.retained_count(), 2);
    assert_eq!(hits(&b.stats.limits.retained_per_principal), 3);
    // A refused QoS 2 PUBLISH left no packet id waiting for its PUBREL: sent again, it is new.
    assert_eq!(ack_code(&publish(&mut p, "r/3", b"three", QoS::ExactlyOnce, true)), QUOTA);
    // Replacing its own message: fine at the quota.
    assert!(ack_code(&publish(&mut p, "r/2", b"2", QoS::AtLeastOnce, true)).is_success());
    // Another principal retains as it pleases.
    let mut q = session(&b, "v-pub", &v, 0).unwrap();
    for t in ["r/v1", "r/v2"] {
        assert!(ack_code(&publish(&mut q, t, b"v", QoS::AtLeastOnce, true)).is_success(), "{t}");
    }
    // Clearing a topic is room again.
    assert!(ack_code(&publish(&mut p, "r/1", b"", QoS::AtLeastOnce, true)).is_success());
    assert!(ack_code(&publish(&mut p, "r/3", b"three", QoS::AtLeastOnce, true)).is_success());
    // What a new subscriber gets: m's two, v's two.
    let mut late = session(&b, "late", &v, 0).unwrap();
    subscribe(&mut late, &["r/#"]);
    let mut got = received(&mut late);
    got.sort();
    assert_eq!(got, [&b"2"[..], b"three", b"v", b"v"].map(Bytes::from_static));
}

/// Item 2: over the quota, a QoS 0 retained PUBLISH (nothing to acknowledge it with) and a
/// v3.1.1 QoS 1 one (no reason codes) are routed as usual and not retained: the topic keeps
/// the retained message it had ([MQTT-3.3.1-7] lets a 3.1.1 server discard a QoS 0 retained
/// message); the v3 publisher's PUBACK is a plain one.
#[test]
fn issue_17_item_2_over_the_quota_qos0_and_v3_are_routed_not_retained() {
    let b = retained_broker();
    let m = Principal::user("m");
    let mut sub = session(&b, "sub", &m, 0).unwrap();
    subscribe(&mut sub, &["r/#"]);
    let mut p = session(&b, "m-pub", &m, 0).unwrap();
    publish(&mut p, "r/1", b"one", QoS::AtMostOnce, true);
    publish(&mut p, "r/2", b"two", QoS::AtMostOnce, true);
    publish(&mut p, "r/2", &[b'x'; 100], QoS::AtMostOnce, true);
    publish(&mut p, "r/3", b"three", QoS::AtMostOnce, true);
    let mut v3 = try_connect(&b, connect_packet(Protocol::V311, "m-v3", true, 0), &m).unwrap();
    assert!(matches!(&publish(&mut v3, "r/4", b"four", QoS::AtLeastOnce, true)[..], [Packet::PubAck(_)]));
    assert_eq!(received(&mut sub).len(), 5, "all routed");
    assert_eq!(hits(&b.stats.limits.retained_per_principal), 3);
    let mut late = session(&b, "late", &m, 0).unwrap();
    subscribe(&mut late, &["r/#"]);
    let mut got = received(&mut late);
    got.sort();
    assert_eq!(got, [&b"one"[..], b"two"].map(Bytes::from_static), "the store as it was");
}

/// Item 2: the broker-wide cap (`max_retained_messages`, `max_retained_bytes`) bounds all
/// publishers together, each under its own quota; the broker's own `$SYS` values are never
/// refused. A will retained over a quota is published, not retained.
#[test]
fn issue_17_item_2_the_broker_wide_retained_cap() {
    let b = broker(BrokerConfig { max_retained_messages: 3, ..Default::default() });
    let (m, v) = (Principal::user("m"), Principal::user("v"));
    let mut p = session(&b, "m-pub", &m, 0).unwrap();
    let mut q = session(&b, "v-pub", &v, 0).unwrap();
    assert!(ack_code(&publish(&mut p, "a", b"1", QoS::AtLeastOnce, true)).is_success());
    assert!(ack_code(&publish(&mut q, "b", b"1", QoS::AtLeastOnce, true)).is_success());
    assert!(ack_code(&publish(&mut q, "c", b"1", QoS::AtLeastOnce, true)).is_success());
    assert_eq!(ack_code(&publish(&mut p, "d", b"1", QoS::AtLeastOnce, true)), QUOTA);
    assert_eq!(hits(&b.stats.limits.retained_total), 1);
    b.publish_sys(Instant::now());
    assert!(b.retained_count() > 3, "$SYS values are the broker's own");
    // A will over the cap: routed to the subscriber, not retained.
    let mut sub = session(&b, "sub", &v, 0).unwrap();
    subscribe(&mut sub, &["will/#"]);
    let mut c = connect_packet(Protocol::V5, "dying", true, 0);
    c.will = Some(LastWill {
        topic: TopicName::new("will/x").unwrap(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
    });
    let dying = try_connect(&b, c, &m).unwrap();
    dying.closed(Close { reason: ReasonCode::UNSPECIFIED_ERROR, publish_will: true }, Instant::now());
    assert_eq!(received(&mut sub), vec![Bytes::from_static(b"bye")]);
    assert_eq!(hits(&b.stats.limits.retained_total), 2);
    let mut late = session(&b, "late", &v, 0).unwrap();
    subscribe(&mut late, &["will/#"]);
    assert!(received(&mut late).is_empty(), "not retained");
}

// ---- item 3: store writes ------------------------------------------------------------------

/// Every op the broker submits, as a short description.
#[derive(Default)]
struct Recorder {
    ops: Mutex<Vec<String>>,
    ids: AtomicU64,
}

impl Persist for Recorder {
    fn submit(&self, op: PersistOp) -> u64 {
        let d = match &op {
            PersistOp::Session(r) => format!("session {}", r.client_id),
            PersistOp::Subscribe { sub, .. } => format!("subscribe {}", sub.filter.as_str()),
            PersistOp::Unsubscribe { filter, .. } => format!("unsubscribe {}", filter.as_str()),
            PersistOp::SessionEnd { .. } => "end".into(),
            _ => "other".into(),
        };
        self.ops.lock().push(d);
        0
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Item 3 ("every SUBSCRIBE rewrites the whole session record"): a SUBSCRIBE or UNSUBSCRIBE
/// submits the subscriptions it changes and nothing else, however many the session holds; a
/// session that becomes stored later (resumed with an expiry) has its subscriptions stored
/// once, then again only as they change. (`warden-store`'s test measures the bytes.)
#[test]
fn issue_17_item_3_subscribe_and_unsubscribe_submit_only_their_change() {
    let rec = Arc::new(Recorder::default());
    let sink: Arc<dyn Persist> = rec.clone();
    let b = Broker::with_store(BrokerConfig::default(), Arc::new(AllowAll), Some(sink), Instant::now());
    let m = Principal::user("m");
    let mut c = session(&b, "c", &m, 3600).unwrap();
    let filters: Vec<String> = (0..500).map(|i| format!("f/{i}")).collect();
    for f in &filters {
        subscribe(&mut c, &[f.as_str()]);
    }
    rec.ops.lock().clear();
    subscribe(&mut c, &["g/1", "g/2"]);
    unsubscribe(&mut c, "f/7");
    unsubscribe(&mut c, "not/there");
    assert_eq!(*rec.ops.lock(), ["subscribe g/1", "subscribe g/2", "unsubscribe f/7"]);
    // A session without an expiry stores nothing until a resume gives it one.
    let mut live = session(&b, "live", &m, 0).unwrap();
    subscribe(&mut live, &["x", "y"]);
    rec.ops.lock().retain(|o| o == "never");
    let resumed = try_connect(&b, connect_packet(Protocol::V5, "live", false, 60), &m).unwrap();
    let mut ops = rec.ops.lock().clone();
    ops.sort();
    assert_eq!(ops, ["session live", "subscribe x", "subscribe y"]);
    drop((live, resumed));
}
