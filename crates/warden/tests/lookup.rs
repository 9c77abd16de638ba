//! Third-party look-up over HTTP (SPEC §4, method 4) against a mock look-up service.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use warden::auth::lookup::{Grant, HttpLookup, LookupConfig, LookupRequest, LookupVerdict};
use warden::config::Secret;

struct Seen {
    hits: AtomicUsize,
    body: Mutex<Option<Value>>,
    headers: Mutex<Option<HeaderMap>>,
    /// Requests that reached the `hang` mode (the test waits on it, never sleeps).
    hanging: tokio::sync::watch::Sender<usize>,
    /// `hang` answers once it gets a permit from here.
    release: tokio::sync::Semaphore,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            hits: AtomicUsize::new(0),
            body: Mutex::default(),
            headers: Mutex::default(),
            hanging: tokio::sync::watch::channel(0).0,
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

async fn serve(State(seen): State<Arc<Seen>>, Path(mode): Path<String>, headers: HeaderMap, body: String) -> Response {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    *seen.body.lock().unwrap() = Some(req.clone());
    *seen.headers.lock().unwrap() = Some(headers);
    let ok = |v: Value| (StatusCode::OK, [("content-type", "application/json")], v.to_string()).into_response();
    match mode.as_str() {
        "allow" => ok(json!({"allow": true, "roles": ["ops"], "scopes": ["mqtt:pub:a/#", "mqtt:sub:b/+"],
            "acl": ["topic read x/#", "topic deny x/secret"]})),
        "allow-cached" => ok(json!({"allow": true, "principal": "svc-ann", "cache_ttl": 60})),
        "allow-short" => ok(json!({"allow": true, "cache_ttl": 1})),
        "deny" => ok(json!({"allow": false, "cache_ttl": 60})),
        // Allows only the password "right" (a service that caches nothing itself).
        "password" => ok(json!({"allow": req["password"] == "right", "cache_ttl": 60})),
        "error" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok(json!({"allow": true}))
        }
        // Holds the request until the test releases it.
        "hang" => {
            seen.hanging.send_modify(|n| *n += 1);
            seen.release.acquire().await.expect("open").forget();
            ok(json!({"allow": true}))
        }
        "malformed" => (StatusCode::OK, "{\"allow\": tru").into_response(),
        "no-allow" => ok(json!({"principal": "ann"})),
        "string-allow" => ok(json!({"allow": "true"})),
        "bad-principal" => ok(json!({"allow": true, "principal": "a/#"})),
        "bad-acl" => ok(json!({"allow": true, "acl": ["user bob", "topic readwrite #"]})),
        "redirect" => (StatusCode::FOUND, [("location", "/allow")]).into_response(),
        "huge" => ok(json!({"allow": true, "padding": "x".repeat(70 * 1024)})),
        "big" => ok(json!({"allow": true, "padding": "x".repeat(60 * 1024)})),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

struct Mock {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Mock {
    async fn start() -> Mock {
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new().route("/{mode}", axum::routing::post(serve)).with_state(seen.clone());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(tcp, app).await.unwrap() });
        Mock { addr, seen }
    }

    fn config(&self, mode: &str) -> LookupConfig {
        toml::from_str(&format!("url = \"http://{}/{mode}\"\ntimeout = \"1s\"", self.addr)).unwrap()
    }

    fn lookup(&self, mode: &str) -> HttpLookup {
        HttpLookup::new(self.config(mode)).unwrap()
    }

    fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }

    fn body(&self) -> Value {
        self.seen.body.lock().unwrap().clone().expect("no request seen")
    }

    fn header(&self, name: &str) -> Option<String> {
        let h = self.seen.headers.lock().unwrap();
        h.as_ref().and_then(|h| h.get(name)).map(|v| v.to_str().unwrap().to_owned())
    }
}

fn request(client_id: &str, username: Option<&str>, password: Option<&[u8]>) -> LookupRequest {
    LookupRequest {
        client_id: client_id.into(),
        username: username.map(Into::into),
        password: password.map(<[u8]>::to_vec),
        peer: "127.0.0.1:40000".parse().unwrap(),
        cert_identity: None,
    }
}

