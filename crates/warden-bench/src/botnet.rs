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
pub(crate) struct Params {
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
    /// Attack kinds to run: connect, password, slow, flood, stall, fill-memory, http-slowloris.
    pub kinds: Vec<String>,
    /// The fill-memory attack's account and sizes.
    pub fill: FillMemory,
    /// The HTTP attack's target.
    pub http: HttpAttack,
}

/// Every attack kind, in the order of `--attacks`.
pub(crate) const KINDS: [&str; 7] = ["connect", "password", "slow", "flood", "stall", "fill-memory", "http-slowloris"];

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
pub(crate) async fn run(p: Params, opts: ClientOpts, pid: Option<u32>) -> Result<Output> {
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
    // A legitimate device reconnecting during the attack, once a second from 0.5 s on: how long
    // until it is accepted (retrying refusals such as Server busy, each try bounded by 5 s).
    let probe = {
        let o = opts.clone();
        tokio::spawn(async move {
            let mut times = Vec::new();
            let (mut refused, mut failed) = (0u64, 0u64);
            let mut next = origin + Duration::from_millis(500);
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let t0 = Instant::now();
                let give_up = t0 + Duration::from_secs(5);
                loop {
                    match tokio::time::timeout_at(give_up.into(), proto::connect(&o, "legit-probe")).await {
                        Ok(Ok(mut c)) => {
                            times.push(t0.elapsed());
                            let _ = c.stream.write_all(&[0xE0, 0x00]).await;
                            break;
                        }
                        _ if Instant::now() < give_up => refused += 1,
                        _ => {
                            failed += 1;
                            break;
                        }
                    }
                }
                next = (next + Duration::from_secs(1)).max(Instant::now());
            }
            (times, refused, failed)
        })
    };
    let tally2 = Arc::new(Tally2::default());
    let on_kind = |k: &str| p.attackers > 0 && p.kinds.iter().any(|x| x == k);
    let (on_fill, on_http) = (on_kind("fill-memory"), on_kind("http-slowloris"));
    let n_src = p.source_addrs;
    let mut attack = Vec::new();
    if on_fill {
        // The account's connections from addresses of their own (past the other kinds').
        let base = p.attackers * 5;
        attack.extend(spawn_fill_memory(p.fill.clone(), &opts, move |k| source(base + k, n_src), end, tally2.clone()));
    }
    if on_http {
        attack.extend(spawn_http(&p.http, p.attackers, move |k| source(k, n_src), end, tally2.clone()));
    }
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
    // Broker memory and open descriptors while it runs.
    let mut peak_rss = 0u64;
    let mut peak_fds = 0u64;
    if let Some(pid) = pid {
        while Instant::now() < grace {
            if let Ok(m) = stats::memory(pid) {
                peak_rss = peak_rss.max(m.rss_kib);
            }
            if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                peak_fds = peak_fds.max(d.count() as u64);
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
    let (mut probe_times, probe_refused, probe_failed) = probe.await.unwrap_or_default();
    probe_times.sort();
    let ms = |d: &Duration| d.as_millis() as u64;
    let probe_worst = if probe_failed > 0 { None } else { probe_times.last() };
    let probe_p50 = probe_times.get(probe_times.len() / 2);
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
        // VmHWM is the true peak; the 100-ms samples only bound it from below.
        out.broker_rss_peak_kib = Some(peak_rss.max(m1.rss_kib).max(m1.hwm_kib));
        out.broker_rss_now_kib = Some(m1.rss_kib);
        out.broker_fds_peak = Some(peak_fds);
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
        // The slowest of the reconnects (u64::MAX: one was not accepted within 5 s).
        ("legit_probe_connect_ms".to_owned(), probe_worst.map_or(u64::MAX, ms)),
        ("legit_probe_p50_ms".to_owned(), probe_p50.map_or(u64::MAX, ms)),
        ("legit_probes".to_owned(), probe_times.len() as u64 + probe_failed),
        (
            "legit_probes_over_100ms".to_owned(),
            probe_times.iter().filter(|d| d.as_millis() >= 100).count() as u64 + probe_failed,
        ),
        ("legit_probe_refusals".to_owned(), probe_refused),
    ]));
    if let Some(a) = out.attack.as_mut() {
        a.extend(tally2.entries(on_fill, on_http.then_some(&p.http)));
    }
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

