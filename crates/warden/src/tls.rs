//! TLS for mqtts/wss listeners (rustls, TLS 1.2 and 1.3 only, the `ring` provider).
//!
//! Each TLS listener holds its current `rustls::ServerConfig` behind a lock; every accepted
//! connection takes the config in force at that moment, so a reload (SIGHUP) swaps
//! certificates, keys, client CAs and CRLs for new connections without dropping live ones. A
//! reload that fails (unreadable file, key not matching the certificate, bad CRL) is refused
//! with a log line and the old config stays in force.
//!
//! Client certificates are verified by webpki against `client_ca`: chain, validity period,
//! extended key usage (clientAuth) and, when CRLs are configured, revocation of the end-entity
//! certificate (an unknown revocation status is refused). The principal is then taken from the
//! leaf certificate by `warden_policy::cert` (ambiguous subjects are refused, never guessed).
//!
//! Session resumption (`session_tickets`, default on; off: no resumption at all): TLS 1.3 (and 1.2) stateless tickets
//! from rustls' ring `Ticketer` (random ChaCha20-Poly1305 keys held in memory only, rotated
//! every 6 hours; a ticket lives at most 12 hours), so a fleet reconnecting after a network
//! blip or a broker restart of its load balancer does not pay a full handshake each. The
//! ticketer outlives a reload (a CRL refresh must not turn into a handshake storm) unless the
//! client CA or `client_cert` changed. A resumed session carries the client's certificate
//! chain from its first handshake, but webpki does not run again: [`TlsListener::accept`]
//! re-checks what could have changed since — the listener's CRLs in force now, the leaf's
//! validity period, a required certificate being present — and the principal is taken from
//! that chain exactly as after a full handshake, so the device registry and the cluster's CRLs
//! apply the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::logsafe::Escaped;
use parking_lot::RwLock;
use rustls::server::{ProducesTickets, WebPkiClientVerifier};
use rustls::{HandshakeKind, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};
use warden_policy::cert::identity_from_der;
use warden_policy::trust::{CertChain, RevokedCerts};

use crate::config::{ClientCertMode, CrlScope, TlsConfig};

/// What the TLS layer proved about the client: nothing (no certificate), or a verified
/// certificate with the principal name taken from it (or the reason its identity is refused).
pub type CertIdentity = Option<ClientCert>;

/// A verified client certificate: the principal name taken from it (or why none can be) and
/// the certificates a CRL names.
pub use warden_policy::authn::ClientCert;

/// A TLS listener's reloadable server configuration.
pub struct TlsListener {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The certificates its CRLs revoke (for connections made before a reload).
    revoked: RwLock<Arc<RevokedCerts>>,
    /// The certificates the other nodes of the cluster's CRLs revoke (SPEC §11,
    /// [`crate::admin::cluster_sync::CRL_REVOKED`]): refused after the handshake.
    peer_revoked: RwLock<Arc<RevokedCerts>>,
    /// The session ticket keys (`session_tickets`), kept across reloads while the client
    /// authentication settings stay the same; `None` when tickets are off.
    tickets: RwLock<Option<Tickets>>,
}

/// A ticketer and the client authentication it issued tickets under (the client CA file's
/// bytes and the `client_cert` mode): when that changes, a new ticketer makes every older
/// ticket useless, so no session verified against a CA no longer trusted is resumed.
struct Tickets {
    client_auth: (Option<Vec<u8>>, ClientCertMode),
    ticketer: Arc<dyn ProducesTickets>,
}

impl Tickets {
    fn client_auth(settings: &TlsConfig) -> Result<(Option<Vec<u8>>, ClientCertMode), TlsError> {
        let ca = match &settings.client_ca {
            None => None,
            Some(p) => Some(std::fs::read(p).map_err(|e| TlsError::Read {
                path: p.clone(),
                what: "client CA",
                source: rustls::pki_types::pem::Error::Io(e),
            })?),
        };
        Ok((ca, settings.client_cert))
    }

