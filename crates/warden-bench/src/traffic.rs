//! Publish/subscribe scenarios (fan-in, fan-out, pairs, latency) on one engine: subscribers
//! connect and subscribe first, then publishers send fixed counts or for a duration (optionally
//! at a fixed total rate), and the run ends when every expected delivery arrived or nothing has
//! moved for the quiet timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::BytesMut;
use mqtt_codec::{Packet, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::output::{round, Output};
use crate::proto::{self, ClientOpts, Frame, PubBatch, READ_RESERVE};
use crate::stats::{self, Histogram};

/// Who publishes where, who subscribes to what.
pub(crate) struct Plan {
    scenario: &'static str,
    /// One topic per publisher.
    pubs: Vec<String>,
    /// The filters of each subscriber.
    subs: Vec<Vec<String>>,
    /// Deliveries each publication should cause.
    factor: u64,
    /// For each publisher, the subscribers that receive its messages.
    pub_subs: Vec<Vec<usize>>,
    /// Client id prefix, unique per run.
    token: String,
}

fn token() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:06x}", (std::process::id() ^ nanos) & 0xFF_FFFF)
}

impl Plan {
    /// P publishers on `bench/T/in/i` -> 1 subscriber on `bench/T/in/+`.
    pub(crate) fn fan_in(publishers: usize) -> Plan {
        let t = token();
        Plan {
            scenario: "fan-in",
            pubs: (0..publishers.max(1)).map(|i| format!("bench/{t}/in/{i}")).collect(),
            subs: vec![vec![format!("bench/{t}/in/+")]],
            factor: 1,
            pub_subs: vec![vec![0]; publishers.max(1)],
            token: t,
        }
    }

    /// 1 publisher on `bench/T/out` -> N subscribers of that topic.
    pub(crate) fn fan_out(subscribers: usize) -> Plan {
        let t = token();
        let n = subscribers.max(1);
        Plan {
            scenario: "fan-out",
            pubs: vec![format!("bench/{t}/out")],
            subs: vec![vec![format!("bench/{t}/out")]; n],
            factor: n as u64,
            pub_subs: vec![(0..n).collect()],
            token: t,
        }
    }

    /// 1 publisher on `bench/T/work` -> N members of the shared subscription
    /// `$share/wb/bench/T/work`: each message goes to one of them.
    pub(crate) fn shared(members: usize) -> Plan {
        let t = token();
        let n = members.max(1);
        Plan {
            scenario: "shared",
            pubs: vec![format!("bench/{t}/work")],
            subs: vec![vec![format!("$share/wb/bench/{t}/work")]; n],
            factor: 1,
            // The backlog follows the slowest member's newest message (round-robin keeps them
            // all close to the head).
            pub_subs: vec![(0..n).collect()],
            token: t,
        }
    }

    /// N pairs: publisher i on `bench/T/pair/i` -> subscriber i of that topic.
    pub(crate) fn pairs(pairs: usize) -> Plan {
        let t = token();
        let n = pairs.max(1);
        Plan {
            scenario: "pairs",
            pubs: (0..n).map(|i| format!("bench/{t}/pair/{i}")).collect(),
            subs: (0..n).map(|i| vec![format!("bench/{t}/pair/{i}")]).collect(),
            factor: 1,
            pub_subs: (0..n).map(|i| vec![i]).collect(),
            token: t,
        }
    }

    /// 1 publisher -> 1 subscriber (run at a fixed rate).
    pub(crate) fn latency() -> Plan {
        let t = token();
        Plan {
            scenario: "latency",
            pubs: vec![format!("bench/{t}/lat")],
            subs: vec![vec![format!("bench/{t}/lat")]],
            factor: 1,
            pub_subs: vec![vec![0]],
            token: t,
        }
    }
}

/// Traffic parameters.
#[derive(Clone, Debug)]
pub(crate) struct Params {
    pub qos: QoS,
    pub payload: usize,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub inflight: u16,
    pub batch: usize,
    /// A publisher stays at most this many messages ahead of the newest of its messages that
    /// every subscriber has received (0: no limit).
    pub backlog: u64,
    pub quiet: Duration,
}

