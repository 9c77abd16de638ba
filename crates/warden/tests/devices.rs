//! The device registry (issue 23, first slice) against the real broker, with real TLS clients
//! and a PKI made by the tests: registered devices work within the topics their attributes
//! name (`%{attr:site}`), strict mode (`[auth] registered_certificates_only`) refuses
//! certificates the registry does not hold as active, revoking a certificate through the admin
//! API ends its live connection (v5 DISCONNECT 0x87, as a CRL revocation does) and refuses it
//! at the next CONNECT, and malformed requests are refused with 400. Refusals next to accepts.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::OnceLock;

use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use serde_json::{json, Value};
use warden::config::ListenerProtocol;
use warden_testkit::pki::{tls_connect, CertFiles, TestPki, Validity};
use warden_testkit::{connect_packet, publish, RawClient, Recv, TestBroker, WAIT};

const ADMIN_TOKEN: &str = "admin-token-for-device-tests-0123";

fn token_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes()))
}

struct Setup {
    broker: TestBroker,
    pki: TestPki,
}

/// A broker with an mqtts listener requiring client certificates of the test CA, the admin
/// API, and `extra` TOML tables.
async fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "fleet");
    let s = pki.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
         [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n[authz]\non_deny = \"drop\"\n{extra}",
        s.cert.display(),
        s.key.display(),
        pki.ca_pem().display(),
        token_hash(),
    );
    Setup { broker: TestBroker::from_toml_in(dir, &body).await, pki }
}

/// One admin API call; the status and the JSON body.
async fn http(b: &TestBroker, method: &str, path: &str, body: Option<String>) -> (u16, Value) {
    let a = b.http(method, path, &[warden_testkit::http::bearer(ADMIN_TOKEN)], body).await;
    (a.status, a.json())
}

/// An admin API call that must succeed.
async fn admin(b: &TestBroker, method: &str, path: &str, body: Value) -> Value {
    let (s, v) = http(b, method, path, Some(body.to_string())).await;
    assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
    v
}

fn pem(c: &CertFiles) -> String {
    std::fs::read_to_string(&c.cert).unwrap()
}

/// The role every authenticated client holds: its own device topics, by site.
async fn fleet_rules(b: &TestBroker) {
    let rule = |id: &str, action: &str| json!({"id": id, "action": action, "topic": "devices/%{attr:site}/%i/#", "effect": "allow"});
    admin(
        b,
        "POST",
        "/admin/roles",
        json!({"name": "fleet", "rules": [rule("pub", "publish"), rule("sub", "subscribe")]}),
    )
    .await;
    admin(b, "POST", "/admin/groups", json!({"name": "anyone-authenticated", "roles": ["fleet"]})).await;
}

/// Register device `id` at `site` with the certificate `cert` (by its PEM).
async fn register(b: &TestBroker, id: &str, site: &str, cert: &CertFiles) -> String {
    admin(b, "POST", "/admin/devices", json!({"id": id, "type": "sensor", "attributes": {"site": site}})).await;
    let v = admin(b, "POST", &format!("/admin/devices/{id}/certificates"), json!({"pem": pem(cert)})).await;
    v["fingerprint"].as_str().unwrap().to_owned()
}

impl Setup {
    /// TLS with `cert`, then CONNECT as `id`: the client and the CONNACK's reason code (`None`:
    /// no CONNACK).
    async fn open(&self, cert: &CertFiles, id: &str, v: Protocol) -> (RawClient, Option<ReasonCode>) {
        let addr = self.broker.addr_of(ListenerProtocol::Mqtts);
        let stream = tls_connect(addr, &self.pki.ca_pem(), Some(cert)).await.expect("handshake");
        let (c, r) = RawClient::connect_over(stream, connect_packet(v, id, true)).await;
        match r {
            Recv::Packet(Packet::Connack(a)) => (c, Some(a.reason_code)),
            _ => (c, None),
        }
    }

    async fn connected(&self, cert: &CertFiles, id: &str, v: Protocol) -> RawClient {
        let (c, code) = self.open(cert, id, v).await;
        assert_eq!(code, Some(ReasonCode::SUCCESS), "{id}");
        c
    }

    async fn connack(&self, cert: &CertFiles, id: &str, v: Protocol) -> Option<ReasonCode> {
        self.open(cert, id, v).await.1
    }
}

