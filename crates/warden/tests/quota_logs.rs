//! Issue 17: a quota's refusals are counted one by one and logged once per principal per
//! episode (log flooding is an attack too). On its own in this binary: the log is captured
//! with a thread-local subscriber, which a test running beside it on another thread could
//! race for the broker's log call sites.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::Ordering;

use bytes::Bytes;
use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use warden_testkit::{connect_packet, connected, RawClient, Recv, TestBroker};

/// A broker with user `m` (password `mpw`) and these `[limits]`.
async fn broker(limits: &str) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let hash = warden_policy::password::hash_password(b"mpw");
    std::fs::write(dir.path().join("passwd"), format!("m:{hash}\n")).unwrap();
    TestBroker::from_toml_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\npassword_file = \"{{dir}}/passwd\"\n\
             [limits]\n{limits}"
        ),
    )
    .await
}

fn v3_login(id: &str, user: &str, clean: bool) -> mqtt_codec::Connect {
    let mut c = connect_packet(Protocol::V311, id, clean);
    c.username = Some(user.into());
    c.password = Some(Bytes::from(format!("{user}pw")));
    c
}

/// 40 refused CONNECTs and 200 refused subscriptions of one
/// principal are counted one by one and logged once per quota (the shell still writes its one
/// line per refused connection, SPEC §9).
#[tokio::test]
async fn issue_17_refusals_are_counted_each_and_logged_once_per_episode() {
    let buf = warden_testkit::LogBuf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let b = broker("max_sessions_per_principal = 1\nmax_subscriptions_per_principal = 1\n").await;
    let (mut first, _) = connected(b.addr(), v3_login("m-0", "m", false)).await;
    for i in 1..=40 {
        let (_, r) = RawClient::connect(b.addr(), v3_login(&format!("m-{i}"), "m", false)).await;
        assert!(matches!(&r, Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode(0x03)), "{r:?}");
    }
    assert_eq!(first.subscribe(1, "a", QoS::AtMostOnce).await, vec![ReasonCode(0)]);
    for i in 0..200u16 {
        let refused = first.subscribe(i + 2, &format!("b/{i}"), QoS::AtMostOnce).await;
        assert_eq!(refused, vec![ReasonCode::V3_SUBACK_FAILURE]);
    }
    let limits = &b.server.broker.stats.limits;
    assert_eq!(limits.sessions_per_principal.load(Ordering::Relaxed), 40);
    assert_eq!(limits.subscriptions_per_principal.load(Ordering::Relaxed), 200);
    let log = buf.text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") && l.contains("quota exceeded:")).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}\n{}", &log[..log.len().min(3000)]);
    assert!(
        lines[0].contains("max_sessions_per_principal") && lines[0].contains("principal=\"user:m\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("max_subscriptions_per_principal") && lines[1].contains("client_id=\"m-0\""),
        "{}",
        lines[1]
    );
    b.stop().await;
}
