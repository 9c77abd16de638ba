//! `warden cert ca|server|client`: a development PKI (rcgen) for people who have none yet.
//!
//! - `warden cert ca` makes `DIR/ca.pem` + `DIR/ca.key` (ECDSA P-256, CA:TRUE);
//! - `warden cert server` signs `DIR/NAME.pem` (leaf then CA: a chain) + `DIR/NAME.key`
//!   (EKU serverAuth, SANs from `--san`);
//! - `warden cert client --cn DEVICE_ID` signs `DIR/NAME.pem` + `DIR/NAME.key` (EKU clientAuth,
//!   subject CN = the device id, which becomes the principal with `identity_from_cert = "cn"`).
//!
//! - `warden cert revoke --cn DEVICE_ID` (or `--cert FILE`) revokes device certificates and
//!   rewrites `DIR/ca.crl`, a CRL signed by the CA with an increasing CRL number; `warden cert
//!   crl` re-signs it (a fresh nextUpdate) without revoking anything.
//!
//! `warden cert client` records what it issues (serial, CN, notAfter) in `DIR/issued.json`;
//! revocations are kept in `DIR/revoked.json` (with the CRL number last used), and the CRL is
//! always rebuilt from that record, so a lost or damaged `ca.crl` is simply written again.
//!
//! Private keys are PKCS#8 PEM written with mode 0600. Existing files are never overwritten
//! without `--force`. [`ensure_dev_pki`] is what the embedded default configuration uses.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::fsutil::write_atomically_with_mode;
use crate::pki::{
    ca_paths, der_parts, dn, leaf_params, new_key, pem_first_cert, random_serial, read_json, serial_hex, shell_word,
    unix_now, validity, write_crl, write_json, Issued, IssuedLog, IssuedRecord, LoadedCa, RevokedLog, RevokedRecord,
    ISSUED_FILE, REVOKED_FILE,
};
use anyhow::{bail, Context};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};

/// Default subject CN of a CA made by `warden cert ca` and by [`ensure_dev_pki`].
pub const DEFAULT_CA_CN: &str = "Warden Development CA";
const DEFAULT_CA_DAYS: u32 = 3650;
const DEFAULT_SERVER_DAYS: u32 = 825;
const DEFAULT_CLIENT_DAYS: u32 = 365;
const DEFAULT_CRL_DAYS: u32 = 30;
/// SANs of a server certificate when no `--san` is given (and of the embedded default's).
const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// `warden cert …` arguments.
#[derive(clap::Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CertCommand {
    /// Make a development CA: DIR/ca.pem and DIR/ca.key (ECDSA P-256).
    Ca(CaArgs),
    /// Sign a server certificate with DIR/ca.pem + DIR/ca.key: DIR/NAME.pem (chain) and DIR/NAME.key.
    Server(ServerArgs),
    /// Sign a device (client) certificate whose subject CN is the device id: DIR/NAME.pem and DIR/NAME.key.
    Client(ClientArgs),
    /// Revoke device certificates issued by DIR's CA and rewrite DIR/ca.crl (TLS listeners with
    /// `crl = "DIR/ca.crl"` apply it on SIGHUP).
    Revoke(RevokeArgs),
    /// Re-sign DIR/ca.crl from DIR/revoked.json (a new CRL number and nextUpdate), revoking nothing.
    Crl(CrlArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["cn", "cert"])))]
struct RevokeArgs {
    /// Directory holding ca.pem, ca.key and issued.json; ca.crl and revoked.json are written there.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Revoke every certificate `warden cert client` issued for this device id (subject CN).
    #[arg(long, value_name = "DEVICE_ID")]
    cn: Option<String>,
    /// Revoke this certificate (PEM), e.g. one issued before issued.json was kept.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Days until the CRL's nextUpdate (re-sign it before then with `warden cert crl`).
    #[arg(long, default_value_t = DEFAULT_CRL_DAYS, value_parser = days_parser())]
    crl_days: u32,
}

