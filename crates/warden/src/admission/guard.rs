//! Per-source-address admission: live connections per address, a connect-rate token bucket
//! per address, and temporary bans after repeated failed authentications (SPEC §7).
//!
//! Checked at accept time, before any TLS handshake, WebSocket upgrade or password hashing, so
//! a banned or flooding address costs almost nothing. Bans are per address only: failures from
//! one address never lock a user out for everyone else. Each ban is logged once, when it
//! starts; refused connections are counted, not logged one by one.
//!
//! On top of the per-address ban, failures are also counted per (user name, address): after
//! `auth_fail_backoff.failures` of them, that user name is refused from that address — once its
//! CONNECT is read, before any password hashing — for a backoff that doubles with every further
//! failure. The same user connecting from any other address is not affected (SPEC §7).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::admission::bans::canonical_ip;
use crate::config::{AuthFailBackoff, AuthFailBan};

/// Addresses tracked at most; idle ones are forgotten first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
struct Peer {
    /// Shared with this address's live connections ([`Admitted`]).
    slot: Arc<PeerSlot>,
    tokens: f64,
    refilled: Instant,
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
}

/// Why an address was refused at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Banned after failed authentications.
    Banned,
    /// Too many live connections from this address.
    TooManyConnections,
    /// Connecting faster than the configured rate.
    RateExceeded,
}

/// Counters of refusals (exported in `$SYS`/metrics later).
#[derive(Debug, Default)]
pub struct GuardStats {
    /// Connections refused because the address is banned.
    pub banned: AtomicU64,
    /// Connections refused by the per-address connection limit.
    pub too_many: AtomicU64,
    /// Connections refused by the per-address rate limit.
    pub rate: AtomicU64,
    /// Bans started.
    pub bans: AtomicU64,
}

/// Per-address admission state.
#[derive(Debug)]
pub struct Guard {
    max_per_ip: usize,
    rate: f64,
    ban: AuthFailBan,
    peers: Mutex<HashMap<IpAddr, Peer>>,
    backoff: AuthFailBackoff,
    /// Failures per (address, keyed hash of the user name): user names can be long, a hash
    /// keeps every entry small; the random key makes collisions impossible to aim at.
    users: Mutex<HashMap<(IpAddr, u64), UserFailures>>,
    user_key: RandomState,
    /// Refusal counters.
    pub stats: GuardStats,
}

/// Consecutive failed authentications of one user name from one address.
#[derive(Debug)]
struct UserFailures {
    failures: u32,
    last: Instant,
    until: Option<Instant>,
}

/// One address's live connections, shared by them: a connection releases its slot with one
/// atomic decrement, without the guard's lock, and holds a pointer, not the address.
#[derive(Debug)]
struct PeerSlot {
    /// Weak: the guard's table holds the slot.
    guard: Weak<Guard>,
    ip: IpAddr,
    live: AtomicUsize,
}

