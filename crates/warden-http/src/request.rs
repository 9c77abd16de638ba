//! Request parsing shared by the POST endpoints: form parameters (RFC 6749 §3.2) and client
//! credentials (RFC 6749 §2.3.1: `client_secret_basic` or `client_secret_post`).

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Form;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use crate::error::HttpError;

/// The form parameters of one request. Parameters sent without a value are treated as omitted
/// (RFC 6749 §3.2); a parameter sent more than once is an `invalid_request`; unknown
/// parameters are ignored.
#[derive(Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// Parses the extracted form, mapping extractor failures to RFC 6749 errors (413 for an
    /// oversized body, else 400 `invalid_request`).
    pub(crate) fn from_form(form: Result<Form<Vec<(String, String)>>, FormRejection>) -> Result<Params, HttpError> {
        let Form(pairs) = form.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HttpError::TooLarge
            } else {
                HttpError::bad_request("the body must be application/x-www-form-urlencoded parameters")
            }
        })?;
        Params::from_pairs(pairs)
    }

    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Result<Params, HttpError> {
        let mut map = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            if map.insert(name, value).is_some() {
                return Err(HttpError::bad_request("a request parameter is repeated"));
            }
        }
        Ok(Params(map))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value of a required parameter, else `invalid_request`.
    pub(crate) fn require(&self, name: &'static str) -> Result<&str, HttpError> {
        self.get(name).ok_or_else(|| HttpError::bad_request(format!("missing the '{name}' parameter")))
    }
}

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// `client_id` + `client_secret` form parameters (`client_secret_post`).
    Post,
}

/// Client credentials found in a request (not yet checked).
pub(crate) struct Credentials {
    pub(crate) method: AuthMethod,
    pub(crate) client_id: String,
    pub(crate) secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("method", &self.method)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Finds the client's credentials: exactly one method must be used.
///
/// - An `Authorization` header must be `Basic` with well-formed credentials, else 401
///   `invalid_client`. With it, a `client_secret` parameter is a second method (400
///   `invalid_request`); a `client_id` parameter is tolerated only when it names the same
///   client.
/// - Without the header, `client_id` and `client_secret` parameters are used; a secret
///   without an id is an `invalid_request`; no credentials at all is 401 `invalid_client`.
pub(crate) fn credentials(headers: &HeaderMap, params: &Params) -> Result<Credentials, HttpError> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    match (authorization.next(), authorization.next()) {
        (Some(_), Some(_)) => Err(HttpError::bad_request("more than one Authorization header")),
        (Some(value), None) => {
            let (client_id, secret) = value.to_str().ok().and_then(parse_basic).ok_or_else(|| {
                HttpError::Unauthenticated(
                    "client authentication failed: use HTTP Basic (client_secret_basic) or client_secret_post".into(),
                )
            })?;
            if params.get("client_secret").is_some() {
                return Err(HttpError::bad_request("more than one client authentication method"));
            }
            if params.get("client_id").is_some_and(|id| id != client_id) {
                return Err(HttpError::bad_request("client_id does not match the HTTP Basic credentials"));
            }
            Ok(Credentials { method: AuthMethod::Basic, client_id, secret })
        }
        (None, _) => match (params.get("client_id"), params.get("client_secret")) {
            (Some(client_id), Some(secret)) => {
                Ok(Credentials { method: AuthMethod::Post, client_id: client_id.to_owned(), secret: secret.to_owned() })
            }
            (None, Some(_)) => Err(HttpError::bad_request("client_secret without client_id")),
            _ => Err(HttpError::Unauthenticated("client authentication required".into())),
        },
    }
}

/// Standard base64 alphabet, padding optional (some clients strip it).
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `Basic <base64(urlencode(id) ":" urlencode(secret))>` → (id, secret). The scheme is
/// case-insensitive; id and secret are form-urldecoded (RFC 6749 §2.3.1), so a `:` in the id
/// must arrive as `%3A`. Empty ids are refused.
pub(crate) fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASIC_B64.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let id = form_urldecode(id)?;
    let secret = form_urldecode(secret)?;
    if id.is_empty() {
        return None;
    }
    Some((id, secret))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte;
/// a malformed escape or a result that is not UTF-8 is `None`.
pub(crate) fn form_urldecode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                // Two ASCII hex digits: valid UTF-8 and a valid byte.
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urldecode() {
        assert_eq!(form_urldecode("a+b%3Ac%25").as_deref(), Some("a b:c%"));
        assert_eq!(form_urldecode("plain-id_1.x~").as_deref(), Some("plain-id_1.x~"));
        assert_eq!(form_urldecode("%zz"), None);
        assert_eq!(form_urldecode("%4"), None);
        assert_eq!(form_urldecode("%+1"), None);
        assert_eq!(form_urldecode("%FF"), None); // not UTF-8
        assert_eq!(form_urldecode("%C3%A9").as_deref(), Some("é"));
    }

    #[test]
    fn basic() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(parse_basic(&format!("Basic {}", b64("dev-001:s3cret"))), Some(("dev-001".into(), "s3cret".into())));
        assert_eq!(parse_basic(&format!("bAsIc {}", b64("a%3Ab:x%2By+z:w"))), Some(("a:b".into(), "x+y z:w".into())));
        // Unpadded base64 is accepted.
        let unpadded = b64("ab:c").trim_end_matches('=').to_owned();
        assert_eq!(parse_basic(&format!("Basic {unpadded}")), Some(("ab".into(), "c".into())));
        assert_eq!(parse_basic(&format!("Bearer {}", b64("a:b"))), None);
        assert_eq!(parse_basic(&format!("Basic {}", b64("no-colon"))), None);
        assert_eq!(parse_basic(&format!("Basic {}", b64(":secret"))), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic"), None);
    }

    #[test]
    fn params() {
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let p = Params::from_pairs(pairs(&[("scope", ""), ("grant_type", "x"), ("scope", "a")])).unwrap();
        assert_eq!(p.get("scope"), Some("a"));
        assert_eq!(p.get("grant_type"), Some("x"));
        assert!(p.require("token").is_err());
        let err = Params::from_pairs(pairs(&[("scope", "a"), ("scope", "b")])).unwrap_err();
        assert_eq!(err.answer(crate::error::Api::OAuth).oauth_error, "invalid_request");
    }
}
