//! The shell's side of authenticating CONNECT credentials (SPEC §4). Who a client is, is decided
//! by [`warden_policy::authn`] (a verified client certificate, an access token in the password
//! field, the look-up, the password file, the policy store's users, then anonymous access;
//! bans, backoff and client-id rules); this module holds what that decision reads — the
//! password sources, the disabled names, the token issuers ([`crate::auth::tokens`]), the look-up
//! ([`crate::auth::lookup`]) — and performs the I/O it asks for: the slow hash, the look-up call, the
//! JWKS fetch.
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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use warden_http::{HashBudget, HashClass, HashError};
use warden_policy::authn::{
    Admission, ClientIdRule, Context, HashAnswer, HashJob, ListenerAuth, LookupAnswer, LookupGrant, LookupRequest,
    Rules,
};
use warden_policy::jwt::KeySet;
use warden_policy::password::PasswordFile;

use crate::auth::lookup::{HttpLookup, LookupVerdict};
use crate::auth::tokens::TokenAuth;
use crate::config::{AuthConfig, ClientIdMatch, IdentityConfig};

pub use warden_policy::authn::{has_prefix, Authenticated, Busy, Refusal, CLIENT_ID_DELIMITERS};

/// Concurrent password verifications for `auth_hash_concurrency = 0`: the number of cores
/// minus one (at least 1), so a flood of CONNECTs with passwords leaves a core to the broker.
pub fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1).max(1)
}

/// What authentication reads, and the workers it asks for I/O.
pub struct Authenticator {
    rules: Rules,
    tokens: TokenAuth,
    lookup: Option<HttpLookup>,
    password_path: Option<PathBuf>,
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    /// Users of the policy store with a password (enabled ones only), as a password file.
    store_users: RwLock<Option<Arc<PasswordFile>>>,
    /// Names disabled in the policy store: refused whichever method names them (SPEC §10).
    disabled: RwLock<Arc<std::collections::HashSet<String>>>,
    /// The device registry's certificates (`[auth] registered_certificates_only` included).
    device_certs: RwLock<Arc<warden_policy::devices::DeviceCerts>>,
    /// `[auth] registered_certificates_only`.
    registered_only: bool,
    /// The process-wide hashing budget (shared with the HTTP side).
    hashing: Arc<HashBudget>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("allow_anonymous", &self.rules.allow_anonymous)
            .field("password_path", &self.password_path)
            .finish_non_exhaustive()
    }
}

fn load_file(path: &PathBuf) -> crate::Result<PasswordFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::Error::io(format!("{}: cannot read password file", path.display()), e))?;
    PasswordFile::parse(&text).map_err(|e| crate::Error::password_file(path, e))
}

impl Authenticator {
    /// Load the password file named by the configuration (if any).
    pub fn load(cfg: &AuthConfig, identity: IdentityConfig, tokens: TokenAuth) -> crate::Result<Self> {
        let passwords = match &cfg.password_file {
            Some(p) => Some(Arc::new(load_file(p)?)),
            None => None,
        };
        let lookup = cfg.lookup.clone().map(HttpLookup::new).transpose()?;
        let rules = Rules {
            allow_anonymous: cfg.allow_anonymous,
            client_id_rule: match identity.client_id_must_match {
                ClientIdMatch::Off => ClientIdRule::Off,
                ClientIdMatch::Exact => ClientIdRule::Exact,
                ClientIdMatch::Prefix => ClientIdRule::Prefix,
            },
            reserve_names: identity.reserve_principal_names,
            lookup: lookup.is_some(),
            fallback_role: lookup.as_ref().and_then(|l| l.fallback_role()).map(str::to_owned),
        };
        Ok(Authenticator {
            rules,
            tokens,
            lookup,
            password_path: cfg.password_file.clone(),
            passwords: RwLock::new(passwords),
            store_users: RwLock::new(None),
            disabled: RwLock::default(),
            device_certs: RwLock::new(Arc::new(warden_policy::devices::DeviceCerts::new(
                &Default::default(),
                cfg.registered_certificates_only,
            ))),
            registered_only: cfg.registered_certificates_only,
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

    /// What the authentication chain reads for one CONNECT: the rules and snapshots of the
    /// password sources, disabled names and token keys, with `admission` (bans and backoff for
    /// this CONNECT's address) and what the listener it arrived on allows.
    pub fn context<'a>(&'a self, admission: &'a (dyn Admission + Sync), listener: ListenerAuth) -> Context<'a> {
        Context {
            rules: &self.rules,
            passwords: self.passwords.read().clone(),
            store_users: self.store_users.read().clone(),
            disabled: self.disabled.read().clone(),
            device_certs: self.device_certs.read().clone(),
            admission,
            issuer: self.tokens.issuer(),
            external: self.tokens.external(),
            jwks: self.tokens.jwks(),
            listener,
        }
    }

    /// Run a password verification on the blocking pool within the hashing budget: a bounded
    /// wait for a slot, so that under a flood of CONNECTs with passwords waiting ones are
    /// refused busy (not counted as failed logins) instead of piling up.
    pub async fn hash(&self, job: HashJob) -> HashAnswer {
        match self.hashing.run(HashClass::Mqtt, move || job.verify()).await {
            Ok(ok) => HashAnswer::Verified(ok),
            Err(HashError::Busy) => HashAnswer::Busy,
            Err(HashError::Failed) => HashAnswer::Failed,
        }
    }

    /// Ask the third-party look-up service (`[auth.http]`).
    pub async fn look_up(&self, req: &LookupRequest) -> LookupAnswer {
        let Some(lookup) = &self.lookup else { return LookupAnswer::Unavailable };
        match lookup.check(req).await {
            LookupVerdict::Allow(grant) => LookupAnswer::Allow(LookupGrant {
                grants: grant.rules().map(Arc::new),
                principal: grant.principal,
                roles: grant.roles,
                scopes: grant.scopes,
            }),
            LookupVerdict::Deny => LookupAnswer::Deny,
            LookupVerdict::Unavailable => LookupAnswer::Unavailable,
            LookupVerdict::Busy => LookupAnswer::Busy,
        }
    }

    /// Fetch the outside issuer's JWKS again (rate-limited; see [`TokenAuth::refresh_jwks`]).
    pub async fn refresh_jwks(&self) -> Option<Arc<KeySet>> {
        self.tokens.refresh_jwks().await
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

    /// `[auth] registered_certificates_only`: only certificates registered (active) in the
    /// device registry are accepted.
    pub fn registered_certificates_only(&self) -> bool {
        self.registered_only
    }

    /// The device registry's certificates, applied at once to new CONNECTs (made with
    /// [`Authenticator::registered_certificates_only`]).
    pub fn set_device_certs(&self, certs: Arc<warden_policy::devices::DeviceCerts>) {
        *self.device_certs.write() = certs;
    }

    /// The names the policy store has disabled, applied at once to new CONNECTs.
    pub fn set_disabled(&self, names: Arc<std::collections::HashSet<String>>) {
        *self.disabled.write() = names;
    }

    /// True when `name` is disabled in the policy store.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.disabled.read().contains(name)
    }

    /// Re-read the password file (SIGHUP). On error the old file stays in force. Returns the
    /// file now in force (`None`: no password file is configured).
    pub fn reload(&self) -> crate::Result<Option<Arc<PasswordFile>>> {
        let Some(path) = &self.password_path else { return Ok(None) };
        let file = Arc::new(load_file(path)?);
        *self.passwords.write() = Some(file.clone());
        Ok(Some(file))
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
