//! CONNECT (§3.1) and CONNACK (§3.2).

use bytes::{BufMut, Bytes, BytesMut};

use crate::properties::{LazyProperties, PropertyContext};
use crate::wire::{put_bin, put_str, str_len, Reader};
use crate::{DecodeError, Properties, Protocol, QoS, ReasonCode, TopicName};

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic the will is published to.
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (v5).
    pub properties: Properties,
}

/// CONNECT: the first packet a client sends.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version requested.
    pub protocol: Protocol,
    /// Clean session (v3) / clean start (v5).
    pub clean_start: bool,
    /// Keep alive in seconds (0 = off).
    pub keep_alive: u16,
    /// CONNECT properties (v5).
    pub properties: Properties,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// Will message.
    pub will: Option<LastWill>,
    /// User name.
    pub username: Option<String>,
    /// Password (or token): never logged, see the `Debug` impl.
    pub password: Option<Bytes>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("protocol", &self.protocol)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will.as_ref().map(|w| &w.topic))
            .finish_non_exhaustive()
    }
}

impl Connect {
    pub(crate) fn decode(r: &mut Reader) -> Result<Connect, DecodeError> {
        let name = r.string().map_err(|_| DecodeError::UnsupportedProtocol)?;
        let level = r.u8()?;
        let protocol = match (name.as_str(), level) {
            ("MQTT", 4) => Protocol::V311,
            ("MQTT", 5) => Protocol::V5,
            ("MQIsdp", 3) => Protocol::V31,
            // [MQTT-3.1.2-1], [MQTT-3.1.2-2]
            _ => return Err(DecodeError::UnsupportedProtocol),
        };
        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(DecodeError::Malformed("reserved CONNECT flag set")); // [MQTT-3.1.2-3]
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?; // [MQTT-3.1.2-14]
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::Malformed("will QoS or retain without a will"));
            // [MQTT-3.1.2-11/13]
        }
        if protocol != Protocol::V5 && password_flag && !username_flag {
            return Err(DecodeError::Malformed("password without user name")); // [MQTT-3.1.2-22]
        }
        let keep_alive = r.u16()?;
        let properties =
            if protocol.is_v5() { Properties::decode(r, PropertyContext::Connect)? } else { Properties::default() };
        let client_id = r.string()?;
        let will = if will_flag {
            let properties =
                if protocol.is_v5() { Properties::decode(r, PropertyContext::Will)? } else { Properties::default() };
            let topic = r.string()?;
            let topic = TopicName::new(&topic).map_err(super::name_error)?;
            let payload = r.binary()?;
            Some(LastWill { topic, payload, qos: will_qos, retain: will_retain, properties })
        } else {
            None
        };
        let username = if username_flag { Some(r.string()?) } else { None };
        let password = if password_flag { Some(r.binary()?) } else { None };
        Ok(Connect { protocol, clean_start, keep_alive, properties, client_id, will, username, password })
    }

    pub(crate) fn body_len(&self) -> usize {
        let v5 = self.protocol.is_v5();
        let name = if self.protocol == Protocol::V31 { 6 } else { 4 };
        let mut n = str_len(name) + 1 + 1 + 2;
        if v5 {
            n += self.properties.encoded_len();
        }
        n += str_len(self.client_id.len());
        if let Some(w) = &self.will {
            if v5 {
                n += w.properties.encoded_len();
            }
            n += str_len(w.topic.as_str().len()) + str_len(w.payload.len());
        }
        if let Some(u) = &self.username {
            n += str_len(u.len());
        }
        if let Some(p) = &self.password {
            n += str_len(p.len());
        }
        n
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        put_str(buf, if self.protocol == Protocol::V31 { "MQIsdp" } else { "MQTT" });
        buf.put_u8(self.protocol.level());
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | ((w.qos as u8) << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        if v5 {
            self.properties.encode(buf);
        }
        put_str(buf, &self.client_id);
        if let Some(w) = &self.will {
            if v5 {
                w.properties.encode(buf);
            }
            put_str(buf, w.topic.as_str());
            put_bin(buf, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(buf, u);
        }
        if let Some(p) = &self.password {
            put_bin(buf, p);
        }
    }
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connack {
    /// Session present flag.
    pub session_present: bool,
    /// v5 reason code, or the v3 return code (see [`ReasonCode::to_v3_connack`]).
    pub reason_code: ReasonCode,
    /// CONNACK properties (v5).
    pub properties: LazyProperties,
}

impl Connack {
    pub(crate) fn decode(r: &mut Reader, v: Protocol) -> Result<Connack, DecodeError> {
        let flags = r.u8()?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::Malformed("reserved CONNACK flags set"));
        }
        let reason_code = ReasonCode(r.u8()?);
        let properties =
            if v.is_v5() { Properties::decode(r, PropertyContext::Connack)? } else { Properties::default() };
        Ok(Connack { session_present: flags & 1 != 0, reason_code, properties: properties.into() })
    }

    pub(crate) fn body_len(&self, v: Protocol) -> usize {
        2 + if v.is_v5() { self.properties.encoded_len() } else { 0 }
    }

    pub(crate) fn encode_body(&self, v: Protocol, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.session_present));
        buf.put_u8(self.reason_code.0);
        if v.is_v5() {
            self.properties.encode(buf);
        }
    }
}
