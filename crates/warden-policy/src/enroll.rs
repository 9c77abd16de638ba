//! Enrollment by claim (fleet provisioning, self-hosted): the pure part.
//!
//! A device that holds a **claim certificate** — one certificate shared by a batch of devices,
//! registered in the policy store's `claims` — connects with it and may do one thing: ask the
//! broker for a certificate of its own. It publishes a PKCS#10 certificate signing request to
//! `$warden/enroll/<client id>/request` and gets the answer on
//! `$warden/enroll/<client id>/accepted` (the signed certificate) or `.../rejected` (why not),
//! which it subscribes to first. The device id is its client id; the certificate the broker
//! signs has that id as its CN, and the device is registered with the claim's template. A
//! registered device asks the same way with its current certificate to get a new one before it
//! expires (rotation).
//!
//! What this module decides:
//! - [`confine`]: the `$warden/enroll/` topics a client may use (only its own), and that a
//!   claim principal ([`crate::trust::CredentialSource::Claim`]) may use nothing else. Every
//!   authorizer asks it first, so that neither an ACL file nor a policy-store rule nor "no
//!   authorization configured" can widen a claim certificate's reach.
//! - [`Claim`]: a claim of the policy store (its certificates, the template of the devices it
//!   enrolls, a limit on how many).
//! - [`Request`] / [`Answer`]: the JSON bodies exchanged (also over HTTP).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::authz::Action;
use crate::devices::{valid_attribute_name, valid_attribute_value, DeviceCert, RESERVED_ATTRIBUTES};
use crate::store::{valid_name, StoreError};
use crate::Principal;

/// Every enrollment topic starts with this.
pub const PREFIX: &str = "$warden/enroll/";

/// The last level of the request topic.
pub const REQUEST: &str = "request";
/// The last level of the topic a signed certificate is sent on.
pub const ACCEPTED: &str = "accepted";
/// The last level of the topic a refusal is sent on.
pub const REJECTED: &str = "rejected";

/// Largest request body accepted (a CSR of an RSA-4096 key is under 2 KiB in PEM).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// The topic `client_id`'s answers of kind `last` (`accepted` / `rejected`) are sent on.
pub fn answer_topic(client_id: &str, last: &str) -> String {
    format!("{PREFIX}{client_id}/{last}")
}

/// The client id a request topic `$warden/enroll/<client id>/request` names, if it is one.
pub fn request_client_id(topic: &str) -> Option<&str> {
    let id = topic.strip_prefix(PREFIX)?.strip_suffix(REQUEST)?.strip_suffix('/')?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Whether `principal` connected with a claim certificate.
#[inline]
pub fn is_claim(principal: &Principal) -> bool {
    principal.is_claim()
}

/// The decision on `action` that enrollment imposes, before any rule is read: `Some(allowed)`
/// decides, `None` leaves it to the configured sources.
///
/// - On `$warden/enroll/...` topics, a client may publish its own request topic, and subscribe
///   to and receive its own answer topics (`accepted`, `rejected`, or `+` / `#` under its own
///   level); anything else there is denied, whatever rules say. Client ids that cannot be a
///   topic level (with `/`, `+`, `#`) have no enrollment topics.
/// - A claim principal may do nothing else.
#[inline]
pub fn confine(principal: &Principal, client_id: &str, action: Action<'_>) -> Option<bool> {
    let topic = action.topic();
    if let Some(rest) = topic.strip_prefix(PREFIX) {
        let own = rest
            .strip_prefix(client_id)
            .and_then(|r| r.strip_prefix('/'))
            .filter(|_| !client_id.is_empty() && !client_id.contains(['/', '+', '#']));
        let allowed = matches!(
            (action, own),
            (Action::Publish { .. }, Some(REQUEST))
                | (Action::Subscribe { .. }, Some(ACCEPTED | REJECTED | "+" | "#"))
                | (Action::Receive { .. }, Some(ACCEPTED | REJECTED))
        );
        return Some(allowed);
    }
    is_claim(principal).then_some(false)
}

/// A claim of the policy store (its name is its key in
/// [`crate::store::PolicyStore::claims`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Claim certificates by SHA-256 fingerprint, each with a status (an inactive or revoked
    /// one is refused at CONNECT and its live connections end).
    #[serde(default)]
    pub certificates: BTreeMap<String, DeviceCert>,
    /// The type given to the devices it enrolls.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The owner given to the devices it enrolls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Attributes given to the devices it enrolls (the pre-provisioning hook may add some).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Device ids it may enroll must start with this (e.g. `sensor-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_prefix: Option<String>,
    /// The most devices it may enroll (`None`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_devices: Option<u64>,
    /// Devices it has enrolled so far.
    #[serde(default)]
    pub enrolled: u64,
    /// One-time enrollment tokens (HTTP `POST /enroll`) by id, each good for one device.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens: BTreeMap<String, EnrollToken>,
}