#[derive(clap::Args, Debug)]
struct CrlArgs {
    /// Directory holding ca.pem, ca.key and revoked.json; ca.crl is written there.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Days until the CRL's nextUpdate.
    #[arg(long, default_value_t = DEFAULT_CRL_DAYS, value_parser = days_parser())]
    crl_days: u32,
}

#[derive(clap::Args, Debug)]
struct CaArgs {
    /// Directory to write ca.pem and ca.key into (created when missing).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Subject common name of the CA.
    #[arg(long, default_value = DEFAULT_CA_CN)]
    cn: String,
    /// Validity in days.
    #[arg(long, default_value_t = DEFAULT_CA_DAYS, value_parser = days_parser())]
    days: u32,
    /// Overwrite an existing ca.pem / ca.key.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Directory holding ca.pem and ca.key, and where the certificate and key are written.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Subject alternative name (repeatable): an IP address becomes an IP SAN, anything else a DNS
    /// name. Default: localhost, 127.0.0.1 and ::1.
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    sans: Vec<String>,
    /// Subject common name (default: the first SAN).
    #[arg(long)]
    cn: Option<String>,
    /// Validity in days (clamped to the CA's expiry).
    #[arg(long, default_value_t = DEFAULT_SERVER_DAYS, value_parser = days_parser())]
    days: u32,
    /// Base name of the output files: DIR/NAME.pem and DIR/NAME.key.
    #[arg(long, value_name = "NAME", default_value = "server")]
    out: String,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// Device id: the certificate's subject common name (the principal with identity_from_cert = "cn").
    #[arg(long, value_name = "DEVICE_ID")]
    cn: String,
    /// Directory holding ca.pem and ca.key, and where the certificate and key are written.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Validity in days (clamped to the CA's expiry).
    #[arg(long, default_value_t = DEFAULT_CLIENT_DAYS, value_parser = days_parser())]
    days: u32,
    /// Base name of the output files: DIR/NAME.pem and DIR/NAME.key (default: the CN).
    #[arg(long, value_name = "NAME")]
    out: Option<String>,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
}

fn days_parser() -> clap::builder::RangedU64ValueParser<u32> {
    // Up to ~100 years: far enough for anyone, near enough to stay a valid date.
    clap::builder::RangedU64ValueParser::<u32>::new().range(1..=36_500)
}

