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
//!
//! The sessions a dead node kept expire: one live node (the [`Reaper`]: the smallest live
//! name) discards each once its expiry passed since the node's death, or since its disconnect
//! when it was already offline there — its client id's entry, then its record, each by a
//! compare-and-set on the revision read, so that a resume meanwhile wins [MQTT-4.1.0-2].
//! Nothing in the messages stream is kept for a session: its position is a number here.

use std::collections::{HashMap, HashSet};
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

/// When a dead node's kept session ends (Unix seconds; `None`: never, expiry 0xFFFFFFFF
/// [MQTT-3.1.2-23]). `claim` is its client id's entry when it names the dead node `node`:
/// a session already offline there ended at the entry's end (its disconnect plus its expiry);
/// one whose connection was live when the node died counts its expiry from the death
/// (`died_at`: when its lease was seen gone) [MQTT-4.1.0-2].
pub(crate) fn dead_session_end(expiry: u32, claim: Option<&crate::registry::Claim>, died_at: u64) -> Option<u64> {
    if expiry == u32::MAX {
        return None;
    }
    match claim {
        Some(c) if c.conn == 0 && c.expires_at != 0 => {
            Some(c.expires_at.min(died_at.saturating_add(u64::from(expiry))))
        }
        _ => Some(died_at.saturating_add(u64::from(expiry))),
    }
}

/// A dead node's kept session waiting for its end ([`dead_session_end`]), with the revisions
/// read: it is discarded only while both are still those (a resume meanwhile wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Doomed {
    pub(crate) client_id: String,
    pub(crate) node: String,
    /// Unix seconds.
    pub(crate) ends_at: u64,
    /// The record's revision.
    pub(crate) record: u64,
    /// Its client id's entry's revision, while the entry names the dead node.
    pub(crate) claim: Option<u64>,
}

/// How long a dead node's expired session whose client id's entry changed (a CONNECT claimed
/// it: perhaps resuming it) is left before its record alone is discarded, if still the same.
pub(crate) const RESUME_GRACE: u64 = 30;

/// A dead node's record read with its revision, and its client id's entry with its revision.
pub(crate) type ReadRecord = (SessionRecord, u64, Option<(crate::registry::Claim, u64)>);

/// What one node knows of the dead nodes' kept sessions. Every node reads the leases every
/// [`crate::wills::REAP_EVERY`] and notes when each node it saw alive was first seen without
/// one (its death); the live node with the smallest name (the *reaper*) reads the sessions
/// bucket when it becomes the reaper and when a node dies, keeps the end of each dead node's
/// session ([`dead_session_end`]) and discards it then ([`crate::Cluster`]'s
/// `discard_expired`). Two nodes that both think themselves the reaper for a moment are
/// harmless: every discard is a compare-and-set on the revisions read.
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    /// The nodes holding a lease at the last look.
    alive: HashSet<String>,
    /// Dead nodes: when first seen so (Unix seconds).
    died: HashMap<String, u64>,
    /// The dead nodes whose sessions are in `pending`.
    scanned: HashSet<String>,
    /// This node was the reaper at the last look.
    reaping: bool,
    /// The bucket must be read whole (this node just became the reaper).
    read_all: bool,
    /// The dead nodes' sessions with an end, by client id.
    pending: HashMap<String, Doomed>,
}

impl Reaper {
    /// The nodes holding a lease now (`me` among them): true when `me` is the reaper.
    pub(crate) fn observe(&mut self, live: &HashSet<String>, me: &str, now: u64) -> bool {
        for gone in self.alive.difference(live) {
            self.died.entry(gone.clone()).or_insert(now);
        }
        for n in live {
            // Back (restarted under its name): its records are its own again.
            self.died.remove(n);
            self.scanned.remove(n);
        }
        self.pending.retain(|_, d| !live.contains(&d.node));
        self.alive = live.clone();
        let reaper = live.iter().min().is_some_and(|n| n == me);
        if !reaper {
            self.reaping = false;
            self.pending.clear();
            self.scanned.clear();
        } else if !self.reaping {
            self.reaping = true;
            self.read_all = true;
        }
        reaper
    }

    /// The sessions bucket must be read (this node became the reaper, or a node died since).
    pub(crate) fn needs_scan(&self) -> bool {
        self.read_all || self.died.keys().any(|n| !self.scanned.contains(n))
    }

    /// The dead nodes' records read now, each with its client id's entry (and revision) when
    /// that names the record's node: their ends replace what was kept.
    pub(crate) fn scanned(&mut self, records: Vec<ReadRecord>, now: u64) {
        self.pending.clear();
        self.read_all = false;
        self.scanned = self.died.keys().cloned().collect();
        for (r, rev, claim) in records {
            if self.alive.contains(&r.node) {
                continue;
            }
            let died_at = *self.died.entry(r.node.clone()).or_insert(now);
            self.scanned.insert(r.node.clone());
            let claim = claim.filter(|(c, _)| c.node == r.node);
            if let Some(ends_at) = dead_session_end(r.expiry, claim.as_ref().map(|(c, _)| c), died_at) {
                let d =
                    Doomed { client_id: r.client_id, node: r.node, ends_at, record: rev, claim: claim.map(|(_, v)| v) };
                self.pending.insert(d.client_id.clone(), d);
            }
        }
    }

