//! Per-connection and broker-wide limits enforced by the shell (SPEC §7: "no client can hurt
//! another"), kept out of the core so it stays pure:
//!
//! - [`PublishLimiter`]: `max_publish_rate` (PUBLISH packets/s) and `max_publish_bandwidth`
//!   (PUBLISH bytes/s) per connection, two token buckets with a one-second burst. A connection
//!   over either is *throttled* (its socket is not read until the bucket is out of debt, so TCP
//!   slows the sender down) and, if it is still over after `publish_throttle`, disconnected:
//!   v5 DISCONNECT 0x96 (Message rate too high) or 0x97 (Quota exceeded), v3 close.
//!   `publish_throttle = 0` disconnects at the first PUBLISH beyond the burst, before routing it.
//! - [`MemoryGauge`]: the `max_memory` high-water mark over the bytes held in session queues
//!   (sampled from the core) and in connection buffers (tracked exactly with atomics). Above
//!   it publishers stop being read, the heaviest first, and only those above their fair share
//!   of the recent publish bandwidth: a light publisher is never paused.
//! - [`LogOnce`]: "log once per key per interval", so a flood costs one log line per client
//!   (or address) per minute, not one per packet.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_codec::ReasonCode;
use parking_lot::Mutex;

/// How often a limit hit is logged per key (client id or address) at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A token bucket that may go into debt: a packet already read is always charged.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second, holding at most `burst` (starts full).
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket { rate, burst, tokens: burst, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Take `n` tokens (possibly into debt); true when the bucket is not in debt afterwards.
    pub fn take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens -= n;
        self.tokens >= 0.0
    }

    /// True when the bucket is in debt at `now`.
    pub fn in_debt(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens < 0.0
    }

    /// Time until the debt is repaid (zero when there is none).
    pub fn wait(&self) -> Duration {
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-self.tokens / self.rate).min(3600.0))
        }
    }
}

/// The publish limits of one connection (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// PUBLISH packets per second; 0 = off.
    pub rate: u32,
    /// PUBLISH bytes per second; 0 = off.
    pub bandwidth: u64,
    /// Largest packet (the bandwidth burst is at least this, or it could never pass).
    pub max_packet_size: u32,
    /// How long a connection may stay throttled before it is disconnected.
    pub throttle: Duration,
}

/// What the connection driver does after a read batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Keep reading.
    Read,
    /// Do not read before `until`; `started` names the limit when this begins a throttling
    /// episode (for counting and logging once).
    Pause {
        /// When reading may resume.
        until: Instant,
        /// The limit that started the episode (0x96 rate, 0x97 bandwidth), if it just started.
        started: Option<ReasonCode>,
    },
    /// Disconnect with this reason (0x96 or 0x97).
    Disconnect(ReasonCode),
}

/// Publish rate and bandwidth buckets of one connection.
#[derive(Debug)]
pub struct PublishLimiter {
    msgs: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    throttle: Duration,
    throttled_since: Option<Instant>,
}

impl PublishLimiter {
    /// The limiter for these limits, or `None` when both are off.
    pub fn new(l: PublishLimits, now: Instant) -> Option<PublishLimiter> {
        let msgs = (l.rate > 0).then(|| TokenBucket::new(f64::from(l.rate), f64::from(l.rate), now));
        let bytes = (l.bandwidth > 0).then(|| {
            let rate = l.bandwidth as f64;
            TokenBucket::new(rate, rate.max(f64::from(l.max_packet_size)), now)
        });
        (msgs.is_some() || bytes.is_some()).then_some(PublishLimiter {
            msgs,
            bytes,
            throttle: l.throttle,
            throttled_since: None,
        })
    }

    /// The limit in debt, rate first.
    fn over(&mut self, now: Instant) -> Option<ReasonCode> {
        if self.msgs.as_mut().is_some_and(|b| b.in_debt(now)) {
            Some(ReasonCode::MESSAGE_RATE_TOO_HIGH)
        } else if self.bytes.as_mut().is_some_and(|b| b.in_debt(now)) {
            Some(ReasonCode::QUOTA_EXCEEDED)
        } else {
            None
        }
    }

    /// Charge one PUBLISH of `size` bytes on the wire. With `publish_throttle = 0` a PUBLISH
    /// beyond the burst is refused: `Err(0x96 | 0x97)` and the caller disconnects before
    /// routing it. Otherwise it is always accepted (the buckets go into debt).
    pub fn charge(&mut self, size: usize, now: Instant) -> Result<(), ReasonCode> {
        let m = self.msgs.as_mut().is_none_or(|b| b.take(1.0, now));
        let b = self.bytes.as_mut().is_none_or(|b| b.take(size as f64, now));
        if self.throttle.is_zero() {
            if !m {
                return Err(ReasonCode::MESSAGE_RATE_TOO_HIGH);
            }
            if !b {
                return Err(ReasonCode::QUOTA_EXCEEDED);
            }
        }
        Ok(())
    }

