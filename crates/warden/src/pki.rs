//! Signing with a CA held on this host: the development PKI of `warden cert` and the
//! certificates that enrollment by claim issues ([`crate::enroll`]).
//!
//! A CA is `DIR/ca.pem` + `DIR/ca.key` (an unencrypted PKCS#8 key). [`LoadedCa::sign`] makes a
//! leaf for a fresh key (the CLI), [`LoadedCa::sign_csr`] one for the key of a PKCS#10 request
//! whose signature it checked (enrollment): either way the subject is exactly one CN that the
//! broker chose, never what the request asked for.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::fsutil::write_atomically_with_mode;

use anyhow::{bail, Context};
use rcgen::{Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber};

/// Certificates start this much before "now", to tolerate clock skew between hosts.
pub(crate) const BACKDATE: Duration = Duration::from_secs(5 * 60);

pub(crate) const DAY: u64 = 24 * 60 * 60;

/// Lower-case hex of a DER INTEGER's content bytes, without leading zero bytes.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A signed leaf: its certificate (and chain) PEM, its key PEM, and a note for the user.
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
    pub(crate) note: Option<String>,
}

/// Parameters shared by every leaf: one CN, CA:FALSE (+ subject key id), authority key id,
/// keyUsage digitalSignature (rcgen always marks keyUsage critical), a random serial.
pub(crate) fn leaf_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params
}

/// A DN with exactly one attribute, the CN. (rcgen's `DistinguishedName` keeps one value per
/// attribute type, so a second CN could not sneak in anyway.)
pub(crate) fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

pub(crate) fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating an ECDSA P-256 key")
}

/// 128 random bits, positive, always 16 bytes long in DER.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from(bytes.to_vec())
}

/// (not before, not after) for a certificate valid `days` days from now.
pub(crate) fn validity(days: u32) -> anyhow::Result<(SystemTime, SystemTime)> {
    let now = SystemTime::now();
    let not_after = now.checked_add(Duration::from_secs(u64::from(days) * DAY)).context("--days is out of range")?;
    Ok((now - BACKDATE, not_after))
}

/// A CA loaded from DIR/ca.pem + DIR/ca.key, ready to sign.
pub(crate) struct LoadedCa {
    /// ca.pem as read (possibly several certificates: the first is the CA itself).
    pub(crate) pem: String,
    /// The CA's own certificate (DER).
    pub(crate) der: Vec<u8>,
    /// Re-signed copy of the CA: same DN, same key, same subject key id; only used as the
    /// `issuer` argument of `signed_by`.
    pub(crate) issuer: Certificate,
    pub(crate) key: KeyPair,
    pub(crate) not_after: SystemTime,
    pub(crate) cert_path: PathBuf,
    /// The CA certificate's serial (hex), tying issued.json / revoked.json records to it.
    pub(crate) serial: String,
}

