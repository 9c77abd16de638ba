//! Access tokens in the CONNECT password field (SPEC §4, method 3): tokens minted by the
//! built-in token service, and tokens from an outside issuer (`[auth.jwt]`: JWKS file or URL,
//! or an HS256 secret).
//!
//! The outside JWKS URL is fetched at start, cached, and fetched again when a token names an
//! unknown `kid` — at most once per [`JWKS_REFRESH_INTERVAL`], so a flood of made-up kids
//! cannot turn the broker into a request amplifier. Keys offered inside a token (`jku`, `jwk`,
//! `x5u`) are never used or fetched (see `warden_policy::jwt`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::logsafe::Escaped;
use anyhow::{anyhow, Context};
use mqtt_codec::{Connect, ReasonCode};
use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};
use warden_http::{OAuthService, TokenRejected};
use warden_policy::jwt::{self, JwtError, JwtSettings, KeySet, VerifiedToken};
use warden_policy::trust::{Credential, CredentialSource, TokenRef};
use warden_policy::Principal;

use crate::config::{JwtConfig, SubjectMatch};
use warden_policy::authz::ScopeMap;

/// Least time between two fetches of the outside JWKS URL.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// What a verified token grants, beyond the principal.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Token id (`jti`), for revocation.
    pub jti: Option<String>,
    /// Expiry (unix seconds): the connection is closed then.
    pub expires_at: u64,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

struct External {
    settings: JwtSettings,
    static_keys: KeySet,
    url_keys: RwLock<KeySet>,
    url: Option<String>,
    last_fetch: Mutex<Option<Instant>>,
    subject_must_match: SubjectMatch,
    /// How the issuer's scopes become grants.
    scopes: ScopeMap,
}

/// Token verification for CONNECT.
pub struct TokenAuth {
    external: Option<External>,
    builtin: Option<Arc<OAuthService>>,
}

fn fetch_jwks(url: &str) -> anyhow::Result<KeySet> {
    let body = ureq::get(url)
        .timeout(Duration::from_secs(5))
        .call()
        .map_err(|e| anyhow!("GET {url}: {e}"))?
        .into_string()
        .with_context(|| format!("GET {url}: body"))?;
    KeySet::from_jwks_json(&body).map_err(|e| anyhow!("{url}: {e}"))
}

