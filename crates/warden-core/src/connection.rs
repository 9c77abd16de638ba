//! One client connection's MQTT state machine, after a successful CONNECT.
//!
//! Inputs: [`Connection::handle`] for each decoded inbound packet, [`Connection::pull`] when
//! the session's queue has something (the shell is woken through [`crate::Wake`]).
//! Outputs: encoded packets appended to the caller's write buffer. A returned [`Close`]
//! means the connection must be closed once the buffer is flushed; any v5 DISCONNECT that
//! the specification asks for has already been written. Finally the shell calls
//! [`Connection::closed`] exactly once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt_codec::{
    Connect, DecodeError, Disconnect, LastWill, Packet, Protocol, PubAck, Publish, PublishRef, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, TopicName, UnsubAck, Unsubscribe,
};
use warden_policy::{Action, Authorizer, Decision, Principal};

use crate::broker::{Broker, RouteCache};
use crate::message::Message;
use crate::persist::PersistOp;
use crate::queue::{Batch, DeliveryRef};
use crate::quota::Quota;
use crate::retained::RetainSource;
use crate::session::{store_delivery, Delivery, Inflight, OutStage, Session, WakeBatch};

/// Why (and how) a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The reason (sent in a v5 DISCONNECT when the server closes).
    pub reason: ReasonCode,
    /// Publish the will (anything but a normal DISCONNECT from the client).
    pub publish_will: bool,
}

/// Bits of each QoS's field in [`Connection`]'s packed received counter.
const RECEIVED_BITS: u32 = 21;
const RECEIVED_MASK: u64 = (1 << RECEIVED_BITS) - 1;
/// The top bit of every field: set, the counter is flushed.
const RECEIVED_NEAR_FULL: u64 = (1 << 20) | (1 << 41) | (1 << 62);

