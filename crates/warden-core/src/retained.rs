//! Retained messages, stored in a topic trie so that a wildcard SUBSCRIBE walks only the
//! matching branches instead of every retained topic. Each keeps who published it
//! ([`RetainSource`]): before it is delivered, its publisher's right to publish there is
//! checked again (SPEC §10; Mosquitto's `check_retain_source`).

use std::collections::HashMap;
use std::sync::Arc;

use warden_policy::Principal;

use crate::message::Message;

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

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<(Arc<Message>, RetainSource)>,
}

/// The retained-message store.
#[derive(Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
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

    /// Set (or with an empty payload, clear [MQTT-3.3.1-10]) the retained message of its topic,
    /// published by `source`.
    pub fn set(&mut self, msg: Arc<Message>, source: RetainSource) {
        let topic = msg.topic.as_str().to_owned();
        if msg.payload.is_empty() {
            let levels: Vec<&str> = topic.split('/').collect();
            if remove_rec(&mut self.root, &levels, None) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        if node.message.replace((msg, source)).is_none() {
            self.count += 1;
        }
    }

    /// Remove the retained message of its topic if it is still `msg` (not since replaced);
    /// returns true when it was removed.
    pub fn remove_if_same(&mut self, msg: &Arc<Message>) -> bool {
        let levels: Vec<&str> = msg.topic.as_str().split('/').collect();
        let removed = remove_rec(&mut self.root, &levels, Some(msg));
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<Arc<Message>> {
        self.get_with_source(topic).map(|(m, _)| m)
    }

    /// The retained message of exactly `topic`, with its publisher.
    pub fn get_with_source(&self, topic: &str) -> Option<(Arc<Message>, RetainSource)> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.clone()
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
            if let Some(m) = &node.message {
                out.push(m.clone());
            }
            for child in node.children.values() {
                walk(child, out);
            }
        }
        walk(&self.root, out);
    }
}

/// Remove the message at `levels` (only if it is `only` when given).
fn remove_rec(node: &mut Node, levels: &[&str], only: Option<&Arc<Message>>) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        if only.is_some_and(|m| !node.message.as_ref().is_some_and(|(cur, _)| Arc::ptr_eq(cur, m))) {
            return false;
        }
        return node.message.take().is_some();
    };
    let Some(child) = node.children.get_mut(*first) else { return false };
    let removed = remove_rec(child, rest, only);
    if child.message.is_none() && child.children.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn collect_all(node: &Node, depth: usize, out: &mut Vec<(Arc<Message>, RetainSource)>) {
    if let Some(m) = &node.message {
        out.push(m.clone());
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
        if let Some(m) = &node.message {
            out.push(m.clone());
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
