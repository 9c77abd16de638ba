//! The token service's shared state: OAuth clients, signing keys (with rotation), issued-token
//! verification and the revocation list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use parking_lot::{Mutex, RwLock};
use rand::RngCore as _;
use warden_policy::jwt::{self, AccessClaims, JwtSettings, KeySet, SigningKey, VerifiedToken};

use crate::secrets::{CheckRefused, SecretChecks};

/// Revoked token ids are remembered this long after the token's `exp`, so that a verifier
/// with clock leeway (`[auth.jwt] leeway`) still sees the revocation.
pub const REVOCATION_GRACE_SECS: u64 = 300;

/// An OAuth client allowed the client-credentials grant.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClient {
    /// The client id; also the access token's `sub`.
    pub id: String,
    /// The secret's hash, any format [`warden_policy::password::verify_hash`] accepts (argon2id from
    /// `warden passwd --hash-only`).
    pub secret_hash: String,
    /// Scopes the client may request; the default grant is all of them.
    pub scopes: Vec<String>,
    /// Roles copied into every token the client gets (never narrowed by `scope`).
    pub roles: Vec<String>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("id", &self.id)
            .field("secret_hash", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("roles", &self.roles)
            .finish()
    }
}

/// Token service settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    /// The `iss` of issued tokens and the RFC 8414 `issuer`: the service's base URL (endpoint
    /// URLs are this plus their path), e.g. `https://broker.example:8443`.
    pub issuer: String,
    /// Lifetime of issued tokens (whole seconds; at least 1 s).
    pub token_ttl: Duration,
    /// The `aud` of issued tokens, also required when verifying them.
    pub audience: Option<String>,
}

/// Why [`OAuthService::verify`] refused a token: the decision is
/// [`warden_policy::authn::tokens::verify_issued`]'s, the one the CONNECT chain makes.
pub use warden_policy::authn::IssuedRejected as TokenRejected;

/// A freshly issued access token.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) access_token: String,
    pub(crate) expires_in: u64,
    pub(crate) scope: String,
    pub(crate) jti: String,
}

/// Why a token request's `scope` was refused (`invalid_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScopeError {
    /// Not the RFC 6749 §3.3 grammar.
    Malformed,
    /// A scope the client is not allowed.
    NotAllowed,
}

type RevokeCallback = Arc<dyn Fn(&str) + Send + Sync>;

struct Keys {
    /// First = the current signer; the rest are rotated out but still published.
    signers: Vec<SigningKey>,
    /// The public keys of the other nodes' token services (a cluster: SPEC §11), each a JWK
    /// that parses on its own; their tokens verify here too.
    peers: Vec<serde_json::Value>,
    jwks: serde_json::Value,
    key_set: Arc<KeySet>,
}

impl Keys {
    fn new(signers: Vec<SigningKey>, peers: Vec<serde_json::Value>) -> Keys {
        let own: Vec<serde_json::Value> = signers.iter().map(SigningKey::jwk).collect();
        let peers: Vec<serde_json::Value> =
            peers.into_iter().filter(|p| !own.iter().any(|o| o.get("kid") == p.get("kid"))).collect();
        let jwks = serde_json::json!({ "keys": own.iter().chain(&peers).collect::<Vec<_>>() });
        let key_set = KeySet::from_jwks_json(&jwks.to_string()).unwrap_or_else(|e| {
            // Unreachable: every peer key parsed on its own before it was kept.
            tracing::error!(error = %e, "oauth: the key set does not parse; the peers' keys are left out");
            let own = serde_json::json!({ "keys": own });
            KeySet::from_jwks_json(&own.to_string()).unwrap_or_default()
        });
        Keys { signers, peers, jwks, key_set: Arc::new(key_set) }
    }
}

