//! Feature tests with the real `rumqttc` client (0.24), MQTT 3.1.1 and MQTT 5, against the
//! in-process broker ([`TestBroker`]).
//!
//! # How the tests wait
//! Each client's rumqttc event loop runs in its own task and forwards every event (and the error
//! that ends it) to a channel ([`Harness`]). Tests wait on those events with a timeout, never on
//! sleeps. To show that something does NOT arrive a test either publishes a later sentinel that
//! must arrive first (the broker keeps per-session order) or waits a bounded [`QUIET`] time.
//! Sleeping is only used to let time pass (message expiry), never to synchronise.
//!
//! # What rumqttc cannot express
//! - v3.1.1 CONNECT with an empty client id and Clean Session 0: `MqttOptions::set_clean_session`
//!   panics on it, so the testkit's byte-level [`RawClient`] plays that client.
//! - v5 DISCONNECT with reason 0x04 (Disconnect with Will Message): rumqttc's `disconnect()`
//!   always sends 0x00, so [`RawClient`] plays the disconnecting client there too.
//!
//! Scenarios that exist in both protocol versions are written once against the [`Mqtt`] trait
//! and instantiated for [`C3`] (MQTT 3.1.1) and [`C5`] (MQTT 5).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use mqtt_codec::{
    Disconnect as CodecDisconnect, LastWill as CodecWill, Packet as CodecPacket, Properties as CodecProperties,
    Protocol, QoS as CodecQoS, ReasonCode, TopicName,
};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker};

/// One test per protocol version for a scenario written once over [`Mqtt`].
macro_rules! both_versions {
    ($v3:ident, $v5:ident, $scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v3() {
            $scenario::<C3>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v5() {
            $scenario::<C5>().await;
        }
    };
}

/// How long to wait for something that should happen promptly.
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must NOT happen (when no sentinel can prove it).
const QUIET: Duration = Duration::from_millis(400);
const HOST: &str = "127.0.0.1";

// ------------------------------------------------------------------------------------------
// Harness: a rumqttc client whose event loop runs in a task forwarding events to a channel.
// ------------------------------------------------------------------------------------------

/// A client handle `C`, the events `E` its event loop produced, and the error `X` that ended it.
struct Harness<C, E, X> {
    client: C,
    rx: mpsc::UnboundedReceiver<Result<E, X>>,
    /// Events received while waiting for something else, kept in order for later waits.
    stash: VecDeque<E>,
    task: JoinHandle<()>,
}

/// MQTT 3.1.1 client.
type C3 = Harness<AsyncClient, Event, rumqttc::ConnectionError>;
/// MQTT 5 client.
type C5 = Harness<rumqttc::v5::AsyncClient, rumqttc::v5::Event, rumqttc::v5::ConnectionError>;

enum Next<E, X> {
    Event(E),
    Error(X),
    Ended,
    Timeout,
}

impl<C, E: Debug, X: Debug> Harness<C, E, X> {
    async fn recv_until(&mut self, deadline: Instant) -> Next<E, X> {
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Err(_) => Next::Timeout,
            Ok(None) => Next::Ended,
            Ok(Some(Ok(e))) => Next::Event(e),
            Ok(Some(Err(x))) => Next::Error(x),
        }
    }

    /// The first event (stashed or new, within `t`) that `f` picks; other events are stashed.
    /// `None` on timeout. Panics if the connection fails meanwhile.
    async fn try_wait_for<T>(&mut self, t: Duration, mut f: impl FnMut(&E) -> Option<T>) -> Option<T> {
        if let Some((i, v)) = self.stash.iter().enumerate().find_map(|(i, e)| f(e).map(|v| (i, v))) {
            self.stash.remove(i);
            return Some(v);
        }
        let deadline = Instant::now() + t;
        loop {
            match self.recv_until(deadline).await {
                Next::Event(e) => match f(&e) {
                    Some(v) => return Some(v),
                    None => self.stash.push_back(e),
                },
                Next::Error(x) => panic!("connection failed while waiting: {x:?}; stashed events: {:?}", self.stash),
                Next::Ended => panic!("event loop ended while waiting; stashed events: {:?}", self.stash),
                Next::Timeout => return None,
            }
        }
    }

    /// Like [`Self::try_wait_for`] within [`WAIT`], panicking on timeout.
    async fn wait_for<T>(&mut self, what: &str, f: impl FnMut(&E) -> Option<T>) -> T {
        match self.try_wait_for(WAIT, f).await {
            Some(v) => v,
            None => panic!("no {what} within {WAIT:?}; other events: {:?}", self.stash),
        }
    }

    /// Wait for the error that ends the event loop (the connection closed or was refused).
    async fn wait_error(&mut self) -> X {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.recv_until(deadline).await {
                Next::Event(e) => self.stash.push_back(e),
                Next::Error(x) => return x,
                Next::Ended => panic!("event loop ended without an error"),
                Next::Timeout => panic!("connection still open after {WAIT:?}; events: {:?}", self.stash),
            }
        }
    }

    /// Abort the event loop task: the socket is dropped without a DISCONNECT packet.
    async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Run an event loop in a task: forward each poll result, stop after the first error (so a
/// disconnected client never silently reconnects). Returns the receiving end and the task.
macro_rules! forward {
    ($eventloop:expr) => {{
        let mut eventloop = $eventloop;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let r = eventloop.poll().await;
                let stop = r.is_err();
                if tx.send(r).is_err() || stop {
                    break;
                }
            }
        });
        (rx, task)
    }};
}

/// An application message as received, protocol independent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

// ---------------------------------------------------------------------------- MQTT 3.1.1

