//! Third-party look-up over HTTP (SPEC §4, method 4): the broker asks an outside service
//! whether a CONNECT may proceed, and with which permissions.
//!
//! # Wire format
//! The broker sends one `POST` to the configured URL per CONNECT (unless a cached answer
//! applies), with `Content-Type: application/json`, `Accept: application/json` and, when
//! `bearer_token` is configured, `Authorization: Bearer <token>`:
//!
//! ```json
//! {"client_id": "dev-1", "username": "ann", "password": "s3cret", "password_encoding": "utf8",
//!  "peer": "192.0.2.7:51234", "cert_identity": null}
//! ```
//!
//! - `username`, `password` and `cert_identity` are `null` when absent (`password_encoding` is
//!   then `null` too).
//! - `password` is the CONNECT password (or token) as a string when it is valid UTF-8
//!   (`"password_encoding": "utf8"`), else standard base64 with padding (`"base64"`).
//! - `peer` is the client's address, `ip:port` (`[v6]:port` for IPv6).
//! - `cert_identity` is the verified client-certificate identity, when the connection has one.
//!
//! The service answers `200 OK` with a JSON object:
//!
//! ```json
//! {"allow": true, "principal": "ann", "roles": ["ops"], "scopes": ["mqtt:pub:a/#"],
//!  "acl": ["topic read x/#"], "cache_ttl": 60}
//! ```
//! or `{"allow": false}`. Only `allow` (a JSON boolean) is required; other members may be
//! omitted or `null`, and unknown members are ignored.
//! - `principal`: the name the connection is known by; default the user name, else the client
//!   id. It must pass [`warden_policy::cert::check_identity`] (no `/`, `+`, `#`, `*`,
//!   control characters, …), else the CONNECT is denied.
//! - `roles`: role names. `scopes`: the token-scope grammar, `mqtt:pub:<filter>` and
//!   `mqtt:sub:<filter>` (other scopes grant nothing by themselves; invalid filters are ignored,
//!   as for access tokens).
//! - `acl`: rule lines in Mosquitto `acl_file` syntax, one rule per string: `topic
//!   [read|write|readwrite|deny] <filter>` or `pattern [...] <filter>` (`%c` = client id). `user`
//!   lines, comments, empty strings, line breaks and `%u` (write the principal's name instead)
//!   are refused: an answer with such a line is a denial, since its rules could not be enforced
//!   as written.
//! - `cache_ttl`: seconds the *allow* may be reused (see Cache).
//!
//! Anything else — a transport error, the timeout, a status other than 200 (redirects are not
//! followed), a body over [`MAX_BODY`], malformed JSON, a missing or non-boolean `allow` — makes
//! the service *unavailable*: [`LookupVerdict::Unavailable`], which the caller turns into a
//! refusal (0x88) unless `fail_open = true` and a `fallback_role` is configured; then the client
//! is admitted as an unverified fallback principal holding that role only
//! ([`warden_policy::PrincipalKind::Fallback`]).
//!
//! # The broker's own limit
//! At most `max_in_flight` look-ups (default [`DEFAULT_MAX_IN_FLIGHT`](crate::config::lookup::DEFAULT_MAX_IN_FLIGHT)) run at once. A CONNECT
//! that finds them all taken is refused at once with Server busy ([`LookupVerdict::Busy`]: v5
//! 0x89, v3 0x03) — the broker's own overload, never "service unavailable", so `fail_open` never
//! applies to it: a flood of bad CONNECTs cannot open the door for the next one.
//!
//! # Cache
//! Only allows are cached, and only when the answer carries a `cache_ttl` > 0; the lifetime is
//! the answer's `cache_ttl` capped by the configured `cache_ttl` (default and maximum 1 h;
//! `0` turns the cache off). Denials and failures are never cached, so a corrected password
//! works at once (repeated denials reach the service each time; the concurrency bound below
//! keeps a flood from occupying more than `max_in_flight` blocking threads). The key is a
//! SHA-256 digest, salted with a random per-process value, over the client id, user name,
//! password, certificate identity and the peer's IP address (not its port: the service may
//! decide by address); the password is not kept. At most [`CACHE_CAPACITY`] entries; the
//! oldest is evicted first.
//!
//! # Logging
//! Each verdict is logged with the client id, user name, peer and the service's HTTP status;
//! never the password or the bearer token.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::logsafe::Escaped;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};
use warden_policy::acl::{AclFile, AclRule};

