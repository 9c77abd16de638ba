//! The posture audit (SPEC §13): `warden audit --config FILE` and `GET /admin/audit/posture`.
//!
//! [`audit`] is a pure function over typed inputs ([`PostureInput`]: the configuration, the
//! loaded ACL file and policy store, certificate and CRL DER, the password file's hash schemes,
//! the modes of secret files, the live connections' client certificates, `now`); it does no
//! I/O. [`load`] reads what a configuration names from disk into a [`PostureInput`]. Each
//! finding has a stable id, a severity, a title, why it matters, how to fix it, the thing it is
//! about and a link to its section of docs/operations.md ("Posture audit").

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use warden_policy::acl::{Access, AclFile, RuleScope};
use warden_policy::password::{HashScheme, PasswordFile};
use warden_policy::store::{Effect, PolicyStore, RuleAction};

use crate::config::{is_loopback, ClientCertMode, Config, SecretOrigin};

/// How serious a finding is. Ordered: `Info < Low < Medium < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// A weakness with little exposure.
    Low,
    /// A weakness to fix.
    Medium,
    /// Exposed: fails `warden audit` (exit 1).
    High,
    /// Exposed to anyone who can reach the port: fails `warden audit` (exit 1).
    Critical,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding of the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier (`anonymous-listener`, `broad-grant`, …): the anchor of its section in
    /// docs/operations.md.
    pub id: &'static str,
    /// How serious it is.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// Why it matters.
    pub why: String,
    /// How to fix it.
    pub fix: String,
    /// What it is about: `listener 0.0.0.0:1883`, `user dev-1`, a file, an ACL line…
    pub subject: String,
    /// The documentation section explaining it.
    pub doc: String,
}

/// A certificate file or CRL file the configuration names, as DER.
#[derive(Debug, Clone)]
pub struct CertInput {
    /// What it is: `server certificate of the mqtts listener 127.0.0.1:8883`, `client CA …`.
    pub what: String,
    /// Where it is.
    pub path: PathBuf,
    /// Certificates or CRLs.
    pub kind: CertKind,
    /// The DER objects the file holds.
    pub ders: Vec<Vec<u8>>,
}

/// What a [`CertInput`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// X.509 certificates (server certificate chain, CA).
    Certificate,
    /// Certificate revocation lists.
    Crl,
}

pub use crate::conn::live::LiveCert;

/// Everything the audit looks at, already loaded.
#[derive(Debug)]
pub struct PostureInput {
    /// The configuration.
    pub config: Config,
    /// The ACL file, when one is configured and loads.
    pub acl: Option<AclFile>,
    /// The policy store.
    pub policy: Option<PolicyStore>,
    /// Certificates and CRLs the configuration names.
    pub certs: Vec<CertInput>,
    /// The password file's users and their hash schemes (policy-store users as `NAME (policy
    /// store)`).
    pub passwords: Vec<(String, HashScheme)>,
    /// Secret files that group or others may open: what, where, mode.
    pub open_secret_files: Vec<(String, PathBuf, u32)>,
    /// Live connections with a client certificate (the admin API only; empty for the CLI).
    pub live_certs: Vec<LiveCert>,
    /// What could not be read (subject, reason): reported as findings.
    pub unreadable: Vec<(String, String)>,
    /// Unix seconds.
    pub now: i64,
}

/// Iterations below which a Mosquitto `$7$` (PBKDF2-SHA512) hash is weak.
pub const MIN_PBKDF2_ITERATIONS: u32 = 100_000;
/// A certificate expiring within this is reported (medium).
pub const CERT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// A CRL whose next update is within this is reported (medium). Shorter than for
/// certificates: CRLs are reissued on a short cycle (`warden cert crl` makes 30-day ones), so a
/// 30-day window would report every fresh CRL.
pub const CRL_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);
/// Token lifetimes above this are reported (low).
pub const LONG_TOKEN: Duration = Duration::from_secs(24 * 3600);
/// Token lifetimes above this are reported as medium.
pub const VERY_LONG_TOKEN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The finding's section in docs/operations.md ("Posture audit"): its heading is the id.
fn doc(id: &str) -> String {
    format!("docs/operations.md#{id}")
}

