//! A session's queue of deliveries waiting to be sent.
//!
//! Most of what a subscriber receives comes in runs: consecutive messages of one publisher's
//! batch on one topic, which share everything a delivery carries but the message itself (the
//! subscription's QoS, Retain As Published, subscription identifiers, the policy generation).
//! Such a run is queued as one entry that shares the publisher's slice of messages
//! ([`Run`]): queueing a batch of N messages for S subscribers is S entries and S reference
//! counts, not N × S. The per-message reference count on a message shared by subscribers on
//! both cores was the largest cost of a fan-out (its cache line bounced between the cores).
//! Deliveries that need their own state (a sequence number in the store, a retained message
//! sent on subscribe, a restored session's queue) are single entries, and so are short parts
//! of a batch (see `SHARED_PART_MIN` in the broker).
//!
//! A batch queued for several sessions also keeps its plain QoS 0 PUBLISH packets, encoded
//! once per protocol by the first subscriber that needs them ([`Frames`]): the others copy
//! whole runs of packets into their write buffers without touching the messages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use mqtt_codec::{Protocol, PublishRef, QoS};
use parking_lot::{Mutex, MutexGuard};

use crate::message::Message;
use crate::quota::Usage;
use crate::session::Delivery;

/// A publisher's batch of messages (or the part of one that a set of subscribers receives),
/// shared by the runs of every subscriber.
pub struct Batch {
    msgs: Vec<Arc<Message>>,
    /// `cost[i]` is the queue charge of messages `0..i`.
    cost: Vec<u64>,
    /// How many sessions it was queued for (set while it is routed).
    fanout: AtomicU32,
    /// The QoS 0 PUBLISH packets of the messages, encoded once for every subscriber, per
    /// protocol (3.1.1, 5.0); `None` when they cannot be shared (see [`Frames`]).
    frames: [OnceLock<Option<Frames>>; 2],
}

/// The messages of a [`Batch`] as plain QoS 0 PUBLISH packets, back to back: no DUP, no
/// RETAIN, no packet id and (5.0) no properties. Only a batch whose messages carry no
/// properties and no expiry has them; a delivery that needs a RETAIN flag, a QoS above 0,
/// a subscription identifier or a topic alias is encoded on its own.
pub struct Frames {
    buf: BytesMut,
    /// `ends[i]`: where the packet of message `i` ends in `buf`.
    ends: Vec<u32>,
    /// Largest packet (checked against the client's Maximum Packet Size).
    pub max_packet: u32,
    /// Some message has the RETAIN flag.
    pub any_retain: bool,
    /// Every message was published at QoS 0.
    pub all_qos0: bool,
}

impl Frames {
    /// Where the packet of message `i` starts in `buf`.
    fn start_of(&self, i: u32) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i as usize - 1] as usize
        }
    }

    /// The packets of messages `start..end`.
    pub fn packets(&self, start: u32, end: u32) -> &[u8] {
        &self.buf[self.start_of(start)..self.start_of(end)]
    }

    /// How many packets from `start` (at most up to `end`) fit in `room` bytes; at least one.
    pub fn fitting(&self, start: u32, end: u32, room: usize) -> u32 {
        let from = self.start_of(start);
        let ends = &self.ends[start as usize..end as usize];
        (ends.partition_point(|&e| e as usize - from <= room) as u32).max(1)
    }
}

impl Batch {
    /// A batch of `msgs`, in order.
    pub fn new(msgs: Vec<Arc<Message>>) -> Batch {
        let mut cost = Vec::with_capacity(msgs.len() + 1);
        let mut sum = 0;
        cost.push(0);
        for m in &msgs {
            sum += m.cost();
            cost.push(sum);
        }
        Batch { msgs, cost, fanout: AtomicU32::new(0), frames: Default::default() }
    }

