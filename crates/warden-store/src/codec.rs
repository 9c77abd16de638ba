//! On-disk record formats. Every value starts with a format version byte, so a later version
//! can read (or knowingly drop) what an older one wrote.
//!
//! - message: `[1][expires_at: u64 BE unix ms, 0 = never][MQTT 5 PUBLISH packet]`.
//! - retained: `[2][expires_at][n: u16 BE][n bytes: publisher JSON ([`PublisherJson`]: kind,
//!   name, client id), n = 0 when unknown][MQTT 5 PUBLISH packet]`. A version 1 retained record
//!   (the message format, written before publishers were stored) reads as published by an
//!   unknown publisher ([`RetainSource::Unknown`]).
//!   The PUBLISH encoding is the codec's own, so topic and property validation on the way back
//!   in is the same as for a packet from the network: a damaged record fails to decode instead
//!   of producing garbage.
//! - delivery: `[1][msg id u64][qos u8][retain u8][stage u8: 0 queued, 1 await ack, 2 await comp]
//!   [packet id u16][n u16][n × subscription id u32]` (big-endian). Version 2 (issue 24: the
//!   one delivery of a message carries it, one record instead of two) is the same followed by
//!   the message's own record (`[1][expires_at][PUBLISH]`); version 1 records stay readable.
//! - session: `[2]` followed by JSON ([`SessionJson`]) without subscriptions: they are
//!   records of their own. A version 1 session record (written before) holds its
//!   subscriptions in its JSON (`subs`); it is read as it is, and the store moves them into
//!   subscription records when it opens.
//! - subscription, keyed by (session id, filter): `[1][options u8][has id u8][id u32]`
//!   (big-endian; the id only when `has id` is 1). Its filter is the key, validated on the
//!   way back in like a SUBSCRIBE's.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use mqtt_codec::{decode, Packet, Protocol, Publish, QoS, SubscriptionOptions, TopicFilter};
use serde::{Deserialize, Serialize};
use warden_core::persist::SessionRecord;
use warden_core::retained::RetainSource;
use warden_core::session::{OutStage, Subscription};
use warden_core::Message;
use warden_policy::trust::CredentialSource;
use warden_policy::{Principal, PrincipalKind};

const V1: u8 = 1;
/// Retained records with their publisher; session records without their subscriptions.
const V2: u8 = 2;

/// Converts between the broker's monotonic clock and wall-clock milliseconds.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    now: Instant,
    wall_ms: u64,
}

impl Clock {
    pub(crate) fn now() -> Clock {
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Clock { now: Instant::now(), wall_ms }
    }

    pub(crate) fn to_wall(self, t: Instant) -> u64 {
        match t.checked_duration_since(self.now) {
            Some(ahead) => self.wall_ms.saturating_add(ahead.as_millis() as u64),
            None => self.wall_ms.saturating_sub(self.now.saturating_duration_since(t).as_millis() as u64),
        }
        .max(1)
    }

    /// The instant of wall time `ms`; None when it lies too far in the past to represent.
    pub(crate) fn to_instant(self, ms: u64) -> Option<Instant> {
        if ms >= self.wall_ms {
            self.now.checked_add(Duration::from_millis(ms - self.wall_ms))
        } else {
            self.now.checked_sub(Duration::from_millis(self.wall_ms - ms))
        }
    }

    pub(crate) fn wall_ms(self) -> u64 {
        self.wall_ms
    }
}

/// Why a record could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadRecord(pub(crate) String);

fn bad(s: impl Into<String>) -> BadRecord {
    BadRecord(s.into())
}

pub(crate) fn encode_message(m: &Message, clock: Clock) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(16 + m.topic.as_str().len() + m.payload.len());
    encode_message_into(m, clock, &mut out);
    out.to_vec()
}

/// [`encode_message`] into `out` (cleared first; the writer reuses one buffer per commit).
pub(crate) fn encode_message_into(m: &Message, clock: Clock, out: &mut BytesMut) {
    out.clear();
    out.extend_from_slice(&[V1]);
    out.extend_from_slice(&m.expires_at.map_or(0, |e| clock.to_wall(e)).to_be_bytes());
    let p = Publish {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: m.properties.clone().into(),
        payload: m.payload.clone(),
    };
    Packet::Publish(p).encode(Protocol::V5, out);
}

