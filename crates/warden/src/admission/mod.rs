//! Admission and abuse limits: who may open a connection, and how much one may do.
//!
//! # Layout
//! - [`guard`]: per-address admission: connection caps, connect rate, failed-auth backoff and
//!   bans.
//! - [`bans`]: the admin ban list (client id, user name, IP, CIDR; persisted).
//! - [`limits`]: publish rate/bandwidth buckets, the `max_memory` gauge, log bursts.
//! - [`fdlimit`]: the file descriptor limit, raised at start and divided between listeners.

pub mod bans;
pub mod fdlimit;
pub mod guard;
pub mod limits;
