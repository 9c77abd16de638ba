//! The behaviour watch's sensors and state (issue 23, docs/watch.md): per-principal counters
//! fed by the connections, the topics and networks each principal used while its baseline was
//! learned, the quarantines and throttles in force, and the recent alerts. The rules and the
//! baseline are pure ([`warden_policy::watch`]); the timer that closes each window and applies
//! the actions is `admin/watch.rs`.
//!
//! # Cost on the hot path
//! A connection counts its PUBLISH packets and bytes in two local integers and adds them to its
//! principal's [`Tracked`] counters once per read batch (two relaxed atomic adds per batch, on
//! a line shared only by that principal's connections); nothing per message is locked, hashed
//! or allocated. Connects, subscriptions and authentication failures are counted where they
//! happen (cold paths). Topics are observed where the authorizer is asked
//! ([`Watch::observe`]): a connection's first PUBLISH to a topic (its allow is then cached
//! until the topic or the policy changes) and every SUBSCRIBE filter, so "new topic" is exact
//! for subscriptions and for a device moving between topics, and sampled for a device
//! alternating between topics it already used (each switch is a look-up, never a new count).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use warden_policy::watch::{Baseline, Metric, WatchPolicy, Window};
use warden_policy::{Action, Decision, Principal, PrincipalKind};

use crate::config::WatchConfig;

/// Most networks remembered per principal while its baseline is learned.
const MAX_NETWORKS: usize = 64;

/// A watched principal: kind and name.
pub type Key = (PrincipalKind, Arc<str>);

/// The key of `p`; anonymous clients (one shared principal) are not watched.
pub fn key_of(p: &Principal) -> Option<Key> {
    (p.kind != PrincipalKind::Anonymous).then(|| (p.kind, p.name.clone()))
}

/// One principal's counters and learned behaviour.
#[derive(Debug)]
pub struct Tracked {
    /// Who.
    pub key: Key,
    counts: [AtomicU64; warden_policy::watch::METRICS.len()],
    /// The publish rate (messages/s per connection) a throttle holds it to; 0: none.
    pub throttle: AtomicU32,
    slow: Mutex<Slow>,
}

#[derive(Debug, Default)]
struct Slow {
    baseline: Baseline,
    /// Topics published to and filters subscribed to while learning.
    topics: HashSet<Box<str>>,
    /// New topics counted this window (each once).
    novel: HashSet<Box<str>>,
    /// Networks connected from while learning.
    networks: HashSet<(bool, u128)>,
    /// The last alert of each rule (alerts of a rule repeat at most once a minute).
    alerted: HashMap<String, Instant>,
    /// Windows with no activity and no connection (forgotten after a while).
    idle: u32,
    /// Live connections.
    connections: u32,
}

impl Tracked {
    fn new(key: Key) -> Tracked {
        Tracked { key, counts: Default::default(), throttle: AtomicU32::new(0), slow: Mutex::new(Slow::default()) }
    }

    fn add(&self, m: Metric, n: u64) {
        self.counts[m.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// A connection's PUBLISH packets and bytes of one read batch.
    #[inline]
    pub fn published(&self, packets: u64, bytes: u64) {
        self.add(Metric::Publishes, packets);
        self.add(Metric::PublishBytes, bytes);
    }

    /// Topic filters subscribed to.
    pub fn subscribed(&self, filters: u64) {
        self.add(Metric::Subscriptions, filters);
    }

    /// A connection of this principal ended.
    pub fn disconnected(&self) {
        let mut s = self.slow.lock();
        s.connections = s.connections.saturating_sub(1);
    }

    /// The window's counts, reset.
    fn take(&self) -> Window {
        let mut w = Window::default();
        for (v, c) in w.values.iter_mut().zip(&self.counts) {
            *v = c.swap(0, Ordering::Relaxed);
        }
        w
    }
}

/// A live connection's hold on its principal's counters (its end is counted when dropped).
#[derive(Debug)]
pub struct Watched(Arc<Tracked>);

impl std::ops::Deref for Watched {
    type Target = Tracked;
    fn deref(&self) -> &Tracked {
        &self.0
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.0.disconnected();
    }
}

/// The network a peer counts in: IPv4 /24, IPv6 /48 (IPv4-mapped addresses as IPv4).
fn network(ip: IpAddr) -> (bool, u128) {
    match crate::admission::bans::canonical_ip(ip) {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4) & 0xFFFF_FF00)),
        IpAddr::V6(v6) => (true, u128::from(v6) & (u128::MAX << 80)),
    }
}

