//! `warden admin watch …`: the behaviour watch's rules, alerts and restrictions
//! (docs/watch.md), through `/admin/watch/...`.

use serde_json::{json, Value};

use super::{enc, Api};

/// `warden admin watch …`.
#[derive(clap::Subcommand, Debug)]
pub(super) enum WatchCmd {
    /// List the rules in force (the defaults while the store has none of its own).
    Rules,
    /// Add or replace a rule.
    Put {
        /// Rule id.
        id: String,
        /// auth_failures | connects | publishes | publish_bytes | subscriptions | new_topics |
        /// new_networks (counts per window).
        #[arg(long)]
        metric: String,
        /// Fires above this count per window.
        #[arg(long)]
        above: Option<f64>,
        /// Fires above this multiple of the principal's baseline.
        #[arg(long)]
        baseline_times: Option<f64>,
        /// alert | throttle | quarantine | ban
        #[arg(long)]
        action: String,
        /// Throttle: messages/s per connection.
        #[arg(long)]
        throttle_rate: Option<u32>,
        /// Throttle, quarantine, ban: lifted after this many seconds (default: by an operator).
        #[arg(long)]
        duration: Option<u64>,
        /// Keep the rule but never fire it.
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a rule.
    Remove {
        /// Rule id.
        id: String,
    },
    /// Set the topic filters a quarantined principal keeps besides its baseline's topics
    /// (`%c`, `%u`, `%i` substituted), e.g. `devices/%c/#`; none given: none.
    QuarantineTopics {
        /// Topic filters.
        filters: Vec<String>,
    },
    /// The newest alerts, newest first.
    Alerts {
        /// At most this many, 1 to 10000 [default: 100].
        #[arg(long)]
        limit: Option<u32>,
        /// Print them as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// The quarantines and throttles in force.
    Restrictions,
    /// Lift a principal's quarantine and throttle (bans: `warden admin ban remove username NAME`).
    Lift {
        /// user | certificate | token | fallback
        kind: String,
        /// The principal's name.
        name: String,
    },
}

fn num(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string()
    }
}

/// Run one `warden admin watch` command.
pub(super) fn run(api: &Api, c: &WatchCmd) -> anyhow::Result<()> {
    match c {
        WatchCmd::Rules => {
            let v = api.call("GET", "/admin/watch/rules", None)?;
            println!(
                "watch {}{}",
                if v["enabled"] == true { "enabled" } else { "disabled ([watch] enabled = false)" },
                if v["defaults"] == true { "; default rules" } else { "" }
            );
            for r in v["rules"].as_array().into_iter().flatten() {
                println!(
                    "  {}\t{}\tabove={}\tbaseline_times={}\t{}{}{}",
                    r["id"].as_str().unwrap_or(""),
                    r["metric"].as_str().unwrap_or(""),
                    num(&r["above"]),
                    num(&r["baseline_times"]),
                    r["action"].as_str().unwrap_or(""),
                    r["duration_secs"].as_u64().map(|d| format!("\tfor {d}s")).unwrap_or_default(),
                    if r["enabled"] == false { "\tdisabled" } else { "" },
                );
            }
            let q: Vec<&str> =
                v["quarantine_topics"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if !q.is_empty() {
                println!("quarantine topics: {}", q.join(" "));
            }
        }
        WatchCmd::Put { id, metric, above, baseline_times, action, throttle_rate, duration, disabled } => {
            let mut body = json!({"metric": metric, "action": action, "enabled": !disabled});
            let set = |b: &mut Value, k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    b[k] = v;
                }
            };
            set(&mut body, "above", above.map(|v| json!(v)));
            set(&mut body, "baseline_times", baseline_times.map(|v| json!(v)));
            set(&mut body, "throttle_rate", throttle_rate.map(|v| json!(v)));
            set(&mut body, "duration_secs", duration.map(|v| json!(v)));
            api.call("PUT", &format!("/admin/watch/rules/{}", enc(id)), Some(body))?;
            println!("watch rule {id:?} saved");
        }
        WatchCmd::Remove { id } => {
            api.call("DELETE", &format!("/admin/watch/rules/{}", enc(id)), None)?;
            println!("watch rule {id:?} removed");
        }
        WatchCmd::QuarantineTopics { filters } => {
            api.call("PUT", "/admin/watch/quarantine-topics", Some(json!({"quarantine_topics": filters})))?;
            println!("quarantine topics set");
        }
        WatchCmd::Alerts { limit, json } => {
            let path = match limit {
                Some(n) => format!("/admin/watch/alerts?limit={n}"),
                None => "/admin/watch/alerts".into(),
            };
            for a in api.call("GET", &path, None)?.as_array().into_iter().flatten() {
                if *json {
                    println!("{a}");
                } else {
                    println!(
                        "{}\t{}:{}\t{}\t{}={}\tbaseline={}\t{}",
                        a["at"],
                        a["principal_kind"].as_str().unwrap_or(""),
                        crate::logsafe::Escaped(a["principal"].as_str().unwrap_or("")),
                        a["rule"].as_str().unwrap_or(""),
                        a["metric"].as_str().unwrap_or(""),
                        a["value"],
                        num(&a["baseline"]),
                        a["action"].as_str().unwrap_or(""),
                    );
                }
            }
        }
        WatchCmd::Restrictions => {
            for r in api.call("GET", "/admin/watch/restrictions", None)?.as_array().into_iter().flatten() {
                println!(
                    "{}:{}\t{}\trule={}\tsince={}\tuntil={}{}",
                    r["principal_kind"].as_str().unwrap_or(""),
                    crate::logsafe::Escaped(r["principal"].as_str().unwrap_or("")),
                    r["action"].as_str().unwrap_or(""),
                    r["rule"].as_str().unwrap_or(""),
                    r["since"],
                    num(&r["until"]),
                    r["rate"].as_u64().map(|n| format!("\trate={n}/s")).unwrap_or_default(),
                );
            }
        }
        WatchCmd::Lift { kind, name } => {
            api.call("DELETE", &format!("/admin/watch/restrictions/{}/{}", enc(kind), enc(name)), None)?;
            println!("lifted the restrictions of {kind} {name:?}");
        }
    }
    Ok(())
}
