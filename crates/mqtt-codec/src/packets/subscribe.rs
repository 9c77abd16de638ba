//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (§3.8–§3.11).

use bytes::{BufMut, BytesMut};

use crate::properties::{LazyProperties, PropertyContext};
use crate::wire::{put_str, str_len, Reader};
use crate::{DecodeError, Properties, Protocol, QoS, ReasonCode, TopicFilter};

/// v5 Retain Handling subscription option (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// Per-filter subscription options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// v5: do not send the client's own publications back.
    pub no_local: bool,
    /// v5: keep the retain flag as published.
    pub retain_as_published: bool,
    /// v5: when to send retained messages.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// The MQTT 5 options byte (for storing a subscription).
    pub fn to_byte(&self) -> u8 {
        self.encode(Protocol::V5)
    }

    /// Options from an MQTT 5 options byte, validated as on the wire.
    pub fn from_byte(b: u8) -> Result<Self, DecodeError> {
        Self::decode(b, Protocol::V5)
    }

    fn decode(b: u8, v: Protocol) -> Result<Self, DecodeError> {
        let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
        if b & reserved != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits set"));
            // [MQTT-3.8.3-5]
        }
        let qos = QoS::from_u8(b & 0x03).ok_or(DecodeError::Malformed("subscription QoS 3"))?; // [MQTT-3-8.3-4]
        let retain_handling = match (b >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::Protocol("retain handling 3")),
        };
        Ok(SubscriptionOptions { qos, no_local: b & 0x04 != 0, retain_as_published: b & 0x08 != 0, retain_handling })
    }

    fn encode(&self, v: Protocol) -> u8 {
        let mut b = self.qos as u8;
        if v.is_v5() {
            b |= (u8::from(self.no_local) << 2)
                | (u8::from(self.retain_as_published) << 3)
                | ((self.retain_handling as u8) << 4);
        }
        b
    }
}

fn filter(r: &mut Reader) -> Result<TopicFilter, DecodeError> {
    let s = r.string()?;
    TopicFilter::new(&s).map_err(|_| DecodeError::TopicFilterInvalid("invalid topic filter"))
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// Properties (v5: subscription identifier, user properties).
    pub properties: LazyProperties,
    /// At least one filter with its options.
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, v: Protocol) -> Result<Subscribe, DecodeError> {
        let packet_id = super::packet_id(r)?;
        let properties =
            if v.is_v5() { Properties::decode(r, PropertyContext::Subscribe)? } else { Properties::default() };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let f = filter(r)?;
            let o = SubscriptionOptions::decode(r.u8()?, v)?;
            filters.push((f, o));
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
            // [MQTT-3.8.3-3]
        }
        Ok(Subscribe { packet_id, properties: properties.into(), filters })
    }

    pub(crate) fn body_len(&self, v: Protocol) -> usize {
        2 + if v.is_v5() { self.properties.encoded_len() } else { 0 }
            + self.filters.iter().map(|(f, _)| str_len(f.as_str().len()) + 1).sum::<usize>()
    }

    pub(crate) fn encode_body(&self, v: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if v.is_v5() {
            self.properties.encode(buf);
        }
        for (f, o) in &self.filters {
            put_str(buf, f.as_str());
            buf.put_u8(o.encode(v));
        }
    }
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// Properties (v5).
    pub properties: LazyProperties,
    /// One code per filter: granted QoS or failure.
    pub reason_codes: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, v: Protocol) -> Result<SubAck, DecodeError> {
        let packet_id = super::packet_id(r)?;
        let properties =
            if v.is_v5() { Properties::decode(r, PropertyContext::SubAck)? } else { Properties::default() };
        let mut reason_codes = Vec::new();
        while !r.is_empty() {
            reason_codes.push(ReasonCode(r.u8()?));
        }
        Ok(SubAck { packet_id, properties: properties.into(), reason_codes })
    }

    pub(crate) fn body_len(&self, v: Protocol) -> usize {
        2 + if v.is_v5() { self.properties.encoded_len() } else { 0 } + self.reason_codes.len()
    }

    pub(crate) fn encode_body(&self, v: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if v.is_v5() {
            self.properties.encode(buf);
        }
        for c in &self.reason_codes {
            buf.put_u8(c.0);
        }
    }
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// Properties (v5).
    pub properties: LazyProperties,
    /// At least one filter.
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, v: Protocol) -> Result<Unsubscribe, DecodeError> {
        let packet_id = super::packet_id(r)?;
        let properties =
            if v.is_v5() { Properties::decode(r, PropertyContext::Unsubscribe)? } else { Properties::default() };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(filter(r)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
            // [MQTT-3.10.3-2]
        }
        Ok(Unsubscribe { packet_id, properties: properties.into(), filters })
    }

    pub(crate) fn body_len(&self, v: Protocol) -> usize {
        2 + if v.is_v5() { self.properties.encoded_len() } else { 0 }
            + self.filters.iter().map(|f| str_len(f.as_str().len())).sum::<usize>()
    }

    pub(crate) fn encode_body(&self, v: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if v.is_v5() {
            self.properties.encode(buf);
        }
        for f in &self.filters {
            put_str(buf, f.as_str());
        }
    }
}

/// UNSUBACK (v5 carries one reason code per filter; v3 none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// Properties (v5).
    pub properties: LazyProperties,
    /// One code per filter (v5).
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, v: Protocol) -> Result<UnsubAck, DecodeError> {
        let packet_id = super::packet_id(r)?;
        let mut a = UnsubAck { packet_id, ..Default::default() };
        if v.is_v5() {
            a.properties = Properties::decode(r, PropertyContext::UnsubAck)?.into();
            while !r.is_empty() {
                a.reason_codes.push(ReasonCode(r.u8()?));
            }
        }
        Ok(a)
    }

    pub(crate) fn body_len(&self, v: Protocol) -> usize {
        2 + if v.is_v5() { self.properties.encoded_len() + self.reason_codes.len() } else { 0 }
    }

    pub(crate) fn encode_body(&self, v: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if v.is_v5() {
            self.properties.encode(buf);
            for c in &self.reason_codes {
                buf.put_u8(c.0);
            }
        }
    }
}
