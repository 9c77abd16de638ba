use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqtt_codec::{QoS, SubscriptionOptions, TopicFilter, TopicName};
use warden_core::persist::{Persist, PersistOp, SessionRecord};
use warden_core::retained::RetainSource;
use warden_core::session::{OutStage, Subscription};
use warden_core::Message;
use warden_policy::Principal;

use super::{Durability, Store};

fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        expires_at: None,
        origin: None,
        persisted: Default::default(),
    })
}

fn session(sid: u64, cid: &str) -> PersistOp {
    PersistOp::Session(Box::new(SessionRecord {
        sid,
        client_id: Arc::from(cid),
        owner: Principal::user("ann"),
        expiry_interval: 3600,
        disconnected_at: Some(Instant::now()),
    }))
}

fn sub(filter: &str, qos: QoS, id: Option<u32>) -> Subscription {
    Subscription {
        filter: TopicFilter::new(filter).unwrap(),
        options: SubscriptionOptions { qos, ..Default::default() },
        id,
    }
}

/// Store one message for session 5 (queued) plus one in flight; returns the message handle.
fn fill(store: &Arc<Store>) -> Arc<Message> {
    let sink: Arc<dyn Persist> = store.clone();
    store.submit(session(5, "dev-1"));
    store.submit(PersistOp::Subscribe { sid: 5, sub: sub("a/#", QoS::ExactlyOnce, Some(7)) });
    let m = msg("a/b", b"one");
    let id = m.stored_id(&sink);
    for (seq, stage) in [(100, None), (101, Some((9, OutStage::AwaitComp)))] {
        store.submit(PersistOp::Delivery {
            sid: 5,
            seq,
            msg_id: id,
            qos: QoS::ExactlyOnce,
            retain: false,
            sub_ids: vec![7],
            stage,
            new: true,
        });
    }
    store.submit(PersistOp::InboundQos2 { sid: 5, packet_id: 42, present: true });
    let mut r = (*msg("r/t", b"kept")).clone();
    r.retain = true;
    let source = RetainSource::Client { principal: Arc::new(Principal::user("ann")), client_id: Arc::from("dev-1") };
    store.submit(PersistOp::Retained { topic: r.topic.clone(), msg: Some(Arc::new(r)), source });
    m
}

#[test]
fn what_is_committed_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.sessions.is_empty() && loaded.retained.is_empty());
    let m = fill(&store);
    store.close();
    drop(m);
    drop(store);

    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
    assert_eq!(loaded.sessions.len(), 1);
    let s = &loaded.sessions[0];
    assert_eq!((s.sid, &*s.client_id, &*s.owner.name, s.expiry_interval), (5, "dev-1", "ann", 3600));
    assert_eq!(s.subscriptions[0].filter.as_str(), "a/#");
    assert_eq!(s.subscriptions[0].options.qos, QoS::ExactlyOnce);
    assert_eq!(s.subscriptions[0].id, Some(7));
    assert_eq!(s.inbound_qos2, vec![42]);
    assert_eq!(s.deliveries.len(), 2);
    assert_eq!(s.deliveries[0].stage, None);
    assert_eq!(s.deliveries[1].stage, Some((9, OutStage::AwaitComp)));
    // One stored message, shared by both deliveries.
    assert!(Arc::ptr_eq(&s.deliveries[0].msg, &s.deliveries[1].msg));
    assert_eq!(&s.deliveries[0].msg.payload[..], b"one");
    assert_eq!(loaded.retained.len(), 1);
    assert_eq!(&loaded.retained[0].0.payload[..], b"kept");
    // Trust lifecycle item 4: the publisher survives the restart.
    match &loaded.retained[0].1 {
        RetainSource::Client { principal, client_id } => assert_eq!((&*principal.name, &**client_id), ("ann", "dev-1")),
        other => panic!("publisher lost: {other:?}"),
    }
    store.close();
}

#[test]
fn finished_deliveries_ended_sessions_and_dropped_messages_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (store, _) = Store::open(&path, Durability::Sync).unwrap();
    let m = fill(&store);
    store.submit(PersistOp::DeliveryDone { sid: 5, seq: 100 });
    store.submit(session(6, "dev-2"));
    store.submit(PersistOp::SessionEnd { sid: 5 });
    store.submit(PersistOp::Retained {
        topic: TopicName::new("r/t").unwrap(),
        msg: None,
        source: RetainSource::Broker,
    });
    drop(m); // last reference: the message is removed from the store
    store.close();
    let (store, loaded) = Store::open(&path, Durability::Sync).unwrap();
    assert_eq!(loaded.sessions.len(), 1);
    assert_eq!(&*loaded.sessions[0].client_id, "dev-2");
    assert!(loaded.sessions[0].deliveries.is_empty() && loaded.sessions[0].inbound_qos2.is_empty());
    assert!(loaded.retained.is_empty());
    assert!(loaded.report.dropped.is_empty());
    store.close();
}

