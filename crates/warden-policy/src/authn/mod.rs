//! Who a CONNECT is, decided in one place: authentication and admission as one pausing state
//! machine (rustls' handshake that pauses for the caller; quinn-proto's "the caller performs
//! the I/O").
//!
//! [`Chain::begin`] takes what the CONNECT says ([`ConnectView`]), what TLS proved
//! ([`ClientCert`]), the peer's address and the time, with a [`Context`] of everything the
//! decision reads — the configured rules, the password sources, disabled names, bans and
//! backoff ([`Admission`]), the built-in token service's keys, revocations and client registry
//! ([`TokenIssuer`]), the outside issuer ([`ExternalIssuer`]). It returns a [`Step`]: either the
//! verdict ([`Step::Done`], [`Step::Refuse`]) or a request for I/O that the shell performs —
//! a slow password hash on its pool ([`Step::NeedHash`]), a third-party look-up
//! ([`Step::NeedLookup`]), a fresh JWKS ([`Step::NeedJwks`]), the client's next AUTH packet
//! ([`Step::NeedAuthData`]) — and hands back with [`Chain::continue_with`].
//!
//! The order, as the shell always applied it:
//! 1. a banned client id or user name is refused (0x8A) before any work;
//! 2. a user name backing off from this address after failed passwords is refused (0x9F)
//!    before any hashing (a password attempt only: tokens and certificates are not guesses);
//! 3. MQTT 5 enhanced authentication (SCRAM-SHA-256) when the CONNECT names a method;
//!    throughout, a method the listener does not allow ([`ListenerAuth`], an input in the
//!    [`Context`]) is refused there, valid credentials or not (0x8C for SCRAM, else 0x87);
//! 4. otherwise: a verified client certificate (through the look-up when one is configured), an
//!    access token in the password field ([`tokens`]), the look-up for user names no password
//!    source knows, the password file then the policy store's users, then anonymous access;
//! 5. a name disabled in the policy store is refused whichever method proved it, SCRAM
//!    included (0x87; every proved principal passes one funnel, `admit`);
//! 6. the client-id rules ([`Rules::client_id_rule`], reserved principal names: 0x85) and the
//!    ban list again, now with the principal's name (0x8A).
//!
//! Refusals look the same whether the user exists or not: the same reason code, and the same
//! slow-hash work (an unknown user is verified against a dummy hash by
//! [`PasswordFile::verify`]; a SCRAM exchange for an unknown user runs to its failed proof).
//! Each [`Refusal`] also says whether it counts as a guess towards the address's ban and the
//! user name's backoff, so that the shell records exactly what the decision says.
//!
//! A decision reads snapshots taken as it begins, and may wait (a SCRAM exchange waits on the
//! client). [`Context::stands`] reads a proved principal against a fresh context — not
//! disabled, still in its password source — so that the shell can end a connection whose user
//! was disabled or removed meanwhile, and [`Reauth`] asks it at every re-authentication.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use mqtt_codec::ReasonCode;

use crate::acl::AclFile;
use crate::cert::CertIdentityError;
use crate::jwt::{self, KeySet};
use crate::password::PasswordFile;
use crate::scram::{ScramServer, MECHANISM};
use crate::trust::{CertChain, Credential, CredentialSource};
use crate::{Principal, PrincipalKind};

mod reauth;
pub mod tokens;

pub use reauth::{Reauth, ReauthReply};
pub use tokens::{ExternalIssuer, IssuedRejected, SubjectRule, TokenInfo, TokenIssuer};

#[cfg(test)]
mod tests;

/// What the chain reads of a CONNECT packet.
#[derive(Debug, Clone, Copy)]
pub struct ConnectView<'a> {
    /// MQTT 5 (enhanced authentication needs it).
    pub v5: bool,
    /// The client identifier.
    pub client_id: &'a str,
    /// The user name, if sent.
    pub username: Option<&'a str>,
    /// The password (or access token), if sent.
    pub password: Option<&'a [u8]>,
    /// The v5 Authentication Method property.
    pub auth_method: Option<&'a str>,
    /// The v5 Authentication Data property.
    pub auth_data: Option<&'a [u8]>,
}

impl<'a> ConnectView<'a> {
    /// The view of a decoded CONNECT.
    pub fn of(c: &'a mqtt_codec::Connect) -> Self {
        ConnectView {
            v5: c.protocol == mqtt_codec::Protocol::V5,
            client_id: &c.client_id,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            auth_method: c.properties.authentication_method.as_deref(),
            auth_data: c.properties.authentication_data.as_deref(),
        }
    }
}

/// A client certificate the TLS handshake verified.
#[derive(Debug)]
pub struct ClientCert {
    /// The principal name taken from it, or why none can be.
    pub identity: Result<String, CertIdentityError>,
    /// Its issuer and serial, which a CRL names, and those of the intermediates it chains
    /// through when `crl_scope = "chain"` (SPEC §10: a reloaded CRL that revokes any of them
    /// ends the connection).
    pub cert: Option<CertChain>,
}

/// `[identity] client_id_must_match`: how a principal's client ids relate to its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIdRule {
    /// The client id equals the principal's name.
    Exact,
    /// The client id is the principal's name, or that name followed by a delimiter
    /// ([`CLIENT_ID_DELIMITERS`]).
    Prefix,
    /// No rule.
    #[default]
    Off,
}

