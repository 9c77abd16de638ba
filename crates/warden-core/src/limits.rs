//! Abuse-resistance counters (SPEC §7) and their `$SYS/broker/limits/...` topics.
//!
//! Most limits are enforced by the shell (per-address guard, publish rate and bandwidth, TLS
//! handshake timeout, memory high-water mark, stalled writers); the core enforces the
//! per-principal bounds (queued bytes, and the quotas of [`crate::quota`]), holds every
//! counter, so they are exported with the other broker statistics, and measures how many
//! bytes its session queues and retained messages hold ([`Broker::queued_bytes`],
//! [`Broker::retained_bytes`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Broker;

/// One counter per limit: how often it was hit since start. Each is published as
/// `$SYS/broker/limits/<name>`.
#[derive(Debug, Default)]
pub struct LimitStats {
    /// Connections refused: `max_connections` reached.
    pub max_connections: AtomicU64,
    /// Connections refused: `max_connections_per_ip` reached.
    pub connections_per_ip: AtomicU64,
    /// Connections refused: `connect_rate_per_ip` exceeded.
    pub connect_rate_per_ip: AtomicU64,
    /// Connections refused because their address is banned (`auth_fail_ban`).
    pub banned_refused: AtomicU64,
    /// Bans started (`auth_fail_ban`).
    pub bans: AtomicU64,
    /// CONNECTs refused without checking the credentials: that user name is backing off from
    /// that address (`auth_fail_backoff`).
    pub auth_backoff_refused: AtomicU64,
    /// Connections closed because no CONNECT arrived within `connect_timeout`.
    pub connect_timeouts: AtomicU64,
    /// Connections closed because the TLS handshake did not finish within
    /// `tls_handshake_timeout`.
    pub tls_handshake_timeouts: AtomicU64,
    /// Times a connection started being throttled by `max_publish_rate`.
    pub publish_rate_throttled: AtomicU64,
    /// Times a connection started being throttled by `max_publish_bandwidth`.
    pub publish_bandwidth_throttled: AtomicU64,
    /// Connections disconnected by `max_publish_rate` (v5 DISCONNECT 0x96).
    pub publish_rate_disconnects: AtomicU64,
    /// Connections disconnected by `max_publish_bandwidth` (v5 DISCONNECT 0x97).
    pub publish_bandwidth_disconnects: AtomicU64,
    /// Times a publisher stopped being read because the broker was above `max_memory`.
    pub memory_paused: AtomicU64,
    /// Deliveries dropped because the receiving principal's queues, across its sessions, were
    /// at `max_queued_bytes_per_principal` (also counted in `messages_dropped`).
    pub queued_bytes_per_principal: AtomicU64,
    /// Connections closed because their output did not move for `write_stall_timeout`.
    pub write_stalled: AtomicU64,
    /// CONNECTs refused with Server busy: no password-verification slot within
    /// `auth_hash_wait`.
    pub auth_hash_busy: AtomicU64,
    /// CONNECTs refused with 0x97 Quota exceeded: the principal holds
    /// `max_sessions_per_principal` persistent sessions.
    pub sessions_per_principal: AtomicU64,
    /// Subscriptions refused (SUBACK 0x97, v3 0x80): `max_subscriptions_per_principal` or
    /// `max_subscription_bytes_per_principal`.
    pub subscriptions_per_principal: AtomicU64,
    /// Retained messages not retained (v5 QoS 1/2: PUBACK/PUBREC 0x97):
    /// `max_retained_messages_per_principal` or `max_retained_bytes_per_principal`.
    pub retained_per_principal: AtomicU64,
    /// Retained messages not retained: `max_retained_messages` or `max_retained_bytes`.
    pub retained_total: AtomicU64,
    /// CONNECTs refused with Server busy: every look-up slot (`[auth.http] max_in_flight`)
    /// was taken.
    pub lookup_busy: AtomicU64,
}

