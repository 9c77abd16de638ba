//! Log injection (SPEC §9: "control characters in peer-supplied strings are escaped"): a client
//! id carrying a newline, forged log text and a terminal escape, sent in a raw MQTT 3.1.1
//! CONNECT, once with a wrong password and once with the right one followed by a denied
//! SUBSCRIBE, never starts a log line of its own nor puts a raw ESC in the log — in the text
//! format (the formatter's default field handling, so that the escaping at the call sites is
//! what is tested) and in JSON.
//!
//! The subscriber is set for the test's thread; `#[tokio::test]` runs the broker's tasks on that
//! same thread, so every line the broker logs is captured.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bytes::Bytes;
use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker, WAIT};

const FORGED: &str = "FORGED INFO warden: connection accepted client_id=admin";
const PW: &str = "right-password";

fn evil_client_id() -> String {
    format!("x\n{FORGED}\u{1b}[2J\r\n{FORGED}")
}

/// The wrong-password attempt, the right one and a denied SUBSCRIBE.
async fn drive_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let hash = warden_policy::password::hash_password(PW.as_bytes());
    std::fs::write(dir.path().join("passwd"), format!("ann:{hash}\n")).unwrap();
    std::fs::write(dir.path().join("acl"), "user ann\ntopic readwrite ann/#\n").unwrap();
    let b = TestBroker::from_toml_in(
        dir,
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n\
         [auth]\npassword_file = \"{dir}/passwd\"\n[authz]\nacl_file = \"{dir}/acl\"\non_deny = \"drop\"\n",
    )
    .await;
    let login = |pw: &str| {
        let mut c = connect_packet(Protocol::V311, &evil_client_id(), true);
        c.username = Some("ann".into());
        c.password = Some(Bytes::copy_from_slice(pw.as_bytes()));
        c
    };
    match RawClient::connect(b.addr(), login("wrong")).await.1 {
        Recv::Packet(Packet::Connack(a)) => assert_ne!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    let (mut c, r) = RawClient::connect(b.addr(), login(PW)).await;
    assert!(matches!(&r, Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode::SUCCESS), "{r:?}");
    let codes = c.subscribe(1, "secret/#", QoS::AtLeastOnce).await;
    assert!(!codes[0].is_success(), "the subscription is denied");
    c.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(ReasonCode::SUCCESS))).await;
    assert!(matches!(c.recv_within(WAIT).await, Recv::Closed));
    b.stop().await;
}

fn check(log: &str) {
    assert!(!log.contains('\u{1b}'), "a raw ESC reached the log:\n{log}");
    assert!(!log.contains('\r'), "a raw CR reached the log:\n{log}");
    for line in log.lines() {
        assert!(!line.trim_start_matches(['{', '"']).starts_with("FORGED"), "forged line: {line:?}\n{log}");
    }
}

#[tokio::test]
async fn peer_strings_cannot_forge_text_log_lines() {
    let buf = warden_testkit::LogBuf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    drive_the_broker().await;
    let log = buf.text();
    check(&log);
    for what in ["authentication refused", "authorization deny", "client connected"] {
        let line = log.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what:?} line:\n{log}"));
        assert!(line.contains(r"x\nFORGED INFO"), "the client id is logged, escaped: {line}");
    }
}

#[tokio::test]
async fn peer_strings_cannot_forge_json_log_lines() {
    let buf = warden_testkit::LogBuf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    drive_the_broker().await;
    let log = buf.text();
    check(&log);
    let mut refused = false;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["message"] == "authentication refused" {
            refused = true;
            let id = v["fields"]["client_id"].as_str().unwrap();
            assert!(id.starts_with(r"x\nFORGED") && !id.contains('\n'), "{id:?}");
        }
    }
    assert!(refused, "{log}");
}