/// Characters that may follow the principal's name in a `prefix` client id: `dev-1` may use
/// `dev-1`, `dev-1-a`, `dev-1/sensor`, `dev-1:2`, `dev-1.x` or `dev-1_b`, never `dev-10`.
pub const CLIENT_ID_DELIMITERS: [char; 5] = ['-', '/', ':', '.', '_'];

/// `client_id` is `name`, or `name` followed by a delimiter ([`CLIENT_ID_DELIMITERS`]).
pub fn has_prefix(client_id: &str, name: &str) -> bool {
    match client_id.strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest.starts_with(CLIENT_ID_DELIMITERS),
        None => false,
    }
}

/// The configured rules of authentication (`[auth]`, `[identity]`, `[auth.http]`).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `allow_anonymous`: a CONNECT without credentials is the anonymous principal.
    pub allow_anonymous: bool,
    /// `[identity] client_id_must_match`.
    pub client_id_rule: ClientIdRule,
    /// `[identity] reserve_principal_names`: a client id named like another principal the
    /// broker knows is that principal's alone.
    pub reserve_names: bool,
    /// `[auth.http]` is configured: the third-party look-up decides certificate identities
    /// (adding grants) and user names no password source knows.
    pub lookup: bool,
    /// `[auth.http] fail_open` with this role: when the look-up is unavailable, the claimed
    /// name is admitted as a [`Principal::fallback`] holding this role only.
    pub fallback_role: Option<String>,
}

/// A set of authentication methods ([`Method`] but [`Method::Anonymous`], which
/// `allow_anonymous` governs): what a listener's `auth = [...]` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Methods(u8);

impl Methods {
    /// No method.
    pub const NONE: Methods = Methods(0);

    /// Every method (the default chain).
    pub const ALL: Methods = Methods(0b1_1111);

    fn bit(m: Method) -> u8 {
        match m {
            Method::Password => 1,
            Method::Scram => 1 << 1,
            Method::Certificate => 1 << 2,
            Method::Token => 1 << 3,
            Method::Lookup => 1 << 4,
            Method::Anonymous => 0,
        }
    }

    /// This set and `m` ([`Method::Anonymous`] adds nothing).
    #[must_use]
    pub fn with(self, m: Method) -> Methods {
        Methods(self.0 | Methods::bit(m))
    }

    /// True when `m` is in the set (never [`Method::Anonymous`]).
    pub fn contains(self, m: Method) -> bool {
        Methods::bit(m) != 0 && self.0 & Methods::bit(m) != 0
    }

    /// The methods in the set, in label order.
    pub fn iter(self) -> impl Iterator<Item = Method> {
        Method::ALL.into_iter().filter(move |m| self.contains(*m))
    }
}

impl FromIterator<Method> for Methods {
    fn from_iter<I: IntoIterator<Item = Method>>(iter: I) -> Self {
        iter.into_iter().fold(Methods::NONE, Methods::with)
    }
}

/// What one listener allows (`[[listener]] auth`, `allow_anonymous`): an input to every
/// decision of the chain. `None` in either: the default chain (every configured method;
/// `[auth] allow_anonymous`). A method the listener does not allow is refused there even when
/// the credentials are valid: SCRAM with 0x8C (Bad authentication method), a certificate, a
/// token or a password with 0x87 (Not authorized; v3 return code 5) — never counted as a guess.
/// A user name no password source knows goes to the look-up only where `lookup` is allowed;
/// where `lookup` is allowed but `password` is not, every user name goes to the look-up.
/// A verified client certificate is decided by the look-up (with `[auth.http]`) only where
/// `lookup` is allowed too; where only `certificate` is, the certificate proves on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerAuth {
    /// The methods allowed; `None`: all of them.
    pub methods: Option<Methods>,
    /// Anonymous access here; `None`: `[auth] allow_anonymous`.
    pub allow_anonymous: Option<bool>,
}

/// The admission state the chain consults: the admin ban list and the per-(user name,
/// address) backoff after failed passwords. The shell implements it over its live state for
/// one CONNECT (its peer address and the current instant).
pub trait Admission {
    /// Is this client id or user name banned at `now` (unix seconds)?
    fn name_banned(&self, client_id: &str, username: Option<&str>, now: u64) -> bool;
    /// Is `username` backing off from this CONNECT's address (refuse without hashing)?
    fn backing_off(&self, username: &str) -> bool;
}

/// No bans and no backoff.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unrestricted;

impl Admission for Unrestricted {
    fn name_banned(&self, _: &str, _: Option<&str>, _: u64) -> bool {
        false
    }
    fn backing_off(&self, _: &str) -> bool {
        false
    }
}