/// A message record; `Ok(None)` when it has expired.
pub(crate) fn decode_message(b: &[u8], clock: Clock) -> Result<Option<Message>, BadRecord> {
    if b.len() < 9 || b[0] != V1 {
        return Err(bad("unknown message record version or short record"));
    }
    decode_message_body(&b[1..9], &b[9..], clock)
}

/// Who published a retained message, as stored (no token scopes: after a restart a token
/// publisher is checked with no grants of its own).
#[derive(Serialize, Deserialize)]
struct PublisherJson {
    kind: String,
    name: String,
    client_id: String,
}

/// A retained record (version 2: with its publisher).
pub(crate) fn encode_retained(m: &Message, source: &RetainSource, clock: Clock) -> Vec<u8> {
    let publisher = match source {
        RetainSource::Client { principal, client_id } => serde_json::to_vec(&PublisherJson {
            kind: principal.kind.as_str().to_owned(),
            name: principal.name.to_string(),
            client_id: client_id.to_string(),
        })
        .unwrap_or_default(),
        RetainSource::Broker => {
            serde_json::to_vec(&PublisherJson { kind: "broker".into(), name: String::new(), client_id: String::new() })
                .unwrap_or_default()
        }
        RetainSource::Unknown => Vec::new(),
    };
    let n = u16::try_from(publisher.len()).unwrap_or(0);
    let body = encode_message(m, clock);
    let mut out = Vec::with_capacity(body.len() + 2 + usize::from(n));
    out.push(V2);
    out.extend_from_slice(&body[1..9]);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&publisher[..usize::from(n)]);
    out.extend_from_slice(&body[9..]);
    out
}

/// A retained record of either version; `Ok(None)` when it has expired.
pub(crate) fn decode_retained(b: &[u8], clock: Clock) -> Result<Option<(Message, RetainSource)>, BadRecord> {
    match b.first() {
        Some(&V1) => Ok(decode_message(b, clock)?.map(|m| (m, RetainSource::Unknown))),
        Some(&V2) if b.len() >= 11 => {
            let n = usize::from(u16::from_be_bytes([b[9], b[10]]));
            let rest = b.get(11..).filter(|r| r.len() >= n).ok_or_else(|| bad("short retained record"))?;
            let source = if n == 0 { RetainSource::Unknown } else { decode_publisher(&rest[..n])? };
            Ok(decode_message_body(&b[1..9], &rest[n..], clock)?.map(|m| (m, source)))
        }
        _ => Err(bad("unknown retained record version or short record")),
    }
}

fn decode_publisher(b: &[u8]) -> Result<RetainSource, BadRecord> {
    let j: PublisherJson = serde_json::from_slice(b).map_err(|e| bad(format!("retained publisher: {e}")))?;
    let principal = match j.kind.as_str() {
        "broker" => return Ok(RetainSource::Broker),
        "user" => Principal::user(&j.name),
        "certificate" => Principal::certificate(&j.name),
        // No scopes: a credential that cannot be re-derived gets no grants (SPEC §10).
        "token" => Principal::token(&j.name, vec![], vec![]),
        "anonymous" => Principal::anonymous(),
        _ => return Err(bad("retained publisher kind")),
    };
    Ok(RetainSource::Client { principal: Arc::new(principal), client_id: Arc::from(j.client_id.as_str()) })
}

/// The expiry (8 bytes) and PUBLISH packet of a message or retained record.
fn decode_message_body(expires: &[u8], packet: &[u8], clock: Clock) -> Result<Option<Message>, BadRecord> {
    let expires = u64::from_be_bytes(expires.try_into().map_err(|_| bad("short record"))?);
    let mut buf = BytesMut::from(packet);
    let packet = decode(&mut buf, Protocol::V5, u32::MAX).map_err(|e| bad(format!("message: {e}")))?;
    let Some(Packet::Publish(p)) = packet else { return Err(bad("message record is not a PUBLISH")) };
    if !buf.is_empty() || p.topic.is_empty() {
        return Err(bad("message record has trailing bytes or no topic"));
    }
    let expires_at = if expires == 0 {
        None
    } else if expires <= clock.wall_ms() {
        return Ok(None);
    } else {
        clock.to_instant(expires)
    };
    Ok(Some(Message {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: Message::forwarded_properties(p.properties),
        expires_at,
        origin: None,
        persisted: Default::default(),
    }))
}