fn opts3(b: &TestBroker, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, HOST, b.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

fn spawn3(o: MqttOptions) -> C3 {
    let (client, eventloop) = AsyncClient::new(o, 64);
    let (rx, task) = forward!(eventloop);
    Harness { client, rx, stash: VecDeque::new(), task }
}

/// Connect and wait for the CONNACK (panics if refused).
async fn connect3(o: MqttOptions) -> (C3, rumqttc::ConnAck) {
    let mut c = spawn3(o);
    let ack = c
        .wait_for("CONNACK", |e| match e {
            Event::Incoming(Packet::ConnAck(a)) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    (c, ack)
}

fn qos3(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn msg3(e: &Event) -> Option<Msg> {
    match e {
        Event::Incoming(Packet::Publish(p)) => {
            Some(Msg { topic: p.topic.clone(), payload: p.payload.to_vec(), qos: p.qos as u8, retain: p.retain })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------- MQTT 5

fn opts5(b: &TestBroker, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, HOST, b.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Set the CONNECT Session Expiry Interval (keeping other CONNECT properties).
fn set_expiry(o: &mut rumqttc::v5::MqttOptions, secs: u32) {
    let mut p = o.connect_properties().unwrap_or_default();
    p.session_expiry_interval = Some(secs);
    o.set_connect_properties(p);
}

fn spawn5(o: rumqttc::v5::MqttOptions) -> C5 {
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, 64);
    let (rx, task) = forward!(eventloop);
    Harness { client, rx, stash: VecDeque::new(), task }
}

/// Connect and wait for the CONNACK (panics if refused).
async fn connect5(o: rumqttc::v5::MqttOptions) -> (C5, p5::ConnAck) {
    let mut c = spawn5(o);
    let ack = c
        .wait_for("CONNACK", |e| match e {
            rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a)) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    (c, ack)
}

fn qos5(q: u8) -> QoS5 {
    match q {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

fn pub5(e: &rumqttc::v5::Event) -> Option<p5::Publish> {
    match e {
        rumqttc::v5::Event::Incoming(p5::Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    }
}

fn to_msg5(p: &p5::Publish) -> Msg {
    Msg {
        topic: String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic"),
        payload: p.payload.to_vec(),
        qos: p.qos as u8,
        retain: p.retain,
    }
}

/// A v5 subscription filter with options.
fn filter5(path: &str, qos: u8) -> p5::Filter {
    p5::Filter::new(path, qos5(qos))
}

impl C5 {
    /// Subscribe (one SUBSCRIBE, optional Subscription Identifier) and wait for the SUBACK.
    async fn subscribe5(&mut self, filters: Vec<p5::Filter>, id: Option<usize>) -> Vec<p5::SubscribeReasonCode> {
        let r = match id {
            Some(id) => {
                let props = p5::SubscribeProperties { id: Some(id), user_properties: Vec::new() };
                self.client.subscribe_many_with_properties(filters, props).await
            }
            None => self.client.subscribe_many(filters).await,
        };
        r.expect("subscribe request");
        self.wait_for("SUBACK", |e| match e {
            rumqttc::v5::Event::Incoming(p5::Packet::SubAck(s)) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Publish with properties and wait until it is sent (QoS 0) or acknowledged (QoS 1, 2):
    /// the broker routes a message before acknowledging it.
    async fn publish5(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8], props: p5::PublishProperties) {
        self.client
            .publish_with_properties(topic, qos5(qos), retain, Bytes::copy_from_slice(payload), props)
            .await
            .expect("publish request");
        let pkid = self
            .wait_for("outgoing PUBLISH", |e| match e {
                rumqttc::v5::Event::Outgoing(Outgoing::Publish(id)) => Some(*id),
                _ => None,
            })
            .await;
        match qos {
            0 => {}
            1 => {
                self.wait_for("PUBACK", |e| match e {
                    rumqttc::v5::Event::Incoming(p5::Packet::PubAck(a)) if a.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
            _ => {
                self.wait_for("PUBCOMP", |e| match e {
                    rumqttc::v5::Event::Incoming(p5::Packet::PubComp(a)) if a.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
        }
    }

    async fn next_pub5(&mut self) -> p5::Publish {
        self.wait_for("PUBLISH", pub5).await
    }
}

// --------------------------------------------------------------- protocol-independent API

/// What a scenario needs from a client, whatever its protocol version.
trait Mqtt: Sized {
    /// Connect (panics unless accepted); returns the client and Session Present.
    /// `clean = false` asks for a persistent session (v5: Clean Start 0, Session Expiry 60 s).
    /// `will` is (topic, payload), QoS 1, not retained.
    async fn connect(b: &TestBroker, id: &str, clean: bool, will: Option<(&str, &[u8])>) -> (Self, bool);
    /// Subscribe one filter and wait for the SUBACK; returns the granted QoS (panics on failure).
    async fn subscribe(&mut self, filter: &str, qos: u8) -> u8;
    /// Publish and wait until sent (QoS 0) or acknowledged (QoS 1, 2).
    async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8]);
    /// The next application message within `t`.
    async fn try_next_publish(&mut self, t: Duration) -> Option<Msg>;
    /// Send DISCONNECT (normal) and wait until the broker closes the connection.
    async fn disconnect(self);
    /// Drop the connection without DISCONNECT.
    async fn kill(self);
    /// Wait until the connection ends; returns the client library's error, printed.
    async fn wait_closed(&mut self) -> String;

    async fn next_publish(&mut self) -> Msg {
        match self.try_next_publish(WAIT).await {
            Some(m) => m,
            None => panic!("no PUBLISH within {WAIT:?}"),
        }
    }

    async fn next_publishes(&mut self, n: usize) -> Vec<Msg> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.next_publish().await);
        }
        v
    }

    async fn expect_no_publish(&mut self, t: Duration) {
        if let Some(m) = self.try_next_publish(t).await {
            panic!("unexpected PUBLISH {m:?}");
        }
    }
}

impl Mqtt for C3 {
    async fn connect(b: &TestBroker, id: &str, clean: bool, will: Option<(&str, &[u8])>) -> (Self, bool) {
        let mut o = opts3(b, id);
        o.set_clean_session(clean);
        if let Some((t, p)) = will {
            o.set_last_will(rumqttc::LastWill::new(t, p.to_vec(), QoS::AtLeastOnce, false));
        }
        let (c, ack) = connect3(o).await;
        (c, ack.session_present)
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) -> u8 {
        self.client.subscribe(filter, qos3(qos)).await.expect("subscribe request");
        let codes = self
            .wait_for("SUBACK", |e| match e {
                Event::Incoming(Packet::SubAck(s)) => Some(s.return_codes.clone()),
                _ => None,
            })
            .await;
        match codes.as_slice() {
            [rumqttc::SubscribeReasonCode::Success(q)] => *q as u8,
            other => panic!("SUBACK for {filter}: {other:?}"),
        }
    }

    async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
        self.client.publish(topic, qos3(qos), retain, payload.to_vec()).await.expect("publish request");
        let pkid = self
            .wait_for("outgoing PUBLISH", |e| match e {
                Event::Outgoing(Outgoing::Publish(id)) => Some(*id),
                _ => None,
            })
            .await;
        match qos {
            0 => {}
            1 => {
                self.wait_for("PUBACK", |e| match e {
                    Event::Incoming(Packet::PubAck(a)) if a.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
            _ => {
                self.wait_for("PUBCOMP", |e| match e {
                    Event::Incoming(Packet::PubComp(a)) if a.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
        }
    }

    async fn try_next_publish(&mut self, t: Duration) -> Option<Msg> {
        self.try_wait_for(t, msg3).await
    }

    async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        self.wait_for("outgoing DISCONNECT", |e| matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(()))
            .await;
        self.wait_error().await;
    }

    async fn kill(self) {
        self.abort().await;
    }

    async fn wait_closed(&mut self) -> String {
        format!("{:?}", self.wait_error().await)
    }
}

impl Mqtt for C5 {
    async fn connect(b: &TestBroker, id: &str, clean: bool, will: Option<(&str, &[u8])>) -> (Self, bool) {
        let mut o = opts5(b, id);
        o.set_clean_start(clean);
        if !clean {
            set_expiry(&mut o, 60);
        }
        if let Some((t, p)) = will {
            o.set_last_will(p5::LastWill::new(t, p.to_vec(), QoS5::AtLeastOnce, false, None));
        }
        let (c, ack) = connect5(o).await;
        (c, ack.session_present)
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) -> u8 {
        match self.subscribe5(vec![filter5(filter, qos)], None).await.as_slice() {
            [p5::SubscribeReasonCode::Success(q)] => *q as u8,
            other => panic!("SUBACK for {filter}: {other:?}"),
        }
    }

    async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
        self.publish5(topic, qos, retain, payload, p5::PublishProperties::default()).await;
    }

    async fn try_next_publish(&mut self, t: Duration) -> Option<Msg> {
        self.try_wait_for(t, |e| pub5(e).map(|p| to_msg5(&p))).await
    }

    async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        self.wait_for("outgoing DISCONNECT", |e| {
            matches!(e, rumqttc::v5::Event::Outgoing(Outgoing::Disconnect)).then_some(())
        })
        .await;
        self.wait_error().await;
    }

    async fn kill(self) {
        self.abort().await;
    }

    async fn wait_closed(&mut self) -> String {
        format!("{:?}", self.wait_error().await)
    }
}

fn topics(v: &[Msg]) -> Vec<&str> {
    v.iter().map(|m| m.topic.as_str()).collect()
}

// ===================================================================== 1. round trip, QoS

/// Every (publish QoS, subscription QoS) pair: the payload arrives intact (binary, every byte
/// value) and the delivered QoS is min(published, granted) [MQTT-3.8.4-6] (3.1.1) /
/// [MQTT-3.8.4-8] (5); the SUBACK grants what was asked.
async fn pubsub_qos_matrix<C: Mqtt>() {
    let b = TestBroker::start().await;
    let (mut sub, _) = C::connect(&b, "rt-sub", true, None).await;
    let (mut publ, _) = C::connect(&b, "rt-pub", true, None).await;
    for s in 0..=2u8 {
        assert_eq!(sub.subscribe(&format!("rt/{s}"), s).await, s);
    }
    let mut expected = BTreeMap::new();
    for p in 0..=2u8 {
        for s in 0..=2u8 {
            let mut payload = format!("p{p}s{s}:").into_bytes();
            payload.extend(0..=255u8);
            payload.extend([0, 0xff, 0]);
            let topic = format!("rt/{s}");
            publ.publish(&topic, p, false, &payload).await;
            expected.insert((topic, payload), p.min(s));
        }
    }
    let mut got = BTreeMap::new();
    for m in sub.next_publishes(9).await {
        assert!(!m.retain, "{m:?}");
        let key = (m.topic.clone(), m.payload.clone());
        assert!(got.insert(key, m.qos).is_none(), "delivered twice: {m:?}");
    }
    assert_eq!(got, expected);
    sub.expect_no_publish(QUIET).await;
}

both_versions!(v3_pubsub_qos_matrix, v5_pubsub_qos_matrix, pubsub_qos_matrix);

// ========================================================================= 2. wildcards

/// `+` matches exactly one level (possibly empty), `#` the parent and any number of levels
/// [MQTT-4.7.1-2], and neither matches a topic starting with `$` at the first level
/// [MQTT-4.7.2-1] (nor are `$SYS` retained messages sent to a `#` subscriber). The last
/// publication matches every subscriber, so anything wrongly delivered would show up before it.
/// A client may publish to a `$` topic only with an explicit grant (SPEC §10): the ACL grants
/// `$foo` and opens everything else.
async fn wildcards<C: Mqtt>() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("acl"), "topic readwrite #\ntopic write $foo\ntopic write $foo/x\n").unwrap();
    let b = TestBroker::from_toml_in(
        dir,
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"ws\"\n\
         [auth]\nallow_anonymous = true\n[authz]\nacl_file = \"{dir}/acl\"\n",
    )
    .await;
    let (mut plus, _) = C::connect(&b, "wc-plus", true, None).await;
    let (mut hash, _) = C::connect(&b, "wc-hash", true, None).await;
    let (mut all, _) = C::connect(&b, "wc-all", true, None).await;
    let (mut plus_x, _) = C::connect(&b, "wc-plus-x", true, None).await;
    let (mut publ, _) = C::connect(&b, "wc-pub", true, None).await;
    plus.subscribe("wc/+/t", 1).await;
    hash.subscribe("wc/#", 1).await;
    all.subscribe("#", 1).await;
    plus_x.subscribe("+/x", 1).await;
    let sent = ["wc/a/t", "wc/a/b/t", "wc/t", "wc//t", "wc", "wcx/a", "a/x", "$foo/x", "$foo", "wc/z/t", "z/x"];
    for t in sent {
        publ.publish(t, 1, false, t.as_bytes()).await;
    }
    let cases: [(&mut C, &[&str]); 4] = [
        (&mut plus, &["wc/a/t", "wc//t", "wc/z/t"]),
        (&mut hash, &["wc/a/t", "wc/a/b/t", "wc/t", "wc//t", "wc", "wc/z/t"]),
        (&mut all, &["wc/a/t", "wc/a/b/t", "wc/t", "wc//t", "wc", "wcx/a", "a/x", "wc/z/t", "z/x"]),
        (&mut plus_x, &["a/x", "z/x"]),
    ];
    for (c, want) in cases {
        let got = c.next_publishes(want.len()).await;
        assert_eq!(topics(&got), want);
        for m in &got {
            assert_eq!(m.payload, m.topic.as_bytes());
        }
    }
    // `z/x` is the last publication and `+/x` matches only it after `a/x`: nothing else may follow.
    plus_x.expect_no_publish(QUIET).await;
    all.expect_no_publish(QUIET).await;
}

both_versions!(v3_wildcards_and_dollar_topics, v5_wildcards_and_dollar_topics, wildcards);

// ========================================================================== 3. retained

/// Set, replace, clear. 3.1.1: the server stores and replaces the retained message
/// [MQTT-3.3.1-5]; a new subscription gets the last one with RETAIN 1 [MQTT-3.3.1-6/8]; live
/// deliveries have RETAIN 0 [MQTT-3.3.1-9]; an empty retained payload is delivered normally,
/// removes the retained message and is not stored [MQTT-3.3.1-10/11].
/// 5: [MQTT-3.3.1-5/6/7], live RETAIN 0 with Retain As Published 0 [MQTT-3.3.1-12].
async fn retained_set_replace_clear<C: Mqtt>() {
    let b = TestBroker::start().await;
    let (mut publ, _) = C::connect(&b, "ret-pub", true, None).await;
    publ.publish("ret/a", 1, true, b"one").await;
    publ.publish("ret/a", 1, true, b"two").await;

    let (mut s1, _) = C::connect(&b, "ret-s1", true, None).await;
    s1.subscribe("ret/a", 1).await;
    let m = s1.next_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice(), m.retain, m.qos), ("ret/a", &b"two"[..], true, 1));
    // Sentinel: a live publication must be next (no stale "one"), with RETAIN 0.
    publ.publish("ret/a", 1, false, b"live").await;
    let m = s1.next_publish().await;
    assert_eq!((m.payload.as_slice(), m.retain), (&b"live"[..], false));

    // Clear: the empty retained message is delivered to the existing subscriber.
    publ.publish("ret/a", 1, true, b"").await;
    let m = s1.next_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice(), m.retain), ("ret/a", &b""[..], false));

    // A new subscriber gets no retained message: the sentinel is the first thing it sees.
    let (mut s2, _) = C::connect(&b, "ret-s2", true, None).await;
    s2.subscribe("ret/#", 1).await;
    publ.publish("ret/a", 1, false, b"after").await;
    let m = s2.next_publish().await;
    assert_eq!((m.payload.as_slice(), m.retain), (&b"after"[..], false), "retained message was not cleared");
}

both_versions!(v3_retained_set_replace_clear, v5_retained_set_replace_clear, retained_set_replace_clear);

/// Retain Handling 0: retained sent at every subscribe [MQTT-3.3.1-9]; 1: only if the
/// subscription did not exist [MQTT-3.3.1-10]; 2: never [MQTT-3.3.1-11].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling() {
    let b = TestBroker::start().await;
    let (mut publ, _) = C5::connect(&b, "rh-pub", true, None).await;
    publ.publish("rh/t", 1, true, b"kept").await;
    let rh = |rule: p5::RetainForwardRule| p5::Filter { retain_forward_rule: rule, ..filter5("rh/t", 1) };

    let (mut s0, _) = C5::connect(&b, "rh0", true, None).await;
    for round in 0..2 {
        s0.subscribe5(vec![rh(p5::RetainForwardRule::OnEverySubscribe)], None).await;
        let m = s0.next_publish().await;
        assert_eq!((m.payload.as_slice(), m.retain), (&b"kept"[..], true), "rh=0, subscribe #{round}");
    }

    let (mut s1, _) = C5::connect(&b, "rh1", true, None).await;
    s1.subscribe5(vec![rh(p5::RetainForwardRule::OnNewSubscribe)], None).await;
    let m = s1.next_publish().await;
    assert_eq!((m.payload.as_slice(), m.retain), (&b"kept"[..], true), "rh=1, new subscription");
    s1.subscribe5(vec![rh(p5::RetainForwardRule::OnNewSubscribe)], None).await;

    let (mut s2, _) = C5::connect(&b, "rh2", true, None).await;
    s2.subscribe5(vec![rh(p5::RetainForwardRule::Never)], None).await;

    // Sentinel: the live message must be the next thing each one sees.
    publ.publish("rh/t", 1, false, b"live").await;
    for (name, s) in [("rh=0", &mut s0), ("rh=1 (existing)", &mut s1), ("rh=2", &mut s2)] {
        let m = s.next_publish().await;
        assert_eq!((m.payload.as_slice(), m.retain), (&b"live"[..], false), "{name}");
    }
}

/// Retain As Published: 0 → live deliveries have RETAIN 0 [MQTT-3.3.1-12]; 1 → RETAIN as
/// published [MQTT-3.3.1-13].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_as_published() {
    let b = TestBroker::start().await;
    let (mut rap1, _) = C5::connect(&b, "rap1", true, None).await;
    let (mut rap0, _) = C5::connect(&b, "rap0", true, None).await;
    let (mut publ, _) = C5::connect(&b, "rap-pub", true, None).await;
    rap1.subscribe5(vec![p5::Filter { preserve_retain: true, ..filter5("rap/t", 1) }], None).await;
    rap0.subscribe5(vec![p5::Filter { preserve_retain: false, ..filter5("rap/t", 1) }], None).await;
    publ.publish("rap/t", 1, true, b"r").await;
    publ.publish("rap/t", 1, false, b"n").await;
    let got1: Vec<_> = rap1.next_publishes(2).await.into_iter().map(|m| (m.payload, m.retain)).collect();
    let got0: Vec<_> = rap0.next_publishes(2).await.into_iter().map(|m| (m.payload, m.retain)).collect();
    assert_eq!(got1, vec![(b"r".to_vec(), true), (b"n".to_vec(), false)], "rap=1");
    assert_eq!(got0, vec![(b"r".to_vec(), false), (b"n".to_vec(), false)], "rap=0");
}

// ============================================================================== 4. will

/// The will is published when the connection closes without DISCONNECT: 3.1.1 [MQTT-3.1.2-8],
/// 5 §3.1.2.5 / [MQTT-3.1.2-10].
async fn will_on_abrupt_drop<C: Mqtt>() {
    let b = TestBroker::start().await;
    let (mut sub, _) = C::connect(&b, "will-sub", true, None).await;
    sub.subscribe("will/#", 1).await;
    let (w, _) = C::connect(&b, "will-w", true, Some(("will/w", b"gone"))).await;
    w.kill().await;
    let m = sub.next_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice(), m.qos, m.retain), ("will/w", &b"gone"[..], 1, false));
}

/// After a normal DISCONNECT the will is discarded: 3.1.1 [MQTT-3.1.2-10], 5 [MQTT-3.14.4-3].
async fn no_will_after_disconnect<C: Mqtt>() {
    let b = TestBroker::start().await;
    let (mut sub, _) = C::connect(&b, "will-sub", true, None).await;
    sub.subscribe("will/#", 1).await;
    let (w, _) = C::connect(&b, "will-w", true, Some(("will/w", b"gone"))).await;
    w.disconnect().await;
    sub.expect_no_publish(QUIET).await;
}

both_versions!(v3_will_on_abrupt_drop, v5_will_on_abrupt_drop, will_on_abrupt_drop);

both_versions!(v3_no_will_after_normal_disconnect, v5_no_will_after_normal_disconnect, no_will_after_disconnect);

/// DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes the will (§3.14.2.1;
/// contrast [MQTT-3.14.4-3]). rumqttc always sends 0x00, so the leaving client is a RawClient;
/// the subscriber is rumqttc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_with_will_reason_0x04_publishes_will() {
    let b = TestBroker::start().await;
    let (mut sub, _) = C5::connect(&b, "w04-sub", true, None).await;
    sub.subscribe("w04/#", 1).await;
    let mut c = connect_packet(Protocol::V5, "w04", true);
    c.will = Some(CodecWill {
        topic: TopicName::new("w04/will").expect("topic"),
        payload: Bytes::from_static(b"bye-04"),
        qos: CodecQoS::AtLeastOnce,
        retain: false,
        properties: CodecProperties::default(),
    });
    let (mut raw, ack) = RawClient::connect(b.addr(), c).await;
    assert!(matches!(&ack, Recv::Packet(CodecPacket::Connack(a)) if a.reason_code == ReasonCode::SUCCESS), "{ack:?}");
    raw.send(&CodecPacket::Disconnect(CodecDisconnect::new(ReasonCode::DISCONNECT_WITH_WILL))).await;
    raw.expect_closed_within(WAIT).await;
    let m = sub.next_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("w04/will", &b"bye-04"[..]));
}

/// A v5 will with a delay, from a client whose session outlives the connection.
fn delayed_will_opts(b: &TestBroker, id: &str, delay: u32) -> rumqttc::v5::MqttOptions {
    let mut o = opts5(b, id);
    set_expiry(&mut o, 60);
    let props = p5::LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    o.set_last_will(p5::LastWill::new(format!("wd/{id}"), b"will".to_vec(), QoS5::AtLeastOnce, false, Some(props)));
    o
}

/// A reconnection to the session before the Will Delay Interval passed cancels the will
/// [MQTT-3.1.3-9].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_cancelled_by_reconnect() {
    let b = TestBroker::start().await;
    let (mut sub, _) = C5::connect(&b, "wd-sub", true, None).await;
    sub.subscribe("wd/#", 1).await;
    let (w, _) = connect5(delayed_will_opts(&b, "wd-a", 2)).await;
    w.abort().await;
    let mut o = delayed_will_opts(&b, "wd-a", 2);
    o.set_clean_start(false);
    let (_w2, ack) = connect5(o).await;
    assert!(ack.session_present, "session should have been kept (expiry 60 s)");
    // Well past the 2 s delay (the broker checks wills once a second).
    sub.expect_no_publish(Duration::from_secs(4)).await;
}

/// Without a reconnection the delayed will is published, but not before the delay
/// (§3.1.2.11.2 / §3.1.3.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_elapses() {
    let b = TestBroker::start().await;
    let (mut sub, _) = C5::connect(&b, "wd-sub", true, None).await;
    sub.subscribe("wd/#", 1).await;
    let (w, _) = connect5(delayed_will_opts(&b, "wd-b", 1)).await;
    let t0 = Instant::now();
    w.abort().await;
    let m = sub.next_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("wd/wd-b", &b"will"[..]));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "will published after {:?}, before its 1 s delay",
        t0.elapsed()
    );
}

