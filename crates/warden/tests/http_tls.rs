//! HTTPS on the `[http]` listener (issue 17, observation 6: client secrets and admin tokens
//! crossed the network in clear). With `cert` and `key` the token service, the admin API and
//! `/healthz` are served over TLS only; a client that does not trust the CA gets no answer;
//! with `client_ca` a client without a certificate from that CA is refused; a connection that
//! never finishes its handshake is closed after `header_timeout` and gives its slot back.
//!
//! Clients are real TLS clients: `ureq` (rustls) and a rustls client speaking HTTP/1.1 by
//! hand (so that it can come from a chosen loopback address). The PKI is made by the tests.
//! Nothing sleeps to synchronise: every wait is a read bounded by a deadline.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use warden_testkit::pki::{CertFiles, TestPki, Validity};
use warden_testkit::TestBroker;

const SECRET: &str = "dev-001-secret";

struct Setup {
    broker: TestBroker,
    pki: TestPki,
}

/// A broker whose `[http]` listener serves TLS with the test PKI's server certificate, plus
/// `http_extra` in `[http]` and an OAuth client `dev-001`.
async fn setup(http_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "web");
    let s = pki.server();
    let hash = warden_policy::password::hash_password(SECRET.as_bytes());
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\nallow_anonymous = true\n\
         [http]\nbind = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{http_extra}\n\
         [oauth]\n[[oauth.client]]\nid = \"dev-001\"\nsecret_hash = '{hash}'\nscopes = [\"mqtt:pub:devices/dev-001/#\"]\n",
        s.cert.display(),
        s.key.display(),
    );
    let broker = TestBroker::from_toml_in(dir, &body).await;
    Setup { broker, pki }
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        self.broker.server.http_addr.expect("http listener")
    }
}

/// A rustls client config trusting `ca`, presenting `client` if given.
fn client_config(ca: &Path, client: Option<&CertFiles>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = CertificateDer::pem_file_iter(&c.cert).unwrap().map(|c| c.unwrap()).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&c.key).unwrap()).unwrap()
        }
    })
}

async fn tcp_from(last: u8, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
    s.connect(to).await.expect("connect")
}

