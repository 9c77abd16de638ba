//! Test helpers for Warden (dev-only).
//!
//! # Layout
//! - `lib.rs`: [`TestBroker`], the real broker in-process on ephemeral loopback ports (port 0),
//!   with a temporary data directory and graceful shutdown; [`RawClient`], a byte-level MQTT
//!   client for protocol and abuse tests (send any bytes, read decoded packets, observe the
//!   close, every wait bounded by [`WAIT`]); packet builders ([`connect_packet`], [`publish`],
//!   [`subscribe`]); [`LogBuf`] to read what was logged; [`stderr_lines`] to read a spawned
//!   broker's standard error without sleeping.
//! - [`pki`]: a test PKI (CA, server and client certificates, good and bad, CRLs) and a TLS
//!   client speaking raw MQTT.
//!
//! Helpers panic with a message naming what failed: in a test, that is the failure report.

// Workspace lints of issue 18, enabled per crate until every crate is clean.

pub mod http;
pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use mqtt_codec::{decode, Connect, Packet, Properties, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden::config::{Config, ListenerProtocol};
use warden::server::Server;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

/// The real broker on `127.0.0.1:0` (MQTT and WebSocket listeners).
pub struct TestBroker {
    /// The running server.
    pub server: Server,
    /// Its temporary data directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TestBroker {
    /// Start with `allow_anonymous = true` and default limits.
    pub async fn start() -> TestBroker {
        Self::with_config("[auth]\nallow_anonymous = true\n").await
    }

    /// Start with extra TOML appended after the listeners (e.g. `[auth]` or `[limits]`).
    /// `{dir}` in the text is replaced by the data directory.
    pub async fn with_config(extra: &str) -> TestBroker {
        Self::from_toml(&format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"ws\"\n{extra}"
        ))
        .await
    }

    /// Start with this configuration (listeners included; `data_dir` is set to a temporary
    /// directory). `{dir}` in the text is replaced by that directory.
    pub async fn from_toml(body: &str) -> TestBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::from_toml_in(dir, body).await
    }

    /// [`TestBroker::from_toml`] with a directory the caller prepared (certificates, say).
    ///
    /// Every client of a test broker comes from 127.0.0.1, so the per-address guard's failed-
    /// authentication ban, per-(user, address) backoff and connect rate are lifted unless the
    /// configuration sets them (the tests of the guard do).
    pub async fn from_toml_in(dir: tempfile::TempDir, body: &str) -> TestBroker {
        let mut lifted = String::new();
        if !body.contains("auth_fail_ban") {
            lifted.push_str("auth_fail_ban = { failures = 1000000 }\n");
        }
        if !body.contains("connect_rate_per_ip") {
            lifted.push_str("connect_rate_per_ip = 1000000\n");
        }
        if !body.contains("auth_fail_backoff") {
            lifted.push_str("auth_fail_backoff = { failures = 1000000 }\n");
        }
        let body = if let Some(i) = body.find("[limits]\n") {
            let at = i + "[limits]\n".len();
            format!("{}{lifted}{}", &body[..at], &body[at..])
        } else {
            format!("{body}\n[limits]\n{lifted}")
        };
        let body = body.as_str();
        let text = format!(
            "data_dir = \"{d}\"\n{body}",
            d = dir.path().display(),
            body = body.replace("{dir}", &dir.path().display().to_string())
        );
        let path = dir.path().join("warden.toml");
        std::fs::write(&path, &text).expect("write config");
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let server = Server::start(&cfg).await.expect("broker starts");
        TestBroker { server, dir }
    }

    /// The first listener of this kind.
    pub fn addr_of(&self, protocol: ListenerProtocol) -> SocketAddr {
        self.server.addr(protocol).expect("listener of that kind")
    }

    /// The MQTT (TCP) listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr(ListenerProtocol::Mqtt).expect("mqtt listener")
    }

    /// The MQTT port.
    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// The WebSocket listener's address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.server.addr(ListenerProtocol::Ws).expect("ws listener")
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the data directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stop the broker (clients get DISCONNECT 0x8B).
    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// What a raw client observed when it waited for a packet.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // test-only; a Packet is what tests inspect
pub enum Recv {
    /// A decoded packet.
    Packet(Packet),
    /// The broker closed the connection.
    Closed,
    /// Nothing arrived within the wait.
    Timeout,
}

/// Any byte stream a raw client can speak over (TCP, TLS).
pub trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ByteStream for T {}

/// A byte-level MQTT client.
pub struct RawClient {
    stream: Box<dyn ByteStream>,
    buf: BytesMut,
    /// Protocol used to encode and decode.
    pub protocol: Protocol,
}

