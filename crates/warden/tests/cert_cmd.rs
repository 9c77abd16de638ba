//! `warden cert ca|server|client` and `ensure_dev_pki`, checked with the real binary and with
//! the `openssl` CLI (skipped, with a message, where `openssl` is not installed).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn warden(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("cert")
        .args(args)
        .args(["--dir", dir.to_str().unwrap()])
        .output()
        .expect("running warden")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = warden(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "warden cert {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("PRIVATE KEY"), "key material printed: {stdout}");
    stdout
}

/// Runs `warden cert …` expecting failure; returns stderr.
fn refused(dir: &Path, args: &[&str]) -> String {
    let out = warden(dir, args);
    assert!(!out.status.success(), "warden cert {args:?} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn have_openssl() -> bool {
    let found = Command::new("openssl").arg("version").output().map(|o| o.status.success()).unwrap_or(false);
    if !found {
        println!("openssl not installed: skipping the openssl checks");
    }
    found
}

/// Runs openssl in `dir`; returns stdout+stderr and whether it succeeded.
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn assert_verifies(dir: &Path, purpose: &str, cert: &str) {
    let (ok, text) = openssl(dir, &["verify", "-purpose", purpose, "-CAfile", "ca.pem", cert]);
    assert!(ok && text.contains(&format!("{cert}: OK")), "openssl verify {cert}: {text}");
}

fn ext(dir: &Path, cert: &str, exts: &str) -> String {
    let (ok, text) = openssl(dir, &["x509", "-noout", "-in", cert, "-ext", exts]);
    assert!(ok, "openssl x509 -ext {exts} {cert}: {text}");
    text
}

/// The certificate's public key equals the private key's.
fn assert_key_matches(dir: &Path, cert: &str, key: &str) {
    let (ok1, from_cert) = openssl(dir, &["x509", "-noout", "-pubkey", "-in", cert]);
    let (ok2, from_key) = openssl(dir, &["pkey", "-pubout", "-in", key]);
    assert!(ok1 && ok2 && from_cert == from_key, "{cert} / {key} mismatch:\n{from_cert}\n{from_key}");
}

#[cfg(unix)]
fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
}
#[cfg(not(unix))]
fn assert_private(_: &Path) {}

fn assert_pkcs8_key(path: &Path) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{}: not PKCS#8 PEM", path.display());
    assert_private(path);
}