/// Counters every task updates; times are nanoseconds since `origin`.
struct Shared {
    origin: Instant,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
    sent: AtomicU64,
    last_send_ns: AtomicU64,
    pubs_done: AtomicUsize,
    pub_end_ns: AtomicU64,
    /// `progress[s][p]`: the highest sequence number subscriber `s` received from publisher `p`.
    progress: Vec<Vec<AtomicU64>>,
    /// Woken when a subscriber made progress on publisher `p`'s messages.
    wake: Vec<Notify>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

struct SubResult {
    hist: Histogram,
    error: Option<String>,
}

/// The processes a run's CPU figure counts: the broker (`pid`, whose RSS is reported too) and
/// any others that serve the same messages (a cluster's other nodes and NATS servers).
pub(crate) struct Processes {
    pub pid: Option<u32>,
    pub also: Vec<u32>,
}

impl Processes {
    /// Their CPU seconds so far; `None` without `pid`.
    fn cpu_seconds(&self) -> Result<Option<f64>> {
        let Some(pid) = self.pid else { return Ok(None) };
        let mut total = stats::cpu_seconds(pid)?;
        for p in &self.also {
            total += stats::cpu_seconds(*p)?;
        }
        Ok(Some(total))
    }
}

/// Run a plan and return its figures. Publishers connect with `opts`, subscribers with
/// `sub_opts` (the same broker, or another node of a cluster).
pub(crate) async fn run(
    plan: Plan,
    params: Params,
    opts: ClientOpts,
    sub_opts: ClientOpts,
    procs: Processes,
) -> Result<Output> {
    let pid = procs.pid;
    let sh = Arc::new(Shared {
        origin: Instant::now(),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        last_send_ns: AtomicU64::new(0),
        pubs_done: AtomicUsize::new(0),
        pub_end_ns: AtomicU64::new(0),
        progress: plan.subs.iter().map(|_| plan.pubs.iter().map(|_| AtomicU64::new(0)).collect()).collect(),
        wake: plan.pubs.iter().map(|_| Notify::new()).collect(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let protocol = opts.protocol;

    // Subscribers first, all subscribed before anything is published.
    let mut handshakes = Vec::new();
    for (i, filters) in plan.subs.iter().enumerate() {
        let (opts, filters, id) = (sub_opts.clone(), filters.clone(), format!("wb{}s{i}", plan.token));
        let qos = params.qos;
        handshakes.push(tokio::spawn(async move {
            let mut c = proto::connect(&opts, &id).await?;
            c.subscribe(&opts, &filters, qos).await?;
            anyhow::Ok(c)
        }));
    }
    let mut subs = Vec::new();
    for h in handshakes {
        subs.push(h.await??);
    }
    let mut handshakes = Vec::new();
    for i in 0..plan.pubs.len() {
        let (opts, id) = (opts.clone(), format!("wb{}p{i}", plan.token));
        handshakes.push(tokio::spawn(async move { proto::connect(&opts, &id).await }));
    }
    let mut pubs = Vec::new();
    for h in handshakes {
        pubs.push(h.await??);
    }

    let sub_tasks: Vec<JoinHandle<SubResult>> = subs
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (rd, wr) = c.stream.into_split();
            tokio::spawn(subscriber(i, rd, wr, c.rbuf, protocol, sh.clone(), stop_rx.clone()))
        })
        .collect();

    let cpu0 = procs.cpu_seconds()?;
    let own0 = stats::own_cpu_seconds()?;
    let host0 = stats::host_busy_seconds()?;
    let t0_ns = sh.now_ns();
    sh.last_send_ns.store(t0_ns, Ordering::Relaxed);
    let start = Instant::now();
    let deadline = params.duration.map(|d| start + d);
    let per_pub_rate = params.rate.map(|r| r / plan.pubs.len() as f64);
    let mut pub_tasks = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let backlog = if params.payload >= proto::SEQ_PAYLOAD { params.backlog } else { 0 };
    for (index, (c, topic)) in pubs.into_iter().zip(&plan.pubs).enumerate() {
        let window = match (params.qos, c.receive_maximum) {
            (QoS::AtMostOnce, _) => 0,
            (_, Some(rm)) => params.inflight.min(rm),
            (_, None) => params.inflight,
        };
        let msg_cap = params.batch.min((256 * 1024 / (params.payload + 32)).max(1));
        let batch = PubBatch::new(protocol, topic, params.qos, params.payload, msg_cap, index as u32)?;
        let (rd, wr) = c.stream.into_split();
        let job = PubJob {
            wr,
            batch,
            window: window as usize,
            index,
            subs: plan.pub_subs[index].clone(),
            backlog,
            count: params.count,
            deadline,
            rate: per_pub_rate,
            start,
            sh: sh.clone(),
        };
        let acks = (window > 0).then(|| Arc::new(Semaphore::new(window as usize)));
        let reader = acks.clone().map(|sem| tokio::spawn(ack_reader(rd, c.rbuf, protocol, sem, stop_rx.clone())));
        pub_tasks.push((tokio::spawn(publisher(job, acks)), reader));
    }

    // Watch for the end: everything expected delivered, or nothing moving for the quiet timeout.
    let npubs = plan.pubs.len();
    let quiet_ns = params.quiet.as_nanos() as u64;
    let mut complete = false;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let delivered = sh.delivered.load(Ordering::Acquire);
        if sh.pubs_done.load(Ordering::Acquire) == npubs {
            let expected = sh.sent.load(Ordering::Acquire) * plan.factor;
            if delivered >= expected {
                complete = true;
                break;
            }
        }
        let last = sh.last_delivery_ns.load(Ordering::Relaxed).max(sh.last_send_ns.load(Ordering::Relaxed));
        if sh.now_ns().saturating_sub(last) > quiet_ns {
            break;
        }
    }
    let cpu1 = procs.cpu_seconds()?;
    let mem = pid.map(stats::memory).transpose()?;
    let own1 = stats::own_cpu_seconds()?;
    let host1 = stats::host_busy_seconds()?;
    let wall_s = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);