    /// The messages.
    pub fn messages(&self) -> &[Arc<Message>] {
        &self.msgs
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Record that it is queued for `n` sessions.
    pub(crate) fn set_fanout(&self, n: usize) {
        self.fanout.store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// True when it was queued for more than one session: then its packets are worth
    /// encoding once for all of them ([`Batch::frames`]); a lone subscriber is better served
    /// by encoding straight into its write buffer.
    pub fn is_shared(&self) -> bool {
        self.fanout.load(Ordering::Relaxed) > 1
    }

    /// Queue charge of messages `start..end`.
    pub fn cost(&self, start: u32, end: u32) -> u64 {
        self.cost[end as usize] - self.cost[start as usize]
    }

    /// The shared QoS 0 packets for protocol `v` (encoded by the first caller).
    pub fn frames(&self, v: Protocol) -> Option<&Frames> {
        self.frames[usize::from(v.is_v5())].get_or_init(|| self.encode_frames(v)).as_ref()
    }

    fn encode_frames(&self, v: Protocol) -> Option<Frames> {
        if self.msgs.iter().any(|m| m.properties.is_some() || m.expires_at.is_some()) {
            return None;
        }
        let mut f = Frames {
            buf: BytesMut::new(),
            ends: Vec::with_capacity(self.msgs.len()),
            max_packet: 0,
            any_retain: false,
            all_qos0: true,
        };
        f.buf.reserve(self.msgs.iter().map(|m| m.cost() as usize + 8).sum());
        for m in &self.msgs {
            let before = f.buf.len();
            plain_publish(m).encode(v, &mut f.buf);
            let len = u32::try_from(f.buf.len() - before).ok()?;
            f.max_packet = f.max_packet.max(len);
            f.ends.push(u32::try_from(f.buf.len()).ok()?);
            f.any_retain |= m.retain;
            f.all_qos0 &= m.qos == QoS::AtMostOnce;
        }
        Some(f)
    }
}

/// A message as a plain QoS 0 PUBLISH (see [`Frames`]).
fn plain_publish(m: &Message) -> PublishRef<'_> {
    PublishRef {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: m.topic.as_str(),
        packet_id: 0,
        properties: None,
        payload: &m.payload,
    }
}

/// Consecutive messages of a publisher's batch for one subscriber: `batch[start..end]`.
pub struct Run {
    /// The publisher's messages (shared by every subscriber of the run).
    pub batch: Arc<Batch>,
    /// First message still queued.
    pub start: u32,
    /// One past the last.
    pub end: u32,
    /// Highest QoS of the matching subscriptions (a delivery gets the lower of this and the
    /// message's).
    pub qos: QoS,
    /// Retain As Published on a matching subscription.
    pub rap: bool,
    /// v5 Subscription Identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
    /// The policy generation `receive` was authorized under.
    pub policy_gen: u64,
}

impl Run {
    /// Number of messages.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// True when no message is left.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The messages.
    pub fn messages(&self) -> &[Arc<Message>] {
        &self.batch.msgs[self.start as usize..self.end as usize]
    }

    /// Queue charge of the messages.
    pub fn cost(&self) -> u64 {
        self.batch.cost(self.start, self.end)
    }

    /// The shared packets of this run, when its batch went to several sessions and every
    /// delivery in it is a plain QoS 0 PUBLISH (see [`Frames`]) for a client of protocol `v`
    /// that uses no topic aliases.
    pub fn plain_frames(&self, v: Protocol) -> Option<&Frames> {
        if !self.batch.is_shared() || (!self.sub_ids.is_empty() && v.is_v5()) {
            return None;
        }
        let f = self.batch.frames(v)?;
        ((self.qos == QoS::AtMostOnce || f.all_qos0) && !(self.rap && f.any_retain)).then_some(f)
    }

    /// The same run over `start..end` (absolute indices into `msgs`).
    fn slice(&self, start: u32, end: u32) -> Run {
        Run {
            batch: self.batch.clone(),
            start,
            end,
            qos: self.qos,
            rap: self.rap,
            sub_ids: self.sub_ids.clone(),
            policy_gen: self.policy_gen,
        }
    }

