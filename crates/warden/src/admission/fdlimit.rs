//! File descriptors: the process limit and how the listeners share it.
//!
//! - At start (`warden serve`), [`raise`] lifts the `RLIMIT_NOFILE` soft limit to the hard limit.
//! - [`plan`] divides what the limit leaves, after [`RESERVE`] descriptors for the store, the log,
//!   outgoing look-up / JWKS connections and the runtime, and one per listening socket, between
//!   the listener kinds: the MQTT listeners (TCP, TLS, WebSocket; they share `[limits]
//!   max_connections`) and the `[http]` listener (`[http] max_connections`). When the configured
//!   caps fit, they stand. When they do not, the start-up log warns once, naming the listeners
//!   and the numbers, and the caps are clamped so that the HTTP listener cannot take descriptors
//!   the MQTT listeners need: HTTP keeps at most what MQTT's cap leaves, but never less than a
//!   fixed share ([`HTTP_SHARE`]) of the budget; MQTT gets the rest.
//! - [`AcceptErrors`]: a failed `accept` (descriptors exhausted, say) backs the listener off
//!   briefly and is logged at most once per [`ACCEPT_LOG_INTERVAL`], with the number of
//!   failures not logged.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::admission::limits::LogOnce;

/// Descriptors kept out of the connection budget: the store, log files, outgoing HTTP
/// connections (look-up service, JWKS), the runtime's own (epoll, eventfd, signal pipe), stdio.
pub const RESERVE: u64 = 64;

/// When the caps exceed the budget, the HTTP listener may always hold 1/`HTTP_SHARE` of the
/// budget (so that the admin API and health checks stay reachable), and more only where the
/// MQTT cap leaves room.
pub const HTTP_SHARE: usize = 8;

/// How often a failing `accept` is logged per listener at most.
pub const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long a listener waits after a failed `accept` before it accepts again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the listeners ask for.
#[derive(Debug, Clone)]
pub struct Demand {
    /// The MQTT listeners, by name (`mqtt://127.0.0.1:1883`, …); they share one cap.
    pub mqtt_listeners: Vec<String>,
    /// `[limits] max_connections`: open MQTT connections over all MQTT listeners.
    pub mqtt_max: usize,
    /// The `[http]` listener's name and `max_connections`, when there is one.
    pub http: Option<(String, usize)>,
}