/// The delayed will is published when the session ends first (§3.1.3.2.2 "until the Will Delay
/// Interval has passed or the Session ends, whichever happens first"): a Clean Start
/// reconnection discards the session [MQTT-3.1.2-4].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_session_ended_by_clean_start_publishes_will() {
    let b = TestBroker::start().await;
    let (mut sub, _) = C5::connect(&b, "wd-sub", true, None).await;
    sub.subscribe("wd/#", 1).await;
    let (w, _) = connect5(delayed_will_opts(&b, "wd-c", 30)).await;
    w.abort().await;
    let (_w2, ack) = C5::connect(&b, "wd-c", true, None).await;
    assert!(!ack);
    let m = sub.next_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("wd/wd-c", &b"will"[..]));
}

/// Takeover by a Clean Start connection ends the old session, so the old connection's delayed
/// will must be published then: [MQTT-3.1.4-3] "If the existing Client has a Will Message, that
/// Will Message is published as described in section 3.1.2.5", and §3.1.3.2.2 delays it "until
/// the Will Delay Interval has passed or the Session ends, whichever happens first". This is
/// what the broker already does when the old connection had dropped first (the test above);
/// here the old connection is still open when the new CONNECT arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_clean_start_takeover_publishes_delayed_will() {
    let b = TestBroker::start().await;
    let (mut sub, _) = C5::connect(&b, "wd-sub", true, None).await;
    sub.subscribe("wd/#", 1).await;
    let (mut w, _) = connect5(delayed_will_opts(&b, "wd-t", 30)).await;
    let (_w2, present) = C5::connect(&b, "wd-t", true, None).await;
    assert!(!present);
    let err = w.wait_error().await;
    assert!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                reason_code: p5::DisconnectReasonCode::SessionTakenOver,
                ..
            })
        ),
        "{err:?}"
    );
    let m = sub.next_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("wd/wd-t", &b"will"[..]));
}

