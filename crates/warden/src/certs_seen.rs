//! Client certificates seen in verified TLS handshakes, for the admin API's
//! `GET /admin/certificates` and the console's Certificates page: who presented what, issued by
//! whom, valid until when, and whether a CRL in force revokes it now.
//!
//! Bounded: at most [`CertsSeen::CAP`] certificates are kept; when full, the one seen longest
//! ago makes room (a fleet rotating certificates keeps its current ones). Recorded once per
//! handshake (a handshake costs far more than the parse and the map insert); nothing here is
//! on the path of a message.

use std::collections::HashMap;
use std::net::SocketAddr;

use parking_lot::Mutex;
use warden_http::admin::CertificateView;
use warden_policy::trust::{CertChain, CertRef, RevokedCerts};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a handshake tells about the client's certificate.
#[derive(Debug, Clone)]
pub struct SeenCert {
    /// Issuer and serial of it and of its intermediates, as CRLs name them.
    pub chain: CertChain,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, hex.
    pub serial: String,
    /// Validity, unix seconds.
    pub not_before: u64,
    /// Validity end, unix seconds.
    pub not_after: u64,
    /// The identity the listener took from it (`None`: refused).
    pub identity: Option<String>,
}

impl SeenCert {
    /// From the client's DER leaf certificate and the chain the listener checks CRLs on
    /// (`None`: not a certificate).
    pub fn from_der(der: &[u8], chain: Option<CertChain>, identity: Option<String>) -> Option<SeenCert> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let chain = match chain {
            Some(c) => c,
            None => CertChain::leaf(CertRef::from_der(der)?),
        };
        let secs = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
        // Computed once at the handshake (the chain carries it for the device registry).
        let fingerprint = match &chain.fingerprint {
            Some(f) => f.to_string(),
            None => warden_policy::cert::sha256_fingerprint(der),
        };
        Some(SeenCert {
            chain,
            fingerprint,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: secs(cert.validity().not_before),
            not_after: secs(cert.validity().not_after),
            identity,
        })
    }
}

struct Entry {
    cert: SeenCert,
    first_seen: u64,
    last_seen: u64,
    last_peer: SocketAddr,
    handshakes: u64,
}

/// The certificates seen, by issuer and serial.
#[derive(Default)]
pub struct CertsSeen {
    map: Mutex<HashMap<CertRef, Entry>>,
}

impl CertsSeen {
    /// Most certificates kept.
    pub const CAP: usize = 10_000;

    /// A handshake from `peer` presented `cert`.
    pub fn record(&self, cert: SeenCert, peer: SocketAddr) {
        let now = crate::clock::unix_now();
        let mut map = self.map.lock();
        if let Some(e) = map.get_mut(&cert.chain.leaf) {
            e.last_seen = now;
            e.last_peer = peer;
            e.handshakes += 1;
            e.cert.identity = cert.identity;
            return;
        }
        if map.len() >= Self::CAP {
            let oldest = map.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            cert.chain.leaf.clone(),
            Entry { cert, first_seen: now, last_seen: now, last_peer: peer, handshakes: 1 },
        );
    }

    /// Subject and expiry of a certificate seen (for the client list).
    pub fn subject_of(&self, leaf: &CertRef) -> Option<(String, u64)> {
        self.map.lock().get(leaf).map(|e| (e.cert.subject.clone(), e.cert.not_after))
    }

    /// Every certificate kept, most recently seen first: `revoked` says whether the CRLs in
    /// force revoke it, `connected` how many live connections hold it.
    pub fn list(
        &self,
        revoked: &[std::sync::Arc<RevokedCerts>],
        connected: impl Fn(&CertRef) -> usize,
    ) -> Vec<CertificateView> {
        let map = self.map.lock();
        let mut v: Vec<CertificateView> = map
            .values()
            .map(|e| CertificateView {
                fingerprint: e.cert.fingerprint.clone(),
                subject: e.cert.subject.clone(),
                issuer: e.cert.issuer.clone(),
                serial: e.cert.serial.clone(),
                identity: e.cert.identity.clone(),
                not_before: e.cert.not_before,
                not_after: e.cert.not_after,
                first_seen: e.first_seen,
                last_seen: e.last_seen,
                last_peer: e.last_peer.to_string(),
                handshakes: e.handshakes,
                revoked: revoked.iter().any(|r| r.revokes(&e.cert.chain)),
                connected: connected(&e.cert.chain.leaf),
            })
            .collect();
        v.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.fingerprint.cmp(&b.fingerprint)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> (Vec<u8>, SeenCert) {
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let der = params.self_signed(&ca).unwrap().der().to_vec();
        let seen = SeenCert::from_der(&der, None, Some(cn.to_owned())).unwrap();
        (der, seen)
    }

    #[test]
    fn a_certificate_is_listed_once_with_its_subject_and_handshakes_counted() {
        let seen = CertsSeen::default();
        let (_, c) = cert("dev-1");
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        seen.record(c.clone(), peer);
        seen.record(c.clone(), "127.0.0.2:4001".parse().unwrap());
        let list = seen.list(&[], |_| 1);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].subject, "CN=dev-1");
        assert_eq!(list[0].identity.as_deref(), Some("dev-1"));
        assert_eq!(list[0].handshakes, 2);
        assert_eq!(list[0].last_peer, "127.0.0.2:4001");
        assert_eq!(list[0].fingerprint.len(), 64);
        assert!(list[0].not_after > list[0].not_before);
        assert!(!list[0].revoked);
        assert_eq!(seen.subject_of(&c.chain.leaf).unwrap().0, "CN=dev-1");
    }

    #[test]
    fn not_a_certificate_is_not_recorded() {
        assert!(SeenCert::from_der(b"garbage", None, None).is_none());
    }

    #[test]
    fn the_map_is_bounded() {
        let seen = CertsSeen::default();
        let (_, c) = cert("dev");
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for i in 0..(CertsSeen::CAP + 5) {
            let mut c = c.clone();
            c.chain = CertChain::leaf(CertRef { issuer: Box::default(), serial: (i as u64).to_be_bytes().into() });
            seen.record(c, peer);
        }
        assert_eq!(seen.list(&[], |_| 0).len(), CertsSeen::CAP);
    }
}
