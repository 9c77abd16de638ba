//! The shell's side of the cluster's control plane (SPEC §11 "trust changes are
//! cluster-wide"): a change made through one node's admin API is applied by every node, the
//! way that node applies its own — the policy store swapped (disabled and removed users lose
//! their connections), a ban's live connections ended — and a kick or a takeover from another
//! node ends the connection here.
//!
//! Shared documents ([`warden_cluster::control`]): [`POLICY`] (the policy store as
//! `policy.json` holds it) and [`BANS`] (the operator's ban list; automatic bans stay per node,
//! as each node counts its own failed logins), each the last version any node wrote; and the
//! token service's [`TOKEN_KEYS`] (every node's public keys, so that a token minted by one
//! node's token service verifies on every node) and [`REVOCATIONS`] (revoked token ids), each
//! a set that only grows (until its entries expire): a node merges what it reads, and writes
//! the union again when the version it read lacks something it holds, so that two nodes
//! writing at once converge. [`OAUTH_CLIENTS`]: the token service's stored OAuth clients
//! (`<data_dir>/oauth/clients.toml`: the admin API's and `warden oauth client add`'s), each
//! secret only as its salted slow hash, the last version any node wrote; a node applies it as
//! its own change (the file rewritten, tokens of deleted or narrowed clients ended). Not
//! shared: the clients declared in the configuration (give every node the same).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

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
/// The token services' public keys, by node.
pub const TOKEN_KEYS: &str = "token-keys";
/// The token services' revocations.
pub const REVOCATIONS: &str = "revocations";
/// The token service's stored OAuth clients.
pub const OAUTH_CLIENTS: &str = "oauth-clients";
/// Every document this node shares.
pub const DOCUMENTS: &[&str] = &[POLICY, BANS, TOKEN_KEYS, REVOCATIONS, OAUTH_CLIENTS];

/// [`TOKEN_KEYS`]: each node's public JWKs.
#[derive(Serialize, Deserialize, Default)]
struct TokenKeys {
    nodes: BTreeMap<String, Vec<serde_json::Value>>,
}

/// One entry of [`REVOCATIONS`].
#[derive(Serialize, Deserialize)]
struct Revoked {
    jti: String,
    exp: u64,
}

/// Applies what other nodes share to this node.
pub struct ClusterSync {
    /// This node's admin backend.
    backend: Arc<Backend>,
    /// This node's name.
    node: String,
    /// This node's authentication (whether a dead node's will's owner still stands).
    auth: Arc<crate::auth::Authenticator>,
    /// The other nodes' token-service keys seen so far (keys are added, never dropped: a
    /// rotated-out key keeps verifying its tokens until they expire).
    peer_keys: Mutex<BTreeMap<String, Vec<serde_json::Value>>>,
}

impl ClusterSync {
    /// The sink for `backend`'s node `node`.
    pub fn new(backend: Arc<Backend>, node: String, auth: Arc<crate::auth::Authenticator>) -> Arc<ClusterSync> {
        Arc::new(ClusterSync { backend, node, auth, peer_keys: Mutex::new(BTreeMap::new()) })
    }

    /// Share this node's token-service keys and revocations now, and each revocation made
    /// here from now on. Call once, after [`warden_cluster::Cluster::attach_control`].
    pub fn start(self: &Arc<Self>) {
        let Some(o) = &self.backend.oauth else { return };
        self.share_keys();
        if !o.revocations().is_empty() {
            self.share_revocations();
        }
        let weak: Weak<ClusterSync> = Arc::downgrade(self);
        o.on_revoke(Box::new(move |_jti| {
            if let Some(s) = weak.upgrade() {
                s.share_revocations();
            }
        }));
    }

    /// What this node knows of every node's keys, its own first-hand.
    fn known_keys(&self) -> TokenKeys {
        let mut doc = TokenKeys { nodes: self.peer_keys.lock().clone() };
        if let Some(o) = &self.backend.oauth {
            doc.nodes.insert(self.node.clone(), o.own_jwks());
        }
        doc
    }

    fn share_keys(&self) {
        if let Some(c) = &self.backend.cluster {
            match serde_json::to_vec(&self.known_keys()) {
                Ok(body) => c.publish_document(TOKEN_KEYS, body),
                Err(e) => warn!(error = %e, "cluster: the token keys could not be encoded"),
            }
        }
    }

