//! Decode errors.

use crate::ReasonCode;

/// Why a byte sequence is not an acceptable packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not follow the wire format (reason code 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed, but the specification forbids it (reason code 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header declares a packet larger than allowed (reason code 0x95).
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Declared total size.
        size: u64,
        /// Configured maximum.
        max: u32,
    },
    /// CONNECT with an unknown protocol name or level (v5 CONNACK 0x84, v3 0x01).
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
    /// A topic filter that is not valid (reason code 0x8F).
    #[error("invalid topic filter: {0}")]
    TopicFilterInvalid(&'static str),
    /// A topic name that is not valid (reason code 0x90).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code that reports this error to the peer.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicFilterInvalid(_) => ReasonCode::TOPIC_FILTER_INVALID,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
        }
    }
}
