//! `GET /metrics`, `/readyz`, `/livez` (SPEC §9) against the real broker: every family SPEC §9
//! names is there with its type from the first scrape; the counters move with what real
//! clients do (refused and accepted passwords, a QoS 1 PUBLISH, a denied subscription); no
//! label value carries a client id, user name or topic; and, where `promtool` is installed
//! (CI installs Debian's `prometheus` package), `promtool check metrics` accepts the text.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use bytes::Bytes;
use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use warden_testkit::{connect_packet, publish, RawClient, Recv, TestBroker, WAIT};

const USER: &str = "metrics-user-7f3a";
const PW: &str = "metrics-pw";

async fn broker() -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let h = warden_policy::password::hash_password(PW.as_bytes());
    std::fs::write(dir.path().join("passwd"), format!("{USER}:{h}\n")).unwrap();
    std::fs::write(dir.path().join("acl"), format!("user {USER}\ntopic readwrite telemetry/#\n")).unwrap();
    TestBroker::from_toml_in(
        dir,
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\npassword_file = \"{dir}/passwd\"\n\
         [authz]\nacl_file = \"{dir}/acl\"\non_deny = \"drop\"\n[http]\nbind = \"127.0.0.1:0\"\n",
    )
    .await
}

async fn get(b: &TestBroker, path: &str) -> (u16, String, String) {
    let url = format!("http://{}{path}", b.server.http_addr.expect("http listener"));
    tokio::task::spawn_blocking(move || {
        let r = match ureq::get(&url).timeout(WAIT).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {url}: {e}"),
        };
        let ctype = r.header("content-type").unwrap_or("").to_owned();
        (r.status(), ctype, r.into_string().unwrap())
    })
    .await
    .unwrap()
}

/// One sample: name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// `(family types, samples)` of an exposition.
fn parse(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            types.insert(it.next().unwrap().to_owned(), it.next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').expect("name value");
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').expect("closing brace");
                let labels = l
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (head.to_owned(), HashMap::new()),
        };
        samples.push((name, labels, value.parse::<f64>().expect("a number")));
    }
    (types, samples)
}

fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
        .map(|(_, _, v)| v)
        .sum()
}

