//! The shared broker: client-id registry (with identity binding and takeover), publish
//! routing, retained messages, wills, session expiry and `$SYS`.
//!
//! Lock order (never taken the other way round): `sessions` registry → a session's state →
//! `subs` / `retained`. Routing never holds the trie lock while it locks a session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    Connack, Connect, LastWill, Packet, Properties, Protocol, QoS, ReasonCode, SubscriptionOptions, TopicFilter,
    TopicName,
};
use parking_lot::{Mutex, RwLock};
use warden_policy::{Action, Authorizer, Principal, PrincipalKind};

use crate::config::BrokerConfig;
use crate::connection::Connection;
use crate::fabric::Fabric;
use crate::message::Message;
use crate::metrics::Denied;
use crate::persist::{Persist, PersistOp, RestoredSession};
use crate::queue::{Account, Batch, DeliveryRef, Offer, Run};
use crate::quota::{grows_over, Quota};
use crate::retained::{RetainSource, RetainedStore};
use crate::session::{ConnLink, Delivery, Inflight, Moment, PendingWill, QueueLimits, Session, WakeBatch};
use crate::trie::{SubEntry, SubTrie, Target};
use crate::Wake;

/// Counters exported as `$SYS` topics and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections currently attached to sessions.
    pub clients_connected: AtomicU64,
    /// CONNECTs accepted since start.
    pub connections_total: AtomicU64,
    /// CONNECTs refused since start.
    pub connections_refused: AtomicU64,
    /// PUBLISH packets received from clients, by QoS (0, 1, 2).
    pub messages_received: [AtomicU64; 3],
    /// PUBLISH packets sent to clients, by QoS (0, 1, 2).
    pub messages_sent: [AtomicU64; 3],
    /// Deliveries dropped because a session queue (or its principal's queues) was full.
    pub messages_dropped: AtomicU64,
    /// Operations refused by authorization.
    pub denied: AtomicU64,
    /// Abuse-resistance counters (see [`crate::limits`]).
    pub limits: crate::limits::LimitStats,
    /// Authentication attempts, denials by action, TLS handshake failures (see
    /// [`crate::metrics`]).
    pub security: crate::metrics::SecurityStats,
}

impl Stats {
    /// Count `n` authorization denials of `action` (the `$SYS` total and the metrics' label).
    pub fn deny(&self, action: crate::metrics::Denied, n: u64) {
        self.denied.fetch_add(n, Ordering::Relaxed);
        self.security.denied(action, n);
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Authorize a client's publish (or will) to `topic`. A `$` topic (`$SYS/…`) needs an
/// explicit grant ([`Authorizer::authorize_granted`]): clients cannot publish there by
/// default, not even when no authorization source is configured (SPEC §10; Mosquitto refuses
/// client publishes to `$SYS`). The broker's own `$SYS` values do not come through here.
pub(crate) fn authorize_publish(
    authz: &dyn Authorizer,
    principal: &Principal,
    client_id: &str,
    action: Action<'_>,
) -> warden_policy::Decision {
    if action.topic().starts_with('$') {
        authz.authorize_granted(principal, client_id, action)
    } else {
        authz.authorize(principal, client_id, action)
    }
}

/// One session a message goes to (see [`Broker::resolve`]).
struct Resolved {
    session: Arc<Session>,
    /// Highest QoS of its matching subscriptions.
    qos: QoS,
    /// Retain As Published on any of them.
    rap: bool,
    /// Subscription identifiers.
    ids: Vec<u32>,
}

/// A part of a publisher's batch shorter than this (a run among runs on other topics, or a
/// message at a time for a shared group) is queued as single deliveries rather than as a
/// slice of its own: a shared slice costs allocations that a few messages do not repay.
const SHARED_PART_MIN: usize = 8;

/// A publisher's last routing answer (see [`Broker::route_many`]): who receives its topic,
/// reused by its next batches on that topic while neither a subscription, a subscriber's
/// grants (both change the trie's generation) nor the policy changed. Only answers with
/// no shared group (a member is picked per message) and no denied subscriber (each denial
/// is counted and audited when it happens) are kept, and only for pure policies
/// ([`Authorizer::allows_are_cacheable`]). Empty: one pointer.
#[derive(Default)]
pub struct RouteCache(Option<Box<CachedRoute>>);

struct CachedRoute {
    topic: TopicName,
    origin: Option<u64>,
    trie_gen: u64,
    policy_gen: u64,
    resolved: Vec<Resolved>,
}

/// What [`Broker::resolve`] found.
struct Resolution {
    targets: Vec<Resolved>,
    /// No shared group: the answer holds for the next message on the same topic.
    reusable: bool,
    /// A subscriber was denied `receive`.
    denied: bool,
    /// The trie's generation the answer was computed at.
    trie_gen: u64,
}

/// Why a CONNECT was refused (the v5 reason code; v3 clients get the mapped return code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectError(pub ReasonCode);

/// The broker state shared by all connections.
pub struct Broker {
    /// Limits.
    pub config: BrokerConfig,
    /// Counters.
    pub stats: Stats,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// Disconnected sessions that will expire or have a delayed will.
    expiring: Mutex<HashMap<u64, Arc<Session>>>,
    subs: RwLock<SubTrie>,
    retained: RwLock<RetainedStore>,
    authorizer: RwLock<Arc<dyn Authorizer>>,
    store: Option<Arc<dyn Persist>>,
    policy_gen: AtomicU64,
    next_id: AtomicU64,
    /// The clock origin: the `now` given to [`Broker::new`]. Every [`Moment`] a session keeps
    /// counts from it, and `$SYS/broker/uptime` too.
    origin: Instant,
    /// The latest time the broker was told (seconds since `origin`, from `connect`, `tick`
    /// and `disconnected`): rate-limits the quota logs without reading a clock.
    seen_s: AtomicU64,
    /// The queued-bytes account of each principal that has a session (see [`Account`]).
    accounts: Mutex<Accounts>,
    /// The cluster fabric, when this broker is one node of several (see [`crate::fabric`]).
    fabric: OnceLock<Arc<dyn Fabric>>,
    /// The shell's handler of `$warden/` requests ([`crate::service`]).
    services: OnceLock<Arc<dyn crate::service::Services>>,
}

/// Principals' accounts by identity. Entries no session holds any more are pruned when the
/// map has doubled since the last pruning, so it stays within twice the live principals.
#[derive(Default)]
struct Accounts {
    by_identity: HashMap<(PrincipalKind, Arc<str>), Arc<Account>>,
    prune_at: usize,
}

/// Version string published in `$SYS/broker/version`.
pub const VERSION: &str = concat!("warden ", env!("CARGO_PKG_VERSION"));

impl Broker {
    /// A broker with these limits and this authorization policy.
    pub fn new(config: BrokerConfig, authorizer: Arc<dyn Authorizer>, now: Instant) -> Arc<Broker> {
        Broker::with_store(config, authorizer, None, now)
    }

    /// A broker that reports every change to durable state to `store` (see [`crate::persist`]).
    /// Restore what the store held with [`Broker::restore`] before accepting connections.
    pub fn with_store(
        config: BrokerConfig,
        authorizer: Arc<dyn Authorizer>,
        store: Option<Arc<dyn Persist>>,
        now: Instant,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            store,
            config,
            stats: Stats::default(),
            sessions: Mutex::new(HashMap::new()),
            expiring: Mutex::new(HashMap::new()),
            subs: RwLock::new(SubTrie::default()),
            retained: RwLock::new(RetainedStore::default()),
            authorizer: RwLock::new(authorizer),
            policy_gen: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            origin: now,
            seen_s: AtomicU64::new(0),
            accounts: Mutex::new(Accounts::default()),
            fabric: OnceLock::new(),
            services: OnceLock::new(),
        })
    }

    /// Make this broker one node of a cluster: from now on `fabric` is told what the other
    /// nodes need (see [`crate::fabric`]), starting with the interest held now (restored
    /// sessions' subscriptions). Shared groups are matched only through the fabric from here
    /// on. Set once, before accepting connections; a second call is ignored (returns false).
    pub fn attach_fabric(&self, fabric: Arc<dyn Fabric>) -> bool {
        let mut trie = self.subs.write();
        if self.fabric.set(fabric.clone()).is_err() {
            return false;
        }
        for change in trie.attach_fabric() {
            fabric.interest(change);
        }
        true
    }

    /// Hand `$warden/` requests to `services` ([`crate::service`]). Set once; a second call is
    /// ignored (returns false). Without it, such requests are refused (0x90).
    pub fn attach_services(&self, services: Arc<dyn crate::service::Services>) -> bool {
        self.services.set(services).is_ok()
    }

    /// The handler of `$warden/` requests, if attached.
    pub(crate) fn services(&self) -> Option<&Arc<dyn crate::service::Services>> {
        self.services.get()
    }