#[test]
fn expired_sessions_are_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (store, _) = Store::open(&path, Durability::Batched).unwrap();
    let PersistOp::Session(mut rec) = session(8, "gone") else { unreachable!() };
    rec.expiry_interval = 1;
    rec.disconnected_at = Instant::now().checked_sub(Duration::from_secs(5));
    store.submit(PersistOp::Session(rec));
    store.close();
    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.sessions.is_empty());
    assert_eq!(loaded.report.expired, 1);
    store.close();
}

#[test]
fn tickets_follow_the_durability_mode() {
    let dir = tempfile::tempdir().unwrap();
    for (mode, session_waits, delivery_waits) in
        [(Durability::Sync, true, true), (Durability::Batched, false, true), (Durability::None, false, false)]
    {
        let (store, _) = Store::open(&dir.path().join(format!("{mode:?}.redb")), mode).unwrap();
        assert_eq!(store.submit(session(1, "c")) != 0, session_waits, "{mode:?}");
        let t = store.submit(PersistOp::Delivery {
            sid: 1,
            seq: 2,
            msg_id: 3,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![],
            stage: None,
            new: true,
        });
        assert_eq!(t != 0, delivery_waits, "{mode:?}");
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(store.wait(t));
        store.close();
    }
}

/// Damage the file in many ways; opening never panics, never returns garbage, and says what
/// it dropped.
#[test]
fn damaged_files_are_recovered_or_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (store, _) = Store::open(&path, Durability::Sync).unwrap();
    let m = fill(&store);
    store.close();
    drop(m);
    let good = std::fs::read(&path).unwrap();
    let len = good.len();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("garbage".into(), b"this is not a database".to_vec()),
        ("empty".into(), Vec::new()),
        ("half".into(), good[..len / 2].to_vec()),
    ];
    for at in (0..len).step_by((len / 24).max(1)) {
        let mut v = good.clone();
        for b in &mut v[at..(at + 64).min(len)] {
            *b ^= 0x5A;
        }
        cases.push((format!("flipped at {at}"), v));
    }
    for (what, bytes) in cases {
        let p = dir.path().join(format!("case-{}.redb", what.replace(' ', "-")));
        std::fs::write(&p, &bytes).unwrap();
        let (store, loaded) = Store::open(&p, Durability::Sync).unwrap_or_else(|e| panic!("{what}: {e}"));
        // Whatever came back is exactly what was written.
        for s in &loaded.sessions {
            assert_eq!((&*s.client_id, &*s.owner.name), ("dev-1", "ann"), "{what}");
            for d in &s.deliveries {
                assert_eq!(&d.msg.payload[..], b"one", "{what}");
            }
        }
        for (r, _) in &loaded.retained {
            assert_eq!((r.topic.as_str(), &r.payload[..]), ("r/t", &b"kept"[..]), "{what}");
        }
        if loaded.report.moved_aside.is_some() {
            assert!(!loaded.report.dropped.is_empty(), "{what}: set aside without saying why");
        }
        // The rebuilt (or repaired) file opens cleanly and keeps working.
        store.submit(session(9, "after"));
        store.close();
        let (store, again) = Store::open(&p, Durability::Sync).unwrap();
        assert!(again.sessions.iter().any(|s| &*s.client_id == "after"), "{what}");
        assert!(again.report.moved_aside.is_none(), "{what}");
        store.close();
    }
}

/// A store in use (another broker on the same data_dir) is refused, and left untouched.
#[test]
fn a_store_in_use_is_refused_not_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (store, _) = Store::open(&path, Durability::Batched).unwrap();
    let err = Store::open(&path, Durability::Batched).err().expect("second open refused");
    assert!(err.to_string().contains("state.redb"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing moved aside");
    store.close();
}

/// Issue 17 (smaller ones): the store holds payloads in clear, so its file is the owner's
/// only: created 0600, and an existing file with group or other bits is narrowed to 0600
/// (its data kept).
#[test]
fn the_store_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let path = dir.path().join("state.redb");
    let (store, _) = Store::open(&path, Durability::Sync).unwrap();
    assert_eq!(mode(&path), 0o600);
    fill(&store);
    store.close();
    drop(store);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (store, loaded) = Store::open(&path, Durability::Sync).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert!(!loaded.sessions.is_empty(), "what it held is kept");
    store.close();
}