// ================================================================= 5. persistent sessions

/// QoS 1 messages for a disconnected persistent session are stored and delivered in order on
/// reconnection with Session Present 1. 3.1.1: [MQTT-3.1.2-4/5], [MQTT-3.2.2-2],
/// [MQTT-4.6.0-6]. 5: [MQTT-3.1.2-5] (via Session Expiry 60 s), [MQTT-3.2.2-3], [MQTT-4.6.0-6].
async fn persistent_session<C: Mqtt>() {
    let b = TestBroker::start().await;
    let (mut s, present) = C::connect(&b, "ps", false, None).await;
    assert!(!present, "no session existed yet");
    s.subscribe("ps/t", 1).await;
    s.disconnect().await;
    let (mut publ, _) = C::connect(&b, "ps-pub", true, None).await;
    for i in 1..=3 {
        publ.publish("ps/t", 1, false, format!("m{i}").as_bytes()).await;
    }
    let (mut s, present) = C::connect(&b, "ps", false, None).await;
    assert!(present, "session present expected");
    let got: Vec<_> = s.next_publishes(3).await.into_iter().map(|m| (m.payload, m.qos)).collect();
    assert_eq!(got, vec![(b"m1".to_vec(), 1), (b"m2".to_vec(), 1), (b"m3".to_vec(), 1)]);
    s.expect_no_publish(QUIET).await;
}

