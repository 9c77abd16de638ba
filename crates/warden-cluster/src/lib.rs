//! Warden as one node of a cluster (SPEC §11, docs/cluster.md): the core's
//! [`warden_core::fabric::Fabric`] over NATS.
//!
//! Every node is equal. Each one connects to the NATS servers and:
//! - publishes every message its clients publish on the message subject of its topic
//!   ([`subject`]), wrapped in an [`envelope`] that names this node's run and numbers the
//!   message;
//! - subscribes once per distinct filter its sessions hold (not once per subscription), and
//!   routes what arrives to its own subscribers ([`warden_core::Broker::route_from_peer`]),
//!   authorizing each delivery again here; copies that arrive through two overlapping filters
//!   are dropped by `(origin, seq)`; its own messages are skipped (it delivered them already);
//!   a SUBACK waits until the other nodes' NATS servers hold a new interest too
//!   ([`Cluster::wait_interest`]: a ping to each other node after the subscription);
//! - joins, per `$share` group it has members of, a NATS queue group named after the group and
//!   filter, so that each message reaches one node and there one member
//!   ([`warden_core::Broker::route_from_peer_group`]);
//! - publishes the retained messages its clients keep on the retained subject of their topic,
//!   and keeps every other node's in the retained stream's order, so that every node ends with
//!   the stream's last message of each topic ([`warden_core::Broker::retain_from_peer_if`]).
//!
//! - shares the shell's state and commands through the [`control`] plane (trust changes made
//!   through any node's admin API reach every node), and binds each client id to one
//!   principal cluster-wide through the [`registry`] (takeover across nodes);
//! - keeps a copy of its connections' wills ([`wills`]), and publishes, once in the cluster,
//!   the wills of a node that died.
//!
//! The core never waits for NATS: it hands messages and interest changes to this crate's task
//! through an unbounded channel (bounded in bytes: beyond [`MAX_BACKLOG`] bytes waiting,
//! further messages are counted as dropped).

pub mod control;
pub mod envelope;
pub mod registry;
pub mod sessions;
pub mod subject;
pub mod wills;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::StreamMap;
use warden_core::fabric::{Fabric, Interest};
use warden_core::retained::RetainSource;
use warden_core::{Broker, Message};

use crate::control::ControlSink;
use crate::envelope::Seen;
use crate::registry::{ClaimResult, Registry};
use crate::sessions::{SessionOp, Sessions, SubRecord};
use crate::subject::Kind;
use crate::wills::{WillOp, Wills};

/// How long another node's answer to a sessions request is waited for.
pub const SESSIONS_PATIENCE: Duration = Duration::from_secs(2);

/// How long a CONNECT's claim of its client id is tried before CONNACK 0x88 by default
/// ([`ClusterConfig::connect_patience`]): through a leader election of the registry's bucket
/// (NATS waits 4 to 9 s for a lost leader's heartbeat before it elects another), with room.
pub const CLAIM_PATIENCE: Duration = Duration::from_secs(12);

/// The longest one try of a claim may take before it is tried again.
const CLAIM_TRY: Duration = Duration::from_millis(1500);

/// Claims failing no further apart than this are one outage of the registry (a CONNECT tries
/// again every 250 ms, each try bounded to [`CLAIM_TRY`]).
const FAILING_GAP: Duration = Duration::from_secs(5);

/// The most bytes of messages waiting for the NATS connection before more are dropped.
pub const MAX_BACKLOG: u64 = 64 << 20;

/// The `[cluster]` settings (SPEC §11).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster.
    pub node: String,
    /// NATS server URLs.
    pub nats: Vec<String>,
    /// JetStream replicas for the cluster's streams and buckets.
    pub replicas: usize,
    /// NATS user name.
    pub user: Option<String>,
    /// NATS password (resolved from its reference by the caller; never logged).
    pub password: Option<String>,
    /// A NATS credentials file (JWT + NKey seed).
    pub creds_file: Option<PathBuf>,
    /// The first token of every subject the cluster uses (several clusters may share NATS).
    pub subject_prefix: String,
    /// How long a QoS 1/2 message is tried until JetStream keeps it before its
    /// acknowledgement is refused (a NATS server lost, a stream leader elected meanwhile).
    pub publish_timeout: Duration,
    /// How long a CONNECT's claim of its client id is tried before CONNACK 0x88 (a bucket's
    /// leader elected after a NATS server was lost: 4 to 9 s). Default [`CLAIM_PATIENCE`].
    pub connect_patience: Duration,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The subject prefix is not one plain NATS token.
    #[error("cluster subject_prefix {0:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ -")]
    Prefix(String),
    /// The NATS credentials file could not be read.
    #[error("cluster nats_creds_file {path}: {source}")]
    Creds {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The NATS client refused the settings.
    #[error("cluster nats: {0}")]
    Connect(String),
}

/// Counters of the cluster's traffic.
#[derive(Default, Debug)]
pub struct ClusterStats {
    /// Messages sent to other nodes.
    pub forwarded: AtomicU64,
    /// Messages received from other nodes and routed here.
    pub received: AtomicU64,
    /// Second copies dropped (overlapping filters).
    pub duplicates: AtomicU64,
    /// Messages dropped: the backlog was full, or NATS refused them.
    pub dropped: AtomicU64,
    /// Messages from other nodes that did not decode (counted, never routed).
    pub malformed: AtomicU64,
    /// Retained messages sent to other nodes.
    pub retained_out: AtomicU64,
    /// Retained messages received from other nodes and kept here.
    pub retained_in: AtomicU64,
    /// Client ids granted on a replica's copy of the registry while its leader was elected.
    pub provisional_claims: AtomicU64,
    /// Of those, found another node's once the registry had a leader (that connection ended).
    pub provisional_lost: AtomicU64,
}

/// Work for the cluster's task.
enum Out {
    /// Messages, their backlog bytes, and the forward ticket of a batch with QoS 1/2 ones.
    Forward(Vec<Arc<Message>>, u64, Option<u64>),
    /// A forward ticket whose batch was dropped (the backlog was full): resolved as failed.
    Failed(u64),
    /// A retained message of this node, with its number ([`PendingRetained`]).
    Retained(Arc<Message>, RetainSource, u64),
    Interest(Interest, u64),
}

/// One node's side of the cluster: the fabric the core talks to.
pub struct Cluster {
    tx: mpsc::UnboundedSender<Out>,
    /// Interest changes handed to the task so far (the tickets [`Fabric::issued`] gives).
    issued: AtomicU64,
    /// The last interest ticket in force on NATS.
    applied: tokio::sync::watch::Receiver<u64>,
    backlog: Arc<AtomicU64>,
    client: async_nats::Client,
    stats: Arc<ClusterStats>,
    node: String,
    prefix: String,
    replicas: usize,
    /// This run of the node (the envelopes' origin).
    origin: u64,
    /// The client registry, made at its first use (NATS may be away at start).
    registry: tokio::sync::OnceCell<Arc<Registry>>,
    /// The control documents' task, once the shell attached its sink.
    docs: std::sync::OnceLock<mpsc::UnboundedSender<(String, Bytes)>>,
    /// Forward tickets handed out (batches with QoS 1/2 messages), and the lock that keeps
    /// tickets in the order of the task's channel.
    stored_issued: std::sync::Mutex<u64>,
    /// The same count, for reading without the lock ([`Fabric::stored_issued`] is read on
    /// every routed batch; it is written under the lock, after the ticket was sent).
    stored_issued_now: AtomicU64,
    /// What the task has resolved of them.
    stored: Arc<Stored>,
    /// [`ClusterConfig::publish_timeout`], which [`Cluster::wait_stored`] callers add a margin to.
    publish_timeout: Duration,
    /// The sessions bucket, made at its first use.
    sessions: tokio::sync::OnceCell<Arc<Sessions>>,
    /// Changes of this node's lasting sessions, for the sessions task.
    session_tx: mpsc::UnboundedSender<SessionOp>,
    /// Set once this node holds every retained message the cluster had when it started.
    retained_ready: Arc<std::sync::atomic::AtomicBool>,
    /// This node's retained messages not yet back from the retained stream.
    retained_pending: Arc<PendingRetained>,
    /// A messages-stream sequence read at least [`POSITION_POLL`] ago: every message published
    /// since is after it (the mark of a session's change, [`sessions::SessionOp::Saved`]).
    position_floor: AtomicU64,
    /// This node's lease was renewed at its last try: the client registry answers, so a
    /// CONNECT here can be claimed (not "unavailable").
    registry_ok: std::sync::atomic::AtomicBool,
    /// Since when the lease's renewals fail (`None`: the last one succeeded): once that is
    /// longer than [`ClusterConfig::connect_patience`] (no quorum, not an election), a CONNECT
    /// gets one short try, not the whole patience.
    registry_down_since: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Since when CONNECTs' claims fail without a pause longer than [`FAILING_GAP`], and the
    /// last failure (`None`: the last claim was answered).
    claims_down_since: std::sync::Mutex<Option<(tokio::time::Instant, tokio::time::Instant)>>,
    /// [`ClusterConfig::connect_patience`].
    connect_patience: Duration,
    /// The wills bucket, made at its first use.
    wills: tokio::sync::OnceCell<Arc<Wills>>,
    /// Changes of this node's wills, for the wills task.
    will_tx: mpsc::UnboundedSender<WillOp>,
    /// How many will changes were handed to the task, and how many it has applied.
    wills_sent: AtomicU64,
    wills_done: Arc<tokio::sync::watch::Sender<u64>>,
    /// The shell's side of the control plane (asked whether a dead node's will's owner stands).
    sink: std::sync::OnceLock<Arc<dyn ControlSink>>,
}

/// A lasting session kept by a node that holds no lease ([`Cluster::sessions_of_dead_nodes`]).
#[derive(Debug, Clone)]
pub struct DeadNodeSession {
    /// Its record (client id, node, expiry, subscriptions).
    pub record: sessions::SessionRecord,
    /// Its principal (`kind:name`), from its client id's entry while that names the node.
    pub principal: Option<String>,
}

/// A lasting session read from another node's record ([`Cluster::resume_session`]).
pub struct Resumed {
    /// Its session expiry interval (seconds).
    pub expiry: u32,
    /// Its subscriptions.
    pub subs: Vec<warden_core::session::Subscription>,
    record: sessions::SessionRecord,
    /// The stream subjects its replay reads.
    subjects: Vec<String>,
}

