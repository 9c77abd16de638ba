//! Warden, a secure MQTT broker: the async shell around `warden-core`.
//!
//! # Layout
//! - [`config`]: TOML configuration → validated [`config::Config`] (errors with file:line).
//! - [`auth`]: authentication of CONNECT credentials (password file, anonymous), run off the
//!   async threads for slow hashes; reloadable on SIGHUP.
//! - [`sd_notify`]: systemd readiness (`Type=notify`).
//! - [`server`]: listeners (TCP, WebSocket), the accept loops, housekeeping and `$SYS` timers;
//!   the one place where concurrency is decided.
//! - [`conn`]: the task that drives one client connection: socket ↔ codec ↔ core.
//! - [`tls`]: TLS listeners (rustls), client-certificate identity, reload.
//! - [`tokens`]: access tokens in the CONNECT password (built-in token service, `[auth.jwt]`).
//! - [`http_serve`]: the HTTP listener's serving loop: connection caps, header and request
//!   timeouts, body limit, ban list, graceful shutdown.
//! - [`fdlimit`]: the file descriptor limit, raised at start and divided between the listeners.
//! - [`guard`]: per-address admission: connection caps, connect rate, failed-auth bans.
//! - [`limits`]: publish rate/bandwidth buckets, the `max_memory` gauge, log-once-per-interval.
//! - [`revocations`]: the token service's revocations, kept in the data directory.
//! - [`ws`]: WebSocket transport (`/mqtt`, subprotocol `mqtt`) bridged to a byte stream.
//! - [`bootstrap`]: first-start set-up of the embedded default (admin user).
//! - [`import_cmd`]: `warden import` (Mosquitto dynamic-security JSON, mosquitto.conf).
//! - [`passwd_cmd`]: `warden passwd`.
//! - [`policy_store`]: the policy store on disk (`policy.json`) and live (authorizer swap),
//!   and the audited authorizer the broker runs.
//! - [`admin_cmd`]: `warden admin …`, the CLI over the admin API.
//! - [`admin_backend`]: the broker side of the admin API (policy, clients, kick, bans).
//! - [`live`]: the registry of live connections (list, kick, disconnect a user's).
//! - [`trust`]: the one place a change of trust (token revoked, OAuth client deleted or
//!   narrowed, CRL or password file reloaded, store user disabled) is applied to live
//!   connections and pending wills (SPEC §10).
//! - [`bans`]: the admin ban list (client id, user name, IP, CIDR; persisted).
//! - [`metrics`]: `GET /metrics`, the Prometheus text rendered from the broker's counters.
//! - [`logging`]: the log filter (`[log] level`, `RUST_LOG`, rustls' SNI warning silenced) and
//!   the `[log] file` writer, reopened on SIGHUP/SIGUSR1 for logrotate.
//! - [`logsafe`]: peer-supplied strings in log lines, control characters escaped.

pub mod admin_backend;
pub mod admin_cmd;
pub mod audit_log;
pub mod auth;
pub mod bans;
pub mod bootstrap;
pub mod cert_cmd;
pub mod config;
pub mod conn;
pub mod fdlimit;
pub mod guard;
pub mod http_serve;
pub mod import_cmd;
pub mod limits;
pub mod live;
pub mod logging;
pub mod logsafe;
pub mod lookup;
pub mod metrics;
pub mod oauth_store;
pub mod park;
pub mod passwd_cmd;
pub mod policy_store;
pub mod revocations;
pub mod sd_notify;
pub mod server;
pub mod tls;
pub mod token_cmd;
pub mod tokens;
pub mod trust;
pub mod ws;
