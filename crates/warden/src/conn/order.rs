//! Arrival order across connections (docs/ARCHITECTURE.md, "Arrival order"): a SUBSCRIBE or
//! UNSUBSCRIBE that one connection has read is applied before another connection routes the
//! PUBLISHes it reads meanwhile.
//!
//! Each connection's task reads its own socket, so two clients' packets that reach the broker
//! microseconds apart are handled in parallel (two workers) or in either order (tokio runs the
//! task woken last first). The spec orders only one connection's packets [MQTT-4.6.0-5], but
//! clients and test suites (Paho's v5 interoperability tests) expect a SUBSCRIBE that reached
//! the broker before another client's PUBLISH to apply to it.
//!
//! A connection announces a subscription change as soon as it reads one — a read batch with a
//! SUBSCRIBE or UNSUBSCRIBE before any PUBLISH ([`has_subscription_change`]), or the input that
//! resumes a parked connection
//! ([`crate::conn::park`]), looked at (`peek`) by the parking lot's task before the connection's
//! task is spawned — and counts it applied once it has handled that packet, or at the end of
//! the batch in any case (a packet not read whole is announced again by the next read). A connection about to
//! route a read batch's PUBLISHes first yields once to the scheduler (the subscriber's task may
//! be queued behind it, not yet having read its SUBSCRIBE), then waits until every change
//! announced by then is applied, at most [`MAX_WAIT`]. It yields when a change is in flight or
//! when the batch is *fresh* (read after [`FRESH_AFTER`] of quiet: a request after a pause);
//! a connection publishing back to back with no change in flight, which is nearly always, pays
//! two loads of counters that only subscription changes write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A read after this much quiet on its connection is fresh ([`Arrivals::give_way`]): a
/// client's request after a pause (a test step, a device's next message), not the next read
/// of a stream.
pub const FRESH_AFTER: Duration = Duration::from_millis(1);

/// The longest a publishing connection waits for announced changes (a safety bound: applying
/// one takes microseconds once its task runs, but the thread running it may be preempted).
pub const MAX_WAIT: Duration = Duration::from_millis(10);

/// The broker-wide counts of subscription changes read and applied.
#[derive(Debug, Default)]
pub struct Arrivals {
    read: AtomicU64,
    applied: AtomicU64,
    /// Publishers waiting for changes to be applied are woken here.
    applied_event: tokio::sync::Notify,
}

impl Arrivals {
    /// A subscription change was read: counted applied when the guard is dropped.
    pub fn announce(&self) -> Announced<'_> {
        self.read.fetch_add(1, Ordering::SeqCst);
        Announced(self)
    }

    /// A change announced elsewhere (the parking lot, for the input that resumes a parked
    /// connection: [`Arrivals::announce_detached`]) is now this guard's.
    pub fn adopt(&self) -> Announced<'_> {
        Announced(self)
    }

    /// Announce a change whose guard is made later with [`Arrivals::adopt`] (exactly once).
    pub fn announce_detached(&self) {
        self.read.fetch_add(1, Ordering::SeqCst);
    }

    /// True when every change announced so far is applied.
    pub fn settled(&self) -> bool {
        self.applied.load(Ordering::Acquire) >= self.read.load(Ordering::SeqCst)
    }

    /// What a connection does before it routes a read batch's PUBLISHes: yield once to the
    /// scheduler (tokio polls the task woken last first: a subscriber woken by the same
    /// `epoll_wait` just before this connection waits in the run queue), then wait for the
    /// changes announced by then ([`Arrivals::wait_applied`]).
    ///
    /// `fresh`: the batch was read after the connection had been quiet for [`FRESH_AFTER`].
    /// Then it yields even when nothing is announced: a subscriber whose SUBSCRIBE came in the
    /// same `epoll_wait` as this PUBLISH was woken first but is polled later (tokio polls the
    /// task woken last first), and has not read it yet, so it could not announce it; the
    /// yield lets it (or the parking lot's task, for a parked subscriber) run first. A
    /// connection publishing back to back is not fresh and does not yield.
    pub async fn give_way(&self, fresh: bool) {
        if !fresh && self.settled() {
            // Nothing announced is in flight (nearly always): no yield, which measured ~25 %
            // more CPU per message with 50 pairs of connections publishing back to back.
            return;
        }
        tokio::task::yield_now().await;
        self.wait_applied().await;
    }

    /// Wait until the changes announced by now are applied (woken when one is), at most
    /// [`MAX_WAIT`].
    pub async fn wait_applied(&self) {
        let target = self.read.load(Ordering::SeqCst);
        if self.applied.load(Ordering::Acquire) >= target {
            return;
        }
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let notified = self.applied_event.notified();
            tokio::pin!(notified);
            // Registered before the count is read again: an application in between wakes it.
            notified.as_mut().enable();
            if self.applied.load(Ordering::Acquire) >= target
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                return;
            }
        }
    }
}

