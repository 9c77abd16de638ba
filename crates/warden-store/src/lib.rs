//! Warden's durable state, in one embedded [redb](https://docs.rs/redb) file under `data_dir`.
//!
//! The broker core reports changes as [`PersistOp`]s ([`warden_core::persist`]); [`Store`]
//! queues them and one writer thread applies everything queued in one write transaction and
//! commits (group commit: one fsync covers every op that arrived during the previous one).
//! [`Store::wait`] lets a connection hold back an acknowledgement until the change it
//! acknowledges is committed.
//!
//! # Durability modes ([`Durability`])
//! - `Sync`: every change (session, subscription, message, retained, in-flight progress) is
//!   durable before the client sees the packet that answers it (CONNACK, SUBACK, PUBACK …).
//! - `Batched` (default): an accepted QoS 1/2 message for a persistent session, a retained
//!   message, an inbound QoS 2 packet id and an outbound QoS 2 packet id are durable before
//!   the PUBACK / PUBREC / PUBLISH that depends on them; other changes (session records,
//!   acknowledgements received, disconnection times) go into the next commit without holding
//!   anything back. After a crash, a message acknowledged by its subscriber just before may
//!   be delivered again (QoS 1 allows that; QoS 2 stays exactly once). What nobody waits on
//!   (a QoS 1 delivery's in-flight update, a finished delivery's or message's removal) is
//!   held back one more commit window, where it mostly cancels against what follows it on
//!   the same record (issue 24; `commit` says why a crash then still loses nothing
//!   acknowledged, and only redelivers).
//! - `None`: nothing waits; commits are not synced, and the file is made durable once a
//!   second and at shutdown. A crash loses up to the last second.
//!
//! A commit window starts as soon as the commit before is done, or at most once per
//! [`Store::set_commit_interval`] (`[persistence] commit_interval`): longer windows make fewer,
//! larger commits, and let more deliveries finish before their window commits (issue 24).
//!
//! # Writes proportional to the change
//! A session's subscriptions are records of their own, keyed by (session id, filter): a
//! SUBSCRIBE or UNSUBSCRIBE writes the subscriptions it changes, never the whole session (a
//! session with 1,000 large filters made every SUBSCRIBE rewrite all of them, issue 17). A
//! store written before keeps them inside the session record (version 1); opening it moves
//! them into subscription records, in one transaction.
//!
//! # One record for a message with one delivery
//! A message fanned out to several persistent sessions is stored once, in a record of its
//! own, and each delivery record refers to it. The common case, one persistent subscriber,
//! would write two records (and later remove two) for one message; instead the delivery's
//! record carries the message (version 2 delivery record, `codec`) when the message and
//! exactly one delivery of it are written in one commit (issue 24). A delivery that comes to
//! refer to it in a later commit gives it a record of its own then, in that commit (its
//! acknowledgement waits on that commit), so a message is always stored as long as one of its
//! deliveries is. Version 1 delivery records (every store written before) read as before; an
//! older broker opening a store with version 2 records drops those deliveries as unreadable
//! (a downgrade loses queued messages).
//!
//! # Recovery
//! Opening never trusts the file blindly: redb checks its pages, every record is decoded
//! with the same validation as a packet from the network, records that fail are dropped and
//! reported, references to missing messages are dropped, orphans are removed. If a table
//! cannot be read at all, what could be read is written to a fresh file and the damaged one
//! is kept beside it (`<file>.corrupt-<unix time>`). [`Report`] says what was loaded and
//! what was dropped.
//!
//! # Layout
//! - `lib.rs`: [`Store`] (open and recover, the group-commit writer thread, [`Persist`] for
//!   the core), the redb tables, [`StoreError`] (the crate's one error: the file could not be
//!   opened or created; damaged records are not errors but dropped and named in [`Report`]).
//! - `codec`: the versioned on-disk record formats (messages, retained messages with their
//!   publisher, deliveries, sessions, subscriptions) and their validated decoding.
//! - `tests`: unit tests against real redb files in a temporary directory (group commit,
//!   durability modes, recovery from damaged files and records).

// Workspace lints of issue 18, enabled per crate until every crate is clean.
// redb::Error is large (160 B); it only travels on cold paths (a failed commit, a damaged file).
#![allow(clippy::result_large_err)]

mod codec;

/// A message with its publisher as bytes, in the store's own retained-record format
/// (`codec`: a version byte, the expiry as wall-clock milliseconds, the publisher, then the
/// codec's MQTT 5 PUBLISH packet). The cluster (`warden-cluster`) sends messages between nodes
/// in this form, so that a message crossing nodes is validated on the way in exactly as one
/// read back from disk or from the network.
pub mod wire {
    use warden_core::retained::RetainSource;
    use warden_core::Message;

    use crate::codec::{self, Clock};

    /// Encode `m`, published by `source`.
    pub fn encode(m: &Message, source: &RetainSource) -> Vec<u8> {
        codec::encode_retained(m, source, Clock::now())
    }

    /// Decode what [`encode`] made; `Ok(None)` when the message has expired meanwhile. The
    /// error says what is wrong with the bytes.
    pub fn decode(b: &[u8]) -> Result<Option<(Message, RetainSource)>, String> {
        codec::decode_retained(b, Clock::now()).map_err(|e| e.0)
    }

    /// A principal made again from its kind, name, roles, scopes and credential source (their
    /// `as_str` names), its grants re-derived as for a session restored from the store (SPEC
    /// §10: a look-up's principal gets none of its own). The error names what is unknown.
    pub fn restore_owner(
        kind: &str,
        name: &str,
        roles: &[String],
        scopes: &[String],
        source: &str,
    ) -> Result<warden_policy::Principal, String> {
        codec::restore_owner(kind, name, roles, scopes, Some(source)).map_err(|e| e.0)
    }
}

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mqtt_codec::QoS;
use parking_lot::{Condvar, Mutex};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;
use tracing::{error, info, warn};
use warden_core::persist::{Persist, PersistOp, PersistedMsg, RestoredDelivery, RestoredSession};
use warden_core::retained::RetainSource;
use warden_core::session::Subscription;
use warden_core::Message;

use crate::codec::{Clock, DeliveryRec};

const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
const DELIVERIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("deliveries");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const QOS2_IN: TableDefinition<(u64, u16), ()> = TableDefinition::new("qos2_in");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SUBSCRIPTIONS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("subscriptions");

