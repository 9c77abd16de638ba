//! Per-listener authentication (issue 22) against the real broker: each `[[listener]]` allows
//! only the methods it names (`auth = [...]`) and anonymous access as its `allow_anonymous`
//! says; a method it does not allow is refused there even with valid credentials. Real clients
//! (rumqttc v3.1.1 and v5, over TCP and TLS with a client certificate), the SCRAM exchange
//! written byte by byte, and `warden check` for the load-time errors. Loopback only, every
//! listener on an ephemeral port.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mqtt_codec::{Auth, Connack, Packet, Properties, Protocol, ReasonCode};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{ConnectReturnCode, TlsConfiguration, Transport};
use serde_json::json;
use warden_policy::password::{hash_password, hash_password_scram};
use warden_policy::scram::ScramClient;
use warden_testkit::pki::{CertFiles, TestPki, Validity};
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker, WAIT};

const HS: &str = "listener-auth-hs256-secret-0123456789";
const OPS: (&str, &str) = ("ops", "ops-password");

/// Listener indexes, in configuration order.
const OPERATORS: usize = 0; // auth = ["password", "scram"]
const DEVICES: usize = 1; // mqtts, client_ca (optional), auth = ["certificate"]
const APPS: usize = 2; // auth = ["token"]
const PUBLIC: usize = 3; // auth = [], allow_anonymous = true
const DEFAULT: usize = 4; // no `auth`: the default chain
const TLS_PASSWORDS: usize = 5; // mqtts, client_ca (optional), auth = ["password"]

struct Fleet {
    broker: TestBroker,
    pki: TestPki,
}

/// A broker with the six listeners above; `limits`: a `[limits]` body, if any.
async fn fleet(limits: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "fleet");
    let passwd = dir.path().join("passwd");
    std::fs::write(
        &passwd,
        format!("ops:{}\nsam:{}\n", hash_password(OPS.1.as_bytes()), hash_password_scram(b"sesame")),
    )
    .unwrap();
    let s = pki.server();
    let tls = format!(
        "protocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_cert = \"optional\"\n",
        s.cert.display(),
        s.key.display(),
        pki.ca_pem().display()
    );
    let l = "[[listener]]\nbind = \"127.0.0.1:0\"\n";
    let body = format!(
        "{l}auth = [\"password\", \"scram\"]\n\
         {l}{tls}auth = [\"certificate\"]\n\
         {l}auth = [\"token\"]\n\
         {l}auth = []\nallow_anonymous = true\n\
         {l}\n\
         {l}{tls}auth = [\"password\"]\n\
         [auth]\nallow_anonymous = false\npassword_file = \"{}\"\n\
         [auth.jwt]\nissuer = \"la-iss\"\naudience = \"warden\"\nhs256_secret = \"{HS}\"\n{limits}",
        passwd.display()
    );
    let broker = TestBroker::from_toml_in(dir, &body).await;
    Fleet { broker, pki }
}

impl Fleet {
    fn addr(&self, listener: usize) -> SocketAddr {
        self.broker.server.listeners[listener].addr
    }
}

/// An HS256 access token for `dev-1`.
fn token() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"sub": "dev-1", "iss": "la-iss", "aud": "warden", "iat": now, "exp": now + 300,
        "scope": "mqtt:pub:apps/#"});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(HS.as_bytes())).unwrap()
}

/// What TLS a rumqttc client speaks: none, or TLS with this client certificate (or none).
enum Tls<'a> {
    No,
    With(&'a TestPki, Option<&'a CertFiles>),
}

impl Tls<'_> {
    fn transport(&self) -> Option<Transport> {
        match self {
            Tls::No => None,
            Tls::With(pki, cert) => Some(Transport::Tls(TlsConfiguration::Simple {
                ca: std::fs::read(pki.ca_pem()).unwrap(),
                alpn: None,
                client_auth: cert.map(|c| (std::fs::read(&c.cert).unwrap(), std::fs::read(&c.key).unwrap())),
            })),
        }
    }

    fn host(&self) -> &'static str {
        match self {
            Tls::No => "127.0.0.1",
            Tls::With(..) => "localhost", // the test server certificate's name
        }
    }
}

/// rumqttc, MQTT 3.1.1: the CONNACK's return code.
async fn v3(addr: SocketAddr, id: &str, creds: Option<(&str, &str)>, tls: Tls<'_>) -> ConnectReturnCode {
    let mut o = rumqttc::MqttOptions::new(id, tls.host(), addr.port());
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    if let Some(t) = tls.transport() {
        o.set_transport(t);
    }
    let (_client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    match tokio::time::timeout(WAIT, ev.poll()).await.expect("an answer to CONNECT") {
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => a.code,
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("rumqttc v3: {other:?}"),
    }
}

/// rumqttc, MQTT 5: the CONNACK's reason code.
async fn v5(addr: SocketAddr, id: &str, creds: Option<(&str, &str)>, tls: Tls<'_>) -> p5::ConnectReturnCode {
    let mut o = rumqttc::v5::MqttOptions::new(id, tls.host(), addr.port());
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    if let Some(t) = tls.transport() {
        o.set_transport(t);
    }
    let (_client, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    match tokio::time::timeout(WAIT, ev.poll()).await.expect("an answer to CONNECT") {
        Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a))) => a.code,
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("rumqttc v5: {other:?}"),
    }
}

