//! The admin REST API (`/admin/...`): the policy store (users, groups, roles, rules, the
//! device registry: [`devices`]), OAuth clients, connected clients (list, kick) and bans. The broker side (persistence, applying a
//! change live) is behind [`AdminBackend`], which the `warden` crate implements; this module is
//! HTTP only and is tested without sockets.
//!
//! Authentication: `Authorization: Bearer <token>`, where the token is either the configured
//! admin token (its argon2id hash is configured; compared by [`password::verify_hash`]) or an
//! access token of the built-in token service carrying the `admin` *scope*, issued to an OAuth
//! client the operator declared (config, admin API or CLI) that still has that scope. Nothing
//! else is an admin: not a token *role* named `admin` (a policy-store role name, which anyone
//! allowed to edit roles or a client's role list could hand out), not an outside issuer's JWT,
//! not a look-up answer, not an MQTT password. No or a bad token: 401; a valid token without
//! the `admin` scope: 403. Errors are JSON `{"error": "..."}`; nothing
//! secret is ever echoed or logged. `GET /admin/openapi.json` (no authentication) describes
//! every endpoint.
//!
//! Audit trail (SPEC §9): the admin check names the caller ([`audit::AdminActor`], a request
//! extension); every change — made or refused after authentication — is handed to
//! [`AdminBackend::audit`] as an [`audit::AuditRecord`] (who, from where, what, on what, the
//! result), and `GET /admin/audit` reads the trail back through [`AdminBackend::audit_since`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use warden_policy::password;
use warden_policy::store::{valid_name, Group, PolicyStore, Role, Rule, User};

use crate::error::Api;
use crate::secrets::{peer_ip, HashClass, PeerAddr, SecretChecks};
use crate::OAuthService;

pub mod audit;
mod claims;
mod devices;
mod watch;

pub use watch::WatchRestrictionView;

use audit::{AdminActor, AuditRecord};

/// The admin API's errors: the crate's one error type, mapped to a status in one place
/// ([`crate::HttpError`]). Answered as JSON `{"error": "..."}` with `Cache-Control: no-store`.
pub type AdminError = crate::HttpError;

type ApiResult<T> = Result<T, AdminError>;

/// A session, as `GET /admin/sessions` lists it (connected or persistent offline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Client identifier.
    pub client_id: String,
    /// `kind:name` of the principal it belongs to.
    pub principal: String,
    /// A connection is attached now.
    pub connected: bool,
    /// Session Expiry Interval in seconds (4294967295: never).
    pub expiry_interval: u32,
    /// Seconds since its connection ended (offline sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_for: Option<u64>,
    /// Number of subscriptions.
    pub subscription_count: usize,
    /// Its subscriptions (`GET /admin/sessions/{client_id}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionView>,
    /// Deliveries queued.
    pub queued: usize,
    /// Bytes of the queued deliveries.
    pub queued_bytes: u64,
    /// QoS 1/2 deliveries sent and not yet acknowledged.
    pub inflight: usize,
    /// The cluster node that holds it (SPEC §11; absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// That node is gone (holds no lease: killed, or away for more than 10 s): the session is
    /// kept in the cluster's sessions bucket, and its client resumes it on any node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_gone: bool,
}

/// A subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    /// Topic filter (a `$share/...` one as subscribed).
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
}

/// A retained message, as `GET /admin/retained` lists it (without its payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedView {
    /// Topic.
    pub topic: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// QoS it was published with.
    pub qos: u8,
    /// Its publisher's principal (`kind:name`, `broker` for `$SYS`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

/// A connected client, as `GET /admin/clients` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Client identifier.
    pub client_id: String,
    /// `kind:name` of the principal.
    pub principal: String,
    /// Peer address.
    pub peer: String,
    /// `3.1`, `3.1.1` or `5.0`.
    pub protocol: String,
    /// Unix seconds when it connected.
    pub connected_at: u64,
    /// The cluster node it is connected to (SPEC §11; absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How it authenticated: `password-file`, `policy-store`, `certificate`, `token`,
    /// `lookup`, `anonymous` (absent for a client on another node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The subject of its client certificate (certificate clients whose certificate this node
    /// saw in a TLS handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Unix seconds when its client certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_at: Option<u64>,
    /// Unix seconds when its access token expires (token clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<u64>,
}

/// A client certificate the broker has seen in a verified TLS handshake, as
/// `GET /admin/certificates` lists it (most recently seen first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    /// SHA-256 of the DER certificate, lower-case hex.
    pub fingerprint: String,
    /// Subject distinguished name (RFC 4514 text).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// The identity the listener took from it (absent: none could be taken, the client was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Validity, unix seconds.
    pub not_before: u64,
    /// Validity end, unix seconds.
    pub not_after: u64,
    /// First and last handshake with it, unix seconds.
    pub first_seen: u64,
    /// Last handshake with it, unix seconds.
    pub last_seen: u64,
    /// The address of the last handshake.
    pub last_peer: String,
    /// Handshakes seen with it.
    pub handshakes: u64,
    /// Revoked by a CRL in force now.
    pub revoked: bool,
    /// Connections authenticated with it now.
    pub connected: usize,
}

/// The broker's counters at a moment, as `GET /admin/stats` answers (the console's Overview
/// computes rates from two of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    /// Unix milliseconds of the reading.
    pub at_ms: u64,
    /// MQTT clients connected now.
    pub connections: u64,
    /// Sessions held (connected and offline).
    pub sessions: u64,
    /// Subscriptions held.
    pub subscriptions: u64,
    /// PUBLISH packets received from clients since start.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients since start.
    pub messages_sent: u64,
    /// CONNECTs accepted since start.
    pub connections_accepted: u64,
    /// CONNECTs refused since start (any reason).
    pub connections_refused: u64,
    /// Refused authentication attempts since start, all methods.
    pub auth_failures: u64,
    /// Refused authentication attempts by method.
    pub auth_failures_by_method: std::collections::BTreeMap<String, u64>,
    /// Operations refused by authorization since start.
    pub authz_denied: u64,
    /// Bans in force (the operator's and automatic).
    pub bans_active: u64,
}

