//! Token authentication against the real broker (SPEC §4–§5): the built-in OAuth 2.0 token
//! service (`/oauth/token`, `/oauth/revoke`, `/oauth/introspect`), outside JWTs (HS256 secret,
//! JWKS file, JWKS URL), the end of live connections at expiry and on revocation, and token
//! scopes.
//!
//! Every accept sits next to its refusals. CONNACK codes: a bad token is v5 0x86 / v3 0x04; a
//! good token whose subject the configured rule refuses is v5 0x87 / v3 0x05.
//!
//! HTTP requests use `ureq` (blocking) inside `spawn_blocking`; MQTT uses the testkit's
//! [`RawClient`] (v3.1.1 and v5), and `rumqttc` for one real-client check. Nothing sleeps to
//! synchronise: the only waits are for time itself to pass (a 2 s token lifetime, the JWKS
//! refresh interval).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mqtt_codec::{Connack, Connect, Packet, Protocol, QoS, ReasonCode};
use serde_json::{json, Value};
use warden::auth::tokens::JWKS_REFRESH_INTERVAL;
use warden_policy::jwt::{mint, AccessClaims, SigningKey};
use warden_policy::password::hash_password;
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker, WAIT};

const LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n";
const HTTP: &str = "[http]\nbind = \"127.0.0.1:0\"\n";

const DEV: &str = "dev-001";
const DEV_SECRET: &str = "dev-001 secret, 32 bytes or so!!";
/// A second OAuth client: publishes commands, and tries to revoke / introspect dev-001's tokens.
const OPS: &str = "ops";
const OPS_SECRET: &str = "ops secret, also long enough....";

const ISS: &str = "https://issuer.example";
const AUD: &str = "warden";
const HS_SECRET: &str = "hs256 shared secret for the tests";

const BAD_TOKEN_V5: ReasonCode = ReasonCode::BAD_USER_NAME_OR_PASSWORD; // 0x86
const BAD_TOKEN_V3: ReasonCode = ReasonCode::V3_BAD_USER_NAME_OR_PASSWORD; // 0x04
const SUBJECT_V5: ReasonCode = ReasonCode::NOT_AUTHORIZED; // 0x87
const SUBJECT_V3: ReasonCode = ReasonCode::V3_NOT_AUTHORIZED; // 0x05

// ------------------------------------------------------------------------------------------
// MQTT helpers
// ------------------------------------------------------------------------------------------

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `c` with this user name (if any) and `password` (a token).
fn creds(mut c: Connect, user: Option<&str>, password: &str) -> Connect {
    c.username = user.map(str::to_owned);
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

/// A v5 CONNECT without a user name, with `token` as the password.
fn v5(client_id: &str, token: &str) -> Connect {
    creds(connect_packet(Protocol::V5, client_id, true), None, token)
}

/// A v3.1.1 CONNECT (which needs a user name to carry a password) with `token`.
fn v3(client_id: &str, user: &str, token: &str) -> Connect {
    creds(connect_packet(Protocol::V311, client_id, true), Some(user), token)
}

/// The CONNACK code the broker answers `c` with.
async fn connack(b: &TestBroker, c: Connect) -> ReasonCode {
    let (_c, r) = RawClient::connect(b.addr(), c).await;
    match r {
        Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Both protocol versions refuse `token` as a bad credential (v5 0x86, v3 0x04).
async fn assert_bad_token(b: &TestBroker, token: &str, what: &str) {
    assert_eq!(connack(b, v5("c5", token)).await, BAD_TOKEN_V5, "v5: {what}");
    assert_eq!(connack(b, v3("c3", "someone", token)).await, BAD_TOKEN_V3, "v3.1.1: {what}");
}

/// Both protocol versions accept `token`.
async fn assert_accepted(b: &TestBroker, token: &str, what: &str) {
    assert_eq!(connack(b, v5("c5", token)).await, ReasonCode::SUCCESS, "v5: {what}");
    assert_eq!(connack(b, v3("c3", "someone", token)).await, ReasonCode::SUCCESS, "v3.1.1: {what}");
}

/// Publish at QoS 1 and return the PUBACK's reason code.
async fn puback(c: &mut RawClient, topic: &str, packet_id: u16) -> ReasonCode {
    c.send(&publish(topic, QoS::AtLeastOnce, packet_id, b"x")).await;
    match c.recv().await {
        Recv::Packet(Packet::PubAck(a)) if a.packet_id == packet_id => a.reason_code,
        other => panic!("expected PUBACK {packet_id} for {topic}, got {other:?}"),
    }
}

/// The connection answers a PINGREQ.
async fn assert_alive(c: &mut RawClient) {
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Recv::Packet(Packet::PingResp), "connection should still be up");
}

/// The next packet is a v5 DISCONNECT (returned); then the broker closes the connection.
async fn expect_disconnect(c: &mut RawClient, within: Duration) -> ReasonCode {
    match c.recv_within(within).await {
        Recv::Packet(Packet::Disconnect(d)) => {
            let rest = c.expect_closed_within(WAIT).await;
            assert!(rest.is_empty(), "packets after DISCONNECT: {rest:?}");
            d.reason_code
        }
        other => panic!("expected DISCONNECT within {within:?}, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// HTTP helpers (the built-in token service)
// ------------------------------------------------------------------------------------------

/// How an OAuth client authenticates to the token service.
#[derive(Clone, Copy)]
enum ClientAuth<'a> {
    /// `client_secret_basic`.
    Basic(&'a str, &'a str),
    /// `client_secret_post`.
    Post(&'a str, &'a str),
}

fn http_base(b: &TestBroker) -> String {
    format!("http://{}", b.server.http_addr.expect("[http] is configured"))
}

/// POST a form; returns the status and the JSON body (`Null` when empty).
async fn post_form(url: String, auth: ClientAuth<'_>, params: &[(&str, &str)]) -> (u16, Value) {
    let mut form: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut basic = None;
    match auth {
        ClientAuth::Basic(id, secret) => basic = Some(format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))),
        ClientAuth::Post(id, secret) => {
            form.push(("client_id".into(), id.into()));
            form.push(("client_secret".into(), secret.into()));
        }
    }
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::post(&url).timeout(WAIT);
        if let Some(b) = &basic {
            req = req.set("Authorization", b);
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let resp = match req.send_form(&pairs) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("POST {url}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: body is not JSON ({e}): {text}"))
        };
        (status, body)
    })
    .await
    .expect("HTTP request task")
}

/// `POST /oauth/token` (client credentials, optional `scope`).
async fn token_request(b: &TestBroker, auth: ClientAuth<'_>, scope: Option<&str>) -> (u16, Value) {
    let mut params = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        params.push(("scope", s));
    }
    post_form(format!("{}/oauth/token", http_base(b)), auth, &params).await
}

/// An access token for `auth`'s client (the request must succeed).
async fn token(b: &TestBroker, auth: ClientAuth<'_>, scope: Option<&str>) -> String {
    let (status, body) = token_request(b, auth, scope).await;
    assert_eq!(status, 200, "token request refused: {body}");
    body["access_token"].as_str().expect("access_token").to_owned()
}