/// "One account fills memory" (`fill-memory`): the attacker's account makes `sessions` offline
/// persistent sessions subscribed to its own topic, then publishes QoS 1 to that topic (flow
/// controlled by its PUBACKs, at most 64 in flight) until `bytes` are written or the run ends.
/// Every message is queued for every offline session: what the broker holds grows `sessions`
/// times faster than what is sent.
#[derive(Clone)]
pub(crate) struct FillMemory {
    /// The attacker's account (user name, password).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Offline persistent sessions.
    pub sessions: usize,
    /// Publishing connections of the account.
    pub publishers: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// Bytes to publish at most (over all publishers).
    pub bytes: u64,
}

/// "HTTP slowloris + hash flood" (`http-slowloris`) against the `[http]` listener: `attackers`
/// tasks each hold up to `slowloris_conns` partial requests from many source addresses (one
/// header line more every second), and `attackers` tasks send token requests with a wrong
/// client secret and admin requests with a wrong admin token, one connection each.
#[derive(Clone)]
pub(crate) struct HttpAttack {
    /// The broker's HTTP listener; `None`: the broker has none (the attack does not apply).
    pub addr: Option<SocketAddr>,
    /// Partial requests held per slowloris task.
    pub slowloris_conns: usize,
    /// The OAuth client id the wrong secrets are sent for.
    pub oauth_client: String,
}

/// What the two attacks added to [`Tally`].
#[derive(Default)]
pub(crate) struct Tally2 {
    fill_sessions: AtomicU64,
    fill_publishes: AtomicU64,
    fill_pubacks: AtomicU64,
    fill_refused: AtomicU64,
    fill_connections_closed: AtomicU64,
    fill_bytes: AtomicU64,
    slowloris_opened: AtomicU64,
    slowloris_connect_failed: AtomicU64,
    slowloris_closed_by_broker: AtomicU64,
    slowloris_open_peak: AtomicU64,
    slowloris_open: AtomicU64,
    wrong_secret_requests: AtomicU64,
    wrong_admin_token_requests: AtomicU64,
    http_401: AtomicU64,
    http_429: AtomicU64,
    http_other_status: AtomicU64,
    http_unanswered: AtomicU64,
}

impl Tally2 {
    fn entries(&self, fill: bool, http: Option<&HttpAttack>) -> Vec<(String, u64)> {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut v = Vec::new();
        if fill {
            v.extend([
                ("fill_sessions".to_owned(), l(&self.fill_sessions)),
                ("fill_publishes_written".to_owned(), l(&self.fill_publishes)),
                ("fill_pubacks".to_owned(), l(&self.fill_pubacks)),
                ("fill_bytes_written".to_owned(), l(&self.fill_bytes)),
                ("fill_refused".to_owned(), l(&self.fill_refused)),
                ("fill_connections_closed".to_owned(), l(&self.fill_connections_closed)),
            ]);
        }
        match http {
            Some(h) if h.addr.is_none() => v.push(("http_not_applicable".to_owned(), 1)),
            Some(_) => v.extend([
                ("slowloris_opened".to_owned(), l(&self.slowloris_opened)),
                ("slowloris_connect_failed".to_owned(), l(&self.slowloris_connect_failed)),
                ("slowloris_closed_by_broker".to_owned(), l(&self.slowloris_closed_by_broker)),
                ("slowloris_open_peak".to_owned(), l(&self.slowloris_open_peak)),
                ("wrong_secret_requests".to_owned(), l(&self.wrong_secret_requests)),
                ("wrong_admin_token_requests".to_owned(), l(&self.wrong_admin_token_requests)),
                ("http_401".to_owned(), l(&self.http_401)),
                ("http_429".to_owned(), l(&self.http_429)),
                ("http_other_status".to_owned(), l(&self.http_other_status)),
                ("http_refused_or_unanswered".to_owned(), l(&self.http_unanswered)),
            ]),
            None => {}
        }
        v
    }
}