impl StatsView {
    /// Add `other`'s counters to these (a cluster's sum; `at_ms` the later of the two).
    pub fn add(&mut self, other: &StatsView) {
        self.at_ms = self.at_ms.max(other.at_ms);
        self.connections += other.connections;
        self.sessions += other.sessions;
        self.subscriptions += other.subscriptions;
        self.messages_received += other.messages_received;
        self.messages_sent += other.messages_sent;
        self.connections_accepted += other.connections_accepted;
        self.connections_refused += other.connections_refused;
        self.auth_failures += other.auth_failures;
        for (m, n) in &other.auth_failures_by_method {
            *self.auth_failures_by_method.entry(m.clone()).or_default() += n;
        }
        self.authz_denied += other.authz_denied;
        self.bans_active += other.bans_active;
    }
}

/// `GET /admin/stats?scope=cluster`: every node's counters and their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatsView {
    /// The sum over the nodes that answered.
    pub total: StatsView,
    /// Each node's counters (this node's included), by node name.
    pub nodes: std::collections::BTreeMap<String, StatsView>,
    /// Live nodes (holding a lease) that did not answer within 2 s: not in the sum.
    pub missing: Vec<String>,
}

/// `POST /admin/explain`: one question to the broker's authorization, answered by its own code
/// path (ACL file, policy store and a token's scopes together).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The principal's plain name (a user name, certificate identity or token subject).
    pub principal: String,
    /// `user` (default), `certificate`, `token` or `anonymous`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The client id (rules with `%c`).
    #[serde(default)]
    pub client_id: String,
    /// `publish`, `subscribe` or `receive`.
    pub action: String,
    /// The topic (a filter for subscribe).
    pub topic: String,
    /// QoS asked (default 0).
    #[serde(default)]
    pub qos: u8,
    /// A retained publish (default no).
    #[serde(default)]
    pub retain: bool,
    /// The client's address (rules with a `source` condition apply only when given).
    #[serde(default)]
    pub from: Option<std::net::IpAddr>,
    /// A token principal's scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A token principal's roles.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The answer to an [`ExplainRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainAnswer {
    /// `allow` or `deny`.
    pub decision: String,
    /// What decided: `store:ROLE/RULE`, `acl:LINE`, `scopes`, `default-deny`, `no-source`,
    /// `invalid-topic`.
    pub decided_by: String,
    /// The deciding policy-store role and rule id, when the store decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The deciding rule id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// One sentence for people: the deciding ACL line's text, or why nothing matched.
    pub detail: String,
}

/// A future the admin API awaits: an answer from the other nodes of a cluster.
pub type BackendFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// What a ban matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BanKind {
    /// A client identifier (refused at CONNECT, 0x8A / v3 0x05).
    ClientId,
    /// A user name or principal name (refused at CONNECT).
    Username,
    /// One IP address (refused at accept).
    Ip,
    /// An address block `a.b.c.d/n` or `x::/n` (refused at accept).
    Cidr,
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    /// What it matches.
    pub kind: BanKind,
    /// The client id, user name, address or block.
    pub value: String,
    /// Unix seconds after which it no longer applies (none: permanent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An OAuth client as the admin API shows it (never the secret or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthClientInfo {
    /// Client id.
    pub id: String,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    /// Roles carried in its tokens.
    pub roles: Vec<String>,
}

/// A closure that edits the policy store under the backend's lock.
pub type PolicyEdit<'a> = &'a mut dyn FnMut(&mut PolicyStore) -> Result<(), AdminError>;

