//! The trust lifecycle (SPEC §10): which credential a principal holds, and whether a change in
//! that credential's standing ends what it holds.
//!
//! Every principal names the credential that proved it ([`Credential`]: password file, policy
//! store, certificate (issuer + serial), access token (`jti`, OAuth client, scopes), look-up
//! answer). A change of standing is one value, a [`TrustEvent`]; [`TrustEvent::verdict`] says
//! whether it ends a principal's standing and how ([`Verdict`]). The shell applies an event in
//! one place (`warden::trust`), to every live connection, pending will and session it holds.
//! Pure: no clock, no I/O; the caller hands in what changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::password::PasswordFile;
use crate::principal::Principal;

/// Which kind of credential proved a principal (one byte; fits beside [`crate::PrincipalKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CredentialSource {
    /// No credentials: the anonymous principal.
    #[default]
    Anonymous,
    /// A user of the password file (password or SCRAM-SHA-256).
    PasswordFile,
    /// A user of the policy store.
    StoreUser,
    /// A client certificate verified by a TLS listener.
    Certificate,
    /// A claim certificate of the policy store ([`crate::enroll`]): verified like any client
    /// certificate, but good for enrollment only.
    Claim,
    /// An access token (built-in token service or outside issuer).
    Token,
    /// An answer of the third-party look-up service.
    Lookup,
    /// A session restored from the store after a restart: its credential is not known again
    /// until its client reconnects, so it holds no grants but those of rules naming it.
    Restored,
}

impl CredentialSource {
    /// Lower-case name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Anonymous => "anonymous",
            CredentialSource::PasswordFile => "password-file",
            CredentialSource::StoreUser => "policy-store",
            CredentialSource::Certificate => "certificate",
            CredentialSource::Claim => "claim",
            CredentialSource::Token => "token",
            CredentialSource::Lookup => "lookup",
            CredentialSource::Restored => "restored",
        }
    }
}

/// What identifies a credential beyond its source (certificates and tokens only: a user is
/// identified by its name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate: its issuer's name (DER) and serial number, which a CRL names, and
    /// those of the intermediate CAs it was verified through.
    Certificate(CertChain),
    /// An access token.
    Token(TokenRef),
}

/// A certificate as a CRL names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertRef {
    /// The issuer's distinguished name, DER.
    pub issuer: Box<[u8]>,
    /// The serial number, big-endian bytes without leading zeros.
    pub serial: Box<[u8]>,
}

impl CertRef {
    /// The issuer and serial of the DER certificate `der` (`None`: not a certificate).
    pub fn from_der(der: &[u8]) -> Option<CertRef> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(CertRef { issuer: cert.issuer().as_raw().into(), serial: trim(cert.raw_serial()).into() })
    }
}

/// A client certificate and the intermediate CA certificates it chains through, as CRLs name
/// them: a CRL that revokes any of them ends the standing of the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertChain {
    /// The client's own certificate.
    pub leaf: CertRef,
    /// The intermediate CAs between it and the trust anchor (empty: none, or not checked).
    pub issuers: Box<[CertRef]>,
    /// SHA-256 of the client's DER certificate, lowercase hex, as the device registry names
    /// it (computed once, at the TLS handshake; `None`: not known).
    pub fingerprint: Option<Box<str>>,
}

impl CertChain {
    /// A certificate alone (its chain not checked).
    pub fn leaf(leaf: CertRef) -> CertChain {
        CertChain { leaf, issuers: Box::default(), fingerprint: None }
    }

    /// From the DER certificates a client presented, leaf first (`None`: the leaf is not a
    /// certificate). Intermediates that cannot be parsed are left out: the TLS layer verified
    /// the chain it used, and a CRL can only name what parses.
    pub fn from_ders<'a>(mut ders: impl Iterator<Item = &'a [u8]>) -> Option<CertChain> {
        let der = ders.next()?;
        let leaf = CertRef::from_der(der)?;
        let fingerprint = Some(crate::cert::sha256_fingerprint(der).into());
        Some(CertChain { leaf, issuers: ders.filter_map(CertRef::from_der).collect(), fingerprint })
    }
}

fn trim(serial: &[u8]) -> &[u8] {
    let zeros = serial.iter().take_while(|b| **b == 0).count();
    &serial[zeros.min(serial.len().saturating_sub(1))..]
}

