//! Issue 17, observation 4 ("hashing as a service"): every request with a wrong OAuth client
//! secret or a wrong admin token cost an argon2id verification, with no backoff or ban, and
//! HTTP hashing competed with MQTT CONNECTs without bound. Against the real broker:
//!
//! - wrong secrets go through the same per-address failure guard as MQTT passwords, consulted
//!   before any hashing: a (client id, address) pair backs off, an address banned after
//!   repeated failures is refused on both sides (HTTP 429 with `Retry-After`; MQTT at accept);
//!   no hash is computed for a refused request (the hashing budget's run counter); other
//!   addresses are not affected. Loopback addresses are not exempt (as on the MQTT side).
//! - one hashing budget for the process, of which HTTP may hold only its share: with the HTTP
//!   share taken by a slow verification, further HTTP secrets get 503 at once while an MQTT
//!   CONNECT with a password is still verified and accepted.
//!
//! Clients come from distinct loopback addresses (127.0.0.81 …). Nothing sleeps to synchronise.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use mqtt_codec::{Packet, Protocol, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use warden_http::HashClass;
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker};

const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// Verifying `slowpw` against this argon2id hash (150 passes over 8 MiB) takes a second or two,
/// so it holds a hashing slot long enough to be seen.
const SLOW_HASH: &str =
    "$argon2id$v=19$m=8192,t=150,p=1$c2xvd3NhbHRzbG93c2FsdA$nxcczZwsTrJeN/n5zojjreutO5bX/BUEabbnp/8yLnk";

/// A broker with an MQTT listener (password file: `ann` / `annpw`), the HTTP listener with an
/// admin token, OAuth clients `dev-001` / `dev-001-secret`, `dev-002` / `dev-002-secret` and
/// `slow` / `slowpw`, and `limits` in `[limits]`.
async fn broker(limits: &str) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let hash = |pw: &str| warden_policy::password::hash_password(pw.as_bytes());
    std::fs::write(dir.path().join("passwd"), format!("ann:{}\n", hash("annpw"))).unwrap();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\npassword_file = \"{{dir}}/passwd\"\n\
         [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = '{admin}'\n[oauth]\n\
         [[oauth.client]]\nid = \"dev-001\"\nsecret_hash = '{d1}'\nscopes = [\"mqtt:pub:a\"]\n\
         [[oauth.client]]\nid = \"dev-002\"\nsecret_hash = '{d2}'\nscopes = [\"mqtt:pub:b\"]\n\
         [[oauth.client]]\nid = \"slow\"\nsecret_hash = '{SLOW_HASH}'\nscopes = [\"mqtt:pub:c\"]\n\
         [limits]\n{limits}",
        admin = hash(ADMIN_TOKEN),
        d1 = hash("dev-001-secret"),
        d2 = hash("dev-002-secret"),
    );
    TestBroker::from_toml_in(dir, &body).await
}

fn http_addr(b: &TestBroker) -> SocketAddr {
    b.server.http_addr.expect("http listener")
}

async fn tcp_from(last: u8, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
    s.connect(to).await.expect("connect")
}

/// An HTTP answer: status and the `Retry-After` header, if any.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
}

async fn call_from(last: u8, to: SocketAddr, request: String) -> Answer {
    let mut s = tcp_from(last, to).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await.expect("answer within 20 s").unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let retry_after = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok());
    Answer { status, retry_after }
}

/// A token request for `client` with `secret` (HTTP Basic) from 127.0.0.`last`.
async fn token_from(last: u8, b: &TestBroker, client: &str, secret: &str) -> Answer {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client}:{secret}"));
    let body = "grant_type=client_credentials";
    let req = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {basic}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    call_from(last, http_addr(b), req).await
}

/// `GET /admin/users` with `token` from 127.0.0.`last`.
async fn admin_from(last: u8, b: &TestBroker, token: &str) -> Answer {
    let req =
        format!("GET /admin/users HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    call_from(last, http_addr(b), req).await
}

fn status(s: u16) -> Answer {
    Answer { status: s, retry_after: None }
}

fn http_hashes(b: &TestBroker) -> u64 {
    b.server.hashing.runs(HashClass::Http)
}

/// The MQTT CONNECT answer for `ann` / `annpw` from 127.0.0.`last` (`None`: closed without
/// a CONNACK, as a banned address is at accept).
async fn mqtt_login_from(last: u8, b: &TestBroker) -> Option<ReasonCode> {
    let mut c = connect_packet(Protocol::V5, &format!("ann-{last}"), true);
    c.username = Some("ann".into());
    c.password = Some(Bytes::from_static(b"annpw"));
    match RawClient::connect_over(tcp_from(last, b.addr()).await, c).await.1 {
        Recv::Packet(Packet::Connack(a)) => Some(a.reason_code),
        Recv::Closed => None,
        other => panic!("unexpected {other:?}"),
    }
}

/// Wrong secrets back off the (client id, address) pair: after three, even the right secret
/// from that address is refused with 429 and `Retry-After`, without a hash; the same client
/// from another address, and another client from the same address, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_secrets_back_off_per_address_before_any_hashing() {
    let b = broker("auth_fail_backoff = { failures = 3, initial = \"60s\", max = \"60s\" }\n").await;
    for i in 0..3 {
        assert_eq!(token_from(81, &b, "dev-001", "wrong").await, status(401), "wrong secret {i}");
    }
    assert_eq!(http_hashes(&b), 3);
    let a = token_from(81, &b, "dev-001", "dev-001-secret").await;
    assert_eq!(a.status, 429, "the right secret during the backoff");
    assert!(a.retry_after.is_some_and(|s| (1..=60).contains(&s)), "{a:?}");
    assert_eq!(http_hashes(&b), 3, "no hash for a request refused by the guard");
    assert_eq!(token_from(82, &b, "dev-001", "dev-001-secret").await, status(200), "another address");
    assert_eq!(token_from(81, &b, "dev-002", "dev-002-secret").await, status(200), "another client id");
    assert_eq!(http_hashes(&b), 5);
    b.stop().await;
}