    /// After a read batch: keep reading, pause until the debt is repaid, or disconnect when
    /// the connection has been over its limits for longer than `publish_throttle`.
    pub fn after_batch(&mut self, now: Instant) -> Throttle {
        let Some(code) = self.over(now) else {
            self.throttled_since = None;
            return Throttle::Read;
        };
        let started = match self.throttled_since {
            None => {
                self.throttled_since = Some(now);
                Some(code)
            }
            Some(since) if now.saturating_duration_since(since) > self.throttle => {
                return Throttle::Disconnect(code);
            }
            Some(_) => None,
        };
        let wait = [&self.msgs, &self.bytes].into_iter().flatten().map(TokenBucket::wait).max().unwrap_or_default();
        // Never pause past the point where the throttle runs out: then the verdict is due.
        let since = self.throttled_since.unwrap_or(now);
        let until = (now + wait).min(since + self.throttle + Duration::from_millis(1));
        Throttle::Pause { until, started }
    }
}

/// The broker-wide memory high-water mark (`max_memory`).
///
/// Two parts make the figure: bytes in the core's session queues, sampled every
/// [`MemoryGauge::SAMPLE`] by the server ([`MemoryGauge::set_queued`]), and bytes held by
/// connection buffers (read and write), tracked exactly by each connection's [`MemCharge`].
/// While the total is above `max_memory`, publishers stop being read, heaviest first: a
/// threshold on each connection's recent publish bandwidth starts at half the heaviest
/// publisher's and is quartered at every sample while the broker stays above the mark, but
/// never below the fair share (the mean bandwidth of the connections that published in the
/// last sample window) nor below [`MemoryGauge::LIGHT`]: a publisher at or under its fair
/// share, or lighter than that, is never paused (one flooding account cannot stop the others
/// being read). Once the broker is back under 90 % of the mark every publisher is read again.
/// Connections that do not publish (subscribers acknowledging deliveries) are never paused,
/// so queues keep draining.
#[derive(Debug)]
pub struct MemoryGauge {
    max: u64,
    queued: AtomicU64,
    buffered: AtomicU64,
    /// Publishers whose recent bandwidth (bytes/s) is at least this are not read.
    threshold: AtomicU64,
    /// Heaviest publisher bandwidth seen since the last sample.
    peak: AtomicU64,
    /// Sample windows so far: a connection reports its bandwidth once per window.
    epoch: AtomicU64,
    /// Sum of the bandwidths reported in this window, and how many connections reported.
    window_sum: AtomicU64,
    window_count: AtomicU64,
    /// The fair share: mean bandwidth of the last window anyone published in.
    fair: AtomicU64,
}

impl MemoryGauge {
    /// How often the server samples the core's queues and adjusts the threshold.
    pub const SAMPLE: Duration = Duration::from_millis(200);

    /// A publisher below this bandwidth (bytes/s) is never paused.
    pub const LIGHT: u64 = 64 * 1024;

    /// A gauge for `max` bytes (0 = off: nothing is ever paused).
    pub fn new(max: u64) -> Arc<MemoryGauge> {
        Arc::new(MemoryGauge {
            max,
            queued: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            threshold: AtomicU64::new(u64::MAX),
            peak: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            window_sum: AtomicU64::new(0),
            window_count: AtomicU64::new(0),
            fair: AtomicU64::new(0),
        })
    }

    /// True when the mark is configured.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Bytes counted now.
    pub fn used(&self) -> u64 {
        self.queued.load(Ordering::Relaxed).saturating_add(self.buffered.load(Ordering::Relaxed))
    }