async fn revoke(b: &TestBroker, auth: ClientAuth<'_>, token: &str) -> u16 {
    post_form(format!("{}/oauth/revoke", http_base(b)), auth, &[("token", token)]).await.0
}

async fn introspect(b: &TestBroker, auth: ClientAuth<'_>, token: &str) -> Value {
    let (status, body) = post_form(format!("{}/oauth/introspect", http_base(b)), auth, &[("token", token)]).await;
    assert_eq!(status, 200, "introspection refused: {body}");
    body
}

/// The built-in token service with two clients: dev-001 (publish its telemetry, subscribe to
/// its commands) and ops (publish commands).
fn builtin_config(ttl: &str) -> String {
    format!(
        "{LISTENER}{HTTP}[oauth]\ntoken_ttl = \"{ttl}\"\n\
         [[oauth.client]]\nid = \"{DEV}\"\nsecret_hash = '{}'\n\
         scopes = [\"mqtt:pub:devices/dev-001/#\", \"mqtt:sub:commands/dev-001/#\"]\n\
         [[oauth.client]]\nid = \"{OPS}\"\nsecret_hash = '{}'\nscopes = [\"mqtt:pub:commands/#\"]\n",
        hash_password(DEV_SECRET.as_bytes()),
        hash_password(OPS_SECRET.as_bytes()),
    )
}

const DEV_BASIC: ClientAuth<'static> = ClientAuth::Basic(DEV, DEV_SECRET);
const DEV_POST: ClientAuth<'static> = ClientAuth::Post(DEV, DEV_SECRET);
const OPS_BASIC: ClientAuth<'static> = ClientAuth::Basic(OPS, OPS_SECRET);

/// `token` with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut t = token.to_owned();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

// ------------------------------------------------------------------------------------------
// 1. The built-in token service
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_tokens_from_basic_and_post_auth_connect_as_the_password() {
    let b = TestBroker::from_toml(&builtin_config("15m")).await;

    // client_secret_basic.
    let (status, body) = token_request(&b, DEV_BASIC, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "mqtt:pub:devices/dev-001/# mqtt:sub:commands/dev-001/#", "default: every allowed scope");
    let basic = body["access_token"].as_str().unwrap().to_owned();
    // client_secret_post.
    let post = token(&b, DEV_POST, None).await;
    assert_ne!(basic, post);

    for t in [&basic, &post] {
        // v5 without and with a user name (any user name: the token decides who the client is).
        assert_eq!(connack(&b, v5("d1", t)).await, ReasonCode::SUCCESS);
        assert_eq!(
            connack(&b, creds(connect_packet(Protocol::V5, "d1", true), Some(DEV), t)).await,
            ReasonCode::SUCCESS
        );
        assert_eq!(
            connack(&b, creds(connect_packet(Protocol::V5, "d1", true), Some("x"), t)).await,
            ReasonCode::SUCCESS
        );
        // v3.1.1 with a user name.
        assert_eq!(connack(&b, v3("d1", DEV, t)).await, ReasonCode::SUCCESS);
    }

    // v3.1.1 cannot carry a password without a user name [MQTT-3.1.2-22]: the CONNECT is
    // malformed and the connection is closed without a CONNACK.
    let (_c, r) = RawClient::connect(b.addr(), creds(connect_packet(Protocol::V311, "d1", true), None, &basic)).await;
    assert_eq!(r, Recv::Closed, "v3.1.1 password without user name");

    // A token whose signature was changed.
    assert_bad_token(&b, &tampered(&basic), "tampered signature").await;
    // A token from the service is not a password-file password: garbage is refused too.
    assert_bad_token(&b, "not.a.token", "garbage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_token_requests_with_a_wrong_secret_or_scope_are_refused() {
    let b = TestBroker::from_toml(&builtin_config("15m")).await;
    for auth in [
        ClientAuth::Basic(DEV, "wrong secret"),
        ClientAuth::Post(DEV, "wrong secret"),
        ClientAuth::Basic("nobody", DEV_SECRET),
        ClientAuth::Post("nobody", DEV_SECRET),
        // Another client's secret.
        ClientAuth::Basic(DEV, OPS_SECRET),
    ] {
        let (status, body) = token_request(&b, auth, None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_client");
        assert!(body.get("access_token").is_none());
    }
    // A scope beyond the client's allowance is refused, not silently dropped.
    for scope in ["mqtt:pub:#", "mqtt:pub:devices/#", "mqtt:sub:commands/#", "mqtt:pub:devices/dev-001/# admin"] {
        let (status, body) = token_request(&b, DEV_BASIC, Some(scope)).await;
        assert_eq!(status, 400, "scope {scope:?}: {body}");
        assert_eq!(body["error"], "invalid_scope", "scope {scope:?}");
    }
    // An allowed scope is granted.
    let (status, body) = token_request(&b, DEV_POST, Some("mqtt:sub:commands/dev-001/#")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "mqtt:sub:commands/dev-001/#");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_scope_grants_only_what_was_narrowed_to() {
    let b = TestBroker::from_toml(&builtin_config("15m")).await;
    let (mut o, _) = connected(b.addr(), v5("ops-1", &token(&b, OPS_BASIC, None).await)).await;

    // Only the publish scope: subscribing to its commands is no longer allowed.
    let (status, body) = token_request(&b, DEV_BASIC, Some("mqtt:pub:devices/dev-001/#")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "mqtt:pub:devices/dev-001/#");
    let (mut c, _) = connected(b.addr(), v5("narrow-pub", body["access_token"].as_str().unwrap())).await;
    assert_eq!(c.subscribe(1, "commands/dev-001/#", QoS::AtLeastOnce).await, vec![ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(puback(&mut c, "devices/dev-001/temp", 2).await, ReasonCode::SUCCESS);

    // Only the subscribe scope: publishing its telemetry is denied (default on_deny =
    // disconnect), subscribing works.
    let (status, body) = token_request(&b, DEV_POST, Some("mqtt:sub:commands/dev-001/#")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "mqtt:sub:commands/dev-001/#");
    let (mut c, _) = connected(b.addr(), v5("narrow-sub", body["access_token"].as_str().unwrap())).await;
    assert_eq!(c.subscribe(1, "commands/dev-001/#", QoS::AtLeastOnce).await, vec![ReasonCode::GRANTED_QOS_1]);
    assert_eq!(puback(&mut o, "commands/dev-001/reboot", 1).await, ReasonCode::SUCCESS);
    assert_eq!(c.expect_publish().await.topic.as_str(), "commands/dev-001/reboot");
    c.send(&publish("devices/dev-001/temp", QoS::AtLeastOnce, 2, b"x")).await;
    assert_eq!(expect_disconnect(&mut c, WAIT).await, ReasonCode::NOT_AUTHORIZED);

    // Scopes are opaque strings (RFC 6749 §3.3): a narrower *filter* than an allowed scope is
    // not an allowed scope.
    let (status, body) = token_request(&b, DEV_BASIC, Some("mqtt:pub:devices/dev-001/temp")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope");
}

/// Poll a rumqttc event loop until an incoming packet satisfies `want`.
async fn wait_for(ev: &mut rumqttc::EventLoop, want: fn(&rumqttc::Packet) -> bool) -> rumqttc::Packet {
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(p)) if want(&p) => return p,
                Ok(_) => {}
                Err(e) => panic!("rumqttc: {e}"),
            }
        }
    })
    .await
    .expect("rumqttc event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_connects_with_a_builtin_token_as_its_password() {
    use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, MqttOptions, Packet as RPacket};
    let b = TestBroker::from_toml(&builtin_config("15m")).await;
    let t = token(&b, DEV_BASIC, None).await;

    let mut opts = MqttOptions::new("rq-dev-001", "127.0.0.1", b.port());
    opts.set_credentials(DEV, t.clone());
    let (client, mut ev) = AsyncClient::new(opts, 10);
    match wait_for(&mut ev, |p| matches!(p, RPacket::ConnAck(_))).await {
        RPacket::ConnAck(a) => assert_eq!(a.code, ConnectReturnCode::Success),
        _ => unreachable!(),
    }
    client.publish("devices/dev-001/temp", rumqttc::QoS::AtLeastOnce, false, "21.5").await.unwrap();
    wait_for(&mut ev, |p| matches!(p, RPacket::PubAck(_))).await;

    let mut opts = MqttOptions::new("rq-bad", "127.0.0.1", b.port());
    opts.set_credentials(DEV, tampered(&t));
    let (_client, mut ev) = AsyncClient::new(opts, 10);
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = ev.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("refusal in time");
    assert!(
        matches!(refused, ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword)),
        "{refused:?}"
    );
}

