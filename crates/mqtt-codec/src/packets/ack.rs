//! PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4–§3.7): one layout, four packet types.

use bytes::{BufMut, BytesMut};

use crate::properties::{LazyProperties, PropertyContext};
use crate::wire::Reader;
use crate::{DecodeError, Properties, Protocol, ReasonCode};

/// The body shared by PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubAck {
    /// Packet identifier being acknowledged.
    pub packet_id: u16,
    /// Reason code (v5; success for v3).
    pub reason_code: ReasonCode,
    /// Properties (v5).
    pub properties: LazyProperties,
}

impl PubAck {
    /// A success acknowledgement for `packet_id`.
    pub fn new(packet_id: u16) -> Self {
        PubAck { packet_id, ..Default::default() }
    }

    pub(crate) fn decode(r: &mut Reader, v: Protocol) -> Result<PubAck, DecodeError> {
        let packet_id = super::packet_id(r)?;
        let mut ack = PubAck::new(packet_id);
        if v.is_v5() {
            // §3.4.2.1: reason code and properties may be omitted.
            if !r.is_empty() {
                ack.reason_code = ReasonCode(r.u8()?);
            }
            if !r.is_empty() {
                ack.properties = Properties::decode(r, PropertyContext::PubAck)?.into();
            }
        }
        Ok(ack)
    }

    pub(crate) fn body_len(&self, v: Protocol) -> usize {
        if !v.is_v5() || (self.reason_code == ReasonCode::SUCCESS && self.properties.is_empty()) {
            2
        } else if self.properties.is_empty() {
            3
        } else {
            3 + self.properties.encoded_len()
        }
    }

    pub(crate) fn encode_body(&self, v: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        let n = self.body_len(v);
        if n >= 3 {
            buf.put_u8(self.reason_code.0);
        }
        if n > 3 {
            self.properties.encode(buf);
        }
    }
}
