//! The registry of live client connections, for the admin API: list them, and end one (kick)
//! or all of a principal's (a disabled or deleted user, a new ban) with a reason code.
//!
//! Each connection registers after its CONNACK and is removed when its task ends (the
//! [`LiveRegistration`] guard). Ending a connection sets its reason and wakes its driver
//! ([`ConnWaker::end`]; a parked connection is resumed), which sends the v5 DISCONNECT with that
//! reason and closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqtt_codec::{Protocol, ReasonCode};
use parking_lot::Mutex;

use crate::park::ConnWaker;
use warden_policy::{Principal, PrincipalKind};

struct Entry {
    client_id: Arc<str>,
    /// Shared with the connection and its session.
    principal: Arc<Principal>,
    peer: SocketAddr,
    protocol: Protocol,
    connected_at: u64,
    /// Ended through its wake-up ([`ConnWaker::end`]).
    conn: Arc<ConnWaker>,
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
        entry.map(|e| e.peer)
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
        let entry = Entry { client_id, principal, peer, protocol, connected_at: crate::tokens::unix_now(), conn };
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
                peer: e.peer.to_string(),
                protocol: protocol_name(e.protocol).into(),
                connected_at: e.connected_at,
            })
            .collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// The peer address of a connected client (for audit records).
    pub fn peer_of(&self, client_id: &str) -> Option<SocketAddr> {
        self.map.lock().values().find(|e| &*e.client_id == client_id).map(|e| e.peer)
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
            .filter(|e| pred(&e.client_id, &e.principal, &e.peer))
            .map(|e| e.conn.clone())
            .collect();
        for c in &ending {
            c.end(reason);
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

    /// End the connections of user principals named `user` (disabled or deleted: 0x87).
    pub fn end_user(&self, user: &str) -> usize {
        self.end_where(ReasonCode::NOT_AUTHORIZED, |_, p, _| p.kind == PrincipalKind::User && &*p.name == user)
    }
}
