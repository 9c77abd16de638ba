//! `warden-bench report`: JSON lines from many runs -> Markdown tables of medians and ratios.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::output::Output;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// A figure with a sensible number of significant digits.
fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v.abs() >= 1e4 => format!("{:.0}k", v / 1e3),
        Some(v) if v.abs() >= 1e3 => format!("{:.1}k", v / 1e3),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// How a metric reads.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

struct Metric {
    name: &'static str,
    better: Better,
    get: fn(&Output) -> Option<f64>,
}

fn metrics(scenario: &str) -> Vec<Metric> {
    let rate = Metric { name: "delivered msg/s", better: Better::Higher, get: |o| Some(o.delivered_per_s) };
    let cpu = Metric { name: "broker CPU-s per M delivered", better: Better::Lower, get: |o| o.broker_cpu_s_per_m };
    let p50 = Metric { name: "latency p50 µs", better: Better::Lower, get: |o| o.lat_p50_us };
    let p99 = Metric { name: "latency p99 µs", better: Better::Lower, get: |o| o.lat_p99_us };
    let p999 = Metric { name: "latency p999 µs", better: Better::Lower, get: |o| o.lat_p999_us };
    let lost = Metric {
        name: "lost %",
        better: Better::Lower,
        get: |o| (o.expected > 0).then(|| 100.0 * o.lost as f64 / o.expected as f64),
    };
    let rss = Metric {
        name: "broker peak RSS MiB",
        better: Better::Lower,
        get: |o| o.broker_rss_peak_kib.map(|k| k as f64 / 1024.0),
    };
    match scenario {
        "idle" => vec![
            Metric { name: "connects/s", better: Better::Higher, get: |o| o.connects_per_s },
            Metric { name: "broker RSS per connection, bytes", better: Better::Lower, get: |o| o.rss_per_conn_bytes },
            Metric { name: "broker CPU-s per M connects", better: Better::Lower, get: |o| o.broker_cpu_s_per_m },
            Metric { name: "CONNACK latency p99 µs", better: Better::Lower, get: |o| o.lat_p99_us },
            Metric { name: "connections failed", better: Better::Lower, get: |o| o.connect_failures.map(|f| f as f64) },
            rss,
        ],
        "tls-handshakes" => vec![
            Metric { name: "TLS handshakes/s", better: Better::Higher, get: |o| o.connects_per_s },
            Metric {
                name: "broker CPU µs per handshake",
                better: Better::Lower,
                get: |o| o.broker_cpu_s_per_m, // CPU-s per M = µs each
            },
            Metric { name: "CONNACK latency p50 µs", better: Better::Lower, get: |o| o.lat_p50_us },
            Metric { name: "CONNACK latency p99 µs", better: Better::Lower, get: |o| o.lat_p99_us },
            Metric { name: "connections failed", better: Better::Lower, get: |o| o.connect_failures.map(|f| f as f64) },
        ],
        "tls-resume" => vec![
            Metric { name: "reconnect handshakes/s", better: Better::Higher, get: |o| o.connects_per_s },
            Metric { name: "resumed %", better: Better::Higher, get: |o| o.resumed_pct },
            Metric {
                name: "broker CPU µs per reconnect handshake",
                better: Better::Lower,
                get: |o| o.broker_cpu_s_per_m, // CPU-s per M = µs each
            },
            Metric { name: "broker CPU µs per first (full) handshake", better: Better::Lower, get: |o| o.full_cpu_us },
            Metric { name: "CONNACK latency p99 µs", better: Better::Lower, get: |o| o.lat_p99_us },
            Metric { name: "connections failed", better: Better::Lower, get: |o| o.connect_failures.map(|f| f as f64) },
        ],
        "fleet" => vec![
            rate,
            cpu,
            lost,
            Metric {
                name: "unacknowledged %",
                better: Better::Lower,
                get: |o| o.unacked.filter(|_| o.sent > 0).map(|u| 100.0 * u as f64 / o.sent as f64),
            },
            p50,
            p99,
            p999,
            Metric {
                name: "commands lost %",
                better: Better::Lower,
                get: |o| match (o.commands_sent, o.commands_delivered) {
                    (Some(s), Some(d)) if s > 0 => Some(100.0 * s.saturating_sub(d) as f64 / s as f64),
                    _ => None,
                },
            },
            Metric { name: "command latency p99 µs", better: Better::Lower, get: |o| o.cmd_lat_p99_us },
            Metric {
                name: "broker RSS at the end MiB",
                better: Better::Lower,
                get: |o| o.broker_rss_now_kib.map(|k| k as f64 / 1024.0),
            },
            Metric {
                name: "device connections held",
                better: Better::Higher,
                get: |o| o.connections.map(|c| c as f64),
            },
        ],
        "latency" => vec![p50, p99, p999, cpu, lost, rate],
        _ => vec![rate, cpu, lost, p50, p99, rss],
    }
}

