//! Trust lifecycle (SPEC §10), in memory: a `Broker` with an authorizer, driven through
//! `Connection`s with decoded packets. Each test names the item it covers:
//! 1 shared subscriptions pick a member allowed to receive; 2 `$` topics need an explicit
//! grant; 3 queued messages are authorized again on session resume; 4 retained messages
//! are checked against their publisher's current right to publish.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    decode, Connect, LastWill, Packet, Properties, Protocol, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName,
};
use parking_lot::RwLock;
use warden_core::{Broker, BrokerConfig, Connection, Message, Wake};
use warden_policy::acl::AclFile;
use warden_policy::{Action, AllowAll, Authorizer, PolicyAuthorizer, Principal};

struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// An authorizer the test can swap underneath the broker without a policy generation change
/// (to prove a check does not depend on one), counting its `receive` questions.
struct Swappable {
    inner: RwLock<Arc<dyn Authorizer>>,
    receives: AtomicU64,
}

impl Swappable {
    fn new(a: impl Authorizer + 'static) -> Arc<Swappable> {
        Arc::new(Swappable { inner: RwLock::new(Arc::new(a)), receives: AtomicU64::new(0) })
    }
}

impl Authorizer for Swappable {
    fn authorize(&self, p: &Principal, c: &str, a: Action<'_>) -> warden_policy::Decision {
        if matches!(a, Action::Receive { .. }) {
            self.receives.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.read().authorize(p, c, a)
    }

    fn authorize_granted(&self, p: &Principal, c: &str, a: Action<'_>) -> warden_policy::Decision {
        self.inner.read().authorize_granted(p, c, a)
    }

    fn has_rules(&self) -> bool {
        self.inner.read().has_rules()
    }
}

fn acl(text: &str) -> PolicyAuthorizer {
    PolicyAuthorizer::new(Some(AclFile::parse(text).expect("valid ACL")), false)
}

fn broker(authz: Arc<dyn Authorizer>) -> Arc<Broker> {
    Broker::new(BrokerConfig::default(), authz, Instant::now())
}

fn connect_packet(id: &str, clean: bool, expiry: u32, will: Option<LastWill>) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: clean,
        keep_alive: 0,
        properties: Properties { session_expiry_interval: Some(expiry), ..Default::default() },
        client_id: id.to_owned(),
        will,
        username: None,
        password: None,
    }
}

/// Every packet in `out` (server to client), decoded.
fn packets(out: &mut BytesMut) -> Vec<Packet> {
    let mut v = Vec::new();
    while let Some(p) = decode(out, Protocol::V5, u32::MAX).expect("the broker writes valid packets") {
        v.push(p);
    }
    v
}

fn try_connect(b: &Arc<Broker>, c: Connect, p: Principal) -> Result<Connection, ReasonCode> {
    let mut out = BytesMut::new();
    let r = b.connect(c, p, Arc::new(NoWake), None, Instant::now(), &mut out);
    match (r, packets(&mut out).as_slice()) {
        (Ok(conn), [Packet::Connack(a)]) if a.reason_code.is_success() => Ok(conn),
        (Err(e), [Packet::Connack(a)]) if a.reason_code == e.0 => Err(e.0),
        (_, other) => panic!("unexpected CONNECT answer {other:?}"),
    }
}

fn connect(b: &Arc<Broker>, id: &str, p: Principal) -> Connection {
    try_connect(b, connect_packet(id, true, 0, None), p).expect("connected")
}

/// A persistent session (clean start off, expiry 1 h).
fn connect_persistent(b: &Arc<Broker>, id: &str, p: Principal) -> Connection {
    try_connect(b, connect_packet(id, false, 3600, None), p).expect("connected")
}

fn publish_packet(topic: &str, payload: &'static [u8], qos: QoS, retain: bool, pid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::new(topic).expect("valid topic"),
        packet_id: pid,
        properties: Default::default(),
        payload: Bytes::from_static(payload),
    })
}

