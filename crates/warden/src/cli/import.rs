//! `warden import`: coming from Mosquitto (SPEC §9, issue 19 "a way in from Mosquitto").
//!
//! - `warden import mosquitto-dynsec FILE --config CFG`: a Mosquitto dynamic-security JSON
//!   (clients, groups, roles and their ACLs, default access) into the broker's policy store,
//!   offline (stop the broker first; it reads the store at start). Clients keep their
//!   passwords: the plugin's PBKDF2-SHA512 (password, salt, iterations) becomes Mosquitto's
//!   own `$7$` line format, which Warden verifies as it is.
//! - `warden import mosquitto-conf FILE`: a `mosquitto.conf` printed as the equivalent
//!   `warden.toml` on stdout; what has no equivalent is listed in comments, never dropped
//!   silently. Mosquitto password and ACL files are used unchanged.
//!
//! Mapping of dynamic-security ACL types: `publishClientSend` → publish,
//! `publishClientReceive` → receive, `subscribeLiteral` / `subscribePattern` → subscribe (Warden
//! matches a requested filter against the rule's filter, which covers both);
//! `unsubscribe*` has no counterpart (Warden never refuses an UNSUBSCRIBE) and is reported.
//! `defaultACLAccess` values that allow become a role `mosquitto-default` held by every
//! authenticated client, its rules at the lowest priority.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::Value;
use warden_policy::store::{Effect, Group, PolicyStore, Role, Rule, RuleAction, User, ANYONE_AUTHENTICATED};

/// `warden import …`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    what: ImportWhat,
}

#[derive(Debug, Subcommand)]
enum ImportWhat {
    /// A Mosquitto dynamic-security JSON into the policy store of the broker configured by
    /// --config (stop the broker first: it reads the store at start).
    MosquittoDynsec {
        /// The plugin's JSON file (plugin_opt_config_file).
        file: PathBuf,
        /// The broker's configuration (its data_dir holds the policy store).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the warden.toml equivalent of a mosquitto.conf.
    MosquittoConf {
        /// The mosquitto.conf.
        file: PathBuf,
    },
}

/// Run `warden import`.
pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    match &args.what {
        ImportWhat::MosquittoDynsec { file, config } => {
            let Some(config) = config else {
                bail!(
                    "warden import mosquitto-dynsec needs --config FILE: it writes the policy store in that \
                     configuration's data_dir (stop the broker first, start it after)"
                );
            };
            let cfg = crate::config::Config::load(config)?;
            let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
            let mut store = crate::admin::policy_store::load(&cfg.data_dir)?;
            let report = import_dynsec(&text, &mut store).with_context(|| format!("{}", file.display()))?;
            store
                .validate()
                .map_err(|e| anyhow::anyhow!("{}: the result is not a valid policy store: {}", file.display(), e.0))?;
            crate::admin::policy_store::save(&cfg.data_dir, &store)?;
            print!("{report}");
            println!("policy store written to {}", cfg.data_dir.display());
            Ok(())
        }
        ImportWhat::MosquittoConf { file } => {
            let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
            let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
            print!("{}", convert_conf(&text, &base, &file.display().to_string())?);
            Ok(())
        }
    }
}

/// The name of the role that carries `defaultACLAccess`.
pub const DEFAULT_ROLE: &str = "mosquitto-default";