/// Clean Session / Clean Start 1 discards the stored session: Session Present 0, no stored
/// messages, no subscriptions. 3.1.1: [MQTT-3.1.2-6], [MQTT-3.2.2-1]. 5: [MQTT-3.1.2-4],
/// [MQTT-3.2.2-2].
async fn clean_start_discards<C: Mqtt>() {
    let b = TestBroker::start().await;
    let (mut s, _) = C::connect(&b, "cs", false, None).await;
    s.subscribe("cs/t", 1).await;
    s.disconnect().await;
    let (mut publ, _) = C::connect(&b, "cs-pub", true, None).await;
    publ.publish("cs/t", 1, false, b"stored").await;
    let (mut s, present) = C::connect(&b, "cs", true, None).await;
    assert!(!present, "clean start must not resume a session");
    publ.publish("cs/t", 1, false, b"after").await;
    s.expect_no_publish(QUIET).await;
}

both_versions!(v3_persistent_session_resumes_in_order, v5_persistent_session_resumes_in_order, persistent_session);

both_versions!(v3_clean_session_discards, v5_clean_start_discards, clean_start_discards);

/// v5 Session Expiry Interval: absent (0) ends the session with the connection, and a
/// non-zero interval ends it once elapsed (§3.1.2.11.2); Clean Start 0 then finds no session,
/// Session Present 0 [MQTT-3.2.2-3]. Sleeping only lets the 1 s interval pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_ends_session() {
    let b = TestBroker::start().await;
    let connect = |id: &str, expiry: Option<u32>| {
        let mut o = opts5(&b, id);
        o.set_clean_start(false);
        if let Some(e) = expiry {
            set_expiry(&mut o, e);
        }
        o
    };
    let (mut c, ack) = connect5(connect("se-0", None)).await;
    assert!(!ack.session_present);
    c.subscribe("se/t", 1).await;
    c.disconnect().await;
    let (_c, ack) = connect5(connect("se-0", None)).await;
    assert!(!ack.session_present, "expiry 0: the session ended with the connection");

    let (mut c, _) = connect5(connect("se-1", Some(1))).await;
    c.subscribe("se/t", 1).await;
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c, ack) = connect5(connect("se-1", Some(1))).await;
    assert!(!ack.session_present, "expiry 1 s: the session should have expired");
}

// ============================================================ 6. shared subscriptions (v5)