/// A live connection's slot; released on drop. One pointer: every connection keeps one for
/// its whole life, parked or not.
#[derive(Debug)]
pub struct Admitted(Arc<PeerSlot>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admitted {
    fn guard(&self) -> Option<Arc<Guard>> {
        self.0.guard.upgrade()
    }

    /// Record a failed authentication from this connection's address; true when this failure
    /// started a ban.
    pub fn auth_failed(&self, now: Instant) -> bool {
        self.guard().is_some_and(|g| g.auth_failed(self.0.ip, now))
    }

    /// Is `user` backing off from this connection's address (refuse without hashing)?
    pub fn user_backing_off(&self, user: &str, now: Instant) -> bool {
        self.guard().is_some_and(|g| g.user_backing_off(self.0.ip, user, now))
    }

    /// Record a failed authentication of `user` from this address.
    pub fn user_failed(&self, user: &str, now: Instant) {
        if let Some(g) = self.guard() {
            g.user_failed(self.0.ip, user, now);
        }
    }

    /// `user` authenticated from this address: its failures are forgotten.
    pub fn user_succeeded(&self, user: &str) {
        if let Some(g) = self.guard() {
            g.user_succeeded(self.0.ip, user);
        }
    }
}

impl Guard {
    /// A guard with these limits.
    pub fn new(max_per_ip: usize, rate_per_sec: u32, ban: AuthFailBan) -> Arc<Guard> {
        Self::with_backoff(max_per_ip, rate_per_sec, ban, AuthFailBackoff::default())
    }

    /// A guard with these limits and this per-(user name, address) backoff.
    pub fn with_backoff(
        max_per_ip: usize,
        rate_per_sec: u32,
        ban: AuthFailBan,
        backoff: AuthFailBackoff,
    ) -> Arc<Guard> {
        Arc::new(Guard {
            max_per_ip,
            rate: f64::from(rate_per_sec),
            ban,
            peers: Mutex::new(HashMap::new()),
            backoff,
            users: Mutex::new(HashMap::new()),
            user_key: RandomState::new(),
            stats: GuardStats::default(),
        })
    }

    fn user_entry(&self, ip: IpAddr, user: &str) -> (IpAddr, u64) {
        (canonical_ip(ip), self.user_key.hash_one(user))
    }

    /// Is `user` refused from `ip` at `now` (backing off after repeated failures)?
    pub fn user_backing_off(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        let key = self.user_entry(ip, user);
        self.users.lock().get(&key).and_then(|u| u.until).is_some_and(|until| now < until)
    }

    /// Record a failed authentication of `user` from `ip`; from the configured number of
    /// consecutive failures on, the pair backs off for `initial`, doubling up to `max`.
    pub fn user_failed(&self, ip: IpAddr, user: &str, now: Instant) {
        let key = self.user_entry(ip, user);
        let b = self.backoff;
        let mut users = self.users.lock();
        if users.len() >= MAX_TRACKED && !users.contains_key(&key) {
            users.retain(|_, u| now.saturating_duration_since(u.last) <= b.max || u.until.is_some_and(|t| now < t));
            if users.len() >= MAX_TRACKED {
                return; // a flood of distinct pairs: the per-address ban handles it
            }
        }
        let u = users.entry(key).or_insert(UserFailures { failures: 0, last: now, until: None });
        if now.saturating_duration_since(u.last) > b.max && u.until.is_none_or(|t| t <= now) {
            u.failures = 0; // quiet for long enough: start over
        }
        u.failures = u.failures.saturating_add(1);
        u.last = now;
        if u.failures >= b.failures {
            let doublings = (u.failures - b.failures).min(30);
            let wait = b.initial.saturating_mul(1u32 << doublings).min(b.max);
            u.until = Some(now + wait);
        }
    }

    /// `user` authenticated from `ip`: forget its failures there.
    pub fn user_succeeded(&self, ip: IpAddr, user: &str) {
        let key = self.user_entry(ip, user);
        self.users.lock().remove(&key);
    }

    fn new_peer(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Peer {
        Peer {
            slot: Arc::new(PeerSlot { guard: Arc::downgrade(self), ip, live: AtomicUsize::new(0) }),
            tokens: self.rate,
            refilled: now,
            failures: VecDeque::new(),
            banned_until: None,
        }
    }

    /// How long `ip` stays banned after failed authentications (`None`: not banned).
    pub fn ban_left(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let ip = canonical_ip(ip);
        self.peers.lock().get(&ip).and_then(|p| p.banned_until).filter(|u| now < *u).map(|u| u - now)
    }

    /// How long `user` backs off from `ip` (`None`: it does not).
    pub fn backoff_left(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Duration> {
        let key = self.user_entry(ip, user);
        self.users.lock().get(&key).and_then(|u| u.until).filter(|u| now < *u).map(|u| u - now)
    }

    /// May a new connection from `ip` proceed?
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let ip = canonical_ip(ip);
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_TRACKED && !peers.contains_key(&ip) {
            prune(&mut peers, now, self.ban.within);
        }
        let p = peers.entry(ip).or_insert_with(|| self.new_peer(ip, now));
        if let Some(until) = p.banned_until {
            if now < until {
                self.stats.banned.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Banned);
            }
            p.banned_until = None;
        }
        // Released without the lock (a decrement), taken under it: no admission races another.
        if p.slot.live.load(Ordering::Acquire) >= self.max_per_ip {
            self.stats.too_many.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooManyConnections);
        }
        let elapsed = now.saturating_duration_since(p.refilled).as_secs_f64();
        p.tokens = (p.tokens + elapsed * self.rate).min(self.rate);
        p.refilled = now;
        if p.tokens < 1.0 {
            self.stats.rate.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::RateExceeded);
        }
        p.tokens -= 1.0;
        p.slot.live.fetch_add(1, Ordering::AcqRel);
        Ok(Admitted(p.slot.clone()))
    }

    /// Record a failed authentication from `ip`; bans it once the threshold is reached (and
    /// then returns true).
    pub fn auth_failed(self: &Arc<Self>, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical_ip(ip);
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_TRACKED && !peers.contains_key(&ip) {
            prune(&mut peers, now, self.ban.within);
        }
        // An address with no connection yet (the HTTP side does not go through `admit`).
        let p = peers.entry(ip).or_insert_with(|| self.new_peer(ip, now));
        while p.failures.front().is_some_and(|t| now.saturating_duration_since(*t) > self.ban.within) {
            p.failures.pop_front();
        }
        p.failures.push_back(now);
        if p.failures.len() >= self.ban.failures as usize && p.banned_until.is_none_or(|u| u <= now) {
            p.banned_until = Some(now + self.ban.ban);
            p.failures.clear();
            self.stats.bans.fetch_add(1, Ordering::Relaxed);
            warn!(%ip, failures = self.ban.failures, ban = ?self.ban.ban, "address banned after repeated failed authentication");
            return true;
        }
        false
    }

    /// The addresses banned at `now` after failed authentications, with the time left.
    pub fn auto_bans(&self, now: Instant) -> Vec<(IpAddr, Duration)> {
        let peers = self.peers.lock();
        let mut v: Vec<_> =
            peers.iter().filter_map(|(ip, p)| p.banned_until.filter(|u| now < *u).map(|u| (*ip, u - now))).collect();
        v.sort();
        v
    }

    /// Lift the automatic ban of `ip` (and forget its failures); true when there was one.
    pub fn lift(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical_ip(ip);
        let mut peers = self.peers.lock();
        let Some(p) = peers.get_mut(&ip) else { return false };
        p.failures.clear();
        p.banned_until.take().is_some_and(|u| now < u)
    }

    /// Is `ip` banned at `now`?
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical_ip(ip);
        self.peers.lock().get(&ip).and_then(|p| p.banned_until).is_some_and(|u| now < u)
    }
}

