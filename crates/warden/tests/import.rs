//! `warden import` (issue 19, "a way in from Mosquitto") with the real binary and the real
//! broker: a Mosquitto dynamic-security JSON imported into the policy store keeps the clients'
//! PBKDF2-SHA512 passwords (a wrong one refused), their roles, groups and ACLs (allowed and
//! denied operations, with a real MQTT exchange); a mosquitto.conf converts into a warden.toml
//! that `warden check` accepts; refusals: no --config, a malformed document.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use bytes::Bytes;
use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use warden_testkit::{connect_packet, publish, RawClient, Recv, TestBroker, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_warden");
/// `mosquitto_passwd -b -c pw7 alice 'correct horse'` (PBKDF2-SHA512, 101 iterations), split
/// as the dynamic-security plugin stores it.
const SALT: &str = "p6EhehGAcOHnO3xT";
const HASH: &str = "Q4qbonZb8IfjArob96nKUdbwJzB0e27kDJOYqfG1dI+KVur0a0thHUSxruOUDfPWYwiy5m2rajrIOXyv2+QOhw==";
const PW: &str = "correct horse";

fn dynsec() -> String {
    let client = |name: &str, roles: &str| {
        format!(
            r#"{{"username": "{name}", "password": "{HASH}", "salt": "{SALT}", "iterations": 101, "roles": [{roles}]}}"#
        )
    };
    format!(
        r#"{{"defaultACLAccess": {{"publishClientSend": false, "publishClientReceive": true, "subscribe": false, "unsubscribe": true}},
            "clients": [{}, {}],
            "groups": [{{"groupname": "ops", "roles": [{{"rolename": "reader"}}], "clients": [{{"username": "dyn-ops-1"}}]}}],
            "roles": [{{"rolename": "sensor", "acls": [{{"acltype": "publishClientSend", "topic": "sensors/dyn-dev-1/#", "priority": 0, "allow": true}}]}},
                      {{"rolename": "reader", "acls": [{{"acltype": "subscribePattern", "topic": "sensors/#", "priority": 0, "allow": true}}]}}]}}"#,
        client("dyn-dev-1", r#"{"rolename": "sensor"}"#),
        client("dyn-ops-1", ""),
    )
}

fn login(id: &str, user: &str, pw: &str) -> mqtt_codec::Connect {
    let mut c = connect_packet(Protocol::V5, id, true);
    c.username = Some(user.into());
    c.password = Some(Bytes::copy_from_slice(pw.as_bytes()));
    c
}

async fn connack(b: &TestBroker, c: mqtt_codec::Connect) -> (RawClient, ReasonCode) {
    match RawClient::connect(b.addr(), c).await {
        (c, Recv::Packet(Packet::Connack(a))) => (c, a.reason_code),
        (_, other) => panic!("no CONNACK: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynsec_document_imports_users_groups_and_acls_that_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dynamic-security.json");
    std::fs::write(&file, dynsec()).unwrap();
    let cfg = dir.path().join("import.toml");
    std::fs::write(&cfg, format!("data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n", dir.path().display()))
        .unwrap();
    // Without --config: refused, saying what it needs.
    let out = Command::new(BIN).args(["import", "mosquitto-dynsec"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out =
        Command::new(BIN).args(["import", "mosquitto-dynsec"]).arg(&file).arg("--config").arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("user dyn-dev-1"));

    let b = TestBroker::from_toml_in(dir, "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n").await;
    assert_eq!(connack(&b, login("w", "dyn-dev-1", "wrong")).await.1, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let (mut dev, rc) = connack(&b, login("dev", "dyn-dev-1", PW)).await;
    assert_eq!(rc, ReasonCode::SUCCESS, "the Mosquitto password verifies");
    let (mut ops, rc) = connack(&b, login("ops", "dyn-ops-1", PW)).await;
    assert_eq!(rc, ReasonCode::SUCCESS);
    assert_eq!(ops.subscribe(1, "sensors/#", QoS::AtLeastOnce).await, vec![ReasonCode(1)], "the group's role");
    assert_eq!(ops.subscribe(2, "secrets/#", QoS::AtLeastOnce).await, vec![ReasonCode::NOT_AUTHORIZED]);
    dev.send(&publish("sensors/dyn-dev-1/temp", QoS::AtLeastOnce, 1, b"21")).await;
    assert!(matches!(dev.recv().await, Recv::Packet(Packet::PubAck(a)) if a.reason_code.is_success()));
    let got = ops.expect_publish().await;
    assert_eq!(&got.payload[..], b"21", "received: defaultACLAccess publishClientReceive = true");
    dev.send(&publish("sensors/other/temp", QoS::AtLeastOnce, 2, b"forged")).await;
    match dev.recv_within(WAIT).await {
        Recv::Packet(Packet::PubAck(a)) => assert!(!a.reason_code.is_success()),
        Recv::Packet(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected a refusal, got {other:?}"),
    }
    b.stop().await;
}

#[test]
fn a_malformed_dynsec_document_is_refused_and_the_store_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.json");
    std::fs::write(
        &file,
        r#"{"clients": [{"username": "a", "password": "short", "salt": "c2FsdA==", "iterations": 1}]}"#,
    )
    .unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::write(&cfg, format!("data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n", dir.path().display()))
        .unwrap();
    let out =
        Command::new(BIN).args(["import", "mosquitto-dynsec"]).arg(&file).arg("--config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("client a"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("policy.json").exists(), "nothing written");
}

#[test]
fn a_mosquitto_conf_converts_into_a_config_warden_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let h = warden_policy::password::hash_password(b"pw");
    std::fs::write(dir.path().join("passwd"), format!("m-user:{h}\n")).unwrap();
    std::fs::write(dir.path().join("acl"), "user m-user\ntopic readwrite m/#\n").unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        "listener 1883\nallow_anonymous false\npassword_file passwd\nacl_file acl\nautosave_interval 60\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["import", "mosquitto-conf"]).arg(&conf).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let toml_text = String::from_utf8(out.stdout).unwrap();
    assert!(toml_text.contains("0.0.0.0:1883") && toml_text.contains("#   autosave_interval 60"), "{toml_text}");
    let gen = dir.path().join("warden.toml");
    std::fs::write(&gen, toml_text).unwrap();
    let check = Command::new(BIN).args(["check", "--config"]).arg(&gen).output().unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