/// An announced subscription change; counted applied when dropped.
#[derive(Debug)]
pub struct Announced<'a>(&'a Arrivals);

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.0.applied.fetch_add(1, Ordering::Release);
        self.0.applied_event.notify_waiters();
    }
}

/// How many packets of a read batch [`has_subscription_change`] looks at, at most.
const SCAN: usize = 16;

/// True when the packets at the start of `buf`, before any PUBLISH, include a SUBSCRIBE or
/// UNSUBSCRIBE (packet types 8 and 10): their fixed headers are walked (type, remaining
/// length), at most [`SCAN`] of them. A subscriber's read batch may start with
/// acknowledgements of what it received (a PUBACK, then its SUBSCRIBE); a publisher's starts
/// with a PUBLISH and costs one look.
pub fn has_subscription_change(buf: &[u8]) -> bool {
    let mut at = 0usize;
    for _ in 0..SCAN {
        let Some(&header) = buf.get(at) else { return false };
        match header >> 4 {
            8 | 10 => return true,
            3 => return false,
            _ => {}
        }
        // The remaining length: up to four bytes, seven bits each.
        let mut len = 0usize;
        let mut i = at + 1;
        for shift in [0, 7, 14, 21] {
            let Some(&b) = buf.get(i) else { return false };
            len |= usize::from(b & 0x7f) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        at = i.saturating_add(len);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_in_flight_from_its_announcement_until_its_guard_drops() {
        let a = Arrivals::default();
        assert!(a.settled());
        let g = a.announce();
        assert!(!a.settled());
        drop(g);
        assert!(a.settled());
        a.announce_detached();
        assert!(!a.settled());
        drop(a.adopt());
        assert!(a.settled());
    }

    #[tokio::test]
    async fn a_publisher_waits_for_changes_announced_before_it_looked_and_no_longer_than_the_bound() {
        let a = Arrivals::default();
        a.wait_applied().await; // nothing in flight: at once
        let g = a.announce();
        let start = std::time::Instant::now();
        a.wait_applied().await; // never applied here: the bound ends the wait
        assert!(start.elapsed() >= MAX_WAIT);
        drop(g);
        assert!(a.settled());
    }

    #[test]
    fn a_subscription_change_is_found_before_the_first_publish() {
        // SUBSCRIBE, UNSUBSCRIBE alone (a header is enough: the rest may not be read yet).
        assert!(has_subscription_change(&[0x82, 0x05]));
        assert!(has_subscription_change(&[0xA2]));
        // Behind a PUBACK (0x40, 2 bytes) and a PINGREQ (0xC0, 0).
        assert!(has_subscription_change(&[0x40, 0x02, 0x00, 0x01, 0xC0, 0x00, 0x82, 0x01, 0x00]));
        // Behind a packet with a two-byte remaining length (0x80 0x01 = 128).
        let mut long = vec![0x40, 0x80, 0x01];
        long.extend([0u8; 128]);
        long.extend([0x82, 0x00]);
        assert!(has_subscription_change(&long));
        // After a PUBLISH: not looked for; none at all; a packet not read whole.
        assert!(!has_subscription_change(&[0x30, 0x00, 0x82, 0x00]));
        assert!(!has_subscription_change(&[0x40, 0x02, 0x00, 0x01, 0xC0, 0x00]));
        assert!(!has_subscription_change(&[0x40, 0x02, 0x00]));
        assert!(!has_subscription_change(&[0x40]));
        assert!(!has_subscription_change(&[]));
        // A remaining length longer than four bytes is not followed.
        assert!(!has_subscription_change(&[0x40, 0xff, 0xff, 0xff, 0xff, 0xff, 0x82]));
        // At most SCAN packets are looked at.
        let many: Vec<u8> = std::iter::repeat_n([0xC0u8, 0x00], SCAN).flatten().chain([0x82, 0x00]).collect();
        assert!(!has_subscription_change(&many));
    }
}
