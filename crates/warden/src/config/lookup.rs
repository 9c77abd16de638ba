//! `[auth.http]`: the configuration of the third-party look-up service (the client itself is
//! [`crate::auth::lookup`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

use crate::config::{parse_duration, Secret};

/// Default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest configurable request timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Default (and largest) cap on the lifetime of a cached allow.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Default look-ups in flight at once (`max_in_flight`); a CONNECT finding none free is
/// refused busy.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT_CAP: usize = 1024;

/// `[auth.http]`: the third-party look-up service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// The `http://` or `https://` URL the request is POSTed to.
    pub url: String,
    /// Request timeout (connect, send and answer): integer seconds or `"500ms"`, `"2s"`…;
    /// default 2 s, more than 0, at most 30 s.
    #[serde(default = "default_timeout", deserialize_with = "de_timeout")]
    pub timeout: Duration,
    /// Admit the CONNECT when the service is unavailable (error, timeout, bad answer) — as an
    /// unverified fallback principal holding `fallback_role` only, and only when that is set
    /// (else the CONNECT is refused all the same). Default `false`: refused (v5 0x88, v3 0x03).
    /// Never applies when the broker's own `max_in_flight` is full (that is 0x89 Server busy).
    #[serde(default)]
    pub fail_open: bool,
    /// The policy-store role a `fail_open` client gets, and nothing else: not the grants of the
    /// user whose name it gave, not its sessions. Default: none (fail_open then admits no one).
    #[serde(default, deserialize_with = "de_fallback_role")]
    pub fallback_role: Option<String>,
    /// Look-ups in flight at once (default 32, 1 to 1024); a CONNECT that finds them all busy
    /// is refused at once with Server busy (v5 0x89, v3 0x03).
    #[serde(default = "default_max_in_flight", deserialize_with = "de_max_in_flight")]
    pub max_in_flight: usize,
    /// Cap on how long an allow may be reused, as the answer's `cache_ttl` asks; default and
    /// maximum 1 h; `0` disables the cache.
    #[serde(default = "default_cache_ttl", deserialize_with = "de_cache_ttl")]
    pub cache_ttl: Duration,
    /// Sent to the service as `Authorization: Bearer <token>`: inline, `"env:NAME"` or
    /// through `bearer_token_file` (resolved when the broker's configuration is loaded).
    pub bearer_token: Option<Secret>,
    /// The file `bearer_token` was read from (resolved), when given that way.
    pub bearer_token_file: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_cache_ttl() -> Duration {
    MAX_CACHE_TTL
}

fn default_max_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT
}

fn de_max_in_flight<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = u64::deserialize(d)?;
    match usize::try_from(v) {
        Ok(n) if (1..=MAX_IN_FLIGHT_CAP).contains(&n) => Ok(n),
        _ => Err(de::Error::custom(format!("max_in_flight must be 1 to {MAX_IN_FLIGHT_CAP}"))),
    }
}

fn de_fallback_role<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let r = String::deserialize(d)?;
    warden_policy::store::valid_name("role", &r).map_err(|e| de::Error::custom(format!("fallback_role: {e}")))?;
    Ok(Some(r))
}

/// A duration: integer seconds or a string such as `"500ms"`, `"10s"`, `"5m"`, `"1h"`.
struct DurationVisitor(&'static str);

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a duration for {} (integer seconds, or a string such as \"500ms\", \"2s\", \"1m\")", self.0)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v).map(Duration::from_secs).map_err(|_| E::custom(format!("{} must not be negative", self.0)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(|e| E::custom(format!("{}: {e}", self.0)))
    }
}

fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = d.deserialize_any(DurationVisitor("timeout"))?;
    check_timeout(v).map_err(de::Error::custom)
}

fn de_cache_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = d.deserialize_any(DurationVisitor("cache_ttl"))?;
    check_cache_ttl(v).map_err(de::Error::custom)
}

pub(crate) fn check_timeout(v: Duration) -> Result<Duration, &'static str> {
    if v.is_zero() {
        Err("timeout must be greater than 0")
    } else if v > MAX_TIMEOUT {
        Err("timeout: at most 30 seconds")
    } else {
        Ok(v)
    }
}

pub(crate) fn check_cache_ttl(v: Duration) -> Result<Duration, &'static str> {
    if v > MAX_CACHE_TTL {
        Err("cache_ttl: at most 1 hour")
    } else {
        Ok(v)
    }
}