/// The metrics in the summary table (two per case).
fn headline(scenario: &str) -> [usize; 2] {
    match scenario {
        "idle" => [0, 1],
        "latency" => [0, 1],
        "fleet" => [1, 5],
        _ => [0, 1],
    }
}

/// Render the tables for the runs in `inputs`, comparing every broker with `reference`.
pub(crate) fn render(inputs: &[PathBuf], reference: &str) -> Result<String> {
    let mut runs: Vec<Output> = Vec::new();
    for path in inputs {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            match serde_json::from_str::<Output>(line) {
                Ok(o) => runs.push(o),
                Err(e) => eprintln!("warden-bench report: skipping a line of {}: {e}", path.display()),
            }
        }
    }
    let mut cases: Vec<String> = Vec::new();
    let mut brokers: Vec<String> = vec![reference.to_owned()];
    for r in &runs {
        if !cases.contains(&r.case) {
            cases.push(r.case.clone());
        }
        if !brokers.contains(&r.broker) {
            brokers.push(r.broker.clone());
        }
    }
    let others: Vec<&String> = brokers.iter().skip(1).collect();
    let med = |case: &str, broker: &str, m: &Metric| {
        median(runs.iter().filter(|r| r.case == case && r.broker == broker).filter_map(|r| (m.get)(r)).collect())
    };
    // The cells of one metric's row: every broker's median, then the reference's ratio to each peer.
    let cells = |case: &str, m: &Metric| {
        let mine = med(case, reference, m);
        let mut row = String::new();
        for b in &brokers {
            row.push_str(&format!(" {} |", fmt(med(case, b, m))));
        }
        for o in &others {
            row.push_str(&format!(" {} |", ratio(mine, med(case, o, m))));
        }
        row
    };
    let mut s = String::new();

    // Summary: the two key figures per case, medians and ratios.
    s.push_str("#### Summary (medians; ratios are ");
    s.push_str(reference);
    s.push_str(" / peer)\n\n");
    table_header(&mut s, &["case", "metric"], &brokers, &others, reference);
    for case in &cases {
        let scenario = runs.iter().find(|r| &r.case == case).map(|r| r.scenario.clone()).unwrap_or_default();
        let ms = metrics(&scenario);
        for i in headline(&scenario) {
            let m = &ms[i];
            let arrow = match m.better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            };
            s.push_str(&format!("| {case} | {} {arrow} |{}\n", m.name, cells(case, m)));
        }
    }
    s.push_str(
        "\n↑ higher is better, ↓ lower is better: a msg/s ratio above 1 and a CPU-s ratio below 1 favour \
         the reference.\n",
    );

    // Per case: every metric, medians, ratios, and the individual runs.
    for case in &cases {
        let case_runs: Vec<&Output> = runs.iter().filter(|r| &r.case == case).collect();
        let first = case_runs[0];
        let ms = metrics(&first.scenario);
        s.push_str(&format!("\n#### {case}\n\n"));
        if first.scenario == "idle" {
            s.push_str(&format!("{} connections, MQTT {}.\n\n", first.expected, first.protocol));
        } else if first.scenario == "fleet" {
            s.push_str(&format!(
                "{} devices at {} msg/s each (QoS 1, {} B), {} backend subscriber(s), commands to a subset, \
                 MQTT {}; {} s measured window.\n\n",
                first.publishers,
                fmt(first.rate_per_device),
                first.payload,
                first.subscribers,
                first.protocol,
                fmt(Some(first.publish_s))
            ));
        } else {
            s.push_str(&format!(
                "{} publisher(s), {} subscriber(s), QoS {}, {} B payload, MQTT {}.\n\n",
                first.publishers, first.subscribers, first.qos, first.payload, first.protocol
            ));
        }
        table_header(&mut s, &["metric (median)"], &brokers, &others, reference);
        for m in &ms {
            s.push_str(&format!("| {} |{}\n", m.name, cells(case, m)));
        }
        s.push_str("\nRuns (in the order they ran):\n\n");
        for r in &case_runs {
            let lat = match (r.lat_p50_us, r.lat_p99_us) {
                (Some(a), Some(b)) => format!(", p50/p99 {a}/{b} µs"),
                _ => String::new(),
            };
            let what = if r.scenario == "fleet" {
                format!(
                    "{} devices held, sent {} ({} msg/s), delivered {} ({} msg/s), lost {}, unacknowledged {}, \
                     commands {}/{} delivered, broker RSS at the end {} MiB",
                    r.connections.unwrap_or(0),
                    r.sent,
                    fmt(Some(r.sent_per_s)),
                    r.delivered,
                    fmt(Some(r.delivered_per_s)),
                    r.lost,
                    r.unacked.unwrap_or(0),
                    r.commands_delivered.unwrap_or(0),
                    r.commands_sent.unwrap_or(0),
                    fmt(r.broker_rss_now_kib.map(|k| k as f64 / 1024.0))
                )
            } else if r.scenario == "idle" {
                format!(
                    "{} connections, {} connects/s, {} B RSS per connection",
                    r.connections.unwrap_or(0),
                    fmt(r.connects_per_s),
                    fmt(r.rss_per_conn_bytes)
                )
            } else {
                format!(
                    "sent {} ({} msg/s), delivered {} ({} msg/s), lost {}",
                    r.sent,
                    fmt(Some(r.sent_per_s)),
                    r.delivered,
                    fmt(Some(r.delivered_per_s)),
                    r.lost
                )
            };
            let errors = if r.errors.is_empty() { String::new() } else { format!("; errors: {}", r.errors.join("; ")) };
            s.push_str(&format!(
                "- {}: {what}{lat}, broker CPU {} s ({} per M), generator CPU {} s, other load {} CPU-s{errors}\n",
                r.broker,
                fmt(r.broker_cpu_s),
                fmt(r.broker_cpu_s_per_m),
                fmt(Some(r.bench_cpu_s)),
                fmt(r.other_cpu_s)
            ));
        }
    }
    Ok(s)
}

