//! Incremental decoding equivalence: feeding the input into one buffer in random-sized chunks
//! (as reads from a socket would) must yield exactly the packets, the terminating error and the
//! leftover bytes that decoding the whole input at once yields. The incremental side decodes
//! as a connection does, with `decode_cached` keeping the last PUBLISH topic across packets;
//! the whole-buffer side uses plain `decode`: the cache must change nothing.
//!
//! Input layout: byte 0 picks the protocol version and the maximum packet size (see
//! `common::config`), bytes 1-2 seed the chunk-size generator, the rest is the byte stream.

#![no_main]

mod common;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_codec::{decode, decode_cached, DecodeError, Packet};

#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<Packet>,
    error: Option<DecodeError>,
    leftover: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (v, max) = common::config(data[0]);
    let mut seed = u32::from(u16::from_le_bytes([data[1], data[2]])) | 0x1_0000;
    let stream = &data[3..];

    // All at once.
    let mut whole = Outcome { packets: Vec::new(), error: None, leftover: Vec::new() };
    let mut buf = BytesMut::from(stream);
    loop {
        match decode(&mut buf, v, max) {
            Ok(Some(p)) => whole.packets.push(p),
            Ok(None) => break,
            Err(e) => {
                whole.error = Some(e);
                break;
            }
        }
    }
    whole.leftover = buf.to_vec();

    // Chunk by chunk, decoding after every read until more bytes are needed. Empty chunks are
    // allowed (a decode call with nothing new must change nothing).
    let mut inc = Outcome { packets: Vec::new(), error: None, leftover: Vec::new() };
    let mut buf = BytesMut::new();
    let mut last_topic = None;
    let mut rest = stream;
    'feed: loop {
        let n = chunk_len(&mut seed).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decode_cached(&mut buf, v, max, &mut last_topic) {
                Ok(Some(p)) => inc.packets.push(p),
                Ok(None) => break,
                Err(e) => {
                    inc.error = Some(e);
                    break 'feed;
                }
            }
        }
        if rest.is_empty() {
            break;
        }
    }
    // Bytes the decoder did not consume: what is buffered plus what was never read (after an
    // error the connection stops reading).
    inc.leftover = [&buf[..], rest].concat();

    assert_eq!(inc, whole, "incremental decoding differs from whole-buffer decoding ({v:?}, max {max})");
});

/// Next chunk size from a xorshift generator: mostly 0..=7 bytes, sometimes up to 255.
fn chunk_len(state: &mut u32) -> usize {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    let r = (x >> 8) as usize;
    if x & 3 == 0 {
        r % 256
    } else {
        r % 8
    }
}
