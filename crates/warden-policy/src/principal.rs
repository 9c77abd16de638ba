//! The identity a connection authenticated as.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::trust::{Credential, CredentialSource};

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A user name and password (password file or policy store).
    User,
    /// An X.509 client certificate identity.
    Certificate,
    /// The subject of a verified access token.
    Token,
    /// No credentials (only where `allow_anonymous = true`); all anonymous clients are one principal.
    Anonymous,
    /// Admitted unverified by the look-up's `fail_open` while its service was unavailable:
    /// the name is the CONNECT user name (or certificate identity) it *claimed*. Never the same
    /// identity as a verified principal of that name (so it cannot take over its sessions),
    /// and granted only its roles (the configured `fallback_role`): no ACL-file or policy-store
    /// rule naming the user, no rule for every authenticated client.
    Fallback,
}

impl PrincipalKind {
    /// Lower-case name used in logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Certificate => "certificate",
            PrincipalKind::Token => "token",
            PrincipalKind::Anonymous => "anonymous",
            PrincipalKind::Fallback => "fallback",
        }
    }
}

static ANONYMOUS: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();

/// An authenticated identity. Two principals are the same identity when kind and name match;
/// roles and scopes are what it may do, not who it is.
#[derive(Debug, Clone)]
pub struct Principal {
    /// How it authenticated.
    pub kind: PrincipalKind,
    /// The user name, certificate identity or token subject (`anonymous` for anonymous).
    pub name: Arc<str>,
    /// Role names granted (RBAC), empty until the authorization issue uses them.
    pub roles: Box<[Arc<str>]>,
    /// OAuth scopes granted by an access token (`mqtt:pub:<filter>`, `mqtt:sub:<filter>`,
    /// role names); empty for other principals.
    pub scopes: Box<[Arc<str>]>,
    /// Which kind of credential proved it (SPEC §10: a change in that credential's standing
    /// ends what it holds; see [`crate::trust`]).
    pub source: CredentialSource,
    /// Grants of its own and the certificate or token behind it, in one shared allocation
    /// that plain users and anonymous clients do without: a principal stays at 64 bytes
    /// (every connection has one; see [`Principal::grants`], [`Principal::credential`]).
    extra: Option<Arc<Extra>>,
    /// The address the client connected from (see [`Principal::peer`]): an IPv4 address in
    /// the principal itself (5 bytes of what was padding), an IPv6 address in [`Extra`].
    peer: Peer,
}

/// Where the client's address is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// Not known (a principal restored from the store, or made outside a CONNECT).
    Unknown,
    /// An IPv4 address (an IPv4-mapped IPv6 address is kept as its IPv4 address).
    V4([u8; 4]),
    /// An IPv6 address, in [`Extra::peer6`].
    V6,
}

/// What only some principals carry.
#[derive(Debug, Default)]
struct Extra {
    /// Rules of its own (a token's `mqtt:` scopes compiled, a look-up answer's rules).
    grants: Option<Arc<crate::acl::AclFile>>,
    /// The certificate or token behind it.
    credential: Option<Credential>,
    /// The IPv6 address it connected from ([`Peer::V6`]).
    peer6: Option<Ipv6Addr>,
}

impl Principal {
    /// The single anonymous principal.
    pub fn anonymous() -> Self {
        Principal {
            kind: PrincipalKind::Anonymous,
            // One shared name: every anonymous connection would otherwise allocate its own.
            name: ANONYMOUS.get_or_init(|| Arc::from("anonymous")).clone(),
            roles: Box::default(),
            scopes: Box::default(),
            source: CredentialSource::Anonymous,
            extra: None,
            peer: Peer::Unknown,
        }
    }

    /// A password-authenticated user.
    pub fn user(name: &str) -> Self {
        Principal {
            kind: PrincipalKind::User,
            name: Arc::from(name),
            roles: Box::default(),
            scopes: Box::default(),
            source: CredentialSource::PasswordFile,
            extra: None,
            peer: Peer::Unknown,
        }
    }

