//! The registry of live client connections, for the admin API: list them, and end one (kick)
//! or all of a principal's (a disabled or deleted user, a new ban) with a reason code.
//!
//! Each connection registers after its CONNACK and is removed when its task ends (the
//! [`LiveRegistration`] guard). Ending a connection sets its reason and wakes its driver
//! ([`ConnWaker::end`]; a parked connection is resumed), which sends the v5 DISCONNECT with that
//! reason and closes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqtt_codec::{Protocol, ReasonCode};
use parking_lot::Mutex;

use crate::conn::park::ConnWaker;
use warden_policy::Principal;

/// 56 bytes (every connection has one): the peer address packed, the connect time in 32 bits.
struct Entry {
    client_id: Arc<str>,
    /// Shared with the connection and its session.
    principal: Arc<Principal>,
    /// Ended through its wake-up ([`ConnWaker::end`]).
    conn: Arc<ConnWaker>,
    /// Unix seconds (32 bits: until 2106).
    connected_at: u32,
    peer: PackedAddr,
    protocol: Protocol,
}

/// A socket address in 19 bytes instead of 32 (an IPv4 address is kept IPv4-mapped; an IPv6
/// address's flow label and scope id, which the admin API does not show, are not kept).
#[derive(Clone, Copy)]
struct PackedAddr {
    ip: [u8; 16],
    port: [u8; 2],
    v6: bool,
}

impl PackedAddr {
    fn new(a: SocketAddr) -> Self {
        let (ip, v6) = match a.ip() {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), false),
            IpAddr::V6(v6) => (v6.octets(), true),
        };
        PackedAddr { ip, port: a.port().to_ne_bytes(), v6 }
    }

    fn get(self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        let ip = match (self.v6, v6.to_ipv4_mapped()) {
            (false, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, u16::from_ne_bytes(self.port))
    }
}

/// Live connections by registration id.
#[derive(Default)]
pub struct LiveClients {
    /// Entries boxed: the table (with its spare capacity) holds 16 bytes per slot, not 160.
    map: Mutex<HashMap<u64, Box<Entry>>>,
    next: AtomicU64,
}

/// A connection's registration; removed on drop.
pub struct LiveRegistration {
    /// `None` once removed.
    owner: Option<Arc<LiveClients>>,
    id: u64,
}

impl LiveRegistration {
    /// Remove the entry now; returns the connection's peer address.
    pub fn remove(mut self) -> Option<SocketAddr> {
        let owner = self.owner.take()?;
        let entry = owner.map.lock().remove(&self.id);
        entry.map(|e| e.peer.get())
    }
}

impl Drop for LiveRegistration {
    fn drop(&mut self) {
        if let Some(owner) = &self.owner {
            owner.map.lock().remove(&self.id);
        }
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::V31 => "3.1",
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5.0",
    }
}

impl LiveClients {
    /// Register a connection that has just been accepted.
    pub fn register(
        self: &Arc<Self>,
        client_id: Arc<str>,
        principal: Arc<Principal>,
        peer: SocketAddr,
        protocol: Protocol,
        conn: Arc<ConnWaker>,
    ) -> LiveRegistration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connected_at = u32::try_from(crate::auth::tokens::unix_now()).unwrap_or(u32::MAX);
        let entry = Entry { client_id, principal, conn, connected_at, peer: PackedAddr::new(peer), protocol };
        self.map.lock().insert(id, Box::new(entry));
        LiveRegistration { owner: Some(self.clone()), id }
    }

    /// The connected clients, sorted by client id.
    pub fn list(&self) -> Vec<warden_http::admin::ClientInfo> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .values()
            .map(|e| warden_http::admin::ClientInfo {
                client_id: e.client_id.to_string(),
                principal: e.principal.to_string(),
                peer: e.peer.get().to_string(),
                protocol: protocol_name(e.protocol).into(),
                connected_at: u64::from(e.connected_at),
            })
            .collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// The peer address of a connected client (for audit records).
    pub fn peer_of(&self, client_id: &str) -> Option<SocketAddr> {
        self.map.lock().values().find(|e| &*e.client_id == client_id).map(|e| e.peer.get())
    }

    /// End every connection for which `pred(client id, principal, peer)` holds; returns how
    /// many were told to end.
    pub fn end_where(&self, reason: ReasonCode, pred: impl Fn(&str, &Principal, &SocketAddr) -> bool) -> usize {
        // Ended outside the registry's lock: ending a parked connection resumes it (a task
        // spawned, its socket moved back to tokio), and ending ones unregister meanwhile.
        let ending: Vec<Arc<ConnWaker>> = self
            .map
            .lock()
            .values()
            .filter(|e| pred(&e.client_id, &e.principal, &e.peer.get()))
            .map(|e| e.conn.clone())
            .collect();
        for c in &ending {
            c.end(reason);
        }
        ending.len()
    }

    /// End, with their wills discarded, the connections whose principal `verdict` gives a
    /// reason for (a trust change: [`crate::admin::trust`]); returns how many were told to end.
    pub fn revoke_where(&self, verdict: impl Fn(&Principal) -> Option<ReasonCode>) -> usize {
        let ending: Vec<(Arc<ConnWaker>, ReasonCode)> =
            self.map.lock().values().filter_map(|e| verdict(&e.principal).map(|r| (e.conn.clone(), r))).collect();
        for (c, reason) in &ending {
            c.revoke(*reason);
        }
        ending.len()
    }

    /// End every live connection (the server is shutting down: v5 DISCONNECT 0x8B).
    pub fn end_all(&self, reason: ReasonCode) -> usize {
        self.end_where(reason, |_, _, _| true)
    }

    /// End the connection of `client_id` (kick, v5 DISCONNECT 0x98); false when not connected.
    pub fn kick(&self, client_id: &str) -> bool {
        self.end_where(ReasonCode::ADMINISTRATIVE_ACTION, |c, _, _| c == client_id) > 0
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    #[test]
    fn an_entry_stays_in_its_size_class() {
        assert!(std::mem::size_of::<Entry>() <= 56, "Entry is {} bytes", std::mem::size_of::<Entry>());
    }

    #[test]
    fn packed_addresses_come_back_as_they_went_in() {
        for a in ["127.0.0.1:1883", "10.1.2.3:65535", "[::1]:8883", "[::ffff:10.0.0.1]:1", "[fe80::1:2]:0", "0.0.0.0:0"]
        {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(PackedAddr::new(a).get(), a, "{a}");
        }
    }
}