// ------------------------------------------------------------------------------------------
// 2. Expiry ends the live connection
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_ends_live_connections() {
    let b = TestBroker::from_toml(&builtin_config("2s")).await;
    let t = token(&b, DEV_BASIC, None).await;
    let issued = tokio::time::Instant::now();
    let (mut c5, _) = connected(b.addr(), v5("exp5", &t)).await;
    let (mut c3, _) = connected(b.addr(), v3("exp3", DEV, &t)).await;
    // Usable until then.
    assert_eq!(puback(&mut c5, "devices/dev-001/t", 1).await, ReasonCode::SUCCESS);
    assert_alive(&mut c3).await;

    // `exp` is whole seconds: the token lives between 1 and 2 s after issue; the connection may
    // close up to a second after `exp`.
    assert_eq!(expect_disconnect(&mut c5, Duration::from_secs(5)).await, ReasonCode::MAXIMUM_CONNECT_TIME);
    let lived = issued.elapsed();
    assert!(lived >= Duration::from_millis(900), "closed too early: {lived:?}");
    assert!(lived <= Duration::from_millis(4_500), "closed too late: {lived:?}");
    // v3.1.1 has no DISCONNECT from the server: the connection is closed.
    let seen = c3.expect_closed_within(Duration::from_secs(4)).await;
    assert!(seen.is_empty(), "v3.1.1 received {seen:?}");

    // The expired token no longer connects, and is no longer active.
    assert_bad_token(&b, &t, "expired built-in token").await;
    assert_eq!(introspect(&b, DEV_BASIC, &t).await, json!({ "active": false }));
}

// ------------------------------------------------------------------------------------------
// 3. Revocation
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_disconnects_live_connections_and_the_token_stops_working() {
    let b = TestBroker::from_toml(&builtin_config("15m")).await;
    let t = token(&b, DEV_BASIC, None).await;
    let other = token(&b, DEV_BASIC, None).await;

    let intro = introspect(&b, DEV_BASIC, &t).await;
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["sub"], DEV);
    assert_eq!(intro["client_id"], DEV);
    // Another client learns nothing about dev-001's token.
    assert_eq!(introspect(&b, OPS_BASIC, &t).await, json!({ "active": false }));

    let (mut c5, _) = connected(b.addr(), v5("rev5", &t)).await;
    let (mut c3, _) = connected(b.addr(), v3("rev3", DEV, &t)).await;
    let (mut bystander, _) = connected(b.addr(), v5("rev-other", &other)).await;

    // Another client cannot revoke dev-001's token (same empty 200, nothing happens).
    assert_eq!(revoke(&b, OPS_BASIC, &t).await, 200);
    assert_alive(&mut c5).await;
    assert_eq!(introspect(&b, DEV_BASIC, &t).await["active"], true);
    // Wrong credentials: 401, nothing happens.
    assert_eq!(revoke(&b, ClientAuth::Basic(DEV, "wrong"), &t).await, 401);
    assert_alive(&mut c5).await;

    assert_eq!(revoke(&b, DEV_POST, &t).await, 200);
    assert_eq!(expect_disconnect(&mut c5, WAIT).await, ReasonCode::NOT_AUTHORIZED);
    let seen = c3.expect_closed_within(WAIT).await;
    assert!(seen.is_empty(), "v3.1.1 received {seen:?}");
    // A connection with another token of the same client is not touched.
    assert_alive(&mut bystander).await;

    assert_bad_token(&b, &t, "revoked token").await;
    assert_eq!(introspect(&b, DEV_BASIC, &t).await, json!({ "active": false }));
    // Revoking again is harmless.
    assert_eq!(revoke(&b, DEV_BASIC, &t).await, 200);
    assert_eq!(connack(&b, v5("again", &other)).await, ReasonCode::SUCCESS);
}

// ------------------------------------------------------------------------------------------
// 4. Outside HS256 tokens
// ------------------------------------------------------------------------------------------

fn hs256_config(extra: &str) -> String {
    format!("{LISTENER}[auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\nhs256_secret = \"{HS_SECRET}\"\n{extra}")
}

/// Claims of an outside token for `sub`, expiring `exp_in` seconds from now (negative: past).
fn claims(sub: &str, exp_in: i64) -> Value {
    let now = unix_now();
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": sub,
        "iat": now - 60,
        "exp": now + exp_in,
        "scope": format!("mqtt:pub:devices/{sub}/#"),
    })
}

