//! Operation sequences on the core's in-memory simulator (`warden_core::sim`): clients
//! connect (clean or resuming, with or without a will), subscribe, unsubscribe, publish at
//! QoS 0/1/2 (re-sending QoS 2 with DUP), acknowledge what they are sent (or fail a PUBREC),
//! disconnect or drop, the policy is swapped and time passes. After every operation:
//!
//! 1. nothing panics;
//! 2. no client holds more unacknowledged QoS 1/2 deliveries than its Receive Maximum
//!    [MQTT-4.9.0-2], and the broker's in-flight count agrees; no new PUBLISH reuses a
//!    packet id still unacknowledged [MQTT-2.2.1-3];
//! 3. at most once: a QoS 2 message is never delivered twice as a new (non-DUP) PUBLISH to
//!    one session [MQTT-4.3.3];
//!
//! and at the end, at least once: a witness client with a session that never ends,
//! subscribed to `#` at QoS 2 and allowed by every policy, resumes, acknowledges until
//! nothing more comes, and has received every QoS 1/2 message a client published and the
//! broker accepted (PUBACK/PUBREC success) without a message expiry.

#![no_main]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqtt_codec::{
    Connect, Disconnect, LastWill, Packet, Properties, Protocol, PubAck, Publish, QoS, ReasonCode, RetainHandling,
    Subscribe, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
};
use warden_core::sim::Sim;
use warden_core::BrokerConfig;
use warden_policy::acl::AclFile;
use warden_policy::{AllowAll, Authorizer, PolicyAuthorizer, Principal};

const CLIENTS: usize = 4;
const WITNESS: usize = CLIENTS;
const TOPICS: [&str; 4] = ["a/x", "a/y", "b/z", "$SYS/x"];
const FILTERS: [&str; 7] = ["a/x", "a/+", "#", "b/#", "$share/g/a/#", "$SYS/#", "+/z"];
const EXPIRIES: [u32; 3] = [0, 10, 600];
/// Each client slot's Receive Maximum (the same for every connection of its client id).
const RECEIVE_MAX: [u16; CLIENTS + 1] = [1, 2, 3, 5, 10];
const NARROW_ACL: &str = "user witness\ntopic readwrite #\n\
    user u0\ntopic readwrite a/#\n\
    user u1\ntopic read #\ntopic write b/#\n";

#[derive(Arbitrary, Debug)]
enum Op {
    Connect { client: u8, clean: bool, expiry: u8, will: bool, will_delay: bool },
    Subscribe { client: u8, filter: u8, qos: u8, no_local: bool, rap: bool, handling: u8 },
    Unsubscribe { client: u8, filter: u8 },
    Publish { client: u8, topic: u8, qos: u8, retain: bool, pid: u8, expiry: bool },
    /// Re-send (DUP) a QoS 2 PUBLISH whose PUBREL was not sent yet.
    Resend { client: u8, nth: u8 },
    /// Release a QoS 2 PUBLISH (PUBREL).
    Release { client: u8, nth: u8 },
    /// Acknowledge the nth outstanding delivery (PUBACK, PUBREC, or PUBCOMP after PUBREL).
    Ack { client: u8, nth: u8 },
    /// A PUBREC with a failure code.
    FailRec { client: u8, nth: u8 },
    Disconnect { client: u8, with_will: bool },
    Drop { client: u8 },
    Policy { narrow: bool },
    Advance { secs: u8 },
}

/// Where a delivery the client holds stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    Qos1,
    /// QoS 2, no PUBREC sent yet.
    Qos2,
    /// PUBREC sent, PUBREL not received yet.
    Received,
    /// PUBREL received: PUBCOMP to send.
    Released,
}

#[derive(Default)]
struct Model {
    /// Deliveries each client holds unacknowledged, by packet id.
    held: Vec<BTreeMap<u16, Held>>,
    /// QoS 2 messages each client's session received as new PUBLISH packets: (tag, the
    /// subscription identifiers it came with). A session may get one copy per shared
    /// subscription besides its other subscriptions' one (MQTT 5 §4.8.2); the identifiers
    /// tell those copies apart.
    seen_qos2: Vec<HashSet<(u64, Vec<u32>)>>,
    /// Every tag the witness received.
    witness_seen: HashSet<u64>,
    /// Publisher side: QoS 2 PUBLISH packets sent and not released, by packet id → (tag, topic).
    unreleased: Vec<BTreeMap<u16, (u64, usize)>>,
    /// Publishes sent and not answered yet, by packet id → (tag, required of the witness).
    awaiting_ack: Vec<HashMap<u16, (u64, bool)>>,
    /// Tags the witness must receive.
    required: HashSet<u64>,
    next_tag: u64,
}