/// An access token as revocation and the OAuth client registry name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    /// `jti`, when the token has one.
    pub jti: Option<Box<str>>,
    /// The built-in token service's client the token was issued to (`None`: an outside issuer).
    pub oauth_client: Option<Box<str>>,
    /// Unix seconds when it expires (`exp`), shown to operators.
    pub expires_at: Option<u64>,
}

/// The certificates revoked by a set of CRLs (issuer name + serial).
#[derive(Debug, Default, Clone)]
pub struct RevokedCerts {
    revoked: HashSet<CertRef>,
}

/// A CRL that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("CRL cannot be parsed: {0}")]
pub struct CrlError(String);

impl RevokedCerts {
    /// Add the entries of one DER CRL. Its signature is not checked here: the TLS layer checks
    /// it against the client CA when it loads the same CRL.
    /// A CRL without a CRL Number is refused (RFC 5280 §5.2.3: conforming CRL issuers MUST
    /// include it; the TLS layer refuses such a CRL too).
    pub fn add_der(&mut self, der: &[u8]) -> Result<(), CrlError> {
        let (_, crl) = CertificateRevocationList::from_der(der).map_err(|e| CrlError(e.to_string()))?;
        if crl.crl_number().is_none() {
            return Err(CrlError("it has no CRL Number extension (RFC 5280 §5.2.3 requires one)".into()));
        }
        let issuer: Box<[u8]> = crl.issuer().as_raw().into();
        for r in crl.iter_revoked_certificates() {
            self.revoked.insert(CertRef { issuer: issuer.clone(), serial: trim(r.raw_serial()).into() });
        }
        Ok(())
    }

    /// Add one revoked certificate (another node's CRL entry, SPEC §11).
    pub fn insert(&mut self, cert: CertRef) {
        self.revoked.insert(cert);
    }

    /// Every revoked certificate, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &CertRef> {
        self.revoked.iter()
    }

    /// Add every certificate `other` revokes.
    pub fn extend(&mut self, other: &RevokedCerts) {
        self.revoked.extend(other.revoked.iter().cloned());
    }

    /// True when `cert` is among the revoked.
    pub fn contains(&self, cert: &CertRef) -> bool {
        self.revoked.contains(cert)
    }

    /// True when the certificate or one of the intermediates it chains through is revoked.
    pub fn revokes(&self, chain: &CertChain) -> bool {
        self.contains(&chain.leaf) || chain.issuers.iter().any(|c| self.contains(c))
    }

    /// Number of revoked certificates.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

/// What an OAuth client may hold now (scopes and roles), for [`TrustEvent::OAuthClients`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientGrants {
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// Roles its tokens carry.
    pub roles: Vec<String>,
}

/// A change in the standing of credentials. Each is applied to everything held on behalf of
/// the credentials it names: live connections end, their wills are discarded.
#[derive(Debug, Clone)]
pub enum TrustEvent {
    /// An access token was revoked (`/oauth/revoke`).
    TokenRevoked {
        /// Its `jti`.
        jti: String,
    },
    /// The OAuth client registry now holds these clients (deleted ones are gone; a client's
    /// scopes or roles may be narrower). Tokens of a missing client, and tokens whose scopes
    /// or roles the client no longer has, lose their standing.
    OAuthClients(Arc<HashMap<String, ClientGrants>>),
    /// The CRLs in force now revoke these certificates.
    CertificatesRevoked(Arc<RevokedCerts>),
    /// The password file now reads so: its users that are no longer in it lose their standing.
    PasswordFile(Arc<PasswordFile>),
    /// The policy store's users now are these (enabled ones with a password); its users not
    /// among them (deleted, disabled) lose their standing.
    StoreUsers(Arc<HashSet<String>>),
    /// These names are disabled in the policy store: every principal of that name loses its
    /// standing, whichever method proved it (password, certificate, token, look-up).
    Disabled(Arc<HashSet<String>>),
    /// The device registry's certificates now stand so: a client certificate made inactive
    /// or revoked there, registered to another device, or (with `registered_certificates_only`)
    /// no longer registered, loses its standing.
    DeviceCertificates(Arc<crate::devices::DeviceCerts>),
}

/// How a trust event ends a principal's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Revoked, removed, disabled or narrowed (v5 DISCONNECT 0x87 Not authorized).
    Revoked,
}

