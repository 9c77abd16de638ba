//! Durable state, proved the hard way: the real `warden` process is killed with SIGKILL while
//! clients are mid-flight, restarted on the same data directory, and every acknowledged message
//! must still arrive (QoS 2 exactly once), with sessions and retained messages back.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use mqtt_codec::{Packet, Protocol, PubAck, QoS};
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

/// The real broker process on an ephemeral loopback port.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: Receiver<String>,
    /// What it logged before it listened (the store report among it).
    early: Vec<String>,
}

impl Proc {
    fn start(dir: &Path, durability: &str) -> Proc {
        Proc::start_with(dir, &format!("durability = \"{durability}\"\n"))
    }

    /// With `persistence` as the body of the `[persistence]` table.
    fn start_with(dir: &Path, persistence: &str) -> Proc {
        let cfg = dir.join("warden.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n\
                 [persistence]\n{persistence}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = warden_testkit::stderr_lines(&mut child);
        let (addr, early) = warden_testkit::mqtt_listen_address(&log, Duration::from_secs(30));
        Proc { child, addr, log, early }
    }

    /// SIGKILL: no shutdown path runs, nothing is flushed.
    fn kill9(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut all = std::mem::take(&mut self.early);
        all.extend(self.log.try_iter());
        all
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QoS 1 messages `0, 1, 2, …` (their number as payload) published in windows of 50 packet
/// ids: which were acknowledged, which are in flight (packet id → number), the next number.
#[derive(Default)]
struct Windows {
    acked: BTreeSet<u32>,
    in_window: HashMap<u16, u32>,
    next: u32,
}

impl Windows {
    /// Send one window of 50 messages on `topic`.
    async fn send(&mut self, p: &mut RawClient, topic: &str) {
        for _ in 0..50 {
            let pid = (self.next % 60_000 + 1) as u16;
            self.in_window.insert(pid, self.next);
            p.send(&publish(topic, QoS::AtLeastOnce, pid, self.next.to_string().as_bytes())).await;
            self.next += 1;
        }
    }

    /// Send windows, each acknowledged in full before the next, until `n` are acknowledged.
    async fn acknowledged_until(&mut self, p: &mut RawClient, topic: &str, n: usize) {
        while self.acked.len() < n {
            self.send(p, topic).await;
            while !self.in_window.is_empty() {
                let pid = puback_id(p.recv().await).expect("PUBACK");
                self.acked.insert(self.in_window.remove(&pid).expect("acknowledged a packet id in flight"));
            }
        }
    }
}

fn puback_id(r: Recv) -> Option<u16> {
    match r {
        Recv::Packet(Packet::PubAck(a)) if a.reason_code.is_success() => Some(a.packet_id),
        Recv::Packet(p) => panic!("unexpected {p:?}"),
        _ => None,
    }
}

/// [MQTT-4.3.2-?] / SPEC §8: a QoS 1 message the broker acknowledged to its publisher is
/// delivered to the persistent session it was queued for, even across `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Proc::start(dir.path(), "batched");
    // A persistent v3.1.1 session subscribes, then goes offline.
    let (mut sub, _) = connected(broker.addr, connect_packet(Protocol::V311, "durable-sub", false)).await;
    sub.subscribe(1, "load/#", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    let (mut p, _) = connected(broker.addr, connect_packet(Protocol::V311, "durable-pub", true)).await;
    let mut retained = publish("load/retained", QoS::AtLeastOnce, 1, b"kept");
    if let Packet::Publish(ref mut x) = retained {
        x.retain = true;
    }
    p.send(&retained).await;
    assert_eq!(puback_id(p.recv().await), Some(1));

    // Publish in windows of 50 and kill the broker mid-stream, with a window unacknowledged.
    let mut w = Windows::default();
    let killed_after = 3000;
    w.acknowledged_until(&mut p, "load/m", killed_after).await;
    // One more window in flight, then SIGKILL while the broker is working on it.
    w.send(&mut p, "load/m").await;
    if let Some(pid) = puback_id(p.recv_within(Duration::from_millis(200)).await) {
        w.acked.insert(w.in_window.remove(&pid).unwrap());
    }
    let (acked, next) = (w.acked, w.next);
    let old_log = broker.kill9();
    assert!(!old_log.iter().any(|l| l.contains("panicked")), "{old_log:?}");

    let broker = Proc::start(dir.path(), "batched");
    let loaded = broker.early.iter().find(|l| l.contains("store loaded")).expect("store load logged");
    assert!(loaded.contains("sessions=1"), "{loaded}");

    // The real client (rumqttc, MQTT 3.1.1) resumes the session and receives everything.
    let mut opts = rumqttc::MqttOptions::new("durable-sub", broker.addr.ip().to_string(), broker.addr.port());
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 100);
    let mut got = BTreeSet::new();
    let mut session_present = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !acked.is_subset(&got) {
        let Ok(ev) = tokio::time::timeout_at(deadline, events.poll()).await else {
            panic!("only {} of {} acknowledged messages arrived", got.len(), acked.len());
        };
        match ev.expect("subscriber connection") {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => session_present = Some(a.session_present),
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(m)) if m.topic == "load/m" => {
                got.insert(std::str::from_utf8(&m.payload).unwrap().parse::<u32>().unwrap());
            }
            _ => {}
        }
    }
    assert_eq!(session_present, Some(true), "the session survived kill -9 [MQTT-3.2.2-2]");
    // Nothing that was never published shows up.
    assert!(got.iter().all(|n| *n < next));
    drop(client);

    // The retained message survived too.
    let (mut late, _) = connected(broker.addr, connect_packet(Protocol::V311, "late", true)).await;
    late.subscribe(1, "load/retained", QoS::AtLeastOnce).await;
    let m = late.expect_publish().await;
    assert_eq!((&m.payload[..], m.retain), (&b"kept"[..], true));
}

/// Issue 24: with the subscriber online and acknowledging as messages arrive — the store then
/// holds back removals and in-flight updates a window, skips what is finished within its
/// window, and stores a message inside its one delivery's record — and then no longer reading
/// (its window full, the rest queued), a `kill -9` still loses no message the broker
/// acknowledged: each reached the subscriber before the kill or arrives after the restart
/// (some twice: QoS 1 is at least once). With and without a commit interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_an_online_subscriber_loses_no_acknowledged_message() {
    for persistence in ["durability = \"batched\"\n", "durability = \"batched\"\ncommit_interval = \"1ms\"\n"] {
        let dir = tempfile::tempdir().unwrap();
        let broker = Proc::start_with(dir.path(), persistence);
        let (mut sub, _) = connected(broker.addr, connect_packet(Protocol::V311, "online-sub", false)).await;
        sub.subscribe(1, "live/#", QoS::AtLeastOnce).await;
        let before = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let seen = before.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            // Reads and acknowledges 1,500 messages, then stays connected without reading.
            while seen.lock().unwrap().len() < 1500 {
                match sub.recv_within(Duration::from_secs(30)).await {
                    Recv::Packet(Packet::Publish(m)) => {
                        seen.lock().unwrap().insert(std::str::from_utf8(&m.payload).unwrap().parse::<u32>().unwrap());
                        sub.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
                    }
                    Recv::Packet(_) => {}
                    Recv::Closed | Recv::Timeout => return,
                }
            }
            let _ = stopped.await;
        });
        let (mut p, _) = connected(broker.addr, connect_packet(Protocol::V311, "live-pub", true)).await;
        let mut w = Windows::default();
        w.acknowledged_until(&mut p, "live/m", 3000).await;
        w.send(&mut p, "live/m").await;
        while let Some(pid) = puback_id(p.recv_within(Duration::from_millis(20)).await) {
            w.acked.insert(w.in_window.remove(&pid).unwrap());
        }
        let (acked, next) = (w.acked, w.next);
        let old_log = broker.kill9();
        assert!(!old_log.iter().any(|l| l.contains("panicked")), "{old_log:?}");
        drop(stop);
        reader.await.unwrap();
        let before: BTreeSet<u32> = before.lock().unwrap().clone();
        let missing: BTreeSet<u32> = acked.difference(&before).copied().collect();
        eprintln!("{persistence:?}: {} acknowledged, {} received before the kill", acked.len(), before.len());

        let broker = Proc::start_with(dir.path(), persistence);
        let mut opts = rumqttc::MqttOptions::new("online-sub", broker.addr.ip().to_string(), broker.addr.port());
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 100);
        let mut got = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !missing.is_subset(&got) {
            let Ok(ev) = tokio::time::timeout_at(deadline, events.poll()).await else {
                panic!(
                    "{persistence:?}: {} acknowledged messages never reached the subscriber",
                    missing.difference(&got).count()
                );
            };
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(m)) = ev.expect("subscriber connection") {
                got.insert(std::str::from_utf8(&m.payload).unwrap().parse::<u32>().unwrap());
            }
        }
        assert!(got.iter().all(|n| *n < next), "{persistence:?}: nothing never published");
        drop(client);
    }
}

