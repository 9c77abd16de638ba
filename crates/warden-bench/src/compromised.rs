//! `compromised`: the behaviour watch's check (issue 23, docs/watch.md). N devices, each its
//! own principal (`--device-prefix` + index, one password), publish QoS 1 at `--rate` to
//! `bench/<i>/t` while the broker learns their baselines; after `--learn` seconds device 0
//! turns rogue: it publishes at `--factor` × its rate (QoS 0) and probes a new topic
//! `probe/<k>` `--probe-rate` times a second. An observer (the `--username` account, which must
//! be allowed `$warden/events/watch/#`) waits for the watch's quarantine (or ban) event for
//! device 0; a subscriber counts every neighbour's messages. Reports the time from the turn to
//! the event, the rule that fired, alerts about neighbours (false positives) and the
//! neighbours' lost messages. Bounded: everything stops `--deadline` seconds after the turn, or
//! `--after` seconds after the event.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::{Bytes, BytesMut};
use mqtt_codec::{Packet, Publish, QoS, TopicName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::output::{round, Output};
use crate::proto::{self, ClientOpts};

/// `compromised` parameters.
pub(crate) struct Params {
    /// Devices (device 0 turns rogue).
    pub devices: usize,
    /// QoS 1 messages per second per device.
    pub rate: f64,
    /// Seconds of normal traffic before device 0 turns.
    pub learn: f64,
    /// The rogue's rate, as a multiple of `rate`.
    pub factor: f64,
    /// New topics the rogue probes per second.
    pub probe_rate: f64,
    /// Seconds after the turn the run gives up waiting for the quarantine.
    pub deadline: f64,
    /// Seconds the neighbours go on after the quarantine.
    pub after: f64,
    /// Device user names: this prefix and the index.
    pub prefix: String,
    /// The devices' password.
    pub device_password: Option<String>,
}

fn encode(p: &Packet, opts: &ClientOpts) -> BytesMut {
    let mut b = BytesMut::new();
    p.encode(opts.protocol, &mut b);
    b
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: Bytes) -> Result<Packet> {
    Ok(Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic).map_err(|e| anyhow!("topic {topic}: {e}"))?,
        packet_id,
        properties: Default::default(),
        payload,
    }))
}