    let mut hist = Histogram::default();
    for t in sub_tasks {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok(r)) => {
                hist.merge(&r.hist);
                errors.extend(r.error);
            }
            _ => errors.push("subscriber did not stop".into()),
        }
    }
    for (p, r) in pub_tasks {
        if p.is_finished() {
            if let Ok(Err(e)) = p.await {
                errors.push(format!("publisher: {e:#}"));
            }
        } else {
            p.abort();
            if sh.pubs_done.load(Ordering::Acquire) < npubs && errors.is_empty() {
                errors.push("publisher still sending at the end of the run".into());
            }
        }
        if let Some(r) = r {
            r.abort();
        }
    }
    errors.truncate(5);

    let sent = sh.sent.load(Ordering::Acquire);
    let delivered = sh.delivered.load(Ordering::Acquire);
    let expected = sent * plan.factor;
    let pub_end = sh.pub_end_ns.load(Ordering::Acquire).max(sh.last_send_ns.load(Ordering::Acquire));
    let publish_s = pub_end.saturating_sub(t0_ns) as f64 / 1e9;
    let deliver_s = sh.last_delivery_ns.load(Ordering::Acquire).saturating_sub(t0_ns) as f64 / 1e9;
    let per_s = |n: u64, s: f64| if s > 0.0 { round(n as f64 / s, 0) } else { 0.0 };
    let mut out = Output {
        scenario: plan.scenario.to_owned(),
        qos: params.qos as u8,
        payload: params.payload,
        publishers: npubs,
        subscribers: plan.subs.len(),
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        extra: delivered.saturating_sub(expected),
        complete,
        publish_s: round(publish_s, 3),
        deliver_s: round(deliver_s, 3),
        sent_per_s: per_s(sent, publish_s),
        delivered_per_s: per_s(delivered, deliver_s),
        bench_cpu_s: round(own1 - own0, 2),
        wall_s: round(wall_s, 3),
        errors,
        ..Default::default()
    };
    out.set_latency(&hist);
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        let cpu = c1 - c0;
        out.broker_cpu_s = Some(round(cpu, 2));
        if delivered > 0 {
            out.broker_cpu_s_per_m = Some(round(cpu / (delivered as f64 / 1e6), 3));
        }
    }
    if let Some(m) = mem {
        out.broker_rss_peak_kib = Some(m.hwm_kib);
        out.broker_rss_now_kib = Some(m.rss_kib);
    }
    out.set_other_cpu(host1 - host0);
    Ok(out)
}

