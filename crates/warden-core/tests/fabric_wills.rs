//! The fabric's copy of wills (SPEC §11, `Fabric::will_set` / `Fabric::will_cleared`): the core
//! reports a connection's will when it is accepted and clears it exactly when the will stops
//! being this node's to keep — never while a delayed will waits, never a later connection's;
//! and `Broker::publish_peer_will` publishes a dead node's will under the policy in force.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{decode, Connect, LastWill, Packet, Properties, Protocol, QoS, ReasonCode, TopicName};
use parking_lot::Mutex;
use warden_core::fabric::{Fabric, Interest};
use warden_core::retained::RetainSource;
use warden_core::{Broker, BrokerConfig, Close, Connection, Message, Wake};
use warden_policy::acl::AclFile;
use warden_policy::{PolicyAuthorizer, Principal};

struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Set { client: String, generation: u64, delay: u32, owner: String },
    Cleared { client: String, generation: u64 },
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Ev>>,
}

impl Fabric for Recorder {
    fn forward(&self, _msgs: &[Arc<Message>]) {}
    fn retained(&self, _msg: &Arc<Message>, _source: &RetainSource) {}
    fn interest(&self, _change: Interest) {}
    fn issued(&self) -> u64 {
        0
    }
    fn will_set(&self, client_id: &Arc<str>, generation: u64, owner: &Arc<Principal>, _will: &LastWill, delay: u32) {
        self.events.lock().push(Ev::Set {
            client: client_id.to_string(),
            generation,
            delay,
            owner: owner.name.to_string(),
        });
    }
    fn will_cleared(&self, client_id: &Arc<str>, generation: u64) {
        self.events.lock().push(Ev::Cleared { client: client_id.to_string(), generation });
    }
}

impl Recorder {
    fn take(&self) -> Vec<Ev> {
        std::mem::take(&mut *self.events.lock())
    }
}

fn setup(acl: Option<&str>) -> (Arc<Broker>, Arc<Recorder>) {
    let authz = PolicyAuthorizer::new(acl.map(|t| AclFile::parse(t).unwrap()), false);
    let b = Broker::new(BrokerConfig::default(), Arc::new(authz), Instant::now());
    let r = Arc::new(Recorder::default());
    assert!(b.attach_fabric(r.clone()));
    (b, r)
}

