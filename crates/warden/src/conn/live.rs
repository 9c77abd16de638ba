//! The one registry of live client connections: the admin API lists them and ends one (kick)
//! or all of a principal's (a disabled or deleted user, a new ban) with a reason code; the trust
//! seam ([`crate::admin::trust`]) ends those a trust event takes standing from; audit records
//! ask a client's peer address. Indexed by client id (kick, the peer of a denied client: no
//! walk on the hot path of a denial) and by access-token id (a revoked token ends its
//! connections without a walk); events about names or certificates, which are rare and may
//! concern any number of connections, walk the registry once. (The core's own table of
//! sessions, [`warden_core::Broker`], holds sessions, not connections; a session outlives its
//! connection.)
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
use warden_policy::trust::{Credential, TrustEvent};
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

/// One live connection authenticated with a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCert {
    /// Its client id.
    pub client_id: String,
    /// The identity taken from the certificate.
    pub identity: String,
    /// The certificate: `SERIAL@ISSUER` (hex); the same value is the same certificate.
    pub certificate: String,
}

/// Live connections by registration id, with indexes by client id and token id.
#[derive(Default)]
pub struct LiveClients {
    inner: Mutex<Inner>,
    next: AtomicU64,
    /// The client certificates seen in TLS handshakes (the admin API lists them; the client
    /// list shows a certificate client's subject and expiry from it).
    pub certs: crate::certs_seen::CertsSeen,
}

#[derive(Default)]
struct Inner {
    /// Entries boxed: the table (with its spare capacity) holds 16 bytes per slot, not 160.
    map: HashMap<u64, Box<Entry>>,
    /// The newest registration of each client id (while a session is taken over, the old
    /// connection is ending and still listed until its driver unregisters it).
    by_client: HashMap<Arc<str>, u64>,
    /// Registrations of connections authenticated with an access token that has a `jti`.
    by_token: HashMap<Box<str>, Vec<u64>>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Box<Entry>> {
        let entry = self.map.remove(&id)?;
        if self.by_client.get(&entry.client_id) == Some(&id) {
            self.by_client.remove(&entry.client_id);
        }
        if let Some(jti) = entry.principal.token_id() {
            if let Some(ids) = self.by_token.get_mut(jti) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.by_token.remove(jti);
                }
            }
        }
        Some(entry)
    }
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
        let entry = owner.inner.lock().remove(self.id);
        entry.map(|e| e.peer.get())
    }
}