/// An action in force on a principal.
#[derive(Debug, Clone, Serialize)]
pub struct Restriction {
    /// `quarantine` or `throttle`.
    pub action: &'static str,
    /// The rule that set it.
    pub rule: String,
    /// Unix seconds when it was set.
    pub since: u64,
    /// Unix seconds when it lifts by itself; none: when an operator lifts it.
    pub until: Option<u64>,
    /// Throttle: messages/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// What the authorizer reads for a quarantined principal: the topics of its baseline.
#[derive(Debug, Clone)]
pub struct Quarantined {
    topics: Arc<HashSet<Box<str>>>,
}

/// One alert (the admin API's view; also the event message's body).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Unix seconds.
    pub at: u64,
    /// `user`, `certificate`, `token`, `fallback`.
    pub principal_kind: &'static str,
    /// The principal's name.
    pub principal: String,
    /// The rule that fired.
    pub rule: String,
    /// Its metric.
    pub metric: &'static str,
    /// The window's count.
    pub value: u64,
    /// The baseline's average for that metric (none while learning).
    pub baseline: Option<f64>,
    /// What was done: `alert`, `throttle`, `quarantine`, `ban`.
    pub action: &'static str,
}

/// The behaviour watch of one broker (present only with `[watch] enabled = true`).
pub struct Watch {
    /// Its configuration.
    pub cfg: WatchConfig,
    principals: RwLock<HashMap<Key, Arc<Tracked>>>,
    policy: RwLock<Arc<WatchPolicy>>,
    /// Quarantined principals: read by the authorizer (a copy swapped whole on change).
    quarantined: RwLock<Arc<HashMap<Key, Quarantined>>>,
    /// `quarantined` is not empty: read first (a plain load), so that while nobody is
    /// quarantined a decision takes no lock.
    any_quarantined: std::sync::atomic::AtomicBool,
    restrictions: Mutex<HashMap<Key, Vec<Restriction>>>,
    alerts: Mutex<VecDeque<Alert>>,
    /// Told when the quarantined set changes (the policy manager swaps the broker's
    /// authorizer, so cached allows and queued deliveries are decided again).
    on_quarantine: OnceLock<Box<dyn Fn() + Send + Sync>>,
    full_logged: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Watch {
    /// A watch with these settings and rules (`None`: the default rules).
    pub fn new(cfg: WatchConfig, policy: Option<WatchPolicy>) -> Arc<Watch> {
        Arc::new(Watch {
            cfg,
            principals: Default::default(),
            policy: RwLock::new(Arc::new(policy.unwrap_or_default())),
            quarantined: Default::default(),
            any_quarantined: Default::default(),
            restrictions: Default::default(),
            alerts: Default::default(),
            on_quarantine: OnceLock::new(),
            full_logged: Default::default(),
        })
    }

    /// What to call when the quarantined set changes (set once).
    pub fn on_quarantine_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_quarantine.set(f);
    }

    /// The rules in force.
    pub fn policy(&self) -> Arc<WatchPolicy> {
        self.policy.read().clone()
    }

    /// New rules (the policy store changed; `None`: the defaults).
    pub fn set_policy(&self, policy: Option<WatchPolicy>) {
        *self.policy.write() = Arc::new(policy.unwrap_or_default());
    }

    fn tracked(&self, key: &Key) -> Option<Arc<Tracked>> {
        self.principals.read().get(key).cloned()
    }

