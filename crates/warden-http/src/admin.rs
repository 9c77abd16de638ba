//! The admin REST API (`/admin/...`): the policy store (users, groups, roles, rules), OAuth
//! clients, connected clients (list, kick) and bans. The broker side (persistence, applying a
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

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use warden_policy::password;
use warden_policy::store::{valid_name, Group, PolicyStore, Role, Rule, User};

use crate::secrets::{peer_ip, CheckRefused, HashClass, PeerAddr, SecretChecks};
use crate::OAuthService;

/// An error answer: HTTP status and a fixed or validation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message (never contains a secret).
    pub message: String,
}

impl AdminError {
    /// 400.
    pub fn bad_request(m: impl Into<String>) -> Self {
        AdminError { status: StatusCode::BAD_REQUEST, message: m.into() }
    }
    /// 404.
    pub fn not_found(m: impl Into<String>) -> Self {
        AdminError { status: StatusCode::NOT_FOUND, message: m.into() }
    }
    /// 409.
    pub fn conflict(m: impl Into<String>) -> Self {
        AdminError { status: StatusCode::CONFLICT, message: m.into() }
    }
    /// 500.
    pub fn internal(m: impl Into<String>) -> Self {
        AdminError { status: StatusCode::INTERNAL_SERVER_ERROR, message: m.into() }
    }
    fn unauthorized() -> Self {
        AdminError { status: StatusCode::UNAUTHORIZED, message: "a valid admin bearer token is required".into() }
    }
    fn forbidden() -> Self {
        AdminError { status: StatusCode::FORBIDDEN, message: "the token does not carry the admin scope".into() }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"warden-admin\""));
        }
        r
    }
}

type ApiResult<T> = Result<T, AdminError>;

/// A connected client, as `GET /admin/clients` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

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
        .route("/admin/clients", get(list_clients))
        .route("/admin/clients/{id}/kick", post(kick))
        .route("/admin/bans", get(list_bans).post(add_ban).delete(remove_ban))
        .route("/admin/oauth/clients", get(list_oauth).post(put_oauth))
        .route("/admin/oauth/clients/{id}", delete(delete_oauth))
        // Every route but the OpenAPI document: an admin, checked before anything else.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admin_gate));
    Router::new()
        .route("/admin/openapi.json", get(openapi))
        .merge(protected)
        .layer(axum::extract::DefaultBodyLimit::max(crate::MAX_BODY_BYTES))
        .with_state(state)
}

/// The admin check in front of every protected route (see [`require_admin`]).
async fn admin_gate(State(st): St, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = peer_ip(req.extensions().get::<PeerAddr>().copied());
    match require_admin(&st, req.headers(), peer).await {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal,
    }
}

/// 429 with `Retry-After`: too many failed authentications from this address.
fn throttled(retry_after: u64) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(serde_json::json!({ "error": "too many failed authentications from this address; retry later" })),
    )
        .into_response();
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

/// 503 with `Retry-After: 1`: no hashing slot in time.
fn busy() -> Response {
    let mut r =
        AdminError { status: StatusCode::SERVICE_UNAVAILABLE, message: "the server is busy; retry shortly".into() }
            .into_response();
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(1u64));
    r
}

/// The OpenAPI 3 document of this API (also checked in as `docs/admin-openapi.json`).
pub const OPENAPI: &str = include_str!("../../../docs/admin-openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Authenticate the request from `peer`: Ok for an admin; otherwise the answer. 401 for no or
/// a wrong credential, 403 for a valid token without the `admin` scope, 429 (with
/// `Retry-After`) when the address is banned after repeated failed authentications or the
/// admin token is backing off from it — decided before any hashing or signature check — and
/// 503 when no hashing slot was free in time. A wrong admin token or a bad signed token counts
/// as a failed authentication from `peer` (the same per-address guard as MQTT's).
async fn require_admin(st: &AdminState, headers: &HeaderMap, peer: std::net::IpAddr) -> Result<(), Response> {
    let unauthorized = || AdminError::unauthorized().into_response();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(unauthorized)?;
    let checks = &st.auth.checks;
    let refused = |r: CheckRefused| match r {
        CheckRefused::Throttled(t) => throttled(t.retry_after_secs()),
        CheckRefused::Busy => busy(),
        CheckRefused::Wrong => unauthorized(),
    };
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
            Ok(())
        } else {
            Err(AdminError::forbidden().into_response())
        };
    }
    let Some(hash) = st.auth.token_hash.clone() else { return Err(unauthorized()) };
    let r = checks.verify(peer, ADMIN_TOKEN_NAME, hash, bearer.as_bytes().to_vec()).await;
    if let Err(e) = r {
        tracing::info!(%peer, outcome = ?e, "admin API: admin token refused");
    }
    r.map_err(refused)
}