/// Start the fill-memory attack (tasks end by `end`).
fn spawn_fill_memory(
    f: FillMemory,
    opts: &ClientOpts,
    src: impl Fn(usize) -> IpAddr,
    end: Instant,
    t: Arc<Tally2>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let v = opts.protocol;
    let mut o = opts.clone();
    o.username = f.username.clone();
    o.password = f.password.clone();
    let topic_root = format!("fill/{}", f.username.as_deref().unwrap_or("anonymous"));
    let mut tasks = Vec::new();
    // The offline sessions first (one task, so that publishing starts once they exist).
    let ready = Arc::new(tokio::sync::Notify::new());
    {
        let mut o = o.clone();
        o.persistent = true;
        o.source = Some(src(0));
        let (t, ready, filter) = (t.clone(), ready.clone(), format!("{topic_root}/#"));
        tasks.push(tokio::spawn(async move {
            for k in 0..f.sessions {
                if Instant::now() >= end {
                    break;
                }
                let Ok(Ok(mut c)) =
                    tokio::time::timeout(Duration::from_secs(5), proto::connect(&o, &format!("fill-sess-{k}"))).await
                else {
                    add(&t.fill_refused);
                    continue;
                };
                if c.subscribe(&o, std::slice::from_ref(&filter), QoS::AtLeastOnce).await.is_ok() {
                    add(&t.fill_sessions);
                }
                let _ = c.stream.write_all(&[0xE0, 0x00]).await; // DISCONNECT: the session stays
            }
            ready.notify_waiters();
            ready.notify_one();
        }));
    }
    let budget = Arc::new(AtomicU64::new(f.bytes));
    for j in 0..f.publishers.max(1) {
        let mut o = o.clone();
        o.source = Some(src(1 + j));
        let (t, ready, budget, topic) = (t.clone(), ready.clone(), budget.clone(), format!("{topic_root}/data"));
        let payload = f.payload;
        tasks.push(tokio::spawn(async move {
            let _ = tokio::time::timeout_at(end.into(), ready.notified()).await;
            while Instant::now() < end && budget.load(Ordering::Relaxed) > 0 {
                let Ok(Ok(mut c)) =
                    tokio::time::timeout(Duration::from_secs(5), proto::connect(&o, &format!("fill-pub-{j}"))).await
                else {
                    add(&t.fill_refused);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let window = usize::from(c.receive_maximum.unwrap_or(64).min(64));
                let Ok(mut batch) = PubBatch::new(v, &topic, QoS::AtLeastOnce, payload, window, j as u32) else {
                    return;
                };
                let (mut pid, mut inflight) = (1u16, 0usize);
                'conn: while Instant::now() < end {
                    let room = window - inflight;
                    if room > 0 && budget.load(Ordering::Relaxed) > 0 {
                        let bytes = batch.fill(room, 0, 0, &mut pid);
                        let n = bytes.len() as u64;
                        match tokio::time::timeout(Duration::from_secs(1), c.stream.write_all(bytes)).await {
                            Ok(Ok(())) => {
                                inflight += room;
                                t.fill_publishes.fetch_add(room as u64, Ordering::Relaxed);
                                t.fill_bytes.fetch_add(n, Ordering::Relaxed);
                                let _ = budget
                                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n)));
                            }
                            Ok(Err(_)) => {
                                add(&t.fill_connections_closed);
                                break 'conn;
                            }
                            Err(_) => {} // not read: the broker holds us back
                        }
                    }
                    // PUBACKs (or the broker's DISCONNECT).
                    c.rbuf.reserve(4096);
                    match tokio::time::timeout(Duration::from_millis(200), c.stream.read_buf(&mut c.rbuf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            add(&t.fill_connections_closed);
                            break 'conn;
                        }
                        _ => {}
                    }
                    while let Ok(Some(fr)) = proto::next_frame(&mut c.rbuf, v) {
                        if matches!(fr, Frame::PubAck { .. }) {
                            inflight = inflight.saturating_sub(1);
                            add(&t.fill_pubacks);
                        }
                    }
                    if budget.load(Ordering::Relaxed) == 0 && inflight == 0 {
                        break 'conn;
                    }
                }
            }
        }));
    }
    tasks
}

