//! Certificate identities: the principal name a verified client certificate stands for.
//!
//! The TLS layer verifies the chain (to `client_ca`, CRLs); this module only answers "which
//! name does this leaf certificate carry?", per `identity_from_cert`:
//!
//! | source        | identity                                                            |
//! |---------------|---------------------------------------------------------------------|
//! | `cn`          | the subject's single commonName                                     |
//! | `san-dns`     | the single `dNSName` in subjectAltName                              |
//! | `san-uri`     | the single `uniformResourceIdentifier` in subjectAltName            |
//! | `fingerprint` | lowercase hex SHA-256 of the whole DER certificate (64 characters)  |
//!
//! Nothing is guessed at. A subject with several commonName attributes (in separate RDNs, as in
//! `CN=admin, CN=device-001`, or in one multi-valued RDN, `CN=admin+CN=device-001`), or a SAN
//! with several names of the requested kind, is [`CertIdentityError::Ambiguous`]: "the first"
//! and "the last" CN differ between TLS stacks and tools, so picking one would let a CA-signed
//! certificate be read as someone else. Identities that would be dangerous as principal names
//! (MQTT wildcards, topic separators, NUL, control characters, `*`) are
//! [`CertIdentityError::Forbidden`]; see [`check_identity`].
//!
//! Error messages never contain the certificate's values: reasons are static strings, so a
//! hostile certificate cannot inject text into logs.
//!
//! Pure: no I/O, no clock. Validity dates and signatures are the TLS layer's business.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use x509_parser::der_parser::asn1_rs::{Any, Class, Tag};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_X509_COMMON_NAME, OID_X509_EXT_SUBJECT_ALT_NAME};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longest identity accepted, in bytes (UTF-8).
pub const MAX_IDENTITY_LEN: usize = 256;

/// Which part of the client certificate names the principal (`identity_from_cert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    /// `cn`: the subject's commonName (exactly one).
    Cn,
    /// `san-dns`: the subjectAltName `dNSName` (exactly one).
    SanDns,
    /// `san-uri`: the subjectAltName `uniformResourceIdentifier` (exactly one), e.g. a SPIFFE ID.
    SanUri,
    /// `fingerprint`: lowercase hex SHA-256 of the DER certificate.
    Fingerprint,
}

impl IdentitySource {
    /// The configuration spelling: `cn`, `san-dns`, `san-uri` or `fingerprint`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Cn => "cn",
            IdentitySource::SanDns => "san-dns",
            IdentitySource::SanUri => "san-uri",
            IdentitySource::Fingerprint => "fingerprint",
        }
    }
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `identity_from_cert` value other than `cn`, `san-dns`, `san-uri`, `fingerprint`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown identity_from_cert value (expected \"cn\", \"san-dns\", \"san-uri\" or \"fingerprint\")")]
pub struct UnknownIdentitySource;

impl FromStr for IdentitySource {
    type Err = UnknownIdentitySource;

    /// Exact, lower-case spellings only.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cn" => Ok(IdentitySource::Cn),
            "san-dns" => Ok(IdentitySource::SanDns),
            "san-uri" => Ok(IdentitySource::SanUri),
            "fingerprint" => Ok(IdentitySource::Fingerprint),
            _ => Err(UnknownIdentitySource),
        }
    }
}

/// Why a (verified) client certificate yields no principal. Never carries certificate values.
///
/// (`Display`/`Error` are written by hand: thiserror would treat the `source` field of
/// [`CertIdentityError::Forbidden`] as the error's cause.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentityError {
    /// Not exactly one DER X.509 certificate (parse error or trailing bytes).
    Unparseable,
    /// The certificate has no identity of this kind (no CN; no SAN extension or no name of
    /// that type in it).
    NoIdentity(IdentitySource),
    /// Several values of this kind (several CNs, several SAN names of the type, or several
    /// subjectAltName extensions): refused rather than picking one.
    Ambiguous(IdentitySource),
    /// Exactly one value, but it is not acceptable as a principal name.
    Forbidden {
        /// Which identity was asked for.
        source: IdentitySource,
        /// Static explanation (the value itself is never echoed).
        reason: &'static str,
    },
}