/// Shared state of the token service. Clock injected for tests.
pub struct OAuthService {
    settings: OAuthSettings,
    clients: RwLock<Arc<HashMap<String, OAuthClient>>>,
    keys: RwLock<Keys>,
    /// Revoked `jti` → the token's `exp`.
    revoked: Mutex<HashMap<String, u64>>,
    on_revoke: RwLock<Vec<RevokeCallback>>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The failure guard and the hashing budget every secret check goes through.
    checks: RwLock<SecretChecks>,
}

impl std::fmt::Debug for OAuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthService")
            .field("settings", &self.settings)
            .field("clients", &self.clients.read().len())
            .field("kid", &self.current_kid())
            .finish_non_exhaustive()
    }
}

impl OAuthService {
    /// `keys`: the first signs new tokens; the rest (rotated out) stay in the JWKS so their
    /// tokens keep verifying. With no key at all, one is generated (and lost at exit: pass a
    /// persisted key). `clock` returns seconds since the Unix epoch.
    pub fn new(
        settings: OAuthSettings,
        clients: Vec<OAuthClient>,
        keys: Vec<SigningKey>,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        let keys = if keys.is_empty() {
            tracing::warn!("oauth: no signing key given; generated an ephemeral one");
            vec![SigningKey::generate()]
        } else {
            dedup_kids(keys)
        };
        let service = OAuthService {
            settings,
            clients: RwLock::new(Arc::new(HashMap::new())),
            keys: RwLock::new(Keys::new(keys, Vec::new())),
            revoked: Mutex::new(HashMap::new()),
            on_revoke: RwLock::new(Vec::new()),
            clock,
            checks: RwLock::new(SecretChecks::default()),
        };
        service.set_clients(clients);
        service
    }

    /// Client secrets are checked through `checks`: the broker's per-address failure guard
    /// first, then the hashing budget it shares with MQTT (by default: no guard, a budget of
    /// the service's own).
    pub fn with_secret_checks(self, checks: SecretChecks) -> Self {
        self.set_secret_checks(checks);
        self
    }

    /// As [`OAuthService::with_secret_checks`], once the service is shared (the broker makes
    /// its guard after the token service).
    pub fn set_secret_checks(&self, checks: SecretChecks) {
        *self.checks.write() = checks;
    }

    /// The guard and budget client secrets are checked through.
    pub fn secret_checks(&self) -> SecretChecks {
        self.checks.read().clone()
    }

    /// The settings given to [`OAuthService::new`].
    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// Replaces the client list (config reload, admin API). Tokens already issued to a
    /// client that is no longer listed stop verifying. With duplicate ids the first wins.
    pub fn set_clients(&self, clients: Vec<OAuthClient>) {
        let mut map = HashMap::with_capacity(clients.len());
        for client in clients {
            if map.contains_key(&client.id) {
                tracing::warn!(client_id = ?client.id, "oauth: duplicate client id ignored");
                continue;
            }
            map.insert(client.id.clone(), client);
        }
        *self.clients.write() = Arc::new(map);
    }

    /// True when a client with this id is registered.
    pub fn has_client(&self, id: &str) -> bool {
        self.clients.read().contains_key(id)
    }

    /// The current clients.
    pub fn clients(&self) -> Vec<OAuthClient> {
        self.clients.read().values().cloned().collect()
    }

    /// `new_key` signs from now on; the previous keys stay in the JWKS. Rotating to a key
    /// already held makes it current again.
    pub fn rotate(&self, new_key: SigningKey) {
        let mut keys = self.keys.write();
        let mut signers = std::mem::take(&mut keys.signers);
        signers.retain(|k| k.kid() != new_key.kid());
        signers.insert(0, new_key);
        let peers = std::mem::take(&mut keys.peers);
        *keys = Keys::new(signers, peers);
        tracing::info!(kid = keys.signers[0].kid(), "oauth: signing key rotated");
    }

    /// The `kid` of the key signing new tokens.
    pub fn current_kid(&self) -> String {
        self.keys.read().signers[0].kid().to_owned()
    }

