//! The behaviour watch's pure part (issue 23): the rules kept in the policy store, their
//! validation, the per-principal baseline (a slow moving average of each metric per window)
//! and the evaluation of one window against the rules. The broker's shell feeds the windows
//! and applies the actions (`warden/src/watch`, `warden/src/admin/watch.rs`); see
//! docs/watch.md.
//!
//! # Metrics
//! Every metric is a count over one observation window (`[watch] window`, 10 s by default):
//! [`Metric::AuthFailures`], [`Metric::Connects`], [`Metric::Publishes`],
//! [`Metric::PublishBytes`], [`Metric::Subscriptions`], [`Metric::NewTopics`] (topics and
//! filters the principal had not used while its baseline was learned) and
//! [`Metric::NewNetworks`] (connections from a network it had not connected from while
//! learning).
//!
//! # Rules
//! A rule fires for a window when the metric is strictly above `above` (if set) **and**
//! strictly above `baseline_times` × the principal's baseline (if set; such a rule never fires
//! while the baseline is still being learned). At least one of the two must be set.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::store::{valid_name, StoreError};

/// What a rule measures (a count per window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Failed authentications under the principal's name (counted only for a principal
    /// already known to the watch, so that guessed names cost no memory).
    AuthFailures,
    /// Connections established.
    Connects,
    /// PUBLISH packets received.
    Publishes,
    /// Bytes of PUBLISH packets received.
    PublishBytes,
    /// Topic filters subscribed to.
    Subscriptions,
    /// Topics published to or filters subscribed to that were not used while the baseline was
    /// learned (sampled: see docs/watch.md).
    NewTopics,
    /// Connections from a network (IPv4 /24, IPv6 /48) not seen while the baseline was learned.
    NewNetworks,
}

/// Every metric, in the order of [`Window::values`].
pub const METRICS: [Metric; 7] = [
    Metric::AuthFailures,
    Metric::Connects,
    Metric::Publishes,
    Metric::PublishBytes,
    Metric::Subscriptions,
    Metric::NewTopics,
    Metric::NewNetworks,
];

impl Metric {
    /// Position in [`Window::values`].
    pub fn index(self) -> usize {
        match self {
            Metric::AuthFailures => 0,
            Metric::Connects => 1,
            Metric::Publishes => 2,
            Metric::PublishBytes => 3,
            Metric::Subscriptions => 4,
            Metric::NewTopics => 5,
            Metric::NewNetworks => 6,
        }
    }

    /// The snake-case name (as in the rules' JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::AuthFailures => "auth_failures",
            Metric::Connects => "connects",
            Metric::Publishes => "publishes",
            Metric::PublishBytes => "publish_bytes",
            Metric::Subscriptions => "subscriptions",
            Metric::NewTopics => "new_topics",
            Metric::NewNetworks => "new_networks",
        }
    }
}

/// What a rule that fires does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchAction {
    /// A log line and an event message (`$warden/events/watch/<kind>/<name>`), and the
    /// webhook when one is configured. Every other action alerts too.
    Alert,
    /// Lower the principal's publish rate to `throttle_rate` messages/s per connection.
    Throttle,
    /// The principal may only publish and subscribe to the topics it used while its baseline
    /// was learned, and to `[watch] quarantine_topics`; applied to its live connections.
    Quarantine,
    /// Ban the principal's name and end its connections (DISCONNECT 0x98).
    Ban,
}

impl WatchAction {
    /// The snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchAction::Alert => "alert",
            WatchAction::Throttle => "throttle",
            WatchAction::Quarantine => "quarantine",
            WatchAction::Ban => "ban",
        }
    }

    /// Higher is harsher (when several rules fire, each action is applied once).
    pub fn severity(self) -> u8 {
        match self {
            WatchAction::Alert => 0,
            WatchAction::Throttle => 1,
            WatchAction::Quarantine => 2,
            WatchAction::Ban => 3,
        }
    }
}

fn yes() -> bool {
    true
}

