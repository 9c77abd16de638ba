//! One test that finds each finding and one that does not, on a tight configuration.

use super::*;

const NOW: i64 = 1_800_000_000;

const TIGHT: &str = "data_dir = \"/var/lib/warden\"\n\
[[listener]]\nbind = \"127.0.0.1:8883\"\nprotocol = \"mqtts\"\ncert = \"/pki/server.pem\"\nkey = \"/pki/server.key\"\n\
client_ca = \"/pki/ca.pem\"\nclient_cert = \"required\"\nidentity_from_cert = \"cn\"\n\
[auth]\nallow_anonymous = false\n";

fn config(text: &str) -> Config {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = HASH.get_or_init(|| warden_policy::password::hash_password(b"admin-token"));
    let env = |name: &str| match name {
        "H" => Some(hash.clone()),
        _ => Some("0123456789abcdef0123456789abcdef".to_string()),
    };
    Config::parse_with_env(text, Path::new("/etc/warden/warden.toml"), &env).unwrap()
}

fn input(text: &str) -> PostureInput {
    PostureInput {
        config: config(text),
        acl: None,
        policy: None,
        certs: Vec::new(),
        passwords: Vec::new(),
        open_secret_files: Vec::new(),
        live_certs: Vec::new(),
        unreadable: Vec::new(),
        now: NOW,
    }
}

fn ids(i: &PostureInput) -> Vec<(&'static str, Severity)> {
    audit(i).into_iter().map(|f| (f.id, f.severity)).collect()
}

fn has(i: &PostureInput, id: &str) -> Option<Severity> {
    audit(i).into_iter().find(|f| f.id == id).map(|f| f.severity)
}

#[test]
fn a_tight_configuration_has_no_finding() {
    let mut i = input(TIGHT);
    i.acl = Some(AclFile::parse("user dev-1\ntopic readwrite devices/dev-1/#\n").unwrap());
    i.policy = Some(PolicyStore::default());
    assert_eq!(ids(&i), vec![]);
    assert!(report_text(&[]).contains("0 finding(s)"));
    assert_eq!(report_json(&[])["fail"], false);
}

#[test]
fn anonymous_on_a_public_plain_listener_is_critical() {
    let i = input("[[listener]]\nbind = \"0.0.0.0:1883\"\nprotocol = \"mqtt\"\n[auth]\nallow_anonymous = true\n");
    let f = audit(&i);
    assert_eq!(f[0].id, "anonymous-listener");
    assert_eq!(f[0].severity, Severity::Critical);
    assert!(f[0].title.contains("0.0.0.0"), "{}", f[0].title);
    assert_eq!(has(&i, "plain-listener"), Some(Severity::Medium));
    assert_eq!(report_json(&f)["fail"], true);
    assert!(report_text(&f).contains("[CRITICAL] anonymous-listener"));
}

#[test]
fn anonymous_per_listener_is_judged_per_listener() {
    // [auth] refuses anonymous clients, but this listener allows them.
    let i = input(
        "[[listener]]\nbind = \"0.0.0.0:1883\"\nallow_anonymous = true\n[[listener]]\nbind = \"0.0.0.0:1884\"\n\
         [auth]\nallow_anonymous = false\n",
    );
    let f: Vec<_> = audit(&i).into_iter().filter(|f| f.id == "anonymous-listener").collect();
    assert_eq!(f.len(), 1);
    assert!(f[0].title.contains("1883"), "{}", f[0].title);
    // [auth] allows them, but this public listener refuses them.
    let i = input("[[listener]]\nbind = \"0.0.0.0:1883\"\nallow_anonymous = false\n[auth]\nallow_anonymous = true\n");
    assert_eq!(has(&i, "anonymous-listener"), None);
}

#[test]
fn anonymous_on_a_specific_non_loopback_address_is_high_and_on_loopback_nothing() {
    let tls = "protocol = \"mqtts\"\ncert = \"/pki/s.pem\"\nkey = \"/pki/s.key\"\n[auth]\nallow_anonymous = true\n";
    let i = input(&format!("[[listener]]\nbind = \"192.0.2.10:8883\"\n{tls}"));
    assert_eq!(has(&i, "anonymous-listener"), Some(Severity::High));
    let i = input(&format!("[[listener]]\nbind = \"127.0.0.1:8883\"\n{tls}"));
    assert_eq!(has(&i, "anonymous-listener"), None);
    let i = input(&format!("[[listener]]\nbind = \"[::1]:8883\"\n{tls}"));
    assert_eq!(has(&i, "anonymous-listener"), None);
}