/// Everything a decision reads, handed in by the shell for one CONNECT (snapshots taken as
/// it begins; a reload meanwhile applies to the next CONNECT).
#[derive(Clone)]
pub struct Context<'a> {
    /// The configured rules.
    pub rules: &'a Rules,
    /// The password file, if one is configured.
    pub passwords: Option<Arc<PasswordFile>>,
    /// The policy store's users (enabled, with a password), if any.
    pub store_users: Option<Arc<PasswordFile>>,
    /// Names the policy store has disabled: refused whichever method proves them (SPEC §10).
    pub disabled: Arc<HashSet<String>>,
    /// The device registry's certificates (and whether only registered ones are accepted): a
    /// client certificate inactive or revoked there, registered to another device, or
    /// unregistered where registration is required, proves no one.
    pub device_certs: Arc<crate::devices::DeviceCerts>,
    /// Bans and backoff.
    pub admission: &'a (dyn Admission + Sync),
    /// The built-in token service, if enabled.
    pub issuer: Option<&'a (dyn TokenIssuer + Sync)>,
    /// The outside token issuer (`[auth.jwt]`), if configured.
    pub external: Option<&'a ExternalIssuer>,
    /// The outside issuer's keys fetched from its JWKS URL so far.
    pub jwks: Option<Arc<KeySet>>,
    /// What the listener the CONNECT arrived on allows.
    pub listener: ListenerAuth,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("rules", &self.rules).finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// True when the listener allows `m` (every method, on a listener that names none).
    pub fn allows(&self, m: Method) -> bool {
        match m {
            Method::Anonymous => self.anonymous_allowed(),
            _ => self.listener.methods.is_none_or(|s| s.contains(m)),
        }
    }

    /// Anonymous access on this listener (its `allow_anonymous`, else `[auth]`'s).
    pub fn anonymous_allowed(&self) -> bool {
        self.listener.allow_anonymous.unwrap_or(self.rules.allow_anonymous)
    }

    /// True when some token method is configured.
    pub fn tokens_enabled(&self) -> bool {
        self.issuer.is_some() || self.external.is_some()
    }

    /// True when the CONNECT carries a user name and a password that would be checked as a
    /// password (not an access token): the attempts that per-user backoff guards against
    /// guessing. A wrong token is not a guess (its signature cannot be found by trying); it
    /// counts towards the address's ban only.
    pub fn is_password_attempt(&self, view: &ConnectView<'_>) -> bool {
        match (view.username, view.password) {
            (Some(_), Some(pw)) => !(self.tokens_enabled() && jwt::looks_like_jwt(pw)),
            _ => false,
        }
    }

    /// True when `name` is a user of the password file or the policy store, or a client of the
    /// built-in token service.
    pub fn is_principal_name(&self, name: &str) -> bool {
        self.passwords.as_ref().is_some_and(|f| f.contains(name))
            || self.store_users.as_ref().is_some_and(|f| f.contains(name))
            || self.issuer.is_some_and(|i| i.has_client(name))
    }

    /// The file that decides `user` and the credential source it stands for: the password
    /// file when it names the user, else the policy store when it does, else the password file
    /// (or the store when there is no password file), so an unknown user costs the same dummy
    /// hash either way.
    fn file_for(&self, user: &str) -> Option<(Arc<PasswordFile>, CredentialSource)> {
        match (&self.passwords, &self.store_users) {
            (Some(f), _) if f.contains(user) => Some((f.clone(), CredentialSource::PasswordFile)),
            (_, Some(s)) if s.contains(user) => Some((s.clone(), CredentialSource::StoreUser)),
            (Some(f), _) => Some((f.clone(), CredentialSource::PasswordFile)),
            (None, s) => s.clone().map(|s| (s, CredentialSource::StoreUser)),
        }
    }

    /// True when `p`'s name is disabled in the policy store (the anonymous principal never is).
    pub fn is_disabled(&self, p: &Principal) -> bool {
        p.kind != PrincipalKind::Anonymous && self.disabled.contains(&*p.name)
    }

    /// True when a principal proved earlier still stands on what this context reads now: its
    /// name is not disabled in the policy store, and a user of the password file or of the
    /// policy store is still there (the same rules as [`crate::trust::TrustEvent::verdict`] for
    /// `Disabled`, `PasswordFile` and `StoreUsers`). The shell asks it with a fresh context
    /// once a new connection is registered where trust changes reach it — a change made while
    /// the chain waited (a SCRAM exchange waits on the client, a hash on the pool) would
    /// otherwise pass unseen — and [`Reauth`] asks it at every re-authentication.
    pub fn stands(&self, p: &Principal) -> bool {
        if self.is_disabled(p) || self.device_certs.admits(p).is_err() {
            return false;
        }
        match p.source {
            CredentialSource::PasswordFile => self.passwords.as_ref().is_some_and(|f| f.contains(&p.name)),
            CredentialSource::StoreUser => self.store_users.as_ref().is_some_and(|f| f.contains(&p.name)),
            _ => true,
        }
    }

    /// `[identity]` rules: may this principal use this client id? A client id named like
    /// another principal the broker knows is that principal's (`reserve_principal_names`; a
    /// fail-open client only claimed its name: it is not that principal). Anonymous clients are
    /// exempt from `client_id_must_match` (they have no name to match). Refusal: 0x85 (v3 0x02).
    pub fn check_client_id(&self, principal: &Principal, client_id: &str) -> Result<(), ReasonCode> {
        let own = client_id == &*principal.name && principal.kind != PrincipalKind::Fallback;
        if self.rules.reserve_names && !own && self.is_principal_name(client_id) {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        if principal.kind == PrincipalKind::Anonymous {
            return Ok(());
        }
        let ok = match self.rules.client_id_rule {
            ClientIdRule::Off => true,
            ClientIdRule::Exact => client_id == &*principal.name,
            ClientIdRule::Prefix => has_prefix(client_id, &principal.name),
        };
        if ok {
            Ok(())
        } else {
            Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        }
    }
}

/// The authentication method, as counted (`warden_auth_attempts_total{method}`) and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// User name and password (password file or policy store).
    Password,
    /// MQTT 5 enhanced authentication, SCRAM-SHA-256.
    Scram,
    /// A TLS client certificate.
    Certificate,
    /// An access token in the password field.
    Token,
    /// The third-party look-up service.
    Lookup,
    /// No credentials.
    Anonymous,
}

