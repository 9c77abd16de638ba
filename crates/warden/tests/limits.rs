//! Abuse resistance (SPEC §7, "no client can hurt another") against the real broker: publish
//! rate and bandwidth limits, the TLS handshake timeout, per-(user, address) backoff after
//! failed logins, stalled subscribers, the memory high-water mark and the `$SYS` counters.
//!
//! Every wait is bounded; the events waited for are the broker's own (a DISCONNECT, a closed
//! socket, a will, a `$SYS` publication), never a sleep.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt_codec::{decode, LastWill, Packet, Protocol, QoS, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use warden::config::ListenerProtocol;
use warden_testkit::pki::TestPki;
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker};

const V5: Protocol = Protocol::V5;
const V3: Protocol = Protocol::V311;
/// Generous outer bound for anything a test waits for.
const LONG: Duration = Duration::from_secs(20);

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

fn encoded(p: &Packet, v: Protocol) -> BytesMut {
    let mut b = BytesMut::new();
    p.encode(v, &mut b);
    b
}

async fn ping(c: &mut RawClient) {
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv_within(LONG).await, Recv::Packet(Packet::PingResp));
}

/// Open a TCP connection from a given loopback source address (all of 127.0.0.0/8 is local).
async fn open_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((src, 0))).unwrap();
    s.connect(to).await.unwrap()
}