/// Failed HTTP authentications count towards the same per-address ban as MQTT's: once banned,
/// the address gets 429 on the token service and the admin API (no hash), and its MQTT
/// connections are refused at accept; other addresses are served on both sides. A wrong admin
/// token backs off like a wrong client secret. Loopback addresses are not exempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_banned_after_failed_http_authentications_is_refused_by_http_and_mqtt() {
    let b = broker(
        "auth_fail_ban = { failures = 4, within = \"60s\", ban = \"300s\" }\n\
         auth_fail_backoff = { failures = 2, initial = \"60s\", max = \"60s\" }\n",
    )
    .await;
    // The admin token backs off per address, as a client secret does.
    assert_eq!(admin_from(83, &b, "wrong").await, status(401));
    assert_eq!(admin_from(83, &b, "wrong").await, status(401));
    let a = admin_from(83, &b, ADMIN_TOKEN).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(http_hashes(&b), 2);
    assert_eq!(admin_from(84, &b, ADMIN_TOKEN).await, status(200), "the admin from another address");
    // One more failure from 127.0.0.83 (the refused attempt above counted as one): banned.
    assert_eq!(token_from(83, &b, "dev-001", "wrong").await, status(401));
    let hashes = http_hashes(&b);
    let a = token_from(83, &b, "dev-002", "dev-002-secret").await;
    assert_eq!(a.status, 429, "any client from a banned address: {a:?}");
    assert!(a.retry_after.is_some_and(|s| s > 60 && s <= 300), "the ban's time left: {a:?}");
    assert_eq!(http_hashes(&b), hashes, "no hash for a banned address");
    assert_eq!(mqtt_login_from(83, &b).await, None, "MQTT from the banned address is refused at accept");
    assert_eq!(mqtt_login_from(85, &b).await, Some(ReasonCode::SUCCESS), "MQTT from another address");
    assert_eq!(token_from(85, &b, "dev-002", "dev-002-secret").await, status(200), "HTTP from another address");
    let healthz = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_owned();
    assert_eq!(call_from(83, http_addr(&b), healthz).await, status(200), "/healthz stays reachable");
    b.stop().await;
}

/// HTTP may hold only its share of the hashing budget (here 1 of 2 slots, no waiting): while a
/// slow client secret is being verified, another HTTP secret is refused at once with 503 and
/// `Retry-After` (and is no failed authentication), but an MQTT CONNECT with a password is
/// verified on the other slot and accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hashing_cannot_take_the_slots_left_to_mqtt() {
    let b = broker(
        "auth_hash_concurrency = 2\nauth_hash_http_max = 1\nauth_hash_wait = 0\n\
         auth_fail_ban = { failures = 1 }\n",
    )
    .await;
    assert_eq!((b.server.hashing.size(), b.server.hashing.http_max()), (2, 1));
    let stats = b.server.hashing.stats.clone();
    let addr = http_addr(&b);
    let slow = tokio::spawn(async move {
        let basic = base64::engine::general_purpose::STANDARD.encode("slow:slowpw");
        let body = "grant_type=client_credentials";
        let req = format!(
            "POST /oauth/token HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {basic}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        call_from(86, addr, req).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.in_use_http.load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < deadline, "the slow verification never started");
        tokio::task::yield_now().await;
    }
    // The HTTP share is taken: refused busy at once, from any address.
    let a = token_from(87, &b, "dev-001", "dev-001-secret").await;
    assert_eq!(a, Answer { status: 503, retry_after: Some(1) });
    // MQTT still hashes, on the slot HTTP cannot take.
    assert_eq!(mqtt_login_from(88, &b).await, Some(ReasonCode::SUCCESS));
    assert_eq!(stats.in_use_http.load(Ordering::Acquire), 1, "the slow verification was running all along");
    assert_eq!(slow.await.unwrap(), status(200));
    assert!(stats.peak_http.load(Ordering::Relaxed) <= 1 && stats.peak.load(Ordering::Relaxed) <= 2);
    assert!(stats.busy_http.load(Ordering::Relaxed) >= 1);
    // The busy refusal was no failed login: 127.0.0.87 (ban at the first failure) is served.
    assert_eq!(token_from(87, &b, "dev-001", "dev-001-secret").await, status(200));
    b.stop().await;
}