/// Whether a role or user name counts as an administrator's: `admin`, or a name starting or
/// ending with `admin` (`admin-ops`, `site-admin`). Their broad grants are not reported.
pub fn is_admin_name(name: &str) -> bool {
    name.starts_with("admin") || name.ends_with("admin")
}

/// Whether `filter` grants every topic (or every topic below every first level): `#`, `+/#`,
/// `+/+/#`…
fn is_catch_all(filter: &str) -> bool {
    let mut levels: Vec<&str> = filter.split('/').collect();
    if levels.pop() != Some("#") {
        return false;
    }
    levels.iter().all(|l| *l == "+")
}

/// The over-broad filters: catch-alls for any access, `$SYS/#` (or `$SYS/+/#`…) for writes.
fn broad(filter: &str, write: bool) -> bool {
    is_catch_all(filter) || (write && filter.strip_prefix("$SYS/").is_some_and(is_catch_all))
}

fn is_plain_unspecified(addr: SocketAddr) -> bool {
    addr.ip().is_unspecified()
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{s}s")
    }
}

/// The findings for `input`, most severe first (then by id and subject).
pub fn audit(input: &PostureInput) -> Vec<Finding> {
    let mut out = Vec::new();
    listeners(input, &mut out);
    plain_http(input, &mut out);
    grants(input, &mut out);
    certificates(input, &mut out);
    password_hashes(input, &mut out);
    token_lifetimes(input, &mut out);
    secrets(input, &mut out);
    admin_token(input, &mut out);
    shared_certs(input, &mut out);
    for (subject, reason) in &input.unreadable {
        out.push(Finding {
            id: "unreadable",
            severity: Severity::Medium,
            title: format!("{subject} could not be audited"),
            why: format!("{reason}; what it holds was not checked."),
            fix: "Run `warden check --config FILE` and fix what it reports.".into(),
            subject: subject.clone(),
            doc: doc("unreadable"),
        });
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)).then(a.subject.cmp(&b.subject)));
    out
}

/// The most severe finding's severity (`None`: no finding).
pub fn highest(findings: &[Finding]) -> Option<Severity> {
    findings.iter().map(|f| f.severity).max()
}

/// Whether a configuration lets passwords or tokens be sent by clients (over any listener).
fn credentials_travel(cfg: &Config, policy: Option<&PolicyStore>) -> bool {
    cfg.auth.password_file.is_some()
        || cfg.auth.jwt.is_some()
        || cfg.auth.lookup.is_some()
        || policy.is_some_and(|p| p.users.values().any(|u| u.password_hash.is_some()))
}