    /// The ticketer for `settings`: `previous`'s while the client authentication is the same,
    /// else a new one (`None` with `session_tickets = false`).
    fn for_settings(settings: &TlsConfig, previous: Option<&Tickets>) -> Result<Option<Tickets>, TlsError> {
        if !settings.session_tickets {
            return Ok(None);
        }
        let client_auth = Tickets::client_auth(settings)?;
        if let Some(p) = previous.filter(|p| p.client_auth == client_auth) {
            return Ok(Some(Tickets { client_auth, ticketer: p.ticketer.clone() }));
        }
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::Config { context: "TLS session tickets".into(), detail: e.to_string() })?;
        Ok(Some(Tickets { client_auth, ticketer }))
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("cert", &self.settings.cert).finish_non_exhaustive()
    }
}

/// Why TLS material could not be loaded: each names the file and what it was for.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be opened or read.
    #[error("{}: cannot read {what}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What it holds (`server certificate`, `client CA`, `CRL`, …).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file was read but its content is not what it should be.
    #[error("{}: {what}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (`invalid CRL`, `unusable CA certificate`, …).
        what: String,
        /// The parser's or rustls' words.
        detail: String,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate found in {what} (PEM expected)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// rustls refused the combination (protocol versions, certificate and key).
    #[error("{context}: {detail}")]
    Config {
        /// What was being built (`TLS protocol versions`, `cert.pem / key.pem`).
        context: String,
        /// rustls' words.
        detail: String,
    },
}

fn invalid(path: &Path, what: impl Into<String>, detail: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid { path: path.to_owned(), what: what.into(), detail: detail.to_string() }
}

fn versions_error(e: rustls::Error) -> TlsError {
    TlsError::Config { context: "TLS protocol versions".into(), detail: e.to_string() }
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::Read { path: path.to_owned(), what, source })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("invalid {what}"), e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned(), what });
    }
    Ok(certs)
}

fn read_crl(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        what: "CRL",
        source: rustls::pki_types::pem::Error::Io(e),
    })?;
    if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(path, "invalid CRL", e))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// Build a server config from the files named in `settings` (without session tickets: the
/// listener adds its own, [`TlsListener`]).
pub fn server_config(settings: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&settings.cert, "server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .map_err(|e| invalid(&settings.key, "cannot read the private key (PEM PKCS#8, PKCS#1 or SEC1)", e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(versions_error)?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, "client CA")? {
                roots.add(c).map_err(|e| invalid(ca, "unusable CA certificate", e))?;
            }
            let mut crls = Vec::new();
            for p in &settings.crls {
                crls.extend(read_crl(p)?);
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).with_crls(crls);
            if settings.crl_scope == CrlScope::EndEntity {
                v = v.only_check_end_entity_revocation();
            }
            if settings.client_cert == ClientCertMode::Optional {
                v = v.allow_unauthenticated();
            }
            let verifier = v.build().map_err(|e| invalid(ca, "client certificate verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(certs, key).map_err(|e| TlsError::Config {
        context: format!("{} / {}", settings.cert.display(), settings.key.display()),
        detail: e.to_string(),
    })
}

/// The certificates revoked by the CRLs named in `settings`.
fn revoked_certs(settings: &TlsConfig) -> Result<RevokedCerts, TlsError> {
    let mut revoked = RevokedCerts::default();
    for p in &settings.crls {
        for der in read_crl(p)? {
            revoked
                .add_der(der.as_ref())
                .map_err(|e| TlsError::Config { context: p.display().to_string(), detail: e.to_string() })?;
        }
    }
    Ok(revoked)
}

