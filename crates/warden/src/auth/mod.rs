//! Authentication of CONNECT credentials (SPEC §4): a verified client certificate, an access
//! token in the password field ([`crate::auth::tokens`]), the password file, the policy store's users
//! ([`crate::admin::policy_store`]), then anonymous access.
//!
//! Refusals look the same whether the user exists or not: the same reason code, and the same
//! slow-hash work (the password file verifies unknown users against a dummy hash). Secrets are
//! never logged. Hashing runs on the blocking pool, a few at a time (`auth_hash_concurrency`, by
//! default the cores minus one; one budget shared with the HTTP side, which may hold at most
//! `auth_hash_http_max` of the slots: [`warden_http::HashBudget`]), so a flood of CONNECTs or of
//! HTTP requests with wrong secrets can neither exhaust memory (argon2id uses ~19 MiB per
//! verification) nor take every core; a CONNECT that waits longer than `auth_hash_wait` for a
//! slot is refused with Server busy. (A SCRAM exchange costs no slow hash on the broker: the
//! stored keys are checked with HMACs; the client derives the salted password.)

pub mod lookup;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mqtt_codec::{Connect, ReasonCode};
use parking_lot::RwLock;
use warden_http::{HashBudget, HashClass, HashError};
use warden_policy::password::PasswordFile;
use warden_policy::trust::{CertChain, Credential, CredentialSource};
use warden_policy::{Principal, PrincipalKind};

use crate::auth::lookup::{HttpLookup, LookupRequest, LookupVerdict};
use crate::auth::tokens::{TokenAuth, TokenInfo};
use crate::config::{AuthConfig, ClientIdMatch, IdentityConfig};
use crate::tls::{CertIdentity, ClientCert};
use tracing::info;

/// Who a connection is, and for how long (token-authenticated connections end at expiry).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The principal.
    pub principal: Principal,
    /// The access token it authenticated with, if any.
    pub token: Option<TokenInfo>,
}

impl From<Principal> for Authenticated {
    fn from(principal: Principal) -> Self {
        Authenticated { principal, token: None }
    }
}

/// Why a CONNECT was refused: the reason code, and — for Server busy — which of the broker's
/// own limits was full (the credentials were then not judged: not a failed login).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The v5 reason code (mapped for v3 clients when written).
    pub code: ReasonCode,
    /// Set with [`ReasonCode::SERVER_BUSY`].
    pub busy: Option<Busy>,
}

/// Which of the broker's own limits was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// No password-verification slot within `auth_hash_wait`.
    Hashing,
    /// Every look-up slot (`[auth.http] max_in_flight`) taken.
    Lookup,
}

impl Refusal {
    fn busy(why: Busy) -> Refusal {
        Refusal { code: ReasonCode::SERVER_BUSY, busy: Some(why) }
    }
}

impl From<ReasonCode> for Refusal {
    fn from(code: ReasonCode) -> Refusal {
        Refusal { code, busy: None }
    }
}

/// Concurrent password verifications for `auth_hash_concurrency = 0`: the number of cores
/// minus one (at least 1), so a flood of CONNECTs with passwords leaves a core to the broker.
pub fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1).max(1)
}

/// Characters that may follow the principal's name in a `prefix` client id: `dev-1` may use
/// `dev-1`, `dev-1-a`, `dev-1/sensor`, `dev-1:2`, `dev-1.x` or `dev-1_b`, never `dev-10`.
pub const CLIENT_ID_DELIMITERS: [char; 5] = ['-', '/', ':', '.', '_'];

/// `client_id` is `name`, or `name` followed by a delimiter ([`CLIENT_ID_DELIMITERS`]).
fn has_prefix(client_id: &str, name: &str) -> bool {
    match client_id.strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest.starts_with(CLIENT_ID_DELIMITERS),
        None => false,
    }
}

/// Decides who a CONNECT is.
pub struct Authenticator {
    allow_anonymous: bool,
    tokens: TokenAuth,
    lookup: Option<HttpLookup>,
    client_id_rule: ClientIdMatch,
    reserve_names: bool,
    password_path: Option<PathBuf>,
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    /// Users of the policy store with a password (enabled ones only), as a password file.
    store_users: RwLock<Option<Arc<PasswordFile>>>,
    /// Names disabled in the policy store: refused whichever method names them (SPEC §10).
    disabled: RwLock<Arc<std::collections::HashSet<String>>>,
    /// The process-wide hashing budget (shared with the HTTP side).
    hashing: Arc<HashBudget>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("password_path", &self.password_path)
            .finish_non_exhaustive()
    }
}