    /// A connection of `p` from `peer` is established: its principal's counters (made on its
    /// first connection, within `max_principals`), the connect and its network counted.
    pub fn connected(&self, p: &Principal, peer: IpAddr) -> Option<Watched> {
        let key = key_of(p)?;
        let t = match self.tracked(&key) {
            Some(t) => t,
            None => {
                let mut map = self.principals.write();
                if map.len() >= self.cfg.max_principals && !map.contains_key(&key) {
                    if !self.full_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            max_principals = self.cfg.max_principals,
                            "behaviour watch: max_principals reached, new principals are not watched"
                        );
                    }
                    return None;
                }
                map.entry(key.clone()).or_insert_with(|| Arc::new(Tracked::new(key))).clone()
            }
        };
        t.add(Metric::Connects, 1);
        let net = network(peer);
        let mut s = t.slow.lock();
        s.connections += 1;
        if !s.baseline.learned(self.cfg.learning_windows) {
            if s.networks.len() < MAX_NETWORKS {
                s.networks.insert(net);
            }
        } else if !s.networks.contains(&net) {
            // Counted once per window and network.
            let probe: Box<str> = format!("\0net:{net:?}").into();
            if s.novel.insert(probe) {
                t.add(Metric::NewNetworks, 1);
            }
        }
        drop(s);
        Some(Watched(t))
    }

    /// A failed authentication under `name` (counted for a principal already watched only:
    /// guessed names cost nothing).
    pub fn auth_failed(&self, name: &str) {
        let map = self.principals.read();
        for kind in [PrincipalKind::User, PrincipalKind::Certificate, PrincipalKind::Token] {
            if let Some(t) = map.get(&(kind, Arc::from(name))) {
                t.add(Metric::AuthFailures, 1);
                return;
            }
        }
    }

    /// Asked by the broker's authorizer (`admin/policy_store.rs`) before the policy: the topic
    /// of a publish or subscribe is observed (learned, or counted as new), and a quarantined
    /// principal is refused what it did not use while learning (`Some(deny)`).
    pub fn observe(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Option<Decision> {
        let receive = matches!(action, Action::Receive { .. });
        let quarantines = self.any_quarantined.load(Ordering::Acquire);
        if receive && !quarantines {
            return None;
        }
        let key = key_of(principal)?;
        let topic = action.topic();
        if !receive {
            if let Some(t) = self.tracked(&key) {
                let mut s = t.slow.lock();
                if !s.baseline.learned(self.cfg.learning_windows) {
                    if s.topics.len() < self.cfg.max_topics && !s.topics.contains(topic) {
                        s.topics.insert(topic.into());
                    }
                } else if !s.topics.contains(topic) && s.novel.len() < 4096 && s.novel.insert(topic.into()) {
                    t.add(Metric::NewTopics, 1);
                }
            }
        }
        if !quarantines {
            return None;
        }
        let q = self.quarantined.read().clone();
        let entry = q.get(&key)?;
        if entry.topics.contains(topic) {
            return None;
        }
        let user = (principal.kind == PrincipalKind::User).then_some(&*principal.name);
        let patterns = self.policy().quarantine_filters(client_id, user, &principal.name);
        let allowed = match action {
            // A subscription must be covered by a pattern; a delivery or publish must match one
            // (or a baseline filter, for deliveries).
            Action::Subscribe { filter, .. } => {
                patterns.iter().any(|p| filter_covers(p.as_str(), filter.match_filter()))
            }
            Action::Publish { .. } => patterns.iter().any(|p| p.matches(topic)),
            Action::Receive { .. } => {
                patterns.iter().any(|p| p.matches(topic))
                    || entry.topics.iter().any(|f| mqtt_codec::topic::filter_matches(f, topic))
            }
        };
        (!allowed).then_some(Decision::Deny { disconnect: false })
    }

    /// Close the window of every watched principal: `(principal, window, baseline if learned)`
    /// for the caller to evaluate; windows that fire no rule are added to the baseline by
    /// [`Watch::learn`]. Principals idle for a long time without a connection are forgotten.
    pub fn close_window(&self) -> Vec<(Arc<Tracked>, Window, Option<Baseline>)> {
        let all: Vec<Arc<Tracked>> = self.principals.read().values().cloned().collect();
        let mut out = Vec::with_capacity(all.len());
        let mut forget = Vec::new();
        for t in all {
            let w = t.take();
            let mut s = t.slow.lock();
            s.novel.clear();
            if w == Window::default() && s.connections == 0 {
                s.idle += 1;
                // An hour of windows (at least 100) without a connection or a count.
                let limit = (3600 / self.cfg.window.as_secs().max(1)).max(100) as u32;
                if s.idle > limit && !self.restrictions.lock().contains_key(&t.key) {
                    forget.push(t.key.clone());
                }
                continue;
            }
            s.idle = 0;
            let learned = s.baseline.learned(self.cfg.learning_windows).then_some(s.baseline);
            drop(s);
            out.push((t, w, learned));
        }
        if !forget.is_empty() {
            let mut map = self.principals.write();
            for k in forget {
                map.remove(&k);
            }
        }
        out
    }

    /// Add a window that fired no rule to the principal's baseline.
    pub fn learn(&self, t: &Tracked, w: &Window) {
        t.slow.lock().baseline.add(w, self.cfg.learning_windows);
    }

    /// The baseline of `key`, if watched.
    pub fn baseline(&self, key: &Key) -> Option<Baseline> {
        self.tracked(key).map(|t| t.slow.lock().baseline)
    }

    /// True when `rule` alerted for `t` less than a minute ago (else it is noted now).
    pub fn recently_alerted(&self, t: &Tracked, rule: &str, now: Instant) -> bool {
        let mut s = t.slow.lock();
        match s.alerted.get(rule) {
            Some(at) if now.saturating_duration_since(*at).as_secs() < 60 => true,
            _ => {
                s.alerted.insert(rule.to_owned(), now);
                false
            }
        }
    }

    /// Keep an alert (the oldest goes beyond `alerts_kept`).
    pub fn record(&self, alert: Alert) {
        let mut a = self.alerts.lock();
        while a.len() >= self.cfg.alerts_kept {
            a.pop_front();
        }
        a.push_back(alert);
    }

    /// The newest `limit` alerts, newest first.
    pub fn alerts(&self, limit: usize) -> Vec<Alert> {
        self.alerts.lock().iter().rev().take(limit).cloned().collect()
    }

    /// The action `action` in force on `key`, if any.
    pub fn restricted(&self, key: &Key, action: &str) -> bool {
        self.restrictions.lock().get(key).is_some_and(|v| v.iter().any(|r| r.action == action))
    }

    /// Quarantine `key` (its baseline's topics and `quarantine_topics` only).
    pub fn quarantine(&self, key: &Key, r: Restriction) {
        let topics = self.tracked(key).map(|t| Arc::new(t.slow.lock().topics.clone())).unwrap_or_default();
        self.restrictions.lock().entry(key.clone()).or_default().push(r);
        {
            let mut q = self.quarantined.write();
            let mut next = HashMap::clone(&q);
            next.insert(key.clone(), Quarantined { topics });
            *q = Arc::new(next);
            self.any_quarantined.store(true, Ordering::Release);
        }
        self.quarantine_changed();
    }

    /// Throttle `key` to `rate` messages/s per connection.
    pub fn throttle(&self, key: &Key, r: Restriction) {
        if let (Some(t), Some(rate)) = (self.tracked(key), r.rate) {
            t.throttle.store(rate, Ordering::Relaxed);
        }
        self.restrictions.lock().entry(key.clone()).or_default().push(r);
    }

    fn quarantine_changed(&self) {
        if let Some(f) = self.on_quarantine.get() {
            f();
        }
    }

    /// Lift every quarantine and throttle of `key`; false when none was in force.
    pub fn lift(&self, key: &Key) -> bool {
        let Some(gone) = self.restrictions.lock().remove(key) else { return false };
        self.lifted(key, &gone);
        true
    }

    fn lifted(&self, key: &Key, gone: &[Restriction]) {
        if gone.iter().any(|r| r.action == "throttle") {
            if let Some(t) = self.tracked(key) {
                t.throttle.store(0, Ordering::Relaxed);
            }
        }
        if gone.iter().any(|r| r.action == "quarantine") {
            {
                let mut q = self.quarantined.write();
                let mut next = HashMap::clone(&q);
                next.remove(key);
                self.any_quarantined.store(!next.is_empty(), Ordering::Release);
                *q = Arc::new(next);
            }
            self.quarantine_changed();
        }
        tracing::info!(principal_kind = key.0.as_str(), principal = %crate::logsafe::Escaped(&*key.1),
            "behaviour watch: restriction lifted");
    }

    /// Lift what expired by `now` (unix seconds).
    pub fn expire(&self, now: u64) {
        let mut due = Vec::new();
        {
            let mut all = self.restrictions.lock();
            all.retain(|k, v| {
                let (gone, kept): (Vec<_>, Vec<_>) = v.drain(..).partition(|r| r.until.is_some_and(|u| u <= now));
                *v = kept;
                if !gone.is_empty() {
                    due.push((k.clone(), gone));
                }
                !v.is_empty()
            });
        }
        for (k, gone) in due {
            self.lifted(&k, &gone);
        }
    }

    /// The restrictions in force, by principal.
    pub fn restrictions(&self) -> Vec<(Key, Vec<Restriction>)> {
        let mut v: Vec<_> = self.restrictions.lock().iter().map(|(k, r)| (k.clone(), r.clone())).collect();
        v.sort_by(|a, b| (a.0 .0.as_str(), &a.0 .1).cmp(&(b.0 .0.as_str(), &b.0 .1)));
        v
    }
}