    /// The delivery of message `msg` of this run.
    pub(crate) fn delivery_ref<'a>(&'a self, msg: &'a Arc<Message>) -> DeliveryRef<'a> {
        DeliveryRef::of(msg, self.qos, self.rap, &self.sub_ids, self.policy_gen)
    }

    /// Split into the runs of the messages `keep` accepts (in order; a rejected message ends
    /// a run). The common case, everything kept, returns the run itself without cloning.
    pub(crate) fn retain_split(self, mut keep: impl FnMut(&Message) -> bool) -> Vec<Run> {
        let mut out = Vec::new();
        let mut seg = self.start;
        for i in self.start..self.end {
            if !keep(&self.batch.msgs[i as usize]) {
                if seg < i {
                    out.push(self.slice(seg, i));
                }
                seg = i + 1;
            }
        }
        if seg == self.start {
            out.push(self);
        } else if seg < self.end {
            out.push(self.slice(seg, self.end));
        }
        out
    }
}

/// What a publisher's batch offers one session ([`crate::session::Session::enqueue`]).
pub enum Offer {
    /// A run of the batch.
    Run(Run),
    /// A single delivery (a short part of a batch is cheaper so than as a shared slice).
    One(Delivery),
}

impl Offer {
    /// Deliveries offered.
    pub fn len(&self) -> usize {
        match self {
            Offer::Run(r) => r.len(),
            Offer::One(_) => 1,
        }
    }

    /// True when nothing is offered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum Entry {
    One(Delivery),
    Run(Run),
}

/// A delivery at the front of the queue, borrowed.
#[derive(Clone, Copy)]
pub struct DeliveryRef<'a> {
    /// The message.
    pub msg: &'a Arc<Message>,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// v5 Subscription Identifiers.
    pub sub_ids: &'a [u32],
    /// The policy generation `receive` was authorized under.
    pub policy_gen: u64,
    /// Sequence number in the store (0: not stored).
    pub seq: u64,
    /// Taken from the retained store on SUBSCRIBE (see [`Delivery::from_retained`]).
    pub from_retained: bool,
}

impl<'a> DeliveryRef<'a> {
    /// The delivery of `msg` to a session whose matching subscriptions allow `max_qos`, with
    /// Retain As Published `rap`: the lower of the two QoS, RETAIN only as published with RAP
    /// [MQTT-3.3.1-12/13].
    pub fn of(msg: &'a Arc<Message>, max_qos: QoS, rap: bool, sub_ids: &'a [u32], policy_gen: u64) -> Self {
        DeliveryRef {
            msg,
            qos: max_qos.min(msg.qos),
            retain: rap && msg.retain,
            sub_ids,
            policy_gen,
            seq: 0,
            from_retained: false,
        }
    }

    /// An owned delivery (clones the message's `Arc`).
    pub fn to_owned(self) -> Delivery {
        Delivery {
            msg: self.msg.clone(),
            qos: self.qos,
            retain: self.retain,
            sub_ids: self.sub_ids.to_vec(),
            policy_gen: self.policy_gen,
            seq: self.seq,
            from_retained: self.from_retained,
        }
    }
}

impl Delivery {
    /// Borrowed view.
    pub fn as_ref(&self) -> DeliveryRef<'_> {
        DeliveryRef {
            msg: &self.msg,
            qos: self.qos,
            retain: self.retain,
            sub_ids: &self.sub_ids,
            policy_gen: self.policy_gen,
            seq: self.seq,
            from_retained: self.from_retained,
        }
    }
}