fn pubrec(pid: u16) -> Packet {
    Packet::PubRec(PubAck::new(pid))
}

/// QoS 2 stays exactly once across SIGKILL on both sides of the broker [MQTT-4.3.3]:
/// - inbound: a PUBLISH acknowledged with PUBREC and re-sent (DUP) after the restart is not
///   routed again; its PUBREL is answered;
/// - outbound: a PUBLISH sent to the subscriber is re-sent with the same packet id and DUP, and a
///   message the subscriber already PUBREC'd gets only its PUBREL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_state_survives_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Proc::start(dir.path(), "batched");
    let v5 = |id: &str| {
        let mut c = connect_packet(Protocol::V5, id, false);
        c.properties.session_expiry_interval = Some(3600);
        c
    };
    let (mut sub, _) = connected(broker.addr, v5("q2-sub")).await;
    sub.subscribe(1, "q2/#", QoS::ExactlyOnce).await;
    let (mut p, _) = connected(broker.addr, v5("q2-pub")).await;
    for (pid, body) in [(11u16, "a"), (12, "b")] {
        p.send(&publish("q2/t", QoS::ExactlyOnce, pid, body.as_bytes())).await;
        match p.recv().await {
            Recv::Packet(Packet::PubRec(a)) => assert_eq!(a.packet_id, pid),
            other => panic!("{other:?}"),
        }
    }
    // Message "a" is released (PUBREL → PUBCOMP); "b" stays between PUBREC and PUBREL.
    p.send(&Packet::PubRel(PubAck::new(11))).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubComp(_))));
    // The subscriber gets both; it PUBRECs "a" (and receives the PUBREL) and leaves "b" unanswered.
    let mut ids = HashMap::new();
    for _ in 0..2 {
        let m = sub.expect_publish().await;
        ids.insert(String::from_utf8(m.payload.to_vec()).unwrap(), m.packet_id);
    }
    sub.send(&pubrec(ids["a"])).await;
    match sub.recv().await {
        Recv::Packet(Packet::PubRel(r)) => assert_eq!(r.packet_id, ids["a"]),
        other => panic!("{other:?}"),
    }
    broker.kill9();

    let broker = Proc::start(dir.path(), "batched");
    // Publisher: re-sends "b" with DUP (it never saw PUBCOMP): acknowledged, not routed again.
    let (mut p, ack) = connected(broker.addr, v5("q2-pub")).await;
    assert!(ack.session_present);
    let mut again = publish("q2/t", QoS::ExactlyOnce, 12, b"b");
    if let Packet::Publish(ref mut x) = again {
        x.dup = true;
    }
    p.send(&again).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubRec(a)) if a.packet_id == 12));
    p.send(&Packet::PubRel(PubAck::new(12))).await;
    match p.recv().await {
        Recv::Packet(Packet::PubComp(c)) => assert!(c.reason_code.is_success(), "PUBREL of a stored id: {c:?}"),
        other => panic!("{other:?}"),
    }
    // Subscriber: PUBREL for "a" again, "b" re-sent with DUP under the same packet id, once.
    let (mut sub, ack) = connected(broker.addr, v5("q2-sub")).await;
    assert!(ack.session_present);
    let mut seen = Vec::new();
    loop {
        match sub.recv_within(Duration::from_secs(2)).await {
            Recv::Packet(p) => seen.push(p),
            Recv::Timeout => break,
            Recv::Closed => panic!("closed; saw {seen:?}"),
        }
    }
    let rels: Vec<u16> =
        seen.iter().filter_map(|p| if let Packet::PubRel(r) = p { Some(r.packet_id) } else { None }).collect();
    let pubs: Vec<(u16, bool, Vec<u8>)> = seen
        .iter()
        .filter_map(|p| if let Packet::Publish(m) = p { Some((m.packet_id, m.dup, m.payload.to_vec())) } else { None })
        .collect();
    assert_eq!(rels, vec![ids["a"]], "{seen:?}");
    assert_eq!(pubs, vec![(ids["b"], true, b"b".to_vec())], "exactly once: {seen:?}");
}

