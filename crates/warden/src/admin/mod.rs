//! The broker's live state as the admin API and the trust lifecycle see it: the policy and OAuth stores, revocations, the audit trail, and the one
//! place a change of trust is applied.
//!
//! # Layout
//! - [`backend`]: the broker side of the admin API (policy, clients, kick, bans, sessions).
//! - [`trust`]: the one place a change of trust (token revoked, OAuth client deleted or
//!   narrowed, CRL or password file reloaded, store user disabled) is applied to live
//!   connections and pending wills (SPEC §10).
//! - [`policy_store`]: the policy store on disk (`policy.json`) and live (authorizer swap),
//!   and the audited authorizer the broker runs.
//! - [`oauth_store`]: the token service's OAuth clients, kept in the data directory.
//! - [`revocations`]: the token service's revocations, kept in the data directory.
//! - [`cluster_sync`]: what the other nodes of a cluster share, applied here (SPEC §11).
//! - [`audit_log`]: the audit trail of administrative and security events.
//! - [`posture`]: the posture audit (`warden audit`, `GET /admin/audit/posture`).

pub mod audit_log;
pub mod backend;
pub mod cluster_sync;
pub mod oauth_store;
pub mod policy_store;
pub mod posture;
pub mod revocations;
pub mod trust;
pub mod watch;