async fn subscriber(
    me: usize,
    mut rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    mut buf: BytesMut,
    protocol: Protocol,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut hist = Histogram::default();
    let mut acks: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut acks_at = 0;
    // Newest sequence number per publisher in the current batch, and which publishers it touched.
    let mut newest = vec![0u64; sh.wake.len()];
    let mut touched: Vec<usize> = Vec::new();
    let error = loop {
        // Handle what is already buffered (bytes that came with the SUBACK) before reading.
        let now = sh.now_ns();
        let mut k = 0u64;
        loop {
            match proto::next_frame(&mut buf, protocol) {
                Ok(Some(Frame::Publish { qos, packet_id, stamp, origin })) => {
                    k += 1;
                    if let Some(s) = stamp {
                        hist.record(now.saturating_sub(s));
                    }
                    if let Some((p, seq)) = origin {
                        if let Some(n) = newest.get_mut(p as usize) {
                            if *n == 0 {
                                touched.push(p as usize);
                            }
                            *n = (*n).max(seq);
                        }
                    }
                    if qos > 0 {
                        proto::put_puback(&mut acks, packet_id);
                    }
                }
                Ok(Some(Frame::Other(p))) => {
                    if let Packet::Disconnect(d) = *p {
                        let error = format!("DISCONNECT 0x{:02x} from the broker", d.reason_code.0);
                        return SubResult { hist, error: Some(error) };
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return SubResult { hist, error: Some(format!("subscriber: {e:#}")) },
            }
        }
        if k > 0 {
            sh.delivered.fetch_add(k, Ordering::AcqRel);
            sh.last_delivery_ns.fetch_max(now, Ordering::AcqRel);
            for p in touched.drain(..) {
                sh.progress[me][p].fetch_max(newest[p], Ordering::AcqRel);
                newest[p] = 0;
                sh.wake[p].notify_one();
            }
        }
        // Acknowledge without ever blocking the reads: a broker that stops reading while its
        // output to us is backed up must not deadlock with us.
        while acks_at < acks.len() {
            match wr.try_write(&acks[acks_at..]) {
                Ok(n) => acks_at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return SubResult { hist, error: Some(format!("subscriber write: {e}")) },
            }
        }
        if acks_at == acks.len() {
            acks.clear();
            acks_at = 0;
        }
        buf.reserve(READ_RESERVE);
        let pending = acks_at < acks.len();
        tokio::select! {
            biased;
            _ = stop.changed() => break None,
            r = wr.writable(), if pending => {
                if let Err(e) = r {
                    break Some(format!("subscriber write: {e}"));
                }
            }
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break if *stop.borrow() { None } else { Some("subscriber: connection closed by the broker".into()) },
                Ok(_) => {}
                Err(e) => break Some(format!("subscriber read: {e}")),
            },
        }
    };
    SubResult { hist, error }
}

struct PubJob {
    wr: OwnedWriteHalf,
    batch: PubBatch,
    window: usize,
    index: usize,
    subs: Vec<usize>,
    backlog: u64,
    count: Option<u64>,
    deadline: Option<Instant>,
    rate: Option<f64>,
    start: Instant,
    sh: Arc<Shared>,
}

async fn publisher(mut job: PubJob, acks: Option<Arc<Semaphore>>) -> Result<()> {
    let mut sent = 0u64;
    let mut pid = 1u16;
    let cap = job.batch.capacity() as u64;
    let result = async {
        loop {
            let now = Instant::now();
            if job.deadline.is_some_and(|d| now >= d) {
                break;
            }
            let remaining = job.count.map_or(u64::MAX, |c| c - sent);
            if remaining == 0 {
                break;
            }
            let mut want = cap.min(remaining);
            if let Some(r) = job.rate {
                // The first message is due at once, message k at k / rate.
                let due = ((now - job.start).as_secs_f64() * r) as u64 + 1;
                if due <= sent {
                    let next = job.start + Duration::from_secs_f64(sent as f64 / r);
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
                want = want.min(due - sent);
            }
            if job.backlog > 0 {
                // End-to-end flow control: stay at most `backlog` ahead of what arrived.
                let delivered = job.subs.iter().map(|&s| job.sh.progress[s][job.index].load(Ordering::Acquire)).min();
                let room = (delivered.unwrap_or(sent) + job.backlog).saturating_sub(sent);
                if room == 0 {
                    let woken = job.sh.wake[job.index].notified();
                    match job.deadline {
                        Some(d) => {
                            if tokio::time::timeout_at(d.into(), woken).await.is_err() {
                                break;
                            }
                        }
                        None => woken.await,
                    }
                    continue;
                }
                want = want.min(room);
            }
            if let Some(sem) = &acks {
                // Flow control: at most `window` unacknowledged.
                let first = match job.deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), sem.acquire()).await {
                        Ok(p) => p?,
                        Err(_) => break,
                    },
                    None => sem.acquire().await?,
                };
                first.forget();
                let more = (want - 1).min(sem.available_permits() as u64);
                if more > 0 {
                    if let Ok(p) = sem.try_acquire_many(more as u32) {
                        p.forget();
                    }
                }
                want = 1 + more;
                debug_assert!(want as usize <= job.window);
            }
            let ts = job.sh.now_ns();
            let bytes = job.batch.fill(want as usize, ts, sent + 1, &mut pid);
            job.wr.write_all(bytes).await?;
            sent += want;
            job.sh.sent.fetch_add(want, Ordering::AcqRel);
            job.sh.last_send_ns.fetch_max(ts, Ordering::AcqRel);
        }
        anyhow::Ok(())
    }
    .await;
    job.sh.pub_end_ns.fetch_max(job.sh.now_ns(), Ordering::AcqRel);
    job.sh.pubs_done.fetch_add(1, Ordering::AcqRel);
    result
}

/// Read PUBACKs for a QoS 1 publisher and reopen its window.
async fn ack_reader(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    protocol: Protocol,
    sem: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        let mut acked = 0;
        while let Some(f) = proto::next_frame(&mut buf, protocol)? {
            match f {
                Frame::PubAck { .. } => acked += 1,
                Frame::Other(p) => {
                    if let Packet::Disconnect(d) = *p {
                        bail!("DISCONNECT 0x{:02x} from the broker", d.reason_code.0);
                    }
                }
                Frame::Publish { .. } => {}
            }
        }
        if acked > 0 {
            sem.add_permits(acked);
        }
        buf.reserve(64 * 1024);
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            r = rd.read_buf(&mut buf) => if r? == 0 { bail!("connection closed by the broker") },
        }
    }
}
