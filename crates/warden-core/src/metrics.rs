//! Counters for the operator's metrics (SPEC §9, `GET /metrics`) that the `$SYS` topics do
//! not already carry: authentication attempts by method and result, authorization denials by
//! action, and a latency histogram. Plain atomics, touched on cold paths (CONNECT, a denial,
//! a store commit) — never per delivered message. Rendering them is the shell's job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The authentication method, as counted (`warden_auth_attempts_total{method}`): the
/// authentication chain's own ([`warden_policy::authn::Method`]).
pub use warden_policy::authn::Method as AuthMethod;

/// A method's row in the counters ([`AuthMethod::ALL`] order).
fn index(m: AuthMethod) -> usize {
    m as usize
}

/// What an authorization denial refused (the `action` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A PUBLISH.
    Publish,
    /// A SUBSCRIBE filter.
    Subscribe,
    /// A delivery to a subscriber.
    Receive,
    /// A will (at CONNECT, or when it was due).
    Will,
}

impl Denied {
    /// Every action, in label order.
    pub const ALL: [Denied; 4] = [Denied::Publish, Denied::Subscribe, Denied::Receive, Denied::Will];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Publish => "publish",
            Denied::Subscribe => "subscribe",
            Denied::Receive => "receive",
            Denied::Will => "will",
        }
    }
}

/// Counters of the security pillars.
#[derive(Debug, Default)]
pub struct SecurityStats {
    /// Per [`AuthMethod`]: `[accepted, refused]`.
    auth: [[AtomicU64; 2]; 6],
    /// Per [`Denied`] action.
    denied: [AtomicU64; 4],
    /// TLS handshakes that failed (bad certificate, protocol error, timeout).
    pub tls_handshake_failures: AtomicU64,
}

impl SecurityStats {
    /// Count an authentication attempt by `method`.
    pub fn auth_attempt(&self, method: AuthMethod, accepted: bool) {
        self.auth[index(method)][usize::from(!accepted)].fetch_add(1, Ordering::Relaxed);
    }

    /// Attempts by `method`: `(accepted, refused)`.
    pub fn auth_attempts(&self, method: AuthMethod) -> (u64, u64) {
        let [ok, refused] = &self.auth[index(method)];
        (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed))
    }

    /// Count `n` denials of `action`.
    pub fn denied(&self, action: Denied, n: u64) {
        self.denied[action as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Denials of `action` so far.
    pub fn denials(&self, action: Denied) -> u64 {
        self.denied[action as usize].load(Ordering::Relaxed)
    }
}

/// A latency histogram with fixed buckets (seconds), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or under each bound of [`Histogram::BOUNDS`] (not cumulative).
    buckets: [AtomicU64; 12],
    /// Observations above the last bound.
    over: AtomicU64,
    /// Sum of the observations, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Upper bounds of the buckets, in seconds.
    pub const BOUNDS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match Self::BOUNDS.iter().position(|b| s <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// `(cumulative counts per bound, total count, sum in seconds)`.
    pub fn snapshot(&self) -> ([u64; 12], u64, f64) {
        let mut cumulative = [0u64; 12];
        let mut n = 0;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            n += b.load(Ordering::Relaxed);
            *c = n;
        }
        let total = n + self.over.load(Ordering::Relaxed);
        (cumulative, total, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_the_sum_is_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let (c, n, sum) = h.snapshot();
        assert_eq!((c[0], c[1], c[2], c[3], c[11]), (1, 1, 1, 2, 2));
        assert_eq!(n, 3, "the one over the last bound counts in +Inf only");
        assert!((sum - 10.0033).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn attempts_and_denials_are_counted_per_label() {
        let s = SecurityStats::default();
        s.auth_attempt(AuthMethod::Token, true);
        s.auth_attempt(AuthMethod::Token, false);
        s.auth_attempt(AuthMethod::Token, false);
        assert_eq!(s.auth_attempts(AuthMethod::Token), (1, 2));
        assert_eq!(s.auth_attempts(AuthMethod::Password), (0, 0));
        s.denied(Denied::Will, 2);
        assert_eq!((s.denials(Denied::Will), s.denials(Denied::Publish)), (2, 0));
        let labels: Vec<_> = AuthMethod::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(labels, ["password", "scram", "certificate", "token", "lookup", "anonymous"]);
        assert!(AuthMethod::ALL.iter().enumerate().all(|(i, m)| index(*m) == i));
    }
}
