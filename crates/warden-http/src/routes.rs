//! The axum router: token, JWKS, metadata, introspection and revocation endpoints.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Extension;
use axum::{Form, Json, Router};
use serde_json::json;

use crate::error::{no_store, Api, HttpError};
use crate::request::{credentials, Params};
use crate::secrets::{peer_ip, PeerAddr};
use crate::service::{token_client, OAuthService};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The token endpoint (RFC 6749 §3.2).
pub const TOKEN_PATH: &str = "/oauth/token";
/// The introspection endpoint (RFC 7662).
pub const INTROSPECT_PATH: &str = "/oauth/introspect";
/// The revocation endpoint (RFC 7009).
pub const REVOKE_PATH: &str = "/oauth/revoke";
/// The public signing keys (JWKS).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The authorization server metadata (RFC 8414).
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

const AUTH_METHODS: [&str; 2] = ["client_secret_basic", "client_secret_post"];

/// The token service's routes (see the crate docs), with a [`MAX_BODY_BYTES`] body limit.
pub fn router(service: Arc<OAuthService>) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(token))
        .route(INTROSPECT_PATH, post(introspect))
        .route(REVOKE_PATH, post(revoke))
        .route(JWKS_PATH, get(jwks))
        .route(METADATA_PATH, get(metadata))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

type FormResult = Result<Form<Vec<(String, String)>>, FormRejection>;

/// The request's peer (set by the serving loop).
type Peer = Option<Extension<PeerAddr>>;

fn peer_of(peer: Peer) -> std::net::IpAddr {
    peer_ip(peer.map(|Extension(p)| p))
}

/// The 401 message for a client whose secret was checked and is wrong (429 and 503 when it
/// was not checked: see [`HttpError::refused`]).
const WRONG_SECRET: &str = "client authentication failed";

fn endpoint(service: &OAuthService, path: &str) -> String {
    format!("{}{path}", service.settings().issuer.trim_end_matches('/'))
}

/// Authenticates the client of an introspection / revocation request.
async fn authenticate(
    service: &OAuthService,
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    params: &Params,
    endpoint: &'static str,
) -> Result<String, HttpError> {
    let creds = credentials(headers, params)?;
    let method = creds.method;
    let client_id = creds.client_id.clone();
    match service.authenticate(peer, &creds.client_id, creds.secret).await {
        Ok(client) => Ok(client.id),
        Err(r) => {
            tracing::info!(client_id = ?client_id, ?method, endpoint, %peer, outcome = ?r, "oauth: client authentication failed");
            Err(HttpError::refused(r, WRONG_SECRET))
        }
    }
}

/// `POST /oauth/token`: the client-credentials grant (RFC 6749 §4.4).
async fn token(State(service): State<Arc<OAuthService>>, peer: Peer, headers: HeaderMap, form: FormResult) -> Response {
    match token_inner(&service, peer_of(peer), &headers, form).await {
        Ok(response) => response,
        Err(error) => error.response(Api::OAuth),
    }
}

async fn token_inner(
    service: &OAuthService,
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    form: FormResult,
) -> Result<Response, HttpError> {
    let params = Params::from_form(form)?;
    if params.require("grant_type")? != "client_credentials" {
        return Err(HttpError::UnsupportedGrantType);
    }
    let creds = credentials(headers, &params)?;
    let method = creds.method;
    let client_id = creds.client_id.clone();
    let client = match service.authenticate(peer, &creds.client_id, creds.secret).await {
        Ok(client) => client,
        Err(r) => {
            tracing::info!(client_id = ?client_id, ?method, %peer, outcome = ?r, "oauth: token refused: client authentication failed");
            return Err(HttpError::refused(r, WRONG_SECRET));
        }
    };
    let issued = service.issue(&client, params.get("scope")).map_err(|e| {
        tracing::info!(client_id = ?client.id, "oauth: token refused: invalid scope");
        HttpError::from(e)
    })?;
    tracing::info!(client_id = ?client.id, jti = %issued.jti, scope = ?issued.scope, method = ?method, "oauth: token issued");
    Ok(no_store(Json(json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }))))
}

/// `POST /oauth/introspect` (RFC 7662). Any authenticated client may call it, but a token is
/// reported active only to the client it was issued to: for every other caller (and for any
/// invalid, expired or revoked token) the answer is `{"active": false}`, so introspection
/// reveals nothing about other clients' tokens.
async fn introspect(
    State(service): State<Arc<OAuthService>>,
    peer: Peer,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    match introspect_inner(&service, peer_of(peer), &headers, form).await {
        Ok(response) => response,
        Err(error) => error.response(Api::OAuth),
    }
}

async fn introspect_inner(
    service: &OAuthService,
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    form: FormResult,
) -> Result<Response, HttpError> {
    let params = Params::from_form(form)?;
    let caller = authenticate(service, peer, headers, &params, "introspect").await?;
    let token = params.require("token")?;
    let body = match service.verify(token) {
        Ok(verified) if token_client(&verified) == caller => {
            let mut body = json!({
                "active": true,
                "scope": verified.scopes.join(" "),
                "client_id": token_client(&verified),
                "sub": verified.subject,
                "exp": verified.expires_at,
                "iat": verified.issued_at,
                "iss": verified.issuer,
                "token_type": "Bearer",
                "jti": verified.jti,
            });
            if let Some(aud) = &service.settings().audience {
                body["aud"] = json!(aud);
            }
            body
        }
        _ => json!({ "active": false }),
    };
    Ok(no_store(Json(body)))
}

/// `POST /oauth/revoke` (RFC 7009). A client may revoke only its own tokens; any other token
/// (another client's, invalid, expired, already revoked) gets the same empty 200 and nothing
/// happens, so the endpoint is no oracle for other clients' tokens.
async fn revoke(
    State(service): State<Arc<OAuthService>>,
    peer: Peer,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    match revoke_inner(&service, peer_of(peer), &headers, form).await {
        Ok(response) => response,
        Err(error) => error.response(Api::OAuth),
    }
}

async fn revoke_inner(
    service: &OAuthService,
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    form: FormResult,
) -> Result<Response, HttpError> {
    let params = Params::from_form(form)?;
    let caller = authenticate(service, peer, headers, &params, "revoke").await?;
    let token = params.require("token")?;
    if let Some(jti) = service.revoke(token, &caller) {
        tracing::info!(client_id = ?caller, jti = %jti, "oauth: token revoked");
    }
    Ok(no_store(StatusCode::OK))
}

/// `GET /.well-known/jwks.json`: current and rotated-out public keys.
async fn jwks(State(service): State<Arc<OAuthService>>) -> Response {
    no_store(Json(service.jwks()))
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414). Unauthenticated, so it names no
/// client and no client's scopes: `scopes_supported` (OPTIONAL) is left out, because the
/// clients' scopes name device ids and topics (issue 17). A client learns its own scopes
/// from its token response.
async fn metadata(State(service): State<Arc<OAuthService>>) -> Response {
    no_store(Json(json!({
        "issuer": service.settings().issuer,
        "token_endpoint": endpoint(&service, TOKEN_PATH),
        "jwks_uri": endpoint(&service, JWKS_PATH),
        "introspection_endpoint": endpoint(&service, INTROSPECT_PATH),
        "revocation_endpoint": endpoint(&service, REVOKE_PATH),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
    })))
}
