//! The third-party look-up (`[auth.http]`) wired into the real broker: who decides, the
//! CONNACK codes, and that the service's grants bind what the client may do.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use mqtt_codec::{Connack, Connect, Packet, Protocol, QoS, ReasonCode};
use serde_json::{json, Value};
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker, WAIT};

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
    // fail_open without a fallback_role: nothing to grant, so still refused.
    let b = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = false\n[auth.http]\nurl = \"{url}\"\ntimeout = \"1s\"\nfail_open = true\n"
    ))
    .await;
    assert_eq!(connack(&b, creds(Protocol::V5, "a", "ann", "annpw")).await, ReasonCode::SERVER_UNAVAILABLE);
    assert_eq!(connack(&b, creds(Protocol::V311, "a", "ann", "annpw")).await, ReasonCode(0x03));
    // With one, the client is admitted (as a fallback principal: see the tests below).
    let b = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = false\n[auth.http]\nurl = \"{url}\"\ntimeout = \"1s\"\nfail_open = true\n\
         fallback_role = \"degraded\"\n"
    ))
    .await;
    assert_eq!(connack(&b, creds(Protocol::V5, "a", "ann", "annpw")).await, ReasonCode(0));
}

// ------------------------------------------------------------------------------------------
// Issue 17 item 5: the broker's own overload is Server busy, and fail_open grants only the
// configured fallback role — never another principal's grants or session. Real clients
// (rumqttc, MQTT 5 and 3.1.1).
// ------------------------------------------------------------------------------------------

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;

/// A look-up service the test switches: `UP` allows `<user>`/`<user>-pw` (no grants of its
/// own: the ACL file names the users), `DOWN` answers 500, `HANG` holds each request until the
/// test releases it (then denies).
struct Switch {
    mode: std::sync::atomic::AtomicU8,
    hanging: tokio::sync::watch::Sender<usize>,
    release: tokio::sync::Semaphore,
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const HANG: u8 = 2;

async fn switched(State(s): State<Arc<Switch>>, Json(req): Json<Value>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match s.mode.load(Ordering::SeqCst) {
        DOWN => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        HANG => {
            s.hanging.send_modify(|n| *n += 1);
            s.release.acquire().await.expect("open").forget();
            Json(json!({"allow": false})).into_response()
        }
        _ => {
            let user = req["username"].as_str().unwrap_or("");
            Json(json!({"allow": !user.is_empty() && req["password"] == format!("{user}-pw")})).into_response()
        }
    }
}

async fn start_switch(mode: u8) -> (String, Arc<Switch>) {
    let s = Arc::new(Switch {
        mode: mode.into(),
        hanging: tokio::sync::watch::channel(0).0,
        release: tokio::sync::Semaphore::new(0),
    });
    let app = axum::Router::new().route("/auth", axum::routing::post(switched)).with_state(s.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, s)
}

const ADMIN_TOKEN: &str = "admin token of the fail-open tests";
const ACL: &str = "topic read public/#\nuser dev-001\ntopic readwrite devices/dev-001/#\n\
                   user dev-002\ntopic readwrite devices/dev-002/#\n";

/// A broker with the look-up at `url`, `fail_open` with the `degraded` role (it may subscribe
/// to `status/#`, nothing else), the ACL above and `on_deny = "drop"`.
async fn fail_open_broker(url: &str, extra: &str) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acl"), ACL).unwrap();
    let b = TestBroker::from_toml_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n\
             [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = '{}'\n\
             [auth]\nallow_anonymous = false\n\
             [auth.http]\nurl = \"{url}\"\nfail_open = true\nfallback_role = \"degraded\"\ncache_ttl = 0\n{extra}\
             [authz]\nacl_file = \"{{dir}}/acl\"\non_deny = \"drop\"\n",
            warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes())
        ),
    )
    .await;
    let url = format!("http://{}/admin/roles", b.server.http_addr.unwrap());
    let role = json!({"name": "degraded", "rules": [{"id": "s", "action": "subscribe", "topic": "status/#",
        "max_qos": 1, "retain": false, "effect": "allow"}]});
    let status = tokio::task::spawn_blocking(move || {
        match ureq::post(&url).set("Authorization", &format!("Bearer {ADMIN_TOKEN}")).send_string(&role.to_string()) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r.status(),
            Err(e) => panic!("{e}"),
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 201);
    b
}

/// A rumqttc MQTT 5 client whose event loop runs in a task.
struct C5 {
    client: rumqttc::v5::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>>,
}

/// Options: `persistent` asks for Clean Start 0 and a 300 s session.
fn opts5(b: &TestBroker, id: &str, user: &str, pw: &str, persistent: bool) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", b.port());
    o.set_credentials(user, pw);
    if persistent {
        o.set_clean_start(false);
        let mut p = o.connect_properties().unwrap_or_default();
        p.session_expiry_interval = Some(300);
        o.set_connect_properties(p);
    }
    o
}

