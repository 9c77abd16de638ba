//! The device registry (fleet identity, part of the policy store): a device is a principal
//! name — the certificate identity, user name or token subject it connects with — with
//! attributes and the certificates registered to it.
//!
//! - **Attributes**: `type`, `owner` and free key/values. Rules use them as policy variables,
//!   `%{attr:NAME}` (ACL-file `pattern` lines and policy-store rule topics), substituted
//!   literally like `%u` / `%c`: a value containing `/`, `+`, `#` or U+0000, or an empty one,
//!   never satisfies an allow rule and makes a deny rule using it deny that client everything
//!   (fail closed); a missing attribute (or a principal that is no device) makes a rule using
//!   it match nothing. `%{attr:id}` is the device id itself.
//! - **Certificates**: by SHA-256 fingerprint (of the DER leaf, lowercase hex), each with a
//!   status: `active`, `inactive` or `revoked`. A certificate registered to a device stands
//!   only while `active` and only for that device's name; making it inactive or revoked ends
//!   its live connections (a [`crate::trust::TrustEvent::DeviceCertificates`]) and refuses its
//!   next CONNECT. With `registered_certificates_only` (the shell's `[auth]` setting), a
//!   certificate the registry does not hold is refused too, however valid its chain is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::{valid_name, StoreError};
use crate::{Principal, PrincipalKind};

/// Attribute names the registry fills in itself (free attributes may not use them).
pub const RESERVED_ATTRIBUTES: [&str; 3] = ["id", "type", "owner"];

/// Most free attributes per device.
pub const MAX_ATTRIBUTES: usize = 64;

/// Most certificates per device.
pub const MAX_CERTIFICATES: usize = 16;

/// The standing of a registered certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// Accepted.
    #[default]
    Active,
    /// Refused for now (may be made active again).
    Inactive,
    /// Refused for good (the registry refuses to make it active again).
    Revoked,
}

impl CertStatus {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Active => "active",
            CertStatus::Inactive => "inactive",
            CertStatus::Revoked => "revoked",
        }
    }

    /// Parse the lower-case name.
    pub fn parse(s: &str) -> Option<CertStatus> {
        match s {
            "active" => Some(CertStatus::Active),
            "inactive" => Some(CertStatus::Inactive),
            "revoked" => Some(CertStatus::Revoked),
            _ => None,
        }
    }
}

/// A certificate registered to a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCert {
    /// Its standing.
    #[serde(default)]
    pub status: CertStatus,
    /// Subject DN, when it was registered from its PEM (shown to operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// End of validity, unix seconds, when registered from its PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
}

/// A device of the registry (its id is its key in [`crate::store::PolicyStore::devices`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Its type (`%{attr:type}`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its owner (`%{attr:owner}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free attributes (`%{attr:NAME}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Certificates by SHA-256 fingerprint (lowercase hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<String, DeviceCert>,
    /// Disabled: its name is refused whatever proves it — certificate, password (a store user
    /// of that name), access token (an OAuth client of that id, whose tokens' subject it is) —
    /// and its live connections end (0x87), as for a disabled user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

fn err<T>(s: impl Into<String>) -> Result<T, StoreError> {
    Err(StoreError(s.into()))
}

/// Attribute names: 1..=64 bytes of ASCII letters, digits, `_`, `-`, `.` (so that
/// `%{attr:NAME}` can be found in a topic filter unambiguously).
pub fn valid_attribute_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 64 {
        return err("attribute name must be 1 to 64 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return err(format!("attribute name '{name}' may only contain ASCII letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

/// Attribute values: at most 256 bytes, no control characters. (Any other text is stored; a
/// value a topic level cannot hold is refused at substitution, not here.)
pub fn valid_attribute_value(name: &str, value: &str) -> Result<(), StoreError> {
    if value.len() > 256 {
        return err(format!("attribute '{name}': value longer than 256 bytes"));
    }
    if value.chars().any(char::is_control) {
        return err(format!("attribute '{name}': value contains control characters"));
    }
    Ok(())
}

/// A SHA-256 fingerprint as written by people (hex, any case, with or without `:`), as the
/// registry keys it (64 lowercase hex digits); `None`: not one.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s.trim().chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// What a PEM certificate tells the registry: its fingerprint and a [`DeviceCert`] with its
/// subject and end of validity. Refused: not exactly one PEM `CERTIFICATE` that parses.
pub fn cert_from_pem(pem: &str) -> Result<(String, DeviceCert), StoreError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| StoreError("not a PEM certificate".into()))?;
    if pem.label != "CERTIFICATE" {
        return err(format!("PEM block is '{}', not 'CERTIFICATE'", pem.label));
    }
    if x509_parser::pem::parse_x509_pem(rest).is_ok() {
        return err("more than one PEM certificate: give the device's own certificate only");
    }
    let (_, cert) = X509Certificate::from_der(&pem.contents)
        .map_err(|_| StoreError("the PEM block is not an X.509 certificate".into()))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok();
    let fp = crate::cert::sha256_fingerprint(&pem.contents);
    Ok((fp, DeviceCert { status: CertStatus::Active, subject: Some(cert.subject().to_string()), not_after }))
}