/// One rule of the behaviour watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRule {
    /// Unique among the rules.
    pub id: String,
    /// What it measures.
    pub metric: Metric,
    /// Fires when the window's count is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fires when the window's count is above this multiple of the principal's baseline
    /// (never while the baseline is being learned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_times: Option<f64>,
    /// What it does.
    pub action: WatchAction,
    /// Throttle: the publish rate (messages/s per connection) the principal is held to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_rate: Option<u32>,
    /// Throttle, quarantine, ban: how long (seconds) before it is lifted by itself; none:
    /// until an operator lifts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// A disabled rule is kept but never fires.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl WatchRule {
    /// Check the rule on its own.
    pub fn validate(&self) -> Result<(), StoreError> {
        valid_name("watch rule", &self.id)?;
        let id = &self.id;
        if self.above.is_none() && self.baseline_times.is_none() {
            return Err(StoreError(format!("watch rule '{id}': set 'above', 'baseline_times' or both")));
        }
        for (name, v) in [("above", self.above), ("baseline_times", self.baseline_times)] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(StoreError(format!("watch rule '{id}': {name} must be a number >= 0")));
                }
            }
        }
        match (self.action, self.throttle_rate) {
            (WatchAction::Throttle, None | Some(0)) => {
                return Err(StoreError(format!("watch rule '{id}': a throttle needs throttle_rate >= 1")))
            }
            (WatchAction::Throttle, _) | (_, None) => {}
            (_, Some(_)) => {
                return Err(StoreError(format!("watch rule '{id}': throttle_rate is only for action 'throttle'")))
            }
        }
        if self.action == WatchAction::Alert && self.duration_secs.is_some() {
            return Err(StoreError(format!("watch rule '{id}': duration_secs does not apply to an alert")));
        }
        if self.duration_secs == Some(0) {
            return Err(StoreError(format!("watch rule '{id}': duration_secs must be >= 1 (omit it: until lifted)")));
        }
        Ok(())
    }

    /// Does the rule fire for `window`, given the principal's `baseline` (`None` while it is
    /// being learned)?
    pub fn fires(&self, window: &Window, baseline: Option<&Baseline>) -> bool {
        if !self.enabled {
            return false;
        }
        let i = self.metric.index();
        let v = window.values[i] as f64;
        if self.above.is_some_and(|a| v <= a) {
            return false;
        }
        match self.baseline_times {
            None => true,
            Some(t) => match baseline {
                None => false,
                Some(b) => v > t * b.mean[i],
            },
        }
    }
}

/// The watch's part of the policy store: its rules and the topics a quarantined principal
/// keeps. Absent from the store: the default rules ([`WatchPolicy::defaults`]) apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchPolicy {
    /// The rules, in order.
    #[serde(default)]
    pub rules: Vec<WatchRule>,
    /// Topic filters a quarantined principal may still publish and subscribe to besides the
    /// topics of its baseline; `%c` (client id), `%u` (user name) and `%i` (identity) are
    /// substituted literally, like the store's rules (e.g. `devices/%i/#`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantine_topics: Vec<String>,
}

impl Eq for WatchPolicy {}

impl Default for WatchPolicy {
    fn default() -> Self {
        WatchPolicy::defaults()
    }
}

impl WatchPolicy {
    /// The default rule set (counts per 10 s window; the watch itself is off unless
    /// `[watch] enabled = true`).
    pub fn defaults() -> WatchPolicy {
        let rule = |id: &str, metric, above, times, action| WatchRule {
            id: id.into(),
            metric,
            above,
            baseline_times: times,
            action,
            throttle_rate: None,
            duration_secs: None,
            enabled: true,
        };
        let mut volume =
            rule("publish-volume", Metric::PublishBytes, Some(1_048_576.0), Some(50.0), WatchAction::Throttle);
        volume.throttle_rate = Some(10);
        volume.duration_secs = Some(600);
        WatchPolicy {
            rules: vec![
                rule("auth-failures", Metric::AuthFailures, Some(20.0), None, WatchAction::Alert),
                rule("connect-storm", Metric::Connects, Some(10.0), Some(10.0), WatchAction::Alert),
                rule("publish-flood", Metric::Publishes, Some(100.0), Some(50.0), WatchAction::Quarantine),
                volume,
                rule("topic-probe", Metric::NewTopics, Some(5.0), None, WatchAction::Quarantine),
                rule("subscription-breadth", Metric::Subscriptions, Some(50.0), Some(20.0), WatchAction::Alert),
                rule("new-network", Metric::NewNetworks, Some(0.0), None, WatchAction::Alert),
            ],
            quarantine_topics: Vec::new(),
        }
    }