/// The broker side of the admin API.
pub trait AdminBackend: Send + Sync + 'static {
    /// The store as it is now.
    fn policy(&self) -> PolicyStore;
    /// Edit the store: run `edit` on a copy, validate, persist atomically, apply live
    /// (authorizer swap, disconnect disabled / deleted users). All or nothing.
    fn update_policy(&self, edit: PolicyEdit<'_>) -> Result<(), AdminError>;
    /// Connected clients.
    fn clients(&self) -> Vec<ClientInfo>;
    /// Disconnect a client (v5 DISCONNECT 0x98). False when no such client is connected.
    fn kick(&self, client_id: &str) -> bool;
    /// End `client_id`'s connection on another node of a cluster (SPEC §11), when [`kick`]
    /// found none here: true when a node holding it was told.
    ///
    /// [`kick`]: AdminBackend::kick
    fn kick_elsewhere(&self, _client_id: &str) -> BackendFuture<bool> {
        Box::pin(async { false })
    }
    /// The clients connected to the other nodes of a cluster.
    fn clients_elsewhere(&self) -> BackendFuture<Vec<ClientInfo>> {
        Box::pin(async { Vec::new() })
    }
    /// Bans in force.
    fn bans(&self) -> Vec<Ban>;
    /// Add (or replace) a ban; persisted; live connections it matches are disconnected.
    fn add_ban(&self, ban: Ban) -> Result<(), AdminError>;
    /// Remove a ban; false when there was none.
    fn remove_ban(&self, kind: BanKind, value: &str) -> Result<bool, AdminError>;
    /// OAuth clients (configured and stored).
    fn oauth_clients(&self) -> Result<Vec<OAuthClientInfo>, AdminError>;
    /// Add or replace a stored OAuth client (the secret already hashed), applied at once.
    fn put_oauth_client(&self, client: OAuthClientInfo, secret_hash: String) -> Result<(), AdminError>;
    /// Remove a stored OAuth client; false when there was none.
    fn remove_oauth_client(&self, id: &str) -> Result<bool, AdminError>;
    /// Append a record to the admin audit trail (persisted before this returns). A failure to
    /// write is the implementation's to report (in its log); the change is already made.
    fn audit(&self, record: &AuditRecord);
    /// The audit trail's records stamped at or after `since` (unix seconds), oldest first: the
    /// newest `limit` of them.
    fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<AuditRecord>, AdminError>;
    /// The posture audit of the running broker (SPEC §13), as the JSON report `warden audit
    /// --format json` prints: `{"findings": [...], "counts": {...}, "highest": ..., "fail": ...}`.
    /// Default: not available (a backend without a configuration).
    fn posture(&self) -> Result<serde_json::Value, AdminError> {
        Err(AdminError::not_found("the posture audit is not available"))
    }
    /// Every session (without their subscription lists), by client id. Default: none (a
    /// backend without a broker).
    fn sessions(&self) -> Vec<SessionView> {
        Vec::new()
    }
    /// The sessions the other nodes of a cluster hold (SPEC §11), each with its `node`.
    fn sessions_elsewhere(&self) -> BackendFuture<Vec<SessionView>> {
        Box::pin(async { Vec::new() })
    }
    /// One session with its subscriptions.
    fn session(&self, client_id: &str) -> Option<SessionView> {
        let _ = client_id;
        None
    }
    /// Remove a session (its connection, if any, is ended; its will is discarded); false when
    /// there is none.
    fn delete_session(&self, client_id: &str) -> bool {
        let _ = client_id;
        false
    }
    /// One session another node of a cluster holds (SPEC §11), with its subscriptions and
    /// `node`; `None` when no other node holds it. Default: none.
    fn session_elsewhere(&self, client_id: &str) -> BackendFuture<Option<SessionView>> {
        let _ = client_id;
        Box::pin(async { None })
    }
    /// Remove a session another node of a cluster holds (as [`AdminBackend::delete_session`]
    /// there); false when no other node holds it. Default: none.
    fn delete_session_elsewhere(&self, client_id: &str) -> BackendFuture<bool> {
        let _ = client_id;
        Box::pin(async { false })
    }
    /// Retained messages matching `filter`, at most `limit`, by topic.
    fn retained(&self, filter: &str, limit: usize) -> Result<Vec<RetainedView>, AdminError> {
        let _ = (filter, limit);
        Ok(Vec::new())
    }
    /// Clear the retained message of exactly `topic`; false when it holds none.
    fn delete_retained(&self, topic: &str) -> Result<bool, AdminError> {
        let _ = topic;
        Ok(false)
    }
    /// Client certificates seen in verified TLS handshakes. Default: none.
    fn certificates(&self) -> Vec<CertificateView> {
        Vec::new()
    }
    /// The broker's counters now. Default: zeros.
    fn stats(&self) -> StatsView {
        StatsView::default()
    }
    /// The counters of every node of a cluster and their sum (`GET /admin/stats?scope=cluster`);
    /// `None` when this broker is not a node of a cluster. Default: none.
    fn stats_cluster(&self) -> BackendFuture<Option<ClusterStatsView>> {
        Box::pin(async { None })
    }
    /// The counters sampled every few seconds over the last minutes, oldest first (the
    /// Overview's charts start from them). Default: none.
    fn stats_history(&self) -> Vec<StatsView> {
        Vec::new()
    }
    /// Whether the behaviour watch runs (`[watch] enabled`). Default: no.
    fn watch_enabled(&self) -> bool {
        false
    }
    /// The behaviour watch's newest `limit` alerts, newest first. Default: none.
    fn watch_alerts(&self, _limit: usize) -> Result<Vec<Value>, AdminError> {
        Ok(Vec::new())
    }
    /// The quarantines and throttles the behaviour watch holds. Default: none.
    fn watch_restrictions(&self) -> Result<Vec<WatchRestrictionView>, AdminError> {
        Ok(Vec::new())
    }
    /// Lift the quarantine and throttle of principal `kind`/`name`; false when none was in
    /// force. Default: none ever is.
    fn watch_lift(&self, _kind: &str, _name: &str) -> Result<bool, AdminError> {
        Ok(false)
    }
    /// Explain one authorization decision. Default: not available.
    fn explain(&self, req: &ExplainRequest) -> Result<ExplainAnswer, AdminError> {
        let _ = req;
        Err(AdminError::not_found("explain is not available"))
    }
}

/// How admins authenticate.
#[derive(Clone, Default)]
pub struct AdminAuth {
    /// Hash of the static admin token (`[http] admin_token_hash`).
    pub token_hash: Option<String>,
    /// The built-in token service (its tokens with the `admin` scope are admins; never a role).
    pub oauth: Option<Arc<OAuthService>>,
    /// The failure guard and hashing budget the admin token (and every password the API
    /// hashes) goes through.
    pub checks: SecretChecks,
    /// SHA-256 of the last static admin token that verified: the console asks the API every
    /// second or two, and a slow hash per request would cost a core's worth of argon2id
    /// (compared in constant time; a wrong token still goes through the slow hash and the
    /// failure guard).
    pub verified: Arc<parking_lot::Mutex<Option<[u8; 32]>>>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth").field("token_hash", &self.token_hash.as_ref().map(|_| "<redacted>")).finish()
    }
}

struct AdminState {
    backend: Arc<dyn AdminBackend>,
    auth: AdminAuth,
}

/// The name the static admin token's failures are counted under in the failure guard (per
/// address, like a user name; a NUL can never be an MQTT user name or an OAuth client id).
const ADMIN_TOKEN_NAME: &str = "\0admin-token";

/// The 401 message: no, or no valid, admin credential.
const NOT_AN_ADMIN: &str = "a valid admin bearer token is required";

type St = State<Arc<AdminState>>;

/// The scope that makes a built-in token service's token an admin's. Only the scope: a role
/// of that name is an ordinary policy-store role.
pub const ADMIN_SCOPE: &str = "admin";

