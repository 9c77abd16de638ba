//! TLS handshakes: open N connections, C at a time, each a full TLS handshake (no session
//! resumption), CONNECT/CONNACK, then DISCONNECT and close; handshakes per second and the
//! broker's CPU per handshake, with or without a client certificate.
//!
//! `--resume R` (scenario `tls-resume`, a reconnect storm): N devices, each with its own session
//! cache, first make one full handshake each (measured apart: `full_cpu_us`), then reconnect R
//! times each offering the ticket the broker gave it; handshakes/s, broker CPU per reconnect
//! handshake and the share that resumed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use mqtt_codec::{decode, Connect, Packet, Properties};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::output::{round, Output};
use crate::proto::ClientOpts;
use crate::stats::{self, Histogram};

/// `tls-handshakes` parameters.
pub(crate) struct Params {
    pub connections: usize,
    pub concurrency: usize,
    /// CA certificate(s) the server certificate is verified against (PEM).
    pub ca: PathBuf,
    /// Client certificate chain and key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name the server certificate must carry (an IP address or a DNS name).
    pub server_name: String,
    /// Allow TLS 1.2 as well (default: TLS 1.3 only).
    pub tls12: bool,
    /// Reconnects per device after its first, full handshake, resuming the session (0: every
    /// connection a full handshake, no resumption).
    pub resume: usize,
}

/// The client configuration: ring, TLS 1.3 (and 1.2 if asked), no session resumption, so that
/// every connection is a full handshake.
pub(crate) fn client_config(p: &Params) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&p.ca).with_context(|| format!("reading {}", p.ca.display()))? {
        roots.add(c.with_context(|| format!("reading {}", p.ca.display()))?)?;
    }
    let versions: &[&rustls::SupportedProtocolVersion] =
        if p.tls12 { &[&rustls::version::TLS13, &rustls::version::TLS12] } else { &[&rustls::version::TLS13] };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
    let mut config = match &p.client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// One connection: TCP, TLS, CONNECT/CONNACK. Returns the stream to close.
pub(crate) async fn handshake(
    connector: &TlsConnector,
    name: ServerName<'static>,
    opts: &ClientOpts,
    connect: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = crate::proto::tcp(opts).await?;
    let mut tls = connector.connect(name, tcp).await.context("TLS handshake")?;
    tls.write_all(connect).await?;
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if let Some(p) = decode(&mut buf, opts.protocol, 1 << 20).map_err(|e| anyhow!("decode: {e}"))? {
            match p {
                Packet::Connack(a) if a.reason_code.0 == 0 => return Ok(tls),
                Packet::Connack(a) => bail!("CONNACK refused: code 0x{:02x}", a.reason_code.0),
                other => bail!("expected CONNACK, got {:?}", other.packet_type()),
            }
        }
        if tls.read_buf(&mut buf).await? == 0 {
            bail!("connection closed by the broker before CONNACK");
        }
    }
}

/// The CONNECT packet of client `id`.
pub(crate) fn connect_packet(opts: &ClientOpts, id: &str) -> Vec<u8> {
    let packet = Packet::Connect(Box::new(Connect {
        protocol: opts.protocol,
        clean_start: true,
        keep_alive: opts.keep_alive,
        properties: Properties::default(),
        client_id: id.to_owned(),
        will: None,
        username: opts.username.clone(),
        password: opts.password.clone().map(Bytes::from),
    }));
    let mut out = BytesMut::new();
    packet.encode(opts.protocol, &mut out);
    out.to_vec()
}

/// What one phase (a handshake for each connector, `rounds` times each) gave.
#[derive(Default)]
struct Phase {
    hist: Histogram,
    ok: u64,
    resumed: u64,
    failures: u64,
    errors: Vec<String>,
    /// From the phase's start to the last CONNACK.
    last: Duration,
    broker_cpu_s: Option<f64>,
    own_cpu_s: f64,
    host_busy_s: f64,
}

/// For each connector (a device), `rounds` connections one after another, `concurrency`
/// handshakes in flight at once over all devices; CPU taken around it.
async fn phase(
    devices: &[TlsConnector],
    rounds: usize,
    p: &Params,
    name: &ServerName<'static>,
    opts: &ClientOpts,
    pid: Option<u32>,
    id_base: usize,
) -> Result<Phase> {
    let cpu0 = pid.map(stats::cpu_seconds).transpose()?;
    let own0 = stats::own_cpu_seconds()?;
    let host0 = stats::host_busy_seconds()?;
    let sem = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let origin = Instant::now();
    let mut tasks = Vec::with_capacity(devices.len());
    for (i, connector) in devices.iter().enumerate() {
        let (sem, connector, name, opts) = (sem.clone(), connector.clone(), name.clone(), opts.clone());
        let packet = connect_packet(&opts, &format!("wbtls{}", id_base + i));
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let permit = sem.clone().acquire_owned().await?;
                let t = origin.elapsed();
                let r =
                    tokio::time::timeout(opts.handshake_timeout, handshake(&connector, name.clone(), &opts, &packet))
                        .await;
                let done = origin.elapsed();
                drop(permit);
                let r = match r {
                    Err(_) => Err(anyhow!("no CONNACK within {:?}", opts.handshake_timeout)),
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(s)) => {
                        let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                        close(s).await;
                        Ok(((done - t).as_nanos() as u64, done, resumed))
                    }
                };
                got.push(r);
            }
            anyhow::Ok(got)
        }));
    }
    let mut ph = Phase::default();
    for t in tasks {
        let results = match t.await.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(v) => v,
            Err(e) => vec![Err(e)],
        };
        for r in results {
            match r {
                Ok((lat, done, resumed)) => {
                    ph.ok += 1;
                    ph.resumed += u64::from(resumed);
                    ph.hist.record(lat);
                    ph.last = ph.last.max(done);
                }
                Err(e) => {
                    ph.failures += 1;
                    if ph.errors.len() < 5 {
                        ph.errors.push(format!("{e:#}"));
                    }
                }
            }
        }
    }
    let cpu1 = pid.map(stats::cpu_seconds).transpose()?;
    ph.broker_cpu_s = cpu0.zip(cpu1).map(|(a, b)| b - a);
    ph.own_cpu_s = stats::own_cpu_seconds()? - own0;
    ph.host_busy_s = stats::host_busy_seconds()? - host0;
    Ok(ph)
}

