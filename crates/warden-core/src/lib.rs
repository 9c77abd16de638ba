//! Warden's broker core, sans-IO: sessions, routing, retained messages, wills and the
//! per-connection MQTT state machine. The async shell (the `warden` crate) owns sockets,
//! timers, the store's I/O and the clock; it drives this crate with decoded packets and the
//! current time, and writes what this crate encodes.
//!
//! # The sans-IO contract
//! The core never reads a clock, never sleeps, never touches a socket or a file and spawns
//! nothing. Given the same inputs in the same order it produces the same outputs (the one
//! exception: the iteration order of a session's subscription map, seeded per process against
//! hash flooding, which no output depends on).
//!
//! ## Time
//! The caller owns time. Every input that needs it takes `now: Instant`; the `now` given to
//! [`Broker::new`] / [`Broker::with_store`] is the **clock origin**: the instants a session
//! keeps ([`session::Moment`]) count from it, and so does `$SYS/broker/uptime`. Pass
//! instants that never go backwards. A simulator passes a virtual clock (`sim::Sim`).
//! The seed of assigned client identifiers is an input too ([`BrokerConfig::id_seed`]).
//!
//! ## Inputs
//! - [`Broker::connect`]`(connect, principal, waker, enhanced_auth, now, out)`: an
//!   authenticated CONNECT (the shell ran authentication); returns the [`Connection`] or the
//!   refusal, the CONNACK written to `out` either way.
//! - [`Connection::note_input`]`(now)` once per read of bytes (whole packets or part of
//!   one): the keep alive counts from any input.
//! - [`Connection::handle`]`(packet, now, out)`: each decoded inbound packet, in order.
//! - [`Connection::handle_timeout`]`(now, out)`: the instant [`Connection::poll_timeout`]
//!   named has passed (keep alive 1.5× [MQTT-3.1.2-24], credential expiry set with
//!   [`Connection::set_credential_expiry`]).
//! - [`Connection::decode_error`], [`Connection::shutdown`], [`Connection::disconnect`]: the
//!   shell ends a connection (bad bytes, shutdown, a trust change or an administrator).
//! - [`Broker::tick`]`(now)` about once a second: delayed wills, session expiry, expired
//!   retained messages. [`Broker::publish_sys`]`(now)` every `sys_interval`.
//! - [`Broker::set_authorizer`] (a policy reload), [`Broker::restore`] (before the first
//!   connection), the trust seam ([`Broker::discard_wills_where`],
//!   [`Broker::drop_retained_where`], [`Broker::discard_session`]).
//!
//! ## Outputs
//! - Encoded packets appended to the caller's `out` buffer (CONNACK, acknowledgements,
//!   deliveries, a server DISCONNECT). The core never writes them anywhere itself.
//! - [`Wake::wake`] on the waker a connection registered: "call [`Connection::pull`]"
//!   (deliveries queued, or the session taken over). It may be called from any connection's
//!   task (the publisher's, at its `flush_wakes`): it must not block nor call back into the
//!   core, only schedule the woken connection's task.
//! - A [`Close`] (as `Err`) from `handle`, `pull` or `handle_timeout`: flush `out`, then
//!   close. Whether the will is published is in it.
//! - [`persist::PersistOp`]s submitted to the [`persist::Persist`] store in the order the
//!   changes happen, and a ticket ([`Connection::take_durable`]) the output written so far
//!   must wait for.
//! - [`Connection::poll_timeout`]: the next instant the core must be told about.
//!
//! ## Call order, per connection (one task drives it)
//! 1. `Broker::connect`; write the CONNACK.
//! 2. For each batch of bytes read: `note_input(now)`, then `handle(packet, now, out)` for
//!    every whole packet decoded (stop at the first `Err(close)`).
//! 3. After the batch: [`Connection::flush_wakes`] (routes the batch's PUBLISH packets and
//!    wakes their subscribers once each) **before** [`Connection::take_durable`]: routing
//!    stores what the acknowledgements must wait for, so the ticket is only complete after
//!    it. Then `pull(now, out, budget)` to add deliveries.
//! 4. Wait for the ticket `take_durable` returned (0: none) to be committed, then write `out`.
//! 5. When woken: `pull` again (it returns `Err` when the session was taken over); when
//!    `out` has drained below the budget and `pull` said `true`, pull again.
//! 6. At `poll_timeout()` (ask again after every input): `handle_timeout(now, out)`.
//! 7. Exactly once at the end (after a [`Close`], an I/O error or EOF):
//!    [`Connection::closed`]`(close, now)`; it publishes or keeps the will and detaches or
//!    ends the session.
//!
//! # Layout
//! - [`config`]: the limits the core enforces, and its inputs that are not time
//!   (`BrokerConfig`).
//! - [`message`]: an application message as routed (`Message`, shared by `Arc` among subscribers).
//! - [`trie`]: the subscription trie (`+`, `#`, `$`-topics, shared subscription groups).
//! - [`retained`]: retained messages, in a topic trie so a wildcard subscribe is cheap.
//! - [`session`]: session state that outlives connections: subscriptions, queue, inflight;
//!   [`session::Moment`], an instant counted from the broker's clock origin.
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
//!   `pull` outbound deliveries, encoded into a write buffer; keep alive and credential expiry
//!   as timeouts).
//! - `sim` (cargo feature `sim`): an in-memory simulator of many clients on a virtual clock,
//!   driving the core as the shell does; used by the tests (which turn the feature on) and the
//!   `session_ops` fuzz target, never built into the broker.
//!
//! # Concurrency contract
//! The broker is shared (`Arc<Broker>`); each connection is driven by one task. No lock is held
//! across the whole broker per message: routing takes the trie's read lock to collect targets,
//! releases it, then locks each target session briefly to enqueue and wakes its connection
//! through the [`Wake`] handle the shell registered.

pub mod broker;
pub mod config;
pub mod connection;
pub mod fabric;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod persist;
pub mod queue;
pub mod quota;
pub mod retained;
pub mod service;
pub mod session;
#[cfg(feature = "sim")]
pub mod sim;
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