fn ann() -> LookupRequest {
    request("dev-1", Some("ann"), Some(b"annpw"))
}

fn allowed(v: LookupVerdict) -> Grant {
    match v {
        LookupVerdict::Allow(g) => g,
        other => panic!("expected Allow, got {other:?}"),
    }
}

#[tokio::test]
async fn allow_carries_roles_scopes_and_acl() {
    let m = Mock::start().await;
    let g = allowed(m.lookup("allow").check(&ann()).await);
    assert_eq!(
        g,
        Grant {
            principal: "ann".into(),
            roles: vec!["ops".into()],
            scopes: vec!["mqtt:pub:a/#".into(), "mqtt:sub:b/+".into()],
            acl: vec!["topic read x/#".into(), "topic deny x/secret".into()],
            cache_ttl: None,
        }
    );
    use mqtt_codec::{QoS, TopicFilter, TopicName};
    use warden_policy::Action;
    let name = |t: &str| TopicName::new(t).expect("topic name");
    let rules = g.rules().expect("rules");
    assert_eq!(rules.check(None, "dev-1", Action::publish(&name("a/1"), QoS::AtLeastOnce, false)), Some(true));
    let b_c = TopicFilter::new("b/c").expect("filter");
    assert_eq!(rules.check(None, "dev-1", Action::subscribe(&b_c, QoS::AtLeastOnce)), Some(true));
    assert_eq!(rules.check(None, "dev-1", Action::receive(&name("x/y"))), Some(true));
    assert_eq!(rules.check(None, "dev-1", Action::receive(&name("x/secret"))), Some(false));
    assert_eq!(rules.check(None, "dev-1", Action::publish(&name("x/y"), QoS::AtMostOnce, false)), None);
}

#[tokio::test]
async fn principal_defaults_to_username_then_client_id_and_may_be_named() {
    let m = Mock::start().await;
    let l = m.lookup("allow");
    assert_eq!(allowed(l.check(&request("dev-2", None, None)).await).principal, "dev-2");
    assert_eq!(allowed(l.check(&request("dev-2", Some("bob"), None)).await).principal, "bob");
    let g = allowed(m.lookup("allow-cached").check(&ann()).await);
    assert_eq!(g.principal, "svc-ann");
    assert_eq!(g.cache_ttl, Some(Duration::from_secs(60)));
    assert!(g.rules().is_none(), "an answer without scopes or rules carries no permissions");
}

#[tokio::test]
async fn deny() {
    let m = Mock::start().await;
    assert_eq!(m.lookup("deny").check(&ann()).await, LookupVerdict::Deny);
}

#[tokio::test]
async fn unusable_allows_are_denials() {
    let m = Mock::start().await;
    assert_eq!(m.lookup("bad-principal").check(&ann()).await, LookupVerdict::Deny);
    assert_eq!(m.lookup("bad-acl").check(&ann()).await, LookupVerdict::Deny);
    // The default principal (the client id) is checked too.
    assert_eq!(m.lookup("allow").check(&request("a/+", None, None)).await, LookupVerdict::Deny);
}

#[tokio::test]
async fn service_failures_are_unavailable() {
    let m = Mock::start().await;
    for mode in ["error", "malformed", "no-allow", "string-allow", "redirect", "huge", "missing"] {
        assert_eq!(m.lookup(mode).check(&ann()).await, LookupVerdict::Unavailable, "{mode}");
    }
    // Nothing listening.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let cfg: LookupConfig = toml::from_str(&format!("url = \"http://{closed}/allow\"")).unwrap();
    assert_eq!(HttpLookup::new(cfg).unwrap().check(&ann()).await, LookupVerdict::Unavailable);
}

#[tokio::test]
async fn answers_up_to_64_kib_are_read() {
    let m = Mock::start().await;
    allowed(m.lookup("big").check(&ann()).await);
    assert_eq!(m.lookup("huge").check(&ann()).await, LookupVerdict::Unavailable);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let m = Mock::start().await;
    assert_eq!(m.lookup("redirect").check(&ann()).await, LookupVerdict::Unavailable);
    assert_eq!(m.hits(), 1, "the redirect target was requested");
}

