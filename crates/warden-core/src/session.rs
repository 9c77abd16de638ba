//! Session state that outlives a network connection (§4.1): subscriptions, queued and
//! in-flight outbound messages, inbound QoS 2 packet ids, and the link to the live connection.

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroI64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mqtt_codec::{LastWill, QoS, SubscriptionOptions, TopicFilter};
use parking_lot::{Mutex, RwLock};
use warden_policy::Principal;

use crate::message::Message;
use crate::persist::{Persist, PersistOp, SessionRecord};
use crate::queue::{Offer, Queue};
use crate::Wake;

/// A message waiting in a session's queue for delivery.
#[derive(Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS of this delivery: the lower of the publish QoS and the subscription's.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// v5 Subscription Identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
    /// The policy generation `receive` was authorized under; a delivery queued under an
    /// older policy is authorized again before it is sent.
    pub policy_gen: u64,
    /// Its sequence number in the store (0 when it is not stored).
    pub seq: u64,
    /// Taken from the retained store on SUBSCRIBE: sent only while it is still its topic's
    /// retained message and its publisher may still publish it (`check_retain_source`,
    /// checked again when it is sent: see `Broker::retained_still_deliverable`).
    pub from_retained: bool,
}

/// Where an outbound QoS 1/2 delivery stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OutStage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitAck,
    /// PUBREL sent, waiting for PUBCOMP (QoS 2).
    AwaitComp,
}

/// An outbound delivery that has a packet identifier.
#[derive(Clone)]
pub struct Inflight {
    /// The delivery, resent with DUP on reconnect.
    pub delivery: Delivery,
    /// Stage of the QoS flow.
    pub stage: OutStage,
}

/// A session's in-flight deliveries: a `VecDeque` made at the first one, so that a session
/// that never had any (every idle QoS 0 subscriber's) keeps one pointer instead of 32 bytes.
/// Reads go through `Deref` (an empty list when none was made).
#[derive(Default)]
// The box is the point: 8 bytes in every session instead of the `VecDeque`'s 32.
#[allow(clippy::box_collection)]
pub struct InflightList(Option<Box<VecDeque<(u16, Inflight)>>>);

static NO_INFLIGHT: VecDeque<(u16, Inflight)> = VecDeque::new();

impl std::ops::Deref for InflightList {
    type Target = VecDeque<(u16, Inflight)>;

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_INFLIGHT)
    }
}

impl std::ops::Index<usize> for InflightList {
    type Output = (u16, Inflight);

    fn index(&self, i: usize) -> &Self::Output {
        &(**self)[i]
    }
}

impl std::ops::IndexMut<usize> for InflightList {
    fn index_mut(&mut self, i: usize) -> &mut Self::Output {
        match &mut self.0 {
            Some(v) => &mut v[i],
            None => panic!("in-flight index {i} out of bounds: the list is empty"),
        }
    }
}

impl InflightList {
    /// Append (the list is made at the first).
    pub fn push_back(&mut self, e: (u16, Inflight)) {
        self.0.get_or_insert_with(Box::default).push_back(e);
    }

    /// Remove and return the entry at `i`, if any.
    pub fn remove(&mut self, i: usize) -> Option<(u16, Inflight)> {
        self.0.as_mut()?.remove(i)
    }

    /// Forget every entry (and the list).
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// The live connection attached to a session.
#[derive(Clone)]
pub struct ConnLink {
    /// Changes on every (re)connection; a connection whose generation no longer matches has
    /// been taken over.
    pub generation: u64,
    /// Wakes the connection's task.
    pub waker: Arc<dyn Wake>,
}

/// A subscription as the session remembers it.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The filter as subscribed.
    pub filter: TopicFilter,
    /// Options.
    pub options: SubscriptionOptions,
    /// Subscription identifier.
    pub id: Option<u32>,
}

/// A will waiting for its delay (or the session's end) before it is published.
pub struct PendingWill {
    /// The will.
    pub will: LastWill,
    /// The principal of the connection that set it: the will is authorized and published
    /// under it (a trust change that ends its standing discards the will), never under a
    /// later connection's.
    pub owner: Arc<Principal>,
    /// When it is due.
    pub due: Instant,
    /// The connection that set it (the fabric's copy is named by it, [`crate::fabric::Fabric::will_cleared`]).
    pub generation: u64,
}