    /// The public keys (current and rotated out), for verifying tokens at CONNECT.
    pub fn key_set(&self) -> KeySet {
        (*self.keys.read().key_set).clone()
    }

    /// The JWKS document served at `/.well-known/jwks.json`: this service's keys, then the
    /// other nodes' ([`OAuthService::set_peer_keys`]).
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.read().jwks.clone()
    }

    /// This service's own public keys (current and rotated out), as JWKs: what it shares
    /// with the other nodes of a cluster.
    pub fn own_jwks(&self) -> Vec<serde_json::Value> {
        self.keys.read().signers.iter().map(SigningKey::jwk).collect()
    }

    /// The public keys of the other nodes' token services (a cluster: they issue tokens
    /// with the same issuer, each signing with its own key), replacing the previous ones:
    /// their tokens verify here as this service's own do (same claims, same revocations).
    /// Keys that do not parse as a signing JWK are left out; returns how many were kept.
    pub fn set_peer_keys(&self, jwks: Vec<serde_json::Value>) -> usize {
        let kept: Vec<serde_json::Value> = jwks
            .into_iter()
            .filter(|k| {
                k.get("kid").and_then(serde_json::Value::as_str).is_some()
                    && KeySet::from_jwks_json(&serde_json::json!({ "keys": [k] }).to_string())
                        .is_ok_and(|s| s.len() == 1)
            })
            .collect();
        let n = kept.len();
        let mut keys = self.keys.write();
        let signers = std::mem::take(&mut keys.signers);
        *keys = Keys::new(signers, kept);
        n
    }

    /// The claim checks applied to this service's tokens: `iss` = the issuer, `aud` when
    /// configured, no leeway, `typ` exactly `at+jwt` (what it mints; RFC 9068 §4), and a
    /// lifetime of at most 24 h (the longest `token_ttl`; longer when a longer TTL is set).
    pub fn jwt_settings(&self) -> JwtSettings {
        JwtSettings {
            issuer: Some(self.settings.issuer.clone()),
            audience: self.settings.audience.clone(),
            leeway_secs: 0,
            typ: Some(vec![jwt::TYP_ACCESS_TOKEN.to_owned()]),
            max_lifetime_secs: Some(self.settings.token_ttl.as_secs().max(jwt::DEFAULT_MAX_LIFETIME_SECS)),
        }
    }

    /// Verifies a token this service issued: signature by one of its keys, issuer, audience,
    /// expiry, a `jti` that is not revoked, and a client that is still configured.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenRejected> {
        warden_policy::authn::tokens::verify_issued(token, self, self.now())
    }

    /// True when the token with this `jti` was revoked (and has not long expired).
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.lock().contains_key(jti)
    }

    /// The revoked token ids with their tokens' `exp` (Unix seconds), without those past
    /// `exp` + [`REVOCATION_GRACE_SECS`]: what must survive a restart.
    pub fn revocations(&self) -> Vec<(String, u64)> {
        let now = self.now();
        let mut v: Vec<(String, u64)> = self
            .revoked
            .lock()
            .iter()
            .filter(|(_, exp)| exp.saturating_add(REVOCATION_GRACE_SECS) >= now)
            .map(|(j, e)| (j.clone(), *e))
            .collect();
        v.sort_unstable();
        v
    }

    /// Puts back revocations saved by an earlier run (see [`OAuthService::revocations`]);
    /// entries already past their grace period are skipped. No callbacks are called.
    pub fn restore_revocations(&self, entries: impl IntoIterator<Item = (String, u64)>) {
        let now = self.now();
        let mut revoked = self.revoked.lock();
        for (jti, exp) in entries {
            if exp.saturating_add(REVOCATION_GRACE_SECS) >= now {
                revoked.insert(jti, exp);
            }
        }
    }

    /// Revocations another node of a cluster made: the ones new here are recorded and the
    /// callbacks called for each (their connections end, the file is saved), as for a
    /// revocation made here. Entries past their grace period are skipped. Returns the new
    /// `jti`s.
    pub fn revocations_from_peer(&self, entries: impl IntoIterator<Item = (String, u64)>) -> Vec<String> {
        let now = self.now();
        let mut new = Vec::new();
        {
            let mut revoked = self.revoked.lock();
            for (jti, exp) in entries {
                if exp.saturating_add(REVOCATION_GRACE_SECS) >= now && !revoked.contains_key(&jti) {
                    revoked.insert(jti.clone(), exp);
                    new.push(jti);
                }
            }
        }
        let callbacks = self.on_revoke.read().clone();
        for jti in &new {
            for callback in &callbacks {
                callback(jti);
            }
        }
        new
    }

    /// Registers `f` to be called with the `jti` of each newly revoked token (after the
    /// revocation is recorded). Called on the HTTP task: it must not block (e.g. send on a
    /// channel). Several callbacks may be registered.
    pub fn on_revoke(&self, f: Box<dyn Fn(&str) + Send + Sync>) {
        self.on_revoke.write().push(Arc::from(f));
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Checks a client's secret, from `peer`. First the failure guard (a banned address, or
    /// this client id backing off from it: refused without hashing), then one argon2id
    /// verification on the blocking pool within the HTTP share of the hashing budget (none in
    /// time: busy). Unknown ids cost the same hashing work as known ones (verification against
    /// an unparsable hash does dummy argon2id work), and count as failures alike.
    pub(crate) async fn authenticate(
        &self,
        peer: std::net::IpAddr,
        client_id: &str,
        secret: String,
    ) -> Result<OAuthClient, CheckRefused> {
        let client = self.clients.read().get(client_id).cloned();
        let hash = client.as_ref().map(|c| c.secret_hash.clone()).unwrap_or_default();
        let checks = self.secret_checks();
        checks.verify(peer, client_id, hash, secret.into_bytes()).await?;
        client.ok_or(CheckRefused::Wrong)
    }

    /// Mints a token for an authenticated client. `requested`: the `scope` parameter; each
    /// of its scopes must be one of the client's (never silently narrowed); `None` grants
    /// all the client's scopes.
    pub(crate) fn issue(&self, client: &OAuthClient, requested: Option<&str>) -> Result<Issued, ScopeError> {
        let scopes = match requested {
            None => dedup(client.scopes.iter().map(String::as_str)),
            Some(requested) => {
                let requested = parse_scope(requested).ok_or(ScopeError::Malformed)?;
                if !requested.iter().all(|s| client.scopes.iter().any(|a| a == s)) {
                    return Err(ScopeError::NotAllowed);
                }
                requested
            }
        };
        let scope = scopes.join(" ");
        let ttl = self.settings.token_ttl.as_secs().max(1);
        let issued_at = self.now();
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let jti = URL_SAFE_NO_PAD.encode(id);
        let claims = AccessClaims {
            issuer: self.settings.issuer.clone(),
            subject: client.id.clone(),
            audience: self.settings.audience.clone(),
            client_id: client.id.clone(),
            scope: scope.clone(),
            roles: client.roles.clone(),
            issued_at,
            expires_at: issued_at.saturating_add(ttl),
            jti: jti.clone(),
        };
        let access_token = {
            let keys = self.keys.read();
            jwt::mint(&claims, &keys.signers[0])
        };
        Ok(Issued { access_token, expires_in: ttl, scope, jti })
    }

    /// Revokes `token` on behalf of `client_id`. Tokens that do not verify and tokens of
    /// other clients are left alone (RFC 7009 §2.2: no error either way). Returns the `jti`
    /// when this call revoked it (callbacks have then been called).
    pub(crate) fn revoke(&self, token: &str, client_id: &str) -> Option<String> {
        let verified = self.verify(token).ok()?;
        if token_client(&verified) != client_id {
            return None;
        }
        let jti = verified.jti?;
        let now = self.now();
        {
            let mut revoked = self.revoked.lock();
            revoked.retain(|_, exp| exp.saturating_add(REVOCATION_GRACE_SECS) >= now);
            if revoked.insert(jti.clone(), verified.expires_at).is_some() {
                return None;
            }
        }
        let callbacks = self.on_revoke.read().clone();
        for callback in callbacks {
            callback(&jti);
        }
        Some(jti)
    }
}

