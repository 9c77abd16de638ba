//! TLS handshakes: open N connections, C at a time, each a full TLS handshake (no session
//! resumption), CONNECT/CONNACK, then DISCONNECT and close; handshakes per second and the
//! broker's CPU per handshake, with or without a client certificate.

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
async fn handshake(
    connector: &TlsConnector,
    name: ServerName<'static>,
    opts: &ClientOpts,
    connect: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(opts.addr).await.with_context(|| format!("connect to {}", opts.addr))?;
    tcp.set_nodelay(true)?;
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
fn connect_packet(opts: &ClientOpts, id: &str) -> Vec<u8> {
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

/// Run the scenario.
pub(crate) async fn run(p: Params, opts: ClientOpts, pid: Option<u32>) -> Result<Output> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let connector = TlsConnector::from(Arc::new(client_config(&p)?));
    let name = ServerName::try_from(p.server_name.clone()).map_err(|e| anyhow!("server name: {e}"))?;
    // One warm-up connection (it also checks the set-up) before the measurement starts.
    let warm = connect_packet(&opts, "wbtls-warmup");
    let s = handshake(&connector, name.clone(), &opts, &warm).await?;
    close(s).await;

    let cpu0 = pid.map(stats::cpu_seconds).transpose()?;
    let own0 = stats::own_cpu_seconds()?;
    let host0 = stats::host_busy_seconds()?;
    let sem = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let origin = Instant::now();
    let mut tasks = Vec::with_capacity(p.connections);
    for i in 0..p.connections {
        let (sem, connector, name, opts) = (sem.clone(), connector.clone(), name.clone(), opts.clone());
        let packet = connect_packet(&opts, &format!("wbtls{i}"));
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await?;
            let t = origin.elapsed();
            let r = tokio::time::timeout(opts.handshake_timeout, handshake(&connector, name, &opts, &packet)).await;
            let done = origin.elapsed();
            drop(permit);
            let s = r.map_err(|_| anyhow!("no CONNACK within {:?}", opts.handshake_timeout))??;
            close(s).await;
            anyhow::Ok(((done - t).as_nanos() as u64, done))
        }));
    }
    let mut hist = Histogram::default();
    let (mut ok, mut failures, mut errors, mut last) = (0u64, 0u64, Vec::new(), Duration::ZERO);
    for t in tasks {
        match t.await.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok((lat, done)) => {
                ok += 1;
                hist.record(lat);
                last = last.max(done);
            }
            Err(e) => {
                failures += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    let cpu1 = pid.map(stats::cpu_seconds).transpose()?;
    let own1 = stats::own_cpu_seconds()?;
    let host1 = stats::host_busy_seconds()?;
    let secs = last.as_secs_f64();
    let mut out = Output {
        scenario: "tls-handshakes".into(),
        expected: p.connections as u64,
        delivered: ok,
        lost: p.connections as u64 - ok,
        complete: failures == 0,
        deliver_s: round(secs, 3),
        connections: Some(ok),
        connect_failures: Some(failures),
        connects_per_s: Some(if secs > 0.0 { round(ok as f64 / secs, 0) } else { 0.0 }),
        client_cert: Some(p.client_cert.is_some()),
        bench_cpu_s: round(own1 - own0, 2),
        wall_s: round(origin.elapsed().as_secs_f64(), 3),
        errors,
        ..Default::default()
    };
    out.set_latency(&hist);
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        out.broker_cpu_s = Some(round(c1 - c0, 2));
        if ok > 0 {
            out.broker_cpu_s_per_m = Some(round((c1 - c0) / (ok as f64 / 1e6), 1));
        }
    }
    out.set_other_cpu(host1 - host0);
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