/// The guard as the HTTP side consults it ([`warden_http::FailureGuard`]): the same tables as
/// MQTT's, so failures on either side add up to one per-address ban, and an address banned by
/// either side is refused by both (HTTP: 429 on the token service and the admin API, before
/// any hashing; `/healthz` and the metadata stay reachable). Loopback addresses are not exempt,
/// as on the MQTT side: a local process guessing secrets is banned like a remote one (an
/// operator locked out can wait for the ban to end, or restart the broker, which forgets it).
pub struct HttpGuard {
    guard: Arc<Guard>,
    limits: Arc<warden_core::Broker>,
}

impl std::fmt::Debug for HttpGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGuard").field("guard", &self.guard).finish_non_exhaustive()
    }
}

impl HttpGuard {
    /// The guard `guard`, counting bans and backoff refusals in `broker`'s limit statistics.
    pub fn new(guard: Arc<Guard>, broker: Arc<warden_core::Broker>) -> HttpGuard {
        HttpGuard { guard, limits: broker }
    }
}

impl warden_http::FailureGuard for HttpGuard {
    fn check(&self, ip: IpAddr, name: Option<&str>) -> Result<(), warden_http::Throttled> {
        let now = Instant::now();
        if let Some(left) = self.guard.ban_left(ip, now) {
            self.guard.stats.banned.fetch_add(1, Ordering::Relaxed);
            return Err(warden_http::Throttled::Banned { retry_after: left });
        }
        if let Some(left) = name.and_then(|n| self.guard.backoff_left(ip, n, now)) {
            // As on MQTT: insisting during a backoff counts towards the address's ban.
            if self.guard.auth_failed(ip, now) {
                warden_core::limits::hit(&self.limits.stats.limits.bans);
            }
            warden_core::limits::hit(&self.limits.stats.limits.auth_backoff_refused);
            return Err(warden_http::Throttled::BackingOff { retry_after: left });
        }
        Ok(())
    }

    fn failed(&self, ip: IpAddr, name: Option<&str>) {
        let now = Instant::now();
        if self.guard.auth_failed(ip, now) {
            warden_core::limits::hit(&self.limits.stats.limits.bans);
        }
        if let Some(n) = name {
            self.guard.user_failed(ip, n, now);
        }
    }

    fn succeeded(&self, ip: IpAddr, name: &str) {
        self.guard.user_succeeded(ip, name);
    }
}

