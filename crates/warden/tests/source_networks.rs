//! Source-network conditions on authorization rules (issue 22; AWS `aws:SourceIp` style)
//! against the real broker: an ACL-file line `source=NETS` and a policy-store rule `"source":
//! [...]` apply only to clients whose address is in one of the networks — the socket's, or the
//! PROXY-protocol header's on a `proxy_protocol` listener. Clients come from different loopback
//! addresses (127.0.0.x, their sockets bound before connecting) or through a trusted PROXY
//! header; real clients (rumqttc v3.1.1 and v5) reach the broker through a small relay that
//! binds its outgoing socket to the address under test, or prepends a PROXY header, as a load
//! balancer does. Every byte goes to 127.0.0.1 on ephemeral ports.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use rumqttc::v5::mqttbytes::v5 as p5;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use warden_policy::password::hash_password;
use warden_testkit::{connect_packet, publish, subscribe, RawClient, Recv, TestBroker, WAIT};

const ADMIN_TOKEN: &str = "admin-token-for-source-tests-0123";
const OPS: (&str, &str) = ("ops", "ops-password");

/// Listener indexes, in configuration order.
const DIRECT: usize = 0;
const PROXIED: usize = 1; // proxy_protocol, trusted 127.0.0.1/32

const ACL: &str = "user ops\n\
                   topic readwrite source=127.0.0.2,10.1.0.0/16 plant/#\n\
                   topic read plant/status\n\
                   topic deny source=127.0.0.3,10.9.0.0/16 plant/#\n";

fn token_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password(ADMIN_TOKEN.as_bytes()))
}

async fn broker() -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, format!("ops:{}\n", hash_password(OPS.1.as_bytes()))).unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]\n\
         [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n\
         [auth]\nallow_anonymous = false\npassword_file = \"{}\"\n\
         [authz]\nacl_file = \"{}\"\non_deny = \"drop\"\n",
        token_hash(),
        passwd.display(),
        acl.display()
    );
    TestBroker::from_toml_in(dir, &body).await
}

fn addr(b: &TestBroker, listener: usize) -> SocketAddr {
    b.server.listeners[listener].addr
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP connection to `to` from `from` (its socket bound to that loopback address).
async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// A PROXY protocol v1 header claiming `src`.
fn proxy_v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 40000 1883\r\n").into_bytes()
}

/// A raw MQTT 5 client logged in as `ops` over `stream` (with `preamble` sent first).
async fn ops_over(mut stream: TcpStream, preamble: &[u8], id: &str) -> RawClient {
    stream.write_all(preamble).await.unwrap();
    let mut c = connect_packet(Protocol::V5, id, true);
    c.username = Some(OPS.0.into());
    c.password = Some(bytes::Bytes::from_static(OPS.1.as_bytes()));
    let (raw, r) = RawClient::connect_over(stream, c).await;
    match r {
        Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode::SUCCESS => raw,
        other => panic!("{id}: not connected: {other:?}"),
    }
}

/// SUBACK reason of one filter.
async fn suback(c: &mut RawClient, id: u16, filter: &str) -> ReasonCode {
    c.send(&subscribe(id, filter, QoS::AtLeastOnce)).await;
    match c.recv().await {
        Recv::Packet(Packet::SubAck(s)) => s.reason_codes[0],
        other => panic!("no SUBACK: {other:?}"),
    }
}