/// Read an HTTP status line (bounded by `within`): the status, or `None` when the broker
/// closed the connection or did not answer.
async fn http_status(s: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let deadline = Instant::now() + within;
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    std::str::from_utf8(&buf).ok()?.split(' ').nth(1)?.parse().ok()
}

/// Start the HTTP slowloris and hash-flood tasks (nothing when the broker has no HTTP listener).
fn spawn_http(
    h: &HttpAttack,
    attackers: usize,
    src: impl Fn(usize) -> IpAddr + Clone + Send + 'static,
    end: Instant,
    t: Arc<Tally2>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(to) = h.addr else {
        return Vec::new();
    };
    let mut tasks = Vec::new();
    for i in 0..attackers {
        // Slowloris: hold up to `slowloris_conns` partial requests, spread over the addresses.
        let (t2, src2, per) = (t.clone(), src.clone(), h.slowloris_conns);
        tasks.push(tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            let mut k = 0usize;
            while Instant::now() < end {
                while held.len() < per && Instant::now() < end {
                    k += 1;
                    match tokio::time::timeout(Duration::from_secs(1), open(src2(i * 7 + k), to)).await {
                        Ok(Ok(mut s)) => {
                            if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: warden\r\n").await.is_ok() {
                                add(&t2.slowloris_opened);
                                let now = t2.slowloris_open.fetch_add(1, Ordering::Relaxed) + 1;
                                t2.slowloris_open_peak.fetch_max(now, Ordering::Relaxed);
                                held.push(s);
                            }
                        }
                        _ => {
                            add(&t2.slowloris_connect_failed);
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1).min(end.saturating_duration_since(Instant::now()))).await;
                // One more header line each; those the broker closed are let go (and reopened).
                let before = held.len();
                let mut kept = Vec::with_capacity(before);
                for s in held.drain(..) {
                    let mut b = [0u8; 256];
                    // EOF, an answer (408, 400) or an error: the broker is done with it.
                    let closed = match s.try_read(&mut b) {
                        Ok(_) => true,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    if !closed && s.try_write(b"X-Slow: 1\r\n").is_ok() {
                        kept.push(s);
                    }
                }
                let gone = (before - kept.len()) as u64;
                t2.slowloris_closed_by_broker.fetch_add(gone, Ordering::Relaxed);
                t2.slowloris_open.fetch_sub(gone, Ordering::Relaxed);
                held = kept;
            }
            t2.slowloris_open.fetch_sub(held.len() as u64, Ordering::Relaxed);
        }));
        // Hash flood: wrong OAuth client secrets and wrong admin tokens, alternately.
        let (t2, src2, client) = (t.clone(), src.clone(), h.oauth_client.clone());
        tasks.push(tokio::spawn(async move {
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client}:wrong-secret-{i}"));
            let token_req = format!(
                "POST /oauth/token HTTP/1.1\r\nHost: warden\r\nAuthorization: Basic {basic}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\nConnection: close\r\n\r\n\
                 grant_type=client_credentials"
            );
            let admin_req = format!(
                "GET /admin/users HTTP/1.1\r\nHost: warden\r\nAuthorization: Bearer wrong-admin-token-{i}\r\n\
                 Connection: close\r\n\r\n"
            );
            let mut k = 0usize;
            while Instant::now() < end {
                k += 1;
                let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), open(src2(i * 7 + 3 + k), to)).await
                else {
                    add(&t2.http_unanswered);
                    continue;
                };
                let admin = k.is_multiple_of(2);
                let req = if admin { &admin_req } else { &token_req };
                add(if admin { &t2.wrong_admin_token_requests } else { &t2.wrong_secret_requests });
                if s.write_all(req.as_bytes()).await.is_err() {
                    add(&t2.http_unanswered);
                    continue;
                }
                let left = end.saturating_duration_since(Instant::now()).min(Duration::from_secs(2));
                match http_status(&mut s, left).await {
                    Some(401) => add(&t2.http_401),
                    Some(429) => add(&t2.http_429),
                    Some(_) => add(&t2.http_other_status),
                    None => add(&t2.http_unanswered),
                }
            }
        }));
    }
    tasks
}
