//! The [`Packet`] enum, the fixed header (§2.1) and the decode / encode entry points.

use bytes::{Buf, BufMut, BytesMut};

use crate::packets::{ack::PubAck, connect, disconnect, publish::Publish, subscribe};
use crate::wire::{peek_varint, put_varint, varint_len, Reader, VarInt};
use crate::{DecodeError, Protocol, TopicName, MAX_REMAINING_LENGTH};

/// The control packet type (high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    Connack = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Packet {
    Connect(Box<connect::Connect>),
    Connack(connect::Connack),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(subscribe::Subscribe),
    SubAck(subscribe::SubAck),
    Unsubscribe(subscribe::Unsubscribe),
    UnsubAck(subscribe::UnsubAck),
    PingReq,
    PingResp,
    Disconnect(disconnect::Disconnect),
    Auth(disconnect::Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::Connack(_) => PacketType::Connack,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    fn first_byte(&self) -> u8 {
        let flags = match self {
            Packet::Publish(p) => p.flags(),
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
            _ => 0,
        };
        ((self.packet_type() as u8) << 4) | flags
    }

    fn body_len(&self, v: Protocol) -> usize {
        match self {
            Packet::Connect(p) => p.body_len(),
            Packet::Connack(p) => p.body_len(v),
            Packet::Publish(p) => p.body_len(v),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => p.body_len(v),
            Packet::Subscribe(p) => p.body_len(v),
            Packet::SubAck(p) => p.body_len(v),
            Packet::Unsubscribe(p) => p.body_len(v),
            Packet::UnsubAck(p) => p.body_len(v),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(p) => p.body_len(v),
            Packet::Auth(p) => p.body_len(),
        }
    }

    /// Total encoded size in bytes for protocol `v` (what a Maximum Packet Size is compared to).
    pub fn encoded_len(&self, v: Protocol) -> usize {
        let body = self.body_len(v);
        1 + varint_len(body as u32) + body
    }

    /// Append the encoded packet to `buf`. Fields only MQTT 5 has are left out for 3.1/3.1.1.
    pub fn encode(&self, v: Protocol, buf: &mut BytesMut) {
        let body = self.body_len(v);
        buf.reserve(1 + varint_len(body as u32) + body);
        buf.put_u8(self.first_byte());
        put_varint(buf, body as u32);
        match self {
            Packet::Connect(p) => p.encode_body(buf),
            Packet::Connack(p) => p.encode_body(v, buf),
            Packet::Publish(p) => p.encode_body(v, buf),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => p.encode_body(v, buf),
            Packet::Subscribe(p) => p.encode_body(v, buf),
            Packet::SubAck(p) => p.encode_body(v, buf),
            Packet::Unsubscribe(p) => p.encode_body(v, buf),
            Packet::UnsubAck(p) => p.encode_body(v, buf),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(p) => p.encode_body(v, buf),
            Packet::Auth(p) => p.encode_body(buf),
        }
        debug_assert!(body as u32 <= MAX_REMAINING_LENGTH);
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The first byte: packet type and flags.
    pub first: u8,
    /// Length of the fixed header (2 to 5 bytes).
    pub header_len: usize,
    /// Total packet size: fixed header plus remaining length.
    pub total: usize,
}

/// Peek at the fixed header without consuming it. Returns `Ok(None)` while the
/// remaining-length field is incomplete; a fifth length byte is malformed [MQTT-1.5.5-1].
pub fn peek_header(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    match peek_varint(&buf[1..])? {
        VarInt::Incomplete => Ok(None),
        VarInt::Value(rem, n) => Ok(Some(FixedHeader { first, header_len: 1 + n, total: 1 + n + rem as usize })),
    }
}

/// How much [`decode`] reserves ahead of bytes that have not arrived yet.
const RESERVE_AHEAD: usize = 64 * 1024;

/// Decode one packet from the front of `buf`, consuming it.
///
/// `v` is the connection's protocol version (ignored for CONNECT, which carries its own).
/// Returns `Ok(None)` when more bytes are needed. A packet whose declared size exceeds
/// `max_packet_size` is refused from its fixed header alone, before its body is buffered.
pub fn decode(buf: &mut BytesMut, v: Protocol, max_packet_size: u32) -> Result<Option<Packet>, DecodeError> {
    decode_cached(buf, v, max_packet_size, &mut None)
}

/// [`decode`], reusing `last_topic` for a PUBLISH to the same topic name as the previous one
/// (a device publishing to one topic again and again: no allocation, copy or validation of
/// the name per message) and keeping the name of each PUBLISH decoded there.
pub fn decode_cached(
    buf: &mut BytesMut,
    v: Protocol,
    max_packet_size: u32,
    last_topic: &mut Option<TopicName>,
) -> Result<Option<Packet>, DecodeError> {
    let Some(FixedHeader { first, header_len, total }) = peek_header(buf)? else {
        return Ok(None);
    };
    if total as u64 > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge { size: total as u64, max: max_packet_size });
    }
    if buf.len() < total {
        // Grow towards the declared size, but only by what a peer can be trusted with before
        // it has sent the bytes: a 5-byte header must not make us reserve 256 MiB.
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    buf.advance(header_len);
    let mut r = Reader::new(buf.split_to(total - header_len).freeze());
    let packet = decode_body(first, &mut r, v, last_topic)?;
    if !r.is_empty() {
        return Err(DecodeError::Malformed("unexpected bytes after the packet"));
    }
    Ok(Some(packet))
}

