//! `GET /metrics` (SPEC §9): the Prometheus text exposition format 0.0.4, rendered at scrape
//! time from the counters the broker already keeps (`$SYS`'s, the limit counters, the
//! security counters of `warden_core::metrics`, the store's commit histogram). Every family
//! has its `# HELP` and `# TYPE` from the first scrape, with zero values where nothing
//! happened yet. No label carries a client id, user name or topic (cardinality, and
//! identities do not leave the broker this way): labels are the listener, QoS, method,
//! result, action and limit names, all fixed sets.
//!
//! Hand-written rather than a metrics crate: the values live in the broker's own atomics (the
//! hot path keeps one batched counter per connection), so a registry would be a second copy;
//! the `prometheus-client` crate writes OpenMetrics, which Debian's `promtool check metrics`
//! rejects for counters. The format is a few lines per family.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use warden_core::metrics::{AuthMethod, Denied, Histogram};
use warden_core::Broker;

use crate::admission::bans::BanList;
use crate::admission::guard::Guard;
use crate::conn::BoundListener;

/// What `/metrics` reads.
pub struct Metrics {
    /// The broker core (counters, gauges).
    pub broker: Arc<Broker>,
    /// The durable store, when persistence is on.
    pub store: Option<Arc<warden_store::Store>>,
    /// The admin ban list.
    pub bans: Arc<BanList>,
    /// Automatic bans.
    pub guard: Arc<Guard>,
    /// The MQTT listeners, with their open-connection counts.
    pub listeners: Vec<BoundListener>,
    /// Where idle connections park (none when parking is off).
    pub parking: Option<Arc<crate::conn::park::ParkingLot>>,
    /// This node's side of the cluster, on a node of one: its families are rendered then.
    pub cluster: Option<Arc<warden_cluster::Cluster>>,
}