/// Mutable session state, behind the session's lock.
pub struct SessionState {
    /// The live connection, if any.
    pub conn: Option<ConnLink>,
    /// Subscriptions by filter string.
    pub subscriptions: SubscriptionMap,
    /// Messages waiting to be sent (with their count and bytes charged).
    pub queue: Queue,
    /// Sent QoS 1/2 messages awaiting acknowledgement, in send order (acks mostly arrive in
    /// order, so the search is short; the length is bounded by the receive maximum).
    pub inflight: InflightList,
    /// Inbound QoS 2 packet ids for which PUBREC was sent and PUBREL not yet received.
    pub inbound_qos2: Qos2Ids,
    /// Next outbound packet id to try.
    pub next_packet_id: u16,
    /// Session Expiry Interval in seconds (u32::MAX = never).
    pub expiry_interval: u32,
    /// When the last connection closed (None while connected).
    pub disconnected_at: Option<Moment>,
    /// Will waiting for its delay. Boxed: a `LastWill` is some 400 bytes, and every session
    /// (an idle connection's included) would carry the room for one.
    pub pending_will: Option<Box<PendingWill>>,
    /// Every in-flight id was handed out by [`SessionState::alloc_packet_id`] in turn and is
    /// in `inflight` in that order (false after a restore until nothing is in flight).
    pub ids_in_order: bool,
    /// A wake-up for this session is already in some publisher's [`WakeBatch`]. Kept under
    /// the session lock, beside the queue an enqueue touches anyway: an atomic flag of its
    /// own was a cache line bounced between the publisher's and the subscriber's cores.
    pub wake_batched: bool,
    /// The subscription trie's generation when the session's grants last changed (a resume
    /// brings the new connection's grants, see [`crate::Broker::connect`]). A delivery whose
    /// `receive` was authorized at an older generation may have been authorized for the old
    /// grants: it is queued marked [`REAUTHORIZE`].
    pub grants_gen: u64,
}

/// The policy generation of a delivery that must be authorized again before it is sent (no
/// policy ever has it): restored deliveries, and those queued before (or routed across) a
/// session resume, which may bring narrower grants (SPEC §10).
pub const REAUTHORIZE: u64 = u64::MAX;

/// An instant in 8 bytes (an `Instant` is 16, and `Option<Instant>` took [`SessionState`]
/// out of its size class): milliseconds from the broker's clock origin (the `now` given to
/// [`crate::Broker::new`]; no process-wide clock is read). Kept as `ms + 1` from the origin
/// on (`ms` before it), so that it is never 0 and the origin itself is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment(NonZeroI64);

impl Moment {
    /// `t`, to a millisecond or two (plenty for expiry intervals counted in seconds), as an
    /// offset from `origin`.
    pub fn new(origin: Instant, t: Instant) -> Self {
        let o = origin;
        let ms = match t.checked_duration_since(o) {
            Some(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            None => -i64::try_from(o.duration_since(t).as_millis()).unwrap_or(i64::MAX),
        };
        let stored = if ms >= 0 { ms.saturating_add(1) } else { ms };
        Moment(NonZeroI64::new(stored).unwrap_or(NonZeroI64::MAX))
    }

    /// Back to an `Instant`, from the same `origin` it was made with (the origin when out of
    /// range, which no instant made by [`Moment::new`] is).
    pub fn instant(self, origin: Instant) -> Instant {
        let o = origin;
        let stored = self.0.get();
        let ms = if stored > 0 { stored - 1 } else { stored };
        let d = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 { o.checked_add(d) } else { o.checked_sub(d) }.unwrap_or(o)
    }
}

/// A session's subscriptions by filter. The hasher is foldhash with a per-process random seed
/// (client-chosen filters cannot aim for collisions) held in a static, so the map keeps no
/// seed of its own: 8 bytes less in every session (the per-principal queue account and the
/// grants generation took them).
pub type SubscriptionMap = std::collections::HashMap<Arc<str>, Subscription, ProcessSeeded>;

/// A zero-sized [`std::hash::BuildHasher`]: foldhash, seeded once per process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessSeeded;

impl std::hash::BuildHasher for ProcessSeeded {
    type Hasher = foldhash::fast::FoldHasher;

