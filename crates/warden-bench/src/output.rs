//! The one JSON line a run prints.

use serde::{Deserialize, Serialize};

use crate::stats::Histogram;

/// One run's figures. Rates exclude the quiet timeout that ends an incomplete run: delivered/s is
/// `delivered` over the time from the first publish to the last delivery.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub(crate) struct Output {
    pub scenario: String,
    /// Grouping key for `report` (scenario and its shape, e.g. "fan-in 4->1 qos0").
    pub case: String,
    pub broker: String,
    pub protocol: String,
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub subscribers: usize,
    /// PUBLISH packets written by the publishers.
    pub sent: u64,
    /// Deliveries expected from what was sent (sent x subscribers matching each message).
    pub expected: u64,
    /// PUBLISH packets received by the subscribers.
    pub delivered: u64,
    /// expected - delivered, when positive.
    pub lost: u64,
    /// delivered - expected, when positive (duplicates).
    pub extra: u64,
    /// Every expected message arrived (the run did not end on the quiet timeout).
    pub complete: bool,
    /// Seconds from the first publish to the last publish written.
    pub publish_s: f64,
    /// Seconds from the first publish to the last delivery.
    pub deliver_s: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    /// Latency samples (publish written -> delivery read), one per delivered message carrying a
    /// timestamp; idle: CONNECT written -> CONNACK read.
    pub lat_samples: u64,
    pub lat_p50_us: Option<f64>,
    pub lat_p99_us: Option<f64>,
    pub lat_p999_us: Option<f64>,
    pub lat_max_us: Option<f64>,
    /// Broker CPU seconds (user + system) during the run (needs --pid).
    pub broker_cpu_s: Option<f64>,
    /// Broker CPU seconds per million delivered messages (idle: per million connections).
    pub broker_cpu_s_per_m: Option<f64>,
    /// Broker peak RSS (VmHWM), KiB.
    pub broker_rss_peak_kib: Option<u64>,
    /// Broker RSS at the end of the run (VmRSS), KiB.
    pub broker_rss_now_kib: Option<u64>,
    /// Botnet: the most file descriptors the broker held at once (/proc/PID/fd, every 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_fds_peak: Option<u64>,
    /// CPU seconds the generator itself used during the run.
    pub bench_cpu_s: f64,
    /// CPU seconds everything else on the machine used during the run (needs --pid): other load
    /// that disturbed the measurement.
    pub other_cpu_s: Option<f64>,
    /// Seconds over which the CPU figures were taken (the whole run, quiet timeout included).
    #[serde(default)]
    pub wall_s: f64,
    /// Idle: connections established; fleet: device connections held at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Idle: connection attempts that failed; fleet: devices that failed to connect or were dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_failures: Option<u64>,
    /// Idle: successful CONNECT/CONNACK handshakes per second (fleet: during the ramp-up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connects_per_s: Option<f64>,
    /// Idle: broker RSS growth per connection (VmRSS with the connections open minus before), bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn_bytes: Option<f64>,
    /// Fleet: telemetry messages per second per device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_device: Option<f64>,
    /// Fleet: publications whose PUBACK did not arrive within the acknowledgement timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unacked: Option<u64>,
    /// Fleet: commands published by the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands_sent: Option<u64>,
    /// Fleet: commands received by the devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands_delivered: Option<u64>,
    /// Fleet: command latency (backend publish written -> device read), p50 and p99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd_lat_p50_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd_lat_p99_us: Option<f64>,
    /// TLS handshakes: whether the client presented a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<bool>,
    /// TLS resume: the share of reconnect handshakes that resumed the session, %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_pct: Option<f64>,
    /// TLS resume: broker CPU per first (full) handshake of a device, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_cpu_us: Option<f64>,
    /// The first few errors the connections met.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Botnet: what the attackers did, by kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<std::collections::BTreeMap<String, u64>>,
    /// Compromised: seconds from the rogue device's turn to its quarantine (or ban) event;
    /// none when it was not caught before the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_quarantine_s: Option<f64>,
    /// Compromised: the watch rule that caught it, and its action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_rule: Option<String>,
    /// Compromised: alerts about the other devices (false positives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbour_alerts: Option<u64>,
}

impl Output {
    /// Latency fields from a histogram of nanoseconds.
    pub(crate) fn set_latency(&mut self, h: &Histogram) {
        let us = |v: Option<u64>| v.map(|ns| (ns as f64 / 100.0).round() / 10.0);
        self.lat_samples = h.len();
        self.lat_p50_us = us(h.quantile(0.5));
        self.lat_p99_us = us(h.quantile(0.99));
        self.lat_p999_us = us(h.quantile(0.999));
        self.lat_max_us = us(h.max());
    }

    /// Record the machine's other load: `host` busy seconds minus broker and generator.
    pub(crate) fn set_other_cpu(&mut self, host_busy_s: f64) {
        if let Some(b) = self.broker_cpu_s {
            self.other_cpu_s = Some(round((host_busy_s - b - self.bench_cpu_s).max(0.0), 2));
        }
    }

    /// Fill in the labels.
    pub(crate) fn finish(mut self, broker: String, case: Option<String>, mqtt5: bool) -> Output {
        self.broker = broker;
        self.protocol = if mqtt5 { "5.0" } else { "3.1.1" }.to_owned();
        self.case = case.unwrap_or_else(|| match self.scenario.as_str() {
            "fan-in" => format!("fan-in {}->1 qos{}", self.publishers, self.qos),
            "fan-out" => format!("fan-out 1->{} qos{}", self.subscribers, self.qos),
            "shared" => format!("shared 1->{} members qos{}", self.subscribers, self.qos),
            "pairs" => format!("pairs {}x qos{}", self.publishers, self.qos),
            "latency" => format!("latency qos{}", self.qos),
            "idle" => format!(
                "idle {}{}",
                self.connections.unwrap_or(0),
                match self.client_cert {
                    None => "",
                    Some(false) => " TLS",
                    Some(true) => " mTLS",
                }
            ),
            "fleet" => format!("fleet {} devices {}/s qos1", self.publishers, self.rate_per_device.unwrap_or(0.0)),
            "tls-handshakes" | "tls-resume" => {
                format!("{}{}", self.scenario, if self.client_cert == Some(true) { " mTLS" } else { "" })
            }
            "compromised" => {
                format!("compromised {} devices {}/s", self.publishers, self.rate_per_device.unwrap_or(0.0))
            }
            "botnet" | "botnet-baseline" => format!("{} {} pairs", self.scenario, self.publishers),
            other => other.to_owned(),
        });
        self
    }
}

/// Round to `digits` decimals (keeps the JSON short).
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (v * k).round() / k
}
