//! Retained messages, stored in a topic trie so that a wildcard SUBSCRIBE walks only the
//! matching branches instead of every retained topic. Each keeps who published it
//! ([`RetainSource`]): before it is delivered, its publisher's right to publish there is
//! checked again (SPEC §10; Mosquitto's `check_retain_source`). Each also keeps the account it
//! is charged to (its publisher's, see [`crate::quota`]): the store counts its messages and
//! bytes, and every message that comes or goes is charged or released there, so the figures
//! the quotas read are exact by construction.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use warden_policy::Principal;

use crate::message::Message;
use crate::queue::Account;

/// Who published a retained message. Kept beside it in the store, not in [`Message`]:
/// only retained messages pay for it.
#[derive(Clone, Debug)]
pub enum RetainSource {
    /// The broker itself (`$SYS` values).
    Broker,
    /// A client (or its session's will), with the principal it held then.
    Client {
        /// The publisher's principal (after a restart: its kind and name, no token grants).
        principal: Arc<Principal>,
        /// The publisher's client id.
        client_id: Arc<str>,
    },
    /// Not known: restored from a record written before publishers were stored.
    Unknown,
}

/// A retained message with its publisher and the account it is charged to.
struct Entry {
    msg: Arc<Message>,
    source: RetainSource,
    account: Option<Arc<Account>>,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Entry>,
}

/// The retained-message store.
#[derive(Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
    /// Bytes (topic + payload, [`Message::cost`]) of every message held.
    bytes: u64,
    /// The messages held that expire (v5 Message Expiry Interval), by expiry: removed when
    /// due ([`RetainedStore::expired`]) so that they stop counting against the quotas, and
    /// taken out here whenever they leave the store otherwise (a replaced message is not kept).
    expiring: BTreeMap<(Instant, usize), Arc<Message>>,
}

/// The key of `m` in [`RetainedStore::expiring`] (its address is unique while it is held).
fn expiry_key(m: &Arc<Message>) -> Option<(Instant, usize)> {
    m.expires_at.map(|t| (t, Arc::as_ptr(m) as usize))
}

/// The retained message of a topic as a quota check sees it (see [`RetainedStore::held`]).
pub struct Held<'a> {
    /// Its bytes.
    pub cost: u64,
    /// The account it is charged to.
    pub account: Option<&'a Arc<Account>>,
}

impl RetainedStore {
    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes (topic + payload) of the retained messages.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Set (or with an empty payload, clear [MQTT-3.3.1-10]) the retained message of its topic,
    /// published by `source`, charged to no account.
    pub fn set(&mut self, msg: Arc<Message>, source: RetainSource) {
        self.set_charged(msg, source, None);
    }

    /// [`RetainedStore::set`], the message charged to `account` (its publisher's); the message
    /// it replaces or clears is released from the account it was charged to.
    pub fn set_charged(&mut self, msg: Arc<Message>, source: RetainSource, account: Option<Arc<Account>>) {
        if msg.payload.is_empty() {
            let levels: Vec<&str> = msg.topic.as_str().split('/').collect();
            if let Some(old) = remove_rec(&mut self.root, &levels, None) {
                self.released(&old);
            }
            return;
        }
        let mut node = &mut self.root;
        for level in msg.topic.as_str().split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        let cost = msg.cost();
        if let Some(a) = &account {
            a.usage().charge_retained(cost);
        }
        if let Some(k) = expiry_key(&msg) {
            self.expiring.insert(k, msg.clone());
        }
        let old = node.message.replace(Entry { msg, source, account });
        self.count += 1;
        self.bytes += cost;
        if let Some(old) = old {
            self.released(&old);
        }
    }

    /// An entry left the store: take it off the figures and its account.
    fn released(&mut self, e: &Entry) {
        if let Some(k) = expiry_key(&e.msg) {
            self.expiring.remove(&k);
        }
        let cost = e.msg.cost();
        self.count -= 1;
        self.bytes = self.bytes.saturating_sub(cost);
        if let Some(a) = &e.account {
            a.usage().release_retained(cost);
        }
    }

    /// The messages held whose expiry passed at `now` (to be removed with
    /// [`RetainedStore::remove_if_same`]).
    pub fn expired(&self, now: Instant) -> Vec<Arc<Message>> {
        self.expiring.range(..=(now, usize::MAX)).map(|(_, m)| m.clone()).collect()
    }

    /// Remove the retained message of its topic if it is still `msg` (not since replaced);
    /// returns true when it was removed.
    pub fn remove_if_same(&mut self, msg: &Arc<Message>) -> bool {
        let levels: Vec<&str> = msg.topic.as_str().split('/').collect();
        match remove_rec(&mut self.root, &levels, Some(msg)) {
            Some(old) => {
                self.released(&old);
                true
            }
            None => false,
        }
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<Arc<Message>> {
        self.get_with_source(topic).map(|(m, _)| m)
    }

    fn entry(&self, topic: &str) -> Option<&Entry> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// The retained message of exactly `topic`, with its publisher.
    pub fn get_with_source(&self, topic: &str) -> Option<(Arc<Message>, RetainSource)> {
        self.entry(topic).map(|e| (e.msg.clone(), e.source.clone()))
    }

    /// The size and account of the retained message of exactly `topic`, if any.
    pub fn held(&self, topic: &str) -> Option<Held<'_>> {
        self.entry(topic).map(|e| Held { cost: e.msg.cost(), account: e.account.as_ref() })
    }