impl Method {
    /// Every method, in label order.
    pub const ALL: [Method; 6] =
        [Method::Password, Method::Scram, Method::Certificate, Method::Token, Method::Lookup, Method::Anonymous];

    /// The method of this label value (`"password"`, …), as `[[listener]] auth` names them.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The label value (`warden_auth_attempts_total{method}`, log lines).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::Scram => "scram",
            Method::Certificate => "certificate",
            Method::Token => "token",
            Method::Lookup => "lookup",
            Method::Anonymous => "anonymous",
        }
    }
}

/// Who the CONNECT is, and what the shell records for it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The principal.
    pub principal: Principal,
    /// The access token it authenticated with, if any: the connection ends at its expiry.
    pub token: Option<TokenInfo>,
    /// The method that admitted it.
    pub method: Method,
    /// The user of a SCRAM-authenticated connection (it may re-authenticate, [`Reauth`]).
    pub scram_user: Option<String>,
    /// The server-final-message of a SCRAM exchange: the CONNACK's Authentication Data.
    pub auth_data: Option<Vec<u8>>,
    /// The user name whose failed-password backoff from this address ends now: only the
    /// verified password of that user name lifts it.
    pub backoff_cleared: Option<String>,
}

/// Which of the broker's own limits was full (the credentials were then not judged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// No password-verification slot in time.
    Hashing,
    /// Every look-up slot (`[auth.http] max_in_flight`) taken.
    Lookup,
}

/// Why a CONNECT was refused, beyond its reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The client id or user name is banned: refused before any authentication work.
    Banned,
    /// The user name backs off from this address after failed passwords: refused before any
    /// hashing.
    BackingOff,
    /// One of the broker's own limits was full: not a failed login.
    Busy(Busy),
    /// The password could not be verified (the hashing worker failed).
    HashFailed,
    /// Wrong or unknown user name or password (the same refusal either way), a failed SCRAM
    /// proof, or a look-up that denied.
    BadCredentials,
    /// No credentials, and anonymous access is off.
    AnonymousRefused,
    /// A client certificate from which no acceptable identity could be taken.
    Certificate,
    /// An access token refused; the reason, for the log (never the token).
    Token(String),
    /// A genuine token whose subject the configured rule refuses.
    Subject,
    /// The look-up service could not be reached and no fail-open applies.
    LookupUnavailable,
    /// An authentication method other than SCRAM-SHA-256 (or none configured for it).
    BadMethod,
    /// The enhanced-authentication exchange broke the protocol, or the client left.
    Exchange,
    /// The enhanced-authentication exchange took longer than the CONNECT deadline.
    TimedOut,
    /// The principal's name is disabled in the policy store.
    Disabled,
    /// The client certificate is refused by the device registry (inactive, revoked, another
    /// device's, or unregistered with `registered_certificates_only`).
    DeviceCertificate(crate::devices::CertRefusal),
    /// The client id is not one this principal may use.
    ClientId,
    /// Credentials of a method the listener does not allow (`[[listener]] auth`).
    MethodNotAllowed(Method),
    /// The principal's name is banned.
    BannedPrincipal,
    /// The shell answered a request the chain did not make (a bug): refused.
    Unexpected,
}

/// A refused CONNECT: the reason code the client is told, why, and what it counts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The v5 reason code (mapped for v3 clients when written).
    pub code: ReasonCode,
    /// Why.
    pub cause: Cause,
    /// The method the CONNECT tried: SCRAM when it named an authentication method, a password
    /// or a token when it sent one, else its client certificate, else none (anonymous).
    pub method: Method,
    /// Counts as a failed login towards the address's ban. Only guesses do: a wrong secret
    /// (0x86), a CONNECT without any credentials where anonymous clients are refused (0x87: a
    /// scanner), and a user name retried while backing off. A refusal of what the credentials
    /// may do — a will topic, an unsupported method (0x8C), a client id (0x85), a disabled
    /// account, a ban — is not a guess: counting it would let one misconfigured device ban the
    /// whole address it shares with others behind a NAT. Busy is never one.
    pub guess: bool,
    /// The user name whose backoff from this address this failure extends (a guessed
    /// password).
    pub backoff_user: Option<String>,
}

/// Where the chain stands, and what it asks of the shell.
#[derive(Debug)]
pub enum Step {
    /// Admitted.
    Done(Box<Authenticated>),
    /// Refused: write a CONNACK with the code and close.
    Refuse(Refusal),
    /// Verify a password: run [`HashJob::verify`] on the hashing pool (within its budget) and
    /// answer [`Answer::Hash`].
    NeedHash(HashJob),
    /// Ask the third-party look-up service; answer [`Answer::Lookup`].
    NeedLookup(LookupRequest),
    /// The outside issuer's token names a key not held: fetch its JWKS again if the refresh
    /// rate allows, and answer [`Answer::Jwks`] (`None`: not fetched, or the fetch failed).
    NeedJwks,
    /// Send an AUTH packet (reason 0x18) with this method and data, and answer
    /// [`Answer::AuthData`] with the client's reply.
    NeedAuthData(AuthChallenge),
}

/// A password verification for the hashing pool: pure CPU, slow by design.
#[derive(Clone)]
pub struct HashJob {
    file: Arc<PasswordFile>,
    user: String,
    password: Vec<u8>,
}