/// `durability = "sync"` keeps even a subscription made just before the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_keeps_a_subscription_acknowledged_just_before_the_crash() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Proc::start(dir.path(), "sync");
    let (mut sub, _) = connected(broker.addr, connect_packet(Protocol::V311, "sync-sub", false)).await;
    sub.subscribe(1, "s/#", QoS::AtLeastOnce).await;
    broker.kill9();
    let broker = Proc::start(dir.path(), "sync");
    let (mut p, _) = connected(broker.addr, connect_packet(Protocol::V311, "sync-pub", true)).await;
    p.send(&publish("s/x", QoS::AtLeastOnce, 1, b"hi")).await;
    assert_eq!(puback_id(p.recv().await), Some(1));
    let (mut sub, ack) = connected(broker.addr, connect_packet(Protocol::V311, "sync-sub", false)).await;
    assert!(ack.session_present);
    assert_eq!(&sub.expect_publish().await.payload[..], b"hi");
}

/// A store file that is not a store at all: the broker starts, says so, keeps the bad file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_set_aside_loudly_and_the_broker_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/state.redb"), b"definitely not a redb file").unwrap();
    let broker = Proc::start(dir.path(), "batched");
    connected(broker.addr, connect_packet(Protocol::V311, "after-damage", true)).await;
    let log = broker.kill9();
    assert!(log.iter().any(|l| l.contains("store was damaged")), "{log:?}");
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.redb.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1);
}

