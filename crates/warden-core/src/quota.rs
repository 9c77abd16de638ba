//! Per-principal quotas (SPEC §10: "per principal, the broker bounds sessions, subscriptions
//! (count and bytes), retained messages (count and bytes) and queued bytes"; issue 17).
//!
//! What one principal (kind and name) holds is counted in its [`Account`], the one its
//! sessions' queues already charge their queued bytes to: [`Usage`] sits beside that counter,
//! behind a lock of its own that is taken last (under the registry, a session's state or the
//! retained store, never the other way round) and only on cold paths (CONNECT, SUBSCRIBE,
//! UNSUBSCRIBE, a retained PUBLISH, a session's end). Each figure changes where the thing it
//! counts comes and goes, under the lock that guards that thing:
//! - persistent sessions: created, resumed with an expiry, ended (under the session registry);
//! - subscriptions and their filter bytes: added, removed, dropped with the session (under the
//!   session's state);
//! - retained messages and their bytes: set, replaced, cleared, removed (under the retained
//!   store, which keeps each message's account beside it).
//!
//! A refusal is counted (`$SYS/broker/limits/<name>`) and logged once per principal per
//! episode: the first refusal while the principal is at the quota, at most once a minute;
//! the episode ends when the principal gives something back.
//!
//! [`Account`]: crate::queue::Account

/// A quota that can refuse a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `max_sessions_per_principal`: a CONNECT that would make one persistent session too many.
    Sessions,
    /// `max_subscriptions_per_principal` / `max_subscription_bytes_per_principal`.
    Subscriptions,
    /// `max_retained_messages_per_principal` / `max_retained_bytes_per_principal`.
    Retained,
    /// `max_retained_messages` / `max_retained_bytes`: the broker-wide cap.
    RetainedTotal,
}

impl Quota {
    const ALL: usize = 4;

    fn index(self) -> usize {
        match self {
            Quota::Sessions => 0,
            Quota::Subscriptions => 1,
            Quota::Retained => 2,
            Quota::RetainedTotal => 3,
        }
    }

    /// The limit counter's name (`$SYS/broker/limits/<name>`).
    pub fn counter_name(self) -> &'static str {
        match self {
            Quota::Sessions => "sessions_per_principal",
            Quota::Subscriptions => "subscriptions_per_principal",
            Quota::Retained => "retained_per_principal",
            Quota::RetainedTotal => "retained_total",
        }
    }

    /// What the refusal does, in words.
    pub fn refusal(self) -> &'static str {
        match self {
            Quota::Sessions => "a new persistent session refused (CONNACK 0x97, v3 0x03)",
            Quota::Subscriptions => "a subscription refused (SUBACK 0x97, v3 0x80)",
            Quota::Retained | Quota::RetainedTotal => {
                "a retained message not retained (v5 QoS 1/2: PUBACK/PUBREC 0x97, not routed)"
            }
        }
    }

    /// The configuration keys of the quota (count, bytes), as an operator reads them.
    pub fn keys(self) -> &'static str {
        match self {
            Quota::Sessions => "max_sessions_per_principal",
            Quota::Subscriptions => "max_subscriptions_per_principal / max_subscription_bytes_per_principal",
            Quota::Retained => "max_retained_messages_per_principal / max_retained_bytes_per_principal",
            Quota::RetainedTotal => "max_retained_messages / max_retained_bytes",
        }
    }
}

/// One principal's quotas in force: the broker's configured ones, with its roles' overrides
/// (policy store, [`warden_policy::Quotas`]: the largest value among its roles) in their place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Persistent sessions.
    pub sessions: u64,
    /// Subscriptions across its sessions.
    pub subscriptions: u64,
    /// Bytes of their topic filters.
    pub subscription_bytes: u64,
    /// Retained messages it published.
    pub retained: u64,
    /// Their bytes (topic + payload).
    pub retained_bytes: u64,
    /// Bytes queued across its sessions.
    pub queued_bytes: u64,
}