/// The forward tickets the task has resolved: up to which one, and which of them failed
/// (JetStream did not keep every message of the batch).
#[derive(Default)]
struct Stored {
    upto: tokio::sync::Notify,
    state: std::sync::Mutex<(u64, std::collections::BTreeSet<u64>)>,
}

impl Stored {
    fn resolve(&self, ticket: u64, ok: bool) {
        if let Ok(mut st) = self.state.lock() {
            if !ok {
                st.1.insert(ticket);
                // Waiters give up after seconds: failures far behind are nobody's any more.
                let keep = ticket.saturating_sub(1 << 20);
                st.1 = st.1.split_off(&keep);
            }
            st.0 = st.0.max(ticket);
        }
        self.upto.notify_waiters();
    }

    /// `Some(ok)` once tickets `first..=last` are all resolved.
    fn check(&self, first: u64, last: u64) -> Option<bool> {
        let st = self.state.lock().ok()?;
        (st.0 >= last).then(|| st.1.range(first..=last).next().is_none())
    }
}

/// What a CONNECT's claim of its client id leaves to do once the local broker answered
/// ([`Cluster::claim`]).
#[derive(Debug)]
pub struct ClaimTicket {
    client_id: String,
    identity: String,
    conn: u64,
    /// The entry was this node's: written once the local broker accepted.
    confirm: Option<u64>,
    /// Granted while the registry's bucket had no leader: written when it has one again.
    provisional: Option<Arc<Provisional>>,
}

/// A claim granted on a replica's copy of the registry while its bucket had no leader
/// ([`Cluster::claim`], [`registry::provisional`]): its writer puts it in the registry once
/// the bucket has a leader again, as the connection stands then.
#[derive(Debug)]
struct Provisional {
    /// The revision the replica's copy had (`None`: no entry).
    revision: Option<u64>,
    state: std::sync::Mutex<ProvisionalState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The connection is live: its claim.
    Live,
    /// It ended, its session kept until then (Unix seconds): the claim with no connection.
    Kept(u64),
    /// It ended with its session: nothing.
    Gone,
}

#[derive(Debug)]
struct ProvisionalState {
    want: Want,
    /// The writer is done: the registry holds the claim (or it was lost); a release goes the
    /// usual way.
    settled: bool,
}

