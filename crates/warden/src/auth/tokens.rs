//! Access tokens in the CONNECT password field (SPEC §4, method 3): the shell's side — the
//! built-in token service and the outside issuer (`[auth.jwt]`: JWKS file or URL, or an HS256
//! secret) set up from the configuration, and the JWKS URL's fetches. Verification, the
//! subject rule, revocation and the client registry are decided in
//! [`warden_policy::authn::tokens`].
//!
//! The outside JWKS URL is fetched at start, cached, and fetched again when a token names an
//! unknown `kid` (the chain asks: `Step::NeedJwks`) — at most once per
//! [`JWKS_REFRESH_INTERVAL`], so a flood of made-up kids cannot turn the broker into a request
//! amplifier. Keys offered inside a token (`jku`, `jwk`, `x5u`) are never used or fetched (see
//! `warden_policy::jwt`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};
use warden_http::OAuthService;
use warden_policy::authn::{ExternalIssuer, SubjectRule, TokenIssuer};
use warden_policy::jwt::{JwtSettings, KeySet};

use crate::config::{JwtConfig, SubjectMatch};

/// Least time between two fetches of the outside JWKS URL.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

pub use warden_policy::authn::TokenInfo;

pub use crate::clock::unix_now;

struct External {
    issuer: ExternalIssuer,
    url_keys: RwLock<Arc<KeySet>>,
    url: Option<String>,
    last_fetch: Mutex<Option<Instant>>,
}

/// Token verification for CONNECT.
pub struct TokenAuth {
    external: Option<External>,
    builtin: Option<Arc<OAuthService>>,
}

fn fetch_jwks(url: &str) -> crate::Result<KeySet> {
    let body = ureq::get(url)
        .timeout(Duration::from_secs(5))
        .call()
        .map_err(|e| crate::Error::Http(format!("GET {url}: {e}")))?
        .into_string()
        .map_err(|e| crate::Error::io(format!("GET {url}: body"), e))?;
    KeySet::from_jwks_json(&body).map_err(|e| crate::Error::Http(format!("{url}: {e}")))
}

impl TokenAuth {
    /// Set up from `[auth.jwt]` and the built-in token service (either may be absent).
    pub fn new(cfg: Option<&JwtConfig>, builtin: Option<Arc<OAuthService>>) -> crate::Result<TokenAuth> {
        let external = match cfg {
            None => None,
            Some(c) => {
                let mut static_keys = match &c.jwks_file {
                    Some(p) => {
                        let text = std::fs::read_to_string(p)
                            .map_err(|e| crate::Error::io(format!("{}: cannot read JWKS", p.display()), e))?;
                        KeySet::from_jwks_json(&text).map_err(|e| crate::Error::invalid(p, e))?
                    }
                    None => KeySet::empty(),
                };
                if let Some(s) = &c.hs256_secret {
                    static_keys.add_hs256_secret(s.0.as_bytes());
                }
                // A failed first fetch does not count against the refresh rate limit: the first
                // token with a kid then triggers a fetch at once.
                let mut fetched_at = None;
                let url_keys = match &c.jwks_url {
                    Some(u) => match fetch_jwks(u) {
                        Ok(k) => {
                            info!(url = %u, keys = k.len(), "JWKS fetched");
                            fetched_at = Some(Instant::now());
                            k
                        }
                        Err(e) => {
                            warn!(error = %e, "JWKS fetch failed; tokens from this issuer are refused until it succeeds");
                            KeySet::empty()
                        }
                    },
                    None => KeySet::empty(),
                };
                Some(External {
                    issuer: ExternalIssuer {
                        settings: JwtSettings {
                            issuer: c.issuer.clone(),
                            audience: c.audience.clone(),
                            leeway_secs: c.leeway.as_secs(),
                            typ: Some(c.typ.clone()),
                            max_lifetime_secs: Some(c.max_token_lifetime.as_secs()),
                        },
                        static_keys,
                        fetches_jwks: c.jwks_url.is_some(),
                        subject_rule: subject_rule(c.subject_must_match),
                        scopes: c.scope_map(),
                    },
                    url_keys: RwLock::new(Arc::new(url_keys)),
                    last_fetch: Mutex::new(fetched_at),
                    url: c.jwks_url.clone(),
                })
            }
        };
        Ok(TokenAuth { external, builtin })
    }

    /// True when `id` is a client of the built-in token service.
    pub fn is_oauth_client(&self, id: &str) -> bool {
        self.builtin.as_ref().is_some_and(|b| b.has_client(id))
    }

    /// True when some token method is configured.
    pub fn enabled(&self) -> bool {
        self.external.is_some() || self.builtin.is_some()
    }

    /// The built-in token service, as the authentication chain reads it.
    pub fn issuer(&self) -> Option<&(dyn TokenIssuer + Sync)> {
        self.builtin.as_deref().map(|b| b as &(dyn TokenIssuer + Sync))
    }

    /// The outside issuer, as the authentication chain reads it.
    pub fn external(&self) -> Option<&ExternalIssuer> {
        self.external.as_ref().map(|x| &x.issuer)
    }

    /// The keys fetched from the outside issuer's JWKS URL so far (none without a URL).
    pub fn jwks(&self) -> Option<Arc<KeySet>> {
        self.external.as_ref().filter(|x| x.url.is_some()).map(|x| x.url_keys.read().clone())
    }

    /// A token named a key not held: fetch the JWKS URL again, at most once per
    /// [`JWKS_REFRESH_INTERVAL`]. `None`: not fetched (no URL, or too soon); otherwise the keys
    /// in force after the attempt (the old ones when it failed).
    pub async fn refresh_jwks(&self) -> Option<Arc<KeySet>> {
        let x = self.external.as_ref()?;
        let url = x.url.clone()?;
        {
            let mut last = x.last_fetch.lock();
            if last.is_some_and(|t| t.elapsed() < JWKS_REFRESH_INTERVAL) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match tokio::task::spawn_blocking(move || fetch_jwks(&url)).await {
            Ok(Ok(k)) => {
                info!(keys = k.len(), "JWKS refreshed (unknown kid)");
                *x.url_keys.write() = Arc::new(k);
            }
            Ok(Err(e)) => warn!(error = %e, "JWKS refresh failed"),
            Err(_) => {}
        }
        Some(x.url_keys.read().clone())
    }
}

/// `[auth.jwt] subject_must_match`, as the chain names it.
fn subject_rule(m: SubjectMatch) -> SubjectRule {
    match m {
        SubjectMatch::Off => SubjectRule::Off,
        SubjectMatch::Username => SubjectRule::Username,
        SubjectMatch::ClientId => SubjectRule::ClientId,
    }
}
