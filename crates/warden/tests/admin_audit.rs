//! The admin audit trail (SPEC §9) against the real broker: changes through the admin API —
//! with the static admin token and with an OAuth client's admin token — and through the CLI
//! are recorded in order with actor, action, target and result; `GET /admin/audit` and
//! `warden admin audit` read them back; the file (0600) holds no secret and survives a
//! restart.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::OnceLock;

use mqtt_codec::Protocol;
use serde_json::{json, Value};
use warden_testkit::{connect_packet, RawClient, TestBroker, WAIT};

const ADMIN_TOKEN: &str = "admin-token-for-audit-tests-0123456789";
const OPS_SECRET: &str = "ops-client-secret-for-audit-tests";
const USER_PW: &str = "password-of-audited-user";
const CLIENT_SECRET: &str = "secret-of-an-audited-oauth-client";

fn hash_of(s: &'static str, cell: &'static OnceLock<String>) -> &'static str {
    cell.get_or_init(|| warden_policy::password::hash_password(s.as_bytes()))
}

fn config() -> String {
    static T: OnceLock<String> = OnceLock::new();
    static O: OnceLock<String> = OnceLock::new();
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n\
         [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n\
         [auth]\nallow_anonymous = true\n\
         [oauth]\nenabled = true\n[[oauth.client]]\nid = \"ops\"\nsecret_hash = \"{}\"\nscopes = [\"admin\"]\n",
        hash_of(ADMIN_TOKEN, &T),
        hash_of(OPS_SECRET, &O),
    )
}

/// One HTTP call (ureq on the blocking pool); returns the status and the JSON body.
async fn http(b: &TestBroker, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let a = b.http(method, path, &[warden_testkit::http::bearer(token)], body.map(|v| v.to_string())).await;
    (a.status, a.json())
}

async fn admin(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> u16 {
    http(b, method, path, ADMIN_TOKEN, body).await.0
}

async fn ops_token(b: &TestBroker) -> String {
    let url = format!("http://{}/oauth/token", b.server.http_addr.unwrap());
    tokio::task::spawn_blocking(move || {
        let v: Value = ureq::post(&url)
            .send_form(&[("grant_type", "client_credentials"), ("client_id", "ops"), ("client_secret", OPS_SECRET)])
            .expect("token")
            .into_json()
            .unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    })
    .await
    .unwrap()
}

/// The trail as `GET /admin/audit` returns it: (actor, action, target, result) per record.
async fn trail(b: &TestBroker, query: &str) -> Vec<(String, String, String, String)> {
    let (s, v) = http(b, "GET", &format!("/admin/audit{query}"), ADMIN_TOKEN, None).await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (f("actor"), f("action"), f("target"), f("result"))
        })
        .collect()
}

fn row(actor: &str, action: &str, target: &str, result: &str) -> (String, String, String, String) {
    (actor.into(), action.into(), target.into(), result.into())
}