/// Two brokers on one data directory: the second is refused at start and the first's store is
/// untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Proc::start(dir.path(), "batched");
    let out = Command::new(BIN)
        .args(["serve", "--config", dir.path().join("warden.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open the store") && err.contains("state.redb"), "{err}");
    connected(first.addr, connect_packet(Protocol::V311, "still-served", true)).await;
    assert_eq!(std::fs::read_dir(dir.path().join("data")).unwrap().count(), 1);
}

/// Issue 17 item 3: subscriptions are stored one record per change, not as a rewrite of the
/// session. 200 SUBSCRIBEs and 50 UNSUBSCRIBEs (and a re-subscription at another QoS) of a
/// persistent session survive `kill -9`: after the restart exactly the 150 left are
/// subscribed. Messages to every filter, published in order, arrive only for those (the
/// broker keeps one publisher's order, so an unsubscribed filter's message would come first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stored_one_by_one_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Proc::start(dir.path(), "batched");
    let (mut sub, _) = connected(broker.addr, connect_packet(Protocol::V311, "many-subs", false)).await;
    for i in 0..200u16 {
        assert_eq!(sub.subscribe(i + 1, &format!("subs/{i}"), QoS::AtLeastOnce).await, vec![mqtt_codec::ReasonCode(1)]);
    }
    for i in 0..50u16 {
        let u = mqtt_codec::Unsubscribe {
            packet_id: 300 + i,
            properties: Default::default(),
            filters: vec![mqtt_codec::TopicFilter::new(&format!("subs/{i}")).unwrap()],
        };
        sub.send(&Packet::Unsubscribe(u)).await;
        assert!(matches!(sub.recv().await, Recv::Packet(Packet::UnsubAck(_))));
    }
    assert_eq!(sub.subscribe(400, "subs/199", QoS::AtMostOnce).await, vec![mqtt_codec::ReasonCode(0)]);
    // In `batched` mode a SUBACK does not wait for the store; an acknowledged retained message
    // does, and it is committed after every change submitted before it.
    let (mut p, _) = connected(broker.addr, connect_packet(Protocol::V311, "barrier", true)).await;
    let mut retained = publish("barrier", QoS::AtLeastOnce, 1, b"x");
    if let Packet::Publish(ref mut x) = retained {
        x.retain = true;
    }
    p.send(&retained).await;
    assert_eq!(puback_id(p.recv().await), Some(1));
    let old_log = broker.kill9();
    assert!(!old_log.iter().any(|l| l.contains("panicked")), "{old_log:?}");

    let broker = Proc::start(dir.path(), "batched");
    let loaded = broker.early.iter().find(|l| l.contains("store loaded")).expect("store load logged");
    assert!(loaded.contains("sessions=1") && loaded.contains("subscriptions=150"), "{loaded}");
    let (mut sub, ack) = connected(broker.addr, connect_packet(Protocol::V311, "many-subs", false)).await;
    assert!(ack.session_present);
    let (mut p, _) = connected(broker.addr, connect_packet(Protocol::V311, "pub", true)).await;
    for i in 0..200u16 {
        p.send(&publish(&format!("subs/{i}"), QoS::AtLeastOnce, i + 1, i.to_string().as_bytes())).await;
        assert_eq!(puback_id(p.recv().await), Some(i + 1));
    }
    for i in 50..200u16 {
        let m = sub.expect_publish().await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), (format!("subs/{i}").as_str(), i.to_string().as_bytes()));
        // subs/199 was re-subscribed at QoS 0: the change to its options survived too.
        let want = if i == 199 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        assert_eq!(m.qos, want, "subs/{i}");
        if m.qos == QoS::AtLeastOnce {
            sub.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
        }
    }
}