impl fmt::Display for CertIdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertIdentityError::Unparseable => {
                f.write_str("client certificate is not a single parseable DER certificate")
            }
            CertIdentityError::NoIdentity(s) => write!(f, "client certificate has no {s} identity"),
            CertIdentityError::Ambiguous(s) => {
                write!(f, "client certificate has several {s} identities; refusing to pick one")
            }
            CertIdentityError::Forbidden { source, reason } => {
                write!(f, "client certificate {source} identity refused: {reason}")
            }
        }
    }
}

impl std::error::Error for CertIdentityError {}

/// Identity of the leaf certificate `der` (exactly one DER certificate, nothing after it) per
/// `source`. Does not verify signatures, validity or the chain: call it on a certificate the TLS
/// layer has already verified.
pub fn identity_from_der(der: &[u8], source: IdentitySource) -> Result<String, CertIdentityError> {
    let cert = match X509Certificate::from_der(der) {
        Ok(([], cert)) => cert,
        _ => return Err(CertIdentityError::Unparseable),
    };
    let forbidden = |reason| CertIdentityError::Forbidden { source, reason };
    match source {
        IdentitySource::Cn => {
            let mut cns = cert.subject().iter_by_oid(&OID_X509_COMMON_NAME);
            let cn = cns.next().ok_or(CertIdentityError::NoIdentity(source))?;
            if cns.next().is_some() {
                return Err(CertIdentityError::Ambiguous(source));
            }
            let value = decode_directory_string(cn.attr_value()).map_err(forbidden)?;
            check_identity(&value).map_err(forbidden)?;
            Ok(value)
        }
        IdentitySource::SanDns | IdentitySource::SanUri => {
            let value = single_san(&cert, source)?;
            if !value.is_ascii() {
                // IA5String; x509-parser only checks UTF-8.
                return Err(forbidden("subjectAltName value is not ASCII (IA5String)"));
            }
            if source == IdentitySource::SanUri {
                check_uri_identity(value).map_err(forbidden)?;
            } else {
                check_identity(value).map_err(forbidden)?;
            }
            Ok(value.to_owned())
        }
        IdentitySource::Fingerprint => Ok(sha256_fingerprint(der)),
    }
}

/// Lowercase hex SHA-256 of `der` (64 characters): the `fingerprint` identity, also handy for
/// naming a refused certificate in logs without echoing its contents.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// The rules every certificate identity (`cn`, `san-dns`) must pass, also usable for other
/// principal names: non-empty; at most [`MAX_IDENTITY_LEN`] bytes; no `+` or `#` (MQTT
/// wildcards, which would break `%u`/`%c` ACL patterns), no `/` (topic level separator), no `*`
/// (certificate / glob wildcard), no U+0000, no control characters; no leading or trailing
/// whitespace. Returns a static reason (never the value).
pub fn check_identity(s: &str) -> Result<(), &'static str> {
    check_common(s)?;
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err("identity has leading or trailing whitespace");
    }
    for c in s.chars() {
        match c {
            '+' | '#' => return Err("identity contains an MQTT wildcard ('+' or '#')"),
            '/' => return Err("identity contains '/' (topic level separator)"),
            _ => {}
        }
    }
    Ok(())
}

/// `san-uri` exception to [`check_identity`]: a URI needs `/` and `:` (`spiffe://fleet/dev-1`),
/// so only `+`, `#` (which also rules out fragments), `*`, U+0000, control characters and
/// whitespace anywhere are refused, plus the emptiness and length rules.
fn check_uri_identity(s: &str) -> Result<(), &'static str> {
    check_common(s)?;
    for c in s.chars() {
        match c {
            '+' | '#' => return Err("identity contains an MQTT wildcard ('+' or '#')"),
            c if c.is_whitespace() => return Err("URI identity contains whitespace"),
            _ => {}
        }
    }
    Ok(())
}