impl TrustEvent {
    /// Whether this event ends `p`'s standing (`None`: `p` is not affected).
    pub fn verdict(&self, p: &Principal) -> Option<Verdict> {
        let lost = match self {
            TrustEvent::TokenRevoked { jti } => p.token_id() == Some(jti.as_str()),
            TrustEvent::OAuthClients(clients) => match p.credential() {
                Some(Credential::Token(TokenRef { oauth_client: Some(id), .. })) => match clients.get(&**id) {
                    None => true,
                    Some(now) => !token_within(p, now),
                },
                _ => false,
            },
            TrustEvent::CertificatesRevoked(revoked) => {
                matches!(p.credential(), Some(Credential::Certificate(c)) if revoked.revokes(c))
            }
            TrustEvent::PasswordFile(file) => p.source == CredentialSource::PasswordFile && !file.contains(&p.name),
            TrustEvent::StoreUsers(users) => p.source == CredentialSource::StoreUser && !users.contains(&*p.name),
            TrustEvent::Disabled(names) => p.source != CredentialSource::Anonymous && names.contains(&*p.name),
            TrustEvent::DeviceCertificates(certs) => certs.admits(p).is_err(),
        };
        lost.then_some(Verdict::Revoked)
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            TrustEvent::TokenRevoked { .. } => "token revoked",
            TrustEvent::OAuthClients(_) => "OAuth clients changed",
            TrustEvent::CertificatesRevoked(_) => "certificate revocation lists reloaded",
            TrustEvent::PasswordFile(_) => "password file reloaded",
            TrustEvent::StoreUsers(_) => "policy-store users changed",
            TrustEvent::Disabled(_) => "policy-store users disabled",
            TrustEvent::DeviceCertificates(_) => "device registry certificates changed",
        }
    }
}

