//! `botnet`: a few legitimate clients publish and subscribe at a fixed rate while many
//! connections from many loopback source addresses (127.0.1.1, 127.0.1.2, …) attack the broker:
//! connect floods, wrong-password floods, slow CONNECTs, publish floods and subscribers that
//! never read. Reports the legitimate clients' latency and loss and the broker's peak RSS; run it
//! with `--no-attack` for the baseline. Bounded: a fixed number of attacker tasks, each holding at
//! most one connection at a time, every I/O under a timeout, everything stops at `--duration`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::{Bytes, BytesMut};
use mqtt_codec::{Connect, Packet, Properties, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::output::{round, Output};
use crate::proto::{self, ClientOpts, Frame, PubBatch};
use crate::stats::{self, Histogram};

/// Botnet-run parameters.
pub struct Params {
    /// Seconds of legitimate traffic (the attack runs over the same window).
    pub duration: f64,
    /// Legitimate publisher/subscriber pairs.
    pub pairs: usize,
    /// Messages per second per legitimate publisher.
    pub rate: f64,
    /// Attacker tasks per attack kind (0 with --no-attack).
    pub attackers: usize,
    /// Source addresses the attackers spread over (127.0.1.1 onwards).
    pub source_addrs: usize,
    /// Payload bytes of the publish flood.
    pub flood_payload: usize,
    /// Attack kinds to run: connect, password, slow, flood, stall.
    pub kinds: Vec<String>,
}

/// What the attackers did, by kind.
#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    connects_refused: AtomicU64,
    bad_passwords: AtomicU64,
    slow_connects: AtomicU64,
    flood_publishes: AtomicU64,
    flood_closed: AtomicU64,
    stalled_subscribers: AtomicU64,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn source(i: usize, n: usize) -> IpAddr {
    let k = i % n.max(1);
    IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (k / 250) as u8, 1 + (k % 250) as u8))
}

async fn open(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(SocketAddr::new(src, 0))?;
    s.connect(to).await
}

fn connect_bytes(v: Protocol, id: &str, user: Option<&str>, password: Option<&str>) -> BytesMut {
    let c = Connect {
        protocol: v,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: id.to_owned(),
        will: None,
        username: user.map(str::to_owned),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    };
    let mut b = BytesMut::new();
    Packet::Connect(Box::new(c)).encode(v, &mut b);
    b
}

/// Read until the broker answers or closes (bounded by `within`); true when it answered.
async fn answered(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(within, s.read(&mut b)).await, Ok(Ok(n)) if n > 0)
}