impl Cluster {
    /// Connect to NATS (in the background: the broker starts even while NATS is away, and
    /// reports not ready) and attach to `broker` as its fabric. Call before accepting
    /// connections, after restoring the store.
    pub async fn start(cfg: ClusterConfig, broker: Arc<Broker>) -> Result<Arc<Cluster>, ClusterError> {
        if !subject::valid_prefix(&cfg.subject_prefix) {
            return Err(ClusterError::Prefix(cfg.subject_prefix));
        }
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("warden-{}", cfg.node))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .subscription_capacity(1 << 16);
        if let Some(path) = &cfg.creds_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|source| ClusterError::Creds { path: path.clone(), source })?;
        }
        if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        let addrs: Vec<async_nats::ServerAddr> = cfg
            .nats
            .iter()
            .map(|u| u.parse().map_err(|e| ClusterError::Connect(format!("{u}: {e}"))))
            .collect::<Result<_, _>>()?;
        let client = opts.connect(addrs).await.map_err(|e| ClusterError::Connect(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (session_tx, session_rx) = mpsc::unbounded_channel();
        let (will_tx, will_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ClusterStats::default());
        let backlog = Arc::new(AtomicU64::new(0));
        let (applied_tx, applied) = tokio::sync::watch::channel(0);
        let (local_tx, local_rx) = tokio::sync::watch::channel(0);
        let cluster = Arc::new(Cluster {
            tx,
            issued: AtomicU64::new(0),
            applied,
            backlog: backlog.clone(),
            client: client.clone(),
            stats: stats.clone(),
            node: cfg.node.clone(),
            prefix: cfg.subject_prefix.clone(),
            replicas: cfg.replicas,
            origin: rand::random::<u64>(),
            registry: tokio::sync::OnceCell::new(),
            docs: std::sync::OnceLock::new(),
            stored_issued: std::sync::Mutex::new(0),
            stored_issued_now: AtomicU64::new(0),
            stored: Arc::new(Stored::default()),
            publish_timeout: cfg.publish_timeout,
            sessions: tokio::sync::OnceCell::new(),
            session_tx,
            retained_ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            retained_pending: Arc::new(PendingRetained::default()),
            position_floor: AtomicU64::new(0),
            registry_ok: std::sync::atomic::AtomicBool::new(false),
            registry_down_since: std::sync::Mutex::new(None),
            claims_down_since: std::sync::Mutex::new(None),
            connect_patience: cfg.connect_patience,
            wills: tokio::sync::OnceCell::new(),
            will_tx,
            wills_sent: AtomicU64::new(0),
            wills_done: Arc::new(tokio::sync::watch::channel(0).0),
            sink: std::sync::OnceLock::new(),
        });
        let origin = cluster.origin;
        let retained_stream = retained_stream_config(&cfg.subject_prefix, cfg.replicas);
        let (retained_out, retained_rx) = mpsc::unbounded_channel();
        tokio::spawn(store_retained(
            async_nats::jetstream::new(client.clone()),
            retained_stream.clone(),
            retained_rx,
            stats.clone(),
            cluster.retained_pending.clone(),
            broker.clone(),
        ));
        let task = Task {
            retained_out,
            js: async_nats::jetstream::new(client.clone()),
            msgs_stream: messages_stream_config(&cfg.subject_prefix, cfg.replicas),
            msgs_stream_ok: false,
            acks: futures_util::stream::FuturesOrdered::new(),
            stored: cluster.stored.clone(),
            publish_timeout: cfg.publish_timeout,
            client: client.clone(),
            prefix: cfg.subject_prefix.clone(),
            broker: broker.clone(),
            origin,
            seq: 0,
            seen: Seen::default(),
            subs: StreamMap::new(),
            by_interest: HashMap::new(),
            roles: HashMap::new(),
            next_key: 0,
            stats,
            backlog,
            applied: local_tx,
        };
        let retained = Retained {
            ready: cluster.retained_ready.clone(),
            js: async_nats::jetstream::new(client.clone()),
            config: retained_stream,
            broker: broker.clone(),
            origin,
            stats: cluster.stats.clone(),
            pending: cluster.retained_pending.clone(),
        };
        tokio::spawn(task.run(rx));
        tokio::spawn(retained.run());
        tokio::spawn(lease(cluster.clone()));
        tokio::spawn(keep_sessions(cluster.clone(), session_rx));
        tokio::spawn(watch_position(Arc::downgrade(&cluster)));
        tokio::spawn(keep_wills(cluster.clone(), will_rx));
        tokio::spawn(reap_wills(Arc::downgrade(&cluster), broker.clone()));
        tokio::spawn(expire_dead_sessions(Arc::downgrade(&cluster)));
        tokio::spawn(propagate_interest(Arc::downgrade(&cluster), local_rx, applied_tx));
        broker.attach_fabric(cluster.clone());
        Ok(cluster)
    }

    /// Attach the shell's side of the control plane: from now on documents and node commands
    /// from other nodes reach `sink`. Call once, before accepting connections.
    pub fn attach_control(&self, sink: Arc<dyn ControlSink>, documents: &[&str]) {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.docs.set(tx).is_err() {
            return;
        }
        let _ = self.sink.set(sink.clone());
        let docs = control::Documents::new(
            async_nats::jetstream::new(self.client.clone()),
            control::control_stream_config(&self.prefix, self.replicas),
            self.prefix.clone(),
            self.origin,
            sink.clone(),
            documents.iter().map(|d| (*d).to_owned()).collect(),
        );
        tokio::spawn(docs.run(rx));
        tokio::spawn(control::node_commands(
            self.client.clone(),
            control::node_subject(&self.prefix, &self.node),
            sink,
        ));
    }

    /// Share this node's new version of document `name` with every node (kept by JetStream;
    /// retried until it is). `name` is a plain token ([`control::valid_doc_name`]).
    pub fn publish_document(&self, name: &str, body: Vec<u8>) {
        debug_assert!(control::valid_doc_name(name));
        if let Some(tx) = self.docs.get() {
            let _ = tx.send((name.to_owned(), body.into()));
        }
    }

    async fn registry(&self) -> Result<&Arc<Registry>, Box<dyn std::error::Error + Send + Sync>> {
        self.registry
            .get_or_try_init(|| async {
                let js = async_nats::jetstream::new(self.client.clone());
                let clients =
                    registry::kv_with_direct(&js, registry::clients_bucket(&self.prefix, self.replicas), true).await?;
                let nodes = registry::linearizable_kv(&js, registry::nodes_bucket(&self.prefix, self.replicas)).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Arc::new(Registry {
                    clients,
                    nodes,
                    node: self.node.clone(),
                    run: self.origin,
                }))
            })
            .await
    }

    /// Claim `client_id` for connection `conn` (unique in this run of the node) of the
    /// principal `identity` (`kind:name`), before the local broker takes it: another
    /// principal's live claim on another node refuses it (CONNACK 0x87), the same principal's
    /// connection on another node is told to end (DISCONNECT 0x8E), and a registry that cannot
    /// be asked refuses it as unavailable (CONNACK 0x88). After the local broker accepted,
    /// call [`Cluster::connected_as`] with the ticket; when the connection ends,
    /// [`Cluster::release`].
    pub async fn claim(&self, client_id: &str, identity: &str, conn: u64, now: u64) -> (ClaimResult, ClaimTicket) {
        let mut ticket = ClaimTicket {
            client_id: client_id.to_owned(),
            identity: identity.to_owned(),
            conn,
            confirm: None,
            provisional: None,
        };
        // Transient failures (a NATS server lost, the bucket's leader being elected) are
        // tried again for `connect_patience` before the CONNECT is refused as unavailable;
        // when the registry has been away for longer than that already (no quorum), one short
        // try: the CONNECTs of a cluster without quorum are answered at once, not piled up.
        let patience = if self.registry_down_for() > self.connect_patience { CLAIM_TRY } else { self.connect_patience };
        let deadline = tokio::time::Instant::now() + patience;
        let r = loop {
            // Each try is bounded well below the patience: a request sent while the bucket's
            // leader is being elected may never be answered, and the first try after the
            // election must come soon (NATS elects within 4 to 9 s of losing a leader).
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = async {
                match self.registry().await {
                    Ok(reg) => reg.claim(client_id, identity, conn, now).await,
                    Err(e) => Err(e),
                }
            };
            let r = match tokio::time::timeout(CLAIM_TRY.min(left.max(Duration::from_millis(100))), attempt).await {
                Ok(r) => r,
                Err(_) => Err("timed out".into()),
            };
            if r.is_err() {
                self.claims_failing();
            }
            match r {
                // Tried again until the deadline, or until the registry has been away for
                // longer than the patience (no election takes that long: no quorum).
                Err(e) if tokio::time::Instant::now() < deadline && self.within_election_window() => {
                    tracing::debug!(error = %e, "cluster: the client registry did not answer; trying again");
                    // The bucket's leader may be being elected (NATS: 4 to 9 s after it was
                    // lost): a client id no other node holds is granted on a replica's copy
                    // while the registry has been away for less than the patience (beyond
                    // that it is no election: CONNACK 0x88). A replica may not answer at
                    // first (this node's NATS connection moving to another server, the
                    // routes' interest settling): asked again at each try.
                    if self.within_election_window() {
                        if let Some(p) = self.claim_on_replica(client_id, now).await {
                            tracing::info!(client_id, "cluster: client id granted on a replica's copy of the registry while its leader is elected; written when it has one");
                            self.stats.provisional_claims.fetch_add(1, Ordering::Relaxed);
                            ticket.provisional = Some(p);
                            break Ok((ClaimResult::Granted { takeover: None }, None));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                r => break r,
            }
        };
        if r.is_ok() && ticket.provisional.is_none() {
            self.claims_answered();
        }
        match r {
            Ok((result, confirm)) => {
                ticket.confirm = confirm;
                if matches!(result, ClaimResult::Granted { .. }) {
                    // Claimed again before another node (or a dead run of this one) published
                    // its will: cancelled [MQTT-3.1.3-9]. In the background: the CONNECT does
                    // not wait for a second bucket (this connection's own copy, written later,
                    // is never taken for another node's).
                    match self.wills.get() {
                        Some(w) => {
                            let (w, id) = (w.clone(), client_id.to_owned());
                            tokio::spawn(async move {
                                match w.cancel_foreign(&id).await {
                                    Ok(true) => tracing::debug!("cluster: a will kept for another node cancelled"),
                                    Ok(false) => {}
                                    Err(e) => {
                                        tracing::debug!(error = %e, "cluster: the wills bucket could not be asked")
                                    }
                                }
                            });
                        }
                        None => tracing::debug!("cluster: the wills bucket is not reachable yet; no will cancelled"),
                    }
                }
                (result, ticket)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: the client registry cannot be asked; CONNECT refused (0x88)");
                (ClaimResult::Unavailable, ticket)
            }
        }
    }

    /// A claim of the registry failed: since when claims fail (kept from the first of a run
    /// of failures less than [`FAILING_GAP`] apart).
    fn claims_failing(&self) {
        if let Ok(mut st) = self.claims_down_since.lock() {
            let now = tokio::time::Instant::now();
            *st = match *st {
                Some((since, last)) if now.duration_since(last) <= FAILING_GAP => Some((since, now)),
                _ => Some((now, now)),
            };
        }
    }

    /// A claim was answered by the registry's leader.
    fn claims_answered(&self) {
        if let Ok(mut st) = self.claims_down_since.lock() {
            *st = None;
        }
    }

    /// Whether the registry has been away for at most the patience — its lease renewals and
    /// its claims alike: a leader election, not a cluster without quorum.
    fn within_election_window(&self) -> bool {
        let claims = match self.claims_down_since.lock().ok().and_then(|s| *s) {
            Some((since, last)) if last.elapsed() <= FAILING_GAP => since.elapsed(),
            _ => Duration::ZERO,
        };
        self.registry_down_for() <= self.connect_patience && claims <= self.connect_patience
    }

    /// Grant `client_id` on a replica's copy of its entry ([`registry::provisional`]). A
    /// replica may not answer at once (this node's NATS connection moving to another server,
    /// the routes' interest settling): asked a few times, a quarter second apart.
    async fn claim_on_replica(&self, client_id: &str, now: u64) -> Option<Arc<Provisional>> {
        let reg = self.registry().await.ok()?;
        let key = registry::key(client_id);
        let mut tries = 0;
        let found = loop {
            tries += 1;
            match reg.entry_from_replica(&key).await {
                Ok(found) => break found,
                Err(e) if tries < 4 => {
                    tracing::debug!(error = %e, "cluster: no replica of the client registry answered; asking again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: no replica of the client registry answered");
                    return None;
                }
            }
        };
        let revision = registry::provisional(&self.node, found.as_ref().map(|(c, r)| (c, *r)), now)?;
        Some(Arc::new(Provisional {
            revision,
            state: std::sync::Mutex::new(ProvisionalState { want: Want::Live, settled: false }),
        }))
    }

    /// Put a provisional claim in the registry once its bucket has a leader again, as its
    /// connection stands then (live, ended with its session kept, or gone). A compare-and-set
    /// lost to another node (its claim written before the leader was lost, which the
    /// replica's copy missed, or since) ends this node's connection and session of the client
    /// id (DISCONNECT 0x8E): the registry's entry is the client id's owner (SPEC §11).
    async fn write_provisional(self: Arc<Self>, p: Arc<Provisional>, id: String, identity: String, conn: u64) {
        let mut revision = p.revision;
        let mut pause = Duration::from_millis(250);
        loop {
            let want = p.state.lock().unwrap_or_else(|e| e.into_inner()).want;
            let claim = match want {
                Want::Gone => break,
                Want::Live => registry::Claim {
                    client_id: id.clone(),
                    node: self.node.clone(),
                    conn,
                    identity: identity.clone(),
                    expires_at: 0,
                },
                Want::Kept(t) => registry::Claim {
                    client_id: id.clone(),
                    node: self.node.clone(),
                    conn: 0,
                    identity: identity.clone(),
                    expires_at: t,
                },
            };
            let reg = match self.registry().await {
                Ok(reg) => reg.clone(),
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            match reg.write_claim(&claim, revision).await {
                Ok(_) => {
                    self.claims_answered();
                    settle(&p, &reg, &id, conn, want).await;
                    tracing::debug!("cluster: a provisional claim is in the registry");
                    return;
                }
                Err(registry::WriteFailure::Conflict) => {
                    let found = match reg.entry_of(&id).await {
                        Ok(found) => found,
                        Err(_) => {
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                    };
                    let now_s =
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    match registry::after_conflict(&self.node, conn, found.as_ref().map(|(c, r)| (c, *r)), now_s) {
                        registry::AfterConflict::Retry(r) => revision = r,
                        registry::AfterConflict::Ours => {
                            // Written (live) by an earlier try whose answer was lost.
                            settle(&p, &reg, &id, conn, Want::Live).await;
                            return;
                        }
                        registry::AfterConflict::Yield => break,
                        registry::AfterConflict::Lost => {
                            self.stats.provisional_lost.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(client_id = %id, "cluster: a client id granted while the registry elected its leader was another node's; this node's connection and session of it end (0x8E)");
                            if let Some(sink) = self.sink.get() {
                                sink.taken_over(&id);
                            }
                            break;
                        }
                    }
                }
                Err(registry::WriteFailure::Unavailable(e)) => {
                    tracing::debug!(error = %e, "cluster: a provisional claim waits for the client registry");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
        p.state.lock().unwrap_or_else(|e| e.into_inner()).settled = true;
    }

    async fn wills(&self) -> Result<&Arc<Wills>, Box<dyn std::error::Error + Send + Sync>> {
        self.wills
            .get_or_try_init(|| async {
                let js = async_nats::jetstream::new(self.client.clone());
                let kv = registry::linearizable_kv(&js, wills::wills_bucket(&self.prefix, self.replicas)).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Arc::new(Wills {
                    kv,
                    node: self.node.clone(),
                    run: self.origin,
                }))
            })
            .await
    }

    async fn sessions(&self) -> Result<&Arc<Sessions>, Box<dyn std::error::Error + Send + Sync>> {
        self.sessions
            .get_or_try_init(|| async {
                let js = async_nats::jetstream::new(self.client.clone());
                let kv = registry::linearizable_kv(&js, sessions::sessions_bucket(&self.prefix, self.replicas)).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Arc::new(Sessions {
                    kv,
                    js,
                    msgs_stream: format!("{}_MSGS", self.prefix),
                    node: self.node.clone(),
                }))
            })
            .await
    }

    /// Read `client_id`'s lasting session on node `from` (its CONNECT here asked to resume it;
    /// the registry said the same principal held it there): its expiry and subscriptions.
    /// `None` when there is no record of it on `from` (nothing to resume: a new session). Make
    /// the session here with them, wait until its subscriptions are in force on NATS
    /// ([`Cluster::wait_interest`]), then [`Cluster::replay_resumed`].
    pub async fn resume_session(&self, client_id: &str, from: &str) -> Option<Resumed> {
        let r = async {
            let sessions = self.sessions().await?;
            let Some((record, _)) = sessions.get(client_id).await? else { return Ok(None) };
            if record.node != from {
                return Ok(None);
            }
            let mut subs = Vec::new();
            let mut subjects = vec![subject::long_durable(&self.prefix)];
            for s in &record.subs {
                let (Ok(filter), Ok(options)) = (
                    mqtt_codec::TopicFilter::new(s.filter.as_str()),
                    mqtt_codec::SubscriptionOptions::from_byte(s.options),
                ) else {
                    continue;
                };
                if filter.shared().is_none() {
                    subjects.extend(subject::filter_patterns_of(&self.prefix, Kind::Durable, filter.match_filter()));
                }
                subs.push(warden_core::session::Subscription { filter, options, id: s.id });
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Some(Resumed {
                expiry: record.expiry,
                subs,
                record,
                subjects,
            }))
        };
        match r.await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: a session could not be taken from another node; it starts anew here");
                None
            }
        }
    }

    /// The QoS 1/2 messages the stream kept after the resumed session's position that its
    /// subscriptions match, up to the stream's position now (in order; decoded, not yet
    /// authorized); the record is written as this node's with that position. Call once the
    /// session's subscriptions are in force here: what the stream keeps later reaches them.
    pub async fn replay_resumed(&self, resumed: Resumed) -> Vec<Arc<Message>> {
        let Resumed { mut record, subjects, .. } = resumed;
        let r = async {
            let sessions = self.sessions().await?;
            let upto = sessions.stream_position().await?;
            let envelopes = sessions.replay(record.position, upto, subjects).await?;
            let mut msgs = Vec::with_capacity(envelopes.len());
            for e in &envelopes {
                match envelope::unwrap(e).map(|(_, _, r)| warden_store::wire::decode(r)) {
                    Some(Ok(Some((mut m, _)))) => {
                        m.origin = None;
                        msgs.push(Arc::new(m));
                    }
                    _ => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            record.node = self.node.clone();
            record.position = upto;
            sessions.take(&record).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(msgs)
        };
        match r.await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: a resumed session's missed messages could not be read");
                Vec::new()
            }
        }
    }

    /// How long the lease's renewals have been failing (zero while the last one succeeded).
    fn registry_down_for(&self) -> Duration {
        match self.registry_down_since.lock().ok().and_then(|s| *s) {
            Some(t) => t.elapsed(),
            None => Duration::ZERO,
        }
    }

    /// The last interest change handed out ([`Fabric::issued`]): the ticket for
    /// [`Cluster::wait_interest`] after the subscriptions of a session were made.
    pub fn interest_issued(&self) -> u64 {
        self.issued.load(Ordering::Acquire)
    }

    /// Tell node `node` that `client_id` was taken over here ([`ClaimResult::Granted`]'s
    /// `takeover`): it ends its connection (DISCONNECT 0x8E) and discards its copy of the
    /// session. Call after [`Cluster::resume_session`], so that the session's record is this
    /// node's before that node lets its copy go.
    pub async fn send_takeover(&self, node: &str, client_id: &str) {
        let subject = control::node_subject(&self.prefix, node);
        if let Err(e) = self.client.publish(subject, control::take_command(client_id)).await {
            tracing::debug!(error = %e, "cluster: sending a takeover failed");
        }
        let _ = self.client.flush().await;
    }

    /// The local broker accepted the connection of `ticket`.
    pub fn connected_as(self: &Arc<Self>, ticket: &ClaimTicket) {
        if let Some(p) = &ticket.provisional {
            let me = self.clone();
            let (p, id, identity, conn) = (p.clone(), ticket.client_id.clone(), ticket.identity.clone(), ticket.conn);
            tokio::spawn(async move { me.write_provisional(p, id, identity, conn).await });
            return;
        }
        let Some(revision) = ticket.confirm else { return };
        let me = self.clone();
        let (id, identity, conn) = (ticket.client_id.clone(), ticket.identity.clone(), ticket.conn);
        tokio::spawn(async move {
            if let Ok(reg) = me.registry().await {
                reg.confirm(&id, &identity, conn, Some(revision)).await;
            }
        });
    }

    /// The connection of `ticket` ended; its session lasts until `keep_until` (Unix seconds)
    /// or ended with it (`None`).
    pub fn release(self: &Arc<Self>, ticket: &ClaimTicket, keep_until: Option<u64>) {
        if let Some(p) = &ticket.provisional {
            let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.settled {
                // Not in the registry yet: its writer writes what is left, or nothing.
                st.want = keep_until.map_or(Want::Gone, Want::Kept);
                return;
            }
        }
        let me = self.clone();
        let (id, conn) = (ticket.client_id.clone(), ticket.conn);
        tokio::spawn(async move {
            if let Ok(reg) = me.registry().await {
                reg.release(&id, conn, keep_until).await;
            }
        });
    }

    /// End `client_id`'s connection wherever in the cluster it is (with MQTT reason code
    /// `reason`). True when the registry knows a connection of it on another node (told).
    pub async fn end_elsewhere(&self, client_id: &str, reason: u8) -> bool {
        let Ok(reg) = self.registry().await else { return false };
        match reg.locate(client_id).await {
            Ok(Some(c)) if c.node != self.node => {
                let subject = control::node_subject(&self.prefix, &c.node);
                let ok = self.client.publish(subject, control::end_command(client_id, reason)).await.is_ok();
                let _ = self.client.flush().await;
                ok
            }
            _ => false,
        }
    }

    /// The sessions of every other live node (a node holding a lease), as each answers
    /// within [`SESSIONS_PATIENCE`]: `(node, the shell's encoding)`. A node that does not
    /// answer in time is left out.
    pub async fn sessions_elsewhere(&self) -> Vec<(String, Bytes)> {
        self.ask_every_node(control::sessions_command()).await.0
    }

    /// The counters of every other live node, as each answers within [`SESSIONS_PATIENCE`]:
    /// `(node, the shell's encoding)`, and the live nodes that did not answer in time; `None`
    /// when the leases could not be read.
    pub async fn stats_elsewhere(&self) -> Option<(Vec<(String, Bytes)>, Vec<String>)> {
        let (answers, missing, ok) = self.ask_every_node(control::stats_command()).await;
        ok.then_some((answers, missing))
    }

    /// Send `command` to every other node holding a lease and gather the answers given within
    /// [`SESSIONS_PATIENCE`] (at once): `(answers, nodes that did not answer, leases read)`.
    async fn ask_every_node(&self, command: Bytes) -> (Vec<(String, Bytes)>, Vec<String>, bool) {
        let Ok(reg) = self.registry().await else { return (Vec::new(), Vec::new(), false) };
        let Ok(nodes) = registry::all_keys(&reg.nodes).await else { return (Vec::new(), Vec::new(), false) };
        let asks = nodes.into_iter().filter(|n| *n != self.node).map(|node| {
            let command = command.clone();
            async move {
                let subject = control::node_subject(&self.prefix, &node);
                let ask = self.client.request(subject, command);
                match tokio::time::timeout(SESSIONS_PATIENCE, ask).await {
                    Ok(Ok(m)) => Ok((node, m.payload)),
                    _ => {
                        tracing::debug!(node = %node, "cluster: a node did not answer a request in time");
                        Err(node)
                    }
                }
            }
        });
        let (mut answers, mut missing) = (Vec::new(), Vec::new());
        for r in futures_util::future::join_all(asks).await {
            match r {
                Ok(a) => answers.push(a),
                Err(n) => missing.push(n),
            }
        }
        (answers, missing, true)
    }

    /// Ask the node that holds `client_id`'s session, when the client registry names another
    /// node (connected there, or its session kept there), with node command `op`: `(node,
    /// answer)`; `None` when no other node holds it or it did not answer within
    /// [`SESSIONS_PATIENCE`].
    async fn ask_holder(&self, op: u8, client_id: &str) -> Option<(String, Bytes)> {
        let reg = self.registry().await.ok()?;
        let node = match reg.holder(client_id).await {
            Ok(Some(c)) if c.node != self.node => c.node,
            _ => return None,
        };
        let subject = control::node_subject(&self.prefix, &node);
        let ask = self.client.request(subject, control::session_command(op, client_id));
        match tokio::time::timeout(SESSIONS_PATIENCE, ask).await {
            Ok(Ok(m)) => Some((node, m.payload)),
            _ => {
                tracing::debug!(node = %node, "cluster: the node holding a session did not answer in time");
                None
            }
        }
    }

    /// `client_id`'s session held by another node, as that node's shell encodes it: `(node,
    /// session)`, or `None`.
    pub async fn session_elsewhere(&self, client_id: &str) -> Option<(String, Bytes)> {
        self.ask_holder(control::OP_SESSION, client_id).await.filter(|(_, b)| !b.is_empty())
    }

    /// Remove `client_id`'s session held by another node (its connection ended there, its will
    /// discarded): true when that node held one.
    pub async fn drop_session_elsewhere(&self, client_id: &str) -> bool {
        self.ask_holder(control::OP_DROP_SESSION, client_id).await.is_some_and(|(_, b)| b[..] == [1])
    }

    /// The lasting sessions of nodes that hold no lease (dead: killed, or gone for more than
    /// [`registry::LEASE_TTL`]), from their records in `{PREFIX}_SESSIONS`, by client id. Their
    /// clients resume them on any node (the client registry lets their principal take them over); `None` when the bucket or the
    /// leases could not be read.
    pub async fn sessions_of_dead_nodes(&self) -> Option<Vec<DeadNodeSession>> {
        let r = async {
            let reg = self.registry().await?;
            let live = reg.live_nodes().await?;
            let sessions = self.sessions().await?;
            let mut out = Vec::new();
            for r in sessions.all().await? {
                if r.node == self.node || live.contains(&r.node) {
                    continue;
                }
                out.push(self.dead_node_session(reg, r).await);
            }
            out.sort_by(|a, b| a.record.client_id.cmp(&b.record.client_id));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
        };
        match r.await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, "cluster: the sessions of dead nodes could not be read");
                None
            }
        }
    }

    /// The principal of a dead node's session: its client id's entry, while it names that node.
    async fn dead_node_session(&self, reg: &Registry, record: sessions::SessionRecord) -> DeadNodeSession {
        let principal = match reg.holder(&record.client_id).await {
            Ok(Some(c)) if c.node == record.node => Some(c.identity),
            _ => None,
        };
        DeadNodeSession { record, principal }
    }

    /// `client_id`'s lasting session kept by a dead node ([`Cluster::sessions_of_dead_nodes`]).
    pub async fn session_of_dead_node(&self, client_id: &str) -> Option<DeadNodeSession> {
        let reg = self.registry().await.ok()?;
        let (record, _) = self.sessions().await.ok()?.get(client_id).await.ok()??;
        if reg.node_alive(&record.node).await.ok()? {
            return None;
        }
        Some(self.dead_node_session(reg, record).await)
    }

    /// Remove `client_id`'s lasting session kept by a dead node: its record, and its client
    /// id's entry while it names that node (so that nobody resumes it, and the client id is
    /// free). True when there was one.
    pub async fn drop_session_of_dead_node(&self, client_id: &str) -> bool {
        let r = async {
            let reg = self.registry().await?;
            let sessions = self.sessions().await?;
            let Some((record, _)) = sessions.get(client_id).await? else { return Ok(false) };
            if reg.node_alive(&record.node).await? {
                return Ok(false);
            }
            // The claim first: a CONNECT between the two finds no entry of the dead node to
            // take the session over from.
            reg.forget_of(client_id, &record.node).await?;
            sessions.remove_of(client_id, &record.node).await
        };
        match r.await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: a dead node's session could not be removed");
                false
            }
        }
    }

    /// One look at the dead nodes' kept sessions ([`sessions::Reaper`]): the leases read; on
    /// the reaper, the sessions bucket read when needed, and the sessions whose end came
    /// discarded.
    async fn expire_tick(&self, st: &mut sessions::Reaper) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let reg = self.registry().await?;
        let mut live = reg.live_nodes().await?;
        live.insert(self.node.clone());
        if !st.observe(&live, &self.node, unix_now()) {
            return Ok(());
        }
        let sessions = self.sessions().await?;
        if st.needs_scan() {
            let mut records = Vec::new();
            for (r, rev) in sessions.all_revisions().await? {
                if live.contains(&r.node) {
                    continue;
                }
                let claim = reg.entry_of(&r.client_id).await?;
                records.push((r, rev, claim));
            }
            st.scanned(records, unix_now());
        }
        for d in st.due(unix_now()) {
            match self.discard_expired(reg, sessions, &d).await {
                Ok(Some(later)) => st.again(later),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: an expired session of a dead node could not be discarded; trying again");
                    st.again(d);
                }
            }
        }
        Ok(())
    }

    /// Discard a dead node's kept session whose expiry passed [MQTT-4.1.0-2]: its client id's
    /// entry first (a CONNECT between the two finds nothing of the dead node to resume), then
    /// its record, each by a compare-and-set on the revision read. A changed entry (a client
    /// claimed the id: perhaps resuming it) leaves the record for [`sessions::RESUME_GRACE`]
    /// more, after which it goes only if still the same (a resume rewrites it). `Some`: look
    /// again later.
    async fn discard_expired(
        &self,
        reg: &Registry,
        sessions: &Sessions,
        d: &sessions::Doomed,
    ) -> Result<Option<sessions::Doomed>, Box<dyn std::error::Error + Send + Sync>> {
        if let Some(rev) = d.claim {
            if !reg.forget_at(&d.client_id, rev).await? {
                let ends_at = unix_now().saturating_add(sessions::RESUME_GRACE);
                return Ok(Some(sessions::Doomed { claim: None, ends_at, ..d.clone() }));
            }
        }
        if sessions.remove_at(&d.client_id, d.record).await? {
            tracing::info!(node = %d.node, "cluster: a dead node's kept session expired; discarded");
        }
        Ok(None)
    }

    /// The connections of every node, as the registry has them.
    pub async fn connected_clients(&self) -> Vec<registry::Claim> {
        let Ok(reg) = self.registry().await else { return Vec::new() };
        reg.connected().await.unwrap_or_default()
    }

    /// True while connected to a NATS server.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Ready to serve as a node of the cluster: connected to NATS, its client registry
    /// answering (its lease renewed at the last try: a CONNECT can be claimed), and holding
    /// every retained message the cluster had when this node started (a subscriber here gets
    /// what one on another node gets). `/readyz` answers with it.
    pub fn ready(&self) -> bool {
        self.connected() && self.registry_ok.load(Ordering::Acquire) && self.retained_ready.load(Ordering::Acquire)
    }

    /// Wait until interest ticket `ticket` is in force on NATS — on the server this node is
    /// connected to, and on the servers of the other live nodes ([`propagate_interest`]) —
    /// at most `limit`: a SUBACK waits for it. Returns false when the limit passed first (NATS
    /// away): the SUBACK goes out all the same.
    pub async fn wait_interest(&self, ticket: u64, limit: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(limit, rx.wait_for(|&n| n >= ticket)).await.is_ok_and(|r| r.is_ok())
    }

    /// Wait until the QoS 1/2 messages of forward tickets `first..=last`
    /// ([`warden_core::Connection::take_forward_wait`]) are kept by JetStream (a quorum of its
    /// servers), at most `limit`. False when one of them was not kept, or the limit passed:
    /// the acknowledgements must not be sent (SPEC §11: no PUBACK without a quorum).
    pub async fn wait_stored(&self, first: u64, last: u64, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.stored.upto.notified();
                if let Some(ok) = self.stored.check(first, last) {
                    return ok;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// Wait until the will changes reported so far are applied to the cluster's copies, at
    /// most `limit`: at shutdown, after the connections ended (their wills published or
    /// discarded here), so that no other node publishes them again once this node's lease
    /// lapses. False when the limit passed first.
    pub async fn settle_wills(&self, limit: Duration) -> bool {
        let want = self.wills_sent.load(Ordering::Acquire);
        let mut rx = self.wills_done.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|&n| n >= want)).await.is_ok_and(|r| r.is_ok())
    }

    /// [`ClusterConfig::publish_timeout`].
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The traffic counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    fn send(&self, out: Out) {
        // The task ends only with the runtime: a failed send means shutdown.
        let _ = self.tx.send(out);
    }
}