/// Forget addresses with no live connection, no ban and no recent failure.
fn prune(peers: &mut HashMap<IpAddr, Peer>, now: Instant, within: Duration) {
    peers.retain(|_, p| {
        p.slot.live.load(Ordering::Acquire) > 0
            || p.banned_until.is_some_and(|u| now < u)
            || p.failures.back().is_some_and(|t| now.saturating_duration_since(*t) <= within)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn connections_per_address_are_capped_and_released() {
        let g = Guard::new(2, 1000, AuthFailBan::default());
        let now = Instant::now();
        let a = g.admit(ip(1), now).unwrap();
        let _b = g.admit(ip(1), now).unwrap();
        assert_eq!(g.admit(ip(1), now).unwrap_err(), Refusal::TooManyConnections);
        assert!(g.admit(ip(2), now).is_ok(), "other addresses unaffected");
        drop(a);
        assert!(g.admit(ip(1), now).is_ok());
    }

    #[test]
    fn an_ipv4_mapped_peer_is_counted_as_its_ipv4_address() {
        let g = Guard::new(1, 1000, AuthFailBan::default());
        let now = Instant::now();
        let _a = g.admit(ip(9), now).unwrap();
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped());
        assert_eq!(g.admit(mapped, now).unwrap_err(), Refusal::TooManyConnections);
        g.user_failed(mapped, "ann", now);
        g.user_failed(ip(9), "ann", now);
        assert_eq!(g.users.lock().len(), 1, "one (user, address) entry for both spellings");
    }

    #[test]
    fn connect_rate_is_a_token_bucket() {
        let g = Guard::new(1000, 5, AuthFailBan::default());
        let t0 = Instant::now();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(g.admit(ip(1), t0).unwrap());
        }
        assert_eq!(g.admit(ip(1), t0).unwrap_err(), Refusal::RateExceeded);
        assert!(g.admit(ip(1), t0 + Duration::from_millis(250)).is_ok(), "refills at 5/s");
        assert!(g.admit(ip(2), t0).is_ok());
    }

    #[test]
    fn repeated_failures_ban_the_address_only() {
        let ban = AuthFailBan { failures: 3, within: Duration::from_secs(60), ban: Duration::from_secs(300) };
        let g = Guard::new(1000, 1000, ban);
        let t0 = Instant::now();
        for i in 0..3 {
            let c = g.admit(ip(1), t0).unwrap();
            assert!(!g.is_banned(ip(1), t0), "not before failure {i}");
            c.auth_failed(t0);
        }
        assert_eq!(g.admit(ip(1), t0 + Duration::from_secs(1)).unwrap_err(), Refusal::Banned);
        assert!(g.admit(ip(2), t0).is_ok(), "a different address is not banned");
        assert!(g.admit(ip(1), t0 + Duration::from_secs(301)).is_ok(), "the ban ends");
    }

    #[test]
    fn a_user_backs_off_per_address_only() {
        let backoff = AuthFailBackoff { failures: 3, initial: Duration::from_secs(1), max: Duration::from_secs(10) };
        let g = Guard::with_backoff(1000, 1000, AuthFailBan::default(), backoff);
        let t0 = Instant::now();
        for _ in 0..2 {
            g.user_failed(ip(1), "ann", t0);
        }
        assert!(!g.user_backing_off(ip(1), "ann", t0), "not before the third failure");
        g.user_failed(ip(1), "ann", t0);
        assert!(g.user_backing_off(ip(1), "ann", t0));
        assert!(!g.user_backing_off(ip(2), "ann", t0), "the same user from another address is not locked");
        assert!(!g.user_backing_off(ip(1), "bob", t0), "another user from the same address is not locked");
        assert!(!g.user_backing_off(ip(1), "ann", t0 + Duration::from_secs(1)), "1 s backoff over");
        // The next failure doubles it, up to max.
        g.user_failed(ip(1), "ann", t0 + Duration::from_secs(1));
        assert!(g.user_backing_off(ip(1), "ann", t0 + Duration::from_millis(2900)));
        assert!(!g.user_backing_off(ip(1), "ann", t0 + Duration::from_secs(3)));
        for i in 0..10 {
            g.user_failed(ip(1), "ann", t0 + Duration::from_secs(3 + i));
        }
        let t = t0 + Duration::from_secs(12);
        assert!(g.user_backing_off(ip(1), "ann", t) && !g.user_backing_off(ip(1), "ann", t + Duration::from_secs(10)));
        g.user_succeeded(ip(1), "ann");
        assert!(!g.user_backing_off(ip(1), "ann", t));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let ban = AuthFailBan { failures: 3, within: Duration::from_secs(10), ban: Duration::from_secs(300) };
        let g = Guard::new(1000, 1000, ban);
        let t0 = Instant::now();
        for i in 0..6u64 {
            let t = t0 + Duration::from_secs(i * 6);
            g.admit(ip(1), t).unwrap().auth_failed(t);
        }
        assert!(!g.is_banned(ip(1), t0 + Duration::from_secs(36)));
    }
}