    /// The fabric's interest ticket ([`Fabric::issued`]); 0 without a fabric.
    pub fn interest_issued(&self) -> u64 {
        self.fabric.get().map_or(0, |f| f.issued())
    }

    /// The fabric's last forward ticket ([`Fabric::stored_issued`]; 0 without a fabric).
    pub fn forward_issued(&self) -> u64 {
        self.fabric.get().map_or(0, |f| f.stored_issued())
    }

    /// Tell the fabric (if any) the trie's interest changes; called with the trie still locked
    /// so that changes reach it in the order they happened.
    fn report_interest(&self, trie: &mut SubTrie) {
        if let Some(f) = self.fabric.get() {
            for change in trie.take_interest() {
                f.interest(change);
            }
        }
    }

    /// The authorization policy in force.
    pub fn authorizer(&self) -> Arc<dyn Authorizer> {
        self.authorizer.read().clone()
    }

    /// Swap the authorization policy. It takes effect for the next decision, including the
    /// delivery of messages already queued (they are authorized again before they are sent).
    pub fn set_authorizer(&self, a: Arc<dyn Authorizer>) {
        *self.authorizer.write() = a.clone();
        self.policy_gen.fetch_add(1, Ordering::AcqRel);
        // Quota overrides of the principals' roles follow the policy at once (a lowered quota
        // refuses growth from now on and takes nothing away). Lock order: the registry, a
        // session's state, then its account.
        for s in self.sessions.lock().values() {
            let owner = s.owner().clone();
            if let Some(acct) = s.state.lock().queue.account().cloned() {
                acct.set_overrides(a.quotas(&owner));
            }
        }
    }

    /// Generation of the authorization policy (changes with every [`Broker::set_authorizer`]).
    pub fn policy_generation(&self) -> u64 {
        self.policy_gen.load(Ordering::Acquire)
    }

    /// The queued-bytes account shared by every session of `p`'s identity (kind and name),
    /// made at its first session. Lock order: taken last (under a session lock or none).
    pub fn account_for(&self, p: &Principal) -> Arc<Account> {
        let mut a = self.accounts.lock();
        if let Some(acct) = a.by_identity.get(&(p.kind, p.name.clone())) {
            return acct.clone();
        }
        if a.by_identity.len() >= a.prune_at {
            a.by_identity.retain(|_, acct| Arc::strong_count(acct) > 1);
            a.prune_at = (a.by_identity.len() * 2).max(64);
        }
        let acct = Arc::new(Account::default());
        a.by_identity.insert((p.kind, p.name.clone()), acct.clone());
        acct
    }

    fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            messages: self.config.max_queued_messages,
            bytes: self.config.max_queued_bytes,
            principal_bytes: self.config.max_queued_bytes_per_principal,
        }
    }

    /// Note the time the caller passed in (see `seen_s`).
    fn see(&self, now: Instant) {
        self.seen_s.fetch_max(now.saturating_duration_since(self.origin).as_secs(), Ordering::Relaxed);
    }

    /// The clock origin (the `now` the broker was made with): what the sessions' [`Moment`]s
    /// count from.
    pub fn clock_origin(&self) -> Instant {
        self.origin
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The durable store, if any.
    pub fn store(&self) -> Option<&Arc<dyn Persist>> {
        self.store.as_ref()
    }

    /// Store the session's record if it outlives its connections (expiry > 0); the first time,
    /// its subscriptions too (later each SUBSCRIBE and UNSUBSCRIBE stores its own change).
    /// Returns the store ticket (0 when nothing was stored or nothing needs to wait).
    pub(crate) fn save_session(&self, s: &Session) -> u64 {
        if self.fabric.get().is_some() && !s.is_ended() {
            self.share_session(s, &s.state.lock());
        }
        let Some(store) = &self.store else { return 0 };
        let st = s.state.lock();
        if st.expiry_interval == 0 || s.is_ended() {
            return 0;
        }
        let first = !s.set_persisted(true);
        let rec = s.record(&st, self.origin);
        // Submitted under the session lock, so records reach the store in the order of changes.
        let mut ticket = store.submit(PersistOp::Session(Box::new(rec)));
        if first {
            for sub in st.subscriptions.values() {
                ticket = ticket.max(store.submit(PersistOp::Subscribe { sid: s.id(), sub: sub.clone() }));
            }
        }
        ticket
    }

    /// Store a subscription change of `s` (its state locked by the caller) when the session is
    /// stored; returns the ticket.
    fn persist_subscription(&self, s: &Session, op: impl FnOnce(u64) -> PersistOp) -> u64 {
        match &self.store {
            Some(store) if s.is_persisted() => store.submit(op(s.id())),
            _ => 0,
        }
    }

    /// Put back what the store held: sessions with their subscriptions, queues, in-flight
    /// messages and inbound QoS 2 state, and retained messages. Call before connections are
    /// accepted.
    ///
    /// What was restored is charged to its principals' quotas whatever they are now: a quota
    /// lowered since refuses new sessions, subscriptions and retained messages until the
    /// principal is back under it, and takes nothing away.
    pub fn restore(&self, sessions: Vec<RestoredSession>, retained: Vec<(Arc<Message>, RetainSource)>, now: Instant) {
        {
            let mut r = self.retained.write();
            for (m, source) in retained {
                let account = match &source {
                    RetainSource::Client { principal, .. } => Some(self.account_for(principal)),
                    RetainSource::Broker | RetainSource::Unknown => None,
                };
                r.set_charged(m, source, account);
            }
        }
        let mut reg = self.sessions.lock();
        for rs in sessions {
            self.next_id.fetch_max(rs.sid + 1, Ordering::Relaxed);
            let account = self.account_for(&rs.owner);
            account.set_overrides(self.authorizer().quotas(&rs.owner));
            let s = Arc::new(Session::new(rs.sid, rs.client_id.clone(), rs.owner, rs.expiry_interval));
            {
                let mut st = s.state.lock();
                {
                    let mut u = account.usage();
                    u.sessions += 1;
                    let bytes = rs.subscriptions.iter().map(|sub| sub.filter.as_str().len() as u64).sum();
                    u.charge_subscriptions(rs.subscriptions.len() as u64, bytes);
                }
                s.set_counted(true);
                st.queue.set_account(Some(account));
                s.set_persisted(true);
                st.disconnected_at =
                    Some(Moment::new(self.origin, now.checked_sub(rs.disconnected_for).unwrap_or(now)));
                st.inbound_qos2 = rs.inbound_qos2.into_iter().collect();
                let mut trie = self.subs.write();
                for sub in rs.subscriptions {
                    let entry = SubEntry { session: s.clone(), options: sub.options, id: sub.id };
                    trie.insert(sub.filter.shared().map(|(g, _)| g), sub.filter.match_filter(), entry);
                    st.subscriptions.insert(Arc::from(sub.filter.as_str()), sub);
                }
                self.report_interest(&mut trie);
                drop(trie);
                let mut max_pid = 0;
                for d in rs.deliveries {
                    let delivery = Delivery {
                        msg: d.msg,
                        qos: d.qos,
                        retain: d.retain,
                        sub_ids: d.sub_ids,
                        // Authorized again before it is sent: the policy may have changed.
                        policy_gen: crate::session::REAUTHORIZE,
                        seq: d.seq,
                        from_retained: false,
                    };
                    match d.stage {
                        Some((pid, stage)) => {
                            max_pid = max_pid.max(pid);
                            st.inflight.push_back((pid, Inflight { delivery, stage }));
                        }
                        None => st.queue.push(delivery),
                    }
                }
                st.next_packet_id = max_pid.checked_add(1).unwrap_or(1);
                st.ids_in_order = st.inflight.is_empty();
            }
            self.expiring.lock().insert(s.id(), s.clone());
            if let Some(old) = reg.insert(rs.client_id, s) {
                // Two stored sessions of one client id (never written so, but the store is
                // input): the later one stands, the other ends as a Clean Start would end it.
                self.end_session_locked(&old);
            }
        }
    }

    /// Number of sessions (connected or not).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Bytes (topic + payload) of the retained messages.
    pub fn retained_bytes(&self) -> u64 {
        self.retained.read().bytes()
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.read().len()
    }

    /// Bytes charged to every session queue, summed (one brief lock per session; the
    /// registry lock is held only to copy the list). Used by the shell's memory high-water mark.
    pub fn queued_bytes(&self) -> u64 {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        sessions.iter().map(|s| s.state.lock().queue.bytes()).sum()
    }

    /// Accept an authenticated CONNECT: bind the client id to `principal`, create, resume or
    /// take over the session, and write the CONNACK to `out`. On refusal the refusing CONNACK
    /// is written to `out` and nothing else changes: no session is touched, no will is sent.
    ///
    /// `enhanced_auth` is the final Authentication Data of a completed MQTT 5 enhanced
    /// authentication (the shell ran the exchange); a CONNECT naming an authentication method
    /// without it is refused with 0x8C [MQTT-4.12.0-1].
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        self: &Arc<Self>,
        connect: Connect,
        principal: Principal,
        waker: Arc<dyn Wake>,
        enhanced_auth: Option<Bytes>,
        now: Instant,
        out: &mut BytesMut,
    ) -> Result<Connection, ConnectError> {
        self.see(now);
        let v = connect.protocol;
        // One copy, shared by the connection, its session and the shell's registry.
        let principal = Arc::new(principal);
        let client_max = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let refuse = |code: ReasonCode, out: &mut BytesMut| {
            inc(&self.stats.connections_refused);
            write_connack(v, false, code, Properties::default(), client_max, out);
            Err(ConnectError(code))
        };
        let mut props = Properties::default();
        if let Some(method) = &connect.properties.authentication_method {
            let Some(data) = enhanced_auth else {
                return refuse(ReasonCode::BAD_AUTHENTICATION_METHOD, out); // [MQTT-4.12.0-1]
            };
            // The CONNACK closes the exchange with the same method [MQTT-4.12.0-?].
            props.authentication_method = Some(method.clone());
            props.authentication_data = Some(data);
        }
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if v != Protocol::V5 && (!connect.clean_start || v == Protocol::V31) {
                return refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, out); // [MQTT-3.1.3-8]
            }
            let id = format!("warden-{:016x}", rand_u64(self.config.id_seed, self.next_id()));
            if v == Protocol::V5 {
                props.assigned_client_identifier = Some(id.clone()); // [MQTT-3.2.2-16]
            }
            Arc::from(id)
        } else {
            Arc::from(connect.client_id.as_str())
        };
        if let Some(w) = &connect.will {
            let d = authorize_publish(
                self.authorizer().as_ref(),
                &principal,
                &client_id,
                Action::publish(&w.topic, w.qos, w.retain),
            );
            if !d.is_allowed() {
                self.stats.deny(Denied::Will, 1);
                return refuse(ReasonCode::NOT_AUTHORIZED, out);
            }
        }
        // The principal's roles may set its quotas (policy store): in force from this CONNECT.
        self.account_for(&principal).set_overrides(self.authorizer().quotas(&principal));
        let cfg = &self.config;
        let requested_expiry = if v == Protocol::V5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        // A client admitted unverified by the look-up's fail_open, or connected with a claim
        // certificate to enroll, keeps no session after it disconnects: nothing it leaves
        // behind can hold a client id or messages later.
        let expiry = if principal.is_provisional() { 0 } else { requested_expiry.min(cfg.max_session_expiry) };
        if v == Protocol::V5 && expiry != requested_expiry {
            props.session_expiry_interval = Some(expiry);
        }
        let mut keep_alive = connect.keep_alive;
        if v == Protocol::V5 && (keep_alive == 0 || keep_alive > cfg.max_keep_alive) && cfg.max_keep_alive < u16::MAX {
            keep_alive = cfg.max_keep_alive;
            props.server_keep_alive = Some(keep_alive); // [MQTT-3.2.2-21]
        }
        if v == Protocol::V5 {
            props.receive_maximum = (cfg.receive_maximum != u16::MAX).then_some(cfg.receive_maximum);
            props.maximum_packet_size = Some(cfg.max_packet_size);
            props.topic_alias_maximum = (cfg.topic_alias_maximum > 0).then_some(cfg.topic_alias_maximum);
        }

        let generation = self.next_id();
        let link = ConnLink { generation, waker };
        let mut wills_to_send = Vec::new();
        let (session, session_present, old_waker) = {
            let mut reg = self.sessions.lock();
            let existing = reg.get(&client_id).filter(|s| !s.is_ended()).cloned();
            let mut resumable = !connect.clean_start;
            if let Some(s) = &existing {
                if !s.owner().same_identity(&principal) {
                    // A client admitted unverified (look-up fail_open) or enrolling with a
                    // claim certificate holds its client id only until a verified principal
                    // asks for it: that one takes it over, with a new session (nothing of the
                    // provisional one is handed on).
                    let squatter = s.owner().is_provisional() && !principal.is_provisional();
                    if !squatter {
                        // SPEC §3: a client id belongs to the principal that holds its session.
                        drop(reg);
                        return refuse(ReasonCode::NOT_AUTHORIZED, out);
                    }
                    resumable = false;
                }
            }
            match existing {
                Some(s) if resumable => {
                    // A session made with no expiry becomes persistent: it counts now.
                    if expiry > 0 && !s.is_counted() {
                        let account = self.account_for(&principal);
                        let ok = {
                            let mut u = account.usage();
                            let max = u.limits(cfg).sessions;
                            u.add_session(max, false)
                        };
                        if !ok {
                            drop(reg);
                            self.quota_refused(Quota::Sessions, Some(&account), &principal, &client_id);
                            return refuse(ReasonCode::QUOTA_EXCEEDED, out);
                        }
                        s.set_counted(true);
                    }
                    // Same identity; the grants are the new connection's (a narrower token
                    // narrows the live subscriptions at once). Set before the trie's
                    // generation moves: a route that sees the new generation authorizes
                    // `receive` with the new grants.
                    s.set_owner(principal.clone());
                    let mut st = s.state.lock();
                    let old = st.conn.replace(link);
                    st.disconnected_at = None;
                    // A new connection before the will delay passed cancels the will [MQTT-3.1.3-9].
                    if let Some(p) = st.pending_will.take() {
                        self.will_gone(&s.client_id, p.generation);
                    }
                    st.expiry_interval = expiry;
                    // Any resume may bring narrower grants (SPEC §10): what is queued was
                    // authorized for the old ones and is authorized again at delivery; what a
                    // publisher routes now under an older trie generation (or from a routing
                    // answer cached with the old grants) is queued marked so too.
                    st.queue.reauthorize_all();
                    {
                        // Lock order: a session's state, then the trie.
                        let mut trie = self.subs.write();
                        trie.touch();
                        st.grants_gen = trie.generation();
                    }
                    drop(st);
                    s.set_connected(true);
                    (s, true, old.map(|l| l.waker))
                }
                existing => {
                    // One persistent session more for the principal (unless it replaces one
                    // of its own): refused before anything changes [MQTT-3.2.2-?: 0x97].
                    let account = self.account_for(&principal);
                    let replacing = existing.as_ref().is_some_and(|old| old.is_counted());
                    let refused = expiry > 0 && {
                        let mut u = account.usage();
                        let max = u.limits(cfg).sessions;
                        !u.add_session(max, replacing)
                    };
                    if refused {
                        drop(reg);
                        self.quota_refused(Quota::Sessions, Some(&account), &principal, &client_id);
                        return refuse(ReasonCode::QUOTA_EXCEEDED, out);
                    }
                    let mut old_waker = None;
                    if let Some(old) = existing {
                        let (waker, will) = self.end_session_locked(&old);
                        old_waker = waker;
                        wills_to_send.extend(will.map(|w| (old.clone(), w)));
                    }
                    let s = Arc::new(Session::new(self.next_id(), client_id.clone(), principal.clone(), expiry));
                    s.set_counted(expiry > 0);
                    {
                        let mut st = s.state.lock();
                        st.conn = Some(link);
                        st.queue.set_account(Some(account));
                    }
                    s.set_connected(true);
                    reg.insert(client_id.clone(), s.clone());
                    (s, false, old_waker)
                }
            }
        };
        let durable = self.save_session(&session);
        if let Some(w) = old_waker {
            // The old connection sees its generation replaced and closes with 0x8E [MQTT-3.1.4-3].
            w.wake();
        } else {
            inc_gauge(&self.stats.clients_connected, 1);
        }
        for (s, w) in wills_to_send {
            self.publish_will(&s, w.will, &w.owner, now);
        }
        if let (Some(f), Some(w)) = (self.fabric.get(), &connect.will) {
            f.will_set(&client_id, generation, &principal, w, will_delay(w).min(expiry));
        }
        inc(&self.stats.connections_total);
        write_connack(v, session_present, ReasonCode::SUCCESS, props, client_max, out);
        let mut conn =
            Connection::new(self.clone(), session, generation, connect, principal, keep_alive, session_present, now);
        conn.add_durable(durable);
        Ok(conn)
    }

    /// Mark a session ended and drop its subscriptions; returns the waker of its live
    /// connection (to be told it was taken over) and its pending will.
    fn end_session_locked(&self, s: &Arc<Session>) -> (Option<Arc<dyn Wake>>, Option<PendingWill>) {
        let (conn, filters, will) = {
            let mut st = s.state.lock();
            s.set_ended();
            s.set_connected(false);
            let filters: Vec<_> = st.subscriptions.drain().map(|(_, sub)| sub.filter).collect();
            let counted = s.set_counted(false);
            if let Some(a) = st.queue.account() {
                let mut u = a.usage();
                u.release_subscriptions(filters.len() as u64, filters.iter().map(|f| f.as_str().len() as u64).sum());
                if counted {
                    u.release_session();
                }
            }
            st.queue.clear();
            st.inflight.clear();
            if s.set_persisted(false) {
                if let Some(store) = &self.store {
                    store.submit(PersistOp::SessionEnd { sid: s.id() });
                }
            }
            if let Some(f) = self.fabric.get().filter(|_| st.expiry_interval > 0) {
                f.session_ended(&s.client_id);
            }
            let will = st.pending_will.take().map(|p| *p);
            if let Some(p) = &will {
                self.will_gone(&s.client_id, p.generation);
            }
            (st.conn.take(), filters, will)
        };
        if !filters.is_empty() {
            let mut trie = self.subs.write();
            for f in filters {
                trie.remove(f.shared().map(|(g, _)| g), f.match_filter(), s.id());
            }
            self.report_interest(&mut trie);
        }
        self.expiring.lock().remove(&s.id());
        (conn.map(|c| c.waker), will)
    }

    /// Every session, as an operator sees it (the admin API); subscriptions are listed only
    /// with `with_subscriptions`. Sorted by client id.
    /// `now` is the time `disconnected_for` is counted to.
    pub fn session_summaries(&self, with_subscriptions: bool, now: Instant) -> Vec<SessionSummary> {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        let mut out: Vec<_> = sessions.iter().map(|s| summarize(s, with_subscriptions, self.origin, now)).collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    /// One session (with its subscriptions), if `client_id` has one.
    pub fn session_summary(&self, client_id: &str, now: Instant) -> Option<SessionSummary> {
        let s = self.sessions.lock().get(client_id).cloned()?;
        Some(summarize(&s, true, self.origin, now))
    }

    /// An administrator removes `client_id`'s session: its subscriptions, queued and in-flight
    /// messages and stored record go, its pending will is discarded (never published), and a
    /// connection still attached to it is told it was taken away (the shell ends it too).
    /// False when there is no such session.
    pub fn discard_session(&self, client_id: &str) -> bool {
        let waker = {
            let mut reg = self.sessions.lock();
            let Some(s) = reg.remove(client_id) else { return false };
            if let Some(p) = s.state.lock().pending_will.take() {
                self.will_gone(&s.client_id, p.generation);
            }
            self.end_session_locked(&s).0
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Retained messages matching `filter` (a topic filter, not shared), at most `limit`:
    /// `(topic, payload bytes, QoS, publisher's principal if known)`, sorted by topic.
    pub fn retained_summaries(&self, filter: &str, limit: usize) -> Vec<RetainedSummary> {
        let mut found = Vec::new();
        self.retained.read().matching_with_source(filter, &mut found);
        let mut out: Vec<_> = found
            .into_iter()
            .map(|(m, source)| RetainedSummary {
                topic: m.topic.as_str().to_owned(),
                payload_bytes: m.payload.len(),
                qos: m.qos as u8,
                publisher: match source {
                    RetainSource::Client { principal, .. } => Some(principal.to_string()),
                    RetainSource::Broker => Some("broker".to_owned()),
                    RetainSource::Unknown => None,
                },
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out.truncate(limit);
        out
    }

    /// An administrator clears the retained message of exactly `topic` (and its stored copy).
    /// False when the topic holds none.
    pub fn clear_retained(&self, topic: &str) -> bool {
        let Some(m) = self.retained.read().get(topic) else { return false };
        self.drop_retained(&m);
        true
    }

    /// A connection ended. `will` is the will to publish (None after a normal DISCONNECT), set
    /// by that connection, whose principal is `owner`.
    pub(crate) fn disconnected(
        &self,
        s: &Arc<Session>,
        generation: u64,
        will: Option<LastWill>,
        owner: &Arc<Principal>,
        now: Instant,
    ) {
        self.see(now);
        let mut st = s.state.lock();
        let ours = st.conn.as_ref().is_some_and(|c| c.generation == generation);
        // This connection's will is published or discarded now, unless it waits for its delay.
        let pending = ours && st.expiry_interval > 0 && will.as_ref().is_some_and(|w| will_delay(w) > 0);
        if !pending {
            self.will_gone(&s.client_id, generation);
        }
        if !ours {
            // Taken over. A resumed session cancels a delayed will (a new connection arrived
            // before the delay passed); a session ended by Clean Start publishes it [MQTT-3.1.3-9].
            drop(st);
            if let Some(w) = will {
                if will_delay(&w) == 0 || s.is_ended() {
                    // Under the principal of the connection that set it, not the session's
                    // new owner (a resume brings the new connection's principal).
                    self.publish_will(s, w, owner, now);
                }
            }
            return;
        }
        st.conn = None;
        s.set_connected(false);
        st.disconnected_at = Some(Moment::new(self.origin, now));
        if st.expiry_interval == 0 {
            drop(st);
            {
                let mut reg = self.sessions.lock();
                if reg.get(&s.client_id).is_some_and(|r| r.id() == s.id()) {
                    reg.remove(&s.client_id);
                }
                // Ending under the registry lock: a concurrent CONNECT either attached first
                // (then `conn` is set and we would not be here) or sees the session ended.
                self.end_session_locked(s);
            }
            if let Some(w) = will {
                self.publish_will(s, w, owner, now);
            }
            // Last: a client counted gone has its session ended and its will published.
            inc_gauge(&self.stats.clients_connected, -1);
            return;
        }
        let mut publish_now = None;
        if let Some(w) = will {
            let delay = will_delay(&w).min(st.expiry_interval);
            if delay == 0 {
                publish_now = Some(w);
            } else {
                let due = now + Duration::from_secs(u64::from(delay));
                st.pending_will = Some(Box::new(PendingWill { will: w, owner: owner.clone(), due, generation }));
            }
        }
        drop(st);
        self.save_session(s);
        self.expiring.lock().insert(s.id(), s.clone());
        if let Some(w) = publish_now {
            self.publish_will(s, w, owner, now);
        }
        // Last: a client counted gone has its will published or pending, and its session is
        // among those housekeeping (`tick`) looks at.
        inc_gauge(&self.stats.clients_connected, -1);
    }

    /// Housekeeping: remove expired retained messages, publish due wills and end expired
    /// sessions. Call about once a second.
    pub fn tick(&self, now: Instant) {
        self.see(now);
        // Expired retained messages go (and stop counting against their publisher's quotas
        // and the broker-wide cap); they were no longer delivered already.
        let expired = self.retained.read().expired(now);
        for m in &expired {
            self.drop_retained(m);
        }
        let candidates: Vec<Arc<Session>> = self.expiring.lock().values().cloned().collect();
        for s in candidates {
            let mut st = s.state.lock();
            if st.conn.is_some() || s.is_ended() {
                drop(st);
                self.expiring.lock().remove(&s.id());
                continue;
            }
            let will_due = st.pending_will.as_ref().is_some_and(|p| now >= p.due);
            let will = if will_due { st.pending_will.take() } else { None };
            if let Some(p) = &will {
                self.will_gone(&s.client_id, p.generation);
            }
            let expired = st.expiry_interval != u32::MAX
                && st.disconnected_at.is_some_and(|d| {
                    now.saturating_duration_since(d.instant(self.origin))
                        >= Duration::from_secs(u64::from(st.expiry_interval))
                });
            drop(st);
            if let Some(w) = will {
                self.publish_will(&s, w.will, &w.owner, now);
            }
            if expired {
                let will = {
                    let mut reg = self.sessions.lock();
                    if s.state.lock().conn.is_some() {
                        continue; // reconnected meanwhile
                    }
                    if reg.get(&s.client_id).is_some_and(|r| r.id() == s.id()) {
                        reg.remove(&s.client_id);
                    }
                    self.end_session_locked(&s).1
                };
                // The session ended before the will delay passed: publish it now [MQTT-3.1.3-9].
                if let Some(w) = will {
                    self.publish_will(&s, w.will, &w.owner, now);
                }
            }
        }
    }

    /// A trust change (SPEC §10): discard the pending (delayed) wills of disconnected sessions
    /// whose principal (of the connection that set them) `lost` says lost its standing; they
    /// are never published. Returns how many.
    pub fn discard_wills_where(&self, lost: impl Fn(&Principal) -> bool) -> usize {
        // Collected first: `expiring` comes after a session's state in the lock order.
        let waiting: Vec<Arc<Session>> = self.expiring.lock().values().cloned().collect();
        let mut n = 0;
        for s in waiting {
            let mut st = s.state.lock();
            if st.pending_will.as_ref().is_some_and(|w| lost(&w.owner)) {
                if let Some(p) = st.pending_will.take() {
                    self.will_gone(&s.client_id, p.generation);
                }
                n += 1;
            }
        }
        n
    }

    /// The fabric's copy of connection `generation`'s will goes ([`Fabric::will_cleared`]).
    fn will_gone(&self, client_id: &Arc<str>, generation: u64) {
        if let Some(f) = self.fabric.get() {
            f.will_cleared(client_id, generation);
        }
    }

    /// The will of a client of another node, dead now (SPEC §11: the cluster hands it to one
    /// node): published here as `owner`'s if `owner` may publish there under the policy in
    /// force now; the message's expiry counts from now. False when it was refused.
    pub fn publish_peer_will(
        &self,
        msg: Message,
        message_expiry: Option<u32>,
        owner: &Arc<Principal>,
        client_id: &Arc<str>,
        now: Instant,
    ) -> bool {
        self.see(now);
        self.publish_will_message(msg, message_expiry, owner, client_id, now)
    }

    /// Publish `s`'s will, set by a connection of principal `owner`, if `owner` may still
    /// publish there; it is published (a retained will kept) as `owner`'s.
    fn publish_will(&self, s: &Session, w: LastWill, owner: &Arc<Principal>, now: Instant) {
        let expiry = w.properties.message_expiry_interval;
        self.publish_will_message(Message::from_will(w), expiry, owner, &s.client_id, now);
    }

    /// A will as `owner`'s, if `owner` may publish there under the policy in force now; its
    /// expiry counts from `now`. False when it was refused.
    fn publish_will_message(
        &self,
        mut msg: Message,
        message_expiry: Option<u32>,
        owner: &Arc<Principal>,
        client_id: &Arc<str>,
        now: Instant,
    ) -> bool {
        let d = authorize_publish(
            self.authorizer().as_ref(),
            owner,
            client_id,
            Action::publish(&msg.topic, msg.qos, msg.retain),
        );
        if !d.is_allowed() {
            self.stats.deny(Denied::Will, 1);
            return false;
        }
        msg.expires_at = message_expiry.map(|e| now + Duration::from_secs(u64::from(e)));
        msg.origin = None;
        self.route(Arc::new(msg), Some((owner, client_id)));
        true
    }

    /// Route a message: keep it if retained (within its publisher's quotas: over one it is
    /// routed all the same, not retained), then queue it for every matching subscription
    /// (one delivery per session at the highest matching QoS, carrying every matching
    /// subscription identifier [MQTT-3.3.4-2/3]; one member per shared group). Returns the
    /// number of deliveries queued. `publisher` is who published it (principal and client id;
    /// `None`: the broker itself), kept with a retained message.
    pub fn route(&self, msg: Arc<Message>, publisher: Option<(&Arc<Principal>, &Arc<str>)>) -> usize {
        if msg.retain {
            let (source, account) = match publisher {
                None => (RetainSource::Broker, None),
                Some((p, c)) => {
                    (RetainSource::Client { principal: p.clone(), client_id: c.clone() }, Some(self.account_for(p)))
                }
            };
            if let (Err(q), Some((p, c))) = (self.retain(&msg, source, account.as_ref()), publisher) {
                self.quota_refused(q, account.as_deref(), p, c);
            }
        }
        // The local batch wakes the subscribers when it is dropped.
        self.route_many(&Arc::new(Batch::new(vec![msg])), &mut WakeBatch::default(), &mut RouteCache::default())
    }

    /// Route a publisher's batch of messages, in order. Each subscriber session is locked once
    /// for the whole batch (not once per message): on a fan-out the lock's cache line crossing
    /// between the publisher's and the subscriber's cores was the largest cost per delivery.
    /// Consecutive messages on one topic reuse its matching (subscriptions, `receive`
    /// decisions) unless a shared subscription needs a fresh round-robin pick per message;
    /// across batches, the publisher's `cache` keeps the last answer while it holds (see
    /// [`RouteCache`]). Returns the number of deliveries queued.
    /// Retained messages are not kept here: the caller did that first ([`Broker::retain`]; a
    /// connection does it when the PUBLISH arrives, so that a quota's refusal can be told in
    /// its acknowledgement).
    pub fn route_many(&self, shared: &Arc<Batch>, batch: &mut WakeBatch, cache: &mut RouteCache) -> usize {
        if let Some(f) = self.fabric.get() {
            forward(f.as_ref(), shared.messages());
        }
        self.route_here(shared, batch, cache)
    }

    /// A message another node of the cluster accepted, for this node's plain subscribers
    /// (authorized again here for each of them, [`Authorizer`] `receive`). It is not forwarded
    /// again, and No Local does not apply (its publisher is on another node). Returns the
    /// number of deliveries queued.
    pub fn route_from_peer(&self, msg: Arc<Message>) -> usize {
        self.route_here(&Arc::new(Batch::new(vec![msg])), &mut WakeBatch::default(), &mut RouteCache::default())
    }

    /// A message the fabric gave to this node for shared group `group` on `filter`: queued
    /// for one member allowed to receive it (connected ones first). Returns 1 when a member
    /// took it, 0 when the group is gone from this node or no member may receive it.
    pub fn route_from_peer_group(&self, msg: Arc<Message>, group: &str, filter: &str) -> usize {
        let authz = self.authorizer();
        let receive = Action::receive(&msg.topic);
        let mut allow = |s: &Arc<Session>| authz.authorize(&s.owner(), &s.client_id, receive).is_allowed();
        let (target, trie_gen) = {
            let trie = self.subs.read();
            (trie.pick_shared(group, filter, &mut allow), trie.generation())
        };
        let Some(t) = target else {
            self.stats.deny(Denied::Receive, 1);
            return 0;
        };
        let r = Resolved {
            session: t.session,
            qos: t.options.qos,
            rap: t.options.retain_as_published,
            ids: t.id.into_iter().collect(),
        };
        let policy_gen = self.policy_generation();
        let offer = Offer::One(DeliveryRef::of(&msg, r.qos, r.rap, &r.ids, policy_gen).to_owned());
        let mut batch = WakeBatch::default();
        self.enqueue(&r.session, [offer], &mut batch, trie_gen)
    }

    /// Keep a retained message another node accepted (see [`Broker::retain`]; not charged to
    /// a quota here, the publisher's node did that, and not forwarded again).
    pub fn retain_from_peer(&self, msg: &Arc<Message>, source: RetainSource) {
        self.retain_from_peer_if(msg, source, || true);
    }

    /// [`Broker::retain_from_peer`] when `keep()`, asked under the retained store's lock (the
    /// lock [`Fabric::retained`] is called under): a fabric can tell, without a race with this
    /// node's own publishers, whether a newer message of the topic is on its way. Returns
    /// whether it was kept.
    pub fn retain_from_peer_if(&self, msg: &Arc<Message>, source: RetainSource, keep: impl FnOnce() -> bool) -> bool {
        let mut r = self.retained.write();
        if !keep() {
            return false;
        }
        r.set_charged(msg.clone(), source.clone(), None);
        if let Some(store) = self.store.as_ref().filter(|_| !msg.topic.as_str().starts_with("$SYS/")) {
            let stored = (!msg.payload.is_empty()).then(|| msg.clone());
            store.submit(PersistOp::Retained { topic: msg.topic.clone(), msg: stored, source });
        }
        true
    }

    /// [`Broker::route_many`] without the fabric: this node's subscribers only.
    fn route_here(&self, shared: &Arc<Batch>, batch: &mut WakeBatch, cache: &mut RouteCache) -> usize {
        let msgs = shared.messages();
        let policy_gen = self.policy_generation();
        let authz = self.authorizer();
        // The run of a whole batch for one resolved session.
        let run = |shared: &Arc<Batch>, r: &Resolved| Run {
            batch: shared.clone(),
            start: 0,
            end: shared.len() as u32,
            qos: r.qos,
            rap: r.rap,
            sub_ids: r.ids.clone(),
            policy_gen,
        };
        let mut queued = 0;
        // Each session's runs, gathered in order so it is locked once per batch.
        // Session ids are the broker's own counter, not client input: an unkeyed hash is safe.
        // With the trie generation their `receive` was authorized at (see `Session::enqueue`).
        let mut per_session: Vec<(Arc<Session>, Vec<Offer>, u64)> = Vec::new();
        let mut slot: HashMap<u64, usize, foldhash::fast::FixedState> = HashMap::default();
        let mut i = 0;
        while i < msgs.len() {
            // A run: consecutive messages on one topic from one origin share a resolution
            // (unless a shared group must pick a member per message).
            let msg = &msgs[i];
            let trie_gen = self.subs.read().generation();
            let hit = cache.0.as_ref().is_some_and(|c| {
                c.trie_gen == trie_gen && c.policy_gen == policy_gen && c.origin == msg.origin && c.topic == msg.topic
            });
            let mut fresh = Vec::new();
            let mut fresh_gen = 0;
            let mut reusable = true;
            let mut use_cache = hit;
            if !hit {
                let r = self.resolve(msg, authz.as_ref());
                fresh_gen = r.trie_gen;
                reusable = r.reusable;
                use_cache = r.reusable && !r.denied && authz.allows_are_cacheable();
                if use_cache {
                    cache.0 = Some(Box::new(CachedRoute {
                        topic: msg.topic.clone(),
                        origin: msg.origin,
                        trie_gen: r.trie_gen,
                        policy_gen,
                        resolved: r.targets,
                    }));
                } else {
                    fresh = r.targets;
                }
            }
            let (resolved, authorized_at) = match &cache.0 {
                Some(c) if use_cache => (&c.resolved, c.trie_gen),
                _ => (&fresh, fresh_gen),
            };
            let mut j = i + 1;
            if reusable {
                while j < msgs.len() && msgs[j].topic == msg.topic && msgs[j].origin == msg.origin {
                    j += 1;
                }
            }
            if j - i == msgs.len() {
                // The whole batch is one run (the usual case: a device publishing to its
                // topic): every session's queue shares it.
                shared.set_fanout(resolved.len());
                for r in resolved {
                    queued += self.enqueue(&r.session, [Offer::Run(run(shared, r))], batch, authorized_at);
                }
                return queued;
            }
            // A part of the batch: a short one as single deliveries (a message at a time
            // when a shared group picks a member per message); a longer one as its own slice,
            // so that a queue holds only what it sends.
            let part = (j - i >= SHARED_PART_MIN && !resolved.is_empty()).then(|| {
                let part = Arc::new(Batch::new(msgs[i..j].to_vec()));
                part.set_fanout(resolved.len());
                part
            });
            for r in resolved {
                let k = *slot.entry(r.session.id()).or_insert_with(|| {
                    per_session.push((r.session.clone(), Vec::new(), authorized_at));
                    per_session.len() - 1
                });
                // The oldest authorization among the session's offers decides.
                per_session[k].2 = per_session[k].2.min(authorized_at);
                match &part {
                    Some(part) => per_session[k].1.push(Offer::Run(run(part, r))),
                    None => per_session[k].1.extend(
                        msgs[i..j]
                            .iter()
                            .map(|m| Offer::One(DeliveryRef::of(m, r.qos, r.rap, &r.ids, policy_gen).to_owned())),
                    ),
                }
            }
            i = j;
        }
        for (s, offers, authorized_at) in per_session {
            queued += self.enqueue(&s, offers, batch, authorized_at);
        }
        queued
    }

    /// Queue runs and deliveries for one session (locked once), authorized at trie generation
    /// `authorized_at`; returns how many deliveries were queued.
    fn enqueue(
        &self,
        s: &Arc<Session>,
        offers: impl IntoIterator<Item = Offer>,
        batch: &mut WakeBatch,
        authorized_at: u64,
    ) -> usize {
        let n = s.enqueue(offers, self.queue_limits(), batch, self.store.as_ref(), authorized_at);
        if n.dropped > 0 {
            self.stats.messages_dropped.fetch_add(n.dropped as u64, Ordering::Relaxed);
        }
        if n.principal_dropped > 0 {
            self.principal_over(s, n.principal_dropped);
        }
        n.queued
    }

    /// Deliveries to `s` were refused by its principal's bound: count them, log once a minute
    /// per principal.
    #[cold]
    fn principal_over(&self, s: &Session, dropped: usize) {
        self.stats.limits.queued_bytes_per_principal.fetch_add(dropped as u64, Ordering::Relaxed);
        let account = s.state.lock().queue.account().cloned();
        let now_s = self.seen_s.load(Ordering::Relaxed);
        if account.as_ref().is_some_and(|a| a.should_log(now_s, 60)) {
            tracing::warn!(
                principal = %s.owner(),
                client_id = %s.client_id,
                limit = account.as_ref().map_or(self.config.max_queued_bytes_per_principal, |a| a.max_bytes(self.config.max_queued_bytes_per_principal)),
                "max_queued_bytes_per_principal: deliveries to this principal's sessions dropped"
            );
        }
    }

    /// Keep a retained message (an empty payload clears the topic) and store it; returns the
    /// store ticket its acknowledgement waits for. With an `account` (a client's: its
    /// publisher's), the message is charged to it, and refused when it would take that
    /// principal over `max_retained_messages_per_principal` / `max_retained_bytes_per_principal`
    /// or the broker over `max_retained_messages` / `max_retained_bytes`: then nothing changes
    /// (the topic keeps its retained message). Clearing a topic, or replacing a message with
    /// one no larger, is never refused. Checked and applied under the retained store's lock:
    /// concurrent publishers of one principal cannot both take its last place.
    pub fn retain(
        &self,
        msg: &Arc<Message>,
        source: RetainSource,
        account: Option<&Arc<Account>>,
    ) -> Result<u64, Quota> {
        let mut r = self.retained.write();
        if let Some(a) = account.filter(|_| !msg.payload.is_empty()) {
            self.retained_fits(&r, msg, a)?;
        }
        r.set_charged(msg.clone(), source.clone(), account.cloned());
        if let Some(f) = self.fabric.get().filter(|_| !msg.topic.as_str().starts_with('$')) {
            f.retained(msg, &source);
        }
        // Submitted under the lock: the store sees a topic's changes in the order they happened.
        match self.store.as_ref().filter(|_| !msg.topic.as_str().starts_with("$SYS/")) {
            Some(store) => {
                let stored = (!msg.payload.is_empty()).then(|| msg.clone());
                Ok(store.submit(PersistOp::Retained { topic: msg.topic.clone(), msg: stored, source }))
            }
            None => Ok(0),
        }
    }

    /// Would retaining `msg`, charged to `a`, take its principal or the broker over a retained
    /// quota? (See [`Broker::retain`].)
    fn retained_fits(&self, r: &RetainedStore, msg: &Message, a: &Arc<Account>) -> Result<(), Quota> {
        let cfg = &self.config;
        let cost = msg.cost();
        let held = r.held(msg.topic.as_str());
        let old_cost = held.as_ref().map_or(0, |h| h.cost);
        // The principal's figures: a message of its own on the topic is replaced, not added.
        let own = held.as_ref().and_then(|h| h.account).is_some_and(|o| Arc::ptr_eq(o, a));
        {
            let u = a.usage();
            let lim = u.limits(cfg);
            let n = u.retained + u64::from(!own);
            let bytes = u.retained_bytes.saturating_sub(if own { old_cost } else { 0 }).saturating_add(cost);
            if grows_over(u.retained, n, lim.retained) || grows_over(u.retained_bytes, bytes, lim.retained_bytes) {
                return Err(Quota::Retained);
            }
        }
        let (n, bytes) = (r.len() as u64, r.bytes());
        let next_n = n + u64::from(held.is_none());
        let next_bytes = bytes.saturating_sub(old_cost).saturating_add(cost);
        if grows_over(n, next_n, cfg.max_retained_messages as u64)
            || grows_over(bytes, next_bytes, cfg.max_retained_bytes)
        {
            return Err(Quota::RetainedTotal);
        }
        Ok(())
    }

    /// A quota refused a request of `owner` (client `client_id`): count it, and log it once per
    /// principal per episode (see [`crate::quota`]): never once per packet.
    #[cold]
    pub(crate) fn quota_refused(&self, q: Quota, account: Option<&Account>, owner: &Principal, client_id: &str) {
        crate::limits::hit(self.stats.limits.quota(q));
        let now_s = self.seen_s.load(Ordering::Relaxed);
        if account.is_some_and(|a| a.usage().refused(q, now_s)) {
            let cfg = &self.config;
            let lim =
                account.map_or_else(|| crate::quota::Limits::new(cfg, &Default::default()), |a| a.usage().limits(cfg));
            let limit = match q {
                Quota::Sessions => lim.sessions.to_string(),
                Quota::Subscriptions => format!("{} / {} bytes", lim.subscriptions, lim.subscription_bytes),
                Quota::Retained => format!("{} / {} bytes", lim.retained, lim.retained_bytes),
                Quota::RetainedTotal => format!("{} / {} bytes", cfg.max_retained_messages, cfg.max_retained_bytes),
            };
            let principal = owner.to_string();
            tracing::warn!(
                principal = principal.as_str(),
                client_id,
                quota = q.keys(),
                limit = limit.as_str(),
                "quota exceeded: {}; further refusals are counted in $SYS/broker/limits/{}, not logged, until \
                 the principal gives something back",
                q.refusal(),
                q.counter_name()
            );
        }
    }

    /// Whether a retained message's publisher may still publish it (SPEC §10; Mosquitto's
    /// `check_retain_source`): the broker's own always; a client's if the policy in force now
    /// allows its principal (as published; after a restart its kind and name, with no token
    /// grants) to publish there with RETAIN, `$` topics needing an explicit grant as for any
    /// client publish; an unknown publisher's (a record from before publishers were stored)
    /// only while no authorization source with rules is configured.
    fn retain_source_allowed(&self, authz: &dyn Authorizer, msg: &Message, source: &RetainSource) -> bool {
        match source {
            RetainSource::Broker => true,
            RetainSource::Client { principal, client_id } => {
                let action = Action::publish(&msg.topic, msg.qos, true);
                authorize_publish(authz, principal, client_id, action).is_allowed()
            }
            RetainSource::Unknown => !authz.has_rules(),
        }
    }

    /// A trust change (SPEC §10): remove the retained messages whose publisher `lost` says lost
    /// its standing (a revoked token, a removed user, a revoked certificate): their publisher no
    /// longer has any right to publish them. Returns how many were removed.
    pub fn drop_retained_where(&self, lost: impl Fn(&Principal) -> bool) -> usize {
        let mut all = Vec::new();
        self.retained.read().all_with_source(&mut all);
        let mut n = 0;
        for (msg, source) in all {
            if let RetainSource::Client { principal, .. } = &source {
                if lost(principal) {
                    self.drop_retained(&msg);
                    n += 1;
                }
            }
        }
        n
    }

    /// Remove a retained message (if its topic still holds it) and the stored copy.
    fn drop_retained(&self, msg: &Arc<Message>) {
        if !self.retained.write().remove_if_same(msg) {
            return;
        }
        if let Some(store) = self.store.as_ref().filter(|_| !msg.topic.as_str().starts_with("$SYS/")) {
            store.submit(PersistOp::Retained { topic: msg.topic.clone(), msg: None, source: RetainSource::Broker });
        }
    }

    /// The sessions a message goes to, one entry per session (overlapping subscriptions merged:
    /// highest QoS, every subscription identifier [MQTT-3.3.4-2/3]; one member per shared group,
    /// picked among those allowed to receive; No Local applied; `receive` authorized). The flag says whether the answer may be reused
    /// for the next message on the same topic (no shared group was involved).
    fn resolve(&self, msg: &Message, authz: &dyn Authorizer) -> Resolution {
        let mut targets: Vec<Target> = Vec::new();
        let topic = msg.topic.as_str();
        let receive = Action::receive(&msg.topic);
        // A shared group's member is picked among those allowed to receive (asked only for
        // shared groups' members, so plain subscriptions pay nothing for it).
        let mut may_receive = |s: &Arc<Session>| {
            // No Local never applies to a shared subscription [MQTT-3.8.3-4].
            authz.authorize(&s.owner(), &s.client_id, receive).is_allowed()
        };
        let ((lists, refused_groups), trie_gen) = {
            let trie = self.subs.read();
            (trie.matches_with(topic, &mut targets, &mut may_receive), trie.generation())
        };
        let mut denied = refused_groups > 0;
        if denied {
            // No member of a group may receive: the message is dropped for it (once counted).
            self.stats.deny(Denied::Receive, refused_groups as u64);
        }
        let reusable = !targets.iter().any(|t| t.shared);
        // No Local: never send a client its own publication [MQTT-3.8.3-3].
        targets.retain(|t| !(t.options.no_local && msg.origin == Some(t.session.id())));
        // Overlapping subscriptions of one session (several filters matched) are merged below,
        // which needs them adjacent; one matching filter has each session once: no sort.
        if lists > 1 && targets.len() > 1 {
            targets.sort_unstable_by_key(|t| (t.session.id(), t.shared));
        }
        let mut out = Vec::with_capacity(targets.len());
        let mut i = 0;
        while i < targets.len() {
            let t = &targets[i];
            let mut qos = t.options.qos;
            let mut rap = t.options.retain_as_published;
            let mut ids: Vec<u32> = t.id.into_iter().collect();
            let mut j = i + 1;
            if !t.shared {
                while j < targets.len() && targets[j].session.id() == t.session.id() && !targets[j].shared {
                    qos = qos.max(targets[j].options.qos);
                    rap |= targets[j].options.retain_as_published;
                    ids.extend(targets[j].id);
                    j += 1;
                }
            }
            let s = &t.session;
            let shared = t.shared;
            i = j;
            // A shared group's pick was authorized when it was picked.
            if !shared && !authz.authorize(&s.owner(), &s.client_id, receive).is_allowed() {
                self.stats.deny(Denied::Receive, 1);
                denied = true;
                continue;
            }
            out.push(Resolved { session: s.clone(), qos, rap, ids });
        }
        Resolution { targets: out, reusable, denied, trie_gen }
    }

    /// Add or replace a subscription, and store the change when the session is stored.
    /// Returns whether it already existed and the store ticket; a new one that would take the
    /// session's principal over `max_subscriptions_per_principal` or
    /// `max_subscription_bytes_per_principal` is refused (nothing changes).
    pub(crate) fn subscribe(
        &self,
        s: &Arc<Session>,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<(bool, u64), Quota> {
        let cfg = &self.config;
        let mut st = s.state.lock();
        if s.is_ended() {
            // Taken over by a Clean Start meanwhile: nothing to subscribe.
            return Ok((false, 0));
        }
        let existed = st.subscriptions.contains_key(filter.as_str());
        if let Some(a) = st.queue.account().filter(|_| !existed) {
            let len = filter.as_str().len() as u64;
            let mut u = a.usage();
            let lim = u.limits(cfg);
            if !u.add_subscription(len, lim.subscriptions, lim.subscription_bytes) {
                return Err(Quota::Subscriptions);
            }
        }
        let entry = SubEntry { session: s.clone(), options, id };
        let group = filter.shared().map(|(g, _)| g);
        // Lock order: a session's state, then the trie.
        {
            let mut trie = self.subs.write();
            trie.insert(group, filter.match_filter(), entry);
            self.report_interest(&mut trie);
        }
        let sub = crate::session::Subscription { filter: filter.clone(), options, id };
        let ticket = self.persist_subscription(s, |sid| PersistOp::Subscribe { sid, sub: sub.clone() });
        st.subscriptions.insert(Arc::from(filter.as_str()), sub);
        self.share_session(s, &st);
        Ok((existed, ticket))
    }

    /// Remove a subscription, and store the change when the session is stored. Returns whether
    /// it existed and the store ticket.
    pub(crate) fn unsubscribe(&self, s: &Arc<Session>, filter: &TopicFilter) -> (bool, u64) {
        let mut st = s.state.lock();
        if st.subscriptions.remove(filter.as_str()).is_none() {
            return (false, 0);
        }
        {
            let mut trie = self.subs.write();
            trie.remove(filter.shared().map(|(g, _)| g), filter.match_filter(), s.id());
            self.report_interest(&mut trie);
        }
        if let Some(a) = st.queue.account() {
            a.usage().release_subscriptions(1, filter.as_str().len() as u64);
        }
        let ticket = self.persist_subscription(s, |sid| PersistOp::Unsubscribe { sid, filter: filter.clone() });
        self.share_session(s, &st);
        (true, ticket)
    }

    /// Tell the fabric (if any) a lasting session's subscriptions now, and whether it is
    /// settled (nothing queued or in flight).
    fn share_session(&self, s: &Session, st: &crate::session::SessionState) {
        if let Some(f) = self.fabric.get() {
            if st.expiry_interval > 0 {
                let settled = st.queue.is_empty() && st.inflight.is_empty();
                f.session_saved(
                    &s.client_id,
                    st.expiry_interval,
                    st.subscriptions.values().cloned().collect(),
                    settled,
                );
            }
        }
    }

    /// A session another node of the cluster held, taken over here before its client's
    /// CONNECT is handled (SPEC §11): made disconnected with `subs`, so that the CONNECT
    /// resumes it (session present). False when a session of `client_id` is here already (it
    /// stands).
    pub fn adopt_session(
        &self,
        client_id: &str,
        owner: Arc<Principal>,
        expiry: u32,
        subs: Vec<crate::session::Subscription>,
        now: Instant,
    ) -> bool {
        let mut reg = self.sessions.lock();
        if reg.get(client_id).is_some_and(|s| !s.is_ended()) {
            return false;
        }
        let client_id: Arc<str> = Arc::from(client_id);
        let account = self.account_for(&owner);
        let s = Arc::new(Session::new(self.next_id(), client_id.clone(), owner, expiry));
        {
            let mut st = s.state.lock();
            st.queue.set_account(Some(account.clone()));
            st.disconnected_at = Some(Moment::new(self.origin, now));
            let mut trie = self.subs.write();
            for sub in subs {
                let entry = SubEntry { session: s.clone(), options: sub.options, id: sub.id };
                trie.insert(sub.filter.shared().map(|(g, _)| g), sub.filter.match_filter(), entry);
                st.subscriptions.insert(Arc::from(sub.filter.as_str()), sub);
            }
            {
                let mut u = account.usage();
                let bytes = st.subscriptions.keys().map(|f| f.len() as u64).sum();
                u.charge_subscriptions(st.subscriptions.len() as u64, bytes);
            }
            self.report_interest(&mut trie);
        }
        self.expiring.lock().insert(s.id(), s.clone());
        if let Some(old) = reg.insert(client_id, s) {
            self.end_session_locked(&old);
        }
        true
    }

    /// A message queued for `client_id`'s session alone: one another node accepted while the
    /// session was on that node (its resume here, SPEC §11), or a broker service's answer
    /// ([`crate::service`]). Once, at the highest QoS of its matching (non-shared)
    /// subscriptions, if the session may receive it. Returns whether it was queued.
    pub fn replay_to(&self, client_id: &str, msg: Arc<Message>) -> bool {
        let Some(s) = self.sessions.lock().get(client_id).cloned() else { return false };
        let (qos, rap, ids) = {
            let st = s.state.lock();
            let mut best: Option<(QoS, bool, Vec<u32>)> = None;
            for sub in st.subscriptions.values() {
                if sub.filter.shared().is_some() || !sub.filter.matches(msg.topic.as_str()) {
                    continue;
                }
                let b = best.get_or_insert((QoS::AtMostOnce, false, Vec::new()));
                b.0 = b.0.max(sub.options.qos);
                b.1 |= sub.options.retain_as_published;
                b.2.extend(sub.id);
            }
            match best {
                Some(b) => b,
                None => return false,
            }
        };
        let authz = self.authorizer();
        if !authz.authorize(&s.owner(), &s.client_id, Action::receive(&msg.topic)).is_allowed() {
            self.stats.deny(Denied::Receive, 1);
            return false;
        }
        let qos = qos.min(msg.qos);
        let policy_gen = self.policy_generation();
        let trie_gen = self.subs.read().generation();
        let offer = Offer::One(DeliveryRef::of(&msg, qos, rap, &ids, policy_gen).to_owned());
        let mut batch = WakeBatch::default();
        self.enqueue(&s, [offer], &mut batch, trie_gen) > 0
    }

    /// Retained messages matching a (non-shared) filter that may be delivered: with
    /// `check_retain_source`, one whose publisher may no longer publish it is left out, removed
    /// from the store and counted as denied.
    pub(crate) fn retained_matching(&self, filter: &str, authz: &dyn Authorizer) -> Vec<Arc<Message>> {
        let mut found = Vec::new();
        self.retained.read().matching_with_source(filter, &mut found);
        let mut out = Vec::with_capacity(found.len());
        for (m, source) in found {
            if self.config.check_retain_source && !self.retain_source_allowed(authz, &m, &source) {
                self.stats.deny(Denied::Receive, 1);
                self.drop_retained(&m);
                continue;
            }
            out.push(m);
        }
        out
    }

    /// Whether a retained message that SUBSCRIBE queued may be sent now (with
    /// `check_retain_source`; SPEC §10): the check is made when it is sent, not only when it
    /// was queued (it may wait behind flow control, or in a persistent session across a
    /// disconnect). It must still be its topic's retained message: one removed since (its
    /// publisher lost its standing in a trust change, or an earlier check failed) is not sent,
    /// nor one replaced or cleared since (the subscriber was sent the newer one as it was
    /// published). And its publisher must still be allowed to publish it; if not, it is removed
    /// and counted as denied, as on SUBSCRIBE.
    pub(crate) fn retained_still_deliverable(&self, msg: &Arc<Message>) -> bool {
        if !self.config.check_retain_source {
            return true;
        }
        let current = self.retained.read().get_with_source(msg.topic.as_str());
        let Some(source) = current.and_then(|(m, source)| Arc::ptr_eq(&m, msg).then_some(source)) else {
            return false;
        };
        if self.retain_source_allowed(self.authorizer().as_ref(), msg, &source) {
            return true;
        }
        self.stats.deny(Denied::Receive, 1);
        self.drop_retained(msg);
        false
    }

    /// Publish the `$SYS/broker/...` topics (retained), as Mosquitto does.
    pub fn publish_sys(&self, now: Instant) {
        let st = &self.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let topics: [(&str, String); 10] = [
            ("$SYS/broker/version", VERSION.to_string()),
            ("$SYS/broker/uptime", format!("{} seconds", now.saturating_duration_since(self.origin).as_secs())),
            ("$SYS/broker/clients/connected", load(&st.clients_connected)),
            ("$SYS/broker/clients/total", self.session_count().to_string()),
            ("$SYS/broker/connections/total", load(&st.connections_total)),
            (
                "$SYS/broker/messages/received",
                st.messages_received.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>().to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                st.messages_sent.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>().to_string(),
            ),
            ("$SYS/broker/messages/dropped", load(&st.messages_dropped)),
            ("$SYS/broker/subscriptions/count", self.subscription_count().to_string()),
            ("$SYS/broker/retained messages/count", self.retained_count().to_string()),
        ];
        for (t, v) in topics {
            self.publish_sys_value(t, v);
        }
        self.publish_limits_sys();
    }

    /// Publish one `$SYS` value: retained, QoS 0, from the broker itself.
    pub(crate) fn publish_sys_value(&self, topic: &str, value: String) {
        let Ok(topic) = TopicName::new(topic) else { return };
        self.route(
            Arc::new(Message {
                topic,
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                expires_at: None,
                origin: None,
                persisted: Default::default(),
            }),
            None,
        );
    }
}

fn will_delay(w: &LastWill) -> u32 {
    w.properties.will_delay_interval.unwrap_or(0)
}

fn inc_gauge(c: &AtomicU64, delta: i64) {
    if delta >= 0 {
        c.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(delta.unsigned_abs())));
    }
}

/// Write a CONNACK for protocol `v` (v3 return codes are mapped from the v5 reason code).
/// A refusal carries a Reason String when it fits the client's Maximum Packet Size
/// (`client_max`) [MQTT-3.2.2-19].
pub fn write_connack(
    v: Protocol,
    session_present: bool,
    code: ReasonCode,
    mut properties: Properties,
    client_max: u32,
    out: &mut BytesMut,
) {
    let reason_code = if v == Protocol::V5 { code } else { code.to_v3_connack() };
    if v == Protocol::V5 && !code.is_success() {
        properties.reason_string = Some(code.description().to_owned());
        let probe =
            Packet::Connack(Connack { session_present: false, reason_code, properties: properties.clone().into() });
        if probe.encoded_len(v) > client_max as usize {
            properties.reason_string = None;
        }
    }
    // A refused CONNECT never has session present set [MQTT-3.2.2-6].
    let session_present = session_present && code.is_success();
    Packet::Connack(Connack { session_present, reason_code, properties: properties.into() }).encode(v, out);
}

/// A cheap, non-cryptographic mix for assigned client ids: `counter` mixed with the broker's
/// `seed` ([`BrokerConfig::id_seed`]). The mix is a bijection of `counter` for a given seed,
/// so ids from distinct counters never collide.
fn rand_u64(seed: u64, counter: u64) -> u64 {
    let mut x = counter ^ seed.rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// A session as the admin API shows it ([`Broker::session_summaries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Its client id.
    pub client_id: String,
    /// Its principal (`kind:name`).
    pub principal: String,
    /// A connection is attached now.
    pub connected: bool,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// Seconds since its connection ended (offline sessions).
    pub disconnected_for: Option<u64>,
    /// Number of subscriptions.
    pub subscription_count: usize,
    /// `(filter, maximum QoS)`, when asked for.
    pub subscriptions: Vec<(String, u8)>,
    /// Deliveries queued, and their bytes.
    pub queued: usize,
    /// Bytes of the queued deliveries.
    pub queued_bytes: u64,
    /// QoS 1/2 deliveries sent and not yet acknowledged.
    pub inflight: usize,
}

fn summarize(s: &Arc<Session>, with_subscriptions: bool, origin: Instant, now: Instant) -> SessionSummary {
    let principal = s.owner().to_string();
    let st = s.state.lock();
    let mut subscriptions: Vec<(String, u8)> = if with_subscriptions {
        st.subscriptions.values().map(|sub| (sub.filter.as_str().to_owned(), sub.options.qos as u8)).collect()
    } else {
        Vec::new()
    };
    subscriptions.sort();
    SessionSummary {
        client_id: s.client_id.to_string(),
        principal,
        connected: st.conn.is_some(),
        expiry_interval: st.expiry_interval,
        disconnected_for: st.disconnected_at.map(|d| now.saturating_duration_since(d.instant(origin)).as_secs()),
        subscription_count: st.subscriptions.len(),
        subscriptions,
        queued: st.queue.len(),
        queued_bytes: st.queue.bytes(),
        inflight: st.inflight.len(),
    }
}

/// A retained message as the admin API shows it ([`Broker::retained_summaries`]); the payload
/// itself is not shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedSummary {
    /// Its topic.
    pub topic: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// QoS it was published with.
    pub qos: u8,
    /// Its publisher's principal (`kind:name`; `broker` for `$SYS`), when known.
    pub publisher: Option<String>,
}

/// Give the fabric the messages of a batch that other nodes may need (not `$SYS`: each node
/// has its own).
fn forward(f: &dyn Fabric, msgs: &[Arc<Message>]) {
    if msgs.iter().any(|m| m.topic.as_str().starts_with("$SYS/")) {
        let kept: Vec<Arc<Message>> = msgs.iter().filter(|m| !m.topic.as_str().starts_with("$SYS/")).cloned().collect();
        if !kept.is_empty() {
            f.forward(&kept);
        }
    } else {
        f.forward(msgs);
    }
}