/// PUBACK reason of a QoS 1 publish (`on_deny = "drop"`: a denial is 0x87, not a disconnect).
async fn puback(c: &mut RawClient, id: u16, topic: &str) -> ReasonCode {
    c.send(&publish(topic, QoS::AtLeastOnce, id, b"x")).await;
    loop {
        match c.recv().await {
            Recv::Packet(Packet::PubAck(a)) => return a.reason_code,
            Recv::Packet(Packet::Publish(_)) => {} // a delivery of an earlier message
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

const GRANTED: ReasonCode = ReasonCode(1); // Granted QoS 1
const DENIED: ReasonCode = ReasonCode::NOT_AUTHORIZED;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_rules_with_a_source_apply_only_from_their_networks() {
    let b = broker().await;
    let to = addr(&b, DIRECT);
    // From 127.0.0.2, in the allow rule's networks.
    let mut lan = ops_over(tcp_from(ip("127.0.0.2"), to).await, b"", "from-2").await;
    assert_eq!(suback(&mut lan, 1, "plant/#").await, GRANTED);
    assert_eq!(puback(&mut lan, 2, "plant/a").await, ReasonCode::SUCCESS);
    // From 127.0.0.1: the conditional rules are not there; the unconditional read is.
    let mut other = ops_over(tcp_from(ip("127.0.0.1"), to).await, b"", "from-1").await;
    assert_eq!(suback(&mut other, 1, "plant/#").await, DENIED, "SUBACK 0x87 [MQTT-3.9.3]");
    assert_eq!(puback(&mut other, 2, "plant/a").await, DENIED);
    assert_eq!(suback(&mut other, 3, "plant/status").await, GRANTED);
    // From 127.0.0.3, the deny rule's network: it wins over the unconditional allow.
    let mut quarantined = ops_over(tcp_from(ip("127.0.0.3"), to).await, b"", "from-3").await;
    assert_eq!(suback(&mut quarantined, 1, "plant/status").await, DENIED);
    // Deliveries are checked too: what 127.0.0.2 publishes reaches the subscriber there.
    assert_eq!(puback(&mut other, 4, "plant/status").await, DENIED, "read, not write");
    assert_eq!(puback(&mut lan, 5, "plant/status").await, ReasonCode::SUCCESS);
    loop {
        match lan.recv().await {
            Recv::Packet(Packet::Publish(p)) if p.topic.as_str() == "plant/status" => break,
            Recv::Packet(Packet::Publish(_)) => {} // plant/a, published above
            other => panic!("no delivery: {other:?}"),
        }
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_address_is_the_one_matched() {
    let b = broker().await;
    let to = addr(&b, PROXIED);
    // Every socket is 127.0.0.1 (the trusted balancer); the headers decide.
    let mut lan = ops_over(tcp_from(ip("127.0.0.1"), to).await, &proxy_v1("10.1.2.3"), "px-lan").await;
    assert_eq!(suback(&mut lan, 1, "plant/#").await, GRANTED);
    assert_eq!(puback(&mut lan, 2, "plant/a").await, ReasonCode::SUCCESS);
    let mut quarantined = ops_over(tcp_from(ip("127.0.0.1"), to).await, &proxy_v1("10.9.1.1"), "px-q").await;
    assert_eq!(suback(&mut quarantined, 1, "plant/status").await, DENIED);
    let mut elsewhere = ops_over(tcp_from(ip("127.0.0.1"), to).await, &proxy_v1("192.0.2.1"), "px-else").await;
    assert_eq!(suback(&mut elsewhere, 1, "plant/#").await, DENIED);
    assert_eq!(suback(&mut elsewhere, 2, "plant/status").await, GRANTED);
    b.stop().await;
}

/// A relay on an ephemeral loopback port that forwards every connection to `to` from a socket
/// bound to `from`, after `header` (a PROXY header, or nothing): a load balancer in miniature,
/// so that a real client's connection reaches the broker from the address under test.
async fn relay(to: SocketAddr, from: IpAddr, header: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let mut out = tcp_from(from, to).await;
                if out.write_all(&header).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    at
}

/// rumqttc v3.1.1 through `via`: the SUBACK return code of `filter`.
async fn rumqttc_v3_suback(via: SocketAddr, id: &str, filter: &str) -> rumqttc::SubscribeReasonCode {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", via.port());
    o.set_credentials(OPS.0, OPS.1);
    let (client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s))) => return s.return_codes[0],
                Ok(_) => {}
                Err(e) => panic!("rumqttc v3: {e:?}"),
            }
        }
    })
    .await
    .expect("SUBACK in time")
}

/// rumqttc v5 through `via`: the PUBACK reason of a QoS 1 publish to `topic`.
async fn rumqttc_v5_puback(via: SocketAddr, id: &str, topic: &str) -> p5::PubAckReason {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", via.port());
    o.set_credentials(OPS.0, OPS.1);
    let (client, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    client.publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "x").await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::PubAck(a))) => return a.reason,
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::PubAckFail { reason })) => {
                    return reason
                }
                Err(e) => panic!("rumqttc v5: {e:?}"),
            }
        }
    })
    .await
    .expect("PUBACK in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_from_different_addresses_get_different_grants() {
    let b = broker().await;
    let from2 = relay(addr(&b, DIRECT), ip("127.0.0.2"), Vec::new()).await;
    let from4 = relay(addr(&b, DIRECT), ip("127.0.0.4"), Vec::new()).await;
    let lb_lan = relay(addr(&b, PROXIED), ip("127.0.0.1"), proxy_v1("10.1.7.7")).await;
    let lb_else = relay(addr(&b, PROXIED), ip("127.0.0.1"), proxy_v1("198.51.100.7")).await;
    use rumqttc::SubscribeReasonCode as S3;
    assert_eq!(rumqttc_v3_suback(from2, "rq3-a", "plant/#").await, S3::Success(rumqttc::QoS::AtLeastOnce));
    assert_eq!(rumqttc_v3_suback(from4, "rq3-b", "plant/#").await, S3::Failure);
    assert_eq!(rumqttc_v3_suback(lb_lan, "rq3-c", "plant/#").await, S3::Success(rumqttc::QoS::AtLeastOnce));
    assert_eq!(rumqttc_v3_suback(lb_else, "rq3-d", "plant/#").await, S3::Failure);
    assert_eq!(rumqttc_v5_puback(from2, "rq5-a", "plant/x").await, p5::PubAckReason::Success);
    assert_eq!(rumqttc_v5_puback(from4, "rq5-b", "plant/x").await, p5::PubAckReason::NotAuthorized);
    assert_eq!(rumqttc_v5_puback(lb_lan, "rq5-c", "plant/x").await, p5::PubAckReason::Success);
    assert_eq!(rumqttc_v5_puback(lb_else, "rq5-d", "plant/x").await, p5::PubAckReason::NotAuthorized);
    b.stop().await;
}