    /// Every rule valid, ids unique, quarantine topics valid filters.
    pub fn validate(&self) -> Result<(), StoreError> {
        let mut ids = HashSet::new();
        for r in &self.rules {
            r.validate()?;
            if !ids.insert(r.id.as_str()) {
                return Err(StoreError(format!("duplicate watch rule id '{}'", r.id)));
            }
        }
        for t in &self.quarantine_topics {
            let probe = t.replace("%c", "x").replace("%u", "x").replace("%i", "x");
            if mqtt_codec::TopicFilter::new(&probe).is_err() {
                return Err(StoreError(format!("quarantine topic '{t}' is not a valid topic filter")));
            }
        }
        Ok(())
    }

    /// The rules that fire for `window`, and the harshest action among them.
    pub fn evaluate<'a>(&'a self, window: &Window, baseline: Option<&Baseline>) -> Vec<&'a WatchRule> {
        self.rules.iter().filter(|r| r.fires(window, baseline)).collect()
    }

    /// `quarantine_topics` for this client: `%c`, `%u`, `%i` substituted; a pattern whose
    /// value is unsafe (contains `/`, `+`, `#`, U+0000, or is empty) is left out (fail closed).
    pub fn quarantine_filters(
        &self,
        client_id: &str,
        user: Option<&str>,
        identity: &str,
    ) -> Vec<mqtt_codec::TopicFilter> {
        let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#', '\0']);
        self.quarantine_topics
            .iter()
            .filter_map(|t| {
                let mut s = t.clone();
                for (var, val) in [("%c", Some(client_id)), ("%u", user), ("%i", Some(identity))] {
                    if s.contains(var) {
                        let v = val.filter(|v| safe(v))?;
                        s = s.replace(var, v);
                    }
                }
                mqtt_codec::TopicFilter::new(&s).ok()
            })
            .collect()
    }
}

/// One window's counts, by [`Metric::index`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// The counts.
    pub values: [u64; METRICS.len()],
}

impl Window {
    /// The count of `m`.
    pub fn get(&self, m: Metric) -> u64 {
        self.values[m.index()]
    }

    /// Set the count of `m`.
    pub fn set(&mut self, m: Metric, v: u64) {
        self.values[m.index()] = v;
    }
}

/// A principal's baseline: the moving average of each metric per window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Baseline {
    /// The average of each metric, by [`Metric::index`].
    pub mean: [f64; METRICS.len()],
    /// Windows averaged so far.
    pub windows: u32,
}

impl Baseline {
    /// Add a window: a plain mean over the first `learning` windows, then an exponential
    /// moving average with weight `1 / learning` (slow: one odd window moves it little).
    pub fn add(&mut self, w: &Window, learning: u32) {
        self.windows = self.windows.saturating_add(1);
        let alpha = 1.0 / f64::from(self.windows.min(learning.max(1)));
        for (m, v) in self.mean.iter_mut().zip(w.values) {
            *m += alpha * (v as f64 - *m);
        }
    }