impl std::fmt::Debug for HashJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashJob").field("user", &self.user).finish_non_exhaustive()
    }
}

impl HashJob {
    /// Verify (an unknown user costs the same work against a dummy hash).
    pub fn verify(&self) -> bool {
        self.file.verify(&self.user, &self.password)
    }
}

/// What the broker knows about a CONNECT, sent to the look-up service.
#[derive(Clone, PartialEq, Eq)]
pub struct LookupRequest {
    /// The CONNECT client id.
    pub client_id: String,
    /// The CONNECT user name.
    pub username: Option<String>,
    /// The CONNECT password (or token).
    pub password: Option<Vec<u8>>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The verified client-certificate identity, if any.
    pub cert_identity: Option<String>,
}

impl std::fmt::Debug for LookupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupRequest")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("peer", &self.peer)
            .field("cert_identity", &self.cert_identity)
            .finish()
    }
}

/// What the look-up service granted.
#[derive(Debug, Clone, Default)]
pub struct LookupGrant {
    /// The principal name (a certificate identity, when there is one, stays the name).
    pub principal: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Rules of its own, compiled.
    pub grants: Option<Arc<AclFile>>,
}

/// The look-up service's answer.
#[derive(Debug, Clone)]
pub enum LookupAnswer {
    /// Allowed, with these permissions.
    Allow(LookupGrant),
    /// Denied.
    Deny,
    /// Error, timeout or bad answer: `fail_open` applies.
    Unavailable,
    /// The broker's own limit (`max_in_flight`) was reached: not asked. Never fail-open.
    Busy,
}

/// The outcome of a [`HashJob`] on the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAnswer {
    /// Verified: the password matches (true) or not.
    Verified(bool),
    /// No slot within the wait: Server busy, not a failed login.
    Busy,
    /// The worker failed.
    Failed,
}

/// An AUTH packet the chain wants sent (reason Continue authentication, 0x18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChallenge {
    /// The Authentication Method.
    pub method: String,
    /// The Authentication Data.
    pub data: Vec<u8>,
}

/// What the client answered a [`AuthChallenge`] with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    /// An AUTH packet.
    Auth {
        /// Its reason code.
        reason_code: ReasonCode,
        /// Its Authentication Method.
        method: Option<String>,
        /// Its Authentication Data.
        data: Option<Vec<u8>>,
    },
    /// Another packet: a protocol error.
    Other,
    /// Bytes that did not decode: the decoder's reason code.
    Malformed(ReasonCode),
    /// The client closed the connection (or it failed).
    Closed,
    /// The CONNECT deadline passed during the exchange.
    TimedOut,
}

/// The shell's answer to a request.
#[derive(Debug)]
pub enum Answer {
    /// To [`Step::NeedHash`].
    Hash(HashAnswer),
    /// To [`Step::NeedLookup`].
    Lookup(LookupAnswer),
    /// To [`Step::NeedJwks`]: the fresh key set, or `None`.
    Jwks(Option<Arc<KeySet>>),
    /// To [`Step::NeedAuthData`].
    AuthData(AuthReply),
}

/// What the chain waits for.
enum Wait {
    Nothing,
    Hash { source: CredentialSource, user: String },
    Lookup { cert_identity: Option<String>, cert: Option<CertChain> },
    Jwks(tokens::PendingToken),
    Scram { server: Box<ScramServer>, method: String },
}

/// One CONNECT's authentication and admission: see the module documentation.
pub struct Chain<'a> {
    ctx: Context<'a>,
    view: ConnectView<'a>,
    peer: SocketAddr,
    now: u64,
    cert_present: bool,
    password_attempt: bool,
    wait: Wait,
}

impl std::fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("client_id", &self.view.client_id).finish_non_exhaustive()
    }
}

impl<'a> Chain<'a> {
    /// Start deciding a CONNECT. `cert`: what TLS verified (`None`: no client certificate);
    /// `now`: unix seconds (bans, token expiry).
    pub fn begin(
        ctx: Context<'a>,
        view: ConnectView<'a>,
        cert: Option<ClientCert>,
        peer: SocketAddr,
        now: u64,
    ) -> (Chain<'a>, Step) {
        // A verified client certificate authenticates on its own: a password sent with it is
        // not consulted, so it is no attempt at that user name's password.
        // A method the listener does not allow is no attempt at anything: refused unhashed.
        let cert_proves = matches!(&cert, Some(ClientCert { identity: Ok(_), .. })) && ctx.allows(Method::Certificate);
        let password_attempt = ctx.is_password_attempt(&view) && !cert_proves && ctx.allows(Method::Password);
        let mut chain =
            Chain { ctx, view, peer, now, cert_present: cert.is_some(), password_attempt, wait: Wait::Nothing };
        let step = chain.start(cert);
        (chain, step)
    }

    /// True when the CONNECT is an attempt at a user name's password (see
    /// [`Context::is_password_attempt`]; never with a verified client certificate).
    pub fn password_attempt(&self) -> bool {
        self.password_attempt
    }