impl TlsListener {
    /// Load the listener's certificate, key, client CA and CRLs.
    pub fn load(settings: &TlsConfig) -> Result<TlsListener, TlsError> {
        // The CRLs first: their errors name the CRL file (the verifier's would name the CA).
        let revoked = revoked_certs(settings)?;
        let tickets = Tickets::for_settings(settings, None)?;
        let cfg = with_tickets(server_config(settings)?, tickets.as_ref());
        Ok(TlsListener {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(cfg)),
            revoked: RwLock::new(Arc::new(revoked)),
            peer_revoked: RwLock::new(Arc::new(RevokedCerts::default())),
            tickets: RwLock::new(tickets),
        })
    }

    /// Re-read every file; on error the config in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let revoked = revoked_certs(&self.settings)?;
        let tickets = Tickets::for_settings(&self.settings, self.tickets.read().as_ref())?;
        let cfg = with_tickets(server_config(&self.settings)?, tickets.as_ref());
        *self.current.write() = Arc::new(cfg);
        *self.revoked.write() = Arc::new(revoked);
        *self.tickets.write() = tickets;
        Ok(())
    }

    /// Why a resumed session is refused now, if it is: the checks of a full handshake that
    /// can give another answer since the session's first handshake (webpki does not run on
    /// resumption). The chain and the principal are the first handshake's, as rustls keeps them.
    fn refuse_resumed(&self, identity: &CertIdentity, leaf: Option<&CertificateDer<'_>>) -> Option<&'static str> {
        let Some(leaf) = leaf else {
            let required = self.settings.client_ca.is_some() && self.settings.client_cert == ClientCertMode::Required;
            return required.then_some("the listener requires a client certificate");
        };
        if identity.as_ref().and_then(|c| c.cert.as_ref()).is_some_and(|c| self.revoked.read().revokes(c)) {
            return Some("a CRL of this listener revokes the client certificate");
        }
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
            return Some("the client certificate cannot be parsed");
        };
        let now = x509_parser::time::ASN1Time::now();
        if now < cert.validity().not_before || now > cert.validity().not_after {
            return Some("the client certificate is outside its validity period");
        }
        None
    }

    /// The certificates this listener's CRLs revoke now.
    pub fn revoked(&self) -> Arc<RevokedCerts> {
        self.revoked.read().clone()
    }

    /// The certificates the other nodes' CRLs revoke now (kept until the next set).
    pub fn set_peer_revoked(&self, revoked: Arc<RevokedCerts>) {
        *self.peer_revoked.write() = revoked;
    }

    /// The certificates the other nodes' CRLs revoke.
    pub fn peer_revoked(&self) -> Arc<RevokedCerts> {
        self.peer_revoked.read().clone()
    }

    /// The certificate file (for log lines).
    pub fn cert_path(&self) -> &Path {
        &self.settings.cert
    }

    /// Run the TLS handshake and take the client's identity from its certificate.
    /// Failures are logged with the peer address and the reason (never key material).
    /// The third value describes the client's certificate for the admin API's list of
    /// certificates seen.
    pub async fn accept(
        &self,
        sock: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, CertIdentity, Option<crate::certs_seen::SeenCert>)> {
        let acceptor = TlsAcceptor::from(self.current.read().clone());
        match acceptor.accept(sock).await {
            Ok(stream) => {
                let conn = stream.get_ref().1;
                let chain = conn.peer_certificates().unwrap_or_default();
                let identity = chain.first().map(|leaf| ClientCert {
                    identity: identity_from_der(leaf.as_ref(), self.settings.identity_from_cert),
                    cert: match self.settings.crl_scope {
                        CrlScope::Chain => CertChain::from_ders(chain.iter().map(|c| c.as_ref())),
                        CrlScope::EndEntity => CertChain::from_ders(chain.iter().take(1).map(|c| c.as_ref())),
                    },
                });
                if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
                    if let Some(reason) = self.refuse_resumed(&identity, chain.first()) {
                        info!(%peer, reason, "resumed TLS session refused");
                        return None;
                    }
                }
                if let Some(ClientCert { identity: Err(e), .. }) = &identity {
                    info!(%peer, reason = %Escaped(e), "client certificate identity refused");
                }
                // Revoked by another node's CRL (the handshake checked this node's own).
                if identity.as_ref().and_then(|c| c.cert.as_ref()).is_some_and(|c| self.peer_revoked.read().revokes(c))
                {
                    info!(%peer, "TLS connection refused: a CRL of another node of the cluster revokes the client certificate");
                    return None;
                }
                let seen = match (chain.first(), &identity) {
                    (Some(leaf), Some(id)) => crate::certs_seen::SeenCert::from_der(
                        leaf.as_ref(),
                        id.cert.clone(),
                        id.identity.as_ref().ok().cloned(),
                    ),
                    _ => None,
                };
                Some((stream, identity, seen))
            }
            Err(e) => {
                info!(%peer, reason = %e, "TLS handshake failed");
                None
            }
        }
    }
}