/// Run the scenario.
pub async fn run(p: Params, opts: ClientOpts, pid: Option<u32>) -> Result<Output> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let v = opts.protocol;
    let to = opts.addr;
    let user = opts.username.clone();
    let password = opts.password.clone();
    let tally = Arc::new(Tally::default());
    let origin = Instant::now();
    let window = Duration::from_secs_f64(p.duration);
    let end = origin + window;
    let mem0 = pid.map(stats::memory).transpose()?;

    // Every legitimate client is connected, and its subscriber read, before the attack starts:
    // what is measured is their traffic under attack. (Connecting during the attack is the
    // probe below; connecting publishers one after the other under attack, with nobody yet
    // reading the subscribers, measured the harness's own wait, not the broker.)
    let mut subs = Vec::new();
    let mut pub_clients = Vec::new();
    for i in 0..p.pairs {
        let mut c = proto::connect(&opts, &format!("legit-sub-{i}")).await?;
        c.subscribe(&opts, &[format!("legit/{i}")], QoS::AtLeastOnce).await?;
        subs.push(c);
        pub_clients.push(proto::connect(&opts, &format!("legit-pub-{i}")).await?);
    }
    let grace = end + Duration::from_secs(2);
    let readers = read_legit(subs, v, origin, grace);
    // A legitimate client (re)connecting in the middle of the attack: how long until it is
    // accepted, and how many refusals (e.g. Server busy) it met first.
    let probe = {
        let o = opts.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((origin + window / 2).into()).await;
            let t0 = Instant::now();
            let mut refused = 0u64;
            while Instant::now() < end {
                match tokio::time::timeout(Duration::from_secs(5), proto::connect(&o, "legit-probe")).await {
                    Ok(Ok(_)) => return (Some(t0.elapsed()), refused),
                    _ => refused += 1,
                }
            }
            (None, refused)
        })
    };
    let mut attack = Vec::new();
    for i in 0..p.attackers {
        let n_src = p.source_addrs;
        let src = move |k: usize| source(i * 5 + k, n_src);
        let on = |k: &str| p.kinds.iter().any(|x| x == k);
        let t = tally.clone();
        // 1. Connect flood: CONNECT (valid credentials), then close at once.
        let (u, pw) = (user.clone(), password.clone());
        let (on_connect, on_password, on_slow, on_flood, on_stall) =
            (on("connect"), on("password"), on("slow"), on("flood"), on("stall"));
        attack.push(tokio::spawn(async move {
            while on_connect && Instant::now() < end {
                let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), open(src(0), to)).await else {
                    add(&t.connects_refused);
                    continue;
                };
                let _ = s.write_all(&connect_bytes(v, &format!("cf-{i}"), u.as_deref(), pw.as_deref())).await;
                add(&t.connects);
                if !answered(&mut s, Duration::from_secs(1)).await {
                    add(&t.connects_refused);
                }
            }
        }));
        // 2. Wrong-password flood against the legitimate user name.
        let t = tally.clone();
        let u = user.clone().unwrap_or_else(|| "admin".into());
        attack.push(tokio::spawn(async move {
            while on_password && Instant::now() < end {
                let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), open(src(1), to)).await else {
                    continue;
                };
                let _ = s.write_all(&connect_bytes(v, &format!("bp-{i}"), Some(&u), Some("not-the-password"))).await;
                add(&t.bad_passwords);
                answered(&mut s, Duration::from_secs(2)).await;
            }
        }));
        // 3. Slow CONNECT: two bytes, then nothing until the broker gives up (or the end).
        let t = tally.clone();
        attack.push(tokio::spawn(async move {
            while on_slow && Instant::now() < end {
                let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), open(src(2), to)).await else {
                    continue;
                };
                let _ = s.write_all(&[0x10, 0x20]).await;
                add(&t.slow_connects);
                let left = end.saturating_duration_since(Instant::now());
                answered(&mut s, left).await;
            }
        }));
        // 4. Publish flood (valid credentials), reconnecting when closed.
        let t = tally.clone();
        let mut o = opts.clone();
        o.source = Some(src(3));
        let payload = p.flood_payload;
        attack.push(tokio::spawn(async move {
            while on_flood && Instant::now() < end {
                let Ok(mut c) = proto::connect(&o, &format!("flood-{i}")).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(mut batch) = PubBatch::new(v, &format!("flood/{i}"), QoS::AtMostOnce, payload, 64, 0) else {
                    return;
                };
                let mut pid = 1;
                while Instant::now() < end {
                    let bytes = batch.fill(64, 0, 0, &mut pid);
                    match tokio::time::timeout(Duration::from_secs(1), c.stream.write_all(bytes)).await {
                        Ok(Ok(())) => {
                            t.flood_publishes.fetch_add(64, Ordering::Relaxed);
                        }
                        Ok(Err(_)) => {
                            add(&t.flood_closed);
                            break;
                        }
                        Err(_) => {} // throttled: the broker is not reading us
                    }
                }
            }
        }));
        // 5. A subscriber to everything that never reads.
        let t = tally.clone();
        let mut o = opts.clone();
        o.source = Some(src(4));
        attack.push(tokio::spawn(async move {
            if !on_stall {
                return;
            }
            if let Ok(mut c) = proto::connect(&o, &format!("stall-{i}")).await {
                if c.subscribe(&o, &["flood/#".into(), "legit/#".into()], QoS::AtLeastOnce).await.is_ok() {
                    add(&t.stalled_subscribers);
                }
                let left = end.saturating_duration_since(Instant::now());
                tokio::time::sleep(left).await;
                drop(c);
            }
        }));
    }

    // Legitimate publishers at a fixed rate, QoS 1, timestamped and numbered payloads.
    let sent = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    for (i, mut c) in pub_clients.into_iter().enumerate() {
        let sent = sent.clone();
        let rate = p.rate;
        pubs.push(tokio::spawn(async move {
            let mut batch = PubBatch::new(v, &format!("legit/{i}"), QoS::AtLeastOnce, 32, 1, i as u32)?;
            let mut pid = 1;
            let mut seq = 1;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut acks = vec![0u8; 4096];
            while Instant::now() < end {
                tick.tick().await;
                let now_ns = origin.elapsed().as_nanos() as u64;
                c.stream.write_all(batch.fill(1, now_ns, seq, &mut pid)).await?;
                seq += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                let _ = c.stream.try_read(&mut acks); // PUBACKs: drained, not counted
            }
            anyhow::Ok(())
        }));
    }
    // Broker memory while it runs.
    let mut peak_rss = 0u64;
    if let Some(pid) = pid {
        while Instant::now() < grace {
            if let Ok(m) = stats::memory(pid) {
                peak_rss = peak_rss.max(m.rss_kib);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut errors = Vec::new();
    for t in pubs {
        if let Ok(Err(e)) = t.await {
            errors.push(format!("legitimate publisher: {e:#}"));
        }
    }
    let mut hist = Histogram::default();
    let mut delivered = 0;
    for r in readers {
        let (h, n) = r.await?;
        hist.merge(&h);
        delivered += n;
    }
    for a in attack {
        a.abort();
    }
    let (probe_time, probe_refused) = probe.await.unwrap_or((None, 0));
    let sent = sent.load(Ordering::Relaxed);
    let mem1 = pid.map(stats::memory).transpose()?;
    let mut out = Output {
        scenario: if p.attackers > 0 { "botnet" } else { "botnet-baseline" }.into(),
        publishers: p.pairs,
        subscribers: p.pairs,
        qos: 1,
        payload: 32,
        sent,
        expected: sent,
        delivered,
        lost: sent.saturating_sub(delivered),
        extra: delivered.saturating_sub(sent),
        complete: delivered >= sent,
        publish_s: round(window.as_secs_f64(), 3),
        deliver_s: round(window.as_secs_f64(), 3),
        sent_per_s: round(sent as f64 / window.as_secs_f64(), 0),
        delivered_per_s: round(delivered as f64 / window.as_secs_f64(), 0),
        wall_s: round(origin.elapsed().as_secs_f64(), 3),
        errors,
        ..Default::default()
    };
    out.set_latency(&hist);
    if let (Some(_), Some(m1)) = (mem0, mem1) {
        out.broker_rss_peak_kib = Some(peak_rss.max(m1.rss_kib));
        out.broker_rss_now_kib = Some(m1.rss_kib);
    }
    let t = &tally;
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    out.attack = Some(BTreeMap::from([
        ("connects".to_owned(), l(&t.connects)),
        ("connects_refused_or_unanswered".to_owned(), l(&t.connects_refused)),
        ("bad_passwords".to_owned(), l(&t.bad_passwords)),
        ("slow_connects".to_owned(), l(&t.slow_connects)),
        ("flood_publishes_written".to_owned(), l(&t.flood_publishes)),
        ("flood_connections_closed".to_owned(), l(&t.flood_closed)),
        ("stalled_subscribers".to_owned(), l(&t.stalled_subscribers)),
        // u64::MAX: the probe was not accepted before the end.
        ("legit_probe_connect_ms".to_owned(), probe_time.map_or(u64::MAX, |d| d.as_millis() as u64)),
        ("legit_probe_refusals".to_owned(), probe_refused),
    ]));
    Ok(out)
}

/// Legitimate subscribers: latency and count until `grace` (the end plus two seconds).
fn read_legit(
    subs: Vec<proto::Client>,
    v: Protocol,
    origin: Instant,
    grace: Instant,
) -> Vec<tokio::task::JoinHandle<(Histogram, u64)>> {
    let mut readers = Vec::new();
    for mut c in subs {
        readers.push(tokio::spawn(async move {
            let mut hist = Histogram::default();
            let mut got = 0u64;
            let mut acks = Vec::new();
            loop {
                while let Ok(Some(f)) = proto::next_frame(&mut c.rbuf, v) {
                    if let Frame::Publish { packet_id, stamp, qos, .. } = f {
                        got += 1;
                        if let Some(s) = stamp {
                            hist.record((origin.elapsed().as_nanos() as u64).saturating_sub(s));
                        }
                        if qos > 0 {
                            proto::put_puback(&mut acks, packet_id);
                        }
                    }
                }
                if !acks.is_empty() {
                    let _ = c.stream.write_all(&acks).await;
                    acks.clear();
                }
                c.rbuf.reserve(64 * 1024);
                let left = grace.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, c.stream.read_buf(&mut c.rbuf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => break,
                }
            }
            (hist, got)
        }));
    }
    readers
}