impl RawClient {
    /// Open a TCP connection (no CONNECT sent).
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        RawClient::over(stream, protocol)
    }

    /// A raw client over an established stream (e.g. TLS).
    pub fn over(stream: impl ByteStream + 'static, protocol: Protocol) -> RawClient {
        RawClient { stream: Box::new(stream), buf: BytesMut::new(), protocol }
    }

    /// Send CONNECT over an established stream and return the client with what came back.
    pub async fn connect_over(stream: impl ByteStream + 'static, connect: Connect) -> (RawClient, Recv) {
        let mut c = RawClient::over(stream, connect.protocol);
        c.send(&Packet::Connect(Box::new(connect))).await;
        let r = c.recv().await;
        (c, r)
    }

    /// Open, send CONNECT and return the client with the CONNACK.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (RawClient, Recv) {
        let mut c = RawClient::open(addr, connect.protocol).await;
        c.send(&Packet::Connect(Box::new(connect))).await;
        let r = c.recv().await;
        (c, r)
    }

    /// Send a packet.
    pub async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        p.encode(self.protocol, &mut b);
        self.send_bytes(&b).await;
    }

    /// Send raw bytes (errors ignored: the broker may already have closed).
    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    /// Wait up to [`WAIT`] for the next packet.
    pub async fn recv(&mut self) -> Recv {
        self.recv_within(WAIT).await
    }

    /// Wait up to `d` for the next packet.
    pub async fn recv_within(&mut self, d: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match decode(&mut self.buf, self.protocol, u32::MAX) {
                Ok(Some(p)) => return Recv::Packet(p),
                Ok(None) => {}
                Err(e) => panic!("broker sent an undecodable packet: {e}"),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Recv::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Read packets until the broker closes the connection; returns them.
    /// Panics if the connection stays open longer than `d`.
    pub async fn expect_closed_within(&mut self, d: Duration) -> Vec<Packet> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Recv::Packet(p) => seen.push(p),
                Recv::Closed => return seen,
                Recv::Timeout => panic!("connection still open after {d:?}; received {seen:?}"),
            }
        }
    }
}

/// A CONNECT with the given client id and clean start, no credentials.
pub fn connect_packet(protocol: Protocol, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol,
        clean_start,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
    }
}

/// A PUBLISH packet.
pub fn publish(topic: &str, qos: mqtt_codec::QoS, packet_id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(mqtt_codec::Publish {
        dup: false,
        qos,
        retain: false,
        topic: mqtt_codec::TopicName::new(topic).expect("valid topic"),
        packet_id,
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// A SUBSCRIBE packet for one filter.
pub fn subscribe(packet_id: u16, filter: &str, qos: mqtt_codec::QoS) -> Packet {
    subscribe_with(packet_id, filter, mqtt_codec::SubscriptionOptions { qos, ..Default::default() })
}

/// A SUBSCRIBE packet for one filter with options.
pub fn subscribe_with(packet_id: u16, filter: &str, options: mqtt_codec::SubscriptionOptions) -> Packet {
    Packet::Subscribe(mqtt_codec::Subscribe {
        packet_id,
        properties: Default::default(),
        filters: vec![(mqtt_codec::TopicFilter::new(filter).expect("valid filter"), options)],
    })
}

/// Connect a raw client and assert the CONNACK is a success.
pub async fn connected(addr: SocketAddr, connect: Connect) -> (RawClient, mqtt_codec::Connack) {
    let (c, r) = RawClient::connect(addr, connect).await;
    match r {
        Recv::Packet(Packet::Connack(a)) if a.reason_code.is_success() => (c, a),
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

impl RawClient {
    /// Send a SUBSCRIBE and wait for its SUBACK; returns the reason codes.
    pub async fn subscribe(
        &mut self,
        packet_id: u16,
        filter: &str,
        qos: mqtt_codec::QoS,
    ) -> Vec<mqtt_codec::ReasonCode> {
        self.send(&subscribe(packet_id, filter, qos)).await;
        match self.recv().await {
            Recv::Packet(Packet::SubAck(a)) if a.packet_id == packet_id => a.reason_codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Wait for a PUBLISH (panics on anything else).
    pub async fn expect_publish(&mut self) -> mqtt_codec::Publish {
        match self.recv().await {
            Recv::Packet(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// A `tracing` writer into a shared buffer, for tests that read what was logged:
/// `fmt().with_writer(move || buf.clone())`, then [`LogBuf::text`].
#[derive(Clone, Default)]
pub struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuf {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("log buffer").clone()).expect("UTF-8 log")
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lines a spawned process (the real `warden` binary, say) writes to standard error, read
/// on a thread of their own and sent as they come: wait for one with `recv_timeout` (a bounded
/// wait for what the process says, never a sleep). Takes the child's piped stderr.
pub fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end even once nobody listens: the process never blocks on a full pipe.
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Read `log` (from [`stderr_lines`]) up to the broker's `listening: mqtt://ADDR` line: that
/// address, and the lines before it. Panics when no such line comes within `timeout` of the
/// last one.
pub fn mqtt_listen_address(
    log: &std::sync::mpsc::Receiver<String>,
    timeout: std::time::Duration,
) -> (std::net::SocketAddr, Vec<String>) {
    let mut before = Vec::new();
    loop {
        let line = log.recv_timeout(timeout).unwrap_or_else(|_| panic!("no listen address; the log: {before:?}"));
        if let Some(rest) = line.split("listening: mqtt://").nth(1) {
            let addr = rest.trim().parse().unwrap_or_else(|e| panic!("listen address {rest:?}: {e}"));
            return (addr, before);
        }
        before.push(line);
    }
}