/// A one-time enrollment token of a claim: the token itself is `<id>.<secret>`, shown once
/// when it is made; the store keeps the SHA-256 of the secret (256 random bits: a slow hash
/// would add nothing against guessing, and the id finds it without a scan).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollToken {
    /// SHA-256 of the secret part, lowercase hex.
    pub secret_sha256: String,
    /// The only device id it may enroll (`None`: any the claim may).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
}

/// Longest lifetime of an enrollment token.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// Most unused tokens a claim holds.
pub const MAX_TOKENS: usize = 10_000;

/// A new token: `(id, secret, the token as given to the device, what the store keeps)`.
pub fn new_token(device_id: Option<String>, expires_at: u64) -> (String, String, EnrollToken) {
    use base64::Engine as _;
    let id: [u8; 8] = rand::random();
    let secret: [u8; 32] = rand::random();
    let id = id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let token = format!("{id}.{secret}");
    let stored =
        EnrollToken { secret_sha256: crate::cert::sha256_fingerprint(secret.as_bytes()), device_id, expires_at };
    (id, token, stored)
}

/// Split a token as given (`<id>.<secret>`): `None` when it has not that shape.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.trim().split_once('.')?;
    let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && (20..=64).contains(&secret.len())).then_some((id, secret))
}

impl EnrollToken {
    /// Whether `secret` is this token's (constant time).
    pub fn matches(&self, secret: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        let digest = crate::cert::sha256_fingerprint(secret.as_bytes());
        bool::from(digest.as_bytes().ct_eq(self.secret_sha256.as_bytes()))
    }
}

fn err<T>(s: impl Into<String>) -> Result<T, StoreError> {
    Err(StoreError(s.into()))
}

impl Claim {
    /// Refuse a claim the store must not hold.
    pub fn validate(&self, name: &str) -> Result<(), StoreError> {
        valid_name("claim", name)?;
        if self.tokens.len() > MAX_TOKENS {
            return err(format!("claim '{name}': more than {MAX_TOKENS} unused tokens"));
        }
        for (id, t) in &self.tokens {
            if split_token(&format!("{id}.{}", "x".repeat(43))).is_none() || t.secret_sha256.len() != 64 {
                return err(format!("claim '{name}': token '{id}' is malformed"));
            }
            if let Some(d) = &t.device_id {
                valid_device_id(d).map_err(|why| StoreError(format!("claim '{name}': token '{id}': {why}")))?;
            }
        }
        for fp in self.certificates.keys() {
            if crate::devices::normalize_fingerprint(fp).as_deref() != Some(fp.as_str()) {
                return err(format!("claim '{name}': '{fp}' is not a SHA-256 fingerprint (64 lowercase hex digits)"));
            }
        }
        for (k, v) in &self.attributes {
            valid_attribute_name(k)?;
            if RESERVED_ATTRIBUTES.contains(&k.as_str()) {
                return err(format!("claim '{name}': attribute '{k}' is reserved (use type/owner)"));
            }
            valid_attribute_value(k, v)?;
        }
        for (what, v) in [("type", &self.kind), ("owner", &self.owner)] {
            if let Some(v) = v {
                valid_attribute_value(what, v)?;
            }
        }
        if let Some(p) = &self.id_prefix {
            if let Err(why) = valid_device_id(p) {
                return err(format!("claim '{name}': id_prefix: {why}"));
            }
        }
        Ok(())
    }

