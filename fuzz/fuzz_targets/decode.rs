//! Decode arbitrary bytes; every packet that decodes must survive an encode / decode round
//! trip unchanged, and `encoded_len` must equal the length `encode` writes.
//!
//! Input layout: byte 0 picks the protocol version and the maximum packet size (see
//! `common::config`), the rest is the byte stream a client would send.

#![no_main]

mod common;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_codec::{decode, Packet, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, stream)) = data.split_first() else { return };
    let (v, max) = common::config(cfg);
    let mut buf = BytesMut::from(stream);
    // Decoding must never panic; stop at the first error or when more bytes are needed.
    while let Ok(Some(packet)) = decode(&mut buf, v, max) {
        round_trip(&packet, v);
    }
});

fn round_trip(p: &Packet, v: Protocol) {
    let mut enc = BytesMut::new();
    p.encode(v, &mut enc);
    assert_eq!(enc.len(), p.encoded_len(v), "encoded_len disagrees with encode ({v:?}): {p:?}");
    let bytes = enc.clone();
    // The encoding is decoded without a size limit: the original fitted its limit, but a
    // re-encoding may legitimately be longer or shorter (e.g. non-minimal varints).
    match decode(&mut enc, v, u32::MAX) {
        Ok(Some(q)) => {
            assert_eq!(&q, p, "round trip changed the packet ({v:?}); encoding {bytes:02x?}");
            assert!(enc.is_empty(), "encoding has {} trailing bytes ({v:?}): {p:?}", enc.len());
        }
        other => panic!("encoding does not decode ({v:?}): {other:?}; packet {p:?}; encoding {bytes:02x?}"),
    }
}