fn hs256(header: &Header, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A token with a hand-written header, signed with `key` under `alg`.
fn hand_made(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let signing_input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg).unwrap();
    format!("{signing_input}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_hs256_tokens_are_verified() {
    let b = TestBroker::from_toml(&hs256_config("")).await;
    let hs = Header::new(Algorithm::HS256);
    let secret_key = EncodingKey::from_secret(HS_SECRET.as_bytes());

    let good = hs256(&hs, &claims("sensor-9", 300), HS_SECRET);
    assert_accepted(&b, &good, "valid HS256").await;
    // The token's scopes bind the connection.
    let (mut c, _) = connected(b.addr(), v5("sensor-9", &good)).await;
    assert_eq!(puback(&mut c, "devices/sensor-9/temp", 1).await, ReasonCode::SUCCESS);
    assert_eq!(c.subscribe(2, "devices/#", QoS::AtMostOnce).await, vec![ReasonCode::NOT_AUTHORIZED]);

    assert_bad_token(&b, &hs256(&hs, &claims("sensor-9", -10), HS_SECRET), "expired 10 s ago").await;
    let mut c_iss = claims("sensor-9", 300);
    c_iss["iss"] = json!("https://evil.example");
    assert_bad_token(&b, &hs256(&hs, &c_iss, HS_SECRET), "wrong iss").await;
    c_iss.as_object_mut().unwrap().remove("iss");
    assert_bad_token(&b, &hs256(&hs, &c_iss, HS_SECRET), "missing iss").await;
    let mut c_aud = claims("sensor-9", 300);
    c_aud["aud"] = json!("someone-else");
    assert_bad_token(&b, &hs256(&hs, &c_aud, HS_SECRET), "wrong aud").await;
    c_aud["aud"] = json!(["someone-else", AUD]);
    assert_accepted(&b, &hs256(&hs, &c_aud, HS_SECRET), "aud array naming us").await;
    assert_bad_token(&b, &hs256(&hs, &claims("sensor-9", 300), "another secret of enough length"), "other key").await;
    let mut c_exp = claims("sensor-9", 300);
    c_exp.as_object_mut().unwrap().remove("exp");
    assert_bad_token(&b, &hs256(&hs, &c_exp, HS_SECRET), "missing exp").await;
    let mut c_sub = claims("sensor-9", 300);
    c_sub.as_object_mut().unwrap().remove("sub");
    assert_bad_token(&b, &hs256(&hs, &c_sub, HS_SECRET), "missing sub").await;
    let mut c_nbf = claims("sensor-9", 300);
    c_nbf["nbf"] = json!(unix_now() + 120);
    assert_bad_token(&b, &hs256(&hs, &c_nbf, HS_SECRET), "not yet valid").await;

    // alg none, hand-made (no signature), in several spellings.
    for alg in ["none", "None", "NONE"] {
        let unsigned =
            format!("{}.{}.", b64json(&json!({ "alg": alg, "typ": "JWT" })), b64json(&claims("sensor-9", 300)));
        assert_bad_token(&b, &unsigned, &format!("alg {alg}")).await;
    }

    // The hand-made path itself produces good tokens (control) ...
    let control =
        hand_made(&json!({ "alg": "HS256", "typ": "JWT" }), &claims("sensor-9", 300), &secret_key, Algorithm::HS256);
    assert_accepted(&b, &control, "hand-made HS256 (control)").await;
    // ... but a `crit` header is refused, whatever it names.
    for (name, value) in [("urn:example:unknown", json!(1)), ("b64", json!(true)), ("exp", json!(unix_now() + 300))] {
        let mut header = json!({ "alg": "HS256", "typ": "JWT", "crit": [name] });
        header[name] = value;
        let t = hand_made(&header, &claims("sensor-9", 300), &secret_key, Algorithm::HS256);
        assert_bad_token(&b, &t, &format!("crit [{name}]")).await;
    }

    // A kid the key set does not have (the HS256 secret has none).
    let mut with_kid = Header::new(Algorithm::HS256);
    with_kid.kid = Some("unknown-kid".into());
    assert_bad_token(&b, &hs256(&with_kid, &claims("sensor-9", 300), HS_SECRET), "unknown kid").await;
    // A subject that is not a safe identity.
    assert_eq!(
        connack(&b, v5("c5", &hs256(&hs, &claims("a/#", 300), HS_SECRET))).await,
        SUBJECT_V5,
        "subject with topic wildcards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leeway_accepts_a_token_expired_moments_ago() {
    let b = TestBroker::from_toml(&hs256_config("leeway = \"30s\"\n")).await;
    let hs = Header::new(Algorithm::HS256);
    assert_accepted(&b, &hs256(&hs, &claims("sensor-9", -10), HS_SECRET), "expired 10 s ago, leeway 30 s").await;
    assert_bad_token(&b, &hs256(&hs, &claims("sensor-9", -60), HS_SECRET), "expired 60 s ago, leeway 30 s").await;
    let mut c_nbf = claims("sensor-9", 300);
    c_nbf["nbf"] = json!(unix_now() + 10);
    assert_accepted(&b, &hs256(&hs, &c_nbf, HS_SECRET), "nbf 10 s ahead, leeway 30 s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_accepted_within_leeway_keeps_its_connection() {
    let b = TestBroker::from_toml(&hs256_config("leeway = \"30s\"\n")).await;
    let t = hs256(&Header::new(Algorithm::HS256), &claims("sensor-9", -10), HS_SECRET);
    let (mut c, _) = connected(b.addr(), v5("sensor-9", &t)).await;
    // Accepted means usable: it may publish within its scope (until exp + leeway, ~20 s away).
    assert_eq!(puback(&mut c, "devices/sensor-9/temp", 1).await, ReasonCode::SUCCESS);
    assert_alive(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_must_match_client_id() {
    let b = TestBroker::from_toml(&hs256_config("subject_must_match = \"client_id\"\n")).await;
    let t = hs256(&Header::new(Algorithm::HS256), &claims("sensor-9", 300), HS_SECRET);
    assert_eq!(connack(&b, v5("sensor-9", &t)).await, ReasonCode::SUCCESS);
    assert_eq!(connack(&b, v3("sensor-9", "anyone", &t)).await, ReasonCode::SUCCESS);
    assert_eq!(connack(&b, v5("sensor-10", &t)).await, SUBJECT_V5);
    assert_eq!(connack(&b, v5("Sensor-9", &t)).await, SUBJECT_V5, "exact, case-sensitive");
    assert_eq!(connack(&b, v3("sensor-10", "sensor-9", &t)).await, SUBJECT_V3, "the user name does not count");
    // A bad token is still a bad token (0x86), not a subject mismatch.
    assert_eq!(connack(&b, v5("sensor-9", &tampered(&t))).await, BAD_TOKEN_V5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_must_match_username() {
    let b = TestBroker::from_toml(&hs256_config("subject_must_match = \"username\"\n")).await;
    let t = hs256(&Header::new(Algorithm::HS256), &claims("sensor-9", 300), HS_SECRET);
    let v5_user = |user: Option<&str>| creds(connect_packet(Protocol::V5, "any-client", true), user, &t);
    assert_eq!(connack(&b, v5_user(Some("sensor-9"))).await, ReasonCode::SUCCESS);
    assert_eq!(connack(&b, v3("any-client", "sensor-9", &t)).await, ReasonCode::SUCCESS);
    assert_eq!(connack(&b, v5_user(Some("sensor-10"))).await, SUBJECT_V5);
    assert_eq!(connack(&b, v5_user(None)).await, SUBJECT_V5, "no user name");
    assert_eq!(connack(&b, v3("sensor-9", "sensor-10", &t)).await, SUBJECT_V3, "the client id does not count");
}

// ------------------------------------------------------------------------------------------
// 5. JWKS file (Ed25519)
// ------------------------------------------------------------------------------------------

/// Access claims for `sub` signed by [`mint`].
fn access_claims(sub: &str) -> AccessClaims {
    let now = unix_now() as u64;
    AccessClaims {
        issuer: ISS.into(),
        subject: sub.into(),
        audience: Some(AUD.into()),
        client_id: sub.into(),
        scope: format!("mqtt:pub:devices/{sub}/#"),
        roles: vec![],
        issued_at: now,
        expires_at: now + 300,
        jti: format!("jti-{sub}-{now}"),
    }
}

/// jsonwebtoken's encoding key for a [`SigningKey`] (its PKCS#8 DER, for hand-made headers).
fn ed_encoding_key(key: &SigningKey) -> EncodingKey {
    let pem = key.to_pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    EncodingKey::from_ed_der(&STANDARD.decode(body).unwrap())
}

fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_ed25519_tokens_are_verified_and_embedded_keys_ignored() {
    let trusted = SigningKey::generate();
    let attacker = SigningKey::generate();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&trusted]).to_string()).unwrap();
    let b = TestBroker::from_toml_in(
        dir,
        &format!("{LISTENER}[auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_file = \"{{dir}}/jwks.json\"\n"),
    )
    .await;

    assert_accepted(&b, &mint(&access_claims("sensor-9"), &trusted), "minted with the JWKS key").await;
    assert_bad_token(&b, &mint(&access_claims("sensor-9"), &attacker), "another key (kid unknown)").await;

    // Hand-made headers: the signing path works (control), and a jwk header is just ignored.
    let trusted_enc = ed_encoding_key(&trusted);
    let attacker_enc = ed_encoding_key(&attacker);
    let c = claims("sensor-9", 300);
    let control = hand_made(
        &json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": trusted.kid() }),
        &c,
        &trusted_enc,
        Algorithm::EdDSA,
    );
    assert_accepted(&b, &control, "hand-made EdDSA (control)").await;
    let ignored_jwk = hand_made(
        &json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": trusted.kid(), "jwk": trusted.jwk() }),
        &c,
        &trusted_enc,
        Algorithm::EdDSA,
    );
    assert_accepted(&b, &ignored_jwk, "trusted key, jwk header present (ignored)").await;

    // The attacker embeds their own public key and signs with it.
    for header in [
        json!({ "alg": "EdDSA", "typ": "at+jwt", "jwk": attacker.jwk() }),
        json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": attacker.kid(), "jwk": attacker.jwk() }),
        json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": trusted.kid(), "jwk": attacker.jwk() }),
        json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": attacker.kid(), "jku": "http://127.0.0.1:9/jwks.json" }),
    ] {
        let t = hand_made(&header, &c, &attacker_enc, Algorithm::EdDSA);
        assert_bad_token(&b, &t, &format!("attacker header {header}")).await;
    }
    // An HS256 token "signed" with the public key bytes (algorithm confusion).
    let confused = hand_made(
        &json!({ "alg": "HS256", "typ": "at+jwt", "kid": trusted.kid() }),
        &c,
        &EncodingKey::from_secret(trusted.jwk()["x"].as_str().unwrap().as_bytes()),
        Algorithm::HS256,
    );
    assert_bad_token(&b, &confused, "HS256 with the public key as secret").await;
}

// ------------------------------------------------------------------------------------------
// 6. JWKS URL, rotation and the refresh rate limit
// ------------------------------------------------------------------------------------------

/// A tiny issuer serving a JWKS and counting the requests.
struct MockIssuer {
    jwks: Arc<parking_lot::Mutex<String>>,
    hits: Arc<AtomicUsize>,
    url: String,
}

impl MockIssuer {
    async fn start(initial: Value) -> MockIssuer {
        let jwks = Arc::new(parking_lot::Mutex::new(initial.to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (j, h) = (jwks.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (j, h) = (j.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], j.lock().clone())
                }
            }),
        );
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", tcp.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(tcp, app).await.unwrap() });
        MockIssuer { jwks, hits, url }
    }

    fn serve(&self, v: Value) {
        *self.jwks.lock() = v.to_string();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_at_start_refreshed_on_unknown_kid_and_rate_limited() {
    let k1 = SigningKey::generate();
    let k2 = SigningKey::generate();
    let k3 = SigningKey::generate();
    let issuer = MockIssuer::start(jwks(&[&k1])).await;
    let b = TestBroker::from_toml(&format!(
        "{LISTENER}[auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_url = \"{}\"\n",
        issuer.url
    ))
    .await;
    // The start fetch happened before this instant.
    let started = tokio::time::Instant::now();
    assert_eq!(issuer.hits(), 1, "fetched once at start");
    assert_accepted(&b, &mint(&access_claims("sensor-9"), &k1), "key from the URL").await;
    assert_eq!(issuer.hits(), 1, "a known kid needs no fetch");

    // Rotation: the issuer now publishes k2 too.
    issuer.serve(jwks(&[&k1, &k2]));
    // Within the refresh interval of the start fetch, an unknown kid fetches nothing (the start
    // fetch counts: at most one fetch per interval), so the new key is not known yet.
    assert_bad_token(&b, &mint(&access_claims("sensor-9"), &k2), "new kid, within the interval of the start fetch")
        .await;
    assert_eq!(issuer.hits(), 1, "no fetch within {JWKS_REFRESH_INTERVAL:?} of the last one");

    // Once the interval has passed, the first unknown kid refreshes the key set.
    tokio::time::sleep_until(started + JWKS_REFRESH_INTERVAL + Duration::from_millis(50)).await;
    assert_eq!(connack(&b, v5("c5", &mint(&access_claims("sensor-9"), &k2))).await, ReasonCode::SUCCESS);
    assert_eq!(issuer.hits(), 2, "one refresh on the unknown kid");
    assert_accepted(&b, &mint(&access_claims("sensor-9"), &k2), "rotated-in key").await;
    assert_accepted(&b, &mint(&access_claims("sensor-9"), &k1), "key still published").await;
    assert_eq!(issuer.hits(), 2);

    // A flood of unknown kids within the interval: no further fetch, all refused.
    for _ in 0..5 {
        assert_bad_token(&b, &mint(&access_claims("sensor-9"), &k3), "unknown kid").await;
        assert_bad_token(&b, &mint(&access_claims("sensor-9"), &SigningKey::generate()), "made-up kid").await;
    }
    assert_eq!(issuer.hits(), 2, "no second fetch within {JWKS_REFRESH_INTERVAL:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_fetch_does_not_hold_back_the_first_refresh() {
    let k1 = SigningKey::generate();
    // The issuer answers nonsense at start (no "keys" array): the broker starts without keys.
    let issuer = MockIssuer::start(json!({ "error": "warming up" })).await;
    let b = TestBroker::from_toml(&format!(
        "{LISTENER}[auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_url = \"{}\"\n",
        issuer.url
    ))
    .await;
    assert_eq!(issuer.hits(), 1, "fetched at start");
    issuer.serve(jwks(&[&k1]));
    // The first token with a kid fetches at once.
    assert_eq!(connack(&b, v5("c5", &mint(&access_claims("sensor-9"), &k1))).await, ReasonCode::SUCCESS);
    assert_eq!(issuer.hits(), 2);
    assert_accepted(&b, &mint(&access_claims("sensor-9"), &k1), "fetched key").await;
    // That fetch succeeded: the rate limit now holds.
    assert_bad_token(&b, &mint(&access_claims("sensor-9"), &SigningKey::generate()), "made-up kid").await;
    assert_eq!(issuer.hits(), 2, "no second fetch within {JWKS_REFRESH_INTERVAL:?}");
}

// ------------------------------------------------------------------------------------------
// 7. Scopes
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_bind_publish_and_subscribe_v5() {
    let b = TestBroker::from_toml(&builtin_config("15m")).await;
    let dev = token(&b, DEV_BASIC, None).await;
    let ops = token(&b, OPS_BASIC, None).await;

    let (mut c, _) = connected(b.addr(), v5(DEV, &dev)).await;
    assert_eq!(c.subscribe(1, "commands/dev-001/#", QoS::AtLeastOnce).await, vec![ReasonCode::GRANTED_QOS_1]);
    assert_eq!(c.subscribe(2, "commands/#", QoS::AtLeastOnce).await, vec![ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(c.subscribe(3, "commands/+/reboot", QoS::AtLeastOnce).await, vec![ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(
        c.subscribe(4, "devices/dev-001/#", QoS::AtLeastOnce).await,
        vec![ReasonCode::NOT_AUTHORIZED],
        "a pub scope does not allow subscribing"
    );

    // The granted subscription delivers.
    let (mut o, _) = connected(b.addr(), v5("ops-1", &ops)).await;
    assert_eq!(puback(&mut o, "commands/dev-002/reboot", 1).await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut o, "commands/dev-001/reboot", 2).await, ReasonCode::SUCCESS);
    assert_eq!(c.expect_publish().await.topic.as_str(), "commands/dev-001/reboot");

    assert_eq!(puback(&mut c, "devices/dev-001/temp", 5).await, ReasonCode::SUCCESS);
    // Outside the scope: default on_deny = "disconnect".
    c.send(&publish("devices/dev-002/temp", QoS::AtLeastOnce, 6, b"x")).await;
    assert_eq!(expect_disconnect(&mut c, WAIT).await, ReasonCode::NOT_AUTHORIZED);
    // QoS 0 too.
    let (mut c, _) = connected(b.addr(), v5(DEV, &dev)).await;
    c.send(&publish("commands/dev-001/x", QoS::AtMostOnce, 0, b"x")).await;
    assert_eq!(expect_disconnect(&mut c, WAIT).await, ReasonCode::NOT_AUTHORIZED, "sub scope is not pub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_bind_publish_and_subscribe_v311() {
    let b = TestBroker::from_toml(&builtin_config("15m")).await;
    let dev = token(&b, DEV_BASIC, None).await;
    let (mut c, _) = connected(b.addr(), v3(DEV, DEV, &dev)).await;
    assert_eq!(c.subscribe(1, "commands/dev-001/#", QoS::AtLeastOnce).await, vec![ReasonCode::GRANTED_QOS_1]);
    assert_eq!(c.subscribe(2, "commands/#", QoS::AtLeastOnce).await, vec![ReasonCode::V3_SUBACK_FAILURE]);
    assert_eq!(puback(&mut c, "devices/dev-001/temp", 3).await, ReasonCode::SUCCESS);
    c.send(&publish("devices/dev-002/temp", QoS::AtLeastOnce, 4, b"x")).await;
    let seen = c.expect_closed_within(WAIT).await;
    assert!(seen.is_empty(), "v3.1.1 is closed without a PUBACK: {seen:?}");
}

/// An outside HS256 token for `sub` with exactly these scopes.
fn scoped_token(sub: &str, scope: &str) -> String {
    let mut c = claims(sub, 300);
    c["scope"] = json!(scope);
    hs256(&Header::new(Algorithm::HS256), &c, HS_SECRET)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_bound_by_the_new_tokens_scopes() {
    let b = TestBroker::from_toml(&hs256_config("")).await;
    let publisher = scoped_token("ops", "mqtt:pub:commands/#");
    let (mut o, _) = connected(b.addr(), v5("ops", &publisher)).await;
    let persistent = |token: &str| {
        let mut c = v5("sensor-9", token);
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
        c
    };

    // A session made under a broad token, subscribed to every command.
    let broad = scoped_token("sensor-9", "mqtt:sub:commands/#");
    let (mut c, _) = connected(b.addr(), persistent(&broad)).await;
    assert_eq!(c.subscribe(1, "commands/#", QoS::AtLeastOnce).await, vec![ReasonCode::GRANTED_QOS_1]);
    // Delivered under the broad token; the publisher's connection now remembers who receives
    // this topic, and must forget it when the subscriber's grants change.
    assert_eq!(puback(&mut o, "commands/other/reboot", 10).await, ReasonCode::SUCCESS);
    let p = c.expect_publish().await;
    assert_eq!(p.topic.as_str(), "commands/other/reboot");
    c.send(&Packet::PubAck(mqtt_codec::PubAck::new(p.packet_id))).await;
    c.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))).await;
    let rest = c.expect_closed_within(WAIT).await;
    assert!(rest.is_empty(), "{rest:?}");

    // The same subject comes back with a token that only grants its own commands.
    let narrow = scoped_token("sensor-9", "mqtt:sub:commands/sensor-9/#");
    let (mut c, ack) = connected(b.addr(), persistent(&narrow)).await;
    assert!(ack.session_present, "the session is resumed");
    assert_eq!(c.subscribe(2, "commands/#", QoS::AtLeastOnce).await, vec![ReasonCode::NOT_AUTHORIZED], "new token");
    assert_eq!(puback(&mut o, "commands/other/reboot", 1).await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut o, "commands/sensor-9/reboot", 2).await, ReasonCode::SUCCESS);
    let p = c.expect_publish().await;
    assert_eq!(p.topic.as_str(), "commands/sensor-9/reboot", "delivered beyond the connection's token scopes");
}

// ------------------------------------------------------------------------------------------
// Revocations survive a restart
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_revoked_token_stays_refused_after_a_restart() {
    // RFC 7009 §2: after revocation the token is invalid; SPEC §5: that holds across a
    // restart (<data_dir>/oauth/revoked.json) until the token expires.
    let config = builtin_config("15m");
    let b = TestBroker::from_toml(&config).await;
    let revoked = token(&b, DEV_BASIC, None).await;
    let kept = token(&b, DEV_BASIC, None).await;
    assert_eq!(revoke(&b, DEV_BASIC, &revoked).await, 200);
    assert_bad_token(&b, &revoked, "revoked token").await;
    let saved = std::fs::read_to_string(b.path("oauth/revoked.json")).expect("revocations saved");
    assert!(!saved.contains(&revoked), "the file holds ids, never tokens");

    // Restart on the same data directory (same signing key, new ports).
    let TestBroker { server, dir } = b;
    server.shutdown().await;
    let b = TestBroker::from_toml_in(dir, &config).await;
    assert_bad_token(&b, &revoked, "revoked token after a restart").await;
    assert_eq!(introspect(&b, DEV_BASIC, &revoked).await, json!({ "active": false }));
    assert_accepted(&b, &kept, "a token that was not revoked").await;
}

/// Per-user backoff guards passwords against guessing; a wrong or expired token is not a
/// guess, so a device retrying with a stale token is not locked out once it has a fresh one
/// (failed tokens still count towards the address ban).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tokens_do_not_put_the_user_name_in_backoff() {
    let b = TestBroker::from_toml(&hs256_config(
        "[limits]\nauth_fail_backoff = { failures = 2, initial = \"60s\", max = \"60s\" }\n",
    ))
    .await;
    let hs = Header::new(Algorithm::HS256);
    for _ in 0..4 {
        let stale = hs256(&hs, &claims("sensor-9", -10), HS_SECRET);
        assert_eq!(connack(&b, v3("c3", "sensor-9", &stale)).await, BAD_TOKEN_V3);
    }
    let fresh = hs256(&hs, &claims("sensor-9", 300), HS_SECRET);
    assert_eq!(connack(&b, v3("c3", "sensor-9", &fresh)).await, ReasonCode::SUCCESS);
}

// ------------------------------------------------------------------------------------------
// 8. typ, maximum lifetime and the scope mapping of outside tokens (issue 17 item 7), with a
//    real client (rumqttc, MQTT 5 and 3.1.1)
// ------------------------------------------------------------------------------------------

use rumqttc::v5::mqttbytes::v5 as p5;

/// An outside HS256 token with this header `typ` (`None`: no `typ` member) and claims.
fn typed(typ: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": "HS256" });
    if let Some(t) = typ {
        header["typ"] = json!(t);
    }
    hand_made(&header, claims, &EncodingKey::from_secret(HS_SECRET.as_bytes()), Algorithm::HS256)
}

/// Claims for `sub` with this `iat` (`None`: no `iat` claim) and `exp`.
fn lifetime_claims(sub: &str, iat: Option<i64>, exp: i64) -> Value {
    let mut c = claims(sub, 0);
    c["exp"] = json!(exp);
    match iat {
        Some(i) => c["iat"] = json!(i),
        None => {
            c.as_object_mut().unwrap().remove("iat");
        }
    }
    c
}

/// What a rumqttc MQTT 5 client gets for a CONNECT with `token` as its password.
async fn rq5_connack(b: &TestBroker, client_id: &str, token: &str) -> p5::ConnectReturnCode {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", b.port());
    o.set_credentials("someone", token);
    let (_client, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a))) => return a.code,
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("rumqttc v5: {e:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time")
}

/// What a rumqttc MQTT 3.1.1 client gets for a CONNECT with `token` as its password.
async fn rq3_connack(b: &TestBroker, client_id: &str, token: &str) -> rumqttc::ConnectReturnCode {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", b.port());
    o.set_credentials("someone", token);
    let (_client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => return a.code,
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("rumqttc v3: {e:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time")
}

/// Both protocol versions accept `token`.
async fn rq_accepted(b: &TestBroker, token: &str, what: &str) {
    assert_eq!(rq5_connack(b, "rq5", token).await, p5::ConnectReturnCode::Success, "v5: {what}");
    assert_eq!(rq3_connack(b, "rq3", token).await, rumqttc::ConnectReturnCode::Success, "v3.1.1: {what}");
}

/// Both protocol versions refuse `token` as not authorized (v5 0x87, v3 0x05): a genuine token
/// that policy refuses.
async fn rq_not_authorized(b: &TestBroker, token: &str, what: &str) {
    assert_eq!(rq5_connack(b, "rq5", token).await, p5::ConnectReturnCode::NotAuthorized, "v5: {what}");
    assert_eq!(rq3_connack(b, "rq3", token).await, rumqttc::ConnectReturnCode::NotAuthorized, "v3.1.1: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_token_typ_is_checked() {
    // Default: at+jwt and JWT (what most identity providers issue).
    let b = TestBroker::from_toml(&hs256_config("")).await;
    let c = claims("sensor-9", 300);
    for ok in ["at+jwt", "application/at+jwt", "JWT", "jwt"] {
        rq_accepted(&b, &typed(Some(ok), &c), &format!("typ {ok}")).await;
    }
    for refused in [Some("id_token+jwt"), Some("dpop+jwt"), Some("logout+jwt"), None] {
        rq_not_authorized(&b, &typed(refused, &c), &format!("typ {refused:?}")).await;
    }
    // The signature is judged first: a forged token with a wrong typ is a bad credential.
    let forged = hand_made(
        &json!({ "alg": "HS256", "typ": "id_token+jwt" }),
        &c,
        &EncodingKey::from_secret(b"not the configured secret at all"),
        Algorithm::HS256,
    );
    assert_eq!(rq5_connack(&b, "rq5", &forged).await, p5::ConnectReturnCode::BadUserNamePassword);

    // Strict RFC 9068: at+jwt only.
    let b = TestBroker::from_toml(&hs256_config("typ = [\"at+jwt\"]\n")).await;
    rq_accepted(&b, &typed(Some("at+jwt"), &c), "typ at+jwt, strict").await;
    rq_not_authorized(&b, &typed(Some("JWT"), &c), "typ JWT, strict").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_token_lifetime_is_bounded() {
    let now = unix_now();
    let day = 86_400;
    let b = TestBroker::from_toml(&hs256_config("")).await;
    let tok = |iat, exp| typed(Some("at+jwt"), &lifetime_claims("sensor-9", iat, exp));
    rq_accepted(&b, &tok(Some(now - 60), now - 60 + day), "24 h from iat (the default maximum)").await;
    rq_not_authorized(&b, &tok(Some(now - 60), now + day), "24 h + 60 s from iat").await;
    rq_not_authorized(&b, &tok(Some(now), now + 10 * 365 * day), "ten years").await;
    rq_not_authorized(&b, &tok(Some(now - day), now + 120), "25 h token with two minutes left").await;
    // Without iat the time left counts.
    rq_accepted(&b, &tok(None, now + 300), "no iat, 5 min left").await;
    rq_not_authorized(&b, &tok(None, now + day + 3600), "no iat, 25 h left").await;
    // An iat in the future does not hide a far exp.
    rq_not_authorized(&b, &tok(Some(now + 5 * 365 * day), now + 5 * 365 * day + 60), "iat years ahead").await;

    let b = TestBroker::from_toml(&hs256_config("max_token_lifetime = \"1h\"\n")).await;
    rq_accepted(&b, &tok(Some(now), now + 3600), "1 h, maximum 1 h").await;
    rq_not_authorized(&b, &tok(Some(now), now + 7200), "2 h, maximum 1 h").await;
}

/// A rumqttc MQTT 5 client with its event loop in a task; events arrive on a channel.
struct Rq5 {
    client: rumqttc::v5::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>>,
}

impl Rq5 {
    /// Connect with `token` as the password and wait for a successful CONNACK.
    async fn connect(b: &TestBroker, client_id: &str, token: &str) -> Rq5 {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", b.port());
        o.set_credentials("someone", token);
        let (client, mut ev) = rumqttc::v5::AsyncClient::new(o, 16);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let e = ev.poll().await;
                let end = e.is_err();
                if tx.send(e).is_err() || end {
                    break;
                }
            }
        });
        let mut c = Rq5 { client, rx };
        let code = c.next(|e| matches!(e, p5::Packet::ConnAck(_)).then(|| e.clone())).await;
        assert!(matches!(code, p5::Packet::ConnAck(a) if a.code == p5::ConnectReturnCode::Success));
        c
    }

    /// The first incoming packet `f` picks, within [`WAIT`].
    async fn next<T>(&mut self, mut f: impl FnMut(&p5::Packet) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(rumqttc::v5::Event::Incoming(p))) => {
                        if let Some(v) = f(&p) {
                            return v;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("the connection ended: {e:?}"),
                    None => panic!("the connection ended"),
                }
            }
        })
        .await
        .expect("packet in time")
    }

    /// SUBACK reason of one subscription. rumqttc ends the connection on a refusing SUBACK
    /// (`SubFail`): that is returned as the reason, and this client is done.
    async fn subscribe(&mut self, filter: &str) -> p5::SubscribeReasonCode {
        self.client.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(rumqttc::v5::Event::Incoming(p5::Packet::SubAck(s)))) => return s.return_codes[0],
                    Some(Ok(_)) => {}
                    Some(Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::SubFail { reason }))) => {
                        return reason
                    }
                    Some(Err(e)) => panic!("the connection ended: {e:?}"),
                    None => panic!("the connection ended"),
                }
            }
        })
        .await
        .expect("SUBACK in time")
    }

    /// PUBACK reason of one QoS 1 publish. rumqttc ends the connection on a refusing PUBACK
    /// (`PubAckFail`): that is returned as the reason, and this client is done.
    async fn publish(&mut self, topic: &str) -> p5::PubAckReason {
        self.client.publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "x").await.unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(rumqttc::v5::Event::Incoming(p5::Packet::PubAck(a)))) => return a.reason,
                    Some(Ok(_)) => {}
                    Some(Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::PubAckFail {
                        reason,
                    }))) => return reason,
                    Some(Err(e)) => panic!("the connection ended: {e:?}"),
                    None => panic!("the connection ended"),
                }
            }
        })
        .await
        .expect("PUBACK in time")
    }
}

