//! The cluster's client registry (SPEC §3 and §11): which node holds each client id, for which
//! principal — so that a client id is unique cluster-wide, a takeover reaches the node that
//! held it (DISCONNECT 0x8E there), and another principal is refused everywhere (0x87).
//!
//! One JetStream KV bucket, `{PREFIX}_CLIENTS`: key = SHA-256 of the client id (hex: any
//! client id becomes a valid key, and none reaches the NATS protocol), value = a [`Claim`].
//! Every write is a compare-and-set on the key's revision, so that two nodes that take the
//! same client id at once cannot both win. A second bucket, `{PREFIX}_NODES`, holds each
//! node's lease (its name, refreshed every [`LEASE_REFRESH`], gone after [`LEASE_TTL`]): a
//! claim of a node without a lease is stale and may be taken by anyone.
//!
//! A lasting session's record is in [`crate::sessions`]; its client id's entry here names the
//! node that keeps it, also after that node died (its principal resumes it on any node).

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a node's lease lasts without a refresh.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a node refreshes its lease.
pub const LEASE_REFRESH: Duration = Duration::from_secs(3);
/// The longest one registry operation may take before the CONNECT is refused as unavailable.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// One client id's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The client id.
    pub client_id: String,
    /// The node holding it.
    pub node: String,
    /// The connection (unique per node run) holding it, 0 when none is connected.
    pub conn: u64,
    /// The principal (`kind:name`) it belongs to.
    pub identity: String,
    /// While no connection holds it: when its session ends (Unix seconds); 0 = with the
    /// connection.
    #[serde(default)]
    pub expires_at: u64,
}

/// The answer to a CONNECT's claim.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimResult {
    /// The client id is this connection's. `takeover` names the node that held it for the
    /// same principal (already told to end its connection and discard its session copy): a
    /// resume takes the session from there ([`crate::Cluster::resume_session`]).
    Granted {
        /// The node that held the client id, if another one did.
        takeover: Option<String>,
    },
    /// Another principal holds the client id on another node: CONNACK 0x87.
    Refused,
    /// The registry could not be asked (NATS away, no quorum): CONNACK 0x88.
    Unavailable,
}

