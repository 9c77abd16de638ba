//! SIGHUP reloads the configuration file itself (SPEC §9: "SIGHUP reloads every file the
//! config names ... and the config file itself; a setting that needs a restart is named in a
//! log line, never silently ignored"; issue 19: "SIGHUP silently ignores edits to warden.toml
//! itself (`on_deny` changed, nothing said)"). `Server::reload` is what the SIGHUP handler runs.
//!
//! The subscriber is set for the test's thread; `#[tokio::test]` runs the broker's tasks and
//! the reload on that same thread, so every line is captured.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use warden_testkit::{connect_packet, connected, publish, Recv, TestBroker, WAIT};

const CONFIG: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\nallow_anonymous = true\n\
                      [authz]\nacl_file = \"{dir}/acl\"\non_deny = \"disconnect\"\n";

#[tokio::test]
async fn on_deny_applies_live_and_restart_only_settings_are_named() {
    let buf = warden_testkit::LogBuf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acl"), "topic readwrite allowed/#\n").unwrap();
    let b = TestBroker::from_toml_in(dir, CONFIG).await;
    let cfg_path = b.path("warden.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();

    // on_deny = "disconnect": a denied QoS 1 PUBLISH ends the connection (v5 DISCONNECT 0x87).
    let (mut c, _) = connected(b.addr(), connect_packet(Protocol::V5, "denied-1", true)).await;
    c.send(&publish("forbidden/x", QoS::AtLeastOnce, 1, b"x")).await;
    let packets = c.expect_closed_within(WAIT).await;
    assert!(packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::NOT_AUTHORIZED)));

    // Edited to "drop", SIGHUP: the same PUBLISH gets PUBACK 0x87 and the connection stays.
    std::fs::write(&cfg_path, text.replace("on_deny = \"disconnect\"", "on_deny = \"drop\"")).unwrap();
    b.server.reload();
    let (mut c, _) = connected(b.addr(), connect_packet(Protocol::V5, "denied-2", true)).await;
    c.send(&publish("forbidden/x", QoS::AtLeastOnce, 1, b"x")).await;
    match c.recv_within(WAIT).await {
        Recv::Packet(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv_within(WAIT).await, Recv::Packet(Packet::PingResp), "still connected");
    assert!(buf.text().contains("on_deny"), "the applied change is logged:\n{}", buf.text());

    // A listener's bind changed: not applied live, named in a warning with both addresses.
    let edited = std::fs::read_to_string(&cfg_path).unwrap().replacen("127.0.0.1:0", "127.0.0.1:1", 1);
    std::fs::write(&cfg_path, edited).unwrap();
    b.server.reload();
    let log = buf.text();
    let line = log.lines().find(|l| l.contains("apply only after a restart")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("bind") && line.contains("127.0.0.1:1"), "{line}");

    // A file that no longer loads: said, and the running configuration stays.
    std::fs::write(&cfg_path, "[[listener]]\nbind = \"nonsense\"\n").unwrap();
    b.server.reload();
    assert!(buf.text().contains("configuration file not reloaded"), "{}", buf.text());
    let (mut c, _) = connected(b.addr(), connect_packet(Protocol::V5, "still-here", true)).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv_within(WAIT).await, Recv::Packet(Packet::PingResp));
    b.stop().await;
}