/// Add one to a counter.
pub fn hit(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl LimitStats {
    /// The counter of `q`'s refusals.
    pub fn quota(&self, q: crate::quota::Quota) -> &AtomicU64 {
        use crate::quota::Quota;
        match q {
            Quota::Sessions => &self.sessions_per_principal,
            Quota::Subscriptions => &self.subscriptions_per_principal,
            Quota::Retained => &self.retained_per_principal,
            Quota::RetainedTotal => &self.retained_total,
        }
    }

    /// `(name, value)` of every counter, in a fixed order.
    pub fn snapshot(&self) -> [(&'static str, u64); 21] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("max_connections", v(&self.max_connections)),
            ("connections_per_ip", v(&self.connections_per_ip)),
            ("connect_rate_per_ip", v(&self.connect_rate_per_ip)),
            ("banned_refused", v(&self.banned_refused)),
            ("bans", v(&self.bans)),
            ("auth_backoff_refused", v(&self.auth_backoff_refused)),
            ("connect_timeouts", v(&self.connect_timeouts)),
            ("tls_handshake_timeouts", v(&self.tls_handshake_timeouts)),
            ("publish_rate_throttled", v(&self.publish_rate_throttled)),
            ("publish_bandwidth_throttled", v(&self.publish_bandwidth_throttled)),
            ("publish_rate_disconnects", v(&self.publish_rate_disconnects)),
            ("publish_bandwidth_disconnects", v(&self.publish_bandwidth_disconnects)),
            ("memory_paused", v(&self.memory_paused)),
            ("queued_bytes_per_principal", v(&self.queued_bytes_per_principal)),
            ("write_stalled", v(&self.write_stalled)),
            ("auth_hash_busy", v(&self.auth_hash_busy)),
            ("sessions_per_principal", v(&self.sessions_per_principal)),
            ("subscriptions_per_principal", v(&self.subscriptions_per_principal)),
            ("retained_per_principal", v(&self.retained_per_principal)),
            ("retained_total", v(&self.retained_total)),
            ("lookup_busy", v(&self.lookup_busy)),
        ]
    }
}

impl Broker {
    /// Publish `$SYS/broker/limits/<counter>` (retained, QoS 0) for every [`LimitStats`]
    /// counter, plus the gauges `$SYS/broker/limits/queued_bytes` and
    /// `$SYS/broker/limits/retained_bytes`. Called by [`Broker::publish_sys`].
    pub fn publish_limits_sys(&self) {
        let counters = self.stats.limits.snapshot();
        let extra = [("queued_bytes", self.queued_bytes()), ("retained_bytes", self.retained_bytes())];
        for (name, value) in counters.into_iter().chain(extra) {
            self.publish_sys_value(&format!("$SYS/broker/limits/{name}"), value.to_string());
        }
        // The security counters of the metrics (`warden_auth_attempts_total`, …), as in
        // `/metrics`: `$SYS/broker/auth/<method>/<ok|refused>`, `$SYS/broker/authz/denied/<action>`,
        // `$SYS/broker/tls/handshake_failures`.
        let sec = &self.stats.security;
        for m in crate::metrics::AuthMethod::ALL {
            let (ok, refused) = sec.auth_attempts(m);
            self.publish_sys_value(&format!("$SYS/broker/auth/{}/ok", m.as_str()), ok.to_string());
            self.publish_sys_value(&format!("$SYS/broker/auth/{}/refused", m.as_str()), refused.to_string());
        }
        for a in crate::metrics::Denied::ALL {
            self.publish_sys_value(&format!("$SYS/broker/authz/denied/{}", a.as_str()), sec.denials(a).to_string());
        }
        let tls = sec.tls_handshake_failures.load(Ordering::Relaxed);
        self.publish_sys_value("$SYS/broker/tls/handshake_failures", tls.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_unique_and_follow_the_counters() {
        let s = LimitStats::default();
        hit(&s.write_stalled);
        hit(&s.write_stalled);
        let snap = s.snapshot();
        let mut names: Vec<_> = snap.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), snap.len());
        assert_eq!(snap.iter().find(|(n, _)| *n == "write_stalled").map(|x| x.1), Some(2));
        // Every quota's counter is published under its own name.
        use crate::quota::Quota;
        for q in [Quota::Sessions, Quota::Subscriptions, Quota::Retained, Quota::RetainedTotal] {
            hit(s.quota(q));
            assert_eq!(s.snapshot().iter().find(|(n, _)| *n == q.counter_name()).map(|x| x.1), Some(1));
        }
    }
}
