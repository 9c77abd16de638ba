//! The crate's one error type, [`HttpError`], and the one place that decides what the peer is
//! told about it ([`HttpError::answer`]): the HTTP status, the RFC 6749 §5.2 `error` code, the
//! message, `Retry-After` and the `WWW-Authenticate` challenge. Both APIs answer through it:
//! the token service ([`Api::OAuth`]: `{"error": code, "error_description": text}`) and the
//! admin API ([`Api::Admin`]: `{"error": text}`). Errors of other crates (the policy store's
//! validation, the hashing budget, the secret checks) are turned into an [`HttpError`] here,
//! so that no handler picks a status of its own.
//!
//! Also the `no-store` headers every token-service response carries.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::secrets::{CheckRefused, HashError};
use crate::service::ScopeError;

/// The challenge sent with every 401 of the token service: the one HTTP authentication scheme
/// its endpoints accept.
pub(crate) const CHALLENGE: &str = "Basic realm=\"warden\"";

/// The challenge sent with every 401 of the admin API.
pub(crate) const ADMIN_CHALLENGE: &str = "Bearer realm=\"warden-admin\"";

/// Why a request to the token service or the admin API was refused.
///
/// Messages are fixed texts or validation messages built by the server: nothing secret from
/// the request (no secret, no token) is ever put in one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// 400 `invalid_request`: missing, repeated or malformed parameters, more than one client
    /// authentication method, or a body or value the admin API refuses.
    #[error("{0}")]
    InvalidRequest(Cow<'static, str>),
    /// 401 (`invalid_client`), with the API's challenge (RFC 7235 requires one on every 401):
    /// no credential, an unknown client, a wrong secret or token.
    #[error("{0}")]
    Unauthenticated(Cow<'static, str>),
    /// 403: an authenticated caller without the right (a token without the `admin` scope).
    #[error("the token does not carry the admin scope")]
    Forbidden,
    /// 403: a browser's request from a page of another origin (the admin API serves only
    /// pages of its own origin, such as the console).
    #[error("cross-origin requests to the admin API are refused")]
    CrossOrigin,
    /// 400 `invalid_scope`.
    #[error("{0}")]
    InvalidScope(Cow<'static, str>),
    /// 400 `unsupported_grant_type`.
    #[error("only the client_credentials grant is supported")]
    UnsupportedGrantType,
    /// 413 (`invalid_request`): the body is over the limit.
    #[error("request body too large")]
    TooLarge,
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(Cow<'static, str>),
    /// 409: it exists already.
    #[error("{0}")]
    Conflict(Cow<'static, str>),
    /// 429 (`temporarily_unavailable`) with `Retry-After`: too many failed authentications
    /// from this address (banned, or this name backing off there). No secret was checked.
    #[error("too many failed authentications from this address; retry later")]
    Throttled {
        /// Seconds for the `Retry-After` header.
        retry_after: u64,
    },
    /// 503 (`temporarily_unavailable`) with `Retry-After: 1`: no hashing slot in time.
    #[error("the server is busy; retry shortly")]
    Busy,
    /// 500 (`server_error`): the broker could not do it (its log says why).
    #[error("{0}")]
    Internal(Cow<'static, str>),
}

/// Which API answers: the body's shape and the 401 challenge differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// The token service: RFC 6749 §5.2 JSON, `no-store` and `no-cache`, `Basic` challenge.
    OAuth,
    /// The admin API: `{"error": text}`, `no-store`, `Bearer` challenge.
    Admin,
}

/// What the peer is told about an [`HttpError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// The RFC 6749 §5.2 `error` code (token service only).
    pub(crate) oauth_error: &'static str,
    /// `error_description` (token service) or `error` (admin API).
    pub(crate) message: Cow<'static, str>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub(crate) retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge (every 401).
    pub(crate) challenge: Option<&'static str>,
}

impl HttpError {
    /// 400 with a validation message.
    pub fn bad_request(m: impl Into<Cow<'static, str>>) -> Self {
        HttpError::InvalidRequest(m.into())
    }

    /// 404.
    pub fn not_found(m: impl Into<Cow<'static, str>>) -> Self {
        HttpError::NotFound(m.into())
    }

    /// 409.
    pub fn conflict(m: impl Into<Cow<'static, str>>) -> Self {
        HttpError::Conflict(m.into())
    }

    /// 500 (the message names what failed, never why in detail: that goes to the log).
    pub fn internal(m: impl Into<Cow<'static, str>>) -> Self {
        HttpError::Internal(m.into())
    }

    /// A secret that was not accepted: `wrong` is the 401 message when it was checked and
    /// wrong; a throttled address gets 429 and a full hashing budget 503.
    pub(crate) fn refused(r: CheckRefused, wrong: &'static str) -> Self {
        match r {
            CheckRefused::Wrong => HttpError::Unauthenticated(wrong.into()),
            CheckRefused::Throttled(t) => HttpError::Throttled { retry_after: t.retry_after_secs() },
            CheckRefused::Busy => HttpError::Busy,
        }
    }

    /// The one mapping from an error to what `api`'s peer is told.
    pub(crate) fn answer(&self, api: Api) -> Answer {
        let (status, oauth_error) = match self {
            HttpError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            HttpError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "invalid_client"),
            HttpError::Forbidden => (StatusCode::FORBIDDEN, "unauthorized_client"),
            HttpError::CrossOrigin => (StatusCode::FORBIDDEN, "invalid_request"),
            HttpError::InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            HttpError::UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            HttpError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            HttpError::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request"),
            HttpError::Conflict(_) => (StatusCode::CONFLICT, "invalid_request"),
            HttpError::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable"),
            HttpError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            HttpError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let retry_after = match self {
            HttpError::Throttled { retry_after } => Some(*retry_after),
            HttpError::Busy => Some(1),
            _ => None,
        };
        let message = match (self, api) {
            (HttpError::Throttled { .. }, Api::OAuth) => {
                "too many failed client authentications from this address; retry later".into()
            }
            (
                HttpError::InvalidRequest(m)
                | HttpError::Unauthenticated(m)
                | HttpError::InvalidScope(m)
                | HttpError::NotFound(m)
                | HttpError::Conflict(m)
                | HttpError::Internal(m),
                _,
            ) => m.clone(),
            _ => self.to_string().into(),
        };
        let challenge = (status == StatusCode::UNAUTHORIZED).then_some(match api {
            Api::OAuth => CHALLENGE,
            Api::Admin => ADMIN_CHALLENGE,
        });
        Answer { status, oauth_error, message, retry_after, challenge }
    }

    /// The response `api` sends for this error.
    pub(crate) fn response(&self, api: Api) -> Response {
        let a = self.answer(api);
        let mut response = match api {
            Api::OAuth => no_store((
                a.status,
                Json(serde_json::json!({ "error": a.oauth_error, "error_description": a.message })),
            )),
            Api::Admin => {
                let mut r = (a.status, Json(serde_json::json!({ "error": a.message }))).into_response();
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
        };
        let headers = response.headers_mut();
        if let Some(c) = a.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if let Some(s) = a.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// The admin API's handlers return `Result<_, HttpError>`: `?` answers in its shape. The
/// token service's handlers answer with `HttpError::response(Api::OAuth)`.
impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        self.response(Api::Admin)
    }
}

/// A policy-store validation error (a name, a rule, the store as a whole): 400 with its
/// message.
impl From<warden_policy::store::StoreError> for HttpError {
    fn from(e: warden_policy::store::StoreError) -> Self {
        HttpError::InvalidRequest(e.0.into())
    }
}

/// A hash the admin API needed (of a password or a client secret) that was not run.
impl From<HashError> for HttpError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => HttpError::Busy,
            HashError::Failed => HttpError::internal("hashing failed"),
        }
    }
}

/// A scope request the token service refuses.
impl From<ScopeError> for HttpError {
    fn from(e: ScopeError) -> Self {
        match e {
            ScopeError::Malformed => HttpError::InvalidScope("malformed scope".into()),
            ScopeError::NotAllowed => {
                HttpError::InvalidScope("a requested scope is not allowed for this client".into())
            }
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::secrets::Throttled;

    /// Every variant: its status, its RFC 6749 §5.2 `error` code, its `Retry-After`, and the
    /// challenge each API sends with a 401 (RFC 7235 §3.1: every 401 carries one).
    #[test]
    fn every_error_maps_to_one_status_and_oauth_code() {
        use HttpError as E;
        let cases: [(E, u16, &str, Option<u64>); 12] = [
            (E::bad_request("x"), 400, "invalid_request", None),
            (E::Unauthenticated("x".into()), 401, "invalid_client", None),
            (E::Forbidden, 403, "unauthorized_client", None),
            (E::CrossOrigin, 403, "invalid_request", None),
            (E::InvalidScope("x".into()), 400, "invalid_scope", None),
            (E::UnsupportedGrantType, 400, "unsupported_grant_type", None),
            (E::TooLarge, 413, "invalid_request", None),
            (E::not_found("x"), 404, "invalid_request", None),
            (E::conflict("x"), 409, "invalid_request", None),
            (E::Throttled { retry_after: 7 }, 429, "temporarily_unavailable", Some(7)),
            (E::Busy, 503, "temporarily_unavailable", Some(1)),
            (E::internal("x"), 500, "server_error", None),
        ];
        for (e, status, code, retry_after) in cases {
            for api in [Api::OAuth, Api::Admin] {
                let a = e.answer(api);
                assert_eq!(a.status.as_u16(), status, "{e:?}");
                assert_eq!(a.oauth_error, code, "{e:?}");
                assert_eq!(a.retry_after, retry_after, "{e:?}");
                let challenge = match api {
                    Api::OAuth => CHALLENGE,
                    Api::Admin => ADMIN_CHALLENGE,
                };
                assert_eq!(a.challenge, (status == 401).then_some(challenge), "{e:?} {api:?}");
            }
        }
    }

    /// The token service answers RFC 6749 §5.2 JSON with `no-store` and `no-cache` (§5.1); the
    /// admin API `{"error": text}` with `no-store`. Headers follow the answer.
    #[tokio::test]
    async fn responses_carry_the_answer_in_each_apis_shape() {
        async fn body(r: Response) -> serde_json::Value {
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            serde_json::from_slice(&bytes).unwrap()
        }
        let r = HttpError::Unauthenticated("client authentication failed".into()).response(Api::OAuth);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::PRAGMA], "no-cache");
        assert_eq!(
            body(r).await,
            serde_json::json!({"error": "invalid_client", "error_description": "client authentication failed"})
        );

        let r = HttpError::Throttled { retry_after: 3 }.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(
            body(r).await,
            serde_json::json!({"error": "too many failed authentications from this address; retry later"})
        );

        let r = HttpError::Throttled { retry_after: 3 }.response(Api::OAuth);
        assert_eq!(
            body(r).await["error_description"],
            "too many failed client authentications from this address; retry later"
        );

        let r = HttpError::Unauthenticated("a valid admin bearer token is required".into()).into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], ADMIN_CHALLENGE);
        assert_eq!(body(r).await, serde_json::json!({"error": "a valid admin bearer token is required"}));
    }

    /// The errors of other crates and modules reach the peer only through these conversions.
    #[test]
    fn foreign_errors_map_to_one_answer() {
        let store = warden_policy::store::valid_name("role", "").unwrap_err();
        let e = HttpError::from(store.clone());
        assert_eq!(e, HttpError::InvalidRequest(store.0.into()));
        assert_eq!(HttpError::from(HashError::Busy), HttpError::Busy);
        assert_eq!(HttpError::from(HashError::Failed).answer(Api::Admin).status, StatusCode::INTERNAL_SERVER_ERROR);
        for s in [ScopeError::Malformed, ScopeError::NotAllowed] {
            assert_eq!(HttpError::from(s).answer(Api::OAuth).oauth_error, "invalid_scope");
        }
        let throttled = Throttled::BackingOff { retry_after: Duration::from_millis(1500) };
        assert_eq!(
            HttpError::refused(CheckRefused::Throttled(throttled), "w"),
            HttpError::Throttled { retry_after: 2 }
        );
        assert_eq!(HttpError::refused(CheckRefused::Busy, "w"), HttpError::Busy);
        assert_eq!(HttpError::refused(CheckRefused::Wrong, "w"), HttpError::Unauthenticated("w".into()));
    }
}