/// The admin router (paths under `/admin`).
pub fn admin_router(backend: Arc<dyn AdminBackend>, auth: AdminAuth) -> Router {
    let state = Arc::new(AdminState { backend, auth });
    let protected = Router::new()
        .route("/admin/users", get(list_users).post(create_user))
        .route("/admin/users/{name}", get(get_user).put(update_user).delete(delete_user))
        .route("/admin/groups", get(list_groups).post(create_group))
        .route("/admin/groups/{name}", get(get_group).put(update_group).delete(delete_group))
        .route("/admin/roles", get(list_roles).post(create_role))
        .route("/admin/roles/{name}", get(get_role).delete(delete_role))
        .route("/admin/roles/{name}/quotas", get(get_role_quotas).put(put_role_quotas))
        .route("/admin/roles/{name}/rules", get(list_rules).post(add_rule))
        .route("/admin/roles/{name}/rules/{id}", delete(delete_rule))
        .route("/admin/devices", get(devices::list_devices).post(devices::create_device))
        .route(
            "/admin/devices/{id}",
            get(devices::get_device).put(devices::update_device).delete(devices::delete_device),
        )
        .route("/admin/devices/{id}/certificates", get(devices::list_certs).post(devices::add_cert_route))
        .route(
            "/admin/devices/{id}/certificates/{fingerprint}",
            axum::routing::put(devices::set_cert_status).delete(devices::remove_cert),
        )
        .route("/admin/claims", get(claims::list_claims).post(claims::create_claim))
        .route("/admin/claims/{name}", get(claims::get_claim).delete(claims::delete_claim))
        .route("/admin/claims/{name}/certificates", post(claims::add_claim_cert))
        .route("/admin/claims/{name}/tokens", post(claims::create_token))
        .route("/admin/claims/{name}/tokens/{id}", delete(claims::delete_token))
        .route("/admin/claims/{name}/certificates/{fingerprint}", axum::routing::put(claims::set_claim_cert_status))
        .route("/admin/clients", get(list_clients))
        .route("/admin/clients/{id}/kick", post(kick))
        .route("/admin/bans", get(list_bans).post(add_ban).delete(remove_ban))
        .route("/admin/oauth/clients", get(list_oauth).post(put_oauth))
        .route("/admin/oauth/clients/{id}", delete(delete_oauth))
        .route("/admin/audit", get(get_audit))
        .route("/admin/audit/posture", get(get_posture))
        .route("/admin/tokens/introspect", post(introspect_token))
        .route("/admin/tokens/revoke", post(revoke_token))
        .route("/admin/sessions", get(list_sessions))
        .route("/admin/sessions/{id}", get(get_session).delete(delete_session))
        .route("/admin/retained", get(list_retained).delete(delete_retained))
        .route("/admin/certificates", get(list_certificates))
        .route("/admin/stats", get(get_stats))
        .route("/admin/stats/history", get(get_stats_history))
        .route("/admin/explain", post(explain))
        .route("/admin/watch/rules", get(watch::list_rules))
        .route("/admin/watch/rules/{id}", axum::routing::put(watch::put_rule).delete(watch::delete_rule))
        .route("/admin/watch/quarantine-topics", axum::routing::put(watch::put_quarantine_topics))
        .route("/admin/watch/alerts", get(watch::list_alerts))
        .route("/admin/watch/restrictions", get(watch::list_restrictions))
        .route("/admin/watch/restrictions/{kind}/{name}", delete(watch::lift))
        // Every route but the OpenAPI document: an admin, checked before anything else.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admin_gate));
    Router::new()
        .route("/admin/openapi.json", get(openapi))
        .merge(protected)
        .layer(axum::extract::DefaultBodyLimit::max(crate::MAX_BODY_BYTES))
        .with_state(state)
}