#[test]
fn ca_server_client_verify_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let out = ok(dir, &["ca"]);
    assert!(out.contains("ca.pem") && out.contains("ca.key"), "{out}");
    let out = ok(dir, &["server", "--san", "localhost", "--san", "127.0.0.1"]);
    assert!(out.contains("server.pem") && out.contains("server.key"), "{out}");
    let out = ok(dir, &["client", "--cn", "dev-001"]);
    assert!(out.contains("dev-001.pem") && out.contains("dev-001.key"), "{out}");

    for key in ["ca.key", "server.key", "dev-001.key"] {
        assert_pkcs8_key(&dir.join(key));
    }
    let chain = fs::read_to_string(dir.join("server.pem")).unwrap();
    assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2, "server.pem is leaf + CA");
    assert!(chain.ends_with(&fs::read_to_string(dir.join("ca.pem")).unwrap()));
    let client = fs::read_to_string(dir.join("dev-001.pem")).unwrap();
    assert_eq!(client.matches("-----BEGIN CERTIFICATE-----").count(), 1);

    if !have_openssl() {
        return;
    }
    assert_verifies(dir, "sslserver", "server.pem");
    assert_verifies(dir, "sslclient", "dev-001.pem");
    assert_key_matches(dir, "server.pem", "server.key");
    assert_key_matches(dir, "dev-001.pem", "dev-001.key");
    assert_key_matches(dir, "ca.pem", "ca.key");

    let ca = ext(dir, "ca.pem", "basicConstraints,keyUsage,subjectKeyIdentifier");
    assert!(ca.contains("Basic Constraints: critical") && ca.contains("CA:TRUE"), "{ca}");
    assert!(ca.contains("Key Usage: critical") && ca.contains("Certificate Sign, CRL Sign"), "{ca}");
    assert!(ca.contains("Subject Key Identifier"), "{ca}");
    let (_, subject) = openssl(dir, &["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", "ca.pem"]);
    assert_eq!(subject.trim(), "subject=CN=Warden Development CA");

    let server = ext(dir, "server.pem", "extendedKeyUsage,subjectAltName,basicConstraints,keyUsage");
    assert!(server.contains("TLS Web Server Authentication"), "{server}");
    assert!(!server.contains("TLS Web Client Authentication"), "{server}");
    assert!(server.contains("DNS:localhost, IP Address:127.0.0.1"), "{server}");
    assert!(server.contains("CA:FALSE"), "{server}");
    assert!(server.contains("Key Usage: critical") && server.contains("Digital Signature"), "{server}");
    let aki = ext(dir, "server.pem", "authorityKeyIdentifier");
    let ski = ext(dir, "ca.pem", "subjectKeyIdentifier");
    let ski_value = ski.lines().last().unwrap().trim();
    assert!(aki.contains(ski_value), "AKI {aki} does not name the CA's SKI {ski_value}");
    let (_, subject) = openssl(dir, &["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", "server.pem"]);
    assert_eq!(subject.trim(), "subject=CN=localhost");

    let dev = ext(dir, "dev-001.pem", "extendedKeyUsage,subjectAltName,keyUsage");
    assert!(dev.contains("TLS Web Client Authentication"), "{dev}");
    assert!(!dev.contains("TLS Web Server Authentication"), "{dev}");
    assert!(dev.contains("Digital Signature"), "{dev}");
    let (_, subject) = openssl(dir, &["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", "dev-001.pem"]);
    assert_eq!(subject.trim(), "subject=CN=dev-001");
}

#[test]
fn server_defaults_and_out_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["ca", "--cn", "Test CA", "--days", "30"]);
    ok(dir, &["server", "--out", "edge", "--cn", "broker.example", "--days", "7"]);
    ok(dir, &["client", "--cn", "sensor 7", "--out", "s7"]);
    assert!(dir.join("edge.pem").exists() && dir.join("edge.key").exists());
    assert!(dir.join("s7.pem").exists() && dir.join("s7.key").exists());
    assert!(!dir.join("server.pem").exists());
    if !have_openssl() {
        return;
    }
    assert_verifies(dir, "sslserver", "edge.pem");
    assert_verifies(dir, "sslclient", "s7.pem");
    let san = ext(dir, "edge.pem", "subjectAltName");
    assert!(san.contains("DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"), "{san}");
    let (_, subject) = openssl(dir, &["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", "s7.pem"]);
    assert_eq!(subject.trim(), "subject=CN=sensor 7");
    // A leaf never outlives its CA: 825-day request, 30-day CA.
    ok(dir, &["server", "--out", "long"]);
    let (_, ca_end) = openssl(dir, &["x509", "-noout", "-enddate", "-in", "ca.pem"]);
    let (_, leaf_end) = openssl(dir, &["x509", "-noout", "-enddate", "-in", "long.pem"]);
    assert_eq!(ca_end, leaf_end);
}

#[test]
fn bad_client_common_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["ca"]);
    for cn in ["dev/1", "+", "", "dev#1", "dev*", "a\u{1}b"] {
        let err = refused(dir, &["client", "--cn", cn]);
        assert!(err.contains("Warden refuses certificate identities"), "{cn:?}: {err}");
    }
    let names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "only the CA files: {names:?}");
    // --out must not reach outside --dir, nor onto the CA's own files.
    refused(dir, &["client", "--cn", "dev-1", "--out", "../x"]);
    refused(dir, &["server", "--out", "ca", "--force"]);
    refused(dir, &["server", "--san", "bad name"]);
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["ca"]);
    let before = fs::read(dir.join("ca.key")).unwrap();
    let err = refused(dir, &["ca"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), before, "CA key changed");
    ok(dir, &["ca", "--force"]);
    assert_ne!(fs::read(dir.join("ca.key")).unwrap(), before, "--force made a new CA");
    assert_pkcs8_key(&dir.join("ca.key"));

    ok(dir, &["client", "--cn", "dev-001"]);
    refused(dir, &["client", "--cn", "dev-001"]);
    ok(dir, &["client", "--cn", "dev-001", "--force"]);
    assert_pkcs8_key(&dir.join("dev-001.key"));
}