impl LoadedCa {
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Self> {
        let (cert_path, key_path) = ca_paths(dir);
        let pem = match fs::read_to_string(&cert_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("no CA at {} (make one with `warden cert ca --dir {}`)", cert_path.display(), shell_word(dir))
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", cert_path.display())),
        };
        let key_pem = fs::read_to_string(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let der = pem_first_cert(&pem).with_context(|| format!("{}: no PEM certificate", cert_path.display()))?;
        let params = CertificateParams::from_ca_cert_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot use this certificate as a CA ({e}; multi-valued RDNs are not supported)",
                cert_path.display()
            )
        })?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            bail!("{}: not a CA certificate (basicConstraints CA:TRUE is missing)", cert_path.display());
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot load the CA private key ({e}); an unencrypted PKCS#8 PEM key is expected \
                 (convert with `openssl pkcs8 -topk8 -nocrypt`)",
                key_path.display()
            )
        })?;
        let parts = der_parts(&der).with_context(|| format!("{}: malformed certificate", cert_path.display()))?;
        if bit_string_of_spki(parts.spki) != bit_string_of_spki(&key.public_key_der()) {
            bail!("{} does not belong to the CA certificate {}", key_path.display(), cert_path.display());
        }
        let not_after = SystemTime::from(params.not_after);
        if not_after <= SystemTime::now() {
            bail!("the CA {} expired on {}", cert_path.display(), params.not_after.date());
        }
        let issuer = params.self_signed(&key).context("preparing the CA for signing")?;
        let serial = x509_parser::parse_x509_certificate(&der)
            .map(|(_, c)| serial_hex(c.tbs_certificate.raw_serial()))
            .map_err(|e| anyhow::anyhow!("{}: malformed certificate: {e}", cert_path.display()))?;
        Ok(LoadedCa { pem, der, issuer, key, not_after, cert_path, serial })
    }

    /// Sign `params` (for a fresh P-256 key) for `days`, clamped to the CA's own expiry.
    pub(crate) fn sign(&self, params: CertificateParams, days: u32) -> anyhow::Result<Issued> {
        let key = new_key()?;
        let (cert, note) = self.sign_key(params, days, &key)?;
        Ok(Issued { chain_pem: cert.pem(), key_pem: key.serialize_pem(), note })
    }

    /// Sign `params` for `public_key`, for `days` clamped to the CA's own expiry (the note
    /// says so when it was).
    fn sign_key(
        &self,
        mut params: CertificateParams,
        days: u32,
        public_key: &impl rcgen::PublicKeyData,
    ) -> anyhow::Result<(Certificate, Option<String>)> {
        let (not_before, mut not_after) = validity(days)?;
        let mut note = None;
        if not_after > self.not_after {
            not_after = self.not_after;
            note = Some(format!("validity shortened to the CA's expiry ({})", self.issuer.params().not_after.date()));
        }
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(public_key, &self.issuer, &self.key).context("signing the certificate")?;
        // rcgen re-encodes the CA's name from its parsed form; make sure it came out byte for byte,
        // or chain building (issuer == subject) would fail later in a confusing way.
        let ca = der_parts(&self.der).context("malformed CA certificate")?;
        let leaf = der_parts(cert.der()).context("malformed new certificate")?;
        if leaf.issuer != ca.subject {
            bail!(
                "cannot sign with {}: its subject name cannot be reproduced exactly (rcgen supports one value \
                 per attribute type and single-valued RDNs only)",
                self.cert_path.display()
            );
        }
        Ok((cert, note))
    }

    /// A client certificate (EKU clientAuth, subject exactly `CN=<cn>`, no SAN) for the key of
    /// a verified request ([`CsrKey::from_request`]), valid `days` (clamped to the CA's
    /// expiry). What the request asks for besides its key — subject, extensions — is ignored.
    pub(crate) fn sign_csr(&self, key: &CsrKey, cn: &str, days: u32) -> Result<SignedCsr, CsrError> {
        let mut params = leaf_params(cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, _) = self.sign_key(params, days, key).map_err(|e| CsrError::Internal(format!("{e:#}")))?;
        let der = cert.der().to_vec();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CsrError::Internal(format!("the new certificate does not parse: {e}")))?;
        Ok(SignedCsr {
            pem: cert.pem(),
            fingerprint: warden_policy::cert::sha256_fingerprint(&der),
            serial: serial_hex(parsed.tbs_certificate.raw_serial()),
            not_after: u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0),
        })
    }

    /// The CA's certificate(s), PEM, as read.
    pub(crate) fn pem(&self) -> &str {
        &self.pem
    }
}

/// A certificate [`LoadedCa::sign_csr`] made.
#[derive(Debug, Clone)]
pub(crate) struct SignedCsr {
    /// PEM of the certificate alone.
    pub(crate) pem: String,
    /// SHA-256 of the DER, lowercase hex.
    pub(crate) fingerprint: String,
    /// Serial, hex.
    pub(crate) serial: String,
    /// End of validity, unix seconds.
    pub(crate) not_after: u64,
}

/// Why a request is not signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CsrError {
    /// Not a PKCS#10 request (PEM or DER), or its signature does not verify.
    Malformed(String),
    /// A key type or size that is not accepted.
    WeakKey(String),
    /// The CA could not sign (see the message).
    Internal(String),
}

impl std::fmt::Display for CsrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CsrError::Malformed(m) | CsrError::WeakKey(m) | CsrError::Internal(m) => f.write_str(m),
        }
    }
}

/// The public key of a verified request, as rcgen signs for it.
pub(crate) struct CsrKey {
    /// The subjectPublicKey bits.
    raw: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
    /// SHA-256 of the SubjectPublicKeyInfo DER, hex.
    spki_sha256: String,
}

impl CsrKey {
    /// SHA-256 (hex) of its SubjectPublicKeyInfo, to name the key to others (the hook).
    pub(crate) fn spki_sha256(&self) -> &str {
        &self.spki_sha256
    }
}

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        self.alg
    }
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";
/// Smallest RSA modulus accepted (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

