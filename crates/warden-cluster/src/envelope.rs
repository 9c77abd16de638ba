//! What one node sends another: `[1][origin u64 BE][seq u64 BE][record]`, where the origin is
//! the sending node's random id for this run, `seq` counts its messages (from 1), and the
//! record is `warden_store::wire`'s (the message with its publisher, the codec's PUBLISH
//! packet inside, validated on the way in like any packet from the network).
//!
//! A node subscribes once per distinct filter, so a message whose topic matches two of its
//! filters arrives twice; [`Seen`] drops the second copy by `(origin, seq)`.

use std::collections::HashMap;

const V1: u8 = 1;
const HEAD: usize = 17;

/// Prepend the envelope head to `record`.
pub fn wrap(origin: u64, seq: u64, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + record.len());
    out.push(V1);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(record);
    out
}

/// `(origin, seq, record)`, or `None` when the bytes are not an envelope of this version.
pub fn unwrap(b: &[u8]) -> Option<(u64, u64, &[u8])> {
    if b.len() < HEAD || b[0] != V1 {
        return None;
    }
    let origin = u64::from_be_bytes(b[1..9].try_into().ok()?);
    let seq = u64::from_be_bytes(b[9..17].try_into().ok()?);
    Some((origin, seq, &b[HEAD..]))
}

/// How far back a sender's messages are remembered: copies of one message reach a node
/// together (NATS writes every matching subscription's copy when it handles the PUBLISH),
/// so a copy older than this is a copy already delivered.
const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;

/// The most senders remembered; beyond, the oldest run of memory starts again (a restarted
/// node has a new origin, so this only grows with restarts).
const MAX_ORIGINS: usize = 1024;

/// Which `(origin, seq)` pairs were seen lately.
#[derive(Default)]
pub struct Seen {
    by_origin: HashMap<u64, Window>,
}

struct Window {
    /// The highest sequence number seen.
    top: u64,
    /// Bit `s % WINDOW` is set when `s` (within `WINDOW` of `top`) was seen.
    bits: [u64; WORDS],
}

impl Seen {
    /// True the first time `(origin, seq)` is offered; false for a copy.
    pub fn first(&mut self, origin: u64, seq: u64) -> bool {
        if self.by_origin.len() >= MAX_ORIGINS && !self.by_origin.contains_key(&origin) {
            self.by_origin.clear();
        }
        let w = self.by_origin.entry(origin).or_insert(Window { top: 0, bits: [0; WORDS] });
        if seq > w.top {
            // Forget the bits of the numbers that fall out of the window.
            let gap = seq - w.top;
            if gap >= WINDOW {
                w.bits = [0; WORDS];
            } else {
                for s in w.top + 1..=seq {
                    clear(&mut w.bits, s);
                }
            }
            w.top = seq;
            set(&mut w.bits, seq);
            return true;
        }
        if w.top - seq >= WINDOW {
            return false;
        }
        if get(&w.bits, seq) {
            return false;
        }
        set(&mut w.bits, seq);
        true
    }
}

fn slot(s: u64) -> (usize, u64) {
    let i = s % WINDOW;
    ((i / 64) as usize, 1 << (i % 64))
}

fn set(bits: &mut [u64; WORDS], s: u64) {
    let (w, m) = slot(s);
    bits[w] |= m;
}

fn clear(bits: &mut [u64; WORDS], s: u64) {
    let (w, m) = slot(s);
    bits[w] &= !m;
}

fn get(bits: &[u64; WORDS], s: u64) -> bool {
    let (w, m) = slot(s);
    bits[w] & m != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_unwrap() {
        let b = wrap(7, 9, b"rec");
        assert_eq!(unwrap(&b), Some((7, 9, &b"rec"[..])));
        assert_eq!(unwrap(&b[..10]), None);
        let mut bad = b.clone();
        bad[0] = 2;
        assert_eq!(unwrap(&bad), None);
    }

    #[test]
    fn copies_are_dropped_in_any_order() {
        let mut s = Seen::default();
        assert!(s.first(1, 1));
        assert!(s.first(1, 3));
        assert!(!s.first(1, 1));
        assert!(s.first(1, 2));
        assert!(!s.first(1, 2));
        assert!(!s.first(1, 3));
        // Another origin counts on its own.
        assert!(s.first(2, 1));
        assert!(!s.first(2, 1));
    }

    #[test]
    fn the_window_slides() {
        let mut s = Seen::default();
        for n in 1..=10_000 {
            assert!(s.first(5, n));
            assert!(!s.first(5, n));
        }
        // Older than the window: a copy.
        assert!(!s.first(5, 10_000 - WINDOW));
        // A jump beyond the window forgets everything before it.
        assert!(s.first(5, 100_000));
        assert!(s.first(5, 100_000 - 1));
    }

    #[test]
    fn many_origins_stay_bounded() {
        let mut s = Seen::default();
        for o in 0..(MAX_ORIGINS as u64 * 3) {
            assert!(s.first(o, 1));
        }
        assert!(s.by_origin.len() <= MAX_ORIGINS);
    }
}