fn load_file(path: &PathBuf) -> anyhow::Result<PasswordFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{}: cannot read password file", path.display()))?;
    PasswordFile::parse(&text).map_err(|e| crate::config::file_line_error(path, &e))
}

impl Authenticator {
    /// Load the password file named by the configuration (if any).
    pub fn load(cfg: &AuthConfig, identity: IdentityConfig, tokens: TokenAuth) -> anyhow::Result<Self> {
        let passwords = match &cfg.password_file {
            Some(p) => Some(Arc::new(load_file(p)?)),
            None => None,
        };
        let lookup = cfg.lookup.clone().map(HttpLookup::new).transpose()?;
        Ok(Authenticator {
            allow_anonymous: cfg.allow_anonymous,
            tokens,
            lookup,
            client_id_rule: identity.client_id_must_match,
            reserve_names: identity.reserve_principal_names,
            password_path: cfg.password_file.clone(),
            passwords: RwLock::new(passwords),
            store_users: RwLock::new(None),
            disabled: RwLock::default(),
            hashing: HashBudget::new(default_hash_concurrency(), 0, Duration::from_secs(2)),
        })
    }

    /// Password verifications take a slot of `budget` (the process-wide hashing budget, shared
    /// with the HTTP side): a CONNECT that waits longer than the budget's wait for a slot is
    /// refused with Server busy (0x89). Waiting CONNECTs are served in arrival order.
    pub fn with_hash_budget(mut self, budget: Arc<HashBudget>) -> Self {
        self.hashing = budget;
        self
    }

    /// The hashing budget password verifications take their slots from.
    pub fn hash_budget(&self) -> &Arc<HashBudget> {
        &self.hashing
    }

    /// True when the CONNECT carries a user name and a password that would be checked as a
    /// password (not an access token): the attempts that per-user backoff guards against
    /// guessing. A wrong token is not a guess (its signature cannot be found by trying); it
    /// counts towards the address's ban only.
    pub fn is_password_attempt(&self, connect: &mqtt_codec::Connect) -> bool {
        match (&connect.username, &connect.password) {
            (Some(_), Some(pw)) => !(self.tokens.enabled() && warden_policy::jwt::looks_like_jwt(pw)),
            _ => false,
        }
    }

    /// True when SCRAM-SHA-256 can run: a password file is configured (users with SCRAM lines
    /// can complete it; others fail at the proof, indistinguishably).
    pub fn scram_enabled(&self) -> bool {
        self.passwords.read().is_some()
    }

    /// SCRAM credentials of `user` (None: unknown user or a non-SCRAM line).
    pub fn scram_credentials(&self, user: &str) -> Option<warden_policy::password::ScramCredentials> {
        self.passwords.read().as_ref().and_then(|f| f.scram_credentials(user))
    }

    /// The password file in use, if any.
    pub fn password_path(&self) -> Option<&std::path::Path> {
        self.password_path.as_deref()
    }

    /// Number of users in the password file.
    pub fn user_count(&self) -> usize {
        self.passwords.read().as_ref().map_or(0, |p| p.len())
    }

    /// The policy store's users (those enabled and with a password), applied at once.
    pub fn set_store_users(&self, users: PasswordFile) {
        *self.store_users.write() = (!users.is_empty()).then(|| Arc::new(users));
    }

    /// True when `name` is a user of the password file or the policy store, or a client of the
    /// built-in token service.
    fn is_principal_name(&self, name: &str) -> bool {
        self.passwords.read().as_ref().is_some_and(|f| f.contains(name))
            || self.store_users.read().as_ref().is_some_and(|f| f.contains(name))
            || self.tokens.is_oauth_client(name)
    }

    /// The names the policy store has disabled, applied at once to new CONNECTs.
    pub fn set_disabled(&self, names: Arc<std::collections::HashSet<String>>) {
        *self.disabled.write() = names;
    }