#[test]
fn plain_listener_is_high_when_passwords_travel_over_it() {
    let i = input(
        "[[listener]]\nbind = \"[::]:9001\"\nprotocol = \"ws\"\n[auth]\npassword_file = \"/etc/warden/passwd\"\n",
    );
    let f: Vec<_> = audit(&i).into_iter().filter(|f| f.id == "plain-listener").collect();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::High);
    assert!(f[0].fix.contains("wss"));
    assert_eq!(has(&input(TIGHT), "plain-listener"), None);
    let lo = input("[[listener]]\nbind = \"127.0.0.1:1883\"\nprotocol = \"mqtt\"\n");
    assert_eq!(has(&lo, "plain-listener"), None);
}

#[test]
fn plain_http_on_a_public_address() {
    let i = input(&format!(
        "{TIGHT}[http]\nbind = \"0.0.0.0:8080\"\nallow_plain_http = true\nadmin_token_hash = \"env:H\"\n"
    ));
    assert_eq!(has(&i, "plain-http"), Some(Severity::High));
    let i = input(&format!("{TIGHT}[http]\nbind = \"127.0.0.1:8080\"\nadmin_token_hash = \"env:H\"\n"));
    assert_eq!(has(&i, "plain-http"), None);
}

#[test]
fn broad_acl_grants_to_non_admins() {
    let mut i = input(TIGHT);
    i.acl = Some(
        AclFile::parse(
            "topic read $SYS/#\nuser dev-1\ntopic write +/#\nuser viewer\ntopic read #\nuser admin\ntopic readwrite #\n\
             user ops\ntopic write $SYS/#\ntopic deny #\npattern read devices/%u/#\n",
        )
        .unwrap(),
    );
    let f: Vec<_> = audit(&i).into_iter().filter(|f| f.id == "broad-grant").collect();
    let subjects: Vec<(Severity, &str)> = f.iter().map(|f| (f.severity, f.subject.as_str())).collect();
    assert_eq!(f.len(), 3, "{subjects:?}");
    assert!(subjects.iter().any(|(s, w)| *s == Severity::High && w.starts_with("user dev-1")));
    assert!(subjects.iter().any(|(s, w)| *s == Severity::High && w.starts_with("user ops")));
    assert!(subjects.iter().any(|(s, w)| *s == Severity::Medium && w.starts_with("user viewer")));
}

#[test]
fn broad_policy_store_grants_to_non_admin_roles() {
    let store = PolicyStore::from_json(
        r##"{"version":1,"roles":{
            "sensor":{"rules":[{"id":"all","action":"publish","topic":"#","effect":"allow"},
                               {"id":"own","action":"subscribe","topic":"devices/%u/#","effect":"allow"}]},
            "dashboard":{"rules":[{"id":"r","action":"subscribe","topic":"+/#","effect":"allow"},
                                  {"id":"d","action":"publish","topic":"#","effect":"deny"}]},
            "admin":{"rules":[{"id":"all","action":"publish","topic":"#","effect":"allow"}]}}}"##,
    )
    .unwrap();
    let mut i = input(TIGHT);
    i.policy = Some(store);
    let f: Vec<_> = audit(&i).into_iter().filter(|f| f.id == "broad-grant").map(|f| (f.severity, f.subject)).collect();
    assert_eq!(
        f,
        vec![
            (Severity::High, "role sensor (rule all)".to_string()),
            (Severity::Medium, "role dashboard (rule r)".to_string())
        ]
    );
}

#[test]
fn catch_all_filters() {
    for f in ["#", "+/#", "+/+/#"] {
        assert!(broad(f, false), "{f}");
    }
    assert!(broad("$SYS/#", true));
    assert!(!broad("$SYS/#", false));
    for f in ["devices/#", "a/+/#", "+", "devices/dev-1/#"] {
        assert!(!broad(f, true), "{f}");
    }
}

fn dev_server_cert() -> (Vec<u8>, i64) {
    let dir = tempfile::tempdir().unwrap();
    let (pki, _) = crate::cli::cert::ensure_dev_pki(dir.path()).unwrap();
    let der = read_pem_or_der(&pki.server_cert, CertKind::Certificate).unwrap().remove(0);
    let not_after = x509_parser::parse_x509_certificate(&der).unwrap().1.validity().not_after.timestamp();
    (der, not_after)
}

#[test]
fn certificates_expiring_or_expired() {
    let (der, not_after) = dev_server_cert();
    let mut i = input(TIGHT);
    i.certs = vec![CertInput {
        what: "server certificate of the mqtts listener 127.0.0.1:8883".into(),
        path: "/pki/server.pem".into(),
        kind: CertKind::Certificate,
        ders: vec![der],
    }];
    i.now = not_after - 10 * 86_400;
    assert_eq!(ids(&i), vec![("cert-expiring", Severity::Medium)]);
    i.now = not_after + 1;
    assert_eq!(ids(&i), vec![("cert-expired", Severity::High)]);
    // A freshly made certificate (825 days) is fine.
    i.now = not_after - 800 * 86_400;
    assert_eq!(ids(&i), vec![]);
    i.certs[0].ders = vec![b"garbage".to_vec()];
    assert_eq!(ids(&i), vec![("unreadable", Severity::Medium)]);
}