/// Run `warden cert …`.
pub fn run(args: &CertArgs) -> anyhow::Result<()> {
    match &args.command {
        CertCommand::Ca(a) => {
            let (cert, key) = ca_paths(&a.dir);
            refuse_overwrite(&[&cert, &key], a.force)?;
            create_dir(&a.dir)?;
            let (cert_pem, key_pem) = make_ca(&a.cn, a.days)?;
            write_pair(&cert, &cert_pem, &key, &key_pem)?;
            print_written("CA certificate", &cert, &key);
            println!(
                "next: warden cert server --dir {dir}   and   warden cert client --dir {dir} --cn DEVICE_ID",
                dir = shell_word(&a.dir)
            );
        }
        CertCommand::Server(a) => {
            let out = out_name(&a.out)?;
            let sans =
                if a.sans.is_empty() { DEFAULT_SANS.iter().map(|s| s.to_string()).collect() } else { a.sans.clone() };
            let (cert, key) = leaf_paths(&a.dir, out);
            refuse_overwrite(&[&cert, &key], a.force)?;
            let ca = LoadedCa::load(&a.dir)?;
            let leaf = issue_server(&ca, &sans, a.cn.as_deref(), a.days)?;
            leaf.write(&cert, &key)?;
            print_written("server certificate chain", &cert, &key);
        }
        CertCommand::Client(a) => {
            validate_device_id(&a.cn)?;
            let out = out_name(a.out.as_deref().unwrap_or(&a.cn))?;
            let (cert, key) = leaf_paths(&a.dir, out);
            refuse_overwrite(&[&cert, &key], a.force)?;
            let ca = LoadedCa::load(&a.dir)?;
            let leaf = issue_client(&ca, &a.cn, a.days)?;
            leaf.write(&cert, &key)?;
            print_written(&format!("client certificate for {:?}", a.cn), &cert, &key);
            record_issued(&a.dir, &ca, &leaf, &a.cn, &cert)?;
        }
        CertCommand::Revoke(a) => revoke(a)?,
        CertCommand::Crl(a) => {
            let ca = LoadedCa::load(&a.dir)?;
            let path = a.dir.join(REVOKED_FILE);
            let mut log: RevokedLog = read_json(&path)?;
            let (crl, count) = write_crl(&a.dir, &ca, &mut log, a.crl_days)?;
            println!("wrote {} (CRL number {}, {count} revoked certificate(s))", crl.display(), log.crl_number);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Revocation

/// What revocation needs to know about one certificate.
struct CertFacts {
    serial: String,
    cn: String,
    not_after: i64,
    issuer: Vec<u8>,
}

fn cert_facts(der: &[u8]) -> anyhow::Result<CertFacts> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("not a certificate: {e}"))?;
    let parts = der_parts(der).context("malformed certificate")?;
    let cn = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or("").to_string();
    Ok(CertFacts {
        serial: serial_hex(cert.tbs_certificate.raw_serial()),
        cn,
        not_after: cert.validity().not_after.timestamp(),
        issuer: parts.issuer.to_vec(),
    })
}

/// Append what `cert client` just issued to DIR/issued.json.
fn record_issued(dir: &Path, ca: &LoadedCa, leaf: &Issued, cn: &str, file: &Path) -> anyhow::Result<()> {
    let der = pem_first_cert(&leaf.chain_pem).context("the new certificate")?;
    let facts = cert_facts(&der)?;
    let path = dir.join(ISSUED_FILE);
    let mut log: IssuedLog = read_json(&path)?;
    log.certificates.push(IssuedRecord {
        serial: facts.serial,
        cn: cn.to_string(),
        not_after: facts.not_after,
        ca_serial: ca.serial.clone(),
        file: file.to_path_buf(),
        fingerprint: Some(warden_policy::cert::sha256_fingerprint(&der)),
    });
    write_json(&path, &log)
}

fn revoke(a: &RevokeArgs) -> anyhow::Result<()> {
    let ca = LoadedCa::load(&a.dir)?;
    let ca_subject = der_parts(&ca.der).context("malformed CA certificate")?.subject.to_vec();
    let mut targets: Vec<(String, String)> = Vec::new();
    if let Some(file) = &a.cert {
        let pem = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let der = pem_first_cert(&pem).with_context(|| format!("{}: no PEM certificate", file.display()))?;
        let facts = cert_facts(&der).with_context(|| file.display().to_string())?;
        if facts.issuer != ca_subject {
            bail!("{} was not issued by the CA {}", file.display(), ca.cert_path.display());
        }
        targets.push((facts.serial, facts.cn));
    }
    if let Some(cn) = &a.cn {
        let issued: IssuedLog = read_json(&a.dir.join(ISSUED_FILE))?;
        let mut found: Vec<(String, String)> = issued
            .certificates
            .iter()
            .filter(|r| &r.cn == cn && r.ca_serial == ca.serial)
            .map(|r| (r.serial.clone(), r.cn.clone()))
            .collect();
        if found.is_empty() {
            // Issued before issued.json was kept: DIR/CN.pem, when this CA signed it.
            let guess = a.dir.join(format!("{cn}.pem"));
            if let Some(facts) = fs::read_to_string(&guess)
                .ok()
                .and_then(|pem| pem_first_cert(&pem))
                .and_then(|der| cert_facts(&der).ok())
                .filter(|f| f.issuer == ca_subject && &f.cn == cn)
            {
                found.push((facts.serial, facts.cn));
            }
        }
        if found.is_empty() {
            bail!(
                "no certificate for {cn:?} issued by {} is recorded in {} (for one made elsewhere or before \
                 `warden cert revoke` existed, pass --cert FILE)",
                ca.cert_path.display(),
                a.dir.join(ISSUED_FILE).display()
            );
        }
        targets.extend(found);
    }
    let path = a.dir.join(REVOKED_FILE);
    let mut log: RevokedLog = read_json(&path)?;
    let now = unix_now();
    for (serial, cn) in targets {
        if log.revoked.iter().any(|r| r.serial == serial && r.ca_serial == ca.serial) {
            println!("already revoked: serial {serial} ({cn:?})");
            continue;
        }
        println!("revoked: serial {serial} ({cn:?})");
        log.revoked.push(RevokedRecord { serial, cn, revoked_at: now, ca_serial: ca.serial.clone() });
    }
    let (crl, count) = write_crl(&a.dir, &ca, &mut log, a.crl_days)?;
    println!(
        "wrote {} (CRL number {}, {count} revoked certificate(s)); TLS listeners with crl = {:?} apply it on SIGHUP",
        crl.display(),
        log.crl_number,
        crl.display().to_string()
    );
    Ok(())
}

/// Paths of the development PKI the embedded default uses.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// Server certificate chain (PEM).
    pub server_cert: PathBuf,
    /// Server private key (PEM).
    pub server_key: PathBuf,
}