impl CsrKey {
    /// The key of a PKCS#10 request (PEM `CERTIFICATE REQUEST` or DER) whose self-signature
    /// verifies: ECDSA P-256 / P-384, Ed25519, or RSA of at least 2048 bits. Refused: a request
    /// that does not parse, whose signature does not verify (the requester must hold the
    /// private key), or whose key is weak or of a type this CA does not sign for.
    pub(crate) fn from_request(input: &[u8]) -> Result<CsrKey, CsrError> {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::prelude::FromDer;
        let der = if input.trim_ascii_start().starts_with(b"-----BEGIN") {
            let (_, pem) = x509_parser::pem::parse_x509_pem(input)
                .map_err(|e| CsrError::Malformed(format!("not a PEM block: {e}")))?;
            if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
                return Err(CsrError::Malformed(format!("a PEM CERTIFICATE REQUEST is expected, not {}", pem.label)));
            }
            pem.contents
        } else {
            input.to_vec()
        };
        let (rest, req) = X509CertificationRequest::from_der(&der)
            .map_err(|e| CsrError::Malformed(format!("not a PKCS#10 certificate request: {e}")))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed("bytes after the certificate request".into()));
        }
        req.verify_signature().map_err(|_| {
            CsrError::Malformed("the request's signature does not verify (it must be signed with its own key)".into())
        })?;
        let spki = &req.certification_request_info.subject_pki;
        let alg_oid = spki.algorithm.algorithm.to_id_string();
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
        let alg = match (alg_oid.as_str(), curve.as_deref()) {
            (OID_EC_PUBLIC_KEY, Some(OID_P256)) => &rcgen::PKCS_ECDSA_P256_SHA256,
            (OID_EC_PUBLIC_KEY, Some(OID_P384)) => &rcgen::PKCS_ECDSA_P384_SHA384,
            (OID_EC_PUBLIC_KEY, c) => {
                return Err(CsrError::WeakKey(format!(
                    "elliptic curve {} is not accepted (P-256 or P-384)",
                    c.unwrap_or("unnamed")
                )))
            }
            (OID_ED25519, _) => &rcgen::PKCS_ED25519,
            (OID_RSA, _) => {
                let bits = match spki.parsed() {
                    Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
                    _ => return Err(CsrError::Malformed("malformed RSA public key".into())),
                };
                if bits < MIN_RSA_BITS {
                    return Err(CsrError::WeakKey(format!(
                        "an RSA key of {bits} bits is too weak (at least {MIN_RSA_BITS})"
                    )));
                }
                &rcgen::PKCS_RSA_SHA256
            }
            (other, _) => return Err(CsrError::WeakKey(format!("key algorithm {other} is not accepted"))),
        };
        let spki_sha256 = warden_policy::cert::sha256_fingerprint(spki.raw);
        Ok(CsrKey { raw: spki.subject_public_key.data.to_vec(), alg, spki_sha256 })
    }
}

/// DER of the first CERTIFICATE block of a PEM text.
pub(crate) fn pem_first_cert(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(|der| der.to_vec())
}

/// Raw TLVs of the fields of a certificate that matter here.
pub(crate) struct DerParts<'a> {
    pub(crate) issuer: &'a [u8],
    pub(crate) subject: &'a [u8],
    pub(crate) spki: &'a [u8],
}

/// Certificate ::= SEQUENCE { tbs SEQUENCE { [0] version?, serial, sigAlg, issuer, validity, subject, spki, … } … }
pub(crate) fn der_parts(der: &[u8]) -> Option<DerParts<'_>> {
    let cert = Tlv::parse(der)?.content;
    let mut tbs = Tlv::parse(cert)?.content;
    let mut next = || {
        let tlv = Tlv::parse(tbs)?;
        tbs = tlv.rest;
        Some(tlv)
    };
    let mut serial = next()?;
    if serial.tag == 0xa0 {
        serial = next()?; // after the version
    }
    if serial.tag != 0x02 {
        return None;
    }
    next()?; // signature algorithm
    let issuer = next()?.whole;
    next()?; // validity
    let subject = next()?.whole;
    let spki = next()?.whole;
    Some(DerParts { issuer, subject, spki })
}

/// The subjectPublicKey BIT STRING of a SubjectPublicKeyInfo (ignores how the algorithm
/// identifier is spelled).
pub(crate) fn bit_string_of_spki(spki: &[u8]) -> Option<&[u8]> {
    let algorithm = Tlv::parse(Tlv::parse(spki)?.content)?;
    Some(Tlv::parse(algorithm.rest)?.whole)
}

/// One DER TLV. Low tag numbers only, definite lengths.
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    /// Tag, length and content.
    pub(crate) whole: &'a [u8],
    pub(crate) content: &'a [u8],
    /// What follows the TLV.
    pub(crate) rest: &'a [u8],
}