#[test]
fn signing_needs_a_usable_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = refused(dir, &["server"]);
    assert!(err.contains("warden cert ca"), "{err}");
    // A CA key that does not belong to the CA certificate.
    let other = tmp.path().join("other");
    ok(&other, &["ca"]);
    ok(dir, &["ca"]);
    fs::copy(other.join("ca.key"), dir.join("ca.key")).unwrap();
    let err = refused(dir, &["client", "--cn", "dev-001"]);
    assert!(err.contains("does not belong"), "{err}");
    // A leaf is not a CA.
    let leafdir = tmp.path().join("leaf");
    ok(&other, &["client", "--cn", "dev-009"]);
    fs::create_dir(&leafdir).unwrap();
    fs::copy(other.join("dev-009.pem"), leafdir.join("ca.pem")).unwrap();
    fs::copy(other.join("dev-009.key"), leafdir.join("ca.key")).unwrap();
    let err = refused(&leafdir, &["client", "--cn", "dev-001"]);
    assert!(err.contains("not a CA"), "{err}");
}

/// A CA made outside Warden (by openssl, with a two-attribute subject) signs fine.
#[test]
fn signs_with_an_openssl_made_ca() {
    if !have_openssl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (made, text) = openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/O=Acme Corp/CN=Acme Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    assert!(made, "{text}");
    ok(dir, &["client", "--cn", "dev-002"]);
    ok(dir, &["server", "--san", "broker.local"]);
    assert_verifies(dir, "sslclient", "dev-002.pem");
    assert_verifies(dir, "sslserver", "server.pem");
}

#[test]
fn ensure_dev_pki_creates_then_reuses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("warden-data").join("tls");
    let (pki, created) = warden::cli::cert::ensure_dev_pki(&dir).unwrap();
    assert!(created);
    for p in [&pki.ca_cert, &pki.server_cert, &pki.server_key] {
        assert!(p.starts_with(&dir) && p.exists(), "{}", p.display());
    }
    assert!(dir.join("ca.key").exists());
    assert_pkcs8_key(&pki.server_key);
    assert_pkcs8_key(&dir.join("ca.key"));
    let snapshot = |p: &Path| fs::read(p).unwrap();
    let before: Vec<_> = [&pki.ca_cert, &pki.server_cert, &pki.server_key].map(|p| snapshot(p)).to_vec();

    let (again, created) = warden::cli::cert::ensure_dev_pki(&dir).unwrap();
    assert!(!created);
    assert_eq!(again.server_cert, pki.server_cert);
    let after: Vec<_> = [&again.ca_cert, &again.server_cert, &again.server_key].map(|p| snapshot(p)).to_vec();
    assert_eq!(before, after, "reused, not regenerated");

    // A lost server pair is remade with the same CA (so issued device certificates stay valid).
    fs::remove_file(&pki.server_key).unwrap();
    let (_, created) = warden::cli::cert::ensure_dev_pki(&dir).unwrap();
    assert!(created);
    assert_eq!(snapshot(&pki.ca_cert), before[0], "CA kept");

    if !have_openssl() {
        return;
    }
    assert_verifies(&dir, "sslserver", "server.pem");
    assert_key_matches(&dir, "server.pem", "server.key");
    let san = ext(&dir, "server.pem", "subjectAltName");
    assert!(san.contains("DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"), "{san}");
    // The commands and the default share one CA layout: a device cert signed by it verifies.
    ok(&dir, &["client", "--cn", "dev-003"]);
    assert_verifies(&dir, "sslclient", "dev-003.pem");
}

