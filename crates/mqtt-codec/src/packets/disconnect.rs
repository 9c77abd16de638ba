//! DISCONNECT (§3.14) and AUTH (§3.15).

use bytes::{BufMut, BytesMut};

use crate::properties::{LazyProperties, PropertyContext};
use crate::wire::Reader;
use crate::{DecodeError, Properties, Protocol, ReasonCode};

/// DISCONNECT, from either side (v5 carries a reason code).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code (v5).
    pub reason_code: ReasonCode,
    /// Properties (v5).
    pub properties: LazyProperties,
}

impl Disconnect {
    /// A DISCONNECT with this reason code.
    pub fn new(reason_code: ReasonCode) -> Self {
        Disconnect { reason_code, properties: LazyProperties::default() }
    }

    pub(crate) fn decode(r: &mut Reader, v: Protocol) -> Result<Disconnect, DecodeError> {
        let mut d = Disconnect::default();
        if v.is_v5() {
            if !r.is_empty() {
                d.reason_code = ReasonCode(r.u8()?);
            }
            if !r.is_empty() {
                d.properties = Properties::decode(r, PropertyContext::Disconnect)?.into();
            }
        }
        Ok(d)
    }

    pub(crate) fn body_len(&self, v: Protocol) -> usize {
        if !v.is_v5() || (self.reason_code == ReasonCode::SUCCESS && self.properties.is_empty()) {
            0
        } else if self.properties.is_empty() {
            1
        } else {
            1 + self.properties.encoded_len()
        }
    }

    pub(crate) fn encode_body(&self, v: Protocol, buf: &mut BytesMut) {
        let n = self.body_len(v);
        if n >= 1 {
            buf.put_u8(self.reason_code.0);
        }
        if n > 1 {
            self.properties.encode(buf);
        }
    }
}

/// AUTH (v5 only): enhanced authentication exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties (authentication method and data).
    pub properties: LazyProperties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader) -> Result<Auth, DecodeError> {
        let mut a = Auth::default();
        if !r.is_empty() {
            a.reason_code = ReasonCode(r.u8()?);
            if !matches!(a.reason_code.0, 0x00 | 0x18 | 0x19) {
                return Err(DecodeError::Malformed("invalid AUTH reason code"));
            }
            if !r.is_empty() {
                a.properties = Properties::decode(r, PropertyContext::Auth)?.into();
            }
        }
        Ok(a)
    }

    pub(crate) fn body_len(&self) -> usize {
        if self.reason_code == ReasonCode::SUCCESS && self.properties.is_empty() {
            0
        } else {
            1 + self.properties.encoded_len()
        }
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        if self.body_len() > 0 {
            buf.put_u8(self.reason_code.0);
            self.properties.encode(buf);
        }
    }
}