/// Does `outer` cover every topic `inner` matches? (`a/#` covers `a/+/b`; `a/+` covers `a/b`.)
fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_codec::{QoS, TopicFilter, TopicName};

    fn cfg() -> WatchConfig {
        WatchConfig { enabled: true, learning_windows: 2, ..Default::default() }
    }

    #[test]
    fn covers() {
        assert!(filter_covers("a/#", "a/+/b"));
        assert!(filter_covers("a/+", "a/b"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(filter_covers("a/b", "a/b"));
    }

    #[test]
    fn topics_are_learned_then_new_ones_counted_and_quarantine_keeps_the_learned_ones() {
        let w = Watch::new(cfg(), Some(WatchPolicy { rules: vec![], quarantine_topics: vec!["own/%c/#".into()] }));
        let p = Principal::user("dev");
        let t = w.connected(&p, "10.0.0.1".parse().unwrap()).unwrap();
        let name = |s: &str| TopicName::new(s).unwrap();
        let (home, probe, own) = (name("home/t"), name("probe/1"), name("own/c1/x"));
        let pubq = |t| Action::publish(t, QoS::AtMostOnce, false);
        assert!(w.observe(&p, "c1", pubq(&home)).is_none());
        t.published(3, 30);
        for _ in 0..2 {
            let closed = w.close_window();
            for (t, win, _) in &closed {
                w.learn(t, win);
            }
        }
        assert!(w.baseline(&t.key).unwrap().learned(2));
        // Learned: a new topic counts once per window.
        w.observe(&p, "c1", pubq(&probe));
        w.observe(&p, "c1", pubq(&probe));
        w.observe(&p, "c1", pubq(&home));
        let closed = w.close_window();
        assert_eq!(closed[0].1.get(Metric::NewTopics), 1);
        // Quarantined: the learned topic and the pattern, nothing else.
        w.quarantine(
            &t.key,
            Restriction { action: "quarantine", rule: "r".into(), since: 0, until: Some(5), rate: None },
        );
        assert!(w.observe(&p, "c1", pubq(&home)).is_none());
        assert!(w.observe(&p, "c1", pubq(&own)).is_none());
        assert!(w.observe(&p, "c1", pubq(&probe)).is_some());
        let f = TopicFilter::new("own/c1/#").unwrap();
        assert!(w.observe(&p, "c1", Action::subscribe(&f, QoS::AtMostOnce)).is_none());
        let f = TopicFilter::new("#").unwrap();
        assert!(w.observe(&p, "c1", Action::subscribe(&f, QoS::AtMostOnce)).is_some());
        // Another principal is untouched.
        assert!(w.observe(&Principal::user("other"), "c2", pubq(&probe)).is_none());
        // Expiry lifts it.
        w.expire(4);
        assert!(w.observe(&p, "c1", pubq(&probe)).is_some());
        w.expire(5);
        assert!(w.observe(&p, "c1", pubq(&probe)).is_none());
        assert!(!w.lift(&t.key));
    }

    #[test]
    fn new_networks_and_auth_failures_of_known_principals() {
        let w = Watch::new(cfg(), None);
        let p = Principal::user("dev");
        let t = w.connected(&p, "10.0.0.1".parse().unwrap()).unwrap();
        w.auth_failed("dev");
        w.auth_failed("stranger");
        for _ in 0..2 {
            for (t, win, _) in &w.close_window() {
                w.learn(t, win);
            }
        }
        w.connected(&p, "10.0.0.200".parse().unwrap()); // same /24
        w.connected(&p, "192.0.2.1".parse().unwrap());
        w.connected(&p, "192.0.2.9".parse().unwrap()); // that new network again
        let closed = w.close_window();
        assert_eq!(closed[0].1.get(Metric::NewNetworks), 1);
        assert_eq!(closed[0].1.get(Metric::Connects), 3);
        assert!(Arc::ptr_eq(&closed[0].0, &t.0));
        assert_eq!(w.principals.read().len(), 1, "a failed name that was never watched is not added");
        assert!(w.connected(&Principal::anonymous(), "10.0.0.1".parse().unwrap()).is_none());
    }
}