    fn build_hasher(&self) -> Self::Hasher {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            use std::hash::Hasher as _;
            // A fresh foldhash RandomState draws a random per-hasher seed; take one of its
            // outputs as this process's seed.
            let mut h = foldhash::fast::RandomState::default().build_hasher();
            h.write_u64(0x5eed);
            h.finish()
        });
        foldhash::fast::FoldHasher::with_seed(seed, foldhash::SharedSeed::global_random())
    }
}

/// A session: the client id, the principal that owns it, and its state.
pub struct Session {
    /// The session's id (unique, never reused) above [`ID_SHIFT`], its flags ([`CONNECTED`],
    /// [`ENDED`], [`PERSISTED`], [`COUNTED`]) below: one word instead of a `u64` and four
    /// `AtomicBool`s (8 bytes with the padding), toward mimalloc's 224-byte class for the `Arc<Session>`
    /// that every connection, idle or not, has.
    word: AtomicU64,
    /// The client identifier.
    pub client_id: Arc<str>,
    /// The principal the client id is bound to (SPEC §3). Its identity never changes; its
    /// grants (token scopes, look-up rules) are those of the latest connection.
    owner: RwLock<Arc<Principal>>,
    /// Mutable state.
    pub state: Mutex<SessionState>,
}

impl Session {
    /// A new, empty session.
    pub fn new(id: u64, client_id: Arc<str>, owner: impl Into<Arc<Principal>>, expiry_interval: u32) -> Self {
        debug_assert!(id < 1 << (64 - ID_SHIFT), "session id {id} out of range");
        Session {
            word: AtomicU64::new(id << ID_SHIFT),
            client_id,
            owner: RwLock::new(owner.into()),
            state: Mutex::new(SessionState {
                conn: None,
                subscriptions: SubscriptionMap::default(),
                queue: Queue::default(),
                inflight: InflightList::default(),
                inbound_qos2: Qos2Ids::default(),
                next_packet_id: 1,
                expiry_interval,
                disconnected_at: None,
                pending_will: None,
                wake_batched: false,
                grants_gen: 0,
                ids_in_order: true,
            }),
        }
    }

    /// The stored form of this session (its state is passed in, already locked); its
    /// subscriptions are stored one by one ([`PersistOp::Subscribe`]). `origin` is the
    /// broker's clock origin ([`Moment`]).
    pub(crate) fn record(&self, st: &SessionState, origin: Instant) -> SessionRecord {
        SessionRecord {
            sid: self.id(),
            client_id: self.client_id.clone(),
            owner: Principal::clone(&self.owner()),
            expiry_interval: st.expiry_interval,
            disconnected_at: st.disconnected_at.map(|m| m.instant(origin)),
        }
    }

    /// The principal that owns the session (read lock held while borrowed).
    pub fn owner(&self) -> parking_lot::RwLockReadGuard<'_, Arc<Principal>> {
        self.owner.read()
    }

    /// A resuming connection of the same identity brings its current grants.
    pub(crate) fn set_owner(&self, p: Arc<Principal>) {
        *self.owner.write() = p;
    }

    /// Unique id of this session object (never reused).
    pub fn id(&self) -> u64 {
        self.word.load(Ordering::Relaxed) >> ID_SHIFT
    }

    fn flag(&self, f: u64) -> bool {
        self.word.load(Ordering::Relaxed) & f != 0
    }

    /// Set or clear `f`; returns whether it was set.
    fn set_flag(&self, f: u64, v: bool) -> bool {
        let old = if v { self.word.fetch_or(f, Ordering::Relaxed) } else { self.word.fetch_and(!f, Ordering::Relaxed) };
        old & f != 0
    }

    /// The session has a record in the store.
    pub fn is_persisted(&self) -> bool {
        self.flag(PERSISTED)
    }

    /// Mark the session as stored (`true`) or its record as removed; returns the old value.
    pub(crate) fn set_persisted(&self, v: bool) -> bool {
        self.set_flag(PERSISTED, v)
    }

    /// True while a network connection is attached (lock-free hint for shared-subscription picks).
    pub fn is_connected(&self) -> bool {
        self.flag(CONNECTED)
    }

    pub(crate) fn set_connected(&self, v: bool) {
        self.set_flag(CONNECTED, v);
    }

    /// True once the session was discarded (clean start, expiry); deliveries are ignored.
    pub fn is_ended(&self) -> bool {
        self.flag(ENDED)
    }

    pub(crate) fn set_ended(&self) {
        self.set_flag(ENDED, true);
    }

    /// The session is counted in its owner's persistent sessions
    /// (`max_sessions_per_principal`, see [`crate::quota`]).
    pub fn is_counted(&self) -> bool {
        self.flag(COUNTED)
    }

    /// Mark the session as counted, or not; returns the old value. Changed under the session
    /// registry's lock.
    pub(crate) fn set_counted(&self, v: bool) -> bool {
        self.set_flag(COUNTED, v)
    }
}

