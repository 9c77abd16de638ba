//! The shell's side of the cluster's control plane (SPEC §11 "trust changes are
//! cluster-wide"): a change made through one node's admin API is applied by every node, the
//! way that node applies its own — the policy store swapped (disabled and removed users lose
//! their connections), a ban's live connections ended — and a kick or a takeover from another
//! node ends the connection here; another node's `GET /admin/sessions` is answered here with
//! this node's sessions.
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
//! [`CRL_REVOKED`]: by node, the certificates its TLS listeners' CRLs revoke (each node writes
//! its own entry at start and after a SIGHUP); every other node refuses them at its TLS
//! listeners and ends the connections holding them, as a reload of its own CRLs does.

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
/// The certificates each node's CRLs revoke.
pub const CRL_REVOKED: &str = "crl-revoked";
/// Every document this node shares.
pub const DOCUMENTS: &[&str] = &[POLICY, BANS, TOKEN_KEYS, REVOCATIONS, OAUTH_CLIENTS, CRL_REVOKED];

/// The largest [`CRL_REVOKED`] document shared (NATS refuses messages over 1 MiB by default,
/// and a document JetStream refuses would hold up the others behind it).
const MAX_CRL_DOCUMENT: usize = 512 * 1024;

/// [`CRL_REVOKED`]: by node, the certificates its CRLs revoke, by issuer (the issuer's
/// distinguished name, DER, base64) then serial numbers (big-endian bytes, base64).
#[derive(Serialize, Deserialize, Default, PartialEq, Eq, Clone)]
struct CrlRevoked {
    nodes: BTreeMap<String, BTreeMap<String, std::collections::BTreeSet<String>>>,
}

type RevokedByIssuer = BTreeMap<String, std::collections::BTreeSet<String>>;

fn by_issuer(revoked: &warden_policy::trust::RevokedCerts) -> RevokedByIssuer {
    use base64::Engine as _;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut out = RevokedByIssuer::new();
    for c in revoked.iter() {
        out.entry(b64.encode(&c.issuer)).or_default().insert(b64.encode(&c.serial));
    }
    out
}

fn from_issuers<'a>(
    lists: impl Iterator<Item = &'a RevokedByIssuer>,
) -> Result<warden_policy::trust::RevokedCerts, String> {
    use base64::Engine as _;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut out = warden_policy::trust::RevokedCerts::default();
    for list in lists {
        for (issuer, serials) in list {
            let issuer: Box<[u8]> = b64.decode(issuer).map_err(|e| e.to_string())?.into();
            for s in serials {
                let serial = b64.decode(s).map_err(|e| e.to_string())?.into();
                out.insert(warden_policy::trust::CertRef { issuer: issuer.clone(), serial });
            }
        }
    }
    Ok(out)
}

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
    /// The other nodes' CRL revocations as last read (each node's entry is its latest set).
    peer_crls: Mutex<BTreeMap<String, RevokedByIssuer>>,
    /// True once a version of [`CRL_REVOKED`] was read.
    crl_read: std::sync::atomic::AtomicBool,
}

