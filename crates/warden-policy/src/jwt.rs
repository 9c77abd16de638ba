//! JSON Web Tokens: verification of access tokens sent in the CONNECT password field, and
//! minting for Warden's built-in OAuth 2.0 token service (SPEC §4–§5).
//!
//! Pure code: no I/O, no clock (time is always the `now` argument, unix seconds).
//!
//! # Verification rules
//! 1. The token is exactly three base64url (unpadded) segments. Its header is parsed here,
//!    before any library sees it: `alg: none` in any letter case is refused
//!    ([`JwtError::AlgNone`]); any `crit` header is refused ([`JwtError::CritUnsupported`]: we
//!    understand no extensions); `jku`, `jwk`, `x5u` and `x5c` are ignored entirely: a key is
//!    only ever taken from our [`KeySet`]. (jsonwebtoken still parses the header: one it
//!    cannot read, e.g. with a malformed `jwk` member, is refused as `Malformed`.)
//! 2. Key selection: with a `kid`, only keys whose kid is exactly that string (no
//!    normalisation of any kind) — none is [`JwtError::UnknownKid`]. Without a `kid`, the keys
//!    whose algorithm equals the header's `alg` — none is [`JwtError::NoMatchingKey`].
//! 3. The algorithm used is always the key's own algorithm, fixed when the key was loaded; a
//!    header `alg` that differs is [`JwtError::AlgorithmMismatch`]. This is what refuses
//!    algorithm confusion (an HS256 token "signed" with an RSA public key as HMAC secret).
//! 4. Signature and claims are checked by `jsonwebtoken` with an explicit `Validation`
//!    (never its defaults): algorithms = [the key's], required `exp` and `sub` (plus `iss` /
//!    `aud` when configured), time validation off — `exp`/`nbf` are checked here against
//!    `now` with the configured leeway: valid iff `now < exp + leeway` and
//!    `now + leeway >= nbf` (RFC 7519 §4.1.4, §4.1.5).
//! 5. `iss` and `aud` are checked only when configured; then a missing claim is
//!    [`JwtError::WrongIssuer`] / [`JwtError::WrongAudience`]. `aud` may be a string or an
//!    array; `iss` must be a string.
//! 6. Once the signature is verified, the header's `typ` must be one of
//!    [`JwtSettings::typ`] (RFC 9068 §4: access tokens are `at+jwt`), compared ignoring ASCII
//!    case and an `application/` prefix (RFC 7515 §4.1.9); a token without `typ` is refused
//!    too ([`JwtError::WrongType`]).
//! 7. The token's lifetime may not exceed [`JwtSettings::max_lifetime_secs`] (plus the
//!    leeway): `exp - iat`, or `exp - now` when there is no `iat` or `iat` lies ahead
//!    ([`JwtError::LifetimeTooLong`]), so a token valid for years is refused even while fresh.
//!
//! Errors and `Debug` output never contain key material or secrets.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Longest token accepted, in bytes (an MQTT password is at most 65 535 bytes anyway).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// The `typ` of an RFC 9068 access token.
pub const TYP_ACCESS_TOKEN: &str = "at+jwt";

/// The generic `typ` many identity providers put on their access tokens.
pub const TYP_JWT: &str = "JWT";

/// Default longest token lifetime: 24 hours.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// Verification settings (explicit; never a library's defaults).
///
/// [`Default`] is the strict profile: any issuer and audience (set them), no leeway, `typ`
/// exactly [`TYP_ACCESS_TOKEN`], lifetime at most [`DEFAULT_MAX_LIFETIME_SECS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Required `iss` (exact string), or `None` to accept any issuer.
    pub issuer: Option<String>,
    /// Required member of `aud` (string or array), or `None` to not check `aud`.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, seconds. Default 0 (SPEC §4).
    pub leeway_secs: u64,
    /// Accepted header `typ` values (compared ignoring ASCII case and an `application/`
    /// prefix); a token without `typ` or with another is [`JwtError::WrongType`]. `None`: not
    /// checked.
    pub typ: Option<Vec<String>>,
    /// Longest accepted lifetime in seconds (see the module docs, rule 7); `None`: no limit.
    pub max_lifetime_secs: Option<u64>,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            issuer: None,
            audience: None,
            leeway_secs: 0,
            typ: Some(vec![TYP_ACCESS_TOKEN.to_owned()]),
            max_lifetime_secs: Some(DEFAULT_MAX_LIFETIME_SECS),
        }
    }
}

/// `typ` values name the same type: equal ignoring ASCII case, with or without the
/// `application/` prefix (RFC 7515 §4.1.9).
pub fn typ_matches(a: &str, b: &str) -> bool {
    fn bare(s: &str) -> &str {
        match s.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => &s[12..],
            _ => s,
        }
    }
    bare(a).eq_ignore_ascii_case(bare(b))
}

/// Why a token (or a key set, or a signing key) was refused. Never carries secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Malformed token.
    #[error("malformed token")]
    Malformed,
    /// Unsigned token (alg: none) refused.
    #[error("unsigned token (alg: none) refused")]
    AlgNone,
    /// Unsupported signature algorithm.
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
    /// Unknown key id (kid).
    #[error("unknown key id (kid)")]
    UnknownKid,
    /// No key for the token's algorithm.
    #[error("no key for the token's algorithm")]
    NoMatchingKey,
    /// Token algorithm does not match the key's algorithm.
    #[error("token algorithm does not match the key's algorithm")]
    AlgorithmMismatch,
    /// Bad signature.
    #[error("bad signature")]
    BadSignature,
    /// Token has a critical header extension (crit) we do not understand.
    #[error("token has a critical header extension (crit) we do not understand")]
    CritUnsupported,
    /// Token expired.
    #[error("token expired")]
    Expired,
    /// Token not yet valid (nbf).
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    /// Wrong or missing issuer (iss).
    #[error("wrong or missing issuer (iss)")]
    WrongIssuer,
    /// Wrong or missing audience (aud).
    #[error("wrong or missing audience (aud)")]
    WrongAudience,
    /// The header's `typ` is missing or not an accepted one (RFC 9068 §4: `at+jwt`).
    #[error("token type (typ) not accepted")]
    WrongType,
    /// `exp` lies further from `iat` (or from now) than the configured maximum lifetime.
    #[error("token lifetime longer than the maximum")]
    LifetimeTooLong,
    /// Missing or invalid claim ``0``.
    #[error("missing or invalid claim `{0}`")]
    MissingClaim(&'static str),
    /// Bad JWKS: `0`.
    #[error("bad JWKS: {0}")]
    BadJwks(String),
    /// A signing key could not be read (e.g. not an unencrypted PKCS#8 Ed25519 PEM).
    #[error("bad signing key: {0}")]
    BadKey(String),
}

/// The algorithms Warden verifies. Anything else (PS*, HS384/HS512, ES512, …) is
/// [`JwtError::UnsupportedAlgorithm`].
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyAlg {
    HS256,
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    EdDSA,
}

impl KeyAlg {
    /// Exact (case-sensitive) JOSE name, as a token header carries it.
    fn from_name(name: &str) -> Option<KeyAlg> {
        Some(match name {
            "HS256" => KeyAlg::HS256,
            "RS256" => KeyAlg::RS256,
            "RS384" => KeyAlg::RS384,
            "RS512" => KeyAlg::RS512,
            "ES256" => KeyAlg::ES256,
            "ES384" => KeyAlg::ES384,
            "EdDSA" => KeyAlg::EdDSA,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            KeyAlg::HS256 => "HS256",
            KeyAlg::RS256 => "RS256",
            KeyAlg::RS384 => "RS384",
            KeyAlg::RS512 => "RS512",
            KeyAlg::ES256 => "ES256",
            KeyAlg::ES384 => "ES384",
            KeyAlg::EdDSA => "EdDSA",
        }
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            KeyAlg::HS256 => Algorithm::HS256,
            KeyAlg::RS256 => Algorithm::RS256,
            KeyAlg::RS384 => Algorithm::RS384,
            KeyAlg::RS512 => Algorithm::RS512,
            KeyAlg::ES256 => Algorithm::ES256,
            KeyAlg::ES384 => Algorithm::ES384,
            KeyAlg::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// One verification key: its algorithm is fixed here, once, and never taken from a token.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: KeyAlg,
    decoding: DecodingKey,
}

/// Keys a token may be signed with.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // kid and algorithm only: never key material (HS256 secrets in particular).
        let mut list = f.debug_list();
        for k in &self.keys {
            list.entry(&format_args!("{}:{}", k.alg.name(), k.kid.as_deref().unwrap_or("-")));
        }
        list.finish()
    }
}

impl KeySet {
    /// A key set with no keys (every token is refused with [`JwtError::NoMatchingKey`] or
    /// [`JwtError::UnknownKid`]).
    pub fn empty() -> Self {
        KeySet { keys: Vec::new() }
    }

    /// Parse an RFC 7517 JWK Set (`{"keys":[...]}`).
    ///
    /// Supported: `RSA` (RS256/RS384/RS512, modulus 2048–8192 bits), `EC` P-256 (ES256) and
    /// P-384 (ES384), `OKP` Ed25519 (EdDSA). A key's algorithm is its `alg` if present, else
    /// fixed by kty/crv (RSA → RS256 only; P-256 → ES256; P-384 → ES384; Ed25519 → EdDSA).
    ///
    /// Skipped (not an error): keys whose `use` is not `"sig"`, whose `key_ops` lacks
    /// `"verify"`, of another kty (`oct` included: symmetric keys are configured with
    /// [`KeySet::add_hs256_secret`]) or curve, or whose `alg` is not one we support for that
    /// key type (an RSA key can never become an HMAC key).
    /// Errors ([`JwtError::BadJwks`]): not JSON, no `keys` array, or a key of a supported
    /// type with missing / malformed parameters.
    pub fn from_jwks_json(json: &str) -> Result<KeySet, JwtError> {
        let doc: Value = serde_json::from_str(json).map_err(|e| JwtError::BadJwks(format!("not JSON: {e}")))?;
        let keys =
            doc.get("keys").and_then(Value::as_array).ok_or_else(|| JwtError::BadJwks("no \"keys\" array".into()))?;
        let mut set = KeySet::empty();
        for (i, jwk) in keys.iter().enumerate() {
            if let Some(key) = parse_jwk(jwk).map_err(|m| JwtError::BadJwks(format!("key {i}: {m}")))? {
                set.keys.push(key);
            }
        }
        Ok(set)
    }