    /// Record the core's queued bytes and move the pause threshold. Returns true while the
    /// broker is above the mark.
    pub fn set_queued(&self, queued: u64) -> bool {
        self.queued.store(queued, Ordering::Relaxed);
        let peak = self.peak.swap(0, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
        let sum = self.window_sum.swap(0, Ordering::Relaxed);
        let count = self.window_count.swap(0, Ordering::Relaxed);
        if let Some(mean) = sum.checked_div(count) {
            self.fair.store(mean, Ordering::Relaxed);
        }
        if !self.enabled() {
            return false;
        }
        let used = self.used();
        let t = self.threshold.load(Ordering::Relaxed);
        if used > self.max {
            let next = if t == u64::MAX { (peak / 2).max(1) } else { t / 4 };
            let floor = self.fair.load(Ordering::Relaxed).max(Self::LIGHT);
            self.threshold.store(next.max(floor), Ordering::Relaxed);
            true
        } else {
            if used <= self.max / 10 * 9 && t != u64::MAX {
                self.threshold.store(u64::MAX, Ordering::Relaxed);
            }
            false
        }
    }

    /// Should a publisher with this recent bandwidth stop being read?
    pub fn should_pause(&self, rate: u64) -> bool {
        rate > 0 && rate >= self.threshold.load(Ordering::Relaxed)
    }

    fn report_rate(&self, rate: u64) {
        self.peak.fetch_max(rate, Ordering::Relaxed);
    }

    /// A connection's first report in this sample window counts toward the fair share.
    fn report_share(&self, rate: u64) {
        self.window_sum.fetch_add(rate, Ordering::Relaxed);
        self.window_count.fetch_add(1, Ordering::Relaxed);
    }
}

/// One connection's share of [`MemoryGauge`]: its buffers' bytes and its publish bandwidth.
/// Released on drop.
#[derive(Debug)]
pub struct MemCharge {
    gauge: Arc<MemoryGauge>,
    charged: u64,
    window_start: Instant,
    window_bytes: u64,
    rate: u64,
    /// The gauge's sample window this connection last reported its share in.
    epoch: u64,
}

impl MemCharge {
    /// Bandwidth is measured over windows of this length.
    const WINDOW: Duration = Duration::from_millis(250);

    /// A connection's charge, starting at zero.
    pub fn new(gauge: Arc<MemoryGauge>, now: Instant) -> MemCharge {
        MemCharge { gauge, charged: 0, window_start: now, window_bytes: 0, rate: 0, epoch: u64::MAX }
    }

    /// The connection's buffers now hold `bytes`.
    pub fn set(&mut self, bytes: u64) {
        if bytes > self.charged {
            self.gauge.buffered.fetch_add(bytes - self.charged, Ordering::Relaxed);
        } else if bytes < self.charged {
            self.gauge.buffered.fetch_sub(self.charged - bytes, Ordering::Relaxed);
        }
        self.charged = bytes;
    }

    /// The connection read `bytes` of PUBLISH packets.
    pub fn published(&mut self, bytes: u64, now: Instant) {
        self.window_bytes += bytes;
        let dt = now.saturating_duration_since(self.window_start);
        if dt >= Self::WINDOW {
            self.rate = (self.window_bytes as f64 / dt.as_secs_f64()) as u64;
            self.window_bytes = 0;
            self.window_start = now;
        }
        let rate = self.rate.max(self.window_bytes);
        self.gauge.report_rate(rate);
        let epoch = self.gauge.epoch.load(Ordering::Relaxed);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.gauge.report_share(rate);
        }
    }

    /// Should this connection stop being read (the broker is above `max_memory` and it is
    /// among the heaviest publishers, above its fair share and above [`MemoryGauge::LIGHT`])?
    pub fn should_pause(&self) -> bool {
        self.gauge.should_pause(self.rate.max(self.window_bytes))
    }
}

