//! Helpers shared by the fuzz targets (included with `mod common;`).

use mqtt_codec::Protocol;

/// Maximum packet sizes the first input byte chooses from: tiny limits exercise the
/// `PacketTooLarge` path, `268_435_460` is the largest packet the wire format can carry and
/// `u32::MAX` is "no limit".
const MAX_SIZES: [u32; 8] = [2, 5, 64, 1024, 65_536, 1 << 20, 268_435_460, u32::MAX];

/// Split the configuration byte into the protocol version and the maximum packet size.
pub fn config(b: u8) -> (Protocol, u32) {
    let v = match b % 3 {
        0 => Protocol::V31,
        1 => Protocol::V311,
        _ => Protocol::V5,
    };
    (v, MAX_SIZES[usize::from(b / 3) % MAX_SIZES.len()])
}