/// Run the scenario.
pub(crate) async fn run(p: Params, opts: ClientOpts, pid: Option<u32>) -> Result<Output> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let base = client_config(&p)?;
    let connector = TlsConnector::from(Arc::new(base.clone()));
    let name = ServerName::try_from(p.server_name.clone()).map_err(|e| anyhow!("server name: {e}"))?;
    // One warm-up connection (it also checks the set-up) before the measurement starts.
    let warm = connect_packet(&opts, "wbtls-warmup");
    let s = handshake(&connector, name.clone(), &opts, &warm).await?;
    close(s).await;

    let origin = Instant::now();
    let (ph, full) = if p.resume == 0 {
        let devices = vec![connector; p.connections];
        (phase(&devices, 1, &p, &name, &opts, pid, 0).await?, None)
    } else {
        // A session cache per device (as each real device has its own), resumption on.
        let devices: Vec<TlsConnector> = (0..p.connections)
            .map(|_| {
                let mut c = base.clone();
                c.resumption = rustls::client::Resumption::in_memory_sessions(4);
                TlsConnector::from(Arc::new(c))
            })
            .collect();
        let full = phase(&devices, 1, &p, &name, &opts, pid, 0).await?;
        if full.failures > 0 {
            bail!("first (full) handshakes failed: {:?}", full.errors);
        }
        (phase(&devices, p.resume, &p, &name, &opts, pid, 0).await?, Some(full))
    };
    let expected = (p.connections * p.resume.max(1)) as u64;
    let secs = ph.last.as_secs_f64();
    let mut out = Output {
        scenario: if p.resume > 0 { "tls-resume" } else { "tls-handshakes" }.into(),
        expected,
        delivered: ph.ok,
        lost: expected - ph.ok.min(expected),
        complete: ph.failures == 0,
        deliver_s: round(secs, 3),
        connections: Some(if p.resume > 0 { p.connections as u64 } else { ph.ok }),
        connect_failures: Some(ph.failures),
        connects_per_s: Some(if secs > 0.0 { round(ph.ok as f64 / secs, 0) } else { 0.0 }),
        client_cert: Some(p.client_cert.is_some()),
        bench_cpu_s: round(ph.own_cpu_s, 2),
        wall_s: round(origin.elapsed().as_secs_f64(), 3),
        errors: ph.errors.clone(),
        ..Default::default()
    };
    out.set_latency(&ph.hist);
    if let Some(c) = ph.broker_cpu_s {
        out.broker_cpu_s = Some(round(c, 2));
        if ph.ok > 0 {
            out.broker_cpu_s_per_m = Some(round(c / (ph.ok as f64 / 1e6), 1));
        }
    }
    if let Some(full) = full {
        out.resumed_pct = Some(if ph.ok > 0 { round(100.0 * ph.resumed as f64 / ph.ok as f64, 1) } else { 0.0 });
        out.full_cpu_us = full.broker_cpu_s.filter(|_| full.ok > 0).map(|c| round(c / (full.ok as f64 / 1e6), 1));
    }
    out.set_other_cpu(ph.host_busy_s);
    Ok(out)
}

/// DISCONNECT, close_notify, then wait briefly for the broker to close its side (so that the
/// TIME_WAIT state stays on the broker's side and the generator does not run out of ports).
async fn close(mut s: tokio_rustls::client::TlsStream<TcpStream>) {
    let _ = s.write_all(&crate::proto::DISCONNECT).await;
    let _ = s.shutdown().await;
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_reads_pem_and_disables_resumption() {
        let dir = std::env::temp_dir().join(format!("wb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
        let mut p = Params {
            connections: 1,
            concurrency: 1,
            ca: dir.join("ca.pem"),
            client_cert: None,
            server_name: "127.0.0.1".into(),
            tls12: false,
            resume: 0,
        };
        let c = client_config(&p).unwrap();
        assert!(!c.client_auth_cert_resolver.has_certs());
        p.client_cert = Some((dir.join("ca.pem"), dir.join("ca.key")));
        let c = client_config(&p).unwrap();
        assert!(c.client_auth_cert_resolver.has_certs());
        p.ca = dir.join("missing.pem");
        assert!(client_config(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn connect_packet_decodes() {
        let opts = ClientOpts {
            addr: "127.0.0.1:1".parse().unwrap(),
            protocol: mqtt_codec::Protocol::V311,
            username: Some("u".into()),
            password: None,
            keep_alive: 30,
            source: None,
            handshake_timeout: Duration::from_secs(1),
            persistent: false,
        };
        let mut b = BytesMut::from(&connect_packet(&opts, "id7")[..]);
        match decode(&mut b, opts.protocol, 1024).unwrap() {
            Some(Packet::Connect(c)) => assert_eq!((c.client_id.as_str(), c.username.as_deref()), ("id7", Some("u"))),
            other => panic!("{other:?}"),
        }
    }
}