/// [`Session`]'s id is kept above this many bits of flags.
const ID_SHIFT: u32 = 8;
/// A network connection is attached.
const CONNECTED: u64 = 1;
/// The session was discarded (clean start, expiry).
const ENDED: u64 = 2;
/// The session has a record in the store (it must be removed when the session ends); changed
/// under the state lock.
const PERSISTED: u64 = 4;
/// The session is counted in its owner's persistent sessions; changed under the registry lock.
const COUNTED: u64 = 8;

/// The bounds a delivery must fit to be queued.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Deliveries per session (`max_queued_messages`).
    pub messages: usize,
    /// Bytes per session (`max_queued_bytes`).
    pub bytes: u64,
    /// Bytes across all the sessions of one principal (`max_queued_bytes_per_principal`),
    /// counted in the queue's [`crate::queue::Account`].
    pub principal_bytes: u64,
}

/// What became of one delivery offered to a session.
enum Offered {
    Queued,
    /// Refused by the session's queue limits.
    Dropped,
    /// Refused: the owner's queues across its sessions are at their bound.
    PrincipalDropped,
    /// A QoS 0 delivery for an offline session.
    Skipped,
}

/// Deliveries queued and dropped by one [`Session::enqueue`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries queued.
    pub queued: usize,
    /// Deliveries dropped (by any limit).
    pub dropped: usize,
    /// Of `dropped`, those refused by the principal's bound.
    pub principal_dropped: usize,
}

impl Tally {
    fn count(&mut self, o: Offered) {
        match o {
            Offered::Queued => self.queued += 1,
            Offered::Dropped => self.dropped += 1,
            Offered::PrincipalDropped => {
                self.dropped += 1;
                self.principal_dropped += 1;
            }
            Offered::Skipped => {}
        }
    }
}

