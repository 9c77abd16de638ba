//! The trust lifecycle against the real broker (SPEC §10, issue "Trust changes reach
//! everything", docs/trust-lifecycle.md): when a credential's standing changes, its live
//! connections end with v5 DISCONNECT 0x87 and their wills are discarded — delayed ones
//! included — while other credentials are untouched, and the credential is refused afterwards.
//!
//! Each test names the review's item it guards. The real client is rumqttc v5 (it must see
//! DISCONNECT 0x87 as a server disconnect, not a malformed packet); observers are the
//! testkit's raw clients. Absence of a will is shown without sleeping: once the connection is
//! gone from the broker, a marker published on the will topic arrives at the observer first
//! (deliveries to one subscriber keep their order), and no retained message is left.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use warden::config::ListenerProtocol;
use warden_policy::password::hash_password;
use warden_testkit::pki::{tls_connect, TestPki, Validity};
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker, WAIT};

const LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n";

/// A v5 CONNECT with a user name and password.
fn login(client_id: &str, user: &str, password: &str) -> mqtt_codec::Connect {
    let mut c = connect_packet(Protocol::V5, client_id, true);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::from(password.as_bytes().to_vec()));
    c
}

/// Wait until the server sends DISCONNECT (v5) and closes; its reason code.
async fn expect_disconnect(c: &mut RawClient) -> ReasonCode {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, c.recv()).await.expect("DISCONNECT in time") {
            Recv::Packet(Packet::Disconnect(d)) => return d.reason_code,
            Recv::Packet(_) => {}
            other => panic!("closed without DISCONNECT: {other:?}"),
        }
    }
}

/// The connection still answers a PINGREQ.
async fn assert_alive(c: &mut RawClient) {
    c.send(&Packet::PingReq).await;
    loop {
        match c.recv_within(WAIT).await {
            Recv::Packet(Packet::PingResp) => return,
            Recv::Packet(_) => {}
            other => panic!("connection not alive: {other:?}"),
        }
    }
}