impl OAuthService {
    /// Revokes `token` on an administrator's behalf, whichever client it belongs to. `Ok(None)`
    /// when it was already revoked; an error when it is not a valid token of this service
    /// (expired, bad signature, unknown client…).
    pub fn revoke_any(&self, token: &str) -> Result<Option<String>, TokenRejected> {
        let verified = match self.verify(token) {
            Err(TokenRejected::Revoked) => return Ok(None),
            r => r?,
        };
        let jti = verified.jti.ok_or(TokenRejected::MissingJti)?;
        let now = self.now();
        {
            let mut revoked = self.revoked.lock();
            revoked.retain(|_, exp| exp.saturating_add(REVOCATION_GRACE_SECS) >= now);
            if revoked.insert(jti.clone(), verified.expires_at).is_some() {
                return Ok(None);
            }
        }
        let callbacks = self.on_revoke.read().clone();
        for callback in callbacks {
            callback(&jti);
        }
        Ok(Some(jti))
    }
}

/// The client a verified token belongs to: `client_id`, else `sub`.
pub(crate) use warden_policy::authn::tokens::token_client;

/// RFC 6749 §3.3: `scope-token *( SP scope-token )`, `scope-token = 1*( %x21 / %x23-5B /
/// %x5D-7E )`. Duplicates are dropped (first occurrence kept).
pub(crate) fn parse_scope(s: &str) -> Option<Vec<String>> {
    let tokens: Vec<&str> = s.split(' ').collect();
    let valid = |t: &str| {
        !t.is_empty() && t.bytes().all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
    };
    if !tokens.iter().all(|t| valid(t)) {
        return None;
    }
    Some(dedup(tokens.into_iter()))
}

