//! Limits enforced by the core. The shell maps the validated configuration onto this.

use std::time::Duration;

/// Broker-wide limits and advertised capabilities.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest packet accepted from clients (advertised in v5 CONNACK).
    pub max_packet_size: u32,
    /// Receive Maximum advertised to clients: inbound QoS 1/2 publishes in flight.
    pub receive_maximum: u16,
    /// Outbound QoS 1/2 publishes in flight per client (also capped by the client's Receive Maximum).
    pub max_inflight: u16,
    /// Topic Alias Maximum advertised to v5 clients (0 disables inbound aliases).
    pub topic_alias_maximum: u16,
    /// Messages queued per session before new ones are dropped and counted.
    pub max_queued_messages: usize,
    /// Bytes of payload queued per session before new messages are dropped and counted.
    pub max_queued_bytes: u64,
    /// Bytes queued across all the sessions of one principal (kind and name) before new
    /// deliveries to them are dropped and counted: one account's offline sessions cannot
    /// fill the broker's memory.
    pub max_queued_bytes_per_principal: u64,
    /// Largest keep alive accepted; v5 clients asking for more (or 0) get Server Keep Alive.
    pub max_keep_alive: u16,
    /// Largest session expiry interval granted (seconds).
    pub max_session_expiry: u32,
    /// Most levels in a topic filter or name.
    pub max_topic_levels: usize,
    /// Most subscriptions one session may hold.
    pub max_subscriptions_per_client: usize,
    /// Most persistent sessions (expiry interval above 0) one principal (kind and name) may
    /// hold; a CONNECT that would make one more is refused with 0x97 Quota exceeded.
    pub max_sessions_per_principal: usize,
    /// Most subscriptions across all the sessions of one principal; a filter beyond it gets
    /// 0x97 (v3: 0x80) in its SUBACK.
    pub max_subscriptions_per_principal: usize,
    /// Most bytes of topic filters (as subscribed, `$share/…` included) across all the
    /// sessions of one principal; as `max_subscriptions_per_principal`.
    pub max_subscription_bytes_per_principal: u64,
    /// Most retained messages one principal may have published (and still hold); a retained
    /// PUBLISH beyond it is not retained (v5 QoS 1/2: refused with 0x97).
    pub max_retained_messages_per_principal: usize,
    /// Most bytes (topic + payload) of retained messages one principal may hold; as
    /// `max_retained_messages_per_principal`.
    pub max_retained_bytes_per_principal: u64,
    /// Most retained messages in the broker, all publishers together.
    pub max_retained_messages: usize,
    /// Most bytes (topic + payload) of retained messages in the broker.
    pub max_retained_bytes: u64,
    /// How often `$SYS` topics are refreshed.
    pub sys_interval: Duration,
    /// Before a retained message is delivered, check that its publisher may still publish to
    /// its topic; if not, it is not delivered and is removed (Mosquitto's
    /// `check_retain_source`; SPEC §10).
    pub check_retain_source: bool,
    /// Seed of the client identifiers the broker assigns (a v5 CONNECT with an empty one):
    /// an input, so that the core reads no clock or entropy itself. The shell passes a fresh
    /// value per start; tests and the simulator pass a fixed one for repeatable ids.
    pub id_seed: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size: 256 * 1024,
            receive_maximum: 100,
            max_inflight: 100,
            topic_alias_maximum: 10,
            max_queued_messages: 10_000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_queued_bytes_per_principal: 64 * 1024 * 1024,
            max_keep_alive: u16::MAX,
            max_session_expiry: u32::MAX,
            max_topic_levels: 128,
            max_subscriptions_per_client: 1000,
            max_sessions_per_principal: 1000,
            max_subscriptions_per_principal: 10_000,
            max_subscription_bytes_per_principal: 2 * 1024 * 1024,
            max_retained_messages_per_principal: 10_000,
            max_retained_bytes_per_principal: 32 * 1024 * 1024,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 512 * 1024 * 1024,
            sys_interval: Duration::from_secs(10),
            check_retain_source: true,
            id_seed: 0,
        }
    }
}
