//! PUBLISH (§3.3).

use bytes::{BufMut, Bytes, BytesMut};

use crate::properties::PropertyContext;
use crate::wire::{put_str, str_len, Reader};
use crate::{DecodeError, Properties, Protocol, QoS, TopicName};

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Re-delivery of an earlier attempt.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name; empty only in a v5 PUBLISH that uses a topic alias.
    pub topic: TopicName,
    /// Packet identifier (0 for QoS 0).
    pub packet_id: u16,
    /// PUBLISH properties (v5).
    pub properties: Properties,
    /// Payload, shared with the buffer it was decoded from.
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn decode(flags: u8, r: &mut Reader, v: Protocol) -> Result<Publish, DecodeError> {
        let dup = flags & 0x08 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?; // [MQTT-3.3.1-4]
        let retain = flags & 0x01 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::Malformed("DUP flag on a QoS 0 PUBLISH")); // [MQTT-3.3.1-2]
        }
        let topic = r.string()?;
        let packet_id = if qos == QoS::AtMostOnce { 0 } else { super::packet_id(r)? };
        let properties =
            if v.is_v5() { Properties::decode(r, PropertyContext::Publish)? } else { Properties::default() };
        let topic = if topic.is_empty() {
            if properties.topic_alias.is_none() {
                return Err(DecodeError::Protocol("empty topic name without a topic alias"));
                // [MQTT-4.7.3-1]
            }
            TopicName::alias_placeholder()
        } else {
            TopicName::new(&topic).map_err(super::name_error)?
        };
        let payload = r.rest();
        Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload })
    }

    pub(crate) fn body_len(&self, v: Protocol) -> usize {
        str_len(self.topic.as_str().len())
            + if self.qos == QoS::AtMostOnce { 0 } else { 2 }
            + if v.is_v5() { self.properties.encoded_len() } else { 0 }
            + self.payload.len()
    }

    pub(crate) fn encode_body(&self, v: Protocol, buf: &mut BytesMut) {
        put_str(buf, self.topic.as_str());
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if v.is_v5() {
            self.properties.encode(buf);
        }
        buf.put_slice(&self.payload);
    }
}