    /// Add a symmetric HS256 key (no kid: it is tried for tokens without a `kid` whose `alg`
    /// is HS256). An empty secret is ignored (it would be no secret at all); RFC 7518 §3.2
    /// asks for at least 32 bytes, which the caller should enforce on configuration.
    pub fn add_hs256_secret(&mut self, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        self.keys.push(Key { kid: None, alg: KeyAlg::HS256, decoding: DecodingKey::from_secret(secret) });
    }

    /// The key ids in the set, in order (keys without a kid are not listed).
    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().filter_map(|k| k.kid.clone()).collect()
    }

    /// Number of keys (with or without kid).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn b64url(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| "invalid base64url".to_string())
}

/// A string member of a JWK, `Ok(None)` if absent.
fn opt_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

fn req_b64(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = opt_str(obj, name)?.ok_or_else(|| format!("missing \"{name}\""))?;
    b64url(s).map_err(|e| format!("\"{name}\": {e}"))
}

fn strip_leading_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

/// One JWK → `Ok(Some(key))`, `Ok(None)` when skipped, `Err` when malformed.
fn parse_jwk(jwk: &Value) -> Result<Option<Key>, String> {
    let obj = jwk.as_object().ok_or("not a JSON object")?;
    if let Some(u) = opt_str(obj, "use")? {
        if u != "sig" {
            return Ok(None);
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops.as_array().ok_or("\"key_ops\" is not an array")?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let kid = opt_str(obj, "kid")?.map(str::to_owned);
    let alg = opt_str(obj, "alg")?;
    let kty = opt_str(obj, "kty")?.ok_or("missing \"kty\"")?;
    let (alg, decoding) = match kty {
        "RSA" => {
            let alg = match alg {
                None | Some("RS256") => KeyAlg::RS256,
                Some("RS384") => KeyAlg::RS384,
                Some("RS512") => KeyAlg::RS512,
                Some(_) => return Ok(None),
            };
            let n = req_b64(obj, "n")?;
            let e = req_b64(obj, "e")?;
            let (n, e) = (strip_leading_zeros(&n), strip_leading_zeros(&e));
            if n.len() < 256 || n.len() > 1024 {
                return Err("RSA modulus must be 2048 to 8192 bits".into());
            }
            if e.is_empty() || e.len() > 8 {
                return Err("invalid RSA exponent".into());
            }
            (alg, DecodingKey::from_rsa_raw_components(n, e))
        }
        "EC" => {
            let (curve_alg, len) = match opt_str(obj, "crv")? {
                Some("P-256") => (KeyAlg::ES256, 32),
                Some("P-384") => (KeyAlg::ES384, 48),
                Some(_) => return Ok(None),
                None => return Err("missing \"crv\"".into()),
            };
            if alg.is_some_and(|a| a != curve_alg.name()) {
                return Ok(None);
            }
            let x = req_b64(obj, "x")?;
            let y = req_b64(obj, "y")?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length for the curve".into());
            }
            // Uncompressed SEC1 point, as ring's ECDSA verification expects.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (curve_alg, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            match opt_str(obj, "crv")? {
                Some("Ed25519") => {}
                Some(_) => return Ok(None),
                None => return Err("missing \"crv\"".into()),
            }
            if !matches!(alg, None | Some("EdDSA") | Some("Ed25519")) {
                return Ok(None);
            }
            let x = req_b64(obj, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 \"x\" must be 32 bytes".into());
            }
            (KeyAlg::EdDSA, DecodingKey::from_ed_der(&x))
        }
        _ => return Ok(None),
    };
    Ok(Some(Key { kid, alg, decoding }))
}

/// The token as `[header, payload, signature]` segments, or `Malformed`.
fn split3(token: &str) -> Result<[&str; 3], JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => Ok([h, p, s]),
        _ => Err(JwtError::Malformed),
    }
}

/// base64url (no padding) → JSON object.
fn decode_json_object(segment: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed),
    }
}

/// Verify `token` at time `now` (unix seconds) against `keys`.
pub fn verify(token: &str, keys: &KeySet, settings: &JwtSettings, now: u64) -> Result<VerifiedToken, JwtError> {
    let [header_seg, payload_seg, _sig] = split3(token)?;
    let header = decode_json_object(header_seg)?;

    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(JwtError::Malformed),
    };
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    if header.contains_key("crit") {
        return Err(JwtError::CritUnsupported);
    }
    // `jku`, `jwk`, `x5u`, `x5c`: deliberately never read.
    let header_alg = KeyAlg::from_name(alg_name).ok_or(JwtError::UnsupportedAlgorithm)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(JwtError::Malformed),
    };

    let candidates: Vec<&Key> = match kid {
        Some(kid) => {
            let with_kid: Vec<&Key> = keys.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if with_kid.is_empty() {
                return Err(JwtError::UnknownKid);
            }
            let same_alg: Vec<&Key> = with_kid.into_iter().filter(|k| k.alg == header_alg).collect();
            if same_alg.is_empty() {
                return Err(JwtError::AlgorithmMismatch);
            }
            same_alg
        }
        None => {
            let same_alg: Vec<&Key> = keys.keys.iter().filter(|k| k.alg == header_alg).collect();
            if same_alg.is_empty() {
                return Err(JwtError::NoMatchingKey);
            }
            same_alg
        }
    };

    // Judged only once the signature is verified: an unsigned guess learns nothing from it.
    let typ_ok = match &settings.typ {
        None => true,
        Some(accepted) => match header.get("typ") {
            Some(Value::String(t)) => accepted.iter().any(|a| typ_matches(a, t)),
            _ => false,
        },
    };

    let mut last = JwtError::BadSignature;
    for key in candidates {
        match check_with_key(token, key, settings) {
            Ok(()) => {
                // Signature verified and jsonwebtoken's claim checks passed.
                if !typ_ok {
                    return Err(JwtError::WrongType);
                }
                let claims = decode_json_object(payload_seg)?;
                return extract(&claims, settings, now);
            }
            Err(JwtError::BadSignature) => last = JwtError::BadSignature,
            Err(JwtError::MissingClaim(_)) => {
                // The signature was good (claims are checked after it). Report the first
                // missing claim in a fixed order, not jsonwebtoken's HashSet order.
                if !typ_ok {
                    return Err(JwtError::WrongType);
                }
                let claims = decode_json_object(payload_seg)?;
                return Err(extract(&claims, settings, now).err().unwrap_or(JwtError::MissingClaim("exp")));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Signature and claims through jsonwebtoken, with an explicit Validation.
fn check_with_key(token: &str, key: &Key, settings: &JwtSettings) -> Result<(), JwtError> {
    let alg = key.alg.jsonwebtoken();
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = settings.leeway_secs;
    v.reject_tokens_expiring_in_less_than = 0;
    // jsonwebtoken reads the system clock; time is our argument, so exp/nbf are ours.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.sub = None;
    let mut required = vec!["exp", "sub"];
    v.iss = None;
    if let Some(iss) = &settings.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.aud = None;
    v.validate_aud = false;
    if let Some(aud) = &settings.audience {
        v.set_audience(&[aud]);
        v.validate_aud = true;
        required.push("aud");
    }
    v.set_required_spec_claims(&required);

    match jsonwebtoken::decode::<Value>(token, &key.decoding, &v) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => JwtError::AlgorithmMismatch,
            ErrorKind::MissingRequiredClaim(_) => JwtError::MissingClaim("exp"),
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidSubject => JwtError::MissingClaim("sub"),
            ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::Crypto(_) => JwtError::BadSignature,
            _ => JwtError::Malformed,
        }),
    }
}

/// NumericDate (RFC 7519 §2): a non-negative number of seconds. Fractions are rounded the
/// safe way: down for `exp`, up for `nbf`.
fn numeric_date(v: &Value, round_up: bool) -> Option<u64> {
    let Value::Number(n) = v else { return None };
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    if !f.is_finite() || f < 0.0 || f >= u64::MAX as f64 {
        return None;
    }
    Some(if round_up { f.ceil() } else { f.floor() } as u64)
}

fn opt_claim_str(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::Malformed),
    }
}

/// A claim that is a space-separated string or an array of strings.
fn string_list(v: &Value, split_spaces: bool) -> Result<Vec<String>, JwtError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if split_spaces => Ok(s.split(' ').filter(|p| !p.is_empty()).map(str::to_owned).collect()),
        Value::String(s) => Ok(if s.is_empty() { Vec::new() } else { vec![s.clone()] }),
        Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_owned).ok_or(JwtError::Malformed)).collect(),
        _ => Err(JwtError::Malformed),
    }
}