/// `warden …` with these arguments; returns (success, stdout + stderr).
async fn warden(args: Vec<String>, stdin: Option<&str>) -> (bool, String) {
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
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

async fn admin_cli(b: &TestBroker, args: &[&str]) -> (bool, String) {
    let mut all = vec!["admin".to_owned(), "--url".to_owned(), format!("http://{}", b.server.http_addr.unwrap())];
    all.extend(args.iter().map(|s| s.to_string()));
    warden(all, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_audited_in_order_and_survive_a_restart() {
    let b = TestBroker::from_toml(&config()).await;
    let t0 = warden_http::admin::audit::unix_now();
    assert_eq!(admin(&b, "POST", "/admin/roles", Some(json!({"name": "dev"}))).await, 201);
    let rule = json!({"id": "pub", "action": "publish", "topic": "dev/%u/#", "effect": "allow"});
    assert_eq!(admin(&b, "POST", "/admin/roles/dev/rules", Some(rule)).await, 201);
    let user = json!({"name": "ann", "password": USER_PW, "roles": ["dev"]});
    assert_eq!(admin(&b, "POST", "/admin/users", Some(user)).await, 201);
    // Refused by validation: recorded with the result.
    assert_eq!(admin(&b, "POST", "/admin/users", Some(json!({"name": "bob", "roles": ["none"]}))).await, 400);
    let (mut k1, _) = RawClient::connect(b.addr(), connect_packet(Protocol::V5, "k1", true)).await;
    let ops = ops_token(&b).await;
    assert_eq!(http(&b, "POST", "/admin/clients/k1/kick", &ops, None).await.0, 200);
    k1.expect_closed_within(WAIT).await;
    let ban = json!({"kind": "ip", "value": "203.0.113.7", "reason": "scanner"});
    assert_eq!(admin(&b, "POST", "/admin/bans", Some(ban)).await, 201);
    assert_eq!(admin(&b, "DELETE", "/admin/bans?kind=ip&value=203.0.113.7", None).await, 200);
    let oc = json!({"id": "dev-7", "secret": CLIENT_SECRET, "scopes": ["mqtt:pub:devices/dev-7/#"]});
    assert_eq!(admin(&b, "POST", "/admin/oauth/clients", Some(oc)).await, 201);
    assert_eq!(admin(&b, "DELETE", "/admin/users/ann", None).await, 200);
    // Not changes: not recorded.
    assert_eq!(admin(&b, "GET", "/admin/users", None).await, 200);
    assert_eq!(http(&b, "DELETE", "/admin/users/x", "wrong-token", None).await.0, 401);

    let expected = vec![
        row("admin-token", "role.create", "dev", "ok"),
        row("admin-token", "rule.add", "dev", "ok"),
        row("admin-token", "user.create", "ann", "ok"),
        row("admin-token", "user.create", "bob", "refused"),
        row("oauth:ops", "client.kick", "k1", "ok"),
        row("admin-token", "ban.add", "203.0.113.7", "ok"),
        row("admin-token", "ban.remove", "203.0.113.7", "ok"),
        row("admin-token", "oauth_client.create", "dev-7", "ok"),
        row("admin-token", "user.delete", "ann", "ok"),
    ];
    assert_eq!(trail(&b, "").await, expected);
    assert_eq!(trail(&b, "?limit=2").await, expected[7..]);
    assert_eq!(trail(&b, &format!("?since={t0}")).await, expected);
    assert!(trail(&b, &format!("?since={}", t0 + 3600)).await.is_empty());
    let (_, v) = http(&b, "GET", "/admin/audit", ADMIN_TOKEN, None).await;
    let r = &v[0];
    assert!(r["unix"].as_u64().unwrap() >= t0 && r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    assert_eq!(v[1]["detail"]["rule"]["topic"], "dev/%u/#");
    assert_eq!((v[3]["status"].as_u64(), v[3]["error"].as_str()), (Some(400), Some("user 'bob': unknown role 'none'")));
    assert_eq!(v[5]["detail"], json!({"kind": "ip", "reason": "scanner"}));
    assert_eq!(http(&b, "GET", "/admin/audit?since=soon", ADMIN_TOKEN, None).await.0, 400);

    // The file: 0600, one JSON line per record, nothing secret.
    let path = b.path("audit.jsonl");
    let text = std::fs::read_to_string(&path).expect("audit.jsonl");
    assert_eq!(text.lines().count(), expected.len());
    for secret in [USER_PW, CLIENT_SECRET, ADMIN_TOKEN, OPS_SECRET, ops.as_str(), "$argon2"] {
        assert!(!text.contains(secret), "a secret in the audit file: {text}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // A change made with `warden oauth` on the broker's machine: actor cli.
    let cfg = b.path("warden.toml").display().to_string();
    let args = ["oauth", "client", "add", "dev-8", "--secret-stdin", "--config", &cfg];
    let (ok, out) = warden(args.iter().map(|s| s.to_string()).collect(), Some(&format!("{CLIENT_SECRET}\n"))).await;
    assert!(ok, "{out}");
    assert_eq!(trail(&b, "?limit=1").await, [row("cli", "oauth_client.create", "dev-8", "ok")]);

    // `warden admin audit`, as lines and as JSON.
    let (ok, out) = admin_cli(&b, &["audit", "--since", "1h"]).await;
    assert!(ok, "{out}");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{out}");
    let fields: Vec<_> = lines[4].split('\t').collect();
    assert_eq!([fields[1], fields[3], fields[4], fields[5]], ["oauth:ops", "client.kick", "k1", "ok 200"], "{out}");
    assert!(fields[2].starts_with("127.0.0.1:"), "{out}");
    assert!(lines[3].contains("refused 400 (user 'bob': unknown role 'none')"), "{out}");
    let (ok, out) = admin_cli(&b, &["audit", "--limit", "2", "--json"]).await;
    assert!(ok, "{out}");
    let recs: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(
        recs.iter().map(|r| r["action"].as_str().unwrap()).collect::<Vec<_>>(),
        ["user.delete", "oauth_client.create"]
    );
    let (ok, out) = admin_cli(&b, &["audit", "--since", "yesterday"]).await;
    assert!(!ok && out.contains("400: since:"), "{out}");

    // Restart on the same data directory: the trail is still there, and grows.
    let TestBroker { server, dir } = b;
    server.shutdown().await;
    let b = TestBroker::from_toml_in(dir, &config()).await;
    let before = trail(&b, "").await;
    assert_eq!(before.len(), expected.len() + 1);
    assert_eq!(before[..expected.len()], expected[..]);
    assert_eq!(admin(&b, "POST", "/admin/groups", Some(json!({"name": "ops", "roles": ["dev"]}))).await, 201);
    assert_eq!(trail(&b, "?limit=1").await, [row("admin-token", "group.create", "ops", "ok")]);
    b.stop().await;
}