/// Poll until no connection of `client_id` is live.
async fn wait_gone(b: &TestBroker, client_id: &str) {
    let deadline = Instant::now() + WAIT;
    while b.server.live.list().iter().any(|c| c.client_id == client_id) {
        assert!(Instant::now() < deadline, "{client_id} still live");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The session's end (and a will, if one were published) follows the registry's removal
    // on the connection's task; the connected-clients gauge is decremented there.
    let deadline = Instant::now() + WAIT;
    while b.server.live.list().len() as u64
        != b.server.broker.stats.clients_connected.load(std::sync::atomic::Ordering::Relaxed)
    {
        assert!(Instant::now() < deadline, "session of {client_id} not closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `observer` (subscribed to `topic`) gets `marker`, published now by `publisher`, with no will
/// before it; and nothing is retained on `topic` (a new subscriber's first message is the next
/// marker: a retained will would be queued for it at its SUBSCRIBE, before the marker).
async fn assert_no_will(b: &TestBroker, observer: &mut RawClient, publisher: &mut RawClient, topic: &str) {
    publisher.send(&publish(topic, QoS::AtMostOnce, 0, b"marker")).await;
    let p = observer.expect_publish().await;
    assert_eq!(&p.payload[..], b"marker", "a will arrived before the marker: {p:?}");
    let (mut fresh, _) = connected(b.addr(), login("fresh-observer", "watcher", "watcher-pw")).await;
    fresh.subscribe(1, topic, QoS::AtMostOnce).await;
    publisher.send(&publish(topic, QoS::AtMostOnce, 0, b"marker-2")).await;
    let p = fresh.expect_publish().await;
    assert_eq!(&p.payload[..], b"marker-2", "a retained will was left on the broker: {p:?}");
    assert_eq!(&observer.expect_publish().await.payload[..], b"marker-2");
}

/// The CONNACK reason code a CONNECT gets.
async fn connack(b: &TestBroker, c: mqtt_codec::Connect) -> ReasonCode {
    match RawClient::connect(b.addr(), c).await.1 {
        Recv::Packet(Packet::Connack(a)) => a.reason_code,
        other => panic!("no CONNACK: {other:?}"),
    }
}

// ------------------------------------------------------------------------------ tokens

const DEV: &str = "dev-001";
const DEV_SECRET: &str = "dev-001 secret, 32 bytes or so!!";

fn oauth_config() -> String {
    format!(
        "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n[oauth]\ntoken_ttl = \"15m\"\n\
         [[oauth.client]]\nid = \"{DEV}\"\nsecret_hash = '{}'\nscopes = [\"mqtt:pub:wills/#\"]\n\
         [auth]\npassword_file = \"passwd\"\n",
        hash_password(DEV_SECRET.as_bytes())
    )
}

/// A broker whose password file holds `watcher` (password `watcher-pw`) and `users`.
async fn broker_with_users(config: &str, users: &[&str]) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for u in std::iter::once(&"watcher").chain(users) {
        lines.push_str(&format!("{u}:{}\n", hash_password(format!("{u}-pw").as_bytes())));
    }
    std::fs::write(dir.path().join("passwd"), lines).unwrap();
    TestBroker::from_toml_in(dir, config).await
}

fn basic_auth() -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{DEV}:{DEV_SECRET}")))
}

fn http_base(b: &TestBroker) -> String {
    format!("http://{}", b.server.http_addr.expect("http listener"))
}

async fn post_form(url: String, params: Vec<(&'static str, String)>) -> u16 {
    tokio::task::spawn_blocking(move || {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match ureq::post(&url).set("Authorization", &basic_auth()).send_form(&params) {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{url}: {e}"),
        }
    })
    .await
    .unwrap()
}

async fn token(b: &TestBroker) -> String {
    let url = format!("{}/oauth/token", http_base(b));
    tokio::task::spawn_blocking(move || {
        let r = ureq::post(&url).set("Authorization", &basic_auth()).send_form(&[("grant_type", "client_credentials")]);
        let v: serde_json::Value = r.expect("token").into_json().unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    })
    .await
    .unwrap()
}

/// A rumqttc v5 client of dev-001 with `token`, a retained QoS 1 will on `topic` (delayed by
/// `delay` seconds, session expiry 300 s), connected.
async fn rumqttc_with_will(b: &TestBroker, id: &str, token: &str, topic: &str, delay: u32) -> rumqttc::v5::EventLoop {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", b.port());
    o.set_credentials(DEV, token);
    let props = p5::LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    o.set_last_will(p5::LastWill::new(topic, b"will".to_vec(), QoS5::AtLeastOnce, true, Some(props)));
    let cp = p5::ConnectProperties { session_expiry_interval: Some(300), ..Default::default() };
    o.set_connect_properties(cp);
    let (_client, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a))) => {
                    assert_eq!(a.code, p5::ConnectReturnCode::Success);
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!("rumqttc: {e:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    // The client must outlive this function: its event loop is the connection.
    std::mem::forget(_client);
    ev
}

/// Poll `ev` until the server disconnects it; the reason code rumqttc read.
async fn server_disconnect(ev: &mut rumqttc::v5::EventLoop) -> p5::DisconnectReasonCode {
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Disconnect(d))) => return d.reason_code,
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return reason_code,
                Err(e) => panic!("rumqttc: expected a server DISCONNECT, got {e:?}"),
            }
        }
    })
    .await
    .expect("server DISCONNECT in time")
}