/// Subscriptions are records of their own: added, replaced and removed one by one, gone with
/// their session, back after a restart.
#[test]
fn subscriptions_are_stored_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (store, _) = Store::open(&path, Durability::Sync).unwrap();
    store.submit(session(5, "dev-1"));
    store.submit(session(6, "dev-2"));
    for f in ["a/#", "b/+", "$share/g/c"] {
        store.submit(PersistOp::Subscribe { sid: 5, sub: sub(f, QoS::AtLeastOnce, None) });
    }
    store.submit(PersistOp::Subscribe { sid: 5, sub: sub("b/+", QoS::ExactlyOnce, Some(3)) });
    store.submit(PersistOp::Unsubscribe { sid: 5, filter: TopicFilter::new("a/#").unwrap() });
    store.submit(PersistOp::Subscribe { sid: 6, sub: sub("gone/#", QoS::AtMostOnce, None) });
    store.submit(PersistOp::SessionEnd { sid: 6 });
    store.close();
    let (store, loaded) = Store::open(&path, Durability::Sync).unwrap();
    assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
    assert_eq!((loaded.sessions.len(), loaded.report.subscriptions, loaded.report.migrated), (1, 2, 0));
    let mut subs: Vec<_> =
        loaded.sessions[0].subscriptions.iter().map(|s| (s.filter.as_str().to_owned(), s.options.qos, s.id)).collect();
    subs.sort();
    assert_eq!(
        subs,
        vec![("$share/g/c".to_owned(), QoS::AtLeastOnce, None), ("b/+".to_owned(), QoS::ExactlyOnce, Some(3))]
    );
    store.close();
}

/// A store written before subscriptions had records of their own (session record version 1,
/// subscriptions in its JSON) opens with them, and moves them out once: afterwards an
/// UNSUBSCRIBE (a removed record) sticks.
#[test]
fn a_version_1_session_record_keeps_its_subscriptions_and_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(super::SESSIONS).unwrap();
            let json = br#"{"client_id":"old","kind":"user","name":"ann","expiry":4294967295,"disconnected":null,
                "src":"password-file","subs":[{"f":"a/#","o":1},{"f":"b","o":2,"i":9}]}"#;
            let mut v = vec![1u8];
            v.extend_from_slice(json);
            t.insert(3, v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let (store, loaded) = Store::open(&path, Durability::Sync).unwrap();
    assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
    assert_eq!((loaded.report.sessions, loaded.report.subscriptions, loaded.report.migrated), (1, 2, 1));
    assert_eq!(loaded.sessions[0].subscriptions.len(), 2);
    store.submit(PersistOp::Unsubscribe { sid: 3, filter: TopicFilter::new("a/#").unwrap() });
    store.close();
    let (store, loaded) = Store::open(&path, Durability::Sync).unwrap();
    assert_eq!((loaded.report.subscriptions, loaded.report.migrated), (1, 0), "moved once");
    let s = &loaded.sessions[0].subscriptions[0];
    assert_eq!((s.filter.as_str(), s.options.qos, s.id), ("b", QoS::ExactlyOnce, Some(9)));
    store.close();
}

/// Issue 17 item 3: "Every SUBSCRIBE rewrites the whole session record: 102k tiny SUBSCRIBEs
/// (1.5 MB sent) made 320 MB of disk writes in 10 s." Through the real broker core and store:
/// the bytes one SUBSCRIBE writes are the same whether the session holds 1 or 1,000
/// subscriptions of 200 bytes (before, the 1,000th wrote all 200 KB of them again).
#[test]
fn issue_17_item_3_a_subscribe_writes_what_it_changes_not_the_session() {
    use bytes::BytesMut;
    use mqtt_codec::{Connect, Packet, Properties, Protocol, Subscribe};
    use warden_core::{Broker, BrokerConfig, Wake};

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("state.redb"), Durability::Sync).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let sink: Arc<dyn Persist> = store.clone();
    let broker =
        Broker::with_store(BrokerConfig::default(), Arc::new(warden_policy::AllowAll), Some(sink), Instant::now());
    let connect = Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 0,
        properties: Properties { session_expiry_interval: Some(3600), ..Default::default() },
        client_id: "many".into(),
        will: None,
        username: None,
        password: None,
    };
    let mut out = BytesMut::new();
    let mut conn =
        broker.connect(connect, Principal::user("ann"), Arc::new(NoWake), None, Instant::now(), &mut out).unwrap();
    rt.block_on(store.wait(conn.take_durable()));
    // The bytes written by the commit of one SUBSCRIBE of a 200-byte filter.
    let mut subscribe = |i: u32| {
        let filter = format!("{i:0>200}");
        let s = Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(TopicFilter::new(&filter).unwrap(), SubscriptionOptions::default())],
        };
        let before = store.bytes_written();
        conn.handle(Packet::Subscribe(s), Instant::now(), &mut out).unwrap();
        rt.block_on(store.wait(conn.take_durable()));
        store.bytes_written() - before
    };
    let first = subscribe(0);
    for i in 1..999 {
        subscribe(i);
    }
    let thousandth = subscribe(999);
    assert!(first > 200 && first < 400, "one subscription record: {first} bytes");
    assert_eq!(thousandth, first, "the 1,000th SUBSCRIBE writes what the first did");
    // A disconnection rewrites the session record only: no subscription in it.
    let before = store.bytes_written();
    conn.closed(warden_core::Close { reason: mqtt_codec::ReasonCode::SUCCESS, publish_will: false }, Instant::now());
    store.close();
    assert!(store.bytes_written() - before < 400, "{} bytes", store.bytes_written() - before);
    drop(rt);
    let (store, loaded) = Store::open(&dir.path().join("state.redb"), Durability::Sync).unwrap();
    assert_eq!(loaded.sessions[0].subscriptions.len(), 1000);
    store.close();
}