    fn start(&mut self, cert: Option<ClientCert>) -> Step {
        let v = self.view;
        // Banned client ids and user names are refused before any authentication work.
        if self.ctx.admission.name_banned(v.client_id, v.username, self.now) {
            return Step::Refuse(Refusal {
                code: ReasonCode::BANNED,
                cause: Cause::Banned,
                method: self.attempted_method(),
                guess: false,
                backoff_user: None,
            });
        }
        // A user name backing off from this address after repeated failed passwords is
        // refused before any hashing (v5 0x9F Connection rate exceeded; v3 0x03). Other
        // addresses are not affected, and neither are access tokens (nothing to guess; the
        // address ban covers floods). The refusal counts towards the address's ban.
        if let (Some(user), true) = (v.username, self.password_attempt) {
            if self.ctx.admission.backing_off(user) {
                return Step::Refuse(Refusal {
                    code: ReasonCode::CONNECTION_RATE_EXCEEDED,
                    cause: Cause::BackingOff,
                    method: self.attempted_method(),
                    guess: true,
                    backoff_user: None,
                });
            }
        }
        // MQTT 5 enhanced authentication runs before the CONNACK [MQTT-4.12.0-1]; otherwise
        // the configured methods decide.
        if let Some(method) = v.auth_method {
            if !self.ctx.allows(Method::Scram) {
                return self.not_allowed(ReasonCode::BAD_AUTHENTICATION_METHOD, Method::Scram);
            }
            return self.scram_first(method);
        }
        self.any_method(cert)
    }