impl Fabric for Cluster {
    fn forward(&self, msgs: &[Arc<Message>]) {
        let bytes: u64 = msgs.iter().map(|m| m.cost() + 64).sum();
        let full = self.backlog.fetch_add(bytes, Ordering::Relaxed) > MAX_BACKLOG;
        if full {
            self.backlog.fetch_sub(bytes, Ordering::Relaxed);
            self.stats.dropped.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        }
        if !msgs.iter().any(|m| m.qos != mqtt_codec::QoS::AtMostOnce) {
            if !full {
                self.send(Out::Forward(msgs.to_vec(), bytes, None));
            }
            return;
        }
        // A ticket the acknowledgements wait for, taken and sent under one lock so that the
        // task sees tickets in order.
        let Ok(mut issued) = self.stored_issued.lock() else { return };
        *issued += 1;
        let ticket = *issued;
        if full {
            self.send(Out::Failed(ticket));
        } else {
            self.send(Out::Forward(msgs.to_vec(), bytes, Some(ticket)));
        }
        self.stored_issued_now.store(ticket, Ordering::Release);
    }

    fn stored_issued(&self) -> u64 {
        self.stored_issued_now.load(Ordering::Acquire)
    }

    fn session_saved(
        &self,
        client_id: &Arc<str>,
        expiry: u32,
        subs: Vec<warden_core::session::Subscription>,
        settled: bool,
    ) {
        // The mark is taken now, not when the sessions task gets to the change (the bucket
        // may be slow, and messages for the session may be kept by the stream meanwhile).
        let mark = self.position_floor.load(Ordering::Acquire);
        let subs = subs
            .into_iter()
            .map(|s| SubRecord { filter: s.filter.as_str().to_owned(), options: s.options.to_byte(), id: s.id })
            .collect();
        let _ =
            self.session_tx.send(SessionOp::Saved { client_id: client_id.to_string(), expiry, subs, mark, settled });
    }