/// Create (if missing) a development CA and a server certificate for localhost/127.0.0.1
/// under `dir`. Returns the paths, and whether they were created now.
///
/// When `ca.pem` and `ca.key` exist but the server pair is incomplete, the existing CA is kept
/// (device certificates already issued by it stay valid) and only the server pair is made. When
/// exactly one of `ca.pem` / `ca.key` exists, this is an error rather than a silent overwrite.
pub fn ensure_dev_pki(dir: &Path) -> anyhow::Result<(DevPki, bool)> {
    let (ca_cert, ca_key) = ca_paths(dir);
    let (server_cert, server_key) = leaf_paths(dir, "server");
    let pki = DevPki { ca_cert: ca_cert.clone(), server_cert: server_cert.clone(), server_key: server_key.clone() };
    if [&ca_cert, &ca_key, &server_cert, &server_key].iter().all(|p| p.exists()) {
        return Ok((pki, false));
    }
    create_dir(dir)?;
    match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {}
        (false, false) => {
            let (cert_pem, key_pem) = make_ca(DEFAULT_CA_CN, DEFAULT_CA_DAYS)?;
            write_pair(&ca_cert, &cert_pem, &ca_key, &key_pem)?;
        }
        (true, false) => {
            bail!("{} exists but {} is missing: refusing to replace the CA", ca_cert.display(), ca_key.display())
        }
        (false, true) => {
            bail!("{} exists but {} is missing: refusing to replace the CA", ca_key.display(), ca_cert.display())
        }
    }
    let ca = LoadedCa::load(dir)?;
    let sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    issue_server(&ca, &sans, None, DEFAULT_SERVER_DAYS)?.write(&server_cert, &server_key)?;
    Ok((pki, true))
}

// ---------------------------------------------------------------------------------------------
// Generation

/// A new self-signed CA: (certificate PEM, PKCS#8 key PEM).
fn make_ca(cn: &str, days: u32) -> anyhow::Result<(String, String)> {
    if cn.is_empty() || cn.chars().any(char::is_control) {
        bail!("CA common name {cn:?} must be non-empty and contain no control characters");
    }
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained); // + subject key id
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    let (not_before, not_after) = validity(days)?;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params.self_signed(&key).context("signing the CA certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn issue_server(ca: &LoadedCa, sans: &[String], cn: Option<&str>, days: u32) -> anyhow::Result<Issued> {
    let mut san_types = Vec::with_capacity(sans.len());
    for san in sans {
        san_types.push(parse_san(san)?);
    }
    let Some(first) = sans.first() else { bail!("a server certificate needs at least one --san") };
    let cn = cn.unwrap_or(first);
    if cn.is_empty() || cn.chars().any(char::is_control) {
        bail!("server common name {cn:?} must be non-empty and contain no control characters");
    }
    let mut params = leaf_params(cn);
    params.subject_alt_names = san_types;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut issued = ca.sign(params, days)?;
    // A chain: leaf, then the CA certificate(s) as found in ca.pem.
    issued.chain_pem.push_str(&ca.pem);
    if !issued.chain_pem.ends_with('\n') {
        issued.chain_pem.push('\n');
    }
    Ok(issued)
}