#[tokio::test]
async fn publish_rate_beyond_the_burst_disconnects_with_0x96() {
    // MQTT 5 §3.14.2.1: 0x96 "Message rate too high — the Client is publishing at too high a
    // rate". With publish_throttle = 0 the first PUBLISH beyond the burst is refused.
    let b = TestBroker::with_config(
        "[auth]\nallow_anonymous = true\n[limits]\nmax_publish_rate = 5\npublish_throttle = 0\n",
    )
    .await;
    let (mut sub, _) = connected(b.addr(), connect_packet(V5, "rate-sub", true)).await;
    sub.subscribe(1, "rate/#", QoS::AtMostOnce).await;
    let (mut c, _) = connected(b.addr(), connect_packet(V5, "rate-flood", true)).await;
    let mut burst = BytesMut::new();
    for i in 0..20u8 {
        burst.extend_from_slice(&encoded(&publish("rate/x", QoS::AtMostOnce, 0, &[i]), V5));
    }
    c.send_bytes(&burst).await;
    let seen = c.expect_closed_within(LONG).await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::MESSAGE_RATE_TOO_HIGH));
    // The burst (5) was routed, nothing beyond it.
    for i in 0..5u8 {
        assert_eq!(sub.expect_publish().await.payload.as_ref(), &[i]);
    }
    ping(&mut sub).await; // the other client is unaffected
    assert_eq!(b.server.broker.stats.limits.publish_rate_disconnects.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn publish_bandwidth_beyond_the_burst_disconnects_with_0x97_and_v3_is_closed() {
    // MQTT 5 §3.14.2.1: 0x97 "Quota exceeded — an implementation or administrative imposed
    // limit has been exceeded". v3.1.1 has no reason codes: the Server closes the Network
    // Connection [MQTT-4.8.0-1 analogue for a server-side limit].
    let b = TestBroker::with_config(
        "[auth]\nallow_anonymous = true\n[limits]\nmax_packet_size = 1024\nmax_publish_bandwidth = 1000\npublish_throttle = 0\n",
    )
    .await;
    for (v, id) in [(V5, "bw5"), (V3, "bw3")] {
        let (mut c, _) = connected(b.addr(), connect_packet(v, id, true)).await;
        let mut burst = BytesMut::new();
        for _ in 0..3 {
            burst.extend_from_slice(&encoded(&publish("bw/x", QoS::AtMostOnce, 0, &[0u8; 600]), v));
        }
        c.send_bytes(&burst).await;
        let seen = c.expect_closed_within(LONG).await;
        match v {
            Protocol::V5 => assert_eq!(disconnect_reason(&seen), Some(ReasonCode::QUOTA_EXCEEDED)),
            _ => assert!(seen.is_empty(), "v3: closed without a packet, got {seen:?}"),
        }
    }
    assert_eq!(b.server.broker.stats.limits.publish_bandwidth_disconnects.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_flooding_publisher_is_throttled_then_disconnected_while_others_are_served() {
    // Over max_publish_rate the broker stops reading the client (TCP backpressure); still over
    // after publish_throttle, it disconnects with 0x96.
    let b = TestBroker::with_config(
        "[auth]\nallow_anonymous = true\n[limits]\nmax_publish_rate = 50\npublish_throttle = \"500ms\"\n",
    )
    .await;
    let (mut other, _) = connected(b.addr(), connect_packet(V5, "calm", true)).await;
    let stream = TcpStream::connect(b.addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&encoded(&Packet::Connect(Box::new(connect_packet(V5, "flood", true))), V5)).await.unwrap();
    // The flood: bounded in count, stops when the broker closes the connection.
    let writer = tokio::spawn(async move {
        let mut chunk = BytesMut::new();
        for _ in 0..100 {
            chunk.extend_from_slice(&encoded(&publish("flood/x", QoS::AtMostOnce, 0, b"x"), V5));
        }
        for _ in 0..20_000 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let closed = tokio::time::timeout(LONG, async {
        loop {
            buf.reserve(4096);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while let Ok(Some(p)) = decode(&mut buf, V5, u32::MAX) {
                        packets.push(p);
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the flooding connection was never closed");
    assert_eq!(disconnect_reason(&packets), Some(ReasonCode::MESSAGE_RATE_TOO_HIGH));
    writer.abort();
    ping(&mut other).await;
    let l = &b.server.broker.stats.limits;
    assert!(l.publish_rate_throttled.load(Ordering::Relaxed) >= 1);
    assert_eq!(l.publish_rate_disconnects.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_tls_peer_that_never_handshakes_is_dropped_at_tls_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "hs");
    let s = pki.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [auth]\nallow_anonymous = true\n[limits]\ntls_handshake_timeout = \"200ms\"\nconnect_timeout = \"60s\"\n",
        s.cert.display(),
        s.key.display()
    );
    let b = TestBroker::from_toml_in(dir, &body).await;
    // A raw TCP socket that sends nothing: the broker closing it is the event.
    let mut sock = TcpStream::connect(b.addr_of(ListenerProtocol::Mqtts)).await.unwrap();
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(LONG, sock.read(&mut byte)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "closed well before connect_timeout: {r:?}");
    assert_eq!(b.server.broker.stats.limits.tls_handshake_timeouts.load(Ordering::Relaxed), 1);
}

fn login(user: &str, pw: &str, v: Protocol) -> mqtt_codec::Connect {
    let mut c = connect_packet(v, "", true);
    c.client_id = format!("{user}-{pw}");
    c.username = Some(user.into());
    c.password = Some(Bytes::copy_from_slice(pw.as_bytes()));
    c
}

async fn connack_from(src: [u8; 4], b: &TestBroker, c: mqtt_codec::Connect) -> Recv {
    RawClient::connect_over(open_from(src, b.addr()).await, c).await.1
}

fn code(r: &Recv) -> Option<ReasonCode> {
    match r {
        Recv::Packet(Packet::Connack(a)) => Some(a.reason_code),
        _ => None,
    }
}

async fn password_broker(limits: &str) -> TestBroker {
    password_broker_with("", limits).await
}

/// `password_broker` with `extra` password-file lines.
async fn password_broker_with(extra: &str, limits: &str) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let hash = |pw: &[u8]| warden_policy::password::hash_password(pw);
    std::fs::write(&passwd, format!("ann:{}\nbob:{}\n{extra}", hash(b"annpw"), hash(b"bobpw"))).unwrap();
    TestBroker::from_toml_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\npassword_file = \"{{dir}}/passwd\"\n[limits]\n{limits}"
        ),
    )
    .await
}

#[tokio::test]
async fn failures_back_off_per_user_and_address_never_locking_the_user_elsewhere() {
    // SPEC §7: "a user's account is never locked by failures that come from other addresses".
    // The per-address ban is out of the way here; only the per-(user, address) backoff acts.
    let b = password_broker(
        "auth_fail_ban = { failures = 1000 }\nauth_fail_backoff = { failures = 3, initial = \"60s\", max = \"60s\" }\n",
    )
    .await;
    let attacker = [127, 0, 0, 2];
    for _ in 0..3 {
        assert_eq!(code(&connack_from(attacker, &b, login("ann", "guess", V5)).await), Some(ReasonCode(0x86)));
    }
    // From the attacker's address, ann backs off: refused with 0x9F (Connection rate
    // exceeded, MQTT 5 §3.2.2.2) without the password being checked, even the right one.
    assert_eq!(
        code(&connack_from(attacker, &b, login("ann", "annpw", V5)).await),
        Some(ReasonCode::CONNECTION_RATE_EXCEEDED)
    );
    // v3 has no such code: 0x03 Server unavailable.
    assert_eq!(code(&connack_from(attacker, &b, login("ann", "annpw", V3)).await), Some(ReasonCode(0x03)));
    // Another user from the same address, and ann from any other address, are unaffected.
    assert_eq!(code(&connack_from(attacker, &b, login("bob", "bobpw", V5)).await), Some(ReasonCode(0)));
    assert_eq!(code(&connack_from([127, 0, 0, 3], &b, login("ann", "annpw", V5)).await), Some(ReasonCode(0)));
    assert_eq!(b.server.broker.stats.limits.auth_backoff_refused.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_wrong_password_flood_from_one_address_does_not_stop_the_user_from_another() {
    // The per-address ban (auth_fail_ban) plus the per-user backoff, both at work: the flood
    // from 127.0.0.4 gets the address banned (refused at accept, before any hashing — no
    // CONNACK at all), while ann from 127.0.0.5 connects.
    let b = password_broker(
        "auth_fail_ban = { failures = 5, within = \"60s\", ban = \"300s\" }\nauth_fail_backoff = { failures = 2, initial = \"60s\" }\n",
    )
    .await;
    let attacker = [127, 0, 0, 4];
    let mut refused = 0;
    for _ in 0..12 {
        let r = connack_from(attacker, &b, login("ann", "guess", V5)).await;
        if code(&r).is_some_and(|c| c != ReasonCode(0)) || r == Recv::Closed {
            refused += 1;
        }
    }
    assert_eq!(refused, 12);
    assert_eq!(connack_from(attacker, &b, login("bob", "bobpw", V5)).await, Recv::Closed, "the address is banned");
    assert_eq!(code(&connack_from([127, 0, 0, 5], &b, login("ann", "annpw", V5)).await), Some(ReasonCode(0)));
    let l = &b.server.broker.stats.limits;
    assert_eq!(l.bans.load(Ordering::Relaxed), 1);
    assert!(l.banned_refused.load(Ordering::Relaxed) >= 1);
}

/// Issue 17 (smaller ones): only failed credentials count towards the address ban. Refusals
/// of something else — an unsupported authentication method (0x8C), a client id reserved for
/// another principal (0x85), a will the client may not publish (0x87) — do not ban the address
/// (one misconfigured device must not ban everyone behind its NAT); wrong passwords still do.
#[tokio::test]
async fn refusals_that_are_not_failed_credentials_do_not_ban_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let hash = |pw: &[u8]| warden_policy::password::hash_password(pw);
    std::fs::write(dir.path().join("passwd"), format!("ann:{}\nbob:{}\n", hash(b"annpw"), hash(b"bobpw"))).unwrap();
    std::fs::write(dir.path().join("acl"), "user ann\ntopic readwrite ann/#\n").unwrap();
    let b = TestBroker::from_toml_in(
        dir,
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\npassword_file = \"{dir}/passwd\"\n\
         [authz]\nacl_file = \"{dir}/acl\"\n[limits]\nauth_fail_ban = { failures = 3, within = \"60s\", ban = \"300s\" }\n",
    )
    .await;
    let device = [127, 0, 0, 7];
    for i in 0..4 {
        let mut c = login("ann", "annpw", V5);
        c.properties.authentication_method = Some("FOO".into());
        assert_eq!(code(&connack_from(device, &b, c).await), Some(ReasonCode::BAD_AUTHENTICATION_METHOD), "{i}");
        let mut c = login("ann", "annpw", V5);
        c.client_id = "bob".into();
        assert_eq!(code(&connack_from(device, &b, c).await), Some(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID), "{i}");
        let mut c = login("ann", "annpw", V5);
        c.will = Some(mqtt_codec::LastWill {
            topic: mqtt_codec::TopicName::new("bob/will").unwrap(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        assert_eq!(code(&connack_from(device, &b, c).await), Some(ReasonCode::NOT_AUTHORIZED), "{i}");
    }
    assert_eq!(code(&connack_from(device, &b, login("ann", "annpw", V5)).await), Some(ReasonCode(0)), "not banned");
    assert_eq!(b.server.broker.stats.limits.bans.load(Ordering::Relaxed), 0);
    // Control: three wrong passwords ban the address.
    for _ in 0..3 {
        assert_eq!(code(&connack_from(device, &b, login("ann", "guess", V5)).await), Some(ReasonCode(0x86)));
    }
    assert_eq!(connack_from(device, &b, login("ann", "annpw", V5)).await, Recv::Closed, "banned");
}

/// User `slow`, password `slowpw`: an argon2id hash with 150 passes over 8 MiB (about a second
/// or two to verify), so its verification holds a hashing slot long enough to be seen.
const SLOW_HASH: &str =
    "$argon2id$v=19$m=8192,t=150,p=1$c2xvd3NhbHRzbG93c2FsdA$nxcczZwsTrJeN/n5zojjreutO5bX/BUEabbnp/8yLnk";

#[tokio::test]
async fn a_connect_that_waits_too_long_for_a_hashing_slot_is_refused_busy_and_not_counted_as_a_failure() {
    // One verification at a time; a CONNECT waits at most 100 ms for it. The address ban is at
    // the first failure, so a busy refusal counted as a failed login would show as a ban.
    let b = password_broker_with(
        &format!("slow:{SLOW_HASH}\n"),
        "auth_hash_concurrency = 1\nauth_hash_wait = \"100ms\"\nauth_fail_ban = { failures = 1 }\n",
    )
    .await;
    let addr = b.addr();
    // `slow` takes the only slot (retrying should it itself find the slot taken).
    let slow = tokio::spawn(async move {
        loop {
            let r = RawClient::connect_over(open_from([127, 0, 0, 6], addr).await, login("slow", "slowpw", V5)).await.1;
            if code(&r) != Some(ReasonCode::SERVER_BUSY) {
                return r;
            }
        }
    });
    // Meanwhile ann, from another address, is refused with v5 0x89 Server busy and v3 0x03
    // Server unavailable (an attempt that finds the slot free is simply accepted).
    let (mut v5_busy, mut v3_busy) = (false, false);
    let deadline = tokio::time::Instant::now() + LONG;
    while !(v5_busy && v3_busy) {
        assert!(!slow.is_finished(), "slow's verification ended before ann saw the slot taken");
        assert!(tokio::time::Instant::now() < deadline, "no busy refusal within {LONG:?}");
        let v = if v5_busy { V3 } else { V5 };
        match code(&connack_from([127, 0, 0, 7], &b, login("ann", "annpw", v)).await) {
            Some(ReasonCode::SERVER_BUSY) if v == V5 => v5_busy = true,
            Some(ReasonCode(0x03)) if v == V3 => v3_busy = true,
            Some(ReasonCode::SUCCESS) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(code(&tokio::time::timeout(LONG, slow).await.unwrap().unwrap()), Some(ReasonCode::SUCCESS));
    // Not a failed login: ann's address is not banned, and nobody backs off.
    assert_eq!(code(&connack_from([127, 0, 0, 7], &b, login("ann", "annpw", V5)).await), Some(ReasonCode::SUCCESS));
    let l = &b.server.broker.stats.limits;
    assert!(l.auth_hash_busy.load(Ordering::Relaxed) >= 2);
    assert_eq!(l.bans.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_closed_after_write_stall_timeout() {
    // The stalled subscriber's will is the event: the broker closed it (and published the will,
    // MQTT 5 §3.1.2.5: the will is published when the connection closes without DISCONNECT 0x00).
    let b = TestBroker::with_config(
        "[auth]\nallow_anonymous = true\n[limits]\nwrite_stall_timeout = \"300ms\"\nmax_publish_bandwidth = 0\n",
    )
    .await;
    let (mut watcher, _) = connected(b.addr(), connect_packet(V5, "watcher", true)).await;
    watcher.subscribe(1, "will/#", QoS::AtMostOnce).await;
    let mut c = connect_packet(V5, "stalled", true);
    c.will = Some(LastWill {
        topic: mqtt_codec::TopicName::new("will/stalled").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut stalled, _) = connected(b.addr(), c).await;
    stalled.subscribe(1, "big/#", QoS::AtMostOnce).await;
    // Never read from `stalled` again. Enough data to fill its socket buffers.
    let (mut p, _) = connected(b.addr(), connect_packet(V5, "filler", true)).await;
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..400 {
        p.send(&publish("big/x", QoS::AtMostOnce, 0, &payload)).await;
    }
    let will = tokio::time::timeout(LONG, watcher.expect_publish()).await.expect("the will arrives");
    assert_eq!(will.topic.as_str(), "will/stalled");
    assert!(b.server.broker.stats.limits.write_stalled.load(Ordering::Relaxed) >= 1);
    ping(&mut p).await;
}

/// Wait for a retained `$SYS/broker/limits/<name>` publication whose value passes `ok`.
async fn wait_sys(c: &mut RawClient, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Recv::Packet(Packet::Publish(p)) => {
                let v: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                if ok(v) {
                    return v;
                }
            }
            Recv::Packet(_) => {}
            other => panic!("no matching $SYS publication: {other:?}"),
        }
    }
}

#[tokio::test]
async fn above_max_memory_publishers_stop_being_read_and_resume_when_it_drains() {
    let b = TestBroker::with_config(
        "[auth]\nallow_anonymous = true\n[limits]\nmax_memory = \"1MiB\"\nsys_interval = 1\nmax_publish_bandwidth = 0\nmax_publish_rate = 0\nwrite_stall_timeout = 0\nmax_queued_messages = 1000000\nmax_queued_bytes = \"64MiB\"\nmax_queued_bytes_per_principal = \"64MiB\"\n",
    )
    .await;
    let (mut sys, _) = connected(b.addr(), connect_packet(V5, "sys", true)).await;
    sys.subscribe(1, "$SYS/broker/limits/memory_paused", QoS::AtMostOnce).await;
    // (The one principal's queues may hold 64 MiB: by default they would stop at a quarter of
    // max_memory, and the broker would never go above the mark.)
    // A subscriber that does not read for now.
    let sub_stream = TcpStream::connect(b.addr()).await.unwrap();
    let (mut srd, mut swr) = sub_stream.into_split();
    swr.write_all(&encoded(&Packet::Connect(Box::new(connect_packet(V3, "slow-sub", true))), V3)).await.unwrap();
    swr.write_all(&encoded(&warden_testkit::subscribe(1, "mem/#", QoS::AtMostOnce), V3)).await.unwrap();
    // The heavy publisher writes 32 KiB messages until the test has seen it paused (a fixed
    // amount could all be read and routed before the 200 ms memory sample on a loaded machine,
    // and then nothing would ever be paused). Bounded: at most 20,000 messages, and the
    // subscriber's queue holds at most 64 MiB (beyond it deliveries are dropped), so the
    // broker stays above the 1 MiB mark without growing without bound.
    let pub_stream = TcpStream::connect(b.addr()).await.unwrap();
    let (mut prd, mut pwr) = pub_stream.into_split();
    pwr.write_all(&encoded(&Packet::Connect(Box::new(connect_packet(V3, "heavy", true))), V3)).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_w = stop.clone();
    let writer = tokio::spawn(async move {
        let one = encoded(&publish("mem/x", QoS::AtMostOnce, 0, &vec![1u8; 32 * 1024]), V3);
        for _ in 0..20_000 {
            if stop_w.load(Ordering::Relaxed) {
                break;
            }
            if pwr.write_all(&one).await.is_err() {
                return None;
            }
        }
        pwr.write_all(&encoded(&Packet::PingReq, V3)).await.ok()?;
        Some(pwr)
    });
    // The broker reports the pause in $SYS (sys_interval = 1 s).
    wait_sys(&mut sys, |v| v >= 1).await;
    stop.store(true, Ordering::Relaxed);
    // A light client is still served meanwhile.
    let (mut light, _) = connected(b.addr(), connect_packet(V5, "light", true)).await;
    ping(&mut light).await;
    // The subscriber reads: the queue drains, the publisher is read again; its PINGRESP,
    // behind everything it sent, is the event that it was read to the end.
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(srd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let got_pingresp = tokio::time::timeout(LONG * 3, async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(4096);
            match prd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {
                    while let Ok(Some(p)) = decode(&mut buf, V3, u32::MAX) {
                        if p == Packet::PingResp {
                            return true;
                        }
                    }
                }
            }
        }
    })
    .await;
    assert_eq!(got_pingresp, Ok(true), "the paused publisher resumed and was read to the end");
    assert!(writer.await.unwrap().is_some());
    drain.abort();
}

#[tokio::test]
async fn limit_counters_are_published_under_sys() {
    let b = TestBroker::with_config(
        "[auth]\nallow_anonymous = true\n[limits]\nmax_publish_rate = 1\npublish_throttle = 0\nsys_interval = 1\n",
    )
    .await;
    let (mut c, _) = connected(b.addr(), connect_packet(V5, "one-too-many", true)).await;
    let mut two = encoded(&publish("x", QoS::AtMostOnce, 0, b"1"), V5);
    two.extend_from_slice(&encoded(&publish("x", QoS::AtMostOnce, 0, b"2"), V5));
    c.send_bytes(&two).await;
    assert_eq!(disconnect_reason(&c.expect_closed_within(LONG).await), Some(ReasonCode::MESSAGE_RATE_TOO_HIGH));
    let (mut sys, _) = connected(b.addr(), connect_packet(V5, "sys", true)).await;
    sys.subscribe(1, "$SYS/broker/limits/publish_rate_disconnects", QoS::AtMostOnce).await;
    assert_eq!(wait_sys(&mut sys, |v| v == 1).await, 1);
}

/// A broker with users `m` and `v` (passwords `mpw`, `vpw`), persistence on, and these limits.
async fn two_users_broker(limits: &str) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let hash = |pw: &[u8]| warden_policy::password::hash_password(pw);
    std::fs::write(dir.path().join("passwd"), format!("m:{}\nv:{}\n", hash(b"mpw"), hash(b"vpw"))).unwrap();
    TestBroker::from_toml_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\npassword_file = \"{{dir}}/passwd\"\n\
             [persistence]\nenabled = true\n[limits]\n{limits}"
        ),
    )
    .await
}

#[tokio::test]
async fn one_principal_flooding_its_offline_sessions_does_not_stall_another() {
    // SPEC §7 "no client can hurt another", the adversarial review at a smaller scale: user m
    // holds 20 offline persistent sessions subscribed at QoS 1 and floods them with ~30 MB;
    // their per-session bound (1 MiB each, 20 MiB together) is above max_memory (16 MiB).
    // The principal's bound (a quarter of max_memory) keeps m's queues under 4 MiB, so the
    // broker does not stay above the mark and stop reading every publisher: user v's QoS 1
    // publishes are each acknowledged within 2 s, and m's own publishes are acknowledged too.
    let b = two_users_broker(
        "max_memory = \"16MiB\"\nmax_queued_bytes = \"1MiB\"\nmax_publish_rate = 0\nmax_publish_bandwidth = 0\n\
         write_stall_timeout = 0\n",
    )
    .await;
    for i in 0..20 {
        let mut c = login("m", "mpw", V3);
        c.client_id = format!("m-offline-{i}");
        c.clean_start = false;
        let (mut s, _) = connected(b.addr(), c).await;
        s.subscribe(1, "mem/#", QoS::AtLeastOnce).await;
        s.send(&Packet::Disconnect(Default::default())).await;
        assert!(s.expect_closed_within(LONG).await.is_empty());
    }
    // The flood: m publishes 460 messages of 64 KiB at QoS 1, 32 in flight.
    const FLOOD: usize = 460;
    let mut o = rumqttc::MqttOptions::new("m-pub", "127.0.0.1", b.port());
    o.set_credentials("m", "mpw");
    o.set_inflight(32);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acked_ev = acked.clone();
    let events = tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev {
                if acked_ev.fetch_add(1, Ordering::Relaxed) + 1 == FLOOD {
                    return;
                }
            }
        }
    });
    let flood = tokio::spawn(async move {
        let payload = Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..FLOOD {
            if client.publish_bytes("mem/x", rumqttc::QoS::AtLeastOnce, false, payload.clone()).await.is_err() {
                break;
            }
        }
        client
    });
    // Until the flood is acknowledged (or 20 s, the broker stalled), then v publishes.
    let _ = tokio::time::timeout(LONG, async {
        while acked.load(Ordering::Relaxed) < FLOOD {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut c = login("v", "vpw", V5);
    c.client_id = "v-pub".into();
    let (mut v, _) = connected(b.addr(), c).await;
    for id in 1..=6u16 {
        v.send(&publish("v/x", QoS::AtLeastOnce, id, b"small")).await;
        match v.recv_within(Duration::from_secs(2)).await {
            Recv::Packet(Packet::PubAck(a)) if a.packet_id == id => {}
            other => panic!("v's PUBLISH {id} not acknowledged within 2 s: {other:?}"),
        }
    }
    // m's publishes were all acknowledged: the deliveries over its bound were dropped, not
    // the publisher.
    assert_eq!(acked.load(Ordering::Relaxed), FLOOD, "m's flood acknowledged");
    events.await.unwrap();
    drop(flood.await.unwrap());
    let broker = &b.server.broker;
    let per_principal = 4 << 20;
    assert!(broker.queued_bytes() <= per_principal, "m's queues hold {} bytes", broker.queued_bytes());
    assert!(broker.stats.limits.queued_bytes_per_principal.load(Ordering::Relaxed) > 0);
    assert!(broker.stats.messages_dropped.load(Ordering::Relaxed) > 0);
}
