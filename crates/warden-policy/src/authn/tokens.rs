//! Access tokens in the CONNECT password field (SPEC §4, method 3): tokens minted by the
//! built-in token service ([`TokenIssuer`]: its keys, its revocations, its client registry),
//! and tokens from an outside issuer ([`ExternalIssuer`]: a JWKS file or URL, or an HS256
//! secret).
//!
//! Refusals: v5 0x86 (v3 0x04) for a token that is not a valid credential (bad signature,
//! unknown key, malformed, expired, not yet valid, wrong issuer or audience, revoked, its
//! client gone or narrowed); 0x87 (v3 0x05) for a genuine token that policy refuses — a `typ`
//! that is not accepted, a lifetime over the maximum, a subject the configured rule refuses.
//! Keys offered inside a token (`jku`, `jwk`, `x5u`) are never used (see [`crate::jwt`]).

use std::sync::Arc;

use mqtt_codec::ReasonCode;

use super::{Cause, ConnectView, Context};
use crate::authz::ScopeMap;
use crate::jwt::{self, JwtError, JwtSettings, KeySet, VerifiedToken};
use crate::trust::{ClientGrants, Credential, CredentialSource, TokenRef};
use crate::Principal;

/// What a verified token grants, beyond the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Token id (`jti`), for revocation.
    pub jti: Option<String>,
    /// Expiry (unix seconds): the connection is closed then.
    pub expires_at: u64,
}

/// `[auth.jwt] subject_must_match`: which CONNECT field a token's subject must equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubjectRule {
    /// No requirement.
    #[default]
    Off,
    /// `sub` must equal the CONNECT user name.
    Username,
    /// `sub` must equal the client id.
    ClientId,
}

/// The outside issuer (`[auth.jwt]`), as the chain reads it.
#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    /// The claim checks.
    pub settings: JwtSettings,
    /// Keys from the JWKS file and the HS256 secret.
    pub static_keys: KeySet,
    /// A JWKS URL is configured: a token naming an unknown key asks for a refresh
    /// ([`super::Step::NeedJwks`]); the keys fetched so far are [`Context::jwks`].
    pub fetches_jwks: bool,
    /// The subject rule.
    pub subject_rule: SubjectRule,
    /// How the issuer's scopes become grants.
    pub scopes: ScopeMap,
}

/// The built-in token service, as the chain reads it: its keys and claim checks, its
/// revocation set and its OAuth client registry.
pub trait TokenIssuer {
    /// The public keys (current and rotated out).
    fn keys(&self) -> Arc<KeySet>;
    /// The claim checks applied to its tokens.
    fn settings(&self) -> JwtSettings;
    /// True when the token with this `jti` was revoked.
    fn is_revoked(&self, jti: &str) -> bool;
    /// What the OAuth client with this id may hold now (`None`: not registered).
    fn client(&self, id: &str) -> Option<ClientGrants>;
    /// True when a client with this id is registered.
    fn has_client(&self, id: &str) -> bool {
        self.client(id).is_some()
    }
}

/// Why a token of the built-in service was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuedRejected {
    /// Bad signature, unknown `kid`, wrong issuer/audience, expired, malformed...
    #[error("invalid token: {0}")]
    Invalid(#[from] JwtError),
    /// No `jti`: every token the service issues has one (revocation needs it).
    #[error("token has no jti")]
    MissingJti,
    /// Its client no longer has every scope or role the token carries.
    #[error("token grants more than its client now has (client narrowed)")]
    Narrowed,
    /// Revoked through `/oauth/revoke`.
    #[error("token has been revoked")]
    Revoked,
    /// The client the token was issued to is no longer configured.
    #[error("token's client is no longer registered")]
    UnknownClient,
}

/// The OAuth client a token of the built-in service was issued to: its `client_id`, else its
/// subject.
pub fn token_client(token: &VerifiedToken) -> &str {
    token.client_id.as_deref().unwrap_or(&token.subject)
}

/// Verify a token the built-in service issued: signature by one of its keys, issuer,
/// audience, expiry, a `jti` that is not revoked, and a client that is still registered and
/// still holds every scope and role the token carries (a client narrowed since: refused
/// rather than honoured until it expires, SPEC §10).
pub fn verify_issued(token: &str, issuer: &dyn TokenIssuer, now: u64) -> Result<VerifiedToken, IssuedRejected> {
    let keys = issuer.keys();
    let verified = jwt::verify(token, &keys, &issuer.settings(), now)?;
    let jti = verified.jti.as_deref().ok_or(IssuedRejected::MissingJti)?;
    if issuer.is_revoked(jti) {
        return Err(IssuedRejected::Revoked);
    }
    let Some(client) = issuer.client(token_client(&verified)) else {
        return Err(IssuedRejected::UnknownClient);
    };
    let within = verified.scopes.iter().all(|s| client.scopes.contains(s))
        && verified.roles.iter().all(|r| client.roles.contains(r));
    if !within {
        return Err(IssuedRejected::Narrowed);
    }
    Ok(verified)
}

/// A genuine token (its signature verified) refused on policy: the CONNECT gets 0x87.
fn is_policy_refusal(e: &JwtError) -> bool {
    matches!(e, JwtError::WrongType | JwtError::LifetimeTooLong)
}

/// What token verification came to.
#[derive(Debug)]
pub(super) enum Outcome {
    Granted(Principal, TokenInfo),
    Refused { code: ReasonCode, cause: Cause },
    NeedJwks(PendingToken),
}