/// Items 4 (revoked token's will) with its control: a token client that vanishes has its
/// retained will published; one whose token is revoked gets DISCONNECT 0x87 (read by rumqttc)
/// and its will — immediate or delayed — is never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item4_a_revoked_tokens_will_is_discarded_immediate_or_delayed() {
    let b = broker_with_users(&oauth_config(), &[]).await;
    let (mut watcher, _) = connected(b.addr(), login("watcher", "watcher", "watcher-pw")).await;
    watcher.subscribe(1, "wills/#", QoS::AtMostOnce).await;

    // Control: the same kind of client vanishing publishes its will.
    let t = token(&b).await;
    let ev = rumqttc_with_will(&b, "dev-ctl", &t, "wills/ctl", 0).await;
    drop(ev);
    let p = watcher.expect_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("wills/ctl", &b"will"[..]));
    let (mut cleaner, _) = connected(b.addr(), login("cleaner", "watcher", "watcher-pw")).await;
    // Clear the retained control will (an empty retained message removes it).
    let Packet::Publish(mut clear) = publish("wills/ctl", QoS::AtMostOnce, 0, b"") else { unreachable!() };
    clear.retain = true;
    cleaner.send(&Packet::Publish(clear)).await;
    assert_eq!(watcher.expect_publish().await.payload.len(), 0);

    // Immediate will: revoked -> DISCONNECT 0x87, no will.
    let t = token(&b).await;
    let mut ev = rumqttc_with_will(&b, "dev-now", &t, "wills/now", 0).await;
    assert_eq!(post_form(format!("{}/oauth/revoke", http_base(&b)), vec![("token", t.clone())]).await, 200);
    assert_eq!(server_disconnect(&mut ev).await, p5::DisconnectReasonCode::NotAuthorized);
    wait_gone(&b, "dev-now").await;
    assert_no_will(&b, &mut watcher, &mut cleaner, "wills/now").await;

    // Delayed will of a client that vanished before its token was revoked: pending, then
    // discarded by the revocation (the housekeeping past its delay publishes nothing).
    let t = token(&b).await;
    let ev = rumqttc_with_will(&b, "dev-later", &t, "wills/later", 60).await;
    drop(ev);
    wait_gone(&b, "dev-later").await;
    assert_eq!(post_form(format!("{}/oauth/revoke", http_base(&b)), vec![("token", t)]).await, 200);
    b.server.broker.tick(Instant::now() + Duration::from_secs(120));
    assert_no_will(&b, &mut watcher, &mut cleaner, "wills/later").await;
    // A pending will of a credential still in good standing is published when due.
    let t = token(&b).await;
    let ev = rumqttc_with_will(&b, "dev-kept", &t, "wills/kept", 60).await;
    drop(ev);
    wait_gone(&b, "dev-kept").await;
    b.server.broker.tick(Instant::now() + Duration::from_secs(120));
    assert_eq!(&watcher.expect_publish().await.payload[..], b"will");
}

/// Item 2: an OAuth client removed (the stored-clients file + SIGHUP, as the CLI does; the admin
/// API's DELETE takes the same path) ends its tokens' live connections with 0x87, and its
/// tokens are refused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item2_a_removed_oauth_clients_connections_end() {
    let cfg = format!(
        "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n[oauth]\ntoken_ttl = \"15m\"\n[auth]\npassword_file = \"passwd\"\n"
    );
    let b = broker_with_users(&cfg, &[]).await;
    let data = b.dir().to_path_buf();
    let store_cfg = warden::config::Config::load(&b.path("warden.toml")).unwrap();
    warden::admin::oauth_store::put_stored_client(
        &store_cfg,
        DEV,
        hash_password(DEV_SECRET.as_bytes()),
        vec!["mqtt:pub:d/#".into()],
        vec![],
    )
    .unwrap();
    b.server.reload();
    let t = token(&b).await;
    let (mut dev, _) = connected(b.addr(), login("dev-rm", DEV, &t)).await;
    let (mut bystander, _) = connected(b.addr(), login("by", "watcher", "watcher-pw")).await;
    assert!(warden::admin::oauth_store::remove_stored_client(&data, DEV).unwrap());
    b.server.reload();
    assert_eq!(expect_disconnect(&mut dev).await, ReasonCode::NOT_AUTHORIZED);
    assert_alive(&mut bystander).await;
    let refused = connack(&b, login("dev-rm2", DEV, &t)).await;
    assert_eq!(refused, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "the removed client's token is refused");
}

// ------------------------------------------------------------------------------ passwords