fn delivery(sid: u64, seq: u64, msg_id: u64, stage: Option<(u16, OutStage)>, new: bool) -> PersistOp {
    PersistOp::Delivery { sid, seq, msg_id, qos: QoS::AtLeastOnce, retain: false, sub_ids: vec![], stage, new }
}

/// A window as `sync` and `none` modes commit it (nothing held back, an empty commit made).
const PLAIN: super::Window = super::Window { sync: true, hold: false, skip_empty: false };
/// A window as `batched` mode commits it.
const HOLD: super::Window = super::Window { sync: true, hold: true, skip_empty: true };

fn table_len<K: redb::Key + 'static, V: redb::Value + 'static>(
    db: &redb::Database,
    t: redb::TableDefinition<K, V>,
) -> u64 {
    use redb::ReadableTableMetadata;
    db.begin_read().unwrap().open_table(t).unwrap().len().unwrap()
}

/// Issue 24, durable QoS 1: a delivery queued, sent and acknowledged within one commit window
/// writes nothing (not even a removal), and a message nobody refers to any more when its
/// batch is committed is not written; what is still referred to is written as before.
#[test]
fn issue_24_what_is_done_within_one_commit_window_is_not_written() {
    let none = super::State::default();
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("net.redb")).unwrap();
    // Tables exist.
    super::commit(&db, &[], &[session(1, "c")], PLAIN, &none).unwrap();

    // The message is still referred to (fan-out deliveries pending): it is written; the
    // finished delivery is not.
    let m = msg("a/b", b"payload");
    let ops = vec![
        PersistOp::Message { id: 10, msg: m.clone() },
        delivery(1, 11, 10, None, true),
        delivery(1, 11, 10, Some((1, OutStage::AwaitAck)), false),
        PersistOp::DeliveryDone { sid: 1, seq: 11 },
        delivery(1, 12, 10, None, true),
        delivery(1, 13, 10, None, true),
    ];
    let done = super::commit(&db, &[], &ops, PLAIN, &none).unwrap();
    assert!(done.unwritten.is_empty());
    assert_eq!(table_len(&db, super::MESSAGES), 1);
    assert_eq!(table_len(&db, super::DELIVERIES), 2, "only the pending deliveries 12 and 13");

    // A delivery stored earlier (not new) and finished now is removed.
    let done = super::commit(&db, &[], &[PersistOp::DeliveryDone { sid: 1, seq: 12 }], PLAIN, &none).unwrap();
    assert_eq!(done.written, 0);
    assert_eq!(table_len(&db, super::DELIVERIES), 1);
    super::commit(&db, &[], &[PersistOp::DeliveryDone { sid: 1, seq: 13 }], PLAIN, &none).unwrap();
    assert_eq!(table_len(&db, super::DELIVERIES), 0);
    drop(ops);
    drop(m);
    super::commit(&db, &[], &[PersistOp::MessageDrop { id: 10 }], PLAIN, &none).unwrap();
    assert_eq!(table_len(&db, super::MESSAGES), 0);

    // Only the batch refers to the message: every delivery of it is gone from memory. Neither
    // it nor the record of a delivery of it is written; its later drop is no removal.
    let ops = vec![
        PersistOp::Message { id: 20, msg: msg("a/b", b"gone") },
        delivery(1, 21, 20, None, true),
        delivery(1, 21, 20, Some((2, OutStage::AwaitAck)), false),
    ];
    let done = super::commit(&db, &[], &ops, PLAIN, &none).unwrap();
    assert_eq!((done.written, done.unwritten.clone()), (0, vec![20]));
    assert_eq!(table_len(&db, super::MESSAGES), 0);
    assert_eq!(table_len(&db, super::DELIVERIES), 0);
    let (mut st, mut done) = (super::State::default(), done);
    st.apply(&mut done);
    let done = super::commit(&db, &[], &[PersistOp::MessageDrop { id: 20 }], PLAIN, &st).unwrap();
    assert_eq!(done.forgotten, vec![20]);

    // Stored and dropped within one batch: nothing.
    let ops = vec![PersistOp::Message { id: 30, msg: msg("a/b", b"x") }, PersistOp::MessageDrop { id: 30 }];
    let done = super::commit(&db, &[], &ops, PLAIN, &none).unwrap();
    assert_eq!(done.written, 0);
    assert_eq!(table_len(&db, super::MESSAGES), 0);
}

