//! Fleet (issue 24): many quiet devices, QoS 1 telemetry to a few backends, commands back.
//!
//! N devices connect (clean session, bounded connect rate and handshakes in flight, spread over
//! many loopback source addresses), each subscribes to its own `devices/<id>/commands` at QoS 1.
//! Backends subscribe first: a `$share/backend/devices/+/telemetry` group (default 2 members) and
//! plain subscribers of `devices/+/telemetry` (default 1); a commander publishes QoS 1 commands.
//! That ramp-up is not measured. Then, in a window of D seconds, every device publishes QoS 1
//! telemetry to `devices/<id>/telemetry` at a low jittered rate and waits for each PUBACK (one
//! not acknowledged within `--ack-timeout` is counted as unacknowledged), and the commander sends
//! commands to a subset of the devices. After the window the run waits for the last deliveries
//! and acknowledgements (at most the quiet timeout after the last one), then reads the broker's
//! CPU and RSS. Broker CPU is counted from the start of the window to that point.
//!
//! Each telemetry delivery counts once per matching subscription: once for the shared group
//! (one member gets it) and once per plain backend. Latency is publish written (device) ->
//! delivery read (backend), from the send time in the payload (one process, one clock).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::BytesMut;
use mqtt_codec::{Packet, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::output::{round, Output};
use crate::proto::{self, ClientOpts, Frame, PubBatch};
use crate::stats::{self, Histogram};

/// Fleet parameters.
#[derive(Clone, Debug)]
pub(crate) struct Params {
    pub devices: usize,
    /// Telemetry messages per second per device.
    pub rate: f64,
    /// Each interval is the period times 1 ± up to this fraction (uniform).
    pub jitter: f64,
    /// The measured window.
    pub duration: Duration,
    pub payload: usize,
    /// Members of the `$share/backend/...` group (0: no group).
    pub shared_members: usize,
    /// Plain subscribers of `devices/+/telemetry`.
    pub plain_backends: usize,
    /// Fraction of the devices that receive commands.
    pub command_fraction: f64,
    /// Seconds between two commands to the same commanded device.
    pub command_interval: f64,
    pub ack_timeout: Duration,
    /// Connection handshakes in flight at once during the ramp-up.
    pub concurrency: usize,
    /// Connection attempts per second during the ramp-up.
    pub connect_rate: f64,
    /// Loopback source addresses the devices spread over (0: one per 1,000 devices).
    pub source_addrs: usize,
    pub quiet: Duration,
}

/// The client id of device `i` of a run.
pub(crate) fn device_id(token: &str, i: usize) -> String {
    format!("wb{token}d{i}")
}

/// Where a device publishes its telemetry.
pub(crate) fn telemetry_topic(id: &str) -> String {
    format!("devices/{id}/telemetry")
}

/// Where a device receives its commands.
pub(crate) fn commands_topic(id: &str) -> String {
    format!("devices/{id}/commands")
}

/// The backends' filters: `members` times the shared group, then `plain` plain subscribers.
pub(crate) fn backend_filters(members: usize, plain: usize) -> Vec<String> {
    let mut v = vec!["$share/backend/devices/+/telemetry".to_owned(); members];
    v.extend(std::iter::repeat_n("devices/+/telemetry".to_owned(), plain));
    v
}

/// Deliveries each telemetry message should cause: one for the shared group, one per plain
/// subscriber.
pub(crate) fn deliveries_per_message(members: usize, plain: usize) -> u64 {
    u64::from(members > 0) + plain as u64
}

/// The devices that receive commands: `ceil(devices × fraction)` of them, evenly spread.
pub(crate) fn commanded(devices: usize, fraction: f64) -> Vec<usize> {
    if devices == 0 || fraction.is_nan() || fraction <= 0.0 {
        return Vec::new();
    }
    let n = ((devices as f64 * fraction.min(1.0)).ceil() as usize).clamp(1, devices);
    (0..n).map(|k| k * devices / n).collect()
}

/// Source addresses to use for `devices` devices when none are given: one per 1,000 (each
/// address has ~28,000 ephemeral ports; a fresh one per thousand leaves room for TIME_WAIT).
pub(crate) fn auto_sources(devices: usize) -> usize {
    (devices / 1000 + 1).min(250 * 250)
}

/// The source address of device `i` of `n` addresses: 127.0.1.1, 127.0.1.2, ..., 127.0.1.250,
/// 127.0.2.1, ... (botnet uses the same range; they do not run together).
pub(crate) fn source_addr(i: usize, n: usize) -> IpAddr {
    let k = i % n.max(1);
    IpAddr::V4(Ipv4Addr::new(127, (k / (250 * 250)) as u8, 1 + ((k / 250) % 250) as u8, 1 + (k % 250) as u8))
}

/// A uniform number in [0, 1) for (seed, device, step): splitmix64, so that a device's schedule
/// is reproducible without a random number generator crate.
pub(crate) fn unit(seed: u64, device: u64, step: u64) -> f64 {
    let mut z = seed ^ device.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The jittered schedule of one device: the first publication at a uniform phase within the
/// first period (devices do not start together), then intervals of the period × (1 ± jitter).
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    seed: u64,
    device: u64,
    period_ns: f64,
    jitter: f64,
    step: u64,
    next_ns: u64,
}

impl Schedule {
    pub(crate) fn new(seed: u64, device: u64, rate: f64, jitter: f64) -> Schedule {
        let period_ns = 1e9 / rate;
        let first = (period_ns * unit(seed, device, 0)) as u64;
        Schedule { seed, device, period_ns, jitter: jitter.clamp(0.0, 1.0), step: 1, next_ns: first }
    }

    /// Nanoseconds from the start of the window to the next publication.
    pub(crate) fn next_ns(&self) -> u64 {
        self.next_ns
    }

    /// Move to the publication after the next one.
    pub(crate) fn advance(&mut self) {
        let u = unit(self.seed, self.device, self.step);
        self.step += 1;
        let interval = self.period_ns * (1.0 + self.jitter * (2.0 * u - 1.0));
        self.next_ns += interval.max(1.0) as u64;
    }
}

/// A device's publications awaiting their PUBACK, oldest first: packet identifier, send time.
#[derive(Default, Debug)]
pub(crate) struct Outstanding {
    q: VecDeque<(u16, u64)>,
}

impl Outstanding {
    pub(crate) fn push(&mut self, packet_id: u16, sent_ns: u64) {
        self.q.push_back((packet_id, sent_ns));
    }

    /// The PUBACK for `packet_id` arrived: the send time of that publication, if it was awaited.
    pub(crate) fn ack(&mut self, packet_id: u16) -> Option<u64> {
        let at = self.q.iter().position(|&(p, _)| p == packet_id)?;
        self.q.remove(at).map(|(_, t)| t)
    }

    /// Forget publications sent more than `timeout_ns` before `now_ns`; how many.
    pub(crate) fn expire(&mut self, now_ns: u64, timeout_ns: u64) -> u64 {
        let mut n = 0;
        while let Some(&(_, t)) = self.q.front() {
            if now_ns.saturating_sub(t) < timeout_ns {
                break;
            }
            self.q.pop_front();
            n += 1;
        }
        n
    }

    /// Send time of the oldest awaited publication.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.q.front().map(|&(_, t)| t)
    }

    pub(crate) fn len(&self) -> usize {
        self.q.len()
    }
}

