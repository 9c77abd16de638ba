//! What the security console (SPEC §12) asks of the admin API, against the real broker:
//! `POST /admin/explain` (the broker's own decision, naming the deciding rule), `GET
//! /admin/stats` (the Overview's counters), `GET /admin/certificates` (client certificates seen
//! in TLS handshakes, revoked ones marked once a reloaded CRL names them), the client list's
//! authentication method and credential expiry, the refusal of cross-origin requests, and the
//! console page itself. The browser side is tested in a real Chromium by
//! `crates/warden-http/console/test/console.test.mjs`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::OnceLock;

use bytes::Bytes;
use mqtt_codec::{Connack, Packet, Protocol, QoS, ReasonCode};
use serde_json::{json, Value};
use warden::config::ListenerProtocol;
use warden_testkit::pki::{tls_connect, warden_cert, CertFiles};
use warden_testkit::{connect_packet, publish, RawClient, Recv, TestBroker, WAIT};

const ADMIN_TOKEN: &str = "console-admin-token-0123456789abcdef";
const PW: &str = "pw-of-console-users";

fn token_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes()))
}

fn config(extra: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n{extra}\n[http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n\
         [oauth]\nenabled = true\n[[oauth.client]]\nid = \"dev\"\nsecret_hash = \"{}\"\nscopes = [\"mqtt:pub:x\"]\n",
        token_hash(),
        token_hash()
    )
}

/// One HTTP call with extra headers; the status, the headers asked for, and the JSON body.
async fn http(
    b: &TestBroker,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Vec<Option<String>>, Value) {
    let headers: Vec<(&str, String)> = headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let a = b.http(method, path, &headers, body.map(|v| v.to_string())).await;
    let asked = ["access-control-allow-origin", "content-security-policy", "content-type"]
        .iter()
        .map(|h| a.header(h).map(str::to_owned))
        .collect();
    (a.status, asked, serde_json::from_str(&a.text).unwrap_or(Value::String(a.text.clone())))
}

const BEARER: &str = "Bearer console-admin-token-0123456789abcdef";