/// `request` over TLS from 127.0.0.`last`: the whole response, or why there is none (the
/// handshake refused, or the connection closed without an answer).
async fn https_from(last: u8, to: SocketAddr, cfg: Arc<rustls::ClientConfig>, request: &str) -> Result<String, String> {
    let sock = tcp_from(last, to).await;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let fut = connector.connect(ServerName::try_from("localhost").unwrap(), sock);
    let mut tls =
        timeout(Duration::from_secs(5), fut).await.expect("handshake within 5 s").map_err(|e| e.to_string())?;
    tls.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let read = timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await.expect("answer or close within 5 s");
    if out.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn ok(r: &Result<String, String>) -> bool {
    r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"))
}

/// Does the server close `s` (EOF or reset) before `deadline`?
async fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The token service over HTTPS with a real client (ureq, rustls): a token for the right
/// secret, the metadata's issuer and endpoints in `https://`; a client that does not trust
/// the server's CA gets nothing; plain HTTP on the TLS port gets no HTTP answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_service_is_served_over_tls_and_untrusting_clients_are_refused() {
    let s = setup("").await;
    let addr = s.addr();
    let ca = s.pki.ca_pem();
    let base = format!("https://localhost:{}", addr.port());
    let (status, token, meta) = tokio::task::spawn_blocking({
        let (base, ca) = (base.clone(), ca.clone());
        move || {
            let agent = ureq::AgentBuilder::new().tls_config(client_config(&ca, None)).build();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("dev-001:{SECRET}"));
            let r = agent
                .post(&format!("{base}/oauth/token"))
                .set("Authorization", &format!("Basic {basic}"))
                .send_form(&[("grant_type", "client_credentials")])
                .expect("token over https");
            let status = r.status();
            let token: serde_json::Value = r.into_json().unwrap();
            let meta: serde_json::Value = agent
                .get(&format!("{base}/.well-known/oauth-authorization-server"))
                .call()
                .expect("metadata")
                .into_json()
                .unwrap();
            (status, token, meta)
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(token["access_token"].as_str().is_some_and(|t| t.split('.').count() == 3), "{token}");
    // The default issuer is `<scheme>://<bind>` (the configured bind: port 0 here).
    let issuer = meta["issuer"].as_str().unwrap_or_default();
    assert!(issuer.starts_with("https://127.0.0.1:"), "the default issuer follows the scheme: {meta}");
    assert_eq!(meta["token_endpoint"], format!("{issuer}/oauth/token"));

    // A client trusting another CA: the handshake fails, nothing is served.
    let other = TestPki::new(&s.pki.dir.join("other"), "other");
    let r = https_from(1, addr, client_config(&other.ca_pem(), None), HEALTHZ).await;
    assert!(r.as_ref().is_err_and(|e| e.contains("certificate")), "{r:?}");
    let r = tokio::task::spawn_blocking(move || ureq::get(&format!("{base}/healthz")).call().is_ok()).await.unwrap();
    assert!(!r, "a client with the public roots only does not trust the test CA");

    // Plain HTTP on the TLS port: no HTTP answer.
    let mut plain = tcp_from(1, addr).await;
    plain.write_all(HEALTHZ.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await.expect("closed within 5 s");
    assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 200"), "plain HTTP answered over the TLS port");

    // And the trusting client is served.
    assert!(ok(&https_from(1, addr, client_config(&ca, None), HEALTHZ).await));
    s.broker.stop().await;
}

/// `client_ca` turns on mutual TLS for the HTTP listener: without a certificate, or with one
/// from another CA, no request is answered; a certificate from the CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_ca_a_client_without_a_certificate_is_refused() {
    let dir_ca = "client_ca = \"{dir}/pki/web-ca.pem\"\n";
    let s = setup(dir_ca).await;
    let addr = s.addr();
    let ca = s.pki.ca_pem();
    let r = https_from(1, addr, client_config(&ca, None), HEALTHZ).await;
    assert!(r.is_err(), "no client certificate: refused, got {r:?}");
    let foreign = TestPki::new(&s.pki.dir.join("foreign"), "foreign").client("ops", Validity::Valid);
    let r = https_from(1, addr, client_config(&ca, Some(&foreign)), HEALTHZ).await;
    assert!(r.is_err(), "a certificate from another CA: refused, got {r:?}");
    let mine = s.pki.client("ops", Validity::Valid);
    assert!(ok(&https_from(1, addr, client_config(&ca, Some(&mine)), HEALTHZ).await));
    s.broker.stop().await;
}

/// A slowloris handshake (a connection that sends no ClientHello, or half of one) is closed
/// after `header_timeout`, and its slot is given back: with one connection allowed per address,
/// the same address is served afterwards. Other addresses are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_closed_after_header_timeout() {
    let s = setup("header_timeout = \"500ms\"\nmax_connections_per_ip = 1\n").await;
    let addr = s.addr();
    let cfg = client_config(&s.pki.ca_pem(), None);
    let mut silent = tcp_from(71, addr).await;
    let mut half = tcp_from(72, addr).await;
    // The first bytes of a TLS record header announcing a ClientHello that never comes.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    assert!(ok(&https_from(1, addr, cfg.clone(), HEALTHZ).await), "another address is served meanwhile");
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(closed_by(&mut silent, deadline).await, "a silent connection still open after 10 s");
    assert!(closed_by(&mut half, deadline).await, "a half handshake still open after 10 s");
    // The slot is given back (retried: the server frees it just after the close is seen).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if ok(&https_from(71, addr, cfg.clone(), HEALTHZ).await) {
            break;
        }
        assert!(Instant::now() < deadline, "127.0.0.71 not served again within 5 s");
    }
    s.broker.stop().await;
}

/// `warden token` (a thin client of the token service) over HTTPS: `--cacert` names the CA to
/// trust; without it the test CA is not trusted and the command fails, naming the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warden_token_speaks_https_with_cacert() {
    let s = setup("").await;
    let url = format!("https://localhost:{}", s.addr().port());
    let ca = s.pki.ca_pem();
    let run = move |cacert: Option<std::path::PathBuf>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warden"));
            cmd.args(["token", "--client-id", "dev-001", "--secret-stdin", "--url", &url]);
            if let Some(c) = &cacert {
                cmd.arg("--cacert").arg(c);
            }
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(format!("{SECRET}\n").as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        })
    };
    let out = run(Some(ca)).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().split('.').count(), 3, "a JWT on stdout");
    let out = run(None).await.unwrap();
    assert!(!out.status.success(), "the test CA is not trusted without --cacert");
    s.broker.stop().await;
}

/// SIGHUP (`Server::reload`) re-reads the HTTP listener's certificate and key, as for the
/// mqtts/wss listeners: new connections get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_http_certificate() {
    let s = setup("").await;
    let addr = s.addr();
    let next = TestPki::new(&s.pki.dir.join("next"), "next");
    let trusts_next = client_config(&next.ca_pem(), None);
    assert!(https_from(1, addr, trusts_next.clone(), HEALTHZ).await.is_err(), "not the new CA's yet");
    std::fs::copy(next.server().cert, s.pki.server().cert).unwrap();
    std::fs::copy(next.server().key, s.pki.server().key).unwrap();
    s.broker.server.reload();
    assert!(ok(&https_from(1, addr, trusts_next, HEALTHZ).await), "served with the reloaded certificate");
    s.broker.stop().await;
}