fn listeners(input: &PostureInput, out: &mut Vec<Finding>) {
    let cfg = &input.config;
    let creds = credentials_travel(cfg, input.policy.as_ref());
    for l in &cfg.listeners {
        if is_loopback(l.bind.ip()) {
            continue;
        }
        let subject = format!("listener {} {}", l.protocol, l.bind);
        let mtls_required =
            l.tls.as_ref().is_some_and(|t| t.client_ca.is_some() && t.client_cert == ClientCertMode::Required);
        if l.anonymous(&cfg.auth) && !mtls_required {
            let critical = !l.protocol.is_tls() && is_plain_unspecified(l.bind);
            out.push(Finding {
                id: "anonymous-listener",
                severity: if critical { Severity::Critical } else { Severity::High },
                title: format!("anonymous clients are allowed on {} (not a loopback address)", l.bind),
                why: format!(
                    "Anyone who can reach {} connects without credentials and gets what the ACL grants \
                     anonymous clients{}.",
                    l.bind,
                    if critical { ", over plain TCP on every interface" } else { "" }
                ),
                fix: "Set allow_anonymous = false (on the listener, or in [auth] for listeners that do not \
                      set it), or bind the listener to 127.0.0.1 / ::1, or require client certificates \
                      (client_cert = \"required\")."
                    .into(),
                subject: subject.clone(),
                doc: doc("anonymous-listener"),
            });
        }
        if !l.protocol.is_tls() {
            out.push(Finding {
                id: "plain-listener",
                severity: if creds { Severity::High } else { Severity::Medium },
                title: format!("plain (non-TLS) {} listener on {}", l.protocol, l.bind),
                why: if creds {
                    "Passwords and tokens sent in CONNECT travel in clear text over this listener: anyone on \
                     the path can read and replay them, and read or alter every message."
                        .into()
                } else {
                    "Messages travel in clear text: anyone on the path can read and alter them.".into()
                },
                fix: format!(
                    "Use protocol = \"{}\" with cert and key, or bind the listener to a loopback address.",
                    if l.protocol.is_ws() { "wss" } else { "mqtts" }
                ),
                subject,
                doc: doc("plain-listener"),
            });
        }
    }
}

fn plain_http(input: &PostureInput, out: &mut Vec<Finding>) {
    let Some(http) = &input.config.http else { return };
    if http.tls.is_none() && http.allow_plain_http && !is_loopback(http.bind.ip()) {
        out.push(Finding {
            id: "plain-http",
            severity: Severity::High,
            title: format!("plain HTTP on {} (allow_plain_http)", http.bind),
            why: "Admin tokens, client secrets and access tokens sent to the HTTP side travel in clear text.".into(),
            fix: "Give [http] a cert and key (TLS) and remove allow_plain_http, or bind it to 127.0.0.1.".into(),
            subject: format!("[http] {}", http.bind),
            doc: doc("plain-http"),
        });
    }
}

fn broad_grant(subject: String, filter: &str, write: bool, source: &str) -> Finding {
    Finding {
        id: "broad-grant",
        severity: if write { Severity::High } else { Severity::Medium },
        title: format!("{subject} may {} {filter}", if write { "publish to" } else { "read" }),
        why: if write {
            format!(
                "A {source} rule lets a non-admin principal publish to every topic ({filter}): one leaked \
                 device credential can command or spoof the whole fleet."
            )
        } else {
            format!(
                "A {source} rule lets a non-admin principal read every topic ({filter}): one leaked device \
                 credential reads the whole fleet's data."
            )
        },
        fix: "Narrow the rule to the principal's own subtree (devices/%u/#, devices/%c/#), or give the grant \
              to an admin role only."
            .into(),
        subject,
        doc: doc("broad-grant"),
    }
}

fn grants(input: &PostureInput, out: &mut Vec<Finding>) {
    if let Some(acl) = &input.acl {
        let file = input.config.authz.acl_file.as_ref().map_or_else(|| "ACL file".into(), |p| p.display().to_string());
        for r in acl.rules() {
            let who = match &r.scope {
                RuleScope::User(u) if is_admin_name(u) => continue,
                RuleScope::User(u) => format!("user {u}"),
                RuleScope::Anonymous => "anonymous clients".into(),
                RuleScope::Pattern => "every client (pattern)".into(),
            };
            let (read, write) = match r.access {
                Access::Deny => continue,
                Access::Read => (true, false),
                Access::Write => (false, true),
                Access::ReadWrite => (true, true),
            };
            let subject = format!("{who} ({file}:{})", r.line);
            if write && broad(r.filter.as_str(), true) {
                out.push(broad_grant(subject, r.filter.as_str(), true, "ACL file"));
            } else if read && broad(r.filter.as_str(), false) {
                out.push(broad_grant(subject, r.filter.as_str(), false, "ACL file"));
            }
        }
    }
    if let Some(store) = &input.policy {
        for (name, role) in &store.roles {
            if is_admin_name(name) {
                continue;
            }
            for rule in role.rules.iter().filter(|r| r.effect == Effect::Allow) {
                let write = rule.action == RuleAction::Publish;
                if broad(&rule.topic, write) {
                    let subject = format!("role {name} (rule {})", rule.id);
                    out.push(broad_grant(subject, &rule.topic, write, "policy-store"));
                }
            }
        }
    }
}