/// The admin check in front of every protected route (see [`require_admin`]). An admin's
/// request carries an [`AdminActor`] extension on to its handler (for the audit trail).
async fn admin_gate(State(st): St, mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !same_origin(req.headers()) {
        return AdminError::CrossOrigin.into_response();
    }
    let addr = req.extensions().get::<PeerAddr>().copied();
    match require_admin(&st, req.headers(), peer_ip(addr)).await {
        Ok(name) => {
            req.extensions_mut().insert(AdminActor { name, peer: addr.map(|p| p.0) });
            next.run(req).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// A browser's request from a page of this origin, or not a browser's (no `Origin` header):
/// the API never grants another origin anything (no CORS headers), and refuses, before any
/// credential is checked, a request whose `Origin` is not the host it was sent to — a page
/// elsewhere cannot even make the API do something it could not read the answer of. (Behind a
/// reverse proxy, the proxy must pass the `Host` the browser used.)
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")))
        .filter(|a| !a.is_empty() && !a.contains('/'));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// The OpenAPI 3 document of this API (also checked in as `docs/admin-openapi.json`).
pub const OPENAPI: &str = include_str!("../../../docs/admin-openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Authenticate the request from `peer`: the admin's audit name (`admin-token`, or
/// `oauth:<client id>`) for an admin; otherwise the answer. 401 for no or
/// a wrong credential, 403 for a valid token without the `admin` scope, 429 (with
/// `Retry-After`) when the address is banned after repeated failed authentications or the
/// admin token is backing off from it — decided before any hashing or signature check — and
/// 503 when no hashing slot was free in time. A wrong admin token or a bad signed token counts
/// as a failed authentication from `peer` (the same per-address guard as MQTT's).
async fn require_admin(st: &AdminState, headers: &HeaderMap, peer: std::net::IpAddr) -> Result<String, AdminError> {
    let unauthorized = || AdminError::Unauthenticated(NOT_AN_ADMIN.into());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(unauthorized)?;
    let checks = &st.auth.checks;
    let refused = |r| AdminError::refused(r, NOT_AN_ADMIN);
    if bearer.split('.').count() == 3 {
        let Some(oauth) = &st.auth.oauth else { return Err(unauthorized()) };
        checks.precheck(peer, None).map_err(refused)?;
        // Verified by the token service itself: its own keys only (never an outside issuer's),
        // a client that is still declared and still has every scope the token carries.
        let Ok(t) = oauth.verify(bearer) else {
            checks.failed(peer, None);
            tracing::info!(%peer, "admin API: bearer token refused");
            return Err(unauthorized());
        };
        return if t.scopes.iter().any(|s| s == ADMIN_SCOPE) {
            Ok(format!("oauth:{}", crate::service::token_client(&t)))
        } else {
            Err(AdminError::Forbidden)
        };
    }
    let Some(hash) = st.auth.token_hash.clone() else { return Err(unauthorized()) };
    let digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(bearer.as_bytes()).into()
    };
    if st.auth.verified.lock().is_some_and(|v| bool::from(subtle::ConstantTimeEq::ct_eq(&v[..], &digest[..]))) {
        // A banned address stays refused even with the right token.
        checks.precheck(peer, Some(ADMIN_TOKEN_NAME)).map_err(refused)?;
        return Ok(audit::ACTOR_ADMIN_TOKEN.to_owned());
    }
    let r = checks.verify(peer, ADMIN_TOKEN_NAME, hash, bearer.as_bytes().to_vec()).await;
    if let Err(e) = r {
        tracing::info!(%peer, outcome = ?e, "admin API: admin token refused");
    }
    r.map_err(refused)?;
    *st.auth.verified.lock() = Some(digest);
    Ok(audit::ACTOR_ADMIN_TOKEN.to_owned())
}

/// Parse a JSON body, with a clear 400 on malformed input.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| AdminError::bad_request(format!("invalid JSON body: {e}")))
}

async fn hash(st: &AdminState, password: String) -> ApiResult<String> {
    if password.is_empty() {
        return Err(AdminError::bad_request("password must not be empty"));
    }
    Ok(st.auth.checks.budget.run(HashClass::Http, move || password::hash_password(password.as_bytes())).await?)
}

fn created() -> Response {
    (StatusCode::CREATED, Json(serde_json::json!({ "ok": true }))).into_response()
}

fn done() -> Response {
    Json(serde_json::json!({ "ok": true })).into_response()
}

fn edit(st: &AdminState, mut f: impl FnMut(&mut PolicyStore) -> ApiResult<()>) -> ApiResult<()> {
    st.backend.update_policy(&mut f)
}

// --- audit trail ---------------------------------------------------------------------------

/// One change being made: written to the audit trail, with its result, when it is answered.
struct Change<'a> {
    st: &'a AdminState,
    actor: AdminActor,
    action: &'static str,
    target: String,
    detail: serde_json::Map<String, Value>,
}

impl<'a> Change<'a> {
    fn new(st: &'a AdminState, actor: AdminActor, action: &'static str, target: impl Into<String>) -> Self {
        Change { st, actor, action, target: target.into(), detail: Default::default() }
    }

    /// Note what changed (never a secret).
    fn set(&mut self, key: &str, value: impl Serialize) {
        self.detail.insert(key.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// Record the change with its answer, and pass the answer on.
    fn done(self, answer: ApiResult<Response>) -> ApiResult<Response> {
        let (status, error) = match &answer {
            Ok(r) => (r.status(), None),
            Err(e) => {
                let a = e.answer(Api::Admin);
                (a.status, Some(audit_error(&a.message)))
            }
        };
        let peer = self.actor.peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        let mut r = AuditRecord::now(&self.actor.name, &peer, self.action, &self.target);
        r.detail = Value::Object(self.detail);
        r.status = status.as_u16();
        if !status.is_success() {
            r.result = audit::RESULT_REFUSED.to_owned();
            r.error = error;
        }
        self.st.backend.audit(&r);
        answer
    }
}

/// A refusal's message as the audit trail keeps it. A body the JSON parser refused is only
/// named: its message can quote the body (`invalid type: integer `1234``, which could be a
/// password given as a number).
fn audit_error(message: &str) -> String {
    const BODY: &str = "invalid JSON body";
    if message.starts_with(BODY) {
        BODY.to_owned()
    } else {
        message.to_owned()
    }
}

/// A string field of a JSON body, for the target of a change whose body may be refused
/// (empty when there is none).
fn body_field(body: &Bytes, key: &str) -> String {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get(key)?.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Most records `GET /admin/audit` returns by default, and at most.
const AUDIT_DEFAULT_LIMIT: usize = 1000;
const AUDIT_MAX_LIMIT: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    since: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/audit/posture`: the posture audit's findings (never cached).
async fn get_posture(State(st): St) -> ApiResult<Response> {
    let mut r = Json(st.backend.posture()?).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `GET /admin/audit?since=…&limit=…`: the newest `limit` records at or after `since`, oldest
/// first.
async fn get_audit(
    State(st): St,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| AdminError::bad_request(format!("expected ?since=...&limit=...: {e}")))?;
    let since = match q.since.as_deref() {
        None => 0,
        Some(s) => {
            // A `+hh:mm` offset arrives as ` hh:mm` when the client did not encode the `+`.
            let fixed = match s.len().checked_sub(6) {
                Some(i) if s.as_bytes()[i] == b' ' => format!("{}+{}", &s[..i], &s[i + 1..]),
                _ => s.to_owned(),
            };
            audit::parse_time(&fixed).ok_or_else(|| {
                AdminError::bad_request("since: unix seconds or an RFC 3339 date-time such as 2026-12-06T02:15:07Z")
            })?
        }
    };
    let limit = q.limit.unwrap_or(AUDIT_DEFAULT_LIMIT);
    if !(1..=AUDIT_MAX_LIMIT).contains(&limit) {
        return Err(AdminError::bad_request(format!("limit: 1 to {AUDIT_MAX_LIMIT}")));
    }
    let mut r = Json(st.backend.audit_since(since, limit)?).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(r)
}

// --- users ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct UserView {
    name: String,
    groups: Vec<String>,
    roles: Vec<String>,
    disabled: bool,
    has_password: bool,
}

fn user_view(name: &str, u: &User) -> UserView {
    UserView {
        name: name.to_owned(),
        groups: u.groups.clone(),
        roles: u.roles.clone(),
        disabled: u.disabled,
        has_password: u.password_hash.is_some(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    disabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    password: Option<String>,
    groups: Option<Vec<String>>,
    roles: Option<Vec<String>>,
    disabled: Option<bool>,
}

async fn list_users(State(st): St) -> ApiResult<Response> {
    let p = st.backend.policy();
    Ok(Json(p.users.iter().map(|(n, u)| user_view(n, u)).collect::<Vec<_>>()).into_response())
}

async fn get_user(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let u = p.users.get(&name).ok_or_else(|| AdminError::not_found(format!("no user '{name}'")))?;
    Ok(Json(user_view(&name, u)).into_response())
}

async fn create_user(State(st): St, Extension(a): Extension<AdminActor>, body: Bytes) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "user.create", body_field(&body, "name"));
    let answer = async {
        let n: NewUser = parse(&body)?;
        c.set("password", if n.password.is_some() { "set" } else { "none" });
        c.set("groups", &n.groups);
        c.set("roles", &n.roles);
        c.set("disabled", n.disabled);
        valid_name("user", &n.name)?;
        let password_hash = match n.password {
            Some(p) => Some(hash(&st, p).await?),
            None => None,
        };
        let user = User { password_hash, groups: n.groups, roles: n.roles, disabled: n.disabled };
        edit(&st, |p| {
            if p.users.contains_key(&n.name) {
                return Err(AdminError::conflict(format!("user '{}' exists", n.name)));
            }
            p.users.insert(n.name.clone(), user.clone());
            Ok(())
        })?;
        Ok::<_, AdminError>(created())
    }
    .await;
    c.done(answer)
}

async fn update_user(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "user.update", name.clone());
    let answer = async {
        let patch: UserPatch = parse(&body)?;
        if patch.password.is_some() {
            c.set("password", "changed");
        }
        if let Some(g) = &patch.groups {
            c.set("groups", g);
        }
        if let Some(r) = &patch.roles {
            c.set("roles", r);
        }
        if let Some(d) = patch.disabled {
            c.set("disabled", d);
        }
        let password_hash = match patch.password.clone() {
            Some(p) => Some(hash(&st, p).await?),
            None => None,
        };
        let mut previous = serde_json::Map::new();
        edit(&st, |p| {
            let u = p.users.get_mut(&name).ok_or_else(|| AdminError::not_found(format!("no user '{name}'")))?;
            previous.clear();
            if let Some(h) = &password_hash {
                u.password_hash = Some(h.clone());
            }
            if let Some(g) = &patch.groups {
                previous.insert("groups".into(), serde_json::json!(u.groups));
                u.groups = g.clone();
            }
            if let Some(r) = &patch.roles {
                previous.insert("roles".into(), serde_json::json!(u.roles));
                u.roles = r.clone();
            }
            if let Some(d) = patch.disabled {
                previous.insert("disabled".into(), serde_json::json!(u.disabled));
                u.disabled = d;
            }
            Ok(())
        })?;
        if !previous.is_empty() {
            c.set("previous", previous);
        }
        Ok::<_, AdminError>(done())
    }
    .await;
    c.done(answer)
}

async fn delete_user(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "user.delete", name.clone());
    let mut removed = None;
    let answer = edit(&st, |p| {
        let u = p.users.remove(&name).ok_or_else(|| AdminError::not_found(format!("no user '{name}'")))?;
        removed = Some((u.groups, u.roles));
        Ok(())
    })
    .map(|()| done());
    if let (Ok(_), Some((groups, roles))) = (&answer, removed) {
        c.set("groups", groups);
        c.set("roles", roles);
    }
    c.done(answer)
}

// --- groups --------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupPatch {
    roles: Vec<String>,
}

async fn list_groups(State(st): St) -> ApiResult<Response> {
    let p = st.backend.policy();
    let v: Vec<_> = p.groups.iter().map(|(n, g)| serde_json::json!({ "name": n, "roles": g.roles })).collect();
    Ok(Json(v).into_response())
}

async fn get_group(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let g = p.groups.get(&name).ok_or_else(|| AdminError::not_found(format!("no group '{name}'")))?;
    Ok(Json(serde_json::json!({ "name": name, "roles": g.roles })).into_response())
}

async fn create_group(State(st): St, Extension(a): Extension<AdminActor>, body: Bytes) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "group.create", body_field(&body, "name"));
    let answer = async {
        let n: NewGroup = parse(&body)?;
        c.set("roles", &n.roles);
        valid_name("group", &n.name)?;
        edit(&st, |p| {
            if p.groups.contains_key(&n.name) {
                return Err(AdminError::conflict(format!("group '{}' exists", n.name)));
            }
            p.groups.insert(n.name.clone(), Group { roles: n.roles.clone() });
            Ok(())
        })?;
        Ok::<_, AdminError>(created())
    }
    .await;
    c.done(answer)
}

async fn update_group(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "group.update", name.clone());
    let answer = async {
        let patch: GroupPatch = parse(&body)?;
        c.set("roles", &patch.roles);
        let mut previous = Vec::new();
        edit(&st, |p| {
            let g = p.groups.get_mut(&name).ok_or_else(|| AdminError::not_found(format!("no group '{name}'")))?;
            previous = std::mem::replace(&mut g.roles, patch.roles.clone());
            Ok(())
        })?;
        c.set("previous", serde_json::json!({ "roles": previous }));
        Ok::<_, AdminError>(done())
    }
    .await;
    c.done(answer)
}

async fn delete_group(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "group.delete", name.clone());
    let mut roles = None;
    let answer = edit(&st, |p| {
        roles = p.groups.get(&name).map(|g| g.roles.clone());
        if p.remove_group(&name) {
            Ok(())
        } else {
            Err(AdminError::not_found(format!("no group '{name}'")))
        }
    })
    .map(|()| done());
    if let (Ok(_), Some(roles)) = (&answer, roles) {
        c.set("roles", roles);
    }
    c.done(answer)
}

// --- roles and rules -----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRole {
    name: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    quotas: warden_policy::Quotas,
}

/// A role as the API shows it: its quotas only when it sets some.
fn role_json(name: &str, r: &Role) -> serde_json::Value {
    let mut v = serde_json::json!({ "name": name, "rules": r.rules });
    if !r.quotas.is_empty() {
        v["quotas"] = serde_json::json!(r.quotas);
    }
    v
}

async fn list_roles(State(st): St) -> ApiResult<Response> {
    let p = st.backend.policy();
    let v: Vec<_> = p.roles.iter().map(|(n, r)| role_json(n, r)).collect();
    Ok(Json(v).into_response())
}

async fn get_role(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let r = p.roles.get(&name).ok_or_else(|| AdminError::not_found(format!("no role '{name}'")))?;
    Ok(Json(role_json(&name, r)).into_response())
}

async fn get_role_quotas(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let r = p.roles.get(&name).ok_or_else(|| AdminError::not_found(format!("no role '{name}'")))?;
    Ok(Json(r.quotas).into_response())
}

/// Replace a role's quota overrides (`{}` removes them: the broker's defaults apply).
async fn put_role_quotas(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "role.quotas", name.clone());
    let answer = async {
        let q: warden_policy::Quotas = parse(&body)?;
        c.set("quotas", q);
        let mut previous = None;
        edit(&st, |p| match p.roles.get_mut(&name) {
            Some(r) => {
                previous = Some(std::mem::replace(&mut r.quotas, q));
                Ok(())
            }
            None => Err(AdminError::not_found(format!("no role '{name}'"))),
        })?;
        c.set("previous", serde_json::json!({ "quotas": previous }));
        Ok::<_, AdminError>(done())
    }
    .await;
    c.done(answer)
}

async fn create_role(State(st): St, Extension(a): Extension<AdminActor>, body: Bytes) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "role.create", body_field(&body, "name"));
    let answer = async {
        let n: NewRole = parse(&body)?;
        c.set("rules", &n.rules);
        if !n.quotas.is_empty() {
            c.set("quotas", n.quotas);
        }
        valid_name("role", &n.name)?;
        edit(&st, |p| {
            if p.roles.contains_key(&n.name) {
                return Err(AdminError::conflict(format!("role '{}' exists", n.name)));
            }
            p.roles.insert(n.name.clone(), Role { rules: n.rules.clone(), quotas: n.quotas });
            Ok(())
        })?;
        Ok::<_, AdminError>(created())
    }
    .await;
    c.done(answer)
}

async fn delete_role(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "role.delete", name.clone());
    let mut rules = None;
    let answer = edit(&st, |p| {
        rules = p.roles.get(&name).map(|r| r.rules.clone());
        if p.remove_role(&name) {
            Ok(())
        } else {
            Err(AdminError::not_found(format!("no role '{name}'")))
        }
    })
    .map(|()| done());
    if let (Ok(_), Some(rules)) = (&answer, rules) {
        c.set("rules", rules);
    }
    c.done(answer)
}

async fn list_rules(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let r = p.roles.get(&name).ok_or_else(|| AdminError::not_found(format!("no role '{name}'")))?;
    Ok(Json(&r.rules).into_response())
}

async fn add_rule(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "rule.add", name.clone());
    let answer = async {
        let rule: Rule = parse(&body)?;
        c.set("rule", &rule);
        rule.validate()?;
        edit(&st, |p| {
            let r = p.roles.get_mut(&name).ok_or_else(|| AdminError::not_found(format!("no role '{name}'")))?;
            if r.rules.iter().any(|x| x.id == rule.id) {
                return Err(AdminError::conflict(format!("role '{name}' already has a rule '{}'", rule.id)));
            }
            r.rules.push(rule.clone());
            Ok(())
        })?;
        Ok::<_, AdminError>(created())
    }
    .await;
    c.done(answer)
}

async fn delete_rule(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "rule.delete", name.clone());
    c.set("rule_id", &id);
    let mut removed = None;
    let answer = edit(&st, |p| {
        let r = p.roles.get_mut(&name).ok_or_else(|| AdminError::not_found(format!("no role '{name}'")))?;
        removed = r.rules.iter().find(|x| x.id == id).cloned();
        let before = r.rules.len();
        r.rules.retain(|x| x.id != id);
        if r.rules.len() == before {
            return Err(AdminError::not_found(format!("role '{name}' has no rule '{id}'")));
        }
        Ok(())
    })
    .map(|()| done());
    if let (Ok(_), Some(rule)) = (&answer, removed) {
        c.set("rule", rule);
    }
    c.done(answer)
}

// --- clients, kick, bans -------------------------------------------------------------------

async fn list_clients(State(st): St) -> ApiResult<Response> {
    let mut all = st.backend.clients();
    all.extend(st.backend.clients_elsewhere().await);
    Ok(Json(all).into_response())
}

async fn list_certificates(State(st): St) -> ApiResult<Response> {
    Ok(Json(st.backend.certificates()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    #[serde(default)]
    scope: Option<String>,
}

async fn get_stats(
    State(st): St,
    q: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| AdminError::bad_request(format!("expected ?scope=node or ?scope=cluster: {e}")))?;
    match q.scope.as_deref() {
        None | Some("node") => Ok(Json(st.backend.stats()).into_response()),
        Some("cluster") => match st.backend.stats_cluster().await {
            Some(v) => Ok(Json(v).into_response()),
            None => Err(AdminError::bad_request("scope=cluster: this broker is not a node of a cluster")),
        },
        Some(_) => Err(AdminError::bad_request("scope must be node or cluster")),
    }
}

async fn get_stats_history(State(st): St) -> ApiResult<Response> {
    Ok(Json(st.backend.stats_history()).into_response())
}

/// Read-only: not a change, so not in the audit trail.
async fn explain(State(st): St, body: Bytes) -> ApiResult<Response> {
    let req: ExplainRequest = parse(&body)?;
    if req.qos > 2 {
        return Err(AdminError::bad_request("qos must be 0, 1 or 2"));
    }
    if !matches!(req.action.as_str(), "publish" | "subscribe" | "receive") {
        return Err(AdminError::bad_request("action must be publish, subscribe or receive"));
    }
    Ok(Json(st.backend.explain(&req)?).into_response())
}

async fn kick(State(st): St, Extension(a): Extension<AdminActor>, Path(id): Path<String>) -> ApiResult<Response> {
    let c = Change::new(&st, a, "client.kick", id.clone());
    let answer = if st.backend.kick(&id) || st.backend.kick_elsewhere(&id).await {
        Ok(done())
    } else {
        Err(AdminError::not_found(format!("no connected client '{id}'")))
    };
    c.done(answer)
}

async fn list_bans(State(st): St) -> ApiResult<Response> {
    Ok(Json(st.backend.bans()).into_response())
}

async fn add_ban(State(st): St, Extension(a): Extension<AdminActor>, body: Bytes) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "ban.add", body_field(&body, "value"));
    let answer = async {
        let ban: Ban = parse(&body)?;
        c.set("kind", ban.kind);
        if let Some(e) = ban.expires_at {
            c.set("expires_at", e);
        }
        if let Some(r) = &ban.reason {
            c.set("reason", r);
        }
        st.backend.add_ban(ban)?;
        Ok::<_, AdminError>(created())
    }
    .await;
    c.done(answer)
}

#[derive(Deserialize)]
struct BanKey {
    kind: BanKind,
    value: String,
}

async fn remove_ban(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    q: Result<Query<BanKey>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "ban.remove", "");
    let answer = async {
        let Query(k) = q.map_err(|e| AdminError::bad_request(format!("expected ?kind=...&value=...: {e}")))?;
        c.target.clone_from(&k.value);
        c.set("kind", k.kind);
        if st.backend.remove_ban(k.kind, &k.value)? {
            Ok::<_, AdminError>(done())
        } else {
            Err(AdminError::not_found("no such ban"))
        }
    }
    .await;
    c.done(answer)
}

// --- tokens of the built-in token service -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

fn token_service(st: &AdminState) -> Result<&Arc<OAuthService>, AdminError> {
    st.auth.oauth.as_ref().ok_or_else(|| AdminError::not_found("the token service is not enabled"))
}

/// RFC 7662-shaped introspection of a token of the built-in token service, for an
/// administrator (any client's token): `active` and, when active, its claims; when not, why.
async fn introspect_token(State(st): St, body: Bytes) -> ApiResult<Response> {
    let b: TokenBody = parse(&body)?;
    let service = token_service(&st)?;
    let v = match service.verify(&b.token) {
        Ok(t) => serde_json::json!({
            "active": true,
            "sub": t.subject,
            "client_id": t.client_id.clone().unwrap_or_else(|| t.subject.clone()),
            "scope": t.scopes.join(" "),
            "roles": t.roles,
            "exp": t.expires_at,
            "iat": t.issued_at,
            "jti": t.jti,
            "iss": t.issuer,
        }),
        Err(e) => serde_json::json!({ "active": false, "reason": e.to_string() }),
    };
    Ok(Json(v).into_response())
}

/// Revoke a token of the built-in token service (any client's): its connections end (v5
/// DISCONNECT 0x87), its wills and retained messages go (SPEC §10).
async fn revoke_token(State(st): St, Extension(a): Extension<AdminActor>, body: Bytes) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "token.revoke", "");
    let answer = async {
        let b: TokenBody = parse(&body)?;
        let service = token_service(&st)?;
        match service.revoke_any(&b.token) {
            Ok(Some(jti)) => {
                c.target.clone_from(&jti);
                Ok::<_, AdminError>(Json(serde_json::json!({ "revoked": jti })).into_response())
            }
            Ok(None) => Ok(Json(serde_json::json!({ "revoked": null, "note": "already revoked" })).into_response()),
            Err(e) => Err(AdminError::bad_request(format!("not a valid token of this service: {e}"))),
        }
    }
    .await;
    c.done(answer)
}

// --- sessions and retained messages -------------------------------------------------------

async fn list_sessions(State(st): St) -> ApiResult<Response> {
    let mut all = st.backend.sessions();
    all.extend(st.backend.sessions_elsewhere().await);
    Ok(Json(all).into_response())
}

async fn get_session(State(st): St, Path(id): Path<String>) -> ApiResult<Response> {
    let s = match st.backend.session(&id) {
        Some(s) => s,
        None => st
            .backend
            .session_elsewhere(&id)
            .await
            .ok_or_else(|| AdminError::not_found(format!("no session '{id}'")))?,
    };
    Ok(Json(s).into_response())
}

async fn delete_session(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = Change::new(&st, a, "session.delete", id.clone());
    let answer = if st.backend.delete_session(&id) || st.backend.delete_session_elsewhere(&id).await {
        Ok(done())
    } else {
        Err(AdminError::not_found(format!("no session '{id}'")))
    };
    c.done(answer)
}

/// The most retained messages one `GET /admin/retained` returns.
const MAX_RETAINED_LIST: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetainedQuery {
    #[serde(default = "all_topics")]
    filter: String,
    #[serde(default = "default_retained_limit")]
    limit: usize,
}

fn all_topics() -> String {
    "#".to_owned()
}

fn default_retained_limit() -> usize {
    1000
}

async fn list_retained(
    State(st): St,
    q: Result<Query<RetainedQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| AdminError::bad_request(format!("expected ?filter=...&limit=...: {e}")))?;
    if q.limit == 0 || q.limit > MAX_RETAINED_LIST {
        return Err(AdminError::bad_request(format!("limit must be 1 to {MAX_RETAINED_LIST}")));
    }
    Ok(Json(st.backend.retained(&q.filter, q.limit)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetainedTopic {
    topic: String,
}

async fn delete_retained(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    q: Result<Query<RetainedTopic>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "retained.delete", "");
    let answer = async {
        let Query(t) = q.map_err(|e| AdminError::bad_request(format!("expected ?topic=...: {e}")))?;
        c.target.clone_from(&t.topic);
        if st.backend.delete_retained(&t.topic)? {
            Ok::<_, AdminError>(done())
        } else {
            Err(AdminError::not_found("no retained message on that topic"))
        }
    }
    .await;
    c.done(answer)
}

// --- OAuth clients -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOAuthClient {
    id: String,
    secret: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
}

async fn list_oauth(State(st): St) -> ApiResult<Response> {
    Ok(Json(st.backend.oauth_clients()?).into_response())
}

/// Create a stored OAuth client (`oauth_client.create` in the audit trail) or replace one,
/// secret included (`oauth_client.rotate`).
async fn put_oauth(State(st): St, Extension(a): Extension<AdminActor>, body: Bytes) -> ApiResult<Response> {
    let id = body_field(&body, "id");
    let exists = !id.is_empty() && st.backend.oauth_clients().is_ok_and(|all| all.iter().any(|c| c.id == id));
    let mut c = Change::new(&st, a, if exists { "oauth_client.rotate" } else { "oauth_client.create" }, id);
    let answer = async {
        let n: NewOAuthClient = parse(&body)?;
        c.set("secret", "set");
        c.set("scopes", &n.scopes);
        c.set("roles", &n.roles);
        let secret_hash = hash(&st, n.secret).await?;
        st.backend.put_oauth_client(OAuthClientInfo { id: n.id, scopes: n.scopes, roles: n.roles }, secret_hash)?;
        Ok::<_, AdminError>(created())
    }
    .await;
    c.done(answer)
}

async fn delete_oauth(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = Change::new(&st, a, "oauth_client.delete", id.clone());
    let answer = match st.backend.remove_oauth_client(&id) {
        Ok(true) => Ok(done()),
        Ok(false) => Err(AdminError::not_found(format!("no stored OAuth client '{id}'"))),
        Err(e) => Err(e),
    };
    c.done(answer)
}

#[cfg(test)]
mod tests;