/// Merge a dynamic-security document into `store` (entries of the same name are replaced);
/// what was imported and what was not, in words.
pub fn import_dynsec(text: &str, store: &mut PolicyStore) -> anyhow::Result<String> {
    let doc: Value = serde_json::from_str(text).context("not a JSON document")?;
    let mut report = String::new();
    let mut skipped = Vec::new();
    let list = |k: &str| doc.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let name_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);

    for r in list("roles") {
        let Some(name) = name_of(&r, "rolename") else { bail!("a role without rolename") };
        let mut rules = Vec::new();
        for (i, a) in r.get("acls").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let ty = a.get("acltype").and_then(Value::as_str).unwrap_or("");
            let topic = a.get("topic").and_then(Value::as_str).unwrap_or("").to_owned();
            let action = match ty {
                "publishClientSend" => RuleAction::Publish,
                "publishClientReceive" => RuleAction::Receive,
                "subscribeLiteral" | "subscribePattern" => RuleAction::Subscribe,
                "unsubscribeLiteral" | "unsubscribePattern" => {
                    skipped.push(format!("role {name}: {ty} {topic} (Warden never refuses an UNSUBSCRIBE)"));
                    continue;
                }
                other => {
                    skipped.push(format!("role {name}: unknown acltype {other:?}"));
                    continue;
                }
            };
            let allow = a.get("allow").and_then(Value::as_bool).unwrap_or(false);
            let priority = a.get("priority").and_then(Value::as_i64).unwrap_or(0);
            rules.push(Rule {
                id: format!("{ty}-{i}"),
                action,
                topic,
                max_qos: 2,
                retain: true,
                effect: if allow { Effect::Allow } else { Effect::Deny },
                priority: i32::try_from(priority).unwrap_or(0),
                source: Vec::new(),
            });
        }
        let _ = writeln!(report, "role {name}: {} rule(s)", rules.len());
        store.roles.insert(name, Role { rules, ..Role::default() });
    }

    let mut groups_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in list("groups") {
        let Some(name) = name_of(&g, "groupname") else { bail!("a group without groupname") };
        let roles: Vec<String> = role_names(&g);
        for c in g.get("clients").and_then(Value::as_array).into_iter().flatten() {
            if let Some(u) = name_of(c, "username") {
                groups_of.entry(u).or_default().push(name.clone());
            }
        }
        let _ = writeln!(report, "group {name}: roles {roles:?}");
        store.groups.insert(name, Group { roles });
    }

    for c in list("clients") {
        let Some(name) = name_of(&c, "username") else { bail!("a client without username") };
        let password_hash =
            match (name_of(&c, "password"), name_of(&c, "salt"), c.get("iterations").and_then(Value::as_u64)) {
                (Some(hash), Some(salt), Some(iterations)) => {
                    // Checked here so that a bad entry is refused with the client's name.
                    let b64 = base64::engine::general_purpose::STANDARD;
                    if b64.decode(&hash).is_err() || b64.decode(&salt).is_err() {
                        bail!("client {name}: password or salt is not base64");
                    }
                    let line = format!("$7${iterations}${salt}${hash}");
                    if let Err(e) = warden_policy::password::check_hash(&line) {
                        bail!("client {name}: its password is not a PBKDF2-SHA512 hash Warden can verify: {e}");
                    }
                    Some(line)
                }
                _ => {
                    skipped
                        .push(format!("client {name}: no password (it can still be proved by a certificate or token)"));
                    None
                }
            };
        if c.get("clientid").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            skipped.push(format!(
                "client {name}: its fixed clientid is not enforced (see [identity] client_id_must_match)"
            ));
        }
        let disabled = c.get("disabled").and_then(Value::as_bool).unwrap_or(false);
        let user = User {
            password_hash,
            roles: role_names(&c),
            groups: groups_of.remove(&name).unwrap_or_default(),
            disabled,
        };
        let _ = writeln!(report, "user {name}: roles {:?}, groups {:?}", user.roles, user.groups);
        store.users.insert(name, user);
    }

    // Mosquitto's defaults where no rule decides: what they allow, every authenticated client
    // is granted at the lowest priority (Warden denies by default once the store has rules).
    if let Some(d) = doc.get("defaultACLAccess") {
        let allows = |k: &str| d.get(k).and_then(Value::as_bool).unwrap_or(false);
        let mut rules = Vec::new();
        for (key, action) in [
            ("publishClientSend", RuleAction::Publish),
            ("publishClientReceive", RuleAction::Receive),
            ("subscribe", RuleAction::Subscribe),
        ] {
            if allows(key) {
                rules.push(Rule {
                    id: format!("default-{key}"),
                    action,
                    topic: "#".into(),
                    max_qos: 2,
                    retain: true,
                    effect: Effect::Allow,
                    priority: i32::MIN,
                    source: Vec::new(),
                });
            }
        }
        if !rules.is_empty() {
            let _ = writeln!(
                report,
                "role {DEFAULT_ROLE}: defaultACLAccess ({} rule(s)), held by every authenticated client",
                rules.len()
            );
            store.roles.insert(DEFAULT_ROLE.into(), Role { rules, ..Role::default() });
            let g = store.groups.entry(ANYONE_AUTHENTICATED.into()).or_default();
            if !g.roles.iter().any(|r| r == DEFAULT_ROLE) {
                g.roles.push(DEFAULT_ROLE.into());
            }
        }
    }
    for s in skipped {
        let _ = writeln!(report, "not imported: {s}");
    }
    Ok(report)
}