/// Item 3: a user removed from the password file + SIGHUP: its live connection ends (0x87, will
/// discarded), it cannot log in again, and another user is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_a_user_removed_from_the_password_file_is_disconnected() {
    let cfg = format!("{LISTENER}[auth]\npassword_file = \"passwd\"\n");
    let b = broker_with_users(&cfg, &["keep", "gone"]).await;
    let (mut watcher, _) = connected(b.addr(), login("watcher", "watcher", "watcher-pw")).await;
    watcher.subscribe(1, "st/#", QoS::AtMostOnce).await;
    let (mut keep, _) = connected(b.addr(), login("keep", "keep", "keep-pw")).await;
    let mut c = login("gone", "gone", "gone-pw");
    c.will = Some(mqtt_codec::LastWill {
        topic: mqtt_codec::TopicName::new("st/gone").unwrap(),
        payload: bytes::Bytes::from_static(b"will"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    let (mut gone, _) = connected(b.addr(), c).await;
    let passwd = b.path("passwd");
    let text = std::fs::read_to_string(&passwd).unwrap();
    let kept: String = text.lines().filter(|l| !l.starts_with("gone:")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&passwd, kept).unwrap();
    b.server.reload();
    assert_eq!(expect_disconnect(&mut gone).await, ReasonCode::NOT_AUTHORIZED);
    wait_gone(&b, "gone").await;
    assert_no_will(&b, &mut watcher, &mut keep, "st/gone").await;
    assert_alive(&mut keep).await;
    assert_eq!(connack(&b, login("gone-again", "gone", "gone-pw")).await, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
}

/// Item 7: a policy-store user marked disabled is refused whichever method names it — here the
/// password file — and its live connections end (0x87), whatever method proved them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_a_disabled_store_user_is_refused_by_every_method() {
    let cfg = format!("{LISTENER}[auth]\npassword_file = \"passwd\"\n");
    let b = broker_with_users(&cfg, &["dev-9", "dev-10"]).await;
    let (mut live, _) = connected(b.addr(), login("dev-9", "dev-9", "dev-9-pw")).await;
    let (mut other, _) = connected(b.addr(), login("dev-10", "dev-10", "dev-10-pw")).await;
    b.server
        .policy
        .update(&mut |s| {
            s.users.insert("dev-9".into(), warden_policy::store::User { disabled: true, ..Default::default() });
            Ok(())
        })
        .unwrap();
    assert_eq!(expect_disconnect(&mut live).await, ReasonCode::NOT_AUTHORIZED);
    assert_alive(&mut other).await;
    let refused = connack(&b, login("dev-9b", "dev-9", "dev-9-pw")).await;
    assert_eq!(refused, ReasonCode::NOT_AUTHORIZED, "the password file cannot bring a disabled user back");
    // Enabled again: it logs in.
    b.server
        .policy
        .update(&mut |s| {
            s.users.get_mut("dev-9").unwrap().disabled = false;
            Ok(())
        })
        .unwrap();
    assert_eq!(connack(&b, login("dev-9c", "dev-9", "dev-9-pw")).await, ReasonCode::SUCCESS);
}

// ------------------------------------------------------------------------------ certificates

/// Item 1: a live connection whose client certificate a reloaded CRL now revokes ends (0x87);
/// another device's stays; the revoked certificate's new handshakes are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item1_a_certificate_revoked_by_a_reloaded_crl_ends_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "fleet");
    pki.crl("fleet.crl", &[]);
    let s = pki.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\n\
         client_ca = \"{}\"\ncrl = \"{}\"\n",
        s.cert.display(),
        s.key.display(),
        pki.ca_pem().display(),
        pki.dir.join("fleet.crl").display()
    );
    let b = TestBroker::from_toml_in(dir, &body).await;
    let addr = b.addr_of(ListenerProtocol::Mqtts);
    let (dev_a, dev_b) = (pki.client("dev-a", Validity::Valid), pki.client("dev-b", Validity::Valid));
    let open = |cert: warden_testkit::pki::CertFiles, id: &'static str| {
        let ca = pki.ca_pem();
        async move {
            let stream = tls_connect(addr, &ca, Some(&cert)).await.expect("handshake");
            let (c, r) = RawClient::connect_over(stream, connect_packet(Protocol::V5, id, true)).await;
            assert!(matches!(r, Recv::Packet(Packet::Connack(ref a)) if a.reason_code == ReasonCode::SUCCESS), "{r:?}");
            c
        }
    };
    let mut a = open(dev_a.clone(), "dev-a").await;
    let mut bb = open(dev_b, "dev-b").await;
    pki.crl("fleet.crl", &[dev_a.serial]);
    b.server.reload();
    assert_eq!(expect_disconnect(&mut a).await, ReasonCode::NOT_AUTHORIZED);
    assert_alive(&mut bb).await;
    assert!(
        tls_connect(addr, &pki.ca_pem(), Some(&dev_a)).await.is_err() || {
            // TLS 1.3: the client may finish its side before the server's refusal arrives.
            let stream = tls_connect(addr, &pki.ca_pem(), Some(&dev_a)).await.unwrap();
            !matches!(
                RawClient::connect_over(stream, connect_packet(Protocol::V5, "dev-a2", true)).await.1,
                Recv::Packet(Packet::Connack(_))
            )
        }
    );
}

// ------------------------------------------------------------------------------ client ids