/// The same through the writer thread: messages finished as fast as they are stored leave
/// nothing behind, those still queued come back whole.
#[test]
fn issue_24_finished_and_pending_deliveries_through_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (store, _) = Store::open(&path, Durability::Batched).unwrap();
    let sink: Arc<dyn Persist> = store.clone();
    store.submit(session(1, "c"));
    let mut kept = Vec::new();
    for i in 0..2000u64 {
        let m = msg("a/b", b"payload");
        let id = m.stored_id(&sink);
        let seq = sink.next_id();
        store.submit(delivery(1, seq, id, None, true));
        store.submit(delivery(1, seq, id, Some((1, OutStage::AwaitAck)), false));
        if i % 3 == 0 {
            kept.push((seq, m));
        } else {
            store.submit(PersistOp::DeliveryDone { sid: 1, seq });
        }
    }
    store.close();
    drop(store);
    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
    let s = &loaded.sessions[0];
    let seqs: Vec<u64> = s.deliveries.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, kept.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    assert!(s.deliveries.iter().all(|d| &d.msg.payload[..] == b"payload"));
    store.close();
}

/// The stored stage of delivery `key`, None when there is no record.
fn stored_stage(db: &redb::Database, key: (u64, u64)) -> Option<Option<(u16, OutStage)>> {
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(super::DELIVERIES).unwrap();
    let v = t.get(key).unwrap()?;
    Some(super::codec::decode_delivery(v.value()).unwrap().0.stage)
}

/// The ops of `ops` at `at`, as the writer carries them into the next window.
fn carried(ops: Vec<PersistOp>, at: &[usize]) -> Vec<PersistOp> {
    ops.into_iter().enumerate().filter(|(i, _)| at.contains(i)).map(|(_, op)| op).collect()
}

/// Issue 24, lever 1: in `batched` mode what nobody waits on (a QoS 1 delivery's in-flight
/// update, a delivery's or a message's removal) is held back one window and cancels against
/// what follows it; what is waited on (a message, a queued delivery, QoS 2 state) never is.
#[test]
fn issue_24_held_back_records_cancel_in_the_next_window() {
    let none = super::State::default();
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("hold.redb")).unwrap();
    let m = msg("a/b", b"payload");
    // Window 1: the message and its queued deliveries (what the PUBACK waits on) are written
    // (two deliveries: the message has a record of its own).
    let w1 = vec![
        session(1, "c"),
        PersistOp::Message { id: 10, msg: m.clone() },
        delivery(1, 11, 10, None, true),
        delivery(1, 12, 10, None, true),
    ];
    let done = super::commit(&db, &[], &w1, HOLD, &none).unwrap();
    assert!(done.wrote && done.held.is_empty());
    assert_eq!(stored_stage(&db, (1, 11)), Some(None));

    // Window 2: the in-flight update alone is held back: no transaction at all.
    let w2 = vec![delivery(1, 11, 10, Some((1, OutStage::AwaitAck)), false)];
    let done = super::commit(&db, &[], &w2, HOLD, &none).unwrap();
    assert_eq!((done.wrote, done.held.clone()), (false, vec![0]));
    assert_eq!(stored_stage(&db, (1, 11)), Some(None), "still stored as queued");
    let held = carried(w2, &done.held);

    // Window 3: the subscriber's PUBACK: the held-back update and the removal cancel into one
    // removal, itself held back (it is this window's): still nothing written.
    let w3 = vec![PersistOp::DeliveryDone { sid: 1, seq: 11 }, PersistOp::DeliveryDone { sid: 1, seq: 12 }];
    let done = super::commit(&db, &held, &w3, HOLD, &none).unwrap();
    assert_eq!((done.wrote, done.held.clone()), (false, vec![0, 1]));
    let held = carried(w3, &done.held);

    // Window 4: the message's last reference is gone. The removal held back from window 3 is
    // applied now (an op is held back once); the message's removal is held back in turn.
    drop(w1);
    drop(m);
    let w4 = vec![PersistOp::MessageDrop { id: 10 }];
    let done = super::commit(&db, &held, &w4, HOLD, &none).unwrap();
    assert_eq!((done.wrote, done.held.clone()), (true, vec![0]));
    assert_eq!(table_len(&db, super::DELIVERIES), 0);
    assert_eq!(table_len(&db, super::MESSAGES), 1);
    let held = carried(w4, &done.held);
    // Window 5 (empty: the writer's one-second timeout, or closing): applied.
    let done = super::commit(&db, &held, &[], HOLD, &none).unwrap();
    assert!(done.wrote && done.held.is_empty());
    assert_eq!(table_len(&db, super::MESSAGES), 0);

    // A key new in its window is written with its latest state, in-flight update included (it
    // costs the insert the queued delivery needs anyway): nothing is held back.
    let m = msg("a/b", b"two");
    let w = vec![
        PersistOp::Message { id: 20, msg: m.clone() },
        delivery(1, 21, 20, None, true),
        delivery(1, 21, 20, Some((2, OutStage::AwaitAck)), false),
    ];
    let done = super::commit(&db, &[], &w, HOLD, &none).unwrap();
    assert!(done.held.is_empty());
    assert_eq!(stored_stage(&db, (1, 21)), Some(Some((2, OutStage::AwaitAck))));

    // QoS 2 progress is waited on (exactly once): written in its window, never held back.
    let q2 = |stage, new| PersistOp::Delivery {
        sid: 1,
        seq: 22,
        msg_id: 20,
        qos: QoS::ExactlyOnce,
        retain: false,
        sub_ids: vec![],
        stage,
        new,
    };
    super::commit(&db, &[], &[q2(None, true)], HOLD, &none).unwrap();
    let done = super::commit(&db, &[], &[q2(Some((3, OutStage::AwaitAck)), false)], HOLD, &none).unwrap();
    assert!(done.wrote && done.held.is_empty());
    assert_eq!(stored_stage(&db, (1, 22)), Some(Some((3, OutStage::AwaitAck))));

    // Not holding back (`sync` and `none` modes, or closing): applied in its window.
    let done = super::commit(&db, &[], &[PersistOp::DeliveryDone { sid: 1, seq: 21 }], PLAIN, &none).unwrap();
    assert!(done.wrote && done.held.is_empty());
    assert_eq!(stored_stage(&db, (1, 21)), None);

    // A session that ends takes what was held back for it along.
    let held = vec![PersistOp::DeliveryDone { sid: 1, seq: 21 }];
    let done = super::commit(&db, &held, &[PersistOp::SessionEnd { sid: 1 }], HOLD, &none).unwrap();
    assert!(done.wrote && done.held.is_empty());
    assert_eq!(table_len(&db, super::DELIVERIES), 0);
    drop(m);
}

