//! The endpoints end to end through the router (`tower::ServiceExt::oneshot`, no sockets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::Value;
use tower::ServiceExt as _;
use warden_policy::jwt::{self, AccessClaims, JwtError, SigningKey};

use crate::{router, OAuthClient, OAuthService, OAuthSettings, TokenRejected};

const ISSUER: &str = "http://127.0.0.1:8443";
const TTL: u64 = 3600;
const START: u64 = 1_700_000_000;
const DEV1_SECRET: &str = "s3cret-001";
/// Needs form-urlencoding inside HTTP Basic.
const DEV2_SECRET: &str = "pw+2:x% é";
const DEV1_SCOPES: [&str; 2] = ["mqtt:pub:devices/dev-001/#", "mqtt:sub:commands/dev-001/#"];

fn hash(secret: &str) -> String {
    static HASHES: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    let hashes = HASHES.get_or_init(Default::default);
    let mut hashes = hashes.lock();
    if let Some((_, h)) = hashes.iter().find(|(s, _)| s == secret) {
        return h.clone();
    }
    let h = warden_policy::password::hash_password(secret.as_bytes());
    hashes.push((secret.to_owned(), h.clone()));
    h
}

fn clients() -> Vec<OAuthClient> {
    vec![
        OAuthClient {
            id: "dev-001".into(),
            secret_hash: hash(DEV1_SECRET),
            scopes: DEV1_SCOPES.iter().map(|s| s.to_string()).collect(),
            roles: vec!["device".into()],
        },
        OAuthClient {
            id: "dev-002".into(),
            secret_hash: hash(DEV2_SECRET),
            scopes: vec!["mqtt:pub:devices/dev-002/#".into()],
            roles: vec![],
        },
    ]
}

struct Fixture {
    service: Arc<OAuthService>,
    app: Router,
    clock: Arc<AtomicU64>,
    revoked: Arc<Mutex<Vec<String>>>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_audience(Some("warden"))
    }

    fn with_audience(audience: Option<&str>) -> Fixture {
        let clock = Arc::new(AtomicU64::new(START));
        let c = clock.clone();
        let service = Arc::new(OAuthService::new(
            OAuthSettings {
                issuer: ISSUER.into(),
                token_ttl: Duration::from_secs(TTL),
                audience: audience.map(str::to_owned),
            },
            clients(),
            vec![SigningKey::generate()],
            Arc::new(move || c.load(Ordering::SeqCst)),
        ));
        let revoked = Arc::new(Mutex::new(Vec::new()));
        let r = revoked.clone();
        service.on_revoke(Box::new(move |jti| r.lock().push(jti.to_owned())));
        Fixture { app: router(service.clone()), service, clock, revoked }
    }

    fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body: bytes.to_vec(), json }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, params: &[(&str, &str)], basic: Option<(&str, &str)>) -> Reply {
        self.send(post_request(path, params, basic)).await
    }

    /// A token for `client` (Basic auth), optionally with `scope`.
    async fn token(&self, client: (&str, &str), scope: Option<&str>) -> String {
        let mut params = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope {
            params.push(("scope", scope));
        }
        let reply = self.post("/oauth/token", &params, Some(client)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json);
        reply.json["access_token"].as_str().unwrap().to_owned()
    }

    async fn introspect(&self, token: &str, client: (&str, &str)) -> Value {
        let reply = self.post("/oauth/introspect", &[("token", token)], Some(client)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_no_store(&reply.headers);
        reply.json
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    json: Value,
}

impl Reply {
    fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

const DEV1: (&str, &str) = ("dev-001", DEV1_SECRET);
const DEV2: (&str, &str) = ("dev-002", DEV2_SECRET);

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{}:{}", urlencode(id), urlencode(secret))))
}

fn post_request(path: &str, params: &[(&str, &str)], auth: Option<(&str, &str)>) -> Request<Body> {
    let body = params.iter().map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v))).collect::<Vec<_>>().join("&");
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some((id, secret)) = auth {
        request = request.header(header::AUTHORIZATION, basic(id, secret));
    }
    request.body(Body::from(body)).unwrap()
}

fn assert_no_store(headers: &HeaderMap) {
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
}

fn assert_oauth_error(reply: &Reply, status: StatusCode, error: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.json);
    assert_eq!(reply.error(), error, "{:?}", reply.json);
    assert!(reply.json["error_description"].is_string());
    assert_no_store(&reply.headers);
    assert!(reply.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Basic realm=\"warden\"");
    }
}