/// A writer of families.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, help: &str, h: Option<&Histogram>) {
        self.family(name, "histogram", help);
        let (cumulative, count, sum) = h.map(Histogram::snapshot).unwrap_or(([0; 12], 0, 0.0));
        for (bound, c) in Histogram::BOUNDS.iter().zip(cumulative) {
            self.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], c);
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count);
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl Metrics {
    /// The exposition, now.
    pub fn render(&self) -> String {
        let b = &self.broker;
        let st = &b.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let mut o = Out(String::with_capacity(8 * 1024));

        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            o.family("warden_runtime_worker_threads", "gauge", "Threads that run connections (`worker_threads`).");
            o.sample("warden_runtime_worker_threads", &[], rt.metrics().num_workers());
        }
        o.family("warden_connections", "gauge", "Network connections open now, by listener.");
        for l in &self.listeners {
            o.sample("warden_connections", &[("listener", &l.label())], l.open.listener.load(Ordering::Relaxed));
        }
        o.family(
            "warden_connections_parked",
            "gauge",
            "Idle plain-TCP connections parked now (no task; idle_park_after).",
        );
        o.sample("warden_connections_parked", &[], self.parking.as_ref().map_or(0, |p| p.parked()));
        o.family(
            "warden_connection_resumes_total",
            "counter",
            "Parked connections resumed (by input, a delivery, a deadline or an end signal).",
        );
        o.sample("warden_connection_resumes_total", &[], self.parking.as_ref().map_or(0, |p| p.resumes()));
        o.family("warden_clients_connected", "gauge", "MQTT clients connected to a session now.");
        o.sample("warden_clients_connected", &[], load(&st.clients_connected));
        o.family("warden_connections_accepted_total", "counter", "CONNECTs accepted.");
        o.sample("warden_connections_accepted_total", &[], load(&st.connections_total));
        o.family("warden_connections_refused_total", "counter", "CONNECTs refused (any reason).");
        o.sample("warden_connections_refused_total", &[], load(&st.connections_refused));

        o.family("warden_messages_received_total", "counter", "PUBLISH packets received from clients, by QoS.");
        for (q, c) in st.messages_received.iter().enumerate() {
            o.sample("warden_messages_received_total", &[("qos", &q.to_string())], load(c));
        }
        o.family("warden_messages_sent_total", "counter", "PUBLISH packets sent to clients, by QoS.");
        for (q, c) in st.messages_sent.iter().enumerate() {
            o.sample("warden_messages_sent_total", &[("qos", &q.to_string())], load(c));
        }
        o.family("warden_messages_dropped_total", "counter", "Deliveries dropped because a queue bound was reached.");
        o.sample("warden_messages_dropped_total", &[], load(&st.messages_dropped));

        o.family(
            "warden_auth_attempts_total",
            "counter",
            "Authentication attempts, by method and result (refusals for a full broker limit are not attempts).",
        );
        for m in AuthMethod::ALL {
            let (ok, refused) = st.security.auth_attempts(m);
            o.sample("warden_auth_attempts_total", &[("method", m.as_str()), ("result", "ok")], ok);
            o.sample("warden_auth_attempts_total", &[("method", m.as_str()), ("result", "refused")], refused);
        }
        o.family("warden_authz_denied_total", "counter", "Operations refused by authorization, by action.");
        for a in Denied::ALL {
            o.sample("warden_authz_denied_total", &[("action", a.as_str())], st.security.denials(a));
        }
        o.family("warden_tls_handshake_failures_total", "counter", "TLS handshakes that failed or timed out.");
        o.sample("warden_tls_handshake_failures_total", &[], load(&st.security.tls_handshake_failures));
        o.family("warden_limit_hits_total", "counter", "Times an abuse limit or quota refused or throttled, by limit.");
        for (name, v) in st.limits.snapshot() {
            o.sample("warden_limit_hits_total", &[("limit", name)], v);
        }

        let now = crate::clock::unix_now();
        let admin_bans = self.bans.in_force(now);
        let auto_bans = self.guard.auto_bans(std::time::Instant::now()).len();
        o.family(
            "warden_bans_active",
            "gauge",
            "Bans in force now: by an administrator and automatic (failed logins).",
        );
        o.sample("warden_bans_active", &[("kind", "admin")], admin_bans);
        o.sample("warden_bans_active", &[("kind", "auto")], auto_bans);
        o.family("warden_sessions", "gauge", "Sessions held (connected and persistent offline ones).");
        o.sample("warden_sessions", &[], b.session_count());
        o.family("warden_subscriptions", "gauge", "Subscriptions held across sessions.");
        o.sample("warden_subscriptions", &[], b.subscription_count());
        o.family("warden_retained_messages", "gauge", "Retained messages held.");
        o.sample("warden_retained_messages", &[], b.retained_count());
        o.family("warden_retained_bytes", "gauge", "Bytes (topic + payload) of the retained messages.");
        o.sample("warden_retained_bytes", &[], b.retained_bytes());
        o.family("warden_queued_bytes", "gauge", "Bytes queued for delivery across sessions.");
        o.sample("warden_queued_bytes", &[], b.queued_bytes());
        o.histogram(
            "warden_store_commit_seconds",
            "Duration of the durable store's commits (write and, when durable, fsync).",
            self.store.as_deref().map(warden_store::Store::commit_seconds),
        );
        if let Some(c) = &self.cluster {
            let cs = c.stats();
            for (name, help, v) in [
                ("warden_cluster_forwarded_total", "Messages sent to other nodes.", &cs.forwarded),
                ("warden_cluster_received_total", "Messages from other nodes routed here.", &cs.received),
                (
                    "warden_cluster_dropped_total",
                    "Messages not sent to other nodes (backlog full, NATS refused).",
                    &cs.dropped,
                ),
                ("warden_cluster_malformed_total", "Messages from other nodes that did not decode.", &cs.malformed),
                (
                    "warden_cluster_provisional_claims_total",
                    "Client ids granted on a replica's copy of the registry while its leader was elected.",
                    &cs.provisional_claims,
                ),
                (
                    "warden_cluster_provisional_lost_total",
                    "Provisional claims found to be another node's once the registry had a leader (connection ended).",
                    &cs.provisional_lost,
                ),
            ] {
                o.family(name, "counter", help);
                o.sample(name, &[], load(v));
            }
            o.family("warden_cluster_ready", "gauge", "1 while this node is ready as a node of the cluster (/readyz).");
            o.sample("warden_cluster_ready", &[], u8::from(c.ready()));
        }
        o.0
    }
}

/// `[http] metrics_token_hash`: when set, `GET /metrics` needs `Authorization: Bearer TOKEN`.
/// The token is verified against its argon2id hash within the HTTP share of the hashing budget;
/// the SHA-256 of the last token that verified is kept so that a scraper (every 15 s, say) does
/// not cost a slow hash per scrape (compared in constant time).
pub struct MetricsAuth {
    /// The token's hash; none: no authentication.
    pub hash: Option<String>,
    /// The hashing budget shared with MQTT.
    pub budget: Arc<warden_http::HashBudget>,
    accepted: parking_lot::Mutex<Option<[u8; 32]>>,
}

impl MetricsAuth {
    /// The check for `hash` (none: open).
    pub fn new(hash: Option<String>, budget: Arc<warden_http::HashBudget>) -> MetricsAuth {
        MetricsAuth { hash, budget, accepted: parking_lot::Mutex::new(None) }
    }

    /// May a request with these headers read the metrics?
    pub async fn allows(&self, headers: &axum::http::HeaderMap) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let Some(hash) = &self.hash else { return true };
        let Some(token) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && t.len() <= 4096)
        else {
            return false;
        };
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if self.accepted.lock().is_some_and(|a| bool::from(a.ct_eq(&digest))) {
            return true;
        }
        let hash = hash.clone();
        let ok = self
            .budget
            .run(warden_http::HashClass::Http, move || warden_policy::password::verify_hash(&hash, token.as_bytes()))
            .await
            .unwrap_or(false);
        if ok {
            *self.accepted.lock() = Some(digest);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut o = Out(String::new());
        o.sample("x_total", &[("l", "v\"")], 3);
        assert_eq!(o.0, "x_total{l=\"v\\\"\"} 3\n");
    }
}