struct World {
    sim: Sim,
    model: Model,
}

fn client_id(c: usize) -> String {
    if c == WITNESS {
        "witness".into()
    } else {
        format!("c{c}")
    }
}

fn principal(c: usize) -> Principal {
    if c == WITNESS {
        Principal::user("witness")
    } else {
        Principal::user(&format!("u{c}"))
    }
}

fn connect_packet(c: usize, clean: bool, expiry: u32, will: Option<LastWill>) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: clean,
        keep_alive: 0,
        properties: Properties {
            session_expiry_interval: Some(expiry),
            receive_maximum: Some(RECEIVE_MAX[c]),
            ..Default::default()
        },
        client_id: client_id(c),
        will,
        username: None,
        password: None,
    }
}

fn qos(q: u8) -> QoS {
    match q % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl World {
    fn new() -> World {
        let mut sim = Sim::new(BrokerConfig::default(), Arc::new(AllowAll), Instant::now());
        for _ in 0..=CLIENTS {
            sim.client(Protocol::V5);
        }
        let mut w = World { sim, model: Model::default() };
        w.model.held = vec![BTreeMap::new(); CLIENTS + 1];
        w.model.seen_qos2 = vec![HashSet::new(); CLIENTS + 1];
        w.model.unreleased = vec![BTreeMap::new(); CLIENTS + 1];
        w.model.awaiting_ack = vec![HashMap::new(); CLIENTS + 1];
        // The witness: a session that never ends, subscribed to everything at QoS 2.
        w.connect(WITNESS, true, u32::MAX, None);
        let sub = Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(
                TopicFilter::new("#").expect("valid"),
                SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() },
            )],
        };
        let _ = w.sim.send(WITNESS, Packet::Subscribe(sub));
        w.absorb();
        w
    }

    fn connect(&mut self, c: usize, clean: bool, expiry: u32, will: Option<LastWill>) {
        let _ = self.sim.reconnect(c, connect_packet(c, clean, expiry, will), principal(c));
        self.absorb();
    }

    fn send(&mut self, c: usize, p: Packet) {
        let _ = self.sim.send(c, p);
        self.absorb();
    }

    /// Read every client's inbox into the model, checking the per-packet properties.
    fn absorb(&mut self) {
        for c in 0..=CLIENTS {
            for p in self.sim.take(c) {
                self.observe(c, p);
            }
        }
        self.check();
    }

    fn observe(&mut self, c: usize, p: Packet) {
        let m = &mut self.model;
        match p {
            Packet::Connack(a) if a.reason_code.is_success() => {
                // What the session still holds is re-sent right after the CONNACK (DUP PUBLISH
                // or PUBREL) [MQTT-4.4.0-1]: the client's view is rebuilt from that (a resume
                // may drop deliveries its new grants no longer allow).
                m.held[c].clear();
                if !a.session_present {
                    // A new session: nothing of the old one (inbound QoS 2 state included).
                    m.seen_qos2[c].clear();
                    m.unreleased[c].clear();
                    m.awaiting_ack[c].clear();
                }
            }
            Packet::Publish(p) => {
                let tag = (p.payload.len() == 8).then(|| u64::from_be_bytes(p.payload[..].try_into().unwrap_or([0; 8])));
                if c == WITNESS {
                    m.witness_seen.extend(tag);
                }
                if p.qos != QoS::AtMostOnce {
                    let fresh = !m.held[c].contains_key(&p.packet_id);
                    assert!(fresh || p.dup, "[MQTT-2.2.1-3] client {c}: new PUBLISH reuses packet id {}", p.packet_id);
                    let h = if p.qos == QoS::AtLeastOnce { Held::Qos1 } else { Held::Qos2 };
                    m.held[c].entry(p.packet_id).or_insert(h);
                }
                // A retained copy (RETAIN set: sent again on every SUBSCRIBE) is a new delivery.
                if p.qos == QoS::ExactlyOnce && !p.dup && !p.retain {
                    if let Some(tag) = tag {
                        let mut ids = p.properties.subscription_identifiers.clone();
                        ids.sort_unstable();
                        assert!(
                            m.seen_qos2[c].insert((tag, ids)),
                            "[MQTT-4.3.3] client {c}: QoS 2 message {tag} delivered twice"
                        );
                    }
                }
            }
            Packet::PubRel(a) => {
                m.held[c].insert(a.packet_id, Held::Released);
            }
            Packet::PubAck(a) => {
                if let Some((tag, counted)) = m.awaiting_ack[c].remove(&a.packet_id) {
                    if counted && a.reason_code.is_success() {
                        m.required.insert(tag);
                    }
                }
            }
            Packet::PubRec(a) => {
                if let Some((tag, counted)) = m.awaiting_ack[c].remove(&a.packet_id) {
                    if a.reason_code.is_success() {
                        if counted {
                            m.required.insert(tag);
                        }
                    } else {
                        m.unreleased[c].remove(&a.packet_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn check(&self) {
        for c in 0..=CLIENTS {
            let held = self.model.held[c].len();
            assert!(held <= usize::from(RECEIVE_MAX[c]), "[MQTT-4.9.0-2] client {c} holds {held} deliveries");
            if let Some(s) = self.sim.broker.session_summary(&client_id(c), self.sim.now) {
                if self.sim.is_connected(c) {
                    assert!(s.inflight <= usize::from(RECEIVE_MAX[c]), "client {c}: {} in flight", s.inflight);
                }
            }
        }
    }

    /// The nth entry of a map, wrapping.
    fn nth<K: Copy, V: Copy>(map: &BTreeMap<K, V>, n: u8) -> Option<(K, V)> {
        (!map.is_empty()).then(|| map.iter().nth(usize::from(n) % map.len()).map(|(k, v)| (*k, *v))).flatten()
    }

    fn ack(&mut self, c: usize, nth: u8, fail: bool) {
        let Some((id, h)) = Self::nth(&self.model.held[c], nth) else { return };
        if !self.sim.is_connected(c) {
            return;
        }
        let packet = match (h, fail) {
            (Held::Qos1, _) => {
                self.model.held[c].remove(&id);
                Packet::PubAck(PubAck::new(id))
            }
            (Held::Qos2, false) => {
                self.model.held[c].insert(id, Held::Received);
                Packet::PubRec(PubAck::new(id))
            }
            (Held::Qos2, true) => {
                self.model.held[c].remove(&id);
                Packet::PubRec(PubAck { packet_id: id, reason_code: ReasonCode::UNSPECIFIED_ERROR, ..Default::default() })
            }
            (Held::Received, _) => return, // waiting for the broker's PUBREL
            (Held::Released, _) => {
                self.model.held[c].remove(&id);
                Packet::PubComp(PubAck::new(id))
            }
        };
        self.send(c, packet);
    }

    fn apply(&mut self, op: Op) {
        let pick = |c: u8| usize::from(c) % CLIENTS;
        match op {
            Op::Connect { client, clean, expiry, will, will_delay } => {
                let c = pick(client);
                let will = will.then(|| LastWill {
                    topic: TopicName::new("a/x").expect("valid"),
                    payload: Bytes::from_static(b"will"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: Properties { will_delay_interval: will_delay.then_some(5), ..Default::default() },
                });
                self.connect(c, clean, EXPIRIES[usize::from(expiry) % EXPIRIES.len()], will);
            }
            Op::Subscribe { client, filter, qos: q, no_local, rap, handling } => {
                let c = pick(client);
                let f = FILTERS[usize::from(filter) % FILTERS.len()];
                let no_local = no_local && !f.starts_with("$share/");
                let retain_handling = match handling % 3 {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                };
                let opts = SubscriptionOptions { qos: qos(q), no_local, retain_as_published: rap, retain_handling };
                let mut s = Subscribe {
                    packet_id: 1,
                    properties: Default::default(),
                    filters: vec![(TopicFilter::new(f).expect("valid"), opts)],
                };
                // One identifier per filter: the at-most-once check tells copies apart by it.
                s.properties.subscription_identifiers = vec![u32::from(filter) % FILTERS.len() as u32 + 1];
                self.send(c, Packet::Subscribe(s));
            }
            Op::Unsubscribe { client, filter } => {
                let f = FILTERS[usize::from(filter) % FILTERS.len()];
                let u = Unsubscribe {
                    packet_id: 1,
                    properties: Default::default(),
                    filters: vec![TopicFilter::new(f).expect("valid")],
                };
                self.send(pick(client), Packet::Unsubscribe(u));
            }
            Op::Publish { client, topic, qos: q, retain, pid, expiry } => {
                let c = pick(client);
                if !self.sim.is_connected(c) {
                    return;
                }
                let q = qos(q);
                let pid = if q == QoS::AtMostOnce { 0 } else { u16::from(pid % 8) + 1 };
                if self.model.unreleased[c].contains_key(&pid) || self.model.awaiting_ack[c].contains_key(&pid) {
                    return; // a well-behaved client does not reuse a packet id in use
                }
                let t = usize::from(topic) % TOPICS.len();
                let tag = self.model.next_tag;
                self.model.next_tag += 1;
                let mut p = Publish {
                    dup: false,
                    qos: q,
                    retain,
                    topic: TopicName::new(TOPICS[t]).expect("valid"),
                    packet_id: pid,
                    properties: Default::default(),
                    payload: Bytes::copy_from_slice(&tag.to_be_bytes()),
                };
                if expiry {
                    p.properties.message_expiry_interval = Some(5);
                }
                if q != QoS::AtMostOnce {
                    // Required of the witness: no expiry, and not a `$` topic (`#` does not
                    // match those [MQTT-4.7.2-1]).
                    let counted = !expiry && !TOPICS[t].starts_with('$');
                    self.model.awaiting_ack[c].insert(pid, (tag, counted));
                }
                if q == QoS::ExactlyOnce {
                    self.model.unreleased[c].insert(pid, (tag, t));
                }
                self.send(c, Packet::Publish(p));
            }
            Op::Resend { client, nth } => {
                let c = pick(client);
                let Some((pid, (tag, t))) = Self::nth(&self.model.unreleased[c], nth) else { return };
                if !self.sim.is_connected(c) || self.model.awaiting_ack[c].contains_key(&pid) {
                    return;
                }
                let p = Publish {
                    dup: true,
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    topic: TopicName::new(TOPICS[t]).expect("valid"),
                    packet_id: pid,
                    properties: Default::default(),
                    payload: Bytes::copy_from_slice(&tag.to_be_bytes()),
                };
                self.send(c, Packet::Publish(p));
            }
            Op::Release { client, nth } => {
                let c = pick(client);
                let Some((pid, _)) = Self::nth(&self.model.unreleased[c], nth) else { return };
                if !self.sim.is_connected(c) || self.model.awaiting_ack[c].contains_key(&pid) {
                    return;
                }
                self.model.unreleased[c].remove(&pid);
                self.send(c, Packet::PubRel(PubAck::new(pid)));
            }
            Op::Ack { client, nth } => self.ack(usize::from(client) % (CLIENTS + 1), nth, false),
            Op::FailRec { client, nth } => self.ack(pick(client), nth, true),
            Op::Disconnect { client, with_will } => {
                let code = if with_will { ReasonCode::DISCONNECT_WITH_WILL } else { ReasonCode::SUCCESS };
                self.send(pick(client), Packet::Disconnect(Disconnect::new(code)));
            }
            Op::Drop { client } => {
                let c = usize::from(client) % (CLIENTS + 1);
                self.sim.drop_connection(c);
                self.absorb();
            }
            Op::Policy { narrow } => {
                let a: Arc<dyn Authorizer> = if narrow {
                    Arc::new(PolicyAuthorizer::new(Some(AclFile::parse(NARROW_ACL).expect("valid ACL")), false))
                } else {
                    Arc::new(AllowAll)
                };
                self.sim.broker.set_authorizer(a);
            }
            Op::Advance { secs } => {
                self.sim.advance(Duration::from_secs(u64::from(secs % 16)));
                self.absorb();
            }
        }
    }

    /// The witness resumes and acknowledges until nothing more comes; it must have every
    /// accepted QoS 1/2 message.
    fn drain_witness(&mut self) {
        if !self.sim.is_connected(WITNESS) {
            self.connect(WITNESS, false, u32::MAX, None);
        }
        for _ in 0..10_000 {
            if self.model.held[WITNESS].values().all(|h| *h == Held::Received) {
                break;
            }
            for n in 0..self.model.held[WITNESS].len() {
                self.ack(WITNESS, n as u8, false);
            }
        }
        let missing: Vec<_> = self.model.required.difference(&self.model.witness_seen).collect();
        assert!(missing.is_empty(), "at least once: the witness never received {missing:?}");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut w = World::new();
    for op in ops.into_iter().take(200) {
        w.apply(op);
    }
    w.drain_witness();
});