/// Our own checks of the (signature-verified) claims, in a fixed order, and the result.
fn extract(claims: &Map<String, Value>, settings: &JwtSettings, now: u64) -> Result<VerifiedToken, JwtError> {
    let exp = claims.get("exp").and_then(|v| numeric_date(v, false)).ok_or(JwtError::MissingClaim("exp"))?;
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(JwtError::MissingClaim("sub")),
    };
    let issuer = match claims.get("iss") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    if let Some(want) = &settings.issuer {
        if issuer.as_deref() != Some(want.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
    }
    if let Some(want) = &settings.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(s)) => s == want,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want.as_str())),
            _ => false,
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }
    // Valid iff now < exp + leeway (exp: "on or after which the JWT MUST NOT be accepted").
    if now >= exp.saturating_add(settings.leeway_secs) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf, true).ok_or(JwtError::Malformed)?;
        if now.saturating_add(settings.leeway_secs) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    let issued_at = match claims.get("iat") {
        None | Some(Value::Null) => None,
        Some(v) => Some(numeric_date(v, false).ok_or(JwtError::Malformed)?),
    };
    if let Some(max) = settings.max_lifetime_secs {
        // From `iat`, or from now when there is none or it lies ahead (an `iat` in the future
        // must not hide years of validity).
        let start = issued_at.map_or(now, |iat| iat.min(now));
        if exp.saturating_sub(start) > max.saturating_add(settings.leeway_secs) {
            return Err(JwtError::LifetimeTooLong);
        }
    }
    let jti = opt_claim_str(claims, "jti")?;
    let client_id = match opt_claim_str(claims, "client_id")? {
        Some(c) => Some(c),
        None => opt_claim_str(claims, "azp")?,
    };
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(v), _) if !v.is_null() => string_list(v, true)?,
        (_, Some(v)) => string_list(v, true)?,
        _ => Vec::new(),
    };
    let roles = match claims.get("roles") {
        Some(v) => string_list(v, false)?,
        None => Vec::new(),
    };
    Ok(VerifiedToken { subject, client_id, scopes, roles, expires_at: exp, issued_at, jti, issuer })
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// `sub` (non-empty).
    pub subject: String,
    /// `client_id` (RFC 9068), else `azp`.
    pub client_id: Option<String>,
    /// `scope` split on spaces, else `scp` (array, or space-separated string).
    pub scopes: Vec<String>,
    /// `roles` (array of strings, or one string).
    pub roles: Vec<String>,
    /// `exp`, unix seconds (fractions rounded down).
    pub expires_at: u64,
    /// `iat`, unix seconds, when present.
    pub issued_at: Option<u64>,
    /// `jti`, the token's id (revocation), when present.
    pub jti: Option<String>,
    /// `iss` when it is a string.
    pub issuer: Option<String>,
}

/// The `kid` of a token's header, if any (so the caller can refresh a JWKS on an unknown
/// kid). Nothing is verified.
pub fn peek_kid(token: &str) -> Option<String> {
    let [h, _, _] = split3(token).ok()?;
    match decode_json_object(h).ok()?.get("kid") {
        Some(Value::String(k)) => Some(k.clone()),
        _ => None,
    }
}

/// Does this look like a JWT: three base64url segments (the signature may be empty, so an
/// `alg: none` token is recognised — and then refused — as a token), the header decoding to
/// a JSON object with a string `alg`? Nothing is verified.
pub fn looks_like_jwt(s: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(s) else {
        return false;
    };
    let Ok([h, p, sig]) = split3(s) else {
        return false;
    };
    let b64url_chars = |seg: &str| seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !b64url_chars(h) || !b64url_chars(p) || !b64url_chars(sig) {
        return false;
    }
    matches!(decode_json_object(h), Ok(m) if matches!(m.get("alg"), Some(Value::String(_))))
}

// ---------------------------------------------------------------------------------------
// Minting (the built-in token service).

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Ed25519 signing key of the token service. `Debug` shows the kid only.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
    kid: String,
    x: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("alg", &"EdDSA").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key (ring, PKCS#8 v2).
    ///
    /// # Panics
    /// Only if the operating system's random number generator fails.
    pub fn generate() -> SigningKey {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("system RNG failed");
        SigningKey::from_pkcs8_der(doc.as_ref()).expect("ring produced an unreadable key")
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, JwtError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| JwtError::BadKey("not a PKCS#8 Ed25519 private key".into()))?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        // RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Ok(SigningKey { pkcs8: der.to_vec(), pair, kid, x })
    }

    /// Read an unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, v1 as written by
    /// `openssl genpkey -algorithm ed25519`, or v2).
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey, JwtError> {
        let start = pem.find(PEM_BEGIN).ok_or_else(|| JwtError::BadKey("no \"BEGIN PRIVATE KEY\" block".into()))?
            + PEM_BEGIN.len();
        let end =
            pem[start..].find(PEM_END).ok_or_else(|| JwtError::BadKey("no \"END PRIVATE KEY\" line".into()))? + start;
        let body: String = pem[start..end].chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = STANDARD.decode(body).map_err(|_| JwtError::BadKey("invalid base64 in PEM".into()))?;
        SigningKey::from_pkcs8_der(&der)
    }

    /// The key as an unencrypted PKCS#8 PEM (store it with owner-only permissions).
    pub fn to_pkcs8_pem(&self) -> String {
        let b64 = STANDARD.encode(&self.pkcs8);
        let mut out = String::with_capacity(b64.len() + 80);
        out.push_str(PEM_BEGIN);
        out.push('\n');
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(PEM_END);
        out.push('\n');
        out
    }

    /// RFC 7638 JWK thumbprint (base64url SHA-256, 43 characters).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK: `{"kty":"OKP","crv":"Ed25519","x":..,"kid":..,"alg":"EdDSA","use":"sig"}`.
    pub fn jwk(&self) -> Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.x,
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// Claims of an access token minted by the token service (RFC 9068 profile).
#[derive(Debug, Clone)]
pub struct AccessClaims {
    /// `iss`: the token service's issuer URL.
    pub issuer: String,
    /// `sub`: the principal the token is for.
    pub subject: String,
    /// `aud`, when configured.
    pub audience: Option<String>,
    /// `client_id`: the OAuth client it was issued to.
    pub client_id: String,
    /// Space-separated scopes (omitted from the token when empty).
    pub scope: String,
    /// Omitted from the token when empty.
    pub roles: Vec<String>,
    /// `iat`, unix seconds.
    pub issued_at: u64,
    /// `exp`, unix seconds.
    pub expires_at: u64,
    /// `jti`: a unique id, for revocation.
    pub jti: String,
}

/// Sign `claims` with `key`: header `{"alg":"EdDSA","kid":..,"typ":"at+jwt"}`.
pub fn mint(claims: &AccessClaims, key: &SigningKey) -> String {
    let header = serde_json::json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": key.kid });
    let mut body = Map::new();
    body.insert("iss".into(), Value::from(claims.issuer.as_str()));
    body.insert("sub".into(), Value::from(claims.subject.as_str()));
    if let Some(aud) = &claims.audience {
        body.insert("aud".into(), Value::from(aud.as_str()));
    }
    body.insert("client_id".into(), Value::from(claims.client_id.as_str()));
    if !claims.scope.is_empty() {
        body.insert("scope".into(), Value::from(claims.scope.as_str()));
    }
    if !claims.roles.is_empty() {
        body.insert("roles".into(), Value::from(claims.roles.clone()));
    }
    body.insert("iat".into(), Value::from(claims.issued_at));
    body.insert("exp".into(), Value::from(claims.expires_at));
    body.insert("jti".into(), Value::from(claims.jti.as_str()));

    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(Value::Object(body).to_string()));
    let sig = key.pair.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    token
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// Test-only RSA-2048 key (generated once with `openssl genpkey -algorithm RSA`).
    pub(crate) const RSA_PRIV_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCekFezUC4xnaSB
VycCdXMOpg8HFSakpcv7RS4NFrpZeP6lNfXCUsQ5Qm05e+8WvzvR17DrUSVEznYM
1H73QuCP5DVfpDiuI1EoQMpu0972ILht63hkj7PscjReMZV6vB8i+trD//YpqHgE
Bk5nL0K3KzCrTfngDNuEI5huewbkdNVKAysvL2ZHMPQwH1S1CJzKPbMm5guFrlRn
+HNasm/L1DYLj52GMAVptF3i7I9yxTgJ0+CeN5nOtqieNUwq6hDTK5G7sD64MFc8
GGhhKS0mZ2C5iMrHtguB2AB1dTVdt1m47f/ysFLpa8lGweDHD+riKiY/oEyDR5Q6
/WBodEN3AgMBAAECggEACFbmyJSw0UWNbOC0ubGMAHBlvZrJrQLWpHECLTMNpaiy
RTsoy/RxbeIwqhjQEtNc+zo2YQdOsqc52I6RMkJPWudcPUWpq32fsO0eGHpxMWMN
gCPQca2If345gzNlaA6eg/GgnDVem4NI80vnnLqvbhXJ71XgYf3FyoCFba4acd0e
pyDdl6gnzz6NIKG7Ig3/wI+a1fesYzPMSQyN6yG2dTnM1gfO6F4/tc8P+me9B6Co
0tFXYcAwrKv5OO1d3XJheNy9CeFItIgUzFPPhRjDf3Q6oSbiDHQm3RWp0/5k72Ah
j94DfKhOBr/nfcMqE7fVMe1E0e609KKTGSg35QdRWQKBgQDStHVAvrkkg7FvcbY7
2fHa0gTdQ/wi7KkwXJqJzYRfqtpmapt7KhGMf5qsoj8dqnX6jqQtnJ7I3GkUPV8W
W4DE/YeailLL/5vL8ebf95EuINVVVV2ByyXhF70DuEdTs+5rzN1j+j/ElXhat8kM
l1LaAw4UEsRsfH8Mtzq7JoYtbwKBgQDApnMcvnDGlIUGLBtm+uqnr4JFwgxOjm9f
xQtGmWzHPH+0bu8J8t2ENjU87yYgnTffh60nK/aWxxp6AczhPd8L8YBSphuJ4e2O
6T/RDnRWy0Ninn7mQVxDhnmXH950MUAaGeWa0aYEeg6fN+osGFM5RKDmGuug/pYk
1A+cfNLWeQKBgGqElf4MLPabqNipCLJLJKw1ngXpt45ES+fJ+MoPXosqiUxbOozS
IJsBa0U4pGWv5gKrl64DTnZGjsyPlgFscrWjYakrol3Es5MvkELLGdbS/GYuSJ4z
/8tCP+iggVZ8UNyobYd8XD5aPcTGwlmeKmFSSAy3zBr3+RaJjqRL/mr7AoGADmjk
11OPT+swAAQwkIVYI+7Gybz3+rBAuGMesssrDcQCsVZS3uWhmBAN717b9TiNQ1T8
qJ9rNF/0JQgZcQeVtWj89jGiga+6eyQLN/Hi1dMiWTANwd9FrW9TjPA/TWWZq9og
CHKB/ne6vEIMa/vtzazKdCuzUDl6tYp/GG9lvdECgYAPNcSvBjQLLJ9tsO6PX9FQ
N+RPtfahQi6SPWec1HOqtcr+WuAmDpjiQuQ3ri1gBFCiSj4r+DGsR2g4rNzzC+rE
/TagmT8piXTYl7eZ5+VqknHEpUbtxEEqeheTqCLJTQ9s2yYGEvh7t4o8FRSH+ER1
rIgNuEbsI0g5y1wgWZzBTg==
-----END PRIVATE KEY-----
";
    const RSA_PUB_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnpBXs1AuMZ2kgVcnAnVz
