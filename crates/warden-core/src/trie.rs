//! The subscription trie: topic filters split into levels, so matching a topic name costs
//! O(levels × wildcard branches), not O(subscriptions).
//!
//! `$`-topics are not matched by `+` or `#` at the first level [MQTT-4.7.2-1]. Shared
//! subscriptions live in the node of their filter as named groups; each message goes to one
//! member of each group, chosen round-robin among the members allowed to receive it
//! (connected ones first).
//!
//! Level maps hash with foldhash: several times faster than std's SipHash on short level
//! names, and seeded per process, so clients choosing filter and topic names cannot aim for
//! collisions (which an unkeyed hash such as FxHash would allow).

use std::str::Split;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use foldhash::HashMap;
use mqtt_codec::SubscriptionOptions;

use crate::fabric::Interest;
use crate::session::Session;

/// One subscription held in the trie.
#[derive(Clone)]
pub struct SubEntry {
    /// The subscribing session.
    pub session: Arc<Session>,
    /// Its options.
    pub options: SubscriptionOptions,
    /// v5 Subscription Identifier.
    pub id: Option<u32>,
}

struct SharedGroup {
    name: Arc<str>,
    members: Vec<SubEntry>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<SubEntry>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// A matched subscription: the session and how it subscribed.
pub struct Target {
    /// Session to deliver to.
    pub session: Arc<Session>,
    /// Options of the matching subscription.
    pub options: SubscriptionOptions,
    /// Subscription identifier, if any.
    pub id: Option<u32>,
    /// True when chosen from a shared subscription group.
    pub shared: bool,
}

/// Subscription trie.
#[derive(Default)]
pub struct SubTrie {
    root: Node,
    count: usize,
    generation: u64,
    /// With a cluster fabric: the interest changes not yet taken ([`SubTrie::take_interest`]).
    interest: Option<Vec<Interest>>,
    /// With a cluster fabric, shared groups are matched only through
    /// [`SubTrie::pick_shared`] (the fabric picks the node): [`SubTrie::matches`] skips them.
    groups_remote: bool,
}

impl SubTrie {
    /// Changes with every insert and removal (and [`SubTrie::touch`]): a routing answer
    /// computed at one generation is still right while it holds.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Mark routing answers stale without changing a subscription (a subscriber's identity
    /// changed, so its `receive` authorizations must be asked again).
    pub fn touch(&mut self) {
        self.generation += 1;
    }

    /// Start recording interest changes (a cluster fabric is attached) and leave shared groups
    /// to the fabric; returns the interest held now (each distinct plain filter once, each
    /// shared group once), for the fabric to start from.
    pub fn attach_fabric(&mut self) -> Vec<Interest> {
        self.interest = Some(Vec::new());
        self.groups_remote = true;
        let mut out = Vec::new();
        let mut path = Vec::new();
        collect_interest(&self.root, &mut path, &mut out);
        out
    }

