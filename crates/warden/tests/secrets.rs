//! Secrets by reference (SPEC §13) with the real broker and the real binary: an HS256 secret
//! given as `"env:NAME"` or `hs256_secret_file` verifies tokens signed with the variable's value
//! or the file's content (a real MQTT client connects) and nothing else; `warden check` warns
//! about inline secrets and secret files open to group or others, and not otherwise; the broker
//! logs the same warnings at start.
//!
//! The in-process broker gets its environment through `Config::load_with_env` (no
//! `std::env::set_var` in a multi-threaded test); the binary through `Command::env`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use warden::config::{Config, ListenerProtocol};
use warden::server::Server;
use warden_testkit::WAIT;

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const JWT: &str = "[auth]\nallow_anonymous = false\n[auth.jwt]\nissuer = \"edge-iss\"\naudience = \"warden\"\n";

/// An HS256 token for `edge-sensor`, signed with `key`.
fn hs256(key: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"sub": "edge-sensor", "iss": "edge-iss", "aud": "warden", "iat": now, "exp": now + 120,
        "scope": "mqtt:pub:edge/#"});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

fn write(path: &Path, text: &str, mode: u32) -> PathBuf {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

/// The broker for `jwt_line` (after [`JWT`]), its environment exactly `env`.
async fn broker(dir: &Path, jwt_line: &str, env: &[(&str, &str)]) -> Server {
    let text = format!(
        "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n{JWT}{jwt_line}\n",
        dir.join("data").display()
    );
    let path = write(&dir.join("warden.toml"), &text, 0o600);
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let cfg = Config::load_with_env(&path, &lookup).unwrap_or_else(|e| panic!("{e}"));
    Server::start(&cfg).await.expect("broker starts")
}

/// Does a real MQTT client (rumqttc, v3.1.1) get a successful CONNACK with `token`?
async fn connects(b: &Server, client_id: &str, token: &str) -> bool {
    let port = b.addr(ListenerProtocol::Mqtt).unwrap().port();
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_credentials("edge-sensor", token);
    let (_client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    match tokio::time::timeout(WAIT, ev.poll()).await.expect("an answer to CONNECT") {
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => a.code == rumqttc::ConnectReturnCode::Success,
        Ok(other) => panic!("first event {other:?}"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_secret_from_env_verifies_the_variables_value_not_the_reference_text() {
    let dir = tempfile::tempdir().unwrap();
    let value = "env-secret-0123456789abcdef";
    let b = broker(dir.path(), "hs256_secret = \"env:WARDEN_TEST_HS\"", &[("WARDEN_TEST_HS", value)]).await;
    assert!(connects(&b, "edge-env", &hs256(value)).await, "signed with the variable's value");
    assert!(!connects(&b, "edge-env2", &hs256("env:WARDEN_TEST_HS")).await, "signed with the reference text");
    assert!(!connects(&b, "edge-env3", &hs256("another-key-0123456789")).await, "signed with another key");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_secret_file_verifies_the_files_secret_only() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "file-secret-0123456789abcdef";
    let file = write(&dir.path().join("hs256.secret"), &format!("{secret}\n"), 0o600);
    let b = broker(dir.path(), &format!("hs256_secret_file = \"{}\"", file.display()), &[]).await;
    assert!(connects(&b, "edge-file", &hs256(secret)).await, "signed with the file's secret");
    assert!(!connects(&b, "edge-file2", &hs256(&format!("{secret}\n"))).await, "the line break is not the key's");
    assert!(!connects(&b, "edge-file3", &hs256("another-key-0123456789")).await, "signed with another key");
    b.shutdown().await;
}

/// `warden check --config` on `body` (after a data_dir and a listener) with `env`: (exit
/// success, stdout + stderr).
fn check(dir: &Path, name: &str, body: &str, env: &[(&str, &str)]) -> (bool, String) {
    let cfg = write(
        &dir.join(format!("{name}.toml")),
        &format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n{body}",
            dir.join(format!("data-{name}")).display()
        ),
        0o600,
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config", cfg.to_str().unwrap()]).env_remove("WARDEN_TEST_HS").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run warden check");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Lines that warn and mention `needle`.
fn warnings<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.to_lowercase().contains("warn") && l.contains(needle)).collect()
}

#[test]
fn check_warns_about_inline_secrets_not_references() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inline = "inline-secret-0123456789abcdef";
    let (ok, out) = check(d, "inline", &format!("{JWT}hs256_secret = \"{inline}\"\n"), &[]);
    assert!(ok, "{out}");
    let w = warnings(&out, "hs256_secret");
    assert_eq!(w.len(), 1, "{out}");
    assert!(w[0].contains("inline.toml:10:") && w[0].contains("env:NAME"), "{out}");
    assert!(!out.contains(inline), "the secret is printed: {out}");

    let (ok, out) = check(
        d,
        "env",
        &format!("{JWT}hs256_secret = \"env:WARDEN_TEST_HS\"\n"),
        &[("WARDEN_TEST_HS", "env-secret-0123456789abcdef")],
    );
    assert!(ok && warnings(&out, "hs256_secret").is_empty(), "{out}");
    assert!(!out.contains("env-secret"), "{out}");

    let file = write(&d.join("hs.secret"), "file-secret-0123456789abcdef\n", 0o600);
    let (ok, out) = check(d, "file", &format!("{JWT}hs256_secret_file = \"{}\"\n", file.display()), &[]);
    assert!(ok && warnings(&out, "hs256_secret").is_empty(), "{out}");

    // Refusals: the variable unset (named, exit 1); both forms; an unreadable file (named).
    let (ok, out) = check(d, "unset", &format!("{JWT}hs256_secret = \"env:WARDEN_TEST_HS\"\n"), &[]);
    assert!(!ok && out.contains("unset.toml:10:") && out.contains("WARDEN_TEST_HS is not set"), "{out}");
    let (ok, out) = check(
        d,
        "both",
        &format!("{JWT}hs256_secret = \"{inline}\"\nhs256_secret_file = \"{}\"\n", file.display()),
        &[],
    );
    assert!(!ok && out.contains("both.toml:11:") && out.contains("both set") && !out.contains(inline), "{out}");
    let (ok, out) = check(d, "missing", &format!("{JWT}hs256_secret_file = \"no-such.secret\"\n"), &[]);
    assert!(!ok && out.contains(&d.join("no-such.secret").display().to_string()), "{out}");
}

#[test]
fn check_warns_about_secret_files_open_to_group_or_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, mode, warned) in
        [("passwd-0644", 0o644, true), ("passwd-0640", 0o640, true), ("passwd-0600", 0o600, false)]
    {
        let pw = write(&d.join(name), "", mode);
        let (ok, out) = check(d, name, &format!("[auth]\npassword_file = \"{}\"\n", pw.display()), &[]);
        assert!(ok, "{out}");
        let w = warnings(&out, name);
        assert_eq!(w.len(), usize::from(warned), "{name}: {out}");
        if warned {
            assert!(w[0].contains("password_file") && w[0].contains("chmod 600"), "{out}");
        }
    }
    let hs = write(&d.join("hs-0604"), "file-secret-0123456789abcdef", 0o604);
    let (ok, out) = check(d, "hs-open", &format!("{JWT}hs256_secret_file = \"{}\"\n", hs.display()), &[]);
    assert!(ok, "{out}");
    assert_eq!(warnings(&out, "hs256_secret_file").len(), 1, "{out}");
}

/// `warden serve` logs the warnings once at start (and never the secret).
#[test]
fn serve_logs_the_warnings_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inline = "inline-secret-0123456789abcdef";
    let cfg = write(
        &d.join("warden.toml"),
        &format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n{JWT}hs256_secret = \"{inline}\"\n",
            d.join("data").display()
        ),
        0o600,
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warden");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("listening: mqtt://") {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen.expect("the broker starts");
    assert_eq!(warnings(&seen, "hs256_secret is written inline").len(), 1, "{seen}");
    assert!(!seen.contains(inline), "{seen}");
}