/// Item 11: a client id named like another known principal (a password-file user here) is
/// reserved for it: another user — or the same device's stolen token of another name — cannot
/// take it and hold its session for days (0x85 Client Identifier not valid, v3 0x02); the
/// principal itself uses it; `reserve_principal_names = false` lifts the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item11_a_known_principals_name_is_reserved_as_a_client_id() {
    let cfg = format!("{LISTENER}[auth]\npassword_file = \"passwd\"\n");
    let b = broker_with_users(&cfg, &["dev-9", "mallory"]).await;
    assert_eq!(connack(&b, login("dev-9", "mallory", "mallory-pw")).await, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    let mut v3 = login("dev-9", "mallory", "mallory-pw");
    v3.protocol = Protocol::V311;
    assert_eq!(connack(&b, v3).await, ReasonCode(0x02));
    assert_eq!(connack(&b, login("dev-9", "dev-9", "dev-9-pw")).await, ReasonCode::SUCCESS);
    assert_eq!(connack(&b, login("unnamed-id", "mallory", "mallory-pw")).await, ReasonCode::SUCCESS);

    let cfg = format!("{LISTENER}[auth]\npassword_file = \"passwd\"\n[identity]\nreserve_principal_names = false\n");
    let b = broker_with_users(&cfg, &["dev-9", "mallory"]).await;
    assert_eq!(connack(&b, login("dev-9", "mallory", "mallory-pw")).await, ReasonCode::SUCCESS);
}

/// Item 8 (the CVE-2018-12546 class), for a change of trust: a retained message published with
/// a token is removed when the token is revoked — its publisher has no right left to publish it
/// — while a retained message of another credential stays. (Narrowed grants are checked at
/// delivery by the core: `crates/warden-core/tests/trust_lifecycle.rs`, item 4.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item8_a_revoked_tokens_retained_messages_are_removed() {
    let b = broker_with_users(&oauth_config(), &[]).await;
    let t = token(&b).await;
    let (mut dev, _) = connected(b.addr(), login("dev-ret", DEV, &t)).await;
    let Packet::Publish(mut p) = publish("wills/fw", QoS::AtLeastOnce, 1, b"flash http://x/fw.bin") else {
        unreachable!()
    };
    p.retain = true;
    dev.send(&Packet::Publish(p)).await;
    assert!(matches!(dev.recv_within(WAIT).await, Recv::Packet(Packet::PubAck(_))));
    let (mut watcher, _) = connected(b.addr(), login("watcher", "watcher", "watcher-pw")).await;
    watcher.subscribe(1, "wills/#", QoS::AtMostOnce).await;
    assert_eq!(&watcher.expect_publish().await.payload[..], b"flash http://x/fw.bin", "control: retained");
    let (mut other, _) = connected(b.addr(), login("other", "watcher", "watcher-pw")).await;

    assert_eq!(post_form(format!("{}/oauth/revoke", http_base(&b)), vec![("token", t)]).await, 200);
    assert_eq!(expect_disconnect(&mut dev).await, ReasonCode::NOT_AUTHORIZED);
    assert_no_will(&b, &mut watcher, &mut other, "wills/fw").await;
}

// ------------------------------------------------------------------------------ queued messages

/// A token of dev-001 asking for `scope` (a subset of the client's scopes).
async fn token_with_scope(b: &TestBroker, scope: &str) -> String {
    let url = format!("{}/oauth/token", http_base(b));
    let scope = scope.to_owned();
    tokio::task::spawn_blocking(move || {
        let r = ureq::post(&url)
            .set("Authorization", &basic_auth())
            .send_form(&[("grant_type", "client_credentials"), ("scope", &scope)]);
        let v: serde_json::Value = r.expect("token").into_json().unwrap();
        assert_eq!(v["scope"], scope, "the token carries the scopes asked for");
        v["access_token"].as_str().unwrap().to_owned()
    })
    .await
    .unwrap()
}

/// A v5 persistent-session CONNECT (session expiry 300 s).
fn persistent(mut c: mqtt_codec::Connect) -> mqtt_codec::Connect {
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    c
}