/// Each message published to a shared subscription's topic goes to exactly one member of the
/// group (§4.8.2), and the load is spread (both members get some).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_shared_subscription_splits_messages() {
    let b = TestBroker::start().await;
    let (mut m1, _) = C5::connect(&b, "sh-1", true, None).await;
    let (mut m2, _) = C5::connect(&b, "sh-2", true, None).await;
    let (mut publ, _) = C5::connect(&b, "sh-pub", true, None).await;
    m1.subscribe("$share/g/sh/t", 1).await;
    m2.subscribe("$share/g/sh/t", 1).await;
    for i in 0..20 {
        publ.publish("sh/t", 1, false, format!("{i}").as_bytes()).await;
    }
    // Every PUBACK came back, so every message is routed: drain both members.
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut per_member = [0usize; 2];
    for (k, m) in [&mut m1, &mut m2].into_iter().enumerate() {
        while let Some(msg) = m.try_next_publish(QUIET).await {
            assert_eq!(msg.topic, "sh/t");
            *counts.entry(String::from_utf8(msg.payload).expect("utf8")).or_default() += 1;
            per_member[k] += 1;
        }
    }
    let expected: HashMap<String, usize> = (0..20).map(|i| (i.to_string(), 1)).collect();
    assert_eq!(counts, expected, "each message exactly once across the group");
    assert!(per_member[0] > 0 && per_member[1] > 0, "both members should get some: {per_member:?}");
}

// ========================================================================= 7. No Local (v5)

/// No Local 1: the client's own publications are not sent back to it [MQTT-3.8.3-3]; other
/// clients' are, and a subscriber without No Local gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_local() {
    let b = TestBroker::start().await;
    let (mut a, _) = C5::connect(&b, "nl-a", true, None).await;
    let (mut other, _) = C5::connect(&b, "nl-b", true, None).await;
    a.subscribe5(vec![p5::Filter { nolocal: true, ..filter5("nl/t", 1) }], None).await;
    other.subscribe("nl/t", 1).await;
    a.publish("nl/t", 1, false, b"from-a").await;
    assert_eq!(other.next_publish().await.payload, b"from-a");
    other.publish("nl/t", 1, false, b"from-b").await;
    // Sentinel: `a` published first, so its own message would be queued before "from-b".
    assert_eq!(a.next_publish().await.payload, b"from-b");
    // Without No Local, `other` receives its own publication.
    assert_eq!(other.next_publish().await.payload, b"from-b");
    a.expect_no_publish(QUIET).await;
}

// ============================================================ 8. subscription identifiers

/// Overlapping subscriptions: one delivery at the highest granted QoS [MQTT-3.3.4-2] carrying
/// every matching Subscription Identifier [MQTT-3.3.4-3/4].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifiers() {
    let b = TestBroker::start().await;
    let (mut s, _) = C5::connect(&b, "si-sub", true, None).await;
    let (mut publ, _) = C5::connect(&b, "si-pub", true, None).await;
    s.subscribe5(vec![filter5("si/#", 0)], Some(1)).await;
    s.subscribe5(vec![filter5("si/+/x", 1)], Some(2)).await;
    s.subscribe5(vec![filter5("si/none", 2)], None).await;

    publ.publish("si/a/x", 2, false, b"both").await;
    publ.publish("si/only", 2, false, b"one").await;
    publ.publish("si/none", 2, false, b"no-id").await;

    let p = s.next_pub5().await;
    assert_eq!(p.payload.as_ref(), b"both");
    assert_eq!(p.qos, QoS5::AtLeastOnce, "max(0, 1) of the matching subscriptions, min with published 2");
    let mut ids = p.properties.map(|p| p.subscription_identifiers).unwrap_or_default();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);

    // Sentinel: the next delivery is the next message, not a second copy of "both".
    let p = s.next_pub5().await;
    assert_eq!(p.payload.as_ref(), b"one");
    assert_eq!(p.qos, QoS5::AtMostOnce);
    assert_eq!(p.properties.map(|p| p.subscription_identifiers).unwrap_or_default(), vec![1]);

    // `si/#` (id 1) also matches `si/none`; the id-less subscription adds no identifier.
    let p = s.next_pub5().await;
    assert_eq!(p.payload.as_ref(), b"no-id");
    assert_eq!(p.qos, QoS5::ExactlyOnce);
    assert_eq!(p.properties.map(|p| p.subscription_identifiers).unwrap_or_default(), vec![1]);
    s.expect_no_publish(QUIET).await;
}

// ================================================================ 9. properties pass-through

/// Payload Format Indicator [MQTT-3.3.2-4], Response Topic [MQTT-3.3.2-15], Correlation Data
/// [MQTT-3.3.2-16], User Properties in order [MQTT-3.3.2-17/18] and Content Type
/// [MQTT-3.3.2-20] reach the subscriber unaltered, live and from the retained store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_properties_pass_through() {
    let b = TestBroker::start().await;
    let (mut s, _) = C5::connect(&b, "pp-sub", true, None).await;
    let (mut publ, _) = C5::connect(&b, "pp-pub", true, None).await;
    s.subscribe("pp/t", 1).await;
    let props = p5::PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("pp/reply/42".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: vec![("k".into(), "v1".into()), ("a".into(), "b".into()), ("k".into(), "v2".into())],
        content_type: Some("application/json; charset=utf-8".into()),
        ..Default::default()
    };
    publ.publish5("pp/t", 1, true, br#"{"x":1}"#, props.clone()).await;
    let p = s.next_pub5().await;
    assert_eq!(p.payload.as_ref(), br#"{"x":1}"#);
    assert_eq!(p.properties, Some(props.clone()), "live delivery");

    let (mut late, _) = C5::connect(&b, "pp-late", true, None).await;
    late.subscribe("pp/t", 1).await;
    let p = late.next_pub5().await;
    assert!(p.retain);
    assert_eq!(p.properties, Some(props), "retained delivery");
}

// ==================================================================== 10. message expiry

/// The forwarded Message Expiry Interval is the published one minus the time waited
/// [MQTT-3.3.2-6], so never more; a message without one gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_message_expiry_forwarded() {
    let b = TestBroker::start().await;
    let (mut s, _) = C5::connect(&b, "mx-sub", true, None).await;
    let (mut publ, _) = C5::connect(&b, "mx-pub", true, None).await;
    s.subscribe("mx/live", 1).await;
    let props = p5::PublishProperties { message_expiry_interval: Some(60), ..Default::default() };
    publ.publish5("mx/live", 1, false, b"e60", props).await;
    let p = s.next_pub5().await;
    let e = p.properties.and_then(|p| p.message_expiry_interval).expect("expiry forwarded");
    assert!((1..=60).contains(&e), "forwarded expiry {e}");
    publ.publish("mx/live", 1, false, b"none").await;
    let p = s.next_pub5().await;
    assert_eq!(p.properties.and_then(|p| p.message_expiry_interval), None);
}

