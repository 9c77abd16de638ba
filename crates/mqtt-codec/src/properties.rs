//! MQTT 5 properties (§2.2.2), decoded into named fields and validated against the packet
//! they appear in: a property that does not belong there is a protocol error, and so is a
//! repeated property that may appear only once.

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{put_bin, put_str, put_varint, str_len, varint_len, Reader};
use crate::DecodeError;

/// Where a property list appears; decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    /// CONNECT variable header.
    Connect,
    /// Will properties in the CONNECT payload.
    Will,
    /// CONNACK.
    Connack,
    /// PUBLISH.
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubAck,
    /// SUBSCRIBE.
    Subscribe,
    /// SUBACK.
    SubAck,
    /// UNSUBSCRIBE.
    Unsubscribe,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

/// All MQTT 5 properties. Absent single-value properties are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Zero or more (a PUBLISH from the server may carry several).
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// A property list held only when it has something in it: what a PUBLISH carries. Most
/// PUBLISH packets (every 3.1.1 one, most v5 ones) have no properties, and a [`Properties`]
/// is ~330 bytes that every move of the packet would copy and every drop would walk; this is
/// one pointer, `None` until a property is set. It reads as a `Properties` (an empty one when
/// nothing is held) and allocates on the first write.
#[derive(Clone, Default)]
pub struct LazyProperties(Option<Box<Properties>>);

/// Equal when the lists are: an empty box equals nothing held.
impl PartialEq for LazyProperties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for LazyProperties {}

/// What an empty [`LazyProperties`] reads as.
static EMPTY: Properties = Properties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl LazyProperties {
    /// The properties, if any were set (`None` for an empty list).
    pub fn get(&self) -> Option<&Properties> {
        self.0.as_deref()
    }

    /// Take the properties out (`None` when empty), leaving an empty list.
    pub fn take(&mut self) -> Option<Box<Properties>> {
        self.0.take()
    }

    /// The boxed properties (`None` when empty).
    pub fn into_inner(self) -> Option<Box<Properties>> {
        self.0
    }
}

impl From<Properties> for LazyProperties {
    fn from(p: Properties) -> Self {
        LazyProperties((!p.is_empty()).then(|| Box::new(p)))
    }
}

impl From<Option<Box<Properties>>> for LazyProperties {
    fn from(p: Option<Box<Properties>>) -> Self {
        LazyProperties(p.filter(|p| !p.is_empty()))
    }
}