#[test]
fn weak_password_hashes() {
    let mut i = input(TIGHT);
    i.passwords = vec![
        ("alice".into(), HashScheme::MosquittoPbkdf2 { iterations: 101 }),
        ("bob".into(), HashScheme::MosquittoSha512),
        ("carol".into(), HashScheme::MosquittoPbkdf2 { iterations: 210_000 }),
        ("dave".into(), HashScheme::Argon2),
        ("erin".into(), HashScheme::ScramSha256 { iterations: 4096 }),
    ];
    let f: Vec<_> = audit(&i).into_iter().filter(|f| f.id == "weak-password-hash").collect();
    assert_eq!(f.len(), 2);
    assert!(f.iter().all(|f| f.severity == Severity::Medium));
    assert!(f.iter().any(|f| f.why.contains("alice") && !f.why.contains("carol")));
    assert!(f.iter().any(|f| f.why.contains("bob")));
    i.passwords.retain(|(u, _)| u != "alice" && u != "bob");
    assert_eq!(ids(&i), vec![]);
}

#[test]
fn long_token_lifetimes() {
    let jwt = |life: &str| {
        input(&format!(
            "{TIGHT}[auth.jwt]\naudience = \"w\"\nhs256_secret = \"env:S\"\nmax_token_lifetime = \"{life}\"\n"
        ))
    };
    assert_eq!(has(&jwt("48h"), "long-token-ttl"), Some(Severity::Low));
    assert_eq!(has(&jwt("720h"), "long-token-ttl"), Some(Severity::Medium));
    assert_eq!(has(&jwt("1h"), "long-token-ttl"), None);
    assert_eq!(has(&jwt("24h"), "long-token-ttl"), None);
}

#[test]
fn secret_files_open_to_others() {
    let mut i = input(TIGHT);
    i.open_secret_files = vec![("TLS key".into(), "/pki/server.key".into(), 0o644)];
    let f = audit(&i);
    assert_eq!((f[0].id, f[0].severity), ("secret-file-permissions", Severity::High));
    assert!(f[0].title.contains("0644") && f[0].fix.contains("chmod 600 /pki/server.key"));
}

#[test]
fn inline_secrets() {
    let i = input(&format!("{TIGHT}[auth.jwt]\naudience = \"w\"\nhs256_secret = \"0123456789abcdef0123456789\"\n"));
    let f: Vec<_> = audit(&i).into_iter().filter(|f| f.id == "inline-secret").collect();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Low);
    assert!(f[0].title.contains("hs256_secret") && f[0].subject.ends_with(":14"), "{f:?}");
    let by_env = input(&format!("{TIGHT}[auth.jwt]\naudience = \"w\"\nhs256_secret = \"env:S\"\n"));
    assert_eq!(has(&by_env, "inline-secret"), None);
}

#[test]
fn admin_api_without_a_token_hash() {
    // The token service (on by default with [http]) still admits its admin-scope tokens.
    let i = input(&format!("{TIGHT}[http]\nbind = \"127.0.0.1:8080\"\n"));
    assert_eq!(has(&i, "admin-token-missing"), Some(Severity::Info));
    let i = input(&format!("{TIGHT}[http]\nbind = \"127.0.0.1:8080\"\n[oauth]\nenabled = false\n"));
    assert_eq!(has(&i, "admin-token-missing"), Some(Severity::Low));
    let i = input(&format!("{TIGHT}[http]\nbind = \"127.0.0.1:8080\"\nadmin_token_hash = \"env:H\"\n"));
    assert_eq!(has(&i, "admin-token-missing"), None);
}

#[test]
fn one_certificate_on_several_live_connections() {
    let conn =
        |id: &str, cert: &str| LiveCert { client_id: id.into(), identity: "dev-1".into(), certificate: cert.into() };
    let mut i = input(TIGHT);
    i.live_certs = vec![conn("a", "ab:01"), conn("b", "ab:01"), conn("c", "ab:02")];
    let f = audit(&i);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].id, f[0].severity), ("shared-client-cert", Severity::Medium));
    assert!(f[0].title.contains("2 live connections") && f[0].why.contains("a, b"));
    i.live_certs.remove(1);
    assert_eq!(ids(&i), vec![]);
}

#[test]
fn findings_are_sorted_most_severe_first() {
    let mut i = input("[[listener]]\nbind = \"0.0.0.0:1883\"\nprotocol = \"mqtt\"\n[auth]\nallow_anonymous = true\n");
    i.passwords = vec![("bob".into(), HashScheme::MosquittoSha512)];
    let sev: Vec<Severity> = audit(&i).iter().map(|f| f.severity).collect();
    assert!(sev.windows(2).all(|w| w[0] >= w[1]), "{sev:?}");
    assert_eq!(highest(&audit(&i)), Some(Severity::Critical));
}