    fn session_ended(&self, client_id: &Arc<str>) {
        let _ = self.session_tx.send(SessionOp::Ended { client_id: client_id.to_string() });
    }

    fn will_set(
        &self,
        client_id: &Arc<str>,
        generation: u64,
        owner: &Arc<warden_policy::Principal>,
        will: &mqtt_codec::LastWill,
        delay: u32,
    ) {
        // The owner travels in the entry's header: the record is the message alone.
        let record = warden_store::wire::encode(&Message::from_will(will.clone()), &RetainSource::Broker);
        let header = wills::header_of(
            &self.node,
            self.origin,
            client_id,
            generation,
            delay,
            will.properties.message_expiry_interval,
            owner,
        );
        match wills::encode_entry(&header, &record) {
            Ok(value) => {
                self.wills_sent.fetch_add(1, Ordering::AcqRel);
                let _ = self.will_tx.send(WillOp::Set { client_id: client_id.clone(), generation, value });
            }
            Err(e) => tracing::warn!(error = %e, "cluster: a will's copy could not be encoded"),
        }
    }

    fn will_cleared(&self, client_id: &Arc<str>, generation: u64) {
        self.wills_sent.fetch_add(1, Ordering::AcqRel);
        let _ = self.will_tx.send(WillOp::Cleared { client_id: client_id.clone(), generation });
    }

    fn retained(&self, msg: &Arc<Message>, source: &RetainSource) {
        // Called under the retained store's lock: numbered in the order the topic changed here.
        let n = self.retained_pending.sent(msg.topic.as_str());
        self.send(Out::Retained(msg.clone(), source.clone(), n));
    }

    fn interest(&self, change: Interest) {
        // Called under the trie's lock: tickets follow the order of the changes.
        let ticket = self.issued.fetch_add(1, Ordering::AcqRel) + 1;
        self.send(Out::Interest(change, ticket));
    }

    fn issued(&self) -> u64 {
        self.issued.load(Ordering::Acquire)
    }
}

/// What a NATS subscription of this node is for.
#[derive(Clone)]
enum Role {
    /// Plain subscribers (and the long-topic subject).
    Plain,
    /// One shared group on one filter.
    Group { group: Arc<str>, filter: Arc<str> },
}

/// An interest: the shared group (if any) and the filter.
type InterestKey = (Option<Arc<str>>, Arc<str>);

/// A batch's forward ticket, resolved when JetStream has answered for each of its QoS 1/2
/// messages: `(ticket, all kept)`.
type AckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = (u64, bool)> + Send>>;

