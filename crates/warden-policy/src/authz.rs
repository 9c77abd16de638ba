//! The authorization seam: one place where every publish, subscribe and delivery asks
//! "is this allowed?". The policy sources (ACL file, policy store, token scopes) plug in here.

use crate::Principal;

/// What a client is trying to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic name (with this QoS and retain flag).
    Publish {
        /// Requested QoS.
        qos: u8,
        /// Retain flag.
        retain: bool,
    },
    /// Subscribe to a topic filter (with this maximum QoS).
    Subscribe {
        /// Requested maximum QoS.
        qos: u8,
    },
    /// Receive a message published on a topic name (checked at delivery time).
    Receive,
}

/// The answer to an authorization question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied; `disconnect` says whether the client is disconnected (else acknowledged and dropped).
    Deny {
        /// Disconnect the client (v5 DISCONNECT 0x87) rather than acknowledge-and-drop.
        disconnect: bool,
    },
}

impl Decision {
    /// True when allowed.
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Decides what a principal may do. Implementations must be cheap: this is on the hot path.
pub trait Authorizer: Send + Sync {
    /// Decide `action` on `topic` (a topic name for publish/receive, a filter for subscribe).
    fn authorize(&self, principal: &Principal, client_id: &str, action: Action, topic: &str) -> Decision;
}

/// No authorization source configured: everything is allowed (Mosquitto's behaviour, SPEC §6);
/// the broker logs a warning at start when it runs with this.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: &Principal, _: &str, _: Action, _: &str) -> Decision {
        Decision::Allow
    }
}