fn token_header(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

fn token_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn metadata_names_every_endpoint() {
    let f = Fixture::new();
    let reply = f.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_no_store(&reply.headers);
    let m = &reply.json;
    assert_eq!(m["issuer"], ISSUER);
    assert_eq!(m["token_endpoint"], format!("{ISSUER}/oauth/token"));
    assert_eq!(m["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(m["introspection_endpoint"], format!("{ISSUER}/oauth/introspect"));
    assert_eq!(m["revocation_endpoint"], format!("{ISSUER}/oauth/revoke"));
    assert_eq!(m["grant_types_supported"], serde_json::json!(["client_credentials"]));
    assert_eq!(m["response_types_supported"], serde_json::json!([]));
    let methods = serde_json::json!(["client_secret_basic", "client_secret_post"]);
    assert_eq!(m["token_endpoint_auth_methods_supported"], methods);
    assert_eq!(m["introspection_endpoint_auth_methods_supported"], methods);
    assert_eq!(m["revocation_endpoint_auth_methods_supported"], methods);
}

/// Issue 17 (observation 6): the unauthenticated RFC 8414 metadata listed every OAuth client's
/// scopes, which name device ids. It lists none (`scopes_supported` is OPTIONAL).
#[tokio::test]
async fn metadata_lists_no_client_scopes() {
    let f = Fixture::new();
    let m = f.get("/.well-known/oauth-authorization-server").await.json;
    assert!(m.get("scopes_supported").is_none(), "{m}");
    let text = m.to_string();
    for s in DEV1_SCOPES.iter().chain(["mqtt:pub:devices/dev-002/#"].iter()) {
        assert!(!text.contains(s), "metadata names a client's scope {s}: {text}");
    }
    assert!(!text.contains("dev-00"), "metadata names a client: {text}");
}

#[tokio::test]
async fn jwks_publishes_the_signing_key() {
    let f = Fixture::new();
    let reply = f.get("/.well-known/jwks.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let keys = reply.json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], f.service.current_kid());
    assert_eq!(keys[0]["kty"], "OKP");
    assert!(keys[0].get("d").is_none(), "no private part");
}

#[tokio::test]
async fn client_secret_basic_issues_a_verifiable_token() {
    let f = Fixture::new();
    let reply = f.post("/oauth/token", &[("grant_type", "client_credentials")], Some(DEV1)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json);
    assert_no_store(&reply.headers);
    assert_eq!(reply.headers[header::PRAGMA], "no-cache");
    assert_eq!(reply.json["token_type"], "Bearer");
    assert_eq!(reply.json["expires_in"], TTL);
    assert_eq!(reply.json["scope"], DEV1_SCOPES.join(" "));
    let token = reply.json["access_token"].as_str().unwrap();

    let header = token_header(token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], f.service.current_kid());
    let claims = token_claims(token);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "dev-001");
    assert_eq!(claims["client_id"], "dev-001");
    assert_eq!(claims["aud"], "warden");
    assert_eq!(claims["roles"], serde_json::json!(["device"]));
    assert_eq!(claims["iat"], START);
    assert_eq!(claims["exp"], START + TTL);
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(URL_SAFE_NO_PAD.decode(jti).unwrap().len(), 16);

    let verified = f.service.verify(token).unwrap();
    assert_eq!(verified.subject, "dev-001");
    assert_eq!(verified.client_id.as_deref(), Some("dev-001"));
    assert_eq!(verified.scopes, DEV1_SCOPES);
    assert_eq!(verified.roles, ["device"]);
    assert_eq!(verified.expires_at, START + TTL);
    assert_eq!(verified.jti.as_deref(), Some(jti));
    // The published key set verifies it too (what the broker does at CONNECT).
    let settings = f.service.jwt_settings();
    jwt::verify(token, &f.service.key_set(), &settings, START).unwrap();

    // Every token gets its own jti.
    let again = f.token(DEV1, None).await;
    assert_ne!(token_claims(&again)["jti"], claims["jti"]);
}

#[tokio::test]
async fn client_secret_post_issues_a_token() {
    let f = Fixture::new();
    let reply = f
        .post(
            "/oauth/token",
            &[("grant_type", "client_credentials"), ("client_id", "dev-002"), ("client_secret", DEV2_SECRET)],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json);
    assert_eq!(reply.json["scope"], "mqtt:pub:devices/dev-002/#");
    let verified = f.service.verify(reply.json["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(verified.subject, "dev-002");
    assert!(verified.roles.is_empty());
}

#[tokio::test]
async fn basic_credentials_are_form_urldecoded() {
    let f = Fixture::new();
    // DEV2_SECRET holds '+', ':', '%', ' ' and non-ASCII: the helper encodes them.
    let token = f.token(DEV2, None).await;
    assert_eq!(f.service.verify(&token).unwrap().subject, "dev-002");
    // Sent raw (not urlencoded), "pw+2:x% é" does not decode to the secret.
    let raw = format!("Basic {}", STANDARD.encode(format!("dev-002:{DEV2_SECRET}")));
    let mut request = post_request("/oauth/token", &[("grant_type", "client_credentials")], None);
    request.headers_mut().insert(header::AUTHORIZATION, raw.parse().unwrap());
    assert_oauth_error(&f.send(request).await, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn wrong_secret_and_unknown_client_get_the_same_401() {
    let f = Fixture::new();
    let grant = [("grant_type", "client_credentials")];
    let wrong = f.post("/oauth/token", &grant, Some(("dev-001", "wrong"))).await;
    let unknown = f.post("/oauth/token", &grant, Some(("nobody", "wrong"))).await;
    let empty = f.post("/oauth/token", &grant, Some(("dev-001", ""))).await;
    for reply in [&wrong, &unknown, &empty] {
        assert_oauth_error(reply, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(reply.body, wrong.body);
        assert_eq!(reply.headers, wrong.headers);
    }
    // client_secret_post: same answer.
    for id in ["dev-001", "nobody"] {
        let reply = f
            .post(
                "/oauth/token",
                &[("grant_type", "client_credentials"), ("client_id", id), ("client_secret", "wrong")],
                None,
            )
            .await;
        assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(reply.body, wrong.body);
    }
}

#[tokio::test]
async fn client_authentication_must_be_exactly_one_method() {
    let f = Fixture::new();
    // Both Basic and client_secret_post.
    let both = f
        .post(
            "/oauth/token",
            &[("grant_type", "client_credentials"), ("client_id", "dev-001"), ("client_secret", DEV1_SECRET)],
            Some(DEV1),
        )
        .await;
    assert_oauth_error(&both, StatusCode::BAD_REQUEST, "invalid_request");
    // Neither.
    let neither = f.post("/oauth/token", &[("grant_type", "client_credentials")], None).await;
    assert_oauth_error(&neither, StatusCode::UNAUTHORIZED, "invalid_client");
    // A client_id alone is no authentication (no public clients).
    let id_only = f.post("/oauth/token", &[("grant_type", "client_credentials"), ("client_id", "dev-001")], None).await;
    assert_oauth_error(&id_only, StatusCode::UNAUTHORIZED, "invalid_client");
    // A secret without an id.
    let secret_only =
        f.post("/oauth/token", &[("grant_type", "client_credentials"), ("client_secret", DEV1_SECRET)], None).await;
    assert_oauth_error(&secret_only, StatusCode::BAD_REQUEST, "invalid_request");
    // Basic plus a client_id naming another client.
    let mismatch =
        f.post("/oauth/token", &[("grant_type", "client_credentials"), ("client_id", "dev-002")], Some(DEV1)).await;
    assert_oauth_error(&mismatch, StatusCode::BAD_REQUEST, "invalid_request");
    // Basic plus the same client_id is fine.
    let same =
        f.post("/oauth/token", &[("grant_type", "client_credentials"), ("client_id", "dev-001")], Some(DEV1)).await;
    assert_eq!(same.status, StatusCode::OK);
    // Another scheme.
    let mut bearer = post_request("/oauth/token", &[("grant_type", "client_credentials")], None);
    bearer.headers_mut().insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
    assert_oauth_error(&f.send(bearer).await, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn scope_beyond_the_clients_is_invalid_scope() {
    let f = Fixture::new();
    for scope in [
        "mqtt:admin",
        "mqtt:pub:devices/dev-001/# mqtt:admin",
        "mqtt:pub:devices/dev-002/#",
        "mqtt:pub:devices/dev-001/temp", // narrower topic, but not an allowed scope string
        "bad\"scope",
        "a  b",
    ] {
        let reply = f.post("/oauth/token", &[("grant_type", "client_credentials"), ("scope", scope)], Some(DEV1)).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");
    }
    // Checked only after the client authenticated: a wrong secret stays invalid_client.
    let reply = f
        .post(
            "/oauth/token",
            &[("grant_type", "client_credentials"), ("scope", "mqtt:admin")],
            Some(("dev-001", "wrong")),
        )
        .await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn scope_narrows_the_grant() {
    let f = Fixture::new();
    let narrow = DEV1_SCOPES[1];
    let reply = f.post("/oauth/token", &[("grant_type", "client_credentials"), ("scope", narrow)], Some(DEV1)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["scope"], narrow);
    let token = reply.json["access_token"].as_str().unwrap();
    assert_eq!(f.service.verify(token).unwrap().scopes, [narrow]);
    // Repeats collapse; order as requested.
    let both = format!("{} {} {}", DEV1_SCOPES[1], DEV1_SCOPES[0], DEV1_SCOPES[1]);
    let token = f.token(DEV1, Some(&both)).await;
    assert_eq!(f.service.verify(&token).unwrap().scopes, [DEV1_SCOPES[1], DEV1_SCOPES[0]]);
    // An empty scope parameter counts as omitted (RFC 6749 §3.2): all scopes.
    let token = f.token(DEV1, Some("")).await;
    assert_eq!(f.service.verify(&token).unwrap().scopes, DEV1_SCOPES);
}

#[tokio::test]
async fn only_client_credentials_is_supported() {
    let f = Fixture::new();
    for grant in ["password", "authorization_code", "refresh_token"] {
        let reply = f.post("/oauth/token", &[("grant_type", grant)], Some(DEV1)).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let missing = f.post("/oauth/token", &[], Some(DEV1)).await;
    assert_oauth_error(&missing, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn malformed_requests_are_invalid_request() {
    let f = Fixture::new();
    // A repeated parameter.
    let repeated = f
        .post("/oauth/token", &[("grant_type", "client_credentials"), ("grant_type", "client_credentials")], Some(DEV1))
        .await;
    assert_oauth_error(&repeated, StatusCode::BAD_REQUEST, "invalid_request");
    // Not a form.
    let mut json = post_request("/oauth/token", &[], Some(DEV1));
    *json.body_mut() = Body::from(r#"{"grant_type":"client_credentials"}"#);
    json.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    assert_oauth_error(&f.send(json).await, StatusCode::BAD_REQUEST, "invalid_request");
    // Over the body limit, on every POST endpoint.
    let big = "x".repeat(crate::MAX_BODY_BYTES + 1);
    for path in ["/oauth/token", "/oauth/introspect", "/oauth/revoke"] {
        let reply = f.post(path, &[("grant_type", "client_credentials"), ("pad", &big)], Some(DEV1)).await;
        assert_oauth_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    }
    // GET is not a token request.
    assert_eq!(f.get("/oauth/token").await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn introspection() {
    let f = Fixture::new();
    let token = f.token(DEV1, None).await;
    let jti = token_claims(&token)["jti"].clone();

    let active = f.introspect(&token, DEV1).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["scope"], DEV1_SCOPES.join(" "));
    assert_eq!(active["client_id"], "dev-001");
    assert_eq!(active["sub"], "dev-001");
    assert_eq!(active["iss"], ISSUER);
    assert_eq!(active["aud"], "warden");
    assert_eq!(active["iat"], START);
    assert_eq!(active["exp"], START + TTL);
    assert_eq!(active["token_type"], "Bearer");
    assert_eq!(active["jti"], jti);

    // Another client learns nothing about it.
    assert_eq!(f.introspect(&token, DEV2).await, serde_json::json!({"active": false}));
    // Garbage and tampered tokens: inactive, never an error.
    for bad in ["garbage", "a.b.c", &format!("{}AAAA", &token[..token.len() - 4])] {
        assert_eq!(f.introspect(bad, DEV1).await, serde_json::json!({"active": false}));
    }
    // token_type_hint is accepted (and ignored).
    let hinted =
        f.post("/oauth/introspect", &[("token", &token), ("token_type_hint", "refresh_token")], Some(DEV1)).await;
    assert_eq!(hinted.json["active"], true);
    // client_secret_post works here too.
    let post = f
        .post("/oauth/introspect", &[("token", &token), ("client_id", "dev-001"), ("client_secret", DEV1_SECRET)], None)
        .await;
    assert_eq!(post.json["active"], true);
    // Client authentication is required.
    let anonymous = f.post("/oauth/introspect", &[("token", &token)], None).await;
    assert_oauth_error(&anonymous, StatusCode::UNAUTHORIZED, "invalid_client");
    let wrong = f.post("/oauth/introspect", &[("token", &token)], Some(("dev-001", "x"))).await;
    assert_oauth_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_client");
    // The token parameter is required.
    let missing = f.post("/oauth/introspect", &[], Some(DEV1)).await;
    assert_oauth_error(&missing, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn expired_tokens_are_inactive() {
    let f = Fixture::new();
    let token = f.token(DEV1, None).await;
    f.advance(TTL - 1);
    assert_eq!(f.introspect(&token, DEV1).await["active"], true);
    assert!(f.service.verify(&token).is_ok());
    f.advance(1); // now == exp
    assert_eq!(f.introspect(&token, DEV1).await, serde_json::json!({"active": false}));
    assert!(matches!(f.service.verify(&token), Err(TokenRejected::Invalid(JwtError::Expired))));
}

#[tokio::test]
async fn revocation() {
    let f = Fixture::new();
    let token = f.token(DEV1, None).await;
    let other = f.token(DEV1, None).await;
    let jti = token_claims(&token)["jti"].as_str().unwrap().to_owned();

    // Another client cannot revoke it: 200, nothing happens.
    let reply = f.post("/oauth/revoke", &[("token", &token)], Some(DEV2)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(f.revoked.lock().is_empty());
    assert_eq!(f.introspect(&token, DEV1).await["active"], true);

    // Its own client can.
    let reply = f.post("/oauth/revoke", &[("token", &token)], Some(DEV1)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
    assert_no_store(&reply.headers);
    assert_eq!(f.revoked.lock().as_slice(), std::slice::from_ref(&jti));
    assert!(f.service.is_revoked(&jti));
    assert!(matches!(f.service.verify(&token), Err(TokenRejected::Revoked)));
    assert_eq!(f.introspect(&token, DEV1).await, serde_json::json!({"active": false}));
    // The client's other tokens are untouched.
    assert_eq!(f.introspect(&other, DEV1).await["active"], true);

    // Again, or with garbage: 200, no second callback.
    for t in [token.as_str(), "garbage"] {
        let reply = f.post("/oauth/revoke", &[("token", t)], Some(DEV1)).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(f.revoked.lock().len(), 1);

    // Client authentication and the token parameter are required.
    let anonymous = f.post("/oauth/revoke", &[("token", &other)], None).await;
    assert_oauth_error(&anonymous, StatusCode::UNAUTHORIZED, "invalid_client");
    let missing = f.post("/oauth/revoke", &[], Some(DEV1)).await;
    assert_oauth_error(&missing, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(f.introspect(&other, DEV1).await["active"], true);
}

#[tokio::test]
async fn revoked_ids_are_pruned_after_expiry() {
    let f = Fixture::new();
    let first = f.token(DEV1, None).await;
    let first_jti = token_claims(&first)["jti"].as_str().unwrap().to_owned();
    f.post("/oauth/revoke", &[("token", &first)], Some(DEV1)).await;
    assert!(f.service.is_revoked(&first_jti));
    // Past the first token's exp + grace, the next revocation prunes it.
    f.advance(TTL + crate::service::REVOCATION_GRACE_SECS + 1);
    let second = f.token(DEV1, None).await;
    f.post("/oauth/revoke", &[("token", &second)], Some(DEV1)).await;
    assert!(!f.service.is_revoked(&first_jti));
    let second_jti = token_claims(&second)["jti"].as_str().unwrap().to_owned();
    assert!(f.service.is_revoked(&second_jti));
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid() {
    let f = Fixture::new();
    let old_kid = f.service.current_kid();
    let old_token = f.token(DEV1, None).await;

    let new_key = SigningKey::generate();
    let new_kid = new_key.kid().to_owned();
    f.service.rotate(new_key);
    assert_eq!(f.service.current_kid(), new_kid);
    let new_token = f.token(DEV1, None).await;
    assert_eq!(token_header(&new_token)["kid"], new_kid);
    assert_eq!(token_header(&old_token)["kid"], old_kid);

    assert!(f.service.verify(&old_token).is_ok());
    assert!(f.service.verify(&new_token).is_ok());
    assert_eq!(f.introspect(&old_token, DEV1).await["active"], true);

    let jwks = f.get("/.well-known/jwks.json").await.json;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);
    let mut set_kids = f.service.key_set().kids();
    set_kids.sort();
    let mut expected = vec![new_kid.clone(), old_kid.clone()];
    expected.sort();
    assert_eq!(set_kids, expected);
}

#[tokio::test]
async fn tokens_from_a_foreign_key_are_refused() {
    let f = Fixture::new();
    let claims = AccessClaims {
        issuer: ISSUER.into(),
        subject: "dev-001".into(),
        audience: Some("warden".into()),
        client_id: "dev-001".into(),
        scope: "mqtt:admin".into(),
        roles: vec![],
        issued_at: START,
        expires_at: START + TTL,
        jti: "forged".into(),
    };
    let forged = jwt::mint(&claims, &SigningKey::generate());
    assert!(matches!(f.service.verify(&forged), Err(TokenRejected::Invalid(JwtError::UnknownKid))));
    assert_eq!(f.introspect(&forged, DEV1).await, serde_json::json!({"active": false}));
    // Revoking it does nothing.
    f.post("/oauth/revoke", &[("token", &forged)], Some(DEV1)).await;
    assert!(!f.service.is_revoked("forged"));
    assert!(f.revoked.lock().is_empty());
}

#[tokio::test]
async fn issuer_and_audience_are_checked() {
    let f = Fixture::new();
    let other = Fixture::with_audience(None);
    // Same key material is not shared, so take a token from `f` and check it against a
    // service whose audience differs but key set matches: rotate `other` onto a copy of a key.
    let key = SigningKey::generate();
    let copy = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
    f.service.rotate(key);
    other.service.rotate(copy);
    let token = f.token(DEV1, None).await;
    // `other` expects no audience, same issuer: accepts.
    assert!(other.service.verify(&token).is_ok());
    // A token for another audience is refused by `f`.
    let foreign_aud = other.token(DEV1, None).await;
    assert!(matches!(f.service.verify(&foreign_aud), Err(TokenRejected::Invalid(JwtError::WrongAudience))));
    // A token from another issuer, signed with our key, is refused.
    let claims = AccessClaims {
        issuer: "https://elsewhere".into(),
        subject: "dev-001".into(),
        audience: Some("warden".into()),
        client_id: "dev-001".into(),
        scope: String::new(),
        roles: vec![],
        issued_at: START,
        expires_at: START + TTL,
        jti: "x".into(),
    };
    let key = SigningKey::generate();
    let copy = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
    f.service.rotate(key);
    let token = jwt::mint(&claims, &copy);
    assert!(matches!(f.service.verify(&token), Err(TokenRejected::Invalid(JwtError::WrongIssuer))));
}

/// The service's own tokens are `at+jwt` and live at most 24 h: one signed with its key but
/// typed `JWT`, or living longer, is refused (RFC 9068 §4; issue 17 item 7).
#[tokio::test]
async fn own_tokens_must_be_at_jwt_and_short_lived() {
    let f = Fixture::new();
    let token = f.token(DEV1, None).await;
    assert_eq!(token_header(&token)["typ"], "at+jwt");
    assert!(f.service.verify(&token).is_ok());
    let key = SigningKey::generate();
    let copy = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
    f.service.rotate(key);
    let claims = |iat: u64, exp: u64| AccessClaims {
        issuer: ISSUER.into(),
        subject: "dev-001".into(),
        audience: Some("warden".into()),
        client_id: "dev-001".into(),
        scope: DEV1_SCOPES.join(" "),
        roles: vec!["device".into()],
        issued_at: iat,
        expires_at: exp,
        jti: format!("j-{iat}-{exp}"),
    };
    // Control: minted by hand with the same key, 24 h exactly.
    assert!(f.service.verify(&jwt::mint(&claims(START, START + 86_400), &copy)).is_ok());
    let long = jwt::mint(&claims(START, START + 86_401), &copy);
    assert!(matches!(f.service.verify(&long), Err(TokenRejected::Invalid(JwtError::LifetimeTooLong))));
    let ten_years = jwt::mint(&claims(START, START + 10 * 365 * 86_400), &copy);
    assert!(matches!(f.service.verify(&ten_years), Err(TokenRejected::Invalid(JwtError::LifetimeTooLong))));
    // Same claims, header typ "JWT" (re-signed by hand with the service's key).
    let good = jwt::mint(&claims(START, START + 60), &copy);
    let payload = good.split('.').nth(1).unwrap();
    let header =
        URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": copy.kid()}).to_string());
    let input = format!("{header}.{payload}");
    let pem = copy.to_pkcs8_pem();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let enc = jsonwebtoken::EncodingKey::from_ed_der(&STANDARD.decode(der).unwrap());
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &enc, jsonwebtoken::Algorithm::EdDSA).unwrap();
    let typed_jwt = format!("{input}.{sig}");
    assert!(matches!(f.service.verify(&typed_jwt), Err(TokenRejected::Invalid(JwtError::WrongType))));
}

#[tokio::test]
async fn removed_clients_lose_their_tokens() {
    let f = Fixture::new();
    let token = f.token(DEV2, None).await;
    f.service.set_clients(clients().into_iter().filter(|c| c.id != "dev-002").collect());
    assert!(matches!(f.service.verify(&token), Err(TokenRejected::UnknownClient)));
    let reply = f.post("/oauth/token", &[("grant_type", "client_credentials")], Some(DEV2)).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
}

/// Trust lifecycle item 2 (SPEC §10): a client whose scopes are narrowed no longer honours
/// tokens issued before with the broader scopes; a token within the new scopes still verifies.
#[tokio::test]
async fn narrowed_clients_lose_their_broader_tokens() {
    let f = Fixture::new();
    let broad = f.token(DEV1, None).await;
    let narrow = f.token(DEV1, Some(DEV1_SCOPES[0])).await;
    let narrowed: Vec<OAuthClient> = clients()
        .into_iter()
        .map(|mut c| {
            if c.id == "dev-001" {
                c.scopes.truncate(1);
            }
            c
        })
        .collect();
    f.service.set_clients(narrowed);
    assert!(matches!(f.service.verify(&broad), Err(TokenRejected::Narrowed)));
    assert!(f.service.verify(&narrow).is_ok(), "within the client's scopes now");
}

#[test]
fn debug_output_hides_secrets() {
    let client = &clients()[0];
    let shown = format!("{client:?}");
    assert!(!shown.contains("argon2"), "{shown}");
    assert!(shown.contains("dev-001"));
}

/// A failure guard that throttles a (name, address) pair after two failures, and records what
/// it was told.
#[derive(Default)]
struct TwoStrikes {
    failures: Mutex<Vec<(std::net::IpAddr, Option<String>)>>,
    successes: Mutex<Vec<(std::net::IpAddr, String)>>,
}

impl crate::FailureGuard for TwoStrikes {
    fn check(&self, ip: std::net::IpAddr, name: Option<&str>) -> Result<(), crate::Throttled> {
        let n = self.failures.lock().iter().filter(|(i, n)| *i == ip && n.as_deref() == name).count();
        if n >= 2 {
            Err(crate::Throttled::BackingOff { retry_after: Duration::from_millis(59_500) })
        } else {
            Ok(())
        }
    }
    fn failed(&self, ip: std::net::IpAddr, name: Option<&str>) {
        self.failures.lock().push((ip, name.map(str::to_owned)));
    }
    fn succeeded(&self, ip: std::net::IpAddr, name: &str) {
        self.successes.lock().push((ip, name.to_owned()));
    }
}

/// Issue 17 (observation 4, "hashing as a service"): client secrets go through the broker's
/// failure guard before any hashing. Wrong secrets are counted per (client id, address); once
/// the guard throttles the pair, even the right secret gets 429 with `Retry-After` and no hash
/// is computed; another address, and another client id, are unaffected.
#[tokio::test]
async fn client_secrets_are_checked_by_the_failure_guard_before_hashing() {
    let guard = Arc::new(TwoStrikes::default());
    let budget = crate::HashBudget::new(2, 1, Duration::from_secs(5));
    let service = Arc::new(
        OAuthService::new(
            OAuthSettings { issuer: ISSUER.into(), token_ttl: Duration::from_secs(TTL), audience: None },
            clients(),
            vec![SigningKey::generate()],
            Arc::new(|| START),
        )
        .with_secret_checks(crate::SecretChecks { guard: Some(guard.clone()), budget: budget.clone() }),
    );
    let app = router(service);
    let from = |last: u8, secret: &str| {
        let mut r = post_request("/oauth/token", &[("grant_type", "client_credentials")], Some(("dev-001", secret)));
        r.extensions_mut().insert(crate::PeerAddr(std::net::SocketAddr::from(([192, 0, 2, last], 40000))));
        let app = app.clone();
        async move { app.oneshot(r).await.unwrap() }
    };
    let runs = || budget.runs(crate::HashClass::Http);
    assert_eq!(from(7, "wrong").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(from(7, "wrong").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(runs(), 2);
    let ip7: std::net::IpAddr = [192, 0, 2, 7].into();
    assert_eq!(*guard.failures.lock(), vec![(ip7, Some("dev-001".into())), (ip7, Some("dev-001".into()))]);
    // Throttled now: the right secret is refused without a hash, with Retry-After.
    let r = from(7, DEV1_SECRET).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()[header::RETRY_AFTER], "60", "rounded up");
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "temporarily_unavailable");
    assert_eq!(runs(), 2, "no hash for a throttled request");
    // Another address is unaffected, and its success is reported.
    assert_eq!(from(8, DEV1_SECRET).await.status(), StatusCode::OK);
    assert_eq!(runs(), 3);
    assert_eq!(*guard.successes.lock(), vec![([192, 0, 2, 8].into(), "dev-001".to_owned())]);
    // Introspection and revocation authenticate through the same guard.
    let mut r = post_request("/oauth/introspect", &[("token", "x")], Some(DEV1));
    r.extensions_mut().insert(crate::PeerAddr(std::net::SocketAddr::from(([192, 0, 2, 7], 1))));
    assert_eq!(app.clone().oneshot(r).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(runs(), 3);
}

/// The token service's hashing takes the HTTP share of the budget: with that share taken, a
/// request is answered 503 (with `Retry-After`) and is no failed authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_http_share_of_hashing_taken_a_request_is_503_busy() {
    let guard = Arc::new(TwoStrikes::default());
    let budget = crate::HashBudget::new(2, 1, Duration::ZERO);
    let service = Arc::new(
        OAuthService::new(
            OAuthSettings { issuer: ISSUER.into(), token_ttl: Duration::from_secs(TTL), audience: None },
            clients(),
            vec![SigningKey::generate()],
            Arc::new(|| START),
        )
        .with_secret_checks(crate::SecretChecks { guard: Some(guard.clone()), budget: budget.clone() }),
    );
    let held = budget.acquire(crate::HashClass::Http).await.unwrap();
    let r = router(service.clone())
        .oneshot(post_request("/oauth/token", &[("grant_type", "client_credentials")], Some(DEV1)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    assert!(guard.failures.lock().is_empty(), "busy is no failed authentication");
    // MQTT still finds a slot meanwhile.
    assert!(budget.acquire(crate::HashClass::Mqtt).await.is_ok());
    drop(held);
    let r = router(service)
        .oneshot(post_request("/oauth/token", &[("grant_type", "client_credentials")], Some(DEV1)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A cluster's nodes share their token services' public keys (SPEC §11): a token another
/// service minted verifies once its keys are given as peers, and only then; keys that are no
/// signing JWK are left out; peers survive a rotation and are published in the JWKS.
#[tokio::test]
async fn peer_keys_verify_the_other_nodes_tokens() {
    let here = Fixture::new();
    let there = Fixture::new();
    let token = there.token(DEV1, None).await;
    assert!(here.service.verify(&token).is_err(), "a stranger's key is not trusted");
    let junk = vec![
        serde_json::json!({ "kty": "OKP", "crv": "Ed25519" }),
        serde_json::json!({ "kty": "oct", "kid": "hs", "k": "c2VjcmV0" }),
        serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "kid": "bad", "x": "!!" }),
    ];
    let mut peers = there.service.own_jwks();
    peers.extend(junk);
    assert_eq!(here.service.set_peer_keys(peers), 1, "only the signing JWK with a kid is kept");
    assert!(here.service.verify(&token).is_ok(), "the peer's token verifies");
    here.service.rotate(SigningKey::generate());
    assert!(here.service.verify(&token).is_ok(), "a rotation keeps the peers' keys");
    let kids: Vec<String> =
        here.service.jwks()["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
    assert!(kids.contains(&there.service.current_kid()), "the JWKS lists the peer's key");
    assert_eq!(here.service.own_jwks().len(), 2, "own keys: the first and the rotated-in one");
    here.service.set_peer_keys(Vec::new());
    assert!(here.service.verify(&token).is_err(), "peers replaced: no longer trusted");
}

/// Another node's revocations: the new ones are recorded and reported to the callbacks (so
/// their connections end here), known and long-expired ones are not.
#[tokio::test]
async fn revocations_from_a_peer_call_back_for_new_ones_only() {
    let f = Fixture::new();
    let t = f.token(DEV1, None).await;
    let jti = token_claims(&t)["jti"].as_str().unwrap().to_owned();
    let exp = START + TTL;
    let new = f.service.revocations_from_peer([(jti.clone(), exp), ("old".into(), 1)]);
    assert_eq!(new, vec![jti.clone()], "an entry past its grace is skipped");
    assert!(f.service.is_revoked(&jti));
    assert!(f.service.verify(&t).is_err(), "the revoked token is refused");
    assert_eq!(*f.revoked.lock(), vec![jti.clone()], "the callbacks heard of it");
    assert!(f.service.revocations_from_peer([(jti, exp)]).is_empty(), "known: nothing new");
    assert_eq!(f.revoked.lock().len(), 1);
}