fn dedup<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_owned());
        }
    }
    out
}

fn dedup_kids(keys: Vec<SigningKey>) -> Vec<SigningKey> {
    let mut out: Vec<SigningKey> = Vec::with_capacity(keys.len());
    for key in keys {
        if !out.iter().any(|k| k.kid() == key.kid()) {
            out.push(key);
        }
    }
    out
}

/// The built-in token service as the CONNECT chain reads it (`warden_policy::authn`): its keys
/// and claim checks, its revocation set and its client registry.
impl warden_policy::authn::TokenIssuer for OAuthService {
    fn keys(&self) -> Arc<KeySet> {
        self.keys.read().key_set.clone()
    }

    fn settings(&self) -> JwtSettings {
        self.jwt_settings()
    }

    fn is_revoked(&self, jti: &str) -> bool {
        OAuthService::is_revoked(self, jti)
    }

    fn client(&self, id: &str) -> Option<warden_policy::trust::ClientGrants> {
        self.clients
            .read()
            .get(id)
            .map(|c| warden_policy::trust::ClientGrants { scopes: c.scopes.clone(), roles: c.roles.clone() })
    }

    fn has_client(&self, id: &str) -> bool {
        OAuthService::has_client(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_grammar() {
        assert_eq!(parse_scope("a mqtt:pub:x/# a"), Some(vec!["a".to_owned(), "mqtt:pub:x/#".to_owned()]));
        assert_eq!(parse_scope("a  b"), None); // empty token
        assert_eq!(parse_scope(" a"), None);
        assert_eq!(parse_scope("a\"b"), None);
        assert_eq!(parse_scope("a\\b"), None);
        assert_eq!(parse_scope("a\tb"), None);
        assert_eq!(parse_scope("é"), None);
    }
}