/// A restored delivery: sequence number, stage, payload.
type Got<'a> = (u64, Option<(u16, OutStage)>, &'a [u8]);

/// Issue 24, lever 1, the crash: what was held back is lost with the process. Opening the
/// store then loses nothing the broker acknowledged: a delivery whose in-flight update was
/// held back comes back queued (sent again under a new packet id), one whose removal was held
/// back comes back (sent again: QoS 1 is at least once), and a later delivery stored in flight
/// is queued again behind them so that the redelivery keeps the original order
/// [MQTT-4.6.0-1].
#[test]
fn issue_24_a_crash_with_records_held_back_redelivers_in_order() {
    let none = super::State::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (m10, m20, m30) = (msg("a/b", b"ten"), msg("a/b", b"twenty"), msg("a/b", b"thirty"));
    {
        let db = redb::Database::create(&path).unwrap();
        let w1 = vec![
            session(1, "c"),
            PersistOp::Message { id: 10, msg: m10.clone() },
            delivery(1, 11, 10, None, true),
            PersistOp::Message { id: 20, msg: m20.clone() },
            delivery(1, 12, 20, None, true),
        ];
        super::commit(&db, &[], &w1, HOLD, &none).unwrap();
        let w2 = vec![
            delivery(1, 11, 10, Some((1, OutStage::AwaitAck)), false),
            delivery(1, 12, 20, Some((2, OutStage::AwaitAck)), false),
            PersistOp::DeliveryDone { sid: 1, seq: 12 },
            PersistOp::Message { id: 30, msg: m30.clone() },
            delivery(1, 13, 30, None, true),
            delivery(1, 13, 30, Some((3, OutStage::AwaitAck)), false),
        ];
        let done = super::commit(&db, &[], &w2, HOLD, &none).unwrap();
        assert_eq!(done.held, vec![0, 2]);
        assert_eq!(stored_stage(&db, (1, 13)), Some(Some((3, OutStage::AwaitAck))));
        // kill -9: the held-back ops never reach the file.
    }
    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
    let s = &loaded.sessions[0];
    let got: Vec<Got> = s.deliveries.iter().map(|d| (d.seq, d.stage, &d.msg.payload[..])).collect();
    assert_eq!(got, vec![(11, None, &b"ten"[..]), (12, None, &b"twenty"[..]), (13, None, &b"thirty"[..])]);
    store.close();
}