    /// Whether it may enroll `device_id` now (its prefix, its limit).
    pub fn may_enroll(&self, device_id: &str) -> Result<(), Refusal> {
        if let Some(p) = &self.id_prefix {
            if !device_id.starts_with(p.as_str()) {
                return Err(Refusal::new(
                    Reason::IdNotAllowed,
                    format!("this claim enrolls only ids starting with '{p}'"),
                ));
            }
        }
        if self.max_devices.is_some_and(|m| self.enrolled >= m) {
            return Err(Refusal::new(Reason::ClaimExhausted, "this claim has enrolled as many devices as it may"));
        }
        Ok(())
    }
}

/// A device id an enrolled certificate can carry as its CN and a client can use as a topic
/// level: 1..=128 bytes of ASCII letters, digits, `_`, `-`, `.`, `:` and `@`.
pub fn valid_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("a device id is 1 to 128 bytes".into());
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')) {
        return Err(format!("device id '{id}' may only contain ASCII letters, digits, '_', '-', '.', ':' and '@'"));
    }
    Ok(())
}

/// An enrollment request (MQTT payload or HTTP body): a JSON object, or the PEM CSR alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// PKCS#10 certificate signing request, PEM.
    pub csr: String,
    /// The device id (HTTP; over MQTT it is the client id and, if given, must equal it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Whatever the device wants the pre-provisioning hook to see (serial number, model...):
    /// passed on as is, never stored unless the hook returns it as attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<serde_json::Value>,
}

impl Request {
    /// Parse a request body: JSON, or a bare PEM CSR.
    pub fn parse(body: &[u8]) -> Result<Request, Refusal> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(Refusal::new(Reason::Malformed, format!("request larger than {MAX_REQUEST_BYTES} bytes")));
        }
        let text = std::str::from_utf8(body).map_err(|_| Refusal::new(Reason::Malformed, "request is not UTF-8"))?;
        let trimmed = text.trim_start();
        if trimmed.starts_with("-----BEGIN") {
            return Ok(Request { csr: text.to_owned(), ..Default::default() });
        }
        serde_json::from_str(text).map_err(|e| {
            Refusal::new(
                Reason::Malformed,
                format!("request is neither a PEM CSR nor a JSON object {{\"csr\": ...}}: {e}"),
            )
        })
    }
}

/// Why an enrollment is refused (the `reason` of a rejected answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The request could not be read (not JSON, no CSR, CSR malformed or its signature wrong).
    Malformed,
    /// The device id is not valid, or not one this credential may enroll.
    IdNotAllowed,
    /// The device is already registered with certificates (a claim enrolls new devices only).
    AlreadyRegistered,
    /// The claim has enrolled its maximum number of devices.
    ClaimExhausted,
    /// The key is too weak or of an unsupported type.
    WeakKey,
    /// The pre-provisioning hook refused it.
    Refused,
    /// The pre-provisioning hook could not be asked (fail closed).
    HookUnavailable,
    /// Too many requests from this client or credential.
    RateLimited,
    /// The enrollment token is unknown, used, expired or wrong (HTTP).
    Unauthorized,
    /// The broker could not sign or register it (see its log).
    Internal,
}

impl Reason {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::IdNotAllowed => "id_not_allowed",
            Reason::AlreadyRegistered => "already_registered",
            Reason::ClaimExhausted => "claim_exhausted",
            Reason::WeakKey => "weak_key",
            Reason::Refused => "refused",
            Reason::HookUnavailable => "hook_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::Unauthorized => "unauthorized",
            Reason::Internal => "internal",
        }
    }
}

/// A refusal: a reason and a message for the device's operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// In words.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal { reason, message: message.into() }
    }
}

/// A signed certificate (the `accepted` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The device id (the certificate's CN).
    pub device_id: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// The CA certificate(s) that signed it, PEM (to complete the chain).
    pub ca: String,
    /// Its SHA-256 fingerprint (how the registry knows it).
    pub fingerprint: String,
    /// End of validity, unix seconds.
    pub not_after: u64,
    /// Its serial number, hex.
    pub serial: String,
}