    /// True when `name` is disabled in the policy store.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.disabled.read().contains(name)
    }

    /// The file that decides `user` and the credential source it stands for: the password
    /// file when it names the user, else the policy store when it does, else the password file
    /// (or the store when there is no password file), so an unknown user costs the same dummy
    /// hash either way.
    fn file_for(&self, user: &str) -> Option<(Arc<PasswordFile>, CredentialSource)> {
        let file = self.passwords.read().clone();
        let store = self.store_users.read().clone();
        match (file, store) {
            (Some(f), _) if f.contains(user) => Some((f, CredentialSource::PasswordFile)),
            (_, Some(s)) if s.contains(user) => Some((s, CredentialSource::StoreUser)),
            (Some(f), _) => Some((f, CredentialSource::PasswordFile)),
            (None, s) => s.map(|s| (s, CredentialSource::StoreUser)),
        }
    }

    /// Re-read the password file (SIGHUP). On error the old file stays in force. Returns the
    /// file now in force (`None`: no password file is configured).
    pub fn reload(&self) -> anyhow::Result<Option<Arc<PasswordFile>>> {
        let Some(path) = &self.password_path else { return Ok(None) };
        let file = Arc::new(load_file(path)?);
        *self.passwords.write() = Some(file.clone());
        Ok(Some(file))
    }

    /// `[identity] client_id_must_match`: may this principal use this client id? Anonymous
    /// clients are exempt (they have no name to match). Refusal: 0x85 (v3 0x02).
    pub fn check_client_id(&self, principal: &Principal, client_id: &str) -> Result<(), ReasonCode> {
        // A client id named like another principal the broker knows is that principal's: no
        // other principal (anonymous included) may take it and hold its session (SPEC §3, §10).
        // A fail-open client only claimed its name: it is not that principal.
        let own = client_id == &*principal.name && principal.kind != PrincipalKind::Fallback;
        if self.reserve_names && !own && self.is_principal_name(client_id) {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        if principal.kind == PrincipalKind::Anonymous {
            return Ok(());
        }
        let ok = match self.client_id_rule {
            ClientIdMatch::Off => true,
            ClientIdMatch::Exact => client_id == &*principal.name,
            ClientIdMatch::Prefix => has_prefix(client_id, &principal.name),
        };
        if ok {
            Ok(())
        } else {
            Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        }
    }

    /// Authenticate a CONNECT. Refusals carry the v5 reason code (mapped for v3 clients):
    /// 0x86 bad user name or password, 0x87 not authorized (anonymous refused, or a
    /// certificate whose identity is refused), 0x88 the look-up service unavailable, 0x89
    /// server busy (no password-verification slot within `auth_hash_wait`, or every look-up
    /// slot taken: not a failed login; [`Refusal::busy`] says which).
    ///
    /// A verified client certificate (`cert`) authenticates the connection at the transport:
    /// the principal is the certificate identity and the CONNECT's user name and password are
    /// not consulted. Without one, the password file decides, then anonymous access.
    pub async fn authenticate(
        &self,
        connect: &Connect,
        cert: CertIdentity,
        peer: SocketAddr,
    ) -> Result<Authenticated, Refusal> {
        let a = self.authenticate_any(connect, cert, peer).await?;
        // A name disabled in the policy store is refused whichever method proved it (SPEC §10).
        if a.principal.kind != PrincipalKind::Anonymous && self.is_disabled(&a.principal.name) {
            return Err(ReasonCode::NOT_AUTHORIZED.into());
        }
        Ok(a)
    }

    async fn authenticate_any(
        &self,
        connect: &Connect,
        cert: CertIdentity,
        peer: SocketAddr,
    ) -> Result<Authenticated, Refusal> {
        let (cert_identity, cert_ref) = match cert {
            Some(ClientCert { identity: Ok(name), cert }) if self.lookup.is_none() => {
                let p = Principal::certificate(&name)
                    .with_credential(CredentialSource::Certificate, cert.map(Credential::Certificate));
                return Ok(p.into());
            }
            Some(ClientCert { identity: Ok(name), cert }) => (Some(name), cert),
            Some(ClientCert { identity: Err(_), .. }) => return Err(ReasonCode::NOT_AUTHORIZED.into()),
            None => (None, None),
        };
        if let Some(name) = cert_identity {
            // With a look-up service the certificate identity is still the principal; the
            // service may add grants (or refuse).
            return self.look_up(connect, peer, Some(name), cert_ref).await.map(Authenticated::from);
        }
        if let Some(password) = &connect.password {
            if let Some(r) = self.tokens.authenticate(connect, password).await {
                return r
                    .map(|(principal, token)| Authenticated { principal, token: Some(token) })
                    .map_err(Refusal::from);
            }
        }
        let file_knows_user =
            connect.username.as_deref().is_some_and(|u| self.file_for(u).is_some_and(|(f, _)| f.contains(u)));
        if self.lookup.is_some() && connect.username.is_some() && !file_knows_user {
            return self.look_up(connect, peer, None, None).await.map(Authenticated::from);
        }
        self.authenticate_password(connect).await.map(Authenticated::from).map_err(|code| {
            if code == ReasonCode::SERVER_BUSY {
                Refusal::busy(Busy::Hashing)
            } else {
                code.into()
            }
        })
    }

    /// The third-party look-up decides (`[auth.http]`): its principal name and grants, a
    /// refusal (0x86), 0x89 when the broker's own look-up slots are all taken, or — when the
    /// service cannot be reached — 0x88, unless `fail_open` with a `fallback_role`: then an
    /// unverified [`Principal::fallback`] holding that role only.
    async fn look_up(
        &self,
        connect: &Connect,
        peer: SocketAddr,
        cert_identity: Option<String>,
        cert_ref: Option<CertChain>,
    ) -> Result<Principal, Refusal> {
        // The look-up's answer is the credential; a certificate behind it stays revocable.
        let credential = cert_ref.map(Credential::Certificate);
        let Some(lookup) = &self.lookup else { return Err(ReasonCode::NOT_AUTHORIZED.into()) };
        let req = LookupRequest {
            client_id: connect.client_id.clone(),
            username: connect.username.clone(),
            password: connect.password.as_ref().map(|p| p.to_vec()),
            peer,
            cert_identity: cert_identity.clone(),
        };
        match lookup.check(&req).await {
            LookupVerdict::Allow(grant) => {
                let mut p = match &cert_identity {
                    Some(name) => Principal::certificate(name),
                    None => Principal::user(&grant.principal),
                }
                .with_credential(CredentialSource::Lookup, credential);
                p.roles = grant.roles.iter().map(|r| Arc::from(r.as_str())).collect();
                p.scopes = grant.scopes.iter().map(|r| Arc::from(r.as_str())).collect();
                p.set_grants(grant.rules().map(Arc::new));
                Ok(p)
            }
            LookupVerdict::Deny => Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD.into()),
            // The broker's own overload: never a reason to let anyone in.
            LookupVerdict::Busy => Err(Refusal::busy(Busy::Lookup)),
            LookupVerdict::Unavailable => {
                // fail_open: the name the client gave (or its certificate's), unverified by the
                // service, as a fallback principal — its role only, no one else's grants or
                // sessions. The name must be a safe identity (it appears in logs and audits).
                let claimed = cert_identity.as_deref().or(connect.username.as_deref());
                match (lookup.fallback_role(), claimed) {
                    (Some(role), Some(name)) if warden_policy::cert::check_identity(name).is_ok() => {
                        info!(client_id = %crate::logsafe::Escaped(&connect.client_id), claimed = %crate::logsafe::Escaped(name),
                            %peer, role, "HTTP look-up unavailable: admitted as a fail-open fallback principal");
                        Ok(Principal::fallback(name, role))
                    }
                    _ => Err(ReasonCode::SERVER_UNAVAILABLE.into()),
                }
            }
        }
    }

    /// Password file and policy-store users, then anonymous access. Its only Server busy is a
    /// hashing slot not found in time.
    async fn authenticate_password(&self, connect: &Connect) -> Result<Principal, ReasonCode> {
        match (&connect.username, &connect.password) {
            (None, None) => {
                if self.allow_anonymous {
                    Ok(Principal::anonymous())
                } else {
                    Err(ReasonCode::NOT_AUTHORIZED)
                }
            }
            (Some(user), Some(password)) => {
                // Password-file users first, then policy-store users (SPEC §4), with the same
                // hashing and refusal.
                let Some((file, source)) = self.file_for(user) else {
                    // No password source: credentials cannot be checked. With anonymous access
                    // allowed they are ignored (the client is the anonymous principal).
                    return if self.allow_anonymous {
                        Ok(Principal::anonymous())
                    } else {
                        Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                    };
                };
                // A bounded wait for a slot: under a flood of CONNECTs with passwords, waiting
                // ones are refused busy (not counted as failed logins) instead of piling up.
                let (user_c, password) = (user.clone(), password.clone());
                let ok =
                    self.hashing.run(HashClass::Mqtt, move || file.verify(&user_c, &password)).await.map_err(|e| {
                        match e {
                            HashError::Busy => ReasonCode::SERVER_BUSY,
                            HashError::Failed => ReasonCode::SERVER_UNAVAILABLE,
                        }
                    })?;
                if ok {
                    Ok(Principal::user(user).with_credential(source, None))
                } else {
                    Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                if self.allow_anonymous && self.passwords.read().is_none() && self.store_users.read().is_none() {
                    Ok(Principal::anonymous())
                } else {
                    Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::has_prefix;

    /// Trust lifecycle item 11: `prefix` needs a delimiter after the name.
    #[test]
    fn prefix_needs_a_delimiter() {
        assert!(has_prefix("dev-1", "dev-1"));
        for ok in ["dev-1-a", "dev-1/sensor", "dev-1:2", "dev-1.x", "dev-1_b"] {
            assert!(has_prefix(ok, "dev-1"), "{ok}");
        }
        for refused in ["dev-10", "dev-1a", "dev-", "xdev-1", ""] {
            assert!(!has_prefix(refused, "dev-1"), "{refused}");
        }
    }
}