fn login(client_id: &str, pw: &str) -> mqtt_codec::Connect {
    let mut c = connect_packet(Protocol::V5, client_id, true);
    c.username = Some(USER.into());
    c.password = Some(Bytes::from(pw.as_bytes().to_vec()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_family_and_count_what_clients_do() {
    let b = broker().await;
    let (status, ctype, text) = get(&b, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let (types, before) = parse(&text);
    for (family, kind) in [
        ("warden_connections", "gauge"),
        ("warden_messages_received_total", "counter"),
        ("warden_messages_sent_total", "counter"),
        ("warden_auth_attempts_total", "counter"),
        ("warden_authz_denied_total", "counter"),
        ("warden_tls_handshake_failures_total", "counter"),
        ("warden_limit_hits_total", "counter"),
        ("warden_bans_active", "gauge"),
        ("warden_sessions", "gauge"),
        ("warden_retained_messages", "gauge"),
        ("warden_queued_bytes", "gauge"),
        ("warden_store_commit_seconds", "histogram"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{family} on a fresh broker");
    }
    assert_eq!(get(&b, "/readyz").await.0, 200);
    assert_eq!(get(&b, "/livez").await.0, 200);

    // Three wrong passwords, one right; a QoS 1 PUBLISH; a denied SUBSCRIBE.
    for i in 0..3 {
        let (_, r) = RawClient::connect(b.addr(), login(&format!("metrics-bad-{i}"), "wrong")).await;
        assert!(
            matches!(r, Recv::Packet(Packet::Connack(ref a)) if a.reason_code == ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        );
    }
    let (mut c, r) = RawClient::connect(b.addr(), login("metrics-client-9c1e", PW)).await;
    assert!(matches!(r, Recv::Packet(Packet::Connack(ref a)) if a.reason_code == ReasonCode::SUCCESS), "{r:?}");
    c.send(&publish("telemetry/metrics-topic-5d2b", QoS::AtLeastOnce, 1, b"21.5")).await;
    assert!(matches!(c.recv().await, Recv::Packet(Packet::PubAck(_))));
    assert_eq!(c.subscribe(2, "secret/#", QoS::AtMostOnce).await, vec![ReasonCode::NOT_AUTHORIZED]);

    let (_, _, text) = get(&b, "/metrics").await;
    let (_, after) = parse(&text);
    let grew = |name: &str, labels: &[(&str, &str)]| sum(&after, name, labels) - sum(&before, name, labels);
    assert_eq!(grew("warden_auth_attempts_total", &[("method", "password"), ("result", "refused")]), 3.0);
    assert_eq!(grew("warden_auth_attempts_total", &[("method", "password"), ("result", "ok")]), 1.0);
    assert_eq!(grew("warden_messages_received_total", &[("qos", "1")]), 1.0);
    assert_eq!(grew("warden_authz_denied_total", &[("action", "subscribe")]), 1.0);
    assert!(sum(&after, "warden_connections", &[]) >= 1.0, "the live connection is counted");
    assert_eq!(sum(&after, "warden_sessions", &[]), 1.0);
    // No identifying label values.
    for (name, labels, _) in &after {
        for v in labels.values() {
            for secret in [USER, "metrics-client-9c1e", "metrics-bad-0", "metrics-topic-5d2b", "telemetry/"] {
                assert!(!v.contains(secret), "{name} carries {v}");
            }
        }
    }
    promtool_accepts(&text);
    b.stop().await;
}

/// `promtool check metrics` on the text, when promtool is installed (CI installs it).
fn promtool_accepts(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(std::env::var_os("WARDEN_REQUIRE_PROMTOOL").is_none(), "promtool is required here but not installed");
        eprintln!("promtool not installed: the exposition was not checked with it");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus (Debian's `prometheus`, when installed; CI installs it) scrapes the real
/// broker: the target is up, and every query of the Grafana dashboard in
/// `docs/grafana/warden-dashboard.json` evaluates without error and names only families the
/// broker exposes — so the dashboard cannot drift from the metric names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_broker_and_the_dashboard_queries_evaluate() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/grafana/warden-dashboard.json")).expect("dashboard JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has its panels");
    let b = broker().await;
    let (_, _, text) = get(&b, "/metrics").await;
    let (types, _) = parse(&text);
    for e in &exprs {
        let names: Vec<&str> =
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("warden_")).collect();
        assert!(!names.is_empty(), "{e}");
        for n in names {
            let family = n.strip_suffix("_bucket").unwrap_or(n);
            assert!(types.contains_key(family), "the dashboard queries {n}, which /metrics does not expose");
        }
    }

    let Ok(version) = Command::new("prometheus").arg("--version").output() else {
        assert!(std::env::var_os("WARDEN_REQUIRE_PROMTOOL").is_none(), "prometheus is required here but not installed");
        eprintln!("prometheus not installed: no real scrape");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let target = b.server.http_addr.unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: warden\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    // A free loopback port for Prometheus's own API (bound, read, released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: String| {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        tokio::task::spawn_blocking(move || -> Option<serde_json::Value> {
            ureq::get(&url).query("query", &q).timeout(WAIT).call().ok()?.into_json().ok()
        })
    };
    // Up within 30 s (a scrape a second once Prometheus runs).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let up = query("up{job=\"warden\"}".into()).await.unwrap();
        if up.as_ref().and_then(|v| v["data"]["result"][0]["value"][1].as_str()) == Some("1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Prometheus did not scrape the broker within 30 s: {up:?}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let series = query("warden_sessions".into()).await.unwrap().expect("answer");
    assert_eq!(series["data"]["result"].as_array().map(Vec::len), Some(1), "{series}");
    for e in exprs {
        let r = query(e.clone()).await.unwrap().expect("an answer");
        assert_eq!(r["status"], "success", "{e}: {r}");
    }
    b.stop().await;
}

/// `[http] metrics_token_hash` (SPEC §9: "no authentication by default, metrics_token_hash
/// optional"): without the token, a wrong one or another scheme, `/metrics` answers 401 with
/// `WWW-Authenticate: Bearer`; the right one reads the metrics (again, without a new hash:
/// the HTTP hashing count does not grow on the second scrape). Health stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_when_configured_is_required() {
    let token = "scrape-token-0123456789abcdef";
    let h = warden_policy::password::hash_password(token.as_bytes());
    let b = TestBroker::from_toml(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\nallow_anonymous = true\n\
         [http]\nbind = \"127.0.0.1:0\"\nmetrics_token_hash = '{h}'\n"
    ))
    .await;
    let url = format!("http://{}/metrics", b.server.http_addr.unwrap());
    let call = |auth: Option<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut req = ureq::get(&url).timeout(WAIT);
            if let Some(a) = auth {
                req = req.set("Authorization", &a);
            }
            match req.call() {
                Ok(r) => (r.status(), r.header("www-authenticate").map(str::to_owned), r.into_string().unwrap()),
                Err(ureq::Error::Status(s, r)) => (s, r.header("www-authenticate").map(str::to_owned), String::new()),
                Err(e) => panic!("{e}"),
            }
        })
    };
    let (s, challenge, _) = call(None).await.unwrap();
    assert_eq!((s, challenge.as_deref()), (401, Some("Bearer")));
    assert_eq!(call(Some("Bearer wrong-token".into())).await.unwrap().0, 401);
    assert_eq!(call(Some(format!("Basic {token}"))).await.unwrap().0, 401);
    let (s, _, body) = call(Some(format!("Bearer {token}"))).await.unwrap();
    assert_eq!(s, 200);
    assert!(body.contains("# TYPE warden_connections gauge"));
    let hashed = b.server.hashing.runs(warden_http::HashClass::Http);
    assert_eq!(call(Some(format!("Bearer {token}"))).await.unwrap().0, 200);
    assert_eq!(b.server.hashing.runs(warden_http::HashClass::Http), hashed, "the accepted token is not hashed again");
    assert_eq!(get(&b, "/healthz").await.0, 200);
    b.stop().await;
}