impl C5 {
    /// Connect: the CONNACK, or the refusal's code.
    async fn connect(o: rumqttc::v5::MqttOptions) -> (C5, Result<p5::ConnAck, p5::ConnectReturnCode>) {
        let (client, mut ev) = rumqttc::v5::AsyncClient::new(o, 16);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let e = ev.poll().await;
                let end = e.is_err();
                if tx.send(e).is_err() || end {
                    break;
                }
            }
        });
        let mut c = C5 { client, rx };
        let ack = tokio::time::timeout(WAIT, async {
            loop {
                match c.rx.recv().await.expect("event loop") {
                    Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a))) => return Ok(a),
                    Ok(_) => {}
                    Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Err(code),
                    Err(e) => panic!("rumqttc: {e:?}"),
                }
            }
        })
        .await
        .expect("CONNACK in time");
        (c, ack)
    }

    /// Connect; the CONNACK must be a success.
    async fn connected(o: rumqttc::v5::MqttOptions) -> (C5, p5::ConnAck) {
        let (c, ack) = C5::connect(o).await;
        (c, ack.expect("connected"))
    }

    /// The first incoming packet, or the error that ended the connection, `f` picks.
    async fn next<T>(
        &mut self,
        mut f: impl FnMut(Result<&p5::Packet, &rumqttc::v5::ConnectionError>) -> Option<T>,
    ) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.rx.recv().await.expect("event loop") {
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        if let Some(v) = f(Ok(&p)) {
                            return v;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => match f(Err(&e)) {
                        Some(v) => return v,
                        None => panic!("connection ended: {e:?}"),
                    },
                }
            }
        })
        .await
        .expect("in time")
    }

    /// SUBACK reason (a refusal ends a rumqttc v5 connection: this client is then done).
    async fn subscribe(&mut self, filter: &str) -> p5::SubscribeReasonCode {
        self.client.subscribe(filter, Q5::AtLeastOnce).await.unwrap();
        self.next(|p| match p {
            Ok(p5::Packet::SubAck(s)) => Some(s.return_codes[0]),
            Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::SubFail { reason })) => Some(*reason),
            _ => None,
        })
        .await
    }

    /// PUBACK reason of a QoS 1 publish (a refusal ends a rumqttc v5 connection).
    async fn publish(&mut self, topic: &str) -> p5::PubAckReason {
        self.client.publish(topic, Q5::AtLeastOnce, false, "x").await.unwrap();
        self.next(|p| match p {
            Ok(p5::Packet::PubAck(a)) => Some(a.reason),
            Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::PubAckFail { reason })) => {
                Some(*reason)
            }
            _ => None,
        })
        .await
    }
}

const GRANTED: p5::SubscribeReasonCode = p5::SubscribeReasonCode::Success(Q5::AtLeastOnce);

fn pub_ok(r: p5::PubAckReason) -> bool {
    matches!(r, p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers)
}

/// What a rumqttc MQTT 3.1.1 client gets for its CONNECT.
async fn connack3(b: &TestBroker, id: &str, user: &str, pw: &str) -> rumqttc::ConnectReturnCode {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", b.port());
    o.set_credentials(user, pw);
    let (_c, mut ev) = rumqttc::AsyncClient::new(o, 10);
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => return a.code,
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("rumqttc v3: {e:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time")
}

/// The attack: bad CONNECTs fill the broker's look-up slots; meanwhile a wrong password
/// for dev-001 must get Server busy (v5 0x89, v3 0x03) — never CONNACK 0 — even with fail_open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lookup_cap_is_server_busy_never_fail_open() {
    let (url, svc) = start_switch(HANG).await;
    let b = fail_open_broker(&url, "timeout = \"20s\"\nmax_in_flight = 2\n").await;
    let mut hanging = svc.hanging.subscribe();
    let addr = b.addr();
    let held: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(async move {
                let (_c, r) = RawClient::connect(addr, creds(Protocol::V5, &format!("bad-{i}"), "x", "bad")).await;
                r
            })
        })
        .collect();
    hanging.wait_for(|n| *n == 2).await.unwrap();

    let (_c, r) = C5::connect(opts5(&b, "dev-001", "dev-001", "wrong", false)).await;
    assert_eq!(r.err(), Some(p5::ConnectReturnCode::ServerBusy), "wrong password while the slots are full");
    let (_c, r) = C5::connect(opts5(&b, "dev-001", "dev-001", "dev-001-pw", false)).await;
    assert_eq!(r.err(), Some(p5::ConnectReturnCode::ServerBusy), "the right one is not judged either");
    assert_eq!(connack3(&b, "dev-001", "dev-001", "wrong").await, rumqttc::ConnectReturnCode::ServiceUnavailable);
    assert_eq!(*hanging.borrow(), 2, "the service was not asked about them");
    assert_eq!(b.server.broker.stats.limits.lookup_busy.load(Ordering::Relaxed), 3);

    // The held look-ups end (the service denies them): the slots are free again.
    svc.release.add_permits(2);
    for h in held {
        assert!(matches!(h.await.unwrap(), Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode(0x86)));
    }
    svc.mode.store(UP, Ordering::SeqCst);
    let (_c, ack) = C5::connected(opts5(&b, "dev-001", "dev-001", "dev-001-pw", false)).await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
}