impl Limits {
    /// The quotas of `cfg`, overridden by `o` where it sets a value.
    pub fn new(cfg: &crate::BrokerConfig, o: &warden_policy::Quotas) -> Limits {
        Limits {
            sessions: o.max_sessions.unwrap_or(cfg.max_sessions_per_principal as u64),
            subscriptions: o.max_subscriptions.unwrap_or(cfg.max_subscriptions_per_principal as u64),
            subscription_bytes: o.max_subscription_bytes.unwrap_or(cfg.max_subscription_bytes_per_principal),
            retained: o.max_retained_messages.unwrap_or(cfg.max_retained_messages_per_principal as u64),
            retained_bytes: o.max_retained_bytes.unwrap_or(cfg.max_retained_bytes_per_principal),
            queued_bytes: o.max_queued_bytes.unwrap_or(cfg.max_queued_bytes_per_principal),
        }
    }
}

/// What one principal holds that its quotas bound (see the module documentation).
#[derive(Debug, Default)]
pub struct Usage {
    /// Its roles' quota overrides (set at each CONNECT and on every policy change).
    pub overrides: warden_policy::Quotas,
    /// Persistent sessions (see [`crate::session::Session::is_counted`]).
    pub sessions: u64,
    /// Subscriptions across its sessions.
    pub subscriptions: u64,
    /// Bytes of their topic filters.
    pub subscription_bytes: u64,
    /// Retained messages it published that the broker holds.
    pub retained: u64,
    /// Their bytes (topic + payload).
    pub retained_bytes: u64,
    /// Per quota: a refusal of the current episode was logged.
    logged: [bool; Quota::ALL],
    /// Per quota: when a refusal was last logged (seconds from the broker's start, plus one).
    logged_at: [u64; Quota::ALL],
}

/// True when a figure moving from `now` to `next` goes over `max`: a change that does not make
/// it grow is never refused (a principal already over a lowered quota may still replace or
/// remove what it holds).
pub(crate) fn grows_over(now: u64, next: u64, max: u64) -> bool {
    next > now && next > max
}

impl Usage {
    /// Count one more persistent session, unless that makes more than `max`. `replacing`: the
    /// new session takes the place of one that is counted and is about to end (a Clean Start
    /// over the principal's own session), so the figure does not grow.
    pub(crate) fn add_session(&mut self, max: u64, replacing: bool) -> bool {
        let after = self.sessions + 1 - u64::from(replacing && self.sessions > 0);
        if grows_over(self.sessions, after, max) {
            return false;
        }
        self.sessions += 1;
        true
    }

    /// The quotas in force for this principal under `cfg`.
    pub fn limits(&self, cfg: &crate::BrokerConfig) -> Limits {
        Limits::new(cfg, &self.overrides)
    }

    /// A counted session ended.
    pub(crate) fn release_session(&mut self) {
        self.sessions = self.sessions.saturating_sub(1);
        self.back_under(Quota::Sessions);
    }

    /// Count one more subscription with a filter of `len` bytes, unless that takes the
    /// principal over `max` subscriptions or `max_bytes` bytes of filters.
    pub(crate) fn add_subscription(&mut self, len: u64, max: u64, max_bytes: u64) -> bool {
        let (n, b) = (self.subscriptions, self.subscription_bytes);
        if grows_over(n, n + 1, max) || grows_over(b, b.saturating_add(len), max_bytes) {
            return false;
        }
        self.charge_subscriptions(1, len);
        true
    }

    /// Count subscriptions whatever the quota (a restored session's).
    pub(crate) fn charge_subscriptions(&mut self, n: u64, bytes: u64) {
        self.subscriptions += n;
        self.subscription_bytes = self.subscription_bytes.saturating_add(bytes);
    }

    /// `n` subscriptions with `bytes` bytes of filters went away.
    pub(crate) fn release_subscriptions(&mut self, n: u64, bytes: u64) {
        if n == 0 {
            return;
        }
        self.subscriptions = self.subscriptions.saturating_sub(n);
        self.subscription_bytes = self.subscription_bytes.saturating_sub(bytes);
        self.back_under(Quota::Subscriptions);
    }

    /// A retained message of `bytes` bytes is now held for this principal.
    pub(crate) fn charge_retained(&mut self, bytes: u64) {
        self.retained += 1;
        self.retained_bytes = self.retained_bytes.saturating_add(bytes);
    }