impl Session {
    /// Offer what a publisher's batch holds for this session, under one lock: runs of the
    /// batch (queued as they are while connected) and single deliveries. QoS 0 deliveries are
    /// not queued for an offline session; when the queue is at its message or byte limit, or
    /// the owner's queues across its sessions at `principal_bytes`, a delivery is dropped and
    /// counted. With a `store`, a QoS 1/2 delivery to a persistent
    /// session is stored (it is queued on its own, with its sequence number) and the ticket
    /// its acknowledgement waits for is added to `batch`. The session is added to `batch` for
    /// one wake-up (its waker is cloned only then: that atomic increment on a line the
    /// subscriber's task shares is costly). `authorized_at` is the subscription trie's
    /// generation at which `receive` was authorized for the offers: when the session's grants
    /// changed since ([`SessionState::grants_gen`]), they are queued marked [`REAUTHORIZE`].
    /// Returns what was queued and dropped.
    pub fn enqueue(
        self: &Arc<Self>,
        offers: impl IntoIterator<Item = Offer>,
        limits: QueueLimits,
        batch: &mut WakeBatch,
        store: Option<&Arc<dyn Persist>>,
        authorized_at: u64,
    ) -> Tally {
        let mut n = Tally::default();
        let waker = {
            let mut st = self.state.lock();
            if self.is_ended() {
                // Ended under this lock: nothing is queued any more.
                n.dropped = offers.into_iter().map(|o| o.len()).sum();
                return n;
            }
            let st = &mut *st;
            // Authorized for grants the session no longer has (it resumed meanwhile).
            let stale = st.grants_gen > authorized_at;
            for mut offer in offers {
                if stale {
                    match &mut offer {
                        Offer::One(d) => d.policy_gen = REAUTHORIZE,
                        Offer::Run(r) => r.policy_gen = REAUTHORIZE,
                    }
                }
                let run = match offer {
                    Offer::One(d) => {
                        n.count(self.offer_one(st, d, limits, batch, store));
                        continue;
                    }
                    Offer::Run(run) => run,
                };
                if st.conn.is_none() || store.is_some_and(|_| run.qos != QoS::AtMostOnce && st.expiry_interval > 0) {
                    // Offline (QoS 0 is skipped) or stored: one entry per delivery.
                    for m in run.messages() {
                        let d = run.delivery_ref(m).to_owned();
                        n.count(self.offer_one(st, d, limits, batch, store));
                    }
                    continue;
                }
                // Connected and nothing to store: the run is queued as it is, or split around
                // the messages the queue limits refuse.
                let cost = run.cost();
                if st.queue.len() + run.len() <= limits.messages
                    && st.queue.bytes() + cost <= limits.bytes
                    && !st.queue.account_over(cost, limits.principal_bytes)
                {
                    n.queued += run.len();
                    st.queue.push_run(run);
                    continue;
                }
                let (mut len, mut bytes) = (st.queue.len(), st.queue.bytes());
                let mut principal = st.queue.account().map(|a| a.bytes());
                let principal_max =
                    st.queue.account().map_or(limits.principal_bytes, |a| a.max_bytes(limits.principal_bytes));
                let parts = run.retain_split(|m| {
                    let cost = m.cost();
                    if len >= limits.messages || bytes + cost > limits.bytes {
                        n.count(Offered::Dropped);
                        return false;
                    }
                    if principal.is_some_and(|p| p.saturating_add(cost) > principal_max) {
                        n.count(Offered::PrincipalDropped);
                        return false;
                    }
                    len += 1;
                    bytes += cost;
                    principal = principal.map(|p| p + cost);
                    n.queued += 1;
                    true
                });
                for part in parts {
                    st.queue.push_run(part);
                }
            }
            match &st.conn {
                Some(c) if n.queued > 0 && !std::mem::replace(&mut st.wake_batched, true) => Some(c.waker.clone()),
                _ => None,
            }
        };
        if let Some(w) = waker {
            batch.wakes.push((self.clone(), w));
        }
        n
    }

    /// Offer one delivery (the session's state locked by the caller).
    fn offer_one(
        &self,
        st: &mut SessionState,
        mut d: Delivery,
        limits: QueueLimits,
        batch: &mut WakeBatch,
        store: Option<&Arc<dyn Persist>>,
    ) -> Offered {
        if st.conn.is_none() && d.qos == QoS::AtMostOnce {
            return Offered::Skipped;
        }
        let cost = d.msg.cost();
        if st.queue.len() >= limits.messages || st.queue.bytes() + cost > limits.bytes {
            return Offered::Dropped;
        }
        if st.queue.account_over(cost, limits.principal_bytes) {
            return Offered::PrincipalDropped;
        }
        if let Some(store) = store.filter(|_| d.qos != QoS::AtMostOnce && st.expiry_interval > 0) {
            batch.durable = batch.durable.max(store_delivery(store, self.id(), &mut d, None));
        }
        st.queue.push(d);
        Offered::Queued
    }
}

/// Store (or update) a delivery of session `sid`, giving it a sequence number if it has none.
/// Returns the ticket its acknowledgement waits for.
pub(crate) fn store_delivery(
    store: &Arc<dyn Persist>,
    sid: u64,
    d: &mut Delivery,
    stage: Option<(u16, OutStage)>,
) -> u64 {
    let new = d.seq == 0;
    if new {
        d.seq = store.next_id();
    }
    let msg_id = d.msg.stored_id(store);
    store.submit(PersistOp::Delivery {
        sid,
        seq: d.seq,
        msg_id,
        qos: d.qos,
        retain: d.retain,
        sub_ids: d.sub_ids.clone(),
        stage,
        new,
    })
}