/// The admin API: status and body.
async fn admin(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("http://{}{path}", b.server.http_addr.expect("http listener"));
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        let req = ureq::request(&method, &url).timeout(WAIT).set("Authorization", &format!("Bearer {ADMIN_TOKEN}"));
        let r = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => req.call(),
        };
        match r {
            Ok(resp) => (resp.status(), resp.into_json::<Value>().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_json::<Value>().unwrap_or(Value::Null)),
            Err(e) => panic!("{method} {url}: {e}"),
        }
    })
    .await
    .expect("http task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_store_rules_with_a_source_through_the_admin_api() {
    let b = broker().await;
    // An invalid network is refused (400, naming it), nothing stored.
    let bad = json!({"name": "lab", "rules": [{"id": "lab-sub", "action": "subscribe", "topic": "lab/#",
        "effect": "allow", "source": ["127.0.0.5/8"]}]});
    let (status, v) = admin(&b, "POST", "/admin/roles", Some(bad)).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("127.0.0.5/8"), "{v}");
    let rule = json!({"id": "lab-pub", "action": "publish", "topic": "lab/#", "effect": "allow",
        "source": ["127.0.0.5", "::1/128"]});
    let (status, v) = admin(&b, "POST", "/admin/roles", Some(json!({"name": "lab", "rules": [rule]}))).await;
    assert_eq!(status, 201, "{v}");
    let bad_rule = json!({"id": "x", "action": "publish", "topic": "lab/x", "effect": "allow", "source": ["nope"]});
    assert_eq!(admin(&b, "POST", "/admin/roles/lab/rules", Some(bad_rule)).await.0, 400);
    let (status, v) =
        admin(&b, "POST", "/admin/groups", Some(json!({"name": "anyone-authenticated", "roles": ["lab"]}))).await;
    assert_eq!(status, 201, "{v}");
    let (_, rules) = admin(&b, "GET", "/admin/roles/lab/rules", None).await;
    assert_eq!(rules[0]["source"], json!(["127.0.0.5/32", "::1/128"]));
    // The rule applies from 127.0.0.5 only — to a client connected before the change too.
    let to = addr(&b, DIRECT);
    let mut lab = ops_over(tcp_from(ip("127.0.0.5"), to).await, b"", "lab-5").await;
    let mut other = ops_over(tcp_from(ip("127.0.0.6"), to).await, b"", "lab-6").await;
    assert_eq!(puback(&mut lab, 1, "lab/a").await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut other, 1, "lab/a").await, DENIED);
    let mut proxied =
        ops_over(tcp_from(ip("127.0.0.1"), addr(&b, PROXIED)).await, &proxy_v1("127.0.0.5"), "lab-px").await;
    assert_eq!(puback(&mut proxied, 1, "lab/a").await, ReasonCode::SUCCESS, "the header's address, not the socket's");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_network_in_the_acl_file_stops_the_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user ops\ntopic read plant/status\ntopic read source=10.0.0.1/8 plant/#\n").unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[authz]\nacl_file = \"{}\"\n",
            dir.path().join("data").display(),
            acl.display()
        ),
    )
    .unwrap();
    let config = warden::config::Config::load(&cfg).unwrap();
    let e = match warden::server::Server::start(&config).await {
        Ok(_) => panic!("started with an invalid network in the ACL file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains(&format!("{}:3", acl.display())) && e.contains("host bits"), "{e}");
}

/// `warden check --explain --from ADDRESS` judges source conditions for that address.
#[test]
fn check_explain_from_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[authz]\nacl_file = \"{}\"\n",
            dir.path().join("data").display(),
            acl.display()
        ),
    )
    .unwrap();
    let explain = |from: Option<&str>, op: &str, topic: &str| {
        let mut args = vec!["check", "--config", cfg.to_str().unwrap(), "--explain", "--user", "ops"];
        if let Some(f) = from {
            args.extend(["--from", f]);
        }
        args.extend([op, topic]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden")).args(&args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = explain(Some("127.0.0.2"), "publish", "plant/a");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(":2: topic readwrite source=127.0.0.2,10.1.0.0/16 plant/#"), "{out}");
    assert_eq!(explain(Some("10.1.9.9"), "publish", "plant/a").0, Some(0));
    assert_eq!(explain(None, "publish", "plant/a").0, Some(1), "no address: the conditional rule does not apply");
    assert_eq!(explain(Some("127.0.0.1"), "publish", "plant/a").0, Some(1));
    let (code, out) = explain(Some("10.9.0.1"), "subscribe", "plant/status");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(":4:"), "the deny rule decides: {out}");
}
