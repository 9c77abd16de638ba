//! Sessions that outlive their connections, across nodes (SPEC §11 "a session keeps a
//! position, never a consumer").
//!
//! Each lasting session (expiry > 0) has a record in the JetStream KV bucket
//! `{PREFIX}_SESSIONS` (key: SHA-256 of the client id): the node that holds it, its expiry, its
//! subscriptions and a *position* in the messages stream (`{PREFIX}_MSGS`, every QoS 1/2
//! message once). The holding node keeps the record in step with the session (the core tells
//! it, [`warden_core::fabric::Fabric::session_saved`]). When the client comes back on another
//! node, that node takes the record, makes the session with its subscriptions, waits until
//! they are in force on NATS, and then queues every QoS 1/2 message of the stream after the
//! position that one of them matches, up to the stream's position at that moment — which
//! becomes the record's position, the record now this node's. The old node is told to discard
//! its copy.
//!
//! The position is a sequence the node had seen in the stream at least half a second before
//! the session was made, or before a change at which the session had nothing queued or in
//! flight (its client had acknowledged all it was sent); while messages wait for the client it
//! stays where it was. The promise is at least once: a resume may deliver again messages the
//! old node delivered after the position, and messages published shortly before the session
//! subscribed.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use crate::registry::{key, timed};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most messages one resume replays (the stream's limits bound it too).
pub const MAX_REPLAY: usize = 100_000;
/// The longest a resume's replay may take.
const REPLAY_TIME: Duration = Duration::from_secs(10);

/// One subscription of a session record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRecord {
    /// The filter as subscribed (`$share/…` included).
    pub filter: String,
    /// The MQTT 5 subscription options byte.
    pub options: u8,
    /// The subscription identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

/// A session's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client id.
    pub client_id: String,
    /// The node holding the session.
    pub node: String,
    /// The session expiry interval (seconds).
    pub expiry: u32,
    /// Its subscriptions.
    pub subs: Vec<SubRecord>,
    /// The messages stream's sequence after which a resume elsewhere replays what the
    /// session's subscriptions match: a sequence the holding node had seen in the stream before
    /// the session was made, taken from another node, or last had nothing queued or in flight.
    pub position: u64,
}

/// A change the core reported, for the sessions task.
pub(crate) enum SessionOp {
    /// `mark`: the stream position the node had seen before the change (at least half a
    /// second before: a message kept by the stream before it may still be on its way to this
    /// node); `settled`: nothing was queued or in flight for the session.
    Saved {
        client_id: String,
        expiry: u32,
        subs: Vec<SubRecord>,
        mark: u64,
        settled: bool,
    },
    Ended {
        client_id: String,
    },
}

pub(crate) fn sessions_bucket(prefix: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: format!("{prefix}_SESSIONS"),
        history: 1,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// The sessions bucket as one node uses it.
pub(crate) struct Sessions {
    pub(crate) kv: kv::Store,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) msgs_stream: String,
    pub(crate) node: String,
}