    /// Resume with the shell's answer to the last request.
    pub fn continue_with(&mut self, answer: Answer) -> Step {
        match (std::mem::replace(&mut self.wait, Wait::Nothing), answer) {
            (Wait::Hash { source, user }, Answer::Hash(h)) => match h {
                HashAnswer::Verified(true) => self.proved(Principal::user(&user).with_credential(source, None)),
                HashAnswer::Verified(false) => {
                    self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::BadCredentials)
                }
                HashAnswer::Busy => self.refuse(ReasonCode::SERVER_BUSY, Cause::Busy(Busy::Hashing)),
                HashAnswer::Failed => self.refuse(ReasonCode::SERVER_UNAVAILABLE, Cause::HashFailed),
            },
            (Wait::Lookup { cert_identity, cert }, Answer::Lookup(a)) => self.looked_up(a, cert_identity, cert),
            (Wait::Jwks(pending), Answer::Jwks(keys)) => {
                let outcome = tokens::after_refresh(&self.ctx, pending, keys.as_deref(), self.now, &self.view);
                self.token_outcome(outcome)
            }
            (Wait::Scram { server, method }, Answer::AuthData(reply)) => self.scram_final(*server, &method, reply),
            _ => self.refuse(ReasonCode::UNSPECIFIED_ERROR, Cause::Unexpected),
        }
    }

    /// The SCRAM-SHA-256 exchange (RFC 5802 / 7677) carried in CONNECT → AUTH (0x18) → AUTH
    /// (0x18) → CONNACK: 0x8C for an unsupported method (or no password file to hold SCRAM
    /// credentials), 0x86 for a malformed first message or a failed proof (the same exchange
    /// whether the user exists or not), 0x82 for a protocol violation.
    fn scram_first(&mut self, method: &str) -> Step {
        let Some(file) = self.ctx.passwords.clone().filter(|_| self.view.v5 && method == MECHANISM) else {
            return self.refuse(ReasonCode::BAD_AUTHENTICATION_METHOD, Cause::BadMethod);
        };
        let Ok(first) = ScramServer::client_first(self.view.auth_data.unwrap_or_default()) else {
            return self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::BadCredentials);
        };
        let creds = file.scram_credentials(&first.username);
        let (server, server_first) = ScramServer::server_first(first, creds.as_ref());
        self.wait = Wait::Scram { server: Box::new(server), method: method.to_owned() };
        Step::NeedAuthData(AuthChallenge { method: method.to_owned(), data: server_first })
    }

    fn scram_final(&mut self, server: ScramServer, method: &str, reply: AuthReply) -> Step {
        let data = match reply {
            AuthReply::Auth { reason_code, method: m, data }
                if reason_code == ReasonCode::CONTINUE_AUTHENTICATION && m.as_deref() == Some(method) =>
            {
                data.unwrap_or_default()
            }
            // The method may not change mid-exchange [MQTT-4.12.0-5].
            AuthReply::Auth { .. } | AuthReply::Other => {
                return self.refuse(ReasonCode::PROTOCOL_ERROR, Cause::Exchange)
            }
            AuthReply::Malformed(code) => return self.refuse(code, Cause::Exchange),
            AuthReply::Closed => return self.refuse(ReasonCode::UNSPECIFIED_ERROR, Cause::Exchange),
            AuthReply::TimedOut => return self.refuse(ReasonCode::NOT_AUTHORIZED, Cause::TimedOut),
        };
        match server.client_final(&data) {
            Ok((user, server_final)) => {
                // SCRAM proves a password-file user; like every proved principal it passes
                // through `admit`, which refuses a name the policy store has disabled.
                let principal = Principal::user(&user).with_credential(CredentialSource::PasswordFile, None);
                self.admit(Authenticated {
                    principal,
                    token: None,
                    method: Method::Scram,
                    scram_user: Some(user),
                    auth_data: Some(server_final),
                    backoff_cleared: None,
                })
            }
            Err(_) => self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::BadCredentials),
        }
    }

    /// A verified client certificate, an access token, the look-up, the password sources,
    /// then anonymous access.
    fn any_method(&mut self, cert: Option<ClientCert>) -> Step {
        let v = self.view;
        let cert = match cert {
            // A certificate where the listener does not allow the method: no credential here.
            // Sent alone, a verified one is refused as such (not taken for a scanner's empty
            // CONNECT); sent with a user name or password, those decide.
            Some(c) if !self.ctx.allows(Method::Certificate) => {
                if c.identity.is_ok() && v.username.is_none() && v.password.is_none() {
                    return self.not_allowed(ReasonCode::NOT_AUTHORIZED, Method::Certificate);
                }
                None
            }
            c => c,
        };
        let lookup = self.ctx.rules.lookup && self.ctx.allows(Method::Lookup);
        match cert {
            Some(ClientCert { identity: Ok(name), cert }) if !lookup => {
                let p = Principal::certificate(&name)
                    .with_credential(CredentialSource::Certificate, cert.map(Credential::Certificate));
                return self.proved(p);
            }
            // With a look-up service the certificate identity is still the principal; the
            // service may add grants (or refuse).
            Some(ClientCert { identity: Ok(name), cert }) => return self.look_up(Some(name), cert),
            Some(ClientCert { identity: Err(_), .. }) => {
                return self.refuse(ReasonCode::NOT_AUTHORIZED, Cause::Certificate)
            }
            None => {}
        }
        if let Some(password) = v.password {
            if !self.ctx.allows(Method::Token) && self.ctx.tokens_enabled() && jwt::looks_like_jwt(password) {
                return self.not_allowed(ReasonCode::NOT_AUTHORIZED, Method::Token);
            }
            if let Some(outcome) = tokens::verify(&self.ctx, password, self.now, &v) {
                return self.token_outcome(outcome);
            }
        }
        let file_knows_user = v.username.is_some_and(|u| self.ctx.file_for(u).is_some_and(|(f, _)| f.contains(u)));
        if lookup && v.username.is_some() && (!file_knows_user || !self.ctx.allows(Method::Password)) {
            return self.look_up(None, None);
        }
        self.password_or_anonymous()
    }

    fn token_outcome(&mut self, outcome: tokens::Outcome) -> Step {
        match outcome {
            tokens::Outcome::Granted(p, info) => self.proved_token(p, info),
            tokens::Outcome::Refused { code, cause } => self.refuse(code, cause),
            tokens::Outcome::NeedJwks(pending) => {
                self.wait = Wait::Jwks(pending);
                Step::NeedJwks
            }
        }
    }

    /// Password file and policy-store users, then anonymous access.
    fn password_or_anonymous(&mut self) -> Step {
        let anonymous = self.ctx.anonymous_allowed();
        match (self.view.username, self.view.password) {
            (None, None) => {
                if anonymous {
                    self.proved(Principal::anonymous())
                } else {
                    self.refuse(ReasonCode::NOT_AUTHORIZED, Cause::AnonymousRefused)
                }
            }
            (Some(user), Some(password)) => {
                // Password-file users first, then policy-store users (SPEC §4), with the same
                // hashing and refusal.
                let Some((file, source)) = self.ctx.file_for(user) else {
                    // No password source: credentials cannot be checked. With anonymous access
                    // allowed they are ignored (the client is the anonymous principal).
                    return if anonymous {
                        self.proved(Principal::anonymous())
                    } else {
                        self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::BadCredentials)
                    };
                };
                if !self.ctx.allows(Method::Password) {
                    return self.not_allowed(ReasonCode::NOT_AUTHORIZED, Method::Password);
                }
                self.wait = Wait::Hash { source, user: user.to_owned() };
                Step::NeedHash(HashJob { file, user: user.to_owned(), password: password.to_vec() })
            }
            (Some(_), None) | (None, Some(_)) => {
                if anonymous && self.ctx.passwords.is_none() && self.ctx.store_users.is_none() {
                    self.proved(Principal::anonymous())
                } else {
                    self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::BadCredentials)
                }
            }
        }
    }

    fn look_up(&mut self, cert_identity: Option<String>, cert: Option<CertChain>) -> Step {
        let v = self.view;
        let req = LookupRequest {
            client_id: v.client_id.to_owned(),
            username: v.username.map(str::to_owned),
            password: v.password.map(<[u8]>::to_vec),
            peer: self.peer,
            cert_identity: cert_identity.clone(),
        };
        self.wait = Wait::Lookup { cert_identity, cert };
        Step::NeedLookup(req)
    }

    /// The look-up's answer: its principal name and grants, a refusal (0x86), 0x89 when the
    /// broker's own look-up slots are all taken, or — when the service cannot be reached —
    /// 0x88, unless `fail_open` with a `fallback_role`: then an unverified
    /// [`Principal::fallback`] holding that role only.
    fn looked_up(&mut self, answer: LookupAnswer, cert_identity: Option<String>, cert: Option<CertChain>) -> Step {
        match answer {
            LookupAnswer::Allow(grant) => {
                // The look-up's answer is the credential; a certificate behind it stays
                // revocable.
                let mut p = match &cert_identity {
                    Some(name) => Principal::certificate(name),
                    None => Principal::user(&grant.principal),
                }
                .with_credential(CredentialSource::Lookup, cert.map(Credential::Certificate));
                p.roles = grant.roles.iter().map(|r| Arc::from(r.as_str())).collect();
                p.scopes = grant.scopes.iter().map(|r| Arc::from(r.as_str())).collect();
                p.set_grants(grant.grants);
                self.proved(p)
            }
            LookupAnswer::Deny => self.refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::BadCredentials),
            // The broker's own overload: never a reason to let anyone in.
            LookupAnswer::Busy => self.refuse(ReasonCode::SERVER_BUSY, Cause::Busy(Busy::Lookup)),
            LookupAnswer::Unavailable => {
                // fail_open: the name the client gave (or its certificate's), unverified by
                // the service, as a fallback principal — its role only, no one else's grants
                // or sessions. The name must be a safe identity (it appears in logs and audits).
                let claimed = cert_identity.as_deref().or(self.view.username);
                match (self.ctx.rules.fallback_role.as_deref(), claimed) {
                    (Some(role), Some(name)) if crate::cert::check_identity(name).is_ok() => {
                        self.proved(Principal::fallback(name, role))
                    }
                    _ => self.refuse(ReasonCode::SERVER_UNAVAILABLE, Cause::LookupUnavailable),
                }
            }
        }
    }

    /// A principal proved by the configured methods: refused when its name is disabled in the
    /// policy store (SPEC §10), else on to the client-id rules.
    fn proved(&mut self, principal: Principal) -> Step {
        self.proved_with(principal, None)
    }

    fn proved_token(&mut self, principal: Principal, token: TokenInfo) -> Step {
        self.proved_with(principal, Some(token))
    }

    fn proved_with(&mut self, principal: Principal, token: Option<TokenInfo>) -> Step {
        let method = accepted_method(&principal);
        self.admit(Authenticated { principal, token, method, scram_user: None, auth_data: None, backoff_cleared: None })
    }

    /// Every proved principal, whichever method proved it (SCRAM included), passes here: a
    /// name disabled in the policy store is refused (0x87, SPEC §10), then the client-id rules
    /// and the ban list with the principal's name, then admitted, with the address it
    /// connected from (rules' `source` conditions match it).
    fn admit(&mut self, mut a: Authenticated) -> Step {
        if self.ctx.is_disabled(&a.principal) {
            return self.refuse(ReasonCode::NOT_AUTHORIZED, Cause::Disabled);
        }
        if let Err(why) = self.ctx.device_certs.admits(&a.principal) {
            // A certificate the TLS layer verified is no guess: not counted towards a ban.
            return match self.refuse(ReasonCode::NOT_AUTHORIZED, Cause::DeviceCertificate(why)) {
                Step::Refuse(r) => Step::Refuse(Refusal { guess: false, backoff_user: None, ..r }),
                other => other,
            };
        }
        if self.ctx.device_certs.claim_of(&a.principal).is_some() {
            // A claim certificate: good for enrollment only (crate::enroll::confine).
            let credential = a.principal.credential().cloned();
            a.principal = a.principal.with_credential(CredentialSource::Claim, credential);
        }
        if let Err(code) = self.ctx.check_client_id(&a.principal, self.view.client_id) {
            return self.refuse(code, Cause::ClientId);
        }
        if self.ctx.admission.name_banned(self.view.client_id, Some(&a.principal.name), self.now) {
            return self.refuse(ReasonCode::BANNED, Cause::BannedPrincipal);
        }
        // A fail-open client's password was not checked: it does not end a user's backoff.
        // Only the password of that user name lifts its backoff: a token or a certificate of
        // another principal sent with the name does not.
        a.principal = a.principal.with_peer(self.peer.ip());
        let verified = a.principal.kind != PrincipalKind::Fallback;
        a.backoff_cleared = self
            .view
            .username
            .filter(|u| self.password_attempt && verified && *a.principal.name == **u)
            .map(str::to_owned);
        Step::Done(Box::new(a))
    }

    fn attempted_method(&self) -> Method {
        if self.view.auth_method.is_some() {
            Method::Scram
        } else if self.password_attempt {
            Method::Password
        } else if self.view.password.is_some() {
            Method::Token
        } else if self.cert_present {
            Method::Certificate
        } else {
            Method::Anonymous
        }
    }

    /// Credentials of `method`, which the listener does not allow: refused without any work,
    /// and no guess (the same whether they are valid or not; nothing is verified).
    fn not_allowed(&self, code: ReasonCode, method: Method) -> Step {
        Step::Refuse(Refusal { code, cause: Cause::MethodNotAllowed(method), method, guess: false, backoff_user: None })
    }

    /// A refusal after authentication work: whether it is a guess is decided here.
    fn refuse(&self, code: ReasonCode, cause: Cause) -> Step {
        let v = &self.view;
        let guess = code == ReasonCode::BAD_USER_NAME_OR_PASSWORD
            || (code == ReasonCode::NOT_AUTHORIZED
                && v.username.is_none()
                && v.password.is_none()
                && v.auth_method.is_none());
        let backoff_user = v.username.filter(|_| guess && self.password_attempt).map(str::to_owned);
        Step::Refuse(Refusal { code, cause, method: self.attempted_method(), guess, backoff_user })
    }
}

/// The method that admitted `p`.
fn accepted_method(p: &Principal) -> Method {
    if p.kind == PrincipalKind::Fallback {
        return Method::Lookup;
    }
    match p.source {
        CredentialSource::PasswordFile | CredentialSource::StoreUser | CredentialSource::Restored => Method::Password,
        CredentialSource::Certificate | CredentialSource::Claim => Method::Certificate,
        CredentialSource::Token => Method::Token,
        CredentialSource::Lookup => Method::Lookup,
        CredentialSource::Anonymous => Method::Anonymous,
    }
}
