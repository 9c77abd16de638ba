//! `warden admin …`: a thin client of the admin REST API (docs/admin.md). The token comes from
//! `--token` or, better (it stays out of process listings), `WARDEN_ADMIN_TOKEN`.

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

mod watch;

/// `warden admin` arguments.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Base URL of the broker's HTTP listener [default: $WARDEN_ADMIN_URL, else
    /// https://127.0.0.1:8080, where the embedded default configuration serves it].
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// CA certificate (PEM) to trust for an https URL [default: $WARDEN_ADMIN_CACERT, else the
    /// development CA ./warden-data/tls/ca.pem for the default URL, when it exists].
    #[arg(long, global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// Admin bearer token [default: $WARDEN_ADMIN_TOKEN, which keeps it out of process
    /// listings].
    #[arg(long, global = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AdminCommand {
    /// Policy-store users: add, remove, list, passwd, disable, enable.
    #[command(subcommand)]
    User(UserCmd),
    /// Groups: add, remove, list.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Roles: add, remove, list.
    #[command(subcommand)]
    Role(RoleCmd),
    /// Rules of a role: add, remove, list.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// List connected clients.
    Clients,
    /// Disconnect a client (MQTT 5: DISCONNECT 0x98 Administrative action).
    Kick {
        /// Client id.
        client_id: String,
    },
    /// Bans: add, remove, list.
    #[command(subcommand)]
    Ban(BanCmd),
    /// The device registry: add, set, remove, list, cert-add, cert-status, cert-remove.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Enrollment claims: add, remove, list, cert-add, cert-status, token (a one-time
    /// enrollment token, printed once), token-remove.
    #[command(subcommand)]
    Claim(ClaimCmd),
    /// The behaviour watch: rules, put, remove, quarantine-topics, alerts, restrictions, lift.
    #[command(subcommand)]
    Watch(watch::WatchCmd),
    /// A device's access token (built-in token service): `introspect` shows whether it is
    /// active and its claims, `revoke` revokes it (its connections end). The token is read
    /// from standard input, so that it stays out of the shell's history and `ps`.
    Token {
        /// introspect | revoke
        #[arg(value_enum)]
        action: TokenAction,
    },
    /// The admin audit trail: who changed what, when, from where, with what result (oldest
    /// first).
    Audit {
        /// From this time on: unix seconds, an RFC 3339 date-time (2026-12-06T02:15:07Z), or
        /// an age such as 90s, 30m, 12h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many records (the newest), 1 to 10000 [default: 1000].
        #[arg(long)]
        limit: Option<u32>,
        /// Print the records as JSON lines, as the broker stores them.
        #[arg(long)]
        json: bool,
    },
}

/// `warden admin token …`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum TokenAction {
    /// Is it active; its subject, client, scopes, expiry, jti.
    Introspect,
    /// Revoke it, whichever client it belongs to.
    Revoke,
}

