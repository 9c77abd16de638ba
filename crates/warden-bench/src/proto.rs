//! The MQTT client side of the load generator: connect, subscribe, pre-encoded PUBLISH batches,
//! and a framer that walks a read buffer without allocating per message.
//!
//! CONNECT, SUBSCRIBE and everything the broker sends outside the hot path go through
//! `mqtt_codec`; PUBLISH batches are encoded once by `mqtt_codec` and then patched in place
//! (packet identifier, timestamp), and received PUBLISH packets are framed with
//! `mqtt_codec::packet::peek_header` and read field by field, so that the generator spends as
//! little CPU as possible next to the broker it measures.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use mqtt_codec::packet::peek_header;
use mqtt_codec::wire::{peek_varint, VarInt};
use mqtt_codec::{
    decode, Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Read-buffer headroom reserved before every read: `BytesMut` grows by tiny steps otherwise.
pub(crate) const READ_RESERVE: usize = 256 * 1024;
/// Largest packet accepted from the broker.
const MAX_PACKET: u32 = 16 * 1024 * 1024;

/// How every connection of a run identifies itself.
#[derive(Clone, Debug)]
pub(crate) struct ClientOpts {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: u16,
    /// Bind the client socket to this loopback source address first (many-connection runs).
    pub source: Option<std::net::IpAddr>,
    /// Give up on CONNECT/CONNACK and SUBSCRIBE/SUBACK after this long.
    pub handshake_timeout: Duration,
    /// Ask for a session that outlives the connection (v3 clean session 0, v5 expiry 300 s),
    /// so that QoS 1 deliveries go through the broker's durable store.
    pub persistent: bool,
}

/// A connected client: the stream, the bytes read past the CONNACK, and what the broker allows.
pub(crate) struct Client {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    /// The broker's Receive Maximum (v5 CONNACK), or `None` for v3 / absent.
    pub receive_maximum: Option<u16>,
}

/// Open a TCP connection, send CONNECT and wait for a successful CONNACK.
/// A TCP connection to the broker, from `opts.source` when set, Nagle off.
pub(crate) async fn tcp(opts: &ClientOpts) -> Result<TcpStream> {
    let stream = match opts.source {
        Some(src) => {
            let sock = if src.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            sock.set_reuseaddr(true)?;
            sock.bind(SocketAddr::new(src, 0)).with_context(|| format!("bind {src}"))?;
            sock.connect(opts.addr).await
        }
        None => TcpStream::connect(opts.addr).await,
    }
    .with_context(|| format!("connect to {}", opts.addr))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

pub(crate) async fn connect(opts: &ClientOpts, client_id: &str) -> Result<Client> {
    let stream = tcp(opts).await?;
    let mut client = Client { stream, rbuf: BytesMut::with_capacity(4096), receive_maximum: None };
    let mut properties = Properties::default();
    if opts.protocol.is_v5() {
        // Let the broker send as much as it likes; the generator never limits it.
        properties.receive_maximum = Some(u16::MAX);
        if opts.persistent {
            properties.session_expiry_interval = Some(300);
        }
    }
    let packet = Packet::Connect(Box::new(Connect {
        protocol: opts.protocol,
        clean_start: !opts.persistent || opts.protocol.is_v5(),
        keep_alive: opts.keep_alive,
        properties,
        client_id: client_id.to_owned(),
        will: None,
        username: opts.username.clone(),
        password: opts.password.clone().map(Bytes::from),
    }));
    let mut out = BytesMut::new();
    packet.encode(opts.protocol, &mut out);
    tokio::time::timeout(opts.handshake_timeout, async {
        client.stream.write_all(&out).await?;
        match client.next_packet(opts.protocol).await? {
            Packet::Connack(ack) => {
                if ack.reason_code.0 != 0 {
                    bail!("CONNACK refused: code 0x{:02x}", ack.reason_code.0);
                }
                client.receive_maximum = ack.properties.receive_maximum;
                Ok(())
            }
            other => bail!("expected CONNACK, got {:?}", other.packet_type()),
        }
    })
    .await
    .map_err(|_| anyhow!("no CONNACK within {:?}", opts.handshake_timeout))??;
    Ok(client)
}

impl Client {
    /// Read until one whole packet is decoded (handshakes only; not the hot path).
    pub(crate) async fn next_packet(&mut self, protocol: Protocol) -> Result<Packet> {
        loop {
            if let Some(p) = decode(&mut self.rbuf, protocol, MAX_PACKET).map_err(|e| anyhow!("decode: {e}"))? {
                return Ok(p);
            }
            self.rbuf.reserve(4096);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }

    /// SUBSCRIBE to `filters` at `qos` and wait for the SUBACK; a refused filter is an error.
    pub(crate) async fn subscribe(&mut self, opts: &ClientOpts, filters: &[String], qos: QoS) -> Result<()> {
        let mut list = Vec::new();
        for f in filters {
            let filter = TopicFilter::new(f).map_err(|e| anyhow!("filter {f}: {e}"))?;
            list.push((filter, SubscriptionOptions { qos, ..Default::default() }));
        }
        let packet = Packet::Subscribe(Subscribe { packet_id: 1, properties: Default::default(), filters: list });
        let mut out = BytesMut::new();
        packet.encode(opts.protocol, &mut out);
        tokio::time::timeout(opts.handshake_timeout, async {
            self.stream.write_all(&out).await?;
            loop {
                match self.next_packet(opts.protocol).await? {
                    Packet::SubAck(ack) => {
                        if let Some(bad) = ack.reason_codes.iter().find(|c| c.0 >= 0x80) {
                            bail!("SUBACK refused: code 0x{:02x}", bad.0);
                        }
                        return Ok(());
                    }
                    // A retained message may arrive before the SUBACK: ignore it.
                    Packet::Publish(_) => {}
                    other => bail!("expected SUBACK, got {:?}", other.packet_type()),
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no SUBACK within {:?}", opts.handshake_timeout))?
    }
}

/// `n` copies of one PUBLISH, encoded once; packet identifiers and timestamps are patched in
/// place before each write.
pub(crate) struct PubBatch {
    buf: Vec<u8>,
    msg_len: usize,
    /// Offset of the packet identifier within one message (QoS 1 only).
    pid_at: Option<usize>,
    /// Offset of the payload within one message. The payload starts with the send time (8 bytes,
    /// ns) when it has room, then the publisher index (4 bytes) and the message's sequence number
    /// (8 bytes, from 1) when it has room for those too.
    payload_at: usize,
    payload_len: usize,
    capacity: usize,
}

impl PubBatch {
    /// A batch of up to `capacity` messages to `topic` from publisher number `index`.
    pub(crate) fn new(
        protocol: Protocol,
        topic: &str,
        qos: QoS,
        payload_len: usize,
        capacity: usize,
        index: u32,
    ) -> Result<Self> {
        let topic = TopicName::new(topic).map_err(|e| anyhow!("topic {topic}: {e}"))?;
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.clone(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: Default::default(),
            payload: Bytes::from({
                let mut p = vec![0x5a; payload_len];
                if payload_len >= SEQ_PAYLOAD {
                    p[8..12].copy_from_slice(&index.to_le_bytes());
                }
                p
            }),
        };
        let mut one = BytesMut::new();
        Packet::Publish(publish).encode(protocol, &mut one);
        let msg_len = one.len();
        let payload_at = msg_len - payload_len;
        // Fixed header, then the topic (2 + len), then the packet identifier.
        let header_len = peek_header(&one).ok().flatten().map(|h| h.header_len).ok_or_else(|| anyhow!("encode"))?;
        let pid_at = (qos != QoS::AtMostOnce).then_some(header_len + 2 + topic.as_str().len());
        let capacity = capacity.max(1);
        let mut buf = Vec::with_capacity(msg_len * capacity);
        for _ in 0..capacity {
            buf.extend_from_slice(&one);
        }
        Ok(PubBatch { buf, msg_len, pid_at, payload_at, payload_len, capacity })
    }

    /// Messages in a full batch.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The first `n` messages, stamped with `now_ns`, numbered from `first_seq` on and, for QoS 1,
    /// given packet identifiers from `*next_pid` on (1..=65535, wrapping).
    pub(crate) fn fill(&mut self, n: usize, now_ns: u64, first_seq: u64, next_pid: &mut u16) -> &[u8] {
        let n = n.min(self.capacity);
        let stamp = self.payload_len >= 8;
        let number = self.payload_len >= SEQ_PAYLOAD;
        for i in 0..n {
            let base = i * self.msg_len;
            if let Some(at) = self.pid_at {
                self.buf[base + at..base + at + 2].copy_from_slice(&next_pid.to_be_bytes());
                *next_pid = if *next_pid == u16::MAX { 1 } else { *next_pid + 1 };
            }
            let at = base + self.payload_at;
            if stamp {
                self.buf[at..at + 8].copy_from_slice(&now_ns.to_le_bytes());
            }
            if number {
                self.buf[at + 12..at + 20].copy_from_slice(&(first_seq + i as u64).to_le_bytes());
            }
        }
        &self.buf[..n * self.msg_len]
    }
}

/// Payloads of at least this many bytes carry the publisher index and a sequence number.
pub(crate) const SEQ_PAYLOAD: usize = 20;

/// What the framer found in one packet.
pub(crate) enum Frame {
    /// A PUBLISH: QoS, packet identifier (0 for QoS 0), the timestamp in its payload, and the
    /// publisher index and sequence number in its payload.
    Publish { qos: u8, packet_id: u16, stamp: Option<u64>, origin: Option<(u32, u64)> },
    /// A PUBACK and the packet identifier it acknowledges.
    PubAck { packet_id: u16 },
    /// Anything else, decoded by `mqtt_codec`.
    Other(Box<Packet>),
}

/// Take the next whole packet off the front of `buf`, or `None` if it is incomplete.
pub(crate) fn next_frame(buf: &mut BytesMut, protocol: Protocol) -> Result<Option<Frame>> {
    let Some(h) = peek_header(buf).map_err(|e| anyhow!("bad fixed header: {e}"))? else {
        return Ok(None);
    };
    if buf.len() < h.total {
        return Ok(None);
    }
    let kind = h.first >> 4;
    if kind == 3 {
        let body = &buf[h.header_len..h.total];
        let qos = (h.first >> 1) & 3;
        if body.len() < 2 {
            bail!("short PUBLISH");
        }
        let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
        let mut at = 2 + topic_len;
        let mut packet_id = 0;
        if qos > 0 {
            let b = body.get(at..at + 2).ok_or_else(|| anyhow!("short PUBLISH"))?;
            packet_id = u16::from_be_bytes([b[0], b[1]]);
            at += 2;
        }
        if protocol.is_v5() {
            match peek_varint(body.get(at..).ok_or_else(|| anyhow!("short PUBLISH"))?) {
                Ok(VarInt::Value(len, n)) => at += n + len as usize,
                _ => bail!("bad PUBLISH properties"),
            }
        }
        let payload = body.get(at..).unwrap_or_default();
        let word = |from: usize| u64::from_le_bytes(payload[from..from + 8].try_into().expect("8 bytes"));
        let stamp = (payload.len() >= 8).then(|| word(0));
        let origin = (payload.len() >= SEQ_PAYLOAD)
            .then(|| (u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes")), word(12)));
        buf.advance(h.total);
        return Ok(Some(Frame::Publish { qos, packet_id, stamp, origin }));
    }
    if kind == 4 && h.total >= h.header_len + 2 {
        let packet_id = u16::from_be_bytes([buf[h.header_len], buf[h.header_len + 1]]);
        buf.advance(h.total);
        return Ok(Some(Frame::PubAck { packet_id }));
    }
    match decode(buf, protocol, MAX_PACKET).map_err(|e| anyhow!("decode: {e}"))? {
        Some(p) => Ok(Some(Frame::Other(Box::new(p)))),
        None => Ok(None),
    }
}

/// Append a PUBACK for `packet_id` (success; the short form is valid in v3 and v5).
pub(crate) fn put_puback(out: &mut Vec<u8>, packet_id: u16) {
    let id = packet_id.to_be_bytes();
    out.extend_from_slice(&[0x40, 0x02, id[0], id[1]]);
}

/// A DISCONNECT (normal), the same bytes in v3 and v5.
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0x00];