/// What an acknowledgement waits for (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every change is durable before the packet that answers it.
    Sync,
    /// Accepted messages and QoS 2 state are durable before they are acknowledged.
    #[default]
    Batched,
    /// Nothing waits; synced once a second.
    None,
}

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating or replacing the file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// redb refused the file: in use by another process, not readable, or still refused
    /// after it was moved aside.
    #[error("{path}: {error}")]
    Db {
        /// The file.
        path: PathBuf,
        /// Why.
        error: Box<redb::Error>,
    },
}

/// What [`Store::open`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Sessions restored.
    pub sessions: usize,
    /// Their subscriptions.
    pub subscriptions: usize,
    /// Sessions whose subscriptions were moved out of their (version 1) record.
    pub migrated: usize,
    /// Deliveries (queued or in flight) restored.
    pub deliveries: usize,
    /// Retained messages restored.
    pub retained: usize,
    /// Sessions and messages that had expired while the broker was down.
    pub expired: usize,
    /// Records that could not be read back, and why (each was removed).
    pub dropped: Vec<String>,
    /// Where the damaged file was moved, when it had to be rebuilt.
    pub moved_aside: Option<PathBuf>,
}

/// What the store held at start.
pub struct Loaded {
    /// Sessions to give to [`warden_core::Broker::restore`].
    pub sessions: Vec<RestoredSession>,
    /// Retained messages, with who published them.
    pub retained: Vec<(Arc<Message>, RetainSource)>,
    /// What was found and dropped.
    pub report: Report,
}

struct Pending {
    ops: Vec<PersistOp>,
    ticket: u64,
    closing: bool,
}

/// The durable store (see the crate documentation).
pub struct Store {
    path: PathBuf,
    durability: Durability,
    pending: Mutex<Pending>,
    wake: Condvar,
    committed: watch::Sender<u64>,
    next_id: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
    commits: AtomicU64,
    ops: AtomicU64,
    /// Bytes of keys and values written by commits.
    written: AtomicU64,
    /// How long each commit took (write transaction and, when durable, its fsync).
    commit_seconds: warden_core::metrics::Histogram,
    /// The least time between the starts of two commit windows, in µs (0: none; see
    /// [`Store::set_commit_interval`]).
    commit_interval_us: AtomicU64,
}

/// Everything read from the file, before it becomes broker state.
#[derive(Default)]
struct Raw {
    sessions: BTreeMap<u64, codec::DecodedSession>,
    /// Subscription records, by session.
    subs: Vec<(u64, Subscription)>,
    deliveries: Vec<((u64, u64), DeliveryRec)>,
    messages: HashMap<u64, Message>,
    /// Messages read from the delivery record carrying them (version 2): its key, and whether
    /// the message has a record of its own too.
    carried: HashMap<u64, ((u64, u64), bool)>,
    /// Carried messages to give a record of their own (their carrying record is dropped,
    /// other deliveries still refer to them).
    spill: Vec<u64>,
    qos2: Vec<(u64, u16)>,
    retained: Vec<(String, Message, RetainSource)>,
    /// Keys of records to delete: unreadable, expired, or orphaned.
    bad_sessions: Vec<u64>,
    bad_subs: Vec<(u64, String)>,
    bad_deliveries: Vec<(u64, u64)>,
    bad_messages: Vec<u64>,
    bad_qos2: Vec<(u64, u16)>,
    bad_retained: Vec<String>,
    /// Sessions read from version 1 records that hold their subscriptions: rewritten, their
    /// subscriptions moved into records of their own.
    migrate: Vec<u64>,
    /// A table could not be read to its end: rebuild the file.
    damaged: bool,
    max_id: u64,
}

