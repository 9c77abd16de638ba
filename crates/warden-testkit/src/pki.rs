//! A test PKI made with rcgen: a CA, a server certificate for localhost/127.0.0.1, client
//! certificates (valid, expired, not yet valid, from a foreign CA, without clientAuth), CRLs,
//! and a TLS client that speaks raw MQTT over rustls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA that signs certificates into a directory.
pub struct TestPki {
    /// Where the files are written.
    pub dir: PathBuf,
    name: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    next_serial: std::cell::Cell<u64>,
    /// PEM of the intermediate CAs between this CA and the root, appended to every leaf file
    /// (empty for a root).
    chain_pem: String,
    /// This CA's serial number as its issuer gave it (0 for a root).
    pub serial: u64,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM PKCS#8 key.
    pub key: PathBuf,
    /// Serial number (for CRLs).
    pub serial: u64,
}

/// How a client certificate should be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid now (2020–2099).
    Valid,
    /// Expired (2020–2021).
    Expired,
    /// Not yet valid (2090–2099).
    NotYetValid,
}

impl TestPki {
    /// A CA named `name` writing into `dir` (`{name}-ca.pem`), plus `server.pem`/`server.key`
    /// for localhost and 127.0.0.1 signed by it.
    pub fn new(dir: &Path, name: &str) -> TestPki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} test CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let ca_key = KeyPair::generate().expect("key");
        let ca = params.self_signed(&ca_key).expect("ca");
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).expect("write ca");
        let pki = TestPki {
            dir: dir.to_owned(),
            name: name.to_owned(),
            ca,
            ca_key,
            next_serial: std::cell::Cell::new(100),
            chain_pem: String::new(),
            serial: 0,
        };
        pki.leaf("server", |p| {
            p.subject_alt_names = vec![
                rcgen::SanType::DnsName("localhost".try_into().expect("dns")),
                rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")),
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        pki
    }

    /// An intermediate CA named `name` signed by this one, writing into the same directory;
    /// its leaf certificate files carry the chain up to (not including) the root, as a device
    /// presents it. Its CRLs are signed by it; this CA's CRL may revoke it by `serial`.
    pub fn intermediate(&self, name: &str) -> TestPki {
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} test intermediate CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let ca_key = KeyPair::generate().expect("key");
        let ca = params.signed_by(&ca_key, &self.ca, &self.ca_key).expect("intermediate");
        std::fs::write(self.dir.join(format!("{name}-ca.pem")), ca.pem()).expect("write intermediate");
        let chain_pem = format!("{}{}", ca.pem(), self.chain_pem);
        TestPki {
            dir: self.dir.clone(),
            name: name.to_owned(),
            ca,
            ca_key,
            next_serial: std::cell::Cell::new(1000),
            chain_pem,
            serial,
        }
    }

    /// The CA certificate file.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Write this CA's certificate and key as `dir/ca.pem` + `dir/ca.key` (the layout `warden
    /// cert ca` makes, which `[enroll] ca_dir` signs with); returns `dir`.
    pub fn write_ca_dir(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("ca dir");
        std::fs::write(dir.join("ca.pem"), self.ca.pem()).expect("write ca.pem");
        std::fs::write(dir.join("ca.key"), self.ca_key.serialize_pem()).expect("write ca.key");
        dir.to_owned()
    }

    /// The server certificate and key (written by [`TestPki::new`]).
    pub fn server(&self) -> CertFiles {
        CertFiles { cert: self.dir.join("server.pem"), key: self.dir.join("server.key"), serial: 0 }
    }

    /// Sign a leaf certificate; `adjust` sets its names and extensions.
    pub fn leaf(&self, file: &str, adjust: impl FnOnce(&mut CertificateParams)) -> CertFiles {
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = DistinguishedName::new();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        p.serial_number = Some(SerialNumber::from(serial));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        adjust(&mut p);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).expect("sign");
        let files =
            CertFiles { cert: self.dir.join(format!("{file}.pem")), key: self.dir.join(format!("{file}.key")), serial };
        std::fs::write(&files.cert, format!("{}{}", cert.pem(), self.chain_pem)).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A client certificate with subject `CN=cn` and clientAuth.
    pub fn client(&self, cn: &str, validity: Validity) -> CertFiles {
        let safe: String = cn.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        self.leaf(&format!("{}-{safe}-{validity:?}", self.name), |p| {
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let (a, b) = match validity {
                Validity::Valid => ((2020, 1, 1), (2099, 1, 1)),
                Validity::Expired => ((2020, 1, 1), (2021, 1, 1)),
                Validity::NotYetValid => ((2090, 1, 1), (2099, 1, 1)),
            };
            p.not_before = rcgen::date_time_ymd(a.0, a.1, a.2);
            p.not_after = rcgen::date_time_ymd(b.0, b.1, b.2);
        })
    }

    /// A CRL (PEM) revoking these serials, written to `file`.
    pub fn crl(&self, file: &str, revoked: &[u64]) -> PathBuf {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca, &self.ca_key).expect("crl");
        let path = self.dir.join(file);
        std::fs::write(&path, crl.pem().expect("crl pem")).expect("write crl");
        path
    }
}