/// Item 5: messages queued for a persistent session while its client held a broad token are
/// not delivered when the same client resumes with a narrower token: the queue is re-checked
/// against the grants in force at delivery, not the ones in force when the message was queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item5_queued_messages_follow_the_grants_of_the_resuming_token() {
    let cfg = format!(
        "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n[oauth]\ntoken_ttl = \"15m\"\n\
         [[oauth.client]]\nid = \"{DEV}\"\nsecret_hash = '{}'\nscopes = [\"mqtt:sub:open/#\", \"mqtt:sub:secret/#\"]\n\
         [auth]\npassword_file = \"passwd\"\n",
        hash_password(DEV_SECRET.as_bytes())
    );
    let b = broker_with_users(&cfg, &[]).await;
    let broad = token_with_scope(&b, "mqtt:sub:open/# mqtt:sub:secret/#").await;
    let (mut dev, _) = connected(b.addr(), persistent(login("dev-q", DEV, &broad))).await;
    dev.subscribe(1, "open/#", QoS::AtLeastOnce).await;
    dev.subscribe(2, "secret/#", QoS::AtLeastOnce).await;
    dev.send(&Packet::Disconnect(Default::default())).await;
    wait_gone(&b, "dev-q").await;

    let (mut publisher, _) = connected(b.addr(), login("pub", "watcher", "watcher-pw")).await;
    for (i, topic) in ["open/1", "secret/1", "open/2"].into_iter().enumerate() {
        publisher.send(&publish(topic, QoS::AtLeastOnce, i as u16 + 1, topic.as_bytes())).await;
        assert!(matches!(publisher.recv_within(WAIT).await, Recv::Packet(Packet::PubAck(_))));
    }

    // Resume with a token that may read open/# only.
    let narrow = token_with_scope(&b, "mqtt:sub:open/#").await;
    let (mut dev, ack) = connected(b.addr(), persistent(login("dev-q", DEV, &narrow))).await;
    assert!(ack.session_present, "the session resumed");
    publisher.send(&publish("open/marker", QoS::AtLeastOnce, 9, b"open/marker")).await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("open/marker") {
        let p = dev.expect_publish().await;
        if p.qos != QoS::AtMostOnce {
            dev.send(&Packet::PubAck(mqtt_codec::PubAck::new(p.packet_id))).await;
        }
        got.push(p.topic.as_str().to_owned());
    }
    assert_eq!(got, ["open/1", "open/2", "open/marker"], "secret/1 was queued under the broad token");
}

// ------------------------------------------------------------------------------ look-up restart