/// A message that expires while queued for an offline session is not delivered
/// [MQTT-3.3.2-5]; one that has not expired is, with its interval reduced [MQTT-3.3.2-6]. An
/// expired retained message is not sent to a new subscriber either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_message_expiry_offline_session() {
    let b = TestBroker::start().await;
    let (mut s, _) = C5::connect(&b, "mx-off", false, None).await;
    s.subscribe("mx/off", 1).await;
    s.disconnect().await;
    let (mut publ, _) = C5::connect(&b, "mx-pub", true, None).await;
    let expiry = |secs| p5::PublishProperties { message_expiry_interval: Some(secs), ..Default::default() };
    publ.publish5("mx/off", 1, false, b"short", expiry(1)).await;
    publ.publish5("mx/off", 1, false, b"long", expiry(60)).await;
    publ.publish5("mx/ret", 1, true, b"ret-short", expiry(1)).await;

    // Let the 1 s expiry pass (time passing, not synchronisation).
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let (mut s, present) = C5::connect(&b, "mx-off", false, None).await;
    assert!(present);
    let p = s.next_pub5().await;
    assert_eq!(p.payload.as_ref(), b"long", "the expired message was delivered first");
    let e = p.properties.and_then(|p| p.message_expiry_interval).expect("expiry forwarded");
    assert!((1..=58).contains(&e), "60 s minus >2 s waited, rounded up, is at most 58; got {e}");
    s.expect_no_publish(QUIET).await;

    let (mut late, _) = C5::connect(&b, "mx-late", true, None).await;
    late.subscribe("mx/ret", 1).await;
    publ.publish("mx/ret", 1, false, b"after").await;
    assert_eq!(late.next_publish().await.payload, b"after", "expired retained message was sent");
}

// ============================================================= 11. empty client identifier

/// v5 zero-length Client Identifier: the server assigns one and returns it in CONNACK
/// [MQTT-3.1.3-6], [MQTT-3.2.2-16]; assigned identifiers are unique and usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_assigned_client_identifier() {
    let b = TestBroker::start().await;
    let (mut c1, ack1) = connect5(opts5(&b, "")).await;
    let (_c2, ack2) = connect5(opts5(&b, "")).await;
    let id1 = ack1.properties.and_then(|p| p.assigned_client_identifier).expect("assigned id in CONNACK");
    let id2 = ack2.properties.and_then(|p| p.assigned_client_identifier).expect("assigned id in CONNACK");
    assert!(!id1.is_empty());
    assert_ne!(id1, id2);
    c1.subscribe("aid/t", 1).await;
    c1.publish("aid/t", 1, false, b"self").await;
    assert_eq!(c1.next_publish().await.payload, b"self");
}

/// v3.1.1 zero-byte ClientId: accepted with Clean Session 1 [MQTT-3.1.3-6/7]; with Clean
/// Session 0 refused with CONNACK 0x02 (Identifier rejected) and closed [MQTT-3.1.3-8].
/// rumqttc panics on an empty id with clean session 0, so that half uses a RawClient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_empty_client_identifier() {
    let b = TestBroker::start().await;
    let (mut c, present) = C3::connect(&b, "", true, None).await;
    assert!(!present);
    c.subscribe("eid/t", 1).await;
    c.publish("eid/t", 1, false, b"self").await;
    assert_eq!(c.next_publish().await.payload, b"self");

    let (mut raw, ack) = RawClient::connect(b.addr(), connect_packet(Protocol::V311, "", false)).await;
    match &ack {
        Recv::Packet(CodecPacket::Connack(a)) => {
            assert_eq!(a.reason_code, ReasonCode(0x02), "{ack:?}");
            assert!(!a.session_present);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw.expect_closed_within(WAIT).await;
}

// ================================================================ 12. outbound topic alias

/// The server only sends Topic Aliases up to the client's Topic Alias Maximum
/// [MQTT-3.1.2-26], [MQTT-3.3.2-11], and none when it is absent [MQTT-3.1.2-27]. rumqttc
/// resolves received aliases, so every delivery must show the right topic; the alias itself
/// stays visible in the properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_outbound() {
    let b = TestBroker::start().await;
    let with_max = |id: &str, max: u16| {
        let mut o = opts5(&b, id);
        o.set_topic_alias_max(Some(max));
        o
    };
    let (mut s5, _) = connect5(with_max("ta-5", 5)).await;
    let (mut s1, _) = connect5(with_max("ta-1", 1)).await;
    let (mut s0, _) = C5::connect(&b, "ta-0", true, None).await;
    let (mut publ, _) = C5::connect(&b, "ta-pub", true, None).await;
    for s in [&mut s5, &mut s1, &mut s0] {
        s.subscribe("ta/#", 1).await;
    }
    let mut sent = Vec::new();
    for i in 0..3 {
        for t in ["ta/a", "ta/b"] {
            let payload = format!("{t}#{i}");
            publ.publish(t, 1, false, payload.as_bytes()).await;
            sent.push((t.to_string(), payload.into_bytes()));
        }
    }
    let mut aliases: Vec<Vec<(String, Option<u16>)>> = Vec::new();
    for s in [&mut s5, &mut s1, &mut s0] {
        let mut seen = Vec::new();
        for (t, payload) in &sent {
            let p = s.next_pub5().await;
            let m = to_msg5(&p);
            assert_eq!((&m.topic, &m.payload), (t, payload), "topic must be resolved");
            seen.push((m.topic, p.properties.and_then(|p| p.topic_alias)));
        }
        aliases.push(seen);
    }
    // Max 5: both topics aliased, consistently, with distinct aliases in 1..=5.
    let mut map: BTreeMap<String, BTreeSet<Option<u16>>> = BTreeMap::new();
    for (t, a) in &aliases[0] {
        map.entry(t.clone()).or_default().insert(*a);
    }
    let a = map["ta/a"].iter().copied().collect::<Vec<_>>();
    let bb = map["ta/b"].iter().copied().collect::<Vec<_>>();
    assert_eq!(a.len(), 1, "one alias per topic: {aliases:?}");
    assert_eq!(bb.len(), 1, "one alias per topic: {aliases:?}");
    let (a, bb) = (a[0].expect("ta/a aliased"), bb[0].expect("ta/b aliased"));
    assert!((1..=5).contains(&a) && (1..=5).contains(&bb) && a != bb, "{aliases:?}");
    // Max 1: the first topic gets alias 1, the other is sent in full without an alias.
    for (t, alias) in &aliases[1] {
        assert!(alias.is_none_or(|x| x == 1), "alias above the maximum 1: {aliases:?}");
        if t == "ta/b" {
            assert_eq!(*alias, None, "only one alias available: {aliases:?}");
        }
    }
    // No Topic Alias Maximum: no aliases at all.
    assert!(aliases[2].iter().all(|(_, a)| a.is_none()), "{aliases:?}");
}