/// Wake-ups deferred while a publisher's read batch is routed; [`WakeBatch::flush`] wakes each
/// session once. It also collects the store ticket the publisher's acknowledgements wait for.
#[derive(Default)]
pub struct WakeBatch {
    wakes: Vec<(Arc<Session>, Arc<dyn Wake>)>,
    /// Highest store ticket of what was routed (0: nothing to wait for).
    pub durable: u64,
}

impl WakeBatch {
    /// Wake every session collected, once each.
    pub fn flush(&mut self) {
        for (s, w) in self.wakes.drain(..) {
            // Cleared before waking: a delivery queued after this point batches a new wake.
            s.state.lock().wake_batched = false;
            w.wake();
        }
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.wakes.is_empty()
    }
}

impl Drop for WakeBatch {
    /// A batch is never lost: whatever was collected is woken (and the flags cleared).
    fn drop(&mut self) {
        self.flush();
    }
}

impl SessionState {
    /// Index of the in-flight entry with packet id `id`.
    pub fn inflight_index(&self, id: u16) -> Option<usize> {
        self.inflight.iter().position(|(i, _)| *i == id)
    }

    /// A packet identifier not in use by an outbound in-flight message.
    ///
    /// Ids are handed out in turn (`next_packet_id`) and each goes to the back of `inflight`,
    /// so while that holds (`ids_in_order`) the in-flight ids lie, in deque order, in the
    /// cyclic range from the front's id up to `next_packet_id`: the next id is free unless
    /// the counter has come round to the front's id, and no scan is needed. When it has, or
    /// the order is unknown (a restored session), the window is scanned, and the order is
    /// trusted again once nothing is in flight.
    pub fn alloc_packet_id(&mut self) -> Option<u16> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        let advance = |id: u16| if id == u16::MAX { 1 } else { id + 1 };
        if self.inflight.is_empty() {
            self.ids_in_order = true;
        }
        let id = self.next_packet_id;
        if self.ids_in_order && self.inflight.front().map(|(f, _)| *f) != Some(id) {
            self.next_packet_id = advance(id);
            return Some(id);
        }
        self.ids_in_order = false;
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = advance(id);
            if !self.inflight.iter().any(|(i, _)| *i == id) {
                return Some(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every connected or idle client holds one session: with its reference counts it fits
    /// mimalloc's 256-byte class. A field added here moves every session up to the 320 class.
    #[test]
    fn a_moment_keeps_an_instant_to_a_millisecond_or_two() {
        let origin = Instant::now();
        let now = origin + Duration::from_millis(1234);
        for t in
            [now, now + Duration::from_secs(3600), now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now), origin]
        {
            let back = Moment::new(origin, t).instant(origin);
            let err = if back > t { back - t } else { t - back };
            assert!(err < Duration::from_millis(2), "{t:?} came back as {back:?}");
        }
        // The origin and whole milliseconds come back exactly (the simulator's clock starts at
        // the origin: a session disconnected then expires on the second).
        assert_eq!(Moment::new(origin, origin).instant(origin), origin);
        let later = origin + Duration::from_millis(5000);
        assert_eq!(Moment::new(origin, later).instant(origin), later);
        let earlier = origin.checked_sub(Duration::from_millis(5000)).unwrap_or(origin);
        assert_eq!(Moment::new(origin, earlier).instant(origin), earlier);
        let (a, b) = (Moment::new(origin, now), Moment::new(origin, now + Duration::from_secs(1)));
        assert!(b.instant(origin) > a.instant(origin));
    }

    /// Every connection has a session, allocated as an `Arc` (16 bytes of counts): at most
    /// 208 bytes keeps it in mimalloc's 224-byte class. Make room before adding a field.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_session_stays_in_its_size_class() {
        assert!(std::mem::size_of::<Session>() <= 208, "Session is {} bytes", std::mem::size_of::<Session>());
    }