/// A delivery as stored.
pub(crate) struct DeliveryRec {
    pub msg_id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub stage: Option<(u16, OutStage)>,
    pub sub_ids: Vec<u32>,
}

pub(crate) fn encode_delivery(d: &DeliveryRec) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 4 * d.sub_ids.len());
    encode_delivery_into(d, &mut v);
    v
}

/// [`encode_delivery`] into `v` (cleared first).
pub(crate) fn encode_delivery_into(d: &DeliveryRec, v: &mut Vec<u8>) {
    v.clear();
    v.push(V1);
    v.extend_from_slice(&d.msg_id.to_be_bytes());
    v.push(d.qos as u8);
    v.push(u8::from(d.retain));
    let (stage, pid) = match d.stage {
        None => (0u8, 0u16),
        Some((pid, OutStage::AwaitAck)) => (1, pid),
        Some((pid, OutStage::AwaitComp)) => (2, pid),
    };
    v.push(stage);
    v.extend_from_slice(&pid.to_be_bytes());
    let n = d.sub_ids.len().min(usize::from(u16::MAX));
    v.extend_from_slice(&(n as u16).to_be_bytes());
    for id in &d.sub_ids[..n] {
        v.extend_from_slice(&id.to_be_bytes());
    }
}

/// A delivery record carrying its message (version 2): [`encode_delivery_into`] followed by
/// the message record ([`encode_message_into`], through `mbuf`).
pub(crate) fn encode_delivery_with_message_into(
    d: &DeliveryRec,
    m: &Message,
    clock: Clock,
    mbuf: &mut BytesMut,
    v: &mut Vec<u8>,
) {
    encode_delivery_into(d, v);
    v[0] = V2;
    encode_message_into(m, clock, mbuf);
    v.extend_from_slice(mbuf);
}

/// A delivery record of either version, with the bytes of the message record a version 2
/// record carries (to [`decode_message`]).
pub(crate) fn decode_delivery(b: &[u8]) -> Result<(DeliveryRec, Option<&[u8]>), BadRecord> {
    if b.len() < 16 || (b[0] != V1 && b[0] != V2) {
        return Err(bad("unknown delivery record version or short record"));
    }
    let msg_id = u64::from_be_bytes(b[1..9].try_into().map_err(|_| bad("short"))?);
    let qos = QoS::from_u8(b[9]).filter(|q| *q != QoS::AtMostOnce).ok_or_else(|| bad("delivery QoS"))?;
    let retain = match b[10] {
        0 => false,
        1 => true,
        _ => return Err(bad("delivery retain flag")),
    };
    let pid = u16::from_be_bytes([b[12], b[13]]);
    let stage = match b[11] {
        0 => None,
        1 if pid != 0 => Some((pid, OutStage::AwaitAck)),
        2 if pid != 0 && qos == QoS::ExactlyOnce => Some((pid, OutStage::AwaitComp)),
        _ => return Err(bad("delivery stage")),
    };
    let n = usize::from(u16::from_be_bytes([b[14], b[15]]));
    let end = 16 + 4 * n;
    let message = match b[0] {
        V1 if b.len() == end => None,
        V2 if b.len() > end => Some(&b[end..]),
        _ => return Err(bad("delivery record length")),
    };
    let sub_ids = b[16..end].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((DeliveryRec { msg_id, qos, retain, stage, sub_ids }, message))
}

#[derive(Serialize, Deserialize)]
struct SubJson {
    f: String,
    o: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<u32>,
}

/// A session record's JSON body.
#[derive(Serialize, Deserialize)]
pub(crate) struct SessionJson {
    pub client_id: String,
    kind: String,
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    pub expiry: u32,
    /// Wall-clock ms of the last disconnection (None while it was connected).
    pub disconnected: Option<u64>,
    /// Version 1 only: the subscriptions (version 2 keeps them in records of their own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subs: Vec<SubJson>,
    /// Which kind of credential proved the owner (SPEC §10), so that its grants are
    /// re-derived at load. Absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    src: Option<String>,
}

fn source_from_name(s: &str) -> Option<CredentialSource> {
    Some(match s {
        "anonymous" => CredentialSource::Anonymous,
        "password-file" => CredentialSource::PasswordFile,
        "policy-store" => CredentialSource::StoreUser,
        "certificate" => CredentialSource::Certificate,
        "claim" => CredentialSource::Claim,
        "token" => CredentialSource::Token,
        "lookup" => CredentialSource::Lookup,
        "restored" => CredentialSource::Restored,
        _ => return None,
    })
}

