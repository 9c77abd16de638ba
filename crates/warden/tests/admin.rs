//! The admin API and the policy store against the real broker: users created through the API
//! connect; rules added and removed apply live (to live subscriptions and to messages queued
//! for offline sessions); disabling a user drops its connections; kick; bans by client id,
//! user name and address; refusals (401 / 403 / 400); persistence; v3 and v5; `on_deny`.
//!
//! To show that a message is NOT delivered, a later "fence" message that must arrive first is
//! published (as in `authz.rs`): nothing sleeps to synchronise.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use mqtt_codec::{Connect, Packet, Protocol, QoS, ReasonCode};
use serde_json::{json, Value};
use warden_testkit::{connect_packet, publish, RawClient, Recv, TestBroker, WAIT};

const LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
const PW: &str = "pw-of-test-users";
const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

fn token_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes()))
}

fn config(on_deny: &str) -> String {
    format!(
        "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n\
         [oauth]\nenabled = true\n[[oauth.client]]\nid = \"ops\"\nsecret_hash = \"{}\"\nscopes = [\"admin\"]\n\
         [[oauth.client]]\nid = \"dev\"\nsecret_hash = \"{}\"\nscopes = [\"mqtt:pub:x\"]\n\
         [authz]\non_deny = \"{on_deny}\"\n",
        token_hash(),
        token_hash(),
        token_hash()
    )
}

async fn broker() -> TestBroker {
    TestBroker::from_toml(&config("disconnect")).await
}

/// One HTTP call (ureq on the blocking pool); returns the status and the JSON body.
async fn http(b: &TestBroker, method: &str, path: &str, token: Option<&str>, body: Option<String>) -> (u16, Value) {
    let headers: Vec<_> = token.map(warden_testkit::http::bearer).into_iter().collect();
    let a = b.http(method, path, &headers, body).await;
    (a.status, a.json())
}