/// The bytes queued for one principal (kind and name) across all its sessions, shared by
/// their queues (`Arc`): each queue adds what it charges and takes back what it releases, so
/// the figure is the sum of those queues' charges, kept with one relaxed atomic per push or
/// release (no lock, no walk over the sessions). The broker keeps one per principal that has
/// a session or a retained message and refuses deliveries that would take it over
/// `max_queued_bytes_per_principal`.
///
/// Beside it, what the principal's other quotas bound ([`Usage`]: persistent sessions,
/// subscriptions, retained messages), changed only on cold paths (see [`crate::quota`]).
#[derive(Debug, Default)]
pub struct Account {
    bytes: AtomicU64,
    /// Its roles' `max_queued_bytes` override plus one (0: none, the configured bound applies).
    queued_max: AtomicU64,
    /// When a refusal was last logged (seconds from the broker's start, plus one; 0 = never).
    logged_at: AtomicU64,
    /// Sessions, subscriptions and retained messages held. Lock order: taken last.
    usage: Mutex<Usage>,
}

impl Account {
    /// What the principal holds that its quotas bound (locked; taken last, held briefly).
    pub fn usage(&self) -> MutexGuard<'_, Usage> {
        self.usage.lock()
    }

    /// Bytes charged to the principal's queues now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Would `cost` more bytes take the principal over its bound (`default`, the configured
    /// `max_queued_bytes_per_principal`, unless its roles override it)?
    pub fn over(&self, cost: u64, default: u64) -> bool {
        self.bytes().saturating_add(cost) > self.max_bytes(default)
    }

    /// Its bound on queued bytes: its roles' override, else `default`.
    pub fn max_bytes(&self, default: u64) -> u64 {
        match self.queued_max.load(Ordering::Relaxed) {
            0 => default,
            m => m - 1,
        }
    }

    /// Its roles' quota overrides (policy store) from now on.
    pub fn set_overrides(&self, q: warden_policy::Quotas) {
        self.queued_max.store(q.max_queued_bytes.map_or(0, |m| m.saturating_add(1).max(1)), Ordering::Relaxed);
        self.usage.lock().overrides = q;
    }

    /// True at most once per `interval_s` seconds (`now_s`: seconds from any fixed origin):
    /// a principal over its bound is logged once, not once per delivery refused.
    pub fn should_log(&self, now_s: u64, interval_s: u64) -> bool {
        let last = self.logged_at.load(Ordering::Relaxed);
        (last == 0 || now_s + 1 >= last + interval_s)
            && self.logged_at.compare_exchange(last, now_s + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// The deliveries waiting for a session, in order, with their count and the bytes charged.
/// The charge is also counted in the owner's [`Account`] when the queue has one (released
/// when the queue is cleared or dropped).
#[derive(Default)]
pub struct Queue {
    entries: VecDeque<Entry>,
    len: usize,
    bytes: u64,
    account: Option<Arc<Account>>,
}

impl Queue {
    /// Deliveries queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes charged (payload and topic of each delivery).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The principal's account this queue charges, if any.
    pub fn account(&self) -> Option<&Arc<Account>> {
        self.account.as_ref()
    }

    /// Charge this queue to `account` from now on (what it holds moves over with it).
    pub fn set_account(&mut self, account: Option<Arc<Account>>) {
        if let Some(old) = &self.account {
            old.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        }
        if let Some(new) = &account {
            new.bytes.fetch_add(self.bytes, Ordering::Relaxed);
        }
        self.account = account;
    }

    /// Would `cost` more bytes take the owner's account over `max`? (False without one.)
    pub fn account_over(&self, cost: u64, max: u64) -> bool {
        self.account.as_ref().is_some_and(|a| a.over(cost, max))
    }

    fn charge(&mut self, cost: u64) {
        self.bytes += cost;
        if let Some(a) = &self.account {
            a.bytes.fetch_add(cost, Ordering::Relaxed);
        }
    }

    fn release(&mut self, cost: u64) {
        let cost = cost.min(self.bytes);
        self.bytes -= cost;
        if let Some(a) = self.account.as_ref().filter(|_| cost > 0) {
            a.bytes.fetch_sub(cost, Ordering::Relaxed);
        }
    }

    /// Queue one delivery.
    pub fn push(&mut self, d: Delivery) {
        self.len += 1;
        self.charge(d.msg.cost());
        self.entries.push_back(Entry::One(d));
    }

    /// Queue a run.
    pub fn push_run(&mut self, r: Run) {
        if r.is_empty() {
            return;
        }
        self.len += r.len();
        self.charge(r.cost());
        self.entries.push_back(Entry::Run(r));
    }

    /// Mark every queued delivery to be authorized again before it is sent (the session's
    /// grants changed: see [`crate::session::REAUTHORIZE`]).
    pub fn reauthorize_all(&mut self) {
        for e in &mut self.entries {
            match e {
                Entry::One(d) => d.policy_gen = crate::session::REAUTHORIZE,
                Entry::Run(r) => r.policy_gen = crate::session::REAUTHORIZE,
            }
        }
    }

    /// Drop everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
        self.release(self.bytes);
    }

    /// The next delivery, borrowed.
    pub fn front(&self) -> Option<DeliveryRef<'_>> {
        match self.entries.front()? {
            Entry::One(d) => Some(d.as_ref()),
            Entry::Run(r) => Some(r.delivery_ref(&r.batch.msgs[r.start as usize])),
        }
    }

    /// The run at the front, if the next delivery is part of one.
    pub fn front_run(&self) -> Option<&Run> {
        match self.entries.front()? {
            Entry::Run(r) => Some(r),
            Entry::One(_) => None,
        }
    }

    /// Remove the first `n` deliveries of the run at the front (see [`Queue::front_run`]).
    pub fn skip_in_run(&mut self, n: u32) {
        let Some(Entry::Run(r)) = self.entries.front_mut() else { return };
        let n = n.min(r.end - r.start);
        let cost = r.batch.cost(r.start, r.start + n);
        r.start += n;
        if r.is_empty() {
            self.entries.pop_front();
        }
        self.len -= n as usize;
        self.release(cost);
    }

    /// Remove the next delivery, releasing its charge.
    pub fn skip(&mut self) {
        match self.entries.front() {
            None => {}
            Some(Entry::Run(_)) => self.skip_in_run(1),
            Some(Entry::One(_)) => {
                if let Some(Entry::One(d)) = self.entries.pop_front() {
                    self.len -= 1;
                    self.release(d.msg.cost());
                }
            }
        }
    }
}