impl Drop for LiveRegistration {
    fn drop(&mut self) {
        if let Some(owner) = &self.owner {
            owner.inner.lock().remove(self.id);
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
        let connected_at = u32::try_from(crate::clock::unix_now()).unwrap_or(u32::MAX);
        let jti = principal.token_id().map(Box::from);
        let entry = Entry {
            client_id: client_id.clone(),
            principal,
            conn,
            connected_at,
            peer: PackedAddr::new(peer),
            protocol,
        };
        let mut inner = self.inner.lock();
        inner.map.insert(id, Box::new(entry));
        inner.by_client.insert(client_id, id);
        if let Some(jti) = jti {
            inner.by_token.entry(jti).or_default().push(id);
        }
        LiveRegistration { owner: Some(self.clone()), id }
    }

    /// The connected clients, sorted by client id.
    pub fn list(&self) -> Vec<warden_http::admin::ClientInfo> {
        let mut v: Vec<_> = self
            .inner
            .lock()
            .map
            .values()
            .map(|e| {
                // The certificate's subject and expiry, looked up once; a token's expiry.
                let (cert, token_expires_at) = match e.principal.credential() {
                    Some(Credential::Certificate(c)) => (self.certs.subject_of(&c.leaf), None),
                    Some(Credential::Token(t)) => (None, t.expires_at),
                    None => (None, None),
                };
                let (certificate, cert_expires_at) = cert.map_or((None, None), |(s, exp)| (Some(s), Some(exp)));
                warden_http::admin::ClientInfo {
                    client_id: e.client_id.to_string(),
                    principal: e.principal.to_string(),
                    peer: e.peer.get().to_string(),
                    protocol: protocol_name(e.protocol).into(),
                    connected_at: u64::from(e.connected_at),
                    node: None,
                    method: Some(e.principal.source.as_str().to_owned()),
                    certificate,
                    cert_expires_at,
                    token_expires_at,
                }
            })
            .collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// How many live connections hold each certificate (by its issuer and serial).
    pub fn cert_counts(&self) -> HashMap<warden_policy::trust::CertRef, usize> {
        let mut out = HashMap::new();
        for e in self.inner.lock().map.values() {
            if let Some(Credential::Certificate(c)) = e.principal.credential() {
                *out.entry(c.leaf.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// The live connections authenticated with a client certificate (principal kind
    /// certificate, or a fallback that claimed a certificate identity): client id, identity
    /// and the certificate as `SERIAL@ISSUER` (hex of the serial number and of the issuer's DER name), for the posture audit's
    /// shared-certificate finding.
    pub fn certificate_connections(&self) -> Vec<LiveCert> {
        fn hex(b: &[u8]) -> String {
            b.iter().map(|x| format!("{x:02x}")).collect()
        }
        self.inner
            .lock()
            .map
            .values()
            .filter_map(|e| match e.principal.credential() {
                Some(Credential::Certificate(chain)) => Some(LiveCert {
                    client_id: e.client_id.to_string(),
                    identity: e.principal.name.to_string(),
                    certificate: format!("{}@{}", hex(&chain.leaf.serial), hex(&chain.leaf.issuer)),
                }),
                _ => None,
            })
            .collect()
    }

    /// The peer address of a connected client (for audit records).
    pub fn peer_of(&self, client_id: &str) -> Option<SocketAddr> {
        let inner = self.inner.lock();
        let id = inner.by_client.get(client_id)?;
        inner.map.get(id).map(|e| e.peer.get())
    }

    /// End every connection for which `pred(client id, principal, peer)` holds; returns how
    /// many were told to end.
    pub fn end_where(&self, reason: ReasonCode, pred: impl Fn(&str, &Principal, &SocketAddr) -> bool) -> usize {
        // Ended outside the registry's lock: ending a parked connection resumes it (a task
        // spawned, its socket moved back to tokio), and ending ones unregister meanwhile.
        let ending: Vec<Arc<ConnWaker>> = self
            .inner
            .lock()
            .map
            .values()
            .filter(|e| pred(&e.client_id, &e.principal, &e.peer.get()))
            .map(|e| e.conn.clone())
            .collect();
        for c in &ending {
            c.end(reason);
        }
        ending.len()
    }

    /// End, with their wills discarded, the connections whose principal `event` takes standing
    /// from (a trust change: [`crate::admin::trust`]), each with the reason code `reason` gives
    /// its verdict; returns how many were told to end. A revoked token is found through the
    /// token index; other events walk the registry.
    pub fn revoke(&self, event: &TrustEvent, reason: impl Fn(warden_policy::trust::Verdict) -> ReasonCode) -> usize {
        let ending: Vec<(Arc<ConnWaker>, ReasonCode)> = {
            let inner = self.inner.lock();
            let verdict = |e: &Entry| event.verdict(&e.principal).map(|v| (e.conn.clone(), reason(v)));
            match event {
                TrustEvent::TokenRevoked { jti } => inner
                    .by_token
                    .get(jti.as_str())
                    .into_iter()
                    .flatten()
                    .filter_map(|id| inner.map.get(id))
                    .filter_map(|e| verdict(e))
                    .collect(),
                _ => inner.map.values().filter_map(|e| verdict(e)).collect(),
            }
        };
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
        let conn = {
            let inner = self.inner.lock();
            inner.by_client.get(client_id).and_then(|id| inner.map.get(id)).map(|e| e.conn.clone())
        };
        conn.inspect(|c| c.end(ReasonCode::ADMINISTRATIVE_ACTION)).is_some()
    }

    /// How many connections are registered (tests, metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    use warden_policy::trust::{CredentialSource, TokenRef, Verdict};

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn token_principal(jti: &str) -> Arc<Principal> {
        let tok = TokenRef { jti: Some(jti.into()), oauth_client: None, expires_at: None };
        Arc::new(
            Principal::token("dev", vec![], vec![])
                .with_credential(CredentialSource::Token, Some(Credential::Token(tok))),
        )
    }

    fn register(live: &Arc<LiveClients>, id: &str, p: Arc<Principal>, port: u16) -> (LiveRegistration, Arc<ConnWaker>) {
        let w = Arc::new(ConnWaker::default());
        (live.register(id.into(), p, peer(port), Protocol::V5, w.clone()), w)
    }

    #[test]
    fn kick_and_peer_of_find_a_client_by_its_id() {
        let live = Arc::new(LiveClients::default());
        let (_a, wa) = register(&live, "a", Arc::new(Principal::user("alice")), 1);
        let (_b, wb) = register(&live, "b", Arc::new(Principal::user("bob")), 2);
        assert_eq!(live.peer_of("b"), Some(peer(2)));
        assert_eq!(live.peer_of("nobody"), None);
        assert!(live.kick("a"));
        assert!(!live.kick("nobody"));
        assert_eq!(wa.end_reason(), Some(ReasonCode::ADMINISTRATIVE_ACTION));
        assert_eq!(wb.end_reason(), None, "only the kicked client ends");
    }

    #[test]
    fn a_takeover_points_the_index_at_the_new_connection_and_the_old_ones_end_leaves_it() {
        let live = Arc::new(LiveClients::default());
        let (old, _) = register(&live, "dev", Arc::new(Principal::user("u")), 1);
        let (_new, wn) = register(&live, "dev", Arc::new(Principal::user("u")), 2);
        assert_eq!(live.len(), 2, "the old one is listed until its driver ends");
        assert_eq!(old.remove(), Some(peer(1)));
        assert_eq!(live.peer_of("dev"), Some(peer(2)), "the old registration's end keeps the new index");
        assert!(live.kick("dev"));
        assert!(wn.end_reason().is_some());
    }

    #[test]
    fn a_dropped_registration_leaves_no_index_behind() {
        let live = Arc::new(LiveClients::default());
        {
            let _r = register(&live, "t", token_principal("j1"), 1);
        }
        assert!(live.is_empty());
        let inner = live.inner.lock();
        assert!(inner.by_client.is_empty() && inner.by_token.is_empty());
    }

    #[test]
    fn a_revoked_token_ends_only_the_connections_it_authenticated() {
        let live = Arc::new(LiveClients::default());
        let (_a, wa) = register(&live, "a", token_principal("j1"), 1);
        let (_b, wb) = register(&live, "b", token_principal("j1"), 2);
        let (_c, wc) = register(&live, "c", token_principal("j2"), 3);
        let (_d, wd) = register(&live, "d", Arc::new(Principal::user("dev")), 4);
        let n =
            live.revoke(&TrustEvent::TokenRevoked { jti: "j1".into() }, |Verdict::Revoked| ReasonCode::NOT_AUTHORIZED);
        assert_eq!(n, 2);
        assert!(wa.revoked() && wb.revoked());
        assert!(!wc.revoked() && !wd.revoked());
        assert_eq!(live.revoke(&TrustEvent::TokenRevoked { jti: "nope".into() }, |_| ReasonCode::NOT_AUTHORIZED), 0);
        let disabled = TrustEvent::Disabled(Arc::new(["dev".to_string()].into_iter().collect()));
        assert_eq!(
            live.revoke(&disabled, |_| ReasonCode::NOT_AUTHORIZED),
            4,
            "a name walks every principal named so (three tokens of subject dev, one user)"
        );
    }

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