    /// `max_queued_bytes_per_principal`: the sessions of one principal share one bound (an
    /// offline session's QoS 1 deliveries are refused once the principal's queues hold it,
    /// while each session is far under its own limit); another principal is unaffected, and
    /// what a session releases (sent, or the session gone) is room again.
    #[test]
    fn sessions_of_one_principal_share_the_per_principal_bound() {
        let broker =
            crate::Broker::new(crate::BrokerConfig::default(), Arc::new(warden_policy::AllowAll), Instant::now());
        let session = |id: u64, p: &Principal| {
            let s = Arc::new(Session::new(id, Arc::from(format!("c{id}")), p.clone(), 3600));
            s.state.lock().queue.set_account(Some(broker.account_for(p)));
            s
        };
        let (m, v) = (Principal::user("m"), Principal::user("v"));
        let (m1, m2, v1) = (session(1, &m), session(2, &m), session(3, &v));
        // Each delivery costs 100 bytes (topic "t" + 99 bytes of payload).
        let payload: &'static [u8] = &[0u8; 99];
        let msg = Arc::new(Message::for_test("t", payload, QoS::AtLeastOnce, false));
        let offer = || {
            let d = Delivery {
                msg: msg.clone(),
                qos: QoS::AtLeastOnce,
                retain: false,
                sub_ids: vec![],
                policy_gen: 0,
                seq: 0,
                from_retained: false,
            };
            Offer::One(d)
        };
        let limits = QueueLimits { messages: 1000, bytes: 10_000, principal_bytes: 500 };
        let mut batch = WakeBatch::default();
        let t = m1.enqueue((0..3).map(|_| offer()), limits, &mut batch, None, 0);
        assert_eq!(t, Tally { queued: 3, dropped: 0, principal_dropped: 0 });
        // m's second session gets what is left of the bound, whatever its own room.
        let t = m2.enqueue((0..4).map(|_| offer()), limits, &mut batch, None, 0);
        assert_eq!(t, Tally { queued: 2, dropped: 2, principal_dropped: 2 });
        assert_eq!(broker.account_for(&m).bytes(), 500);
        assert_eq!(m1.enqueue([offer()], limits, &mut batch, None, 0).principal_dropped, 1);
        // Another principal is not affected by m's full queues.
        let t = v1.enqueue((0..5).map(|_| offer()), limits, &mut batch, None, 0);
        assert_eq!(t, Tally { queued: 5, dropped: 0, principal_dropped: 0 });
        assert_eq!(broker.account_for(&v).bytes(), 500);
        // A delivery sent from m1 makes room for m2; m1 gone gives back the rest.
        m1.state.lock().queue.skip();
        assert_eq!(m2.enqueue([offer(), offer()], limits, &mut batch, None, 0).queued, 1);
        drop(m1);
        assert_eq!(broker.account_for(&m).bytes(), 300, "m2's three deliveries");
        m2.state.lock().queue.clear();
        assert_eq!(broker.account_for(&m).bytes(), 0);
    }

    fn inflight(id: u16) -> (u16, Inflight) {
        let msg = Arc::new(Message::for_test("t", b"", QoS::AtLeastOnce, false));
        let delivery = Delivery {
            msg,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![],
            policy_gen: 0,
            seq: 0,
            from_retained: false,
        };
        (id, Inflight { delivery, stage: OutStage::AwaitAck })
    }

    /// Trust lifecycle item 3: a delivery authorized (at trie generation 4) for grants the
    /// session replaced since (its resume at generation 5) is queued to be authorized again;
    /// one authorized after the resume keeps its policy generation.
    #[test]
    fn an_offer_authorized_before_a_resume_is_queued_for_reauthorization() {
        let s = Arc::new(Session::new(1, Arc::from("c"), Principal::anonymous(), 60));
        s.state.lock().grants_gen = 5;
        let offer = || Offer::One(inflight(0).1.delivery);
        let mut batch = WakeBatch::default();
        let limits = QueueLimits { messages: 10, bytes: 1 << 20, principal_bytes: u64::MAX };
        s.enqueue([offer()], limits, &mut batch, None, 4);
        s.enqueue([offer()], limits, &mut batch, None, 5);
        let mut st = s.state.lock();
        assert_eq!(st.queue.front().map(|d| d.policy_gen), Some(REAUTHORIZE));
        st.queue.skip();
        assert_eq!(st.queue.front().map(|d| d.policy_gen), Some(0));
    }