impl Store {
    /// Open (or create) the store at `path` and read back what it holds.
    pub fn open(path: &Path, durability: Durability) -> Result<(Arc<Store>, Loaded), StoreError> {
        let clock = Clock::now();
        let mut report = Report::default();
        private_file(path).map_err(|error| StoreError::Io { path: path.to_owned(), error })?;
        // A damaged file is input like any other: redb errors (or, defensively, panics) on it
        // become a report and a rebuilt file, never a crash or garbage.
        let (db, mut raw) = match std::panic::catch_unwind(|| Database::create(path)) {
            Ok(Ok(db)) => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_all(&db, clock, &mut report))) {
                    Ok(raw) => (Some(db), raw),
                    Err(_) => {
                        report.dropped.push("the store could not be read (redb panicked on it)".to_owned());
                        (None, Raw { damaged: true, ..Raw::default() })
                    }
                }
            }
            Ok(Err(e)) if !is_damage(&e) => {
                // In use by another broker, no permission, disk gone: refuse to start rather
                // than touch a file that may be fine.
                return Err(StoreError::Db { path: path.to_owned(), error: Box::new(e.into()) });
            }
            Ok(Err(e)) => {
                report.dropped.push(format!("the store could not be opened: {e}"));
                (None, Raw { damaged: true, ..Raw::default() })
            }
            Err(_) => {
                report.dropped.push("the store could not be opened (redb panicked on it)".to_owned());
                (None, Raw { damaged: true, ..Raw::default() })
            }
        };
        raw.prune();
        let db_err = |e: redb::Error| StoreError::Db { path: path.to_owned(), error: Box::new(e) };
        let db = match db {
            Some(db) if !raw.damaged => {
                remove_bad(&db, &raw).map_err(db_err)?;
                db
            }
            db => {
                drop(db);
                let aside = aside_name(path, clock.wall_ms() / 1000);
                if path.exists() {
                    std::fs::rename(path, &aside).map_err(|error| StoreError::Io { path: path.to_owned(), error })?;
                    error!(path = %path.display(), moved_to = %aside.display(), "store damaged: rebuilt from what was readable");
                    report.moved_aside = Some(aside);
                }
                private_file(path).map_err(|error| StoreError::Io { path: path.to_owned(), error })?;
                let db = Database::create(path).map_err(|e| db_err(e.into()))?;
                write_back(&db, &raw).map_err(db_err)?;
                // Every message now has a record of its own.
                raw.carried.clear();
                db
            }
        };
        let (committed, _) = watch::channel(0);
        let store = Arc::new(Store {
            path: path.to_owned(),
            durability,
            pending: Mutex::new(Pending { ops: Vec::new(), ticket: 0, closing: false }),
            wake: Condvar::new(),
            committed,
            next_id: AtomicU64::new(raw.max_id + 1),
            writer: Mutex::new(None),
            commits: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            written: AtomicU64::new(0),
            commit_seconds: Default::default(),
            commit_interval_us: AtomicU64::new(0),
        });
        let (loaded, state) = restore(&store, raw, report);
        let writer = store.clone();
        let handle = std::thread::Builder::new()
            .name("warden-store".into())
            .spawn(move || writer.run(db, state))
            .map_err(|error| StoreError::Io { path: path.to_owned(), error })?;
        *store.writer.lock() = Some(handle);
        Ok((store, loaded))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How long the commits since start took (`warden_store_commit_seconds`).
    pub fn commit_seconds(&self) -> &warden_core::metrics::Histogram {
        &self.commit_seconds
    }

    /// Commits and ops applied since start.
    pub fn counters(&self) -> (u64, u64) {
        (self.commits.load(Ordering::Relaxed), self.ops.load(Ordering::Relaxed))
    }

    /// Bytes of keys and values the commits since start wrote (inserted or replaced; what the
    /// file grows or rewrites by, before redb's own page overhead).
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Start a commit window at most once per `interval` (default zero: a window starts as
    /// soon as the commit before is done and an op is queued). The writer then sleeps out the
    /// rest of the interval before it takes the queued ops, so that one window collects more
    /// of them: redb's per-commit cost (its page and allocator bookkeeping, the header write
    /// and fsync) is paid less often, and more deliveries are acknowledged by their
    /// subscriber before their window commits, which then writes nothing for them. The price:
    /// an acknowledgement waiting on the store (a PUBACK) may wait up to `interval` longer.
    /// When commits take longer than `interval` (a disk's fsync) it changes nothing.
    /// Measured (issue 24, docs/PERFORMANCE.md "Durable QoS 1"): 1 ms halves the broker's CPU
    /// per durable message with the store on tmpfs at 100k msg/s.
    pub fn set_commit_interval(&self, interval: Duration) {
        let us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        self.commit_interval_us.store(us, Ordering::Relaxed);
    }

    /// Wait until `ticket` (from [`Persist::submit`]) is committed. Returns at once for 0.
    pub async fn wait(&self, ticket: u64) {
        if ticket == 0 || *self.committed.borrow() >= ticket {
            return;
        }
        let mut rx = self.committed.subscribe();
        let _ = rx.wait_for(|c| *c >= ticket).await;
    }

    /// Commit what is queued, make it durable and stop the writer. Later ops are ignored.
    pub fn close(&self) {
        self.pending.lock().closing = true;
        self.wake.notify_all();
        let handle = self.writer.lock().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn run(self: Arc<Self>, db: Database, mut state: State) {
        let mut unsynced = false;
        let mut failures = 0u32;
        // Ops the last window held back (see `commit`): applied with the next window's, or
        // after a second at the latest when no other op comes.
        let mut held: Vec<PersistOp> = Vec::new();
        // When the last window started (see `set_commit_interval`).
        let mut last_start: Option<std::time::Instant> = None;
        loop {
            let interval = Duration::from_micros(self.commit_interval_us.load(Ordering::Relaxed));
            if let Some(rest) = last_start.and_then(|t| interval.checked_sub(t.elapsed())) {
                if !rest.is_zero() && !self.pending.lock().closing {
                    std::thread::sleep(rest);
                }
            }
            let (ops, ticket, closing) = {
                let mut p = self.pending.lock();
                while p.ops.is_empty() && !p.closing {
                    if unsynced || !held.is_empty() {
                        if self.wake.wait_for(&mut p, Duration::from_secs(1)).timed_out() {
                            break;
                        }
                    } else {
                        self.wake.wait(&mut p);
                    }
                }
                (std::mem::take(&mut p.ops), p.ticket, p.closing)
            };
            let sync = self.durability != Durability::None || closing || ops.is_empty();
            if ops.is_empty() && !unsynced && held.is_empty() {
                if closing {
                    return;
                }
                continue;
            }
            let w = Window {
                sync,
                hold: self.durability == Durability::Batched && !closing,
                skip_empty: self.durability != Durability::None,
            };
            last_start = Some(std::time::Instant::now());
            let carry = loop {
                let started = std::time::Instant::now();
                match commit(&db, &held, &ops, w, &state) {
                    Ok(mut done) => {
                        if done.wrote {
                            self.commit_seconds.observe(started.elapsed());
                            self.commits.fetch_add(1, Ordering::Relaxed);
                        }
                        self.written.fetch_add(done.written, Ordering::Relaxed);
                        state.apply(&mut done);
                        if failures > 0 {
                            info!(path = %self.path.display(), "store writes succeed again");
                        }
                        failures = 0;
                        break done.held;
                    }
                    Err(e) => {
                        // Acknowledgements keep waiting: nothing is acknowledged that is not stored.
                        if failures.is_multiple_of(50) {
                            error!(path = %self.path.display(), error = %e, "store commit failed; retrying");
                        }
                        failures += 1;
                        if closing && failures > 20 {
                            error!(path = %self.path.display(), "giving up on the store at shutdown");
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            };
            unsynced = !sync;
            self.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
            self.committed.send_replace(ticket);
            let applied = std::mem::replace(&mut held, Vec::with_capacity(carry.len()));
            let mut carry = carry.into_iter().peekable();
            let mut rest = Vec::with_capacity(ops.len() - carry.len());
            for (i, op) in ops.into_iter().enumerate() {
                if carry.next_if_eq(&i).is_some() {
                    held.push(op);
                } else {
                    rest.push(op);
                }
            }
            // May drop the last reference to messages, which queues their removal.
            drop(applied);
            drop(rest);
            if closing && self.pending.lock().ops.is_empty() && !unsynced && held.is_empty() {
                return;
            }
        }
    }
}

impl Persist for Store {
    fn submit(&self, op: PersistOp) -> u64 {
        let wait = match self.durability {
            Durability::Sync => true,
            Durability::Batched => op.acknowledged(),
            Durability::None => false,
        };
        let mut p = self.pending.lock();
        if p.closing && self.writer.lock().is_none() {
            return 0;
        }
        p.ticket += 1;
        let t = p.ticket;
        p.ops.push(op);
        drop(p);
        self.wake.notify_one();
        if wait {
            t
        } else {
            0
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// True when opening failed because of what is in the file (not because of where it is or
/// who holds it).
fn is_damage(e: &redb::DatabaseError) -> bool {
    use std::io::ErrorKind;
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => false,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::RepairAborted | redb::DatabaseError::UpgradeRequired(_) => false,
        _ => true,
    }
}

/// Make sure the store file exists readable and writable by its owner only (0600): it holds
/// messages' payloads and session state in clear. A new file is created so (never briefly
/// wider); an existing one with group or other bits has them removed, and says so.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
                warn!(path = %path.display(), was = format!("{:o}", mode & 0o777), "store file was readable by others: now 0600");
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn aside_name(path: &Path, unix: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{unix}"));
    path.with_file_name(name)
}

/// A key's net state in a batch: its last op's (None: removed), whether the key is new in
/// the batch, and where that last op is in this window's ops (None: held back from the
/// window before).
type Last<T> = (Option<T>, bool, Option<usize>);

/// The net effect of a batch of ops, key by key. A delivery enqueued, sent and acknowledged
/// within one commit window costs nothing: its first op says it is new (nothing stored under
/// its key), so its net "removed" is no removal at all. Likewise a message whose `Message` op
/// and `MessageDrop` fall into one window.
/// Its maps hash with foldhash (seeded per process): std's SipHash was ~5% of the writer's
/// time with four or five ops per durable message.
#[derive(Default)]
struct Net<'a> {
    ended: Vec<u64>,
    sessions: foldhash::HashMap<u64, Option<&'a warden_core::persist::SessionRecord>>,
    subs: foldhash::HashMap<(u64, &'a str), Option<&'a Subscription>>,
    /// The last op of each delivery, whether it was new in this batch, and where that last op
    /// is in this window's ops (None: it was held back from the window before).
    deliveries: foldhash::HashMap<(u64, u64), Last<&'a PersistOp>>,
    /// The message (None: dropped), whether its `Message` op is in this batch, and where its
    /// last op is in this window's ops (None: held back from the window before).
    messages: foldhash::HashMap<u64, Last<&'a Arc<Message>>>,
    qos2: foldhash::HashMap<(u64, u16), bool>,
    retained: foldhash::HashMap<&'a str, Option<(&'a Arc<Message>, &'a RetainSource)>>,
}

impl<'a> Net<'a> {
    /// The net effect of `held` (ops held back from the window before, see [`commit`]) then
    /// `ops` (this window's), in that order.
    fn of(held: &'a [PersistOp], ops: &'a [PersistOp]) -> Net<'a> {
        let mut n = Net::default();
        let all = held.iter().map(|op| (None, op)).chain(ops.iter().enumerate().map(|(i, op)| (Some(i), op)));
        for (at, op) in all {
            match op {
                PersistOp::Session(r) => {
                    n.sessions.insert(r.sid, Some(r));
                }
                PersistOp::Subscribe { sid, sub } => {
                    n.subs.insert((*sid, sub.filter.as_str()), Some(sub));
                }
                PersistOp::Unsubscribe { sid, filter } => {
                    n.subs.insert((*sid, filter.as_str()), None);
                }
                PersistOp::SessionEnd { sid } => {
                    // Everything the session did before it ended goes with it.
                    n.ended.push(*sid);
                    n.sessions.insert(*sid, None);
                    n.subs.retain(|k, _| k.0 != *sid);
                    n.deliveries.retain(|k, _| k.0 != *sid);
                    n.qos2.retain(|k, _| k.0 != *sid);
                }
                PersistOp::Message { id, msg } => {
                    // A message id is given once and stored by one op: it is new.
                    n.messages.insert(*id, (Some(msg), true, at));
                }
                PersistOp::MessageDrop { id } => {
                    let e = n.messages.entry(*id).or_insert((None, false, at));
                    (e.0, e.2) = (None, at);
                }
                PersistOp::Delivery { sid, seq, new, .. } => {
                    let e = n.deliveries.entry((*sid, *seq)).or_insert((None, *new, at));
                    (e.0, e.2) = (Some(op), at);
                }
                PersistOp::DeliveryDone { sid, seq } => {
                    let e = n.deliveries.entry((*sid, *seq)).or_insert((None, false, at));
                    (e.0, e.2) = (None, at);
                }
                PersistOp::InboundQos2 { sid, packet_id, present } => {
                    n.qos2.insert((*sid, *packet_id), *present);
                }
                PersistOp::Retained { topic, msg, source } => {
                    n.retained.insert(topic.as_str(), msg.as_ref().map(|m| (m, source)));
                }
            }
        }
        n
    }
}

/// A message stored inside the record of its one delivery (a version 2 delivery record,
/// issue 24 lever 2) instead of a record of its own.
struct Carried {
    /// The message, to write again when its delivery's record is rewritten or another
    /// delivery comes to refer to it (a `Weak`: the store must not keep it alive, its drop is
    /// what removes it).
    msg: std::sync::Weak<Message>,
    /// The delivery whose record carries it.
    owner: (u64, u64),
    /// It has been given a record of its own too (another delivery referred to it).
    spilled: bool,
}

/// What the writer knows beyond the file, across commits.
#[derive(Default)]
struct State {
    /// Messages never written (see [`Committed::unwritten`]) until their drop is seen.
    unwritten: foldhash::HashSet<u64>,
    /// Messages carried by their delivery's record, until their drop is seen.
    carried: foldhash::HashMap<u64, Carried>,
}

impl State {
    /// Take in what a successful commit did.
    fn apply(&mut self, done: &mut Committed) {
        self.unwritten.extend(done.unwritten.drain(..));
        for id in done.forgotten.drain(..) {
            self.unwritten.remove(&id);
        }
        for (id, c) in done.carried.drain(..) {
            self.carried.insert(id, c);
        }
        for id in done.spilled.drain(..) {
            if let Some(c) = self.carried.get_mut(&id) {
                c.spilled = true;
            }
        }
        for id in done.uncarried.drain(..) {
            self.carried.remove(&id);
        }
    }
}

/// What a commit did.
#[derive(Default)]
struct Committed {
    /// Bytes of keys and values written.
    written: u64,
    /// Messages not written because nothing referred to them any more when the batch was
    /// committed (their `MessageDrop` comes in a later batch and is then no removal).
    unwritten: Vec<u64>,
    /// `MessageDrop`s of such messages, now seen: forget them.
    forgotten: Vec<u64>,
    /// Indices in this window's ops of the ops held back for the next window (see [`commit`]).
    held: Vec<usize>,
    /// Whether a write transaction was committed (false: nothing to write).
    wrote: bool,
    /// Messages now carried by their one delivery's record.
    carried: Vec<(u64, Carried)>,
    /// Carried messages now given a record of their own.
    spilled: Vec<u64>,
    /// Carried messages whose drop was seen: forget them.
    uncarried: Vec<u64>,
}

/// How [`commit`] treats a window.
#[derive(Clone, Copy)]
struct Window {
    /// Make the commit durable (fsync).
    sync: bool,
    /// Hold back what nobody waits on (`batched`, not closing; see [`commit`]).
    hold: bool,
    /// Commit no transaction when nothing is to be written (false in `none` mode, where an
    /// empty synced commit makes the unsynced ones before it durable).
    skip_empty: bool,
}

/// Apply `held` (the ops the window before held back) and then a window's `ops` in one
/// transaction. `unwritten`: messages never stored (see [`Committed::unwritten`]).
///
/// # Holding back what nobody waits on (issue 24, lever 1)
/// With `hold`, a record whose commit no acknowledgement waits on
/// ([`PersistOp::acknowledged`] false: the in-flight update of a QoS 1 delivery, a
/// `DeliveryDone`, a `MessageDrop`) is not written in the window it arrived in, unless its
/// key was new in this batch (then it is written with the key's insert, at no extra cost):
/// its op is carried into the next window (once: an op from the window before is applied),
/// where what follows it on the same key mostly cancels it — a QoS 1 delivery sent in one
/// window and acknowledged in the next costs one removal, not an update and a removal — and
/// a window with nothing else to write commits nothing.
///
/// Why a crash loses nothing acknowledged: every op held back moves the stored state only
/// toward *more* redelivery, never toward less. A held-back `DeliveryDone` or `MessageDrop`
/// leaves a record the subscriber has finished with: after a crash the delivery is sent again
/// (QoS 1 is at least once [MQTT-4.3.2]; a message left without deliveries is an orphan that
/// opening removes). A held-back in-flight update leaves the delivery stored as queued, as a
/// crash just before any commit does: it is sent again under a newly assigned packet id and
/// without DUP (it may never have reached the client; the id was never acknowledged, so
/// nothing refers to it). What an acknowledgement waits on — a message, a queued delivery,
/// QoS 2 state, retained messages — is never held back: a PUBACK still leaves only after the
/// message is committed. Order: the store restores in-flight deliveries before queued ones,
/// so a QoS 1 delivery whose in-flight update was held back could come back after a later one
/// whose update was written; [`restore`] re-queues the later ones [MQTT-4.6.0-1].
fn commit(
    db: &Database,
    held: &[PersistOp],
    ops: &[PersistOp],
    w: Window,
    state: &State,
) -> Result<Committed, redb::Error> {
    let (unwritten, carried) = (&state.unwritten, &state.carried);
    let clock = Clock::now();
    let mut net = Net::of(held, ops);
    let mut done = Committed::default();
    if w.hold {
        // The last op of a key that was not new in this batch, from this window, and not
        // waited on: carry it (it stands for every op of its key before it).
        net.deliveries.retain(|_, (d, new, at)| match (*new, *at, d) {
            (false, Some(i), None) => {
                done.held.push(i);
                false
            }
            (false, Some(i), Some(op)) if !op.acknowledged() => {
                done.held.push(i);
                false
            }
            _ => true,
        });
        net.messages.retain(|id, (m, new, at)| match (*new, *at, m) {
            (false, Some(i), None) if !unwritten.contains(id) && !carried.contains_key(id) => {
                done.held.push(i);
                false
            }
            _ => true,
        });
        done.held.sort_unstable();
    }
    // A message whose only reference left is the op in this batch is done with: every
    // delivery of it is gone from memory (finished, or its session ended), nobody can take a
    // new one (ids are never shared between copies: `Message::clone` is a new message). Its
    // deliveries' records in this batch are then finished too (their `DeliveryDone` is in
    // this batch or the next one, which would remove them anyway).
    let dead: foldhash::HashSet<u64> = net
        .messages
        .iter()
        .filter(|(_, (m, _, _))| m.is_some_and(|m| Arc::strong_count(m) == 1))
        .map(|(id, _)| *id)
        .collect();
    // Lever 2: a message new in this batch with exactly one delivery to write goes into that
    // delivery's record (one insert, later one removal, instead of two each). A delivery
    // that comes to refer to it later gives it a record of its own then (`spilled`).
    let mut single: foldhash::HashMap<u64, ((u64, u64), u32)> = Default::default();
    for (key, (d, _, _)) in &net.deliveries {
        if let Some(PersistOp::Delivery { msg_id, .. }) = d {
            if matches!(net.messages.get(msg_id), Some((Some(_), true, _))) && !dead.contains(msg_id) {
                single.entry(*msg_id).or_insert((*key, 0)).1 += 1;
            }
        }
    }
    single.retain(|_, (_, n)| *n == 1);
    let nothing = net.ended.is_empty()
        && net.sessions.is_empty()
        && net.subs.is_empty()
        && net.qos2.is_empty()
        && net.retained.is_empty()
        && net.deliveries.values().all(|(d, new, _)| match d {
            None => *new,
            Some(PersistOp::Delivery { msg_id, .. }) => *new && dead.contains(msg_id),
            Some(_) => false,
        })
        && net.messages.iter().all(|(id, (m, new, _))| match m {
            Some(_) => dead.contains(id),
            None => *new || unwritten.contains(id) || carried.get(id).is_some_and(|c| !c.spilled),
        });
    if nothing && w.skip_empty {
        for (id, (m, new, _)) in &net.messages {
            match m {
                Some(_) => done.unwritten.push(*id),
                None if *new => {}
                None if carried.contains_key(id) => done.uncarried.push(*id),
                None => done.forgotten.push(*id),
            }
        }
        return Ok(done);
    }
    done.wrote = true;
    let mut txn = db.begin_write()?;
    txn.set_durability(if w.sync { redb::Durability::Immediate } else { redb::Durability::None });
    let mut count = |key: usize, value: &[u8]| done.written += (key + value.len()) as u64;
    let mut unwritten_now = Vec::new();
    let mut forgotten = Vec::new();
    {
        let mut t = Tables::open(&txn)?;
        for sid in &net.ended {
            t.end_session(*sid)?;
        }
        for (sid, r) in &net.sessions {
            match r {
                Some(r) => {
                    let v = codec::encode_session(r, clock);
                    count(8, &v);
                    t.sessions.insert(*sid, v.as_slice())?
                }
                None => t.sessions.remove(*sid)?,
            };
        }
        for ((sid, filter), sub) in &net.subs {
            match sub {
                Some(sub) => {
                    let v = codec::encode_subscription(sub);
                    count(8 + filter.len(), &v);
                    t.subs.insert((*sid, *filter), v.as_slice())?
                }
                None => t.subs.remove((*sid, *filter))?,
            };
        }
        let (mut mbuf, mut buf) = (bytes::BytesMut::new(), Vec::new());
        for (id, (m, new, _)) in &net.messages {
            match m {
                Some(_) if dead.contains(id) => unwritten_now.push(*id),
                Some(m) if single.contains_key(id) => {
                    let owner = single[id].0;
                    done.carried.push((*id, Carried { msg: Arc::downgrade(m), owner, spilled: false }));
                }
                Some(m) => {
                    codec::encode_message_into(m, clock, &mut mbuf);
                    count(8, &mbuf);
                    t.messages.insert(*id, &mbuf[..])?;
                }
                // Stored and dropped within this batch: nothing was ever on disk.
                None if *new => {}
                None if unwritten.contains(id) => forgotten.push(*id),
                None if carried.contains_key(id) => {
                    if carried[id].spilled {
                        t.messages.remove(*id)?;
                    }
                    done.uncarried.push(*id);
                }
                None => {
                    t.messages.remove(*id)?;
                }
            };
        }
        for (key, (d, new, _)) in &net.deliveries {
            match d {
                Some(PersistOp::Delivery { msg_id, qos, retain, sub_ids, stage, .. }) if !dead.contains(msg_id) => {
                    let rec = DeliveryRec {
                        msg_id: *msg_id,
                        qos: *qos,
                        retain: *retain,
                        stage: *stage,
                        sub_ids: sub_ids.clone(),
                    };
                    match (single.get(msg_id), carried.get(msg_id)) {
                        // The one delivery of a message new in this batch: it carries it.
                        (Some(_), _) => {
                            let Some((Some(m), _, _)) = net.messages.get(msg_id) else { unreachable!() };
                            codec::encode_delivery_with_message_into(&rec, m, clock, &mut mbuf, &mut buf);
                        }
                        (None, Some(c)) => {
                            // Held alive by a delivery in memory; if not, every delivery of it
                            // is finished and this one's removal follows: nothing to write.
                            let Some(m) = c.msg.upgrade() else { continue };
                            if c.owner == *key {
                                // The carrying record, rewritten (its stage changed).
                                codec::encode_delivery_with_message_into(&rec, &m, clock, &mut mbuf, &mut buf);
                            } else {
                                // Another delivery refers to it: it gets a record of its own.
                                if !c.spilled && !done.spilled.contains(msg_id) {
                                    codec::encode_message_into(&m, clock, &mut mbuf);
                                    count(8, &mbuf);
                                    t.messages.insert(*msg_id, &mbuf[..])?;
                                    done.spilled.push(*msg_id);
                                }
                                codec::encode_delivery_into(&rec, &mut buf);
                            }
                        }
                        (None, None) => codec::encode_delivery_into(&rec, &mut buf),
                    }
                    count(16, &buf);
                    t.deliveries.insert(*key, buf.as_slice())?;
                }
                // New in this batch and already done: nothing to remove.
                _ if *new => {}
                _ => {
                    t.deliveries.remove(*key)?;
                }
            };
        }
        for (key, present) in &net.qos2 {
            if *present {
                count(10, &[]);
                t.qos2.insert(*key, ())?;
            } else {
                t.qos2.remove(*key)?;
            }
        }
        for (topic, m) in &net.retained {
            match m {
                Some((m, source)) => {
                    let v = codec::encode_retained(m, source, clock);
                    count(topic.len(), &v);
                    t.retained.insert(*topic, v.as_slice())?
                }
                None => t.retained.remove(*topic)?,
            };
        }
    }
    txn.commit()?;
    done.unwritten = unwritten_now;
    done.forgotten = forgotten;
    Ok(done)
}

/// Read every table; a table that fails part-way marks the file damaged (what was read is kept).
fn read_all(db: &Database, clock: Clock, report: &mut Report) -> Raw {
    let mut raw = Raw::default();
    if let Err(e) = read_tables(db, clock, &mut raw, report) {
        report.dropped.push(format!("a table could not be read to its end: {e}"));
        raw.damaged = true;
    }
    raw
}

fn read_tables(db: &Database, clock: Clock, raw: &mut Raw, report: &mut Report) -> Result<(), redb::Error> {
    let txn = db.begin_read()?;
    let open = |e: redb::TableError| -> Result<(), redb::Error> {
        match e {
            redb::TableError::TableDoesNotExist(_) => Ok(()),
            e => Err(e.into()),
        }
    };
    match txn.open_table(SESSIONS) {
        Ok(t) => {
            for row in t.iter()? {
                let (k, v) = row?;
                let sid = k.value();
                match codec::decode_session(v.value()) {
                    Ok(s) => {
                        let expired = s.json.expiry != u32::MAX
                            && s.json
                                .disconnected
                                .is_some_and(|d| clock.wall_ms().saturating_sub(d) >= u64::from(s.json.expiry) * 1000);
                        if s.json.expiry == 0 || expired {
                            report.expired += 1;
                            raw.bad_sessions.push(sid);
                        } else {
                            if !s.subscriptions.is_empty() {
                                raw.migrate.push(sid);
                            }
                            raw.sessions.insert(sid, s);
                        }
                    }
                    Err(e) => {
                        report.dropped.push(format!("session {sid}: {e}"));
                        raw.bad_sessions.push(sid);
                    }
                }
            }
        }
        Err(e) => open(e)?,
    }
    match txn.open_table(SUBSCRIPTIONS) {
        Ok(t) => {
            for row in t.iter()? {
                let (k, v) = row?;
                let (sid, filter) = k.value();
                match codec::decode_subscription(filter, v.value()) {
                    Ok(sub) => raw.subs.push((sid, sub)),
                    Err(e) => {
                        report.dropped.push(format!("subscription {sid}/{filter:?}: {e}"));
                        raw.bad_subs.push((sid, filter.to_owned()));
                    }
                }
            }
        }
        Err(e) => open(e)?,
    }
    match txn.open_table(MESSAGES) {
        Ok(t) => {
            for row in t.iter()? {
                let (k, v) = row?;
                let id = k.value();
                raw.max_id = raw.max_id.max(id);
                match codec::decode_message(v.value(), clock) {
                    Ok(Some(m)) => {
                        raw.messages.insert(id, m);
                    }
                    Ok(None) => raw.bad_messages.push(id), // expired
                    Err(e) => {
                        report.dropped.push(format!("message {id}: {e}"));
                        raw.bad_messages.push(id);
                    }
                }
            }
        }
        Err(e) => open(e)?,
    }
    match txn.open_table(DELIVERIES) {
        Ok(t) => {
            for row in t.iter()? {
                let (k, v) = row?;
                let key = k.value();
                raw.max_id = raw.max_id.max(key.1);
                match codec::decode_delivery(v.value()) {
                    Ok((d, None)) => raw.deliveries.push((key, d)),
                    Ok((d, Some(m))) => {
                        // Ids are given from one counter: the carried message's counts too.
                        raw.max_id = raw.max_id.max(d.msg_id);
                        match codec::decode_message(m, clock) {
                            Ok(Some(m)) => {
                                let own = raw.messages.contains_key(&d.msg_id);
                                raw.messages.entry(d.msg_id).or_insert(m);
                                raw.carried.insert(d.msg_id, (key, own));
                                raw.deliveries.push((key, d));
                            }
                            Ok(None) => raw.bad_deliveries.push(key), // expired
                            Err(e) => {
                                report.dropped.push(format!("delivery {}/{}: {e}", key.0, key.1));
                                raw.bad_deliveries.push(key);
                            }
                        }
                    }
                    Err(e) => {
                        report.dropped.push(format!("delivery {}/{}: {e}", key.0, key.1));
                        raw.bad_deliveries.push(key);
                    }
                }
            }
        }
        Err(e) => open(e)?,
    }
    match txn.open_table(QOS2_IN) {
        Ok(t) => {
            for row in t.iter()? {
                let (k, _) = row?;
                raw.qos2.push(k.value());
            }
        }
        Err(e) => open(e)?,
    }
    match txn.open_table(RETAINED) {
        Ok(t) => {
            raw.retained.reserve(t.len()? as usize);
            for row in t.iter()? {
                let (k, v) = row?;
                let topic = k.value().to_owned();
                match codec::decode_retained(v.value(), clock) {
                    Ok(Some((m, source))) if m.topic.as_str() == topic => raw.retained.push((topic, m, source)),
                    Ok(None) => {
                        report.expired += 1;
                        raw.bad_retained.push(topic);
                    }
                    Ok(Some(_)) => {
                        report.dropped.push(format!("retained {topic:?}: topic does not match its key"));
                        raw.bad_retained.push(topic);
                    }
                    Err(e) => {
                        report.dropped.push(format!("retained {topic:?}: {e}"));
                        raw.bad_retained.push(topic);
                    }
                }
            }
        }
        Err(e) => open(e)?,
    }
    Ok(())
}

impl Raw {
    /// Apply the store's invariants to what was read, in one place: a delivery needs its
    /// session and its message, a message needs a delivery, inbound QoS 2 state needs its
    /// session. What breaks them joins the records to remove.
    fn prune(&mut self) {
        let (keep, orphans): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.subs).into_iter().partition(|(sid, _)| self.sessions.contains_key(sid));
        self.bad_subs.extend(orphans.into_iter().map(|(sid, sub)| (sid, sub.filter.as_str().to_owned())));
        // A subscription record stands over the same filter in a version 1 session record (a
        // later change of it); both cannot come from one writer, but the file is input.
        for (sid, sub) in keep {
            if let Some(s) = self.sessions.get_mut(&sid) {
                match s.subscriptions.iter_mut().find(|x| x.filter == sub.filter) {
                    Some(x) => *x = sub,
                    None => s.subscriptions.push(sub),
                }
            }
        }
        let (keep, orphans): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deliveries)
            .into_iter()
            .partition(|(k, d)| self.sessions.contains_key(&k.0) && self.messages.contains_key(&d.msg_id));
        // A carried message whose carrying record is dropped but that other deliveries still
        // refer to gets a record of its own (never written so: a second delivery gives it one
        // in the commit that stores that delivery; but the file is input).
        let dropped: std::collections::HashSet<(u64, u64)> = orphans.iter().map(|(k, _)| *k).collect();
        let spill = &mut self.spill;
        self.carried.retain(|id, (owner, own)| {
            if !dropped.contains(owner) {
                return true;
            }
            if !*own {
                spill.push(*id);
            }
            false
        });
        self.bad_deliveries.extend(orphans.into_iter().map(|(k, _)| k));
        self.deliveries = keep;
        let referenced: std::collections::HashSet<u64> = self.deliveries.iter().map(|(_, d)| d.msg_id).collect();
        let unreferenced: Vec<u64> = self.messages.keys().filter(|id| !referenced.contains(id)).copied().collect();
        let messages = &self.messages;
        self.spill.retain(|id| referenced.contains(id) && messages.contains_key(id));
        for id in unreferenced {
            self.messages.remove(&id);
            self.bad_messages.push(id);
        }
        let (keep, orphans): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.qos2).into_iter().partition(|(sid, _)| self.sessions.contains_key(sid));
        self.qos2 = keep;
        self.bad_qos2 = orphans;
    }
}

/// The five tables, opened in one write transaction.
struct Tables<'t> {
    sessions: redb::Table<'t, u64, &'static [u8]>,
    deliveries: redb::Table<'t, (u64, u64), &'static [u8]>,
    messages: redb::Table<'t, u64, &'static [u8]>,
    qos2: redb::Table<'t, (u64, u16), ()>,
    retained: redb::Table<'t, &'static str, &'static [u8]>,
    subs: redb::Table<'t, (u64, &'static str), &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Tables {
            sessions: txn.open_table(SESSIONS)?,
            deliveries: txn.open_table(DELIVERIES)?,
            messages: txn.open_table(MESSAGES)?,
            qos2: txn.open_table(QOS2_IN)?,
            retained: txn.open_table(RETAINED)?,
            subs: txn.open_table(SUBSCRIPTIONS)?,
        })
    }

    /// Remove a session with everything filed under it (subscriptions, deliveries, inbound
    /// QoS 2 ids).
    fn end_session(&mut self, sid: u64) -> Result<(), redb::Error> {
        self.sessions.remove(sid)?;
        // Keys order by session id first: every filter of `sid` lies in this range.
        self.subs.retain_in((sid, "")..(sid + 1, ""), |_, _| false)?;
        self.deliveries.retain_in((sid, 0)..=(sid, u64::MAX), |_, _| false)?;
        self.qos2.retain_in((sid, 0)..=(sid, u16::MAX), |_, _| false)?;
        Ok(())
    }
}