/// Serials of the certificates a PEM CRL lists (hex, no leading zeros), and its CRL number.
fn crl_contents(path: &Path) -> (Vec<String>, Vec<u8>) {
    let text = fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    assert_eq!(pem.label, "X509 CRL");
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).unwrap();
    let serials = crl.iter_revoked_certificates().map(|r| format!("{:x}", r.user_certificate)).collect();
    let number = crl.crl_number().expect("a CRL number").to_bytes_be();
    (serials, number)
}

fn serial_of(path: &Path) -> String {
    let text = fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
    format!("{:x}", cert.serial)
}

#[test]
fn revoke_by_cn_lists_that_certificate_in_a_signed_crl_and_not_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["ca"]);
    ok(dir, &["client", "--cn", "dev-8"]);
    ok(dir, &["client", "--cn", "dev-9"]);
    let (s8, s9) = (serial_of(&dir.join("dev-8.pem")), serial_of(&dir.join("dev-9.pem")));
    let issued = fs::read_to_string(dir.join("issued.json")).unwrap();
    assert!(issued.contains(&s8) && issued.contains(&s9) && issued.contains("dev-9"), "{issued}");

    let out = ok(dir, &["revoke", "--cn", "dev-9"]);
    assert!(out.contains(&s9) && out.contains("ca.crl"), "{out}");
    let (listed, n1) = crl_contents(&dir.join("ca.crl"));
    assert_eq!(listed, vec![s9.clone()]);
    assert!(fs::read_to_string(dir.join("revoked.json")).unwrap().contains(&s9));

    // The CRL verifies against the CA (openssl, where installed).
    if have_openssl() {
        let (good, said) = openssl(dir, &["crl", "-in", "ca.crl", "-CAfile", "ca.pem", "-noout"]);
        assert!(good && said.contains("verify OK"), "{said}");
    }

    // Revoking again is idempotent but re-signs with a higher CRL number; --cert works too.
    let out = ok(dir, &["revoke", "--cert", dir.join("dev-9.pem").to_str().unwrap()]);
    assert!(out.contains("already revoked"), "{out}");
    let (listed, n2) = crl_contents(&dir.join("ca.crl"));
    assert_eq!(listed, vec![s9.clone()]);
    assert!(n2 > n1, "{n1:?} then {n2:?}");
    ok(dir, &["crl"]);
    let (_, n3) = crl_contents(&dir.join("ca.crl"));
    assert!(n3 > n2);

    // A certificate made before issued.json existed: DIR/CN.pem is used when this CA signed it.
    ok(dir, &["client", "--cn", "dev-7"]);
    fs::remove_file(dir.join("issued.json")).unwrap();
    ok(dir, &["revoke", "--cn", "dev-7"]);
    let (listed, _) = crl_contents(&dir.join("ca.crl"));
    assert!(listed.contains(&serial_of(&dir.join("dev-7.pem"))) && listed.contains(&s9) && !listed.contains(&s8));

    // Unknown device, foreign certificate, nothing named: refused with a reason.
    let err = refused(dir, &["revoke", "--cn", "dev-unknown"]);
    assert!(err.contains("dev-unknown") && err.contains("issued.json"), "{err}");
    let other = tempfile::tempdir().unwrap();
    ok(other.path(), &["ca", "--cn", "Other CA"]);
    ok(other.path(), &["client", "--cn", "dev-8"]);
    let err = refused(dir, &["revoke", "--cert", other.path().join("dev-8.pem").to_str().unwrap()]);
    assert!(err.contains("not issued by"), "{err}");
    refused(dir, &["revoke"]);
    let (listed, _) = crl_contents(&dir.join("ca.crl"));
    assert!(!listed.contains(&s8));
}