/// Item 6: a session whose principal came from the third-party look-up is restored after a
/// restart with no grants, never "allow all": a topic the look-up no longer grants is neither
/// queued for it while it is away nor delivered when it comes back (the look-up is asked again
/// at that CONNECT and its new answer binds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item6_a_restored_lookup_session_gets_no_grants_it_was_not_given_again() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // The look-up grants ann `ann/#` and, until `narrowed`, `secret/#`.
    let narrowed = Arc::new(AtomicBool::new(false));
    let state = narrowed.clone();
    let app = axum::Router::new().route(
        "/auth",
        axum::routing::post(move |axum::Json(req): axum::Json<serde_json::Value>| {
            let narrowed = state.load(Ordering::SeqCst);
            async move {
                if req["username"] != "ann" || req["password"] != "annpw" {
                    return axum::Json(serde_json::json!({"allow": false}));
                }
                let mut scopes = vec!["mqtt:sub:ann/#"];
                if !narrowed {
                    scopes.push("mqtt:sub:secret/#");
                }
                axum::Json(serde_json::json!({"allow": true, "scopes": scopes}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let cfg = format!("{LISTENER}[auth]\npassword_file = \"passwd\"\n[auth.http]\nurl = \"{url}\"\n");
    let b = broker_with_users(&cfg, &[]).await;
    let (mut ann, _) = connected(b.addr(), persistent(login("ann-1", "ann", "annpw"))).await;
    ann.subscribe(1, "ann/#", QoS::AtLeastOnce).await;
    ann.subscribe(2, "secret/#", QoS::AtLeastOnce).await;
    ann.send(&Packet::Disconnect(Default::default())).await;
    wait_gone(&b, "ann-1").await;

    // Restart on the same data directory; the look-up's answer for ann narrows meanwhile.
    let TestBroker { server, dir } = b;
    server.shutdown().await;
    narrowed.store(true, Ordering::SeqCst);
    let b = TestBroker::from_toml_in(dir, &cfg).await;

    let (mut publisher, _) = connected(b.addr(), login("pub", "watcher", "watcher-pw")).await;
    publisher.send(&publish("secret/1", QoS::AtLeastOnce, 1, b"secret/1")).await;
    assert!(matches!(publisher.recv_within(WAIT).await, Recv::Packet(Packet::PubAck(_))));

    let (mut ann, ack) = connected(b.addr(), persistent(login("ann-1", "ann", "annpw"))).await;
    assert!(ack.session_present, "the session was restored");
    publisher.send(&publish("ann/marker", QoS::AtLeastOnce, 2, b"ann/marker")).await;
    publisher.send(&publish("secret/2", QoS::AtLeastOnce, 3, b"secret/2")).await;
    publisher.send(&publish("ann/marker-2", QoS::AtLeastOnce, 4, b"ann/marker-2")).await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("ann/marker-2") {
        let p = ann.expect_publish().await;
        if p.qos != QoS::AtMostOnce {
            ann.send(&Packet::PubAck(mqtt_codec::PubAck::new(p.packet_id))).await;
        }
        got.push(p.topic.as_str().to_owned());
    }
    assert_eq!(got, ["ann/marker", "ann/marker-2"], "nothing on secret/ after the look-up narrowed");
}

// ------------------------------------------------------------------------------ shared subscriptions

/// Item 9: a shared subscription's message goes to a member allowed to receive it: half the
/// members of `$share/g/jobs/#` may not receive `jobs/secret`, and none of the ten messages is
/// lost for the group (before the fix, 5 of 10 were).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item9_shared_subscriptions_choose_among_allowed_members() {
    let mut acl = String::from("user watcher\ntopic write jobs/#\ntopic write mark/#\n");
    let mut users = Vec::new();
    for i in 0..5 {
        acl.push_str(&format!("user ok-{i}\ntopic read jobs/#\ntopic read mark/#\n"));
        acl.push_str(&format!("user no-{i}\ntopic read jobs/#\ntopic deny jobs/secret\ntopic read mark/#\n"));
        users.push(format!("ok-{i}"));
        users.push(format!("no-{i}"));
    }
    let cfg = format!("{LISTENER}[auth]\npassword_file = \"passwd\"\n[authz]\nacl_file = \"acl\"\n");
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acl"), &acl).unwrap();
    let mut lines = String::new();
    for u in std::iter::once(&"watcher").chain(&names) {
        lines.push_str(&format!("{u}:{}\n", hash_password(format!("{u}-pw").as_bytes())));
    }
    std::fs::write(dir.path().join("passwd"), lines).unwrap();
    let b = TestBroker::from_toml_in(dir, &cfg).await;

    let mut members = Vec::new();
    for name in &names {
        let (mut c, _) = connected(b.addr(), login(name, name, &format!("{name}-pw"))).await;
        c.subscribe(1, "$share/g/jobs/#", QoS::AtMostOnce).await;
        c.subscribe(2, &format!("mark/{name}"), QoS::AtMostOnce).await;
        members.push((name.to_string(), c));
    }
    let (mut publisher, _) = connected(b.addr(), login("pub", "watcher", "watcher-pw")).await;
    for i in 0..10u16 {
        publisher.send(&publish("jobs/secret", QoS::AtLeastOnce, i + 1, b"job")).await;
        match publisher.recv_within(WAIT).await {
            Recv::Packet(Packet::PubAck(a)) => assert!(a.reason_code.is_success(), "{a:?}"),
            other => panic!("{other:?}"),
        }
    }
    // Each member's deliveries keep their order: a marker published now arrives after any job.
    for (name, _) in &members {
        publisher.send(&publish(&format!("mark/{name}"), QoS::AtMostOnce, 0, b"mark")).await;
    }
    let mut total = 0;
    for (name, c) in &mut members {
        let mut jobs = 0;
        loop {
            let p = c.expect_publish().await;
            if p.topic.as_str().starts_with("mark/") {
                break;
            }
            jobs += 1;
        }
        if name.starts_with("no-") {
            assert_eq!(jobs, 0, "{name} may not receive jobs/secret");
        }
        total += jobs;
    }
    assert_eq!(total, 10, "no message is lost for the group");
}

// ------------------------------------------------------------------------------ $SYS

/// Item 10: with no authorization source configured, a client cannot spoof the broker's own
/// statistics: a publish to `$SYS/…` is refused with 0x87 (read by rumqttc v5) and reaches no
/// subscriber and no retained store, while ordinary topics stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item10_clients_cannot_publish_to_sys_with_no_authorization_source() {
    let cfg = format!("{LISTENER}[auth]\npassword_file = \"passwd\"\n");
    let b = broker_with_users(&cfg, &["mallory"]).await;
    let (mut sub, _) = connected(b.addr(), login("watcher", "watcher", "watcher-pw")).await;
    sub.subscribe(1, "$SYS/broker/spoof/#", QoS::AtMostOnce).await;
    sub.subscribe(2, "plain/#", QoS::AtMostOnce).await;

    let mut o = rumqttc::v5::MqttOptions::new("mallory-1", "127.0.0.1", b.port());
    o.set_credentials("mallory", "mallory-pw");
    let (client, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    client.publish("$SYS/broker/spoof/version", QoS5::AtLeastOnce, true, "evil 1.0").await.unwrap();
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::PubAck(a))) => return format!("PUBACK {:?}", a.reason),
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Disconnect(d))) => {
                    return format!("DISCONNECT {:?}", d.reason_code)
                }
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return format!("DISCONNECT {reason_code:?}"),
                Err(e) => panic!("rumqttc: {e:?}"),
            }
        }
    })
    .await
    .expect("an answer in time");
    assert!(
        refused == "PUBACK NotAuthorized" || refused == "DISCONNECT NotAuthorized",
        "the spoofed $SYS publish is refused with 0x87: {refused}"
    );

    let (mut honest, _) = connected(b.addr(), login("honest", "watcher", "watcher-pw")).await;
    honest.send(&publish("plain/x", QoS::AtMostOnce, 0, b"fine")).await;
    let p = sub.expect_publish().await;
    assert_eq!(p.topic.as_str(), "plain/x", "nothing spoofed arrived first: {p:?}");
    // Nothing retained under $SYS/broker/spoof: a new subscriber's first message is a marker.
    let (mut late, _) = connected(b.addr(), login("late", "watcher", "watcher-pw")).await;
    late.subscribe(1, "$SYS/broker/spoof/#", QoS::AtMostOnce).await;
    late.subscribe(2, "plain/#", QoS::AtMostOnce).await;
    honest.send(&publish("plain/y", QoS::AtMostOnce, 0, b"fine")).await;
    assert_eq!(late.expect_publish().await.topic.as_str(), "plain/y", "no spoofed retained message");
}