/// Remove the records [`Raw::prune`] and reading set aside (unreadable, expired, orphaned),
/// and move the subscriptions of version 1 session records into records of their own.
fn remove_bad(db: &Database, raw: &Raw) -> Result<(), redb::Error> {
    let clock = Clock::now();
    let txn = db.begin_write()?;
    {
        let mut t = Tables::open(&txn)?;
        for sid in &raw.bad_sessions {
            t.end_session(*sid)?;
        }
        for (sid, filter) in &raw.bad_subs {
            t.subs.remove((*sid, filter.as_str()))?;
        }
        for sid in &raw.migrate {
            if let Some(s) = raw.sessions.get(sid) {
                t.sessions.insert(*sid, codec::encode_session(&s.record(*sid, clock), clock).as_slice())?;
                for sub in &s.subscriptions {
                    t.subs.insert((*sid, sub.filter.as_str()), codec::encode_subscription(sub).as_slice())?;
                }
            }
        }
        for k in &raw.bad_deliveries {
            t.deliveries.remove(*k)?;
        }
        for id in &raw.spill {
            if let Some(m) = raw.messages.get(id) {
                t.messages.insert(*id, codec::encode_message(m, clock).as_slice())?;
            }
        }
        for id in &raw.bad_messages {
            t.messages.remove(*id)?;
        }
        for k in &raw.bad_qos2 {
            t.qos2.remove(*k)?;
        }
        for topic in &raw.bad_retained {
            t.retained.remove(topic.as_str())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Write what was read from a damaged file into a fresh one.
fn write_back(db: &Database, raw: &Raw) -> Result<(), redb::Error> {
    let clock = Clock::now();
    let txn = db.begin_write()?;
    {
        let mut t = Tables::open(&txn)?;
        for (sid, s) in &raw.sessions {
            t.sessions.insert(*sid, codec::encode_session(&s.record(*sid, clock), clock).as_slice())?;
            for sub in &s.subscriptions {
                t.subs.insert((*sid, sub.filter.as_str()), codec::encode_subscription(sub).as_slice())?;
            }
        }
        for (k, d) in &raw.deliveries {
            t.deliveries.insert(*k, codec::encode_delivery(d).as_slice())?;
        }
        for (id, m) in &raw.messages {
            t.messages.insert(*id, codec::encode_message(m, clock).as_slice())?;
        }
        for k in &raw.qos2 {
            t.qos2.insert(*k, ())?;
        }
        for (topic, m, source) in &raw.retained {
            t.retained.insert(topic.as_str(), codec::encode_retained(m, source, clock).as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Turn what was read into broker state; messages shared by deliveries become one `Arc`.
/// Also the writer's [`State`]: which messages are carried by their delivery's record.
fn restore(store: &Arc<Store>, raw: Raw, mut report: Report) -> (Loaded, State) {
    let clock = Clock::now();
    let sink: Arc<dyn Persist> = store.clone();
    let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
    let mut raw_messages = raw.messages;
    let mut per_session: HashMap<u64, Vec<RestoredDelivery>> = HashMap::new();
    // After `Raw::prune`, every delivery's session and message are here.
    for ((sid, seq), d) in raw.deliveries {
        let msg = match messages.get(&d.msg_id) {
            Some(m) => m.clone(),
            None => {
                let Some(m) = raw_messages.remove(&d.msg_id) else { continue };
                let m = Arc::new(m);
                let _ = m.persisted.set(PersistedMsg::new(d.msg_id, sink.clone()));
                messages.insert(d.msg_id, m.clone());
                m
            }
        };
        report.deliveries += 1;
        per_session.entry(sid).or_default().push(RestoredDelivery {
            seq,
            msg,
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids,
            stage: d.stage,
        });
    }
    for ds in per_session.values_mut() {
        requeue_after_gap(ds);
    }
    let mut state = State::default();
    for (id, (owner, spilled)) in raw.carried {
        if let Some(m) = messages.get(&id) {
            state.carried.insert(id, Carried { msg: Arc::downgrade(m), owner, spilled });
        }
    }
    let mut qos2: HashMap<u64, Vec<u16>> = HashMap::new();
    for (sid, pid) in raw.qos2 {
        qos2.entry(sid).or_default().push(pid);
    }
    report.migrated = raw.migrate.len();
    let mut sessions = Vec::with_capacity(raw.sessions.len());
    for (sid, s) in raw.sessions {
        report.subscriptions += s.subscriptions.len();
        let disconnected_for =
            s.json.disconnected.map_or(Duration::ZERO, |d| Duration::from_millis(clock.wall_ms().saturating_sub(d)));
        sessions.push(RestoredSession {
            sid,
            client_id: Arc::from(s.json.client_id.as_str()),
            owner: s.owner,
            expiry_interval: s.json.expiry,
            disconnected_for,
            subscriptions: s.subscriptions,
            inbound_qos2: qos2.remove(&sid).unwrap_or_default(),
            deliveries: per_session.remove(&sid).unwrap_or_default(),
        });
    }
    report.sessions = sessions.len();
    report.retained = raw.retained.len();
    let retained = raw.retained.into_iter().map(|(_, m, source)| (Arc::new(m), source)).collect();
    if !report.dropped.is_empty() {
        warn!(dropped = report.dropped.len(), "store: records dropped while loading");
    }
    (Loaded { sessions, retained, report }, state)
}

/// Keep a session's QoS 1 deliveries in the order they were sent. `ds` is in queue order
/// (sequence numbers are given in it); the core restores the in-flight ones first, then the
/// queued ones. A QoS 1 delivery stored as queued with one stored in flight after it is what a
/// held-back in-flight update leaves (see [`commit`]): it was sent before the later one, so the
/// later ones are queued again too and everything from the first queued one on is sent again
/// in its original order [MQTT-4.6.0-1], under new packet ids and without DUP (as any delivery
/// whose in-flight update a crash lost). QoS 2 deliveries keep their packet ids: their state is
/// never held back, and they are exactly once [MQTT-4.3.3].
fn requeue_after_gap(ds: &mut [RestoredDelivery]) {
    let mut gap = false;
    for d in ds.iter_mut().filter(|d| d.qos == QoS::AtLeastOnce) {
        match d.stage {
            None => gap = true,
            Some(_) if gap => d.stage = None,
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