impl<'a> Tlv<'a> {
    pub(crate) fn parse(input: &'a [u8]) -> Option<Self> {
        let tag = *input.first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let first = *input.get(1)?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for b in input.get(2..2 + n)? {
                len = (len << 8) | usize::from(*b);
            }
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        let whole = input.get(..end)?;
        Some(Tlv { tag, whole, content: &whole[header..], rest: &input[end..] })
    }
}

pub(crate) fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// A path as one shell word, for the hints printed to the user.
pub(crate) fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// What a CA issued and revoked (DIR/issued.json, DIR/revoked.json, DIR/ca.crl)

/// What `warden cert client` issued, in DIR.
pub(crate) const ISSUED_FILE: &str = "issued.json";

/// What `warden cert revoke` revoked, and the last CRL number, in DIR.
pub(crate) const REVOKED_FILE: &str = "revoked.json";

/// The CRL, in DIR.
pub(crate) const CRL_FILE: &str = "ca.crl";

/// One certificate `warden cert client` or enrollment issued (DIR/issued.json).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct IssuedRecord {
    /// Serial number, lower-case hex without leading zero bytes.
    pub(crate) serial: String,
    /// Subject CN (the device id).
    pub(crate) cn: String,
    /// notAfter, seconds since the Unix epoch.
    pub(crate) not_after: i64,
    /// Serial of the CA that signed it (a CA made again with --force does not inherit records).
    pub(crate) ca_serial: String,
    /// The certificate file written (empty for an enrolled device's: it went to the device).
    #[serde(default)]
    pub(crate) file: PathBuf,
    /// SHA-256 of the DER certificate, hex (how the device registry knows it); absent in
    /// records written before enrollment existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fingerprint: Option<String>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct IssuedLog {
    #[serde(default)]
    pub(crate) certificates: Vec<IssuedRecord>,
}

/// One revoked certificate (DIR/revoked.json).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RevokedRecord {
    pub(crate) serial: String,
    pub(crate) cn: String,
    /// Revocation time, seconds since the Unix epoch.
    pub(crate) revoked_at: i64,
    pub(crate) ca_serial: String,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct RevokedLog {
    /// The CRL number of the last CRL written (each new CRL gets the next one).
    #[serde(default)]
    pub(crate) crl_number: u64,
    #[serde(default)]
    pub(crate) revoked: Vec<RevokedRecord>,
}

/// The JSON record at `path`, or an empty one when the file does not exist.
pub(crate) fn read_json<T: Default + serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    write_atomically_with_mode(path, text.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

pub(crate) fn unix_now() -> i64 {
    i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX)
}