/// An outside token waiting for a JWKS refresh.
pub(super) struct PendingToken {
    token: String,
    policy_refusal: bool,
    last_err: String,
    /// What the keys held so far said (the answer when no fresh keys come).
    first: JwtError,
}

impl std::fmt::Debug for PendingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingToken").field("first", &self.first).finish_non_exhaustive()
    }
}

/// Verify a token sent as the CONNECT password. `None`: not a token (or no token method), so
/// the other methods decide.
pub(super) fn verify(ctx: &Context<'_>, password: &[u8], now: u64, view: &ConnectView<'_>) -> Option<Outcome> {
    if !ctx.tokens_enabled() || !jwt::looks_like_jwt(password) {
        return None;
    }
    let token = std::str::from_utf8(password).ok()?;
    let mut last_err = String::from("no token method accepted it");
    // A verifier whose key signed the token and that refused it on policy speaks for it.
    let mut policy_refusal = false;
    if let Some(issuer) = ctx.issuer {
        match verify_issued(token, issuer, now) {
            Ok(v) => return Some(grant(v, SubjectRule::Off, None, view)),
            Err(e) => {
                policy_refusal = matches!(e, IssuedRejected::Invalid(ref j) if is_policy_refusal(j));
                last_err = e.to_string();
            }
        }
    }
    if let Some(x) = ctx.external {
        let first = match jwt::verify(token, &x.static_keys, &x.settings, now) {
            Err(JwtError::UnknownKid | JwtError::NoMatchingKey) if x.fetches_jwks => {
                let held = ctx.jwks.as_deref().cloned().unwrap_or_else(KeySet::empty);
                jwt::verify(token, &held, &x.settings, now)
            }
            other => other,
        };
        match first {
            // Unknown kid: the shell refreshes the JWKS (rate-limited) and resumes.
            Err(e @ (JwtError::UnknownKid | JwtError::NoMatchingKey)) if x.fetches_jwks => {
                return Some(Outcome::NeedJwks(PendingToken {
                    token: token.to_owned(),
                    policy_refusal,
                    last_err,
                    first: e,
                }))
            }
            other => return Some(external_result(x, other, policy_refusal, last_err, view)),
        }
    }
    Some(refused(policy_refusal, last_err))
}

/// Resume an outside token after a JWKS refresh (`keys`: the fresh set, `None`: none came).
pub(super) fn after_refresh(
    ctx: &Context<'_>,
    pending: PendingToken,
    keys: Option<&KeySet>,
    now: u64,
    view: &ConnectView<'_>,
) -> Outcome {
    let PendingToken { token, policy_refusal, last_err, first } = pending;
    let Some(x) = ctx.external else { return refused(policy_refusal, last_err) };
    let result = match keys {
        Some(k) => jwt::verify(&token, k, &x.settings, now),
        None => Err(first),
    };
    external_result(x, result, policy_refusal, last_err, view)
}

fn external_result(
    x: &ExternalIssuer,
    result: Result<VerifiedToken, JwtError>,
    mut policy_refusal: bool,
    mut last_err: String,
    view: &ConnectView<'_>,
) -> Outcome {
    match result {
        Ok(mut v) => {
            // A token accepted within the leeway lives as long as the leeway allows.
            v.expires_at = v.expires_at.saturating_add(x.settings.leeway_secs);
            return grant(v, x.subject_rule, Some(&x.scopes), view);
        }
        Err(e) if !policy_refusal || is_policy_refusal(&e) => {
            policy_refusal = is_policy_refusal(&e);
            last_err = e.to_string();
        }
        Err(_) => {}
    }
    refused(policy_refusal, last_err)
}

fn refused(policy_refusal: bool, reason: String) -> Outcome {
    let code = if policy_refusal { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::BAD_USER_NAME_OR_PASSWORD };
    Outcome::Refused { code, cause: Cause::Token(reason) }
}

/// The principal a verified token stands for, once its subject passes the configured rule.
/// `outside`: the token came from the `[auth.jwt]` issuer, whose scopes are mapped by this;
/// `None`: the built-in token service issued it (its scopes are the native grammar, and its
/// OAuth client is the token's `client_id`, else its subject).
fn grant(v: VerifiedToken, rule: SubjectRule, outside: Option<&ScopeMap>, view: &ConnectView<'_>) -> Outcome {
    let subject_ok = match rule {
        SubjectRule::Off => true,
        SubjectRule::Username => view.username == Some(v.subject.as_str()),
        SubjectRule::ClientId => view.client_id == v.subject,
    };
    if !subject_ok || crate::cert::check_identity(&v.subject).is_err() {
        return Outcome::Refused { code: ReasonCode::NOT_AUTHORIZED, cause: Cause::Subject };
    }
    let credential = TokenRef {
        jti: v.jti.as_deref().map(Into::into),
        oauth_client: outside.is_none().then(|| token_client(&v).into()),
        expires_at: Some(v.expires_at),
    };
    let (scopes, roles) = match outside {
        None => (v.scopes, v.roles),
        Some(map) => {
            // The issuer's grammar, translated once: the principal keeps native scopes, so the
            // grants are the same after a restart (re-derived from them).
            let m = map.map(&v.scopes);
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
    Outcome::Granted(principal, TokenInfo { jti: v.jti, expires_at: v.expires_at })
}