impl Drop for MemCharge {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// "Log once per key per interval": [`LogOnce::check`] says whether to log now, and how many
/// hits were suppressed since the last line. Bounded: at most `cap` keys are remembered.
#[derive(Debug)]
pub struct LogOnce<K> {
    interval: Duration,
    cap: usize,
    seen: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Hash + Eq> LogOnce<K> {
    /// Remember up to `cap` keys; log each at most once per `interval`.
    pub fn new(interval: Duration, cap: usize) -> LogOnce<K> {
        LogOnce { interval, cap, seen: Mutex::new(HashMap::new()) }
    }

    /// `Some(suppressed)` when a line should be logged for `key` now (with the number of hits
    /// not logged since the previous line), `None` when this hit is only counted.
    pub fn check(&self, key: K, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock();
        if let Some((last, suppressed)) = seen.get_mut(&key) {
            if now.saturating_duration_since(*last) < self.interval {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if seen.len() >= self.cap {
            let interval = self.interval;
            seen.retain(|_, (last, _)| now.saturating_duration_since(*last) < interval);
            if seen.len() >= self.cap {
                return None; // a flood of distinct keys: counted by the caller, not logged
            }
        }
        seen.insert(key, (now, 0));
        Some(0)
    }
}

/// At most `burst` log lines per key in each `window`, then one line saying how many were not
/// logged (the refusals of one peer: a wrong-password flood cannot fill the log, and a peer's
/// first refusals are always there). Keys are bounded like [`LogOnce`]'s.
pub struct LogBurst<K> {
    window: Duration,
    burst: u32,
    cap: usize,
    seen: Mutex<HashMap<K, (Instant, u32, u64)>>,
}

impl<K: Hash + Eq> LogBurst<K> {
    /// Up to `burst` lines per `window` for each of up to `cap` keys.
    pub fn new(window: Duration, burst: u32, cap: usize) -> LogBurst<K> {
        LogBurst { window, burst, cap, seen: Mutex::new(HashMap::new()) }
    }

    /// `Some(not_logged_before)` when this hit is to be logged (with the number of hits of the
    /// key that were not logged since its previous line), `None` when it is only counted.
    pub fn check(&self, key: K, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock();
        if !seen.contains_key(&key) && seen.len() >= self.cap {
            let window = self.window;
            seen.retain(|_, (start, _, _)| now.saturating_duration_since(*start) < window);
            if seen.len() >= self.cap {
                return None;
            }
        }
        let (start, logged, suppressed) = seen.entry(key).or_insert((now, 0, 0));
        if now.saturating_duration_since(*start) >= self.window {
            (*start, *logged) = (now, 0);
        }
        if *logged < self.burst {
            *logged += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's first refusals in a window are logged, the rest counted and reported with the
    /// next line; another peer has its own budget.
    #[test]
    fn a_burst_per_key_per_window_then_counted() {
        let t0 = Instant::now();
        let l = LogBurst::new(Duration::from_secs(10), 3, 100);
        assert_eq!((0..3).map(|_| l.check("a", t0)).collect::<Vec<_>>(), [Some(0), Some(0), Some(0)]);
        assert!((0..50).all(|_| l.check("a", t0).is_none()), "beyond the burst: counted");
        assert_eq!(l.check("b", t0), Some(0), "another peer");
        assert_eq!(l.check("a", t0 + Duration::from_secs(11)), Some(50), "the next window reports what was not logged");
        let capped = LogBurst::new(Duration::from_secs(10), 1, 2);
        assert!(capped.check(1, t0).is_some() && capped.check(2, t0).is_some());
        assert_eq!(capped.check(3, t0), None, "a flood of distinct keys is not logged");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits(rate: u32, bandwidth: u64, throttle: Duration) -> PublishLimits {
        PublishLimits { rate, bandwidth, max_packet_size: 100, throttle }
    }

    #[test]
    fn off_when_both_limits_are_zero() {
        assert!(PublishLimiter::new(limits(0, 0, ms(0)), Instant::now()).is_none());
    }

    #[test]
    fn strict_mode_refuses_the_first_publish_beyond_the_burst() {
        let t0 = Instant::now();
        let mut l = PublishLimiter::new(limits(10, 0, ms(0)), t0).unwrap();
        for _ in 0..10 {
            assert_eq!(l.charge(10, t0), Ok(()));
        }
        assert_eq!(l.charge(10, t0), Err(ReasonCode::MESSAGE_RATE_TOO_HIGH));
        let mut l = PublishLimiter::new(limits(0, 1000, ms(0)), t0).unwrap();
        assert_eq!(l.charge(1000, t0), Ok(()));
        assert_eq!(l.charge(1, t0), Err(ReasonCode::QUOTA_EXCEEDED));
        // Refills at the rate.
        assert_eq!(l.charge(100, t0 + ms(200)), Ok(()));
    }

    #[test]
    fn the_bandwidth_burst_admits_one_maximum_size_packet() {
        let t0 = Instant::now();
        let mut l = PublishLimiter::new(PublishLimits { max_packet_size: 5000, ..limits(0, 10, ms(0)) }, t0).unwrap();
        assert_eq!(l.charge(5000, t0), Ok(()));
    }

    #[test]
    fn throttles_then_disconnects_a_client_that_stays_over() {
        let t0 = Instant::now();
        let mut l = PublishLimiter::new(limits(10, 0, ms(1000)), t0).unwrap();
        for _ in 0..15 {
            l.charge(10, t0).unwrap();
        }
        // 5 in debt at 10/s: pause for 0.5 s; the episode starts (counted once).
        assert_eq!(
            l.after_batch(t0),
            Throttle::Pause { until: t0 + ms(500), started: Some(ReasonCode::MESSAGE_RATE_TOO_HIGH) }
        );
        // Repaid: it reads again and the episode ends.
        assert_eq!(l.after_batch(t0 + ms(500)), Throttle::Read);
        // A flood keeps it in debt after every batch ...
        let mut t = t0 + ms(500);
        for _ in 0..20 {
            l.charge(10, t).unwrap();
        }
        assert!(matches!(l.after_batch(t), Throttle::Pause { started: Some(_), .. }));
        t += ms(600);
        for _ in 0..20 {
            l.charge(10, t).unwrap();
        }
        assert!(matches!(l.after_batch(t), Throttle::Pause { started: None, .. }));
        // ... until the throttle runs out.
        t += ms(500);
        l.charge(10, t).unwrap();
        assert_eq!(l.after_batch(t), Throttle::Disconnect(ReasonCode::MESSAGE_RATE_TOO_HIGH));
    }

    #[test]
    fn memory_pauses_the_heaviest_publisher_first() {
        let g = MemoryGauge::new(1000);
        let t0 = Instant::now();
        let mut heavy = MemCharge::new(g.clone(), t0);
        let mut medium = MemCharge::new(g.clone(), t0);
        let mut light = MemCharge::new(g.clone(), t0);
        let quiet = MemCharge::new(g.clone(), t0);
        let publish = |heavy: &mut MemCharge, medium: &mut MemCharge, light: &mut MemCharge, at| {
            heavy.published(3_000_000, at);
            medium.published(150_000, at);
            light.published(1_000, at);
        };
        publish(&mut heavy, &mut medium, &mut light, t0 + ms(300));
        assert!(!g.set_queued(500), "under the mark");
        assert!(!heavy.should_pause());
        publish(&mut heavy, &mut medium, &mut light, t0 + ms(600));
        assert!(g.set_queued(5000), "over the mark");
        assert!(heavy.should_pause() && !medium.should_pause() && !light.should_pause() && !quiet.should_pause());
        // Still over; the heavy publisher is not read, the others go on publishing.
        let mut t = t0 + ms(600);
        for _ in 0..20 {
            t += ms(300);
            medium.published(150_000, t);
            light.published(1_000, t);
            g.set_queued(5000);
        }
        assert!(heavy.should_pause());
        assert!(medium.should_pause(), "still over: the next heaviest, above its fair share, follows");
        assert!(!light.should_pause(), "a light publisher (under MemoryGauge::LIGHT) is never paused");
        assert!(!quiet.should_pause(), "a connection that does not publish is always read");
        g.set_queued(950);
        assert!(medium.should_pause(), "hysteresis: above 90 % nothing resumes");
        g.set_queued(100);
        assert!(!heavy.should_pause() && !medium.should_pause() && !light.should_pause());
    }

    #[test]
    fn above_the_mark_a_publisher_at_its_fair_share_is_read() {
        // Many publishers at the same bandwidth (over LIGHT) and one flooding: only the flood
        // is paused, however long the broker stays above the mark.
        let g = MemoryGauge::new(1000);
        let t0 = Instant::now();
        let mut flood = MemCharge::new(g.clone(), t0);
        let mut fair: Vec<_> = (0..10).map(|_| MemCharge::new(g.clone(), t0)).collect();
        let mut t = t0;
        for _ in 0..20 {
            t += ms(300);
            flood.published(10_000_000, t);
            for c in &mut fair {
                c.published(100_000, t);
            }
            g.set_queued(5000);
            assert!(fair.iter().all(|c| !c.should_pause()), "at the fair share: read");
        }
        assert!(flood.should_pause());
    }

    #[test]
    fn buffer_charges_add_up_and_are_released() {
        let g = MemoryGauge::new(0);
        let t0 = Instant::now();
        let mut a = MemCharge::new(g.clone(), t0);
        let mut b = MemCharge::new(g.clone(), t0);
        a.set(100);
        b.set(50);
        a.set(30);
        assert_eq!(g.used(), 80);
        drop(a);
        assert_eq!(g.used(), 50);
        assert!(!g.set_queued(1 << 40), "off: never over");
    }

    #[test]
    fn log_once_per_key_per_interval() {
        let l = LogOnce::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert_eq!(l.check("a", t0), Some(0));
        assert_eq!(l.check("a", t0 + ms(10)), None);
        assert_eq!(l.check("a", t0 + ms(20)), None);
        assert_eq!(l.check("b", t0), Some(0));
        assert_eq!(l.check("c", t0), None, "over the key cap: counted, not logged");
        assert_eq!(l.check("a", t0 + Duration::from_secs(61)), Some(2), "two hits were suppressed");
        assert_eq!(l.check("c", t0 + Duration::from_secs(61)), Some(0), "old keys make room");
    }
}
