//! Parking idle connections: a plain-TCP connection with nothing to read, write or wait for
//! gives up its task.
//!
//! Why: a tokio task per connection costs its task cell (the driver's future, ≈ 1.3 KB) and its
//! I/O registration (256 B) for as long as the connection lives, even when the client only
//! sends a PINGREQ a minute. A broker holding a fleet of mostly idle devices pays that per
//! device. After `idle_park_after` of quiet (`[limits]`), the driver ends its task and leaves
//! a [`Parked`] record — the core connection and the socket — in the connection's
//! [`ConnWaker`]; the socket joins one `epoll` set for the whole broker (through `mio`),
//! which is itself one registration in tokio's reactor, watched by one task that also keeps a
//! heap of the parked connections' keep-alive and token deadlines. (Until issue 24 a thread of
//! its own watched the set: then input to a parked connection was seen by another `epoll_wait`
//! than input to running ones, in no order with it; now one `epoll_wait` sees both in the
//! order they came, which [`crate::conn::order`] relies on.)
//!
//! Anything that would have woken the task resumes it instead: input on the socket (or its
//! end), a delivery from the core, an administrator's or a token revocation's end signal,
//! shutdown, or a deadline. Resuming takes the record out of the waker, takes the socket out of
//! the set and spawns a new driver task, which finds the connection exactly as
//! it was left (its keep-alive deadline included) and sorts out what woke it the same way a
//! running driver does.
//!
//! The race between parking and waking is settled by [`ConnWaker`]'s state: a wake sets
//! `WOKEN` and, if it finds `PARKED`, takes the record under the lock; the driver stores the
//! record under the same lock and parks only if `WOKEN` is not set (a wake since it last
//! looked). Either the wake sees the record, or the driver sees the wake.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use mqtt_codec::ReasonCode;
use parking_lot::Mutex;
use slab::Slab;
use warden_core::Wake;

/// Something woke the connection since its driver last looked.
const WOKEN: u8 = 1;
/// The connection is parked: its record is in [`ConnWaker::parked`].
const PARKED: u8 = 2;
/// The connection ends because its credential lost its standing: its will is discarded.
const REVOKED: u8 = 4;

/// A connection's single wake-up: the core (deliveries, a take-over), the admin registry and
/// the trust seam (end signals) and the parking lot's task (input, deadlines) all call
/// [`Wake::wake`]; a running driver waits for it with [`ConnWaker::woken`], a parked one is
/// resumed by it.
///
/// 32 bytes: every connection has one for its whole life. The running task's waker and the
/// parked record are never there at once, so they share one slot under one lock.
pub struct ConnWaker {
    state: AtomicU8,
    /// Why the connection must end (a reason code; 0: it need not): set by the admin registry
    /// (kick, ban, shutdown) and the trust seam (revocation, removal: [`ConnWaker::revoke`]).
    end: AtomicU8,
    /// The generation of the parking lot's entry while parked (changed under the lot's entry
    /// lock): an event or deadline for an entry since reused is told apart.
    generation: AtomicU32,
    slot: Mutex<Slot>,
}

/// Who waits for the connection's wake-up. No task waiting is a no-op waker: two variants
/// fit in 16 bytes (the record's pointer sits beside the waker's non-null vtable pointer).
enum Slot {
    /// The running driver task.
    Task(Waker),
    /// Nothing runs: the record is resumed by the next wake.
    Parked(Box<Parked>),
}

fn empty() -> Slot {
    Slot::Task(Waker::noop().clone())
}

impl Slot {
    /// The parked record, if that is what is here (the slot is left empty); a task's waker
    /// stays.
    fn take_parked(&mut self) -> Option<Box<Parked>> {
        match std::mem::replace(self, empty()) {
            Slot::Parked(p) => Some(p),
            task => {
                *self = task;
                None
            }
        }
    }

    /// The task's waker, if that is what is here (the slot is left empty); a parked record
    /// stays.
    fn take_task(&mut self) -> Option<Waker> {
        match std::mem::replace(self, empty()) {
            Slot::Task(w) => Some(w),
            parked => {
                *self = parked;
                None
            }
        }
    }
}