fn will(delay: Option<u32>) -> LastWill {
    LastWill {
        topic: TopicName::new("status/dev").unwrap(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Properties { will_delay_interval: delay, ..Default::default() },
    }
}

fn connect(b: &Arc<Broker>, id: &str, clean: bool, expiry: u32, will: Option<LastWill>) -> Connection {
    let c = Connect {
        protocol: Protocol::V5,
        clean_start: clean,
        keep_alive: 0,
        properties: Properties { session_expiry_interval: Some(expiry), ..Default::default() },
        client_id: id.to_owned(),
        will,
        username: None,
        password: None,
    };
    let mut out = BytesMut::new();
    let conn = b.connect(c, Principal::user("dev"), Arc::new(NoWake), None, Instant::now(), &mut out).unwrap();
    assert!(
        matches!(decode(&mut out, Protocol::V5, u32::MAX).unwrap(), Some(Packet::Connack(a)) if a.reason_code.is_success())
    );
    conn
}

fn gen_of(ev: &Ev) -> u64 {
    match ev {
        Ev::Set { generation, .. } | Ev::Cleared { generation, .. } => *generation,
    }
}

/// [MQTT-3.1.2-10]: a normal DISCONNECT discards the will; the copy goes with it.
#[test]
fn a_will_is_reported_at_connect_and_cleared_by_a_normal_disconnect() {
    let (b, r) = setup(None);
    let c = connect(&b, "dev", true, 0, Some(will(None)));
    let set = r.take();
    assert!(
        matches!(&set[..], [Ev::Set { client, delay: 0, owner, .. }] if client == "dev" && owner == "dev"),
        "{set:?}"
    );
    c.closed(Close { reason: ReasonCode::SUCCESS, publish_will: false }, Instant::now());
    assert_eq!(r.take(), vec![Ev::Cleared { client: "dev".into(), generation: gen_of(&set[0]) }]);
    // Published here at once (an abrupt close): cleared too.
    let c = connect(&b, "dev", true, 0, Some(will(None)));
    let g = gen_of(&r.take()[0]);
    c.closed(Close { reason: ReasonCode::KEEP_ALIVE_TIMEOUT, publish_will: true }, Instant::now());
    assert_eq!(r.take(), vec![Ev::Cleared { client: "dev".into(), generation: g }]);
    assert_eq!(b.retained_count(), 1, "published here");
}

/// A delayed will keeps its copy while it waits [MQTT-3.1.3-9]: cleared once published
/// (delay passed), or when the client comes back first.
#[test]
fn a_delayed_will_keeps_its_copy_until_published_or_cancelled() {
    let (b, r) = setup(None);
    let c = connect(&b, "dev", false, 60, Some(will(Some(10))));
    let g = gen_of(&r.take()[0]);
    c.closed(Close { reason: ReasonCode::KEEP_ALIVE_TIMEOUT, publish_will: true }, Instant::now());
    assert_eq!(r.take(), vec![], "the will waits: its copy stays");
    b.tick(Instant::now() + Duration::from_secs(11));
    assert_eq!(r.take(), vec![Ev::Cleared { client: "dev".into(), generation: g }]);
    assert_eq!(b.retained_count(), 1);

    // Waiting again; the client comes back (without a will) before the delay passed.
    let c = connect(&b, "dev2", false, 60, Some(will(Some(30))));
    let g = gen_of(&r.take()[0]);
    c.closed(Close { reason: ReasonCode::KEEP_ALIVE_TIMEOUT, publish_will: true }, Instant::now());
    let _back = connect(&b, "dev2", false, 60, None);
    assert_eq!(r.take(), vec![Ev::Cleared { client: "dev2".into(), generation: g }]);
}

/// A takeover on this node: the new connection's will is reported, and the old connection's
/// end clears only the old one's copy (the fabric keeps the later one).
#[test]
fn a_takeover_clears_the_old_connections_copy_only() {
    let (b, r) = setup(None);
    let mut old = connect(&b, "dev", false, 60, Some(will(Some(30))));
    let g1 = gen_of(&r.take()[0]);
    let _new = connect(&b, "dev", false, 60, Some(will(Some(30))));
    let ev = r.take();
    let g2 = gen_of(&ev[0]);
    assert_ne!(g1, g2);
    let mut out = BytesMut::new();
    let close = old.pull(Instant::now(), &mut out, usize::MAX).expect_err("taken over");
    old.closed(close, Instant::now());
    assert_eq!(r.take(), vec![Ev::Cleared { client: "dev".into(), generation: g1 }]);
}

/// A dead node's will is published here only if its owner may publish there under the policy
/// in force now (SPEC §10, §11).
#[test]
fn a_peer_will_is_authorized_against_the_policy_in_force() {
    let (b, _r) = setup(Some("user dev\ntopic write status/#\n"));
    let owner = Arc::new(Principal::user("dev"));
    let msg = |topic: &str| Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: None,
        expires_at: None,
        origin: None,
        persisted: Default::default(),
    };
    let id: Arc<str> = Arc::from("dev");
    assert!(!b.publish_peer_will(msg("cmd/dev"), None, &owner, &id, Instant::now()), "not granted");
    assert_eq!(b.retained_count(), 0);
    let other = Arc::new(Principal::user("eve"));
    assert!(!b.publish_peer_will(msg("status/dev"), None, &other, &id, Instant::now()), "another principal");
    assert!(b.publish_peer_will(msg("status/dev"), Some(60), &owner, &id, Instant::now()));
    assert_eq!(b.retained_count(), 1, "published (and retained) as the owner's");
}