/// Sign a CRL of every certificate of `log` revoked under this CA with the next CRL number,
/// save `log` (DIR/revoked.json) then the CRL (DIR/ca.crl, PEM). Returns the CRL path and how
/// many certificates it lists.
pub(crate) fn write_crl(
    dir: &Path,
    ca: &LoadedCa,
    log: &mut RevokedLog,
    days: u32,
) -> anyhow::Result<(PathBuf, usize)> {
    let mut revoked_certs = Vec::new();
    for r in log.revoked.iter().filter(|r| r.ca_serial == ca.serial) {
        let serial = hex_bytes(&r.serial)
            .with_context(|| format!("{}: serial {:?} is not hex", dir.join(REVOKED_FILE).display(), r.serial))?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(r.revoked_at).unwrap_or(0));
        let revocation_time = at.into();
        revoked_certs.push(rcgen::RevokedCertParams {
            serial_number: SerialNumber::from(serial),
            revocation_time,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let count = revoked_certs.len();
    log.crl_number = log.crl_number.checked_add(1).context("CRL number overflow")?;
    let now = SystemTime::now();
    let next = now.checked_add(Duration::from_secs(u64::from(days) * DAY)).context("--crl-days is out of range")?;
    let params = rcgen::CertificateRevocationListParams {
        this_update: (now - BACKDATE).into(),
        next_update: next.into(),
        crl_number: SerialNumber::from(log.crl_number.to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.issuer, &ca.key).context("signing the CRL")?;
    let pem = crl.pem().context("encoding the CRL")?;
    write_json(&dir.join(REVOKED_FILE), log)?;
    let path = dir.join(CRL_FILE);
    write_atomically_with_mode(&path, pem.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))?;
    Ok((path, count))
}

/// Record a certificate enrollment issued in DIR/issued.json (so that revoking it in the
/// device registry, or `warden cert revoke --cn`, can put it in the CRL).
pub(crate) fn record_enrolled(dir: &Path, ca: &LoadedCa, signed: &SignedCsr, cn: &str) -> anyhow::Result<()> {
    let path = dir.join(ISSUED_FILE);
    let mut log: IssuedLog = read_json(&path)?;
    log.certificates.push(IssuedRecord {
        serial: signed.serial.clone(),
        cn: cn.to_owned(),
        not_after: i64::try_from(signed.not_after).unwrap_or(i64::MAX),
        ca_serial: ca.serial.clone(),
        file: PathBuf::new(),
        fingerprint: Some(signed.fingerprint.clone()),
    });
    write_json(&path, &log)
}

/// Revoke, in DIR/revoked.json and a new DIR/ca.crl, the certificates of DIR/issued.json this
/// CA issued whose fingerprint is in `fingerprints`. Returns the serials newly revoked (none:
/// nothing is written).
pub(crate) fn revoke_fingerprints(
    dir: &Path,
    ca: &LoadedCa,
    fingerprints: &[String],
    crl_days: u32,
) -> anyhow::Result<Vec<String>> {
    let issued: IssuedLog = read_json(&dir.join(ISSUED_FILE))?;
    let path = dir.join(REVOKED_FILE);
    let mut log: RevokedLog = read_json(&path)?;
    let now = unix_now();
    let mut newly = Vec::new();
    for r in issued.certificates.iter().filter(|r| r.ca_serial == ca.serial) {
        let Some(fp) = &r.fingerprint else { continue };
        if !fingerprints.contains(fp) || log.revoked.iter().any(|x| x.serial == r.serial && x.ca_serial == ca.serial) {
            continue;
        }
        log.revoked.push(RevokedRecord {
            serial: r.serial.clone(),
            cn: r.cn.clone(),
            revoked_at: now,
            ca_serial: ca.serial.clone(),
        });
        newly.push(r.serial.clone());
    }
    if !newly.is_empty() {
        write_crl(dir, ca, &mut log, crl_days)?;
    }
    Ok(newly)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (tempfile::TempDir, LoadedCa) {
        let dir = tempfile::tempdir().unwrap();
        crate::cli::cert::ensure_dev_pki(dir.path()).unwrap();
        let ca = LoadedCa::load(dir.path()).unwrap();
        (dir, ca)
    }

    /// Verify `csr` and sign its key, as enrollment does.
    fn sign(ca: &LoadedCa, csr: &[u8], cn: &str, days: u32) -> Result<SignedCsr, CsrError> {
        ca.sign_csr(&CsrKey::from_request(csr)?, cn, days)
    }

    fn csr(alg: &'static rcgen::SignatureAlgorithm, cn: &str, sans: Vec<String>) -> (KeyPair, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = dn(cn);
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    }

    #[test]
    fn a_request_gets_a_client_certificate_for_the_chosen_name_only() {
        let (_dir, ca) = ca();
        // It asks to be "admin" with a SAN: it gets CN=dev-1 and nothing else.
        let (key, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256, "admin", vec!["evil.example".into()]);
        let signed = sign(&ca, pem.as_bytes(), "dev-1", 30).unwrap();
        let signed_der = x509_parser::pem::parse_x509_pem(signed.pem.as_bytes()).unwrap().1.contents;
        let (_, cert) = x509_parser::parse_x509_certificate(&signed_der).unwrap();
        let cns: Vec<_> = cert.subject().iter_common_name().map(|a| a.as_str().unwrap().to_owned()).collect();
        assert_eq!(cns, ["dev-1"]);
        assert!(cert.subject_alternative_name().unwrap().is_none());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
        // Its key is the request's, and the CA signed it.
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        assert_eq!(signed.fingerprint, warden_policy::cert::sha256_fingerprint(&signed_der));
        assert!(signed.not_after > crate::clock::unix_now() + 29 * DAY);
        // DER is accepted too; so are Ed25519 and P-384 keys.
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        sign(&ca, &der, "dev-1", 1).unwrap();
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let (_, pem) = csr(alg, "x", vec![]);
            sign(&ca, pem.as_bytes(), "dev-2", 1).unwrap();
        }
    }

    #[test]
    fn forged_or_malformed_requests_are_refused() {
        let (_dir, ca) = ca();
        let (_, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256, "x", vec![]);
        let mut der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        // The last byte is in the signature: flipping it breaks proof of possession.
        *der.last_mut().unwrap() ^= 1;
        assert!(matches!(sign(&ca, &der, "dev-1", 1), Err(CsrError::Malformed(m)) if m.contains("signature")));
        for junk in [&b""[..], b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
            assert!(matches!(sign(&ca, junk, "dev-1", 1), Err(CsrError::Malformed(_))), "{junk:?}");
        }
        // A certificate is not a request.
        assert!(matches!(sign(&ca, ca.pem().as_bytes(), "dev-1", 1), Err(CsrError::Malformed(_))));
    }
}