/// With the service down, a wrong password for dev-001 gets in only as a fallback principal:
/// the `degraded` role's grants (not dev-001's ACL lines, not the file's general lines), no
/// session kept, and dev-001's own session can be neither taken over nor resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_grants_the_fallback_role_only_never_another_principals_grants_or_session() {
    let (url, svc) = start_switch(UP).await;
    let b = fail_open_broker(&url, "timeout = \"2s\"\n").await;

    // dev-001 itself, verified: a persistent session with a subscription its ACL lines allow.
    let (mut real, ack) = C5::connected(opts5(&b, "dev-001", "dev-001", "dev-001-pw", true)).await;
    assert!(!ack.session_present);
    assert_eq!(real.subscribe("devices/dev-001/#").await, GRANTED);

    svc.mode.store(DOWN, Ordering::SeqCst);
    // Its client id: refused (v5 0x87 / v3 0x05), and the live connection is untouched.
    for persistent in [true, false] {
        let (_c, r) = C5::connect(opts5(&b, "dev-001", "dev-001", "wrong", persistent)).await;
        assert_eq!(r.err(), Some(p5::ConnectReturnCode::NotAuthorized), "persistent {persistent}");
    }
    assert_eq!(connack3(&b, "dev-001", "dev-001", "wrong").await, rumqttc::ConnectReturnCode::NotAuthorized);
    assert!(pub_ok(real.publish("devices/dev-001/alive").await), "dev-001's connection lives on");

    // Another client id: admitted, with no session kept (expiry 0 whatever it asked for).
    let fb = || opts5(&b, "intruder", "dev-001", "wrong", true);
    let (mut f, ack) = C5::connected(fb()).await;
    assert_eq!(ack.properties.as_ref().and_then(|p| p.session_expiry_interval), Some(0));
    assert_eq!(f.subscribe("status/#").await, GRANTED, "the fallback role");
    for denied in ["devices/dev-001/#", "public/#"] {
        let (mut f, _) = C5::connected(fb()).await;
        assert_eq!(f.subscribe(denied).await, p5::SubscribeReasonCode::NotAuthorized, "{denied}");
    }
    let (mut f2, _) = C5::connected(fb()).await;
    assert_eq!(f2.publish("devices/dev-001/x").await, p5::PubAckReason::NotAuthorized);

    // dev-001's session survives and resumes once the service is back.
    real.client.disconnect().await.unwrap();
    real.next(|p| p.is_err().then_some(())).await;
    svc.mode.store(UP, Ordering::SeqCst);
    let (_real, ack) = C5::connected(opts5(&b, "dev-001", "dev-001", "dev-001-pw", true)).await;
    assert!(ack.session_present, "dev-001's session was kept for it");
}

/// A fallback client cannot squat a client id: once the service is back, the verified owner
/// takes it over (the fallback connection ends with 0x8E) and gets a fresh session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_principal_takes_its_client_id_back_from_a_fallback_client() {
    let (url, svc) = start_switch(DOWN).await;
    let b = fail_open_broker(&url, "timeout = \"2s\"\n").await;
    let (mut squatter, _) = C5::connected(opts5(&b, "dev-002", "dev-002", "guess", true)).await;
    assert_eq!(squatter.subscribe("status/#").await, GRANTED);
    svc.mode.store(UP, Ordering::SeqCst);
    let (_owner, ack) = C5::connected(opts5(&b, "dev-002", "dev-002", "dev-002-pw", true)).await;
    assert!(!ack.session_present, "nothing of the fallback session is handed on");
    let reason = squatter
        .next(|p| match p {
            Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                reason_code,
                ..
            })) => Some(*reason_code),
            _ => None,
        })
        .await;
    assert_eq!(reason, p5::DisconnectReasonCode::SessionTakenOver);
}

/// A fallback client only claims its name: a client id reserved for a known principal (here an
/// OAuth client's id) is refused to it even when it claims that very name (0x85).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_client_cannot_use_a_reserved_client_id() {
    let (url, _svc) = start_switch(DOWN).await;
    let b = fail_open_broker(
        &url,
        &format!(
            "timeout = \"2s\"\n[oauth]\n[[oauth.client]]\nid = \"dev-003\"\nsecret_hash = '{}'\n",
            warden_policy::password::hash_password(b"x")
        ),
    )
    .await;
    let (_c, r) = C5::connect(opts5(&b, "dev-003", "dev-003", "guess", false)).await;
    assert_eq!(r.err(), Some(p5::ConnectReturnCode::ClientIdentifierNotValid));
    // Control: the same claim with another client id is admitted (as a fallback principal).
    let (_c, r) = C5::connect(opts5(&b, "dev-003-x", "dev-003", "guess", false)).await;
    assert!(r.is_ok());
}