impl TlsListener {
    /// The TLS handshake alone, for the HTTP listener (a client certificate, when `client_ca`
    /// is set, is verified by the handshake; no principal is taken from it). Failures are
    /// logged with the peer address and the reason.
    pub async fn handshake(&self, sock: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
        let acceptor = TlsAcceptor::from(self.current.read().clone());
        match acceptor.accept(sock).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                info!(%peer, reason = %e, "HTTPS: TLS handshake failed");
                None
            }
        }
    }
}

/// `cfg` issuing session tickets from `tickets`; none (`session_tickets = false`): no
/// resumption at all, every connection a full handshake (not rustls' default 256-session cache).
fn with_tickets(mut cfg: ServerConfig, tickets: Option<&Tickets>) -> ServerConfig {
    match tickets {
        Some(t) => cfg.ticketer = t.ticketer.clone(),
        None => {
            cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            cfg.send_tls13_tickets = 0;
        }
    }
    cfg
}

/// The CA certificate of the development PKI the embedded default configuration serves HTTPS
/// with (`./warden-data/tls/ca.pem`): what `warden token` and `warden admin` trust by default.
pub const DEV_CA: &str = "./warden-data/tls/ca.pem";

/// A TLS client configuration for the CLI's HTTP clients: trusting the CA certificates in
/// `cacert` (PEM) when given, else `None` (the client's own roots).
pub fn client_config(cacert: Option<&Path>) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let Some(path) = cacert else { return Ok(None) };
    let mut roots = RootCertStore::empty();
    for c in read_certs(path, "CA certificate")? {
        roots.add(c).map_err(|e| invalid(path, "unusable CA certificate", e))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(versions_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(cfg)))
}

/// The CA file a CLI client trusts: `--cacert` when given, else the development CA when the
/// URL is the embedded default's (`https://127.0.0.1:8080` or `https://localhost:8080`) and
/// that file exists.
pub fn cli_cacert(given: Option<&Path>, url: &str) -> Option<std::path::PathBuf> {
    if let Some(p) = given {
        return Some(p.to_owned());
    }
    let url = url.trim_end_matches('/');
    let default = url == "https://127.0.0.1:8080" || url == "https://localhost:8080";
    (default && Path::new(DEV_CA).is_file()).then(|| DEV_CA.into())
}

/// An HTTP agent for the CLI, trusting `cacert` (PEM) when given.
pub fn cli_agent(cacert: Option<&Path>) -> Result<ureq::Agent, TlsError> {
    let mut b = ureq::AgentBuilder::new();
    if let Some(cfg) = client_config(cacert)? {
        b = b.tls_config(cfg);
    }
    Ok(b.build())
}

/// Reload every TLS listener (logging the outcome); returns the certificates their CRLs
/// revoke now (all listeners together: an issuer and serial name one certificate).
pub fn reload_all(listeners: &[Arc<TlsListener>]) -> RevokedCerts {
    let mut all = RevokedCerts::default();
    for l in listeners {
        match l.reload() {
            Ok(()) => info!(cert = %l.cert_path().display(), "TLS certificates reloaded"),
            Err(e) => warn!(error = %e, "TLS reload failed; the previous certificates stay in force"),
        }
        all.extend(&l.revoked());
    }
    all
}
