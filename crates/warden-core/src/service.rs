//! Requests to the broker itself: `$warden/` topics.
//!
//! Every topic under `$warden/` is the broker's. A client's PUBLISH there (once the authorizer
//! allowed it: a client may only use its own request topics, see `warden_policy::enroll`) is
//! never routed nor retained: it is handed to the shell's [`Services`], which answers later by
//! queueing a message for that client alone ([`crate::Broker::replay_to`]). So no client can
//! publish a message another client would take for the broker's (an enrollment answer, an
//! event), whatever grants it holds.

use std::sync::Arc;

use bytes::Bytes;
use mqtt_codec::{ReasonCode, TopicName};
use warden_policy::Principal;

/// The broker's own topics.
pub const PREFIX: &str = "$warden/";

/// Whether `topic` is one of the broker's own.
#[inline]
pub fn is_service_topic(topic: &str) -> bool {
    topic.starts_with(PREFIX)
}

/// A client's PUBLISH to a `$warden/` topic.
#[derive(Debug, Clone)]
pub struct ServiceRequest {
    /// Who sent it.
    pub principal: Arc<Principal>,
    /// From which client id (its answers go to this session).
    pub client_id: Arc<str>,
    /// The topic it was published to.
    pub topic: TopicName,
    /// Its payload.
    pub payload: Bytes,
    /// MQTT v5 Correlation Data, echoed in the answer.
    pub correlation_data: Option<Bytes>,
}

/// The shell's handler of `$warden/` requests.
pub trait Services: Send + Sync {
    /// Take `req`, without blocking: the answer, if any, is queued later. Returns the reason
    /// code of its acknowledgement (v5): success when it was taken, e.g. 0x90 Topic Name
    /// invalid for a topic no service has, 0x97 Quota exceeded when too many are pending.
    fn request(&self, req: ServiceRequest) -> ReasonCode;
}