/// A fresh connection with `token` publishes to `topic` and is refused (v5 PUBACK 0x87 with
/// `on_deny = "drop"`).
async fn publish_refused(b: &TestBroker, token: &str, topic: &str) -> bool {
    Rq5::connect(b, "pub-check", token).await.publish(topic).await == p5::PubAckReason::NotAuthorized
}

/// A fresh connection with `token` subscribes to `filter` and is refused (SUBACK 0x87).
async fn subscribe_refused(b: &TestBroker, token: &str, filter: &str) -> bool {
    Rq5::connect(b, "sub-check", token).await.subscribe(filter).await == SUB_DENIED
}

const GRANTED: p5::SubscribeReasonCode = p5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
const SUB_DENIED: p5::SubscribeReasonCode = p5::SubscribeReasonCode::NotAuthorized;

/// True for a PUBACK that accepted the message (no subscriber is still a success).
fn pub_ok(r: p5::PubAckReason) -> bool {
    matches!(r, p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers)
}

const ADMIN_TOKEN: &str = "admin token for the scope mapping tests";

/// `POST` JSON to the admin API with the admin token; the call must succeed.
async fn admin_post(b: &TestBroker, path: &str, body: Value) {
    let url = format!("{}{path}", http_base(b));
    let status = tokio::task::spawn_blocking(move || {
        let r = ureq::post(&url)
            .timeout(WAIT)
            .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .send_string(&body.to_string());
        match r {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r.status(),
            Err(e) => panic!("POST {url}: {e}"),
        }
    })
    .await
    .unwrap();
    assert!(status == 200 || status == 201, "admin API answered {status}");
}