/// The connection gets a DISCONNECT: its reason code.
async fn expect_disconnect(c: &mut RawClient) -> ReasonCode {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, c.recv()).await.expect("DISCONNECT in time") {
            Recv::Packet(Packet::Disconnect(d)) => return d.reason_code,
            Recv::Packet(_) => {}
            other => panic!("closed without DISCONNECT: {other:?}"),
        }
    }
}

/// The connection still answers a PINGREQ.
async fn assert_alive(c: &mut RawClient) {
    c.send(&Packet::PingReq).await;
    loop {
        match c.recv_within(WAIT).await {
            Recv::Packet(Packet::PingResp) => return,
            Recv::Packet(_) => {}
            other => panic!("connection not alive: {other:?}"),
        }
    }
}

/// PUBLISH at QoS 1 and the PUBACK's reason code.
async fn puback(c: &mut RawClient, topic: &str, id: u16) -> ReasonCode {
    c.send(&publish(topic, QoS::AtLeastOnce, id, b"x")).await;
    loop {
        match c.recv_within(WAIT).await {
            Recv::Packet(Packet::PubAck(a)) if a.packet_id == id => return a.reason_code,
            Recv::Packet(_) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

/// A registered device works within `devices/<its site>/<its id>/#` and nowhere else; its
/// attributes changed through the API apply to the live connection at once; a certificate the
/// registry does not know is accepted (strict mode off) but, being no device, gets no
/// attribute rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_device_works_within_its_attribute_topics() {
    let s = setup("").await;
    let b = &s.broker;
    fleet_rules(b).await;
    let dev = s.pki.client("dev-1", Validity::Valid);
    register(b, "dev-1", "berlin", &dev).await;
    let mut c = s.connected(&dev, "dev-1", Protocol::V5).await;
    assert_eq!(c.subscribe(1, "devices/berlin/dev-1/#", QoS::AtLeastOnce).await, [ReasonCode(1)]);
    assert_eq!(c.subscribe(2, "devices/paris/dev-1/#", QoS::AtLeastOnce).await, [ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(c.subscribe(3, "devices/+/dev-1/#", QoS::AtLeastOnce).await, [ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(c.subscribe(4, "devices/berlin/dev-2/#", QoS::AtLeastOnce).await, [ReasonCode::NOT_AUTHORIZED]);
    // Allowed: delivered back to its own subscription (QoS 0: no PUBACK to tell apart).
    c.send(&publish("devices/berlin/dev-1/temp", QoS::AtMostOnce, 0, b"21")).await;
    assert_eq!(c.expect_publish().await.topic.as_str(), "devices/berlin/dev-1/temp");
    assert_eq!(puback(&mut c, "devices/paris/dev-1/temp", 11).await, ReasonCode::NOT_AUTHORIZED);

    // The device moves: its rules follow at once, on the live connection.
    admin(b, "PUT", "/admin/devices/dev-1", json!({"attributes": {"site": "paris"}})).await;
    assert_eq!(puback(&mut c, "devices/paris/dev-1/temp", 12).await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut c, "devices/berlin/dev-1/temp", 13).await, ReasonCode::NOT_AUTHORIZED);

    // An attribute value that would widen the rule is never substituted.
    admin(b, "PUT", "/admin/devices/dev-1", json!({"attributes": {"site": "+"}})).await;
    assert_eq!(c.subscribe(5, "devices/+/dev-1/#", QoS::AtLeastOnce).await, [ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(puback(&mut c, "devices/paris/dev-1/temp", 14).await, ReasonCode::NOT_AUTHORIZED);

    // Not registered, strict mode off: accepted, but no attribute rule applies to it.
    let stranger = s.pki.client("dev-9", Validity::Valid);
    let mut x = s.connected(&stranger, "dev-9", Protocol::V5).await;
    assert_eq!(x.subscribe(1, "devices/berlin/dev-9/#", QoS::AtLeastOnce).await, [ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(puback(&mut x, "devices/berlin/dev-9/t", 2).await, ReasonCode::NOT_AUTHORIZED);

    // The registry is persisted with the policy store.
    let saved = std::fs::read_to_string(b.path("policy.json")).unwrap();
    assert!(saved.contains("\"devices\"") && saved.contains("dev-1"), "{saved}");
}

/// `[auth] registered_certificates_only`: only a certificate the registry holds as active,
/// for the device its identity names, is accepted (0x87 / v3 0x05 otherwise); a valid chain
/// alone is not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_accepts_only_registered_active_certificates() {
    let s = setup("[auth]\nregistered_certificates_only = true\n").await;
    let b = &s.broker;
    let dev = s.pki.client("dev-1", Validity::Valid);
    let unregistered = s.pki.client("dev-2", Validity::Valid);
    register(b, "dev-1", "berlin", &dev).await;
    assert_eq!(s.connack(&dev, "dev-1", Protocol::V5).await, Some(ReasonCode::SUCCESS));
    assert_eq!(s.connack(&dev, "dev-1", Protocol::V311).await, Some(ReasonCode::SUCCESS));
    assert_eq!(s.connack(&unregistered, "dev-2", Protocol::V5).await, Some(ReasonCode::NOT_AUTHORIZED));
    assert_eq!(s.connack(&unregistered, "dev-2", Protocol::V311).await, Some(ReasonCode(0x05)));

    // Registered inactive: still refused; made active: accepted.
    admin(b, "POST", "/admin/devices", json!({"id": "dev-2"})).await;
    let v =
        admin(b, "POST", "/admin/devices/dev-2/certificates", json!({"pem": pem(&unregistered), "status": "inactive"}))
            .await;
    let fp = v["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(s.connack(&unregistered, "dev-2", Protocol::V5).await, Some(ReasonCode::NOT_AUTHORIZED));
    admin(b, "PUT", &format!("/admin/devices/dev-2/certificates/{fp}"), json!({"status": "active"})).await;
    assert_eq!(s.connack(&unregistered, "dev-2", Protocol::V5).await, Some(ReasonCode::SUCCESS));

    // A certificate registered to another device than its identity names: refused.
    let imposter = s.pki.client("dev-3", Validity::Valid);
    admin(b, "POST", "/admin/devices/dev-1/certificates", json!({"pem": pem(&imposter)})).await;
    assert_eq!(s.connack(&imposter, "dev-3", Protocol::V5).await, Some(ReasonCode::NOT_AUTHORIZED));

    // Unregistering a live device's certificate ends its connection in strict mode.
    let mut c = s.connected(&unregistered, "dev-2", Protocol::V5).await;
    let (st, _) = http(b, "DELETE", &format!("/admin/devices/dev-2/certificates/{fp}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(expect_disconnect(&mut c).await, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(s.connack(&unregistered, "dev-2", Protocol::V5).await, Some(ReasonCode::NOT_AUTHORIZED));
}

/// Revoking (or making inactive) a device certificate through the admin API ends its live
/// connections at once — v5 DISCONNECT 0x87, as a CRL revocation does; a v3 connection is
/// closed — and refuses it at the next CONNECT; other devices are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_certificate_ends_its_connection() {
    let s = setup("").await;
    let b = &s.broker;
    let (dev_a, dev_b, dev_c) = (
        s.pki.client("dev-a", Validity::Valid),
        s.pki.client("dev-b", Validity::Valid),
        s.pki.client("dev-c", Validity::Valid),
    );
    let fp_a = register(b, "dev-a", "berlin", &dev_a).await;
    register(b, "dev-b", "berlin", &dev_b).await;
    let fp_c = register(b, "dev-c", "berlin", &dev_c).await;
    let mut a = s.connected(&dev_a, "dev-a", Protocol::V5).await;
    let mut bb = s.connected(&dev_b, "dev-b", Protocol::V5).await;
    let mut c3 = s.connected(&dev_c, "dev-c", Protocol::V311).await;

    admin(b, "PUT", &format!("/admin/devices/dev-a/certificates/{fp_a}"), json!({"status": "revoked"})).await;
    assert_eq!(expect_disconnect(&mut a).await, ReasonCode::NOT_AUTHORIZED);
    assert_alive(&mut bb).await;
    assert_eq!(s.connack(&dev_a, "dev-a", Protocol::V5).await, Some(ReasonCode::NOT_AUTHORIZED));
    assert_eq!(s.connack(&dev_a, "dev-a", Protocol::V311).await, Some(ReasonCode(0x05)));
    // Revoked stays revoked.
    let (st, _) =
        http(b, "PUT", &format!("/admin/devices/dev-a/certificates/{fp_a}"), Some(r#"{"status":"active"}"#.into()))
            .await;
    assert_eq!(st, 409);

    // Inactive, on a v3.1.1 connection: closed (v3 has no DISCONNECT from the server).
    admin(b, "PUT", &format!("/admin/devices/dev-c/certificates/{fp_c}"), json!({"status": "inactive"})).await;
    let seen = c3.expect_closed_within(WAIT).await;
    assert!(seen.iter().all(|p| !matches!(p, Packet::Disconnect(_))), "{seen:?}");
    assert_eq!(s.connack(&dev_c, "dev-c", Protocol::V311).await, Some(ReasonCode(0x05)));
    assert_alive(&mut bb).await;

    // The audit trail names each change.
    let (_, trail) = http(b, "GET", "/admin/audit", None).await;
    let actions: Vec<&str> = trail.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"device.create") && actions.contains(&"device.cert.status"), "{actions:?}");
}

/// Disabling a device refuses its name whatever proves it: its live connections end (0x87),
/// its reconnect is refused, and enabling it lets it back; the view says whether a password
/// (a store user of its name) is one of its credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_device_is_refused_whatever_proves_it() {
    let s = setup("").await;
    let b = &s.broker;
    let (dev_d, dev_e) = (s.pki.client("dev-d", Validity::Valid), s.pki.client("dev-e", Validity::Valid));
    register(b, "dev-d", "berlin", &dev_d).await;
    register(b, "dev-e", "berlin", &dev_e).await;
    admin(b, "POST", "/admin/users", json!({"name": "dev-d", "password": "a-long-device-password-1"})).await;
    let view = admin(b, "GET", "/admin/devices/dev-d", Value::Null).await;
    assert_eq!((&view["disabled"], &view["password"]), (&json!(false), &json!(true)));
    assert_eq!(admin(b, "GET", "/admin/devices/dev-e", Value::Null).await["password"], json!(false));
    let mut d = s.connected(&dev_d, "dev-d", Protocol::V5).await;
    let mut e = s.connected(&dev_e, "dev-e", Protocol::V5).await;

    admin(b, "PUT", "/admin/devices/dev-d", json!({"disabled": true})).await;
    assert_eq!(expect_disconnect(&mut d).await, ReasonCode::NOT_AUTHORIZED);
    assert_alive(&mut e).await;
    assert_eq!(s.connack(&dev_d, "dev-d", Protocol::V5).await, Some(ReasonCode::NOT_AUTHORIZED));
    assert_eq!(admin(b, "GET", "/admin/devices/dev-d", Value::Null).await["disabled"], json!(true));

    admin(b, "PUT", "/admin/devices/dev-d", json!({"disabled": false})).await;
    s.connected(&dev_d, "dev-d", Protocol::V5).await;
    let (st, _) = http(b, "PUT", "/admin/devices/dev-d", Some(r#"{"disabled":"yes"}"#.into())).await;
    assert_eq!(st, 400);
}

/// Wrong or malformed input to the registry's API: 400 (and 404 / 409 where they apply),
/// nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_registry_requests_are_refused() {
    let s = setup("").await;
    let b = &s.broker;
    let dev = s.pki.client("dev-1", Validity::Valid);
    register(b, "dev-1", "berlin", &dev).await;
    for (method, path, body) in [
        ("POST", "/admin/devices", "{\"id\":"),
        ("POST", "/admin/devices", r#"{"id":"a/b"}"#),
        ("POST", "/admin/devices", r#"{"id":"x","attributes":{"id":"y"}}"#),
        ("POST", "/admin/devices", r#"{"id":"x","attributes":{"si te":"y"}}"#),
        ("POST", "/admin/devices", r#"{"id":"x","certificates":[{"fingerprint":"12"}]}"#),
        ("POST", "/admin/devices/dev-1/certificates", r#"{"pem":"not a certificate"}"#),
        ("POST", "/admin/devices/dev-1/certificates", r#"{}"#),
        ("PUT", "/admin/devices/dev-1", r#"{"colour":"red"}"#),
        ("PUT", "/admin/devices/dev-1/certificates/xyz", r#"{"status":"revoked"}"#),
    ] {
        let (st, v) = http(b, method, path, Some(body.into())).await;
        assert_eq!(st, 400, "{method} {path} {body}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (st, _) =
        http(b, "POST", "/admin/devices/nope/certificates", Some(json!({"pem": pem(&dev)}).to_string())).await;
    assert_eq!(st, 404);
    let (st, _) = http(b, "POST", "/admin/devices", Some(r#"{"id":"dev-2","certificates":[{"pem":""}]}"#.into())).await;
    assert_eq!(st, 400);
    // The same certificate for a second device: 409.
    admin(b, "POST", "/admin/devices", json!({"id": "dev-2"})).await;
    let (st, _) =
        http(b, "POST", "/admin/devices/dev-2/certificates", Some(json!({"pem": pem(&dev)}).to_string())).await;
    assert_eq!(st, 409);
    let v = admin(b, "GET", "/admin/devices/dev-1", json!(null)).await;
    assert_eq!(v["attributes"], json!({"site": "berlin"}));
    assert_eq!(v["certificates"].as_array().unwrap().len(), 1);
}

/// `warden admin device …` against the running broker; (success, stdout + stderr).
async fn cli(b: &TestBroker, args: &[&str]) -> (bool, String) {
    let url = format!("http://{}", b.server.http_addr.unwrap());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["admin", "--url", &url, "device"])
            .args(&args)
            .env("WARDEN_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run warden");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

/// The CLI drives the registry: add with a certificate file, list, revoke (the live
/// connection ends), and refusals come back as the API's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_manages_devices() {
    let s = setup("").await;
    let b = &s.broker;
    let dev = s.pki.client("dev-1", Validity::Valid);
    let cert = dev.cert.display().to_string();
    let (ok, out) = cli(b, &["add", "dev-1", "--type", "sensor", "--attr", "site=berlin", "--cert", &cert]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(b, &["list"]).await;
    assert!(ok && out.contains("dev-1\ttype=sensor\towner=-\tattributes=site=berlin"), "{out}");
    let fp = out.lines().find_map(|l| l.strip_prefix("  ")).and_then(|l| l.split('\t').next()).unwrap().to_owned();
    assert!(out.contains(&format!("{fp}\tactive")), "{out}");
    let mut c = s.connected(&dev, "dev-1", Protocol::V5).await;
    let (ok, out) = cli(b, &["cert-status", "dev-1", &fp, "revoked"]).await;
    assert!(ok, "{out}");
    assert_eq!(expect_disconnect(&mut c).await, ReasonCode::NOT_AUTHORIZED);
    let (ok, out) = cli(b, &["cert-status", "dev-1", &fp, "active"]).await;
    assert!(!ok && out.contains("409"), "{out}");
    let (ok, out) = cli(b, &["add", "dev/2"]).await;
    assert!(!ok && out.contains("400"), "{out}");
    let (ok, out) = cli(b, &["set", "dev-1", "--attr", "no-equals-sign"]).await;
    assert!(!ok && out.contains("expected NAME=VALUE"), "{out}");
}

/// `warden check` reads `registered_certificates_only`, says what it means, warns when no
/// listener verifies client certificates, and refuses a policy store whose registry is
/// invalid.
#[test]
fn warden_check_reports_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\nregistered_certificates_only = true\n",
            data.display()
        ),
    )
    .unwrap();
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check();
    assert!(ok, "{out}");
    assert!(out.contains("device registry: 0 device(s)"), "{out}");
    assert!(out.contains("registered_certificates_only is set but no listener verifies client certificates"), "{out}");
    // A registry naming one certificate for two devices: refused with the file's name.
    let fp = "ab".repeat(32);
    let store = format!(
        r#"{{"version":1,"devices":{{"a":{{"certificates":{{"{fp}":{{}}}}}},"b":{{"certificates":{{"{fp}":{{}}}}}}}}}}"#
    );
    std::fs::write(data.join("policy.json"), store).unwrap();
    let (ok, out) = check();
    assert!(!ok && out.contains("policy.json") && out.contains("registered to both"), "{out}");
    // A misspelt key is refused.
    std::fs::write(&cfg, "[auth]\nregistered_certificate_only = true\n").unwrap();
    let (ok, out) = check();
    assert!(!ok && out.contains("registered_certificate_only"), "{out}");
}