fn certificates(input: &PostureInput, out: &mut Vec<Finding>) {
    for c in &input.certs {
        for der in &c.ders {
            let (expires, name, window) = match c.kind {
                CertKind::Certificate => match x509_parser::parse_x509_certificate(der) {
                    Ok((_, cert)) => {
                        (Some(cert.validity().not_after.timestamp()), cert.subject().to_string(), CERT_EXPIRY_WARNING)
                    }
                    Err(_) => {
                        out.push(unreadable_cert(c, "a certificate does not parse"));
                        continue;
                    }
                },
                CertKind::Crl => match x509_parser::parse_x509_crl(der) {
                    Ok((_, crl)) => {
                        (crl.next_update().map(|t| t.timestamp()), crl.issuer().to_string(), CRL_EXPIRY_WARNING)
                    }
                    Err(_) => {
                        out.push(unreadable_cert(c, "a CRL does not parse"));
                        continue;
                    }
                },
            };
            let Some(expires) = expires else { continue };
            let left = expires - input.now;
            let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
            let noun = if c.kind == CertKind::Crl { "CRL" } else { "certificate" };
            let subject = format!("{} {} ({name})", c.what, c.path.display());
            if left <= 0 {
                out.push(Finding {
                    id: "cert-expired",
                    severity: Severity::High,
                    title: format!("{} has expired ({noun} of {name})", c.what),
                    why: if c.kind == CertKind::Crl {
                        "A CRL past its next update is stale: certificates revoked since are still accepted, and \
                         strict verifiers refuse every client."
                            .into()
                    } else {
                        "Clients refuse an expired certificate (or are configured to ignore errors, which is worse)."
                            .into()
                    },
                    fix: format!("Reissue the {noun} and reload the broker (SIGHUP)."),
                    subject,
                    doc: doc("cert-expired"),
                });
            } else if left < window {
                out.push(Finding {
                    id: "cert-expiring",
                    severity: Severity::Medium,
                    title: format!("{} expires in {} day(s) ({noun} of {name})", c.what, left / 86_400),
                    why: format!(
                        "When it expires, clients (or the CRL check) start failing; renew before {noun} expiry."
                    ),
                    fix: format!("Reissue the {noun} now and reload the broker (SIGHUP)."),
                    subject,
                    doc: doc("cert-expiring"),
                });
            }
        }
    }
}

fn unreadable_cert(c: &CertInput, reason: &str) -> Finding {
    Finding {
        id: "unreadable",
        severity: Severity::Medium,
        title: format!("{} could not be audited", c.what),
        why: format!("{reason} in {}; its expiry was not checked.", c.path.display()),
        fix: "Run `warden check --config FILE` and fix what it reports.".into(),
        subject: format!("{} {}", c.what, c.path.display()),
        doc: doc("unreadable"),
    }
}

fn user_list(users: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut s = users.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if users.len() > SHOWN {
        s.push_str(&format!(" and {} more", users.len() - SHOWN));
    }
    s
}