/// A parked connection (idle, its task given up) whose user is disabled while a message for it
/// is routed in the same instant — no connection task runs in between on this current-thread
/// runtime — ends with DISCONNECT 0x87 and takes no delivery first: the driver checks for an
/// end before it pulls deliveries, not only when it sees its wake-up.
#[tokio::test]
async fn a_connection_ended_by_a_trust_change_takes_no_delivery_routed_with_it() {
    use std::collections::HashSet;
    use std::sync::Arc;
    use warden_policy::trust::TrustEvent;
    let cfg = format!("{LISTENER}[auth]\npassword_file = \"passwd\"\n[limits]\nidle_park_after = \"50ms\"\n");
    let b = broker_with_users(&cfg, &["sleeper"]).await;
    let (mut sleeper, _) = connected(b.addr(), login("sleeper", "sleeper", "sleeper-pw")).await;
    sleeper.subscribe(1, "cmd/#", QoS::AtLeastOnce).await;
    let deadline = Instant::now() + WAIT;
    while b.server.parked_connections() != 1 {
        assert!(Instant::now() < deadline, "the subscriber did not park");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = b.server.trust.apply(&TrustEvent::Disabled(Arc::new(HashSet::from(["sleeper".to_string()]))));
    assert_eq!(applied.connections, 1);
    let msg = mqtt_codec::TopicName::new("cmd/reboot").unwrap();
    let routed = b.server.broker.route(
        Arc::new(warden_core::Message {
            topic: msg,
            payload: bytes::Bytes::from_static(b"after the revocation"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            origin: None,
            persisted: Default::default(),
        }),
        None,
    );
    assert_eq!(routed, 1, "the message reached the session");
    let packets = sleeper.expect_closed_within(WAIT).await;
    assert!(!packets.iter().any(|p| matches!(p, Packet::Publish(_))), "a PUBLISH was delivered after its end");
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::NOT_AUTHORIZED)),
        "{packets:?}"
    );
}
