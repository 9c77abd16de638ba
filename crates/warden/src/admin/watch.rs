//! The behaviour watch's actions (docs/watch.md): every `[watch] window` the server calls
//! [`Engine::tick`], which closes each watched principal's window ([`crate::watch`]), evaluates
//! the rules ([`warden_policy::watch`]) and applies what fired: an alert (a log line, an event
//! message on `$warden/events/watch/<kind>/<name>`, kept for `GET /admin/watch/alerts`), a
//! throttle, a quarantine (applied to live connections through the authorizer swap) or a ban
//! (the operator's ban list, the principal's connections ended with DISCONNECT 0x98).
//! Windows that fire nothing are added to the principal's baseline.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqtt_codec::{QoS, TopicName};
use tracing::warn;
use warden_core::message::Message;
use warden_http::admin::{AdminBackend, Ban, BanKind};
use warden_policy::watch::{Baseline, WatchAction, WatchRule, Window};

use crate::admin::backend::Backend;
use crate::logsafe::Escaped;
use crate::watch::{Alert, Restriction, Tracked, Watch};

/// The actor the watch's own actions are written to the admin audit trail as.
pub const AUDIT_ACTOR: &str = "behaviour-watch";

/// The topic prefix of the watch's event messages.
pub const EVENTS_PREFIX: &str = "$warden/events/watch/";

/// The event topic of a principal: `$warden/events/watch/<kind>/<name>`, with `/`, `+`, `#`,
/// `%` and U+0000 of the name percent-encoded (one level, never a wildcard).
pub fn event_topic(kind: &str, name: &str) -> String {
    let mut t = format!("{EVENTS_PREFIX}{kind}/");
    for c in name.chars() {
        match c {
            '/' | '+' | '#' | '%' | '\0' => t.push_str(&format!("%{:02X}", c as u32)),
            c => t.push(c),
        }
    }
    t
}

/// Alerts POSTed to `[watch] webhook_url`, in the background (blocking pool), a few at a time.
pub struct Webhook {
    url: String,
    agent: ureq::Agent,
    in_flight: Arc<AtomicUsize>,
    dropped: AtomicU64,
}

/// Webhook requests in flight at most; more alerts meanwhile are not sent (counted, logged).
const WEBHOOK_IN_FLIGHT: usize = 4;

impl Webhook {
    /// A webhook for `url` (validated by the configuration).
    pub fn new(url: &str) -> Webhook {
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(std::time::Duration::from_secs(5))
            .try_proxy_from_env(false)
            .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
            .build();
        Webhook { url: url.to_owned(), agent, in_flight: Default::default(), dropped: AtomicU64::new(0) }
    }

    fn send(&self, body: Vec<u8>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= WEBHOOK_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(dropped = n, "behaviour watch: webhook busy, alerts not sent to it");
            }
            return;
        }
        let req = self.agent.post(&self.url).set("Content-Type", "application/json");
        let in_flight = self.in_flight.clone();
        rt.spawn_blocking(move || {
            match req.send_bytes(&body) {
                Ok(_) => {}
                Err(ureq::Error::Status(code, _)) => warn!(status = code, "behaviour watch: webhook refused the alert"),
                Err(ureq::Error::Transport(t)) => {
                    warn!(error = %Escaped(&t.kind().to_string()), "behaviour watch: webhook unreachable")
                }
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Applies the watch's rules.
pub struct Engine {
    /// The sensors and state.
    pub watch: Arc<Watch>,
    /// Bans go through the admin backend (persisted, shared with a cluster, live connections
    /// ended), as an operator's would.
    pub backend: Arc<Backend>,
    /// `[watch] webhook_url`.
    pub webhook: Option<Webhook>,
}

impl Engine {
    /// Close the window: evaluate every watched principal, apply what fired, lift what
    /// expired.
    pub fn tick(&self) {
        let now = crate::clock::unix_now();
        self.watch.expire(now);
        let policy = self.watch.policy();
        for (t, w, base) in self.watch.close_window() {
            let fired = policy.evaluate(&w, base.as_ref());
            if fired.is_empty() {
                self.watch.learn(&t, &w);
                continue;
            }
            for rule in fired {
                self.act(&t, rule, &w, base.as_ref(), now);
            }
        }
    }

    fn act(&self, t: &Tracked, rule: &WatchRule, w: &Window, base: Option<&Baseline>, now: u64) {
        let key = &t.key;
        let until = rule.duration_secs.map(|d| now.saturating_add(d));
        let restriction =
            |action| Restriction { action, rule: rule.id.clone(), since: now, until, rate: rule.throttle_rate };
        match rule.action {
            WatchAction::Alert => {
                if self.watch.recently_alerted(t, &rule.id, Instant::now()) {
                    return;
                }
            }
            WatchAction::Throttle => {
                if self.watch.restricted(key, "throttle") {
                    return;
                }
                self.watch.throttle(key, restriction("throttle"));
            }
            WatchAction::Quarantine => {
                if self.watch.restricted(key, "quarantine") {
                    return;
                }
                self.watch.quarantine(key, restriction("quarantine"));
            }
            WatchAction::Ban => {
                let ban = Ban {
                    kind: BanKind::Username,
                    value: key.1.to_string(),
                    expires_at: until,
                    reason: Some(format!("behaviour watch: rule '{}'", rule.id)),
                };
                if let Err(e) = self.backend.add_ban(ban) {
                    warn!(error = %e, "behaviour watch: the ban could not be added");
                }
            }
        }
        let m = rule.metric;
        let alert = Alert {
            at: now,
            principal_kind: key.0.as_str(),
            principal: key.1.to_string(),
            rule: rule.id.clone(),
            metric: m.as_str(),
            value: w.get(m),
            baseline: base.map(|b| b.mean[m.index()]),
            action: rule.action.as_str(),
        };
        if rule.action != WatchAction::Alert {
            // A change of standing: in the admin audit trail, by the watch itself.
            let mut r = warden_http::admin::audit::AuditRecord::now(
                AUDIT_ACTOR,
                "local",
                &format!("watch.{}", rule.action.as_str()),
                &format!("{}:{}", alert.principal_kind, alert.principal),
            );
            r.detail = serde_json::json!({"rule": rule.id, "metric": alert.metric, "value": alert.value,
                "baseline": alert.baseline, "until": until});
            self.backend.audit(&r);
        }
        warn!(principal_kind = alert.principal_kind, principal = %Escaped(&*key.1), rule = %Escaped(&rule.id),
            metric = alert.metric, value = alert.value, baseline = alert.baseline, action = alert.action,
            "behaviour watch: rule fired");
        self.publish(&alert);
        self.watch.record(alert);
    }

    /// The alert as a QoS 0 message from the broker itself on the principal's event topic.
    fn publish(&self, alert: &Alert) {
        let Ok(topic) = TopicName::new(&event_topic(alert.principal_kind, &alert.principal)) else { return };
        let body = serde_json::to_vec(alert).unwrap_or_default();
        if let Some(w) = &self.webhook {
            w.send(body.clone());
        }
        self.backend.broker.route(
            Arc::new(Message {
                topic,
                payload: Bytes::from(body),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: None,
                expires_at: None,
                origin: None,
                persisted: Default::default(),
            }),
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_topics_are_one_level_per_name() {
        assert_eq!(event_topic("user", "dev-1"), "$warden/events/watch/user/dev-1");
        assert_eq!(event_topic("user", "a/b+#%"), "$warden/events/watch/user/a%2Fb%2B%23%25");
        assert!(TopicName::new(&event_topic("user", "a\0b")).is_ok());
    }
}