impl Drop for Queue {
    /// A session that goes away gives its charge back to its principal.
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &'static [u8], qos: QoS, retain: bool) -> Arc<Message> {
        Arc::new(Message::for_test(topic, payload, qos, retain))
    }

    /// The next delivery, owned, and removed (as `Connection::pull` takes a QoS 1 one).
    fn take(q: &mut Queue) -> Option<Delivery> {
        let d = q.front()?.to_owned();
        q.skip();
        Some(d)
    }

    fn run(batch: &Arc<Batch>, qos: QoS) -> Run {
        Run { batch: batch.clone(), start: 0, end: batch.len() as u32, qos, rap: true, sub_ids: vec![7], policy_gen: 3 }
    }

    #[test]
    fn runs_and_single_deliveries_come_out_in_order_with_their_charge() {
        let batch = Arc::new(Batch::new(vec![
            msg("a", b"12", QoS::AtLeastOnce, true),
            msg("a", b"345", QoS::AtMostOnce, false),
        ]));
        let mut q = Queue::default();
        q.push(Delivery {
            msg: msg("b", b"x", QoS::AtLeastOnce, false),
            qos: QoS::AtLeastOnce,
            retain: true,
            sub_ids: vec![],
            policy_gen: 1,
            seq: 9,
            from_retained: false,
        });
        q.push_run(run(&batch, QoS::AtLeastOnce));
        assert_eq!((q.len(), q.bytes()), (3, 2 + 3 + 4));

        let f = q.front().unwrap();
        assert_eq!((f.msg.topic.as_str(), f.seq, f.retain), ("b", 9, true));
        let d = take(&mut q).unwrap();
        assert_eq!(d.seq, 9);
        assert_eq!((q.len(), q.bytes()), (2, 7));

        // The run: QoS is the lower of the subscription's and the message's; RETAIN only
        // with Retain As Published and the message's flag; the run's identifiers.
        let f = q.front().unwrap();
        assert_eq!((f.qos, f.retain, f.sub_ids, f.policy_gen), (QoS::AtLeastOnce, true, &[7][..], 3));
        q.skip();
        let d = take(&mut q).unwrap();
        assert_eq!(
            (d.qos, d.retain, d.sub_ids.as_slice(), &d.msg.payload[..]),
            (QoS::AtMostOnce, false, &[7][..], &b"345"[..])
        );
        assert!(q.is_empty() && q.front().is_none() && take(&mut q).is_none());
        assert_eq!(q.bytes(), 0);
        q.skip(); // on an empty queue: nothing
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn retain_split_keeps_order_and_splits_around_rejected_messages() {
        let batch = Arc::new(Batch::new(
            (0..6).map(|i| msg("t", [b"0", b"1", b"2", b"3", b"4", b"5"][i], QoS::AtMostOnce, false)).collect(),
        ));
        let payloads = |rs: &[Run]| -> Vec<Vec<u8>> {
            rs.iter().map(|r| r.messages().iter().map(|m| m.payload[0]).collect()).collect()
        };
        let all = run(&batch, QoS::AtMostOnce).retain_split(|_| true);
        assert_eq!(payloads(&all), vec![b"012345".to_vec()]);
        let some = run(&batch, QoS::AtMostOnce).retain_split(|m| !matches!(m.payload[0], b'0' | b'2' | b'3' | b'5'));
        assert_eq!(payloads(&some), vec![b"1".to_vec(), b"4".to_vec()]);
        let none = run(&batch, QoS::AtMostOnce).retain_split(|_| false);
        assert!(none.is_empty());
        let mut sub = run(&batch, QoS::AtMostOnce);
        sub.start = 2;
        sub.end = 5;
        let tail = sub.retain_split(|m| m.payload[0] != b'2');
        assert_eq!(payloads(&tail), vec![b"34".to_vec()]);
    }

    #[test]
    fn frames_are_each_message_encoded_alone_back_to_back() {
        let batch = Batch::new(vec![
            msg("a/b", b"12", QoS::AtMostOnce, false),
            msg("a/b", &[7; 300], QoS::AtMostOnce, true),
            msg("a/b", b"", QoS::AtMostOnce, false),
        ]);
        for v in [Protocol::V311, Protocol::V5] {
            let f = batch.frames(v).expect("plain messages have frames");
            let mut each = Vec::new();
            for m in batch.messages() {
                let mut b = BytesMut::new();
                plain_publish(m).encode(v, &mut b);
                each.push(b.to_vec());
            }
            assert_eq!(f.packets(0, 3), each.concat());
            assert_eq!(f.packets(1, 2), each[1]);
            assert_eq!(f.packets(2, 3), each[2]);
            assert_eq!(f.max_packet as usize, each[1].len());
            assert!(f.any_retain && f.all_qos0);
            // What fits: whole packets only, and always at least one.
            assert_eq!(f.fitting(0, 3, each[0].len()), 1);
            assert_eq!(f.fitting(0, 3, each[0].len() + each[1].len() - 1), 1);
            assert_eq!(f.fitting(0, 3, each[0].len() + each[1].len()), 2);
            assert_eq!(f.fitting(0, 3, 1 << 20), 3);
            assert_eq!(f.fitting(1, 3, 1), 1);
            assert_eq!(f.fitting(0, 2, 1 << 20), 2);
        }
        assert_eq!(batch.cost(0, 3), 5 + 303 + 3);
        assert_eq!(batch.cost(1, 2), 303);
    }

    #[test]
    fn a_run_uses_the_shared_frames_only_when_every_delivery_is_plain() {
        let with = |f: fn(&mut Message)| {
            let mut m = Message::clone(&msg("t", b"p", QoS::AtMostOnce, false));
            f(&mut m);
            Arc::new(Batch::new(vec![msg("t", b"o", QoS::AtMostOnce, false), Arc::new(m)]))
        };
        let plain = |b: &Arc<Batch>, qos, rap, ids: Vec<u32>, v| {
            let r = Run { batch: b.clone(), start: 0, end: 2, qos, rap, sub_ids: ids, policy_gen: 0 };
            r.plain_frames(v).is_some()
        };
        let b = with(|_| {});
        assert!(
            !plain(&b, QoS::AtMostOnce, false, vec![], Protocol::V5),
            "a batch for one session is encoded into its buffer"
        );
        b.set_fanout(2);
        assert!(plain(&b, QoS::AtMostOnce, false, vec![], Protocol::V5));
        assert!(plain(&b, QoS::AtLeastOnce, true, vec![], Protocol::V5), "QoS 0 messages, no RETAIN: plain");
        assert!(!plain(&b, QoS::AtMostOnce, false, vec![3], Protocol::V5), "a subscription identifier");
        assert!(plain(&b, QoS::AtMostOnce, false, vec![3], Protocol::V311), "3.1.1 sends no identifier");

        let retained = with(|m| m.retain = true);
        retained.set_fanout(2);
        assert!(plain(&retained, QoS::AtMostOnce, false, vec![], Protocol::V5));
        assert!(!plain(&retained, QoS::AtMostOnce, true, vec![], Protocol::V5), "Retain As Published");

        let qos1 = with(|m| m.qos = QoS::AtLeastOnce);
        qos1.set_fanout(2);
        assert!(plain(&qos1, QoS::AtMostOnce, false, vec![], Protocol::V5));
        assert!(!plain(&qos1, QoS::AtLeastOnce, false, vec![], Protocol::V5), "a QoS 1 delivery");

        for b in [
            with(|m| m.expires_at = Some(std::time::Instant::now())),
            with(|m| {
                m.properties =
                    Some(Box::new(mqtt_codec::Properties { content_type: Some("x".into()), ..Default::default() }))
            }),
        ] {
            b.set_fanout(2);
            assert!(!plain(&b, QoS::AtMostOnce, false, vec![], Protocol::V311), "expiry or properties: per delivery");
            assert!(!plain(&b, QoS::AtMostOnce, false, vec![], Protocol::V5));
        }
    }

    #[test]
    fn skipping_in_a_run_releases_its_charge() {
        let batch = Arc::new(Batch::new((0..4).map(|_| msg("t", b"12", QoS::AtMostOnce, false)).collect()));
        let mut q = Queue::default();
        q.push_run(run(&batch, QoS::AtMostOnce));
        q.push(Delivery {
            msg: msg("u", b"1", QoS::AtMostOnce, false),
            qos: QoS::AtMostOnce,
            retain: false,
            sub_ids: vec![],
            policy_gen: 0,
            seq: 0,
            from_retained: false,
        });
        assert_eq!((q.len(), q.bytes()), (5, 14));
        q.skip_in_run(3);
        assert_eq!((q.len(), q.bytes()), (2, 5));
        assert_eq!(q.front_run().map(|r| (r.start, r.end)), Some((3, 4)));
        q.skip_in_run(9); // never past the run
        assert_eq!((q.len(), q.bytes()), (1, 2));
        assert!(q.front_run().is_none());
        q.skip_in_run(1); // not a run: nothing
        assert_eq!(q.front().unwrap().msg.topic.as_str(), "u");
    }
}
