//! What a secret check costs, and who may ask for one: the per-address failure guard and the
//! hashing budget the HTTP side shares with MQTT (issue 17, "hashing as a service").
//!
//! - [`FailureGuard`]: the broker's per-source-address guard (the one MQTT CONNECTs go
//!   through), consulted **before** any hashing: an address banned after repeated failed
//!   authentications, or a (name, address) pair backing off, is refused without a hash
//!   ([`Throttled`], answered 429 with `Retry-After`). Every failed secret counts towards both.
//! - [`HashBudget`]: every argon2id verification in the process (MQTT passwords, OAuth client
//!   secrets, the admin token, and the hashing of new passwords through the admin API) takes a
//!   slot from one semaphore of `size` slots, on the blocking pool. HTTP may hold at most
//!   `http_max` of them at once (by default half), so a flood of HTTP requests with wrong
//!   secrets can neither take every core nor keep MQTT CONNECTs from hashing: at any moment at
//!   most `http_max` HTTP checks hold or wait for a slot ahead of a CONNECT (the semaphores are
//!   fair, first come first served). A check that finds no slot within `wait` is refused busy
//!   (HTTP 503, MQTT 0x89), which is no failed authentication.
//! - [`SecretChecks`]: the two together, as the token service and the admin API use them.
//!
//! [`PeerAddr`] is the request extension through which the serving loop tells the handlers
//! the peer's address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The peer of an HTTP request, set as a request extension by the serving loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The address a request came from; a request without [`PeerAddr`] (only possible in tests
/// that call the router without a socket) counts as `0.0.0.0`.
pub(crate) fn peer_ip(peer: Option<PeerAddr>) -> IpAddr {
    peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip())
}

/// Why a secret was not even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// The address is banned after repeated failed authentications (MQTT or HTTP).
    Banned {
        /// Time left.
        retry_after: Duration,
    },
    /// This name failed too often from this address: it backs off (doubling) for a while.
    BackingOff {
        /// Time left.
        retry_after: Duration,
    },
}

impl Throttled {
    /// Whole seconds to wait (at least 1), for `Retry-After`.
    pub fn retry_after_secs(self) -> u64 {
        let (Throttled::Banned { retry_after } | Throttled::BackingOff { retry_after }) = self;
        retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)
    }
}

/// The broker's per-address failure guard, as the HTTP side needs it. `name` is what the
/// secret is for (an OAuth client id, the admin token); `None` for a credential that cannot
/// be guessed (a signed token): it counts towards the address's ban only.
pub trait FailureGuard: Send + Sync + 'static {
    /// May `ip` have a secret for `name` checked now? Asked before any hashing.
    fn check(&self, ip: IpAddr, name: Option<&str>) -> Result<(), Throttled>;
    /// A wrong secret (or token) from `ip`.
    fn failed(&self, ip: IpAddr, name: Option<&str>);
    /// The right secret for `name` from `ip`: its backoff there is forgotten.
    fn succeeded(&self, ip: IpAddr, name: &str);
}

/// Who asks for a hash: a slot taken by [`HashClass::Http`] also takes one of the HTTP share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashClass {
    /// An MQTT CONNECT's password.
    Mqtt,
    /// An OAuth client secret, the admin token, or a password hashed for the admin API.
    Http,
}

/// Why a hash was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// No slot within the wait (not a failed authentication).
    #[error("no hashing slot within the wait")]
    Busy,
    /// The hashing task panicked or was cancelled.
    #[error("the hashing task failed")]
    Failed,
}

/// Counters of a [`HashBudget`].
#[derive(Debug, Default)]
pub struct HashStats {
    /// Hashes run, MQTT.
    pub runs_mqtt: AtomicU64,
    /// Hashes run, HTTP.
    pub runs_http: AtomicU64,
    /// Refused busy, MQTT.
    pub busy_mqtt: AtomicU64,
    /// Refused busy, HTTP.
    pub busy_http: AtomicU64,
    /// Slots held now, all classes.
    pub in_use: AtomicUsize,
    /// Slots held now by HTTP.
    pub in_use_http: AtomicUsize,
    /// Most slots ever held at once, all classes.
    pub peak: AtomicUsize,
    /// Most slots ever held at once by HTTP.
    pub peak_http: AtomicUsize,
}

/// The process-wide budget of slow hashes (see the module docs).
#[derive(Debug)]
pub struct HashBudget {
    all: Arc<Semaphore>,
    http: Arc<Semaphore>,
    size: usize,
    http_max: usize,
    wait: Duration,
    /// Counters (runs, refusals, slots in use and their peaks).
    pub stats: Arc<HashStats>,
}

/// One slot of a [`HashBudget`], given back on drop.
#[derive(Debug)]
pub struct HashPermit {
    _all: OwnedSemaphorePermit,
    http: Option<OwnedSemaphorePermit>,
    stats: Arc<HashStats>,
}