    fn share_revocations(&self) {
        let (Some(c), Some(o)) = (&self.backend.cluster, &self.backend.oauth) else { return };
        let list: Vec<Revoked> = o.revocations().into_iter().map(|(jti, exp)| Revoked { jti, exp }).collect();
        match serde_json::to_vec(&list) {
            Ok(body) => c.publish_document(REVOCATIONS, body),
            Err(e) => warn!(error = %e, "cluster: the revocations could not be encoded"),
        }
    }

    /// Merge another node's view of the token keys; write the union back when it lacked one
    /// this node holds (its own included).
    fn keys_from_peer(&self, body: &[u8]) -> Result<(), String> {
        let Some(o) = &self.backend.oauth else { return Ok(()) };
        let doc: TokenKeys = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let kid = |k: &serde_json::Value| k.get("kid").and_then(serde_json::Value::as_str).map(str::to_owned);
        let all = {
            let mut peers = self.peer_keys.lock();
            for (node, keys) in doc.nodes.iter().filter(|(n, _)| **n != self.node) {
                let held = peers.entry(node.clone()).or_default();
                for k in keys {
                    if kid(k).is_some() && !held.iter().any(|h| kid(h) == kid(k)) {
                        held.push(k.clone());
                    }
                }
            }
            peers.values().flatten().cloned().collect::<Vec<_>>()
        };
        let kept = o.set_peer_keys(all);
        let known = self.known_keys();
        let lacks = known.nodes.iter().any(|(node, keys)| {
            let theirs = doc.nodes.get(node);
            keys.iter().any(|k| !theirs.is_some_and(|t| t.iter().any(|x| kid(x) == kid(k))))
        });
        info!(peer_keys = kept, "cluster: the other nodes' token keys verify here");
        if lacks {
            self.share_keys();
        }
        Ok(())
    }

    /// Apply another node's revocations (connections holding the tokens end here); write the
    /// union back when it lacked one this node holds.
    fn revocations_from_peer(&self, body: &[u8]) -> Result<(), String> {
        let Some(o) = &self.backend.oauth else { return Ok(()) };
        let list: Vec<Revoked> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let theirs: std::collections::HashSet<&str> = list.iter().map(|r| r.jti.as_str()).collect();
        let lacks = o.revocations().iter().any(|(jti, _)| !theirs.contains(jti.as_str()));
        let new = o.revocations_from_peer(list.iter().map(|r| (r.jti.clone(), r.exp)));
        if !new.is_empty() {
            info!(revoked = new.len(), "cluster: token revocations from another node applied");
        }
        // A new entry was shared again by the revocation callback already.
        if lacks && new.is_empty() {
            self.share_revocations();
        }
        Ok(())
    }
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
            TOKEN_KEYS => self.keys_from_peer(body),
            OAUTH_CLIENTS => serde_json::from_slice::<Vec<crate::admin::oauth_store::StoredClient>>(body)
                .map_err(|e| e.to_string())
                .and_then(|clients| self.backend.oauth_clients_from_peer(clients).map_err(|e| e.to_string())),
            REVOCATIONS => self.revocations_from_peer(body),
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

    fn will_owner_stands(&self, owner: &warden_policy::Principal, jti: Option<&str>) -> bool {
        // What the next CONNECT of that credential is refused on: a disabled name, a user gone
        // from the password file or the policy store, a revoked token (SPEC §10).
        let ctx = self.auth.context(&warden_policy::authn::Unrestricted, warden_policy::authn::ListenerAuth::default());
        let revoked = jti.is_some_and(|j| self.backend.oauth.as_ref().is_some_and(|o| o.is_revoked(j)));
        let stands = ctx.stands(owner) && !revoked;
        if !stands {
            info!(principal = %crate::logsafe::Escaped(&owner.to_string()), "cluster: a dead node's will not published: its owner lost its standing");
        }
        stands
    }

    fn end_client(&self, client_id: &str, reason: u8) -> bool {
        let n = self.backend.live.end_where(ReasonCode(reason), |c, _, _| c == client_id);
        if n > 0 {
            info!(client_id = %Escaped(client_id), reason = %ReasonCode(reason), "cluster: connection ended for another node");
        }
        n > 0
    }
}