/// Publish and route; returns what the publisher was sent (its acknowledgement).
fn publish(c: &mut Connection, topic: &str, payload: &'static [u8], qos: QoS, retain: bool, pid: u16) -> Vec<Packet> {
    let mut out = BytesMut::new();
    c.handle(publish_packet(topic, payload, qos, retain, pid), Instant::now(), &mut out).expect("not closed");
    c.flush_wakes();
    packets(&mut out)
}

/// Subscribe; returns the SUBACK reason codes.
fn subscribe(c: &mut Connection, filter: &str, qos: QoS) -> Vec<ReasonCode> {
    let mut out = BytesMut::new();
    let s = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(
            TopicFilter::new(filter).expect("valid filter"),
            SubscriptionOptions { qos, ..Default::default() },
        )],
    };
    c.handle(Packet::Subscribe(s), Instant::now(), &mut out).expect("not closed");
    match packets(&mut out).as_slice() {
        [Packet::SubAck(a)] => a.reason_codes.clone(),
        other => panic!("expected a SUBACK, got {other:?}"),
    }
}

/// The PUBLISH packets the connection has to send now.
fn received(c: &mut Connection) -> Vec<Publish> {
    let mut out = BytesMut::new();
    c.pull(Instant::now(), &mut out, usize::MAX).expect("not taken over");
    packets(&mut out)
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

fn denied(b: &Broker) -> u64 {
    b.stats.denied.load(Ordering::Relaxed)
}

// ---- 1. Shared subscriptions -------------------------------------------------------------

/// Item 1: a shared group's message goes to a member allowed to receive it. Half of the
/// members may not receive `jobs/x`; before the fix the round-robin picked a denied member for
/// half of the messages and they were lost for the whole group.
#[test]
fn item1_shared_group_skips_members_denied_receive_and_stays_fair() {
    // Members "ok-*" may read jobs/#; "no-*" may subscribe to it but not receive jobs/x.
    let mut text = String::from("user pub\ntopic write jobs/#\n");
    for i in 0..5 {
        text.push_str(&format!("user ok-{i}\ntopic read jobs/#\n"));
        text.push_str(&format!("user no-{i}\ntopic read jobs/#\ntopic deny jobs/x\n"));
    }
    let b = broker(Arc::new(acl(&text)));
    let mut members = Vec::new();
    for i in 0..5 {
        for name in [format!("no-{i}"), format!("ok-{i}")] {
            let mut c = connect(&b, &name, Principal::user(&name));
            assert_eq!(subscribe(&mut c, "$share/g/jobs/#", QoS::AtMostOnce), vec![ReasonCode(0)], "{name}");
            members.push((name, c));
        }
    }
    let mut p = connect(&b, "pub", Principal::user("pub"));
    for _ in 0..10 {
        publish(&mut p, "jobs/x", b"j", QoS::AtMostOnce, false, 0);
    }
    let mut total = 0;
    for (name, c) in &mut members {
        let n = received(c).len();
        if name.starts_with("no-") {
            assert_eq!(n, 0, "{name} may not receive");
        } else {
            assert_eq!(n, 2, "{name}: round-robin among the allowed members");
        }
        total += n;
    }
    assert_eq!(total, 10, "no message is lost for the group");
    // In one read batch too (route_many picks per message).
    let mut out = BytesMut::new();
    for _ in 0..10 {
        p.handle(publish_packet("jobs/x", b"k", QoS::AtMostOnce, false, 0), Instant::now(), &mut out).unwrap();
    }
    p.flush_wakes();
    let total: usize = members.iter_mut().map(|(_, c)| received(c).len()).sum();
    assert_eq!(total, 10);
}

/// Item 1: when no member may receive, the message is dropped (and counted as denied) once.
#[test]
fn item1_shared_group_with_no_allowed_member_drops_the_message() {
    let b = broker(Arc::new(acl("user pub\ntopic write jobs/#\nuser no\ntopic read jobs/#\ntopic deny jobs/x\n")));
    let mut m = connect(&b, "no", Principal::user("no"));
    subscribe(&mut m, "$share/g/jobs/#", QoS::AtMostOnce);
    let mut p = connect(&b, "pub", Principal::user("pub"));
    let before = denied(&b);
    publish(&mut p, "jobs/x", b"j", QoS::AtMostOnce, false, 0);
    assert!(received(&mut m).is_empty());
    assert_eq!(denied(&b) - before, 1);
    publish(&mut p, "jobs/y", b"k", QoS::AtMostOnce, false, 0);
    assert_eq!(payloads(&received(&mut m)), vec![&b"k"[..]]);
}

// ---- 2. `$` topics -----------------------------------------------------------------------

/// Item 2: with no authorization source (allow all), a client cannot publish to `$SYS/…`
/// (v5 PUBACK 0x87; nothing reaches subscribers), but the broker's own `$SYS` values still do.
#[test]
fn item2_clients_cannot_publish_to_sys_without_a_grant_even_with_no_source() {
    let b = broker(Arc::new(AllowAll));
    let mut sub = connect(&b, "sub", Principal::user("sub"));
    subscribe(&mut sub, "$SYS/#", QoS::AtLeastOnce);
    let mut spoofer = connect(&b, "spoofer", Principal::user("mallory"));
    match publish(&mut spoofer, "$SYS/broker/version", b"evil 1.0", QoS::AtLeastOnce, true, 7).as_slice() {
        [Packet::PubAck(a)] => assert_eq!((a.packet_id, a.reason_code), (7, ReasonCode::NOT_AUTHORIZED)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    publish(&mut spoofer, "$other/x", b"evil", QoS::AtMostOnce, false, 0);
    assert!(received(&mut sub).is_empty(), "nothing spoofed reaches subscribers");
    assert_eq!(b.retained_count(), 0, "nor the retained store");
    // Ordinary topics are unaffected.
    subscribe(&mut sub, "a/#", QoS::AtMostOnce);
    publish(&mut spoofer, "a/b", b"fine", QoS::AtMostOnce, false, 0);
    assert_eq!(payloads(&received(&mut sub)), vec![&b"fine"[..]]);

    b.publish_sys(Instant::now());
    let got = received(&mut sub);
    let version = got.iter().find(|p| p.topic.as_str() == "$SYS/broker/version").expect("the broker's own $SYS");
    assert_eq!(&version.payload[..], warden_core::broker::VERSION.as_bytes());
    // A later subscriber gets the broker's retained value, not a spoofed one.
    let mut late = connect(&b, "late", Principal::user("late"));
    subscribe(&mut late, "$SYS/broker/version", QoS::AtMostOnce);
    assert_eq!(payloads(&received(&mut late)), vec![warden_core::broker::VERSION.as_bytes()]);
}

/// Item 2: a will on a `$` topic is refused at CONNECT like any denied will.
#[test]
fn item2_a_will_on_sys_is_refused_without_a_grant() {
    let b = broker(Arc::new(AllowAll));
    let will = LastWill {
        topic: TopicName::new("$SYS/broker/clients/connected").unwrap(),
        payload: Bytes::from_static(b"0"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Properties::default(),
    };
    let r = try_connect(&b, connect_packet("w", true, 0, Some(will)), Principal::user("w"));
    assert_eq!(r.err(), Some(ReasonCode::NOT_AUTHORIZED));
}

/// Item 2: when rules exist, an explicit grant allows a `$` topic (and `#` does not grant it).
#[test]
fn item2_an_explicit_rule_grants_a_dollar_topic() {
    let b = broker(Arc::new(acl("user ops\ntopic readwrite $SYS/custom/#\ntopic readwrite #\n")));
    let mut ops = connect(&b, "ops", Principal::user("ops"));
    assert_eq!(subscribe(&mut ops, "$SYS/custom/#", QoS::AtMostOnce), vec![ReasonCode(0)]);
    assert!(publish(&mut ops, "$SYS/custom/x", b"ok", QoS::AtLeastOnce, false, 1)
        .iter()
        .all(|p| matches!(p, Packet::PubAck(a) if a.reason_code.is_success())));
    match publish(&mut ops, "$SYS/broker/version", b"no", QoS::AtLeastOnce, false, 2).as_slice() {
        [Packet::PubAck(a)] => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED, "`#` is no grant for `$SYS`"),
        other => panic!("{other:?}"),
    }
    assert_eq!(payloads(&received(&mut ops)), vec![&b"ok"[..]]);
}

// ---- 3. Queued messages on session resume ------------------------------------------------

fn token(name: &str, scopes: &[&str]) -> Principal {
    Principal::token(name, vec![], scopes.iter().map(|s| Arc::from(*s)).collect())
}

fn disconnect(c: Connection) {
    let close = warden_core::Close { reason: ReasonCode::SUCCESS, publish_will: false };
    c.closed(close, Instant::now());
}

/// Item 3: messages queued for a persistent session while its client held a broad token are
/// authorized again when the same identity resumes with a narrower token, although the policy
/// generation did not change; the denied ones (QoS 1 and 2 too) are dropped and counted.
#[test]
fn item3_queued_messages_are_reauthorized_when_the_session_resumes_with_new_grants() {
    let authz = Swappable::new(PolicyAuthorizer::new(None, false));
    let b = broker(authz.clone());
    let broad = token("dev", &["mqtt:sub:fleet/#"]);
    let mut dev = connect_persistent(&b, "dev", broad);
    assert_eq!(subscribe(&mut dev, "fleet/#", QoS::ExactlyOnce), vec![ReasonCode(2)]);
    disconnect(dev);

    let mut p = connect(&b, "pub", Principal::user("ops"));
    publish(&mut p, "fleet/secret", b"s1", QoS::AtLeastOnce, false, 1);
    publish(&mut p, "fleet/public", b"p1", QoS::AtLeastOnce, false, 2);
    publish(&mut p, "fleet/secret", b"s2", QoS::ExactlyOnce, false, 3);
    // A batch of several messages (queued as one run for a connected subscriber, one by one
    // for an offline one).
    let mut out = BytesMut::new();
    for (t, pl) in [("fleet/secret", b"s3"), ("fleet/public", b"p2")] {
        p.handle(publish_packet(t, pl, QoS::AtLeastOnce, false, 9), Instant::now(), &mut out).unwrap();
    }
    p.flush_wakes();

    let policy_gen = b.policy_generation();
    let before = denied(&b);
    let narrow = token("dev", &["mqtt:sub:fleet/public"]);
    let mut dev = try_connect(&b, connect_packet("dev", false, 3600, None), narrow).expect("resumed");
    assert_eq!(b.policy_generation(), policy_gen, "no policy change: only the grants changed");
    let got = received(&mut dev);
    assert_eq!(payloads(&got), vec![&b"p1"[..], &b"p2"[..]], "only what the new grants allow");
    assert_eq!(denied(&b) - before, 3, "each denied delivery is counted");
}

/// Item 3: a connected subscriber's queued run (not yet sent) is re-checked when the session is
/// taken over by a resuming connection with narrower grants, and a publisher's cached routing
/// answer (computed for the old grants) is not reused for the resumed subscriber.
#[test]
fn item3_runs_queued_before_a_takeover_and_cached_routes_use_the_new_grants() {
    let b = broker(Arc::new(PolicyAuthorizer::new(None, false)));
    let mut dev = connect_persistent(&b, "dev", token("dev", &["mqtt:sub:fleet/#"]));
    subscribe(&mut dev, "fleet/#", QoS::AtMostOnce);
    let mut p = connect(&b, "pub", Principal::user("ops"));
    // Routed while connected: a run in the queue, not pulled yet; the publisher caches its answer.
    let mut out = BytesMut::new();
    for pl in [b"a", b"b", b"c"] {
        p.handle(publish_packet("fleet/secret", pl, QoS::AtMostOnce, false, 0), Instant::now(), &mut out).unwrap();
    }
    p.flush_wakes();
    // The same identity takes the session over with narrower grants.
    let mut dev2 =
        try_connect(&b, connect_packet("dev", false, 3600, None), token("dev", &["mqtt:sub:fleet/public"])).unwrap();
    drop(dev);
    assert!(received(&mut dev2).is_empty(), "the queued run was for the old grants");
    publish(&mut p, "fleet/secret", b"d", QoS::AtMostOnce, false, 0);
    publish(&mut p, "fleet/public", b"e", QoS::AtMostOnce, false, 0);
    assert_eq!(payloads(&received(&mut dev2)), vec![&b"e"[..]], "no cached answer for the old grants");
}

/// Item 3, found by the trust model's property test (`tests/trust_model.rs`): messages in
/// flight (sent, not acknowledged) when the session resumes are re-sent only if the resuming
/// connection's grants allow receiving them; the others are dropped, counted as denied, and
/// their packet ids freed. A PUBREL (no message) is re-sent as before.
#[test]
fn item3_in_flight_messages_are_reauthorized_before_they_are_re_sent_on_resume() {
    let b = broker(Arc::new(PolicyAuthorizer::new(None, false)));
    let mut dev = connect_persistent(&b, "dev", token("dev", &["mqtt:sub:fleet/#"]));
    subscribe(&mut dev, "fleet/#", QoS::ExactlyOnce);
    let mut p = connect(&b, "pub", Principal::user("ops"));
    publish(&mut p, "fleet/secret", b"s1", QoS::AtLeastOnce, false, 1);
    publish(&mut p, "fleet/public", b"p1", QoS::AtLeastOnce, false, 2);
    publish(&mut p, "fleet/secret", b"s2", QoS::ExactlyOnce, false, 3);
    let sent = received(&mut dev);
    assert_eq!(payloads(&sent), vec![&b"s1"[..], &b"p1"[..], &b"s2"[..]], "sent, never acknowledged");
    disconnect(dev);

    let before = denied(&b);
    let narrow = token("dev", &["mqtt:sub:fleet/public"]);
    let mut dev = try_connect(&b, connect_packet("dev", false, 3600, None), narrow).expect("resumed");
    let again = received(&mut dev);
    assert_eq!(payloads(&again), vec![&b"p1"[..]], "only what the new grants allow is re-sent");
    assert!(again[0].dup);
    assert_eq!(denied(&b) - before, 2);
    // The dropped ones are gone, not re-sent on the next resume.
    disconnect(dev);
    let mut dev =
        try_connect(&b, connect_packet("dev", false, 3600, None), token("dev", &["mqtt:sub:fleet/#"])).unwrap();
    assert_eq!(payloads(&received(&mut dev)), vec![&b"p1"[..]]);
}

// ---- 4. Retained messages and their publisher's current right -----------------------------

const RETAIN_ACL: &str = "user pub\ntopic write sensors/#\nuser sub\ntopic read sensors/#\n";
const REVOKED_ACL: &str = "user pub\ntopic write other/#\nuser sub\ntopic read sensors/#\n";

/// Item 4 (CVE-2018-12546 class): once the publisher of a retained message may no longer
/// publish to its topic, the message is not delivered on SUBSCRIBE and is removed.
#[test]
fn item4_retained_message_is_withheld_and_removed_once_its_publisher_lost_the_right() {
    let b = broker(Arc::new(acl(RETAIN_ACL)));
    let mut p = connect(&b, "pub-1", Principal::user("pub"));
    publish(&mut p, "sensors/t", b"21.5", QoS::AtLeastOnce, true, 1);
    disconnect(p);
    let mut s1 = connect(&b, "sub-1", Principal::user("sub"));
    subscribe(&mut s1, "sensors/#", QoS::AtLeastOnce);
    assert_eq!(payloads(&received(&mut s1)), vec![&b"21.5"[..]], "deliverable while the publisher may publish");

    b.set_authorizer(Arc::new(acl(REVOKED_ACL)));
    let before = denied(&b);
    let mut s2 = connect(&b, "sub-2", Principal::user("sub"));
    subscribe(&mut s2, "sensors/#", QoS::AtLeastOnce);
    assert!(received(&mut s2).is_empty(), "the publisher's write right was revoked");
    assert_eq!(b.retained_count(), 0, "and the message is removed");
    assert_eq!(denied(&b) - before, 1);
    // The subscriber's own right to receive is still checked (and the message stays gone).
    b.set_authorizer(Arc::new(acl(RETAIN_ACL)));
    subscribe(&mut s2, "sensors/t", QoS::AtLeastOnce);
    assert!(received(&mut s2).is_empty());
}

/// Item 4: a will retained by a session is checked against the session owner's right too, and
/// `check_retain_source = false` keeps the old behaviour.
#[test]
fn item4_check_retain_source_can_be_turned_off_and_covers_wills() {
    let cfg = BrokerConfig { check_retain_source: false, ..BrokerConfig::default() };
    let b = Broker::new(cfg, Arc::new(acl(RETAIN_ACL)), Instant::now());
    let mut p = connect(&b, "pub-1", Principal::user("pub"));
    publish(&mut p, "sensors/t", b"kept", QoS::AtMostOnce, true, 0);
    b.set_authorizer(Arc::new(acl(REVOKED_ACL)));
    let mut s = connect(&b, "sub-1", Principal::user("sub"));
    subscribe(&mut s, "sensors/t", QoS::AtMostOnce);
    assert_eq!(payloads(&received(&mut s)), vec![&b"kept"[..]], "not checked when turned off");

    let b = broker(Arc::new(acl(RETAIN_ACL)));
    let will = LastWill {
        topic: TopicName::new("sensors/w").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Properties::default(),
    };
    let w = try_connect(&b, connect_packet("pub-1", true, 0, Some(will)), Principal::user("pub")).unwrap();
    w.closed(warden_core::Close { reason: ReasonCode::KEEP_ALIVE_TIMEOUT, publish_will: true }, Instant::now());
    assert_eq!(b.retained_count(), 1, "the will was retained");
    b.set_authorizer(Arc::new(acl(REVOKED_ACL)));
    let mut s = connect(&b, "sub-1", Principal::user("sub"));
    subscribe(&mut s, "sensors/#", QoS::AtMostOnce);
    assert!(received(&mut s).is_empty());
    assert_eq!(b.retained_count(), 0);
}

/// Item 4: a retained message restored without its publisher (a record from before publishers
/// were stored) is deliverable only while no authorization source with rules is configured.
#[test]
fn item4_a_retained_message_of_unknown_publisher_needs_no_rules_to_be_delivered() {
    use warden_core::retained::RetainSource;
    let restored = || {
        let m = Message {
            topic: TopicName::new("sensors/old").unwrap(),
            payload: Bytes::from_static(b"old"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: None,
            expires_at: None,
            origin: None,
            persisted: Default::default(),
        };
        vec![(Arc::new(m), RetainSource::Unknown)]
    };
    let open = broker(Arc::new(AllowAll));
    open.restore(vec![], restored(), Instant::now());
    let mut s = connect(&open, "sub", Principal::user("sub"));
    subscribe(&mut s, "sensors/#", QoS::AtMostOnce);
    assert_eq!(payloads(&received(&mut s)), vec![&b"old"[..]]);

    let ruled = broker(Arc::new(acl(RETAIN_ACL)));
    ruled.restore(vec![], restored(), Instant::now());
    let mut s = connect(&ruled, "sub", Principal::user("sub"));
    subscribe(&mut s, "sensors/#", QoS::AtMostOnce);
    assert!(received(&mut s).is_empty(), "with rules, an unknown publisher has no right");
    assert_eq!(ruled.retained_count(), 0);
}

/// Item 4, found by the trust model's property test (`tests/trust_model.rs`): the check is made
/// when the retained message is sent, not only when SUBSCRIBE queues it. A queued message can
/// wait (flow control, a client not reading, a persistent session across a disconnect); if its
/// publisher loses the right meanwhile (a policy change) or its standing (a trust change that
/// removes its retained messages), it is not sent.
#[test]
fn item4_retained_message_queued_on_subscribe_is_checked_again_when_sent() {
    // A policy change between SUBSCRIBE and the send, across a session resume.
    let b = broker(Arc::new(acl(RETAIN_ACL)));
    let mut p = connect(&b, "pub-1", Principal::user("pub"));
    publish(&mut p, "sensors/t", b"21.5", QoS::AtLeastOnce, true, 1);
    let mut s = connect_persistent(&b, "sub-1", Principal::user("sub"));
    subscribe(&mut s, "sensors/#", QoS::AtLeastOnce);
    b.set_authorizer(Arc::new(acl(REVOKED_ACL)));
    let before = denied(&b);
    let mut s = try_connect(&b, connect_packet("sub-1", false, 3600, None), Principal::user("sub")).unwrap();
    assert!(received(&mut s).is_empty(), "the publisher lost its right before the message was sent");
    assert_eq!(b.retained_count(), 0, "and the message is removed");
    assert_eq!(denied(&b) - before, 1);

    // A trust change (the publisher's credential revoked) between SUBSCRIBE and the send.
    let b = broker(Arc::new(acl(RETAIN_ACL)));
    let mut p = connect(&b, "pub-1", Principal::user("pub"));
    publish(&mut p, "sensors/t", b"21.5", QoS::AtMostOnce, true, 0);
    let mut s = connect(&b, "sub-1", Principal::user("sub"));
    subscribe(&mut s, "sensors/#", QoS::AtMostOnce);
    assert_eq!(b.drop_retained_where(|p| &*p.name == "pub"), 1);
    assert!(received(&mut s).is_empty(), "its publisher lost its standing before it was sent");

    // Still sent when nothing changed.
    let b = broker(Arc::new(acl(RETAIN_ACL)));
    let mut p = connect(&b, "pub-1", Principal::user("pub"));
    publish(&mut p, "sensors/t", b"21.5", QoS::AtLeastOnce, true, 1);
    let mut s = connect(&b, "sub-1", Principal::user("sub"));
    subscribe(&mut s, "sensors/#", QoS::AtLeastOnce);
    let got = received(&mut s);
    assert_eq!(payloads(&got), vec![&b"21.5"[..]]);
    assert!(got[0].retain, "sent as retained");
}

/// Item 4: with `check_retain_source = false`, a retained message queued on SUBSCRIBE is sent
/// whatever happened to its publisher meanwhile (the old behaviour).
#[test]
fn item4_without_check_retain_source_a_queued_retained_message_is_sent() {
    let cfg = BrokerConfig { check_retain_source: false, ..BrokerConfig::default() };
    let b = Broker::new(cfg, Arc::new(acl(RETAIN_ACL)), Instant::now());
    let mut p = connect(&b, "pub-1", Principal::user("pub"));
    publish(&mut p, "sensors/t", b"kept", QoS::AtMostOnce, true, 0);
    let mut s = connect(&b, "sub-1", Principal::user("sub"));
    subscribe(&mut s, "sensors/t", QoS::AtMostOnce);
    b.set_authorizer(Arc::new(acl(REVOKED_ACL)));
    assert_eq!(payloads(&received(&mut s)), vec![&b"kept"[..]]);
}

// ---- Wills and the credential that set them ----------------------------------------------

fn token_with_jti(name: &str, jti: &str, scopes: &[&str]) -> Principal {
    use warden_policy::trust::{Credential, CredentialSource, TokenRef};
    let cred = TokenRef { jti: Some(jti.into()), oauth_client: None, expires_at: None };
    token(name, scopes).with_credential(CredentialSource::Token, Some(Credential::Token(cred)))
}

fn status_will() -> LastWill {
    LastWill {
        topic: TopicName::new("status/dev").unwrap(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Properties::default(),
    }
}

/// The taken-over connection `old` ends as in the shell: its next pull fails (0x8E), then it
/// is closed (a will published as for any server-side close).
fn close_taken_over(mut old: Connection) {
    let mut out = BytesMut::new();
    let close = old.pull(Instant::now(), &mut out, usize::MAX).expect_err("taken over");
    old.closed(close, Instant::now());
}

/// Found by the trust model's property test (`tests/trust_model.rs`): a will published when
/// the same identity resumes the session (the old connection taken over) is the old
/// connection's: authorized under its principal and kept (retained) as its publication, so
/// that revoking the credential that set it removes it. Before, it was the resuming
/// connection's: a will set with a leaked token survived that token's revocation.
#[test]
fn a_will_published_at_a_takeover_belongs_to_the_credential_that_set_it() {
    let b = broker(Arc::new(PolicyAuthorizer::new(None, false)));
    let leaked = token_with_jti("dev", "leaked", &["mqtt:pub:status/#"]);
    let old = try_connect(&b, connect_packet("dev", false, 3600, Some(status_will())), leaked).expect("connected");
    // The device resumes with a fresh token that may not publish there: the will is the old
    // connection's, which may.
    let fresh = token_with_jti("dev", "fresh", &["mqtt:sub:cmd/#"]);
    let _dev = try_connect(&b, connect_packet("dev", false, 3600, None), fresh).expect("resumed");
    close_taken_over(old);
    assert_eq!(b.retained_count(), 1, "published under the principal that set it");
    // Revoking the leaked token removes what it published, its will included.
    let revoked = |p: &Principal| matches!(p.credential(), Some(warden_policy::trust::Credential::Token(t)) if t.jti.as_deref() == Some("leaked"));
    assert_eq!(b.drop_retained_where(revoked), 1);
    let mut s = connect(&b, "obs", Principal::user("obs"));
    subscribe(&mut s, "status/#", QoS::AtMostOnce);
    assert!(received(&mut s).is_empty());
}

/// A delayed will waiting in a disconnected session is the connection's that set it: a trust
/// change that ends that credential's standing discards it (and only it).
#[test]
fn a_pending_will_is_discarded_when_the_credential_that_set_it_is_revoked() {
    let b = broker(Arc::new(PolicyAuthorizer::new(None, false)));
    let mut will = status_will();
    will.properties.will_delay_interval = Some(30);
    let dev = token_with_jti("dev", "j1", &["mqtt:pub:status/#"]);
    let c = try_connect(&b, connect_packet("dev", false, 3600, Some(will)), dev).expect("connected");
    c.closed(warden_core::Close { reason: ReasonCode::KEEP_ALIVE_TIMEOUT, publish_will: true }, Instant::now());
    let by_jti = |jti: &'static str| move |p: &Principal| matches!(p.credential(), Some(warden_policy::trust::Credential::Token(t)) if t.jti.as_deref() == Some(jti));
    assert_eq!(b.discard_wills_where(by_jti("j2")), 0, "another token");
    assert_eq!(b.discard_wills_where(by_jti("j1")), 1);
    b.tick(Instant::now() + std::time::Duration::from_secs(60));
    assert_eq!(b.retained_count(), 0, "never published");
}