impl Drop for HashPermit {
    fn drop(&mut self) {
        self.stats.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.http.is_some() {
            self.stats.in_use_http.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The HTTP share when none is configured: half the budget, at least one slot.
pub fn default_http_share(size: usize) -> usize {
    (size / 2).max(1)
}

impl HashBudget {
    /// `size` slots in all (at least 1), HTTP at most `http_max` of them (0: half, at least
    /// 1; never more than `size`); a hash waits at most `wait` for its slots (zero: none free
    /// now means busy).
    pub fn new(size: usize, http_max: usize, wait: Duration) -> Arc<HashBudget> {
        let size = size.max(1);
        let http_max = if http_max == 0 { default_http_share(size) } else { http_max.min(size) };
        Arc::new(HashBudget {
            all: Arc::new(Semaphore::new(size)),
            http: Arc::new(Semaphore::new(http_max)),
            size,
            http_max,
            wait,
            stats: Arc::default(),
        })
    }

    /// Slots in all.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Slots HTTP may hold at once.
    pub fn http_max(&self) -> usize {
        self.http_max
    }

    /// A slot for `class` (HTTP: one of its share first, then one of all), or busy when none
    /// is free within the wait.
    pub async fn acquire(&self, class: HashClass) -> Result<HashPermit, HashError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let http = match class {
            HashClass::Mqtt => None,
            HashClass::Http => Some(self.take(&self.http, deadline, class).await?),
        };
        let all = self.take(&self.all, deadline, class).await?;
        let s = &self.stats;
        let n = s.in_use.fetch_add(1, Ordering::AcqRel) + 1;
        s.peak.fetch_max(n, Ordering::AcqRel);
        if http.is_some() {
            let n = s.in_use_http.fetch_add(1, Ordering::AcqRel) + 1;
            s.peak_http.fetch_max(n, Ordering::AcqRel);
        }
        Ok(HashPermit { _all: all, http, stats: s.clone() })
    }

    async fn take(
        &self,
        sem: &Arc<Semaphore>,
        deadline: tokio::time::Instant,
        class: HashClass,
    ) -> Result<OwnedSemaphorePermit, HashError> {
        let r = if self.wait.is_zero() {
            sem.clone().try_acquire_owned().map_err(|e| match e {
                TryAcquireError::NoPermits => HashError::Busy,
                TryAcquireError::Closed => HashError::Failed,
            })
        } else {
            match tokio::time::timeout_at(deadline, sem.clone().acquire_owned()).await {
                Ok(p) => p.map_err(|_| HashError::Failed),
                Err(_) => Err(HashError::Busy),
            }
        };
        if matches!(r, Err(HashError::Busy)) {
            let c = match class {
                HashClass::Mqtt => &self.stats.busy_mqtt,
                HashClass::Http => &self.stats.busy_http,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Run `f` (a slow hash) on the blocking pool with a slot for `class`. The slot is held
    /// until `f` returns, even when the caller stops waiting (a request timed out, a client
    /// gone): the budget bounds the hashing that actually runs.
    pub async fn run<T, F>(&self, class: HashClass, f: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = self.acquire(class).await?;
        let c = match class {
            HashClass::Mqtt => &self.stats.runs_mqtt,
            HashClass::Http => &self.stats.runs_http,
        };
        c.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|_| HashError::Failed)
    }

    /// Hashes run so far for `class`.
    pub fn runs(&self, class: HashClass) -> u64 {
        match class {
            HashClass::Mqtt => self.stats.runs_mqtt.load(Ordering::Relaxed),
            HashClass::Http => self.stats.runs_http.load(Ordering::Relaxed),
        }
    }
}

/// Why a secret was not accepted (answered through [`crate::HttpError::refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CheckRefused {
    /// Not checked: the address or the (name, address) pair is throttled.
    #[error("throttled")]
    Throttled(Throttled),
    /// Not checked: no hashing slot in time.
    #[error("no hashing slot in time")]
    Busy,
    /// Checked, and wrong.
    #[error("wrong secret")]
    Wrong,
}

/// The guard and the budget, as the token service and the admin API use them.
#[derive(Clone)]
pub struct SecretChecks {
    /// The broker's per-address failure guard (`None`: none, as in tests without a broker).
    pub guard: Option<Arc<dyn FailureGuard>>,
    /// The hashing budget shared with MQTT.
    pub budget: Arc<HashBudget>,
}

impl std::fmt::Debug for SecretChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretChecks").field("guard", &self.guard.is_some()).field("budget", &self.budget).finish()
    }
}

impl Default for SecretChecks {
    /// No guard; a budget of its own (4 slots, all usable by HTTP, waiting up to 30 s).
    fn default() -> Self {
        SecretChecks { guard: None, budget: HashBudget::new(4, 4, Duration::from_secs(30)) }
    }
}

impl SecretChecks {
    /// Is `ip` allowed a check for `name` now? (Before any hashing.)
    pub(crate) fn precheck(&self, ip: IpAddr, name: Option<&str>) -> Result<(), CheckRefused> {
        match &self.guard {
            Some(g) => g.check(ip, name).map_err(CheckRefused::Throttled),
            None => Ok(()),
        }
    }

