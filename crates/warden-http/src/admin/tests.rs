//! The admin API through the router with an in-memory backend (no sockets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use warden_policy::jwt::SigningKey;

use super::*;
use crate::{OAuthClient, OAuthSettings};

const ADMIN_TOKEN: &str = "correct-horse-battery-staple";

#[derive(Default)]
struct Memory {
    policy: Mutex<PolicyStore>,
    bans: Mutex<Vec<Ban>>,
    kicked: Mutex<Vec<String>>,
    audit: Mutex<Vec<AuditRecord>>,
}

impl AdminBackend for Memory {
    fn policy(&self) -> PolicyStore {
        self.policy.lock().clone()
    }
    fn update_policy(&self, edit: PolicyEdit<'_>) -> Result<(), AdminError> {
        let mut p = self.policy.lock();
        let mut next = p.clone();
        edit(&mut next)?;
        next.validate().map_err(|e| AdminError::bad_request(e.0))?;
        *p = next;
        Ok(())
    }
    fn clients(&self) -> Vec<ClientInfo> {
        vec![ClientInfo {
            client_id: "c1".into(),
            principal: "user:ann".into(),
            peer: "127.0.0.1:5000".into(),
            protocol: "5.0".into(),
            connected_at: 1,
            ..ClientInfo::default()
        }]
    }
    fn kick(&self, client_id: &str) -> bool {
        self.kicked.lock().push(client_id.into());
        client_id == "c1"
    }
    fn bans(&self) -> Vec<Ban> {
        self.bans.lock().clone()
    }
    fn add_ban(&self, ban: Ban) -> Result<(), AdminError> {
        self.bans.lock().push(ban);
        Ok(())
    }
    fn remove_ban(&self, kind: BanKind, value: &str) -> Result<bool, AdminError> {
        let mut b = self.bans.lock();
        let n = b.len();
        b.retain(|x| !(x.kind == kind && x.value == value));
        Ok(b.len() != n)
    }
    fn oauth_clients(&self) -> Result<Vec<OAuthClientInfo>, AdminError> {
        Ok(vec![])
    }
    fn put_oauth_client(&self, _: OAuthClientInfo, _: String) -> Result<(), AdminError> {
        Ok(())
    }
    fn remove_oauth_client(&self, _: &str) -> Result<bool, AdminError> {
        Ok(false)
    }
    fn audit(&self, record: &AuditRecord) {
        self.audit.lock().push(record.clone());
    }
    fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<AuditRecord>, AdminError> {
        let all: Vec<_> = self.audit.lock().iter().filter(|r| r.unix >= since).cloned().collect();
        Ok(all[all.len().saturating_sub(limit)..].to_vec())
    }
}

struct Fx {
    app: Router,
    backend: Arc<Memory>,
    oauth: Arc<OAuthService>,
    clock: Arc<AtomicU64>,
}

fn client(id: &str, scopes: &[&str]) -> OAuthClient {
    OAuthClient {
        id: id.into(),
        secret_hash: password::hash_password(b"x"),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        roles: vec![],
    }
}

fn fixture() -> Fx {
    let clock = Arc::new(AtomicU64::new(1_700_000_000));
    let c = clock.clone();
    let oauth = Arc::new(OAuthService::new(
        OAuthSettings { issuer: "http://x".into(), token_ttl: Duration::from_secs(60), audience: None },
        vec![
            client("ops", &["admin"]),
            client("dev", &["mqtt:pub:a"]),
            OAuthClient { roles: vec!["admin".into()], ..client("role-admin", &["mqtt:pub:a"]) },
        ],
        vec![SigningKey::generate()],
        Arc::new(move || c.load(Ordering::SeqCst)),
    ));
    let backend = Arc::new(Memory::default());
    let auth = AdminAuth {
        token_hash: Some(password::hash_password(ADMIN_TOKEN.as_bytes())),
        oauth: Some(oauth.clone()),
        checks: Default::default(),
        ..Default::default()
    };
    Fx { app: admin_router(backend.clone(), auth), backend, oauth, clock }
}

impl Fx {
    fn token_of(&self, id: &str) -> String {
        let c = self.oauth.clients().into_iter().find(|c| c.id == id).expect("client");
        self.oauth.issue(&c, None).expect("issued").access_token
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
        let mut r = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = r.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_default()).expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let b = body.map(|b| b.to_string());
        self.call(method, path, Some(ADMIN_TOKEN), b.as_deref()).await
    }
}