    /// A principal authenticated by a client certificate.
    pub fn certificate(name: &str) -> Self {
        Principal {
            kind: PrincipalKind::Certificate,
            name: Arc::from(name),
            roles: Box::default(),
            scopes: Box::default(),
            source: CredentialSource::Certificate,
            extra: None,
            peer: Peer::Unknown,
        }
    }

    /// A principal authenticated by an access token (its subject), with the token's grants.
    pub fn token(subject: &str, roles: Vec<Arc<str>>, scopes: Vec<Arc<str>>) -> Self {
        let grants = Some(Arc::new(crate::authz::compile_scopes(&scopes)));
        Principal {
            kind: PrincipalKind::Token,
            name: Arc::from(subject),
            roles: roles.into(),
            scopes: scopes.into(),
            source: CredentialSource::Token,
            extra: Some(Arc::new(Extra { grants, credential: None, peer6: None })),
            peer: Peer::Unknown,
        }
    }

    /// A client admitted by the look-up's `fail_open` (see [`PrincipalKind::Fallback`]):
    /// `claimed` is the name it gave, `role` the only role it holds. It has grants of its own
    /// (none), so that where no rule gives the role anything it may do nothing — never
    /// "no source names it, so everything".
    pub fn fallback(claimed: &str, role: &str) -> Self {
        Principal {
            kind: PrincipalKind::Fallback,
            name: Arc::from(claimed),
            roles: Box::new([Arc::from(role)]),
            scopes: Box::default(),
            source: CredentialSource::Lookup,
            extra: Some(Arc::new(Extra {
                grants: Some(Arc::new(crate::acl::AclFile::default())),
                credential: None,
                peer6: None,
            })),
            peer: Peer::Unknown,
        }
    }

    /// This principal, proved by a credential of `source` (and `credential`, for a
    /// certificate or token).
    pub fn with_credential(mut self, source: CredentialSource, credential: Option<Credential>) -> Self {
        self.source = source;
        let grants = self.grants().cloned();
        self.set_extra(grants, credential, self.peer6());
        self
    }

    /// This principal, connected from `ip` (the PROXY-protocol address when a header gave
    /// one): what rules' `source` conditions are matched against ([`crate::cidr`]).
    pub fn with_peer(mut self, ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (grants, credential) = (self.grants().cloned(), self.credential().cloned());
        match ip {
            IpAddr::V4(v4) => {
                self.peer = Peer::V4(v4.octets());
                self.set_extra(grants, credential, None);
            }
            IpAddr::V6(v6) => {
                self.peer = Peer::V6;
                self.set_extra(grants, credential, Some(v6));
            }
        }
        self
    }

    /// The address the client connected from, if known. Cheap (no allocation): asked by
    /// every check of a rule with a `source` condition.
    #[inline]
    pub fn peer(&self) -> Option<IpAddr> {
        match self.peer {
            Peer::Unknown => None,
            Peer::V4(b) => Some(IpAddr::V4(Ipv4Addr::from(b))),
            Peer::V6 => self.peer6().map(IpAddr::V6),
        }
    }

    fn peer6(&self) -> Option<Ipv6Addr> {
        self.extra.as_ref().and_then(|e| e.peer6)
    }

    fn set_extra(
        &mut self,
        grants: Option<Arc<crate::acl::AclFile>>,
        credential: Option<Credential>,
        peer6: Option<Ipv6Addr>,
    ) {
        self.extra = (grants.is_some() || credential.is_some() || peer6.is_some())
            .then(|| Arc::new(Extra { grants, credential, peer6 }));
    }

    /// The certificate or token behind this principal, if any.
    pub fn credential(&self) -> Option<&Credential> {
        self.extra.as_ref().and_then(|e| e.credential.as_ref())
    }

    /// The `jti` of the access token behind this principal, if it authenticated with one that
    /// has an id (what a revocation names).
    pub fn token_id(&self) -> Option<&str> {
        match self.credential() {
            Some(Credential::Token(t)) => t.jti.as_deref(),
            _ => None,
        }
    }

    /// Rules of its own: a token's `mqtt:` scopes compiled (an empty set grants nothing), a
    /// look-up answer's rules; `None` when only the configured sources decide. See
    /// [`crate::authz::compile_scopes`].
    pub fn grants(&self) -> Option<&Arc<crate::acl::AclFile>> {
        self.extra.as_ref().and_then(|e| e.grants.as_ref())
    }