async fn admin(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> Value {
    let (s, _, v) = http(b, method, path, &[("Authorization", BEARER)], body).await;
    assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
    v
}

async fn explain(b: &TestBroker, body: Value) -> (u16, Value) {
    let (s, _, v) = http(b, "POST", "/admin/explain", &[("Authorization", BEARER)], Some(body)).await;
    (s, v)
}

fn login(client_id: &str, user: &str, pw: &str) -> mqtt_codec::Connect {
    let mut c = connect_packet(Protocol::V5, client_id, true);
    c.username = Some(user.to_owned());
    c.password = Some(Bytes::copy_from_slice(pw.as_bytes()));
    c
}

async fn connack(b: &TestBroker, c: mqtt_codec::Connect) -> (RawClient, ReasonCode) {
    let (client, r) = RawClient::connect(b.addr(), c).await;
    match r {
        Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => (client, reason_code),
        other => panic!("no CONNACK: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_with_the_brokers_decision_and_names_the_deciding_rule() {
    let b = TestBroker::from_toml(&format!("{}[authz]\non_deny = \"drop\"\n", config(""))).await;
    admin(&b, "POST", "/admin/roles", Some(json!({"name": "sensor", "rules": []}))).await;
    let rule = json!({"id": "pub-sensors", "action": "publish", "topic": "sensors/#", "effect": "allow"});
    admin(&b, "POST", "/admin/roles/sensor/rules", Some(rule)).await;
    let deny = json!({"id": "no-secret", "action": "publish", "topic": "sensors/secret", "effect": "deny"});
    admin(&b, "POST", "/admin/roles/sensor/rules", Some(deny)).await;
    admin(&b, "POST", "/admin/users", Some(json!({"name": "dev7", "password": PW, "roles": ["sensor"]}))).await;

    let ask = |topic: &str| json!({"principal": "dev7", "action": "publish", "topic": topic});
    let (s, v) = explain(&b, ask("sensors/x")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(v["decided_by"], "store:sensor/pub-sensors");
    assert_eq!((v["role"].as_str(), v["rule"].as_str()), (Some("sensor"), Some("pub-sensors")));
    // An explicit deny wins over the allow.
    let (_, v) = explain(&b, ask("sensors/secret")).await;
    assert_eq!((v["decision"].as_str(), v["rule"].as_str()), (Some("deny"), Some("no-secret")), "{v}");
    let (_, v) = explain(&b, ask("other/x")).await;
    assert_eq!((v["decision"].as_str(), v["decided_by"].as_str()), (Some("deny"), Some("default-deny")), "{v}");
    // A topic the codec refuses is denied as the broker would never get that far.
    let (_, v) = explain(&b, ask("sensors/+")).await;
    assert_eq!((v["decision"].as_str(), v["decided_by"].as_str()), (Some("deny"), Some("invalid-topic")), "{v}");

    // What Explain says is what the broker does: the user's publish to sensors/x is accepted,
    // to other/x it is refused (on_deny = "drop": acknowledged with 0x87, not delivered).
    let (mut c, rc) = connack(&b, login("dev7-c", "dev7", PW)).await;
    assert_eq!(rc, ReasonCode::SUCCESS);
    c.send(&publish("sensors/x", QoS::AtLeastOnce, 1, b"ok")).await;
    c.send(&publish("other/x", QoS::AtLeastOnce, 2, b"no")).await;
    let mut acks = Vec::new();
    while acks.len() < 2 {
        match c.recv().await {
            Recv::Packet(Packet::PubAck(a)) => acks.push((a.packet_id, a.reason_code)),
            Recv::Packet(_) => {}
            other => panic!("{other:?}"),
        }
    }
    acks.sort_by_key(|a| a.0);
    assert_eq!(acks[0].1, ReasonCode::SUCCESS);
    assert_eq!(acks[1].1, ReasonCode::NOT_AUTHORIZED);

    // Refusals: malformed questions are 400, without the token 401.
    for bad in [
        json!({"principal": "dev7", "action": "fly", "topic": "a"}),
        json!({"principal": "dev7", "action": "publish", "topic": "a", "qos": 3}),
        json!({"principal": "dev7", "kind": "wizard", "action": "publish", "topic": "a"}),
        json!({"principal": "", "action": "publish", "topic": "a"}),
        json!({"principal": "dev7", "action": "publish", "topic": "a", "unknown": 1}),
    ] {
        assert_eq!(explain(&b, bad.clone()).await.0, 400, "{bad}");
    }
    let (s, _, _) = http(&b, "POST", "/admin/explain", &[], Some(ask("sensors/x"))).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_connections_messages_and_authentication_failures() {
    let b = TestBroker::from_toml(&config("")).await;
    admin(&b, "POST", "/admin/users", Some(json!({"name": "ann", "password": PW}))).await;
    let before = admin(&b, "GET", "/admin/stats", None).await;
    let (mut c, rc) = connack(&b, login("ann-1", "ann", PW)).await;
    assert_eq!(rc, ReasonCode::SUCCESS);
    c.send(&publish("t/1", QoS::AtLeastOnce, 1, b"x")).await;
    assert!(matches!(c.recv().await, Recv::Packet(Packet::PubAck(_))));
    let (_, rc) = connack(&b, login("ann-2", "ann", "wrong")).await;
    assert_eq!(rc, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let after = admin(&b, "GET", "/admin/stats", None).await;
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(n(&after, "connections"), 1, "{after}");
    assert_eq!(n(&after, "messages_received") - n(&before, "messages_received"), 1);
    assert_eq!(n(&after, "auth_failures") - n(&before, "auth_failures"), 1);
    assert!(n(&after, "connections_refused") > n(&before, "connections_refused"));
    assert!(n(&after, "at_ms") >= n(&before, "at_ms"));
    let (s, _, _) = http(&b, "GET", "/admin/stats", &[("Authorization", "Bearer wrong-token")], None).await;
    assert_eq!(s, 401);
    // The history is sampled from the start (its first sample at once, then every 5 s).
    let history = admin(&b, "GET", "/admin/stats/history", None).await;
    let first = &history.as_array().expect("an array")[0];
    assert!(n(first, "at_ms") <= n(&after, "at_ms"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_list_says_how_each_client_authenticated_and_when_its_token_expires() {
    let b = TestBroker::from_toml(&config("")).await;
    admin(&b, "POST", "/admin/users", Some(json!({"name": "ann", "password": PW}))).await;
    let (_ann, rc) = connack(&b, login("ann-1", "ann", PW)).await;
    assert_eq!(rc, ReasonCode::SUCCESS);
    // A token of the built-in service, in the CONNECT password.
    let url = format!("http://{}/oauth/token", b.server.http_addr.unwrap());
    let token = tokio::task::spawn_blocking(move || {
        let r = ureq::post(&url)
            .timeout(WAIT)
            .send_form(&[("grant_type", "client_credentials"), ("client_id", "dev"), ("client_secret", ADMIN_TOKEN)])
            .unwrap();
        r.into_json::<Value>().unwrap()["access_token"].as_str().unwrap().to_owned()
    })
    .await
    .unwrap();
    let (_tok, rc) = connack(&b, login("dev", "dev", &token)).await;
    assert_eq!(rc, ReasonCode::SUCCESS);
    let list = admin(&b, "GET", "/admin/clients", None).await;
    let of = |id: &str| list.as_array().unwrap().iter().find(|c| c["client_id"] == id).cloned().unwrap();
    assert_eq!(of("ann-1")["method"], "policy-store");
    assert!(of("ann-1").get("token_expires_at").is_none());
    let dev = of("dev");
    assert_eq!(dev["method"], "token");
    let exp = dev["token_expires_at"].as_u64().expect("token expiry");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(exp > now && exp < now + 24 * 3600, "{dev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_seen_are_listed_and_marked_revoked_once_a_reloaded_crl_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let cert = |args: &[&str]| warden_cert(env!("CARGO_BIN_EXE_warden"), &pki, args);
    for args in [&["ca"][..], &["server"], &["client", "--cn", "dev-8"], &["client", "--cn", "dev-9"]] {
        cert(args);
    }
    cert(&["revoke", "--cn", "dev-9"]); // writes the CRL (dev-9 revoked before the start)
    let tls = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{p}/server.pem\"\nkey = \"{p}/server.key\"\n\
         client_ca = \"{p}/ca.pem\"\nclient_cert = \"required\"\nidentity_from_cert = \"cn\"\ncrl = \"{p}/ca.crl\"\n",
        p = pki.display()
    );
    let b = TestBroker::from_toml_in(dir, &config(&tls)).await;
    assert_eq!(admin(&b, "GET", "/admin/certificates", None).await, json!([]));
    let files = CertFiles { cert: pki.join("dev-8.pem"), key: pki.join("dev-8.key"), serial: 0 };
    let stream = tls_connect(b.addr_of(ListenerProtocol::Mqtts), &pki.join("ca.pem"), Some(&files)).await.unwrap();
    let (mut dev8, r) = RawClient::connect_over(stream, connect_packet(Protocol::V5, "dev-8", true)).await;
    assert!(matches!(r, Recv::Packet(Packet::Connack(Connack { reason_code: ReasonCode::SUCCESS, .. }))), "{r:?}");

    let certs = admin(&b, "GET", "/admin/certificates", None).await;
    let c = &certs[0];
    assert_eq!(certs.as_array().unwrap().len(), 1, "{certs}");
    assert!(c["subject"].as_str().unwrap().contains("CN=dev-8"), "{c}");
    assert_eq!(c["identity"], "dev-8");
    assert_eq!(
        (c["revoked"].as_bool(), c["connected"].as_u64(), c["handshakes"].as_u64()),
        (Some(false), Some(1), Some(1))
    );
    assert_eq!(c["fingerprint"].as_str().unwrap().len(), 64);
    let clients = admin(&b, "GET", "/admin/clients", None).await;
    let me = clients.as_array().unwrap().iter().find(|x| x["client_id"] == "dev-8").unwrap().clone();
    assert_eq!(me["method"], "certificate");
    assert!(me["certificate"].as_str().unwrap().contains("CN=dev-8"), "{me}");
    assert_eq!(me["cert_expires_at"], c["not_after"]);

    // Revoked and reloaded: its connection ends, and the list says revoked.
    cert(&["revoke", "--cn", "dev-8"]);
    b.server.reload();
    dev8.expect_closed_within(WAIT).await;
    // The registration goes when the connection's task ends, just after its socket closes:
    // ask until it is gone (bounded).
    let deadline = std::time::Instant::now() + WAIT;
    let certs = loop {
        let certs = admin(&b, "GET", "/admin/certificates", None).await;
        if certs[0]["connected"] == 0 || std::time::Instant::now() > deadline {
            break certs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!((certs[0]["revoked"].as_bool(), certs[0]["connected"].as_u64()), (Some(true), Some(0)), "{certs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_requests_are_refused_and_never_granted() {
    let b = TestBroker::from_toml(&config("")).await;
    let host = b.server.http_addr.unwrap().to_string();
    let same = format!("http://{host}");
    // The console's own origin: allowed, and no CORS header (none is needed).
    let (s, h, _) = http(&b, "GET", "/admin/clients", &[("Authorization", BEARER), ("Origin", &same)], None).await;
    assert_eq!((s, h[0].as_deref()), (200, None));
    // Another origin: refused before the token is looked at, with no grant.
    for other in ["http://127.0.0.1:1", "https://evil.example", "null", &format!("http://{host}.evil.example")] {
        let (s, h, v) = http(&b, "GET", "/admin/clients", &[("Authorization", BEARER), ("Origin", other)], None).await;
        assert_eq!((s, h[0].as_deref()), (403, None), "{other}: {v}");
        let (s, _, _) = http(
            &b,
            "POST",
            "/admin/bans",
            &[("Authorization", BEARER), ("Origin", other)],
            Some(json!({"kind": "client-id", "value": "x"})),
        )
        .await;
        assert_eq!(s, 403, "{other}");
    }
    assert_eq!(admin(&b, "GET", "/admin/bans", None).await, json!([]), "a cross-origin POST changed nothing");
    // A preflight is answered without any grant.
    let (_, h, _) = http(
        &b,
        "OPTIONS",
        "/admin/clients",
        &[
            ("Origin", "http://127.0.0.1:1"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        None,
    )
    .await;
    assert_eq!(h[0], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_is_served_from_the_binary_with_a_strict_policy() {
    let b = TestBroker::from_toml(&config("")).await;
    let (s, h, body) = http(&b, "GET", "/console/", &[], None).await;
    assert_eq!(s, 200);
    assert!(h[2].as_deref().unwrap().starts_with("text/html"));
    let csp = h[1].as_deref().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(body.as_str().unwrap().contains("console.js"));
    let (s, h, _) = http(&b, "GET", "/console/console.js", &[], None).await;
    assert_eq!((s, h[2].as_deref().map(|c| c.starts_with("text/javascript"))), (200, Some(true)));
}
