//! The subscription and retained tries agree with the reference matcher of the codec
//! (§4.7), including `$`-topics [MQTT-4.7.2-1] and `#` matching its parent level [MQTT-4.7.1-2].
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqtt_codec::topic::filter_matches;
use mqtt_codec::{QoS, SubscriptionOptions, TopicFilter, TopicName};
use proptest::prelude::*;
use warden_core::retained::{RetainSource, RetainedStore};
use warden_core::session::Session;
use warden_core::trie::{SubEntry, SubTrie, Target};
use warden_core::Message;
use warden_policy::Principal;

fn session(id: u64) -> Arc<Session> {
    Arc::new(Session::new(id, Arc::from(format!("c{id}")), Principal::anonymous(), 0))
}

fn msg(topic: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: None,
        expires_at: None,
        origin: None,
        persisted: Default::default(),
    })
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("".to_string()), Just("$x".to_string())]
}

fn topic() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("/")).prop_filter("non-empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (proptest::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..4), any::<bool>()).prop_map(
        |(mut v, hash)| {
            if hash || v.is_empty() {
                v.push("#".to_string());
            }
            v.join("/")
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn sub_trie_equals_reference(filters in proptest::collection::vec(filter(), 1..12), topics in proptest::collection::vec(topic(), 1..8)) {
        let mut trie = SubTrie::default();
        for (i, f) in filters.iter().enumerate() {
            prop_assume!(TopicFilter::new(f).is_ok());
            trie.insert(None, f, SubEntry { session: session(i as u64), options: SubscriptionOptions::default(), id: None });
        }
        for t in &topics {
            let mut out: Vec<Target> = Vec::new();
            trie.matches(t, &mut out);
            let mut got: Vec<u64> = out.iter().map(|x| x.session.id()).collect();
            got.sort_unstable();
            let want: Vec<u64> = filters.iter().enumerate().filter(|(_, f)| filter_matches(f, t)).map(|(i, _)| i as u64).collect();
            prop_assert_eq!(got, want, "topic {}", t);
        }
    }

    #[test]
    fn retained_equals_reference(topics in proptest::collection::vec(topic(), 1..12), filters in proptest::collection::vec(filter(), 1..8)) {
        let mut store = RetainedStore::default();
        let mut uniq: Vec<String> = topics.clone();
        uniq.sort();
        uniq.dedup();
        for t in &uniq {
            store.set(msg(t), RetainSource::Broker);
        }
        prop_assert_eq!(store.len(), uniq.len());
        for f in &filters {
            let mut out = Vec::new();
            store.matching(f, &mut out);
            let mut got: Vec<String> = out.iter().map(|m| m.topic.as_str().to_owned()).collect();
            got.sort();
            let want: Vec<String> = uniq.iter().filter(|t| filter_matches(f, t)).cloned().collect();
            prop_assert_eq!(got, want, "filter {}", f);
        }
    }
}

#[test]
fn remove_prunes_and_counts() {
    let mut trie = SubTrie::default();
    let s = session(1);
    assert!(!trie.insert(
        None,
        "a/+/c",
        SubEntry { session: s.clone(), options: SubscriptionOptions::default(), id: None }
    ));
    assert!(trie.insert(
        None,
        "a/+/c",
        SubEntry { session: s.clone(), options: SubscriptionOptions::default(), id: Some(3) }
    ));
    assert_eq!(trie.len(), 1);
    assert!(trie.remove(None, "a/+/c", 1));
    assert!(!trie.remove(None, "a/+/c", 1));
    assert!(trie.is_empty());
    let mut out = Vec::new();
    trie.matches("a/b/c", &mut out);
    assert!(out.is_empty());
}

#[test]
fn shared_group_round_robin_is_fair() {
    let mut trie = SubTrie::default();
    for i in 0..3 {
        trie.insert(
            Some("g"),
            "t/#",
            SubEntry { session: session(i), options: SubscriptionOptions::default(), id: None },
        );
    }
    let mut counts = [0u32; 3];
    for _ in 0..300 {
        let mut out = Vec::new();
        trie.matches("t/x", &mut out);
        assert_eq!(out.len(), 1, "one member per group");
        assert!(out[0].shared);
        counts[out[0].session.id() as usize] += 1;
    }
    // No member is connected in this test, so rotation covers all evenly.
    assert_eq!(counts, [100, 100, 100]);
}

#[test]
fn retained_clear_with_empty_payload() {
    let mut store = RetainedStore::default();
    store.set(msg("a/b"), RetainSource::Broker);
    assert!(store.get("a/b").is_some());
    let mut empty = (*msg("a/b")).clone();
    empty.payload = Bytes::new();
    store.set(Arc::new(empty), RetainSource::Broker); // [MQTT-3.3.1-10]
    assert!(store.get("a/b").is_none());
    assert!(store.is_empty());
    let _ = Instant::now();
}

fn entry(id: u64) -> SubEntry {
    SubEntry { session: session(id), options: SubscriptionOptions::default(), id: None }
}

fn change(group: Option<&str>, filter: &str, present: bool) -> warden_core::fabric::Interest {
    warden_core::fabric::Interest { group: group.map(Arc::from), filter: Arc::from(filter), present }
}

#[test]
fn interest_is_reported_per_distinct_filter_and_group() {
    // A cluster fabric subscribes once per distinct filter (SPEC §11): the trie reports a
    // filter when it gets its first subscriber and when it loses its last.
    let mut trie = SubTrie::default();
    trie.insert(None, "held/before", entry(9));
    assert_eq!(trie.attach_fabric(), vec![change(None, "held/before", true)], "what was held already");
    trie.insert(None, "a/+", entry(1));
    trie.insert(None, "a/+", entry(2));
    trie.insert(None, "a/+", SubEntry { id: Some(5), ..entry(1) }); // a replacement
    trie.insert(Some("g"), "a/+", entry(3));
    trie.insert(Some("g"), "a/+", entry(4));
    assert_eq!(trie.take_interest(), vec![change(None, "a/+", true), change(Some("g"), "a/+", true)]);
    trie.remove(None, "a/+", 1);
    trie.remove(Some("g"), "a/+", 3);
    trie.remove(None, "a/+", 7); // not there
    assert_eq!(trie.take_interest(), vec![]);
    trie.remove(None, "a/+", 2);
    trie.remove(Some("g"), "a/+", 4);
    assert_eq!(trie.take_interest(), vec![change(None, "a/+", false), change(Some("g"), "a/+", false)]);
}

#[test]
fn with_a_fabric_shared_groups_are_picked_only_through_it() {
    let mut trie = SubTrie::default();
    trie.insert(Some("g"), "t/#", entry(1));
    trie.insert(None, "t/#", entry(2));
    trie.attach_fabric();
    let mut out = Vec::new();
    trie.matches("t/x", &mut out);
    assert_eq!(out.iter().map(|t| t.session.id()).collect::<Vec<_>>(), vec![2], "plain subscribers only");
    let picked = trie.pick_shared("g", "t/#", &mut |_| true).unwrap();
    assert_eq!((picked.session.id(), picked.shared), (1, true));
    assert!(trie.pick_shared("g", "t/+", &mut |_| true).is_none(), "another filter is another group");
    assert!(trie.pick_shared("h", "t/#", &mut |_| true).is_none());
    assert!(trie.pick_shared("g", "t/#", &mut |_| false).is_none(), "no member allowed");
}