/// Only QoS 1 deliveries after a queued QoS 1 delivery are queued again; QoS 2 keeps its
/// packet id (exactly once), and an in-flight prefix keeps its ids (sent again with DUP).
#[test]
fn issue_24_requeue_after_gap_keeps_qos2_and_the_in_flight_prefix() {
    let m = msg("a/b", b"x");
    let d = |seq, qos, stage| warden_core::persist::RestoredDelivery {
        seq,
        msg: m.clone(),
        qos,
        retain: false,
        sub_ids: vec![],
        stage,
    };
    let ack = |pid| Some((pid, OutStage::AwaitAck));
    let mut ds = vec![
        d(1, QoS::AtLeastOnce, ack(1)),
        d(2, QoS::AtLeastOnce, None),
        d(3, QoS::ExactlyOnce, ack(3)),
        d(4, QoS::AtLeastOnce, ack(4)),
        d(5, QoS::AtLeastOnce, None),
    ];
    super::requeue_after_gap(&mut ds);
    let stages: Vec<_> = ds.iter().map(|d| d.stage).collect();
    assert_eq!(stages, vec![ack(1), None, ack(3), None, None]);
}

/// Whether the stored record of delivery `key` carries its message (version 2).
fn carries(db: &redb::Database, key: (u64, u64)) -> bool {
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(super::DELIVERIES).unwrap();
    let v = t.get(key).unwrap().unwrap();
    super::codec::decode_delivery(v.value()).unwrap().1.is_some()
}

/// Issue 24, lever 2: the one delivery of a message carries it (one insert, later one
/// removal); a delivery that refers to it later gives it a record of its own; the carrying
/// record keeps it when rewritten; its drop removes what it has.
#[test]
fn issue_24_one_delivery_carries_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("carry.redb")).unwrap();
    let mut st = super::State::default();
    let run = |st: &mut super::State, held: &[PersistOp], ops: &[PersistOp], w| {
        let mut done = super::commit(&db, held, ops, w, st).unwrap();
        st.apply(&mut done);
        done
    };
    // As the core gives ids: the delivery's sequence number first, then the message's.
    let m = msg("a/b", b"carried");
    let w1 = vec![session(1, "c"), PersistOp::Message { id: 12, msg: m.clone() }, delivery(1, 11, 12, None, true)];
    run(&mut st, &[], &w1, HOLD);
    assert_eq!((table_len(&db, super::MESSAGES), table_len(&db, super::DELIVERIES)), (0, 1));
    assert!(carries(&db, (1, 11)));
    assert!(st.carried.contains_key(&12));

    // The carrying record rewritten (its in-flight update, not held back) keeps the message.
    run(&mut st, &[], &[delivery(1, 11, 12, Some((1, OutStage::AwaitAck)), false)], PLAIN);
    assert!(carries(&db, (1, 11)));
    assert_eq!(stored_stage(&db, (1, 11)), Some(Some((1, OutStage::AwaitAck))));

    // A second delivery of it, in a later window: the message gets a record of its own then.
    run(&mut st, &[], &[delivery(1, 13, 12, None, true)], HOLD);
    assert_eq!(table_len(&db, super::MESSAGES), 1);
    assert!(!carries(&db, (1, 13)));
    assert!(st.carried[&12].spilled);

    // Both done, then the message's drop: its own record is removed, the state forgotten.
    let done = [PersistOp::DeliveryDone { sid: 1, seq: 11 }, PersistOp::DeliveryDone { sid: 1, seq: 13 }];
    run(&mut st, &[], &done, PLAIN);
    drop(w1);
    drop(m);
    run(&mut st, &[], &[PersistOp::MessageDrop { id: 12 }], HOLD);
    assert_eq!((table_len(&db, super::MESSAGES), table_len(&db, super::DELIVERIES)), (0, 0));
    assert!(st.carried.is_empty());

    // Never spilled: the drop is no removal, and alone in its window commits nothing.
    let m = msg("a/b", b"again");
    let w = vec![PersistOp::Message { id: 22, msg: m.clone() }, delivery(1, 21, 22, None, true)];
    run(&mut st, &[], &w, HOLD);
    run(&mut st, &[], &[PersistOp::DeliveryDone { sid: 1, seq: 21 }], PLAIN);
    drop(w);
    drop(m);
    let done = run(&mut st, &[], &[PersistOp::MessageDrop { id: 22 }], HOLD);
    assert!(!done.wrote && done.held.is_empty());
    assert!(st.carried.is_empty());
}