fn decode_body(
    first: u8,
    r: &mut Reader,
    v: Protocol,
    last_topic: &mut Option<TopicName>,
) -> Result<Packet, DecodeError> {
    let flags = first & 0x0F;
    let kind = first >> 4;
    // [MQTT-2.2.2-2]: reserved flag bits must hold the values of the table.
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::Malformed("invalid fixed header flags"))
        }
    };
    Ok(match kind {
        1 => {
            expect_flags(0)?;
            Packet::Connect(Box::new(connect::Connect::decode(r)?))
        }
        2 => {
            expect_flags(0)?;
            Packet::Connack(connect::Connack::decode(r, v)?)
        }
        3 => Packet::Publish(Publish::decode(flags, r, v, last_topic)?),
        4 => {
            expect_flags(0)?;
            Packet::PubAck(PubAck::decode(r, v)?)
        }
        5 => {
            expect_flags(0)?;
            Packet::PubRec(PubAck::decode(r, v)?)
        }
        6 => {
            expect_flags(0b0010)?;
            Packet::PubRel(PubAck::decode(r, v)?)
        }
        7 => {
            expect_flags(0)?;
            Packet::PubComp(PubAck::decode(r, v)?)
        }
        8 => {
            expect_flags(0b0010)?;
            Packet::Subscribe(subscribe::Subscribe::decode(r, v)?)
        }
        9 => {
            expect_flags(0)?;
            Packet::SubAck(subscribe::SubAck::decode(r, v)?)
        }
        10 => {
            expect_flags(0b0010)?;
            Packet::Unsubscribe(subscribe::Unsubscribe::decode(r, v)?)
        }
        11 => {
            expect_flags(0)?;
            Packet::UnsubAck(subscribe::UnsubAck::decode(r, v)?)
        }
        12 | 13 => {
            expect_flags(0)?;
            if !r.is_empty() {
                return Err(DecodeError::Malformed("PINGREQ/PINGRESP with a body"));
            }
            if kind == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            expect_flags(0)?;
            Packet::Disconnect(disconnect::Disconnect::decode(r, v)?)
        }
        15 if v == Protocol::V5 => {
            expect_flags(0)?;
            Packet::Auth(disconnect::Auth::decode(r)?)
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    })
}
