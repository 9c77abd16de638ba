//! Warden's HTTP side: the built-in OAuth 2.0 token service (SPEC §5).
//!
//! The client-credentials grant (RFC 6749 §4.4) issues EdDSA-signed JWT access tokens
//! ([`warden_policy::jwt::mint`]) that the broker accepts in the CONNECT password field; their
//! keys are published as a JWKS, and tokens can be introspected (RFC 7662) and revoked
//! (RFC 7009). Endpoints, all answering with `Cache-Control: no-store`:
//!
//! | Method | Path | |
//! |---|---|---|
//! | POST | `/oauth/token` | `grant_type=client_credentials`, optional `scope` |
//! | POST | `/oauth/introspect` | `token`; client authentication required |
//! | POST | `/oauth/revoke` | `token`; client authentication required |
//! | GET | `/.well-known/jwks.json` | current and rotated-out public keys |
//! | GET | `/.well-known/oauth-authorization-server` | RFC 8414 metadata |
//!
//! Clients authenticate with HTTP Basic (`client_secret_basic`, id and secret form-urlencoded
//! before base64) or `client_id` + `client_secret` form parameters (`client_secret_post`),
//! never both. Errors are RFC 6749 §5.2 JSON (`error`, `error_description`). Secrets and
//! tokens are never logged.
//!
//! The admin REST API ([`admin`], `/admin/...`) is mounted next to it by the broker.
//!
//! # Layout
//! - [`admin`]: the admin API router over an [`admin::AdminBackend`] the broker implements;
//!   `admin::audit`: the audit trail's record and time formats.
//! - [`service`]: [`OAuthService`], the shared state: clients, signing keys and rotation,
//!   token issuance and verification, the revocation list and its callbacks.
//! - [`console`]: the security console's page and assets, embedded, at `/console/`.
//! - [`routes`]: [`router`], the axum handlers of the endpoints above.
//! - [`secrets`]: the per-address failure guard and the hashing budget shared with MQTT,
//!   through which every client secret and admin token is checked.
//! - `request`: form parameters (RFC 6749 §3.2) and client credentials (§2.3.1).
//! - `error`: [`HttpError`], the crate's one error type, and the one place mapping it to what
//!   the peer is told (status, RFC 6749 §5.2 `error` code, `Retry-After`, challenge) for both
//!   APIs; policy-store, hashing and secret-check errors become an [`HttpError`] there. Also
//!   the `no-store` headers.
//! - `tests`: the endpoints end to end through the router (no sockets); `admin/tests.rs` the
//!   admin API likewise.

// Workspace lints of issue 18, enabled per crate until every crate is clean.

pub mod admin;
pub mod console;
mod error;
mod request;
pub mod routes;
pub mod secrets;
pub mod service;
#[cfg(test)]
mod tests;

pub use error::HttpError;
pub use routes::{router, MAX_BODY_BYTES};
pub use secrets::{FailureGuard, HashBudget, HashClass, HashError, PeerAddr, SecretChecks, Throttled};
pub use service::{OAuthClient, OAuthService, OAuthSettings, TokenRejected};
pub use warden_policy::jwt::{KeySet, SigningKey, VerifiedToken};