#[tokio::test]
async fn refusals_401_and_403() {
    let fx = fixture();
    let (s, v) = fx.call(Method::GET, "/admin/users", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("bearer"));
    assert_eq!(fx.call(Method::GET, "/admin/users", Some("wrong"), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(fx.call(Method::GET, "/admin/users", Some("a.b.c"), None).await.0, StatusCode::UNAUTHORIZED);
    let dev = fx.token_of("dev");
    assert_eq!(fx.call(Method::GET, "/admin/users", Some(&dev), None).await.0, StatusCode::FORBIDDEN);
    let ops = fx.token_of("ops");
    assert_eq!(fx.call(Method::GET, "/admin/users", Some(&ops), None).await.0, StatusCode::OK);
    // A role named `admin` (a policy-store role name) is not the admin right.
    let role_admin = fx.token_of("role-admin");
    let (s, v) = fx.call(Method::GET, "/admin/users", Some(&role_admin), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"].as_str().unwrap().contains("admin scope"));
    // Neither is the `admin` scope in a token the service did not sign (an outside issuer's).
    let outside = {
        let other = SigningKey::generate();
        let now = fx.clock.load(Ordering::SeqCst);
        warden_policy::jwt::mint(
            &warden_policy::jwt::AccessClaims {
                issuer: "http://x".into(),
                subject: "ops".into(),
                audience: None,
                client_id: "ops".into(),
                scope: "admin".into(),
                roles: vec!["admin".into()],
                issued_at: now,
                expires_at: now + 60,
                jti: "outside".into(),
            },
            &other,
        )
    };
    assert_eq!(fx.call(Method::GET, "/admin/users", Some(&outside), None).await.0, StatusCode::UNAUTHORIZED);
    // The declared client loses the scope: its tokens stop being admin tokens at once.
    fx.oauth.set_clients(vec![client("ops", &["mqtt:pub:a"])]);
    assert_eq!(fx.call(Method::GET, "/admin/users", Some(&ops), None).await.0, StatusCode::UNAUTHORIZED, "narrowed");
    fx.oauth.set_clients(vec![client("ops", &["admin"])]);
    assert_eq!(fx.call(Method::GET, "/admin/users", Some(&ops), None).await.0, StatusCode::OK);
    fx.clock.fetch_add(3600, Ordering::SeqCst);
    assert_eq!(fx.call(Method::GET, "/admin/users", Some(&ops), None).await.0, StatusCode::UNAUTHORIZED, "expired");
    assert_eq!(fx.admin(Method::GET, "/admin/users", None).await.0, StatusCode::OK);
    let (s, doc) = fx.call(Method::GET, "/admin/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
}

#[tokio::test]
async fn crud_users_groups_roles_rules() {
    let fx = fixture();
    let (s, v) = fx.call(Method::POST, "/admin/users", Some(ADMIN_TOKEN), Some("{not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().starts_with("invalid JSON body"), "{v}");
    let (s, v) = fx.admin(Method::POST, "/admin/users", Some(json!({"name": "ann", "roles": ["nope"]}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("unknown role"), "{v}");
    let rule = json!({"id": "r1", "action": "publish", "topic": "a/%u/#", "effect": "allow"});
    assert_eq!(fx.admin(Method::POST, "/admin/roles", Some(json!({"name": "dev"}))).await.0, StatusCode::CREATED);
    assert_eq!(fx.admin(Method::POST, "/admin/roles/dev/rules", Some(rule.clone())).await.0, StatusCode::CREATED);
    assert_eq!(fx.admin(Method::POST, "/admin/roles/dev/rules", Some(rule)).await.0, StatusCode::CONFLICT);
    let bad = json!({"id": "r2", "action": "publish", "topic": "a/#/b", "effect": "allow"});
    assert_eq!(fx.admin(Method::POST, "/admin/roles/dev/rules", Some(bad)).await.0, StatusCode::BAD_REQUEST);
    // A source condition: its networks are validated (400 naming the bad one), then kept.
    let bad = json!({"id": "r3", "action": "publish", "topic": "a", "effect": "allow", "source": ["10.0.0.1/8"]});
    let (s, v) = fx.admin(Method::POST, "/admin/roles/dev/rules", Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("10.0.0.1/8"), "{v}");
    let lan =
        json!({"id": "r3", "action": "publish", "topic": "a", "effect": "allow", "source": ["10.0.0.0/8", "::1"]});
    assert_eq!(fx.admin(Method::POST, "/admin/roles/dev/rules", Some(lan)).await.0, StatusCode::CREATED);
    assert_eq!(fx.backend.policy().roles["dev"].rules[1].source.len(), 2);
    let (_, rules) = fx.admin(Method::GET, "/admin/roles/dev/rules", None).await;
    assert_eq!(rules[1]["source"], json!(["10.0.0.0/8", "::1/128"]));
    assert!(rules[0].get("source").is_none(), "no condition, no key");
    assert_eq!(fx.admin(Method::DELETE, "/admin/roles/dev/rules/r3", None).await.0, StatusCode::OK);
    assert_eq!(
        fx.admin(Method::POST, "/admin/groups", Some(json!({"name": "g", "roles": ["dev"]}))).await.0,
        StatusCode::CREATED
    );
    let (s, _) =
        fx.admin(Method::POST, "/admin/users", Some(json!({"name": "ann", "password": "pw", "groups": ["g"]}))).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(fx.admin(Method::POST, "/admin/users", Some(json!({"name": "ann"}))).await.0, StatusCode::CONFLICT);
    let (s, v) = fx.admin(Method::GET, "/admin/users/ann", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"name": "ann", "groups": ["g"], "roles": [], "disabled": false, "has_password": true}));
    let stored = fx.backend.policy().users["ann"].password_hash.clone().unwrap();
    assert!(password::verify_hash(&stored, b"pw"));
    assert_eq!(fx.admin(Method::PUT, "/admin/users/ann", Some(json!({"disabled": true}))).await.0, StatusCode::OK);
    assert!(fx.backend.policy().users["ann"].disabled);
    assert_eq!(fx.admin(Method::PUT, "/admin/users/bob", Some(json!({}))).await.0, StatusCode::NOT_FOUND);
    let (_, rules) = fx.admin(Method::GET, "/admin/roles/dev/rules", None).await;
    assert_eq!(rules[0]["max_qos"], 2);
    assert_eq!(fx.admin(Method::DELETE, "/admin/roles/dev/rules/r1", None).await.0, StatusCode::OK);
    assert_eq!(fx.admin(Method::DELETE, "/admin/roles/dev/rules/r1", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(fx.admin(Method::DELETE, "/admin/roles/dev", None).await.0, StatusCode::OK);
    assert!(fx.backend.policy().groups["g"].roles.is_empty(), "references removed");
    assert_eq!(fx.admin(Method::DELETE, "/admin/users/ann", None).await.0, StatusCode::OK);
    assert_eq!(fx.admin(Method::GET, "/admin/users", None).await.1, json!([]));
}

#[tokio::test]
async fn clients_kick_and_bans() {
    let fx = fixture();
    let (_, v) = fx.admin(Method::GET, "/admin/clients", None).await;
    assert_eq!(v[0]["client_id"], "c1");
    assert_eq!(fx.admin(Method::POST, "/admin/clients/c1/kick", None).await.0, StatusCode::OK);
    assert_eq!(fx.admin(Method::POST, "/admin/clients/zz/kick", None).await.0, StatusCode::NOT_FOUND);
    let ban = json!({"kind": "cidr", "value": "10.0.0.0/8", "expires_at": 5});
    assert_eq!(fx.admin(Method::POST, "/admin/bans", Some(ban.clone())).await.0, StatusCode::CREATED);
    assert_eq!(fx.admin(Method::GET, "/admin/bans", None).await.1, json!([ban]));
    assert_eq!(
        fx.admin(Method::POST, "/admin/bans", Some(json!({"kind": "nope", "value": "x"}))).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(fx.admin(Method::DELETE, "/admin/bans?kind=cidr", None).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(fx.admin(Method::DELETE, "/admin/bans?kind=cidr&value=10.0.0.0%2F8", None).await.0, StatusCode::OK);
    assert_eq!(
        fx.admin(Method::DELETE, "/admin/bans?kind=cidr&value=10.0.0.0%2F8", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn openapi_document_names_every_route() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
    for p in [
        "/admin/users",
        "/admin/users/{name}",
        "/admin/groups",
        "/admin/roles/{name}/rules/{id}",
        "/admin/clients/{id}/kick",
        "/admin/bans",
        "/admin/oauth/clients",
        "/admin/certificates",
        "/admin/stats",
        "/admin/stats/history",
        "/admin/explain",
        "/admin/devices",
        "/admin/devices/{id}",
        "/admin/devices/{id}/certificates",
        "/admin/devices/{id}/certificates/{fingerprint}",
        "/admin/claims",
        "/admin/claims/{name}",
        "/admin/claims/{name}/certificates",
        "/admin/claims/{name}/certificates/{fingerprint}",
        "/admin/claims/{name}/tokens",
        "/admin/claims/{name}/tokens/{id}",
        "/admin/watch/rules",
        "/admin/watch/rules/{id}",
        "/admin/watch/quarantine-topics",
        "/admin/watch/alerts",
        "/admin/watch/restrictions",
        "/admin/watch/restrictions/{kind}/{name}",
    ] {
        assert!(doc["paths"][p].is_object(), "{p}");
    }
}

/// A failure guard that throttles an address after two failures (any name).
#[derive(Default)]
struct TwoStrikes(parking_lot::Mutex<Vec<(std::net::IpAddr, Option<String>)>>);

impl crate::FailureGuard for TwoStrikes {
    fn check(&self, ip: std::net::IpAddr, _: Option<&str>) -> Result<(), crate::Throttled> {
        if self.0.lock().iter().filter(|(i, _)| *i == ip).count() >= 2 {
            Err(crate::Throttled::Banned { retry_after: Duration::from_secs(300) })
        } else {
            Ok(())
        }
    }
    fn failed(&self, ip: std::net::IpAddr, name: Option<&str>) {
        self.0.lock().push((ip, name.map(str::to_owned)));
    }
    fn succeeded(&self, _: std::net::IpAddr, _: &str) {}
}

/// Issue 17 (observation 4): a wrong admin token, or a bad signed token, counts as a failed
/// authentication from its address in the broker's guard; a throttled address gets 429 with
/// `Retry-After` before any hashing, even with the right token; other addresses are served.
/// The OpenAPI document needs no authentication and is not throttled.
#[tokio::test]
async fn admin_authentication_goes_through_the_failure_guard_before_hashing() {
    let fx = fixture();
    let guard = Arc::new(TwoStrikes::default());
    let budget = crate::HashBudget::new(2, 1, Duration::from_secs(5));
    let auth = AdminAuth {
        token_hash: Some(password::hash_password(ADMIN_TOKEN.as_bytes())),
        oauth: Some(fx.oauth.clone()),
        checks: crate::SecretChecks { guard: Some(guard.clone()), budget: budget.clone() },
        ..Default::default()
    };
    let app = admin_router(fx.backend.clone(), auth);
    let call = |last: u8, token: String, path: &'static str| {
        let mut r = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        r.extensions_mut().insert(crate::PeerAddr(std::net::SocketAddr::from(([192, 0, 2, last], 1))));
        let app = app.clone();
        async move { app.oneshot(r).await.unwrap() }
    };
    assert_eq!(call(7, "wrong".into(), "/admin/users").await.status(), StatusCode::UNAUTHORIZED);
    let mut forged = fx.token_of("ops");
    forged.push('x');
    assert_eq!(call(7, forged, "/admin/users").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(budget.runs(crate::HashClass::Http), 1, "one hash: the signed token needs none");
    let ip7: std::net::IpAddr = [192, 0, 2, 7].into();
    assert_eq!(*guard.0.lock(), vec![(ip7, Some("\0admin-token".into())), (ip7, None)]);
    let r = call(7, ADMIN_TOKEN.into(), "/admin/users").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()[header::RETRY_AFTER], "300");
    assert_eq!(call(7, fx.token_of("ops"), "/admin/users").await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(budget.runs(crate::HashClass::Http), 1, "no hash for a throttled address");
    assert_eq!(call(7, "x".into(), "/admin/openapi.json").await.status(), StatusCode::OK);
    assert_eq!(call(8, ADMIN_TOKEN.into(), "/admin/users").await.status(), StatusCode::OK);
    assert_eq!(call(8, fx.token_of("ops"), "/admin/users").await.status(), StatusCode::OK);
    // A valid token without the admin scope is 403, and no failure.
    assert_eq!(call(8, fx.token_of("dev"), "/admin/users").await.status(), StatusCode::FORBIDDEN);
    assert_eq!(guard.0.lock().len(), 2);
}

/// Every change through the API — made or refused — reaches the backend's audit trail with
/// the caller (`admin-token` or `oauth:<client>`), the peer, the action, the target, what
/// changed and the result; reads are not changes; nothing secret is in a record; unauthenticated
/// calls are not recorded (they are authentication failures, logged as such).
#[tokio::test]
async fn every_change_is_audited_with_its_actor_and_result_and_no_secret() {
    let fx = fixture();
    let ops = fx.token_of("ops");
    let peer = std::net::SocketAddr::from(([192, 0, 2, 9], 4711));
    let call_from = |token: String, method: Method, path: &'static str, body: Option<Value>| {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
            .unwrap();
        r.extensions_mut().insert(crate::PeerAddr(peer));
        let app = fx.app.clone();
        async move { app.oneshot(r).await.unwrap().status() }
    };
    let role = json!({"name": "dev", "rules": [{"id": "r1", "action": "publish", "topic": "t/#", "effect": "allow"}]});
    assert_eq!(fx.admin(Method::POST, "/admin/roles", Some(role)).await.0, StatusCode::CREATED);
    let user = json!({"name": "ann", "password": "hunter2-secret-pw", "roles": ["dev"]});
    assert_eq!(fx.admin(Method::POST, "/admin/users", Some(user)).await.0, StatusCode::CREATED);
    assert_eq!(
        call_from(
            ops.clone(),
            Method::PUT,
            "/admin/users/ann",
            Some(json!({"password": "other-secret-pw", "disabled": true}))
        )
        .await,
        StatusCode::OK
    );
    // Refused: validation (a password given as a number is quoted by the JSON parser's
    // message, which the trail does not keep), conflict, not found.
    assert_eq!(
        fx.admin(Method::POST, "/admin/users", Some(json!({"name": "bob", "password": 98765432}))).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(fx.admin(Method::POST, "/admin/users", Some(json!({"name": "ann"}))).await.0, StatusCode::CONFLICT);
    assert_eq!(fx.admin(Method::DELETE, "/admin/users/nobody", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call_from(ops.clone(), Method::POST, "/admin/clients/c1/kick", None).await, StatusCode::OK);
    let ban = json!({"kind": "username", "value": "mallory", "reason": "abuse"});
    assert_eq!(fx.admin(Method::POST, "/admin/bans", Some(ban)).await.0, StatusCode::CREATED);
    assert_eq!(fx.admin(Method::DELETE, "/admin/bans?kind=username&value=mallory", None).await.0, StatusCode::OK);
    let oc = json!({"id": "dev-7", "secret": "client-secret-value", "scopes": ["mqtt:pub:x"]});
    assert_eq!(fx.admin(Method::POST, "/admin/oauth/clients", Some(oc)).await.0, StatusCode::CREATED);
    assert_eq!(fx.admin(Method::DELETE, "/admin/oauth/clients/dev-7", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(fx.admin(Method::DELETE, "/admin/users/ann", None).await.0, StatusCode::OK);
    // Not changes, or not an admin: not recorded.
    assert_eq!(fx.admin(Method::GET, "/admin/users", None).await.0, StatusCode::OK);
    assert_eq!(fx.call(Method::DELETE, "/admin/users/x", Some("wrong"), None).await.0, StatusCode::UNAUTHORIZED);
    let dev = fx.token_of("dev");
    assert_eq!(fx.call(Method::DELETE, "/admin/users/x", Some(&dev), None).await.0, StatusCode::FORBIDDEN);

    let recs = fx.backend.audit.lock().clone();
    let summary: Vec<_> = recs
        .iter()
        .map(|r| (r.actor.as_str(), r.action.as_str(), r.target.as_str(), r.result.as_str(), r.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("admin-token", "role.create", "dev", "ok", 201),
            ("admin-token", "user.create", "ann", "ok", 201),
            ("oauth:ops", "user.update", "ann", "ok", 200),
            ("admin-token", "user.create", "bob", "refused", 400),
            ("admin-token", "user.create", "ann", "refused", 409),
            ("admin-token", "user.delete", "nobody", "refused", 404),
            ("oauth:ops", "client.kick", "c1", "ok", 200),
            ("admin-token", "ban.add", "mallory", "ok", 201),
            ("admin-token", "ban.remove", "mallory", "ok", 200),
            ("admin-token", "oauth_client.create", "dev-7", "ok", 201),
            ("admin-token", "oauth_client.delete", "dev-7", "refused", 404),
            ("admin-token", "user.delete", "ann", "ok", 200),
        ]
    );
    assert_eq!(recs[1].detail, json!({"password": "set", "groups": [], "roles": ["dev"], "disabled": false}));
    assert_eq!(
        recs[2].detail,
        json!({"password": "changed", "disabled": true, "previous": {"disabled": false}}),
        "what changed, and from what"
    );
    assert_eq!(recs[2].peer, "192.0.2.9:4711");
    assert_eq!(recs[3].error.as_deref(), Some("invalid JSON body"));
    assert_eq!(recs[4].error.as_deref(), Some("user 'ann' exists"));
    assert_eq!(recs[7].detail, json!({"kind": "username", "reason": "abuse"}));
    assert_eq!(recs[9].detail, json!({"secret": "set", "scopes": ["mqtt:pub:x"], "roles": []}));
    assert_eq!(recs[11].detail, json!({"groups": [], "roles": ["dev"]}));
    for r in &recs {
        assert!(r.unix > 1_600_000_000 && r.time.ends_with('Z'), "{r:?}");
    }
    let all = serde_json::to_string(&recs).unwrap();
    for secret in ["hunter2-secret-pw", "other-secret-pw", "98765432", "client-secret-value", "$argon2", ADMIN_TOKEN] {
        assert!(!all.contains(secret), "{secret} in the audit trail: {all}");
    }
    assert!(!all.contains(&ops), "no token in the audit trail");

    // Read back: newest last; since and limit; bad values refused.
    let (s, v) = fx.admin(Method::GET, "/admin/audit", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 12);
    assert_eq!(v[11]["action"], "user.delete");
    let (_, v) = fx.admin(Method::GET, "/admin/audit?limit=2", None).await;
    assert_eq!(
        v.as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect::<Vec<_>>(),
        ["oauth_client.delete", "user.delete"]
    );
    let (_, v) = fx.admin(Method::GET, "/admin/audit?since=4102444800", None).await;
    assert_eq!(v, json!([]));
    let (_, v) = fx.admin(Method::GET, "/admin/audit?since=1970-01-01T00:00:00Z&limit=10000", None).await;
    assert_eq!(v.as_array().unwrap().len(), 12);
    let (_, v) = fx.admin(Method::GET, "/admin/audit?since=2099-12-31T23:00:00%2B01:00", None).await;
    assert_eq!(v, json!([]));
    let (_, v) = fx.admin(Method::GET, "/admin/audit?since=2099-12-31T23:00:00+01:00", None).await;
    assert_eq!(v, json!([]), "an unencoded + reads as one");
    for bad in ["since=yesterday", "limit=0", "limit=10001", "limit=x", "until=1"] {
        let path = format!("/admin/audit?{bad}");
        assert_eq!(fx.admin(Method::GET, &path, None).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(fx.call(Method::GET, "/admin/audit", None, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(fx.call(Method::GET, "/admin/audit", Some(&dev), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(fx.backend.audit.lock().len(), 12, "reading the trail is not a change");
}

/// Groups, role quotas, rule and role removal: each recorded with what changed and, for an
/// update or a removal, what was there before.
#[tokio::test]
async fn group_role_and_rule_changes_record_what_was_there_before() {
    let fx = fixture();
    let r1 = json!({"id": "r1", "action": "publish", "topic": "t/#", "effect": "allow"});
    assert_eq!(
        fx.admin(Method::POST, "/admin/roles", Some(json!({"name": "dev", "rules": [r1]}))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(fx.admin(Method::POST, "/admin/roles", Some(json!({"name": "ops"}))).await.0, StatusCode::CREATED);
    assert_eq!(
        fx.admin(Method::POST, "/admin/groups", Some(json!({"name": "g", "roles": ["dev"]}))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(fx.admin(Method::PUT, "/admin/groups/g", Some(json!({"roles": ["ops"]}))).await.0, StatusCode::OK);
    assert_eq!(fx.admin(Method::DELETE, "/admin/groups/g", None).await.0, StatusCode::OK);
    assert_eq!(
        fx.admin(Method::PUT, "/admin/roles/dev/quotas", Some(json!({"max_sessions": 5}))).await.0,
        StatusCode::OK
    );
    assert_eq!(fx.admin(Method::DELETE, "/admin/roles/dev/rules/r1", None).await.0, StatusCode::OK);
    assert_eq!(fx.admin(Method::DELETE, "/admin/roles/dev/rules/r1", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(fx.admin(Method::DELETE, "/admin/roles/dev", None).await.0, StatusCode::OK);
    let recs = fx.backend.audit.lock().clone();
    let actions: Vec<_> = recs.iter().map(|r| (r.action.as_str(), r.target.as_str(), r.result.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("role.create", "dev", "ok"),
            ("role.create", "ops", "ok"),
            ("group.create", "g", "ok"),
            ("group.update", "g", "ok"),
            ("group.delete", "g", "ok"),
            ("role.quotas", "dev", "ok"),
            ("rule.delete", "dev", "ok"),
            ("rule.delete", "dev", "refused"),
            ("role.delete", "dev", "ok"),
        ]
    );
    assert_eq!(recs[3].detail, json!({"roles": ["ops"], "previous": {"roles": ["dev"]}}));
    assert_eq!(recs[4].detail, json!({"roles": ["ops"]}));
    assert_eq!(recs[5].detail["quotas"]["max_sessions"], 5);
    assert_eq!(recs[5].detail["previous"]["quotas"], json!({}));
    assert_eq!(recs[6].detail["rule_id"], "r1");
    assert_eq!(recs[6].detail["rule"]["topic"], "t/#");
    assert_eq!(recs[7].error.as_deref(), Some("role 'dev' has no rule 'r1'"));
    assert_eq!(recs[8].detail, json!({"rules": []}));
}

/// Issue 23: the device registry's CRUD, its refusals (400 malformed or invalid, 404, 409) and
/// the audit record of each change.
#[tokio::test]
async fn devices_crud_refusals_and_audit() {
    let fx = fixture();
    let fp = "AB:".repeat(31) + "AB";
    let norm = "ab".repeat(32);
    let body = json!({"id": "dev-1", "type": "sensor", "owner": "acme", "attributes": {"site": "berlin"},
        "certificates": [{"fingerprint": fp}]});
    let (s, v) = fx.admin(Method::POST, "/admin/devices", Some(body.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(fx.admin(Method::POST, "/admin/devices", Some(body)).await.0, StatusCode::CONFLICT);
    let (s, v) = fx.admin(Method::GET, "/admin/devices/dev-1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((&v["type"], &v["attributes"]["site"]), (&json!("sensor"), &json!("berlin")));
    assert_eq!(v["certificates"][0], json!({"fingerprint": norm, "status": "active"}));
    assert_eq!(fx.admin(Method::GET, "/admin/devices", None).await.1.as_array().unwrap().len(), 1);
    // A certificate from its PEM.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["dev-1".into()]).unwrap().self_signed(&key).unwrap();
    let (s, v) = fx.admin(Method::POST, "/admin/devices/dev-1/certificates", Some(json!({"pem": cert.pem()}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let pem_fp = v["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(pem_fp, warden_policy::cert::sha256_fingerprint(cert.der()));
    // Status changes; a revoked certificate stays revoked and registered.
    let path = format!("/admin/devices/dev-1/certificates/{norm}");
    assert_eq!(fx.admin(Method::PUT, &path, Some(json!({"status": "inactive"}))).await.0, StatusCode::OK);
    assert_eq!(fx.admin(Method::PUT, &path, Some(json!({"status": "revoked"}))).await.0, StatusCode::OK);
    assert_eq!(fx.admin(Method::PUT, &path, Some(json!({"status": "active"}))).await.0, StatusCode::CONFLICT);
    assert_eq!(fx.admin(Method::DELETE, &path, None).await.0, StatusCode::CONFLICT);
    assert_eq!(fx.admin(Method::DELETE, "/admin/devices/dev-1", None).await.0, StatusCode::CONFLICT);
    let pem_path = format!("/admin/devices/dev-1/certificates/{pem_fp}");
    assert_eq!(fx.admin(Method::DELETE, &pem_path, None).await.0, StatusCode::OK);
    // Patch: fields given are set, an empty one cleared.
    let (s, _) = fx
        .admin(Method::PUT, "/admin/devices/dev-1", Some(json!({"owner": "", "attributes": {"site": "paris"}})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = fx.admin(Method::GET, "/admin/devices/dev-1", None).await.1;
    assert_eq!((&v["owner"], &v["type"], &v["attributes"]["site"]), (&Value::Null, &json!("sensor"), &json!("paris")));
    // Refusals.
    for (method, path, body) in [
        (Method::POST, "/admin/devices", "{"),
        (Method::POST, "/admin/devices", r#"{"id":"dev/2"}"#),
        (Method::POST, "/admin/devices", r#"{"id":""}"#),
        (Method::POST, "/admin/devices", r#"{"id":"d","bogus":1}"#),
        (Method::POST, "/admin/devices", r#"{"id":"d","attributes":{"owner":"x"}}"#),
        (Method::POST, "/admin/devices", r#"{"id":"d","attributes":{"a b":"x"}}"#),
        (Method::POST, "/admin/devices", r#"{"id":"d","certificates":[{"fingerprint":"abc"}]}"#),
        (Method::POST, "/admin/devices", r#"{"id":"d","certificates":[{}]}"#),
        (Method::POST, "/admin/devices/dev-1/certificates", r#"{"pem":"-----BEGIN CERTIFICATE-----\nnope\n"}"#),
        (Method::POST, "/admin/devices/dev-1/certificates", r#"{"fingerprint":"x","pem":"y"}"#),
        (Method::PUT, "/admin/devices/dev-1", r#"{"attributes":{"site":"a\u0000b"}}"#),
        (Method::PUT, "/admin/devices/dev-1/certificates/zz", r#"{"status":"active"}"#),
    ] {
        let (s, v) = fx.call(method.clone(), path, Some(ADMIN_TOKEN), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path} {body}: {v}");
    }
    let (s, _) = fx.call(Method::PUT, &path, Some(ADMIN_TOKEN), Some(r#"{"status":"lost"}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The same certificate on a second device: 409.
    let second = json!({"id": "dev-2", "certificates": [{"fingerprint": norm}]});
    assert_eq!(fx.admin(Method::POST, "/admin/devices", Some(second)).await.0, StatusCode::CONFLICT);
    assert_eq!(fx.admin(Method::GET, "/admin/devices/nope", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(fx.admin(Method::PUT, "/admin/devices/nope", Some(json!({}))).await.0, StatusCode::NOT_FOUND);
    let other = format!("/admin/devices/dev-1/certificates/{}", "cd".repeat(32));
    assert_eq!(fx.admin(Method::PUT, &other, Some(json!({"status": "active"}))).await.0, StatusCode::NOT_FOUND);
    assert_eq!(fx.call(Method::GET, "/admin/devices", None, None).await.0, StatusCode::UNAUTHORIZED);
    // Audited, made or refused.
    let recs = fx.backend.audit.lock().clone();
    let actions: Vec<_> = recs.iter().map(|r| (r.action.as_str(), r.status)).collect();
    assert!(actions.contains(&("device.create", 201)), "{actions:?}");
    assert!(actions.contains(&("device.create", 409)));
    assert!(actions.contains(&("device.cert.add", 201)));
    assert!(actions.contains(&("device.cert.status", 200)));
    assert!(actions.contains(&("device.cert.status", 409)));
    assert!(actions.contains(&("device.cert.remove", 200)));
    assert!(actions.contains(&("device.update", 200)));
    assert!(actions.contains(&("device.delete", 409)));
    let revoke = recs.iter().find(|r| r.action == "device.cert.status" && r.detail["status"] == "revoked").unwrap();
    assert_eq!((revoke.target.as_str(), &revoke.detail["previous"]), ("dev-1", &json!("inactive")));
    assert_eq!(revoke.detail["fingerprint"], json!(norm));
}