fn issue_client(ca: &LoadedCa, device_id: &str, days: u32) -> anyhow::Result<Issued> {
    validate_device_id(device_id)?;
    let mut params = leaf_params(device_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    ca.sign(params, days)
}

/// An IP address becomes an IP SAN (also `[v6]`), anything else a DNS name.
fn parse_san(san: &str) -> anyhow::Result<SanType> {
    let bare = san.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(san);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !san.is_empty()
        && san.len() <= 253
        && san.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'));
    if !valid_dns {
        bail!("--san {san:?} is neither an IP address nor a DNS name (ASCII letters, digits, '-', '.', '*')");
    }
    let name = rcgen::Ia5String::try_from(san).map_err(|e| anyhow::anyhow!("--san {san:?}: {e}"))?;
    Ok(SanType::DnsName(name))
}

/// Refuse device ids Warden would refuse as certificate identities anyway.
fn validate_device_id(cn: &str) -> anyhow::Result<()> {
    const WHY: &str = "Warden refuses certificate identities that are empty or contain '+', '#', '/', '*', \
                       U+0000 or control characters, so a device with this certificate could never log in";
    if cn.is_empty() {
        bail!("client --cn is empty: {WHY}");
    }
    if let Some(c) = cn.chars().find(|c| matches!(c, '+' | '#' | '/' | '*') || c.is_control()) {
        bail!("client --cn {cn:?} contains {c:?}: {WHY}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// An existing CA

// ---------------------------------------------------------------------------------------------
// Files

fn leaf_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
}

/// `--out NAME`: a plain file name stem, and not the CA's.
fn out_name(name: &str) -> anyhow::Result<&str> {
    if name.is_empty() || name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
        bail!("--out {name:?}: expected a plain file name (no directory; use --dir for that)");
    }
    if name == "ca" {
        bail!("--out ca would replace the CA's own files; choose another name (or --out)");
    }
    Ok(name)
}

fn refuse_overwrite(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!("{} already exists; refusing to overwrite it (use --force to replace it)", p.display());
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn print_written(what: &str, cert: &Path, key: &Path) {
    println!("wrote {} ({what})", cert.display());
    println!("wrote {} (private key, mode 0600)", key.display());
}

impl Issued {
    fn write(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        write_pair(cert, &self.chain_pem, key, &self.key_pem)?;
        if let Some(note) = &self.note {
            eprintln!("warden: note: {note}");
        }
        Ok(())
    }
}

/// Write the key (mode 0600) then the certificate, each atomically.
fn write_pair(cert: &Path, cert_pem: &str, key: &Path, key_pem: &str) -> anyhow::Result<()> {
    write_atomically_with_mode(key, key_pem.as_bytes(), 0o600).with_context(|| format!("writing {}", key.display()))?;
    write_atomically_with_mode(cert, cert_pem.as_bytes(), 0o644).with_context(|| format!("writing {}", cert.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in ["dev-001", "a.b_c", "ü-device", "x y"] {
            assert!(validate_device_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "dev/1", "+", "#", "a*", "a\0b", "a\nb", "a\u{7f}"] {
            assert!(validate_device_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sans() {
        assert!(matches!(parse_san("127.0.0.1").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(parse_san("::1").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(parse_san("[::1]").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(parse_san("localhost").unwrap(), SanType::DnsName(_)));
        assert!(matches!(parse_san("*.example.com").unwrap(), SanType::DnsName(_)));
        assert!(parse_san("").is_err());
        assert!(parse_san("bad name").is_err());
        assert!(parse_san("bäd").is_err());
    }

    #[test]
    fn out_names() {
        assert!(out_name("server").is_ok());
        for bad in ["", "a/b", "..", "ca"] {
            assert!(out_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn der_walk_finds_fields() {
        let (cert_pem, key_pem) = make_ca("Test CA", 1).unwrap();
        let der = pem_first_cert(&cert_pem).unwrap();
        let parts = der_parts(&der).unwrap();
        assert_eq!(parts.issuer, parts.subject);
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(parts.spki, key.public_key_der().as_slice());
    }
}