/// Rules shared by [`check_identity`] and [`check_uri_identity`].
fn check_common(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("identity is empty");
    }
    if s.len() > MAX_IDENTITY_LEN {
        return Err("identity is longer than 256 bytes");
    }
    for c in s.chars() {
        match c {
            '\0' => return Err("identity contains U+0000"),
            '*' => return Err("identity contains a wildcard ('*')"),
            c if c.is_control() => return Err("identity contains a control character"),
            _ => {}
        }
    }
    Ok(())
}

/// The single SAN name of the type `source` asks for.
fn single_san<'a>(cert: &'a X509Certificate<'_>, source: IdentitySource) -> Result<&'a str, CertIdentityError> {
    let mut san = None;
    for ext in cert.extensions().iter().filter(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME) {
        if san.is_some() {
            // RFC 5280 forbids repeating an extension; two SAN lists are two sets of names.
            return Err(CertIdentityError::Ambiguous(source));
        }
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(s) => san = Some(s),
            _ => return Err(CertIdentityError::Unparseable),
        }
    }
    let san = san.ok_or(CertIdentityError::NoIdentity(source))?;
    let mut names = san.general_names.iter().filter_map(|name| match (source, name) {
        (IdentitySource::SanDns, GeneralName::DNSName(s)) | (IdentitySource::SanUri, GeneralName::URI(s)) => Some(*s),
        _ => None,
    });
    let first = names.next().ok_or(CertIdentityError::NoIdentity(source))?;
    if names.next().is_some() {
        return Err(CertIdentityError::Ambiguous(source));
    }
    Ok(first)
}

/// Decodes a DirectoryString-like attribute value: UTF8String, PrintableString (charset
/// checked), IA5String (ASCII), BMPString (UCS-2 big-endian, no surrogates), TeletexString
/// (ASCII only: its real T.61 repertoire is interpreted inconsistently). Anything else,
/// including constructed or non-universal encodings, is refused.
fn decode_directory_string(value: &Any<'_>) -> Result<String, &'static str> {
    if value.class() != Class::Universal || value.header.is_constructed() {
        return Err("commonName is not a primitive universal string");
    }
    let data = value.data;
    match value.tag() {
        Tag::Utf8String => {
            std::str::from_utf8(data).map(str::to_owned).map_err(|_| "commonName UTF8String is not valid UTF-8")
        }
        Tag::PrintableString => {
            if data.iter().all(|&b| is_printable_string_char(b)) {
                Ok(ascii_to_string(data))
            } else {
                Err("commonName PrintableString has characters outside its charset")
            }
        }
        Tag::Ia5String => {
            if data.is_ascii() {
                Ok(ascii_to_string(data))
            } else {
                Err("commonName IA5String is not ASCII")
            }
        }
        Tag::T61String => {
            if data.is_ascii() {
                Ok(ascii_to_string(data))
            } else {
                Err("commonName TeletexString is not ASCII")
            }
        }
        Tag::BmpString => {
            let units = data.chunks_exact(2);
            if !units.remainder().is_empty() {
                return Err("commonName BMPString has an odd length");
            }
            units
                .map(|pair| char::from_u32(u32::from(u16::from_be_bytes([pair[0], pair[1]]))))
                .collect::<Option<String>>()
                .ok_or("commonName BMPString contains a surrogate code unit")
        }
        _ => Err("commonName is not a supported string type"),
    }
}

/// X.680 PrintableString: `A-Z a-z 0-9`, space and `' ( ) + , - . / : = ?`.
fn is_printable_string_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b)
}