/// A table header: the leading columns, one column per broker, one ratio column per peer.
fn table_header<B: std::fmt::Display, O: std::fmt::Display>(
    s: &mut String,
    leading: &[&str],
    brokers: &[B],
    others: &[O],
    reference: &str,
) {
    s.push('|');
    for c in leading {
        s.push_str(&format!(" {c} |"));
    }
    for b in brokers {
        s.push_str(&format!(" {b} |"));
    }
    for o in others {
        s.push_str(&format!(" {reference}/{o} |"));
    }
    s.push_str("\n|");
    s.push_str(&"---|".repeat(leading.len()));
    s.push_str(&"---:|".repeat(brokers.len() + others.len()));
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_runs_render_like_the_others() {
        let run = |broker: &str, cpu: f64| Output {
            scenario: "fleet".into(),
            case: "fleet 100 devices 0.2/s qos1".into(),
            broker: broker.into(),
            protocol: "3.1.1".into(),
            qos: 1,
            payload: 64,
            publishers: 100,
            subscribers: 3,
            sent: 1000,
            expected: 2000,
            delivered: 1990,
            lost: 10,
            publish_s: 60.0,
            deliver_s: 60.1,
            delivered_per_s: 33.1,
            lat_p99_us: Some(900.0),
            broker_cpu_s: Some(cpu),
            broker_cpu_s_per_m: Some(cpu / 1990.0 * 1e6),
            broker_rss_now_kib: Some(20480),
            connections: Some(100),
            rate_per_device: Some(0.2),
            unacked: Some(5),
            commands_sent: Some(60),
            commands_delivered: Some(60),
            cmd_lat_p99_us: Some(700.0),
            ..Default::default()
        };
        let lines: Vec<String> =
            [run("warden", 0.1), run("mosquitto", 0.4)].iter().map(|o| serde_json::to_string(o).unwrap()).collect();
        let path = std::env::temp_dir().join(format!("wb-fleet-report-{}.jsonl", std::process::id()));
        std::fs::write(&path, lines.join("\n")).unwrap();
        let md = render(std::slice::from_ref(&path), "warden").unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(md.contains("| fleet 100 devices 0.2/s qos1 | broker CPU-s per M delivered ↓ |"), "{md}");
        assert!(md.contains("| fleet 100 devices 0.2/s qos1 | latency p99 µs ↓ |"), "{md}");
        assert!(md.contains("100 devices at 0.20 msg/s each"), "{md}");
        assert!(md.contains("| unacknowledged % | 0.50 | 0.50 |"), "{md}");
        assert!(md.contains("| device connections held | 100 | 100 |"), "{md}");
        assert!(md.contains("commands 60/60 delivered"), "{md}");
        assert!(md.contains("0.25×"), "{md}");
    }
}
