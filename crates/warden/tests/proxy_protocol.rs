//! PROXY protocol v1/v2 on a listener against the real broker (SPEC §13): the header's address
//! is what the admin API shows and what bans apply to; untrusted sources, a missing header and
//! garbage are closed; a header split over two writes is read whole. Every byte goes to
//! 127.0.0.1; the headers only claim 10.x addresses.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::OnceLock;

use mqtt_codec::{Packet, Protocol};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker, WAIT};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

fn token_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes()))
}

async fn broker() -> TestBroker {
    TestBroker::from_toml(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\nproxy_protocol = true\n\
         proxy_trusted = [\"127.0.0.1/32\"]\n[http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n[auth]\nallow_anonymous = true\n",
        token_hash()
    ))
    .await
}

async fn admin(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> Value {
    let url = format!("http://{}{path}", b.server.http_addr.expect("http listener"));
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        let req = ureq::request(&method, &url).timeout(WAIT).set("Authorization", &format!("Bearer {ADMIN_TOKEN}"));
        let resp = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => req.call(),
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        resp.into_json::<Value>().unwrap_or(Value::Null)
    })
    .await
    .expect("http task")
}

fn v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 40000 1883\r\n").into_bytes()
}

fn v2(src: [u8; 4]) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0, 12 + 7]);
    b.extend_from_slice(&src);
    b.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x41, 0x07, 0x5b]);
    b.extend_from_slice(&[0x04, 0, 4, b'x', b'y', b'z', b'w']); // a TLV, skipped
    b
}

/// Sends `prefix` then CONNECT for `cid` from 127.0.0.1 (or `from`).
async fn via(addr: SocketAddr, prefix: &[u8], cid: &str, from: Option<&str>) -> (RawClient, Recv) {
    let sock = TcpSocket::new_v4().unwrap();
    if let Some(f) = from {
        sock.bind(format!("{f}:0").parse().unwrap()).unwrap();
    }
    let mut s: TcpStream = sock.connect(addr).await.unwrap();
    s.write_all(prefix).await.unwrap();
    RawClient::connect_over(s, connect_packet(Protocol::V5, cid, true)).await
}

fn connacked(r: &Recv) -> bool {
    matches!(r, Recv::Packet(Packet::Connack(c)) if c.reason_code.is_success())
}

async fn peer_of(b: &TestBroker, cid: &str) -> Option<String> {
    let list = admin(b, "GET", "/admin/clients", None).await;
    list.as_array()?.iter().find(|c| c["client_id"] == cid).map(|c| c["peer"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn v1_and_v2_give_the_device_address_and_bans_apply_to_it() {
    let b = broker().await;
    let (mut c1, r) = via(b.addr(), &v1("10.1.2.3"), "px1", None).await;
    assert!(connacked(&r), "{r:?}");
    assert!(peer_of(&b, "px1").await.unwrap().starts_with("10.1.2.3:"));
    let (_c2, r) = via(b.addr(), &v2([10, 1, 2, 5]), "px2", None).await;
    assert!(connacked(&r), "{r:?}");
    assert_eq!(peer_of(&b, "px2").await.unwrap(), "10.1.2.5:40001");
    admin(&b, "POST", "/admin/bans", Some(json!({"kind": "ip", "value": "10.1.2.3"}))).await;
    c1.expect_closed_within(WAIT).await;
    let (_, r) = via(b.addr(), &v1("10.1.2.3"), "px3", None).await;
    assert!(!connacked(&r), "banned address refused: {r:?}");
    let (_, r) = via(b.addr(), &v1("10.1.2.4"), "px4", None).await;
    assert!(connacked(&r), "another address connects: {r:?}");
    b.stop().await;
}

#[tokio::test]
async fn missing_untrusted_and_garbage_headers_are_closed_split_ones_read() {
    let b = broker().await;
    let (_, r) = via(b.addr(), b"", "none", None).await;
    assert!(!connacked(&r), "no header: {r:?}");
    let (_, r) = via(b.addr(), b"PROXY TCP4 nonsense\r\n", "garbage", None).await;
    assert!(!connacked(&r), "garbage: {r:?}");
    let (_, r) = via(b.addr(), &v1("10.1.2.6"), "untrusted", Some("127.0.0.2")).await;
    assert!(!connacked(&r), "untrusted source: {r:?}");
    // A header split over two writes (the first one flushed before the second).
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let h = v1("10.1.2.7");
    s.write_all(&h[..9]).await.unwrap();
    s.flush().await.unwrap();
    s.write_all(&h[9..]).await.unwrap();
    let (_c, r) = RawClient::connect_over(s, connect_packet(Protocol::V311, "split", true)).await;
    assert!(connacked(&r), "{r:?}");
    assert!(peer_of(&b, "split").await.unwrap().starts_with("10.1.2.7:"));
    b.stop().await;
}
