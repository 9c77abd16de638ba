//! Per-role quota overrides (policy store roles, issue 17 "per-principal quotas ... and per-role
//! overrides in the policy store"): a role may raise or lower the broker's per-principal quotas
//! for the principals that hold it. Values are plain numbers (bytes are bytes) so that the
//! admin API's JSON is unambiguous.
//!
//! A principal holding several roles that set the same quota gets the **largest** value among
//! them (a role grants capacity, as it grants topics); a quota no role sets is the broker's
//! configured default (`[limits]`).

use serde::{Deserialize, Serialize};

/// Quota values a role sets; `None`: not set by this role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// `max_sessions_per_principal`: persistent sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u64>,
    /// `max_subscriptions_per_principal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<u64>,
    /// `max_subscription_bytes_per_principal`: bytes of topic filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscription_bytes: Option<u64>,
    /// `max_retained_messages_per_principal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retained_messages: Option<u64>,
    /// `max_retained_bytes_per_principal`: topic + payload bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retained_bytes: Option<u64>,
    /// `max_queued_bytes_per_principal`: bytes queued across its sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<u64>,
}

impl Quotas {
    /// True when no quota is set.
    pub fn is_empty(&self) -> bool {
        *self == Quotas::default()
    }

    /// Take, quota by quota, the larger of `self` and `other` (a set value wins over an unset
    /// one).
    pub fn raise(&mut self, other: &Quotas) {
        fn max(a: &mut Option<u64>, b: Option<u64>) {
            *a = match (*a, b) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
        }
        max(&mut self.max_sessions, other.max_sessions);
        max(&mut self.max_subscriptions, other.max_subscriptions);
        max(&mut self.max_subscription_bytes, other.max_subscription_bytes);
        max(&mut self.max_retained_messages, other.max_retained_messages);
        max(&mut self.max_retained_bytes, other.max_retained_bytes);
        max(&mut self.max_queued_bytes, other.max_queued_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_takes_the_larger_and_set_wins_over_unset() {
        let mut q = Quotas { max_sessions: Some(5), max_retained_bytes: Some(100), ..Quotas::default() };
        q.raise(&Quotas {
            max_sessions: Some(50),
            max_retained_bytes: Some(10),
            max_queued_bytes: Some(7),
            ..Quotas::default()
        });
        assert_eq!(q.max_sessions, Some(50));
        assert_eq!(q.max_retained_bytes, Some(100));
        assert_eq!(q.max_queued_bytes, Some(7));
        assert_eq!(q.max_subscriptions, None);
        assert!(Quotas::default().is_empty() && !q.is_empty());
    }

    #[test]
    fn json_is_plain_numbers_and_unknown_keys_are_refused() {
        let q: Quotas = serde_json::from_str(r#"{"max_sessions": 5000, "max_queued_bytes": 1048576}"#).unwrap();
        assert_eq!((q.max_sessions, q.max_queued_bytes), (Some(5000), Some(1 << 20)));
        assert!(serde_json::from_str::<Quotas>(r#"{"max_session": 1}"#).is_err());
        assert!(serde_json::from_str::<Quotas>(r#"{"max_sessions": -1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Quotas { max_sessions: Some(1), ..Quotas::default() }).unwrap(),
            r#"{"max_sessions":1}"#
        );
    }
}
