//! The HTTP listener (admin API, OAuth token service, metrics): serving, and what only the
//! shell can render.
//!
//! # Layout
//! - [`serve`]: the serving loop: connection caps, header and request timeouts, body limit,
//!   ban list, TLS, graceful shutdown.
//! - [`metrics`]: `GET /metrics`, the Prometheus text rendered from the broker's counters.

pub mod metrics;
pub mod serve;