pub(crate) fn encode_session(r: &SessionRecord, clock: Clock) -> Vec<u8> {
    let j = SessionJson {
        client_id: r.client_id.to_string(),
        kind: r.owner.kind.as_str().to_owned(),
        name: r.owner.name.to_string(),
        roles: r.owner.roles.iter().map(|s| s.to_string()).collect(),
        scopes: r.owner.scopes.iter().map(|s| s.to_string()).collect(),
        expiry: r.expiry_interval,
        disconnected: r.disconnected_at.map(|t| clock.to_wall(t)),
        subs: Vec::new(),
        src: Some(r.owner.source.as_str().to_owned()),
    };
    let mut v = vec![V2];
    // Serializing these plain types cannot fail.
    v.extend_from_slice(&serde_json::to_vec(&j).unwrap_or_default());
    v
}

pub(crate) struct DecodedSession {
    pub json: SessionJson,
    pub owner: Principal,
    /// The subscriptions a version 1 record holds (none in version 2), then those of the
    /// subscription records merged in by the loader.
    pub subscriptions: Vec<Subscription>,
}

impl DecodedSession {
    /// The record as written (without subscriptions), for a rewrite.
    pub(crate) fn record(&self, sid: u64, clock: Clock) -> SessionRecord {
        SessionRecord {
            sid,
            client_id: Arc::from(self.json.client_id.as_str()),
            owner: self.owner.clone(),
            expiry_interval: self.json.expiry,
            disconnected_at: self.json.disconnected.and_then(|ms| clock.to_instant(ms)),
        }
    }
}

/// The owner principal of a record, made again from its kind, name, roles, scopes and
/// credential source (`None`: a record that does not say). Grants are re-derived from what can
/// be derived again (SPEC §10): a token's scopes were signed by its issuer; ACL and store rules
/// name the principal. A look-up answer (or a record that does not say where its owner came
/// from, and carries grants) cannot be asked again here: it gets no grants of its own, never
/// "no source names it" (allow all).
pub(crate) fn restore_owner(
    kind: &str,
    name: &str,
    roles: &[String],
    scopes: &[String],
    src: Option<&str>,
) -> Result<Principal, BadRecord> {
    let kind = match kind {
        "user" => PrincipalKind::User,
        "certificate" => PrincipalKind::Certificate,
        "token" => PrincipalKind::Token,
        "anonymous" => PrincipalKind::Anonymous,
        "fallback" => PrincipalKind::Fallback,
        _ => return Err(bad("session owner kind")),
    };
    let mut owner = Principal::anonymous();
    owner.kind = kind;
    owner.name = Arc::from(name);
    owner.roles = roles.iter().map(|s| Arc::from(s.as_str())).collect();
    owner.scopes = scopes.iter().map(|s| Arc::from(s.as_str())).collect();
    owner.source = match src {
        Some(s) => source_from_name(s).ok_or_else(|| bad("session owner credential source"))?,
        None => CredentialSource::Restored,
    };
    let from_unknown =
        owner.source == CredentialSource::Restored && !(owner.roles.is_empty() && owner.scopes.is_empty());
    if kind == PrincipalKind::Token && owner.source != CredentialSource::Lookup {
        owner.set_grants(Some(Arc::new(warden_policy::authz::compile_scopes(&owner.scopes))));
    } else if owner.source == CredentialSource::Lookup || from_unknown {
        owner.set_grants(Some(Arc::new(warden_policy::authz::compile_scopes(&[]))));
    }
    Ok(owner)
}

pub(crate) fn decode_session(b: &[u8]) -> Result<DecodedSession, BadRecord> {
    if b.first() != Some(&V1) && b.first() != Some(&V2) {
        return Err(bad("unknown session record version"));
    }
    let json: SessionJson = serde_json::from_slice(&b[1..]).map_err(|e| bad(format!("session: {e}")))?;
    if b[0] == V2 && !json.subs.is_empty() {
        return Err(bad("version 2 session record with subscriptions"));
    }
    let owner = restore_owner(&json.kind, &json.name, &json.roles, &json.scopes, json.src.as_deref())?;
    if json.client_id.is_empty() || json.client_id.contains('\0') {
        return Err(bad("session client id"));
    }
    let mut subscriptions = Vec::with_capacity(json.subs.len());
    for s in &json.subs {
        let filter = TopicFilter::new(&s.f).map_err(|_| bad("session subscription filter"))?;
        let options = SubscriptionOptions::from_byte(s.o).map_err(|_| bad("session subscription options"))?;
        subscriptions.push(Subscription { filter, options, id: s.i });
    }
    Ok(DecodedSession { json, owner, subscriptions })
}

