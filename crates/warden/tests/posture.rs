//! The posture audit (SPEC §13) from the outside: the real `warden audit` binary on a bad
//! configuration (exit 1, the finding named) and a tight one (exit 0), an unreadable one (exit
//! 2); `GET /admin/audit/posture` on a running broker (401 without the admin token, the
//! findings with it, including one client certificate on two live connections).

use std::process::Command;
use std::sync::OnceLock;

use mqtt_codec::{Connack, Packet, Protocol, ReasonCode};
use serde_json::Value;
use warden::config::ListenerProtocol;
use warden_testkit::pki::{tls_connect, TestPki, Validity};
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const ADMIN_TOKEN: &str = "admin-token-for-posture-tests-0123456789";

fn audit(config: &std::path::Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["audit", "--config"]).arg(config);
    if json {
        cmd.args(["--format", "json"]);
    }
    let out = cmd.output().expect("run warden audit");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn an_anonymous_plain_listener_on_every_interface_fails_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("open.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}/data\"\n[[listener]]\nbind = \"0.0.0.0:1883\"\nprotocol = \"mqtt\"\n[auth]\nallow_anonymous = true\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let (rc, out) = audit(&cfg, false);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("[CRITICAL] anonymous-listener") && out.contains("0.0.0.0:1883"), "{out}");
    let (rc, out) = audit(&cfg, true);
    assert_eq!(rc, 1, "{out}");
    let v: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(v["fail"], true);
    assert_eq!(v["highest"], "critical");
    assert!(v["findings"].as_array().unwrap().iter().any(|f| f["id"] == "plain-listener"), "{v}");
}

#[test]
fn a_tight_configuration_passes_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    for what in ["ca", "server"] {
        let st = Command::new(BIN).args(["cert", what, "--dir"]).arg(&pki).output().unwrap();
        assert!(st.status.success(), "warden cert {what}: {}", String::from_utf8_lossy(&st.stderr));
    }
    let acl = dir.path().join("audit.acl");
    std::fs::write(&acl, "user dev-1\ntopic readwrite devices/dev-1/#\n").unwrap();
    let p = pki.display();
    let cfg = dir.path().join("tight.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}/data\"\n[[listener]]\nbind = \"127.0.0.1:8883\"\nprotocol = \"mqtts\"\n\
             cert = \"{p}/server.pem\"\nkey = \"{p}/server.key\"\nclient_ca = \"{p}/ca.pem\"\n\
             client_cert = \"required\"\nidentity_from_cert = \"cn\"\n[auth]\nallow_anonymous = false\n\
             [authz]\nacl_file = \"{}\"\n",
            dir.path().display(),
            acl.display()
        ),
    )
    .unwrap();
    let (rc, out) = audit(&cfg, false);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("0 finding(s)"), "{out}");
    // The same with a broad grant: a high finding, exit 1.
    std::fs::write(&acl, "user dev-1\ntopic readwrite #\n").unwrap();
    let (rc, out) = audit(&cfg, false);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("[HIGH] broad-grant") && out.contains("user dev-1"), "{out}");
}

#[test]
fn an_unreadable_configuration_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (rc, out) = audit(&dir.path().join("missing.toml"), false);
    assert_eq!(rc, 2, "{out}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[listener]]\nbind = 7\n").unwrap();
    assert_eq!(audit(&bad, false).0, 2);
}

async fn get(b: &TestBroker, token: Option<&str>) -> (u16, Value) {
    let url = format!("http://{}/admin/audit/posture", b.server.http_addr.expect("http listener"));
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::get(&url).timeout(WAIT);
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {url}: {e}"),
        };
        (resp.status(), resp.into_json::<Value>().unwrap_or(Value::Null))
    })
    .await
    .expect("http task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_findings_including_a_shared_live_certificate() {
    static HASH: OnceLock<String> = OnceLock::new();
    let hash = HASH.get_or_init(|| warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "fleet");
    let s = pki.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
         client_cert = \"required\"\nidentity_from_cert = \"cn\"\n\
         [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{hash}\"\n",
        s.cert.display(),
        s.key.display(),
        pki.ca_pem().display()
    );
    let b = TestBroker::from_toml_in(dir, &body).await;
    assert_eq!(get(&b, None).await.0, 401);
    assert_eq!(get(&b, Some("not-the-admin-token")).await.0, 401);

    // One device certificate on two live connections.
    let dev = pki.client("dev-1", Validity::Valid);
    let addr = b.addr_of(ListenerProtocol::Mqtts);
    let mut held = Vec::new();
    for cid in ["dev-1-a", "dev-1-b"] {
        let stream = tls_connect(addr, &pki.ca_pem(), Some(&dev)).await.unwrap();
        let (c, r) = RawClient::connect_over(stream, connect_packet(Protocol::V5, cid, true)).await;
        assert!(matches!(r, Recv::Packet(Packet::Connack(Connack { reason_code: ReasonCode(0), .. }))), "{r:?}");
        held.push(c);
    }
    let (status, v) = get(&b, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    let findings = v["findings"].as_array().expect("findings");
    let shared = findings.iter().find(|f| f["id"] == "shared-client-cert").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(shared["severity"], "medium");
    assert!(shared["why"].as_str().unwrap().contains("dev-1-a, dev-1-b"), "{shared}");
    // The inline admin token hash is reported (low), the test PKI's key (mode 0644) is high.
    assert!(findings.iter().any(|f| f["id"] == "inline-secret"), "{v}");
    let key = findings.iter().find(|f| f["id"] == "secret-file-permissions").unwrap_or_else(|| panic!("{v}"));
    assert_eq!((&key["severity"], &key["subject"]), (&"high".into(), &s.key.display().to_string().into()));
    assert_eq!(v["fail"], true, "{v}");
    // chmod 600 the key: nothing high is left.
    std::fs::set_permissions(&s.key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (_, v) = get(&b, Some(ADMIN_TOKEN)).await;
    assert_eq!(v["fail"], false, "{v}");
    assert_eq!(v["highest"], "medium", "{v}");
    drop(held);
    b.stop().await;
}