    /// Every retained message matching `filter` (not a shared filter).
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        let mut with = Vec::new();
        self.matching_with_source(filter, &mut with);
        out.extend(with.into_iter().map(|(m, _)| m));
    }

    /// [`RetainedStore::matching`], with each message's publisher.
    pub fn matching_with_source(&self, filter: &str, out: &mut Vec<(Arc<Message>, RetainSource)>) {
        let levels: Vec<&str> = filter.split('/').collect();
        match_rec(&self.root, &levels, 0, out);
    }

    /// Every retained message with its publisher, `$` topics included.
    pub fn all_with_source(&self, out: &mut Vec<(Arc<Message>, RetainSource)>) {
        fn walk(node: &Node, out: &mut Vec<(Arc<Message>, RetainSource)>) {
            if let Some(e) = &node.message {
                out.push((e.msg.clone(), e.source.clone()));
            }
            for child in node.children.values() {
                walk(child, out);
            }
        }
        walk(&self.root, out);
    }
}

/// Remove the message at `levels` (only if it is `only` when given); returns it.
fn remove_rec(node: &mut Node, levels: &[&str], only: Option<&Arc<Message>>) -> Option<Entry> {
    let Some((first, rest)) = levels.split_first() else {
        if only.is_some_and(|m| !node.message.as_ref().is_some_and(|e| Arc::ptr_eq(&e.msg, m))) {
            return None;
        }
        return node.message.take();
    };
    let child = node.children.get_mut(*first)?;
    let removed = remove_rec(child, rest, only);
    if child.message.is_none() && child.children.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn collect_all(node: &Node, depth: usize, out: &mut Vec<(Arc<Message>, RetainSource)>) {
    if let Some(e) = &node.message {
        out.push((e.msg.clone(), e.source.clone()));
    }
    for (name, child) in &node.children {
        if depth == 0 && name.starts_with('$') {
            continue;
        }
        collect_all(child, depth + 1, out);
    }
}

fn match_rec(node: &Node, levels: &[&str], depth: usize, out: &mut Vec<(Arc<Message>, RetainSource)>) {
    let Some((first, rest)) = levels.split_first() else {
        if let Some(e) = &node.message {
            out.push((e.msg.clone(), e.source.clone()));
        }
        return;
    };
    match *first {
        // Matches this level (the parent) and everything below [MQTT-4.7.1-2]; `$` topics are
        // skipped at the root [MQTT-4.7.2-1], and the root itself never holds a message.
        "#" => collect_all(node, depth, out),
        "+" => {
            for (name, child) in &node.children {
                if depth == 0 && name.starts_with('$') {
                    continue;
                }
                match_rec(child, rest, depth + 1, out);
            }
        }
        level => {
            if let Some(child) = node.children.get(level) {
                match_rec(child, rest, depth + 1, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_codec::QoS;
    use std::time::Duration;

    fn expiring(topic: &str, at: Option<Instant>) -> Arc<Message> {
        let mut m = Message::for_test(topic, b"v", QoS::AtLeastOnce, true);
        m.expires_at = at;
        Arc::new(m)
    }

    /// Issue 17 ("expired retained messages count until their topic is cleared"): an expired
    /// retained message is found by [`RetainedStore::expired`] and, removed, is released from
    /// its account; a replaced or cleared one leaves the expiry index at once (the index never
    /// keeps a message the store no longer holds).
    #[test]
    fn expired_messages_are_found_and_replaced_ones_leave_the_index() {
        let t0 = Instant::now();
        let mut r = RetainedStore::default();
        let account = Arc::new(Account::default());
        let a = expiring("a", Some(t0 + Duration::from_secs(1)));
        r.set_charged(a.clone(), RetainSource::Unknown, Some(account.clone()));
        r.set_charged(expiring("b", Some(t0 + Duration::from_secs(5))), RetainSource::Unknown, Some(account.clone()));
        r.set_charged(expiring("c", None), RetainSource::Unknown, Some(account.clone()));
        assert_eq!(account.usage().retained, 3);
        assert!(r.expired(t0).is_empty());
        let due = r.expired(t0 + Duration::from_secs(2));
        assert_eq!(due.len(), 1);
        assert!(Arc::ptr_eq(&due[0], &a));
        assert!(r.remove_if_same(&a));
        assert_eq!((r.len(), account.usage().retained), (2, 2));
        // "b" replaced by a message without expiry, then cleared: nothing left to expire.
        r.set_charged(expiring("b", None), RetainSource::Unknown, Some(account.clone()));
        assert!(r.expired(t0 + Duration::from_secs(60)).is_empty(), "the replaced message left the index");
        r.set_charged(expiring("c", Some(t0)), RetainSource::Unknown, Some(account.clone()));
        let mut clear = Message::for_test("c", b"", QoS::AtMostOnce, true);
        clear.expires_at = None;
        r.set_charged(Arc::new(clear), RetainSource::Unknown, None);
        assert!(r.expired(t0 + Duration::from_secs(60)).is_empty(), "the cleared message left the index");
        assert_eq!((r.len(), account.usage().retained), (1, 1));
    }
}