#[tokio::test]
async fn slow_service_times_out() {
    let m = Mock::start().await;
    let mut cfg = m.config("slow");
    cfg.timeout = Duration::from_millis(300);
    let l = HttpLookup::new(cfg).unwrap();
    let t = Instant::now();
    assert_eq!(l.check(&ann()).await, LookupVerdict::Unavailable);
    assert!(t.elapsed() < Duration::from_millis(1500), "took {:?}", t.elapsed());
}

#[tokio::test]
async fn allows_are_cached_for_the_answers_ttl() {
    let m = Mock::start().await;
    let l = m.lookup("allow-cached");
    let first = allowed(l.check(&ann()).await);
    let second = allowed(l.check(&ann()).await);
    assert_eq!(first, second);
    assert_eq!(m.hits(), 1, "cached allow asked the service again");
    assert_eq!(l.cached(), 1);
    // Another password, client id or user name is another entry.
    allowed(l.check(&request("dev-1", Some("ann"), Some(b"other"))).await);
    allowed(l.check(&request("dev-9", Some("ann"), Some(b"annpw"))).await);
    allowed(l.check(&request("dev-1", Some("bob"), Some(b"annpw"))).await);
    assert_eq!(m.hits(), 4);
    // The same credentials from another port of the same address hit the cache.
    let mut again = ann();
    again.peer = "127.0.0.1:40001".parse().unwrap();
    allowed(l.check(&again).await);
    assert_eq!(m.hits(), 4);
}

#[tokio::test]
async fn no_cache_without_ttl_or_when_disabled() {
    let m = Mock::start().await;
    let l = m.lookup("allow");
    allowed(l.check(&ann()).await);
    allowed(l.check(&ann()).await);
    assert_eq!(m.hits(), 2, "an answer without cache_ttl was cached");

    let mut cfg = m.config("allow-cached");
    cfg.cache_ttl = Duration::ZERO;
    let l = HttpLookup::new(cfg).unwrap();
    allowed(l.check(&ann()).await);
    allowed(l.check(&ann()).await);
    assert_eq!(m.hits(), 4, "cache_ttl = 0 still cached");
}