/// A DER TLV (short or long form length).
fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    match body.len() {
        n @ 0..=127 => v.push(n as u8),
        n @ 128..=255 => v.extend([0x81, n as u8]),
        n => v.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    v.extend_from_slice(body);
    v
}

/// A DER CRL of issuer `CN=ca` revoking serial 5, with a CRL Number extension or without one
/// (RFC 5280 §5.2.3 requires it; rcgen always writes one). Its signature is not valid: it is
/// for the checks that come before a signature is verified.
pub fn crl_der(with_number: bool) -> Vec<u8> {
    let alg = tlv(0x30, &tlv(0x06, &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02])); // ecdsa-with-SHA256
    let cn = [tlv(0x06, &[0x55, 0x04, 0x03]), tlv(0x0C, b"ca")].concat();
    let issuer = tlv(0x30, &tlv(0x31, &tlv(0x30, &cn)));
    let time = tlv(0x17, b"200101000000Z");
    let entry = tlv(0x30, &[tlv(0x02, &[5]), time.clone()].concat());
    let mut tbs = [tlv(0x02, &[1]), alg.clone(), issuer, time.clone(), time, tlv(0x30, &entry)].concat();
    if with_number {
        let number = tlv(0x30, &[tlv(0x06, &[0x55, 0x1D, 0x14]), tlv(0x04, &tlv(0x02, &[1]))].concat());
        tbs.extend(tlv(0xA0, &tlv(0x30, &number)));
    }
    tlv(0x30, &[tlv(0x30, &tbs), alg, tlv(0x03, &[0, 1, 2, 3])].concat())
}

/// A TLS connection to the broker trusting `ca`, presenting `client` if given.
/// Returns the handshake error as text when the broker refuses.
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&CertFiles>,
) -> Result<TlsStream<TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca").map(|c| c.expect("ca cert")) {
        roots.add(c).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&c.cert).expect("cert").map(|c| c.expect("cert")).collect();
            let key = PrivateKeyDer::from_pem_file(&c.key).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let sock = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut stream =
        connector.connect(ServerName::try_from("localhost").expect("name"), sock).await.map_err(|e| e.to_string())?;
    // With TLS 1.3 a refused client certificate surfaces on the first read: probe with a
    // zero-length write + flush so callers see the refusal at the MQTT layer instead.
    use tokio::io::AsyncWriteExt;
    stream.flush().await.map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Run `warden cert ARGS --dir DIR` with the broker binary `bin` (an integration test's
/// `env!("CARGO_BIN_EXE_warden")`): the development PKI and CRL a real operator would make.
/// Panics, with its stderr, when the command fails.
pub fn warden_cert(bin: &str, dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(bin)
        .arg("cert")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    assert!(out.status.success(), "cert {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