/// What each listener kind may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdPlan {
    /// The soft `RLIMIT_NOFILE` the plan was made for.
    pub limit: u64,
    /// Descriptors left for connections (limit − reserve − listening sockets).
    pub budget: u64,
    /// Open MQTT connections at most, over all MQTT listeners.
    pub mqtt: usize,
    /// Open HTTP connections at most.
    pub http: Option<usize>,
    /// The start-up warning when the configured caps did not fit (logged once).
    pub warning: Option<String>,
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Divide the descriptors a soft limit of `limit` leaves between the listener kinds (a pure
/// function: see the module documentation for the rule).
pub fn plan(limit: u64, d: &Demand) -> FdPlan {
    let sockets = d.mqtt_listeners.len() as u64 + u64::from(d.http.is_some());
    let budget = limit.saturating_sub(RESERVE).saturating_sub(sockets);
    let mqtt_want = if d.mqtt_listeners.is_empty() { 0 } else { d.mqtt_max };
    let http_want = d.http.as_ref().map(|(_, n)| *n);
    let total = mqtt_want.saturating_add(http_want.unwrap_or(0));
    let b = to_usize(budget);
    // RLIM_INFINITY: nothing to divide.
    if total <= b || limit == u64::MAX {
        return FdPlan { limit, budget, mqtt: d.mqtt_max, http: http_want, warning: None };
    }
    // Over budget: HTTP keeps what MQTT does not need, or at least its fixed share; MQTT the rest.
    let http = http_want.map(|want| {
        let share = (b / HTTP_SHARE).max(1);
        want.min(share.max(b.saturating_sub(mqtt_want))).max(1)
    });
    let mqtt = d.mqtt_max.min(b.saturating_sub(http.unwrap_or(0))).max(1);
    let mut warning = format!(
        "the file descriptor limit ({limit}; `warden serve` raises the soft limit to the hard one: raise that \
         with LimitNOFILE= or ulimit -Hn) \
         leaves {budget} descriptors for connections ({RESERVE} are kept for the store, the log and \
         outgoing connections, {sockets} for the listening sockets), fewer than the configured caps: "
    );
    if !d.mqtt_listeners.is_empty() {
        warning.push_str(&format!(
            "MQTT listeners {} share [limits] max_connections {} -> {mqtt}",
            d.mqtt_listeners.join(", "),
            d.mqtt_max
        ));
    }
    if let (Some((name, want)), Some(cap)) = (&d.http, http) {
        if !d.mqtt_listeners.is_empty() {
            warning.push_str("; ");
        }
        warning.push_str(&format!("HTTP listener {name} [http] max_connections {want} -> {cap}"));
    }
    if budget == 0 {
        warning.push_str(" (the limit is below the reserve: connections may fail to be accepted)");
    }
    FdPlan { limit, budget, mqtt, http, warning: Some(warning) }
}

/// The soft and hard `RLIMIT_NOFILE`.
pub fn current() -> std::io::Result<(u64, u64)> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit: the soft limit before and after.
pub fn raise() -> std::io::Result<(u64, u64)> {
    let (before, _) = current()?;
    let after = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok((before, after))
}

/// Is `e` the process or the system running out of descriptors (EMFILE, ENFILE)?
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    // EMFILE 24, ENFILE 23 (Linux, the BSDs and macOS alike).
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// A listener's failed `accept` calls: logged once per interval, then a short back-off.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: String,
    log: LogOnce<()>,
}

impl AcceptErrors {
    /// For the listener named `listener` (`mqtt://…`, `http://…`).
    pub fn new(listener: String) -> AcceptErrors {
        AcceptErrors { listener, log: LogOnce::new(ACCEPT_LOG_INTERVAL, 1) }
    }

    /// Should this failure be logged now (`Some(failures not logged since the last line)`)?
    pub fn check(&self, now: Instant) -> Option<u64> {
        self.log.check((), now)
    }