#[tokio::test]
async fn cached_allows_expire() {
    let m = Mock::start().await;
    // The answer asks for 60 s; the configured cap (1 s) wins.
    let mut cfg = m.config("allow-cached");
    cfg.cache_ttl = Duration::from_secs(1);
    let capped = HttpLookup::new(cfg).unwrap();
    let short = m.lookup("allow-short");
    for l in [&capped, &short] {
        allowed(l.check(&ann()).await);
        allowed(l.check(&ann()).await);
    }
    assert_eq!(m.hits(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for l in [&capped, &short] {
        allowed(l.check(&ann()).await);
    }
    assert_eq!(m.hits(), 4, "expired entries were served");
}

#[tokio::test]
async fn denials_are_not_cached() {
    let m = Mock::start().await;
    let l = m.lookup("deny");
    assert_eq!(l.check(&ann()).await, LookupVerdict::Deny);
    assert_eq!(l.check(&ann()).await, LookupVerdict::Deny);
    assert_eq!(m.hits(), 2);
    assert_eq!(l.cached(), 0);

    // A corrected password works at once; a wrong one is asked about every time.
    let l = m.lookup("password");
    let wrong = request("dev-1", Some("ann"), Some(b"wrong"));
    let right = request("dev-1", Some("ann"), Some(b"right"));
    assert_eq!(l.check(&wrong).await, LookupVerdict::Deny);
    allowed(l.check(&right).await);
    allowed(l.check(&right).await);
    assert_eq!(l.check(&wrong).await, LookupVerdict::Deny);
    assert_eq!(m.hits(), 2 + 3);
}

#[tokio::test]
async fn failures_are_not_cached() {
    let m = Mock::start().await;
    let l = m.lookup("error");
    assert_eq!(l.check(&ann()).await, LookupVerdict::Unavailable);
    assert_eq!(l.check(&ann()).await, LookupVerdict::Unavailable);
    assert_eq!(m.hits(), 2);
}

#[tokio::test]
async fn request_carries_the_fields() {
    let m = Mock::start().await;
    let l = m.lookup("allow");
    let mut r = ann();
    r.cert_identity = Some("dev-1.fleet".into());
    allowed(l.check(&r).await);
    assert_eq!(
        m.body(),
        json!({"client_id": "dev-1", "username": "ann", "password": "annpw", "password_encoding": "utf8",
            "peer": "127.0.0.1:40000", "cert_identity": "dev-1.fleet"})
    );
    assert_eq!(m.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(m.header("authorization"), None);

    // A binary password travels as base64.
    allowed(l.check(&request("dev-1", None, Some(&[0xff, 0xfe, 0x00, 0x41]))).await);
    let b = m.body();
    assert_eq!(b["password"], "//4AQQ==");
    assert_eq!(b["password_encoding"], "base64");
    assert_eq!(b["username"], Value::Null);

    // No password: both null.
    allowed(l.check(&request("dev-1", None, None)).await);
    let b = m.body();
    assert!(b["password"].is_null() && b["password_encoding"].is_null() && b["cert_identity"].is_null());
}

#[tokio::test]
async fn bearer_token_is_sent() {
    let m = Mock::start().await;
    let mut cfg = m.config("allow");
    cfg.bearer_token = Some(Secret("s3rvice-t0ken".into()));
    allowed(HttpLookup::new(cfg).unwrap().check(&ann()).await);
    assert_eq!(m.header("authorization").as_deref(), Some("Bearer s3rvice-t0ken"));
}

#[tokio::test]
async fn verdicts_are_logged_without_secrets() {
    let m = Mock::start().await;
    let buf = warden_testkit::LogBuf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut cfg = m.config("allow");
    cfg.bearer_token = Some(Secret("s3rvice-t0ken".into()));
    let secret = request("dev-7", Some("carol"), Some(b"Pa55-w0rd"));
    allowed(HttpLookup::new(cfg).unwrap().check(&secret).await);
    assert_eq!(m.lookup("deny").check(&secret).await, LookupVerdict::Deny);
    assert_eq!(m.lookup("error").check(&secret).await, LookupVerdict::Unavailable);
    let log = buf.text();
    for needle in ["allowed", "denied", "unavailable", "dev-7", "carol", "127.0.0.1:40000", "status=200", "500"] {
        assert!(log.contains(needle), "{needle:?} missing from log:\n{log}");
    }
    assert!(!log.contains("Pa55-w0rd") && !log.contains("s3rvice-t0ken"), "secret logged:\n{log}");
}

/// Issue 17 item 5: when every look-up slot (`max_in_flight`) is taken, the next CONNECT's
/// look-up is refused at once as Busy (the broker's own overload) — the service is not asked,
/// and it is not "unavailable" (which `fail_open` would act on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_slot_cap_is_busy_at_once_never_unavailable() {
    let m = Mock::start().await;
    let mut cfg = m.config("hang");
    cfg.timeout = Duration::from_secs(20);
    cfg.max_in_flight = 2;
    cfg.fail_open = true;
    cfg.fallback_role = Some("degraded".into());
    let l = Arc::new(HttpLookup::new(cfg).unwrap());
    let mut hanging = m.seen.hanging.subscribe();
    let held: Vec<_> = (0..2)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move { l.check(&request(&format!("held-{i}"), Some("x"), Some(b"bad"))).await })
        })
        .collect();
    hanging.wait_for(|n| *n == 2).await.unwrap();

    let t = Instant::now();
    assert_eq!(l.check(&request("dev-001", Some("dev-001"), Some(b"wrong"))).await, LookupVerdict::Busy);
    assert!(t.elapsed() < Duration::from_secs(2), "refused at once, took {:?}", t.elapsed());
    assert_eq!(m.hits(), 2, "the service was not asked");

    // Slots free again once the held look-ups end.
    m.seen.release.add_permits(3);
    for h in held {
        assert!(matches!(h.await.unwrap(), LookupVerdict::Allow(_)));
    }
    assert!(matches!(l.check(&request("dev-001", Some("dev-001"), Some(b"pw"))).await, LookupVerdict::Allow(_)));
}