pub use crate::config::lookup::LookupConfig;
use crate::config::lookup::{check_cache_ttl, check_timeout, MAX_IN_FLIGHT_CAP};

/// Largest answer body read from the service.
pub const MAX_BODY: u64 = 64 * 1024;
/// Cached allows kept at most; the oldest is evicted first.
pub const CACHE_CAPACITY: usize = 10_000;

/// What the broker knows about a CONNECT, sent to the service (the authentication chain
/// asks for it: `warden_policy::authn::Step::NeedLookup`).
pub use warden_policy::authn::LookupRequest;

/// What an allow grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The principal name (checked with [`warden_policy::cert::check_identity`]).
    pub principal: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Scopes (`mqtt:pub:<filter>`, `mqtt:sub:<filter>`, others).
    pub scopes: Vec<String>,
    /// Mosquitto-syntax rule lines (`topic …` / `pattern …`), each validated.
    pub acl: Vec<String>,
    /// The lifetime the answer asked for (before the configured cap).
    pub cache_ttl: Option<Duration>,
}

impl Grant {
    /// The permissions this grant carries, compiled (to put in `Principal::grants`): the
    /// `mqtt:` scopes as `topic` rules, then the `acl` lines. `None` when the answer carried
    /// neither `mqtt:` scopes nor ACL lines, i.e. no permissions of its own.
    ///
    /// The rules are checked as the principal's own (user `None` in
    /// [`AclFile::check`], like token scopes): `topic` lines and `pattern` lines with `%c` apply.
    pub fn rules(&self) -> Option<AclFile> {
        let mut rules = warden_policy::authz::scope_rules(&self.scopes);
        let first = rules.len() + 1;
        for (i, l) in self.acl.iter().enumerate() {
            match AclRule::parse_line(first + i, l) {
                Ok(r) => rules.push(r),
                // Every line was checked on its own; an error grants nothing (fail closed).
                Err(_) => return Some(AclFile::default()),
            }
        }
        if rules.is_empty() {
            return None;
        }
        Some(AclFile::from_rules(rules))
    }
}

/// The service's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupVerdict {
    /// Allowed, with these permissions.
    Allow(Grant),
    /// Denied (also: an allow naming an unusable principal or carrying unusable rules).
    Deny,
    /// Error, timeout or bad answer: the caller applies `fail_open`.
    Unavailable,
    /// The broker's own limit (`max_in_flight`) is reached: not asked. Refused with Server
    /// busy; `fail_open` does not apply.
    Busy,
}

/// The JSON body sent to the service.
#[derive(Serialize)]
struct WireRequest<'a> {
    client_id: &'a str,
    username: Option<&'a str>,
    password: Option<String>,
    password_encoding: Option<&'static str>,
    peer: String,
    cert_identity: Option<&'a str>,
}

impl<'a> WireRequest<'a> {
    fn new(r: &'a LookupRequest) -> Self {
        let (password, password_encoding) = match r.password.as_deref() {
            None => (None, None),
            Some(p) => match std::str::from_utf8(p) {
                Ok(s) => (Some(s.to_owned()), Some("utf8")),
                Err(_) => (Some(STANDARD.encode(p)), Some("base64")),
            },
        };
        WireRequest {
            client_id: &r.client_id,
            username: r.username.as_deref(),
            password,
            password_encoding,
            peer: r.peer.to_string(),
            cert_identity: r.cert_identity.as_deref(),
        }
    }
}

/// The JSON body the service answers with.
#[derive(Deserialize)]
struct WireAnswer {
    allow: bool,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    acl: Option<Vec<String>>,
    #[serde(default)]
    cache_ttl: Option<u64>,
}

/// What one HTTP exchange produced.
enum Outcome {
    Answer {
        status: u16,
        answer: WireAnswer,
    },
    Failed {
        status: Option<u16>,
        reason: String,
    },
    /// No free slot: the service was not asked.
    Busy,
}

