//! `[watch]`: the behaviour watch (docs/watch.md). Off unless `enabled = true`; its rules are in
//! the policy store (the default rule set when the store has none).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `[watch]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Watch principals' behaviour and apply the rules (default false).
    #[serde(default)]
    pub enabled: bool,
    /// The observation window every rule's counts are taken over (default `"10s"`).
    #[serde(default = "default_window", deserialize_with = "de_window")]
    pub window: Duration,
    /// Windows a principal's baseline is learned over before baseline rules apply to it, and
    /// the weight (1/N) of each later window in its moving average (default 30).
    #[serde(default = "default_learning_windows", deserialize_with = "de_learning_windows")]
    pub learning_windows: u32,
    /// Most principals watched at once (default 100000); others are not watched (logged).
    #[serde(default = "default_max_principals", deserialize_with = "de_max_principals")]
    pub max_principals: usize,
    /// Most topics remembered per principal from its baseline (default 256): the topics a
    /// quarantined principal keeps, and what "new topic" is decided against.
    #[serde(default = "default_max_topics", deserialize_with = "de_max_topics")]
    pub max_topics: usize,
    /// Most alerts kept for the admin API (default 1000; the oldest go first).
    #[serde(default = "default_alerts_kept", deserialize_with = "de_alerts_kept")]
    pub alerts_kept: usize,
    /// An `http://` or `https://` URL every alert is also POSTed to (JSON: the event's body);
    /// none by default. In the background, at most 4 at a time (more are dropped, and logged),
    /// each within 5 s, no redirects.
    #[serde(default, deserialize_with = "de_webhook_url")]
    pub webhook_url: Option<String>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            enabled: false,
            window: default_window(),
            learning_windows: default_learning_windows(),
            max_principals: default_max_principals(),
            max_topics: default_max_topics(),
            alerts_kept: default_alerts_kept(),
            webhook_url: None,
        }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_learning_windows() -> u32 {
    30
}
fn default_max_principals() -> usize {
    100_000
}
fn default_max_topics() -> usize {
    256
}
fn default_alerts_kept() -> usize {
    1000
}

fn de_window<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    super::de_duration(d, "window", Duration::from_millis(50))
}
fn de_learning_windows<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    super::narrow(super::de_int(d, "learning_windows", 1, 1_000_000)?)
}
fn de_max_principals<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    super::narrow(super::de_int(d, "max_principals", 1, 100_000_000)?)
}
fn de_max_topics<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    super::narrow(super::de_int(d, "max_topics", 0, 1_000_000)?)
}
fn de_webhook_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    let lower = url.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    if rest.is_none_or(|r| r.is_empty()) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(serde::de::Error::custom("webhook_url must be an http:// or https:// URL without white space"));
    }
    Ok(Some(url))
}
fn de_alerts_kept<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    super::narrow(super::de_int(d, "alerts_kept", 1, 1_000_000)?)
}