    /// The interest changes since the last call (none without a fabric).
    pub fn take_interest(&mut self) -> Vec<Interest> {
        self.interest.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn note(&mut self, group: Option<&str>, filter: &str, present: bool) {
        if let Some(log) = &mut self.interest {
            log.push(Interest { group: group.map(Arc::from), filter: Arc::from(filter), present });
        }
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Insert or replace `session`'s subscription to `filter` (for a shared subscription,
    /// `group` names the share and `filter` is the part after `$share/{group}/`).
    /// Returns true when it replaced an existing subscription.
    pub fn insert(&mut self, group: Option<&str>, filter: &str, entry: SubEntry) -> bool {
        self.generation += 1;
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        let sid = entry.session.id();
        let was_empty = match group {
            None => node.subs.is_empty(),
            Some(g) => !node.shared.iter().any(|s| &*s.name == g),
        };
        let list = match group {
            None => &mut node.subs,
            Some(g) => {
                let idx = match node.shared.iter().position(|s| &*s.name == g) {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup {
                            name: Arc::from(g),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[idx].members
            }
        };
        if let Some(e) = list.iter_mut().find(|e| e.session.id() == sid) {
            *e = entry;
            true
        } else {
            list.push(entry);
            self.count += 1;
            if was_empty {
                self.note(group, filter, true);
            }
            false
        }
    }

    /// Remove `session_id`'s subscription; returns true when one existed.
    pub fn remove(&mut self, group: Option<&str>, filter: &str, session_id: u64) -> bool {
        self.generation += 1;
        let levels: Vec<&str> = filter.split('/').collect();
        let (removed, emptied) = remove_rec(&mut self.root, &levels, group, session_id);
        if removed {
            self.count -= 1;
        }
        if emptied {
            self.note(group, filter, false);
        }
        removed
    }

    /// One member of shared group `group` on exactly `filter` (the fabric chose this node for a
    /// message of that group), picked as [`SubTrie::matches_with`] picks: round-robin among
    /// the members `allow` accepts, connected ones first. `None` when the group is not here
    /// or no member is allowed.
    pub fn pick_shared(
        &self,
        group: &str,
        filter: &str,
        allow: &mut dyn FnMut(&Arc<Session>) -> bool,
    ) -> Option<Target> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.children.get(level)?;
        }
        let g = node.shared.iter().find(|g| &*g.name == group)?;
        let mut out = Vec::with_capacity(1);
        let mut m = Walk { out: &mut out, lists: 0, refused_groups: 0, allow, groups: true };
        emit_group(g, &mut m);
        out.pop()
    }

    /// Collect every subscription matching `topic` into `out`. Shared groups contribute one
    /// member each, chosen round-robin (connected members first). Returns how many filters'
    /// (non-shared) subscriber lists contributed: with one or none, no session can appear
    /// twice among the non-shared targets (a list holds a session once).
    pub fn matches(&self, topic: &str, out: &mut Vec<Target>) -> usize {
        self.matches_with(topic, out, &mut |_| true).0
    }

    /// [`SubTrie::matches`], where a shared group's member is picked only among those `allow`
    /// accepts (the broker asks whether the member may receive the message): round-robin
    /// among the allowed members, connected ones first. A group with no allowed member
    /// contributes nothing. `allow` is asked only for shared groups' members (under the
    /// trie's read lock), so plain subscriptions pay nothing for it. Returns the number of
    /// subscriber lists (as `matches`) and the number of groups that had no allowed member.
    pub fn matches_with(
        &self,
        topic: &str,
        out: &mut Vec<Target>,
        allow: &mut dyn FnMut(&Arc<Session>) -> bool,
    ) -> (usize, usize) {
        let dollar = topic.starts_with('$');
        let mut m = Walk { out, lists: 0, refused_groups: 0, allow, groups: !self.groups_remote };
        match_rec(&self.root, topic.split('/'), 0, dollar, &mut m);
        (m.lists, m.refused_groups)
    }
}

/// Remove `sid`'s subscription; returns whether it existed and whether its list (the plain
/// subscribers of the filter, or the shared group) is now gone.
fn remove_rec(node: &mut Node, levels: &[&str], group: Option<&str>, sid: u64) -> (bool, bool) {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => {
                let before = node.subs.len();
                node.subs.retain(|e| e.session.id() != sid);
                let removed = node.subs.len() != before;
                (removed, removed && node.subs.is_empty())
            }
            Some(g) => {
                let Some(i) = node.shared.iter().position(|s| &*s.name == g) else { return (false, false) };
                let grp = &mut node.shared[i];
                let before = grp.members.len();
                grp.members.retain(|e| e.session.id() != sid);
                let removed = grp.members.len() != before;
                let emptied = grp.members.is_empty();
                if emptied {
                    node.shared.swap_remove(i);
                }
                (removed, removed && emptied)
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else { return (false, false) };
    let removed = remove_rec(child, rest, group, sid);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

/// What a match collects, and how shared groups pick.
struct Walk<'a, 'f> {
    out: &'a mut Vec<Target>,
    lists: usize,
    refused_groups: usize,
    allow: &'f mut dyn FnMut(&Arc<Session>) -> bool,
    /// Whether shared groups are matched here (not with a cluster fabric, see
    /// [`SubTrie::pick_shared`]).
    groups: bool,
}

/// Every distinct plain filter and shared group under `node` (`path`: its levels).
fn collect_interest<'a>(node: &'a Node, path: &mut Vec<&'a str>, out: &mut Vec<Interest>) {
    if !node.subs.is_empty() || !node.shared.is_empty() {
        let filter: Arc<str> = Arc::from(path.join("/"));
        if !node.subs.is_empty() {
            out.push(Interest { group: None, filter: filter.clone(), present: true });
        }
        for g in &node.shared {
            out.push(Interest { group: Some(g.name.clone()), filter: filter.clone(), present: true });
        }
    }
    for (level, child) in &node.children {
        path.push(level);
        collect_interest(child, path, out);
        path.pop();
    }
}

fn emit(node: &Node, m: &mut Walk<'_, '_>) {
    m.lists += usize::from(!node.subs.is_empty());
    for e in &node.subs {
        m.out.push(Target { session: e.session.clone(), options: e.options, id: e.id, shared: false });
    }
    if !m.groups {
        return;
    }
    for g in &node.shared {
        emit_group(g, m);
    }
}

/// One member of `g` for a message (see [`emit`]).
fn emit_group(g: &SharedGroup, m: &mut Walk<'_, '_>) {
    {
        let n = g.members.len();
        if n == 0 {
            return;
        }
        // Round-robin among the members allowed to receive, preferring one whose connection
        // is live (else the first allowed one, whose session queues what it may). A denied
        // member is skipped, never picked: one member's denial does not drop the message for
        // the group (SPEC §10). Concurrent publishers may race on `next`; that only perturbs
        // the rotation, never loses a message.
        let start = g.next.load(Ordering::Relaxed) % n;
        let mut offline = None;
        let mut pick = None;
        for i in (0..n).map(|k| (start + k) % n) {
            let connected = g.members[i].session.is_connected();
            if !connected && offline.is_some() {
                continue; // an allowed offline member is known: only a live one would do better
            }
            if !(m.allow)(&g.members[i].session) {
                continue;
            }
            if connected {
                pick = Some(i);
                break;
            }
            offline = Some(i);
        }
        let Some(pick) = pick.or(offline) else {
            m.refused_groups += 1;
            return;
        };
        g.next.store(pick + 1, Ordering::Relaxed);
        let e = &g.members[pick];
        m.out.push(Target { session: e.session.clone(), options: e.options, id: e.id, shared: true });
    }
}

fn match_rec(node: &Node, mut levels: Split<'_, char>, depth: usize, dollar: bool, m: &mut Walk<'_, '_>) {
    let wild_ok = !(depth == 0 && dollar);
    if wild_ok {
        if let Some(h) = node.children.get("#") {
            // "#" matches the parent level and everything below [MQTT-4.7.1-2].
            emit(h, m);
        }
    }
    let Some(first) = levels.next() else {
        emit(node, m);
        return;
    };
    if wild_ok {
        if let Some(p) = node.children.get("+") {
            match_rec(p, levels.clone(), depth + 1, dollar, m);
        }
    }
    if let Some(c) = node.children.get(first) {
        match_rec(c, levels, depth + 1, dollar, m);
    }
}
