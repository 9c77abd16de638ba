//! Warden, a secure MQTT broker: the async shell around `warden-core`.
//!
//! # Layout
//! Folders name the parts; dependencies point one way (each line uses only lines above it):
//! - [`clock`], [`fsutil`], [`logsafe`], [`logging`], [`sd_notify`]: utilities (the one wall
//!   clock; the one atomic file writer; peer strings escaped in logs; the log filter and file; systemd readiness).
//! - [`config`]: TOML configuration → validated [`config::Config`] (errors with file:line).
//! - [`tls`]: TLS acceptors (rustls), client-certificate identity, reload.
//! - [`certs_seen`]: client certificates seen in TLS handshakes (the admin API lists them).
//! - [`error`]: the shell's one error tree ([`Error`]: configuration with file and line, I/O
//!   with what was being done, TLS, state files, store, cluster, …); `anyhow` only in the
//!   binary and [`cli`].
//! - [`admission`]: who may open a connection and how much one may do: per-address guard,
//!   bans, rate and memory limits, the file descriptor plan.
//! - [`auth`]: authentication of CONNECT credentials and its I/O workers (slow hashes on the
//!   blocking pool, access tokens, the third-party look-up).
//! - [`conn`]: where MQTT bytes hit the socket: the task driving one connection (socket ↔
//!   codec ↔ core), parking of idle connections, WebSocket transport, the live registry.
//! - [`admin`]: the broker side of the admin API, the policy and OAuth stores, revocations,
//!   the audit trail, and the one place a change of trust is applied ([`admin::trust`]).
//! - [`http`]: the HTTP listener's serving loop and `/metrics`.
//! - [`server`]: binds the listeners, runs the accept loops, housekeeping, `$SYS` and reload;
//!   the one place where concurrency is decided.
//! - [`cli`]: the commands beside `warden run` (passwd, cert, token, admin, import).

pub mod admin;
pub mod admission;
pub mod auth;
pub mod certs_seen;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod enroll;
pub mod error;
pub mod fsutil;
pub mod http;
pub mod logging;
pub mod logsafe;
pub mod pki;
pub mod sd_notify;
pub mod server;
pub mod tls;
pub mod watch;

pub use error::{Error, Result};