/// Parse a JSON body, with a clear 400 on malformed input.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| AdminError::bad_request(format!("invalid JSON body: {e}")))
}

async fn hash(st: &AdminState, password: String) -> ApiResult<String> {
    if password.is_empty() {
        return Err(AdminError::bad_request("password must not be empty"));
    }
    st.auth.checks.budget.run(HashClass::Http, move || password::hash_password(password.as_bytes())).await.map_err(
        |e| match e {
            crate::HashError::Busy => AdminError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the server is busy; retry shortly".into(),
            },
            crate::HashError::Failed => AdminError::internal("hashing failed"),
        },
    )
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

async fn create_user(State(st): St, body: Bytes) -> ApiResult<Response> {
    let n: NewUser = parse(&body)?;
    valid_name("user", &n.name).map_err(|e| AdminError::bad_request(e.0))?;
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
    Ok(created())
}

async fn update_user(State(st): St, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    let patch: UserPatch = parse(&body)?;
    let password_hash = match patch.password.clone() {
        Some(p) => Some(hash(&st, p).await?),
        None => None,
    };
    edit(&st, |p| {
        let u = p.users.get_mut(&name).ok_or_else(|| AdminError::not_found(format!("no user '{name}'")))?;
        if let Some(h) = &password_hash {
            u.password_hash = Some(h.clone());
        }
        if let Some(g) = &patch.groups {
            u.groups = g.clone();
        }
        if let Some(r) = &patch.roles {
            u.roles = r.clone();
        }
        if let Some(d) = patch.disabled {
            u.disabled = d;
        }
        Ok(())
    })?;
    Ok(done())
}