DqYPBxUmpKXL+0UuDRa6WXj+pTX1wlLEOUJtOXvvFr870dew61ElRM52DNR+90Lg
j+Q1X6Q4riNRKEDKbtPe9iC4bet4ZI+z7HI0XjGVerwfIvraw//2Kah4BAZOZy9C
tyswq0354AzbhCOYbnsG5HTVSgMrLy9mRzD0MB9UtQicyj2zJuYLha5UZ/hzWrJv
y9Q2C4+dhjAFabRd4uyPcsU4CdPgnjeZzraonjVMKuoQ0yuRu7A+uDBXPBhoYSkt
JmdguYjKx7YLgdgAdXU1XbdZuO3/8rBS6WvJRsHgxw/q4iomP6BMg0eUOv1gaHRD
dwIDAQAB
-----END PUBLIC KEY-----
";
    /// Its modulus and exponent, base64url (`openssl rsa -noout -modulus`).
    pub(crate) const RSA_N: &str = "npBXs1AuMZ2kgVcnAnVzDqYPBxUmpKXL-0UuDRa6WXj-pTX1wlLEOUJtOXvvFr870dew61ElRM52DNR-90Lgj-Q1X6Q4riNRKEDKbtPe9iC4bet4ZI-z7HI0XjGVerwfIvraw__2Kah4BAZOZy9Ctyswq0354AzbhCOYbnsG5HTVSgMrLy9mRzD0MB9UtQicyj2zJuYLha5UZ_hzWrJvy9Q2C4-dhjAFabRd4uyPcsU4CdPgnjeZzraonjVMKuoQ0yuRu7A-uDBXPBhoYSktJmdguYjKx7YLgdgAdXU1XbdZuO3_8rBS6WvJRsHgxw_q4iomP6BMg0eUOv1gaHRDdw";
    pub(crate) const RSA_E: &str = "AQAB";

    fn b64json(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// Sign any header/claims (even ones jsonwebtoken's `Header` could not express).
    fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
        let msg = format!("{}.{}", b64json(header), b64json(claims));
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
        format!("{msg}.{sig}")
    }

    fn claims() -> Value {
        json!({
            "iss": "https://issuer.example",
            "sub": "dev-001",
            "aud": "warden",
            "client_id": "dev-001",
            "scope": "mqtt:pub:devices/dev-001/# mqtt:sub:commands/dev-001/#",
            "iat": NOW - 10,
            "exp": NOW + 600,
            "jti": "tok-1",
        })
    }

    fn with(mut c: Value, name: &str, v: Value) -> Value {
        c[name] = v;
        c
    }

    fn without(mut c: Value, name: &str) -> Value {
        c.as_object_mut().unwrap().remove(name);
        c
    }

    /// Settings for the tests that are not about `typ` or the lifetime (many of their tokens
    /// have neither `typ` nor a short life): those two checks off.
    fn s() -> JwtSettings {
        JwtSettings { typ: None, max_lifetime_secs: None, ..JwtSettings::default() }
    }

    fn hs_keys() -> KeySet {
        let mut k = KeySet::empty();
        k.add_hs256_secret(HS_SECRET);
        k
    }

    fn hs_with_header(header: Value, claims: &Value) -> String {
        sign_raw(&header, claims, &EncodingKey::from_secret(HS_SECRET), Algorithm::HS256)
    }

    fn hs(claims: &Value) -> String {
        hs_with_header(json!({"alg": "HS256", "typ": "JWT"}), claims)
    }

    fn rsa_jwks(kid: &str, alg: Option<&str>) -> String {
        let mut k = json!({"kty": "RSA", "use": "sig", "kid": kid, "n": RSA_N, "e": RSA_E});
        if let Some(a) = alg {
            k["alg"] = json!(a);
        }
        json!({ "keys": [k] }).to_string()
    }

    fn rsa_sign(header: Value, claims: &Value, alg: Algorithm) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIV_PEM.as_bytes()).unwrap();
        sign_raw(&header, claims, &key, alg)
    }

    /// (signing key, JWK x, JWK y)
    fn ec_key(p384: bool) -> (EncodingKey, String, String) {
        let rng = SystemRandom::new();
        let alg = if p384 { &ECDSA_P384_SHA384_FIXED_SIGNING } else { &ECDSA_P256_SHA256_FIXED_SIGNING };
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let len = (point.len() - 1) / 2;
        (
            EncodingKey::from_ec_der(doc.as_ref()),
            URL_SAFE_NO_PAD.encode(&point[1..1 + len]),
            URL_SAFE_NO_PAD.encode(&point[1 + len..]),
        )
    }

    /// (signing key, JWK x)
    fn ed_key() -> (EncodingKey, String) {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        (EncodingKey::from_ed_der(doc.as_ref()), URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()))
    }

    fn access_claims() -> AccessClaims {
        AccessClaims {
            issuer: "https://warden.example".into(),
            subject: "dev-001".into(),
            audience: Some("warden".into()),
            client_id: "dev-001".into(),
            scope: "mqtt:pub:devices/dev-001/# mqtt:sub:commands/dev-001/#".into(),
            roles: vec!["sensor".into()],
            issued_at: NOW,
            expires_at: NOW + 3600,
            jti: "jti-42".into(),
        }
    }

    // ---- acceptance per algorithm -----------------------------------------------------

    #[test]
    fn hs256_ok_and_claims_mapped() {
        let t = verify(&hs(&claims()), &hs_keys(), &s(), NOW).unwrap();
        assert_eq!(
            t,
            VerifiedToken {
                subject: "dev-001".into(),
                client_id: Some("dev-001".into()),
                scopes: vec!["mqtt:pub:devices/dev-001/#".into(), "mqtt:sub:commands/dev-001/#".into()],
                roles: vec![],
                expires_at: NOW + 600,
                issued_at: Some(NOW - 10),
                jti: Some("tok-1".into()),
                issuer: Some("https://issuer.example".into()),
            }
        );
    }

    #[test]
    fn hs256_wrong_secret_is_bad_signature() {
        let mut k = KeySet::empty();
        k.add_hs256_secret(b"another secret, also 32 bytes!!!");
        assert_eq!(verify(&hs(&claims()), &k, &s(), NOW), Err(JwtError::BadSignature));
        // With the right secret added as well, it is found among the candidates.
        k.add_hs256_secret(HS_SECRET);
        assert!(verify(&hs(&claims()), &k, &s(), NOW).is_ok());
    }

    #[test]
    fn empty_hs256_secret_is_ignored() {
        let mut k = KeySet::empty();
        k.add_hs256_secret(b"");
        assert!(k.is_empty());
        let tok = sign_raw(&json!({"alg": "HS256"}), &claims(), &EncodingKey::from_secret(b""), Algorithm::HS256);
        assert_eq!(verify(&tok, &k, &s(), NOW), Err(JwtError::NoMatchingKey));
    }

    #[test]
    fn rs256_via_jwks_ok() {
        let keys = KeySet::from_jwks_json(&rsa_jwks("rsa-1", None)).unwrap();
        assert_eq!(keys.kids(), vec!["rsa-1".to_string()]);
        let tok = rsa_sign(json!({"alg": "RS256", "kid": "rsa-1"}), &claims(), Algorithm::RS256);
        assert_eq!(verify(&tok, &keys, &s(), NOW).unwrap().subject, "dev-001");
        // Without a kid, the RS256 keys are tried.
        let tok = rsa_sign(json!({"alg": "RS256"}), &claims(), Algorithm::RS256);
        assert!(verify(&tok, &keys, &s(), NOW).is_ok());
    }

    #[test]
    fn rsa_key_algorithm_is_fixed_by_jwks() {
        // No "alg": RS256 only.
        let keys = KeySet::from_jwks_json(&rsa_jwks("rsa-1", None)).unwrap();
        let rs384 = rsa_sign(json!({"alg": "RS384", "kid": "rsa-1"}), &claims(), Algorithm::RS384);
        assert_eq!(verify(&rs384, &keys, &s(), NOW), Err(JwtError::AlgorithmMismatch));
        // "alg": "RS384" makes it an RS384 key, and RS256 is then refused.
        let keys = KeySet::from_jwks_json(&rsa_jwks("rsa-1", Some("RS384"))).unwrap();
        assert!(verify(&rs384, &keys, &s(), NOW).is_ok());
        let rs256 = rsa_sign(json!({"alg": "RS256", "kid": "rsa-1"}), &claims(), Algorithm::RS256);
        assert_eq!(verify(&rs256, &keys, &s(), NOW), Err(JwtError::AlgorithmMismatch));
        let keys = KeySet::from_jwks_json(&rsa_jwks("rsa-1", Some("RS512"))).unwrap();
        let rs512 = rsa_sign(json!({"alg": "RS512", "kid": "rsa-1"}), &claims(), Algorithm::RS512);
        assert!(verify(&rs512, &keys, &s(), NOW).is_ok());
    }

    #[test]
    fn es256_and_es384_via_jwks_ok() {
        let (k256, x256, y256) = ec_key(false);
        let (k384, x384, y384) = ec_key(true);
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec-256", "x": x256, "y": y256},
            {"kty": "EC", "crv": "P-384", "kid": "ec-384", "x": x384, "y": y384, "alg": "ES384"},
        ]});
        let keys = KeySet::from_jwks_json(&jwks.to_string()).unwrap();
        assert_eq!(keys.len(), 2);
        let t256 = sign_raw(&json!({"alg": "ES256", "kid": "ec-256"}), &claims(), &k256, Algorithm::ES256);
        assert!(verify(&t256, &keys, &s(), NOW).is_ok());
        let t384 = sign_raw(&json!({"alg": "ES384", "kid": "ec-384"}), &claims(), &k384, Algorithm::ES384);
        assert!(verify(&t384, &keys, &s(), NOW).is_ok());
        // The P-384 key does not verify under the P-256 kid.
        let wrong = sign_raw(&json!({"alg": "ES256", "kid": "ec-384"}), &claims(), &k256, Algorithm::ES256);
        assert_eq!(verify(&wrong, &keys, &s(), NOW), Err(JwtError::AlgorithmMismatch));
    }

    #[test]
    fn eddsa_via_jwks_ok() {
        let (k, x) = ed_key();
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": x}]});
        let keys = KeySet::from_jwks_json(&jwks.to_string()).unwrap();
        let tok = sign_raw(&json!({"alg": "EdDSA", "kid": "ed-1"}), &claims(), &k, Algorithm::EdDSA);
        assert!(verify(&tok, &keys, &s(), NOW).is_ok());
    }

    #[test]
    fn minted_token_verifies_against_its_jwk() {
        let key = SigningKey::generate();
        let tok = mint(&access_claims(), &key);
        let jwks = json!({"keys": [key.jwk()]}).to_string();
        let keys = KeySet::from_jwks_json(&jwks).unwrap();
        assert_eq!(keys.kids(), vec![key.kid().to_string()]);
        assert_eq!(peek_kid(&tok).as_deref(), Some(key.kid()));
        // The strict profile (typ at+jwt, at most 24 h): what the token service mints passes.
        let settings = JwtSettings {
            issuer: Some("https://warden.example".into()),
            audience: Some("warden".into()),
            ..JwtSettings::default()
        };
        let t = verify(&tok, &keys, &settings, NOW).unwrap();
        assert_eq!(
            t,
            VerifiedToken {
                subject: "dev-001".into(),
                client_id: Some("dev-001".into()),
                scopes: vec!["mqtt:pub:devices/dev-001/#".into(), "mqtt:sub:commands/dev-001/#".into()],
                roles: vec!["sensor".into()],
                expires_at: NOW + 3600,
                issued_at: Some(NOW),
                jti: Some("jti-42".into()),
                issuer: Some("https://warden.example".into()),
            }
        );
        let header = decode_json_object(tok.split('.').next().unwrap()).unwrap();
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], "EdDSA");
        // Another key's JWKS does not verify it.
        let other = SigningKey::generate();
        let mut other_jwk = other.jwk();
        other_jwk["kid"] = json!(key.kid());
        let keys = KeySet::from_jwks_json(&json!({"keys": [other_jwk]}).to_string()).unwrap();
        assert_eq!(verify(&tok, &keys, &settings, NOW), Err(JwtError::BadSignature));
    }

    #[test]
    fn minted_token_without_optional_claims() {
        let key = SigningKey::generate();
        let mut c = access_claims();
        c.audience = None;
        c.scope = String::new();
        c.roles = vec![];
        let tok = mint(&c, &key);
        let keys = KeySet::from_jwks_json(&json!({"keys": [key.jwk()]}).to_string()).unwrap();
        let t = verify(&tok, &keys, &s(), NOW).unwrap();
        assert!(t.scopes.is_empty() && t.roles.is_empty());
        // An audience is required when configured.
        let settings = JwtSettings { audience: Some("warden".into()), ..s() };
        assert_eq!(verify(&tok, &keys, &settings, NOW), Err(JwtError::WrongAudience));
    }

    #[test]
    fn signing_key_pem_round_trip_kid_and_debug() {
        let key = SigningKey::generate();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.jwk(), key.jwk());
        assert_eq!(key.kid().len(), 43);
        // A token minted with the reloaded key verifies with the original's JWK.
        let keys = KeySet::from_jwks_json(&json!({"keys": [key.jwk()]}).to_string()).unwrap();
        assert!(verify(&mint(&access_claims(), &again), &keys, &s(), NOW).is_ok());
        // Debug shows no key material.
        let dbg = format!("{key:?}");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(dbg.contains(key.kid()));
        assert!(!dbg.contains(&body[..20]) && !dbg.contains(&body[body.len() - 20..]));
        // Not a key.
        assert!(matches!(SigningKey::from_pkcs8_pem("nope"), Err(JwtError::BadKey(_))));
        assert!(matches!(SigningKey::from_pkcs8_pem(RSA_PRIV_PEM), Err(JwtError::BadKey(_))));
    }

    #[test]
    fn signing_key_reads_openssl_v1_pkcs8() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key inside).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIP+11X4FYrlgPCvBiVBpge7xzmG2LoQKb7kt4+Dzl85u\n\
                   -----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pkcs8_pem(pem).unwrap();
        // The public key `openssl pkey -pubout` prints for that key.
        let jwk = key.jwk();
        assert_eq!(jwk["x"], "LR7BddQ4S7QexwEyOxg6EGGqU-GySV48yvJWM47SX2Q");
        // RFC 7638 thumbprint of that public key.
        let canonical = r#"{"crv":"Ed25519","kty":"OKP","x":"LR7BddQ4S7QexwEyOxg6EGGqU-GySV48yvJWM47SX2Q"}"#;
        assert_eq!(key.kid(), URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())));
    }

    // ---- header refusals --------------------------------------------------------------

    #[test]
    fn alg_none_refused_in_any_case() {
        assert!(verify(&hs(&claims()), &hs_keys(), &s(), NOW).is_ok());
        for alg in ["none", "None", "NONE", "nOnE"] {
            let h = b64json(&json!({"alg": alg, "typ": "JWT"}));
            let p = b64json(&claims());
            for tok in [format!("{h}.{p}."), format!("{h}.{p}.c2ln")] {
                assert_eq!(verify(&tok, &hs_keys(), &s(), NOW), Err(JwtError::AlgNone), "{alg}");
            }
            // Even "signed" with our HMAC secret.
            let tok = hs_with_header(json!({"alg": alg}), &claims());
            assert_eq!(verify(&tok, &hs_keys(), &s(), NOW), Err(JwtError::AlgNone));
        }
    }

    #[test]
    fn crit_header_refused() {
        let ok = hs_with_header(json!({"alg": "HS256", "typ": "JWT"}), &claims());
        assert!(verify(&ok, &hs_keys(), &s(), NOW).is_ok());
        for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("x")] {
            let tok = hs_with_header(json!({"alg": "HS256", "crit": crit, "b64": false, "exp": 1}), &claims());
            assert_eq!(verify(&tok, &hs_keys(), &s(), NOW), Err(JwtError::CritUnsupported));
        }
    }

    #[test]
    fn unsupported_algorithms_refused() {
        assert!(verify(&hs(&claims()), &hs_keys(), &s(), NOW).is_ok());
        for alg in ["HS384", "HS512", "PS256", "ES512", "hs256", "RSA-OAEP", ""] {
            let tok = hs_with_header(json!({"alg": alg}), &claims());
            assert_eq!(verify(&tok, &hs_keys(), &s(), NOW), Err(JwtError::UnsupportedAlgorithm), "{alg}");
        }
        // alg missing or not a string: malformed.
        for h in [json!({"typ": "JWT"}), json!({"alg": 256}), json!({"alg": null})] {
            let tok = hs_with_header(h, &claims());
            assert_eq!(verify(&tok, &hs_keys(), &s(), NOW), Err(JwtError::Malformed));
        }
    }

    #[test]
    fn embedded_jwk_jku_x5u_x5c_are_ignored() {
        // Our key set: one Ed25519 key.
        let (our, our_x) = ed_key();
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ours", "x": our_x}]});
        let keys = KeySet::from_jwks_json(&jwks.to_string()).unwrap();
        // The attacker signs with their own key and embeds its public half in the header:
        // the embedded key would verify the token, but it is not in our set.
        let (theirs, their_x) = ed_key();
        let their_jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": their_x});
        for header in [
            json!({"alg": "EdDSA", "jwk": their_jwk}),
            json!({"alg": "EdDSA", "kid": "ours", "jwk": their_jwk}),
            json!({"alg": "EdDSA", "jku": "https://evil.example/jwks.json", "kid": "ours"}),
            json!({"alg": "EdDSA", "x5u": "https://evil.example/cert.pem"}),
        ] {
            let tok = sign_raw(&header, &claims(), &theirs, Algorithm::EdDSA);
            assert_eq!(verify(&tok, &keys, &s(), NOW), Err(JwtError::BadSignature), "{header}");
        }
        // A kid the attacker chose for their embedded key is just unknown.
        let tok =
            sign_raw(&json!({"alg": "EdDSA", "kid": "theirs", "jwk": their_jwk}), &claims(), &theirs, Algorithm::EdDSA);
        assert_eq!(verify(&tok, &keys, &s(), NOW), Err(JwtError::UnknownKid));
        // Our own token with such headers is still fine: they are ignored, not fetched.
        let tok = sign_raw(
            &json!({"alg": "EdDSA", "kid": "ours", "jku": "https://evil.example/jwks.json",
                    "x5u": "https://evil.example/cert.pem"}),
            &claims(),
            &our,
            Algorithm::EdDSA,
        );
        assert!(verify(&tok, &keys, &s(), NOW).is_ok());
    }

    // ---- key selection ------------------------------------------------------------------

    #[test]
    fn unknown_kid_no_games() {
        let keys = KeySet::from_jwks_json(&rsa_jwks("rsa-1", None)).unwrap();
        let ok = rsa_sign(json!({"alg": "RS256", "kid": "rsa-1"}), &claims(), Algorithm::RS256);
        assert!(verify(&ok, &keys, &s(), NOW).is_ok());
        for kid in [
            "../../etc/passwd",
            "/dev/null",
            "' OR 1=1 --",
            "rsa-1' OR '1'='1",
            "RSA-1",
            "rsa-1 ",
            " rsa-1",
            "rsa-1\u{0}",
            "",
            "*",
            "rsa-%31",
        ] {
            let tok = rsa_sign(json!({"alg": "RS256", "kid": kid}), &claims(), Algorithm::RS256);
            assert_eq!(verify(&tok, &keys, &s(), NOW), Err(JwtError::UnknownKid), "{kid:?}");
        }
        // A kid of the wrong type is malformed, not a wildcard.
        let tok = rsa_sign(json!({"alg": "RS256", "kid": ["rsa-1"]}), &claims(), Algorithm::RS256);
        assert_eq!(verify(&tok, &keys, &s(), NOW), Err(JwtError::Malformed));
        // HS256 secrets have no kid: a token naming a kid never reaches them.
        let tok = hs_with_header(json!({"alg": "HS256", "kid": "x"}), &claims());
        assert_eq!(verify(&tok, &hs_keys(), &s(), NOW), Err(JwtError::UnknownKid));
    }

    #[test]
    fn empty_key_set_refuses() {
        let k = KeySet::empty();
        assert!(k.is_empty() && k.kids().is_empty());
        assert_eq!(k.len(), 0);
        assert_eq!(verify(&hs(&claims()), &k, &s(), NOW), Err(JwtError::NoMatchingKey));
    }

    #[test]
    fn algorithm_confusion_hs256_with_rsa_public_key_refused() {
        let keys = KeySet::from_jwks_json(&rsa_jwks("rsa-1", None)).unwrap();
        let ok = rsa_sign(json!({"alg": "RS256", "kid": "rsa-1"}), &claims(), Algorithm::RS256);
        assert!(verify(&ok, &keys, &s(), NOW).is_ok());

        // The attacker knows the public key and uses it, as PEM or as DER, as HMAC secret.
        let der_b64: String = RSA_PUB_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        let spki_der = STANDARD.decode(der_b64).unwrap();
        let n_raw = URL_SAFE_NO_PAD.decode(RSA_N).unwrap();
        let secrets: [&[u8]; 4] = [RSA_PUB_PEM.as_bytes(), RSA_PUB_PEM.trim_end().as_bytes(), &spki_der, &n_raw];
        for secret in secrets {
            let forge =
                |header: Value| sign_raw(&header, &claims(), &EncodingKey::from_secret(secret), Algorithm::HS256);
            // Naming the RSA key: its algorithm is RS256, the header's HS256 → mismatch.
            assert_eq!(
                verify(&forge(json!({"alg": "HS256", "kid": "rsa-1"})), &keys, &s(), NOW),
                Err(JwtError::AlgorithmMismatch)
            );
            // Without a kid: there is no HS256 key, so none is tried.
            assert_eq!(verify(&forge(json!({"alg": "HS256"})), &keys, &s(), NOW), Err(JwtError::NoMatchingKey));
            // With an (unrelated) HS256 secret configured too, the forgery is just a bad
            // signature: the RSA key is never used as an HMAC key.
            let mut both = keys.clone();
            both.add_hs256_secret(HS_SECRET);
            assert_eq!(verify(&forge(json!({"alg": "HS256"})), &both, &s(), NOW), Err(JwtError::BadSignature));
        }
        // An RSA JWK claiming "alg": "HS256" is skipped, never turned into an HMAC key.
        let keys = KeySet::from_jwks_json(&rsa_jwks("rsa-1", Some("HS256"))).unwrap();
        assert!(keys.is_empty());
    }

    #[test]
    fn alg_mismatch_between_families_refused() {
        let (ed, x) = ed_key();
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": x}]});
        let keys = KeySet::from_jwks_json(&jwks.to_string()).unwrap();
        let ok = sign_raw(&json!({"alg": "EdDSA", "kid": "ed-1"}), &claims(), &ed, Algorithm::EdDSA);
        assert!(verify(&ok, &keys, &s(), NOW).is_ok());
        let tok = rsa_sign(json!({"alg": "RS256", "kid": "ed-1"}), &claims(), Algorithm::RS256);
        assert_eq!(verify(&tok, &keys, &s(), NOW), Err(JwtError::AlgorithmMismatch));
        let tok = hs_with_header(json!({"alg": "HS256", "kid": "ed-1"}), &claims());
        assert_eq!(verify(&tok, &keys, &s(), NOW), Err(JwtError::AlgorithmMismatch));
    }

    // ---- typ (RFC 9068 §4) and the maximum lifetime ------------------------------------

    #[test]
    fn typ_is_checked_after_the_signature() {
        let strict = JwtSettings::default();
        let both = JwtSettings { typ: Some(vec![TYP_ACCESS_TOKEN.into(), TYP_JWT.into()]), ..JwtSettings::default() };
        let with_typ = |typ: Value| {
            let mut h = json!({"alg": "HS256"});
            if !typ.is_null() {
                h["typ"] = typ;
            }
            hs_with_header(h, &claims())
        };
        for ok in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"] {
            assert!(verify(&with_typ(json!(ok)), &hs_keys(), &strict, NOW).is_ok(), "{ok}");
        }
        for refused in [json!("JWT"), json!("jwt"), json!("id_token+jwt"), json!("at+jwt "), json!("")] {
            assert_eq!(
                verify(&with_typ(refused.clone()), &hs_keys(), &strict, NOW),
                Err(JwtError::WrongType),
                "{refused}"
            );
        }
        assert_eq!(verify(&with_typ(Value::Null), &hs_keys(), &strict, NOW), Err(JwtError::WrongType), "no typ");
        // A typ that is not a string: jsonwebtoken cannot read the header at all.
        assert_eq!(verify(&with_typ(json!(1)), &hs_keys(), &strict, NOW), Err(JwtError::Malformed));
        // `JWT` when configured, in any case; still not a missing typ.
        for ok in ["at+jwt", "JWT", "jwt", "application/jwt"] {
            assert!(verify(&with_typ(json!(ok)), &hs_keys(), &both, NOW).is_ok(), "{ok}");
        }
        assert_eq!(verify(&with_typ(Value::Null), &hs_keys(), &both, NOW), Err(JwtError::WrongType));
        // Not checked at all when `typ` is None.
        assert!(verify(&with_typ(Value::Null), &hs_keys(), &s(), NOW).is_ok());
        // A forged token with the wrong typ is a bad signature, not a typ error.
        let forged = sign_raw(
            &json!({"alg": "HS256", "typ": "JWT"}),
            &claims(),
            &EncodingKey::from_secret(b"another secret of enough length!"),
            Algorithm::HS256,
        );
        assert_eq!(verify(&forged, &hs_keys(), &strict, NOW), Err(JwtError::BadSignature));
        // A good signature with a missing claim and a wrong typ: the typ is reported.
        let no_exp = hs_with_header(json!({"alg": "HS256", "typ": "JWT"}), &without(claims(), "exp"));
        assert_eq!(verify(&no_exp, &hs_keys(), &strict, NOW), Err(JwtError::WrongType));
    }

    #[test]
    fn typ_matching() {
        assert!(typ_matches("at+jwt", "application/AT+JWT"));
        assert!(typ_matches("application/at+jwt", "at+jwt"));
        assert!(!typ_matches("at+jwt", "jwt"));
        assert!(!typ_matches("at+jwt", "application/"));
        assert!(!typ_matches("at+jwt", "applicationat+jwt"));
        assert!(!typ_matches("at+jwt", "x-application/at+jwt"));
        assert!(!typ_matches("at+jwt", "applicatioé/at+jwt"), "a multi-byte character at the cut");
    }

    #[test]
    fn lifetime_is_bounded_from_iat_or_now() {
        let day = DEFAULT_MAX_LIFETIME_SECS;
        let st = JwtSettings { typ: None, ..JwtSettings::default() };
        let tok = |iat: Option<u64>, exp: u64| {
            let mut c = with(claims(), "exp", json!(exp));
            c = match iat {
                Some(i) => with(c, "iat", json!(i)),
                None => without(c, "iat"),
            };
            hs(&c)
        };
        // exp - iat: exactly 24 h is fine, one second more is not — even when most of it passed.
        assert!(verify(&tok(Some(NOW - 10), NOW - 10 + day), &hs_keys(), &st, NOW).is_ok());
        assert_eq!(verify(&tok(Some(NOW - 10), NOW - 9 + day), &hs_keys(), &st, NOW), Err(JwtError::LifetimeTooLong));
        assert_eq!(
            verify(&tok(Some(NOW - day), NOW + 60), &hs_keys(), &st, NOW),
            Err(JwtError::LifetimeTooLong),
            "a 24 h + 60 s token with a minute left"
        );
        // Ten years.
        let ten_years = 10 * 365 * day;
        assert_eq!(verify(&tok(Some(NOW), NOW + ten_years), &hs_keys(), &st, NOW), Err(JwtError::LifetimeTooLong));
        // No iat: exp - now.
        assert!(verify(&tok(None, NOW + day), &hs_keys(), &st, NOW).is_ok());
        assert_eq!(verify(&tok(None, NOW + day + 1), &hs_keys(), &st, NOW), Err(JwtError::LifetimeTooLong));
        assert_eq!(verify(&tok(None, NOW + ten_years), &hs_keys(), &st, NOW), Err(JwtError::LifetimeTooLong));
        // An iat in the future does not hide the years ahead.
        assert_eq!(
            verify(&tok(Some(NOW + ten_years - 60), NOW + ten_years), &hs_keys(), &st, NOW),
            Err(JwtError::LifetimeTooLong)
        );
        // The leeway widens the bound (clock skew between issuer and broker).
        let lenient = JwtSettings { leeway_secs: 30, ..st.clone() };
        assert!(verify(&tok(Some(NOW + 20), NOW + 20 + day), &hs_keys(), &lenient, NOW).is_ok());
        assert_eq!(verify(&tok(Some(NOW + 20), NOW + 20 + day), &hs_keys(), &st, NOW), Err(JwtError::LifetimeTooLong));
        // A configured maximum; None is no limit.
        let hour = JwtSettings { max_lifetime_secs: Some(3600), ..st.clone() };
        assert_eq!(verify(&tok(Some(NOW), NOW + 3601), &hs_keys(), &hour, NOW), Err(JwtError::LifetimeTooLong));
        assert!(verify(&tok(Some(NOW), NOW + 3600), &hs_keys(), &hour, NOW).is_ok());
        let unlimited = JwtSettings { max_lifetime_secs: None, ..st };
        assert!(verify(&tok(Some(NOW), NOW + ten_years), &hs_keys(), &unlimited, NOW).is_ok());
    }

    // ---- structure ----------------------------------------------------------------------

    #[test]
    fn tampered_token_refused() {
        let tok = hs(&claims());
        assert!(verify(&tok, &hs_keys(), &s(), NOW).is_ok());
        let parts: Vec<&str> = tok.split('.').collect();
        // Payload swapped for one with another subject.
        let evil = b64json(&with(claims(), "sub", json!("admin")));
        let t = format!("{}.{}.{}", parts[0], evil, parts[2]);
        assert_eq!(verify(&t, &hs_keys(), &s(), NOW), Err(JwtError::BadSignature));
        // Header changed (typ), same signature.
        let h = b64json(&json!({"alg": "HS256", "typ": "at+jwt"}));
        let t = format!("{}.{}.{}", h, parts[1], parts[2]);
        assert_eq!(verify(&t, &hs_keys(), &s(), NOW), Err(JwtError::BadSignature));
        // Signature: one character changed, truncated, removed.
        let mut sig = parts[2].to_string();
        let first = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, first);
        for sig in [sig.as_str(), &parts[2][..10], ""] {
            let t = format!("{}.{}.{}", parts[0], parts[1], sig);
            assert_eq!(verify(&t, &hs_keys(), &s(), NOW), Err(JwtError::BadSignature));
        }
    }

    #[test]
    fn wrong_segment_count_and_garbage_are_malformed() {
        let tok = hs(&claims());
        assert!(verify(&tok, &hs_keys(), &s(), NOW).is_ok());
        let parts: Vec<&str> = tok.split('.').collect();
        let two = format!("{}.{}", parts[0], parts[1]);
        let four = format!("{tok}.{}", parts[2]);
        let five = format!("{tok}..");
        let empty_payload = format!("{}..{}", parts[0], parts[2]);
        let padded_header = format!("{}=.{}.{}", parts[0].trim_end_matches('='), parts[1], parts[2]);
        let not_json = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("hello"), parts[1], parts[2]);
        let array_header = format!("{}.{}.{}", b64json(&json!([1])), parts[1], parts[2]);
        for t in [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c",
            "annpw",
            "not a token at all",
            "\u{0}\u{0}.\u{1}.\u{2}",
            two.as_str(),
            four.as_str(),
            five.as_str(),
            empty_payload.as_str(),
            padded_header.as_str(),
            not_json.as_str(),
            array_header.as_str(),
        ] {
            assert_eq!(verify(t, &hs_keys(), &s(), NOW), Err(JwtError::Malformed), "{t:?}");
        }
        let huge = format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_LEN), parts[2]);
        assert_eq!(verify(&huge, &hs_keys(), &s(), NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn signed_but_non_json_payload_is_malformed() {
        let h = b64json(&json!({"alg": "HS256"}));
        for payload in [URL_SAFE_NO_PAD.encode("not json"), URL_SAFE_NO_PAD.encode("[1,2]"), "!!".to_string()] {
            let msg = format!("{h}.{payload}");
            let sig =
                jsonwebtoken::crypto::sign(msg.as_bytes(), &EncodingKey::from_secret(HS_SECRET), Algorithm::HS256)
                    .unwrap();
            assert_eq!(verify(&format!("{msg}.{sig}"), &hs_keys(), &s(), NOW), Err(JwtError::Malformed));
        }
    }

    // ---- claims -------------------------------------------------------------------------

    #[test]
    fn missing_exp_refused() {
        assert!(verify(&hs(&claims()), &hs_keys(), &s(), NOW).is_ok());
        for c in [
            without(claims(), "exp"),
            with(claims(), "exp", json!(null)),
            with(claims(), "exp", json!("1700000600")),
            with(claims(), "exp", json!(-5)),
        ] {
            assert_eq!(verify(&hs(&c), &hs_keys(), &s(), NOW), Err(JwtError::MissingClaim("exp")), "{c}");
        }
        // With sub missing as well, exp is reported first (a fixed order).
        let c = without(without(claims(), "exp"), "sub");
        assert_eq!(verify(&hs(&c), &hs_keys(), &s(), NOW), Err(JwtError::MissingClaim("exp")));
    }

    #[test]
    fn missing_sub_refused() {
        assert!(verify(&hs(&claims()), &hs_keys(), &s(), NOW).is_ok());
        for c in [without(claims(), "sub"), with(claims(), "sub", json!("")), with(claims(), "sub", json!(42))] {
            assert_eq!(verify(&hs(&c), &hs_keys(), &s(), NOW), Err(JwtError::MissingClaim("sub")), "{c}");
        }
        // A structured sub is refused too (jsonwebtoken cannot read the claims at all).
        let c = with(claims(), "sub", json!(["dev-001"]));
        assert_eq!(verify(&hs(&c), &hs_keys(), &s(), NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn expiry_boundaries_and_leeway() {
        let exp = NOW + 100;
        let tok = hs(&with(claims(), "exp", json!(exp)));
        assert!(verify(&tok, &hs_keys(), &s(), exp - 1).is_ok());
        assert_eq!(verify(&tok, &hs_keys(), &s(), exp), Err(JwtError::Expired));
        assert_eq!(verify(&tok, &hs_keys(), &s(), exp + 1000), Err(JwtError::Expired));
        let lenient = JwtSettings { leeway_secs: 30, ..s() };
        assert!(verify(&tok, &hs_keys(), &lenient, exp).is_ok());
        assert!(verify(&tok, &hs_keys(), &lenient, exp + 29).is_ok());
        assert_eq!(verify(&tok, &hs_keys(), &lenient, exp + 30), Err(JwtError::Expired));
        // A fractional exp is rounded down.
        let tok = hs(&with(claims(), "exp", json!(exp as f64 + 0.9)));
        assert_eq!(verify(&tok, &hs_keys(), &s(), exp), Err(JwtError::Expired));
        // Huge values and leeway do not overflow.
        let tok = hs(&with(claims(), "exp", json!(u64::MAX)));
        let max = JwtSettings { leeway_secs: u64::MAX, ..s() };
        assert!(verify(&tok, &hs_keys(), &max, NOW).is_ok());
    }

    #[test]
    fn not_before_boundaries_and_leeway() {
        let nbf = NOW + 100;
        let tok = hs(&with(claims(), "nbf", json!(nbf)));
        assert_eq!(verify(&tok, &hs_keys(), &s(), nbf - 1), Err(JwtError::NotYetValid));
        assert!(verify(&tok, &hs_keys(), &s(), nbf).is_ok());
        let lenient = JwtSettings { leeway_secs: 10, ..s() };
        assert!(verify(&tok, &hs_keys(), &lenient, nbf - 10).is_ok());
        assert_eq!(verify(&tok, &hs_keys(), &lenient, nbf - 11), Err(JwtError::NotYetValid));
        let tok = hs(&with(claims(), "nbf", json!("soon")));
        assert_eq!(verify(&tok, &hs_keys(), &s(), NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn issuer_checked_only_when_configured() {
        let want = JwtSettings { issuer: Some("https://issuer.example".into()), ..s() };
        assert!(verify(&hs(&claims()), &hs_keys(), &want, NOW).is_ok());
        for c in [
            with(claims(), "iss", json!("https://evil.example")),
            with(claims(), "iss", json!("https://issuer.example/")),
            with(claims(), "iss", json!(["https://issuer.example"])),
            without(claims(), "iss"),
        ] {
            assert_eq!(verify(&hs(&c), &hs_keys(), &want, NOW), Err(JwtError::WrongIssuer), "{c}");
        }
        // Not configured: any issuer, or none.
        let c = with(claims(), "iss", json!("https://evil.example"));
        assert!(verify(&hs(&c), &hs_keys(), &s(), NOW).is_ok());
        assert!(verify(&hs(&without(claims(), "iss")), &hs_keys(), &s(), NOW).is_ok());
    }

    #[test]
    fn audience_string_or_array() {
        let want = JwtSettings { audience: Some("warden".into()), ..s() };
        for aud in [json!("warden"), json!(["other", "warden"]), json!(["warden"])] {
            let c = with(claims(), "aud", aud);
            assert!(verify(&hs(&c), &hs_keys(), &want, NOW).is_ok(), "{c}");
        }
        for c in [
            with(claims(), "aud", json!("other")),
            with(claims(), "aud", json!(["other", "Warden"])),
            with(claims(), "aud", json!([])),
            with(claims(), "aud", json!(7)),
            without(claims(), "aud"),
        ] {
            assert_eq!(verify(&hs(&c), &hs_keys(), &want, NOW), Err(JwtError::WrongAudience), "{c}");
        }
        // Not configured: aud is not checked.
        let c = with(claims(), "aud", json!(["other"]));
        assert!(verify(&hs(&c), &hs_keys(), &s(), NOW).is_ok());
    }

    #[test]
    fn scopes_roles_and_client_id_variants() {
        let c = with(without(without(claims(), "scope"), "client_id"), "scp", json!(["a", "b"]));
        let c = with(c, "azp", json!("azp-client"));
        let c = with(c, "roles", json!(["admin", "ops"]));
        let t = verify(&hs(&c), &hs_keys(), &s(), NOW).unwrap();
        assert_eq!(t.scopes, vec!["a", "b"]);
        assert_eq!(t.roles, vec!["admin", "ops"]);
        assert_eq!(t.client_id.as_deref(), Some("azp-client"));
        // scp as a space-separated string (as some issuers send it); extra spaces ignored.
        let c = with(without(claims(), "scope"), "scp", json!(" x  y "));
        assert_eq!(verify(&hs(&c), &hs_keys(), &s(), NOW).unwrap().scopes, vec!["x", "y"]);
        // No scope, no roles, no optional claims at all.
        let c = json!({"sub": "u", "exp": NOW + 1});
        let t = verify(&hs(&c), &hs_keys(), &s(), NOW).unwrap();
        assert_eq!(
            t,
            VerifiedToken {
                subject: "u".into(),
                client_id: None,
                scopes: vec![],
                roles: vec![],
                expires_at: NOW + 1,
                issued_at: None,
                jti: None,
                issuer: None,
            }
        );
        // Ill-typed optional claims are refused, not silently dropped.
        for c in [
            with(claims(), "scope", json!(5)),
            with(claims(), "roles", json!(["ok", 1])),
            with(claims(), "jti", json!(1)),
            with(claims(), "iat", json!("yesterday")),
        ] {
            assert_eq!(verify(&hs(&c), &hs_keys(), &s(), NOW), Err(JwtError::Malformed), "{c}");
        }
    }

    // ---- JWKS ---------------------------------------------------------------------------

    #[test]
    fn jwks_parsing_rules() {
        let (_, ed_x) = ed_key();
        let (_, ec_x, ec_y) = ec_key(false);
        let jwks = json!({"keys": [
            {"kty": "RSA", "use": "enc", "kid": "enc-key", "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "use": "sig", "kid": "rsa-ps", "alg": "PS256", "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "kid": "rsa-ops", "key_ops": ["encrypt"], "n": RSA_N, "e": RSA_E},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "kid": "ec-bad-alg", "alg": "ES384", "x": ec_x, "y": ec_y},
            {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": ed_x},
            {"kty": "OKP", "crv": "Ed448", "kid": "ed448", "x": "AA"},
            {"kty": "RSA", "kid": "rsa-ok", "n": RSA_N, "e": RSA_E},
            {"kty": "EC", "crv": "P-256", "kid": "ec-ok", "x": ec_x, "y": ec_y},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed-ok", "x": ed_x, "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": ed_x, "alg": "EdDSA"},
        ]});
        let keys = KeySet::from_jwks_json(&jwks.to_string()).unwrap();
        assert_eq!(keys.kids(), vec!["rsa-ok", "ec-ok", "ed-ok"]);
        assert_eq!(keys.len(), 4);
        assert_eq!(format!("{keys:?}"), "[RS256:rsa-ok, ES256:ec-ok, EdDSA:ed-ok, EdDSA:-]");

        assert_eq!(KeySet::from_jwks_json(r#"{"keys":[]}"#).unwrap().len(), 0);
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"keys":{}}"#,
            r#"{"keys":[1]}"#,
            r#"{"keys":[{"n":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"RSA","n":"***","e":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":5,"x":"AQAB"}]}"#,
        ] {
            assert!(matches!(KeySet::from_jwks_json(bad), Err(JwtError::BadJwks(_))), "{bad}");
        }
    }

    #[test]
    fn jwks_rsa_modulus_with_leading_zero_is_accepted() {
        let mut n = vec![0u8];
        n.extend(URL_SAFE_NO_PAD.decode(RSA_N).unwrap());
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "z", "n": URL_SAFE_NO_PAD.encode(n), "e": RSA_E}]});
        let keys = KeySet::from_jwks_json(&jwks.to_string()).unwrap();
        let tok = rsa_sign(json!({"alg": "RS256", "kid": "z"}), &claims(), Algorithm::RS256);
        assert!(verify(&tok, &keys, &s(), NOW).is_ok());
    }

    #[test]
    fn key_set_debug_hides_secrets() {
        let mut k = KeySet::empty();
        k.add_hs256_secret(b"super-secret-value-0123456789abcdef");
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "[HS256:-]");
    }

    // ---- peek_kid / looks_like_jwt -------------------------------------------------------

    #[test]
    fn peek_kid_reads_header_only() {
        let tok = rsa_sign(json!({"alg": "RS256", "kid": "k-7"}), &claims(), Algorithm::RS256);
        assert_eq!(peek_kid(&tok).as_deref(), Some("k-7"));
        assert_eq!(peek_kid(&hs(&claims())), None);
        assert_eq!(peek_kid("a.b"), None);
        assert_eq!(peek_kid("garbage"), None);
    }

    #[test]
    fn looks_like_jwt_recognises_tokens_only() {
        let minted = mint(&access_claims(), &SigningKey::generate());
        assert!(looks_like_jwt(minted.as_bytes()));
        assert!(looks_like_jwt(hs(&claims()).as_bytes()));
        let none = format!("{}.{}.", b64json(&json!({"alg": "none"})), b64json(&claims()));
        assert!(looks_like_jwt(none.as_bytes()));
        for s in [
            &b"annpw"[..],
            b"a.b",
            b"a.b.c",
            b"",
            b"..",
            b"correct horse battery staple",
            b"p@ss.w0rd.123",
            b"\xff\xfe.\x00.x",
        ] {
            assert!(!looks_like_jwt(s), "{s:?}");
        }
        // Header without "alg", or with extra characters, is not a JWT.
        let no_alg = format!("{}.{}.x", b64json(&json!({"typ": "JWT"})), b64json(&claims()));
        assert!(!looks_like_jwt(no_alg.as_bytes()));
        let spaced = format!("{minted} ");
        assert!(!looks_like_jwt(spaced.as_bytes()));
    }

    // ---- never panics ----------------------------------------------------------------------

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
            ".{0,12}".prop_map(Value::from),
            prop_oneof![Just("sub"), Just("exp"), Just("none"), Just("HS256"), Just("warden")].prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("sub".to_string()),
                            Just("exp".to_string()),
                            Just("nbf".to_string()),
                            Just("iat".to_string()),
                            Just("iss".to_string()),
                            Just("aud".to_string()),
                            Just("scope".to_string()),
                            Just("scp".to_string()),
                            Just("roles".to_string()),
                            Just("jti".to_string()),
                            Just("client_id".to_string()),
                            ".{0,6}",
                        ],
                        inner
                    ),
                    0..8
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn verify_never_panics_on_arbitrary_strings(s in ".{0,300}") {
            let _ = verify(&s, &hs_keys(), &s_all(), NOW);
            let _ = peek_kid(&s);
            let _ = looks_like_jwt(s.as_bytes());
        }

        #[test]
        fn verify_never_panics_on_arbitrary_segments(
            h in prop::collection::vec(any::<u8>(), 0..64),
            p in prop::collection::vec(any::<u8>(), 0..64),
            sig in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let t = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(h),
                URL_SAFE_NO_PAD.encode(p),
                URL_SAFE_NO_PAD.encode(sig)
            );
            let _ = verify(&t, &hs_keys(), &s_all(), NOW);
        }

        #[test]
        fn verify_never_panics_on_signed_arbitrary_json(
            header in arb_json(),
            claims in arb_json(),
            now in any::<u64>(),
            leeway in any::<u64>(),
        ) {
            let settings = JwtSettings { leeway_secs: leeway, ..s_all() };
            let tok = hs_with_header(header, &claims);
            let _ = verify(&tok, &hs_keys(), &settings, now);
            let tok = hs_with_header(json!({"alg": "HS256"}), &claims);
            let _ = verify(&tok, &hs_keys(), &settings, now);
        }
    }

    fn s_all() -> JwtSettings {
        JwtSettings {
            issuer: Some("https://issuer.example".into()),
            audience: Some("warden".into()),
            leeway_secs: 5,
            typ: Some(vec![TYP_ACCESS_TOKEN.into(), TYP_JWT.into()]),
            max_lifetime_secs: Some(3600),
        }
    }
}
