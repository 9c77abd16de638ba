//! The seam between the core and durable storage (the `warden-store` crate implements it).
//!
//! The core reports every change to durable state as a [`PersistOp`] through [`Persist::submit`],
//! synchronously and in the order the changes happen. The store applies them in that order
//! (group commit: one transaction covers every op submitted meanwhile). `submit` returns a
//! *ticket*: output that acknowledges the change (a PUBACK, a PUBREC, a QoS 2 PUBLISH to a
//! subscriber) must not reach the network before the store says that ticket is committed.
//! Ticket 0 means "nothing to wait for" (the durability mode does not ask for it).
//!
//! What is persisted: sessions with a non-zero expiry interval (owner identity, expiry) and
//! their subscriptions, one record each (a SUBSCRIBE or UNSUBSCRIBE writes what it changed,
//! not the whole session), their QoS 1/2 deliveries (queued and in flight, with packet id and stage),
//! their inbound QoS 2 packet ids, and retained messages. A message fanned out to many
//! persistent sessions is stored once ([`PersistOp::Message`]) and referenced by each delivery;
//! it is dropped from the store when the last in-memory reference goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_codec::{QoS, TopicFilter, TopicName};
use warden_policy::Principal;

use crate::message::Message;
use crate::session::{OutStage, Subscription};

/// Durable storage as the core sees it.
pub trait Persist: Send + Sync {
    /// Record a change; returns the ticket an acknowledgement of it waits for (0: none).
    fn submit(&self, op: PersistOp) -> u64;
    /// A fresh id for a stored message or delivery (unique across restarts).
    fn next_id(&self) -> u64;
}

/// A session as stored (its subscriptions are stored on their own, see
/// [`PersistOp::Subscribe`]).
#[derive(Clone)]
pub struct SessionRecord {
    /// Session id (the key of its deliveries).
    pub sid: u64,
    /// Client identifier.
    pub client_id: Arc<str>,
    /// The principal the client id is bound to (identity, roles and scopes).
    pub owner: Principal,
    /// Session Expiry Interval (seconds; `u32::MAX` = never).
    pub expiry_interval: u32,
    /// When its last connection closed (None while connected).
    pub disconnected_at: Option<Instant>,
}

/// One change to durable state.
pub enum PersistOp {
    /// Create or replace a session record (without its subscriptions).
    Session(Box<SessionRecord>),
    /// Add or replace one subscription of a stored session.
    Subscribe {
        /// Session id.
        sid: u64,
        /// The subscription.
        sub: Subscription,
    },
    /// Remove one subscription of a stored session.
    Unsubscribe {
        /// Session id.
        sid: u64,
        /// Its filter.
        filter: TopicFilter,
    },
    /// A session ended: remove it with its subscriptions, deliveries and inbound QoS 2 state.
    SessionEnd {
        /// Session id.
        sid: u64,
    },
    /// Store a message body that deliveries refer to.
    Message {
        /// Message id.
        id: u64,
        /// The message.
        msg: Arc<Message>,
    },
    /// No delivery refers to this message any more.
    MessageDrop {
        /// Message id.
        id: u64,
    },
    /// Create or update a delivery of a session (queued when `stage` is None, in flight with
    /// its packet id otherwise).
    Delivery {
        /// Session id.
        sid: u64,
        /// Delivery sequence number (its order in the session's queue).
        seq: u64,
        /// The stored message it delivers.
        msg_id: u64,
        /// Delivery QoS.
        qos: QoS,
        /// RETAIN flag to send.
        retain: bool,
        /// Subscription identifiers.
        sub_ids: Vec<u32>,
        /// Packet id and stage once sent.
        stage: Option<(u16, OutStage)>,
        /// The first op of this delivery: its sequence number was just given and nothing was
        /// stored under it yet. The store may then skip it altogether when the delivery is
        /// done before it is committed (a delivery queued, sent and acknowledged within one
        /// commit window costs no write).
        new: bool,
    },
    /// A delivery is complete (acknowledged, expired or discarded).
    DeliveryDone {
        /// Session id.
        sid: u64,
        /// Delivery sequence number.
        seq: u64,
    },
    /// An inbound QoS 2 packet id was acknowledged with PUBREC (`present`) or released by
    /// PUBREL (`!present`).
    InboundQos2 {
        /// Session id.
        sid: u64,
        /// Packet identifier.
        packet_id: u16,
        /// Added or removed.
        present: bool,
    },
    /// Set (Some) or clear (None) the retained message of a topic.
    Retained {
        /// Topic.
        topic: TopicName,
        /// The message.
        msg: Option<Arc<Message>>,
        /// Who published it (stored so that its right to publish can be checked after a
        /// restart).
        source: crate::retained::RetainSource,
    },
}

impl PersistOp {
    /// True for the ops whose acknowledgement to a client must wait until they are durable
    /// in the default (`batched`) mode: an accepted message (for a session or retained), an
    /// inbound QoS 2 id before its PUBREC, an outbound QoS 2 packet id before the PUBLISH
    /// that carries it (exactly once across a crash).
    pub fn acknowledged(&self) -> bool {
        match self {
            PersistOp::Message { .. } | PersistOp::Retained { .. } => true,
            PersistOp::Delivery { stage: None, .. } => true,
            PersistOp::Delivery { stage: Some(_), qos, .. } => *qos == QoS::ExactlyOnce,
            PersistOp::InboundQos2 { present, .. } => *present,
            PersistOp::Session(_) | PersistOp::SessionEnd { .. } => false,
            PersistOp::Subscribe { .. } | PersistOp::Unsubscribe { .. } => false,
            PersistOp::MessageDrop { .. } | PersistOp::DeliveryDone { .. } => false,
        }
    }
}

/// The stored-message handle carried by a [`Message`] once it is persisted; dropping the
/// last reference to the message drops it from the store.
pub struct PersistedMsg {
    /// Message id.
    pub id: u64,
    sink: Arc<dyn Persist>,
}

impl PersistedMsg {
    /// A handle for message `id` in `sink`.
    pub fn new(id: u64, sink: Arc<dyn Persist>) -> Self {
        PersistedMsg { id, sink }
    }
}

impl Drop for PersistedMsg {
    fn drop(&mut self) {
        self.sink.submit(PersistOp::MessageDrop { id: self.id });
    }
}

impl std::fmt::Debug for PersistedMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PersistedMsg({})", self.id)
    }
}

/// A delivery read back from the store.
pub struct RestoredDelivery {
    /// Sequence number.
    pub seq: u64,
    /// The message (shared by every delivery of it).
    pub msg: Arc<Message>,
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
    /// Packet id and stage if it was in flight.
    pub stage: Option<(u16, OutStage)>,
}

/// A session read back from the store.
pub struct RestoredSession {
    /// Session id.
    pub sid: u64,
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Owner.
    pub owner: Principal,
    /// Session Expiry Interval.
    pub expiry_interval: u32,
    /// How long ago its last connection closed (zero if it was connected when the broker stopped).
    pub disconnected_for: Duration,
    /// Subscriptions.
    pub subscriptions: Vec<Subscription>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// Deliveries in queue order.
    pub deliveries: Vec<RestoredDelivery>,
}
