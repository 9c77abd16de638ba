//! The HTTP listener under slowloris and descriptor exhaustion: partial request headers are
//! closed after `header_timeout` while other clients are served; connections are capped per
//! source address and in all (a freed slot is usable again); oversized bodies get 413; shutdown
//! still stops the listener with connections open. Source addresses are distinct loopback
//! addresses (127.0.0.66 …), so the caps of one do not touch the others.
//!
//! Nothing sleeps to synchronise: every wait is a read or a retry bounded by a deadline.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use warden_testkit::TestBroker;

const LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\nallow_anonymous = true\n";

async fn broker(http: &str) -> TestBroker {
    TestBroker::from_toml(&format!("{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n{http}")).await
}

fn http_addr(b: &TestBroker) -> SocketAddr {
    b.server.http_addr.expect("http listener")
}

async fn tcp_from(last: u8, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
    s.connect(to).await.expect("connect")
}

/// A request that never finishes its headers.
async fn partial(last: u8, to: SocketAddr) -> TcpStream {
    let mut s = tcp_from(last, to).await;
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    s
}

/// Does the server close `s` (EOF or reset) before `deadline`?
async fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // a 408 before the close is fine
        }
    }
}

/// Is `s` still open (nothing to read, no EOF) right now?
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// `request` from 127.0.0.`last`; the whole response, or `None` if the connection was refused
/// (closed without an answer).
async fn call_from(last: u8, to: SocketAddr, request: &str) -> Option<String> {
    let mut s = tcp_from(last, to).await;
    let _ = s.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("answer or close within 5 s");
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

fn healthy(r: Option<String>) -> bool {
    r.is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"))
}

/// Retry `/healthz` from `last` until it answers, within `within`.
async fn healthz_eventually(last: u8, to: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if healthy(call_from(last, to, HEALTHZ).await) {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_are_closed_after_header_timeout_while_others_are_served() {
    let b = broker("header_timeout = \"1s\"\n").await;
    let addr = http_addr(&b);
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(partial(66, addr).await);
    }
    // Meanwhile, another client is served.
    assert!(healthy(call_from(1, addr, HEALTHZ).await));
    // Every partial request is closed by the server (1 s, with a generous deadline).
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(closed_by(s, deadline).await, "partial request {i} still open after 10 s");
    }
    assert!(healthy(call_from(1, addr, HEALTHZ).await));
    // Shutdown stops the listener even with a connection open.
    let _open = partial(66, addr).await;
    timeout(Duration::from_secs(10), b.stop()).await.expect("shutdown finishes");
    assert!(TcpStream::connect(addr).await.is_err(), "the HTTP listener is closed");
}

/// A kept-alive connection from 127.0.0.`last` that the server has admitted: it answered one
/// `/healthz` and the connection stays open for the next request. `None` if it was refused
/// (closed without an answer).
async fn admitted(last: u8, to: SocketAddr) -> Option<TcpStream> {
    let mut s = tcp_from(last, to).await;
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("answer or close within 5 s") {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"ok\n") {
            return Some(s);
        }
    }
}

/// Open kept-alive connections from `last` until `n` are admitted. A slot given back by a
/// finished connection (say a `Connection: close` request just answered) is freed by the
/// server shortly after the client sees its close, so a refusal is retried, within 5 s.
async fn admit_n(last: u8, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = Vec::new();
    while held.len() < n {
        assert!(Instant::now() < deadline, "{n} connections from 127.0.0.{last} not admitted within 5 s");
        if let Some(s) = admitted(last, to).await {
            held.push(s);
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_in_all() {
    let b = broker("max_connections = 5\nmax_connections_per_ip = 3\nheader_timeout = \"60s\"\n").await;
    let addr = http_addr(&b);
    let deadline = || Instant::now() + Duration::from_secs(5);
    // Three admitted from one address (each answered once, then kept alive).
    let mut held = admit_n(67, addr, 3).await;
    // A fourth from the same address is closed at once; another address is served.
    let mut fourth = partial(67, addr).await;
    assert!(closed_by(&mut fourth, deadline()).await, "over max_connections_per_ip");
    assert!(held.iter().all(still_open), "the first three are kept");
    assert!(healthy(call_from(1, addr, HEALTHZ).await), "another address is served");
    // Five open in all (the one just answered gives its slot back): a sixth, from any
    // address, is closed.
    held.extend(admit_n(68, addr, 2).await);
    let mut sixth = partial(69, addr).await;
    assert!(closed_by(&mut sixth, deadline()).await, "over max_connections");
    assert!(held.iter().all(still_open));
    // A closed connection gives its slot back.
    drop(held.remove(0));
    assert!(healthz_eventually(67, addr, Duration::from_secs(5)).await, "the freed slot is usable");
    b.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let b = broker("max_body_size = \"1KiB\"\n").await;
    let addr = http_addr(&b);
    let big = "POST /oauth/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n\
               Content-Length: 2000\r\nConnection: close\r\n\r\n";
    let r = call_from(1, addr, big).await.expect("an answer");
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    b.stop().await;
}

/// Admin `ip` / `cidr` bans close HTTP connections at accept, except from loopback (so that a
/// ban on a range holding the operator's own address can be lifted through the API).
#[tokio::test]
async fn admin_bans_apply_at_accept_but_not_to_loopback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bans.json"),
        r#"{"version":1,"bans":[{"kind":"ip","value":"10.9.9.9"},{"kind":"cidr","value":"0.0.0.0/0"}]}"#,
    )
    .unwrap();
    let b = TestBroker::from_toml_in(dir, &format!("{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n")).await;
    assert!(b.server.bans.ip_banned("127.0.0.70".parse().unwrap(), 0), "127.0.0.70 is inside 0.0.0.0/0");
    assert!(healthy(call_from(70, http_addr(&b), HEALTHZ).await), "loopback is exempt on the HTTP listener");
    b.stop().await;
}
