//! One module per packet family: named-field structs with their decode and encode.

pub(crate) mod ack;
pub(crate) mod connect;
pub(crate) mod disconnect;
pub(crate) mod publish;
pub(crate) mod subscribe;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic name's validation error becomes the decode error (and so the reason code) that
    /// reports it: a wildcard is 0x90 [MQTT-3.3.2-2], an empty name without an alias is a
    /// protocol error (0x82) and U+0000 is malformed (0x81) [MQTT-4.7.3-2].
    #[test]
    fn topic_name_errors_map_to_decode_errors() {
        // The filter-only errors never come from a topic name; any of them would be 0x90.
        let cases = [
            (TopicError::WildcardInName, 0x90),
            (TopicError::Empty, 0x82),
            (TopicError::Nul, 0x81),
            (TopicError::TooLong, 0x90),
            (TopicError::BadShare, 0x90),
        ];
        for (e, code) in cases {
            assert_eq!(name_error(e).reason_code().0, code, "{e}");
        }
    }
}
