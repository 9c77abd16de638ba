//! Primitive data types of MQTT (§1.5): integers, UTF-8 strings, binary data and variable byte
//! integers, read from a bounded [`Reader`] and written to a [`BytesMut`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::DecodeError;

/// A cursor over one packet's body. Reading past the end is a malformed packet, never a panic.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

/// The bytes of a UTF-8 encoded string (§1.5.4) as a `str`: well-formed UTF-8 without U+0000
/// [MQTT-1.5.4-1/2].
pub fn utf8(s: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(s).map_err(|_| DecodeError::Malformed("invalid UTF-8 string"))?;
    if s.contains('\0') {
        return Err(DecodeError::Malformed("U+0000 in a UTF-8 string"));
    }
    Ok(s)
}

impl Reader {
    /// Read `buf` from the start.
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Malformed("truncated packet"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Two-byte big-endian integer.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take_slice(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    /// Four-byte big-endian integer.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take_slice(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn take_slice(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Malformed("truncated packet"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// `n` bytes, shared with the packet buffer (no copy).
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Malformed("truncated packet"));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Everything left (the PUBLISH payload), shared with the packet buffer.
    /// The reader is empty afterwards; its buffer is handed over, not shared (no reference
    /// count traffic).
    pub fn rest(&mut self) -> Bytes {
        let mut b = std::mem::take(&mut self.buf);
        b.advance(self.pos);
        self.pos = 0;
        b
    }

    /// Binary data: two-byte length then bytes (§1.5.6).
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }

    /// UTF-8 encoded string (§1.5.4): well-formed UTF-8 without U+0000 [MQTT-1.5.4-1/2].
    pub fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }

    /// A UTF-8 string, checked as [`Reader::string`] does, borrowed from the packet.
    pub fn str(&mut self) -> Result<&str, DecodeError> {
        utf8(self.prefixed()?)
    }

    /// Two-byte length then that many bytes, borrowed, not checked.
    pub fn prefixed(&mut self) -> Result<&[u8], DecodeError> {
        let n = self.u16()? as usize;
        self.take_slice(n)
    }

    /// Variable byte integer (§1.5.5): at most four bytes [MQTT-1.5.5-1].
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    // [MQTT-1.5.5-1]: the fewest bytes that hold the value.
                    return Err(DecodeError::Malformed("variable byte integer not in its shortest form"));
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed("variable byte integer longer than 4 bytes"))
    }
}

/// Result of parsing a variable byte integer from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum VarInt {
    /// The value and how many bytes it used.
    Value(u32, usize),
    /// More bytes are needed.
    Incomplete,
}

/// Parse a variable byte integer at the start of `buf` without consuming it.
pub fn peek_varint(buf: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(VarInt::Incomplete);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                // [MQTT-1.5.5-1]: the fewest bytes that hold the value (0x80 0x00 is not 0).
                return Err(DecodeError::Malformed("remaining length not in its shortest form"));
            }
            return Ok(VarInt::Value(value, i + 1));
        }
    }
    Err(DecodeError::Malformed("remaining length longer than 4 bytes"))
}

/// Bytes a variable byte integer takes.
pub fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Write a variable byte integer (values above 268,435,455 are clamped by the caller's checks).
pub fn put_varint(buf: &mut BytesMut, mut v: u32) {
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

/// Write a length-prefixed UTF-8 string (callers keep strings within 65,535 bytes).
pub fn put_str(buf: &mut BytesMut, s: &str) {
    put_bin(buf, s.as_bytes());
}

/// Write length-prefixed binary data, truncated at 65,535 bytes.
pub fn put_bin(buf: &mut BytesMut, b: &[u8]) {
    let b = &b[..b.len().min(u16::MAX as usize)];
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

/// Encoded size of a length-prefixed string or binary field.
pub fn str_len(len: usize) -> usize {
    2 + len.min(u16::MAX as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for v in [0u32, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(peek_varint(&b).unwrap(), VarInt::Value(v, b.len()));
            assert_eq!(Reader::new(b.freeze()).varint().unwrap(), v);
        }
    }

    #[test]
    fn five_byte_varint_is_malformed() {
        // [MQTT-1.5.5-1]: at most four bytes.
        assert!(peek_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        assert!(Reader::new(Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01])).varint().is_err());
        assert_eq!(peek_varint(&[0xFF, 0xFF]).unwrap(), VarInt::Incomplete);
    }

    #[test]
    fn non_minimal_varint_is_malformed() {
        // [MQTT-1.5.5-1]: "the minimum number of bytes necessary to represent the value".
        for bytes in [&[0x80, 0x00][..], &[0xFF, 0x80, 0x00], &[0x80, 0x80, 0x80, 0x00], &[0x81, 0x00]] {
            assert!(peek_varint(bytes).is_err(), "{bytes:?}");
            assert!(Reader::new(Bytes::copy_from_slice(bytes)).varint().is_err(), "{bytes:?}");
        }
        // A zero in the last byte of a longer value is fine when that byte is not the last
        // one written: 128 is 0x80 0x01.
        assert_eq!(peek_varint(&[0x80, 0x01]).unwrap(), VarInt::Value(128, 2));
        assert_eq!(peek_varint(&[0x00]).unwrap(), VarInt::Value(0, 1));
    }

    #[test]
    fn rest_hands_over_what_is_left() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x01abc"));
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(&r.rest()[..], b"abc");
        assert!(r.is_empty());
        assert_eq!(r.remaining(), 0);
        assert!(r.rest().is_empty());
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        // [MQTT-1.5.4-1], [MQTT-1.5.4-2]
        assert!(Reader::new(Bytes::from_static(b"\x00\x03a\x00b")).string().is_err());
        assert!(Reader::new(Bytes::from_static(b"\x00\x02\xC3\x28")).string().is_err());
        assert!(Reader::new(Bytes::from_static(b"\x00\x05ab")).string().is_err());
        assert_eq!(Reader::new(Bytes::from_static(b"\x00\x02ab")).string().unwrap(), "ab");
    }
}