impl Sessions {
    /// The record of `client_id` and its revision.
    pub(crate) async fn get(&self, client_id: &str) -> Result<Option<(SessionRecord, u64)>, BoxError> {
        let e = timed(self.kv.entry(key(client_id))).await?;
        Ok(e.filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<SessionRecord>(&e.value).ok().map(|r| (r, e.revision))))
    }

    /// The messages stream's last sequence (0 when it does not exist yet).
    pub(crate) async fn stream_position(&self) -> Result<u64, BoxError> {
        match timed(self.js.get_stream(&self.msgs_stream)).await {
            Ok(mut s) => Ok(timed(s.info()).await?.state.last_sequence),
            Err(e) if e.to_string().contains("not found") => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Apply one change of a session this node holds: written when the record is this
    /// node's or missing; a record another node holds is that node's (this node is about to
    /// be told to discard its copy). The position is the change's mark when the record is
    /// new, and moves up to it when the session was settled (everything before the mark that
    /// it matched was delivered and acknowledged); otherwise it stays (the messages queued
    /// here are after it, and a resume elsewhere replays them).
    pub(crate) async fn apply(&self, op: SessionOp) -> Result<(), BoxError> {
        match op {
            SessionOp::Saved { client_id, expiry, subs, mark, settled } => {
                let k = key(&client_id);
                match self.get(&client_id).await? {
                    Some((r, _)) if r.node != self.node => Ok(()),
                    Some((mut r, rev)) => {
                        r.expiry = expiry;
                        r.subs = subs;
                        if settled {
                            r.position = r.position.max(mark);
                        }
                        timed(self.kv.update(&k, serde_json::to_vec(&r)?.into(), rev)).await?;
                        Ok(())
                    }
                    None => {
                        let r = SessionRecord { client_id, node: self.node.clone(), expiry, subs, position: mark };
                        timed(self.kv.create(&k, serde_json::to_vec(&r)?.into())).await?;
                        Ok(())
                    }
                }
            }
            SessionOp::Ended { client_id } => match self.get(&client_id).await? {
                Some((r, rev)) if r.node == self.node => {
                    timed(self.kv.delete_expect_revision(key(&client_id), Some(rev))).await?;
                    Ok(())
                }
                _ => Ok(()),
            },
        }
    }

    /// Every record in the bucket now (its last version of each key, read by one ordered
    /// consumer, at most [`crate::registry::timed`]'s bound for the whole listing).
    pub(crate) async fn all(&self) -> Result<Vec<SessionRecord>, BoxError> {
        use futures_util::StreamExt;
        // The bucket's stream now (the store's own status is the one cached when it was made).
        let mut stream = timed(self.js.get_stream(format!("KV_{}", self.kv.name))).await?;
        if timed(stream.info()).await?.state.messages == 0 {
            return Ok(Vec::new()); // a watch would wait for the first change
        }
        timed(async {
            let mut w = self.kv.watch_with_history(">").await?;
            let mut out = Vec::new();
            while let Some(e) = w.next().await {
                let e = e?;
                if e.operation == kv::Operation::Put {
                    if let Ok(r) = serde_json::from_slice::<SessionRecord>(&e.value) {
                        out.push(r);
                    }
                }
                if e.delta == 0 {
                    break;
                }
            }
            Ok::<_, BoxError>(out)
        })
        .await
    }

    /// Delete `client_id`'s record if node `node` holds it (compare-and-set on the revision
    /// read): true when it was deleted.
    pub(crate) async fn remove_of(&self, client_id: &str, node: &str) -> Result<bool, BoxError> {
        match self.get(client_id).await? {
            Some((r, rev)) if r.node == node => {
                timed(self.kv.delete_expect_revision(key(client_id), Some(rev))).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Write `record` as this node's (a resume here), whatever the record was.
    pub(crate) async fn take(&self, record: &SessionRecord) -> Result<(), BoxError> {
        timed(self.kv.put(key(&record.client_id), serde_json::to_vec(record)?.into())).await?;
        Ok(())
    }

    /// The QoS 1/2 messages of the stream after `after` up to `upto` on `subjects` (envelopes
    /// as published), in order, at most [`MAX_REPLAY`], within [`REPLAY_TIME`].
    pub(crate) async fn replay(
        &self,
        after: u64,
        upto: u64,
        subjects: Vec<String>,
    ) -> Result<Vec<bytes::Bytes>, BoxError> {
        use async_nats::jetstream::consumer;
        use futures_util::StreamExt;
        if upto <= after || subjects.is_empty() {
            return Ok(Vec::new());
        }
        let stream = timed(self.js.get_stream(&self.msgs_stream)).await?;
        // An ephemeral consumer (gone after 30 s unused) that acknowledges nothing: a read of
        // the stream, not a delivery state (the session's position is the state).
        let c = timed(stream.create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ack_policy: consumer::AckPolicy::None,
            filter_subjects: subjects,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        }))
        .await?;
        let mut c = c;
        // The messages on these subjects after `after` now: read that many (the count is
        // exact where a delivery's own "pending" is not, on a consumer still filling).
        let want = timed(c.info()).await?.num_pending;
        if want == 0 {
            return Ok(Vec::new());
        }
        let mut msgs = timed(c.messages()).await?;
        let mut out = Vec::new();
        let read = async {
            while let Some(m) = msgs.next().await {
                let m = m?;
                let seq = m.info().map_or(u64::MAX, |i| i.stream_sequence);
                if seq > upto {
                    break;
                }
                out.push(m.message.payload.clone());
                if out.len() as u64 >= want || seq >= upto || out.len() >= MAX_REPLAY {
                    break;
                }
            }
            Ok::<(), BoxError>(())
        };
        match tokio::time::timeout(REPLAY_TIME, read).await {
            Ok(r) => r?,
            Err(_) => tracing::warn!(replayed = out.len(), "cluster: a session's replay took too long; stopped there"),
        }
        Ok(out)
    }
}