    /// The naive allocator: the next id in turn that is not in flight.
    fn naive(st: &mut SessionState) -> u16 {
        loop {
            let id = st.next_packet_id;
            st.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !st.inflight.iter().any(|(i, _)| *i == id) {
                return id;
            }
        }
    }

    proptest! {
        /// Whatever the acknowledgements, restores and wrap-arounds, the allocator gives the
        /// same ids as the naive scan, and never one in flight.
        #[test]
        fn packet_ids_match_the_naive_allocator(
            start in 1u16..=u16::MAX,
            restored in proptest::collection::vec(0u16..8, 0..5),
            ops in proptest::collection::vec((0u8..4, any::<prop::sample::Index>()), 1..400),
        ) {
            let s = Session::new(1, Arc::from("c"), Principal::anonymous(), 0);
            let mut st = s.state.lock();
            let mut twin_inflight = InflightList::default();
            // A restored window: ids just ahead of the counter, in no particular order.
            let mut restored: Vec<u16> =
                restored.iter().map(|&off| ((u32::from(start) - 1 + u32::from(off)) % 65535 + 1) as u16).collect();
            restored.sort_unstable();
            restored.dedup();
            for &id in restored.iter().rev() {
                st.inflight.push_back(inflight(id));
                twin_inflight.push_back(inflight(id));
            }
            if !restored.is_empty() {
                st.ids_in_order = false;
            }
            st.next_packet_id = start;
            let mut twin_next = start;
            for (op, ix) in ops {
                if op == 0 && !st.inflight.is_empty() {
                    // An acknowledgement, anywhere in the window.
                    let i = ix.index(st.inflight.len());
                    st.inflight.remove(i);
                    twin_inflight.remove(i);
                    continue;
                }
                let got = st.alloc_packet_id().unwrap();
                let mut twin = SessionState { inflight: std::mem::take(&mut twin_inflight), next_packet_id: twin_next, ..blank() };
                let want = naive(&mut twin);
                twin_inflight = std::mem::take(&mut twin.inflight);
                twin_next = twin.next_packet_id;
                prop_assert_eq!(got, want);
                prop_assert!(!st.inflight.iter().any(|(i, _)| *i == got));
                st.inflight.push_back(inflight(got));
                twin_inflight.push_back(inflight(got));
                if op == 3 {
                    // A long quiet stretch: the counter comes round to the oldest id.
                    if let Some(&(f, _)) = st.inflight.front() {
                        st.next_packet_id = f;
                        twin_next = f;
                    }
                }
            }
        }
    }

    fn blank() -> SessionState {
        let s = Session::new(0, Arc::from("x"), Principal::anonymous(), 0);
        s.state.into_inner()
    }
}

/// Packet ids of QoS 2 PUBLISH packets received and not yet released (PUBREL). Most sessions
/// never see QoS 2: the set is made at its first id.
#[derive(Debug, Default)]
// Boxed on purpose: an empty `HashSet` is 48 bytes in every session, the box 8.
#[allow(clippy::box_collection)]
pub struct Qos2Ids(Option<Box<HashSet<u16>>>);

impl Qos2Ids {
    /// Whether `id` is awaiting its PUBREL.
    pub fn contains(&self, id: &u16) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(id))
    }

    /// Ids awaiting their PUBREL.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len())
    }

    /// True when no id awaits its PUBREL.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add `id`; false when it was there already.
    pub fn insert(&mut self, id: u16) -> bool {
        self.0.get_or_insert_with(Default::default).insert(id)
    }

    /// Remove `id`; false when it was not there. The set is given back once empty.
    pub fn remove(&mut self, id: &u16) -> bool {
        let removed = self.0.as_mut().is_some_and(|s| s.remove(id));
        if self.0.as_ref().is_some_and(|s| s.is_empty()) {
            self.0 = None;
        }
        removed
    }
}

impl FromIterator<u16> for Qos2Ids {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let set: HashSet<u16> = iter.into_iter().collect();
        Qos2Ids((!set.is_empty()).then(|| Box::new(set)))
    }
}