    /// Replace its own rules (the credential stays).
    pub fn set_grants(&mut self, grants: Option<Arc<crate::acl::AclFile>>) {
        let credential = self.credential().cloned();
        self.set_extra(grants, credential, self.peer6());
    }

    /// True when `other` is the same identity (so it may take over this principal's sessions).
    pub fn same_identity(&self, other: &Principal) -> bool {
        // A claim certificate's holder is never the identity of the same name proved otherwise
        // (it could otherwise take over that one's sessions).
        self.kind == other.kind && self.name == other.name && self.is_claim() == other.is_claim()
    }

    /// Connected with a claim certificate: good for enrollment only ([`crate::enroll`]).
    #[inline]
    pub fn is_claim(&self) -> bool {
        self.source == CredentialSource::Claim
    }

    /// Holds its client id only until a verified principal asks for it, and keeps no session
    /// after it disconnects: a client admitted unverified by the look-up's `fail_open`, or one
    /// connected with a claim certificate (it enrolls, then comes back as the device).
    #[inline]
    pub fn is_provisional(&self) -> bool {
        self.kind == PrincipalKind::Fallback || self.is_claim()
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection has one (in an `Arc`: 16 bytes of counts): 64 bytes keeps the
    /// allocation in mimalloc's 80-byte class.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_principal_stays_in_its_size_class() {
        assert!(std::mem::size_of::<Principal>() <= 64, "Principal is {} bytes", std::mem::size_of::<Principal>());
    }

    #[test]
    fn identity_is_kind_and_name() {
        assert!(Principal::user("ann").same_identity(&Principal::user("ann")));
        assert!(!Principal::user("ann").same_identity(&Principal::user("ben")));
        let cert = Principal { kind: PrincipalKind::Certificate, ..Principal::user("ann") };
        assert!(!cert.same_identity(&Principal::user("ann")));
        assert!(Principal::anonymous().same_identity(&Principal::anonymous()));
        // A fail-open client that claims a name is not the principal of that name.
        let f = Principal::fallback("ann", "degraded");
        assert!(!f.same_identity(&Principal::user("ann")));
        assert!(!Principal::user("ann").same_identity(&f));
        assert_eq!(f.to_string(), "fallback:ann");
        assert_eq!(&*f.roles, [Arc::from("degraded")]);
        assert!(f.grants().is_some_and(|g| g.rules().is_empty()), "grants of its own: none");
    }

    #[test]
    fn the_peer_address_is_kept_compactly() {
        let p = Principal::user("ann");
        assert_eq!(p.peer(), None);
        let v4 = p.clone().with_peer("10.1.2.3".parse().unwrap());
        assert_eq!(v4.peer(), Some("10.1.2.3".parse().unwrap()));
        assert!(v4.extra.is_none(), "an IPv4 peer needs no allocation");
        assert!(v4.same_identity(&p), "the address is not the identity");
        let mapped = p.clone().with_peer("::ffff:10.0.0.9".parse().unwrap());
        assert_eq!(mapped.peer(), Some("10.0.0.9".parse().unwrap()));
        let v6 = p.with_peer("2001:db8::7".parse().unwrap());
        assert_eq!(v6.peer(), Some("2001:db8::7".parse().unwrap()));
        // Grants and credential changes keep the address.
        let mut t = Principal::token("dev", vec![], vec![Arc::from("mqtt:pub:a/#")]).with_peer("::1".parse().unwrap());
        t = t.with_credential(CredentialSource::Token, None);
        assert_eq!(t.peer(), Some("::1".parse().unwrap()));
        assert!(t.grants().is_some());
        t.set_grants(None);
        assert_eq!(t.peer(), Some("::1".parse().unwrap()));
        let t4 = Principal::token("dev", vec![], vec![]).with_peer("192.0.2.1".parse().unwrap());
        assert!(t4.grants().is_some() && t4.peer() == Some("192.0.2.1".parse().unwrap()));
    }
}