use p5::ConnectReturnCode as R5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_admits_its_methods_and_refuses_the_others_with_valid_credentials() {
    let f = fleet("").await;
    let tok = token();
    let bad = (OPS.0, "not-the-password");
    // A valid password: where `password` is allowed (and on the default chain), and refused
    // with Not authorized (v3 return code 5) elsewhere.
    for l in [OPERATORS, DEFAULT] {
        assert_eq!(v5(f.addr(l), "ops-a", Some(OPS), Tls::No).await, R5::Success, "listener {l}");
        assert_eq!(v3(f.addr(l), "ops-b", Some(OPS), Tls::No).await, ConnectReturnCode::Success, "listener {l}");
    }
    for l in [APPS, PUBLIC] {
        assert_eq!(v5(f.addr(l), "ops-c", Some(OPS), Tls::No).await, R5::NotAuthorized, "listener {l}");
        assert_eq!(v3(f.addr(l), "ops-d", Some(OPS), Tls::No).await, ConnectReturnCode::NotAuthorized, "listener {l}");
        // A wrong password gets the same answer: nothing is verified there, nothing learnt.
        assert_eq!(v5(f.addr(l), "ops-e", Some(bad), Tls::No).await, R5::NotAuthorized, "listener {l}");
    }
    // Where passwords are allowed, a wrong one is what it always was: 0x86 / v3 4.
    assert_eq!(v5(f.addr(OPERATORS), "ops-f", Some(bad), Tls::No).await, R5::BadUserNamePassword);
    assert_eq!(v3(f.addr(OPERATORS), "ops-g", Some(bad), Tls::No).await, ConnectReturnCode::BadUserNamePassword);

    // A valid access token: on the token listener and the default chain only.
    for l in [APPS, DEFAULT] {
        assert_eq!(v5(f.addr(l), "dev-1", Some(("dev-1", &tok)), Tls::No).await, R5::Success, "listener {l}");
        assert_eq!(v3(f.addr(l), "dev-1", Some(("dev-1", &tok)), Tls::No).await, ConnectReturnCode::Success);
    }
    assert_eq!(v5(f.addr(OPERATORS), "dev-1", Some(("dev-1", &tok)), Tls::No).await, R5::NotAuthorized);
    assert_eq!(v3(f.addr(OPERATORS), "dev-1", Some(("dev-1", &tok)), Tls::No).await, ConnectReturnCode::NotAuthorized);

    // Anonymous: only where the listener allows it ([auth] says no).
    assert_eq!(v5(f.addr(PUBLIC), "anon-1", None, Tls::No).await, R5::Success);
    assert_eq!(v3(f.addr(PUBLIC), "anon-2", None, Tls::No).await, ConnectReturnCode::Success);
    for l in [OPERATORS, APPS, DEFAULT] {
        assert_eq!(v5(f.addr(l), "anon-3", None, Tls::No).await, R5::NotAuthorized, "listener {l}");
        assert_eq!(v3(f.addr(l), "anon-4", None, Tls::No).await, ConnectReturnCode::NotAuthorized, "listener {l}");
    }
    f.broker.stop().await;
}

/// The client side of SCRAM-SHA-256 over a raw connection to `addr`: the first answer to the
/// CONNECT, and — when it was the server-first AUTH — the answer to the client-final AUTH.
async fn scram(addr: SocketAddr, user: &str, password: &[u8]) -> Recv {
    let (mut client, first) = ScramClient::new(user, password);
    let mut c = connect_packet(Protocol::V5, "scram-c", true);
    c.properties.authentication_method = Some("SCRAM-SHA-256".into());
    c.properties.authentication_data = Some(first.into());
    let (mut raw, r) = RawClient::connect(addr, c).await;
    let Recv::Packet(Packet::Auth(a)) = r else { return r };
    assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
    let fin = client.client_final(a.properties.authentication_data.as_deref().unwrap()).unwrap();
    let props = Properties {
        authentication_method: Some("SCRAM-SHA-256".into()),
        authentication_data: Some(fin.into()),
        ..Default::default()
    };
    raw.send(&Packet::Auth(Auth { reason_code: ReasonCode::CONTINUE_AUTHENTICATION, properties: props.into() })).await;
    raw.recv().await
}