impl TokenAuth {
    /// Set up from `[auth.jwt]` and the built-in token service (either may be absent).
    pub fn new(cfg: Option<&JwtConfig>, builtin: Option<Arc<OAuthService>>) -> anyhow::Result<TokenAuth> {
        let external = match cfg {
            None => None,
            Some(c) => {
                let mut static_keys = match &c.jwks_file {
                    Some(p) => {
                        let text =
                            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read JWKS", p.display()))?;
                        KeySet::from_jwks_json(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?
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
                    settings: JwtSettings {
                        issuer: c.issuer.clone(),
                        audience: c.audience.clone(),
                        leeway_secs: c.leeway.as_secs(),
                        typ: Some(c.typ.clone()),
                        max_lifetime_secs: Some(c.max_token_lifetime.as_secs()),
                    },
                    static_keys,
                    url_keys: RwLock::new(url_keys),
                    last_fetch: Mutex::new(fetched_at),
                    url: c.jwks_url.clone(),
                    subject_must_match: c.subject_must_match,
                    scopes: c.scope_map(),
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

    /// Verify a token sent as the CONNECT password. `None`: not a token (or no token method),
    /// so the other methods decide.
    ///
    /// Refusals: v5 0x86 (v3 0x04) for a token that is not a valid credential (bad signature,
    /// unknown key, malformed, expired, not yet valid, wrong issuer or audience, revoked);
    /// 0x87 (v3 0x05) for a genuine token that policy refuses — a `typ` that is not accepted,
    /// a lifetime over the maximum, a subject the configured rule refuses.
    pub async fn authenticate(
        &self,
        connect: &Connect,
        password: &[u8],
    ) -> Option<Result<(Principal, TokenInfo), ReasonCode>> {
        if !self.enabled() || !jwt::looks_like_jwt(password) {
            return None;
        }
        let token = std::str::from_utf8(password).ok()?;
        let now = unix_now();
        let mut last_err = String::from("no token method accepted it");
        // A verifier whose key signed the token and that refused it on policy speaks for it.
        let mut policy_refusal = false;
        if let Some(b) = &self.builtin {
            match b.verify(token) {
                Ok(v) => return Some(grant(v, SubjectMatch::Off, None, connect)),
                Err(e) => {
                    policy_refusal = matches!(e, TokenRejected::Invalid(ref j) if is_policy_refusal(j));
                    last_err = e.to_string();
                }
            }
        }
        if let Some(x) = &self.external {
            match x.verify(token, now).await {
                Ok(mut v) => {
                    // A token accepted within the leeway lives as long as the leeway allows.
                    v.expires_at = v.expires_at.saturating_add(x.settings.leeway_secs);
                    return Some(grant(v, x.subject_must_match, Some(&x.scopes), connect));
                }
                Err(e) if !policy_refusal || is_policy_refusal(&e) => {
                    policy_refusal = is_policy_refusal(&e);
                    last_err = e.to_string();
                }
                Err(_) => {}
            }
        }
        // The reason is logged; the token never is.
        info!(client_id = %Escaped(&connect.client_id), reason = %Escaped(&last_err), "access token refused");
        Some(Err(if policy_refusal { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::BAD_USER_NAME_OR_PASSWORD }))
    }
}

/// A genuine token (its signature verified) refused on policy: the CONNECT gets 0x87.
fn is_policy_refusal(e: &JwtError) -> bool {
    matches!(e, JwtError::WrongType | JwtError::LifetimeTooLong)
}

/// The principal a verified token stands for, once its subject passes the configured rule.
/// `outside`: the token came from the `[auth.jwt]` issuer, whose scopes are mapped by this;
/// `None`: the built-in token service issued it (its scopes are the native grammar, and its
/// OAuth client is the token's `client_id`, else its subject).
fn grant(
    v: VerifiedToken,
    rule: SubjectMatch,
    outside: Option<&ScopeMap>,
    connect: &Connect,
) -> Result<(Principal, TokenInfo), ReasonCode> {
    let subject_ok = match rule {
        SubjectMatch::Off => true,
        SubjectMatch::Username => connect.username.as_deref() == Some(v.subject.as_str()),
        SubjectMatch::ClientId => connect.client_id == v.subject,
    };
    if !subject_ok || warden_policy::cert::check_identity(&v.subject).is_err() {
        return Err(ReasonCode::NOT_AUTHORIZED);
    }
    let credential = TokenRef {
        jti: v.jti.as_deref().map(Into::into),
        oauth_client: outside.is_none().then(|| v.client_id.as_deref().unwrap_or(&v.subject).into()),
    };
    let (scopes, roles) = match outside {
        None => (v.scopes, v.roles),
        Some(map) => {
            // The issuer's grammar, translated once: the principal keeps native scopes, so the
            // grants are the same after a restart (re-derived from them).
            let m = map.map(&v.scopes);
            if m.unmapped > 0 {
                tracing::debug!(subject = %Escaped(&v.subject), unmapped = m.unmapped, "token scopes that grant nothing");
            }
            let mut roles = v.roles;
            for r in m.roles {
                if !roles.contains(&r) {
                    roles.push(r);
                }
            }
            (m.scopes, roles)
        }
    };
    let principal = Principal::token(
        &v.subject,
        roles.iter().map(|r| Arc::from(r.as_str())).collect(),
        scopes.iter().map(|s| Arc::from(s.as_str())).collect(),
    )
    .with_credential(CredentialSource::Token, Some(Credential::Token(credential)));
    Ok((principal, TokenInfo { jti: v.jti, expires_at: v.expires_at }))
}

impl External {
    async fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, JwtError> {
        match jwt::verify(token, &self.static_keys, &self.settings, now) {
            Ok(v) => return Ok(v),
            Err(JwtError::UnknownKid | JwtError::NoMatchingKey) if self.url.is_some() => {}
            Err(e) => return Err(e),
        }
        let first = {
            let keys = self.url_keys.read();
            jwt::verify(token, &keys, &self.settings, now)
        };
        match first {
            Err(JwtError::UnknownKid | JwtError::NoMatchingKey) => {}
            other => return other,
        }
        // Unknown kid: refresh the JWKS, rate-limited.
        let Some(url) = self.url.clone() else { return first };
        {
            let mut last = self.last_fetch.lock();
            if last.is_some_and(|t| t.elapsed() < JWKS_REFRESH_INTERVAL) {
                return first;
            }
            *last = Some(Instant::now());
        }
        match tokio::task::spawn_blocking(move || fetch_jwks(&url)).await {
            Ok(Ok(k)) => {
                info!(keys = k.len(), "JWKS refreshed (unknown kid)");
                *self.url_keys.write() = k;
            }
            Ok(Err(e)) => warn!(error = %e, "JWKS refresh failed"),
            Err(_) => {}
        }
        let keys = self.url_keys.read();
        jwt::verify(token, &keys, &self.settings, now)
    }
}