    /// A failure that needed no hash (a bad signed token).
    pub(crate) fn failed(&self, ip: IpAddr, name: Option<&str>) {
        if let Some(g) = &self.guard {
            g.failed(ip, name);
        }
    }

    /// Check `secret` against `hash` for `name`, from `ip`: the guard first, then one argon2id
    /// verification within the HTTP share of the budget; the outcome is told to the guard.
    pub(crate) async fn verify(
        &self,
        ip: IpAddr,
        name: &str,
        hash: String,
        secret: Vec<u8>,
    ) -> Result<(), CheckRefused> {
        self.precheck(ip, Some(name))?;
        let ok = self
            .budget
            .run(HashClass::Http, move || warden_policy::password::verify_hash(&hash, &secret))
            .await
            .map_err(|_| CheckRefused::Busy)?;
        if ok {
            if let Some(g) = &self.guard {
                g.succeeded(ip, name);
            }
            Ok(())
        } else {
            self.failed(ip, Some(name));
            Err(CheckRefused::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17 (observation 4): HTTP never holds more than its share of the hashing budget,
    /// so MQTT always finds the rest; a busy refusal is counted per class.
    #[tokio::test]
    async fn http_takes_at_most_its_share_of_the_budget() {
        let b = HashBudget::new(4, 0, Duration::ZERO);
        assert_eq!((b.size(), b.http_max()), (4, 2), "the default share is half");
        let h1 = b.acquire(HashClass::Http).await.unwrap();
        let h2 = b.acquire(HashClass::Http).await.unwrap();
        assert_eq!(b.acquire(HashClass::Http).await.unwrap_err(), HashError::Busy, "beyond the HTTP share");
        let m1 = b.acquire(HashClass::Mqtt).await.unwrap();
        let m2 = b.acquire(HashClass::Mqtt).await.unwrap();
        assert_eq!(b.acquire(HashClass::Mqtt).await.unwrap_err(), HashError::Busy, "every slot taken");
        assert_eq!(b.stats.busy_http.load(Ordering::Relaxed), 1);
        assert_eq!(b.stats.busy_mqtt.load(Ordering::Relaxed), 1);
        drop(h1);
        // A slot given back by HTTP: HTTP may take it again, and MQTT could too.
        let h3 = b.acquire(HashClass::Http).await.unwrap();
        drop((h2, h3, m1, m2));
        // MQTT alone may use every slot.
        let all: Vec<_> = [(); 4].iter().map(|_| b.acquire(HashClass::Mqtt)).collect();
        let mut held = Vec::new();
        for f in all {
            held.push(f.await.unwrap());
        }
        assert_eq!(b.stats.peak.load(Ordering::Relaxed), 4);
        assert_eq!(b.stats.peak_http.load(Ordering::Relaxed), 2);
        drop(held);
        assert_eq!(b.stats.in_use.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn shares_are_clamped_and_a_one_slot_budget_still_serves_both() {
        let b = HashBudget::new(1, 0, Duration::ZERO);
        assert_eq!((b.size(), b.http_max()), (1, 1));
        assert_eq!(HashBudget::new(3, 10, Duration::ZERO).http_max(), 3);
        assert_eq!(HashBudget::new(0, 0, Duration::ZERO).size(), 1);
        let h = b.acquire(HashClass::Http).await.unwrap();
        assert_eq!(b.acquire(HashClass::Mqtt).await.unwrap_err(), HashError::Busy);
        drop(h);
        assert!(b.acquire(HashClass::Mqtt).await.is_ok());
    }

    /// A waiting hash gets the slot a finished one gives back, in arrival order; one that
    /// waits longer than `wait` is refused busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_is_bounded_and_a_slot_is_held_until_the_hash_returns() {
        let b = HashBudget::new(2, 1, Duration::from_millis(200));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let running = {
            let b = b.clone();
            tokio::spawn(async move { b.run(HashClass::Http, move || gate.recv().is_ok()).await })
        };
        // Wait (bounded) until the blocking hash holds its slot.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while b.stats.in_use_http.load(Ordering::Acquire) == 0 {
            assert!(std::time::Instant::now() < deadline, "the hash never started");
            tokio::task::yield_now().await;
        }
        assert_eq!(b.run(HashClass::Http, || true).await, Err(HashError::Busy), "the HTTP share is taken");
        assert_eq!(b.run(HashClass::Mqtt, || 7).await, Ok(7), "MQTT still hashes");
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(true));
        assert_eq!(b.run(HashClass::Http, || 8).await, Ok(8));
        assert_eq!((b.runs(HashClass::Http), b.runs(HashClass::Mqtt)), (2, 1));
    }

    #[test]
    fn retry_after_rounds_up() {
        let t = |ms| Throttled::BackingOff { retry_after: Duration::from_millis(ms) };
        assert_eq!(t(1).retry_after_secs(), 1);
        assert_eq!(t(1000).retry_after_secs(), 1);
        assert_eq!(t(1001).retry_after_secs(), 2);
        assert_eq!(Throttled::Banned { retry_after: Duration::from_secs(300) }.retry_after_secs(), 300);
    }
}
