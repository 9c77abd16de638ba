//! Warden's broker core, sans-IO: sessions, routing, retained messages, wills and the
//! per-connection MQTT state machine. The async shell (the `warden` crate) owns sockets and
//! timers and drives this crate with decoded packets and the current time (`now`).
//!
//! # Layout
//! - [`config`]: the limits the core enforces (`BrokerConfig`).
//! - [`message`]: an application message as routed (`Message`, shared by `Arc` among subscribers).
//! - [`trie`]: the subscription trie (`+`, `#`, `$`-topics, shared subscription groups).
//! - [`retained`]: retained messages, in a topic trie so a wildcard subscribe is cheap.
//! - [`session`]: session state that outlives connections: subscriptions, queue, inflight.
//! - [`queue`]: a session's queue of deliveries, most of them runs sharing a publisher's batch.
//! - [`broker`]: the shared broker: client-id registry and takeover, publish routing, wills,
//!   session expiry, `$SYS`.
//! - [`persist`]: the seam to durable storage (what is stored, and when an acknowledgement
//!   must wait for it).
//! - [`limits`]: abuse-resistance counters and their `$SYS/broker/limits/...` topics.
//! - [`metrics`]: counters for the operator's metrics that `$SYS` does not carry
//!   (authentication attempts, denials by action, a latency histogram).
//! - [`quota`]: per-principal quotas (persistent sessions, subscriptions, retained messages)
//!   counted in the principal's account beside its queued bytes.
//! - [`connection`]: one client connection's protocol state machine (`handle` inbound packets,
//!   `pull` outbound deliveries, encoded into a write buffer).
//!
//! # Concurrency contract
//! The broker is shared (`Arc<Broker>`); each connection is driven by one task. No lock is held
//! across the whole broker per message: routing takes the trie's read lock to collect targets,
//! releases it, then locks each target session briefly to enqueue and wakes its connection
//! through the [`Wake`] handle the shell registered.

pub mod broker;
pub mod config;
pub mod connection;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod persist;
pub mod queue;
pub mod quota;
pub mod retained;
pub mod session;
pub mod trie;

pub use broker::{Broker, ConnectError, Stats};
pub use config::BrokerConfig;
pub use connection::{Close, Connection};
pub use message::Message;

/// How the core tells the shell "this connection has something to send (or must close)".
pub trait Wake: Send + Sync {
    /// Schedule the connection's task to call [`Connection::pull`]. Must not block.
    fn wake(&self);
}