fn password_hashes(input: &PostureInput, out: &mut Vec<Finding>) {
    let file =
        input.config.auth.password_file.as_ref().map_or_else(|| "password file".into(), |p| p.display().to_string());
    let sha: Vec<&str> =
        input.passwords.iter().filter(|(_, s)| *s == HashScheme::MosquittoSha512).map(|(u, _)| u.as_str()).collect();
    let weak: Vec<&str> = input
        .passwords
        .iter()
        .filter(|(_, s)| matches!(s, HashScheme::MosquittoPbkdf2 { iterations } if *iterations < MIN_PBKDF2_ITERATIONS))
        .map(|(u, _)| u.as_str())
        .collect();
    let fix = "Set the password again with `warden passwd FILE USER` (argon2id), or have the user change it; \
               the broker cannot rehash it without the password.";
    if !sha.is_empty() {
        out.push(Finding {
            id: "weak-password-hash",
            severity: Severity::Medium,
            title: format!("{} user(s) stored as Mosquitto $6$ (one round of SHA-512)", sha.len()),
            why: format!(
                "A single salted SHA-512 is brute-forced at billions of guesses per second on a GPU: a leaked \
                 password file gives the passwords away. Users: {}.",
                user_list(&sha)
            ),
            fix: fix.into(),
            subject: format!("{file} ($6$)"),
            doc: doc("weak-password-hash"),
        });
    }
    if !weak.is_empty() {
        out.push(Finding {
            id: "weak-password-hash",
            severity: Severity::Medium,
            title: format!(
                "{} user(s) stored as Mosquitto $7$ with fewer than {MIN_PBKDF2_ITERATIONS} PBKDF2 iterations",
                weak.len()
            ),
            why: format!(
                "Few PBKDF2 iterations make a leaked password file cheap to brute-force. Users: {}.",
                user_list(&weak)
            ),
            fix: fix.into(),
            subject: format!("{file} ($7$)"),
            doc: doc("weak-password-hash"),
        });
    }
}

fn long_token(what: &str, subject: &str, ttl: Duration) -> Option<Finding> {
    if ttl <= LONG_TOKEN {
        return None;
    }
    Some(Finding {
        id: "long-token-ttl",
        severity: if ttl > VERY_LONG_TOKEN { Severity::Medium } else { Severity::Low },
        title: format!("{what} of {} (over 24h)", fmt_duration(ttl)),
        why: "A leaked token stays usable until it expires; long lifetimes widen that window and make \
              revocation the only defence."
            .into(),
        fix: "Use lifetimes of an hour or less and have clients fetch fresh tokens.".into(),
        subject: subject.into(),
        doc: doc("long-token-ttl"),
    })
}

fn token_lifetimes(input: &PostureInput, out: &mut Vec<Finding>) {
    let cfg = &input.config;
    if cfg.oauth.enabled {
        out.extend(long_token("token service token_ttl", "[oauth] token_ttl", cfg.oauth.token_ttl));
    }
    if let Some(jwt) = &cfg.auth.jwt {
        out.extend(long_token(
            "accepted JWT lifetime max_token_lifetime",
            "[auth.jwt] max_token_lifetime",
            jwt.max_token_lifetime,
        ));
    }
}

fn secrets(input: &PostureInput, out: &mut Vec<Finding>) {
    for (what, path, mode) in &input.open_secret_files {
        out.push(Finding {
            id: "secret-file-permissions",
            severity: Severity::High,
            title: format!("{what} can be opened by group or others (mode {mode:04o})"),
            why: "Any local account (or a process of another service) can read the secret it holds.".into(),
            fix: format!("chmod 600 {} (owned by the broker's user).", path.display()),
            subject: path.display().to_string(),
            doc: doc("secret-file-permissions"),
        });
    }
    let file = input.config.source.as_ref().map_or_else(|| "configuration".into(), |p| p.display().to_string());
    for r in input.config.secrets.iter().filter(|r| r.origin == SecretOrigin::Inline) {
        let name = r.key.rsplit(' ').next().unwrap_or(&r.key);
        out.push(Finding {
            id: "inline-secret",
            severity: Severity::Low,
            title: format!("{} is written inline in the configuration file", r.key),
            why: "Configuration files end up in backups, repositories and support tickets, and the secret with them."
                .into(),
            fix: format!("Give it as {name} = \"env:NAME\" or {name}_file = \"/path\" (a 0600 file)."),
            subject: format!("{file}:{}", r.line),
            doc: doc("inline-secret"),
        });
    }
}