/// The registry key of a client id.
pub(crate) fn key(client_id: &str) -> String {
    let d = Sha256::digest(client_id.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The buckets' configuration.
pub(crate) fn clients_bucket(prefix: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: format!("{prefix}_CLIENTS"),
        history: 1,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

pub(crate) fn nodes_bucket(prefix: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: format!("{prefix}_NODES"),
        history: 1,
        max_age: LEASE_TTL,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// Make (or find) the KV bucket `config` with reads from its stream leader only. JetStream's
/// KV answers reads from any replica by default ("direct get"), which may lag the leader: a
/// claim decided on such a read let another principal take a client id a moment after its
/// owner did (seen with three NATS servers under load). The registry needs to read what the
/// last compare-and-set wrote.
pub(crate) async fn linearizable_kv(
    js: &async_nats::jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, Box<dyn std::error::Error + Send + Sync>> {
    kv_with_direct(js, config, false).await
}

/// Make (or find) the KV bucket `config`, its stream set to answer direct gets from every
/// replica (`direct`) or from its leader only. The client registry's bucket answers direct
/// gets: its own reads go to the leader all the same ([`Registry::entry`]), and a follower's
/// copy is read only while the leader is being elected ([`Registry::entry_from_replica`]).
pub(crate) async fn kv_with_direct(
    js: &async_nats::jetstream::Context,
    config: kv::Config,
    direct: bool,
) -> Result<kv::Store, Box<dyn std::error::Error + Send + Sync>> {
    let bucket = config.bucket.clone();
    let stream_name = format!("KV_{bucket}");
    // Made by the first node (another node's create would find a changed configuration).
    if js.get_stream(&stream_name).await.is_err() {
        if let Err(e) = js.create_key_value(config).await {
            tracing::debug!(error = %e, bucket, "cluster: creating a bucket failed (another node made it?)");
        }
    }
    let mut stream = js.get_stream(&stream_name).await?;
    let info = stream.info().await?;
    if info.config.allow_direct != direct {
        let mut c = info.config.clone();
        c.allow_direct = direct;
        js.update_stream(c).await?;
    }
    Ok(js.get_key_value(bucket).await?)
}

/// What a claim decides from the entry it found (pure: tested below).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write our claim (create when `revision` is `None`, else compare-and-set on it) and tell
    /// `takeover`'s node to end its connection.
    Take { revision: Option<u64>, takeover: Option<String> },
    /// The entry is this node's: the local broker decides (takeover or refusal), and the
    /// claim is written after it accepted.
    Local { revision: u64 },
    /// Another principal's, live: refuse.
    Refuse,
}

/// Decide a claim of `identity` on node `me`, from the current entry (`None`: no entry) and
/// whether its node holds a lease.
pub(crate) fn decide(me: &str, identity: &str, found: Option<(&Claim, u64)>, node_alive: bool, now: u64) -> Decision {
    let Some((c, revision)) = found else { return Decision::Take { revision: None, takeover: None } };
    if c.conn == 0 && c.expires_at != 0 && c.expires_at <= now {
        return Decision::Take { revision: Some(revision), takeover: None }; // its session ended
    }
    if !node_alive {
        // A dead node's: free. Its principal takes over the session the node kept (resumed
        // from its record in `{PREFIX}_SESSIONS`); its command to the dead node goes nowhere.
        let takeover = (c.identity == identity).then(|| c.node.clone());
        return Decision::Take { revision: Some(revision), takeover };
    }
    if c.node == me {
        return Decision::Local { revision };
    }
    if c.identity != identity {
        return Decision::Refuse;
    }
    // Connected there or not, the node holding the session is told to end it: its
    // connection (if any) with 0x8E, its copy of the session (taken here, if resumed).
    Decision::Take { revision: Some(revision), takeover: Some(c.node.clone()) }
}

/// Whether a CONNECT may be admitted while the bucket has no leader (an election: NATS waits
/// 4 to 9 s for a lost leader's heartbeat), from a replica's copy of the entry: only where no
/// other node is involved — a free client id, one whose kept session ended, or this node's
/// own entry (the local broker decides between its connections). `Some(revision)`: the
/// revision the claim is written on once the bucket has a leader (`None`: created).
/// Another node's entry waits for the leader, as before: its node may be alive, and its
/// principal's claim stands.
pub(crate) fn provisional(me: &str, found: Option<(&Claim, u64)>, now: u64) -> Option<Option<u64>> {
    match found {
        None => Some(None),
        Some((c, r)) if c.conn == 0 && c.expires_at != 0 && c.expires_at <= now => Some(Some(r)),
        Some((c, r)) if c.node == me => Some(Some(r)),
        Some(_) => None,
    }
}

/// What a provisional claim's writer does when its compare-and-set failed: the entry changed
/// since the replica's copy it was granted on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterConflict {
    /// Still free, or an older connection's of this node: write again on this revision.
    Retry(Option<u64>),
    /// It is this connection's already (an earlier try was written; its answer was lost).
    Ours,
    /// A newer connection of this node holds it: the local broker ended this one.
    Yield,
    /// Another node holds it (written before the leader was lost, or since): this
    /// connection ends, its session with it (DISCONNECT 0x8E).
    Lost,
}

/// Decide [`AfterConflict`] for connection `conn` of node `me` from the leader's entry.
/// Connection numbers grow within a node's run: a larger one is newer.
pub(crate) fn after_conflict(me: &str, conn: u64, found: Option<(&Claim, u64)>, now: u64) -> AfterConflict {
    match found {
        None => AfterConflict::Retry(None),
        Some((c, _)) if c.node == me && c.conn == conn => AfterConflict::Ours,
        Some((c, _)) if c.node == me && c.conn > conn => AfterConflict::Yield,
        Some((c, r)) if c.node == me => AfterConflict::Retry(Some(r)),
        Some((c, r)) if c.conn == 0 && c.expires_at != 0 && c.expires_at <= now => AfterConflict::Retry(Some(r)),
        Some(_) => AfterConflict::Lost,
    }
}

/// Why a write of a claim failed.
#[derive(Debug)]
pub(crate) enum WriteFailure {
    /// The entry is not at the revision written on (compare-and-set lost).
    Conflict,
    /// The bucket did not take it (no leader, no quorum, timed out).
    Unavailable(BoxError),
}

/// The registry as one node uses it.
pub(crate) struct Registry {
    pub(crate) clients: kv::Store,
    pub(crate) nodes: kv::Store,
    pub(crate) node: String,
    /// This run of the node (its lease's value: a will of another run of this node is a dead
    /// run's, [`crate::wills`]).
    pub(crate) run: u64,
}

/// A lease's value: the node's run.
pub(crate) fn lease_value(run: u64) -> bytes::Bytes {
    format!("run {run}").into()
}

/// The run a lease's value names (0: none).
pub(crate) fn lease_run(v: &[u8]) -> u64 {
    std::str::from_utf8(v).ok().and_then(|s| s.strip_prefix("run ")).and_then(|s| s.parse().ok()).unwrap_or(0)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest a replica's copy of an entry is waited for ([`Registry::entry_from_replica`]).
const REPLICA_READ: Duration = Duration::from_millis(1000);

/// A registry entry from its stream message: `None` for a deletion, a purge or a marker, or
/// a value that does not decode.
fn decode_entry(m: &async_nats::jetstream::message::StreamMessage) -> Option<(Claim, u64)> {
    let op = m.headers.get("KV-Operation").map(|v| v.as_str());
    if matches!(op, Some(o) if o != "PUT") || m.headers.get("Nats-Marker-Reason").is_some() {
        return None;
    }
    match serde_json::from_slice::<Claim>(&m.payload) {
        Ok(c) => Some((c, m.sequence)),
        Err(_) => {
            tracing::debug!("cluster: a client registry entry did not decode; treated as none");
            None
        }
    }
}

/// `f`, at most [`OP_TIMEOUT`] (the registry's and the sessions bucket's operations).
pub(crate) async fn timed<T, E: Into<BoxError>>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err("timed out".into()),
    }
}

/// Every key of `store` now, at most [`OP_TIMEOUT`] for the whole listing.
pub(crate) async fn all_keys(store: &kv::Store) -> Result<Vec<String>, BoxError> {
    use futures_util::TryStreamExt;
    timed(async {
        let keys = store.keys().await.map_err(|e| -> BoxError { e.into() })?;
        keys.try_collect::<Vec<String>>().await.map_err(|e| -> BoxError { e.into() })
    })
    .await
}

impl Registry {
    /// The current entry of `key` and its revision (deleted entries read as none), as the
    /// bucket's stream leader has it: what the last compare-and-set wrote. (The bucket answers
    /// direct gets from any replica, which may lag the leader: a claim decided on such a read
    /// let another principal take a client id a moment after its owner did, seen with three
    /// NATS servers under load; so the registry asks the leader, explicitly.)
    async fn entry(&self, key: &str) -> Result<Option<(Claim, u64)>, BoxError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subject = format!("{}{key}", self.clients.prefix);
        let m = timed(async {
            match self.clients.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => Ok(Some(m)),
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await?;
        Ok(m.and_then(|m| decode_entry(&m)))
    }

    /// `key`'s entry as any replica of the bucket has it (a direct get), answered while the
    /// bucket has no leader: the copy a follower applied, which may miss what the leader
    /// committed in its last moments. Only a provisional claim reads it
    /// ([`provisional`]), at most [`REPLICA_READ`].
    pub(crate) async fn entry_from_replica(&self, key: &str) -> Result<Option<(Claim, u64)>, BoxError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let subject = format!("{}{key}", self.clients.prefix);
        let m = match tokio::time::timeout(REPLICA_READ, self.clients.stream.direct_get_last_for_subject(subject)).await
        {
            Ok(Ok(m)) => Some(m),
            Ok(Err(e)) if matches!(e.kind(), DirectGetErrorKind::NotFound) => None,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("timed out".into()),
        };
        Ok(m.and_then(|m| decode_entry(&m)))
    }

    /// Whether `node` holds a lease (this node always does): one read, not a listing.
    pub(crate) async fn node_alive(&self, node: &str) -> Result<bool, BoxError> {
        if node == self.node {
            return Ok(true);
        }
        Ok(timed(self.nodes.get(node)).await?.is_some())
    }

    /// Refresh this node's lease.
    pub(crate) async fn renew(&self) -> Result<(), BoxError> {
        timed(self.nodes.put(&self.node, lease_value(self.run))).await?;
        Ok(())
    }

    /// Claim `client_id` for connection `conn` of principal `identity`. Returns the decision
    /// and, for [`Decision::Local`], the revision to write after the local broker accepted.
    pub(crate) async fn claim(
        &self,
        client_id: &str,
        identity: &str,
        conn: u64,
        now: u64,
    ) -> Result<(ClaimResult, Option<u64>), BoxError> {
        let key = key(client_id);
        let mine = Claim {
            client_id: client_id.to_owned(),
            node: self.node.clone(),
            conn,
            identity: identity.to_owned(),
            expires_at: 0,
        };
        let value: bytes::Bytes = serde_json::to_vec(&mine)?.into();
        // A compare-and-set lost to another node's write is tried again, a few times.
        for _ in 0..5 {
            let found = self.entry(&key).await?;
            let alive = match &found {
                Some((c, _)) => self.node_alive(&c.node).await?,
                None => true,
            };
            match decide(&self.node, identity, found.as_ref().map(|(c, r)| (c, *r)), alive, now) {
                Decision::Refuse => return Ok((ClaimResult::Refused, None)),
                Decision::Local { revision } => return Ok((ClaimResult::Granted { takeover: None }, Some(revision))),
                Decision::Take { revision, takeover } => {
                    let lost = match revision {
                        None => {
                            match tokio::time::timeout(OP_TIMEOUT, self.clients.create(&key, value.clone())).await {
                                Ok(Ok(_)) => false,
                                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => true,
                                Ok(Err(e)) => return Err(e.into()),
                                Err(_) => return Err("timed out".into()),
                            }
                        }
                        Some(r) => {
                            match tokio::time::timeout(OP_TIMEOUT, self.clients.update(&key, value.clone(), r)).await {
                                Ok(Ok(_)) => false,
                                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => true,
                                Ok(Err(e)) => return Err(e.into()),
                                Err(_) => return Err("timed out".into()),
                            }
                        }
                    };
                    if !lost {
                        return Ok((ClaimResult::Granted { takeover }, None));
                    }
                    // Lost the race to another node's write: read again.
                }
            }
        }
        Err("the client registry entry kept changing".into())
    }

    /// Write `claim` as `client_id`'s entry: created (`revision` none) or compare-and-set on
    /// `revision`. Its new revision.
    pub(crate) async fn write_claim(&self, claim: &Claim, revision: Option<u64>) -> Result<u64, WriteFailure> {
        let key = key(&claim.client_id);
        let value: bytes::Bytes = serde_json::to_vec(claim).map_err(|e| WriteFailure::Unavailable(e.into()))?.into();
        match revision {
            None => match tokio::time::timeout(OP_TIMEOUT, self.clients.create(&key, value)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(WriteFailure::Conflict),
                Ok(Err(e)) => Err(WriteFailure::Unavailable(e.into())),
                Err(_) => Err(WriteFailure::Unavailable("timed out".into())),
            },
            Some(rev) => match tokio::time::timeout(OP_TIMEOUT, self.clients.update(&key, value, rev)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(WriteFailure::Conflict),
                Ok(Err(e)) => Err(WriteFailure::Unavailable(e.into())),
                Err(_) => Err(WriteFailure::Unavailable("timed out".into())),
            },
        }
    }

    /// Write this node's claim after the local broker accepted a connection whose entry was
    /// already this node's (compare-and-set; the entry may have changed since the claim read
    /// it: the previous connection's release, which checks the connection, may have run
    /// first). When another node has taken the client id meanwhile, its claim stands and its
    /// takeover command ends this connection.
    pub(crate) async fn confirm(&self, client_id: &str, identity: &str, conn: u64, mut revision: Option<u64>) {
        let c = Claim {
            client_id: client_id.to_owned(),
            node: self.node.clone(),
            conn,
            identity: identity.to_owned(),
            expires_at: 0,
        };
        let Ok(value) = serde_json::to_vec(&c) else { return };
        let key = key(client_id);
        for _ in 0..5 {
            let written = match revision {
                Some(r) => timed(self.clients.update(&key, value.clone().into(), r)).await.map(drop),
                None => timed(self.clients.create(&key, value.clone().into())).await.map(drop),
            };
            if written.is_ok() {
                return;
            }
            match self.entry(&key).await {
                Ok(None) => revision = None,
                Ok(Some((e, r))) if e.node == self.node => revision = Some(r),
                Ok(Some(_)) => return, // another node's now
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: confirming a client registry entry failed");
                    return;
                }
            }
        }
    }

    /// Connection `conn` of `client_id` ended: drop its claim, or keep it (with no
    /// connection) until `keep_until` while its session lasts — only if it is still this
    /// connection's.
    pub(crate) async fn release(&self, client_id: &str, conn: u64, keep_until: Option<u64>) {
        let key = key(client_id);
        let r = async {
            let Some((mut c, revision)) = self.entry(&key).await? else { return Ok(()) };
            if c.node != self.node || c.conn != conn {
                return Ok(()); // taken over since
            }
            match keep_until {
                Some(t) => {
                    c.conn = 0;
                    c.expires_at = t;
                    timed(self.clients.update(&key, serde_json::to_vec(&c)?.into(), revision)).await?;
                }
                None => timed(self.clients.delete_expect_revision(&key, Some(revision))).await?,
            }
            Ok::<(), BoxError>(())
        };
        if let Err(e) = r.await {
            tracing::debug!(error = %e, "cluster: releasing a client registry entry failed");
        }
    }

    /// Where `client_id` is connected, if anywhere (for a kick through another node).
    pub(crate) async fn locate(&self, client_id: &str) -> Result<Option<Claim>, BoxError> {
        Ok(self.entry(&key(client_id)).await?.map(|(c, _)| c).filter(|c| c.conn != 0))
    }

    /// The entry of `client_id`, connected or kept for its session (the node that holds its
    /// session).
    pub(crate) async fn holder(&self, client_id: &str) -> Result<Option<Claim>, BoxError> {
        Ok(self.entry(&key(client_id)).await?.map(|(c, _)| c))
    }

    /// The nodes holding a lease now.
    pub(crate) async fn live_nodes(&self) -> Result<std::collections::HashSet<String>, BoxError> {
        Ok(all_keys(&self.nodes).await?.into_iter().collect())
    }

    /// Delete `client_id`'s entry if it names node `node` (compare-and-set on the revision
    /// read): true when it was deleted.
    pub(crate) async fn forget_of(&self, client_id: &str, node: &str) -> Result<bool, BoxError> {
        let key = key(client_id);
        match self.entry(&key).await? {
            Some((c, rev)) if c.node == node => {
                timed(self.clients.delete_expect_revision(&key, Some(rev))).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The entry of `client_id` and its revision (a dead node's kept session: [`crate::sessions`]).
    pub(crate) async fn entry_of(&self, client_id: &str) -> Result<Option<(Claim, u64)>, BoxError> {
        self.entry(&key(client_id)).await
    }

    /// Delete `client_id`'s entry if it is still revision `revision` (compare-and-set): true
    /// when this call deleted it, false when it changed since (or is gone).
    pub(crate) async fn forget_at(&self, client_id: &str, revision: u64) -> Result<bool, BoxError> {
        let key = key(client_id);
        match tokio::time::timeout(OP_TIMEOUT, self.clients.delete_expect_revision(&key, Some(revision))).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => match self.entry(&key).await? {
                Some((_, r)) if r == revision => Err(e.into()), // still there: a real failure
                _ => Ok(false),
            },
            Err(_) => Err("timed out".into()),
        }
    }

    /// Every entry with a connection (the cluster-wide client list).
    pub(crate) async fn connected(&self) -> Result<Vec<Claim>, BoxError> {
        let keys = all_keys(&self.clients).await?;
        let mut out = Vec::new();
        for k in keys {
            if let Some((c, _)) = self.entry(&k).await? {
                if c.conn != 0 {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(node: &str, conn: u64, identity: &str, expires_at: u64) -> Claim {
        Claim { client_id: "x".into(), node: node.into(), conn, identity: identity.into(), expires_at }
    }

    #[test]
    fn a_free_client_id_is_created() {
        assert_eq!(decide("a", "user:alice", None, true, 100), Decision::Take { revision: None, takeover: None });
    }

    #[test]
    fn the_same_principal_takes_over_from_another_node() {
        let c = claim("b", 7, "user:alice", 0);
        assert_eq!(
            decide("a", "user:alice", Some((&c, 3)), true, 100),
            Decision::Take { revision: Some(3), takeover: Some("b".into()) }
        );
        // A session kept with no connection there is taken too (its node discards its copy).
        let kept = claim("b", 0, "user:alice", 500);
        assert_eq!(
            decide("a", "user:alice", Some((&kept, 4)), true, 100),
            Decision::Take { revision: Some(4), takeover: Some("b".into()) }
        );
    }

    #[test]
    fn another_principal_is_refused_while_the_claim_is_live() {
        let c = claim("b", 7, "user:alice", 0);
        assert_eq!(decide("a", "user:bob", Some((&c, 3)), true, 100), Decision::Refuse);
        // A session kept (no connection) still binds its client id until it ends.
        let kept = claim("b", 0, "user:alice", 500);
        assert_eq!(decide("a", "user:bob", Some((&kept, 3)), true, 100), Decision::Refuse);
    }

    #[test]
    fn stale_claims_are_free() {
        let c = claim("b", 7, "user:alice", 0);
        assert_eq!(
            decide("a", "user:bob", Some((&c, 3)), false, 100),
            Decision::Take { revision: Some(3), takeover: None },
            "the node's lease is gone"
        );
        // Its own principal takes over the session the dead node kept (resumed here).
        assert_eq!(
            decide("a", "user:alice", Some((&c, 3)), false, 100),
            Decision::Take { revision: Some(3), takeover: Some("b".into()) }
        );
        let kept = claim("b", 0, "user:alice", 500);
        assert_eq!(
            decide("a", "user:alice", Some((&kept, 3)), false, 100),
            Decision::Take { revision: Some(3), takeover: Some("b".into()) }
        );
        let expired = claim("b", 0, "user:alice", 50);
        assert_eq!(
            decide("a", "user:alice", Some((&expired, 3)), false, 100),
            Decision::Take { revision: Some(3), takeover: None },
            "nothing to resume: the kept session ended"
        );
        let ended = claim("b", 0, "user:alice", 50);
        assert_eq!(
            decide("a", "user:bob", Some((&ended, 3)), true, 100),
            Decision::Take { revision: Some(3), takeover: None },
            "the kept session expired"
        );
    }

    #[test]
    fn this_nodes_own_claims_are_the_local_brokers() {
        let c = claim("a", 7, "user:alice", 0);
        assert_eq!(decide("a", "user:bob", Some((&c, 9)), true, 100), Decision::Local { revision: 9 });
        assert_eq!(decide("a", "user:alice", Some((&c, 9)), true, 100), Decision::Local { revision: 9 });
    }

    #[test]
    fn only_client_ids_no_other_node_holds_are_granted_on_a_replicas_copy() {
        assert_eq!(provisional("a", None, 100), Some(None), "free: created");
        let ended = claim("b", 0, "user:alice", 50);
        assert_eq!(provisional("a", Some((&ended, 4)), 100), Some(Some(4)), "its kept session ended");
        let mine = claim("a", 7, "user:alice", 0);
        assert_eq!(provisional("a", Some((&mine, 5)), 100), Some(Some(5)), "this node's: the local broker decides");
        // Another node's, live or kept, same principal or not: wait for the leader.
        assert_eq!(provisional("a", Some((&claim("b", 7, "user:alice", 0), 6)), 100), None);
        assert_eq!(provisional("a", Some((&claim("b", 7, "user:bob", 0), 6)), 100), None);
        assert_eq!(provisional("a", Some((&claim("b", 0, "user:alice", 500), 6)), 100), None);
    }

    #[test]
    fn a_provisional_claim_that_lost_its_compare_and_set_reads_again() {
        // Gone since, or still free: written on what is there now.
        assert_eq!(after_conflict("a", 7, None, 100), AfterConflict::Retry(None));
        let ended = claim("b", 0, "user:alice", 50);
        assert_eq!(after_conflict("a", 7, Some((&ended, 9)), 100), AfterConflict::Retry(Some(9)));
        // Written by an earlier try whose answer was lost.
        assert_eq!(after_conflict("a", 7, Some((&claim("a", 7, "user:alice", 0), 9)), 100), AfterConflict::Ours);
        // An older connection of this node: overwritten; a newer one: it holds the client id.
        assert_eq!(
            after_conflict("a", 7, Some((&claim("a", 3, "user:alice", 0), 9)), 100),
            AfterConflict::Retry(Some(9))
        );
        assert_eq!(after_conflict("a", 7, Some((&claim("a", 8, "user:alice", 0), 9)), 100), AfterConflict::Yield);
        // Another node's (its principal or another, connected or kept): this one lost.
        assert_eq!(after_conflict("a", 7, Some((&claim("b", 2, "user:alice", 0), 9)), 100), AfterConflict::Lost);
        assert_eq!(after_conflict("a", 7, Some((&claim("b", 2, "user:bob", 0), 9)), 100), AfterConflict::Lost);
        assert_eq!(after_conflict("a", 7, Some((&claim("b", 0, "user:bob", 500), 9)), 100), AfterConflict::Lost);
    }

    #[test]
    fn keys_are_fixed_length_hex_for_any_client_id() {
        for id in ["", "a.b", "*", ">", "with space", "ü", &"x".repeat(70000)] {
            let k = key(id);
            assert_eq!(k.len(), 64);
            assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(key("a"), key("b"));
    }
}
