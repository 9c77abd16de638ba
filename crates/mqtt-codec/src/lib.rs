//! Sans-IO MQTT wire format for protocol versions 3.1, 3.1.1 and 5.0.
//!
//! Decoding separates "need more bytes" (`Ok(None)`), malformed packets
//! ([`DecodeError::Malformed`], reason code 0x81) and protocol errors
//! ([`DecodeError::Protocol`], 0x82); the maximum packet size is enforced from the fixed header,
//! before the body is buffered. Nothing here does I/O or panics on input.
//!
//! # Layout
//! - [`error`]: [`DecodeError`] and [`DecodeError::reason_code`], the one mapping from a decode
//!   error to the reason code the peer is told.
//! - [`reason`]: reason codes, kept as the raw byte with named constants.
//! - [`topic`]: validated [`TopicName`] and [`TopicFilter`] types and matching.
//! - [`properties`]: MQTT 5 properties, validated per packet type.
//! - [`wire`]: primitive readers and writers (integers, strings, variable byte integers).
//! - [`packet`]: the [`Packet`] enum, the fixed header, [`decode`] and [`Packet::encode`].
//! - `packets/`: one module per packet family (named-field structs, their decode and encode).

// Workspace lints of issue 18, enabled per crate until every crate is clean.

pub mod error;
pub mod packet;
mod packets;
pub mod properties;
pub mod reason;
pub mod topic;
pub mod wire;

pub use error::DecodeError;
pub use packet::{decode, decode_cached, Packet, PacketType};
pub use packets::ack::PubAck;
pub use packets::connect::{Connack, Connect, LastWill};
pub use packets::disconnect::{Auth, Disconnect};
pub use packets::publish::{Publish, PublishRef};
pub use packets::subscribe::{RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe};
pub use properties::{LazyProperties, Properties};
pub use reason::ReasonCode;
pub use topic::{TopicError, TopicFilter, TopicName};

/// MQTT protocol version, from the CONNECT packet's protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    /// True for MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

/// Quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// From the two-bit wire value; 3 is invalid.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The largest remaining length the wire format can carry (4-byte variable byte integer).
pub const MAX_REMAINING_LENGTH: u32 = 268_435_455;