#[derive(clap::Args, Debug)]
struct PasswordArg {
    /// Read the password as one line from stdin instead of the terminal.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(clap::Subcommand, Debug)]
enum UserCmd {
    /// Add a user (prompts for its password unless --no-password).
    Add {
        name: String,
        /// A group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// No password (its rules still apply to e.g. a certificate with this name).
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Remove a user (its connections are closed).
    Remove { name: String },
    /// List users.
    List,
    /// Set a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Disable a user (its connections are closed; it cannot log in).
    Disable { name: String },
    /// Enable a user.
    Enable { name: String },
}

#[derive(clap::Subcommand, Debug)]
enum GroupCmd {
    /// Add a group (`anyone-authenticated` and `anonymous` are subjects).
    Add {
        name: String,
        /// A role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Remove a group.
    Remove { name: String },
    /// List groups.
    List,
}

#[derive(clap::Subcommand, Debug)]
enum RoleCmd {
    /// Add an empty role.
    Add { name: String },
    /// Remove a role (and every reference to it).
    Remove { name: String },
    /// List roles and their rules.
    List,
}

#[derive(clap::Subcommand, Debug)]
enum RuleCmd {
    /// Append a rule to a role.
    Add {
        role: String,
        id: String,
        /// publish | subscribe | receive
        #[arg(long)]
        action: String,
        /// Topic filter (%u, %c, %i allowed).
        #[arg(long)]
        topic: String,
        /// A deny rule (default: allow).
        #[arg(long)]
        deny: bool,
        /// Highest QoS allowed.
        #[arg(long, default_value_t = 2)]
        max_qos: u8,
        /// Refuse retained publishes.
        #[arg(long)]
        no_retain: bool,
        /// Higher decides first.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
    },
    /// Remove a rule.
    Remove { role: String, id: String },
    /// List a role's rules.
    List { role: String },
}

#[derive(clap::Subcommand, Debug)]
enum BanCmd {
    /// Ban a client id, user name, IP address or CIDR block.
    Add {
        /// client-id | username | ip | cidr
        kind: String,
        value: String,
        /// Lifts itself after this many seconds.
        #[arg(long)]
        expires_in: Option<u64>,
        /// A note for operators.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Remove { kind: String, value: String },
    /// List bans.
    List,
}

#[derive(clap::Subcommand, Debug)]
enum DeviceCmd {
    /// Register a device (its id is the certificate identity, user name or token subject it
    /// connects with).
    Add {
        id: String,
        /// Its type (`%{attr:type}`).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Its owner (`%{attr:owner}`).
        #[arg(long)]
        owner: Option<String>,
        /// An attribute NAME=VALUE (repeatable; `%{attr:NAME}` in rules).
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// A PEM certificate file to register as active (repeatable).
        #[arg(long = "cert")]
        certs: Vec<std::path::PathBuf>,
    },
    /// Change a device: the type, owner given; `--attr` replaces all its attributes;
    /// `--disabled true` refuses its name whatever proves it (its connections end at once).
    Set {
        id: String,
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long = "attr")]
        attrs: Vec<String>,
        #[arg(long)]
        disabled: Option<bool>,
    },
    /// Remove a device (refused while it holds a revoked certificate).
    Remove { id: String },
    /// List devices and their certificates.
    List,
    /// Register a certificate to a device, from its PEM file or its SHA-256 fingerprint.
    CertAdd {
        id: String,
        #[arg(long, conflicts_with = "fingerprint", required_unless_present = "fingerprint")]
        cert: Option<std::path::PathBuf>,
        #[arg(long)]
        fingerprint: Option<String>,
        /// active | inactive | revoked [default: active]
        #[arg(long)]
        status: Option<String>,
    },
    /// Set a certificate's status: active | inactive | revoked (inactive and revoked end its
    /// connections at once; revoked is final).
    CertStatus { id: String, fingerprint: String, status: String },
    /// Unregister a certificate (refused for a revoked one).
    CertRemove { id: String, fingerprint: String },
}

#[derive(clap::Subcommand, Debug)]
enum ClaimCmd {
    /// Make a claim: the certificate(s) a batch of devices ships with, good only to enroll, and
    /// the template of the devices it enrolls.
    Add {
        name: String,
        /// A PEM claim certificate file (repeatable; none: tokens only).
        #[arg(long = "cert")]
        certs: Vec<std::path::PathBuf>,
        /// The type of the devices it enrolls.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Their owner.
        #[arg(long)]
        owner: Option<String>,
        /// An attribute NAME=VALUE they get (repeatable).
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// Device ids it enrolls must start with this.
        #[arg(long)]
        id_prefix: Option<String>,
        /// The most devices it may enroll.
        #[arg(long)]
        max_devices: Option<u64>,
    },
    /// Remove a claim (refused while it holds a revoked certificate).
    Remove { name: String },
    /// List claims, their certificates and unused tokens.
    List,
    /// Add a claim certificate, from its PEM file or its SHA-256 fingerprint.
    CertAdd {
        name: String,
        #[arg(long, conflicts_with = "fingerprint", required_unless_present = "fingerprint")]
        cert: Option<std::path::PathBuf>,
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Set a claim certificate's status: active | inactive | revoked (inactive and revoked end
    /// its connections at once; revoked is final).
    CertStatus { name: String, fingerprint: String, status: String },
    /// Make a one-time enrollment token (for `POST /enroll`), printed once.
    Token {
        name: String,
        /// The only device id it may enroll.
        #[arg(long)]
        device_id: Option<String>,
        /// Lifetime in seconds [default: 7 days; at most 30 days].
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Remove an unused enrollment token.
    TokenRemove { name: String, id: String },
}

/// A certificate to register (device or claim): its PEM file's content, or its fingerprint.
fn cert_body(cert: Option<&std::path::Path>, fingerprint: Option<&str>) -> anyhow::Result<Value> {
    Ok(match cert {
        Some(p) => json!({"pem": read_pem(p)?}),
        None => json!({"fingerprint": fingerprint}),
    })
}

/// `NAME=VALUE` pairs as a JSON object.
fn attr_map(attrs: &[String]) -> anyhow::Result<Value> {
    let mut m = serde_json::Map::new();
    for a in attrs {
        let (k, v) = a.split_once('=').ok_or_else(|| anyhow!("--attr {a:?}: expected NAME=VALUE"))?;
        m.insert(k.to_owned(), json!(v));
    }
    Ok(Value::Object(m))
}

fn read_pem(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

struct Api {
    url: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let req = self
            .agent
            .request(method, &url)
            .timeout(std::time::Duration::from_secs(30))
            .set("Authorization", &format!("Bearer {}", self.token));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => Ok(r.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, r)) => {
                let v: Value = r.into_json().unwrap_or(Value::Null);
                bail!("{code}: {}", v["error"].as_str().unwrap_or("request refused"))
            }
            Err(e) => Err(anyhow!("{url}: {e}")),
        }
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn password(p: &PasswordArg) -> anyhow::Result<String> {
    let bytes = if p.password_stdin {
        crate::cli::passwd::read_stdin_line()?
    } else {
        crate::cli::passwd::read_terminal_twice()?
    };
    String::from_utf8(bytes).context("the password must be UTF-8")
}

fn strs(v: &Value) -> String {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

fn print_rule(r: &Value) {
    println!(
        "  {}\t{} {} {}\tmax_qos={} retain={} priority={}",
        r["id"].as_str().unwrap_or(""),
        r["effect"].as_str().unwrap_or(""),
        r["action"].as_str().unwrap_or(""),
        r["topic"].as_str().unwrap_or(""),
        r["max_qos"],
        r["retain"],
        r["priority"]
    );
}

/// `--since` as the API takes it: an age (`90s`, `30m`, `12h`, `7d`) becomes unix seconds;
/// anything else (unix seconds, RFC 3339) is passed on for the broker to check.
fn since_param(s: &str, now: u64) -> anyhow::Result<String> {
    let s = s.trim();
    let unit = match s.as_bytes().last() {
        Some(b's') => 1,
        Some(b'm') => 60,
        Some(b'h') => 3600,
        Some(b'd') => 86_400,
        _ => return Ok(s.to_owned()),
    };
    let n: u64 = s[..s.len() - 1].parse().with_context(|| format!("--since {s:?}: expected e.g. 90s, 30m, 12h, 7d"))?;
    Ok(now.saturating_sub(n.saturating_mul(unit)).to_string())
}

/// One audit record as a line: time, actor, peer, action, target, result, detail (tabs
/// between; control characters in a field escaped).
fn audit_line(r: &Value) -> String {
    let s = |k: &str| crate::logsafe::Escaped(r[k].as_str().unwrap_or("")).to_string();
    let mut result = s("result");
    if let Some(code) = r["status"].as_u64().filter(|c| *c != 0) {
        result = format!("{result} {code}");
    }
    if let Some(e) = r["error"].as_str() {
        result = format!("{result} ({})", crate::logsafe::Escaped(e));
    }
    let detail = match &r["detail"] {
        Value::Object(m) if m.is_empty() => String::new(),
        Value::Null => String::new(),
        d => crate::logsafe::Escaped(d).to_string(),
    };
    format!("{}\t{}\t{}\t{}\t{}\t{result}\t{detail}", s("time"), s("actor"), s("peer"), s("action"), s("target"))
}

/// Run `warden admin …`.
pub fn run(args: &AdminArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("WARDEN_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("no admin token: set WARDEN_ADMIN_TOKEN or pass --token"))?;
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var("WARDEN_ADMIN_URL").ok())
        .unwrap_or_else(|| "https://127.0.0.1:8080".into());
    let cacert = args
        .cacert
        .clone()
        .or_else(|| std::env::var_os("WARDEN_ADMIN_CACERT").filter(|v| !v.is_empty()).map(Into::into));
    let agent = crate::tls::cli_agent(crate::tls::cli_cacert(cacert.as_deref(), &url).as_deref())?;
    let api = Api { url, token, agent };
    match &args.command {
        AdminCommand::User(c) => match c {
            UserCmd::Add { name, groups, roles, no_password, password: p } => {
                let mut body = json!({"name": name, "groups": groups, "roles": roles});
                if !no_password {
                    body["password"] = json!(password(p)?);
                }
                api.call("POST", "/admin/users", Some(body))?;
                println!("added user {name:?}");
            }
            UserCmd::Remove { name } => {
                api.call("DELETE", &format!("/admin/users/{}", enc(name)), None)?;
                println!("removed user {name:?}");
            }
            UserCmd::List => {
                for u in api.call("GET", "/admin/users", None)?.as_array().into_iter().flatten() {
                    println!(
                        "{}\tgroups={}\troles={}{}{}",
                        u["name"].as_str().unwrap_or(""),
                        strs(&u["groups"]),
                        strs(&u["roles"]),
                        if u["disabled"] == true { "\tdisabled" } else { "" },
                        if u["has_password"] == true { "" } else { "\tno password" },
                    );
                }
            }
            UserCmd::Passwd { name, password: p } => {
                api.call("PUT", &format!("/admin/users/{}", enc(name)), Some(json!({"password": password(p)?})))?;
                println!("password of {name:?} changed");
            }
            UserCmd::Disable { name } | UserCmd::Enable { name } => {
                let disabled = matches!(c, UserCmd::Disable { .. });
                api.call("PUT", &format!("/admin/users/{}", enc(name)), Some(json!({"disabled": disabled})))?;
                println!("user {name:?} {}", if disabled { "disabled" } else { "enabled" });
            }
        },
        AdminCommand::Group(c) => match c {
            GroupCmd::Add { name, roles } => {
                api.call("POST", "/admin/groups", Some(json!({"name": name, "roles": roles})))?;
                println!("added group {name:?}");
            }
            GroupCmd::Remove { name } => {
                api.call("DELETE", &format!("/admin/groups/{}", enc(name)), None)?;
                println!("removed group {name:?}");
            }
            GroupCmd::List => {
                for g in api.call("GET", "/admin/groups", None)?.as_array().into_iter().flatten() {
                    println!("{}\troles={}", g["name"].as_str().unwrap_or(""), strs(&g["roles"]));
                }
            }
        },
        AdminCommand::Role(c) => match c {
            RoleCmd::Add { name } => {
                api.call("POST", "/admin/roles", Some(json!({"name": name})))?;
                println!("added role {name:?}");
            }
            RoleCmd::Remove { name } => {
                api.call("DELETE", &format!("/admin/roles/{}", enc(name)), None)?;
                println!("removed role {name:?}");
            }
            RoleCmd::List => {
                for r in api.call("GET", "/admin/roles", None)?.as_array().into_iter().flatten() {
                    println!("{}", r["name"].as_str().unwrap_or(""));
                    r["rules"].as_array().into_iter().flatten().for_each(print_rule);
                }
            }
        },
        AdminCommand::Rule(c) => match c {
            RuleCmd::Add { role, id, action, topic, deny, max_qos, no_retain, priority } => {
                let body = json!({
                    "id": id, "action": action, "topic": topic,
                    "effect": if *deny { "deny" } else { "allow" },
                    "max_qos": max_qos, "retain": !no_retain, "priority": priority,
                });
                api.call("POST", &format!("/admin/roles/{}/rules", enc(role)), Some(body))?;
                println!("added rule {id:?} to role {role:?}");
            }
            RuleCmd::Remove { role, id } => {
                api.call("DELETE", &format!("/admin/roles/{}/rules/{}", enc(role), enc(id)), None)?;
                println!("removed rule {id:?} from role {role:?}");
            }
            RuleCmd::List { role } => {
                for r in api
                    .call("GET", &format!("/admin/roles/{}/rules", enc(role)), None)?
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    print_rule(r);
                }
            }
        },
        AdminCommand::Watch(c) => watch::run(&api, c)?,
        AdminCommand::Device(c) => match c {
            DeviceCmd::Add { id, kind, owner, attrs, certs } => {
                let certs =
                    certs.iter().map(|p| Ok(json!({"pem": read_pem(p)?}))).collect::<anyhow::Result<Vec<_>>>()?;
                let body = json!({"id": id, "type": kind, "owner": owner, "attributes": attr_map(attrs)?, "certificates": certs});
                api.call("POST", "/admin/devices", Some(body))?;
                println!("added device {id:?}");
            }
            DeviceCmd::Set { id, kind, owner, attrs, disabled } => {
                let mut body = json!({});
                if let Some(d) = disabled {
                    body["disabled"] = json!(d);
                }
                if let Some(k) = kind {
                    body["type"] = json!(k);
                }
                if let Some(o) = owner {
                    body["owner"] = json!(o);
                }
                if !attrs.is_empty() {
                    body["attributes"] = attr_map(attrs)?;
                }
                api.call("PUT", &format!("/admin/devices/{}", enc(id)), Some(body))?;
                println!("device {id:?} changed");
            }
            DeviceCmd::Remove { id } => {
                api.call("DELETE", &format!("/admin/devices/{}", enc(id)), None)?;
                println!("removed device {id:?}");
            }
            DeviceCmd::List => {
                for d in api.call("GET", "/admin/devices", None)?.as_array().into_iter().flatten() {
                    let attrs = d["attributes"].as_object().map(|m| {
                        m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
                    });
                    println!(
                        "{}	type={}	owner={}	attributes={}{}",
                        crate::logsafe::Escaped(d["id"].as_str().unwrap_or("")),
                        crate::logsafe::Escaped(d["type"].as_str().unwrap_or("-")),
                        crate::logsafe::Escaped(d["owner"].as_str().unwrap_or("-")),
                        crate::logsafe::Escaped(attrs.unwrap_or_default()),
                        if d["disabled"] == json!(true) { "\tdisabled" } else { "" },
                    );
                    for c in d["certificates"].as_array().into_iter().flatten() {
                        println!(
                            "  {}	{}",
                            c["fingerprint"].as_str().unwrap_or(""),
                            c["status"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            DeviceCmd::CertAdd { id, cert, fingerprint, status } => {
                let mut body = cert_body(cert.as_deref(), fingerprint.as_deref())?;
                if let Some(s) = status {
                    body["status"] = json!(s);
                }
                let v = api.call("POST", &format!("/admin/devices/{}/certificates", enc(id)), Some(body))?;
                println!("registered certificate {} to device {id:?}", v["fingerprint"].as_str().unwrap_or(""));
            }
            DeviceCmd::CertStatus { id, fingerprint, status } => {
                let path = format!("/admin/devices/{}/certificates/{}", enc(id), enc(fingerprint));
                api.call("PUT", &path, Some(json!({"status": status})))?;
                println!("certificate {fingerprint} of device {id:?} is now {status}");
            }
            DeviceCmd::CertRemove { id, fingerprint } => {
                api.call("DELETE", &format!("/admin/devices/{}/certificates/{}", enc(id), enc(fingerprint)), None)?;
                println!("unregistered certificate {fingerprint} of device {id:?}");
            }
        },
        AdminCommand::Claim(c) => match c {
            ClaimCmd::Add { name, certs, kind, owner, attrs, id_prefix, max_devices } => {
                let certs =
                    certs.iter().map(|p| Ok(json!({"pem": read_pem(p)?}))).collect::<anyhow::Result<Vec<_>>>()?;
                let body = json!({"name": name, "certificates": certs, "type": kind, "owner": owner,
                    "attributes": attr_map(attrs)?, "id_prefix": id_prefix, "max_devices": max_devices});
                api.call("POST", "/admin/claims", Some(body))?;
                println!("added claim {name:?}");
            }
            ClaimCmd::Remove { name } => {
                api.call("DELETE", &format!("/admin/claims/{}", enc(name)), None)?;
                println!("removed claim {name:?}");
            }
            ClaimCmd::List => {
                for c in api.call("GET", "/admin/claims", None)?.as_array().into_iter().flatten() {
                    let esc = |v: &Value| crate::logsafe::Escaped(v.as_str().unwrap_or("-").to_owned()).to_string();
                    println!(
                        "{}\ttype={}\towner={}\tid_prefix={}\tenrolled={}/{}",
                        esc(&c["name"]),
                        esc(&c["type"]),
                        esc(&c["owner"]),
                        esc(&c["id_prefix"]),
                        c["enrolled"],
                        c["max_devices"].as_u64().map_or("-".to_owned(), |m| m.to_string()),
                    );
                    for x in c["certificates"].as_array().into_iter().flatten() {
                        println!(
                            "  cert {}\t{}",
                            x["fingerprint"].as_str().unwrap_or(""),
                            x["status"].as_str().unwrap_or("")
                        );
                    }
                    for t in c["tokens"].as_array().into_iter().flatten() {
                        println!(
                            "  token {}\tdevice={}\texpires_at={}",
                            esc(&t["id"]),
                            esc(&t["device_id"]),
                            t["expires_at"]
                        );
                    }
                }
            }
            ClaimCmd::CertAdd { name, cert, fingerprint } => {
                let body = cert_body(cert.as_deref(), fingerprint.as_deref())?;
                let v = api.call("POST", &format!("/admin/claims/{}/certificates", enc(name)), Some(body))?;
                println!("added certificate {} to claim {name:?}", v["fingerprint"].as_str().unwrap_or(""));
            }
            ClaimCmd::CertStatus { name, fingerprint, status } => {
                let path = format!("/admin/claims/{}/certificates/{}", enc(name), enc(fingerprint));
                api.call("PUT", &path, Some(json!({"status": status})))?;
                println!("certificate {fingerprint} of claim {name:?} is now {status}");
            }
            ClaimCmd::Token { name, device_id, ttl } => {
                let v = api.call(
                    "POST",
                    &format!("/admin/claims/{}/tokens", enc(name)),
                    Some(json!({"device_id": device_id, "ttl": ttl})),
                )?;
                // The token on standard output alone (for scripts); the rest on standard error.
                eprintln!(
                    "enrollment token {} of claim {name:?}, expires at {} (shown once):",
                    v["id"].as_str().unwrap_or(""),
                    v["expires_at"]
                );
                println!("{}", v["token"].as_str().unwrap_or(""));
            }
            ClaimCmd::TokenRemove { name, id } => {
                api.call("DELETE", &format!("/admin/claims/{}/tokens/{}", enc(name), enc(id)), None)?;
                println!("removed token {id} of claim {name:?}");
            }
        },
        AdminCommand::Clients => {
            for c in api.call("GET", "/admin/clients", None)?.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\tMQTT {}",
                    c["client_id"].as_str().unwrap_or(""),
                    c["principal"].as_str().unwrap_or(""),
                    c["peer"].as_str().unwrap_or(""),
                    c["protocol"].as_str().unwrap_or("")
                );
            }
        }
        AdminCommand::Kick { client_id } => {
            api.call("POST", &format!("/admin/clients/{}/kick", enc(client_id)), None)?;
            println!("kicked {client_id:?}");
        }
        AdminCommand::Ban(c) => match c {
            BanCmd::Add { kind, value, expires_in, reason } => {
                let mut body = json!({"kind": kind, "value": value});
                if let Some(s) = expires_in {
                    body["expires_at"] = json!(crate::clock::unix_now().saturating_add(*s));
                }
                if let Some(r) = reason {
                    body["reason"] = json!(r);
                }
                api.call("POST", "/admin/bans", Some(body))?;
                println!("banned {kind} {value:?}");
            }
            BanCmd::Remove { kind, value } => {
                api.call("DELETE", &format!("/admin/bans?kind={}&value={}", enc(kind), enc(value)), None)?;
                println!("lifted the ban on {kind} {value:?}");
            }
            BanCmd::List => {
                for b in api.call("GET", "/admin/bans", None)?.as_array().into_iter().flatten() {
                    let exp = b["expires_at"].as_u64().map_or("permanent".to_string(), |e| format!("expires_at={e}"));
                    println!(
                        "{}\t{}\t{exp}\t{}",
                        b["kind"].as_str().unwrap_or(""),
                        b["value"].as_str().unwrap_or(""),
                        b["reason"].as_str().unwrap_or("")
                    );
                }
            }
        },
        AdminCommand::Token { action } => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token).context("reading the token from standard input")?;
            let token = token.trim();
            anyhow::ensure!(!token.is_empty(), "no token on standard input");
            let body = Some(json!({ "token": token }));
            match action {
                TokenAction::Introspect => println!("{}", api.call("POST", "/admin/tokens/introspect", body)?),
                TokenAction::Revoke => {
                    let r = api.call("POST", "/admin/tokens/revoke", body)?;
                    match r["revoked"].as_str() {
                        Some(jti) => println!("revoked token {jti}"),
                        None => println!("already revoked"),
                    }
                }
            }
        }
        AdminCommand::Audit { since, limit, json } => {
            let mut query = Vec::new();
            if let Some(s) = since {
                query.push(format!("since={}", enc(&since_param(s, crate::clock::unix_now())?)));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let path =
                if query.is_empty() { "/admin/audit".to_owned() } else { format!("/admin/audit?{}", query.join("&")) };
            for r in api.call("GET", &path, None)?.as_array().into_iter().flatten() {
                if *json {
                    println!("{r}");
                } else {
                    println!("{}", audit_line(r));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_an_age_or_passes_a_time_on() {
        assert_eq!(since_param("90s", 1000).unwrap(), "910");
        assert_eq!(since_param("2m", 1000).unwrap(), "880");
        assert_eq!(since_param("1h", 10_000).unwrap(), "6400");
        assert_eq!(since_param("7d", 100).unwrap(), "0");
        assert_eq!(since_param("1796523307", 0).unwrap(), "1796523307");
        assert_eq!(since_param("2026-12-06T02:15:07Z", 0).unwrap(), "2026-12-06T02:15:07Z");
        assert!(since_param("xh", 0).is_err());
    }

    #[test]
    fn an_audit_record_prints_as_one_line() {
        let r = serde_json::json!({
            "time": "2026-12-06T02:15:07Z", "unix": 1, "actor": "admin-token", "peer": "127.0.0.1:5",
            "action": "user.create", "target": "ann", "detail": {"roles": ["dev"]}, "result": "refused",
            "status": 409, "error": "user 'ann' exists"
        });
        assert_eq!(
            audit_line(&r),
            "2026-12-06T02:15:07Z\tadmin-token\t127.0.0.1:5\tuser.create\tann\trefused 409 (user 'ann' exists)\t{\"roles\":[\"dev\"]}"
        );
    }
}
