//! PUBLISH (§3.3).

use bytes::{BufMut, Bytes, BytesMut};

use crate::properties::{LazyProperties, PropertyContext};
use crate::wire::{put_str, str_len, utf8, Reader};
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
    /// PUBLISH properties (v5); empty (no allocation) unless one is set.
    pub properties: LazyProperties,
    /// Payload, shared with the buffer it was decoded from.
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn decode(
        flags: u8,
        r: &mut Reader,
        v: Protocol,
        last_topic: &mut Option<TopicName>,
    ) -> Result<Publish, DecodeError> {
        let dup = flags & 0x08 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?; // [MQTT-3.3.1-4]
        let retain = flags & 0x01 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::Malformed("DUP flag on a QoS 0 PUBLISH")); // [MQTT-3.3.1-2]
        }
        // Validated where it lies and copied once, into the name's shared string; the same
        // name as the last PUBLISH is that one again.
        let raw = r.prefixed()?;
        let topic = match last_topic {
            _ if raw.is_empty() => None,
            Some(t) if t.as_str().as_bytes() == raw => Some(t.clone()),
            _ => {
                let t = TopicName::new(utf8(raw)?).map_err(super::name_error)?;
                *last_topic = Some(t.clone());
                Some(t)
            }
        };
        let packet_id = if qos == QoS::AtMostOnce { 0 } else { super::packet_id(r)? };
        let properties = if v.is_v5() {
            LazyProperties::from(Properties::decode(r, PropertyContext::Publish)?)
        } else {
            LazyProperties::default()
        };
        let topic = match topic {
            Some(t) => t,
            None => {
                if properties.topic_alias.is_none() {
                    return Err(DecodeError::Protocol("empty topic name without a topic alias"));
                    // [MQTT-4.7.3-1]
                }
                TopicName::alias_placeholder()
            }
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

/// A PUBLISH encoded straight from borrowed parts: what a broker sends to each subscriber
/// without building (and dropping) a [`Publish`] with its properties per delivery.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// Re-delivery flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name (empty when a v5 topic alias stands for it).
    pub topic: &'a str,
    /// Packet identifier (ignored for QoS 0).
    pub packet_id: u16,
    /// v5 properties (`None`: an empty property list; ignored for 3.1/3.1.1).
    pub properties: Option<&'a Properties>,
    /// Payload.
    pub payload: &'a [u8],
}

impl PublishRef<'_> {
    fn body_len(&self, v: Protocol) -> usize {
        str_len(self.topic.len())
            + if self.qos == QoS::AtMostOnce { 0 } else { 2 }
            + if v.is_v5() { self.properties.map_or(1, Properties::encoded_len) } else { 0 }
            + self.payload.len()
    }

    /// Total encoded size (what a Maximum Packet Size is compared to).
    pub fn encoded_len(&self, v: Protocol) -> usize {
        let body = self.body_len(v);
        1 + crate::wire::varint_len(body as u32) + body
    }

    /// Append the encoded PUBLISH to `buf`.
    pub fn encode(&self, v: Protocol, buf: &mut BytesMut) {
        let body = self.body_len(v);
        buf.reserve(1 + crate::wire::varint_len(body as u32) + body);
        let flags = (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain);
        buf.put_u8((crate::PacketType::Publish as u8) << 4 | flags);
        crate::wire::put_varint(buf, body as u32);
        put_str(buf, self.topic);
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if v.is_v5() {
            match self.properties {
                Some(p) => p.encode(buf),
                None => buf.put_u8(0),
            }
        }
        buf.put_slice(self.payload);
    }
}

#[cfg(test)]
mod ref_tests {
    use super::*;
    use crate::Packet;

    /// The borrowed encoder writes exactly what `Packet::Publish` writes, in every version.
    #[test]
    fn publish_ref_encodes_like_publish() {
        let props = Properties {
            content_type: Some("text/plain".into()),
            subscription_identifiers: vec![3, 70_000],
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        };
        for v in [Protocol::V31, Protocol::V311, Protocol::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for (props, payload) in [(None, vec![]), (Some(&props), vec![7u8; 200])] {
                    for (dup, retain) in [(false, false), (true, true)] {
                        let dup = dup && qos != QoS::AtMostOnce;
                        let owned = Packet::Publish(Publish {
                            dup,
                            qos,
                            retain,
                            topic: TopicName::new("a/b/c").unwrap(),
                            packet_id: if qos == QoS::AtMostOnce { 0 } else { 513 },
                            properties: props.cloned().unwrap_or_default().into(),
                            payload: Bytes::from(payload.clone()),
                        });
                        let r = PublishRef {
                            dup,
                            qos,
                            retain,
                            topic: "a/b/c",
                            packet_id: 513,
                            properties: props,
                            payload: &payload,
                        };
                        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
                        owned.encode(v, &mut a);
                        r.encode(v, &mut b);
                        assert_eq!(a, b, "{v:?} {qos:?}");
                        assert_eq!(r.encoded_len(v), owned.encoded_len(v));
                    }
                }
            }
        }
    }
}