struct Task {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// The messages stream (QoS 1/2 messages), and whether it is known to exist.
    msgs_stream: async_nats::jetstream::stream::Config,
    msgs_stream_ok: bool,
    /// The forward tickets waiting for JetStream's acknowledgements, in order.
    acks: futures_util::stream::FuturesOrdered<AckFuture>,
    stored: Arc<Stored>,
    /// [`ClusterConfig::publish_timeout`].
    publish_timeout: Duration,
    /// The retained messages on their way to JetStream ([`store_retained`]).
    retained_out: mpsc::UnboundedSender<RetainedOut>,
    prefix: String,
    broker: Arc<Broker>,
    origin: u64,
    seq: u64,
    seen: Seen,
    subs: StreamMap<u64, async_nats::Subscriber>,
    /// The subscriptions (keys in `subs`) and role of each interest.
    by_interest: HashMap<InterestKey, Vec<u64>>,
    roles: HashMap<u64, Role>,
    next_key: u64,
    stats: Arc<ClusterStats>,
    backlog: Arc<AtomicU64>,
    /// The last interest ticket in force.
    applied: tokio::sync::watch::Sender<u64>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Out>) {
        // Every node hears the long-topic subjects.
        for long in [subject::long_messages(&self.prefix), subject::long_durable(&self.prefix)] {
            self.subscribe(long, None, Role::Plain).await;
        }
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(out) => self.handle_out(out).await,
                    None => return,
                },
                Some((key, msg)) = self.subs.next() => self.handle_in(key, msg),
                Some((ticket, ok)) = self.acks.next(), if !self.acks.is_empty() => {
                    if !ok {
                        self.msgs_stream_ok = false; // made again (or found) before the next one
                    }
                    self.stored.resolve(ticket, ok);
                }
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    async fn publish(&mut self, subject: String, payload: Bytes) {
        if let Err(e) = self.client.publish(subject, payload).await {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "cluster: a message could not be handed to NATS");
        }
    }

    async fn handle_out(&mut self, out: Out) {
        match out {
            Out::Forward(msgs, bytes, ticket) => {
                if ticket.is_some() && !self.msgs_stream_ok {
                    // The first QoS 1/2 message of this run: the stream must exist for
                    // JetStream to keep it (whichever node comes first makes it).
                    match self.js.get_or_create_stream(self.msgs_stream.clone()).await {
                        Ok(_) => self.msgs_stream_ok = true,
                        Err(e) => tracing::warn!(error = %e, "cluster: the messages stream is not available"),
                    }
                }
                // Each QoS 1/2 message: (subject, payload, the first try's acknowledgement).
                let mut durable = Vec::new();
                for m in &msgs {
                    let seq = self.next_seq();
                    let record = warden_store::wire::encode(m, &RetainSource::Broker);
                    let payload = Bytes::from(envelope::wrap(self.origin, seq, &record));
                    if m.qos == mqtt_codec::QoS::AtMostOnce {
                        let subject = subject::topic_subject(&self.prefix, Kind::Message, m.topic.as_str());
                        self.publish(subject, payload).await;
                        continue;
                    }
                    let subject = subject::topic_subject(&self.prefix, Kind::Durable, m.topic.as_str());
                    let first = self.js.publish(subject.clone(), payload.clone()).await.ok();
                    durable.push((subject, payload, first));
                }
                self.stats.forwarded.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                self.backlog.fetch_sub(bytes, Ordering::Relaxed);
                if let Some(t) = ticket {
                    let (stats, js, patience) = (self.stats.clone(), self.js.clone(), self.publish_timeout);
                    self.acks.push_back(Box::pin(async move {
                        let deadline = tokio::time::Instant::now() + patience;
                        let tries = durable.into_iter().map(|(subject, payload, first)| {
                            keep_durable(js.clone(), subject, payload, first, deadline, stats.clone())
                        });
                        let all = futures_util::future::join_all(tries).await.into_iter().all(|kept| kept);
                        if !all {
                            // A message may have reached some nodes' subscribers all the same:
                            // the client, not acknowledged, sends it again (QoS 1: at least once).
                            tracing::warn!(
                                "cluster: QoS 1/2 messages not kept by JetStream (no quorum?): not acknowledged"
                            );
                        }
                        (t, all)
                    }));
                }
            }
            Out::Failed(t) => self.acks.push_back(Box::pin(async move { (t, false) })),
            Out::Retained(m, source, n) => {
                // The envelope carries the message's number (not a forwarding sequence: the
                // retained stream is read by [`Retained`] alone), which tells its echo.
                let record = warden_store::wire::encode(&m, &source);
                let subject = subject::topic_subject(&self.prefix, Kind::Retained, m.topic.as_str());
                let payload = Bytes::from(envelope::wrap(self.origin, n, &record));
                // In order, each one retried until JetStream keeps it (its own task: the
                // acknowledgements do not hold up the messages forwarded here).
                let msg_id = format!("{:016x}-{n}", self.origin);
                let _ =
                    self.retained_out.send(RetainedOut { subject, payload, topic: m.topic.as_str().into(), n, msg_id });
            }
            Out::Interest(i, ticket) => {
                self.interest(i).await;
                self.applied.send_modify(|n| *n = (*n).max(ticket));
            }
        }
    }

    async fn interest(&mut self, i: Interest) {
        let key = (i.group.clone(), i.filter.clone());
        if !i.present {
            for k in self.by_interest.remove(&key).unwrap_or_default() {
                // Dropping the subscriber unsubscribes.
                self.subs.remove(&k);
                self.roles.remove(&k);
            }
            return;
        }
        if self.by_interest.contains_key(&key) {
            return;
        }
        // Both spaces: QoS 0 messages and the QoS 1/2 ones the messages stream keeps.
        let patterns: Vec<String> = [Kind::Message, Kind::Durable]
            .into_iter()
            .flat_map(|k| subject::filter_patterns_of(&self.prefix, k, &i.filter))
            .collect();
        let mut keys = Vec::with_capacity(patterns.len() + 1);
        match &i.group {
            None => {
                for p in patterns {
                    keys.extend(self.subscribe(p, None, Role::Plain).await);
                }
            }
            Some(g) => {
                let queue = subject::queue_name(g, &i.filter);
                let role = Role::Group { group: g.clone(), filter: i.filter.clone() };
                let longs = [subject::long_messages(&self.prefix), subject::long_durable(&self.prefix)];
                for p in patterns.into_iter().chain(longs) {
                    keys.extend(self.subscribe(p, Some(queue.clone()), role.clone()).await);
                }
            }
        }
        // The subscription is on the server once this returns (a round trip), so a message
        // published after it is not missed by this node's connection.
        if let Err(e) = self.client.flush().await {
            tracing::debug!(error = %e, "cluster: flush after subscribing failed");
        }
        self.by_interest.insert(key, keys);
    }

    async fn subscribe(&mut self, pattern: String, queue: Option<String>, role: Role) -> Option<u64> {
        let sub = match queue {
            None => self.client.subscribe(pattern.clone()).await,
            Some(q) => self.client.queue_subscribe(pattern.clone(), q).await,
        };
        match sub {
            Ok(sub) => {
                let k = self.next_key;
                self.next_key += 1;
                self.subs.insert(k, sub);
                self.roles.insert(k, role);
                Some(k)
            }
            Err(e) => {
                tracing::warn!(subject = %pattern, error = %e, "cluster: cannot subscribe on NATS");
                None
            }
        }
    }

    fn handle_in(&mut self, key: u64, msg: async_nats::Message) {
        let Some(role) = self.roles.get(&key).cloned() else { return };
        let Some((origin, seq, record)) = envelope::unwrap(&msg.payload) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match role {
            Role::Plain => {
                if origin == self.origin {
                    return; // delivered here when it was published
                }
                if !self.seen.first(origin, seq) {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if let Some((m, _)) = self.decode(record) {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    self.broker.route_from_peer(Arc::new(m));
                }
            }
            Role::Group { group, filter } => {
                if let Some((m, _)) = self.decode(record) {
                    if mqtt_codec::topic::filter_matches(&filter, m.topic.as_str()) {
                        self.stats.received.fetch_add(1, Ordering::Relaxed);
                        self.broker.route_from_peer_group(Arc::new(m), &group, &filter);
                    }
                }
            }
        }
    }

    fn decode(&self, record: &[u8]) -> Option<(Message, RetainSource)> {
        match warden_store::wire::decode(record) {
            Ok(Some((mut m, source))) => {
                // Its publisher's session is on another node: No Local does not apply here.
                m.origin = None;
                Some((m, source))
            }
            Ok(None) => None, // expired on the way
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "cluster: a message from another node did not decode");
                None
            }
        }
    }
}

/// Every node's copy of the retained messages: a JetStream stream that keeps the last message
/// of each retained subject (so a node that starts later, or comes back, reads them all), read
/// from the start by an ordered consumer and applied in the stream's order.
struct Retained {
    ready: Arc<std::sync::atomic::AtomicBool>,
    js: async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
    broker: Arc<Broker>,
    origin: u64,
    stats: Arc<ClusterStats>,
    pending: Arc<PendingRetained>,
}

impl Retained {
    /// Follow the stream for ever; on any failure (NATS away, no quorum), start again after a
    /// second, from the last message of each subject (applying one twice does no harm).
    async fn run(self) {
        let mut failures = 0u32;
        loop {
            match self.follow().await {
                // Said once it lasts (a stream with more replicas than NATS servers never
                // comes: the node stays not ready), then every minute or so.
                Err(e) if failures % 60 == 5 => tracing::warn!(
                    error = %e, replicas = self.config.num_replicas,
                    "cluster: cannot follow the retained messages stream (are there as many NATS servers with JetStream as replicas?); not ready"
                ),
                Err(e) => tracing::debug!(error = %e, "cluster: following the retained stream failed; retrying"),
                Ok(()) => failures = 0,
            }
            failures = failures.saturating_add(1);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn follow(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use async_nats::jetstream::consumer;
        let s = self.js.get_or_create_stream(self.config.clone()).await?;
        let c = s
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                filter_subject: self.config.subjects.first().cloned().unwrap_or_default(),
                ..Default::default()
            })
            .await?;
        if c.cached_info().num_pending == 0 {
            self.ready.store(true, Ordering::Release);
        }
        let mut msgs = c.messages().await?;
        while let Some(m) = msgs.next().await {
            let m = m?;
            let seq = m.info().map_or(0, |i| i.stream_sequence);
            self.apply(&m.message.payload, seq);
            if m.info().is_ok_and(|i| i.pending == 0) {
                self.ready.store(true, Ordering::Release); // caught up
            }
        }
        Ok(())
    }
}