impl Default for ConnWaker {
    fn default() -> Self {
        ConnWaker {
            state: AtomicU8::new(0),
            end: AtomicU8::new(0),
            generation: AtomicU32::new(0),
            slot: Mutex::new(empty()),
        }
    }
}

impl Wake for ConnWaker {
    fn wake(&self) {
        let prev = self.state.fetch_or(WOKEN, Ordering::AcqRel);
        if prev & PARKED != 0 {
            let record = {
                let mut slot = self.slot.lock();
                self.state.fetch_and(!PARKED, Ordering::AcqRel);
                // None: another wake resumed it first (its new task may be waiting already).
                slot.take_parked()
            };
            if let Some(p) = record {
                (*p).resume();
            }
        } else if prev & WOKEN == 0 {
            // Woken outside the lock.
            let task = self.slot.lock().take_task();
            if let Some(w) = task {
                w.wake();
            }
        }
    }
}

impl ConnWaker {
    /// Ask the connection to end with `reason` (the first reason given wins) and wake it.
    pub fn end(&self, reason: ReasonCode) {
        let _ = self.end.compare_exchange(0, reason.0.max(1), Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    /// Ask the connection to end with `reason` because its credential lost its standing (a
    /// trust change): its will is discarded, never published.
    pub fn revoke(&self, reason: ReasonCode) {
        self.state.fetch_or(REVOKED, Ordering::AcqRel);
        self.end(reason);
    }

    /// True when [`ConnWaker::revoke`] was called: the connection's will is discarded.
    pub fn revoked(&self) -> bool {
        self.state.load(Ordering::Acquire) & REVOKED != 0
    }

    /// The reason given to [`ConnWaker::end`], once it was called.
    pub fn end_reason(&self) -> Option<ReasonCode> {
        match self.end.load(Ordering::Acquire) {
            0 => None,
            r => Some(ReasonCode(r)),
        }
    }

    /// Resolves once the connection was woken since the last time this resolved.
    pub fn woken(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if self.state.load(Ordering::Acquire) & WOKEN == 0 {
                {
                    let mut slot = self.slot.lock();
                    match &*slot {
                        Slot::Task(w) if w.will_wake(cx.waker()) => {}
                        _ => *slot = Slot::Task(cx.waker().clone()),
                    }
                }
                // A wake that set WOKEN before the waker was stored is seen here; one after
                // it finds the waker.
                if self.state.load(Ordering::Acquire) & WOKEN == 0 {
                    return Poll::Pending;
                }
            }
            self.state.fetch_and(!WOKEN, Ordering::AcqRel);
            Poll::Ready(())
        })
    }

    /// Leave `record` here unless a wake came since the driver last looked; `Err` gives it back
    /// (the caller resumes it).
    fn try_park(&self, record: Box<Parked>) -> Result<(), Box<Parked>> {
        let mut slot = self.slot.lock();
        match self.state.compare_exchange(0, PARKED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // Replaces the ended task's waker, which would keep its cell (the whole driver
                // future) alive.
                *slot = Slot::Parked(record);
                Ok(())
            }
            Err(_) => Err(record),
        }
    }
}

/// A parked connection: what its driver needs to go on, and its socket.
pub struct Parked {
    /// The connection's state (core connection, registrations, deadlines).
    pub core: crate::conn::Core,
    /// The socket, registered in the parking lot's set under `token`.
    pub stream: std::net::TcpStream,
    token: Token,
}

impl Parked {
    /// Take the socket out of the parking set and spawn a driver for the connection again.
    fn resume(self) {
        let Parked { mut core, stream, token } = self;
        tracing::trace!(token = token.0, "resuming a parked connection");
        core.announce_input(&stream);
        // Always there: only a parking lot makes a `Parked` (the lot is not kept in the
        // record: 8 bytes that would take it out of its allocation size class).
        match core.parking().cloned() {
            Some(lot) => {
                let parked_for = lot.ticks(Instant::now()).wrapping_sub(core.parked_at);
                let parked_for = TICK.saturating_mul(parked_for);
                core.park_delay = to_ticks(lot.next_delay(from_ticks(core.park_delay), parked_for));
                lot.forget(&stream, token);
                lot.parked.fetch_sub(1, Ordering::Relaxed);
                lot.resumes.fetch_add(1, Ordering::Relaxed);
                lot.handle.spawn(crate::conn::resume(core, stream));
            }
            None => crate::conn::lost(core, &"no parking lot"),
        }
    }
}

