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
    /// The MQTT 5 reason code that reports this error to the peer: the one mapping from a
    /// decode error to what the peer is told (a v3 CONNACK converts it with
    /// [`ReasonCode::to_v3_connack`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant maps to the reason code its documentation names (MQTT 5.0 §2.4); the
    /// shell and the core report decode errors only through [`DecodeError::reason_code`].
    #[test]
    fn every_decode_error_maps_to_its_reason_code() {
        let cases = [
            (DecodeError::Malformed("x"), 0x81),
            (DecodeError::Protocol("x"), 0x82),
            (DecodeError::PacketTooLarge { size: 2, max: 1 }, 0x95),
            (DecodeError::UnsupportedProtocol, 0x84),
            (DecodeError::TopicFilterInvalid("x"), 0x8F),
            (DecodeError::TopicNameInvalid("x"), 0x90),
        ];
        for (e, code) in cases {
            assert_eq!(e.reason_code(), ReasonCode(code), "{e}");
            assert!(!e.reason_code().is_success());
        }
        // [MQTT-3.1.2-2]: an MQTT 3.1.1 server answers an unsupported level with CONNACK 0x01.
        assert_eq!(DecodeError::UnsupportedProtocol.reason_code().to_v3_connack(), ReasonCode(0x01));
    }
}