/// Run the scenario.
pub(crate) async fn run(p: Params, opts: ClientOpts, pid: Option<u32>) -> Result<Output> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cpu0 = pid.map(crate::stats::cpu_seconds).transpose()?;
    let mut events = proto::connect(&opts, "compromised-events").await?;
    events.subscribe(&opts, &["$warden/events/watch/#".to_owned()], QoS::AtMostOnce).await?;
    let mut sink = proto::connect(&opts, "compromised-sink").await?;
    sink.subscribe(&opts, &["bench/+/t".to_owned()], QoS::AtLeastOnce).await?;
    let mut devices = Vec::new();
    for i in 0..p.devices {
        let mut o = opts.clone();
        o.username = Some(format!("{}{i}", p.prefix));
        o.password = p.device_password.clone().or_else(|| opts.password.clone());
        devices.push((proto::connect(&o, &format!("{}{i}-c", p.prefix)).await?, o));
    }
    let origin = Instant::now();
    let turn = origin + Duration::from_secs_f64(p.learn);
    let give_up = turn + Duration::from_secs_f64(p.deadline);
    // Set when the neighbours stop (the deadline, or `after` past the quarantine).
    let stop = Arc::new(AtomicBool::new(false));
    let stop_at = Arc::new(parking_stop::StopAt::new(give_up));
    let sent = Arc::new(AtomicU64::new(0));
    let rogue_sent = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / p.rate);
    let mut tasks = Vec::new();
    for (i, (client, o)) in devices.into_iter().enumerate() {
        let (stop, stop_at, sent, rogue_sent, probes) =
            (stop.clone(), stop_at.clone(), sent.clone(), rogue_sent.clone(), probes.clone());
        let (factor, probe_rate) = (p.factor, p.probe_rate);
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = client.stream.into_split();
            // PUBACKs (and anything else) are read and dropped.
            let drain = tokio::spawn(async move {
                let mut b = vec![0u8; 64 * 1024];
                while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {}
            });
            let topic = format!("bench/{i}/t");
            let mut every = tokio::time::interval(interval);
            let mut seq = 0u64;
            let mut probe_credit = 0.0f64;
            let mut rogue_credit = 0.0f64;
            let mut last = Instant::now();
            loop {
                every.tick().await;
                let now = Instant::now();
                if stop.load(Ordering::Relaxed) || now >= stop_at.get() {
                    break;
                }
                if i == 0 && now >= turn {
                    // Rogue: `factor` messages per tick (QoS 0) and the probes due.
                    let dt = now.saturating_duration_since(last).as_secs_f64();
                    rogue_credit += factor;
                    probe_credit += probe_rate * dt;
                    let mut out = BytesMut::new();
                    while rogue_credit >= 1.0 {
                        rogue_credit -= 1.0;
                        let Ok(pk) = publish(&topic, QoS::AtMostOnce, 0, Bytes::from_static(b"flood")) else { break };
                        out.extend_from_slice(&encode(&pk, &o));
                        rogue_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    while probe_credit >= 1.0 {
                        probe_credit -= 1.0;
                        let k = probes.fetch_add(1, Ordering::Relaxed);
                        let Ok(pk) = publish(&format!("probe/{k}"), QoS::AtMostOnce, 0, Bytes::from_static(b"?"))
                        else {
                            break;
                        };
                        out.extend_from_slice(&encode(&pk, &o));
                    }
                    last = now;
                    if wr.write_all(&out).await.is_err() {
                        break;
                    }
                    continue;
                }
                last = now;
                seq += 1;
                let payload = Bytes::from(format!("{i}:{seq}"));
                let Ok(pk) = publish(&topic, QoS::AtLeastOnce, (seq % 65_535 + 1) as u16, payload) else { break };
                if wr.write_all(&encode(&pk, &o)).await.is_err() {
                    break;
                }
                if i != 0 {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = wr.write_all(&proto::DISCONNECT).await;
            drain.abort();
        }));
    }
    // The observer: the first quarantine or ban of device 0; alerts about anyone else.
    let rogue = format!("{}0", p.prefix);
    let after = Duration::from_secs_f64(p.after);
    let (o2, stop_at2) = (opts.clone(), stop_at.clone());
    let observer = tokio::spawn(async move {
        let mut caught: Option<(Duration, String, String)> = None;
        let mut neighbour_alerts = 0u64;
        loop {
            let left = stop_at2.get().saturating_duration_since(Instant::now());
            let Ok(Ok(pk)) = tokio::time::timeout(left, events.next_packet(o2.protocol)).await else { break };
            let Packet::Publish(m) = pk else { continue };
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let who = v["principal"].as_str().unwrap_or("");
            let action = v["action"].as_str().unwrap_or("");
            if who == rogue {
                if caught.is_none() && matches!(action, "quarantine" | "ban") {
                    let at = Instant::now().saturating_duration_since(turn);
                    caught = Some((at, v["rule"].as_str().unwrap_or("").to_owned(), action.to_owned()));
                    stop_at2.set(Instant::now() + after);
                }
            } else {
                neighbour_alerts += 1;
            }
        }
        (caught, neighbour_alerts)
    });
    let (caught, neighbour_alerts) = observer.await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // The neighbours' messages: every one expected at the sink (QoS 1, acknowledged).
    let expected = sent.load(Ordering::Relaxed);
    let mut delivered = 0u64;
    let quiet = Duration::from_secs(2);
    let mut out = Vec::new();
    while delivered < expected {
        let Ok(Ok(pk)) = tokio::time::timeout(quiet, sink.next_packet(opts.protocol)).await else { break };
        if let Packet::Publish(m) = pk {
            if m.qos != QoS::AtMostOnce {
                out.clear();
                proto::put_puback(&mut out, m.packet_id);
                let _ = sink.stream.write_all(&out).await;
            }
            if !m.topic.as_str().starts_with("bench/0/") {
                delivered += 1;
            }
        }
    }
    let wall = origin.elapsed().as_secs_f64();
    let mut o = Output {
        scenario: "compromised".into(),
        qos: 1,
        publishers: p.devices,
        subscribers: 1,
        sent: expected,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        extra: delivered.saturating_sub(expected),
        complete: delivered == expected,
        wall_s: round(wall, 2),
        rate_per_device: Some(p.rate),
        ..Default::default()
    };
    if let (Some(pid), Some(c0)) = (pid, cpu0) {
        o.broker_cpu_s = Some(round(crate::stats::cpu_seconds(pid)? - c0, 3));
    }
    o.time_to_quarantine_s = caught.as_ref().map(|c| round(c.0.as_secs_f64(), 3));
    o.watch_rule = caught.as_ref().map(|c| format!("{} ({})", c.1, c.2));
    o.neighbour_alerts = Some(neighbour_alerts);
    let mut attack = BTreeMap::new();
    attack.insert("rogue_publishes".to_owned(), rogue_sent.load(Ordering::Relaxed));
    attack.insert("rogue_probes".to_owned(), probes.load(Ordering::Relaxed));
    o.attack = Some(attack);
    Ok(o)
}

/// A deadline several tasks read and one moves earlier.
mod parking_stop {
    use std::sync::Mutex;
    use std::time::Instant;

    pub(crate) struct StopAt(Mutex<Instant>);

    impl StopAt {
        pub(crate) fn new(at: Instant) -> StopAt {
            StopAt(Mutex::new(at))
        }
        pub(crate) fn get(&self) -> Instant {
            *self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        /// Move it earlier (never later).
        pub(crate) fn set(&self, at: Instant) {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if at < *g {
                *g = at;
            }
        }
    }
}