fn admin_token(input: &PostureInput, out: &mut Vec<Finding>) {
    let Some(http) = &input.config.http else { return };
    if http.admin_token_hash.as_ref().is_none_or(|h| h.0.is_empty()) {
        let oauth = input.config.oauth.enabled;
        out.push(Finding {
            id: "admin-token-missing",
            severity: if oauth { Severity::Info } else { Severity::Low },
            title: "the admin API is served without an admin token hash".into(),
            why: if oauth {
                "Only token-service tokens with the admin scope reach the admin API; without a break-glass \
                 token an operator locked out of the token service cannot kick, ban or fix the policy."
                    .into()
            } else {
                "Nobody can use the admin API: incidents (kick, ban, revoke) then need a restart, and \
                 operators are tempted to work around it."
                    .into()
            },
            fix: "Set [http] admin_token_hash_file to a file holding the argon2id hash of a random token \
                  (`warden passwd`-style hash), mode 0600."
                .into(),
            subject: format!("[http] {}", http.bind),
            doc: doc("admin-token-missing"),
        });
    }
}

fn shared_certs(input: &PostureInput, out: &mut Vec<Finding>) {
    let mut by_cert: BTreeMap<&str, Vec<&LiveCert>> = BTreeMap::new();
    for c in &input.live_certs {
        by_cert.entry(c.certificate.as_str()).or_default().push(c);
    }
    for (cert, conns) in by_cert {
        if conns.len() < 2 {
            continue;
        }
        let mut ids: Vec<&str> = conns.iter().map(|c| c.client_id.as_str()).collect();
        ids.sort_unstable();
        let identity = conns.first().map_or("", |c| c.identity.as_str());
        out.push(Finding {
            id: "shared-client-cert",
            severity: Severity::Medium,
            title: format!("one client certificate ({identity}) is used by {} live connections", conns.len()),
            why: format!(
                "Devices sharing a certificate cannot be told apart, revoked one by one or limited separately; \
                 one leaked key is every device's. Client ids: {}.",
                user_list(&ids)
            ),
            fix: "Issue one certificate per device (`warden cert client --cn DEVICE`) and revoke the shared one."
                .into(),
            subject: format!("certificate {identity} (serial {})", cert.split('@').next().unwrap_or(cert)),
            doc: doc("shared-client-cert"),
        });
    }
}

// --- loading -----------------------------------------------------------------------------------

fn read_pem_or_der(path: &Path, kind: CertKind) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !bytes.starts_with(b"-----") {
        return Ok(vec![bytes]);
    }
    let ders: Result<Vec<Vec<u8>>, _> = match kind {
        CertKind::Certificate => CertificateDer::pem_slice_iter(&bytes).map(|r| r.map(|c| c.to_vec())).collect(),
        CertKind::Crl => CertificateRevocationListDer::pem_slice_iter(&bytes).map(|r| r.map(|c| c.to_vec())).collect(),
    };
    ders.map_err(|e| format!("{}: invalid PEM: {e}", path.display()))
}

/// The certificate and CRL files `cfg` names: each listener's and `[http]`'s server
/// certificate, client CA and CRLs.
pub fn cert_files(cfg: &Config) -> Vec<(String, PathBuf, CertKind)> {
    let mut out: Vec<(String, PathBuf, CertKind)> = Vec::new();
    let tls = cfg
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| (format!("{} listener {}", l.protocol, l.bind), t)))
        .chain(cfg.http.iter().filter_map(|h| h.tls.as_ref().map(|t| (format!("[http] {}", h.bind), t))));
    for (owner, t) in tls {
        let mut add = |what: String, path: &PathBuf, kind| {
            if !out.iter().any(|(_, p, _)| p == path) {
                out.push((what, path.clone(), kind));
            }
        };
        add(format!("server certificate of the {owner}"), &t.cert, CertKind::Certificate);
        if let Some(ca) = &t.client_ca {
            add(format!("client CA of the {owner}"), ca, CertKind::Certificate);
        }
        for crl in &t.crls {
            add(format!("CRL of the {owner}"), crl, CertKind::Crl);
        }
    }
    out
}