/// An identity provider whose scopes are `mqtt:publish:<filter>` / `mqtt:subscribe:<filter>`,
/// mapped by configuration; `fleet.operator` maps to the policy-store role `operator`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_providers_scopes_are_mapped_by_configuration() {
    let b = TestBroker::from_toml(&format!(
        "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = '{}'\n[authz]\non_deny = \"drop\"\n\
         [auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\nhs256_secret = \"{HS_SECRET}\"\n\
         publish_scope_prefixes = [\"mqtt:publish:\"]\nsubscribe_scope_prefixes = [\"mqtt:subscribe:\"]\n\
         [auth.jwt.scope_roles]\n\"fleet.operator\" = \"operator\"\n",
        hash_password(ADMIN_TOKEN.as_bytes())
    ))
    .await;
    let rule = |id: &str, action: &str, topic: &str| json!({"id": id, "action": action, "topic": topic, "max_qos": 2, "retain": true, "effect": "allow"});
    admin_post(&b, "/admin/roles", json!({"name": "operator", "rules": [rule("o", "subscribe", "fleet/#")]})).await;
    // A role nothing maps to: a scope of the same name grants nothing.
    admin_post(&b, "/admin/roles", json!({"name": "unmapped", "rules": [rule("u", "subscribe", "secret/#")]})).await;

    let tok = |scope: &str| {
        let mut c = claims("sensor-9", 300);
        c["scope"] = json!(scope);
        typed(Some("JWT"), &c)
    };
    // Mapped prefixes grant what they name.
    let mapped = tok("mqtt:publish:sensors/sensor-9/# mqtt:subscribe:commands/sensor-9/#");
    let mut c = Rq5::connect(&b, "s9", &mapped).await;
    assert!(pub_ok(c.publish("sensors/sensor-9/temp").await));
    assert_eq!(c.subscribe("commands/sensor-9/#").await, GRANTED);
    assert!(subscribe_refused(&b, &mapped, "sensors/sensor-9/#").await, "publish scope only");
    assert!(subscribe_refused(&b, &mapped, "fleet/#").await, "no role without its scope");
    assert!(publish_refused(&b, &mapped, "commands/sensor-9/x").await, "subscribe scope only");

    // Unmapped scopes — including the native grammar once it is replaced, and a role's own
    // name — grant nothing.
    let unmapped = tok("mqtt:pub:sensors/# mqtt:sub:# openid unmapped operator");
    for filter in ["sensors/#", "secret/#", "fleet/#"] {
        assert!(subscribe_refused(&b, &unmapped, filter).await, "{filter}");
    }
    assert!(publish_refused(&b, &unmapped, "sensors/sensor-9/temp").await);

    // The role table: fleet.operator → operator's rules.
    let operator = tok("fleet.operator");
    let mut o = Rq5::connect(&b, "s9o", &operator).await;
    assert_eq!(o.subscribe("fleet/#").await, GRANTED);
    assert!(subscribe_refused(&b, &operator, "secret/#").await);
    assert!(publish_refused(&b, &operator, "fleet/x").await, "the role grants subscribe only");
}
