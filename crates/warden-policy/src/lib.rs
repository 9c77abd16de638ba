//! Warden's security decisions, kept pure: no tokio, no filesystem, no network, no clock.
//!
//! # Layout
//! - [`principal`]: who a connection is (`Principal`), the identity every session is bound to.
//! - [`password`]: password files (argon2id, Mosquitto `$6$`/`$7$`), hashing and verification.
//! - [`jwt`]: JSON Web Tokens: verification against a key set, minting for the token service.
//! - [`authn`]: who a CONNECT is: authentication and admission as one pausing state machine
//!   (bans, backoff, method order, anonymous access, tokens, look-up, SCRAM, client-id rules);
//!   the shell performs only the I/O it asks for.
//! - [`authz`]: the one question every publish / subscribe / delivery asks: "is this allowed?".
//! - [`quota`]: per-role quota overrides (policy store roles).
//! - [`scram`]: SCRAM-SHA-256 (RFC 5802 / RFC 7677) server state machine for MQTT 5 AUTH.
//! - [`acl`]: Mosquitto `acl_file` rules (`user`, `topic`, `pattern`), compiled to per-user tries.
//! - [`store`]: the policy store (users, groups, roles, prioritized rules), compiled into the
//!   same tries; managed live through the admin API.
//! - [`trust`]: the trust lifecycle: which credential a principal holds ([`trust::Credential`])
//!   and whether a [`trust::TrustEvent`] (revocation, removal, narrowing) ends its standing.

pub mod acl;
pub mod authn;
pub mod authz;
pub mod cert;
pub mod jwt;
pub mod password;
pub mod principal;
pub mod quota;
pub mod scram;
pub mod store;
pub mod trust;

pub use authz::{Action, AllowAll, Authorizer, DecidedBy, Decision, PolicyAuthorizer};
pub use principal::{Principal, PrincipalKind};
pub use quota::Quotas;