impl ClusterSync {
    /// The sink for `backend`'s node `node`.
    pub fn new(backend: Arc<Backend>, node: String, auth: Arc<crate::auth::Authenticator>) -> Arc<ClusterSync> {
        Arc::new(ClusterSync {
            backend,
            node,
            auth,
            peer_keys: Mutex::new(BTreeMap::new()),
            peer_crls: Mutex::new(BTreeMap::new()),
            crl_read: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Share this node's token-service keys and revocations now, and each revocation made
    /// here from now on. Call once, after [`warden_cluster::Cluster::attach_control`].
    pub fn start(self: &Arc<Self>) {
        if !self.own_crls().is_empty() {
            // Once the cluster's version has been read, it is written back with this node's
            // entry (crls_from_peer), the other nodes' kept; when there is none after a few
            // polls, this node writes it alone.
            let weak: Weak<ClusterSync> = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(warden_cluster::control::POLL * 4).await;
                if let Some(s) = weak.upgrade() {
                    if !s.crl_read.load(std::sync::atomic::Ordering::Relaxed) {
                        s.share_crls();
                    }
                }
            });
        }
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

    /// After this node's reload (SIGHUP): share what it changed — the stored OAuth clients
    /// when the file changed (`warden oauth client add`), the certificates its CRLs revoke.
    pub fn reloaded(&self) {
        self.backend.share_oauth_clients_if_changed();
        self.share_crls();
    }

    /// The certificates this node's own CRLs revoke now (every MQTT TLS listener).
    fn own_crls(&self) -> RevokedByIssuer {
        let mut all = warden_policy::trust::RevokedCerts::default();
        for l in &self.backend.tls {
            all.extend(&l.revoked());
        }
        by_issuer(&all)
    }

    /// What this node knows of every node's CRL revocations, its own first-hand.
    fn known_crls(&self) -> CrlRevoked {
        let mut doc = CrlRevoked { nodes: self.peer_crls.lock().clone() };
        doc.nodes.insert(self.node.clone(), self.own_crls());
        doc.nodes.retain(|_, v| !v.is_empty());
        doc
    }

    fn share_crls(&self) {
        if let Some(c) = &self.backend.cluster {
            match serde_json::to_vec(&self.known_crls()) {
                Ok(body) if body.len() > MAX_CRL_DOCUMENT => warn!(
                    bytes = body.len(),
                    "cluster: the CRL revocations are too many to share; each node's CRLs stay its own (give every node the same CRL files)"
                ),
                Ok(body) => c.publish_document(CRL_REVOKED, body),
                Err(e) => warn!(error = %e, "cluster: the CRL revocations could not be encoded"),
            }
        }
    }

    /// Take the other nodes' CRL revocations: this node's TLS listeners refuse those
    /// certificates from now on and the live connections holding them end (0x87, as a CRL
    /// reload here does); write this node's own set back when the version read lacks it.
    fn crls_from_peer(&self, body: &[u8]) -> Result<(), String> {
        let doc: CrlRevoked = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        self.crl_read.store(true, std::sync::atomic::Ordering::Relaxed);
        let union = {
            let mut peers = self.peer_crls.lock();
            *peers = doc.nodes.iter().filter(|(n, _)| **n != self.node).map(|(n, v)| (n.clone(), v.clone())).collect();
            from_issuers(peers.values())?
        };
        let union = Arc::new(union);
        for l in &self.backend.tls {
            l.set_peer_revoked(union.clone());
        }
        let applied = self.backend.trust.apply(&warden_policy::trust::TrustEvent::CertificatesRevoked(union.clone()));
        info!(
            revoked = union.len(),
            connections = applied.connections,
            "cluster: certificates the other nodes' CRLs revoke are refused here"
        );
        let own = self.own_crls();
        let theirs = doc.nodes.get(&self.node).cloned().unwrap_or_default();
        if own != theirs {
            self.share_crls();
        }
        Ok(())
    }

    /// True when another node's shared CRL revocations name `chain` (also where this node
    /// has no TLS listener to hold them).
    fn peer_crls_revoke(&self, chain: &warden_policy::trust::CertChain) -> bool {
        let peers = self.peer_crls.lock();
        from_issuers(peers.values()).is_ok_and(|all| all.revokes(chain))
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
            CRL_REVOKED => self.crls_from_peer(body),
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
        // A certificate's standing: the device registry (in `stands`) and every CRL this node
        // knows, its own listeners' and the other nodes' (`crl-revoked`), as loaded now.
        let revoked = jti.is_some_and(|j| self.backend.oauth.as_ref().is_some_and(|o| o.is_revoked(j)))
            || match owner.credential() {
                Some(warden_policy::trust::Credential::Certificate(chain)) => {
                    self.backend.tls.iter().any(|l| l.revoked().revokes(chain) || l.peer_revoked().revokes(chain))
                        || self.peer_crls_revoke(chain)
                }
                _ => false,
            };
        let stands = ctx.stands(owner) && !revoked;
        if !stands {
            info!(principal = %crate::logsafe::Escaped(&owner.to_string()), "cluster: a dead node's will not published: its owner lost its standing");
        }
        stands
    }

    fn sessions(&self) -> Vec<u8> {
        // At most MAX_SESSIONS_ANSWER bytes of JSON: the first sessions by client id.
        let mut list = warden_http::admin::AdminBackend::sessions(&*self.backend);
        list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut out = b"[".to_vec();
        let mut left_out = 0usize;
        for s in &list {
            let Ok(one) = serde_json::to_vec(s) else { continue };
            if left_out > 0 || out.len() + one.len() + 2 > warden_cluster::control::MAX_SESSIONS_ANSWER {
                left_out += 1;
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(&one);
        }
        out.push(b']');
        if left_out > 0 {
            warn!(left_out, "cluster: too many sessions to list for another node; the first by client id were sent");
        }
        out
    }

    fn stats(&self) -> Vec<u8> {
        serde_json::to_vec(&warden_http::admin::AdminBackend::stats(&*self.backend)).unwrap_or_default()
    }

    fn session(&self, client_id: &str) -> Option<Vec<u8>> {
        let s = warden_http::admin::AdminBackend::session(&*self.backend, client_id)?;
        serde_json::to_vec(&s).ok()
    }

    fn drop_session(&self, client_id: &str) -> bool {
        let removed = warden_http::admin::AdminBackend::delete_session(&*self.backend, client_id);
        if removed {
            info!(client_id = %Escaped(client_id), "cluster: session removed for another node's admin API");
        }
        removed
    }

    fn end_client(&self, client_id: &str, reason: u8) -> bool {
        let n = self.backend.live.end_where(ReasonCode(reason), |c, _, _| c == client_id);
        if n > 0 {
            info!(client_id = %Escaped(client_id), reason = %ReasonCode(reason), "cluster: connection ended for another node");
        }
        n > 0
    }
}
