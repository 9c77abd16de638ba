//! The `warden` binary as an operator uses it: `check`, `passwd`, `serve` with a config file
//! (bad configs refused with file:line), SIGHUP reload and SIGTERM shutdown of the real process.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mqtt_codec::{Packet, Protocol, ReasonCode};
use warden_testkit::{connect_packet, RawClient, Recv};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

fn warden(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run warden")
}

#[test]
fn check_accepts_a_good_config_and_names_file_and_line_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n").unwrap();
    let out = warden(&["check", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "data_dir = \"x\"\ncolour_of_sky = \"blue\"\n").unwrap();
    for args in [vec!["check", "--config"], vec!["serve", "--config"]] {
        let mut a = args.clone();
        a.push(bad.to_str().unwrap());
        let out = warden(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("bad.toml:2:") && err.contains("colour_of_sky"), "{err}");
    }

    let bad_value = dir.path().join("bad_value.toml");
    std::fs::write(&bad_value, "[[listener]]\nbind = \"127.0.0.1:0\"\n[limits]\nmax_packet_size = \"12 parsecs\"\n")
        .unwrap();
    let out = warden(&["check", "--config", bad_value.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad_value.toml:4:") && err.contains("max_packet_size"), "{err}");
}

/// `check` warns, as `serve` would at start, when the connection caps exceed what the hard
/// file descriptor limit leaves (here `ulimit -n 256` in `sh`, soft and hard); the config is
/// still valid.
#[test]
fn check_warns_when_the_connection_caps_exceed_the_file_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n[http]\nbind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = Command::new("sh")
        .args(["-c", "ulimit -n 256 && exec \"$0\" check --config \"$1\"", BIN])
        .arg(&cfg)
        .output()
        .expect("run warden");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("warning: the file descriptor limit (256"), "{text}");
    assert!(text.contains("100000 -> 167") && text.contains("1024 -> 23") && text.contains(": ok"), "{text}");
    // With room enough (the defaults need 101024 + 66), no warning.
    let out = Command::new("sh")
        .args(["-c", "ulimit -n 200000 2>/dev/null || exit 0; exec \"$0\" check --config \"$1\"", BIN])
        .arg(&cfg)
        .output()
        .expect("run warden");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

#[test]
fn a_missing_or_broken_password_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::write(&cfg, "[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\npassword_file = \"passwd\"\n").unwrap();
    let out = warden(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    std::fs::write(dir.path().join("passwd"), "ann:$6$notbase64!$x\n").unwrap();
    let out = warden(&["check", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("passwd:1"), "{err}");
    assert!(!err.contains("notbase64"), "the hash is not echoed: {err}");
}

#[test]
fn passwd_writes_argon2id_and_hash_only_prints_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let mut child = Command::new(BIN)
        .args(["passwd", file.to_str().unwrap(), "dev-001", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("dev-001:$argon2id$"), "{text}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
    let file_db = warden_policy::password::PasswordFile::parse(&text).unwrap();
    assert!(file_db.verify("dev-001", b"s3cret"), "trailing newline is not part of the password");

    let mut child =
        Command::new(BIN).args(["passwd", "--hash-only"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"other\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with("$argon2id$"));
}

#[tokio::test]
async fn real_process_serves_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let hash = warden_policy::password::hash_password(b"annpw");
    std::fs::write(&passwd, format!("ann:{hash}\n")).unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\npassword_file = \"passwd\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rx = warden_testkit::stderr_lines(&mut child);
    let (addr, _) = warden_testkit::mqtt_listen_address(&rx, Duration::from_secs(20));
    let login = |user: &str, pw: &str| {
        let mut c = connect_packet(Protocol::V5, "cli-test", true);
        c.username = Some(user.into());
        c.password = Some(bytes::Bytes::copy_from_slice(pw.as_bytes()));
        c
    };
    let code = |r: Recv| match r {
        Recv::Packet(Packet::Connack(a)) => a.reason_code,
        other => panic!("{other:?}"),
    };
    assert_eq!(code(RawClient::connect(addr, login("ann", "annpw")).await.1), ReasonCode(0));
    assert_eq!(code(RawClient::connect(addr, login("bob", "bobpw")).await.1), ReasonCode(0x86));

    // Add bob, SIGHUP, and wait for the reload to be logged.
    std::fs::write(&passwd, format!("ann:{hash}\nbob:{}\n", warden_policy::password::hash_password(b"bobpw"))).unwrap();
    assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    loop {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("reload logged");
        if line.contains("password file reloaded") {
            break;
        }
    }
    assert_eq!(code(RawClient::connect(addr, login("bob", "bobpw")).await.1), ReasonCode(0));

    // A connected v5 client is told the server is shutting down (0x8B) on SIGTERM.
    let (mut c, _) = RawClient::connect(addr, login("ann", "annpw")).await;
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let seen = c.expect_closed_within(Duration::from_secs(10)).await;
    assert!(
        seen.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::SERVER_SHUTTING_DOWN)),
        "{seen:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let all: Vec<String> = rx.try_iter().collect();
    assert!(!all.iter().any(|l| l.contains("annpw") || l.contains("bobpw")), "no password in the log");
}

#[test]
fn first_start_creates_an_admin_with_a_one_time_password() {
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("data/passwd");
    let pw = warden::cli::bootstrap::ensure_admin(&dir.path().join("data"), &pf).unwrap().expect("created");
    assert!(pw.len() >= 20);
    let text = std::fs::read_to_string(&pf).unwrap();
    assert!(!text.contains(&pw), "only a hash is stored");
    assert!(warden_policy::password::PasswordFile::parse(&text).unwrap().verify("admin", pw.as_bytes()));
    assert_eq!(warden::cli::bootstrap::ensure_admin(&dir.path().join("data"), &pf).unwrap(), None, "printed once");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&pf).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn check_explain_names_the_deciding_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acl"), "user alice\ntopic readwrite sensors/#\ntopic deny sensors/secret\n")
        .unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::write(
        &cfg,
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n[authz]\nacl_file = \"acl\"\n",
    )
    .unwrap();
    // Exit status: 0 allow, 1 deny (grep-like), 2 when the question cannot be answered.
    let run = |args: &[&str], code: i32| {
        let mut a = vec!["check", "--config", cfg.to_str().unwrap(), "--explain"];
        a.extend_from_slice(args);
        let out = warden(&a);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string()
    };
    assert!(
        run(&["--user", "alice", "publish", "sensors/a"], 0).starts_with("allow:")
            && run(&["--user", "alice", "publish", "sensors/a"], 0).ends_with(":2: topic readwrite sensors/#")
    );
    assert!(run(&["--user", "alice", "publish", "sensors/secret"], 1).contains(":3: topic deny sensors/secret"));
    assert!(run(&["--user", "bob", "subscribe", "sensors/#"], 1).starts_with("deny: no rule"));
    run(&["--user", "bob", "fly", "sensors/#"], 2);
    std::fs::remove_file(dir.path().join("acl")).unwrap();
    run(&["--user", "alice", "publish", "sensors/a"], 2);
}

#[test]
fn check_reports_every_error_with_file_and_line_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("two-errors.toml");
    std::fs::write(
        &cfg,
        "data_dir = \"data\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\ncolour_of_sky = \"blue\"\n\
         path = \"/mqtt\"\n[limits]\nmax_packet_size = \"a lot\"\n[auth]\npassword_file = \"missing-passwd\"\n",
    )
    .unwrap();
    let out = warden(&["check", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("two-errors.toml:5: unknown field `colour_of_sky`"), "{err}");
    assert!(err.contains("two-errors.toml:6: `path` applies only to ws and wss listeners"), "{err}");
    assert!(err.contains("two-errors.toml:8: max_packet_size"), "{err}");
    // What the configuration refers to is checked too, once the rest is set aside.
    assert!(err.contains("missing-passwd"), "{err}");
    assert!(err.contains("4 error(s) found"), "{err}");

    // A syntax error stops the list there (nothing after it can be trusted), still non-zero.
    std::fs::write(&cfg, "[[listener]\nbind = 1\n").unwrap();
    let out = warden(&["check", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("two-errors.toml:1:") && err.contains("1 error(s)"), "{err}");
}

#[test]
fn completions_and_man_pages_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = warden(&["completions", shell]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("warden"), "{shell}: {text}");
        for sub in ["passwd", "cert", "check", "completions", "revoke"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    assert!(String::from_utf8_lossy(&warden(&["completions", "bash"]).stdout).contains("complete -F"));
    assert!(!warden(&["completions", "tcsh"]).status.success());

    let out = warden(&["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && page.contains(".TH warden 1"), "{page}");
    for sub in ["passwd", "cert", "check", "completions", "man"] {
        assert!(page.contains(sub), "warden.1 lacks {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = warden(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["warden.1", "warden-passwd.1", "warden-check.1", "warden-cert-revoke.1"] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        assert!(text.contains(".TH"), "{name} missing or empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_clients_and_key_rotation_from_the_cli_apply_on_reload() {
    let b = warden_testkit::TestBroker::from_toml(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[http]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = false\n",
    )
    .await;
    let cfg = b.path("warden.toml");
    let out = warden(&[
        "oauth",
        "client",
        "add",
        "dev-9",
        "--scope",
        "mqtt:pub:devices/dev-9/#",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(secret.len() >= 32, "generated secret printed once");
    let stored = std::fs::read_to_string(b.path("oauth/clients.toml")).unwrap();
    assert!(!stored.contains(&secret) && stored.contains("$argon2id$"), "only a hash is stored");
    let list = warden(&["oauth", "client", "list", "--config", cfg.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("dev-9\tscopes=mqtt:pub:devices/dev-9/#"));

    let service = b.server.oauth.clone().expect("token service");
    assert!(service.clients().iter().all(|c| c.id != "dev-9"), "not live before the reload");
    b.server.reload();
    assert!(service.clients().iter().any(|c| c.id == "dev-9"));
    let http = b.server.http_addr.unwrap();
    let get_token = move |secret: String| {
        tokio::task::spawn_blocking(move || {
            let r = ureq::post(&format!("http://{http}/oauth/token"))
                .set("Authorization", &format!("Basic {}", base64_encode(&format!("dev-9:{secret}"))))
                .send_form(&[("grant_type", "client_credentials")])
                .expect("token");
            r.into_json::<serde_json::Value>().unwrap()["access_token"].as_str().unwrap().to_string()
        })
    };
    let old_token = get_token(secret.clone()).await.unwrap();
    let old_kid = service.current_kid();

    let out = warden(&["oauth", "rotate-key", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.server.reload();
    assert_ne!(service.current_kid(), old_kid, "the new key signs");
    assert!(service.verify(&old_token).is_ok(), "tokens of the retired key still verify");
    let jwks = service.jwks();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    let new_token = get_token(secret).await.unwrap();
    assert!(service.verify(&new_token).is_ok());

    let out = warden(&["oauth", "client", "remove", "dev-9", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success());
    b.server.reload();
    assert!(service.verify(&new_token).is_err(), "a removed client's tokens stop verifying");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn passwd_add(file: &std::path::Path, user: &str, password: &str) {
    let mut child = Command::new(BIN)
        .args(["passwd", file.to_str().unwrap(), user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

#[test]
fn passwd_delete_removes_one_user_and_keeps_the_rest_and_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    passwd_add(&file, "alice", "a-secret");
    passwd_add(&file, "dora", "d-secret");
    passwd_add(&file, "bob", "b-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let f = file.to_str().unwrap();
    let out = warden(&["passwd", "-D", f, "dora"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).unwrap();
    let db = warden_policy::password::PasswordFile::parse(&text).unwrap();
    assert!(!db.contains("dora") && db.verify("alice", b"a-secret") && db.verify("bob", b"b-secret"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);
    }

    // Absent user: non-zero, the file and the user named, the file untouched.
    let out = warden(&["passwd", "--delete", f, "dora"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("dora") && err.contains(f), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // Missing file: non-zero, named.
    let missing = dir.path().join("nope");
    let out = warden(&["passwd", "-D", missing.to_str().unwrap(), "alice"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope"), "{err}");

    // -D takes no password.
    assert!(!warden(&["passwd", "-D", f, "alice", "--password-stdin"]).status.success());
    assert!(std::fs::read_to_string(&file).unwrap().contains("alice:"));
}

/// Issue 19: `--explain` for every principal kind — a certificate identity (the ACL's `user`
/// rules name it), a token with scopes (its scopes decide), a role of the policy store — with
/// the same exit status (0 allow, 1 deny).
#[test]
fn check_explain_answers_for_certificates_tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acl"), "user dev-001\ntopic write devices/dev-001/#\n").unwrap();
    let mut store = warden_policy::store::PolicyStore::default();
    store.roles.insert(
        "ops".into(),
        warden_policy::store::Role {
            rules: vec![warden_policy::store::Rule {
                id: "read".into(),
                action: warden_policy::store::RuleAction::Subscribe,
                topic: "ops/#".into(),
                max_qos: 2,
                retain: true,
                effect: warden_policy::store::Effect::Allow,
                priority: 0,
                source: Vec::new(),
            }],
            ..Default::default()
        },
    );
    std::fs::write(dir.path().join("policy.json"), store.to_json()).unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n[authz]\nacl_file = \"acl\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str], code: i32| {
        let mut a = vec!["check", "--config", cfg.to_str().unwrap(), "--explain"];
        a.extend_from_slice(args);
        let out = warden(&a);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string()
    };
    let line = run(&["--cert", "dev-001", "publish", "devices/dev-001/temp"], 0);
    assert!(line.contains(":2: topic write devices/dev-001/#") && line.contains("certificate identity"), "{line}");
    run(&["--cert", "dev-001", "publish", "devices/dev-002/temp"], 1);
    let line = run(&["--token", "dev-9", "--scope", "mqtt:pub:telemetry/dev-9/#", "publish", "telemetry/dev-9/t"], 0);
    assert!(line.contains("scopes"), "{line}");
    run(&["--token", "dev-9", "--scope", "mqtt:pub:telemetry/dev-9/#", "publish", "telemetry/dev-8/t"], 1);
    let line = run(&["--role", "ops", "subscribe", "ops/alerts"], 0);
    assert!(line.contains("store:ops/read"), "{line}");
    run(&["--role", "ops", "subscribe", "secrets/#"], 1);
}

/// Issue 24: `worker_threads` sets the threads that run connections (the start-up log shows
/// the number tokio runs with); a real client (rumqttc) is served by a one-thread broker, and
/// without the key the broker runs one per core.
#[tokio::test]
async fn worker_threads_sets_the_runtime_and_a_one_thread_broker_serves_clients() {
    async fn start(extra: &str) -> (std::process::Child, std::net::SocketAddr, usize, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("w.toml");
        std::fs::write(
            &cfg,
            format!(
                "{extra}data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let rx = warden_testkit::stderr_lines(&mut child);
        let (addr, before) = warden_testkit::mqtt_listen_address(&rx, Duration::from_secs(20));
        let workers = before
            .iter()
            .find_map(|l| l.split("worker_threads=").nth(1))
            .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .expect("the start-up line names worker_threads");
        (child, addr, workers, dir)
    }

    let (mut one, addr, workers, _dir) = start("worker_threads = 1\n").await;
    assert_eq!(workers, 1);
    let mut opts = rumqttc::MqttOptions::new("wt-one", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client.subscribe("t/one", rumqttc::QoS::AtLeastOnce).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.poll().await.unwrap() {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    client.publish("t/one", rumqttc::QoS::AtLeastOnce, false, "hello").await.unwrap();
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => break p,
                _ => {}
            }
        }
    })
    .await
    .expect("the message comes back through the one-thread broker");
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("t/one", &b"hello"[..]));
    one.kill().unwrap();
    one.wait().unwrap();

    let (mut default, _, workers, _dir2) = start("").await;
    assert_eq!(workers, std::thread::available_parallelism().map_or(1, |n| n.get()), "one per core by default");
    default.kill().unwrap();
    default.wait().unwrap();
}