fn connack_code(r: &Recv) -> Option<ReasonCode> {
    match r {
        Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => Some(*reason_code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_is_refused_with_bad_authentication_method_where_it_is_not_allowed() {
    let f = fleet("").await;
    // Allowed: the exchange runs to a successful CONNACK (on the operators' listener and the
    // default chain).
    for l in [OPERATORS, DEFAULT] {
        assert_eq!(connack_code(&scram(f.addr(l), "sam", b"sesame").await), Some(ReasonCode::SUCCESS), "listener {l}");
    }
    // [MQTT-4.12.0-1]: an authentication method the server does not support (here) is answered
    // with CONNACK 0x8C Bad authentication method, before any AUTH exchange, and closed.
    for l in [APPS, PUBLIC] {
        let r = scram(f.addr(l), "sam", b"sesame").await;
        assert_eq!(connack_code(&r), Some(ReasonCode::BAD_AUTHENTICATION_METHOD), "listener {l}: {r:?}");
    }
    f.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_authenticates_only_where_certificate_is_allowed() {
    let f = fleet("").await;
    let dev = f.pki.client("dev-7", Validity::Valid);
    // The devices' listener: the certificate is the credential (v3 and v5).
    assert_eq!(v5(f.addr(DEVICES), "dev-7", None, Tls::With(&f.pki, Some(&dev))).await, R5::Success);
    assert_eq!(v3(f.addr(DEVICES), "dev-7", None, Tls::With(&f.pki, Some(&dev))).await, ConnectReturnCode::Success);
    // ... and nothing else is: a valid password over TLS without a certificate is refused.
    assert_eq!(v5(f.addr(DEVICES), "ops-x", Some(OPS), Tls::With(&f.pki, None)).await, R5::NotAuthorized);
    // A TLS listener that verifies certificates but allows passwords only: the same valid
    // certificate alone is refused (0x87 / v3 5) ...
    assert_eq!(v5(f.addr(TLS_PASSWORDS), "dev-7", None, Tls::With(&f.pki, Some(&dev))).await, R5::NotAuthorized);
    assert_eq!(
        v3(f.addr(TLS_PASSWORDS), "dev-7", None, Tls::With(&f.pki, Some(&dev))).await,
        ConnectReturnCode::NotAuthorized
    );
    // ... and with a password the password decides, as for a client without a certificate.
    assert_eq!(v5(f.addr(TLS_PASSWORDS), "ops-y", Some(OPS), Tls::With(&f.pki, Some(&dev))).await, R5::Success);
    assert_eq!(v5(f.addr(TLS_PASSWORDS), "ops-z", Some(OPS), Tls::With(&f.pki, None)).await, R5::Success);
    f.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_a_method_the_listener_does_not_allow_never_ban_the_address() {
    // Two failed logins ban the address; refused methods are no failed logins (a device that
    // dials the wrong port must not ban the NAT address it shares).
    let f = fleet("[limits]\nauth_fail_ban = { failures = 2, within = \"60s\", ban = \"300s\" }\n").await;
    for i in 0..5 {
        assert_eq!(v5(f.addr(APPS), &format!("w{i}"), Some(OPS), Tls::No).await, R5::NotAuthorized);
    }
    let (_, first) = ScramClient::new("sam", b"sesame");
    let mut c = connect_packet(Protocol::V5, "scram-w", true);
    c.properties.authentication_method = Some("SCRAM-SHA-256".into());
    c.properties.authentication_data = Some(first.into());
    for _ in 0..3 {
        let r = RawClient::connect(f.addr(PUBLIC), c.clone()).await.1;
        assert_eq!(connack_code(&r), Some(ReasonCode::BAD_AUTHENTICATION_METHOD));
    }
    assert_eq!(v5(f.addr(OPERATORS), "ops-ok", Some(OPS), Tls::No).await, R5::Success, "the address is not banned");
    // Real failures still count: two wrong passwords, then the address is refused at accept.
    for i in 0..2 {
        let code = v5(f.addr(OPERATORS), &format!("g{i}"), Some((OPS.0, "guess")), Tls::No).await;
        assert_eq!(code, R5::BadUserNamePassword);
    }
    let mut o = rumqttc::v5::MqttOptions::new("after-ban", "127.0.0.1", f.addr(OPERATORS).port());
    o.set_credentials(OPS.0, OPS.1);
    let (_client, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    let r = tokio::time::timeout(WAIT, ev.poll()).await.expect("an answer");
    assert!(!matches!(r, Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(_)))), "banned: {r:?}");
    f.broker.stop().await;
}

/// `warden check` refuses listener methods it cannot honour, naming file and line.
#[test]
fn check_names_file_and_line_of_a_bad_listener_method() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, format!("ops:{}\n", hash_password(b"x"))).unwrap();
    let cfg = dir.path().join("warden.toml");
    let head = format!("data_dir = \"{}\"\n", dir.path().join("data").display());
    let tail = format!("[auth]\npassword_file = \"{}\"\n", passwd.display());
    for (listener, line, reason) in [
        ("auth = [\"password\", \"kerberos\"]\n", 5, "unknown authentication method \"kerberos\""),
        ("auth = [\"certificate\"]\n", 5, "needs TLS client-certificate verification"),
        ("auth = [\"lookup\"]\n", 5, "needs [auth.http]"),
    ] {
        std::fs::write(
            &cfg,
            format!("{head}[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n{listener}{tail}"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{listener}: {text}");
        assert!(text.contains(&format!("warden.toml:{line}:")) && text.contains(reason), "{listener}: {text}");
    }
    // The same listener with a method the broker has: fine.
    std::fs::write(&cfg, format!("{head}[[listener]]\nbind = \"127.0.0.1:0\"\nauth = [\"password\"]\n{tail}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