impl std::ops::Deref for LazyProperties {
    type Target = Properties;
    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for LazyProperties {
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl std::fmt::Debug for LazyProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

mod id {
    pub(super) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(super) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(super) const CONTENT_TYPE: u8 = 0x03;
    pub(super) const RESPONSE_TOPIC: u8 = 0x08;
    pub(super) const CORRELATION_DATA: u8 = 0x09;
    pub(super) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(super) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(super) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(super) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(super) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(super) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(super) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(super) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(super) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(super) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(super) const SERVER_REFERENCE: u8 = 0x1C;
    pub(super) const REASON_STRING: u8 = 0x1F;
    pub(super) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(super) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(super) const TOPIC_ALIAS: u8 = 0x23;
    pub(super) const MAXIMUM_QOS: u8 = 0x24;
    pub(super) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(super) const USER_PROPERTY: u8 = 0x26;
    pub(super) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(super) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(super) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(super) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Is property `pid` allowed in `ctx` (§2.2.2.2 table)?
fn allowed(pid: u8, ctx: PropertyContext) -> bool {
    use PropertyContext as C;
    match pid {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => matches!(ctx, C::Publish | C::Will),
        id::SUBSCRIPTION_IDENTIFIER => matches!(ctx, C::Publish | C::Subscribe),
        id::SESSION_EXPIRY_INTERVAL => matches!(ctx, C::Connect | C::Connack | C::Disconnect),
        id::ASSIGNED_CLIENT_IDENTIFIER | id::SERVER_KEEP_ALIVE | id::RESPONSE_INFORMATION => ctx == C::Connack,
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => matches!(ctx, C::Connect | C::Connack | C::Auth),
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => ctx == C::Connect,
        id::WILL_DELAY_INTERVAL => ctx == C::Will,
        id::SERVER_REFERENCE => matches!(ctx, C::Connack | C::Disconnect),
        id::REASON_STRING => !matches!(ctx, C::Connect | C::Will | C::Publish | C::Subscribe | C::Unsubscribe),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            matches!(ctx, C::Connect | C::Connack)
        }
        id::TOPIC_ALIAS => ctx == C::Publish,
        id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => ctx == C::Connack,
        id::USER_PROPERTY => true,
        _ => false,
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property included more than once"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(r: &mut Reader) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(v)
}

impl Properties {
    /// True when no property is set (encodes as a single zero byte).
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Decode a property list (length then properties) for `ctx`.
    pub fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        if len > r.remaining() {
            return Err(DecodeError::Malformed("property length exceeds packet"));
        }
        let mut p = Reader::new(r.bytes(len)?);
        let mut out = Properties::default();
        while !p.is_empty() {
            let pid = p.varint()?;
            let pid = u8::try_from(pid).map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
            if !allowed(pid, ctx) {
                return Err(if pid > id::SHARED_SUBSCRIPTION_AVAILABLE || !is_known(pid) {
                    DecodeError::Malformed("unknown property identifier")
                } else {
                    DecodeError::Protocol("property not allowed in this packet")
                });
            }
            match pid {
                id::PAYLOAD_FORMAT_INDICATOR => set_once(&mut out.payload_format_indicator, flag(&mut p)?)?,
                id::MESSAGE_EXPIRY_INTERVAL => set_once(&mut out.message_expiry_interval, p.u32()?)?,
                id::CONTENT_TYPE => set_once(&mut out.content_type, p.string()?)?,
                id::RESPONSE_TOPIC => {
                    let t = p.string()?;
                    if t.is_empty() || t.contains(['+', '#']) {
                        // [MQTT-3.3.2-14]: the Response Topic is a topic name.
                        return Err(DecodeError::Protocol("response topic is not a valid topic name"));
                    }
                    set_once(&mut out.response_topic, t)?
                }
                id::CORRELATION_DATA => set_once(&mut out.correlation_data, p.binary()?)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = p.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier of 0"));
                    }
                    if ctx == PropertyContext::Subscribe && !out.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("property included more than once"));
                    }
                    out.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => set_once(&mut out.session_expiry_interval, p.u32()?)?,
                id::ASSIGNED_CLIENT_IDENTIFIER => set_once(&mut out.assigned_client_identifier, p.string()?)?,
                id::SERVER_KEEP_ALIVE => set_once(&mut out.server_keep_alive, p.u16()?)?,
                id::AUTHENTICATION_METHOD => set_once(&mut out.authentication_method, p.string()?)?,
                id::AUTHENTICATION_DATA => set_once(&mut out.authentication_data, p.binary()?)?,
                id::REQUEST_PROBLEM_INFORMATION => set_once(&mut out.request_problem_information, flag(&mut p)?)?,
                id::WILL_DELAY_INTERVAL => set_once(&mut out.will_delay_interval, p.u32()?)?,
                id::REQUEST_RESPONSE_INFORMATION => set_once(&mut out.request_response_information, flag(&mut p)?)?,
                id::RESPONSE_INFORMATION => set_once(&mut out.response_information, p.string()?)?,
                id::SERVER_REFERENCE => set_once(&mut out.server_reference, p.string()?)?,
                id::REASON_STRING => set_once(&mut out.reason_string, p.string()?)?,
                id::RECEIVE_MAXIMUM => {
                    let v = p.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum of 0"));
                        // [MQTT-3.1.2-?]
                    }
                    set_once(&mut out.receive_maximum, v)?
                }
                id::TOPIC_ALIAS_MAXIMUM => set_once(&mut out.topic_alias_maximum, p.u16()?)?,
                // A topic alias of 0 is decoded: the receiver answers it with DISCONNECT 0x94
                // Topic Alias invalid (MQTT 5 §3.3.2.3.4), which needs the connection's state.
                id::TOPIC_ALIAS => set_once(&mut out.topic_alias, p.u16()?)?,
                id::MAXIMUM_QOS => set_once(&mut out.maximum_qos, flag(&mut p)?)?,
                id::RETAIN_AVAILABLE => set_once(&mut out.retain_available, flag(&mut p)?)?,
                id::USER_PROPERTY => {
                    let k = p.string()?;
                    let v = p.string()?;
                    out.user_properties.push((k, v));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let v = p.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size of 0"));
                    }
                    set_once(&mut out.maximum_packet_size, v)?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut out.wildcard_subscription_available, flag(&mut p)?)?
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    set_once(&mut out.subscription_identifier_available, flag(&mut p)?)?
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => set_once(&mut out.shared_subscription_available, flag(&mut p)?)?,
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        Ok(out)
    }

    /// Size of the encoded property list, without its length prefix.
    pub fn body_len(&self) -> usize {
        fn s(o: &Option<String>) -> usize {
            o.as_ref().map_or(0, |v| 1 + str_len(v.len()))
        }
        fn b(o: &Option<Bytes>) -> usize {
            o.as_ref().map_or(0, |v| 1 + str_len(v.len()))
        }
        fn n<T>(o: &Option<T>, size: usize) -> usize {
            o.as_ref().map_or(0, |_| 1 + size)
        }
        n(&self.payload_format_indicator, 1)
            + n(&self.message_expiry_interval, 4)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self.subscription_identifiers.iter().map(|v| 1 + varint_len(*v)).sum::<usize>()
            + n(&self.session_expiry_interval, 4)
            + s(&self.assigned_client_identifier)
            + n(&self.server_keep_alive, 2)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n(&self.request_problem_information, 1)
            + n(&self.will_delay_interval, 4)
            + n(&self.request_response_information, 1)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n(&self.receive_maximum, 2)
            + n(&self.topic_alias_maximum, 2)
            + n(&self.topic_alias, 2)
            + n(&self.maximum_qos, 1)
            + n(&self.retain_available, 1)
            + self.user_properties.iter().map(|(k, v)| 1 + str_len(k.len()) + str_len(v.len())).sum::<usize>()
            + n(&self.maximum_packet_size, 4)
            + n(&self.wildcard_subscription_available, 1)
            + n(&self.subscription_identifier_available, 1)
            + n(&self.shared_subscription_available, 1)
    }

    /// Size of the encoded property list including its length prefix.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        varint_len(body as u32) + body
    }

    /// Write the property list (length prefix then properties).
    pub fn encode(&self, buf: &mut BytesMut) {
        let body = self.body_len();
        put_varint(buf, body as u32);
        if body == 0 {
            return;
        }
        fn u8p(buf: &mut BytesMut, pid: u8, v: &Option<u8>) {
            if let Some(v) = v {
                buf.put_u8(pid);
                buf.put_u8(*v);
            }
        }
        fn u16p(buf: &mut BytesMut, pid: u8, v: &Option<u16>) {
            if let Some(v) = v {
                buf.put_u8(pid);
                buf.put_u16(*v);
            }
        }
        fn u32p(buf: &mut BytesMut, pid: u8, v: &Option<u32>) {
            if let Some(v) = v {
                buf.put_u8(pid);
                buf.put_u32(*v);
            }
        }
        fn sp(buf: &mut BytesMut, pid: u8, v: &Option<String>) {
            if let Some(v) = v {
                buf.put_u8(pid);
                put_str(buf, v);
            }
        }
        fn bp(buf: &mut BytesMut, pid: u8, v: &Option<Bytes>) {
            if let Some(v) = v {
                buf.put_u8(pid);
                put_bin(buf, v);
            }
        }
        u8p(buf, id::PAYLOAD_FORMAT_INDICATOR, &self.payload_format_indicator);
        u32p(buf, id::MESSAGE_EXPIRY_INTERVAL, &self.message_expiry_interval);
        sp(buf, id::CONTENT_TYPE, &self.content_type);
        sp(buf, id::RESPONSE_TOPIC, &self.response_topic);
        bp(buf, id::CORRELATION_DATA, &self.correlation_data);
        for v in &self.subscription_identifiers {
            buf.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(buf, *v);
        }
        u32p(buf, id::SESSION_EXPIRY_INTERVAL, &self.session_expiry_interval);
        sp(buf, id::ASSIGNED_CLIENT_IDENTIFIER, &self.assigned_client_identifier);
        u16p(buf, id::SERVER_KEEP_ALIVE, &self.server_keep_alive);
        sp(buf, id::AUTHENTICATION_METHOD, &self.authentication_method);
        bp(buf, id::AUTHENTICATION_DATA, &self.authentication_data);
        u8p(buf, id::REQUEST_PROBLEM_INFORMATION, &self.request_problem_information);
        u32p(buf, id::WILL_DELAY_INTERVAL, &self.will_delay_interval);
        u8p(buf, id::REQUEST_RESPONSE_INFORMATION, &self.request_response_information);
        sp(buf, id::RESPONSE_INFORMATION, &self.response_information);
        sp(buf, id::SERVER_REFERENCE, &self.server_reference);
        sp(buf, id::REASON_STRING, &self.reason_string);
        u16p(buf, id::RECEIVE_MAXIMUM, &self.receive_maximum);
        u16p(buf, id::TOPIC_ALIAS_MAXIMUM, &self.topic_alias_maximum);
        u16p(buf, id::TOPIC_ALIAS, &self.topic_alias);
        u8p(buf, id::MAXIMUM_QOS, &self.maximum_qos);
        u8p(buf, id::RETAIN_AVAILABLE, &self.retain_available);
        for (k, v) in &self.user_properties {
            buf.put_u8(id::USER_PROPERTY);
            put_str(buf, k);
            put_str(buf, v);
        }
        u32p(buf, id::MAXIMUM_PACKET_SIZE, &self.maximum_packet_size);
        u8p(buf, id::WILDCARD_SUBSCRIPTION_AVAILABLE, &self.wildcard_subscription_available);
        u8p(buf, id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, &self.subscription_identifier_available);
        u8p(buf, id::SHARED_SUBSCRIPTION_AVAILABLE, &self.shared_subscription_available);
    }
}