/// Lever 2 across restarts: a carried message comes back with its delivery, its id is not
/// given again, and a rewrite of the carrying record after the restart still carries it
/// (the writer learns from the file which records carry their message).
#[test]
fn issue_24_a_carried_message_survives_restarts_and_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (store, _) = Store::open(&path, Durability::Batched).unwrap();
    let sink: Arc<dyn Persist> = store.clone();
    store.submit(session(1, "c"));
    let m = msg("a/b", b"kept");
    let seq = sink.next_id();
    let id = m.stored_id(&sink);
    assert!(id > seq);
    store.submit(delivery(1, seq, id, None, true));
    store.close();
    drop((store, sink, m));

    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
    assert!(store.next_id() > id, "ids are unique across restarts");
    let d = &loaded.sessions[0].deliveries[0];
    assert_eq!((d.seq, &d.msg.payload[..]), (seq, &b"kept"[..]));
    // Sent after the restart: the carrying record is rewritten with its packet id.
    store.submit(delivery(1, seq, id, Some((4, OutStage::AwaitAck)), false));
    store.close();
    drop(store);
    drop(loaded);

    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
    let d = &loaded.sessions[0].deliveries[0];
    assert_eq!((d.seq, d.stage, &d.msg.payload[..]), (seq, Some((4, OutStage::AwaitAck)), &b"kept"[..]));
    store.close();
}

/// A store written before lever 2 (every message in a record of its own, version 1 delivery
/// records) opens as it is, and what it holds keeps working.
#[test]
fn issue_24_a_store_without_carried_messages_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = super::Tables::open(&txn).unwrap();
            let m = msg("a/b", b"old");
            let c = super::codec::Clock::now();
            let rec = super::codec::DeliveryRec {
                msg_id: 8,
                qos: QoS::AtLeastOnce,
                retain: false,
                stage: Some((2, OutStage::AwaitAck)),
                sub_ids: vec![],
            };
            let s = match session(1, "c") {
                PersistOp::Session(r) => r,
                _ => unreachable!(),
            };
            t.sessions.insert(1, super::codec::encode_session(&s, c).as_slice()).unwrap();
            t.messages.insert(8, super::codec::encode_message(&m, c).as_slice()).unwrap();
            t.deliveries.insert((1, 7), super::codec::encode_delivery(&rec).as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
    let d = &loaded.sessions[0].deliveries[0];
    assert_eq!((d.seq, d.stage, &d.msg.payload[..]), (7, Some((2, OutStage::AwaitAck)), &b"old"[..]));
    store.submit(PersistOp::DeliveryDone { sid: 1, seq: 7 });
    store.close();
    drop(store);
    drop(loaded);
    let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
    assert!(loaded.sessions[0].deliveries.is_empty());
    store.close();
}

/// The file is input: a carried message whose carrying record is dropped at opening (its
/// session is gone) while another delivery still refers to it gets a record of its own, so
/// it survives the next restart too.
#[test]
fn issue_24_a_carried_message_outlives_its_dropped_carrier() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = super::Tables::open(&txn).unwrap();
            let c = super::codec::Clock::now();
            let rec = super::codec::DeliveryRec {
                msg_id: 9,
                qos: QoS::AtLeastOnce,
                retain: false,
                stage: None,
                sub_ids: vec![],
            };
            let s = match session(1, "c") {
                PersistOp::Session(r) => r,
                _ => unreachable!(),
            };
            t.sessions.insert(1, super::codec::encode_session(&s, c).as_slice()).unwrap();
            let (mut mbuf, mut v) = (bytes::BytesMut::new(), Vec::new());
            super::codec::encode_delivery_with_message_into(&rec, &msg("a/b", b"shared"), c, &mut mbuf, &mut v);
            t.deliveries.insert((2, 5), v.as_slice()).unwrap(); // session 2 does not exist
            t.deliveries.insert((1, 6), super::codec::encode_delivery(&rec).as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    for _ in 0..2 {
        let (store, loaded) = Store::open(&path, Durability::Batched).unwrap();
        assert!(loaded.report.dropped.is_empty(), "{:?}", loaded.report.dropped);
        let d = &loaded.sessions[0].deliveries;
        assert_eq!((d.len(), d[0].seq, &d[0].msg.payload[..]), (1, 6, &b"shared"[..]));
        store.close();
    }
}

/// Issue 24: with a commit interval, windows start at most once per interval (what an
/// acknowledgement waits on is committed all the same, only later).
#[test]
fn issue_24_a_commit_interval_paces_the_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("state.redb"), Durability::Batched).unwrap();
    store.set_commit_interval(Duration::from_millis(20));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let started = Instant::now();
    for i in 0..6u64 {
        let t = store.submit(session(i + 1, "c"));
        let t = t.max(store.submit(delivery(i + 1, 100 + i, 1, None, true)));
        assert_ne!(t, 0);
        rt.block_on(store.wait(t));
    }
    // Six windows, each after the one before by at least 20 ms.
    assert!(started.elapsed() >= Duration::from_millis(100), "{:?}", started.elapsed());
    store.close();
}
