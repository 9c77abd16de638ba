//! One module per packet family: named-field structs with their decode and encode.

pub mod ack;
pub mod connect;
pub mod disconnect;
pub mod publish;
pub mod subscribe;

use crate::topic::TopicError;
use crate::DecodeError;

/// Map a topic-name validation error to the decode error that reports it.
pub(crate) fn name_error(e: TopicError) -> DecodeError {
    match e {
        TopicError::WildcardInName => DecodeError::TopicNameInvalid("wildcard in a topic name"),
        TopicError::Empty => DecodeError::Protocol("empty topic name"),
        TopicError::Nul => DecodeError::Malformed("U+0000 in a topic"),
        _ => DecodeError::TopicNameInvalid("invalid topic name"),
    }
}

/// Packet identifiers of QoS > 0 packets are non-zero [MQTT-2.2.1-3].
pub(crate) fn packet_id(r: &mut crate::wire::Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Malformed("packet identifier 0"));
    }
    Ok(id)
}
