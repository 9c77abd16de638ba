//! Password authentication and identity binding against the real broker (SPEC §3, §4).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use mqtt_codec::{Connack, Connect, Packet, Protocol, QoS, ReasonCode};
use warden_policy::password::hash_password;
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker};

/// A `$7$` line written by the real `mosquitto_passwd -b FILE ann annpw` (Mosquitto 2.0).
const MOSQ_ANN: &str = include_str!("fixtures/mosquitto_passwd_ann");

fn with_creds(mut c: Connect, user: &str, password: &str) -> Connect {
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

async fn broker_with_users() -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, format!("{}ben:{}\n", MOSQ_ANN.trim_end().to_owned() + "\n", hash_password(b"benpw")))
        .unwrap();
    let b = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
        passwd.display()
    ))
    .await;
    std::mem::forget(dir); // the file must outlive the broker for reload tests
    b
}

async fn connack(b: &TestBroker, c: Connect) -> ReasonCode {
    let (_c, r) = RawClient::connect(b.addr(), c).await;
    match r {
        Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2id_and_mosquitto_users_are_accepted() {
    let b = broker_with_users().await;
    for v in [Protocol::V31, Protocol::V311, Protocol::V5] {
        assert_eq!(connack(&b, with_creds(connect_packet(v, "a", true), "ann", "annpw")).await, ReasonCode(0));
        assert_eq!(connack(&b, with_creds(connect_packet(v, "b", true), "ben", "benpw")).await, ReasonCode(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_the_same_whether_the_user_exists_or_not() {
    let b = broker_with_users().await;
    // Wrong password and unknown user: v3 0x04, v5 0x86 — indistinguishable.
    for (v, code) in
        [(Protocol::V311, ReasonCode(0x04)), (Protocol::V5, ReasonCode(0x86)), (Protocol::V31, ReasonCode(0x04))]
    {
        assert_eq!(connack(&b, with_creds(connect_packet(v, "x", true), "ann", "Wr0ng")).await, code);
        assert_eq!(connack(&b, with_creds(connect_packet(v, "x", true), "nobody", "Wr0ng")).await, code);
        assert_eq!(connack(&b, with_creds(connect_packet(v, "x", true), "ann", "")).await, code);
    }
    // Anonymous: v3 0x05, v5 0x87.
    assert_eq!(connack(&b, connect_packet(Protocol::V311, "anon", true)).await, ReasonCode(0x05));
    assert_eq!(connack(&b, connect_packet(Protocol::V5, "anon", true)).await, ReasonCode(0x87));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_reloads_and_a_broken_file_keeps_the_old_one() {
    let b = broker_with_users().await;
    let passwd = b.server.auth.password_path().expect("password file configured").to_owned();
    std::fs::write(&passwd, format!("cat:{}\n", hash_password(b"catpw"))).unwrap();
    b.server.reload();
    assert_eq!(connack(&b, with_creds(connect_packet(Protocol::V5, "c", true), "cat", "catpw")).await, ReasonCode(0));
    assert_eq!(
        connack(&b, with_creds(connect_packet(Protocol::V5, "c", true), "ben", "benpw")).await,
        ReasonCode(0x86)
    );
    std::fs::write(&passwd, "this line is not a password entry\n").unwrap();
    b.server.reload();
    assert_eq!(connack(&b, with_creds(connect_packet(Protocol::V5, "c", true), "cat", "catpw")).await, ReasonCode(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principal_cannot_take_over_a_session() {
    // SPEC §3: a client id belongs to the principal holding its session. A CONNECT by another
    // principal is refused (v5 0x87, v3 0x05) and leaves the live session untouched: no kick,
    // no will, queued messages kept.
    let b = broker_with_users().await;
    let mut cp = with_creds(connect_packet(Protocol::V5, "device-1", false), "ann", "annpw");
    cp.properties.session_expiry_interval = Some(300);
    let (mut ann, _) = connected(b.addr(), cp.clone()).await;
    ann.subscribe(1, "cmd/device-1", QoS::AtLeastOnce).await;

    let mut thief = with_creds(connect_packet(Protocol::V5, "device-1", false), "ben", "benpw");
    thief.will = Some(mqtt_codec::LastWill {
        topic: mqtt_codec::TopicName::new("cmd/device-1").unwrap(),
        payload: bytes::Bytes::from_static(b"thief-will"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    assert_eq!(connack(&b, thief.clone()).await, ReasonCode(0x87));
    thief.protocol = Protocol::V311;
    thief.properties = Default::default();
    assert_eq!(connack(&b, thief).await, ReasonCode(0x05));

    // Ann is still connected and still receives on her session.
    let (mut p, _) = connected(b.addr(), with_creds(connect_packet(Protocol::V311, "pub", true), "ben", "benpw")).await;
    p.send(&publish("cmd/device-1", QoS::AtLeastOnce, 1, b"for-ann")).await;
    let got = ann.expect_publish().await;
    assert_eq!(got.payload.as_ref(), b"for-ann", "no will from the refused CONNECT, session intact");
    ann.send(&Packet::PubAck(mqtt_codec::PubAck::new(got.packet_id))).await;

    // Ann's session survives her going offline, and ben still cannot claim it.
    drop(ann);
    p.send(&publish("cmd/device-1", QoS::AtLeastOnce, 2, b"queued")).await;
    let thief = with_creds(connect_packet(Protocol::V5, "device-1", false), "ben", "benpw");
    assert_eq!(connack(&b, thief).await, ReasonCode(0x87));
    let (mut ann, ack) = connected(b.addr(), cp).await;
    assert!(ack.session_present);
    assert_eq!(ann.expect_publish().await.payload.as_ref(), b"queued");
    assert_eq!(ann.recv_within(Duration::from_millis(200)).await, Recv::Timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_are_one_principal_where_allowed() {
    // SPEC §3: anonymous clients can resume and take over each other's client ids.
    let b = TestBroker::start().await;
    let (_a, _) = connected(b.addr(), connect_packet(Protocol::V5, "shared-id", false)).await;
    let (_b, ack) = connected(b.addr(), connect_packet(Protocol::V5, "shared-id", false)).await;
    assert!(ack.session_present);
}
