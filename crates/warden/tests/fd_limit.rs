//! File descriptors (issue 17, observation 3: ~20k partial HTTP requests exhausted the process's
//! descriptors, and MQTT CONNECTs got no CONNACK). The real `warden` process runs under a low
//! limit (`ulimit -n 256`, soft and hard, through `sh`), with the default caps (`[limits]
//! max_connections` 100000, `[http] max_connections` 1024), which do not fit: it warns once at
//! start, and the HTTP listener, flooded with partial requests from many loopback addresses,
//! holds no more than its share while an MQTT client still gets its CONNACK.
//!
//! Nothing sleeps to synchronise: every wait is a read bounded by a deadline.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use mqtt_codec::{Packet, Protocol};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use warden_testkit::{connect_packet, RawClient, Recv};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

/// The broker under `ulimit -n LIMIT`, its MQTT and HTTP addresses, and its log so far.
struct Proc {
    child: Child,
    mqtt: SocketAddr,
    http: SocketAddr,
    early: Vec<String>,
    _log: Receiver<String>,
}

impl Proc {
    fn start(dir: &std::path::Path, limit: u32) -> Proc {
        let cfg = dir.join("warden.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n\
                 [http]\nbind = \"127.0.0.1:0\"\nheader_timeout = \"60s\"\nrequest_timeout = \"60s\"\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        // `ulimit -n` in sh sets the soft and the hard limit: the broker cannot raise it.
        let mut child = Command::new("sh")
            .args(["-c", &format!("ulimit -n {limit} && exec \"$0\" serve --config \"$1\""), BIN])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = warden_testkit::stderr_lines(&mut child);
        let (mut mqtt, mut http, mut early) = (None, None, Vec::new());
        while mqtt.is_none() || http.is_none() {
            let line =
                log.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no listen lines: {early:?}"));
            if let Some(rest) = line.split("listening: mqtt://").nth(1) {
                mqtt = Some(rest.trim().parse().unwrap());
            }
            if let Some(rest) = line.split("listening: http://").nth(1) {
                http = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            early.push(line);
        }
        Proc { child, mqtt: mqtt.unwrap(), http: http.unwrap(), early, _log: log }
    }

    /// Open descriptors of the broker process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request that never finishes its headers, from 127.0.3.`last`.
async fn partial(last: u8, to: SocketAddr) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(SocketAddr::from(([127, 0, 3, last], 0))).ok()?;
    let mut s = tokio::time::timeout(Duration::from_secs(2), s.connect(to)).await.ok()?.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n").await.ok()?;
    Some(s)
}

async fn connack_within(addr: SocketAddr, id: &str, d: Duration) -> bool {
    match tokio::time::timeout(d, RawClient::connect(addr, connect_packet(Protocol::V5, id, true))).await {
        Ok((_, Recv::Packet(Packet::Connack(a)))) => a.reason_code.is_success(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flood_up_to_its_cap_leaves_descriptors_for_mqtt_and_the_overcommit_is_warned() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Proc::start(dir.path(), 256);
    // Warned once at start, naming the listeners and the numbers: 256 − 64 reserved − 2 listening
    // sockets = 190; HTTP keeps 190 / 8 = 23, MQTT the other 167.
    let warned: Vec<_> = broker.early.iter().filter(|l| l.contains("file descriptor limit")).collect();
    assert_eq!(warned.len(), 1, "{:?}", broker.early);
    let w = warned[0];
    assert!(w.contains("WARN"), "{w}");
    assert!(w.contains(&format!("mqtt://{}", broker.mqtt)) && w.contains(&format!("http://{}", broker.http)), "{w}");
    assert!(w.contains("max_connections 100000 -> 167") && w.contains("max_connections 1024 -> 23"), "{w}");

    // 400 partial requests from 20 addresses (20 each, under the per-address cap of 64): far
    // more than the process has descriptors for. The HTTP listener keeps 23 and closes the rest.
    // Opened all at once: they are all held while the MQTT clients connect.
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..400u32 {
        opening.spawn(partial(1 + (i % 20) as u8, broker.http));
    }
    let mut flood = Vec::new();
    while let Some(s) = opening.join_next().await {
        flood.extend(s.unwrap());
    }
    assert!(flood.len() >= 300, "only {} flood connections opened", flood.len());
    // An MQTT client still gets its CONNACK, more than once (a reconnect too).
    for i in 0..3 {
        assert!(
            connack_within(broker.mqtt, &format!("legit-{i}"), Duration::from_secs(5)).await,
            "no CONNACK with the HTTP listener flooded (try {i})"
        );
    }
    // And the process stays under its limit, with room to spare.
    let fds = broker.fds();
    assert!(fds > 0 && fds < 256 - 64, "the broker holds {fds} descriptors");
    // Several MQTT connections at once still fit beside the flood.
    let mut held = Vec::new();
    for i in 0..50 {
        let (c, r) = RawClient::connect(broker.mqtt, connect_packet(Protocol::V5, &format!("held-{i}"), true)).await;
        assert!(matches!(r, Recv::Packet(Packet::Connack(ref a)) if a.reason_code.is_success()), "held-{i}: {r:?}");
        held.push(c);
    }
    drop(flood);
}
