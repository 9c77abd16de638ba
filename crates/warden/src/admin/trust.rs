//! The one place a change of trust is applied (SPEC §10, docs/trust-lifecycle.md).
//!
//! Every source of such changes — token revocation (`/oauth/revoke`), the OAuth client registry
//! (admin API, SIGHUP), CRLs reloaded on SIGHUP, the password file reloaded on SIGHUP, the policy
//! store (users deleted or disabled) — hands a [`TrustEvent`] to [`Trust::apply`], which walks
//! everything held on behalf of the credentials it names:
//! - live connections end (v5 DISCONNECT 0x87 Not authorized) and their wills are discarded,
//!   never published;
//! - pending (delayed) wills of disconnected sessions are discarded;
//! - retained messages it published are removed (their publisher has no right left);
//! - the next CONNECT with the credential is refused by authentication, which reads the same
//!   state the event was made from (revocation list, client registry, CRLs, files, store).
//!
//! Messages already queued are re-authorized at delivery against the grants in force then (the
//! core's delivery-time check), so they need nothing here. Whether an event touches a principal
//! is decided in `warden_policy::trust` (pure, unit-tested).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use mqtt_codec::ReasonCode;
use tracing::info;
use warden_core::Broker;
use warden_policy::trust::{ClientGrants, TrustEvent, Verdict};

use crate::conn::live::LiveClients;

/// Applies trust events to live connections and sessions.
pub struct Trust {
    live: Arc<LiveClients>,
    broker: OnceLock<Arc<Broker>>,
}

/// What one event ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Live connections told to end.
    pub connections: usize,
    /// Pending wills of disconnected sessions discarded.
    pub wills: usize,
    /// Retained messages the credential published, removed.
    pub retained: usize,
}

impl Trust {
    /// Trust changes for the connections in `live` (the broker is attached once it exists).
    pub fn new(live: Arc<LiveClients>) -> Arc<Trust> {
        Arc::new(Trust { live, broker: OnceLock::new() })
    }

    /// The broker whose sessions events reach (set once).
    pub fn attach(&self, broker: Arc<Broker>) {
        let _ = self.broker.set(broker);
    }

    /// Apply `event` everywhere: end the live connections whose principal it takes standing
    /// from (their wills discarded), and discard such sessions' pending wills.
    pub fn apply(&self, event: &TrustEvent) -> Applied {
        let connections = self.live.revoke(event, reason_code);
        let lost = |p: &warden_policy::Principal| event.verdict(p).is_some();
        let (wills, retained) =
            self.broker.get().map_or((0, 0), |b| (b.discard_wills_where(lost), b.drop_retained_where(lost)));
        if connections > 0 || wills > 0 || retained > 0 {
            info!(
                event = event.name(),
                connections,
                wills,
                retained,
                "trust change applied: connections ended, wills and retained messages discarded"
            );
        }
        Applied { connections, wills, retained }
    }

    /// The OAuth client registry changed (a client deleted, narrowed or replaced): tokens of
    /// clients that are gone, or that hold scopes or roles their client no longer has, end.
    pub fn oauth_clients_changed(&self, service: &warden_http::OAuthService) -> Applied {
        let clients: HashMap<String, ClientGrants> =
            service.clients().into_iter().map(|c| (c.id, ClientGrants { scopes: c.scopes, roles: c.roles })).collect();
        self.apply(&TrustEvent::OAuthClients(Arc::new(clients)))
    }
}

/// What the peer is told (v5 DISCONNECT reason) for a verdict: the one mapping.
pub fn reason_code(v: Verdict) -> ReasonCode {
    match v {
        Verdict::Revoked => ReasonCode::NOT_AUTHORIZED,
    }
}