fn ascii_to_string(data: &[u8]) -> String {
    data.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{
        BmpString, CertificateParams, DistinguishedName, DnType, DnValue, Ia5String, KeyPair, PrintableString, SanType,
        TeletexString, UniversalString,
    };

    use CertIdentityError::{Ambiguous, Forbidden, NoIdentity, Unparseable};
    use IdentitySource::{Cn, Fingerprint, SanDns, SanUri};

    /// `openssl req -subj "/CN=admin/CN=device-001"`, signed by a throwaway CA
    /// (`/CN=Warden Test CA`, key discarded) with `openssl x509 -req`: a *CA-signed* certificate
    /// whose subject is `CN=admin, CN=device-001` (two RDNs).
    const TWO_CN_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBJzCBzgIBAjAKBggqhkjOPQQDAjAZMRcwFQYDVQQDDA5XYXJkZW4gVGVzdCBD
QTAgFw0yNjExMjUwOTEzMzZaGA8yMTI2MTEwMTA5MTMzNlowJTEOMAwGA1UEAwwF
YWRtaW4xEzARBgNVBAMMCmRldmljZS0wMDEwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAARzpxPasxpjjLpWUkmC0kOzmDZ1Oy0B39a9Ex+pFimeJz4caJGy54jpUZWz
zgYxrUb88+R/DO8y+EpOF+83fMOSMAoGCCqGSM49BAMCA0gAMEUCIQDlrrn3lQHP
g5evhlXYnDlLQU4c18Jvp91plVB4EeVSQgIgSSDM+he8nGnSz2ID+AVBTasnG3xj
uzl5y1EBh+ey4Ts=
-----END CERTIFICATE-----
";

    /// Same CA, `openssl req -multivalue-rdn -subj "/O=Fleet/CN=admin+CN=device-001"`: one
    /// multi-valued RDN holding two commonNames.
    const MULTI_VALUED_RDN_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBNTCB3AIBAzAKBggqhkjOPQQDAjAZMRcwFQYDVQQDDA5XYXJkZW4gVGVzdCBD
QTAgFw0yNjExMjUwOTEzMzZaGA8yMTI2MTEwMTA5MTMzNlowMzEOMAwGA1UECgwF
RmxlZXQxITAMBgNVBAMMBWFkbWluMBEGA1UEAwwKZGV2aWNlLTAwMTBZMBMGByqG
SM49AgEGCCqGSM49AwEHA0IABHOnE9qzGmOMulZSSYLSQ7OYNnU7LQHf1r0TH6kW
KZ4nPhxokbLniOlRlbPOBjGtRvzz5H8M7zL4Sk4X7zd8w5IwCgYIKoZIzj0EAwID
SAAwRQIgB756xvirMfgiDc5qPapdu0NGT6uHzBKwcGWHVhpMH88CIQCjqyk3H34T
lLebXchHvCSzAKZm47BeftYgpNdyfn315A==
-----END CERTIFICATE-----
";

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let (rest, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("fixture PEM");
        assert!(rest.is_empty());
        pem.contents
    }

    /// Self-signed rcgen certificate with this subject and these SANs.
    fn rcgen_cert(subject: &[(DnType, DnValue)], sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (ty, value) in subject {
            dn.push(ty.clone(), value.clone());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("self-signed").der().to_vec()
    }

    fn with_cn(cn: impl Into<DnValue>) -> Vec<u8> {
        rcgen_cert(&[(DnType::OrganizationName, "Fleet".into()), (DnType::CommonName, cn.into())], Vec::new())
    }

    fn with_sans(sans: Vec<SanType>) -> Vec<u8> {
        rcgen_cert(&[(DnType::CommonName, "ignored".into())], sans)
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(Ia5String::try_from(s).expect("ia5"))
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(Ia5String::try_from(s).expect("ia5"))
    }

    fn is_forbidden(r: &Result<String, CertIdentityError>, want: IdentitySource) -> bool {
        matches!(r, Err(Forbidden { source, .. }) if *source == want)
    }

    // ---- a minimal DER writer, for certificates rcgen cannot express ----

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n <= 0xff {
            out.extend([0x81, n as u8]);
        } else {
            assert!(n <= 0xffff);
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

    /// AttributeTypeAndValue with an already-encoded value.
    fn atv(oid: &[u8], value: Vec<u8>) -> Vec<u8> {
        seq(&[tlv(0x06, oid), value])
    }

    /// A Name from RDNs, each a set of AttributeTypeAndValues.
    fn name(rdns: &[&[Vec<u8>]]) -> Vec<u8> {
        let rdns: Vec<Vec<u8>> = rdns.iter().map(|set| tlv(0x31, &set.concat())).collect();
        seq(&rdns)
    }

    fn utf8(s: &str) -> Vec<u8> {
        tlv(0x0c, s.as_bytes())
    }

    /// subjectAltName extension holding these (encoded) GeneralNames.
    fn san_ext(names: &[Vec<u8>]) -> Vec<u8> {
        seq(&[tlv(0x06, &[0x55, 0x1d, 0x11]), tlv(0x04, &seq(names))])
    }

    /// A v3 certificate with this subject and extensions; the signature is junk (nothing here
    /// verifies it).
    fn hand_cert(subject: Vec<u8>, extensions: &[Vec<u8>]) -> Vec<u8> {
        let ecdsa_sha256 = seq(&[tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02])]);
        let spki = KeyPair::generate().expect("key").public_key_der();
        let mut tbs = vec![
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            ecdsa_sha256.clone(),
            name(&[&[atv(OID_CN, utf8("Test CA"))]]),
            seq(&[tlv(0x17, b"250101000000Z"), tlv(0x17, b"350101000000Z")]),
            subject,
            spki,
        ];
        if !extensions.is_empty() {
            tbs.push(tlv(0xa3, &seq(extensions)));
        }
        seq(&[seq(&tbs), ecdsa_sha256, tlv(0x03, &[0x00, 0x30, 0x00])])
    }

    /// Hand-built certificate whose only subject attribute is a CN with this encoded value.
    fn hand_cn(value: Vec<u8>) -> Vec<u8> {
        hand_cert(name(&[&[atv(OID_CN, value)]]), &[])
    }

    // ---- cn ----

    #[test]
    fn single_cn_is_the_identity() {
        let der = with_cn("device-001");
        assert_eq!(identity_from_der(&der, Cn), Ok("device-001".to_owned()));
        // Non-ASCII UTF-8 is fine.
        assert_eq!(identity_from_der(&with_cn("Gerät-7"), Cn), Ok("Gerät-7".to_owned()));
        // The hand-built certificates parse too (so the refusals below are about the subject).
        assert_eq!(identity_from_der(&hand_cn(utf8("device-002")), Cn), Ok("device-002".to_owned()));
    }

    #[test]
    fn two_cns_admin_then_device_is_ambiguous_not_admin() {
        let der = pem_to_der(TWO_CN_PEM);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=admin, CN=device-001");
        assert_eq!(identity_from_der(&der, Cn), Err(Ambiguous(Cn)));
        // Fingerprint identity is still available for such a certificate.
        assert_eq!(identity_from_der(&der, Fingerprint).unwrap().len(), 64);
    }

    #[test]
    fn multi_valued_rdn_with_two_cns_is_ambiguous() {
        let der = pem_to_der(MULTI_VALUED_RDN_PEM);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().iter().count(), 2, "O and one multi-valued RDN");
        assert_eq!(identity_from_der(&der, Cn), Err(Ambiguous(Cn)));
        // Same thing, hand-built, in the other order.
        let subject = name(&[&[atv(OID_CN, utf8("device-001")), atv(OID_CN, utf8("admin"))]]);
        assert_eq!(identity_from_der(&hand_cert(subject, &[]), Cn), Err(Ambiguous(Cn)));
        // Even two identical CNs are refused.
        let subject = name(&[&[atv(OID_CN, utf8("admin"))], &[atv(OID_CN, utf8("admin"))]]);
        assert_eq!(identity_from_der(&hand_cert(subject, &[]), Cn), Err(Ambiguous(Cn)));
    }

    #[test]
    fn one_cn_inside_a_multi_valued_rdn_is_fine() {
        let subject = name(&[&[atv(OID_O, utf8("Fleet")), atv(OID_CN, utf8("device-001"))]]);
        assert_eq!(identity_from_der(&hand_cert(subject, &[]), Cn), Ok("device-001".to_owned()));
    }

    #[test]
    fn no_cn_is_no_identity() {
        let der = rcgen_cert(&[(DnType::OrganizationName, "Fleet".into())], vec![dns("device.example")]);
        assert_eq!(identity_from_der(&der, Cn), Err(NoIdentity(Cn)));
        let empty_subject = hand_cert(seq(&[]), &[]);
        assert_eq!(identity_from_der(&empty_subject, Cn), Err(NoIdentity(Cn)));
    }

    #[test]
    fn dangerous_cns_are_forbidden() {
        for cn in ["dev+1", "dev#", "fleet/dev-1", "dev-*", "*", "adm\0in", "a\u{1b}[31mb", "line\nbreak", "\u{85}x"] {
            let r = identity_from_der(&with_cn(cn), Cn);
            assert!(is_forbidden(&r, Cn), "{cn:?}: {r:?}");
        }
        for cn in [" admin", "admin ", "admin\u{a0}", ""] {
            let r = identity_from_der(&hand_cn(utf8(cn)), Cn);
            assert!(is_forbidden(&r, Cn), "{cn:?}: {r:?}");
        }
        let long = "a".repeat(MAX_IDENTITY_LEN + 1);
        assert!(is_forbidden(&identity_from_der(&hand_cn(utf8(&long)), Cn), Cn));
        let longest = "a".repeat(MAX_IDENTITY_LEN);
        assert_eq!(identity_from_der(&hand_cn(utf8(&longest)), Cn), Ok(longest));
    }

    #[test]
    fn refusals_do_not_echo_the_value() {
        let r = identity_from_der(&with_cn("evil-admin#\u{1b}[2J"), Cn);
        let msg = r.unwrap_err().to_string();
        assert!(!msg.contains("evil"), "{msg}");
        assert!(msg.contains("cn"), "{msg}");
    }

    #[test]
    fn cn_string_types() {
        let bmp = DnValue::BmpString(BmpString::try_from("Gerät-7").unwrap());
        assert_eq!(identity_from_der(&with_cn(bmp), Cn), Ok("Gerät-7".to_owned()));
        let printable = DnValue::PrintableString(PrintableString::try_from("device 7").unwrap());
        assert_eq!(identity_from_der(&with_cn(printable), Cn), Ok("device 7".to_owned()));
        let ia5 = DnValue::Ia5String(Ia5String::try_from("device@fleet").unwrap());
        assert_eq!(identity_from_der(&with_cn(ia5), Cn), Ok("device@fleet".to_owned()));
        let t61 = DnValue::TeletexString(TeletexString::try_from("device-7").unwrap());
        assert_eq!(identity_from_der(&with_cn(t61), Cn), Ok("device-7".to_owned()));
        let universal = DnValue::UniversalString(UniversalString::try_from("device-7").unwrap());
        assert!(is_forbidden(&identity_from_der(&with_cn(universal), Cn), Cn));
        // A printable string still passes through check_identity.
        let printable = DnValue::PrintableString(PrintableString::try_from("fleet/dev").unwrap());
        assert!(is_forbidden(&identity_from_der(&with_cn(printable), Cn), Cn));
    }

    #[test]
    fn malformed_cn_encodings_are_forbidden() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("OCTET STRING", tlv(0x04, b"admin")),
            ("INTEGER", tlv(0x02, &[1])),
            ("context [12] looking like UTF8String", tlv(0x8c, b"admin")),
            ("constructed UTF8String", tlv(0x2c, &utf8("admin"))),
            ("invalid UTF-8", tlv(0x0c, &[0x61, 0xff])),
            ("PrintableString with '@'", tlv(0x13, b"a@b")),
            ("PrintableString with '*'", tlv(0x13, b"dev*")),
            ("IA5String non-ASCII", tlv(0x16, &[0x61, 0xe9])),
            ("TeletexString non-ASCII", tlv(0x14, &[0x61, 0xe9])),
            ("BMPString odd length", tlv(0x1e, &[0x00, 0x61, 0x00])),
            ("BMPString surrogate", tlv(0x1e, &[0xd8, 0x3d, 0xde, 0x00])),
            ("BMPString NUL", tlv(0x1e, &[0x00, 0x61, 0x00, 0x00])),
        ];
        for (what, value) in cases {
            let r = identity_from_der(&hand_cn(value), Cn);
            assert!(is_forbidden(&r, Cn), "{what}: {r:?}");
        }
    }

    // ---- san-dns ----

    #[test]
    fn san_dns() {
        let der = with_sans(vec![dns("device-1.fleet.example"), uri("spiffe://fleet/dev-1")]);
        assert_eq!(identity_from_der(&der, SanDns), Ok("device-1.fleet.example".to_owned()));
        let wildcard = with_sans(vec![dns("*.fleet.example")]);
        assert!(is_forbidden(&identity_from_der(&wildcard, SanDns), SanDns));
        let two = with_sans(vec![dns("a.fleet.example"), dns("b.fleet.example")]);
        assert_eq!(identity_from_der(&two, SanDns), Err(Ambiguous(SanDns)));
        let none = with_sans(Vec::new());
        assert_eq!(identity_from_der(&none, SanDns), Err(NoIdentity(SanDns)));
        let only_uri = with_sans(vec![uri("spiffe://fleet/dev-1")]);
        assert_eq!(identity_from_der(&only_uri, SanDns), Err(NoIdentity(SanDns)));
        for bad in ["a+b.example", "a#b.example", "a/b.example", "a\0b"] {
            let r = identity_from_der(&hand_cert(seq(&[]), &[san_ext(&[tlv(0x82, bad.as_bytes())])]), SanDns);
            assert!(is_forbidden(&r, SanDns), "{bad:?}: {r:?}");
        }
    }

    #[test]
    fn san_non_ascii_and_duplicate_extensions() {
        let non_ascii = hand_cert(seq(&[]), &[san_ext(&[tlv(0x82, "gerät.example".as_bytes())])]);
        assert!(is_forbidden(&identity_from_der(&non_ascii, SanDns), SanDns));
        let ok = hand_cert(seq(&[]), &[san_ext(&[tlv(0x82, b"a.example")])]);
        assert_eq!(identity_from_der(&ok, SanDns), Ok("a.example".to_owned()));
        let twice = hand_cert(seq(&[]), &[san_ext(&[tlv(0x82, b"a.example")]), san_ext(&[tlv(0x82, b"b.example")])]);
        assert_eq!(identity_from_der(&twice, SanDns), Err(Ambiguous(SanDns)));
        assert_eq!(identity_from_der(&twice, SanUri), Err(Ambiguous(SanUri)));
        let broken = hand_cert(seq(&[]), &[seq(&[tlv(0x06, &[0x55, 0x1d, 0x11]), tlv(0x04, &[0x30, 0x05, 0x82])])]);
        assert_eq!(identity_from_der(&broken, SanDns), Err(Unparseable));
    }

    // ---- san-uri ----

    #[test]
    fn san_uri() {
        let der = with_sans(vec![dns("device-1.fleet.example"), uri("spiffe://fleet/dev-1")]);
        assert_eq!(identity_from_der(&der, SanUri), Ok("spiffe://fleet/dev-1".to_owned()));
        let two = with_sans(vec![uri("spiffe://fleet/dev-1"), uri("spiffe://fleet/admin")]);
        assert_eq!(identity_from_der(&two, SanUri), Err(Ambiguous(SanUri)));
        let only_dns = with_sans(vec![dns("device-1.fleet.example")]);
        assert_eq!(identity_from_der(&only_dns, SanUri), Err(NoIdentity(SanUri)));
        assert_eq!(identity_from_der(&with_cn("admin"), SanUri), Err(NoIdentity(SanUri)));
        for bad in
            ["spiffe://fleet/dev#1", "spiffe://fleet/+", "spiffe://fleet/*", "spiffe://fleet/a b", "spiffe://x/\t"]
        {
            let r = identity_from_der(&with_sans(vec![uri(bad)]), SanUri);
            assert!(is_forbidden(&r, SanUri), "{bad:?}: {r:?}");
        }
    }

    // ---- fingerprint ----

    #[test]
    fn fingerprint_is_sha256_of_der() {
        let der = with_cn("device-001");
        let fp = identity_from_der(&der, Fingerprint).unwrap();
        assert_eq!(fp.len(), 64);
        assert!(fp.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{fp}");
        let expected: String = Sha256::digest(&der).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(fp, expected);
        assert_eq!(check_identity(&fp), Ok(()));
        assert_ne!(identity_from_der(&with_cn("device-001"), Fingerprint).unwrap(), fp, "fresh key, new cert");
        // Known vector: SHA-256 of the empty string.
        assert_eq!(sha256_fingerprint(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    // ---- unparseable ----

    #[test]
    fn garbage_is_unparseable() {
        let der = with_cn("device-001");
        let mut trailing = der.clone();
        trailing.push(0);
        let mut two_certs = der.clone();
        two_certs.extend_from_slice(&der);
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"not a certificate".to_vec(),
            TWO_CN_PEM.as_bytes().to_vec(),
            der[..der.len() - 1].to_vec(),
            trailing,
            two_certs,
            vec![0x30, 0x80, 0x00, 0x00],
        ];
        for bytes in cases {
            for source in [Cn, SanDns, SanUri, Fingerprint] {
                assert_eq!(identity_from_der(&bytes, source), Err(Unparseable), "{source} on {} bytes", bytes.len());
            }
        }
    }

    // ---- check_identity / IdentitySource ----

    #[test]
    fn check_identity_rules() {
        for ok in ["a", "device-001", "device_001.fleet", "user@example.com", "Gerät 7", "spiffe:x"] {
            assert_eq!(check_identity(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "+", "#", "a/b", "a*", "\0", "\u{7f}", "\u{9b}", " a", "a ", "\ta", "a\n", "a\u{2003}"] {
            assert!(check_identity(bad).is_err(), "{bad:?}");
        }
        assert!(check_identity(&"é".repeat(129)).is_err(), "258 bytes");
        assert!(check_identity(&"é".repeat(128)).is_ok(), "256 bytes");
    }

    #[test]
    fn identity_source_parses_and_displays() {
        for s in [Cn, SanDns, SanUri, Fingerprint] {
            assert_eq!(s.to_string().parse::<IdentitySource>(), Ok(s));
        }
        assert_eq!("san-dns".parse(), Ok(SanDns));
        for bad in ["", "CN", "san_dns", "san", " cn", "subject"] {
            assert_eq!(bad.parse::<IdentitySource>(), Err(UnknownIdentitySource), "{bad:?}");
        }
    }

    /// A certificate with a CN, a DNS and a URI SAN, for the mutation test.
    fn base_cert() -> &'static [u8] {
        static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        BASE.get_or_init(|| {
            rcgen_cert(
                &[(DnType::CommonName, "device-001".into())],
                vec![dns("device-1.fleet.example"), uri("spiffe://fleet/dev-1")],
            )
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for source in [Cn, SanDns, SanUri, Fingerprint] {
                let _ = identity_from_der(&bytes, source);
            }
        }

        #[test]
        fn never_panics_on_mutated_certificates(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut der = base_cert().to_vec();
            for (at, byte) in edits {
                let i = at.index(der.len());
                der[i] = byte;
            }
            let keep = der.len() - cut.index(der.len() / 4 + 1);
            der.truncate(keep);
            for source in [Cn, SanDns, SanUri, Fingerprint] {
                if let Ok(id) = identity_from_der(&der, source) {
                    // Whatever comes out passed the rule of its source: a URI may not hold
                    // whitespace at all, a name only inside ("Gerät 7"; the saved case: a
                    // byte of the CN mutated to a space).
                    let rule = if source == SanUri { check_uri_identity } else { check_identity };
                    prop_assert!(rule(&id).is_ok(), "{source}: {id:?}");
                }
            }
        }
    }
}