/// Read what `cfg` names (ACL file, policy store, certificates and CRLs, password file, secret
/// files' modes) into a [`PostureInput`]; what cannot be read is listed in `unreadable`.
/// `policy`: the store in force (the admin API passes the live one; `None` reads
/// `<data_dir>/policy.json`).
pub fn load(cfg: &Config, policy: Option<PolicyStore>, live_certs: Vec<LiveCert>, now: i64) -> PostureInput {
    let mut unreadable = Vec::new();
    let acl = match crate::admin::policy_store::load_acl(&cfg.authz) {
        Ok(a) => a,
        Err(e) => {
            unreadable.push(("ACL file".to_string(), format!("{e:#}")));
            None
        }
    };
    let policy = match policy {
        Some(p) => Some(p),
        None => match crate::admin::policy_store::load(&cfg.data_dir) {
            Ok(p) => Some(p),
            Err(e) => {
                unreadable.push(("policy store".to_string(), format!("{e:#}")));
                None
            }
        },
    };
    let mut certs = Vec::new();
    for (what, path, kind) in cert_files(cfg) {
        match read_pem_or_der(&path, kind) {
            Ok(ders) => certs.push(CertInput { what, path, kind, ders }),
            Err(e) => unreadable.push((what, e)),
        }
    }
    let mut passwords = Vec::new();
    if let Some(p) = &cfg.auth.password_file {
        match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| PasswordFile::parse(&t).map_err(|e| e.to_string()))
        {
            Ok(f) => passwords = f.schemes().into_iter().map(|(u, s)| (u.to_owned(), s)).collect(),
            Err(e) => unreadable.push((format!("password file {}", p.display()), e)),
        }
    }
    // Policy-store users' hashes too (`warden import mosquitto-dynsec` can bring $6$/$7$ ones).
    if let Some(f) = policy.as_ref().and_then(|p| p.password_file().ok()) {
        passwords.extend(f.schemes().into_iter().map(|(u, s)| (format!("{u} (policy store)"), s)));
    }
    let open_secret_files = cfg
        .secret_files()
        .into_iter()
        .filter_map(|(what, path)| crate::config::open_to_others(&path).map(|m| (what, path, m)))
        .collect();
    PostureInput { config: cfg.clone(), acl, policy, certs, passwords, open_secret_files, live_certs, unreadable, now }
}

/// The JSON report: `{"findings": [...], "counts": {"critical": n, …}, "highest": "high"|null,
/// "fail": bool}` (`fail`: a finding of severity high or above).
pub fn report_json(findings: &[Finding]) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for s in [Severity::Critical, Severity::High, Severity::Medium, Severity::Low, Severity::Info] {
        counts.insert(s.as_str().into(), findings.iter().filter(|f| f.severity == s).count().into());
    }
    let highest = highest(findings);
    serde_json::json!({
        "findings": findings,
        "counts": counts,
        "highest": highest,
        "fail": highest.is_some_and(|s| s >= Severity::High),
    })
}

/// The readable report `warden audit` prints.
pub fn report_text(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&format!(
            "[{}] {}: {}\n    about: {}\n    why:   {}\n    fix:   {}\n    see:   {}\n\n",
            f.severity.as_str().to_uppercase(),
            f.id,
            f.title,
            f.subject,
            f.why,
            f.fix,
            f.doc
        ));
    }
    let n = |sev| findings.iter().filter(|f| f.severity == sev).count();
    s.push_str(&format!(
        "{} finding(s): {} critical, {} high, {} medium, {} low, {} info\n",
        findings.len(),
        n(Severity::Critical),
        n(Severity::High),
        n(Severity::Medium),
        n(Severity::Low),
        n(Severity::Info)
    ));
    s
}

#[cfg(test)]
mod tests;
