//! The shell's side of the cluster's control plane (SPEC §11 "trust changes are
//! cluster-wide"): a change made through one node's admin API is applied by every node, the
//! way that node applies its own — the policy store swapped (disabled and removed users lose
//! their connections), a ban's live connections ended — and a kick or a takeover from another
//! node ends the connection here.
//!
//! Shared documents ([`warden_cluster::control`]): [`POLICY`] (the policy store as
//! `policy.json` holds it) and [`BANS`] (the operator's ban list; automatic bans stay per node,
//! as each node counts its own failed logins). Not shared yet: the token service's OAuth
//! clients and revocations (docs/cluster.md).

use std::sync::Arc;

use mqtt_codec::ReasonCode;
use tracing::{info, warn};
use warden_cluster::control::ControlSink;
use warden_http::admin::Ban;

use crate::admin::backend::Backend;
use crate::logsafe::Escaped;

/// The policy store's document.
pub const POLICY: &str = "policy";
/// The ban list's document.
pub const BANS: &str = "bans";
/// Every document this node shares.
pub const DOCUMENTS: &[&str] = &[POLICY, BANS];

/// Applies what other nodes share to this node.
pub struct ClusterSync {
    /// This node's admin backend.
    pub backend: Arc<Backend>,
}

impl ControlSink for ClusterSync {
    fn document(&self, name: &str, body: &[u8]) {
        let applied = match name {
            POLICY => std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(|t| warden_policy::store::PolicyStore::from_json(t).map_err(|e| e.to_string()))
                .and_then(|store| self.backend.policy_from_peer(store).map_err(|e| e.to_string())),
            BANS => serde_json::from_slice::<Vec<Ban>>(body)
                .map_err(|e| e.to_string())
                .and_then(|bans| self.backend.bans_from_peer(bans).map_err(|e| e.to_string())),
            _ => Err("unknown document (a newer node?)".into()),
        };
        match applied {
            Ok(()) => info!(document = name, "cluster: shared state from another node applied"),
            Err(e) => {
                warn!(document = %Escaped(name), error = %e, "cluster: shared state from another node not applied")
            }
        }
    }

    fn taken_over(&self, client_id: &str) {
        let ended = self.backend.live.end_where(ReasonCode::SESSION_TAKEN_OVER, |c, _, _| c == client_id);
        // The session goes with it: the other node resumes it from the cluster's record.
        let discarded = self.backend.broker.discard_session(client_id);
        info!(client_id = %Escaped(client_id), connections = ended, discarded, "cluster: client id taken over on another node");
    }

    fn end_client(&self, client_id: &str, reason: u8) -> bool {
        let n = self.backend.live.end_where(ReasonCode(reason), |c, _, _| c == client_id);
        if n > 0 {
            info!(client_id = %Escaped(client_id), reason = %ReasonCode(reason), "cluster: connection ended for another node");
        }
        n > 0
    }
}