async fn admin(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> Value {
    let (s, v) = http(b, method, path, Some(ADMIN_TOKEN), body.map(|b| b.to_string())).await;
    assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
    v
}

fn login(v: Protocol, client_id: &str, user: &str, clean: bool) -> Connect {
    let mut c = connect_packet(v, client_id, clean);
    c.username = Some(user.to_owned());
    c.password = Some(Bytes::from_static(PW.as_bytes()));
    if !clean && v == Protocol::V5 {
        c.properties.session_expiry_interval = Some(300);
    }
    c
}

async fn connect(b: &TestBroker, c: Connect) -> (RawClient, ReasonCode) {
    let (client, r) = RawClient::connect(b.addr(), c).await;
    match r {
        Recv::Packet(Packet::Connack(a)) => (client, a.reason_code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn connected(b: &TestBroker, c: Connect) -> RawClient {
    let (client, code) = connect(b, c).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    client
}

/// Publish at QoS 1 and wait for the PUBACK.
async fn publish1(c: &mut RawClient, id: u16, topic: &str) {
    c.send(&publish(topic, QoS::AtLeastOnce, id, b"m")).await;
    match c.recv().await {
        Recv::Packet(Packet::PubAck(a)) if a.packet_id == id => assert!(a.reason_code.is_success(), "{topic}"),
        other => panic!("expected PUBACK for {topic}, got {other:?}"),
    }
}

fn rule(id: &str, action: &str, topic: &str) -> Value {
    json!({"id": id, "action": action, "topic": topic, "effect": "allow"})
}

/// Role `writer` (publish anywhere) for user `pub`, role `dev` for users made by the test.
async fn setup(b: &TestBroker) {
    admin(b, "POST", "/admin/roles", Some(json!({"name": "writer", "rules": [rule("all", "publish", "#")]}))).await;
    admin(b, "POST", "/admin/roles", Some(json!({"name": "dev", "rules": [rule("fence", "subscribe", "fence/#")]})))
        .await;
    admin(b, "POST", "/admin/users", Some(json!({"name": "pub", "password": PW, "roles": ["writer"]}))).await;
}

#[tokio::test]
async fn api_user_connects_and_rules_apply_live() {
    let b = broker().await;
    setup(&b).await;
    for v in BOTH {
        let user = format!("ann{}", v as u8);
        // Unknown user: refused like a wrong password.
        let (_, code) = connect(&b, login(v, "a1", &user, true)).await;
        assert_eq!(code, if v == Protocol::V5 { ReasonCode::BAD_USER_NAME_OR_PASSWORD } else { ReasonCode(4) });
        admin(&b, "POST", "/admin/users", Some(json!({"name": user, "password": PW, "roles": ["dev"]}))).await;
        let mut ann = connected(&b, login(v, "a1", &user, true)).await;
        let mut p = connected(&b, login(v, "p1", "pub", true)).await;
        // No rule yet for t/#: refused.
        assert!(!ann.subscribe(1, "t/#", QoS::AtLeastOnce).await[0].is_success());
        admin(&b, "POST", "/admin/roles/dev/rules", Some(rule("t", "subscribe", "t/#"))).await;
        assert!(ann.subscribe(2, "t/#", QoS::AtLeastOnce).await[0].is_success());
        assert!(ann.subscribe(3, "fence/#", QoS::AtLeastOnce).await[0].is_success());
        publish1(&mut p, 1, "t/a").await;
        assert_eq!(ann.expect_publish().await.topic.as_str(), "t/a");
        // Remove the rule: the live subscription stops receiving at once.
        admin(&b, "DELETE", "/admin/roles/dev/rules/t", None).await;
        publish1(&mut p, 2, "t/b").await;
        publish1(&mut p, 3, "fence/1").await;
        assert_eq!(ann.expect_publish().await.topic.as_str(), "fence/1");
        ann.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(ReasonCode::SUCCESS))).await;
        p.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(ReasonCode::SUCCESS))).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn a_message_queued_for_an_offline_session_is_not_delivered_after_the_rule_is_removed() {
    let b = broker().await;
    setup(&b).await;
    for v in BOTH {
        let user = format!("q{}", v as u8);
        admin(&b, "POST", "/admin/roles", Some(json!({"name": user, "rules": [rule("q", "subscribe", "q/#")]}))).await;
        admin(&b, "POST", "/admin/users", Some(json!({"name": user, "password": PW, "roles": ["dev", user]}))).await;
        let cid = format!("offline{}", v as u8);
        let mut s = connected(&b, login(v, &cid, &user, false)).await;
        assert!(s.subscribe(1, "q/#", QoS::AtLeastOnce).await[0].is_success());
        assert!(s.subscribe(2, "fence/#", QoS::AtLeastOnce).await[0].is_success());
        s.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(ReasonCode::SUCCESS))).await;
        assert!(matches!(s.recv().await, Recv::Closed));
        let mut p = connected(&b, login(v, "p2", "pub", true)).await;
        publish1(&mut p, 1, "q/1").await;
        publish1(&mut p, 2, "fence/1").await;
        admin(&b, "DELETE", &format!("/admin/roles/{user}/rules/q"), None).await;
        let mut s = RawClient::connect(b.addr(), login(v, &cid, &user, false)).await.0;
        assert_eq!(s.expect_publish().await.topic.as_str(), "fence/1", "q/1 must have been dropped");
        p.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(ReasonCode::SUCCESS))).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn disabling_or_deleting_a_user_drops_its_connections() {
    let b = broker().await;
    setup(&b).await;
    for v in BOTH {
        let user = format!("d{}", v as u8);
        admin(&b, "POST", "/admin/users", Some(json!({"name": user, "password": PW}))).await;
        let mut c = connected(&b, login(v, "d1", &user, true)).await;
        admin(&b, "PUT", &format!("/admin/users/{user}"), Some(json!({"disabled": true}))).await;
        let seen = c.expect_closed_within(WAIT).await;
        if v == Protocol::V5 {
            assert!(
                matches!(&seen[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::NOT_AUTHORIZED),
                "{seen:?}"
            );
        }
        let (_, code) = connect(&b, login(v, "d1", &user, true)).await;
        assert_ne!(code, ReasonCode::SUCCESS, "a disabled user cannot log in");
        admin(&b, "PUT", &format!("/admin/users/{user}"), Some(json!({"disabled": false}))).await;
        let mut c = connected(&b, login(v, "d1", &user, true)).await;
        admin(&b, "DELETE", &format!("/admin/users/{user}"), None).await;
        c.expect_closed_within(WAIT).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn list_and_kick() {
    let b = broker().await;
    setup(&b).await;
    let mut c5 = connected(&b, login(Protocol::V5, "k5", "pub", true)).await;
    let mut c3 = connected(&b, login(Protocol::V311, "k3", "pub", true)).await;
    let list = admin(&b, "GET", "/admin/clients", None).await;
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["k3", "k5"]);
    assert_eq!(list[1]["principal"], "user:pub");
    assert_eq!(list[1]["protocol"], "5.0");
    assert!(list[1]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    admin(&b, "POST", "/admin/clients/k5/kick", None).await;
    let seen = c5.expect_closed_within(WAIT).await;
    assert!(
        matches!(&seen[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::ADMINISTRATIVE_ACTION),
        "{seen:?}"
    );
    admin(&b, "POST", "/admin/clients/k3/kick", None).await;
    c3.expect_closed_within(WAIT).await;
    let (s, _) = http(&b, "POST", "/admin/clients/k3/kick", Some(ADMIN_TOKEN), None).await;
    assert_eq!(s, 404);
    b.stop().await;
}

#[tokio::test]
async fn bans_by_client_id_user_and_address() {
    let b = broker().await;
    setup(&b).await;
    for v in BOTH {
        let banned = if v == Protocol::V5 { ReasonCode::BANNED } else { ReasonCode(5) };
        let mut live = connected(&b, login(v, "evil", "pub", true)).await;
        admin(&b, "POST", "/admin/bans", Some(json!({"kind": "client-id", "value": "evil"}))).await;
        live.expect_closed_within(WAIT).await;
        assert_eq!(connect(&b, login(v, "evil", "pub", true)).await.1, banned);
        admin(&b, "DELETE", "/admin/bans?kind=client-id&value=evil", None).await;
        connected(&b, login(v, "evil", "pub", true)).await;

        admin(&b, "POST", "/admin/bans", Some(json!({"kind": "username", "value": "pub", "reason": "test"}))).await;
        assert_eq!(connect(&b, login(v, "other", "pub", true)).await.1, banned);
        admin(&b, "DELETE", "/admin/bans?kind=username&value=pub", None).await;
        // An expired ban does not apply.
        admin(&b, "POST", "/admin/bans", Some(json!({"kind": "username", "value": "pub", "expires_at": 1}))).await;
        connected(&b, login(v, "other", "pub", true)).await;
    }
    admin(&b, "POST", "/admin/bans", Some(json!({"kind": "cidr", "value": "127.0.0.0/8"}))).await;
    let (mut c, r) = RawClient::connect(b.addr(), login(Protocol::V5, "x", "pub", true)).await;
    assert_eq!(r, Recv::Closed, "refused at accept, before any CONNACK");
    drop(c.recv_within(Duration::from_millis(1)).await);
    let saved = std::fs::read_to_string(b.path("bans.json")).unwrap();
    assert!(saved.contains("127.0.0.0/8"), "{saved}");
    admin(&b, "DELETE", "/admin/bans?kind=cidr&value=127.0.0.0%2F8", None).await;
    connected(&b, login(Protocol::V5, "x", "pub", true)).await;
    let (s, v) =
        http(&b, "POST", "/admin/bans", Some(ADMIN_TOKEN), Some(r#"{"kind":"ip","value":"nope"}"#.into())).await;
    assert_eq!((s, v["error"].as_str().unwrap()), (400, "'nope' is not an IP address"));
    b.stop().await;
}

/// An access token from the built-in token service (client-credentials grant).
async fn oauth_token(b: &TestBroker, client: &str) -> String {
    let url = format!("http://{}/oauth/token", b.server.http_addr.unwrap());
    let client = client.to_owned();
    tokio::task::spawn_blocking(move || {
        let v: Value = ureq::post(&url)
            .send_form(&[("grant_type", "client_credentials"), ("client_id", &client), ("client_secret", ADMIN_TOKEN)])
            .expect("token")
            .into_json()
            .unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn admin_api_refusals() {
    let b = broker().await;
    assert_eq!(http(&b, "GET", "/admin/users", None, None).await.0, 401);
    assert_eq!(http(&b, "GET", "/admin/users", Some("wrong"), None).await.0, 401);
    let dev = oauth_token(&b, "dev").await;
    assert_eq!(http(&b, "GET", "/admin/users", Some(&dev), None).await.0, 403);
    let ops = oauth_token(&b, "ops").await;
    assert_eq!(http(&b, "GET", "/admin/users", Some(&ops), None).await.0, 200);
    let (s, v) = http(&b, "POST", "/admin/users", Some(ADMIN_TOKEN), Some("{\"name\": ".into())).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().starts_with("invalid JSON body"), "{v}");
    let (s, v) =
        http(&b, "POST", "/admin/users", Some(ADMIN_TOKEN), Some(r#"{"name":"a","roles":["none"]}"#.into())).await;
    assert_eq!((s, v["error"].as_str().unwrap()), (400, "user 'a': unknown role 'none'"));
    let (s, doc) = http(&b, "GET", "/admin/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let checked_in: Value =
        serde_json::from_str(include_str!("../../../docs/admin-openapi.json")).expect("docs/admin-openapi.json");
    assert_eq!(doc, checked_in);
    b.stop().await;
}

/// Issue 17 item 7: the admin API right comes only from the admin token or the `admin` scope
/// of an OAuth client the operator declared — never from a policy-store role named `admin`
/// (whether a user holds it or an OAuth client's token carries it), a look-up answer naming
/// it, or an outside issuer's JWT carrying it. Each of those credentials does work where it
/// belongs (MQTT), so each refusal is meaningful.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_right_comes_only_from_the_admin_token_or_a_declared_clients_admin_scope() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // A look-up service that allows lk/lk-pw with the role and scope `admin`.
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let app = axum::Router::new().route(
        "/auth",
        axum::routing::post(move |axum::Json(req): axum::Json<Value>| {
            let c2 = c2.clone();
            async move {
                c2.fetch_add(1, Ordering::SeqCst);
                let ok = req["username"] == "lk" && req["password"] == "lk-pw";
                axum::Json(json!({"allow": ok, "roles": ["admin"], "scopes": ["admin"]}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lookup_url = format!("http://{}/auth", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    const HS: &str = "hs256 secret of the admin-right test";
    let b = TestBroker::from_toml(&format!(
        "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{h}\"\n\
         [auth]\nallow_anonymous = false\n\
         [auth.jwt]\nissuer = \"https://idp.example\"\naudience = \"warden\"\nhs256_secret = \"{HS}\"\n\
         [auth.http]\nurl = \"{lookup_url}\"\n\
         [oauth]\nenabled = true\n\
         [[oauth.client]]\nid = \"ops\"\nsecret_hash = \"{h}\"\nscopes = [\"admin\"]\n\
         [[oauth.client]]\nid = \"role-admin\"\nsecret_hash = \"{h}\"\nscopes = [\"mqtt:pub:x\"]\nroles = [\"admin\"]\n",
        h = token_hash()
    ))
    .await;
    // A policy-store role named `admin`, and a user holding it.
    admin(&b, "POST", "/admin/roles", Some(json!({"name": "admin", "rules": [rule("a", "publish", "admin/#")]}))).await;
    admin(&b, "POST", "/admin/users", Some(json!({"name": "boss", "password": PW, "roles": ["admin"]}))).await;
    let status = |token: String| {
        let b = &b;
        async move { http(b, "GET", "/admin/users", Some(&token), None).await.0 }
    };

    // The policy-store user with the role: its password is an MQTT credential, not an admin one.
    let mut boss = connected(&b, login(Protocol::V5, "boss-1", "boss", true)).await;
    publish1(&mut boss, 1, "admin/x").await;
    assert_eq!(status(PW.into()).await, 401);

    // An OAuth client carrying the role `admin` in its tokens: a valid token, not an admin's.
    let role_admin = oauth_token(&b, "role-admin").await;
    let mut c = connect_packet(Protocol::V5, "ra-1", true);
    c.username = Some("role-admin".into());
    c.password = Some(Bytes::from(role_admin.clone()));
    connected(&b, c).await;
    assert_eq!(status(role_admin).await, 403);

    // An outside issuer's JWT with the `admin` scope and role.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    let outside = jsonwebtoken::encode(
        &header,
        &json!({"iss": "https://idp.example", "aud": "warden", "sub": "ops", "iat": now, "exp": now + 300,
                "scope": "admin", "roles": ["admin"], "client_id": "ops"}),
        &jsonwebtoken::EncodingKey::from_secret(HS.as_bytes()),
    )
    .unwrap();
    let mut c = connect_packet(Protocol::V5, "ops-outside", true);
    c.username = Some("ops".into());
    c.password = Some(Bytes::from(outside.clone()));
    connected(&b, c).await;
    assert_eq!(status(outside).await, 401);

    // A look-up answer naming `admin`: the admin API never asks the look-up service.
    let mut c = connect_packet(Protocol::V5, "lk-1", true);
    c.username = Some("lk".into());
    c.password = Some(Bytes::from_static(b"lk-pw"));
    connected(&b, c).await;
    let asked = calls.load(Ordering::SeqCst);
    assert_eq!(status("lk-pw".into()).await, 401);
    assert_eq!(calls.load(Ordering::SeqCst), asked, "the admin API consulted the look-up service");

    // The declared client's admin scope, and the admin token.
    assert_eq!(status(oauth_token(&b, "ops").await).await, 200);
    assert_eq!(status(ADMIN_TOKEN.into()).await, 200);
    b.stop().await;
}

#[tokio::test]
async fn on_deny_modes_apply_to_store_rules() {
    for (mode, v) in [("disconnect", Protocol::V5), ("drop", Protocol::V5), ("disconnect", Protocol::V311)] {
        let b = TestBroker::from_toml(&config(mode)).await;
        admin(&b, "POST", "/admin/roles", Some(json!({"name": "r", "rules": [rule("a", "publish", "ok/#")]}))).await;
        admin(&b, "POST", "/admin/users", Some(json!({"name": "u", "password": PW, "roles": ["r"]}))).await;
        let mut c = connected(&b, login(v, "c", "u", true)).await;
        publish1(&mut c, 1, "ok/1").await;
        c.send(&publish("no/1", QoS::AtLeastOnce, 2, b"x")).await;
        match (mode, v) {
            ("drop", _) => match c.recv().await {
                Recv::Packet(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
                other => panic!("{other:?}"),
            },
            (_, Protocol::V5) => {
                let seen = c.expect_closed_within(WAIT).await;
                assert!(matches!(&seen[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::NOT_AUTHORIZED));
            }
            _ => {
                c.expect_closed_within(WAIT).await;
            }
        }
        b.stop().await;
    }
}

#[tokio::test]
async fn the_store_persists_and_a_corrupt_store_refuses_start() {
    let b = broker().await;
    setup(&b).await;
    let text = std::fs::read_to_string(b.path("policy.json")).unwrap();
    assert!(text.contains("\"writer\"") && !text.contains(PW), "persisted, hashed");
    let dir = b.dir.path().to_path_buf();
    b.server.shutdown().await;
    // Same data directory: the user still logs in.
    let cfg_path = dir.join("warden.toml");
    let cfg = warden::config::Config::load(&cfg_path).unwrap();
    let server = warden::server::Server::start(&cfg).await.expect("restart");
    let addr = server.addr(warden::config::ListenerProtocol::Mqtt).unwrap();
    let (_, r) = RawClient::connect(addr, login(Protocol::V5, "again", "pub", true)).await;
    assert!(matches!(&r, Recv::Packet(Packet::Connack(a)) if a.reason_code.is_success()));
    server.shutdown().await;
    std::fs::write(dir.join("policy.json"), "{\"version\": 1, \"users\": 7}").unwrap();
    let err = format!("{:#}", warden::server::Server::start(&cfg).await.err().expect("refused"));
    assert!(err.contains("policy.json") && err.contains("corrupt policy store"), "{err}");
}

/// A real MQTT client (rumqttc) logs in as a user created through the API.
#[tokio::test]
async fn rumqttc_user_created_through_the_api() {
    let b = broker().await;
    setup(&b).await;
    admin(&b, "POST", "/admin/roles/dev/rules", Some(rule("t", "subscribe", "t/#"))).await;
    admin(&b, "POST", "/admin/users", Some(json!({"name": "rq", "password": PW, "roles": ["dev"]}))).await;
    let mut o = rumqttc::MqttOptions::new("rq", "127.0.0.1", b.port());
    o.set_credentials("rq", PW);
    let (client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    client.subscribe("t/#", rumqttc::QoS::AtLeastOnce).await.unwrap();
    let mut p = connected(&b, login(Protocol::V5, "p", "pub", true)).await;
    let got = tokio::time::timeout(WAIT, async {
        let mut published = false;
        loop {
            match ev.poll().await.expect("event loop") {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) => {
                    assert!(matches!(a.return_codes[0], rumqttc::SubscribeReasonCode::Success(_)));
                    if !published {
                        published = true;
                        publish1(&mut p, 1, "t/x").await;
                    }
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(m)) => return m.topic,
                _ => {}
            }
        }
    })
    .await
    .expect("delivered");
    assert_eq!(got, "t/x");
    b.stop().await;
}

/// `warden admin …` against the running broker; returns (success, stdout + stderr).
async fn cli(b: &TestBroker, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let url = format!("http://{}", b.server.http_addr.unwrap());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("admin")
            .arg("--url")
            .arg(&url)
            .args(&args)
            .env("WARDEN_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run warden");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_admin_cli_drives_the_api() {
    let b = broker().await;
    assert!(cli(&b, &["role", "add", "dev"], None).await.0);
    let (ok, out) =
        cli(&b, &["rule", "add", "dev", "pub", "--action", "publish", "--topic", "dev/%u/#", "--max-qos", "1"], None)
            .await;
    assert!(ok, "{out}");
    let (ok, out) =
        cli(&b, &["user", "add", "cli-user", "--role", "dev", "--password-stdin"], Some(&format!("{PW}\n"))).await;
    assert!(ok, "{out}");
    let (_, out) = cli(&b, &["user", "list"], None).await;
    assert!(out.contains("cli-user\tgroups=\troles=dev"), "{out}");
    let (_, out) = cli(&b, &["role", "list"], None).await;
    assert!(out.contains("pub\tallow publish dev/%u/#\tmax_qos=1"), "{out}");
    let mut c = connected(&b, login(Protocol::V5, "cli-c", "cli-user", true)).await;
    publish1(&mut c, 1, "dev/cli-user/x").await;
    let (_, out) = cli(&b, &["clients"], None).await;
    assert!(out.contains("cli-c\tuser:cli-user\t127.0.0.1:"), "{out}");
    assert!(cli(&b, &["ban", "add", "username", "cli-user", "--expires-in", "3600"], None).await.0);
    c.expect_closed_within(WAIT).await;
    let (_, out) = cli(&b, &["ban", "list"], None).await;
    assert!(out.contains("username\tcli-user\texpires_at="), "{out}");
    assert!(cli(&b, &["ban", "remove", "username", "cli-user"], None).await.0);
    let (ok, out) = cli(&b, &["kick", "nobody"], None).await;
    assert!(!ok && out.contains("404: no connected client 'nobody'"), "{out}");
    let (ok, out) = cli(&b, &["rule", "add", "dev", "x", "--action", "nope", "--topic", "t"], None).await;
    assert!(!ok && out.contains("400: invalid JSON body"), "{out}");
    assert!(cli(&b, &["user", "disable", "cli-user"], None).await.0);
    assert!(cli(&b, &["user", "remove", "cli-user"], None).await.0);
    b.stop().await;
}

#[tokio::test]
async fn check_explain_names_the_deciding_store_rule() {
    let b = broker().await;
    let deny = json!({"id": "no", "action": "publish", "topic": "dev/%u/secret", "effect": "deny", "priority": 5});
    admin(
        &b,
        "POST",
        "/admin/roles",
        Some(json!({"name": "dev", "rules": [rule("own", "publish", "dev/%u/#"), deny]})),
    )
    .await;
    admin(&b, "POST", "/admin/groups", Some(json!({"name": "anyone-authenticated", "roles": ["dev"]}))).await;
    let cfg = b.path("warden.toml");
    // Exit status: 0 for allow, 1 for deny.
    let explain = |topic: &str, code: i32| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["check", "--config"])
            .arg(&cfg)
            .args(["--explain", "--user", "ann", "publish", topic])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let out = explain("dev/ann/x", 0);
    assert!(out.contains("1 in the policy store") || out.contains("0 in the policy store"), "{out}");
    assert!(out.contains("allow: decided by store:dev/own"), "{out}");
    assert!(explain("dev/ann/secret", 1).contains("deny: decided by store:dev/no"));
    assert!(explain("dev/bob/x", 1).contains("deny: decided by default-deny"));
    b.stop().await;
}

/// A ban ends a live v5 client with DISCONNECT 0x98 Administrative action, which a real client
/// (rumqttc v5) reads as a server disconnect; 0x8A Banned is a CONNACK-only code that it
/// rejected as a malformed packet.
#[tokio::test]
async fn a_ban_disconnects_a_live_v5_client_with_administrative_action() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
    use rumqttc::v5::{ConnectionError, Event, StateError};
    let b = broker().await;
    setup(&b).await;
    let mut o = rumqttc::v5::MqttOptions::new("banned-live", "127.0.0.1", b.port());
    o.set_credentials("pub", PW);
    let (_client, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    let err = tokio::time::timeout(WAIT, async {
        let mut banned = false;
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(P5::ConnAck(_))) if !banned => {
                    banned = true;
                    admin(&b, "POST", "/admin/bans", Some(json!({"kind": "client-id", "value": "banned-live"}))).await;
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the ban ends the connection");
    assert!(
        matches!(
            err,
            ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code: DisconnectReasonCode::AdministrativeAction,
                ..
            })
        ),
        "{err:?}"
    );
    b.stop().await;
}

/// A TCP connection to `to` from the loopback source address `from`.
async fn tcp_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    let stream = s.connect(to).await.expect("connect");
    stream.set_nodelay(true).ok();
    stream
}

/// A ban on the IPv4-mapped IPv6 spelling of an address (`::ffff:127.0.0.9`, the form the admin
/// API shows for peers of a dual-stack listener) bans the IPv4 peer 127.0.0.9: its live
/// connection ends and new ones are refused at accept; other addresses are unaffected; the
/// ban is listed, and removed, as 127.0.0.9.
#[tokio::test]
async fn an_ipv4_mapped_ip_ban_refuses_the_ipv4_peer() {
    let b = broker().await;
    setup(&b).await;
    let (mut live, r) =
        RawClient::connect_over(tcp_from([127, 0, 0, 9], b.addr()).await, login(Protocol::V5, "m9", "pub", true)).await;
    assert!(matches!(&r, Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode::SUCCESS), "{r:?}");
    admin(&b, "POST", "/admin/bans", Some(json!({"kind": "ip", "value": "::ffff:127.0.0.9"}))).await;
    let seen = live.expect_closed_within(WAIT).await;
    assert!(
        matches!(&seen[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::ADMINISTRATIVE_ACTION),
        "the live connection from 127.0.0.9 is ended: {seen:?}"
    );
    let (_, r) =
        RawClient::connect_over(tcp_from([127, 0, 0, 9], b.addr()).await, login(Protocol::V5, "m9", "pub", true)).await;
    assert_eq!(r, Recv::Closed, "refused at accept, before any CONNACK");
    connected(&b, login(Protocol::V5, "m1", "pub", true)).await;
    let list = admin(&b, "GET", "/admin/bans", None).await;
    assert_eq!(list[0]["value"], "127.0.0.9", "{list}");
    admin(&b, "DELETE", "/admin/bans?kind=ip&value=%3A%3Affff%3A127.0.0.9", None).await;
    let (_, r) =
        RawClient::connect_over(tcp_from([127, 0, 0, 9], b.addr()).await, login(Protocol::V5, "m9", "pub", true)).await;
    assert!(matches!(&r, Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode::SUCCESS), "{r:?}");
    b.stop().await;
}

/// Issue 17 (smaller ones): an automatic ban (`auth_fail_ban`, after failed authentications)
/// is shown in the ban list — marked as automatic, with its expiry — and the operator can lift
/// it like any other (it used to be invisible, and DELETE answered 404).
#[tokio::test]
async fn automatic_bans_are_listed_and_can_be_lifted() {
    let b = TestBroker::from_toml(&format!(
        "{}[limits]\nauth_fail_ban = {{ failures = 2, within = \"60s\", ban = \"300s\" }}\n",
        config("disconnect")
    ))
    .await;
    setup(&b).await;
    let from = [127, 0, 0, 11];
    for _ in 0..2 {
        let mut c = login(Protocol::V5, "guess", "pub", true);
        c.password = Some(Bytes::from_static(b"wrong"));
        let (_, r) = RawClient::connect_over(tcp_from(from, b.addr()).await, c).await;
        assert!(matches!(&r, Recv::Packet(Packet::Connack(a)) if a.reason_code.0 == 0x86), "{r:?}");
    }
    let (_, r) = RawClient::connect_over(tcp_from(from, b.addr()).await, login(Protocol::V5, "m11", "pub", true)).await;
    assert_eq!(r, Recv::Closed, "banned: refused at accept");
    let list = admin(&b, "GET", "/admin/bans", None).await;
    let ban = list.as_array().unwrap().iter().find(|x| x["value"] == "127.0.0.11").unwrap_or_else(|| panic!("{list}"));
    assert_eq!(ban["kind"], "ip");
    assert!(ban["reason"].as_str().unwrap().starts_with("automatic"), "{ban}");
    let left = ban["expires_at"].as_u64().unwrap().saturating_sub(warden::auth::tokens::unix_now());
    assert!((1..=300).contains(&left), "{ban}");
    admin(&b, "DELETE", "/admin/bans?kind=ip&value=127.0.0.11", None).await;
    assert_eq!(admin(&b, "GET", "/admin/bans", None).await, json!([]));
    let (_, r) = RawClient::connect_over(tcp_from(from, b.addr()).await, login(Protocol::V5, "m11", "pub", true)).await;
    assert!(matches!(&r, Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode::SUCCESS), "lifted: {r:?}");
    let (s, _) = http(&b, "DELETE", "/admin/bans?kind=ip&value=127.0.0.11", Some(ADMIN_TOKEN), None).await;
    assert_eq!(s, 404, "nothing left to lift");
    b.stop().await;
}

/// Issue 17: per-role quota overrides in the policy store. With `max_sessions_per_principal = 1`,
/// a user holding role `gateway` (quotas `{"max_sessions": 3}`) keeps three persistent sessions
/// and its fourth is refused with CONNACK 0x97 [MQTT-3.2.2-? Quota exceeded]; a user without the
/// role is refused at its second. The API shows and replaces the quotas; removing them lowers
/// the bound for the next CONNECT (what is held is kept); unknown quota keys and negative values
/// are refused with 400, an unknown role with 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roles_quotas_override_the_configured_ones() {
    let b = TestBroker::from_toml(&format!("{}[limits]\nmax_sessions_per_principal = 1\n", config("disconnect"))).await;
    admin(&b, "POST", "/admin/roles", Some(json!({"name": "gateway", "quotas": {"max_sessions": 3}}))).await;
    admin(&b, "POST", "/admin/users", Some(json!({"name": "gw", "password": PW, "roles": ["gateway"]}))).await;
    admin(&b, "POST", "/admin/users", Some(json!({"name": "plain", "password": PW}))).await;
    assert_eq!(admin(&b, "GET", "/admin/roles/gateway", None).await["quotas"], json!({"max_sessions": 3}));

    for v in BOTH {
        let tag = if v == Protocol::V5 { "5" } else { "3" };
        let mut held = Vec::new();
        for i in 0..3 {
            held.push(connected(&b, login(v, &format!("gw-{tag}-{i}"), "gw", false)).await);
        }
        let refused = if v == Protocol::V5 { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode(0x03) };
        assert_eq!(connect(&b, login(v, &format!("gw-{tag}-3"), "gw", false)).await.1, refused, "a fourth");
        let _p = connected(&b, login(v, &format!("plain-{tag}-0"), "plain", false)).await;
        assert_eq!(connect(&b, login(v, &format!("plain-{tag}-1"), "plain", false)).await.1, refused, "no role");
        // Sessions end for the next round (the count goes back down once they are gone).
        drop(held);
        drop(_p);
        for id in [0, 1, 2].map(|i| format!("gw-{tag}-{i}")).into_iter().chain([format!("plain-{tag}-0")]) {
            let user = if id.starts_with("gw") { "gw" } else { "plain" };
            let mut c = login(v, &id, user, true);
            c.clean_start = true;
            let mut x = connected(&b, c).await;
            x.send(&Packet::Disconnect(Default::default())).await;
        }
    }

    // Refusals of the API.
    let bad = |body: &str| http(&b, "PUT", "/admin/roles/gateway/quotas", Some(ADMIN_TOKEN), Some(body.into()));
    assert_eq!(bad(r#"{"max_session": 2}"#).await.0, 400, "unknown key");
    assert_eq!(bad(r#"{"max_sessions": -2}"#).await.0, 400, "negative");
    let (s, _) = http(&b, "PUT", "/admin/roles/nope/quotas", Some(ADMIN_TOKEN), Some("{}".into())).await;
    assert_eq!(s, 404);
    assert_eq!(admin(&b, "GET", "/admin/roles/gateway/quotas", None).await, json!({"max_sessions": 3}));

    // Quotas removed: the configured bound applies to the next CONNECT.
    let _a = connected(&b, login(Protocol::V5, "gw-a", "gw", false)).await;
    admin(&b, "PUT", "/admin/roles/gateway/quotas", Some(json!({}))).await;
    assert!(admin(&b, "GET", "/admin/roles/gateway", None).await.get("quotas").is_none());
    assert_eq!(connect(&b, login(Protocol::V5, "gw-b", "gw", false)).await.1, ReasonCode::QUOTA_EXCEEDED);
}

/// Issue 19 ("no sessions, subscriptions or retained messages through the admin API"): an
/// offline persistent session is listed with its subscriptions and queue, and removed (a
/// resume then finds no session [MQTT-3.2.2-3: Session Present 0]); a connected one is removed
/// with its connection (v5 DISCONNECT); retained messages are listed by filter without their
/// payload and cleared (a new subscriber gets nothing); refusals: 404 for what is not there,
/// 400 for a malformed filter, topic or limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_retained_messages_are_listed_and_removed() {
    let b = broker().await;
    admin(
        &b,
        "POST",
        "/admin/roles",
        Some(json!({"name": "all", "rules": [rule("p", "publish", "#"), rule("s", "subscribe", "#"), rule("r", "receive", "#")]})),
    )
    .await;
    admin(&b, "POST", "/admin/users", Some(json!({"name": "dev", "password": PW, "roles": ["all"]}))).await;
    // An offline persistent session with two subscriptions and one queued message.
    let mut sub = connected(&b, login(Protocol::V5, "sess-1", "dev", false)).await;
    sub.subscribe(1, "fleet/+/temp", QoS::AtLeastOnce).await;
    sub.subscribe(2, "cmd/sess-1", QoS::AtMostOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    let mut p = connected(&b, login(Protocol::V5, "pub-1", "dev", true)).await;
    publish1(&mut p, 1, "fleet/7/temp").await;
    let mut retained = publish("state/dev-7", QoS::AtLeastOnce, 2, b"online");
    if let Packet::Publish(ref mut x) = retained {
        x.retain = true;
    }
    p.send(&retained).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_))));

    let list = admin(&b, "GET", "/admin/sessions", None).await;
    let s = list.as_array().unwrap().iter().find(|s| s["client_id"] == "sess-1").expect("listed").clone();
    assert_eq!((s["connected"].clone(), s["subscription_count"].clone()), (json!(false), json!(2)));
    assert_eq!(
        (s["principal"].clone(), s["queued"].clone(), s["expiry_interval"].clone()),
        (json!("user:dev"), json!(1), json!(300))
    );
    let one = admin(&b, "GET", "/admin/sessions/sess-1", None).await;
    assert_eq!(one["subscriptions"], json!([{"filter": "cmd/sess-1", "qos": 0}, {"filter": "fleet/+/temp", "qos": 1}]));

    let r = admin(&b, "GET", "/admin/retained?filter=state/%23", None).await;
    assert_eq!(r, json!([{"topic": "state/dev-7", "payload_bytes": 6, "qos": 1, "publisher": "user:dev"}]));
    assert!(!r.to_string().contains("online"), "payloads are not shown");
    admin(&b, "DELETE", "/admin/retained?topic=state/dev-7", None).await;
    assert_eq!(admin(&b, "GET", "/admin/retained", None).await, json!([]));
    let mut late = connected(&b, login(Protocol::V5, "late", "dev", true)).await;
    late.subscribe(1, "state/#", QoS::AtMostOnce).await;
    publish1(&mut p, 3, "state/fence").await;
    let first = late.expect_publish().await;
    assert_eq!(first.topic.as_str(), "state/fence", "the cleared retained message is not delivered");

    admin(&b, "DELETE", "/admin/sessions/sess-1", None).await;
    let (s, _) = http(&b, "GET", "/admin/sessions/sess-1", Some(ADMIN_TOKEN), None).await;
    assert_eq!(s, 404);
    let (_, ack) = RawClient::connect(b.addr(), login(Protocol::V5, "sess-1", "dev", false)).await;
    assert!(
        matches!(ack, Recv::Packet(Packet::Connack(ref a)) if a.reason_code == ReasonCode::SUCCESS && !a.session_present)
    );

    // A connected session: its connection ends.
    let mut live = connected(&b, login(Protocol::V5, "sess-2", "dev", false)).await;
    admin(&b, "DELETE", "/admin/sessions/sess-2", None).await;
    let packets = live.expect_closed_within(WAIT).await;
    assert!(packets.iter().any(|p| matches!(p, Packet::Disconnect(_))), "{packets:?}");
    assert!(admin(&b, "GET", "/admin/sessions", None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["client_id"] != "sess-2"));

    // Refusals.
    let status = |m: &'static str, path: &'static str| {
        let b = &b;
        async move { http(b, m, path, Some(ADMIN_TOKEN), None).await.0 }
    };
    assert_eq!(status("DELETE", "/admin/sessions/nope").await, 404);
    assert_eq!(status("DELETE", "/admin/retained?topic=state/none").await, 404);
    assert_eq!(status("GET", "/admin/retained?filter=a/%23/b").await, 400);
    assert_eq!(status("DELETE", "/admin/retained?topic=a/%2B").await, 400);
    assert_eq!(status("GET", "/admin/retained?limit=0").await, 400);
    assert_eq!(http(&b, "GET", "/admin/sessions", None, None).await.0, 401);
}

/// Issue 19 ("an operator cannot introspect or revoke a device's token with the admin
/// credential"): with the admin token, `POST /admin/tokens/introspect` shows any client's
/// token (active, its client and scope) and `POST /admin/tokens/revoke` revokes it: the MQTT
/// connection made with it ends (v5 DISCONNECT 0x87), introspection then says inactive, a
/// second revocation says it already was, and the audit trail names the jti, never the token.
/// Refusals: a malformed token (400), no admin credential (401), a device's own token (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_introspects_and_revokes_a_devices_token() {
    let b = broker().await;
    let dev = oauth_token(&b, "dev").await;
    let mut c = connect_packet(Protocol::V5, "dev", true);
    c.username = Some("dev".into());
    c.password = Some(Bytes::from(dev.clone().into_bytes()));
    let mut live = connected(&b, c).await;

    let body = |t: &str| Some(json!({"token": t}));
    let i = admin(&b, "POST", "/admin/tokens/introspect", body(&dev)).await;
    assert_eq!(
        (i["active"].clone(), i["client_id"].clone(), i["scope"].clone()),
        (json!(true), json!("dev"), json!("mqtt:pub:x"))
    );
    let jti = i["jti"].as_str().unwrap().to_owned();

    let r = admin(&b, "POST", "/admin/tokens/revoke", body(&dev)).await;
    assert_eq!(r["revoked"], json!(jti));
    let packets = live.expect_closed_within(WAIT).await;
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::NOT_AUTHORIZED)),
        "{packets:?}"
    );
    let i = admin(&b, "POST", "/admin/tokens/introspect", body(&dev)).await;
    assert_eq!(i["active"], json!(false));
    assert_eq!(admin(&b, "POST", "/admin/tokens/revoke", body(&dev)).await["revoked"], Value::Null);

    let audit = admin(&b, "GET", "/admin/audit", None).await;
    let rec = audit.as_array().unwrap().iter().find(|r| r["action"] == "token.revoke").expect("audited").clone();
    assert_eq!(rec["target"], json!(jti));
    assert!(!audit.to_string().contains(&dev), "the token itself is never recorded");

    let (s, _) =
        http(&b, "POST", "/admin/tokens/revoke", Some(ADMIN_TOKEN), Some(r#"{"token":"not.a.jwt"}"#.into())).await;
    assert_eq!(s, 400);
    let (s, _) = http(&b, "POST", "/admin/tokens/introspect", None, Some(json!({"token": dev}).to_string())).await;
    assert_eq!(s, 401);
    let other = oauth_token(&b, "dev").await;
    let (s, _) =
        http(&b, "POST", "/admin/tokens/revoke", Some(&other), Some(json!({"token": other}).to_string())).await;
    assert_eq!(s, 403, "a device's own token is no admin credential");
}

/// `warden admin token introspect|revoke` (the token read from standard input): the same
/// through the CLI; an empty input and a malformed token are refused with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_introspects_and_revokes_a_token_read_from_stdin() {
    let b = broker().await;
    let dev = oauth_token(&b, "dev").await;
    let (ok, out) = cli(&b, &["token", "introspect"], Some(&format!("{dev}\n"))).await;
    assert!(ok && out.contains("\"active\":true") && out.contains("\"client_id\":\"dev\""), "{out}");
    let (ok, out) = cli(&b, &["token", "revoke"], Some(&dev)).await;
    assert!(ok && out.starts_with("revoked token "), "{out}");
    let (ok, out) = cli(&b, &["token", "revoke"], Some(&dev)).await;
    assert!(ok && out.contains("already revoked"), "{out}");
    let (ok, out) = cli(&b, &["token", "introspect"], Some(&dev)).await;
    assert!(ok && out.contains("\"active\":false"), "{out}");
    let (ok, _) = cli(&b, &["token", "revoke"], Some("")).await;
    assert!(!ok, "no token on stdin");
    let (ok, _) = cli(&b, &["token", "revoke"], Some("not.a.jwt")).await;
    assert!(!ok, "a malformed token");
}
