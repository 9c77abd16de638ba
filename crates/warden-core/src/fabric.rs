//! The seam between the core and a cluster of brokers (SPEC §11; the `warden-cluster` crate
//! implements it over NATS). Without a fabric (the single-node default) nothing here runs.
//!
//! The core tells the fabric, synchronously and in the order things happen, what other nodes
//! need: the messages its clients publish ([`Fabric::forward`]), the retained messages they keep
//! ([`Fabric::retained`]) and the distinct filters its sessions subscribe to
//! ([`Fabric::interest`]: a change is reported when a filter gets its first subscriber on this
//! node or loses its last, and for a shared group when the group appears or disappears here).
//! The fabric must not block: it hands the work to its own tasks.
//!
//! With a fabric, shared subscriptions are the fabric's: a message published here reaches a
//! `$share` group only through it (so that one member across the cluster gets it, whichever
//! node it is on), and the fabric hands this node the messages its group should take
//! ([`crate::Broker::route_from_peer_group`]). Plain subscribers here get local messages
//! directly and other nodes' messages through [`crate::Broker::route_from_peer`].

use std::sync::Arc;

use mqtt_codec::LastWill;
use warden_policy::Principal;

use crate::message::Message;
use crate::retained::RetainSource;
use crate::session::Subscription;

/// A change of this node's interest (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    /// The shared group's name (`None`: plain subscriptions).
    pub group: Option<Arc<str>>,
    /// The filter to match (after `$share/{group}/` for a shared one).
    pub filter: Arc<str>,
    /// True when it appeared, false when it went away.
    pub present: bool,
}

/// What the core gives to the other nodes of a cluster. Calls never block.
pub trait Fabric: Send + Sync {
    /// Messages accepted from this node's clients (or its wills), in order. `$SYS` topics are
    /// never forwarded (each node has its own).
    fn forward(&self, msgs: &[Arc<Message>]);
    /// A retained message kept on this node (empty payload: the topic was cleared).
    fn retained(&self, msg: &Arc<Message>, source: &RetainSource);
    /// This node's interest changed.
    fn interest(&self, change: Interest);
    /// How many interest changes were handed over so far: a ticket that a SUBACK waits for
    /// (the shell asks the fabric when it is in force, [`crate::Connection::take_interest_wait`]).
    fn issued(&self) -> u64;
    /// How many batches with QoS 1 or 2 messages were handed to [`Fabric::forward`] so far:
    /// a ticket that their acknowledgements (PUBACK, PUBREC) wait for — the fabric keeps them
    /// durably before it says so ([`crate::Connection::take_forward_wait`]). 0 when the fabric
    /// keeps nothing.
    fn stored_issued(&self) -> u64 {
        0
    }
    /// A session that outlives its connections (expiry > 0) was made, resumed or changed its
    /// subscriptions: `subs` are all of them now (the cluster keeps a copy, so that another
    /// node can resume it). `settled`: nothing is queued for it or in flight to it (every
    /// message it was sent so far was acknowledged), so another node resuming it needs only
    /// what is published from now on. Called under the session's lock, in the order of its
    /// changes.
    fn session_saved(&self, _client_id: &Arc<str>, _expiry: u32, _subs: Vec<Subscription>, _settled: bool) {}
    /// A session ended (its copy goes).
    fn session_ended(&self, _client_id: &Arc<str>) {}
    /// Connection `generation` of `client_id`, of principal `owner`, was accepted with a will
    /// that is published `delay` seconds after the connection ends (the will delay, at most
    /// the session's expiry): the cluster keeps a copy, so that another node publishes it if
    /// this node dies (SPEC §11). Replaces any earlier copy of the client id's.
    fn will_set(
        &self,
        _client_id: &Arc<str>,
        _generation: u64,
        _owner: &Arc<Principal>,
        _will: &LastWill,
        _delay: u32,
    ) {
    }
    /// The will of connection `generation` of `client_id` is no longer this node's to keep:
    /// published here, discarded (normal DISCONNECT, trust change, a new connection before its
    /// delay passed) or gone with its session. A copy of a later connection stays.
    fn will_cleared(&self, _client_id: &Arc<str>, _generation: u64) {}
}
