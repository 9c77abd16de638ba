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
//! A connection announces a subscription change as soon as it reads one — a read batch whose
//! first packet is a SUBSCRIBE or UNSUBSCRIBE (what a client writes when it subscribes: one
//! packet, then it waits), or the input that resumes a parked connection
//! ([`crate::conn::park`]), looked at (`peek`) by the parking lot's task before the connection's
//! task is spawned — and counts it applied once it has handled that packet. A connection about to
//! route a read batch's PUBLISHes first yields once to the scheduler (the subscriber's task may
//! be queued behind it), then waits until every change announced by then is applied, at most
//! [`MAX_WAIT`]. When no change is in flight, which is
//! nearly always, that is two loads of counters that only subscription changes write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    pub async fn give_way(&self) {
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

/// True when the first packet in `buf` is a SUBSCRIBE or UNSUBSCRIBE (its fixed header's
/// packet type: 8 or 10).
pub fn starts_with_subscription_change(buf: &[u8]) -> bool {
    matches!(buf.first().map(|b| b >> 4), Some(8 | 10))
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
    fn subscribe_and_unsubscribe_headers_are_told_apart() {
        assert!(starts_with_subscription_change(&[0x82, 0x05]));
        assert!(starts_with_subscription_change(&[0xA2, 0x05]));
        for other in [0x30u8, 0x32, 0x40, 0x62, 0xC0, 0xE0] {
            assert!(!starts_with_subscription_change(&[other, 0]), "{other:#x}");
        }
        assert!(!starts_with_subscription_change(&[]));
    }
}