/// The unit of a connection's park delay and park time (16 bits of it: 655 s, more than
/// `idle_park_max` may be).
pub const TICK: Duration = Duration::from_millis(10);

/// `d` in [`TICK`]s, at least 1 (0 is "never parked"), at most `u16::MAX`.
pub fn to_ticks(d: Duration) -> u16 {
    u16::try_from(d.as_millis() / TICK.as_millis()).unwrap_or(u16::MAX).max(1)
}

/// `ticks` as a duration.
pub fn from_ticks(ticks: u16) -> Duration {
    TICK.saturating_mul(u32::from(ticks))
}

/// [`ParkingLot::next_delay`] with the lot's `after` and `max`.
fn next_delay(after: Duration, max: Duration, waited: Duration, parked_for: Duration) -> Duration {
    let period = waited.saturating_add(parked_for);
    if period >= max {
        after
    } else {
        (period + period / 2).clamp(after, max)
    }
}

/// A parked socket's token: its slab key in the low half, the entry's generation in the high
/// half (an event or deadline for a key since reused is told apart).
fn token_of(key: usize, generation: u32) -> Token {
    Token(key | (generation as usize) << 32)
}

/// The slab key in `token`.
fn key_of(token: Token) -> usize {
    token.0 & 0xffff_ffff
}

/// The waker of the connection parked under `token`, while it still is (its generation is
/// kept in the waker: a slab entry is one pointer).
fn entry_of(entries: &Slab<Arc<ConnWaker>>, token: Token) -> Option<&Arc<ConnWaker>> {
    entries.get(key_of(token)).filter(|w| w.generation.load(Ordering::Relaxed) as usize == token.0 >> 32)
}

/// The parking lot: one `epoll` set, itself watched by tokio's reactor (one registration for
/// the whole set), and the parked connections' deadlines, kept by one task.
pub struct ParkingLot {
    registry: mio::Registry,
    /// Interrupts the task's wait (stop, an earlier deadline).
    interrupt: tokio::sync::Notify,
    /// One per parked socket, by the low half of its token.
    entries: Mutex<Slab<Arc<ConnWaker>>>,
    /// Deadlines in nanoseconds since `epoch` (16 bytes an entry, not 24), with their tokens.
    deadlines: Mutex<BinaryHeap<Reverse<(u64, usize)>>>,
    epoch: Instant,
    generation: AtomicU32,
    stop: AtomicBool,
    parked: AtomicUsize,
    /// Parked connections resumed since the start (`warden_connection_resumes_total`).
    resumes: AtomicU64,
    /// Resumed drivers are spawned here.
    handle: tokio::runtime::Handle,
    /// Quiet this long before a connection parks (`idle_park_after`).
    pub after: Duration,
    /// The longest quiet a connection that keeps coming back waits before it parks
    /// (`idle_park_max`; [`ParkingLot::next_delay`]).
    pub max: Duration,
}