    /// Learned: at least `learning` windows averaged.
    pub fn learned(&self, learning: u32) -> bool {
        self.windows >= learning
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(pairs: &[(Metric, u64)]) -> Window {
        let mut w = Window::default();
        for &(m, v) in pairs {
            w.set(m, v);
        }
        w
    }

    fn learned(publishes: u64, n: u32) -> Baseline {
        let mut b = Baseline::default();
        for _ in 0..n {
            b.add(&window(&[(Metric::Publishes, publishes)]), n);
        }
        b
    }

    #[test]
    fn baseline_is_a_mean_then_a_slow_average() {
        let mut b = Baseline::default();
        b.add(&window(&[(Metric::Publishes, 10)]), 4);
        b.add(&window(&[(Metric::Publishes, 20)]), 4);
        assert_eq!(b.mean[Metric::Publishes.index()], 15.0);
        assert!(!b.learned(4));
        b.add(&window(&[(Metric::Publishes, 15)]), 4);
        b.add(&window(&[(Metric::Publishes, 15)]), 4);
        assert!(b.learned(4));
        // One odd window moves a learned baseline by a quarter of the difference.
        b.add(&window(&[(Metric::Publishes, 55)]), 4);
        assert_eq!(b.mean[Metric::Publishes.index()], 25.0);
    }

    #[test]
    fn rules_compare_with_thresholds_and_baselines() {
        let p = WatchPolicy::defaults();
        p.validate().unwrap();
        let base = learned(10, 3);
        let ids = |w: &Window, b: Option<&Baseline>| p.evaluate(w, b).iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        // At its baseline: nothing. 50x: the flood rule (over the 100 floor too).
        assert!(ids(&window(&[(Metric::Publishes, 12)]), Some(&base)).is_empty());
        assert_eq!(ids(&window(&[(Metric::Publishes, 501)]), Some(&base)), ["publish-flood"]);
        // 50x of a tiny baseline stays under the absolute floor.
        let tiny = learned(1, 3);
        assert!(ids(&window(&[(Metric::Publishes, 60)]), Some(&tiny)).is_empty());
        // A baseline rule never fires while learning; an absolute one does.
        assert!(ids(&window(&[(Metric::Publishes, 10_000)]), None).is_empty());
        assert_eq!(ids(&window(&[(Metric::NewTopics, 6)]), None), ["topic-probe"]);
        assert_eq!(ids(&window(&[(Metric::AuthFailures, 21)]), None), ["auth-failures"]);
        assert_eq!(ids(&window(&[(Metric::NewNetworks, 1)]), None), ["new-network"]);
        // A disabled rule never fires.
        let mut q = p.clone();
        q.rules.iter_mut().for_each(|r| r.enabled = false);
        assert!(q.evaluate(&window(&[(Metric::NewTopics, 60)]), None).is_empty());
    }

    #[test]
    fn validation_names_the_problem() {
        let ok: WatchRule =
            serde_json::from_str(r#"{"id":"r","metric":"publishes","above":5,"action":"quarantine"}"#).unwrap();
        ok.validate().unwrap();
        assert!(ok.enabled);
        let bad = |json: &str| {
            let r: WatchRule = serde_json::from_str(json).unwrap();
            r.validate().unwrap_err().to_string()
        };
        assert!(bad(r#"{"id":"r","metric":"publishes","action":"alert"}"#).contains("set 'above'"));
        assert!(bad(r#"{"id":"r","metric":"publishes","above":-1,"action":"alert"}"#).contains("above must be"));
        assert!(bad(r#"{"id":"r","metric":"publishes","above":1,"action":"throttle"}"#).contains("throttle_rate"));
        assert!(bad(r#"{"id":"r","metric":"publishes","above":1,"action":"ban","throttle_rate":3}"#)
            .contains("only for action 'throttle'"));
        assert!(bad(r#"{"id":"r","metric":"publishes","above":1,"action":"alert","duration_secs":3}"#)
            .contains("does not apply"));
        assert!(bad(r#"{"id":"","metric":"publishes","above":1,"action":"alert"}"#).contains("name"));
        assert!(serde_json::from_str::<WatchRule>(r#"{"id":"r","metric":"nope","above":1,"action":"alert"}"#).is_err());
        let mut p = WatchPolicy::defaults();
        p.rules.push(p.rules[0].clone());
        assert!(p.validate().unwrap_err().to_string().contains("duplicate watch rule id 'auth-failures'"));
        let p = WatchPolicy { rules: vec![], quarantine_topics: vec!["a/#/b".into()] };
        assert!(p.validate().unwrap_err().to_string().contains("quarantine topic"));
    }

    #[test]
    fn quarantine_topics_substitute_literally() {
        let p = WatchPolicy { rules: vec![], quarantine_topics: vec!["devices/%c/#".into(), "u/%u".into()] };
        let f = p.quarantine_filters("d1", None, "d1");
        assert_eq!(f.len(), 1, "no user name: that pattern is left out");
        assert!(f[0].matches("devices/d1/t"));
        assert!(p.quarantine_filters("a/b", Some("u"), "x").iter().all(|f| !f.matches("devices/a/b/t")));
        assert!(p.quarantine_filters("+", Some("u"), "x").iter().all(|f| f.as_str() != "devices/+/#"));
    }
}