/// True when every scope and role of token principal `p` is still one of the client's.
fn token_within(p: &Principal, client: &ClientGrants) -> bool {
    p.scopes.iter().all(|s| client.scopes.iter().any(|c| c == &**s))
        && p.roles.iter().all(|r| client.roles.iter().any(|c| c == &**r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sub: &str, jti: &str, client: Option<&str>, scopes: &[&str]) -> Principal {
        Principal::token(sub, vec![], scopes.iter().map(|s| Arc::from(*s)).collect()).with_credential(
            CredentialSource::Token,
            Some(Credential::Token(TokenRef {
                jti: Some(jti.into()),
                oauth_client: client.map(Into::into),
                expires_at: None,
            })),
        )
    }

    #[test]
    fn a_revoked_token_ends_only_its_own_holders() {
        let ev = TrustEvent::TokenRevoked { jti: "j1".into() };
        assert_eq!(ev.verdict(&token("dev", "j1", None, &[])), Some(Verdict::Revoked));
        assert_eq!(ev.verdict(&token("dev", "j2", None, &[])), None);
        assert_eq!(ev.verdict(&Principal::user("j1")), None, "a user named like the jti is not a token");
    }

    #[test]
    fn oauth_client_deleted_or_narrowed_ends_its_tokens() {
        let p = token("dev-1", "j", Some("dev-1"), &["mqtt:pub:a/#", "mqtt:sub:b/#"]);
        let grants =
            |scopes: &[&str]| ClientGrants { scopes: scopes.iter().map(|s| s.to_string()).collect(), roles: vec![] };
        let same = HashMap::from([("dev-1".to_string(), grants(&["mqtt:pub:a/#", "mqtt:sub:b/#", "x"]))]);
        assert_eq!(TrustEvent::OAuthClients(Arc::new(same)).verdict(&p), None, "wider or equal: kept");
        let narrowed = HashMap::from([("dev-1".to_string(), grants(&["mqtt:pub:a/#"]))]);
        assert_eq!(TrustEvent::OAuthClients(Arc::new(narrowed)).verdict(&p), Some(Verdict::Revoked));
        assert_eq!(TrustEvent::OAuthClients(Arc::default()).verdict(&p), Some(Verdict::Revoked), "deleted");
        let outside = token("dev-1", "j", None, &["mqtt:pub:a/#"]);
        assert_eq!(TrustEvent::OAuthClients(Arc::default()).verdict(&outside), None, "outside issuer");
    }

    #[test]
    fn password_file_removal_touches_only_password_file_users() {
        let file = Arc::new(PasswordFile::parse("").unwrap());
        let ev = TrustEvent::PasswordFile(file);
        let pw = Principal::user("ann").with_credential(CredentialSource::PasswordFile, None);
        let store = Principal::user("ann").with_credential(CredentialSource::StoreUser, None);
        assert_eq!(ev.verdict(&pw), Some(Verdict::Revoked));
        assert_eq!(ev.verdict(&store), None);
        assert_eq!(ev.verdict(&Principal::certificate("ann")), None);
    }

    #[test]
    fn a_disabled_name_ends_every_method() {
        let ev = TrustEvent::Disabled(Arc::new(HashSet::from(["dev-9".to_string()])));
        for p in [
            Principal::user("dev-9").with_credential(CredentialSource::PasswordFile, None),
            Principal::user("dev-9").with_credential(CredentialSource::StoreUser, None),
            Principal::certificate("dev-9").with_credential(CredentialSource::Certificate, None),
            token("dev-9", "j", Some("dev-9"), &[]),
        ] {
            assert_eq!(ev.verdict(&p), Some(Verdict::Revoked), "{p}");
        }
        assert_eq!(ev.verdict(&Principal::user("dev-10").with_credential(CredentialSource::StoreUser, None)), None);
        assert_eq!(ev.verdict(&Principal::anonymous()), None);
    }

    #[test]
    fn certificates_are_named_by_issuer_and_serial() {
        let cert = CertRef { issuer: b"ca".as_slice().into(), serial: [1u8, 2].as_slice().into() };
        let mut revoked = RevokedCerts::default();
        revoked.revoked.insert(cert.clone());
        let ev = TrustEvent::CertificatesRevoked(Arc::new(revoked));
        let holding = |chain: CertChain| {
            Principal::certificate("dev")
                .with_credential(CredentialSource::Certificate, Some(Credential::Certificate(chain)))
        };
        assert_eq!(ev.verdict(&holding(CertChain::leaf(cert.clone()))), Some(Verdict::Revoked));
        let other = CertRef { serial: [1u8, 3].as_slice().into(), ..cert.clone() };
        assert_eq!(ev.verdict(&holding(CertChain::leaf(other.clone()))), None);
        // Issued under a revoked intermediate: revoked too.
        let under = CertChain { leaf: other.clone(), issuers: vec![cert].into(), fingerprint: None };
        assert_eq!(ev.verdict(&holding(under)), Some(Verdict::Revoked));
        assert_eq!(trim(&[0, 0, 5]), &[5]);
        assert_eq!(trim(&[0]), &[0]);
    }

    #[test]
    fn device_registry_certificates_by_fingerprint() {
        use crate::devices::{CertStatus, Device, DeviceCert, DeviceCerts};
        let fp = "ab".repeat(32);
        let holding = |fp: Option<&str>, name: &str| {
            let chain = CertChain {
                fingerprint: fp.map(Into::into),
                ..CertChain::leaf(CertRef { issuer: b"ca".as_slice().into(), serial: [1u8].as_slice().into() })
            };
            Principal::certificate(name)
                .with_credential(CredentialSource::Certificate, Some(Credential::Certificate(chain)))
        };
        let registry = |status| {
            let mut d = Device::default();
            d.certificates.insert(fp.clone(), DeviceCert { status, ..Default::default() });
            std::collections::BTreeMap::from([("dev-1".to_string(), d)])
        };
        let ev = |status, strict| TrustEvent::DeviceCertificates(Arc::new(DeviceCerts::new(&registry(status), strict)));
        assert_eq!(ev(CertStatus::Active, false).verdict(&holding(Some(&fp), "dev-1")), None);
        assert_eq!(ev(CertStatus::Revoked, false).verdict(&holding(Some(&fp), "dev-1")), Some(Verdict::Revoked));
        assert_eq!(ev(CertStatus::Inactive, false).verdict(&holding(Some(&fp), "dev-1")), Some(Verdict::Revoked));
        assert_eq!(ev(CertStatus::Revoked, false).verdict(&holding(Some(&"cd".repeat(32)), "dev-1")), None);
        assert_eq!(
            ev(CertStatus::Active, true).verdict(&holding(Some(&"cd".repeat(32)), "dev-1")),
            Some(Verdict::Revoked)
        );
        // Only certificate holders: a user of that name is untouched.
        let user = Principal::user("dev-1").with_credential(CredentialSource::StoreUser, None);
        assert_eq!(ev(CertStatus::Revoked, true).verdict(&user), None);
    }
}