/// Either answer, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    /// Signed.
    Accepted(Issued),
    /// Refused.
    Rejected(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::CredentialSource;
    use mqtt_codec::{QoS, TopicFilter, TopicName};

    fn claim_principal() -> Principal {
        Principal::certificate("factory").with_credential(CredentialSource::Claim, None)
    }

    #[test]
    fn request_topics_name_one_client_id() {
        assert_eq!(request_client_id("$warden/enroll/dev-1/request"), Some("dev-1"));
        assert_eq!(request_client_id("$warden/enroll//request"), None);
        assert_eq!(request_client_id("$warden/enroll/a/b/request"), None);
        assert_eq!(request_client_id("$warden/enroll/dev-1/accepted"), None);
        assert_eq!(answer_topic("dev-1", ACCEPTED), "$warden/enroll/dev-1/accepted");
    }

    #[test]
    fn a_client_uses_only_its_own_enrollment_topics() {
        let p = Principal::certificate("dev-1");
        let t = |s: &str| TopicName::new(s).unwrap();
        let f = |s: &str| TopicFilter::new(s).unwrap();
        let publish = |s: &str| confine(&p, "dev-1", Action::publish(&t(s), QoS::AtLeastOnce, false));
        assert_eq!(publish("$warden/enroll/dev-1/request"), Some(true));
        assert_eq!(publish("$warden/enroll/dev-2/request"), Some(false));
        // Answers are the broker's to publish.
        assert_eq!(publish("$warden/enroll/dev-1/accepted"), Some(false));
        let sub = |s: &str| confine(&p, "dev-1", Action::subscribe(&f(s), QoS::AtLeastOnce));
        assert_eq!(sub("$warden/enroll/dev-1/+"), Some(true));
        assert_eq!(sub("$warden/enroll/dev-1/accepted"), Some(true));
        assert_eq!(sub("$warden/enroll/+/accepted"), Some(false));
        assert_eq!(sub("$warden/enroll/#"), Some(false));
        assert_eq!(sub("$warden/enroll/dev-10/+"), Some(false));
        let recv = |s: &str| confine(&p, "dev-1", Action::receive(&t(s)));
        assert_eq!(recv("$warden/enroll/dev-1/rejected"), Some(true));
        assert_eq!(recv("$warden/enroll/dev-2/rejected"), Some(false));
        // Other topics: the rules decide.
        assert_eq!(publish("devices/dev-1/telemetry"), None);
        // A client id that cannot be a topic level has no enrollment topics.
        // (A client id "a/b" would otherwise own "$warden/enroll/a/b/request".)
        let odd = confine(&p, "a/b", Action::publish(&t("$warden/enroll/a/b/request"), QoS::AtMostOnce, false));
        assert_eq!(odd, Some(false));
        let odd = confine(&p, "a/b", Action::subscribe(&f("$warden/enroll/a/b/#"), QoS::AtMostOnce));
        assert_eq!(odd, Some(false));
    }

    #[test]
    fn a_claim_principal_may_do_nothing_else() {
        let p = claim_principal();
        let t = |s: &str| TopicName::new(s).unwrap();
        let f = |s: &str| TopicFilter::new(s).unwrap();
        assert_eq!(
            confine(&p, "dev-1", Action::publish(&t("$warden/enroll/dev-1/request"), QoS::AtMostOnce, false)),
            Some(true)
        );
        assert_eq!(confine(&p, "dev-1", Action::publish(&t("devices/dev-1/x"), QoS::AtMostOnce, false)), Some(false));
        assert_eq!(confine(&p, "dev-1", Action::subscribe(&f("#"), QoS::AtMostOnce)), Some(false));
        assert_eq!(confine(&p, "dev-1", Action::receive(&t("a"))), Some(false));
        assert_eq!(confine(&p, "dev-1", Action::publish(&t("$SYS/x"), QoS::AtMostOnce, false)), Some(false));
    }

    #[test]
    fn claims_are_validated() {
        let fp = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let mut c = Claim::default();
        c.validate("tokens-only").unwrap();
        c.certificates.insert(fp.to_uppercase(), DeviceCert::default());
        assert!(c.validate("batch-1").unwrap_err().0.contains("not a SHA-256"));
        c.certificates = BTreeMap::from([(fp.to_owned(), DeviceCert::default())]);
        c.validate("batch-1").unwrap();
        c.attributes.insert("id".into(), "x".into());
        assert!(c.validate("batch-1").unwrap_err().0.contains("reserved"));
        c.attributes.clear();
        c.id_prefix = Some("a/b".into());
        assert!(c.validate("batch-1").is_err());
        c.id_prefix = Some("sensor-".into());
        c.validate("batch-1").unwrap();
        assert_eq!(c.may_enroll("cam-1").unwrap_err().reason, Reason::IdNotAllowed);
        c.may_enroll("sensor-1").unwrap();
        c.max_devices = Some(1);
        c.enrolled = 1;
        assert_eq!(c.may_enroll("sensor-2").unwrap_err().reason, Reason::ClaimExhausted);
    }

    #[test]
    fn tokens_are_one_id_and_a_secret_checked_by_its_hash() {
        let (id, token, stored) = new_token(Some("dev-1".into()), 10);
        let (i, secret) = split_token(&token).unwrap();
        assert_eq!(i, id);
        assert!(stored.matches(secret));
        assert!(!stored.matches(&secret.replace(&secret[..1], if &secret[..1] == "A" { "B" } else { "A" })));
        assert!(!token.contains(&stored.secret_sha256), "the store keeps no secret");
        for bad in ["", "nodot", "zz.abc", &format!("{id}.short"), &format!("{id}x.{secret}")] {
            assert!(split_token(bad).is_none(), "{bad:?}");
        }
        let mut c = Claim::default();
        c.tokens.insert(id.clone(), stored.clone());
        c.validate("b").unwrap();
        c.tokens.insert("nothex".into(), stored);
        assert!(c.validate("b").unwrap_err().0.contains("malformed"));
    }

    #[test]
    fn a_certificate_is_a_claims_or_a_devices_never_both() {
        let fp = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let mut store = crate::store::PolicyStore::default();
        let mut claim = Claim::default();
        claim.certificates.insert(fp.into(), DeviceCert::default());
        store.claims.insert("c".into(), claim.clone());
        store.validate().unwrap();
        // A claim certificate is good to enroll, whatever its name, and only while active.
        let certs = store.device_certs(true);
        assert_eq!(certs.claim(fp), Some(("c", crate::devices::CertStatus::Active)));
        assert_eq!(certs.check(Some(fp), "anything"), Ok(()));
        let mut d = crate::devices::Device::default();
        d.certificates.insert(fp.into(), DeviceCert::default());
        store.devices.insert("dev-1".into(), d);
        assert!(store.validate().unwrap_err().0.contains("both device"));
        store.devices.clear();
        store.claims.insert("c2".into(), claim);
        assert!(store.validate().unwrap_err().0.contains("both claim"));
        store.claims.remove("c2");
        store.claims.get_mut("c").unwrap().certificates.get_mut(fp).unwrap().status =
            crate::devices::CertStatus::Inactive;
        let certs = store.device_certs(false);
        assert!(certs.check(Some(fp), "anything").is_err());
    }

    #[test]
    fn device_ids_are_topic_levels_and_common_names() {
        valid_device_id("sensor-0001").unwrap();
        valid_device_id("a.b_c:d@e").unwrap();
        for bad in ["", "a/b", "a+b", "a#", "a b", "é", &"x".repeat(129)] {
            assert!(valid_device_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_json_or_a_bare_csr() {
        let r =
            Request::parse(b"-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n").unwrap();
        assert!(r.csr.starts_with("-----BEGIN"));
        let r = Request::parse(br#"{"csr": "x", "device_id": "d", "context": {"serial": 7}}"#).unwrap();
        assert_eq!(r.device_id.as_deref(), Some("d"));
        assert_eq!(Request::parse(b"{\"nope\": 1}").unwrap_err().reason, Reason::Malformed);
        assert_eq!(Request::parse(&[0xff, 0xfe]).unwrap_err().reason, Reason::Malformed);
        assert_eq!(Request::parse(&vec![b' '; MAX_REQUEST_BYTES + 1]).unwrap_err().reason, Reason::Malformed);
        let a = serde_json::to_value(Answer::Rejected(Refusal::new(Reason::Refused, "no"))).unwrap();
        assert_eq!(a, serde_json::json!({"reason": "refused", "message": "no"}));
    }
}