    /// The sessions whose end has come (taken out).
    pub(crate) fn due(&mut self, now: u64) -> Vec<Doomed> {
        let ids: Vec<String> = self.pending.iter().filter(|(_, d)| d.ends_at <= now).map(|(k, _)| k.clone()).collect();
        ids.into_iter().filter_map(|k| self.pending.remove(&k)).collect()
    }

    /// Keep `d` for later (a discard that failed, or waits for a resume's grace).
    pub(crate) fn again(&mut self, d: Doomed) {
        if self.reaping && !self.alive.contains(&d.node) {
            self.pending.entry(d.client_id.clone()).or_insert(d);
        }
    }
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
        Ok(self.all_revisions().await?.into_iter().map(|(r, _)| r).collect())
    }

    /// [`Sessions::all`], each record with its revision.
    pub(crate) async fn all_revisions(&self) -> Result<Vec<(SessionRecord, u64)>, BoxError> {
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
                        out.push((r, e.revision));
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

    /// Delete `client_id`'s record if it is still revision `revision` (compare-and-set):
    /// true when this call deleted it, false when it changed since (or is gone).
    pub(crate) async fn remove_at(&self, client_id: &str, revision: u64) -> Result<bool, BoxError> {
        match timed(self.kv.delete_expect_revision(key(client_id), Some(revision))).await {
            Ok(()) => Ok(true),
            Err(e) => match self.get(client_id).await? {
                Some((_, r)) if r == revision => Err(e),
                _ => Ok(false),
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Claim;

    fn claim(conn: u64, expires_at: u64) -> Claim {
        Claim { client_id: "x".into(), node: "a".into(), conn, identity: "user:alice".into(), expires_at }
    }

    #[test]
    fn a_dead_nodes_session_ends_its_expiry_after_the_death_or_its_disconnect() {
        // Connected when the node died: from the death.
        assert_eq!(dead_session_end(2, Some(&claim(7, 0)), 1000), Some(1002));
        assert_eq!(dead_session_end(3600, None, 1000), Some(4600), "no entry naming the node");
        // Offline already: from its disconnect (the entry's end), never later than from the death.
        assert_eq!(dead_session_end(60, Some(&claim(0, 950)), 1000), Some(950));
        assert_eq!(dead_session_end(60, Some(&claim(0, 5000)), 1000), Some(1060));
        // 0xFFFFFFFF: never [MQTT-3.1.2-23].
        assert_eq!(dead_session_end(u32::MAX, Some(&claim(7, 0)), 1000), None);
        assert_eq!(dead_session_end(u32::MAX, Some(&claim(0, 9000)), 1000), None);
    }

    fn record(id: &str, node: &str, expiry: u32) -> SessionRecord {
        SessionRecord { client_id: id.into(), node: node.into(), expiry, subs: Vec::new(), position: 0 }
    }

    #[test]
    fn the_reaper_is_one_node_and_counts_from_the_death_it_saw() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<String>>();
        let (mut a, mut b) = (Reaper::default(), Reaper::default());
        assert!(a.observe(&set(&["a", "b", "c"]), "a", 100), "the smallest live name reaps");
        assert!(!b.observe(&set(&["a", "b", "c"]), "b", 100));
        assert!(a.needs_scan(), "a first read when it becomes the reaper");
        a.scanned(Vec::new(), 100);
        assert!(!a.needs_scan());
        // c dies (seen at 120): a reads the bucket again.
        assert!(a.observe(&set(&["a", "b"]), "a", 120));
        assert!(!b.observe(&set(&["a", "b"]), "b", 120));
        assert!(a.needs_scan());
        let mut c2 = claim(7, 0);
        c2.node = "c".into();
        a.scanned(
            vec![
                (record("two", "c", 2), 5, Some((c2.clone(), 9))),
                (record("hour", "c", 3600), 6, None),
                (record("ever", "c", u32::MAX), 7, None),
                (record("live", "b", 2), 8, None),
            ],
            130,
        );
        assert!(!a.needs_scan());
        assert!(a.due(121).is_empty());
        assert_eq!(
            a.due(122),
            vec![Doomed { client_id: "two".into(), node: "c".into(), ends_at: 122, record: 5, claim: Some(9) }]
        );
        assert!(a.due(3719).is_empty());
        assert_eq!(a.due(3720).len(), 1, "the hour's one");
        assert!(a.due(u64::MAX).is_empty(), "0xFFFFFFFF never ends; a live node's is its own");
        // a dies: b becomes the reaper and reads the bucket; c's death counts from when b saw it.
        assert!(b.observe(&set(&["b"]), "b", 140));
        assert!(b.needs_scan());
        b.scanned(vec![(record("hour", "c", 3600), 6, None)], 141);
        assert_eq!(b.due(3720).len(), 1);
    }
}