/// Counters every task updates; times are nanoseconds since `origin`.
struct Shared {
    origin: Instant,
    connected: AtomicU64,
    connect_failures: AtomicU64,
    /// Devices whose connection ended before the end of the run.
    dropped: AtomicU64,
    /// Devices done publishing with every PUBACK in or expired.
    settled: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    unacked: AtomicU64,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
    cmd_sent: AtomicU64,
    cmd_delivered: AtomicU64,
    cmd_hist: Mutex<Histogram>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn error(&self, e: String) {
        if let Ok(mut v) = self.errors.lock() {
            if v.len() < 5 {
                v.push(e);
            }
        }
    }
}

/// The measured window, as nanoseconds since `origin`.
#[derive(Clone, Copy, Debug)]
struct Window {
    start_ns: u64,
    end_ns: u64,
}

fn token() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:06x}", (std::process::id() ^ nanos) & 0xFF_FFFF)
}

fn at(sh: &Shared, ns: u64) -> tokio::time::Instant {
    (sh.origin + Duration::from_nanos(ns)).into()
}

/// Run the fleet scenario.
pub(crate) async fn run(p: Params, opts: ClientOpts, pid: Option<u32>) -> Result<Output> {
    if p.devices == 0 || p.rate.is_nan() || p.rate <= 0.0 {
        bail!("--devices and --rate must be positive");
    }
    let backends = p.shared_members + p.plain_backends;
    if backends == 0 {
        bail!("no backend: --shared-members and --plain-backends are both 0");
    }
    // Every device is a descriptor here and one in the broker: raise the soft limit, and the
    // hard one when it is too low and this process may (CAP_SYS_RESOURCE; 50,000 devices need it).
    let want = (p.devices + backends + 1024) as u64;
    if let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        if hard < want {
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, soft.max(want), want);
        }
    }
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    if (limit as usize) < p.devices + backends + 64 {
        eprintln!("warden-bench: open-file limit {limit} is below {} connections", p.devices + backends);
    }
    let token = token();
    let seed = u64::from_str_radix(&token, 16).unwrap_or(1);
    let sh = Arc::new(Shared {
        origin: Instant::now(),
        connected: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        unacked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        cmd_sent: AtomicU64::new(0),
        cmd_delivered: AtomicU64::new(0),
        cmd_hist: Mutex::new(Histogram::default()),
        errors: Mutex::new(Vec::new()),
    });
    let (window_tx, window_rx) = watch::channel(None::<Window>);
    let (stop_tx, stop_rx) = watch::channel(false);
    let protocol = opts.protocol;

    // Backends first, subscribed before any device publishes.
    let mut backend_tasks = Vec::new();
    for (j, filter) in backend_filters(p.shared_members, p.plain_backends).into_iter().enumerate() {
        let (opts, id) = (opts.clone(), format!("wb{token}b{j}"));
        let mut c = proto::connect(&opts, &id).await?;
        c.subscribe(&opts, &[filter], QoS::AtLeastOnce).await?;
        backend_tasks.push(tokio::spawn(backend(c.stream, c.rbuf, protocol, sh.clone(), stop_rx.clone())));
    }
    let targets = commanded(p.devices, p.command_fraction);
    let commander = if targets.is_empty() {
        None
    } else {
        let id = format!("wb{token}cmd");
        let c = proto::connect(&opts, &id).await?;
        let mut batches = Vec::with_capacity(targets.len());
        for &i in &targets {
            let topic = commands_topic(&device_id(&token, i));
            batches.push(PubBatch::new(protocol, &topic, QoS::AtLeastOnce, p.payload, 1, i as u32)?);
        }
        let rate = targets.len() as f64 / p.command_interval.max(0.001);
        Some(tokio::spawn(commander_task(c, batches, rate, protocol, sh.clone(), window_rx.clone(), stop_rx.clone())))
    };

    // Ramp-up: devices connect at a bounded rate, a bounded number at a time.
    let sources = if p.source_addrs == 0 { auto_sources(p.devices) } else { p.source_addrs };
    let sem = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let ramp_start = Instant::now();
    let mut device_tasks = Vec::with_capacity(p.devices);
    for i in 0..p.devices {
        let mut o = opts.clone();
        o.source = Some(source_addr(i, sources));
        let cfg = DeviceCfg {
            index: i,
            id: device_id(&token, i),
            not_before: ramp_start + Duration::from_secs_f64(i as f64 / p.connect_rate.max(1.0)),
            schedule: Schedule::new(seed, i as u64, p.rate, p.jitter),
            payload: p.payload,
            ack_timeout_ns: p.ack_timeout.as_nanos() as u64,
        };
        device_tasks.push(tokio::spawn(device(cfg, o, sem.clone(), sh.clone(), window_rx.clone(), stop_rx.clone())));
    }
    // Wait until every device connected or gave up.
    loop {
        let done = sh.connected.load(Ordering::Acquire) + sh.connect_failures.load(Ordering::Acquire);
        if done >= p.devices as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp_s = ramp_start.elapsed().as_secs_f64();
    let connected = sh.connected.load(Ordering::Acquire);
    if connected == 0 {
        let _ = stop_tx.send(true);
        let errors = sh.errors.lock().map(|v| v.join("; ")).unwrap_or_default();
        bail!("no device connected: {errors}");
    }

    // The measured window.
    let cpu0 = pid.map(stats::cpu_seconds).transpose()?;
    let own0 = stats::own_cpu_seconds()?;
    let host0 = stats::host_busy_seconds()?;
    let start_ns = sh.now_ns() + 10_000_000; // 10 ms for the devices to see it
    let window = Window { start_ns, end_ns: start_ns + p.duration.as_nanos() as u64 };
    let _ = window_tx.send(Some(window));
    let factor = deliveries_per_message(p.shared_members, p.plain_backends);
    let quiet_ns = p.quiet.as_nanos() as u64;
    let mut complete = false;
    tokio::time::sleep_until(at(&sh, window.end_ns)).await;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let live = sh.connected.load(Ordering::Acquire).saturating_sub(sh.dropped.load(Ordering::Acquire));
        let settled = sh.settled.load(Ordering::Acquire) >= live;
        let delivered = sh.delivered.load(Ordering::Acquire) >= sh.sent.load(Ordering::Acquire) * factor;
        let commands = sh.cmd_delivered.load(Ordering::Acquire) >= sh.cmd_sent.load(Ordering::Acquire);
        if settled && delivered && commands {
            complete = true;
            break;
        }
        let last = sh.last_delivery_ns.load(Ordering::Acquire).max(window.end_ns);
        if sh.now_ns().saturating_sub(last) > quiet_ns {
            break;
        }
    }
    let held = sh.connected.load(Ordering::Acquire).saturating_sub(sh.dropped.load(Ordering::Acquire));
    let cpu1 = pid.map(stats::cpu_seconds).transpose()?;
    let mem = pid.map(stats::memory).transpose()?;
    let own1 = stats::own_cpu_seconds()?;
    let host1 = stats::host_busy_seconds()?;
    let end_ns = sh.now_ns();
    let _ = stop_tx.send(true);

    let mut hist = Histogram::default();
    for t in backend_tasks {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok(h)) => hist.merge(&h),
            _ => sh.error("backend did not stop".into()),
        }
    }
    if let Some(c) = commander {
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), c).await {
            sh.error(format!("commander: {e:#}"));
        }
    }
    for t in device_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let sent = sh.sent.load(Ordering::Acquire);
    let delivered = sh.delivered.load(Ordering::Acquire);
    let expected = sent * factor;
    let deliver_s = sh.last_delivery_ns.load(Ordering::Acquire).saturating_sub(window.start_ns) as f64 / 1e9;
    let publish_s = p.duration.as_secs_f64();
    let per_s = |n: u64, s: f64| if s > 0.0 { round(n as f64 / s, 0) } else { 0.0 };
    let failures = sh.connect_failures.load(Ordering::Acquire) + sh.dropped.load(Ordering::Acquire);
    let mut errors = sh.errors.lock().map(|v| v.clone()).unwrap_or_default();
    if held < p.devices as u64 {
        errors.insert(0, format!("{held} of {} devices connected and held", p.devices));
    }
    errors.truncate(6);
    let cmd_sent = sh.cmd_sent.load(Ordering::Acquire);
    let cmd_delivered = sh.cmd_delivered.load(Ordering::Acquire);
    let mut out = Output {
        scenario: "fleet".into(),
        qos: 1,
        payload: p.payload,
        publishers: p.devices,
        subscribers: backends,
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        extra: delivered.saturating_sub(expected),
        complete: complete && held == p.devices as u64 && sh.unacked.load(Ordering::Acquire) == 0,
        publish_s: round(publish_s, 3),
        deliver_s: round(deliver_s, 3),
        sent_per_s: per_s(sent, publish_s),
        delivered_per_s: per_s(delivered, deliver_s),
        bench_cpu_s: round(own1 - own0, 2),
        wall_s: round(end_ns.saturating_sub(window.start_ns) as f64 / 1e9, 3),
        connections: Some(held),
        connect_failures: Some(failures),
        connects_per_s: Some(if ramp_s > 0.0 { round(connected as f64 / ramp_s, 0) } else { 0.0 }),
        rate_per_device: Some(p.rate),
        unacked: Some(sh.unacked.load(Ordering::Acquire)),
        commands_sent: Some(cmd_sent),
        commands_delivered: Some(cmd_delivered),
        errors,
        ..Default::default()
    };
    out.set_latency(&hist);
    if let Ok(h) = sh.cmd_hist.lock() {
        let us = |v: Option<u64>| v.map(|ns| (ns as f64 / 100.0).round() / 10.0);
        out.cmd_lat_p50_us = us(h.quantile(0.5));
        out.cmd_lat_p99_us = us(h.quantile(0.99));
    }
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        out.broker_cpu_s = Some(round(c1 - c0, 2));
        if delivered > 0 {
            out.broker_cpu_s_per_m = Some(round((c1 - c0) / (delivered as f64 / 1e6), 3));
        }
    }
    if let Some(m) = mem {
        out.broker_rss_peak_kib = Some(m.hwm_kib);
        out.broker_rss_now_kib = Some(m.rss_kib);
    }
    out.set_other_cpu(host1 - host0);
    Ok(out)
}

