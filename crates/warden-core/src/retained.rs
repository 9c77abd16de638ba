//! Retained messages, stored in a topic trie so that a wildcard SUBSCRIBE walks only the
//! matching branches instead of every retained topic.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
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

    /// Set (or with an empty payload, clear [MQTT-3.3.1-10]) the retained message of its topic.
    pub fn set(&mut self, msg: Arc<Message>) {
        let topic = msg.topic.as_str().to_owned();
        if msg.payload.is_empty() {
            let levels: Vec<&str> = topic.split('/').collect();
            if remove_rec(&mut self.root, &levels) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        if node.message.replace(msg).is_none() {
            self.count += 1;
        }
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.clone()
    }

    /// Every retained message matching `filter` (not a shared filter).
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        let levels: Vec<&str> = filter.split('/').collect();
        match_rec(&self.root, &levels, 0, out);
    }
}

fn remove_rec(node: &mut Node, levels: &[&str]) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return node.message.take().is_some();
    };
    let Some(child) = node.children.get_mut(*first) else { return false };
    let removed = remove_rec(child, rest);
    if child.message.is_none() && child.children.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn collect_all(node: &Node, depth: usize, out: &mut Vec<Arc<Message>>) {
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

fn match_rec(node: &Node, levels: &[&str], depth: usize, out: &mut Vec<Arc<Message>>) {
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
