//! Idle connections: open C connections (CONNECT/CONNACK) as fast as the broker takes them, hold
//! them, and read the broker's RSS growth per connection.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::Semaphore;

use crate::output::{round, Output};
use crate::proto::{self, ClientOpts};
use crate::stats::{self, Histogram};

/// Idle-run parameters.
pub(crate) struct Params {
    pub connections: usize,
    pub concurrency: usize,
    pub hold: f64,
    pub source_addrs: u8,
    /// Over TLS (`--tls-ca`): the connector, the server name, whether a client certificate is sent.
    pub tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>, bool)>,
}

/// A held connection, plain or TLS.
enum Held {
    Plain(proto::Client),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl Held {
    fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            Held::Plain(c) => &c.stream,
            Held::Tls(s) => s.get_ref().0,
        }
    }
}

/// Run the idle scenario.
pub(crate) async fn run(p: Params, opts: ClientOpts, pid: Option<u32>) -> Result<Output> {
    // Each connection is a descriptor here (and one in the broker): raise the soft limit.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    if (limit as usize) < p.connections + 64 {
        eprintln!("warden-bench: open-file limit {limit} is below {} connections", p.connections);
    }
    let mem0 = pid.map(stats::memory).transpose()?;
    let cpu0 = pid.map(stats::cpu_seconds).transpose()?;
    let own0 = stats::own_cpu_seconds()?;
    let host0 = stats::host_busy_seconds()?;
    let sem = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let token = format!("{:06x}", (std::process::id() ^ nanos) & 0xFF_FFFF);
    let origin = Instant::now();
    let mut tasks = Vec::with_capacity(p.connections);
    for i in 0..p.connections {
        let sem = sem.clone();
        let mut opts = opts.clone();
        if p.source_addrs > 1 {
            opts.source = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % p.source_addrs as usize) as u8)));
        }
        let id = format!("wb{token}i{i}");
        let tls = p.tls.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let t = origin.elapsed();
            let c = match tls {
                None => Held::Plain(proto::connect(&opts, &id).await?),
                Some((connector, name, _)) => {
                    let packet = crate::tls::connect_packet(&opts, &id);
                    Held::Tls(Box::new(crate::tls::handshake(&connector, name, &opts, &packet).await?))
                }
            };
            let done = origin.elapsed();
            anyhow::Ok((c, (done - t).as_nanos() as u64, done))
        }));
    }
    let mut clients = Vec::with_capacity(p.connections);
    let mut hist = Histogram::default();
    let mut errors = Vec::new();
    let mut failures = 0u64;
    let mut last = Duration::ZERO;
    for t in tasks {
        match t.await {
            Ok(Ok((c, lat, done))) => {
                hist.record(lat);
                last = last.max(done);
                clients.push(c);
            }
            Ok(Err(e)) => {
                failures += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
            Err(e) => {
                failures += 1;
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
            }
        }
    }
    let ok = clients.len() as u64;
    tokio::time::sleep(Duration::from_secs_f64(p.hold)).await;
    // A connection the broker dropped while idle is not counted as held.
    let mut dropped = 0u64;
    for c in &clients {
        let mut probe = [0u8; 1];
        match c.tcp().try_read(&mut probe) {
            Ok(0) => dropped += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => dropped += 1,
            _ => {}
        }
    }
    let mem1 = pid.map(stats::memory).transpose()?;
    let cpu1 = pid.map(stats::cpu_seconds).transpose()?;
    let own1 = stats::own_cpu_seconds()?;
    let host1 = stats::host_busy_seconds()?;
    let wall_s = origin.elapsed().as_secs_f64();
    for c in &clients {
        if let Held::Plain(c) = c {
            let _ = c.stream.try_write(&proto::DISCONNECT);
        }
    }
    drop(clients);

    let secs = last.as_secs_f64();
    let mut out = Output {
        scenario: "idle".into(),
        client_cert: p.tls.as_ref().map(|t| t.2),
        subscribers: 0,
        publishers: 0,
        expected: p.connections as u64,
        delivered: ok - dropped,
        lost: p.connections as u64 - (ok - dropped),
        complete: failures == 0 && dropped == 0,
        deliver_s: round(secs, 3),
        connections: Some(ok - dropped),
        connect_failures: Some(failures + dropped),
        connects_per_s: Some(if secs > 0.0 { round(ok as f64 / secs, 0) } else { 0.0 }),
        bench_cpu_s: round(own1 - own0, 2),
        wall_s: round(wall_s, 3),
        errors,
        ..Default::default()
    };
    if dropped > 0 {
        out.errors.push(format!("{dropped} connections closed by the broker while idle"));
    }
    out.set_latency(&hist);
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        out.broker_cpu_s = Some(round(c1 - c0, 2));
        if ok > 0 {
            out.broker_cpu_s_per_m = Some(round((c1 - c0) / (ok as f64 / 1e6), 3));
        }
    }
    if let (Some(m0), Some(m1)) = (mem0, mem1) {
        out.broker_rss_peak_kib = Some(m1.hwm_kib);
        out.broker_rss_now_kib = Some(m1.rss_kib);
        if ok > 0 {
            out.rss_per_conn_bytes = Some(round((m1.rss_kib as f64 - m0.rss_kib as f64) * 1024.0 / ok as f64, 0));
        }
    }
    out.set_other_cpu(host1 - host0);
    Ok(out)
}