    /// A retained message of `bytes` bytes it held was replaced or removed.
    pub(crate) fn release_retained(&mut self, bytes: u64) {
        self.retained = self.retained.saturating_sub(1);
        self.retained_bytes = self.retained_bytes.saturating_sub(bytes);
        self.back_under(Quota::Retained);
        self.back_under(Quota::RetainedTotal);
    }

    /// A refusal by `q` at `now_s` (seconds from any fixed origin): true when it is to be
    /// logged, i.e. the first of its episode, and not within a minute of the last line.
    pub(crate) fn refused(&mut self, q: Quota, now_s: u64) -> bool {
        let i = q.index();
        let last = self.logged_at[i];
        if self.logged[i] || (last != 0 && now_s + 1 < last + 60) {
            return false;
        }
        self.logged[i] = true;
        self.logged_at[i] = now_s + 1;
        true
    }

    /// The principal gave something back: the next refusal by `q` starts a new episode.
    fn back_under(&mut self, q: Quota) {
        self.logged[q.index()] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_refuses_only_growth_beyond_it() {
        let mut u = Usage::default();
        assert!(u.add_session(2, false) && u.add_session(2, false));
        assert!(!u.add_session(2, false), "a third session");
        assert!(u.add_session(2, true), "a Clean Start over one of its own");
        assert_eq!(u.sessions, 3, "until the replaced one ends");
        u.release_session();
        assert_eq!(u.sessions, 2);

        assert!(u.add_subscription(10, 3, 25));
        assert!(u.add_subscription(10, 3, 25));
        assert!(!u.add_subscription(10, 3, 25), "bytes");
        assert!(u.add_subscription(5, 3, 25));
        assert!(!u.add_subscription(0, 3, 25), "count");
        u.release_subscriptions(1, 10);
        assert_eq!((u.subscriptions, u.subscription_bytes), (2, 15));
        assert!(grows_over(5, 6, 5) && !grows_over(7, 7, 5) && !grows_over(7, 6, 5));
    }

    /// A role's overrides replace the configured quotas they set, and only those; the
    /// account's queued-bytes bound follows them (`Some(0)` is a bound of 0, not "unset").
    #[test]
    fn overrides_replace_only_what_they_set() {
        let cfg = crate::BrokerConfig::default();
        let base = Limits::new(&cfg, &warden_policy::Quotas::default());
        assert_eq!(base.sessions, cfg.max_sessions_per_principal as u64);
        assert_eq!(base.queued_bytes, cfg.max_queued_bytes_per_principal);
        let o = warden_policy::Quotas { max_sessions: Some(7), max_queued_bytes: Some(0), ..Default::default() };
        let l = Limits::new(&cfg, &o);
        assert_eq!((l.sessions, l.queued_bytes), (7, 0));
        assert_eq!((l.subscriptions, l.retained_bytes), (base.subscriptions, base.retained_bytes));
        let a = crate::queue::Account::default();
        assert_eq!(a.max_bytes(123), 123);
        a.set_overrides(o);
        assert_eq!(a.max_bytes(123), 0);
        assert!(a.over(1, 123));
        assert_eq!(a.usage().limits(&cfg), l);
        a.set_overrides(warden_policy::Quotas::default());
        assert_eq!(a.max_bytes(123), 123, "removed: the configured bound again");
    }

    /// Logged once per episode, at most once a minute: a flood of refusals is one line.
    #[test]
    fn a_refusal_is_logged_once_per_episode_and_at_most_once_a_minute() {
        let mut u = Usage::default();
        assert!(u.refused(Quota::Subscriptions, 5));
        assert!((0..1000).all(|_| !u.refused(Quota::Subscriptions, 6)));
        assert!(u.refused(Quota::Retained, 6), "each quota has its own episode");
        u.release_subscriptions(1, 1);
        assert!(!u.refused(Quota::Subscriptions, 30), "a new episode, but within the minute");
        assert!(u.refused(Quota::Subscriptions, 65));
        assert!(!u.refused(Quota::Subscriptions, 200), "the episode goes on");
    }
}