fn is_known(pid: u8) -> bool {
    matches!(
        pid,
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 | 0x0B | 0x11 | 0x12 | 0x13 | 0x15..=0x1A | 0x1C | 0x1F | 0x21..=0x2A
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8], ctx: PropertyContext) -> Result<Properties, DecodeError> {
        Properties::decode(&mut Reader::new(Bytes::copy_from_slice(bytes)), ctx)
    }

    #[test]
    fn lazy_properties_hold_nothing_until_set() {
        let mut l = LazyProperties::default();
        assert!(l.get().is_none());
        assert!(l.is_empty() && l.topic_alias.is_none());
        // An empty list converts to nothing held; equality looks at the contents.
        assert!(LazyProperties::from(Properties::default()).get().is_none());
        let mut written = LazyProperties::default();
        let _: &mut Properties = &mut written; // a write allocates an (empty) list
        assert!(written.get().is_some());
        assert_eq!(written, l);
        l.topic_alias = Some(3);
        assert_eq!(l.get().and_then(|p| p.topic_alias), Some(3));
        assert_ne!(written, l);
        let p = Properties { content_type: Some("t".into()), ..Properties::default() };
        assert_eq!(LazyProperties::from(p.clone()).into_inner().as_deref(), Some(&p));
    }

    #[test]
    fn duplicate_single_property_is_protocol_error() {
        let r = dec(&[6, 0x02, 0, 0, 0, 1, 0x02], PropertyContext::Publish);
        assert!(r.is_err());
        let r = dec(&[10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2], PropertyContext::Publish);
        assert!(matches!(r, Err(DecodeError::Protocol(_))));
    }

    #[test]
    fn property_in_wrong_packet_is_refused() {
        // Topic alias in CONNECT.
        assert!(matches!(dec(&[3, 0x23, 0, 1], PropertyContext::Connect), Err(DecodeError::Protocol(_))));
        // Unknown identifier 0x7F.
        assert!(matches!(dec(&[2, 0x7F, 0], PropertyContext::Publish), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn zero_values_refused() {
        assert!(dec(&[3, 0x21, 0, 0], PropertyContext::Connect).is_err()); // receive maximum 0
                                                                           // Topic alias 0 [MQTT-3.3.2-8] is decoded, for the connection to answer with 0x94.
        assert_eq!(dec(&[3, 0x23, 0, 0], PropertyContext::Publish).unwrap().topic_alias, Some(0));
        assert!(dec(&[2, 0x0B, 0], PropertyContext::Subscribe).is_err()); // subscription id 0
        assert!(dec(&[5, 0x27, 0, 0, 0, 0], PropertyContext::Connect).is_err());
        assert!(dec(&[2, 0x01, 2], PropertyContext::Publish).is_err()); // payload format 2
    }

    #[test]
    fn length_beyond_packet_is_malformed() {
        assert!(matches!(dec(&[9, 0x01, 1], PropertyContext::Publish), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn round_trip_all() {
        let p = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(30),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            subscription_identifiers: vec![1, 268_435_455],
            topic_alias: Some(3),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
            ..Default::default()
        };
        let mut b = BytesMut::new();
        p.encode(&mut b);
        assert_eq!(b.len(), p.encoded_len());
        assert_eq!(dec(&b, PropertyContext::Publish).unwrap(), p);
    }
}