impl ParkingLot {
    /// Start the parking lot's task; connections quiet for `after` park (from within a tokio
    /// runtime: the set is watched by its reactor, and resumed drivers are spawned on it).
    pub fn start(after: Duration, max: Duration) -> std::io::Result<Arc<ParkingLot>> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let interrupt = tokio::sync::Notify::new();
        // The set's own descriptor is readable while a parked socket has an event: tokio's
        // reactor sees it in the same `epoll_wait` as the running connections' sockets, in the
        // order the events came (arrival order, `crate::conn::order`).
        // `with_interest` is deprecated because nothing stops an arbitrary `AsRawFd` from
        // closing or changing its descriptor while registered (tokio#8587); a `mio::Poll` owns
        // its epoll descriptor for its whole life and always returns that one, and the
        // `AsyncFd` owns the `Poll`. The replacement, `register_with_interest`, is `unsafe`,
        // which the workspace forbids.
        #[allow(deprecated)]
        let watched = tokio::io::unix::AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
        let lot = Arc::new(ParkingLot {
            registry,
            interrupt,
            entries: Mutex::new(Slab::new()),
            deadlines: Mutex::new(BinaryHeap::new()),
            epoch: Instant::now(),
            generation: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            resumes: AtomicU64::new(0),
            handle: tokio::runtime::Handle::current(),
            after,
            max: max.max(after),
        });
        let shared = lot.clone();
        lot.handle.spawn(async move { shared.run(watched).await });
        Ok(lot)
    }

    /// Connections parked now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Parked connections resumed since the start.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }

    /// Stop the task (parked connections are resumed by their end signals first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.interrupt.notify_one();
    }

    /// Park `core` with `stream`: the task that drove it ends after this. The connection is
    /// resumed at once if something woke it meanwhile, or if the socket cannot be watched.
    pub fn park(self: &Arc<Self>, mut core: crate::conn::Core, stream: std::net::TcpStream, deadline: Option<Instant>) {
        core.parked_at = self.ticks(Instant::now());
        let waker = core.waker().clone();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let token = {
            let mut entries = self.entries.lock();
            waker.generation.store(generation, Ordering::Relaxed);
            let key = entries.insert(waker.clone());
            token_of(key, generation)
        };
        if let Err(e) = self.registry.register(&mut SourceFd(&stream.as_raw_fd()), token, Interest::READABLE) {
            tracing::debug!(error = %e, "cannot park a connection: it stays in a task");
            self.entries.lock().remove(key_of(token)); // the key just inserted
            self.handle.spawn(crate::conn::resume(core, stream));
            return;
        }
        if let Some(d) = deadline {
            let d = self.nanos(d);
            let mut heap = self.deadlines.lock();
            let earliest = heap.peek().is_none_or(|Reverse((e, _))| d < *e);
            heap.push(Reverse((d, token.0)));
            drop(heap);
            if earliest {
                self.interrupt.notify_one();
            }
        }
        self.parked.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(token = token.0, "parking a connection");
        if let Err(record) = waker.try_park(Box::new(Parked { core, stream, token })) {
            (*record).resume();
        }
    }

    /// Take `stream` out of the set.
    fn forget(&self, stream: &std::net::TcpStream, token: Token) {
        let _ = self.registry.deregister(&mut SourceFd(&stream.as_raw_fd()));
        let mut entries = self.entries.lock();
        if entry_of(&entries, token).is_some() {
            entries.remove(key_of(token));
        }
    }

    /// The waker of the connection parked under `token`, if it still is.
    fn waker_of(&self, token: Token) -> Option<Arc<ConnWaker>> {
        entry_of(&self.entries.lock(), token).cloned()
    }

    /// `t` in [`TICK`]s since the lot started, wrapping every 497 days (only differences of
    /// seconds are read: a wrong one costs one early or late park).
    fn ticks(&self, t: Instant) -> u32 {
        let ticks = t.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis();
        // Truncation is the wrap.
        #[allow(clippy::cast_possible_truncation)]
        let wrapped = ticks as u32;
        wrapped
    }

    /// The quiet time after which a connection parks next, given the delay it waited before
    /// it last parked (`waited`) and how long it then stayed parked (`parked_for`): their sum
    /// is its period, the time between two bursts of activity (messages in or out, a keep
    /// alive). A period under `max` means it would park and resume once per burst, each pair
    /// four `epoll_ctl` calls and a task spawn, for a few seconds of saved memory: it waits
    /// one and a half periods (at least `after`, at most `max`) instead. A longer period (an
    /// idle device, a keep alive of a minute) parks after `after` again.
    pub fn next_delay(&self, waited: Duration, parked_for: Duration) -> Duration {
        next_delay(self.after, self.max, waited, parked_for)
    }

    /// `t` in nanoseconds since the lot started (584 years fit).
    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The lot's task: parked sockets' events and deadlines wake their connections.
    async fn run(&self, mut watched: tokio::io::unix::AsyncFd<mio::Poll>) {
        let mut events = Events::with_capacity(1024);
        let mut due = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let next = {
                let heap = self.deadlines.lock();
                heap.peek().map(|Reverse((d, _))| tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(*d)))
            };
            tokio::select! {
                ready = watched.readable_mut() => match ready {
                    Ok(mut guard) => {
                        if let Err(e) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                            if e.kind() != std::io::ErrorKind::Interrupted {
                                tracing::error!(error = %e, "parking lot: poll failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            continue;
                        }
                        // A full batch may have left events behind: look again before waiting.
                        if events.iter().count() < events.capacity() {
                            guard.clear_ready();
                        }
                        for ev in events.iter() {
                            if let Some(w) = self.waker_of(ev.token()) {
                                w.wake();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "parking lot: cannot watch the set");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = crate::conn::sleep_until_opt(next) => {}
                _ = self.interrupt.notified() => {}
            }
            let now = self.nanos(Instant::now());
            {
                let mut heap = self.deadlines.lock();
                while heap.peek().is_some_and(|Reverse((d, _))| *d <= now) {
                    if let Some(Reverse((_, t))) = heap.pop() {
                        due.push(Token(t));
                    }
                }
                // Deadlines of connections resumed since are dropped when they come due; a heap
                // much larger than the parked set is cleaned at once.
                let live = self.parked.load(Ordering::Relaxed);
                if heap.len() > 2 * live + 1024 {
                    let entries = self.entries.lock();
                    heap.retain(|Reverse((_, t))| entry_of(&entries, Token(*t)).is_some());
                }
            }
            for t in due.drain(..) {
                if let Some(w) = self.waker_of(t) {
                    w.wake();
                }
            }
        }
    }
}

#[cfg(test)]
mod delay_tests {
    use super::next_delay;
    use std::time::Duration;

    const AFTER: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(15);

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn a_device_that_comes_back_within_the_bound_stays_unparked_for_its_period() {
        // Telemetry every 5 s: it parked 2 s after a message and was resumed 3 s later.
        assert_eq!(next_delay(AFTER, MAX, s(2.0), s(3.0)), s(7.5));
        // Then (with 7.5 s it never parks while it keeps its rate; if it was parked by a
        // pause of 1 s more) the delay follows the period.
        assert_eq!(next_delay(AFTER, MAX, s(7.5), s(1.0)), s(12.75));
        // Every 12 s: capped at the bound.
        assert_eq!(next_delay(AFTER, MAX, s(2.0), s(10.0)), MAX);
        // The first park (20 ms after the CONNACK), resumed at once: never below `after`.
        assert_eq!(next_delay(AFTER, MAX, s(0.02), s(0.1)), AFTER);
    }

    #[test]
    fn an_idle_device_parks_after_the_configured_quiet_again() {
        // A keep alive of a minute: the period is over the bound.
        assert_eq!(next_delay(AFTER, MAX, s(2.0), s(58.0)), AFTER);
        assert_eq!(next_delay(AFTER, MAX, MAX, s(60.0)), AFTER);
        // Exactly the bound: parks.
        assert_eq!(next_delay(AFTER, MAX, s(2.0), s(13.0)), AFTER);
        // A fixed delay (`idle_park_max` = `idle_park_after`): always `after`.
        assert_eq!(next_delay(AFTER, AFTER, s(2.0), s(0.5)), AFTER);
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// What an idle connection costs is mostly these two records and the session; each sits
    /// at the top of an allocation size class (mimalloc: 192, 48 with the `Arc` counts). A field added here moves
    /// every parked connection up a class: make room first (docs/PERFORMANCE.md, "Idle
    /// connections park").
    #[test]
    fn the_parked_record_and_the_waker_stay_in_their_size_class() {
        assert!(
            std::mem::size_of::<super::Parked>() <= 192,
            "Parked is {} bytes",
            std::mem::size_of::<super::Parked>()
        );
        assert!(
            std::mem::size_of::<super::ConnWaker>() <= 32,
            "ConnWaker is {} bytes",
            std::mem::size_of::<super::ConnWaker>()
        );
    }
}