impl Device {
    /// Check the device on its own (`id` is its key).
    pub fn validate(&self, id: &str) -> Result<(), StoreError> {
        valid_name("device", id)?;
        crate::cert::check_identity(id).map_err(|e| StoreError(format!("device '{id}': {e}")))?;
        let what = |e: StoreError| StoreError(format!("device '{id}': {e}"));
        for (n, v) in [("type", &self.kind), ("owner", &self.owner)] {
            if let Some(v) = v {
                valid_attribute_value(n, v).map_err(what)?;
            }
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return err(format!("device '{id}': more than {MAX_ATTRIBUTES} attributes"));
        }
        for (k, v) in &self.attributes {
            valid_attribute_name(k).map_err(what)?;
            if RESERVED_ATTRIBUTES.contains(&k.as_str()) {
                return err(format!("device '{id}': attribute '{k}' is reserved (use the device's own field)"));
            }
            valid_attribute_value(k, v).map_err(what)?;
        }
        if self.certificates.len() > MAX_CERTIFICATES {
            return err(format!("device '{id}': more than {MAX_CERTIFICATES} certificates"));
        }
        for fp in self.certificates.keys() {
            if normalize_fingerprint(fp).as_deref() != Some(fp.as_str()) {
                return err(format!("device '{id}': certificate '{fp}' is not a lowercase hex SHA-256 fingerprint"));
            }
        }
        Ok(())
    }

    /// The value of attribute `name` (`id`, `type`, `owner` or a free one).
    pub fn attribute<'a>(&'a self, id: &'a str, name: &str) -> Option<&'a str> {
        match name {
            "id" => Some(id),
            "type" => self.kind.as_deref(),
            "owner" => self.owner.as_deref(),
            other => self.attributes.get(other).map(String::as_str),
        }
    }
}

/// The attributes of one device, compiled for substitution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceAttrs {
    map: HashMap<Box<str>, Box<str>>,
}

impl DeviceAttrs {
    /// From a device with id `id`.
    pub fn of(id: &str, d: &Device) -> DeviceAttrs {
        let mut map: HashMap<Box<str>, Box<str>> = HashMap::new();
        map.insert("id".into(), id.into());
        for (k, v) in [("type", &d.kind), ("owner", &d.owner)] {
            if let Some(v) = v {
                map.insert(k.into(), v.as_str().into());
            }
        }
        for (k, v) in &d.attributes {
            map.insert(k.as_str().into(), v.as_str().into());
        }
        DeviceAttrs { map }
    }

    /// The raw value of `name` (`None`: missing).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(|v| &**v)
    }

    /// The value of `name` as a substitution may use it: present, non-empty and safe
    /// ([`crate::acl`]'s rule: no `/`, `+`, `#`, U+0000).
    pub fn safe(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty() && crate::acl::safe_value(v))
    }

    /// True when `name` is present but cannot be substituted safely (empty or unsafe): a deny
    /// rule using it denies everything.
    pub fn is_unsafe(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.is_empty() || !crate::acl::safe_value(v))
    }
}

/// Why the registry refuses a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRefusal {
    /// Registered with status `inactive` or `revoked`.
    NotActive(CertStatus),
    /// Registered to another device than the name the client proved.
    OtherDevice,
    /// Not registered, and only registered certificates are accepted.
    Unregistered,
}

impl CertRefusal {
    /// A short reason for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CertRefusal::NotActive(CertStatus::Revoked) => "certificate revoked in the device registry",
            CertRefusal::NotActive(_) => "certificate inactive in the device registry",
            CertRefusal::OtherDevice => "certificate registered to another device",
            CertRefusal::Unregistered => "certificate not registered (registered_certificates_only)",
        }
    }
}

