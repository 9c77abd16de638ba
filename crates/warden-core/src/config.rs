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
    /// How often `$SYS` topics are refreshed.
    pub sys_interval: Duration,
    /// Before a retained message is delivered, check that its publisher may still publish to
    /// its topic; if not, it is not delivered and is removed (Mosquitto's
    /// `check_retain_source`; SPEC §10).
    pub check_retain_source: bool,
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
            sys_interval: Duration::from_secs(10),
            check_retain_source: true,
        }
    }
}