    /// Log `e` (at most once per interval), then wait [`ACCEPT_BACKOFF`] before the next accept
    /// (a pending connection stays in the backlog instead of the loop spinning on the error).
    pub async fn failed(&self, e: &std::io::Error) {
        if let Some(suppressed) = self.check(Instant::now()) {
            let listener = self.listener.as_str();
            if out_of_descriptors(e) {
                warn!(
                    listener,
                    error = %e,
                    suppressed,
                    "accept failed: out of file descriptors (logged once per 10 s; see the connection caps in the start-up log)"
                );
            } else {
                warn!(listener, error = %e, suppressed, "accept failed (logged once per 10 s)");
            }
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(mqtt: &[&str], mqtt_max: usize, http: Option<usize>) -> Demand {
        Demand {
            mqtt_listeners: mqtt.iter().map(|s| s.to_string()).collect(),
            mqtt_max,
            http: http.map(|n| ("http://127.0.0.1:8080".to_string(), n)),
        }
    }

    #[test]
    fn caps_that_fit_stand_without_a_warning() {
        let p = plan(1_048_576, &demand(&["mqtt://127.0.0.1:1883"], 100_000, Some(1024)));
        assert_eq!((p.mqtt, p.http, p.warning), (100_000, Some(1024), None));
        assert_eq!(p.budget, 1_048_576 - RESERVE - 2);
        // Exactly at the budget: still fits.
        let p = plan(64 + 2 + 300, &demand(&["mqtt://a"], 200, Some(100)));
        assert_eq!((p.mqtt, p.http, p.warning.is_none()), (200, Some(100), true));
    }

    #[test]
    fn defaults_over_a_small_limit_keep_http_to_its_share_and_give_mqtt_the_rest() {
        // ulimit -n 256, one MQTT listener and HTTP, default caps (100000 and 1024).
        let p = plan(256, &demand(&["mqtt://127.0.0.1:1883"], 100_000, Some(1024)));
        assert_eq!(p.budget, 256 - 64 - 2);
        assert_eq!(p.http, Some(190 / HTTP_SHARE));
        assert_eq!(p.mqtt, 190 - 190 / HTTP_SHARE);
        assert_eq!(p.mqtt + p.http.unwrap_or(0), 190, "together they use the budget, no more");
        let w = p.warning.expect("warned");
        for part in ["256", "190", "mqtt://127.0.0.1:1883", "100000 -> 167", "http://127.0.0.1:8080", "1024 -> 23"] {
            assert!(w.contains(part), "{part:?} missing from {w}");
        }
    }

    #[test]
    fn http_gets_what_mqtt_leaves_but_never_what_mqtt_needs() {
        // MQTT asks little: HTTP may have the rest of the budget (more than its share).
        let p = plan(64 + 2 + 1000, &demand(&["mqtt://a"], 100, Some(5000)));
        assert_eq!((p.mqtt, p.http), (100, Some(900)));
        assert!(p.warning.is_some());
        // HTTP asks little: it keeps its own cap and MQTT is clamped to what is left.
        let p = plan(64 + 2 + 1000, &demand(&["mqtt://a"], 100_000, Some(10)));
        assert_eq!((p.mqtt, p.http), (990, Some(10)));
        // Both ask a lot: HTTP is held to its fixed share.
        let p = plan(64 + 2 + 8000, &demand(&["mqtt://a"], 100_000, Some(100_000)));
        assert_eq!((p.mqtt, p.http), (7000, Some(1000)));
    }

    #[test]
    fn several_mqtt_listeners_share_one_cap_and_are_named() {
        let names = ["mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883", "ws://127.0.0.1:8083/mqtt"];
        let p = plan(1024, &demand(&names, 100_000, None));
        assert_eq!(p.budget, 1024 - 64 - 3);
        assert_eq!((p.mqtt, p.http), (957, None));
        let w = p.warning.expect("warned");
        assert!(names.iter().all(|n| w.contains(n)), "{w}");
        assert!(!w.contains("HTTP"), "{w}");
    }

    #[test]
    fn a_limit_below_the_reserve_still_admits_one_of_each_and_says_so() {
        let p = plan(32, &demand(&["mqtt://a"], 100, Some(100)));
        assert_eq!((p.budget, p.mqtt, p.http), (0, 1, Some(1)));
        assert!(p.warning.expect("warned").contains("below the reserve"));
    }

    #[test]
    fn an_unlimited_soft_limit_is_no_overflow() {
        let p = plan(u64::MAX, &demand(&["mqtt://a"], usize::MAX, Some(usize::MAX)));
        assert_eq!(p.warning, None);
        assert_eq!((p.mqtt, p.http), (usize::MAX, Some(usize::MAX)));
    }

    #[test]
    fn only_an_http_listener() {
        let p = plan(64 + 1 + 100, &demand(&[], 100_000, Some(1024)));
        assert_eq!(p.http, Some(100));
        assert!(!p.warning.expect("warned").contains("MQTT"));
    }

    #[test]
    fn accept_failures_are_logged_once_per_interval() {
        let a = AcceptErrors::new("mqtt://127.0.0.1:1883".into());
        let t0 = Instant::now();
        assert_eq!(a.check(t0), Some(0));
        assert_eq!(a.check(t0 + Duration::from_millis(50)), None);
        assert_eq!(a.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(a.check(t0 + ACCEPT_LOG_INTERVAL), Some(2), "two failures were not logged");
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(24)));
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(23)));
        assert!(!out_of_descriptors(&std::io::Error::from_raw_os_error(104)));
    }
}