fn role_names(v: &Value) -> Vec<String> {
    v.get("roles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("rolename").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// A TOML string.
fn q(s: &str) -> String {
    toml_quote(s)
}

fn toml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One listener of a mosquitto.conf.
#[derive(Default)]
struct Listener {
    port: u16,
    addr: Option<String>,
    websockets: bool,
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
    require_certificate: bool,
    identity_as_username: bool,
    crl: Option<String>,
}

/// `mosquitto.conf` → `warden.toml` (see the module documentation). Paths are made absolute
/// against `base` (the file's directory).
pub fn convert_conf(text: &str, base: &Path, name: &str) -> anyhow::Result<String> {
    let abs = |p: &str| -> String {
        let p = Path::new(p);
        let full = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        std::fs::canonicalize(&full).unwrap_or(full).display().to_string()
    };
    let mut listeners: Vec<Listener> = Vec::new();
    let mut default_listener = Listener { port: 1883, ..Listener::default() };
    let mut allow_anonymous = false;
    let mut password_file = None;
    let mut acl_file = None;
    let mut data_dir = None;
    let mut limits: Vec<String> = Vec::new();
    let mut not_converted: Vec<String> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        let arg = rest.first().copied().unwrap_or("");
        let current = listeners.last_mut().unwrap_or(&mut default_listener);
        match key {
            "listener" => {
                let port = arg.parse::<u16>().with_context(|| format!("{name}:{}: listener port {arg:?}", n + 1))?;
                listeners.push(Listener { port, addr: rest.get(1).map(|s| (*s).to_owned()), ..Listener::default() });
            }
            "port" => default_listener.port = arg.parse().with_context(|| format!("{name}:{}: port {arg:?}", n + 1))?,
            "bind_address" => default_listener.addr = Some(arg.to_owned()),
            "protocol" => current.websockets = arg == "websockets",
            "certfile" => current.cert = Some(abs(arg)),
            "keyfile" => current.key = Some(abs(arg)),
            "cafile" => current.ca = Some(abs(arg)),
            "crlfile" => current.crl = Some(abs(arg)),
            "require_certificate" => current.require_certificate = arg == "true",
            "use_identity_as_username" | "use_subject_as_username" => current.identity_as_username = arg == "true",
            "allow_anonymous" => allow_anonymous = arg == "true",
            "password_file" => password_file = Some(abs(arg)),
            "acl_file" => acl_file = Some(abs(arg)),
            "persistence_location" => data_dir = Some(abs(arg)),
            "max_connections" if arg != "-1" => limits.push(format!("max_connections = {arg}")),
            "max_packet_size" if arg != "0" => limits.push(format!("max_packet_size = {arg}")),
            "max_keepalive" => limits.push(format!("max_keep_alive = {arg}")),
            "max_queued_messages" if arg != "0" => limits.push(format!("max_queued_messages = {arg}")),
            // Defaults in both, or how Warden works anyway.
            "persistence" | "per_listener_settings" | "log_dest" | "log_type" | "user" | "pid_file" => {
                not_converted.push(format!("{line}  (not needed: see docs/operations.md and docs/persistence.md)"))
            }
            _ => not_converted.push(line.to_owned()),
        }
    }
    if listeners.is_empty() {
        listeners.push(default_listener);
    }
    let mut out = format!("# warden.toml converted from {name} by `warden import mosquitto-conf`.\n");
    if let Some(d) = &data_dir {
        let _ = writeln!(out, "data_dir = {}", q(d));
    }
    for l in &listeners {
        let tls = l.cert.is_some();
        let protocol = match (l.websockets, tls) {
            (false, false) => "mqtt",
            (false, true) => "mqtts",
            (true, false) => "ws",
            (true, true) => "wss",
        };
        // Mosquitto listens on every interface when no address is given.
        let addr = l.addr.as_deref().unwrap_or("0.0.0.0");
        let addr = if addr.contains(':') { format!("[{addr}]") } else { addr.to_owned() };
        let _ = write!(out, "\n[[listener]]\nbind = {}\nprotocol = \"{protocol}\"\n", q(&format!("{addr}:{}", l.port)));
        if let (Some(c), Some(k)) = (&l.cert, &l.key) {
            let _ = write!(out, "cert = {}\nkey = {}\n", q(c), q(k));
            if let Some(ca) = &l.ca {
                let mode = if l.require_certificate { "required" } else { "optional" };
                let _ = write!(out, "client_ca = {}\nclient_cert = \"{mode}\"\n", q(ca));
                if let Some(crl) = &l.crl {
                    let _ = writeln!(out, "crl = [{}]", q(crl));
                }
                if l.identity_as_username {
                    let _ = writeln!(out, "identity_from_cert = \"cn\"");
                }
            }
        }
    }
    let _ = write!(out, "\n[auth]\nallow_anonymous = {allow_anonymous}\n");
    if let Some(p) = &password_file {
        let _ = writeln!(out, "password_file = {}   # Mosquitto $6$/$7$ lines are verified as they are", q(p));
    }
    if let Some(a) = &acl_file {
        let _ = write!(out, "\n[authz]\nacl_file = {}   # the Mosquitto ACL format, unchanged\n", q(a));
    }
    if !limits.is_empty() {
        let _ = write!(out, "\n[limits]\n{}\n", limits.join("\n"));
    }
    if !not_converted.is_empty() {
        out.push_str("\n# Not converted (no equivalent, or not needed; review these):\n");
        for l in not_converted {
            let _ = writeln!(out, "#   {l}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYNSEC: &str = r#"{
      "defaultACLAccess": {"publishClientSend": false, "publishClientReceive": true, "subscribe": false, "unsubscribe": true},
      "clients": [
        {"username": "dev-1", "password": "Q4qbonZb8IfjArob96nKUdbwJzB0e27kDJOYqfG1dI+KVur0a0thHUSxruOUDfPWYwiy5m2rajrIOXyv2+QOhw==", "salt": "p6EhehGAcOHnO3xT", "iterations": 101, "roles": [{"rolename": "sensor"}]},
        {"username": "ops-1", "password": "Q4qbonZb8IfjArob96nKUdbwJzB0e27kDJOYqfG1dI+KVur0a0thHUSxruOUDfPWYwiy5m2rajrIOXyv2+QOhw==", "salt": "p6EhehGAcOHnO3xT", "iterations": 101, "clientid": "fixed"},
        {"username": "nopw"}
      ],
      "groups": [{"groupname": "ops", "roles": [{"rolename": "reader"}], "clients": [{"username": "ops-1"}]}],
      "roles": [
        {"rolename": "sensor", "acls": [{"acltype": "publishClientSend", "topic": "sensors/%u/#", "priority": 3, "allow": true},
                                         {"acltype": "unsubscribePattern", "topic": "x", "allow": true}]},
        {"rolename": "reader", "acls": [{"acltype": "subscribePattern", "topic": "sensors/#", "allow": true},
                                         {"acltype": "publishClientReceive", "topic": "sensors/secret", "allow": false}]}
      ]
    }"#;

    #[test]
    fn dynsec_clients_groups_roles_and_defaults_map_to_the_store() {
        let mut s = PolicyStore::default();
        let report = import_dynsec(DYNSEC, &mut s).unwrap();
        s.validate().unwrap();
        let dev = &s.users["dev-1"];
        assert_eq!(dev.password_hash.as_deref(), Some("$7$101$p6EhehGAcOHnO3xT$Q4qbonZb8IfjArob96nKUdbwJzB0e27kDJOYqfG1dI+KVur0a0thHUSxruOUDfPWYwiy5m2rajrIOXyv2+QOhw=="));
        assert_eq!(dev.roles, ["sensor"]);
        assert_eq!(s.users["ops-1"].groups, ["ops"]);
        assert!(s.users["nopw"].password_hash.is_none());
        let sensor = &s.roles["sensor"].rules;
        assert_eq!(sensor.len(), 1, "unsubscribe has no counterpart");
        assert_eq!(
            (sensor[0].action, sensor[0].topic.as_str(), sensor[0].priority),
            (RuleAction::Publish, "sensors/%u/#", 3)
        );
        let reader = &s.roles["reader"].rules;
        assert_eq!(
            (reader[0].action, reader[1].action, reader[1].effect),
            (RuleAction::Subscribe, RuleAction::Receive, Effect::Deny)
        );
        assert_eq!(s.groups["ops"].roles, ["reader"]);
        let d = &s.roles[DEFAULT_ROLE].rules;
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].action, d[0].priority), (RuleAction::Receive, i32::MIN));
        assert!(s.groups[ANYONE_AUTHENTICATED].roles.contains(&DEFAULT_ROLE.to_owned()));
        assert!(report.contains("not imported: role sensor: unsubscribePattern"), "{report}");
        assert!(report.contains("fixed clientid"), "{report}");
    }

    #[test]
    fn malformed_dynsec_documents_are_refused_with_a_reason() {
        let mut s = PolicyStore::default();
        assert!(import_dynsec("{", &mut s).is_err());
        assert!(import_dynsec(r#"{"clients": [{"password": "x"}]}"#, &mut s)
            .unwrap_err()
            .to_string()
            .contains("username"));
        let bad = r#"{"clients": [{"username": "a", "password": "not base64!", "salt": "c2FsdA==", "iterations": 1}]}"#;
        assert!(import_dynsec(bad, &mut s).unwrap_err().to_string().contains("base64"));
    }

    #[test]
    fn a_mosquitto_conf_becomes_a_warden_toml() {
        let dir = tempfile::tempdir().unwrap();
        let conf = "# comment\nlistener 1883\nallow_anonymous false\npassword_file passwd\nacl_file acl\n\
                    listener 8883 127.0.0.1\ncertfile s.pem\nkeyfile s.key\ncafile ca.pem\nrequire_certificate true\n\
                    use_identity_as_username true\nlistener 9001\nprotocol websockets\nmax_connections 500\n\
                    persistence true\nsys_interval 10\n";
        let out = convert_conf(conf, dir.path(), "mosquitto.conf").unwrap();
        let doc: toml::Value = toml::from_str(&out).unwrap();
        let l = doc["listener"].as_array().unwrap();
        assert_eq!(l[0]["bind"].as_str(), Some("0.0.0.0:1883"));
        assert_eq!((l[1]["protocol"].as_str(), l[1]["client_cert"].as_str()), (Some("mqtts"), Some("required")));
        assert_eq!(l[1]["identity_from_cert"].as_str(), Some("cn"));
        assert_eq!(l[2]["protocol"].as_str(), Some("ws"));
        assert_eq!(doc["auth"]["allow_anonymous"].as_bool(), Some(false));
        assert!(doc["auth"]["password_file"].as_str().unwrap().ends_with("/passwd"));
        assert!(doc["authz"]["acl_file"].as_str().unwrap().ends_with("/acl"));
        assert_eq!(doc["limits"]["max_connections"].as_integer(), Some(500));
        assert!(out.contains("#   sys_interval 10"), "what is not converted is listed:\n{out}");
        assert!(convert_conf("listener nope\n", dir.path(), "m.conf").unwrap_err().to_string().contains("m.conf:1"));
    }
}