/// SPEC §9 / issue 19: "the same counters in `$SYS`": the authentication attempts by method and
/// result are published as `$SYS/broker/auth/<method>/<ok|refused>` (retained, every
/// `sys_interval`), beside the denials and TLS failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_counters_are_in_sys_too() {
    let dir = tempfile::tempdir().unwrap();
    let h = warden_policy::password::hash_password(PW.as_bytes());
    std::fs::write(dir.path().join("passwd"), format!("{USER}:{h}\n")).unwrap();
    let b = TestBroker::from_toml_in(
        dir,
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\nallow_anonymous = true\n\
         password_file = \"{dir}/passwd\"\n[limits]\nsys_interval = 1\n",
    )
    .await;
    let (_, r) = RawClient::connect(b.addr(), login("sys-bad", "wrong")).await;
    assert!(
        matches!(r, Recv::Packet(Packet::Connack(ref a)) if a.reason_code == ReasonCode::BAD_USER_NAME_OR_PASSWORD)
    );
    let (mut c, _) = warden_testkit::connected(b.addr(), connect_packet(Protocol::V5, "sys-watch", true)).await;
    c.subscribe(1, "$SYS/broker/auth/password/refused", QoS::AtMostOnce).await;
    // The retained value, then one a second: wait (bounded) for one that counts the refusal.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = tokio::time::timeout_at(deadline, c.expect_publish()).await.expect("a $SYS value within 10 s");
        if std::str::from_utf8(&p.payload).ok().and_then(|v| v.parse::<u64>().ok()) >= Some(1) {
            break;
        }
    }
    b.stop().await;
}