/// Check one `acl` line from an answer.
fn check_acl_line(l: &str) -> Result<(), String> {
    if l.contains(['\n', '\r', '\0']) {
        return Err("line break or U+0000 in an ACL line".into());
    }
    let directive = l.trim_start().split([' ', '\t']).next().unwrap_or("");
    if directive != "topic" && directive != "pattern" {
        return Err(format!("ACL line must start with 'topic' or 'pattern', not {directive:?}"));
    }
    if l.contains("%u") {
        return Err("'%u' in an ACL line (name the principal instead)".into());
    }
    AclRule::parse_line(1, l).map(|_| ()).map_err(|e| e.to_string())
}

struct Entry {
    grant: Grant,
    expires: Instant,
    seq: u64,
}

/// Allows, keyed by a salted digest of the credentials; insertion order for eviction.
#[derive(Default)]
struct Cache {
    map: HashMap<String, Entry>,
    order: VecDeque<(String, u64)>,
    seq: u64,
}

impl Cache {
    fn get(&mut self, key: &str, now: Instant) -> Option<Grant> {
        match self.map.get(key) {
            Some(e) if e.expires > now => Some(e.grant.clone()),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: String, grant: Grant, expires: Instant, now: Instant) {
        if self.map.len() >= CACHE_CAPACITY && !self.map.contains_key(&key) {
            self.map.retain(|_, e| e.expires > now);
            while self.map.len() >= CACHE_CAPACITY {
                let Some((k, seq)) = self.order.pop_front() else { break };
                if self.map.get(&k).is_some_and(|e| e.seq == seq) {
                    self.map.remove(&k);
                }
            }
        }
        self.seq += 1;
        let seq = self.seq;
        self.map.insert(key.clone(), Entry { grant, expires, seq });
        self.order.push_back((key, seq));
        if self.order.len() > 2 * CACHE_CAPACITY {
            let map = &self.map;
            self.order.retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// `url` with the credentials of its user-info part (`https://user:password@host/…`) hidden,
/// for logs and `Debug`.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// True for an `http://` URL (any case) whose host is not loopback (`127.*`, `localhost`,
/// `[::1]`): what it carries crosses the network in clear.
pub fn plain_http_off_loopback(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    let loopback =
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]") || host.is_empty();
    !loopback
}

/// The third-party look-up method.
pub struct HttpLookup {
    cfg: LookupConfig,
    agent: ureq::Agent,
    salt: [u8; 32],
    cache: Mutex<Cache>,
    in_flight: Arc<Semaphore>,
}

impl fmt::Debug for HttpLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpLookup")
            .field("url", &redacted_url(&self.cfg.url))
            .field("timeout", &self.cfg.timeout)
            .field("fail_open", &self.cfg.fail_open)
            .field("fallback_role", &self.cfg.fallback_role)
            .field("max_in_flight", &self.cfg.max_in_flight)
            .field("cache_ttl", &self.cfg.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl HttpLookup {
    /// Set up from the configuration: checks the URL (`http` or `https`), the timeout and the
    /// cache cap. A plain `http://` URL to a host other than loopback is allowed, with a
    /// warning (passwords would cross the network in clear).
    pub fn new(cfg: LookupConfig) -> crate::Result<Self> {
        check_timeout(cfg.timeout).map_err(|e| crate::Error::Setting(format!("[auth.http] {e}")))?;
        check_cache_ttl(cfg.cache_ttl).map_err(|e| crate::Error::Setting(format!("[auth.http] {e}")))?;
        let lower = cfg.url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(crate::Error::Setting("[auth.http] url must start with http:// or https://".into()));
        }
        if cfg.url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(crate::Error::Setting("[auth.http] url contains white space or control characters".into()));
        }
        if let Some(t) = &cfg.bearer_token {
            if t.0.is_empty() || t.0.chars().any(|c| c.is_control()) {
                return Err(crate::Error::Setting(
                    "[auth.http] bearer_token is empty or contains control characters".into(),
                ));
            }
        }
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(cfg.timeout)
            .try_proxy_from_env(false)
            .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
            .build();
        agent.post(&cfg.url).request_url().map_err(|e| crate::Error::Setting(format!("[auth.http] url: {e}")))?;
        if plain_http_off_loopback(&cfg.url) {
            warn!(url = %redacted_url(&cfg.url), "[auth.http] uses plain http: passwords cross the network unencrypted");
        }
        if cfg.fail_open && cfg.fallback_role.is_none() {
            warn!("[auth.http] fail_open = true without fallback_role: CONNECTs are refused while the service is unavailable");
        }
        let max_in_flight = cfg.max_in_flight.clamp(1, MAX_IN_FLIGHT_CAP);
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        Ok(HttpLookup {
            cfg,
            agent,
            salt,
            cache: Mutex::new(Cache::default()),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &LookupConfig {
        &self.cfg
    }

    /// The role a client gets when the service is [`LookupVerdict::Unavailable`]:
    /// `fallback_role` when `fail_open` is on, else `None` (refused).
    pub fn fallback_role(&self) -> Option<&str> {
        self.cfg.fallback_role.as_deref().filter(|_| self.cfg.fail_open)
    }

    /// Cached allows (for tests and `$SYS`).
    pub fn cached(&self) -> usize {
        self.cache.lock().len()
    }

    /// Ask the service (or the cache) about a CONNECT.
    pub async fn check(&self, req: &LookupRequest) -> LookupVerdict {
        let caching = !self.cfg.cache_ttl.is_zero();
        let key = caching.then(|| self.cache_key(req));
        if let Some(k) = &key {
            if let Some(grant) = self.cache.lock().get(k, Instant::now()) {
                debug!(client_id = %Escaped(&req.client_id), username = ?req.username, peer = %req.peer,
                    principal = %Escaped(&grant.principal), "HTTP look-up: allowed (cached)");
                return LookupVerdict::Allow(grant);
            }
        }
        let outcome = self.call(req).await;
        let (status, answer) = match outcome {
            // Logged (rate-limited) by the connection that is refused.
            Outcome::Busy => return LookupVerdict::Busy,
            Outcome::Failed { status, reason } => {
                warn!(client_id = %Escaped(&req.client_id), username = ?req.username, peer = %req.peer, status = ?status,
                    reason = %Escaped(&reason), fallback_role = ?self.fallback_role(), "HTTP look-up: service unavailable");
                return LookupVerdict::Unavailable;
            }
            Outcome::Answer { status, answer } => (status, answer),
        };
        if !answer.allow {
            info!(client_id = %Escaped(&req.client_id), username = ?req.username, peer = %req.peer, status,
                "HTTP look-up: denied");
            return LookupVerdict::Deny;
        }
        let grant = match self.grant(req, answer) {
            Ok(g) => g,
            Err(reason) => {
                warn!(client_id = %Escaped(&req.client_id), username = ?req.username, peer = %req.peer, status,
                    reason = %Escaped(&reason), "HTTP look-up: allow refused (unusable answer)");
                return LookupVerdict::Deny;
            }
        };
        info!(client_id = %Escaped(&req.client_id), username = ?req.username, peer = %req.peer, status,
            principal = %Escaped(&grant.principal), roles = grant.roles.len(), scopes = grant.scopes.len(),
            acl = grant.acl.len(), "HTTP look-up: allowed");
        if let (Some(k), Some(ttl)) = (key, grant.cache_ttl) {
            let ttl = ttl.min(self.cfg.cache_ttl);
            if !ttl.is_zero() {
                let now = Instant::now();
                self.cache.lock().insert(k, grant.clone(), now + ttl, now);
            }
        }
        LookupVerdict::Allow(grant)
    }

    /// Turn an allow answer into a grant, or say why it cannot be used.
    fn grant(&self, req: &LookupRequest, a: WireAnswer) -> Result<Grant, String> {
        let principal = a.principal.or_else(|| req.username.clone()).unwrap_or_else(|| req.client_id.clone());
        warden_policy::cert::check_identity(&principal).map_err(|e| format!("principal name refused: {e}"))?;
        let acl = a.acl.unwrap_or_default();
        for l in &acl {
            check_acl_line(l)?;
        }
        Ok(Grant {
            principal,
            roles: a.roles.unwrap_or_default(),
            scopes: a.scopes.unwrap_or_default(),
            acl,
            cache_ttl: a.cache_ttl.map(Duration::from_secs),
        })
    }

    /// Salted SHA-256 over the credentials (length-prefixed, so fields cannot run together).
    fn cache_key(&self, r: &LookupRequest) -> String {
        let ip = match r.peer.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let fields: [Option<&[u8]>; 5] = [
            Some(r.client_id.as_bytes()),
            r.username.as_deref().map(str::as_bytes),
            r.password.as_deref(),
            r.cert_identity.as_deref().map(str::as_bytes),
            Some(&ip),
        ];
        let mut buf = Vec::with_capacity(64 + fields.iter().map(|f| f.map_or(0, <[u8]>::len) + 9).sum::<usize>());
        buf.extend_from_slice(&self.salt);
        for f in fields {
            match f {
                None => buf.push(0),
                Some(b) => {
                    buf.push(1);
                    buf.extend_from_slice(&(b.len() as u64).to_be_bytes());
                    buf.extend_from_slice(b);
                }
            }
        }
        let key = warden_policy::cert::sha256_fingerprint(&buf);
        buf.fill(0);
        std::hint::black_box(&buf);
        key
    }

    /// One POST, on the blocking pool, bounded in concurrency and time.
    async fn call(&self, req: &LookupRequest) -> Outcome {
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        // No waiting for a slot: when they are all taken the broker itself is overloaded, which
        // the client hears at once as Server busy (and which is never "service unavailable").
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else { return Outcome::Busy };
        let body = match serde_json::to_vec(&WireRequest::new(req)) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed { status: None, reason: format!("request encoding: {e}") },
        };
        let mut request =
            self.agent.post(&self.cfg.url).set("Content-Type", "application/json").set("Accept", "application/json");
        if let Some(t) = &self.cfg.bearer_token {
            request = request.set("Authorization", &format!("Bearer {}", t.0));
        }
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            exchange(request, &body)
        });
        // ureq enforces the timeout itself; this bounds the wait should it not.
        match tokio::time::timeout_at(deadline + Duration::from_millis(500), task).await {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => Outcome::Failed { status: None, reason: "look-up task failed".into() },
            Err(_) => Outcome::Failed { status: None, reason: "timed out".into() },
        }
    }
}

/// The blocking HTTP exchange.
fn exchange(request: ureq::Request, body: &[u8]) -> Outcome {
    let resp = match request.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(code, _)) => {
            return Outcome::Failed { status: Some(code), reason: format!("HTTP status {code}") }
        }
        Err(ureq::Error::Transport(t)) => return Outcome::Failed { status: None, reason: t.to_string() },
    };
    let status = resp.status();
    if status != 200 {
        return Outcome::Failed { status: Some(status), reason: format!("HTTP status {status} (expected 200)") };
    }
    let mut buf = Vec::new();
    if let Err(e) = resp.into_reader().take(MAX_BODY + 1).read_to_end(&mut buf) {
        return Outcome::Failed { status: Some(status), reason: format!("reading the answer: {e}") };
    }
    if buf.len() as u64 > MAX_BODY {
        return Outcome::Failed { status: Some(status), reason: format!("answer larger than {MAX_BODY} bytes") };
    }
    match serde_json::from_slice::<WireAnswer>(&buf) {
        Ok(answer) => Outcome::Answer { status, answer },
        Err(e) => Outcome::Failed { status: Some(status), reason: format!("malformed answer: {e}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn parse(text: &str) -> Result<LookupConfig, String> {
        toml::from_str::<LookupConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse("url = \"https://auth.example/check\"").unwrap();
        assert_eq!(c.url, "https://auth.example/check");
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert!(!c.fail_open);
        assert_eq!(c.fallback_role, None);
        assert_eq!(c.max_in_flight, 32);
        assert_eq!(c.cache_ttl, Duration::from_secs(3600));
        assert_eq!(c.bearer_token, None);
        // fail_open alone admits no one: there is no role to give.
        let open = HttpLookup::new(parse("url = \"http://127.0.0.1:1/\"\nfail_open = true").unwrap()).unwrap();
        assert_eq!(open.fallback_role(), None);
    }

    #[test]
    fn all_keys() {
        let c = parse(
            "url = \"http://127.0.0.1:9000/\"\ntimeout = \"500ms\"\nfail_open = true\ncache_ttl = \"5m\"\n\
             bearer_token = \"t0k\"\nfallback_role = \"degraded\"\nmax_in_flight = 4\n",
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert!(c.fail_open);
        assert_eq!(c.fallback_role.as_deref(), Some("degraded"));
        assert_eq!(c.max_in_flight, 4);
        assert_eq!(HttpLookup::new(c.clone()).unwrap().fallback_role(), Some("degraded"));
        let closed = LookupConfig { fail_open: false, ..c.clone() };
        assert_eq!(HttpLookup::new(closed).unwrap().fallback_role(), None, "a role without fail_open is unused");
        assert_eq!(c.cache_ttl, Duration::from_secs(300));
        assert_eq!(c.bearer_token, Some(Secret("t0k".into())));
        assert!(!format!("{c:?}").contains("t0k"), "bearer token printed by Debug");
        let c = parse("url = \"http://x/\"\ntimeout = 3\ncache_ttl = 0\n").unwrap();
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.cache_ttl, Duration::ZERO);
    }

    #[test]
    fn refusals() {
        for (text, needle) in [
            ("url = \"http://x/\"\ntimeout = \"0s\"", "greater than 0"),
            ("url = \"http://x/\"\ntimeout = \"31s\"", "at most 30"),
            ("url = \"http://x/\"\ntimeout = -1", "negative"),
            ("url = \"http://x/\"\ntimeout = \"2\"", "missing unit"),
            ("url = \"http://x/\"\ncache_ttl = \"2h\"", "at most 1 hour"),
            ("url = \"http://x/\"\nttl = 1", "unknown field"),
            ("url = \"http://x/\"\nmax_in_flight = 0", "max_in_flight must be 1 to 1024"),
            ("url = \"http://x/\"\nmax_in_flight = 1025", "max_in_flight must be 1 to 1024"),
            ("url = \"http://x/\"\nfallback_role = \"\"", "fallback_role"),
            ("url = \"http://x/\"\nfallback_role = \"a:b\"", "fallback_role"),
            ("timeout = 1", "missing field `url`"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(redacted_url("http://ann:s3cret@auth.example:8080/x?y@z"), "http://***@auth.example:8080/x?y@z");
        assert_eq!(redacted_url("https://auth.example/a@b"), "https://auth.example/a@b");
        assert_eq!(redacted_url("not a url"), "not a url");
        let c = cfg("http://ann:s3cret@10.0.0.1/check");
        assert!(!format!("{:?}", HttpLookup::new(c).unwrap()).contains("s3cret"));
    }

    fn cfg(url: &str) -> LookupConfig {
        parse(&format!("url = {url:?}")).unwrap()
    }

    #[test]
    fn new_checks_the_url() {
        assert!(HttpLookup::new(cfg("https://auth.example/check")).is_ok());
        assert!(HttpLookup::new(cfg("http://127.0.0.1:8080/x")).is_ok());
        for bad in ["ftp://x/", "auth.example/check", "", "http://a b/", "https://"] {
            assert!(HttpLookup::new(cfg(bad)).is_err(), "{bad:?} accepted");
        }
        let mut c = cfg("https://auth.example/");
        c.timeout = Duration::ZERO;
        assert!(HttpLookup::new(c).is_err());
        let mut c = cfg("https://auth.example/");
        c.cache_ttl = Duration::from_secs(7200);
        assert!(HttpLookup::new(c).is_err());
        let mut c = cfg("https://auth.example/");
        c.bearer_token = Some(Secret("a\nb".into()));
        assert!(HttpLookup::new(c).is_err());
    }

    #[test]
    fn wire_request_encodes_passwords() {
        let mut r = LookupRequest {
            client_id: "c".into(),
            username: None,
            password: Some(b"pw".to_vec()),
            peer: "[::1]:5".parse().unwrap(),
            cert_identity: None,
        };
        let v = serde_json::to_value(WireRequest::new(&r)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"client_id": "c", "username": null, "password": "pw",
                "password_encoding": "utf8", "peer": "[::1]:5", "cert_identity": null})
        );
        r.password = Some(vec![0xff, 0x00]);
        let v = serde_json::to_value(WireRequest::new(&r)).unwrap();
        assert_eq!(v["password"], "/wA=");
        assert_eq!(v["password_encoding"], "base64");
        r.password = None;
        let v = serde_json::to_value(WireRequest::new(&r)).unwrap();
        assert!(v["password"].is_null() && v["password_encoding"].is_null());
        assert!(!format!("{r:?}").contains("pw"));
    }

    #[test]
    fn acl_lines() {
        for ok in ["topic read a/#", "topic x", "pattern write dev/%c/#", "topic deny $SYS/#"] {
            assert!(check_acl_line(ok).is_ok(), "{ok:?} refused");
        }
        for bad in
            ["", "user bob", "# comment", "topic read a\ntopic b", "pattern users/%u/#", "topic read a/#/b", "x y"]
        {
            assert!(check_acl_line(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cache_key_depends_on_every_credential() {
        let l = HttpLookup::new(cfg("http://127.0.0.1:1/")).unwrap();
        let base = LookupRequest {
            client_id: "c".into(),
            username: Some("u".into()),
            password: Some(b"p".to_vec()),
            peer: "10.0.0.1:1000".parse().unwrap(),
            cert_identity: None,
        };
        let k = l.cache_key(&base);
        assert_eq!(k.len(), 64);
        assert_eq!(k, l.cache_key(&LookupRequest { peer: "10.0.0.1:2000".parse().unwrap(), ..base.clone() }));
        for other in [
            LookupRequest { client_id: "d".into(), ..base.clone() },
            LookupRequest { username: None, ..base.clone() },
            LookupRequest { password: Some(b"q".to_vec()), ..base.clone() },
            LookupRequest { password: None, ..base.clone() },
            LookupRequest { cert_identity: Some("c".into()), ..base.clone() },
            LookupRequest { peer: "10.0.0.2:1000".parse().unwrap(), ..base.clone() },
            // Field boundaries: ("cu", None) is not ("c", "u").
            LookupRequest { client_id: "cu".into(), username: None, ..base.clone() },
        ] {
            assert_ne!(k, l.cache_key(&other), "{other:?}");
        }
        // Salted per instance.
        assert_ne!(k, HttpLookup::new(cfg("http://127.0.0.1:1/")).unwrap().cache_key(&base));
    }

    #[test]
    fn cache_is_bounded_and_evicts_oldest() {
        let g = Grant { principal: "p".into(), roles: vec![], scopes: vec![], acl: vec![], cache_ttl: None };
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut c = Cache::default();
        for i in 0..CACHE_CAPACITY + 5 {
            c.insert(format!("k{i}"), g.clone(), later, now);
        }
        assert_eq!(c.len(), CACHE_CAPACITY);
        assert!(c.get("k0", now).is_none() && c.get("k4", now).is_none());
        assert!(c.get("k5", now).is_some() && c.get(&format!("k{}", CACHE_CAPACITY + 4), now).is_some());
        assert!(c.get("k5", later).is_none(), "expired entry served");
        // Re-inserting one key repeatedly keeps the order queue bounded.
        for _ in 0..3 * CACHE_CAPACITY {
            c.insert("again".into(), g.clone(), later, now);
        }
        assert!(c.order.len() <= 2 * CACHE_CAPACITY + 1);
    }

    #[test]
    fn grant_rules() {
        let g = Grant {
            principal: "p".into(),
            roles: vec!["ops".into()],
            scopes: vec!["mqtt:pub:a/#".into(), "mqtt:sub:bad/#/x".into(), "openid".into()],
            acl: vec!["topic read x/#".into(), "topic deny x/secret".into()],
            cache_ttl: None,
        };
        use mqtt_codec::{QoS, TopicName};
        use warden_policy::Action;
        let name = |t: &str| TopicName::new(t).unwrap();
        let r = g.rules().unwrap();
        assert_eq!(r.check(None, "c", Action::publish(&name("a/1"), QoS::AtMostOnce, false)), Some(true));
        assert_eq!(r.check(None, "c", Action::receive(&name("x/1"))), Some(true));
        assert_eq!(r.check(None, "c", Action::receive(&name("x/secret"))), Some(false));
        assert_eq!(r.check(None, "c", Action::receive(&name("bad/1/x"))), None);
        let empty = Grant { scopes: vec!["openid".into()], acl: vec![], ..g };
        assert!(empty.rules().is_none());
    }
}
