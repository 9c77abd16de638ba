//! RFC 6749 §5.2 error responses, and the `no-store` headers every token-service response
//! carries.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The challenge sent with every 401: the one HTTP authentication scheme the endpoints accept.
pub(crate) const CHALLENGE: &str = "Basic realm=\"warden\"";

/// An OAuth 2.0 error (RFC 6749 §5.2): `{"error": code, "error_description": text}`.
///
/// Descriptions are fixed texts: nothing from the request (and so no secret or token) is ever
/// echoed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) description: Cow<'static, str>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub(crate) retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        OAuthError { status, code, description: description.into(), retry_after: None }
    }

    /// 429 `temporarily_unavailable` with `Retry-After`: too many failed client
    /// authentications from this address (banned, or this client id backing off there). No
    /// secret was checked.
    pub(crate) fn throttled(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            "too many failed client authentications from this address; retry later",
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 503 `temporarily_unavailable` with `Retry-After: 1`: no hashing slot in time.
    pub(crate) fn busy() -> Self {
        let mut e =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the server is busy; retry shortly");
        e.retry_after = Some(1);
        e
    }

    /// 400 `invalid_request`: missing, repeated or malformed parameters, or more than one
    /// client authentication method.
    pub(crate) fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401 `invalid_client` (with a `WWW-Authenticate: Basic` challenge, as RFC 7235 requires
    /// of every 401): unknown client, wrong secret, no or unsupported client authentication.
    pub(crate) fn invalid_client(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    /// 400 `invalid_scope`.
    pub(crate) fn invalid_scope(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    /// 400 `unsupported_grant_type`.
    pub(crate) fn unsupported_grant_type() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", "only the client_credentials grant is supported")
    }

    /// 413 `invalid_request`: the body is over the limit.
    pub(crate) fn too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "request body too large")
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.code,
            "error_description": self.description,
        });
        let mut response = no_store((self.status, Json(body)));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
        }
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// `response` with `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub(crate) fn no_store(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