/// A subscription record's value (its key is the session id and the filter).
pub(crate) fn encode_subscription(sub: &Subscription) -> Vec<u8> {
    let mut v = Vec::with_capacity(7);
    v.push(V1);
    v.push(sub.options.to_byte());
    match sub.id {
        Some(id) => {
            v.push(1);
            v.extend_from_slice(&id.to_be_bytes());
        }
        None => v.push(0),
    }
    v
}

/// A subscription record, its filter read from its key.
pub(crate) fn decode_subscription(filter: &str, b: &[u8]) -> Result<Subscription, BadRecord> {
    let filter = TopicFilter::new(filter).map_err(|_| bad("subscription filter"))?;
    let (options, id) = match b {
        [V1, o, 0] => (*o, None),
        [V1, o, 1, id @ ..] if id.len() == 4 => (*o, Some(u32::from_be_bytes([id[0], id[1], id[2], id[3]]))),
        _ => return Err(bad("unknown subscription record version or length")),
    };
    let options = SubscriptionOptions::from_byte(options).map_err(|_| bad("subscription options"))?;
    if id == Some(0) {
        return Err(bad("subscription identifier 0"));
    }
    Ok(Subscription { filter, options, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mqtt_codec::{Properties, TopicName};

    fn msg(expiry: Option<Instant>) -> Message {
        Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(Box::new(Properties { content_type: Some("text/plain".into()), ..Default::default() })),
            expires_at: expiry,
            origin: None,
            persisted: Default::default(),
        }
    }

    #[test]
    fn message_round_trip_keeps_expiry() {
        let c = Clock::now();
        let m = msg(Some(c.now + Duration::from_secs(60)));
        let b = encode_message(&m, c);
        let back = decode_message(&b, c).unwrap().unwrap();
        assert_eq!(back.topic.as_str(), "a/b");
        assert_eq!(&back.payload[..], b"hello");
        assert!(back.retain);
        assert_eq!(back.properties.as_ref().unwrap().content_type.as_deref(), Some("text/plain"));
        let left = back.expires_at.unwrap().duration_since(c.now);
        assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
    }

    /// Trust lifecycle item 4: a retained record keeps its publisher (kind, name, client id;
    /// a token publisher comes back with no grants), and an old (version 1) record reads as
    /// published by an unknown publisher.
    #[test]
    fn retained_records_keep_their_publisher_and_old_ones_read_as_unknown() {
        let c = Clock::now();
        let m = msg(None);
        let src = |p: Principal| RetainSource::Client { principal: Arc::new(p), client_id: Arc::from("dev-1") };
        let token = Principal::token("svc", vec![], vec![Arc::from("mqtt:pub:#")]);
        for (source, kind, name) in [
            (src(Principal::user("ann")), PrincipalKind::User, "ann"),
            (src(token), PrincipalKind::Token, "svc"),
            (src(Principal::certificate("CN=x")), PrincipalKind::Certificate, "CN=x"),
        ] {
            let b = encode_retained(&m, &source, c);
            let (back, s) = decode_retained(&b, c).unwrap().unwrap();
            assert_eq!(&back.payload[..], b"hello");
            let RetainSource::Client { principal, client_id } = s else { panic!("publisher lost") };
            assert_eq!((principal.kind, &*principal.name, &*client_id), (kind, name, "dev-1"));
            if kind == PrincipalKind::Token {
                assert!(principal.scopes.is_empty() && principal.grants().is_some(), "no token grants after a restart");
            }
            for cut in 0..b.len() {
                assert!(decode_retained(&b[..cut], c).is_err(), "truncated at {cut}");
            }
        }
        let old = encode_message(&m, c);
        let (back, s) = decode_retained(&old, c).unwrap().unwrap();
        assert_eq!(back.topic.as_str(), "a/b");
        assert!(matches!(s, RetainSource::Unknown));
        let unknown = encode_retained(&m, &RetainSource::Unknown, c);
        assert!(matches!(decode_retained(&unknown, c).unwrap().unwrap().1, RetainSource::Unknown));
    }

    #[test]
    fn expired_message_reads_as_none() {
        let c = Clock::now();
        let b = encode_message(&msg(Some(c.now + Duration::from_millis(5))), c);
        let later = Clock { now: c.now + Duration::from_secs(1), wall_ms: c.wall_ms + 1000 };
        assert!(decode_message(&b, later).unwrap().is_none());
    }

    #[test]
    fn damaged_records_are_refused_not_misread() {
        let c = Clock::now();
        let b = encode_message(&msg(None), c);
        for cut in 0..b.len() {
            assert!(decode_message(&b[..cut], c).is_err(), "truncated at {cut}");
        }
        let mut v = b.clone();
        v[0] = 9;
        assert!(decode_message(&v, c).is_err());
        let d = encode_delivery(&DeliveryRec {
            msg_id: 7,
            qos: QoS::ExactlyOnce,
            retain: false,
            stage: Some((3, OutStage::AwaitComp)),
            sub_ids: vec![1, 2],
        });
        let (back, carried) = decode_delivery(&d).unwrap();
        assert_eq!((back.msg_id, back.stage, back.sub_ids), (7, Some((3, OutStage::AwaitComp)), vec![1, 2]));
        assert!(carried.is_none());
        for cut in 0..d.len() {
            assert!(decode_delivery(&d[..cut]).is_err());
        }
        // Version 2 carries its message; cut anywhere in the delivery part, or with the
        // message missing, it is refused; a damaged message fails when decoded.
        let rec = DeliveryRec { msg_id: 7, qos: QoS::AtLeastOnce, retain: true, stage: None, sub_ids: vec![4] };
        let (mut mbuf, mut d2) = (BytesMut::new(), Vec::new());
        encode_delivery_with_message_into(&rec, &msg(None), c, &mut mbuf, &mut d2);
        let (back, carried) = decode_delivery(&d2).unwrap();
        assert_eq!((back.msg_id, back.retain, back.sub_ids), (7, true, vec![4]));
        let m = decode_message(carried.unwrap(), c).unwrap().unwrap();
        assert_eq!(&m.payload[..], &msg(None).payload[..]);
        for cut in 0..=20 {
            assert!(decode_delivery(&d2[..cut]).is_err(), "cut at {cut}");
        }
        for cut in 21..d2.len() {
            let (_, carried) = decode_delivery(&d2[..cut]).unwrap();
            assert!(decode_message(carried.unwrap(), c).is_err(), "cut at {cut}");
        }
        let mut bad_stage = d.clone();
        bad_stage[11] = 7;
        assert!(decode_delivery(&bad_stage).is_err());
        assert!(decode_session(b"\x01{not json").is_err());
        assert!(decode_session(b"").is_err());
    }

    fn session_of(owner: Principal) -> Vec<u8> {
        let rec =
            SessionRecord { sid: 1, client_id: Arc::from("dev-1"), owner, expiry_interval: 60, disconnected_at: None };
        encode_session(&rec, Clock::now())
    }

    /// Trust lifecycle item 6 (SPEC §10): a session whose owner came from the third-party
    /// look-up is restored with no grants of its own (only rules naming it), never with none
    /// recorded (which reads as "no source names it": allow all).
    #[test]
    fn a_restored_lookup_principal_gets_no_grants_never_all() {
        use mqtt_codec::{QoS, TopicName};
        use warden_policy::{Action, Authorizer, PolicyAuthorizer};
        let mut p = Principal::user("dev-1").with_credential(CredentialSource::Lookup, None);
        p.roles = vec![Arc::from("device")].into();
        let back = decode_session(&session_of(p)).unwrap().owner;
        assert_eq!(back.source, CredentialSource::Lookup);
        let open = PolicyAuthorizer::new(None, false);
        let name = |t: &str| TopicName::new(t).unwrap();
        fn pubish(t: &TopicName) -> Action<'_> {
            Action::publish(t, QoS::AtMostOnce, false)
        }
        assert!(!open.authorize(&back, "dev-1", pubish(&name("denied/by/lookup"))).is_allowed());
        // A password-file user is re-derived by name: no grants of its own, rules decide.
        let user = decode_session(&session_of(Principal::user("ann"))).unwrap().owner;
        assert_eq!(user.source, CredentialSource::PasswordFile);
        assert!(user.grants().is_none());
        // A token keeps the scopes its issuer signed.
        let tok = Principal::token("t", vec![], vec![Arc::from("mqtt:pub:a/#")]);
        let tok = decode_session(&session_of(tok)).unwrap().owner;
        assert!(open.authorize(&tok, "t", pubish(&name("a/b"))).is_allowed());
        assert!(!open.authorize(&tok, "t", pubish(&name("b"))).is_allowed());
    }

    /// Issue 17 item 3: a session record no longer holds the subscriptions (each is a record
    /// of its own); a version 1 record that does is still read with them, and a version 2
    /// record that claims some is refused, not half-read.
    #[test]
    fn session_records_v2_leave_subscriptions_out_and_v1_ones_still_read() {
        let v2 = session_of(Principal::user("ann"));
        assert_eq!(v2[0], V2);
        assert!(!String::from_utf8_lossy(&v2).contains("subs"), "{}", String::from_utf8_lossy(&v2));
        assert!(decode_session(&v2).unwrap().subscriptions.is_empty());
        let v1 = br#"{"client_id":"c","kind":"user","name":"u","expiry":5,"disconnected":null,"src":"password-file",
            "subs":[{"f":"a/#","o":2},{"f":"$share/g/b","o":1,"i":7}]}"#;
        let mut rec = vec![V1];
        rec.extend_from_slice(v1);
        let back = decode_session(&rec).unwrap();
        let subs: Vec<_> = back.subscriptions.iter().map(|s| (s.filter.as_str(), s.options.qos as u8, s.id)).collect();
        assert_eq!(subs, vec![("a/#", 2, None), ("$share/g/b", 1, Some(7))]);
        let mut claims = vec![V2];
        claims.extend_from_slice(v1);
        assert!(decode_session(&claims).is_err());
    }

    #[test]
    fn subscription_records_round_trip_and_damage_is_refused() {
        let opts = SubscriptionOptions { qos: QoS::AtLeastOnce, no_local: true, ..Default::default() };
        for id in [None, Some(1), Some(268_435_455)] {
            let sub = Subscription { filter: TopicFilter::new("a/+/c").unwrap(), options: opts, id };
            let b = encode_subscription(&sub);
            let back = decode_subscription("a/+/c", &b).unwrap();
            assert_eq!((back.filter.as_str(), back.options.to_byte(), back.id), ("a/+/c", opts.to_byte(), id));
            for cut in 0..b.len() {
                assert!(decode_subscription("a/+/c", &b[..cut]).is_err(), "truncated at {cut}");
            }
            let mut long = b.clone();
            long.push(0);
            assert!(decode_subscription("a/+/c", &long).is_err());
        }
        let b = encode_subscription(&Subscription { filter: TopicFilter::new("x").unwrap(), options: opts, id: None });
        assert!(decode_subscription("a/#/c", &b).is_err(), "an invalid filter in the key");
        assert!(decode_subscription("", &b).is_err());
        assert!(decode_subscription("x", &[V1, 0xFF, 0]).is_err(), "reserved option bits");
        assert!(decode_subscription("x", &[9, 0, 0]).is_err(), "unknown version");
        assert!(decode_subscription("x", &[V1, 0, 1, 0, 0, 0, 0]).is_err(), "identifier 0");
    }

    #[test]
    fn an_old_record_without_a_source_and_with_grants_gets_none() {
        let rec =
            br#"{"client_id":"c","kind":"user","name":"u","roles":["r"],"expiry":5,"disconnected":null,"subs":[]}"#;
        let mut v = vec![V1];
        v.extend_from_slice(rec);
        let back = decode_session(&v).unwrap().owner;
        assert_eq!(back.source, CredentialSource::Restored);
        assert!(back.grants().is_some(), "no grants of its own, not none recorded");
        let plain = br#"{"client_id":"c","kind":"user","name":"u","expiry":5,"disconnected":null,"subs":[]}"#;
        let mut v = vec![V1];
        v.extend_from_slice(plain);
        assert!(decode_session(&v).unwrap().owner.grants().is_none(), "a plain user: rules naming it decide");
        let mut bad_src =
            br#"{"client_id":"c","kind":"user","name":"u","expiry":5,"disconnected":null,"subs":[],"src":"x"}"#
                .to_vec();
        bad_src.insert(0, V1);
        assert!(decode_session(&bad_src).is_err());
    }
}