async fn delete_user(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    edit(&st, |p| p.users.remove(&name).map(|_| ()).ok_or_else(|| AdminError::not_found(format!("no user '{name}'"))))?;
    Ok(done())
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

async fn create_group(State(st): St, body: Bytes) -> ApiResult<Response> {
    let n: NewGroup = parse(&body)?;
    valid_name("group", &n.name).map_err(|e| AdminError::bad_request(e.0))?;
    edit(&st, |p| {
        if p.groups.contains_key(&n.name) {
            return Err(AdminError::conflict(format!("group '{}' exists", n.name)));
        }
        p.groups.insert(n.name.clone(), Group { roles: n.roles.clone() });
        Ok(())
    })?;
    Ok(created())
}

async fn update_group(State(st): St, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    let patch: GroupPatch = parse(&body)?;
    edit(&st, |p| {
        let g = p.groups.get_mut(&name).ok_or_else(|| AdminError::not_found(format!("no group '{name}'")))?;
        g.roles = patch.roles.clone();
        Ok(())
    })?;
    Ok(done())
}

async fn delete_group(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    edit(
        &st,
        |p| {
            if p.remove_group(&name) {
                Ok(())
            } else {
                Err(AdminError::not_found(format!("no group '{name}'")))
            }
        },
    )?;
    Ok(done())
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
async fn put_role_quotas(State(st): St, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    let q: warden_policy::Quotas = parse(&body)?;
    edit(&st, |p| match p.roles.get_mut(&name) {
        Some(r) => {
            r.quotas = q;
            Ok(())
        }
        None => Err(AdminError::not_found(format!("no role '{name}'"))),
    })?;
    Ok(done())
}

async fn create_role(State(st): St, body: Bytes) -> ApiResult<Response> {
    let n: NewRole = parse(&body)?;
    valid_name("role", &n.name).map_err(|e| AdminError::bad_request(e.0))?;
    edit(&st, |p| {
        if p.roles.contains_key(&n.name) {
            return Err(AdminError::conflict(format!("role '{}' exists", n.name)));
        }
        p.roles.insert(n.name.clone(), Role { rules: n.rules.clone(), quotas: n.quotas });
        Ok(())
    })?;
    Ok(created())
}

async fn delete_role(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    edit(&st, |p| if p.remove_role(&name) { Ok(()) } else { Err(AdminError::not_found(format!("no role '{name}'"))) })?;
    Ok(done())
}

async fn list_rules(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let r = p.roles.get(&name).ok_or_else(|| AdminError::not_found(format!("no role '{name}'")))?;
    Ok(Json(&r.rules).into_response())
}

async fn add_rule(State(st): St, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    let rule: Rule = parse(&body)?;
    rule.validate().map_err(|e| AdminError::bad_request(e.0))?;
    edit(&st, |p| {
        let r = p.roles.get_mut(&name).ok_or_else(|| AdminError::not_found(format!("no role '{name}'")))?;
        if r.rules.iter().any(|x| x.id == rule.id) {
            return Err(AdminError::conflict(format!("role '{name}' already has a rule '{}'", rule.id)));
        }
        r.rules.push(rule.clone());
        Ok(())
    })?;
    Ok(created())
}

async fn delete_rule(State(st): St, Path((name, id)): Path<(String, String)>) -> ApiResult<Response> {
    edit(&st, |p| {
        let r = p.roles.get_mut(&name).ok_or_else(|| AdminError::not_found(format!("no role '{name}'")))?;
        let before = r.rules.len();
        r.rules.retain(|x| x.id != id);
        if r.rules.len() == before {
            return Err(AdminError::not_found(format!("role '{name}' has no rule '{id}'")));
        }
        Ok(())
    })?;
    Ok(done())
}

// --- clients, kick, bans -------------------------------------------------------------------

async fn list_clients(State(st): St) -> ApiResult<Response> {
    Ok(Json(st.backend.clients()).into_response())
}

async fn kick(State(st): St, Path(id): Path<String>) -> ApiResult<Response> {
    if st.backend.kick(&id) {
        Ok(done())
    } else {
        Err(AdminError::not_found(format!("no connected client '{id}'")))
    }
}

async fn list_bans(State(st): St) -> ApiResult<Response> {
    Ok(Json(st.backend.bans()).into_response())
}

async fn add_ban(State(st): St, body: Bytes) -> ApiResult<Response> {
    let ban: Ban = parse(&body)?;
    st.backend.add_ban(ban)?;
    Ok(created())
}

#[derive(Deserialize)]
struct BanKey {
    kind: BanKind,
    value: String,
}

async fn remove_ban(
    State(st): St,
    q: Result<Query<BanKey>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(k) = q.map_err(|e| AdminError::bad_request(format!("expected ?kind=...&value=...: {e}")))?;
    if st.backend.remove_ban(k.kind, &k.value)? {
        Ok(done())
    } else {
        Err(AdminError::not_found("no such ban"))
    }
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

async fn put_oauth(State(st): St, body: Bytes) -> ApiResult<Response> {
    let n: NewOAuthClient = parse(&body)?;
    let secret_hash = hash(&st, n.secret).await?;
    st.backend.put_oauth_client(OAuthClientInfo { id: n.id, scopes: n.scopes, roles: n.roles }, secret_hash)?;
    Ok(created())
}

async fn delete_oauth(State(st): St, Path(id): Path<String>) -> ApiResult<Response> {
    if st.backend.remove_oauth_client(&id)? {
        Ok(done())
    } else {
        Err(AdminError::not_found(format!("no stored OAuth client '{id}'")))
    }
}

#[cfg(test)]
mod tests;
