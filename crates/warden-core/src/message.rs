//! An application message as the broker routes it.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use mqtt_codec::{LazyProperties, Properties, QoS, TopicName};

use crate::persist::{Persist, PersistOp, PersistedMsg};

/// A published message, decoded once and shared (`Arc<Message>`) by every subscriber's queue.
#[derive(Debug)]
pub struct Message {
    /// Topic name (aliases already resolved).
    pub topic: TopicName,
    /// Payload, shared, never copied per subscriber.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Properties forwarded to subscribers unaltered (payload format, content type, response
    /// topic, correlation data, user properties). Expiry, aliases and subscription
    /// identifiers are per delivery and never stored here. Boxed, and `None` when empty (most
    /// messages): a `Properties` is ~340 bytes, a message without them stays small.
    pub properties: Option<Box<Properties>>,
    /// When the message expires (v5 Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// Session id of the publisher, for v5 No Local (`None` for wills and `$SYS`).
    pub origin: Option<u64>,
    /// Set once the message is stored for a persistent session (see [`crate::persist`]).
    pub persisted: OnceLock<PersistedMsg>,
}

impl Clone for Message {
    /// A copy is a new message: it is not the stored one.
    fn clone(&self) -> Self {
        Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.clone(),
            expires_at: self.expires_at,
            origin: self.origin,
            persisted: OnceLock::new(),
        }
    }
}

impl Message {
    /// The id of this message in `store`, storing it on first use.
    pub fn stored_id(self: &Arc<Self>, store: &Arc<dyn Persist>) -> u64 {
        self.persisted
            .get_or_init(|| {
                let id = store.next_id();
                store.submit(PersistOp::Message { id, msg: self.clone() });
                PersistedMsg::new(id, store.clone())
            })
            .id
    }

    /// A will as the message it becomes (no expiry yet: it counts from its publication).
    pub fn from_will(w: mqtt_codec::LastWill) -> Message {
        Message {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: Message::forwarded_properties(w.properties),
            expires_at: None,
            origin: None,
            persisted: Default::default(),
        }
    }

    /// Keep only the properties that are forwarded to subscribers [MQTT-3.3.2-?], in the box
    /// they came in (`None` when nothing is forwarded).
    pub fn forwarded_properties(p: impl Into<LazyProperties>) -> Option<Box<Properties>> {
        let mut b = p.into().into_inner()?;
        let p = &mut *b;
        *p = Properties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.take(),
            response_topic: p.response_topic.take(),
            correlation_data: p.correlation_data.take(),
            user_properties: std::mem::take(&mut p.user_properties),
            ..Properties::default()
        };
        (!p.is_empty()).then_some(b)
    }

    /// True when the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }

    /// Seconds left before expiry, rounded up, for the forwarded Message Expiry Interval.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|e| {
            let left = e.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// A message on `topic` with no properties, expiry or origin (unit tests).
    #[cfg(test)]
    pub(crate) fn for_test(topic: &str, payload: &'static [u8], qos: QoS, retain: bool) -> Message {
        Message {
            topic: TopicName::new(topic).expect("valid topic"),
            payload: Bytes::from_static(payload),
            qos,
            retain,
            properties: None,
            expires_at: None,
            origin: None,
            persisted: OnceLock::new(),
        }
    }

    /// Approximate memory charged to a queue holding this message.
    pub fn cost(&self) -> u64 {
        (self.payload.len() + self.topic.as_str().len()) as u64
    }
}
