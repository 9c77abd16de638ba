//! The third-party look-up (`[auth.http]`) wired into the real broker: who decides, the
//! CONNACK codes, and that the service's grants bind what the client may do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use mqtt_codec::{Connack, Connect, Packet, Protocol, QoS, ReasonCode};
use serde_json::{json, Value};
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker};

/// A look-up service: `ann`/`annpw` is allowed with a scope; anyone else is refused.
async fn service(State(calls): State<Arc<AtomicUsize>>, Json(req): Json<Value>) -> Json<Value> {
    calls.fetch_add(1, Ordering::SeqCst);
    if req["username"] == "ann" && req["password"] == "annpw" {
        Json(json!({"allow": true, "scopes": ["mqtt:pub:ann/#", "mqtt:sub:ann/#"]}))
    } else {
        Json(json!({"allow": false}))
    }
}

async fn start_service() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route("/auth", axum::routing::post(service)).with_state(calls.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, calls)
}

fn creds(v: Protocol, cid: &str, user: &str, pw: &str) -> Connect {
    let mut c = connect_packet(v, cid, true);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(pw.as_bytes()));
    c
}

async fn connack(b: &TestBroker, c: Connect) -> ReasonCode {
    match RawClient::connect(b.addr(), c).await.1 {
        Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => reason_code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_decides_and_its_grants_bind() {
    let (url, calls) = start_service().await;
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, format!("local:{}\n", warden_policy::password::hash_password(b"localpw"))).unwrap();
    let b = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n[auth.http]\nurl = \"{url}\"\n",
        passwd.display()
    ))
    .await;
    assert_eq!(connack(&b, creds(Protocol::V5, "a", "ann", "annpw")).await, ReasonCode(0));
    assert_eq!(connack(&b, creds(Protocol::V5, "a", "ann", "wrong")).await, ReasonCode(0x86));
    assert_eq!(connack(&b, creds(Protocol::V311, "a", "eve", "x")).await, ReasonCode(0x04));
    let before = calls.load(Ordering::SeqCst);
    // A user of the password file is decided by the file, never sent to the service.
    assert_eq!(connack(&b, creds(Protocol::V5, "l", "local", "localpw")).await, ReasonCode(0));
    assert_eq!(calls.load(Ordering::SeqCst), before);

    // The grant binds: publish outside ann/# is denied (default on_deny: disconnect, 0x87).
    let (mut ann, _) = connected(b.addr(), creds(Protocol::V5, "ann-1", "ann", "annpw")).await;
    ann.send(&publish("ann/x", QoS::AtLeastOnce, 1, b"ok")).await;
    assert!(matches!(ann.recv().await, Recv::Packet(Packet::PubAck(a)) if a.reason_code == ReasonCode(0)));
    ann.send(&publish("bob/x", QoS::AtLeastOnce, 2, b"no")).await;
    let seen = ann.expect_closed_within(Duration::from_secs(3)).await;
    assert!(
        seen.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::NOT_AUTHORIZED)),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_fails_closed_unless_configured_open() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/auth", l.local_addr().unwrap());
    drop(l);
    let b = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = false\n[auth.http]\nurl = \"{url}\"\ntimeout = \"1s\"\n"
    ))
    .await;
    assert_eq!(connack(&b, creds(Protocol::V5, "a", "ann", "annpw")).await, ReasonCode::SERVER_UNAVAILABLE);
    assert_eq!(connack(&b, creds(Protocol::V311, "a", "ann", "annpw")).await, ReasonCode(0x03));
    let b = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = false\n[auth.http]\nurl = \"{url}\"\ntimeout = \"1s\"\nfail_open = true\n"
    ))
    .await;
    assert_eq!(connack(&b, creds(Protocol::V5, "a", "ann", "annpw")).await, ReasonCode(0));
}