impl Retained {
    /// Apply one message of the retained stream, in the stream's order, so that every node
    /// ends with the stream's last message of each topic. This node's own (this run's) was
    /// kept here when it was published (charged to its publisher's quota): its echo only says
    /// it is in the stream. Another node's is kept unless a message of this node on the same
    /// topic is still on its way to the stream: that one comes later in the stream's order,
    /// and replaces it everywhere (read-your-writes here, and no node keeps the older one).
    fn apply(&self, payload: &[u8], seq: u64) {
        let Some((origin, n, record)) = envelope::unwrap(payload) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match warden_store::wire::decode(record) {
            Ok(Some((msg, _))) if origin == self.origin => self.pending.done(msg.topic.as_str(), n),
            Ok(Some((mut msg, source))) => {
                msg.origin = None;
                let topic = msg.topic.clone();
                let pending = &self.pending;
                let msg = Arc::new(msg);
                let mut waited = false;
                if self.broker.retain_from_peer_if(&msg, source.clone(), || {
                    waited = pending.waits(topic.as_str());
                    !waited
                }) {
                    self.stats.retained_in.fetch_add(1, Ordering::Relaxed);
                } else if waited {
                    pending.set_aside(msg, source, seq);
                }
            }
            // Expired on the way: this node's own is out of the stream's way all the same.
            Ok(None) if origin == self.origin => self.pending.done_any(n),
            Ok(None) => {}
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "cluster: a retained message from another node did not decode");
            }
        }
    }
}

/// A provisional claim is in the registry as `written`: a release goes the usual way from now
/// on, and one that came while the write was on its way (the connection ended, its session
/// kept or not) is done now, as it would have been.
async fn settle(p: &Provisional, reg: &Registry, id: &str, conn: u64, written: Want) {
    let now = {
        let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
        st.settled = true;
        st.want
    };
    if now != written {
        reg.release(id, conn, if let Want::Kept(t) = now { Some(t) } else { None }).await;
    }
}

/// The retained messages' stream: the last message of each retained subject, on disk, on
/// `replicas` servers.
fn retained_stream_config(prefix: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: format!("{prefix}_RETAINED"),
        subjects: vec![subject::all_retained(prefix)],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// Keep this node's lease for ever (SPEC §11: a claim of a node without a lease is stale).
async fn lease(cluster: Arc<Cluster>) {
    loop {
        let ok = match cluster.registry().await {
            Ok(reg) => match reg.renew().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: renewing this node's lease failed");
                    false
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "cluster: the client registry is not reachable yet");
                false
            }
        };
        cluster.registry_ok.store(ok, Ordering::Release);
        if let Ok(mut since) = cluster.registry_down_since.lock() {
            match (ok, *since) {
                (true, _) => *since = None,
                (false, None) => *since = Some(tokio::time::Instant::now()),
                (false, Some(_)) => {}
            }
        }
        // A failed renewal is tried again soon: the lease must not lapse, and /readyz waits.
        tokio::time::sleep(if ok { registry::LEASE_REFRESH } else { Duration::from_millis(500) }).await;
    }
}

/// This node's retained messages on their way to the retained stream, by topic: the number of
/// the last one (numbers grow with every retained message of this node's run). While a topic
/// has one, other nodes' messages of that topic read from the stream are older than it there,
/// and are not kept ([`Retained::apply`]).
///
/// Another node's message read while one of this node's is on its way is set aside with its
/// stream sequence, not dropped: the stream keeps one message per subject, so this node's may
/// be deleted from the stream by that newer one before this node reads it back (its echo never
/// comes). When this node's is stored, its acknowledgement's sequence decides: the message set
/// aside is kept if it came later in the stream ([`PendingRetained::stored`]).
#[derive(Default)]
struct PendingRetained {
    last: std::sync::Mutex<(u64, HashMap<Box<str>, u64>)>,
    /// By topic: the latest other node's message read while this node's waited, with its
    /// stream sequence.
    aside: std::sync::Mutex<HashMap<Box<str>, SetAside>>,
}

/// Another node's retained message set aside: its stream sequence, the message, its source.
type SetAside = (u64, Arc<Message>, RetainSource);

impl PendingRetained {
    /// A retained message of `topic` leaves this node: its number.
    fn sent(&self, topic: &str) -> u64 {
        let mut st = self.last.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += 1;
        let n = st.0;
        st.1.insert(topic.into(), n);
        n
    }

    /// Message `n` of `topic` is in the stream (or will never be): the topic waits no more
    /// unless a later one of this node is on its way.
    fn done(&self, topic: &str, n: u64) {
        let mut st = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if st.1.get(topic).is_some_and(|last| *last <= n) {
            st.1.remove(topic);
        }
    }

    /// [`PendingRetained::done`] when only the number is known.
    fn done_any(&self, n: u64) {
        let mut st = self.last.lock().unwrap_or_else(|e| e.into_inner());
        st.1.retain(|_, last| *last != n);
    }

    /// Whether a message of this node on `topic` is still on its way to the stream.
    fn waits(&self, topic: &str) -> bool {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).1.contains_key(topic)
    }

    /// Set another node's message (stream sequence `seq`) aside while this node's waits: the
    /// later in the stream of the two kept.
    fn set_aside(&self, msg: Arc<Message>, source: RetainSource, seq: u64) {
        let mut aside = self.aside.lock().unwrap_or_else(|e| e.into_inner());
        match aside.get(msg.topic.as_str()) {
            Some((s, _, _)) if *s >= seq => {}
            _ => {
                aside.insert(msg.topic.as_str().into(), (seq, msg, source));
            }
        }
    }

    /// This node's message `n` of `topic` is in the stream at sequence `seq`: it is done, and
    /// another node's message set aside meanwhile that came later in the stream is returned, to
    /// keep (an earlier one is dropped: this node's replaced it).
    fn stored(&self, topic: &str, n: u64, seq: u64) -> Option<(Arc<Message>, RetainSource)> {
        self.done(topic, n);
        // A later message of this node still on its way decides when it is stored.
        let still = self.waits(topic);
        let mut aside = self.aside.lock().unwrap_or_else(|e| e.into_inner());
        match aside.get(topic) {
            Some((s, _, _)) if *s > seq && still => None,
            Some((s, _, _)) if *s > seq => aside.remove(topic).map(|(_, m, src)| (m, src)),
            Some(_) => {
                aside.remove(topic);
                None
            }
            None => None,
        }
    }

    /// This node's message of `topic` will never be in the stream: what was set aside is kept.
    fn given_up(&self, topic: &str, n: u64) -> Option<(Arc<Message>, RetainSource)> {
        self.done(topic, n);
        self.aside.lock().unwrap_or_else(|e| e.into_inner()).remove(topic).map(|(_, m, src)| (m, src))
    }
}

/// A retained message for [`store_retained`].
struct RetainedOut {
    subject: String,
    payload: Bytes,
    topic: Box<str>,
    /// Its number ([`PendingRetained`]).
    n: u64,
    /// Its JetStream message id (origin and number): a retry after a lost acknowledgement is
    /// not kept twice (the stream's duplicate window), so no other node's message of the topic
    /// can fall between two copies of it.
    msg_id: String,
}