/// Inbound aliases: the server accepts Topic Alias values up to the maximum it sent in CONNACK
/// [MQTT-3.3.2-12] and resolves a PUBLISH with an empty topic and a known alias to its topic.
/// rumqttc sends exactly what it is given (topic and alias property), so it can express this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_inbound() {
    let b = TestBroker::start().await;
    let (mut s, _) = C5::connect(&b, "tai-sub", true, None).await;
    s.subscribe("tai/#", 1).await;
    let (mut publ, ack) = connect5(opts5(&b, "tai-pub")).await;
    let max = ack.properties.and_then(|p| p.topic_alias_max).unwrap_or(0);
    assert!(max >= 1, "broker advertises Topic Alias Maximum {max}");
    let alias = |a| p5::PublishProperties { topic_alias: Some(a), ..Default::default() };
    publ.publish5("tai/one", 1, false, b"set", alias(1)).await;
    publ.publish5("", 1, false, b"use", alias(1)).await;
    publ.publish5("tai/two", 1, false, b"remap", alias(1)).await;
    publ.publish5("", 1, false, b"use2", alias(1)).await;
    let got: Vec<_> =
        s.next_publishes(4).await.into_iter().map(|m| (m.topic, String::from_utf8(m.payload).expect("utf8"))).collect();
    let want = [("tai/one", "set"), ("tai/one", "use"), ("tai/two", "remap"), ("tai/two", "use2")];
    assert_eq!(got, want.map(|(t, p)| (t.to_string(), p.to_string())));
}

/// A PUBLISH larger than the client's Maximum Packet Size is discarded, not sent
/// [MQTT-3.1.2-25]; the next message on the same topic still arrives with its topic (an alias
/// is only usable once the client has seen it with the topic name, §3.3.2.3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_oversized_message_skipped_then_topic_alias_still_valid() {
    let b = TestBroker::start().await;
    let mut o = opts5(&b, "big-sub");
    o.set_max_packet_size(Some(1024));
    o.set_topic_alias_max(Some(5));
    let (mut s, _) = connect5(o).await;
    let (mut publ, _) = C5::connect(&b, "big-pub", true, None).await;
    s.subscribe("big/t", 1).await;
    publ.publish("big/t", 1, false, &[b'x'; 2000]).await;
    publ.publish("big/t", 1, false, b"small").await;
    let p = s.next_pub5().await;
    let m = to_msg5(&p);
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("big/t", &b"small"[..]), "{p:?}");
    s.expect_no_publish(QUIET).await;
}

/// Flow control: the server never has more unacknowledged QoS 1 deliveries in flight than the
/// client's Receive Maximum [MQTT-3.3.4-7]; each PUBACK lets one more through, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_receive_maximum_flow_control() {
    let b = TestBroker::start().await;
    let mut o = opts5(&b, "fc-sub");
    o.set_receive_maximum(Some(2));
    o.set_manual_acks(true);
    let (mut s, _) = connect5(o).await;
    let (mut publ, _) = C5::connect(&b, "fc-pub", true, None).await;
    s.subscribe("fc/t", 1).await;
    for i in 0..5 {
        publ.publish("fc/t", 1, false, format!("{i}").as_bytes()).await;
    }
    let mut unacked = VecDeque::new();
    for i in 0..2 {
        let p = s.next_pub5().await;
        assert_eq!(p.payload.as_ref(), format!("{i}").as_bytes());
        unacked.push_back(p);
    }
    assert!(s.try_wait_for(QUIET, pub5).await.is_none(), "more than Receive Maximum (2) in flight");
    for i in 2..5 {
        let done = unacked.pop_front().expect("one in flight");
        s.client.ack(&done).await.expect("ack");
        let p = s.next_pub5().await;
        assert_eq!(p.payload.as_ref(), format!("{i}").as_bytes());
        unacked.push_back(p);
        assert!(s.try_wait_for(QUIET, pub5).await.is_none(), "more than Receive Maximum (2) in flight");
    }
}

// ========================================================================= 13. takeover

/// A second connection with the same client id disconnects the first (3.1.1 [MQTT-3.1.4-2],
/// 5 [MQTT-3.1.4-3]); the old connection's will (no delay) is published since it did not send
/// DISCONNECT (3.1.1 [MQTT-3.1.2-8]; 5 [MQTT-3.1.4-3] "...published as described in section
/// 3.1.2.5"); the new connection works.
async fn takeover<C: Mqtt>() {
    let b = TestBroker::start().await;
    let (mut watcher, _) = C::connect(&b, "tk-watch", true, None).await;
    watcher.subscribe("tk/will", 1).await;
    let (mut c1, _) = C::connect(&b, "tk", true, Some(("tk/will", b"c1-gone"))).await;
    let (mut c2, present) = C::connect(&b, "tk", true, None).await;
    assert!(!present);
    let why = c1.wait_closed().await;
    let m = watcher.next_publish().await;
    assert_eq!(m.payload, b"c1-gone", "old connection's will (closed with {why})");
    c2.subscribe("tk/t", 1).await;
    c2.publish("tk/t", 1, false, b"still here").await;
    assert_eq!(c2.next_publish().await.payload, b"still here");
    watcher.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_takeover() {
    takeover::<C3>().await;
}

/// 5: the old connection is told why: DISCONNECT 0x8E Session taken over [MQTT-3.1.4-3].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_takeover_session_taken_over() {
    let b = TestBroker::start().await;
    let (mut c1, _) = C5::connect(&b, "tk", true, None).await;
    let (_c2, _) = C5::connect(&b, "tk", true, None).await;
    let err = c1.wait_error().await;
    assert!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                reason_code: p5::DisconnectReasonCode::SessionTakenOver,
                ..
            })
        ),
        "{err:?}"
    );
    takeover::<C5>().await;
}

// ============================================================================= 14. $SYS

/// `$SYS/broker/version` and `$SYS/broker/uptime` are retained, so a `$SYS/#` subscriber gets
/// them at once with RETAIN 1 (`$`-topics do match a filter that starts with `$`, §4.7.2).
///
/// The broker publishes `$SYS` from a timer task that starts with the server; under load its
/// first run can coincide with (or follow) a quick subscription, which then sees a live copy
/// (RETAIN 0). A probe subscriber therefore first waits for `$SYS/broker/uptime` (the second
/// of the batch, so both are stored by then), and only then does the real subscriber subscribe.
async fn sys_topics<C: Mqtt>() {
    let b = TestBroker::start().await;
    let (mut probe, _) = C::connect(&b, "sys-probe", true, None).await;
    probe.subscribe("$SYS/broker/uptime", 0).await;
    probe.next_publish().await;
    let (mut s, _) = C::connect(&b, "sys", true, None).await;
    s.subscribe("$SYS/#", 0).await;
    let mut found: BTreeMap<String, Msg> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while found.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = s.try_next_publish(left).await else {
            panic!("$SYS topics not all received; got {:?}", found.keys().collect::<Vec<_>>());
        };
        assert!(m.topic.starts_with("$SYS/"), "{m:?}");
        if m.topic == "$SYS/broker/version" || m.topic == "$SYS/broker/uptime" {
            found.insert(m.topic.clone(), m);
        }
    }
    let version = &found["$SYS/broker/version"];
    assert!(version.retain);
    let v = String::from_utf8(version.payload.clone()).expect("utf8");
    assert!(v.starts_with("warden "), "{v}");
    let uptime = &found["$SYS/broker/uptime"];
    assert!(uptime.retain);
    let u = String::from_utf8(uptime.payload.clone()).expect("utf8");
    let secs = u.strip_suffix(" seconds").unwrap_or_else(|| panic!("uptime payload {u:?}"));
    secs.parse::<u64>().unwrap_or_else(|e| panic!("uptime payload {u:?}: {e}"));
}

both_versions!(v3_sys_topics, v5_sys_topics, sys_topics);