/// Add the PUBLISH packets counted in `packed` since the last flush to the broker's counters.
fn flush_received(stats: &crate::Stats, packed: &mut u64) {
    let packed = std::mem::take(packed);
    for (q, c) in stats.messages_received.iter().enumerate() {
        let n = (packed >> (RECEIVED_BITS * q as u32)) & RECEIVED_MASK;
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// An accepted client connection.
pub struct Connection {
    broker: Arc<Broker>,
    session: Arc<Session>,
    generation: u64,
    protocol: Protocol,
    /// Shared with the session and the shell's registry of live connections.
    principal: Arc<Principal>,
    keep_alive: u16,
    client_receive_max: u16,
    client_max_packet: u32,
    client_alias_max: u16,
    /// Made at the first topic alias or credential expiry: most connections have neither.
    extras: Option<Box<Extras>>,
    will: Option<Box<LastWill>>,
    /// [`RESEND`] and [`CONNECT_EXPIRY_ZERO`]: two flags in one byte, so that the keep alive's
    /// clock fits in the room the second `bool` took (a parked connection's record is at the
    /// top of its allocation size class).
    flags: u8,
    /// When input last came (the keep alive counts from it): tenths of a second since the
    /// broker's clock origin, rounded up (so the keep alive never ends early); 13 years of
    /// uptime fit.
    input_ds: u32,
    /// Store ticket the output written so far must wait for (0: none).
    durable: u64,
    /// Made at the first PUBLISH; given back by [`Connection::shrink`] once nothing is pending.
    publishing: Option<Box<Publishing>>,
    /// PUBLISH packets received and not yet added to the broker's counter: added once per
    /// batch, not per message (the counter's cache line is shared by every connection).
    /// Three counters in one word (QoS q in bits `21 q ..`), so that the connection (and a
    /// parked one's record) does not grow; flushed long before a field could overflow.
    received: u64,
}

/// Resume: re-send the in-flight deliveries first [MQTT-4.4.0-1].
const RESEND: u8 = 1;
/// The v5 CONNECT set Session Expiry Interval 0 (a DISCONNECT may not raise it).
const CONNECT_EXPIRY_ZERO: u8 = 2;

/// Tenths of a second since `origin` (rounded up, saturating).
fn deciseconds(origin: Instant, t: Instant) -> u32 {
    let ms = t.saturating_duration_since(origin).as_millis();
    u32::try_from(ms.div_ceil(100)).unwrap_or(u32::MAX)
}

/// What few connections need: topic aliases (MQTT 5 §3.3.2.3.4), both ways, and the expiry
/// of the credential they authenticated with.
#[derive(Default)]
struct Extras {
    /// When the credential (an access token) expires: the connection ends then (SPEC §10).
    credential_expiry: Option<Instant>,
    /// Set by the client's PUBLISH packets.
    inbound: HashMap<u16, TopicName>,
    /// Chosen by the broker for its deliveries (up to the client's Topic Alias Maximum).
    outbound: HashMap<TopicName, u16>,
    /// With a cluster fabric: the interest ticket a SUBACK waits for (see
    /// [`Connection::take_interest_wait`]).
    interest_wait: u64,
}

/// What a publishing connection keeps between the packets of a read batch, and the caches
/// that make its next PUBLISH cheap. Idle connections carry none (see [`Connection::shrink`]).
#[derive(Default)]
struct Publishing {
    wakes: WakeBatch,
    /// Accepted messages not routed yet: routed together at the end of the read batch (or
    /// before any other packet is handled), so each subscriber is locked once per batch.
    pending: Vec<Arc<Message>>,
    /// Some pending message is QoS 1/2: its acknowledgement waits for what routing stores.
    pending_acked: bool,
    /// The last publish allowed (topic, QoS, retain, policy generation), when the policy
    /// lets allows be reused ([`warden_policy::Authorizer::allows_are_cacheable`]).
    publish_allowed: Option<(TopicName, QoS, bool, u64)>,
    /// Who received this connection's last topic (reused while nothing changed).
    route_cache: RouteCache,
    /// With a cluster fabric that keeps QoS 1/2 messages: the forward tickets (first, last)
    /// the acknowledgements written since the last call wait for
    /// ([`Connection::take_forward_wait`]).
    forward_wait: Option<(u64, u64)>,
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        broker: Arc<Broker>,
        session: Arc<Session>,
        generation: u64,
        connect: Connect,
        principal: Arc<Principal>,
        keep_alive: u16,
        session_present: bool,
        now: Instant,
    ) -> Self {
        let p = &connect.properties;
        let expiry_zero = connect.protocol == Protocol::V5 && p.session_expiry_interval.unwrap_or(0) == 0;
        let flags = if session_present { RESEND } else { 0 } | if expiry_zero { CONNECT_EXPIRY_ZERO } else { 0 };
        let input_ds = deciseconds(broker.clock_origin(), now);
        Connection {
            flags,
            input_ds,
            generation,
            protocol: connect.protocol,
            client_receive_max: p.receive_maximum.unwrap_or(u16::MAX),
            client_max_packet: p.maximum_packet_size.unwrap_or(u32::MAX),
            client_alias_max: p.topic_alias_maximum.unwrap_or(0),
            will: connect.will.map(Box::new),
            keep_alive,
            principal,
            session,
            broker,
            extras: None,
            durable: 0,
            publishing: None,
            received: 0,
        }
    }

    pub(crate) fn add_durable(&mut self, ticket: u64) {
        self.durable = self.durable.max(ticket);
    }

    /// The store ticket that must be committed before the output produced since the last call
    /// is written (an acknowledgement of a message the store must keep); 0 when none. The shell
    /// waits for it (group commit) before writing.
    pub fn take_durable(&mut self) -> u64 {
        std::mem::take(&mut self.durable)
    }

    /// With a cluster fabric: the interest ticket ([`crate::fabric::Fabric::issued`]) the
    /// output produced since the last call must wait for — a SUBACK is sent once the
    /// subscription is in force across the cluster (SPEC §11); 0 when none.
    pub fn take_interest_wait(&mut self) -> u64 {
        self.extras.as_mut().map_or(0, |e| std::mem::take(&mut e.interest_wait))
    }

    /// With a cluster fabric that keeps QoS 1/2 messages ([`crate::fabric::Fabric::stored_issued`]):
    /// the forward tickets `(first, last)` the acknowledgements written since the last call
    /// wait for — a PUBACK or PUBREC leaves once every one of them is kept (SPEC §11:
    /// acknowledged = committed on a quorum); `None` when none.
    pub fn take_forward_wait(&mut self) -> Option<(u64, u64)> {
        self.publishing.as_mut().and_then(|p| p.forward_wait.take())
    }

    /// Record that the session's delivery `seq` is finished in the store.
    fn delivery_done(&self, seq: u64) {
        if seq != 0 {
            if let Some(store) = self.broker.store() {
                store.submit(PersistOp::DeliveryDone { sid: self.session.id(), seq });
            }
        }
    }

    /// Record an inbound QoS 2 packet id (PUBREC sent) or its release (PUBREL received).
    fn inbound_qos2(&mut self, packet_id: u16, present: bool, persistent: bool) {
        if let Some(store) = self.broker.store().filter(|_| persistent) {
            let t = store.submit(PersistOp::InboundQos2 { sid: self.session.id(), packet_id, present });
            self.add_durable(t);
        }
    }

    /// Protocol version of this connection.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Effective keep alive in seconds (0 = none); the shell closes after 1.5× this without
    /// a packet [MQTT-3.1.2-24].
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// Input came from the client at `now` (bytes read: a packet, several, or part of one): the
    /// keep alive counts again from here [MQTT-3.1.2-24]. Call it once per read, before the
    /// packets read are handled; [`Connection::handle`] does not (it runs once per packet, on
    /// the hot path, and a partial packet counts as input too).
    pub fn note_input(&mut self, now: Instant) {
        if self.keep_alive != 0 {
            self.input_ds = self.input_ds.max(deciseconds(self.broker.clock_origin(), now));
        }
    }

    /// The connection's credential (an access token) expires at `at` (`None`: never): then
    /// [`Connection::handle_timeout`] ends the connection (v5 DISCONNECT 0xA0, will
    /// discarded: SPEC §10).
    pub fn set_credential_expiry(&mut self, at: Option<Instant>) {
        match (at, &mut self.extras) {
            (None, None) => {}
            (None, Some(e)) => e.credential_expiry = None,
            (Some(_), e) => e.get_or_insert_with(Default::default).credential_expiry = at,
        }
    }

    /// When the keep alive runs out without input: 1.5 × the keep alive after the last input
    /// [MQTT-3.1.2-24]; none when the keep alive is 0.
    fn keep_alive_deadline(&self) -> Option<Instant> {
        if self.keep_alive == 0 {
            return None;
        }
        let ms = u64::from(self.input_ds) * 100 + u64::from(self.keep_alive) * 1500;
        self.broker.clock_origin().checked_add(Duration::from_millis(ms))
    }

    /// The next moment the core must be told about ([`Connection::handle_timeout`]): the
    /// earlier of the keep alive's end and the credential's expiry; `None` when neither
    /// applies. Changes with input ([`Connection::note_input`]) and
    /// [`Connection::set_credential_expiry`]: ask again after each.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let credential = self.extras.as_ref().and_then(|e| e.credential_expiry);
        match (self.keep_alive_deadline(), credential) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed to `now`: when the keep alive ran out (no packet within 1.5 × the keep
    /// alive: DISCONNECT 0x8D, the will published [MQTT-3.1.2-24]) or the credential expired
    /// (DISCONNECT 0xA0 Maximum connect time, the will discarded: SPEC §10), returns the
    /// [`Close`] (the keep alive is checked first). `Ok` when nothing is due yet (an early or
    /// spurious timer).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut BytesMut) -> Result<(), Close> {
        if self.keep_alive_deadline().is_some_and(|d| now >= d) {
            return Err(self.keep_alive_timeout(out));
        }
        if self.extras.as_ref().and_then(|e| e.credential_expiry).is_some_and(|d| now >= d) {
            let mut close = self.fail(out, ReasonCode::MAXIMUM_CONNECT_TIME);
            close.publish_will = false;
            return Err(close);
        }
        Ok(())
    }

    /// The client identifier (assigned if the client sent none).
    pub fn client_id(&self) -> &Arc<str> {
        // The session's: a connection's client id is its session's key.
        &self.session.client_id
    }

    /// The session's expiry interval now (seconds; 0: the session ends with the connection):
    /// the CONNECT's, or a DISCONNECT's that changed it.
    pub fn session_expiry(&self) -> u32 {
        self.session.state.lock().expiry_interval
    }

    /// The principal this connection authenticated as (shared with its session; the shell's
    /// registry of live connections keeps a clone).
    pub fn principal(&self) -> &Arc<Principal> {
        &self.principal
    }

    /// Write a server DISCONNECT (v5 only; v3 has none) and return the matching [`Close`].
    fn fail(&self, out: &mut BytesMut, reason: ReasonCode) -> Close {
        if self.protocol == Protocol::V5 {
            let mut d = Disconnect::new(reason);
            d.properties.reason_string = Some(reason.description().to_owned());
            let mut p = Packet::Disconnect(d);
            if p.encoded_len(self.protocol) > self.client_max_packet as usize {
                // Never exceed the client's Maximum Packet Size for a reason string [MQTT-3.14.2-3].
                p = Packet::Disconnect(Disconnect::new(reason));
            }
            p.encode(self.protocol, out);
        }
        Close { reason, publish_will: true }
    }

    /// The connection sent bytes that do not decode: write the DISCONNECT that reports it.
    pub fn decode_error(&self, e: &DecodeError, out: &mut BytesMut) -> Close {
        self.fail(out, e.reason_code())
    }

    /// No packet within 1.5× keep alive.
    pub fn keep_alive_timeout(&self, out: &mut BytesMut) -> Close {
        self.fail(out, ReasonCode::KEEP_ALIVE_TIMEOUT)
    }

    /// The server is shutting down.
    pub fn shutdown(&self, out: &mut BytesMut) -> Close {
        self.fail(out, ReasonCode::SERVER_SHUTTING_DOWN)
    }

    /// The server ends the connection for `reason` (v5: DISCONNECT with it), e.g. 0xA0 when
    /// the access token expired or 0x87 when it was revoked. The will is published.
    pub fn disconnect(&self, out: &mut BytesMut, reason: ReasonCode) -> Close {
        self.fail(out, reason)
    }

    fn authorize(&self, action: Action<'_>) -> Decision {
        self.authorize_with(self.broker.authorizer().as_ref(), action)
    }

    /// [`Self::authorize`] with a policy the caller already holds.
    fn authorize_with(&self, authz: &dyn Authorizer, action: Action<'_>) -> Decision {
        let d = authz.authorize(&self.principal, &self.session.client_id, action);
        if !d.is_allowed() {
            let what = match action {
                Action::Publish { .. } => crate::metrics::Denied::Publish,
                Action::Subscribe { .. } => crate::metrics::Denied::Subscribe,
                Action::Receive { .. } => crate::metrics::Denied::Receive,
            };
            self.broker.stats.deny(what, 1);
        }
        d
    }

    /// Keep a retained message this connection published, within its principal's quotas (and
    /// the broker's): the store ticket goes with the acknowledgement. A refusal is counted and
    /// logged (once per episode) and returned.
    fn retain_published(&mut self, msg: &Arc<Message>) -> Result<(), Quota> {
        let account = self.session.state.lock().queue.account().cloned();
        let source =
            RetainSource::Client { principal: self.principal.clone(), client_id: self.session.client_id.clone() };
        match self.broker.retain(msg, source, account.as_ref()) {
            Ok(ticket) => {
                if msg.qos != QoS::AtMostOnce {
                    self.add_durable(ticket);
                }
                Ok(())
            }
            Err(q) => {
                self.broker.quota_refused(q, account.as_deref(), &self.principal, &self.session.client_id);
                Err(q)
            }
        }
    }

    /// A quota refused this connection's request: counted and logged (see [`crate::quota`]).
    fn quota_refused(&self, q: Quota) {
        let account = self.session.state.lock().queue.account().cloned();
        self.broker.quota_refused(q, account.as_deref(), &self.principal, &self.session.client_id);
    }

    /// Route the messages accepted so far (in order).
    fn route_pending(&mut self) {
        if self.received != 0 {
            flush_received(&self.broker.stats, &mut self.received);
        }
        let Some(p) = self.publishing.as_deref_mut().filter(|p| !p.pending.is_empty()) else { return };
        // Moved, not cloned, into the slice the subscribers' queues share.
        let cap = p.pending.len();
        let batch = Arc::new(Batch::new(std::mem::replace(&mut p.pending, Vec::with_capacity(cap))));
        let before = self.broker.forward_issued();
        self.broker.route_many(&batch, &mut p.wakes, &mut p.route_cache);
        // The acknowledgements wait until what was stored for them is durable (here, and in
        // the cluster when it keeps them).
        let t = std::mem::take(&mut p.wakes.durable);
        if std::mem::take(&mut p.pending_acked) {
            let after = self.broker.forward_issued();
            if after > before {
                let first = p.forward_wait.map_or(before + 1, |(f, _)| f);
                p.forward_wait = Some((first, after));
            }
            self.add_durable(t);
        }
    }

    /// Give back what only a publishing connection needs, once nothing is pending (the shell
    /// calls this before it parks an idle connection).
    pub fn shrink(&mut self) {
        if self
            .publishing
            .as_ref()
            .is_some_and(|p| p.pending.is_empty() && p.wakes.is_empty() && p.forward_wait.is_none())
        {
            self.publishing = None;
        }
    }

    /// Handle one inbound packet.
    pub fn handle(&mut self, packet: Packet, now: Instant, out: &mut BytesMut) -> Result<(), Close> {
        if !matches!(packet, Packet::Publish(_)) {
            // Anything else (a SUBSCRIBE that expects the retained message just published,
            // a DISCONNECT) sees every earlier PUBLISH routed.
            self.route_pending();
        }
        match packet {
            Packet::Publish(p) => self.handle_publish(p, now, out),
            Packet::PubAck(a) => {
                let mut st = self.session.state.lock();
                if let Some(i) = st.inflight_index(a.packet_id) {
                    if st.inflight[i].1.stage == OutStage::AwaitAck && st.inflight[i].1.delivery.qos == QoS::AtLeastOnce
                    {
                        if let Some((_, f)) = st.inflight.remove(i) {
                            self.delivery_done(f.delivery.seq);
                        }
                    }
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                let mut st = self.session.state.lock();
                let found =
                    st.inflight_index(a.packet_id).filter(|&i| st.inflight[i].1.delivery.qos == QoS::ExactlyOnce);
                match found {
                    Some(i) if !a.reason_code.is_success() => {
                        // A failing PUBREC ends the flow [MQTT-4.3.3-?]: no PUBREL.
                        if let Some((_, f)) = st.inflight.remove(i) {
                            self.delivery_done(f.delivery.seq);
                        }
                    }
                    Some(i) => {
                        st.inflight[i].1.stage = OutStage::AwaitComp;
                        let f = &mut st.inflight[i].1;
                        let mut ticket = 0;
                        if f.delivery.seq != 0 {
                            if let Some(store) = self.broker.store() {
                                // PUBREL leaves once "released" is stored: after a crash the
                                // message is never sent again, only its PUBREL [MQTT-4.3.3-?].
                                let stage = Some((a.packet_id, OutStage::AwaitComp));
                                ticket = store_delivery(store, self.session.id(), &mut f.delivery, stage);
                            }
                        }
                        drop(st);
                        self.add_durable(ticket);
                        self.send(&Packet::PubRel(PubAck::new(a.packet_id)), out);
                    }
                    None => {
                        drop(st);
                        let rc = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                        self.send(
                            &Packet::PubRel(PubAck { packet_id: a.packet_id, reason_code: rc, ..Default::default() }),
                            out,
                        );
                    }
                }
                Ok(())
            }
            Packet::PubComp(a) => {
                let mut st = self.session.state.lock();
                if let Some(i) = st.inflight_index(a.packet_id) {
                    if st.inflight[i].1.stage == OutStage::AwaitComp {
                        if let Some((_, f)) = st.inflight.remove(i) {
                            self.delivery_done(f.delivery.seq);
                        }
                    }
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                let (existed, persistent) = {
                    let mut st = self.session.state.lock();
                    (st.inbound_qos2.remove(&a.packet_id), self.session.is_persisted())
                };
                if existed {
                    self.inbound_qos2(a.packet_id, false, persistent);
                }
                let rc = if existed { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
                self.send(
                    &Packet::PubComp(PubAck { packet_id: a.packet_id, reason_code: rc, ..Default::default() }),
                    out,
                );
                Ok(())
            }
            Packet::Subscribe(s) => self.handle_subscribe(s, now, out),
            Packet::Unsubscribe(u) => {
                self.handle_unsubscribe(u, out);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp, out);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.flags & CONNECT_EXPIRY_ZERO != 0 && e != 0 {
                        return Err(self.fail(out, ReasonCode::PROTOCOL_ERROR)); // [MQTT-3.14.2-2]
                    }
                    self.session.state.lock().expiry_interval = e.min(self.broker.config.max_session_expiry);
                }
                // Normal disconnection discards the will; 0x04 asks for it [MQTT-3.14.4-3].
                let publish_will = d.reason_code == ReasonCode::DISCONNECT_WITH_WILL;
                Err(Close { reason: d.reason_code, publish_will })
            }
            // No enhanced authentication was negotiated, so AUTH is a protocol error [MQTT-4.12.0-?].
            Packet::Auth(_) => Err(self.fail(out, ReasonCode::PROTOCOL_ERROR)),
            // A second CONNECT [MQTT-3.1.0-2] and server-to-client packets.
            Packet::Connect(_) | Packet::Connack(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(self.fail(out, ReasonCode::PROTOCOL_ERROR))
            }
        }
    }

    fn send(&self, p: &Packet, out: &mut BytesMut) {
        p.encode(self.protocol, out);
    }

    fn handle_publish(&mut self, p: Publish, now: Instant, out: &mut BytesMut) -> Result<(), Close> {
        let Publish { mut topic, qos, retain, packet_id, properties, payload, .. } = p;
        let cfg = &self.broker.config;
        if self.protocol == Protocol::V5 {
            if !properties.subscription_identifiers.is_empty() {
                return Err(self.fail(out, ReasonCode::PROTOCOL_ERROR)); // [MQTT-3.3.4-6]
            }
            // Read, not taken: taking would allocate an empty list's box (and the alias is
            // never forwarded).
            if let Some(alias) = properties.topic_alias {
                if alias == 0 || alias > cfg.topic_alias_maximum {
                    return Err(self.fail(out, ReasonCode::TOPIC_ALIAS_INVALID));
                    // [MQTT-3.3.2-9/10]
                }
                if topic.is_empty() {
                    match self.extras.as_ref().and_then(|a| a.inbound.get(&alias)) {
                        Some(t) => topic = t.clone(),
                        None => return Err(self.fail(out, ReasonCode::PROTOCOL_ERROR)),
                    }
                } else {
                    self.extras.get_or_insert_with(Default::default).inbound.insert(alias, topic.clone());
                }
            }
        }
        if topic.is_empty() {
            return Err(self.fail(out, ReasonCode::PROTOCOL_ERROR));
        }
        if topic.level_count() > cfg.max_topic_levels {
            return Err(self.fail(out, ReasonCode::TOPIC_NAME_INVALID));
        }
        self.received += 1 << (RECEIVED_BITS * p.qos as u32);
        if self.received & RECEIVED_NEAR_FULL != 0 {
            flush_received(&self.broker.stats, &mut self.received);
        }
        // A device publishing to one topic again and again is authorized once per policy:
        // the generation is read before the policy, so a swap in between is never cached.
        let policy_gen = self.broker.policy_generation();
        let cached = self
            .publishing
            .as_ref()
            .and_then(|p| p.publish_allowed.as_ref())
            .is_some_and(|(t, q, r, g)| *g == policy_gen && *q == qos && *r == retain && *t == topic);
        let decision = if cached {
            Decision::Allow
        } else {
            let authz = self.broker.authorizer();
            let action = Action::publish(&topic, qos, retain);
            let d = crate::broker::authorize_publish(authz.as_ref(), &self.principal, &self.session.client_id, action);
            if !d.is_allowed() {
                self.broker.stats.deny(crate::metrics::Denied::Publish, 1);
            }
            if d.is_allowed() && authz.allows_are_cacheable() {
                self.publishing.get_or_insert_with(Default::default).publish_allowed =
                    Some((topic.clone(), qos, retain, policy_gen));
            }
            d
        };
        let denied = match decision {
            Decision::Allow => false,
            Decision::Deny { disconnect } => {
                if disconnect {
                    return Err(self.fail(out, ReasonCode::NOT_AUTHORIZED));
                }
                true
            }
        };
        let v5 = self.protocol == Protocol::V5;
        let mut ack_code = if denied && v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::SUCCESS };
        if qos == QoS::ExactlyOnce {
            let st = self.session.state.lock();
            if st.inbound_qos2.contains(&packet_id) {
                // A re-sent QoS 2 PUBLISH: acknowledge again, deliver nothing [MQTT-4.3.3-?].
                drop(st);
                self.send(&Packet::PubRec(PubAck::new(packet_id)), out);
                return Ok(());
            }
            if st.inbound_qos2.len() >= usize::from(cfg.receive_maximum) {
                drop(st);
                return Err(self.fail(out, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
                // [MQTT-3.3.4-9]
            }
        }
        let mut accepted = None;
        if !denied && crate::service::is_service_topic(topic.as_str()) {
            // The broker's own topic: handed to its service, never routed nor retained.
            let code = match self.broker.services() {
                Some(s) => s.request(crate::service::ServiceRequest {
                    principal: self.principal.clone(),
                    client_id: self.session.client_id.clone(),
                    topic,
                    payload,
                    correlation_data: properties.correlation_data.clone(),
                }),
                None => ReasonCode::TOPIC_NAME_INVALID,
            };
            if v5 {
                ack_code = code;
            }
        } else if !denied {
            let expires_at = properties.message_expiry_interval.map(|e| now + Duration::from_secs(u64::from(e)));
            let properties = if v5 { Message::forwarded_properties(properties) } else { None };
            let msg = Arc::new(Message {
                topic,
                payload,
                qos,
                retain,
                properties,
                expires_at,
                origin: Some(self.session.id()),
                persisted: Default::default(),
            });
            // A retained message is kept now, within the retained quotas. Over one, a v5
            // QoS 1/2 PUBLISH is refused with 0x97 and not routed (a failing acknowledgement
            // means the message was not accepted); a QoS 0 one (no acknowledgement to tell it
            // in) and a v3 one (no reason codes) are routed all the same, not retained
            // ([MQTT-3.3.1-7] in 3.1.1 lets a server discard a QoS 0 retained message).
            if retain && self.retain_published(&msg).is_err() && v5 && qos != QoS::AtMostOnce {
                ack_code = ReasonCode::QUOTA_EXCEEDED;
            } else {
                accepted = Some(msg);
            }
        }
        if qos == QoS::ExactlyOnce && ack_code.is_success() {
            self.session.state.lock().inbound_qos2.insert(packet_id);
            let persistent = self.session.is_persisted();
            self.inbound_qos2(packet_id, true, persistent);
        }
        if let Some(msg) = accepted {
            let p = self.publishing.get_or_insert_with(Default::default);
            p.pending.push(msg);
            p.pending_acked |= qos != QoS::AtMostOnce;
            if p.pending.len() >= 1024 {
                self.route_pending();
            }
        }
        let ack = PubAck { packet_id, reason_code: ack_code, ..Default::default() };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack), out),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(ack), out),
        }
        Ok(())
    }

    fn handle_subscribe(&mut self, s: Subscribe, now: Instant, out: &mut BytesMut) -> Result<(), Close> {
        let v5 = self.protocol == Protocol::V5;
        let broker = self.broker.clone();
        let cfg = &broker.config;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, opts) in &s.filters {
            if filter.match_filter().split('/').count() > cfg.max_topic_levels {
                return Err(self.fail(out, ReasonCode::TOPIC_FILTER_INVALID));
            }
            let shared = filter.shared().is_some();
            if shared && opts.no_local {
                return Err(self.fail(out, ReasonCode::PROTOCOL_ERROR)); // [MQTT-3.8.3-4]
            }
            // `$share/{group}/{filter}` is authorized on `{filter}` (see `Action::Subscribe`).
            if !self.authorize(Action::subscribe(filter, opts.qos)).is_allowed() {
                codes.push(if v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::V3_SUBACK_FAILURE });
                continue;
            }
            let exists = self.session.state.lock().subscriptions.contains_key(filter.as_str());
            if !exists && self.session.state.lock().subscriptions.len() >= cfg.max_subscriptions_per_client {
                codes.push(if v5 { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::V3_SUBACK_FAILURE });
                continue;
            }
            let existed = match self.broker.subscribe(&self.session, filter, *opts, sub_id) {
                Ok((existed, ticket)) => {
                    self.add_durable(ticket);
                    let issued = self.broker.interest_issued();
                    if issued != 0 {
                        self.extras.get_or_insert_with(Default::default).interest_wait = issued;
                    }
                    existed
                }
                Err(q) => {
                    // The principal's subscriptions are at their quota: this filter is refused,
                    // the others of the packet are still tried (a shorter one may fit).
                    self.quota_refused(q);
                    codes.push(if v5 { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::V3_SUBACK_FAILURE });
                    continue;
                }
            };
            codes.push(ReasonCode(opts.qos as u8));
            let send_retained = !shared
                && match opts.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                let authz = self.broker.authorizer();
                for m in self.broker.retained_matching(filter.match_filter(), authz.as_ref()) {
                    if m.expired(now) || !self.authorize(Action::receive(&m.topic)).is_allowed() {
                        continue;
                    }
                    let qos = m.qos.min(opts.qos);
                    // Retained messages sent on subscribe carry RETAIN = 1 [MQTT-3.3.1-8].
                    retained.push(Delivery {
                        msg: m,
                        qos,
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                        policy_gen: self.broker.policy_generation(),
                        seq: 0,
                        from_retained: true,
                    });
                }
            }
        }
        self.send(
            &Packet::SubAck(SubAck { packet_id: s.packet_id, properties: Default::default(), reason_codes: codes }),
            out,
        );
        if !retained.is_empty() {
            let mut st = self.session.state.lock();
            for d in retained {
                st.queue.push(d);
            }
        }
        Ok(())
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe, out: &mut BytesMut) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let (existed, ticket) = self.broker.unsubscribe(&self.session, f);
            self.add_durable(ticket);
            codes.push(if existed { ReasonCode::SUCCESS } else { ReasonCode::NO_SUBSCRIPTION_EXISTED });
        }
        let reason_codes = if self.protocol == Protocol::V5 { codes } else { Vec::new() };
        self.send(
            &Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, properties: Default::default(), reason_codes }),
            out,
        );
    }

    /// Encode the PUBLISH of a delivery into `out` (per-delivery expiry, aliases, subscription
    /// ids), straight from the shared message: no `Publish` is built per subscriber, and v3
    /// and property-less v5 deliveries copy nothing but the topic and payload bytes. Returns
    /// false (writing nothing) when the packet exceeds the client's Maximum Packet Size
    /// [MQTT-3.1.2-25]; a new outbound alias is recorded only once the packet is written, so a
    /// discarded packet never leaves the client an unknown alias.
    fn encode_delivery(
        &mut self,
        d: DeliveryRef<'_>,
        packet_id: u16,
        dup: bool,
        now: Instant,
        out: &mut BytesMut,
    ) -> bool {
        let mut topic = d.msg.topic.as_str();
        let mut new_alias = None;
        let mut props = None;
        if self.protocol == Protocol::V5 {
            let expiry = d.msg.remaining_expiry(now);
            let mut alias = None;
            if self.client_alias_max > 0 {
                let used = self.extras.as_ref().map(|a| &a.outbound);
                let in_use = used.map_or(0, HashMap::len);
                if let Some(&a) = used.and_then(|o| o.get(&d.msg.topic)) {
                    alias = Some(a);
                    topic = "";
                } else if in_use < usize::from(self.client_alias_max) {
                    let a = in_use as u16 + 1;
                    alias = Some(a);
                    new_alias = Some(a);
                }
            }
            if d.msg.properties.is_some() || expiry.is_some() || !d.sub_ids.is_empty() || alias.is_some() {
                let mut p = d.msg.properties.as_deref().cloned().unwrap_or_default();
                p.message_expiry_interval = expiry;
                p.subscription_identifiers = d.sub_ids.to_vec();
                p.topic_alias = alias;
                props = Some(p);
            }
        }
        let packet = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            properties: props.as_ref(),
            payload: &d.msg.payload,
        };
        if packet.encoded_len(self.protocol) > self.client_max_packet as usize {
            return false;
        }
        packet.encode(self.protocol, out);
        if let Some(a) = new_alias {
            self.extras.get_or_insert_with(Default::default).outbound.insert(d.msg.topic.clone(), a);
        }
        true
    }

    /// Encode queued deliveries into `out` until it holds `budget` bytes, the client's
    /// receive maximum is reached, or the queue is empty. Returns true when more is queued
    /// and only the budget stopped it (call again once `out` has drained). Returns `Err` when
    /// the session was taken over by another connection (DISCONNECT 0x8E written).
    pub fn pull(&mut self, now: Instant, out: &mut BytesMut, budget: usize) -> Result<bool, Close> {
        let session = self.session.clone();
        let broker = self.broker.clone();
        let mut st = session.state.lock();
        if st.conn.as_ref().map(|c| c.generation) != Some(self.generation) {
            drop(st);
            return Err(self.fail(out, ReasonCode::SESSION_TAKEN_OVER)); // [MQTT-3.1.4-3]
        }
        // Counted locally and added once: the shared counter is touched once per batch.
        let mut sent = [0u64; 3];
        if self.flags & RESEND != 0 {
            // Resume: re-send unacknowledged PUBLISH with DUP, and PUBREL [MQTT-4.4.0-1].
            self.flags &= !RESEND;
            let inflight: Vec<(u16, Inflight)> = st.inflight.iter().cloned().collect();
            for (id, f) in inflight {
                match f.stage {
                    OutStage::AwaitAck => {
                        // Sent to an earlier connection, whose grants may have been wider: the
                        // resuming one gets it again only if it may receive it (SPEC §10, as
                        // for what is queued); if not, it is dropped and its packet id freed.
                        if !self.authorize(Action::receive(&f.delivery.msg.topic)).is_allowed() {
                            if let Some(i) = st.inflight_index(id) {
                                st.inflight.remove(i);
                            }
                            self.delivery_done(f.delivery.seq);
                            continue;
                        }
                        if self.encode_delivery(f.delivery.as_ref(), id, true, now, out) {
                            sent[f.delivery.qos as usize] += 1;
                        }
                    }
                    OutStage::AwaitComp => Packet::PubRel(PubAck::new(id)).encode(self.protocol, out),
                }
            }
        }
        let max_inflight = usize::from(self.client_receive_max.min(broker.config.max_inflight));
        let policy_gen = broker.policy_generation();
        // A client that takes plain packets gets runs shared with other subscribers copied
        // from their packets encoded once (see `Frames`).
        let plain = self.protocol != Protocol::V5 || self.client_alias_max == 0;
        while out.len() < budget {
            if let Some(run) = st.queue.front_run().filter(|r| plain && r.policy_gen == policy_gen) {
                if let Some(f) = run.plain_frames(self.protocol).filter(|f| f.max_packet <= self.client_max_packet) {
                    let n = f.fitting(run.start, run.end, budget - out.len());
                    out.extend_from_slice(f.packets(run.start, run.start + n));
                    sent[0] += u64::from(n); // plain frames are QoS 0 (`Run::plain_frames`)
                    st.queue.skip_in_run(n);
                    continue;
                }
            }
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= max_inflight {
                break; // flow control: wait for acknowledgements [MQTT-4.9.0-2]
            }
            if front.msg.expired(now)
                || (front.policy_gen != policy_gen && !self.authorize(Action::receive(&front.msg.topic)).is_allowed())
                || (front.from_retained && !broker.retained_still_deliverable(front.msg))
            {
                // Expired [MQTT-3.3.2-5], queued under a policy that has since changed and
                // now denied, or a retained message whose publisher lost the right (or its
                // standing) since SUBSCRIBE queued it.
                let seq = front.seq;
                st.queue.skip();
                self.delivery_done(seq);
                continue;
            }
            if front.qos == QoS::AtMostOnce {
                // Encoded from the queue as it is (a run's message is not even cloned).
                let (seq, fits) = (front.seq, self.encode_delivery(front, 0, false, now, out));
                st.queue.skip();
                if fits {
                    sent[0] += 1;
                } else {
                    // Too large for the client: discard as if delivered [MQTT-3.1.2-25].
                    self.delivery_done(seq);
                }
                continue;
            }
            let mut d = front.to_owned();
            let Some(packet_id) = st.alloc_packet_id() else { break };
            st.queue.skip();
            if !self.encode_delivery(d.as_ref(), packet_id, false, now, out) {
                self.delivery_done(d.seq);
                continue; // [MQTT-3.1.2-25]
            }
            sent[d.qos as usize] += 1;
            if let Some(store) = broker.store().filter(|_| st.expiry_interval > 0) {
                // The packet id is stored with the message; a QoS 2 PUBLISH leaves only once
                // that is durable, so it is never sent twice under two ids.
                let t = store_delivery(store, self.session.id(), &mut d, Some((packet_id, OutStage::AwaitAck)));
                self.durable = self.durable.max(t);
            }
            st.inflight.push_back((packet_id, Inflight { delivery: d, stage: OutStage::AwaitAck }));
        }
        let more = !st.queue.is_empty() && out.len() >= budget;
        drop(st);
        for (c, n) in broker.stats.messages_sent.iter().zip(sent) {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(more)
    }

    /// Route the messages accepted since the last call and wake their subscribers (one wake
    /// per subscriber per batch). The shell calls this after each batch of inbound packets,
    /// before [`Connection::take_durable`].
    pub fn flush_wakes(&mut self) {
        self.route_pending();
        if let Some(p) = &mut self.publishing {
            p.wakes.flush();
        }
    }

    /// The connection is gone (after a [`Close`], an I/O error or EOF). Publishes the will
    /// unless `close` says the client disconnected normally.
    pub fn closed(mut self, close: Close, now: Instant) {
        self.flush_wakes();
        let will = if close.publish_will { self.will.take().map(|w| *w) } else { None };
        self.broker.disconnected(&self.session, self.generation, will, &self.principal, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_codec::{decode, Properties};
    use warden_policy::AllowAll;

    struct NoWake;
    impl crate::Wake for NoWake {
        fn wake(&self) {}
    }

    /// A v5 connection with keep alive `keep_alive` at `t0`, on a broker made at `t0`.
    fn connect(keep_alive: u16, t0: Instant) -> Connection {
        let broker = Broker::new(crate::BrokerConfig::default(), Arc::new(AllowAll), t0);
        let c = Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive,
            properties: Properties::default(),
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
        };
        let mut out = BytesMut::new();
        broker.connect(c, Principal::anonymous(), Arc::new(NoWake), None, t0, &mut out).expect("connected")
    }

    fn disconnect_reason(out: &mut BytesMut) -> Option<ReasonCode> {
        match decode(out, Protocol::V5, u32::MAX) {
            Ok(Some(Packet::Disconnect(d))) => Some(d.reason_code),
            _ => None,
        }
    }

    /// A parked connection's record holds a `Connection`: at 88 bytes its record stays in
    /// its allocation size class (the keep alive's clock took the room of a `bool`).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_connection_stays_in_its_size_class() {
        assert!(std::mem::size_of::<Connection>() <= 88, "Connection is {} bytes", std::mem::size_of::<Connection>());
    }

    /// [MQTT-3.1.2-24]: no packet within 1.5 × the keep alive ends the connection with 0x8D
    /// and the will; each packet restarts the count.
    #[test]
    fn keep_alive_ends_a_silent_connection_after_one_and_a_half_times_it() {
        let t0 = Instant::now();
        let mut c = connect(10, t0);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(15)));
        let mut out = BytesMut::new();
        assert!(c.handle_timeout(t0 + Duration::from_millis(14_999), &mut out).is_ok());
        assert!(out.is_empty());
        c.note_input(t0 + Duration::from_secs(10));
        c.handle(Packet::PingReq, t0 + Duration::from_secs(10), &mut out).expect("open");
        out.clear();
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(25)));
        assert!(c.handle_timeout(t0 + Duration::from_secs(16), &mut out).is_ok(), "the ping restarted it");
        let close = c.handle_timeout(t0 + Duration::from_secs(25), &mut out).expect_err("timed out");
        assert_eq!(close, Close { reason: ReasonCode::KEEP_ALIVE_TIMEOUT, publish_will: true });
        assert_eq!(disconnect_reason(&mut out), Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
    }

    /// Keep alive 0 turns the mechanism off (MQTT 5 §3.1.2.10): no timeout at all.
    #[test]
    fn keep_alive_zero_has_no_timeout() {
        let t0 = Instant::now();
        let mut c = connect(0, t0);
        assert_eq!(c.poll_timeout(), None);
        let mut out = BytesMut::new();
        assert!(c.handle_timeout(t0 + Duration::from_secs(1_000_000), &mut out).is_ok());
        c.note_input(t0 + Duration::from_secs(5));
        assert_eq!(c.poll_timeout(), None);
    }

    /// Input counted to the tenth of a second, rounded up: the keep alive never ends early.
    #[test]
    fn input_between_tenths_rounds_the_deadline_up() {
        let t0 = Instant::now();
        let mut c = connect(1, t0);
        c.note_input(t0 + Duration::from_millis(1_001));
        let d = c.poll_timeout().expect("a deadline");
        assert!(d >= t0 + Duration::from_millis(2_501) && d <= t0 + Duration::from_millis(2_600), "{d:?}");
        // Input seen out of order never moves the deadline back.
        c.note_input(t0);
        assert_eq!(c.poll_timeout(), Some(d));
    }

    /// SPEC §10: an access token's expiry ends the connection with 0xA0, the will discarded;
    /// the earlier of the two deadlines is the one polled.
    #[test]
    fn credential_expiry_ends_the_connection_without_its_will() {
        let t0 = Instant::now();
        let mut c = connect(60, t0);
        c.set_credential_expiry(Some(t0 + Duration::from_secs(30)));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        let mut out = BytesMut::new();
        assert!(c.handle_timeout(t0 + Duration::from_secs(29), &mut out).is_ok());
        let close = c.handle_timeout(t0 + Duration::from_secs(30), &mut out).expect_err("expired");
        assert_eq!(close, Close { reason: ReasonCode::MAXIMUM_CONNECT_TIME, publish_will: false });
        assert_eq!(disconnect_reason(&mut out), Some(ReasonCode::MAXIMUM_CONNECT_TIME));
        // A credential that no longer expires leaves the keep alive alone.
        c.set_credential_expiry(None);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(90)));
    }

    /// Both due at once: the keep alive is reported (the shell's order: 0x8D, will published).
    #[test]
    fn keep_alive_is_checked_before_the_credential() {
        let t0 = Instant::now();
        let mut c = connect(2, t0);
        c.set_credential_expiry(Some(t0 + Duration::from_secs(3)));
        let close = c.handle_timeout(t0 + Duration::from_secs(5), &mut BytesMut::new()).expect_err("due");
        assert_eq!(close.reason, ReasonCode::KEEP_ALIVE_TIMEOUT);
    }
}