/// The registry's certificates, compiled for authentication and trust events: fingerprint →
/// (device, status), and whether only registered certificates are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceCerts {
    by_fingerprint: HashMap<Box<str>, (Arc<str>, CertStatus)>,
    /// Claim certificates ([`crate::enroll`]): fingerprint → (claim, status).
    claims: HashMap<Box<str>, (Arc<str>, CertStatus)>,
    /// `registered_certificates_only`.
    pub strict: bool,
}

impl DeviceCerts {
    /// From the registry's devices.
    pub fn new(devices: &BTreeMap<String, Device>, strict: bool) -> DeviceCerts {
        let mut by_fingerprint = HashMap::new();
        for (id, d) in devices {
            let id: Arc<str> = id.as_str().into();
            for (fp, c) in &d.certificates {
                by_fingerprint.insert(fp.as_str().into(), (id.clone(), c.status));
            }
        }
        DeviceCerts { by_fingerprint, claims: HashMap::new(), strict }
    }

    /// With the claim certificates of `claims`.
    pub fn with_claims(mut self, claims: &BTreeMap<String, crate::enroll::Claim>) -> DeviceCerts {
        for (name, c) in claims {
            let name: Arc<str> = name.as_str().into();
            for (fp, cert) in &c.certificates {
                self.claims.insert(fp.as_str().into(), (name.clone(), cert.status));
            }
        }
        self
    }

    /// The claim a client certificate with fingerprint `fp` is a claim certificate of, with
    /// its status.
    pub fn claim(&self, fp: &str) -> Option<(&str, CertStatus)> {
        self.claims.get(fp).map(|(c, s)| (&**c, *s))
    }

    /// The active claim `p`'s client certificate is a claim certificate of, if it is one.
    pub fn claim_of(&self, p: &Principal) -> Option<&str> {
        match p.credential() {
            Some(crate::trust::Credential::Certificate(chain)) if p.kind != PrincipalKind::Anonymous => chain
                .fingerprint
                .as_deref()
                .and_then(|fp| self.claim(fp))
                .filter(|(_, s)| *s == CertStatus::Active)
                .map(|(c, _)| c),
            _ => None,
        }
    }

    /// The device and status of the certificate with fingerprint `fp`.
    pub fn get(&self, fp: &str) -> Option<(&str, CertStatus)> {
        self.by_fingerprint.get(fp).map(|(d, s)| (&**d, *s))
    }

    /// Whether a client certificate with fingerprint `fp` (`None`: not known) may prove
    /// principal name `name`.
    pub fn check(&self, fp: Option<&str>, name: &str) -> Result<(), CertRefusal> {
        // A claim certificate proves its holder may enroll, whatever its name (and is
        // registered, for `registered_certificates_only`).
        match fp.and_then(|f| self.claim(f)) {
            Some((_, CertStatus::Active)) => return Ok(()),
            Some((_, s)) => return Err(CertRefusal::NotActive(s)),
            None => {}
        }
        match fp.and_then(|f| self.get(f)) {
            Some((_, s)) if s != CertStatus::Active => Err(CertRefusal::NotActive(s)),
            Some((device, _)) if device != name => Err(CertRefusal::OtherDevice),
            Some(_) => Ok(()),
            None if self.strict => Err(CertRefusal::Unregistered),
            None => Ok(()),
        }
    }

    /// Whether `p` still stands on its client certificate, if it holds one (principals
    /// proved otherwise always do here).
    pub fn admits(&self, p: &Principal) -> Result<(), CertRefusal> {
        match p.credential() {
            Some(crate::trust::Credential::Certificate(chain)) if p.kind != PrincipalKind::Anonymous => {
                self.check(chain.fingerprint.as_deref(), &p.name)
            }
            _ => Ok(()),
        }
    }

    /// True when nothing is registered and registration is not required.
    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty() && self.claims.is_empty() && !self.strict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP1: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const FP2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn registry() -> BTreeMap<String, Device> {
        let mut d = Device { kind: Some("sensor".into()), owner: Some("acme".into()), ..Default::default() };
        d.attributes.insert("site".into(), "berlin".into());
        d.certificates.insert(FP1.into(), DeviceCert::default());
        d.certificates.insert(FP2.into(), DeviceCert { status: CertStatus::Revoked, ..Default::default() });
        BTreeMap::from([("dev-1".to_string(), d)])
    }