struct DeviceCfg {
    index: usize,
    id: String,
    not_before: Instant,
    schedule: Schedule,
    payload: usize,
    ack_timeout_ns: u64,
}

enum Event {
    Stop,
    Timer,
    Read(std::io::Result<usize>),
}

async fn device(
    cfg: DeviceCfg,
    opts: ClientOpts,
    sem: Arc<Semaphore>,
    sh: Arc<Shared>,
    mut window_rx: watch::Receiver<Option<Window>>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::time::sleep_until(cfg.not_before.into()).await;
    let client = {
        let Ok(_permit) = sem.acquire().await else { return };
        // The TCP connect is bounded too (a full listen backlog drops SYNs, retried for minutes).
        let limit = opts.handshake_timeout * 3;
        tokio::time::timeout(limit, async {
            let mut c = proto::connect(&opts, &cfg.id).await?;
            c.subscribe(&opts, &[commands_topic(&cfg.id)], QoS::AtLeastOnce).await?;
            anyhow::Ok(c)
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no connection within {limit:?}")))
    };
    let (mut stream, mut buf) = match client {
        Ok(c) => (c.stream, c.rbuf),
        Err(e) => {
            sh.error(format!("device connect: {e:#}"));
            sh.connect_failures.fetch_add(1, Ordering::AcqRel);
            return;
        }
    };
    sh.connected.fetch_add(1, Ordering::AcqRel);
    let window = loop {
        if let Some(w) = *window_rx.borrow_and_update() {
            break w;
        }
        if window_rx.changed().await.is_err() {
            return;
        }
    };
    let mut batch = match PubBatch::new(
        opts.protocol,
        &telemetry_topic(&cfg.id),
        QoS::AtLeastOnce,
        cfg.payload,
        1,
        cfg.index as u32,
    ) {
        Ok(b) => b,
        Err(e) => {
            sh.error(format!("device: {e:#}"));
            return;
        }
    };
    if let Err(e) = device_loop(&cfg, &mut stream, &mut buf, &mut batch, window, opts.protocol, &sh, &mut stop).await {
        sh.dropped.fetch_add(1, Ordering::AcqRel);
        sh.error(format!("device: {e:#}"));
    }
    let _ = stream.try_write(&proto::DISCONNECT);
}

#[allow(clippy::too_many_arguments)]
async fn device_loop(
    cfg: &DeviceCfg,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    batch: &mut PubBatch,
    window: Window,
    protocol: Protocol,
    sh: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let mut schedule = cfg.schedule.clone();
    let mut outstanding = Outstanding::default();
    let mut next_pid = 1u16;
    let mut seq = 0u64;
    let mut publishing = true;
    let mut settled = false;
    let mut acks: Vec<u8> = Vec::new();
    // Far enough to never fire within a run.
    let never = window.end_ns + 86_400_000_000_000;
    loop {
        let next_ns = window.start_ns + schedule.next_ns();
        if publishing && next_ns >= window.end_ns {
            publishing = false;
        }
        if !publishing && outstanding.len() == 0 && !settled {
            settled = true;
            sh.settled.fetch_add(1, Ordering::AcqRel);
        }
        let mut wake = if publishing { next_ns } else { never };
        if let Some(t) = outstanding.oldest() {
            wake = wake.min(t + cfg.ack_timeout_ns);
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(512);
        }
        let ev = tokio::select! {
            _ = stop.changed() => Event::Stop,
            _ = tokio::time::sleep_until(at(sh, wake)) => Event::Timer,
            r = stream.read_buf(buf) => Event::Read(r),
        };
        match ev {
            Event::Stop => {
                sh.unacked.fetch_add(outstanding.len() as u64, Ordering::AcqRel);
                return Ok(());
            }
            Event::Timer => {
                let now = sh.now_ns();
                if publishing && now >= next_ns {
                    let pid = next_pid;
                    seq += 1;
                    let bytes = batch.fill(1, now, seq, &mut next_pid);
                    stream.write_all(bytes).await?;
                    outstanding.push(pid, now);
                    sh.sent.fetch_add(1, Ordering::AcqRel);
                    schedule.advance();
                }
                let expired = outstanding.expire(now, cfg.ack_timeout_ns);
                if expired > 0 {
                    sh.unacked.fetch_add(expired, Ordering::AcqRel);
                }
            }
            Event::Read(r) => {
                if r? == 0 {
                    sh.unacked.fetch_add(outstanding.len() as u64, Ordering::AcqRel);
                    bail!("connection closed by the broker");
                }
                let now = sh.now_ns();
                while let Some(f) = proto::next_frame(buf, protocol)? {
                    match f {
                        Frame::PubAck { packet_id } => {
                            if outstanding.ack(packet_id).is_some() {
                                sh.acked.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        Frame::Publish { qos, packet_id, stamp, .. } => {
                            sh.cmd_delivered.fetch_add(1, Ordering::AcqRel);
                            if let Some(s) = stamp {
                                if let Ok(mut h) = sh.cmd_hist.lock() {
                                    h.record(now.saturating_sub(s));
                                }
                            }
                            if qos > 0 {
                                proto::put_puback(&mut acks, packet_id);
                            }
                        }
                        Frame::Other(p) => {
                            if let Packet::Disconnect(d) = *p {
                                bail!("DISCONNECT 0x{:02x} from the broker", d.reason_code.0);
                            }
                        }
                    }
                }
                if !acks.is_empty() {
                    stream.write_all(&acks).await?;
                    acks.clear();
                }
            }
        }
    }
}

/// A backend subscriber: count telemetry deliveries, their latency, acknowledge them.
async fn backend(
    mut stream: TcpStream,
    mut buf: BytesMut,
    protocol: Protocol,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Histogram {
    let mut hist = Histogram::default();
    let mut acks: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let now = sh.now_ns();
        let mut k = 0u64;
        loop {
            match proto::next_frame(&mut buf, protocol) {
                Ok(Some(Frame::Publish { qos, packet_id, stamp, .. })) => {
                    k += 1;
                    if let Some(s) = stamp {
                        hist.record(now.saturating_sub(s));
                    }
                    if qos > 0 {
                        proto::put_puback(&mut acks, packet_id);
                    }
                }
                Ok(Some(Frame::Other(p))) => {
                    if let Packet::Disconnect(d) = *p {
                        sh.error(format!("backend: DISCONNECT 0x{:02x} from the broker", d.reason_code.0));
                        return hist;
                    }
                }
                Ok(Some(Frame::PubAck { .. })) => {}
                Ok(None) => break,
                Err(e) => {
                    sh.error(format!("backend: {e:#}"));
                    return hist;
                }
            }
        }
        if k > 0 {
            sh.delivered.fetch_add(k, Ordering::AcqRel);
            sh.last_delivery_ns.fetch_max(now, Ordering::AcqRel);
        }
        if !acks.is_empty() {
            if let Err(e) = stream.write_all(&acks).await {
                sh.error(format!("backend: {e}"));
                return hist;
            }
            acks.clear();
        }
        buf.reserve(64 * 1024);
        tokio::select! {
            biased;
            _ = stop.changed() => return hist,
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => {
                    sh.error("backend: connection closed by the broker".into());
                    return hist;
                }
                Ok(_) => {}
                Err(e) => {
                    sh.error(format!("backend: {e}"));
                    return hist;
                }
            },
        }
    }
}

/// Publish commands round-robin to the commanded devices at `rate` per second during the window.
async fn commander_task(
    c: proto::Client,
    mut batches: Vec<PubBatch>,
    rate: f64,
    protocol: Protocol,
    sh: Arc<Shared>,
    mut window_rx: watch::Receiver<Option<Window>>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let (mut stream, mut buf) = (c.stream, c.rbuf);
    let window = loop {
        if let Some(w) = *window_rx.borrow_and_update() {
            break w;
        }
        if window_rx.changed().await.is_err() {
            return Ok(());
        }
    };
    let interval_ns = (1e9 / rate) as u64;
    // Start half an interval in, so the first command does not meet the devices' first burst.
    let mut next_ns = window.start_ns + interval_ns / 2;
    let mut k = 0usize;
    let mut seq = 0u64;
    let mut next_pid = 1u16;
    let n = batches.len();
    loop {
        let wake = if next_ns < window.end_ns { next_ns } else { window.end_ns + 86_400_000_000_000 };
        buf.reserve(4096);
        let ev = tokio::select! {
            _ = stop.changed() => Event::Stop,
            _ = tokio::time::sleep_until(at(&sh, wake)) => Event::Timer,
            r = stream.read_buf(&mut buf) => Event::Read(r),
        };
        match ev {
            Event::Stop => return Ok(()),
            Event::Timer => {
                let now = sh.now_ns();
                seq += 1;
                let bytes = batches[k % n].fill(1, now, seq, &mut next_pid);
                stream.write_all(bytes).await?;
                sh.cmd_sent.fetch_add(1, Ordering::AcqRel);
                k += 1;
                next_ns += interval_ns;
            }
            Event::Read(r) => {
                if r? == 0 {
                    bail!("connection closed by the broker");
                }
                while let Some(f) = proto::next_frame(&mut buf, protocol)? {
                    if let Frame::Other(p) = f {
                        if let Packet::Disconnect(d) = *p {
                            bail!("DISCONNECT 0x{:02x} from the broker", d.reason_code.0);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_filters() {
        let id = device_id("abc123", 42);
        assert_eq!(id, "wbabc123d42");
        assert_eq!(telemetry_topic(&id), "devices/wbabc123d42/telemetry");
        assert_eq!(commands_topic(&id), "devices/wbabc123d42/commands");
        assert_eq!(
            backend_filters(2, 1),
            ["$share/backend/devices/+/telemetry", "$share/backend/devices/+/telemetry", "devices/+/telemetry"]
        );
        assert_eq!(deliveries_per_message(2, 1), 2);
        assert_eq!(deliveries_per_message(0, 3), 3);
        assert_eq!(deliveries_per_message(4, 0), 1);
        // Every topic is valid and matched by the plain filter (mqtt-codec's own validation).
        assert!(mqtt_codec::TopicName::new(&telemetry_topic(&id)).is_ok());
        for f in backend_filters(1, 1) {
            assert!(mqtt_codec::TopicFilter::new(&f).is_ok(), "{f}");
        }
    }

    #[test]
    fn commanded_devices_are_spread_and_counted() {
        let c = commanded(10_000, 0.01);
        assert_eq!(c.len(), 100);
        assert_eq!(c[0], 0);
        assert_eq!(c[1], 100);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert!(*c.last().unwrap() < 10_000);
        assert_eq!(commanded(50, 0.01), vec![0]);
        assert!(commanded(50, 0.0).is_empty());
        assert_eq!(commanded(3, 5.0), vec![0, 1, 2]);
    }

    #[test]
    fn source_addresses_cover_many_loopback_hosts() {
        assert_eq!(source_addr(0, 11), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)));
        assert_eq!(source_addr(11, 11), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)));
        assert_eq!(source_addr(250, 300), IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1)));
        assert_eq!(auto_sources(10_000), 11);
        assert_eq!(auto_sources(50_000), 51);
        let all: std::collections::HashSet<_> = (0..50_000).map(|i| source_addr(i, 51)).collect();
        assert_eq!(all.len(), 51);
    }

    #[test]
    fn schedule_keeps_the_rate_and_spreads_the_devices() {
        let (rate, jitter) = (0.2, 0.2);
        let period = 1e9 / rate;
        // One device over 1,000 intervals: the mean interval is the period, each within ±jitter.
        let mut s = Schedule::new(7, 3, rate, jitter);
        let first = s.next_ns();
        assert!((first as f64) < period);
        let mut prev = first;
        for _ in 0..1000 {
            s.advance();
            let d = (s.next_ns() - prev) as f64;
            assert!(d >= period * (1.0 - jitter) - 1.0 && d <= period * (1.0 + jitter) + 1.0, "{d}");
            prev = s.next_ns();
        }
        let mean = (prev - first) as f64 / 1000.0;
        assert!((mean - period).abs() / period < 0.02, "mean interval {mean}");
        // 10,000 devices' first publications: spread over the first period, not in lockstep
        // (each tenth of the period holds about a tenth of them).
        let mut buckets = [0u32; 10];
        for d in 0..10_000u64 {
            let t = Schedule::new(7, d, rate, jitter).next_ns() as f64;
            buckets[((t / period) * 10.0) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| (800..1200).contains(&b)), "{buckets:?}");
        // Reproducible per seed, different across seeds.
        assert_eq!(Schedule::new(1, 5, rate, jitter).next_ns(), Schedule::new(1, 5, rate, jitter).next_ns());
        assert_ne!(Schedule::new(1, 5, rate, jitter).next_ns(), Schedule::new(2, 5, rate, jitter).next_ns());
    }

    #[test]
    fn outstanding_acks_and_expiry() {
        let mut o = Outstanding::default();
        o.push(1, 100);
        o.push(2, 200);
        o.push(3, 300);
        // A PUBACK may come out of order; an unknown or repeated one counts nothing.
        assert_eq!(o.ack(2), Some(200));
        assert_eq!(o.ack(2), None);
        assert_eq!(o.ack(9), None);
        assert_eq!(o.oldest(), Some(100));
        // Timeout 150: at 260 only the publication of 100 is overdue.
        assert_eq!(o.expire(260, 150), 1);
        assert_eq!(o.len(), 1);
        assert_eq!(o.expire(449, 150), 0);
        assert_eq!(o.expire(450, 150), 1);
        assert_eq!(o.len(), 0);
        assert_eq!(o.oldest(), None);
    }

    #[test]
    fn unit_is_in_range() {
        for d in 0..1000 {
            let u = unit(42, d, d * 7);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