/// Store this node's retained messages in JetStream, in order, each one retried (the stream
/// made first if it is missing) until JetStream keeps it: at start the NATS cluster may still
/// be electing its leaders. A message still not kept after [`RETAINED_PATIENCE`] is dropped
/// (counted, logged; it stays on this node only); one that a newer message of the same topic
/// replaced meanwhile is not retried.
async fn store_retained(
    js: async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
    mut rx: mpsc::UnboundedReceiver<RetainedOut>,
    stats: Arc<ClusterStats>,
    pending: Arc<PendingRetained>,
    broker: Arc<Broker>,
) {
    // Another node's message set aside while this node's waited, kept now (see PendingRetained).
    let keep = |aside: Option<(Arc<Message>, RetainSource)>| {
        if let Some((m, source)) = aside {
            let topic = m.topic.clone();
            if broker.retain_from_peer_if(&m, source, || !pending.waits(topic.as_str())) {
                stats.retained_in.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let mut stream_ok = false;
    let mut queue: std::collections::VecDeque<RetainedOut> = std::collections::VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(m) => queue.push_back(m),
                None => return,
            }
        }
        while let Ok(m) = rx.try_recv() {
            queue.push_back(m);
        }
        let Some(out) = queue.pop_front() else { continue };
        if queue.iter().any(|o| o.subject == out.subject) {
            continue; // a newer retained message of the same topic follows
        }
        let deadline = tokio::time::Instant::now() + RETAINED_PATIENCE;
        loop {
            let stored = async {
                if !stream_ok {
                    js.get_or_create_stream(config.clone()).await?;
                    stream_ok = true;
                }
                let publish = async_nats::jetstream::message::PublishMessage::build()
                    .payload(out.payload.clone())
                    .message_id(&out.msg_id);
                let ack = js.send_publish(out.subject.clone(), publish).await?.await?;
                Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(ack.sequence)
            }
            .await;
            match stored {
                Ok(seq) => {
                    stats.retained_out.fetch_add(1, Ordering::Relaxed);
                    keep(pending.stored(&out.topic, out.n, seq));
                    break;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    keep(pending.given_up(&out.topic, out.n));
                    tracing::warn!(error = %e, "cluster: a retained message could not be stored in JetStream; the other nodes do not have it");
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: storing a retained message failed; retrying");
                    stream_ok = false;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// How long a retained message is retried before it is dropped.
const RETAINED_PATIENCE: Duration = Duration::from_secs(30);

/// The messages stream: every QoS 1 and 2 message, on disk, on `replicas` servers; a PUBACK
/// waits until JetStream has it. Kept one hour (at most 256 MiB), the window in which a
/// session could be resumed from it (docs/cluster.md).
fn messages_stream_config(prefix: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: format!("{prefix}_MSGS"),
        subjects: vec![subject::all_durable(prefix)],
        max_age: Duration::from_secs(3600),
        max_bytes: 256 << 20,
        discard: async_nats::jetstream::stream::DiscardPolicy::Old,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// How often the messages stream's position is read for [`Cluster::position_floor`].
const POSITION_POLL: Duration = Duration::from_millis(500);

/// Keep [`Cluster::position_floor`] one reading behind the stream (a reading at least
/// [`POSITION_POLL`] old: a message the stream kept just before a reading may still be on its
/// way to this node). Makes the sessions bucket early, too, so that the first session's
/// record does not wait for it. Ends with the cluster.
async fn watch_position(cluster: std::sync::Weak<Cluster>) {
    let mut last = 0;
    loop {
        {
            let Some(c) = cluster.upgrade() else { return };
            match c.sessions().await {
                Ok(s) => match s.stream_position().await {
                    Ok(p) => {
                        c.position_floor.fetch_max(last, Ordering::AcqRel);
                        last = p;
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster: the messages stream's position is unknown"),
                },
                Err(e) => tracing::debug!(error = %e, "cluster: the sessions bucket is not reachable yet"),
            }
        }
        tokio::time::sleep(POSITION_POLL).await;
    }
}

/// Keep the copies of this node's wills in step, in order (SPEC §11).
async fn keep_wills(cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<WillOp>) {
    let mut written = HashMap::new();
    while let Some(op) = rx.recv().await {
        let r = match cluster.wills().await {
            Ok(w) => w.apply(op, &mut written).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "cluster: a will's copy could not be written");
        }
        cluster.wills_done.send_modify(|n| *n += 1);
    }
}

/// Publish the wills of dead nodes that fall to this node, once their delay has passed since
/// the node was seen dead ([`wills`]): the bucket is followed by a watch (O(changes)) and
/// looked at every [`wills::REAP_EVERY`]. Ends with the cluster.
async fn reap_wills(cluster: std::sync::Weak<Cluster>, broker: Arc<Broker>) {
    use futures_util::StreamExt as _;
    let mut seen = HashMap::new();
    let mut index: HashMap<String, wills::Kept> = HashMap::new();
    let mut watch: Option<async_nats::jetstream::kv::Watch> = None;
    let mut tick = tokio::time::interval(wills::REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if watch.is_none() {
            // The bucket is made at once (a claim cancels wills only once it is there); a
            // watch that failed is made again at the next tick, its index read anew.
            let Some(c) = cluster.upgrade() else { return };
            match async { c.wills().await?.watch().await }.await {
                Ok(w) => {
                    index.clear();
                    watch = Some(w);
                }
                Err(e) => tracing::debug!(error = %e, "cluster: the wills bucket could not be watched"),
            }
        }
        let change = async {
            match watch.as_mut() {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            e = change => match e {
                Some(Ok(e)) => wills::note(&mut index, &e),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "cluster: the wills watch failed; watching again");
                    watch = None;
                }
                None => watch = None,
            },
            _ = tick.tick() => {
                let Some(c) = cluster.upgrade() else { return };
                if watch.is_none() {
                    continue;
                }
                let due = async {
                    let reg = c.registry().await?;
                    c.wills().await?.reap(&reg.nodes, &index, &mut seen).await
                };
                match due.await {
                    Ok(due) => publish_dead_wills(&c, &broker, due),
                    Err(e) => tracing::debug!(error = %e, "cluster: the wills of dead nodes could not be looked at"),
                }
            }
        }
    }
}

/// Discard the dead nodes' kept sessions once their expiry passed, on one node (the reaper:
/// [`sessions::Reaper`]); every node looks at the leases every [`wills::REAP_EVERY`]. Ends
/// with the cluster.
async fn expire_dead_sessions(cluster: std::sync::Weak<Cluster>) {
    let mut st = sessions::Reaper::default();
    let mut tick = tokio::time::interval(wills::REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        if let Err(e) = c.expire_tick(&mut st).await {
            tracing::debug!(error = %e, "cluster: the sessions of dead nodes could not be looked at");
        }
    }
}

/// Now, in Unix seconds (the registry's clock: [`registry::Claim::expires_at`]).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Publish the dead nodes' wills this node deleted from the bucket, if their owners stand.
fn publish_dead_wills(c: &Cluster, broker: &Broker, due: Vec<wills::Due>) {
    for d in due {
        let Some(owner) = wills::owner_of(&d.header) else {
            tracing::warn!(kind = %d.header.kind, "cluster: a dead node's will names an owner of an unknown kind; not published");
            continue;
        };
        let stands = c.sink.get().is_none_or(|s| s.will_owner_stands(&owner, d.header.jti.as_deref()));
        let published = stands
            && broker.publish_peer_will(
                d.message,
                d.header.message_expiry,
                &Arc::new(owner),
                &Arc::from(d.header.client_id.as_str()),
                std::time::Instant::now(),
            );
        tracing::info!(
            node = %d.header.node,
            published,
            owner_stands = stands,
            "cluster: the will of a dead node's client handled here"
        );
    }
}

/// How long the node names (leases) used for the interest pings are kept before they are
/// read again.
const PEERS_FRESH: Duration = Duration::from_secs(3);

/// Carry the interest tickets in force on this node's NATS server (`local`, after the
/// subscription's round trip) to `done` once the servers of the other nodes hold them too:
/// each other node (holding a lease) is pinged on its command subject, through this node's
/// connection, after the subscription. A NATS server forwards a connection's protocol in
/// order, and sends an account's interest changes and messages to a routed server on one
/// route connection, in order: when another node's answer comes back, its server had the new
/// interest before it passed the ping on, so whatever that node publishes afterwards reaches
/// this node (SPEC §11's subscribe gap). A node that does not answer within
/// [`SESSIONS_PATIENCE`] (or has no responder: dead) is not waited for. Many changes made
/// meanwhile share one round of pings. Ends with the cluster.
async fn propagate_interest(
    cluster: std::sync::Weak<Cluster>,
    mut local: tokio::sync::watch::Receiver<u64>,
    done: tokio::sync::watch::Sender<u64>,
) {
    let mut at = 0;
    let mut peers: Option<(tokio::time::Instant, Vec<String>)> = None;
    loop {
        if local.wait_for(|&n| n > at).await.is_err() {
            return;
        }
        let target = *local.borrow();
        let Some(c) = cluster.upgrade() else { return };
        if peers.as_ref().is_none_or(|(t, _)| t.elapsed() > PEERS_FRESH) {
            let names = async { registry::all_keys(&c.registry().await?.nodes).await };
            peers = match names.await {
                Ok(n) => Some((tokio::time::Instant::now(), n.into_iter().filter(|n| *n != c.node).collect())),
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: the other nodes are not known; interest not confirmed there");
                    None
                }
            };
        }
        let pings = peers.iter().flat_map(|(_, p)| p.iter()).map(|node| {
            let ask = c.client.request(control::node_subject(&c.prefix, node), control::ping_command());
            async move {
                if !matches!(tokio::time::timeout(SESSIONS_PATIENCE, ask).await, Ok(Ok(_))) {
                    tracing::debug!(node = %node, "cluster: a node did not answer an interest ping");
                }
            }
        });
        futures_util::future::join_all(pings).await;
        drop(c);
        at = target;
        done.send_modify(|n| *n = (*n).max(target));
    }
}

/// Keep this node's lasting sessions' records in step, in order (SPEC §11).
async fn keep_sessions(cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<SessionOp>) {
    while let Some(op) = rx.recv().await {
        let r = match cluster.sessions().await {
            Ok(s) => s.apply(op).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "cluster: a session record could not be written");
        }
    }
}

/// Wait for JetStream to keep one QoS 1/2 message (`first`: the first try's pending
/// acknowledgement), publishing it again until `deadline`. A second copy a retry may make is
/// dropped by the receiving nodes' duplicate window only when it is close by (QoS 1 is at
/// least once).
async fn keep_durable(
    js: async_nats::jetstream::Context,
    subject: String,
    payload: Bytes,
    first: Option<async_nats::jetstream::context::PublishAckFuture>,
    deadline: tokio::time::Instant,
    stats: Arc<ClusterStats>,
) -> bool {
    let mut pending = first;
    loop {
        if let Some(ack) = pending.take() {
            match tokio::time::timeout_at(deadline, std::future::IntoFuture::into_future(ack)).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cluster: JetStream did not keep a QoS 1/2 message; trying again")
                }
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        pending = match tokio::time::timeout_at(deadline, js.publish(subject.clone(), payload.clone())).await {
            Ok(Ok(ack)) => Some(ack),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cluster: a QoS 1/2 message could not be handed to JetStream");
                None
            }
            Err(_) => break,
        };
    }
    stats.dropped.fetch_add(1, Ordering::Relaxed);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retained(topic: &str, body: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: mqtt_codec::TopicName::new(topic).unwrap(),
            payload: Bytes::from(body.to_owned()),
            qos: mqtt_codec::QoS::AtMostOnce,
            retain: true,
            properties: None,
            expires_at: None,
            origin: None,
            persisted: Default::default(),
        })
    }

    /// The stream keeps one message per subject: this node's may be deleted by another
    /// node's newer one before this node reads it back. The acknowledgement's sequence
    /// decides which of the two this node keeps (the CI flake of
    /// `concurrent_retained_writes_on_two_nodes_converge_to_the_streams_last`).
    #[test]
    fn another_nodes_retained_message_set_aside_is_kept_when_it_is_later_in_the_stream() {
        let p = PendingRetained::default();
        let n = p.sent("t");
        assert!(p.waits("t"));
        // Another node's at sequence 11, read while this node's waits: set aside.
        p.set_aside(retained("t", "b-1"), RetainSource::Broker, 11);
        // An older one of it does not replace it.
        p.set_aside(retained("t", "b-0"), RetainSource::Broker, 9);
        // This node's stored at 10: the one at 11 is later, kept.
        let kept = p.stored("t", n, 10).expect("the later message is kept");
        assert_eq!(kept.0.payload, Bytes::from("b-1"));
        assert!(!p.waits("t"));

        // This node's stored at 20, after another node's at 15: this node's stays.
        let n = p.sent("t");
        p.set_aside(retained("t", "b-2"), RetainSource::Broker, 15);
        assert!(p.stored("t", n, 20).is_none());
        assert!(p.aside.lock().unwrap().is_empty(), "nothing left aside");

        // Given up (never stored): what was set aside is kept.
        let n = p.sent("t");
        p.set_aside(retained("t", "b-3"), RetainSource::Broker, 30);
        assert_eq!(p.given_up("t", n).expect("kept").0.payload, Bytes::from("b-3"));

        // A newer message of this node still waits after an older one is stored.
        let n1 = p.sent("t");
        let n2 = p.sent("t");
        p.set_aside(retained("t", "b-4"), RetainSource::Broker, 40);
        assert!(p.stored("t", n1, 39).is_none(), "n2 is still on its way: it decides");
        assert!(p.waits("t"));
        assert!(p.stored("t", n2, 41).is_none(), "n2 came after b-4");
        assert!(!p.waits("t"));
        assert!(p.aside.lock().unwrap().is_empty());
    }
}