    #[test]
    fn fingerprints_are_normalized() {
        let upper_colons: String = FP1
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(normalize_fingerprint(&upper_colons).as_deref(), Some(FP1));
        assert_eq!(normalize_fingerprint(FP1).as_deref(), Some(FP1));
        for bad in ["", "00", &FP1[1..], &format!("{FP1}0"), &FP1.replace('0', "g")] {
            assert_eq!(normalize_fingerprint(bad), None, "{bad}");
        }
    }

    #[test]
    fn certificate_lookups() {
        let lax = DeviceCerts::new(&registry(), false);
        assert_eq!(lax.check(Some(FP1), "dev-1"), Ok(()));
        assert_eq!(lax.check(Some(FP1), "dev-2"), Err(CertRefusal::OtherDevice));
        assert_eq!(lax.check(Some(FP2), "dev-1"), Err(CertRefusal::NotActive(CertStatus::Revoked)));
        assert_eq!(lax.check(Some(&FP1.replace('0', "1")), "dev-1"), Ok(()), "unregistered: accepted");
        assert_eq!(lax.check(None, "dev-1"), Ok(()));
        let strict = DeviceCerts::new(&registry(), true);
        assert_eq!(strict.check(Some(FP1), "dev-1"), Ok(()));
        assert_eq!(strict.check(Some(&FP1.replace('0', "1")), "dev-1"), Err(CertRefusal::Unregistered));
        assert_eq!(strict.check(None, "dev-1"), Err(CertRefusal::Unregistered));
        let mut reg = registry();
        reg.get_mut("dev-1").unwrap().certificates.get_mut(FP1).unwrap().status = CertStatus::Inactive;
        assert_eq!(
            DeviceCerts::new(&reg, false).check(Some(FP1), "dev-1"),
            Err(CertRefusal::NotActive(CertStatus::Inactive))
        );
    }

    #[test]
    fn devices_are_validated() {
        let reg = registry();
        reg["dev-1"].validate("dev-1").unwrap();
        assert!(reg["dev-1"].validate("dev/1").is_err(), "an id that cannot be a topic level");
        assert!(reg["dev-1"].validate("").is_err());
        let mut d = reg["dev-1"].clone();
        d.attributes.insert("owner".into(), "x".into());
        assert!(d.validate("dev-1").unwrap_err().0.contains("reserved"));
        let mut d = reg["dev-1"].clone();
        d.attributes.insert("bad name".into(), "x".into());
        assert!(d.validate("dev-1").is_err());
        let mut d = reg["dev-1"].clone();
        d.attributes.insert("site".into(), "a\nb".into());
        assert!(d.validate("dev-1").is_err());
        let mut d = reg["dev-1"].clone();
        d.certificates.insert(FP1.to_ascii_uppercase(), DeviceCert::default());
        assert!(d.validate("dev-1").is_err(), "keys are normalized fingerprints");
        // A value that cannot be a topic level is stored (it may serve other purposes)...
        let mut d = reg["dev-1"].clone();
        d.attributes.insert("path".into(), "a/b".into());
        d.validate("dev-1").unwrap();
        // ...but never substituted.
        let a = DeviceAttrs::of("dev-1", &d);
        assert_eq!(a.safe("site"), Some("berlin"));
        assert_eq!(a.safe("id"), Some("dev-1"));
        assert_eq!(a.safe("type"), Some("sensor"));
        assert_eq!(a.safe("path"), None);
        assert!(a.is_unsafe("path"));
        assert!(!a.is_unsafe("missing"));
        assert_eq!(a.safe("missing"), None);
    }

    #[test]
    fn pem_certificates_give_their_fingerprint() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["dev-1".into()]).unwrap().self_signed(&key).unwrap();
        let (fp, c) = cert_from_pem(&cert.pem()).unwrap();
        assert_eq!(fp, crate::cert::sha256_fingerprint(cert.der()));
        assert!(c.subject.is_some() && c.not_after.is_some());
        assert!(cert_from_pem("garbage").is_err());
        assert!(cert_from_pem(&format!("{}{}", cert.pem(), cert.pem())).is_err());
        assert!(cert_from_pem(&key.serialize_pem()).is_err());
    }
}
