//! `warden`: the broker binary. Subcommands: `serve` (the default), `check`, `passwd`, `cert`,
//! `oauth`, `token`, `admin`, `audit`, `import`, `completions`, `man`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use warden::config::{Config, ListenerProtocol, LogConfig};
use warden::logging::LogFile;
use warden::server::Server;

/// mimalloc instead of glibc's malloc: glibc keeps the heaps that argon2id's 19 MiB blocks grew
/// (its mmap threshold rises after the first one is freed), so a wrong-password flood left the
/// broker at over a gigabyte; see docs/PERFORMANCE.md, "Optimisation log".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "warden", version, about = "Warden: a secure MQTT broker")]
struct Cli {
    /// Log format: text or json. Default: `[log] format` of the configuration, else text.
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (the default). Without --config: the embedded default configuration.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Add or update a user in a password file (argon2id), like mosquitto_passwd.
    Passwd(warden::cli::passwd::PasswdArgs),
    /// Make a development PKI: `warden cert ca`, `warden cert server`, `warden cert client`;
    /// revoke device certificates into DIR/ca.crl: `warden cert revoke`, `warden cert crl`.
    Cert(warden::cli::cert::CertArgs),
    /// Manage the token service: `warden oauth client add|remove|list`, `warden oauth rotate-key`.
    Oauth(warden::cli::oauth::OAuthArgs),
    /// Get an access token from the built-in token service (client-credentials grant).
    Token(warden::cli::token::TokenArgs),
    /// Manage a running broker through its admin API: users, groups, roles, rules, clients,
    /// kick, bans, the audit trail.
    Admin(warden::cli::admin::AdminArgs),
    /// Posture audit of a configuration: anonymous or plain listeners on public addresses,
    /// over-broad grants, expiring certificates, weak password hashes, long token lifetimes,
    /// secrets open to others… Exit 1 when a finding is high or critical, 2 when the
    /// configuration cannot be read.
    Audit(warden::cli::audit::AuditArgs),
    /// Coming from Mosquitto: `warden import mosquitto-dynsec FILE --config CFG` (a dynamic-
    /// security JSON into the policy store), `warden import mosquitto-conf FILE` (print the
    /// equivalent warden.toml).
    Import(warden::cli::import::ImportArgs),
    /// Print a shell completion script: `warden completions bash > /etc/bash_completion.d/warden`.
    Completions {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write man pages generated from this command line: warden.1 and one per subcommand
    /// (warden-passwd.1, …) into DIR, or warden.1 alone to stdout without --dir.
    Man {
        /// Directory to write the pages into (created when missing).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Validate a configuration (and its password file) without starting: every error found is
    /// listed, exit 1 when there is any. With --explain: the ACL decision for one operation,
    /// exit 0 for allow, 1 for deny, 2 when it cannot be answered.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Explain the ACL decision for one operation: `--explain [--user U] [--client C]
        /// publish|subscribe|receive TOPIC`.
        #[arg(long, requires = "operation")]
        explain: bool,
        /// User name (omit for an anonymous client).
        #[arg(long, requires = "explain")]
        user: Option<String>,
        /// Client id.
        #[arg(long, default_value = "", requires = "explain")]
        client: String,
        /// Explain for a client-certificate identity instead of a user.
        #[arg(long, requires = "explain", conflicts_with_all = ["user", "token"])]
        cert: Option<String>,
        /// Explain for an access token with this subject (add its --scope and --role values).
        #[arg(long, requires = "explain", conflicts_with = "user")]
        token: Option<String>,
        /// A scope of the token (`mqtt:pub:FILTER`, `mqtt:sub:FILTER`, …); repeatable.
        #[arg(long = "scope", requires = "explain")]
        scopes: Vec<String>,
        /// A policy-store role the principal holds (a token's role; alone: a principal holding
        /// only this role); repeatable.
        #[arg(long = "role", requires = "explain", conflicts_with_all = ["user", "cert"])]
        roles: Vec<String>,
        /// The client's address (`10.1.2.3`, `::1`): rules with a `source` condition apply when
        /// it is in one of their networks; without it they do not apply.
        #[arg(long, requires = "explain")]
        from: Option<std::net::IpAddr>,
        /// publish | subscribe | receive, then the topic (or filter).
        #[arg(num_args = 2, value_names = ["ACTION", "TOPIC"], requires = "explain")]
        operation: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn completions(shell: CompletionShell) -> anyhow::Result<()> {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "warden", &mut out);
    write_stdout(&out)
}

/// Write generated text to stdout; a reader that stopped early (`| head`) is not an error.
fn write_stdout(data: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match std::io::Write::write_all(&mut out, data).and_then(|()| std::io::Write::flush(&mut out)) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// `warden man [--dir DIR]`.
fn man_pages(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out).context("rendering the man page")?;
        return write_stdout(&out);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // warden.1, then warden-passwd.1, warden-cert-revoke.1, … (one per subcommand).
    clap_mangen::generate_to(cmd, dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
    println!("wrote the man pages (warden.1, warden-SUBCOMMAND.1) into {}", dir.display());
    Ok(())
}

/// Starts the log, once: `[log]` of the configuration (the embedded default and the commands
/// other than `serve` have none: standard error, info, text), `--log-format` over its format,
/// `RUST_LOG` over its level. Returns the log file, to reopen on SIGHUP and SIGUSR1.
fn init_logging(log: &LogConfig, format: Option<LogFormat>) -> anyhow::Result<Option<LogFile>> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, note) = warden::logging::env_filter(&log.level, rust_log.as_deref());
    let format = format.unwrap_or(match log.format {
        warden::config::LogFormat::Text => LogFormat::Text,
        warden::config::LogFormat::Json => LogFormat::Json,
    });
    let file = match &log.file {
        Some(p) => Some(LogFile::open(p).with_context(|| format!("[log] file {}", p.display()))?),
        None => None,
    };
    let (writer, ansi) = match &file {
        Some(f) => (BoxMakeWriter::new(f.clone()), false),
        None => (BoxMakeWriter::new(std::io::stderr), std::io::IsTerminal::is_terminal(&std::io::stderr())),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        // Peer-supplied values are escaped where they are logged (warden::logsafe); the text
        // format escapes control characters in every field as well. JSON escapes its strings.
        LogFormat::Text => builder.fmt_fields(warden::logsafe::escaping_fields()).init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(note) = note {
        warn!("{note}");
    }
    Ok(file)
}

/// SIGHUP / SIGUSR1: the log file opened again at its path (logrotate moved it away).
fn reopen_log(file: Option<&LogFile>) {
    if let Some(f) = file {
        match f.reopen() {
            Ok(()) => info!(file = %f.path().display(), "log file reopened"),
            Err(e) => {
                warn!(file = %f.path().display(), error = %e, "cannot reopen the log file; still writing to the one open")
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { config: None });
    // `serve` starts the log from its configuration, once loaded.
    if !matches!(command, Command::Serve { .. }) {
        if let Err(e) = init_logging(&LogConfig::default(), cli.log_format) {
            eprintln!("warden: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let result = match command {
        Command::Serve { config } => serve(config, cli.log_format),
        Command::Passwd(args) => warden::cli::passwd::run(&args),
        Command::Cert(args) => warden::cli::cert::run(&args),
        Command::Token(args) => warden::cli::token::run(&args),
        Command::Oauth(args) => warden::cli::oauth::run(&args),
        Command::Admin(args) => warden::cli::admin::run(&args),
        Command::Import(args) => warden::cli::import::run(&args),
        Command::Audit(args) => return warden::cli::audit::run(&args),
        Command::Check { config, explain: false, .. } => return check(&config),
        Command::Check { config, user, client, operation, cert, token, scopes, roles, from, .. } => {
            // The configuration is checked first (its summary printed), as without --explain.
            // Then grep-like: 0 allow, 1 deny, 2 the question could not be answered.
            if check(&config) != ExitCode::SUCCESS {
                return ExitCode::from(2);
            }
            return match Config::load(&config).map_err(anyhow::Error::from).and_then(|cfg| {
                let other = explain_principal(cert.as_deref(), token.as_deref(), &scopes, &roles);
                match other {
                    Some((principal, who)) => {
                        let principal = match from {
                            Some(ip) => principal.with_peer(ip),
                            None => principal,
                        };
                        explain_for(&cfg, &principal, &who, &client, &operation)
                    }
                    None => explain_decision(&cfg, user.as_deref(), from, &client, &operation),
                }
            }) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("warden: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => man_pages(dir.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `warden check`: every error found is printed (`warden: FILE:LINE: reason`, one a line), then
/// the count; exit 1 when there is any.
fn check(path: &std::path::Path) -> ExitCode {
    let (cfg, errors) = Config::load_all_errors(path);
    let mut errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    if let Some(cfg) = cfg {
        // With lines set aside after errors, the rest is still checked (no summary then).
        errors.extend(check_loaded(path, &cfg, errors.is_empty()));
    }
    if errors.is_empty() {
        return ExitCode::SUCCESS;
    }
    for e in &errors {
        eprintln!("warden: {e}");
    }
    eprintln!("warden: {}: {} error(s) found", path.display(), errors.len());
    ExitCode::FAILURE
}

/// What a valid configuration refers to (password file, ACL, policy store, bans, TLS files),
/// each checked on its own; the errors found (empty: all good, the summary printed).
fn check_loaded(path: &std::path::Path, cfg: &Config, summary: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let mut note = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            errors.push(format!("{e:#}"));
        }
    };
    let mut users = None;
    note(
        warden::auth::tokens::TokenAuth::new(cfg.auth.jwt.as_ref(), None)
            .and_then(|tokens| {
                users = Some(warden::auth::Authenticator::load(&cfg.auth, cfg.identity, tokens)?.user_count());
                Ok(())
            })
            .map_err(anyhow::Error::from),
    );
    note(warden::server::load_policy(&cfg.authz).map(drop).map_err(anyhow::Error::from));
    let (mut store_users, mut devices) = (None, 0);
    note(
        warden::admin::policy_store::load(&cfg.data_dir)
            .map(|s| {
                store_users = Some(s.users.len());
                devices = s.devices.len();
            })
            .map_err(anyhow::Error::from),
    );
    note(warden::admission::bans::BanList::load(&cfg.data_dir).map(drop).map_err(anyhow::Error::from));
    for l in &cfg.listeners {
        if let Some(t) = &l.tls {
            note(
                warden::tls::server_config(t)
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("{} listener {}: {e:#}", l.protocol, l.bind)),
            );
        }
    }
    if !errors.is_empty() || !summary {
        return errors;
    }
    // Inline secrets and secret files open to group or others: warnings, not errors.
    for w in cfg.warnings() {
        eprintln!("warden: warning: {w}");
    }
    if cfg.auth.registered_certificates_only {
        if !cfg.listeners.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some())) {
            eprintln!(
                "warden: warning: [auth] registered_certificates_only is set but no listener verifies client certificates (client_ca)"
            );
        }
        println!("device registry: {devices} device(s); only their active certificates are accepted");
    }
    // The connection caps against the descriptors `serve` would have (it raises the soft limit
    // to this hard one): the same warning as at start, before it happens.
    if let Ok((_, hard)) = warden::admission::fdlimit::current() {
        let demand = warden::admission::fdlimit::Demand {
            mqtt_listeners: cfg.listeners.iter().map(|l| format!("{}://{}", l.protocol, l.bind)).collect(),
            mqtt_max: cfg.limits.max_connections,
            http: cfg.http.as_ref().map(|h| (format!("{}://{}", h.scheme(), h.bind), h.limits.max_connections)),
        };
        if let Some(w) = warden::admission::fdlimit::plan(hard, &demand).warning {
            println!("warning: {w}");
        }
    }
    println!(
        "{}: ok ({} listener(s), {} user(s) in the password file, {} in the policy store, anonymous {})",
        path.display(),
        cfg.listeners.len(),
        users.unwrap_or(0),
        store_users.unwrap_or(0),
        match cfg.listeners.iter().filter(|l| l.anonymous(&cfg.auth)).count() {
            0 => "refused".to_owned(),
            n if n == cfg.listeners.len() => "allowed".to_owned(),
            n => format!("allowed on {n} listener(s)"),
        }
    );
    Vec::new()
}

/// `warden check --explain`: prints the decision and what made it; true for allow.
/// A principal other than a user or anonymous for `--explain`, and how to name it.
fn explain_principal(
    cert: Option<&str>,
    token: Option<&str>,
    scopes: &[String],
    roles: &[String],
) -> Option<(warden_policy::Principal, String)> {
    let arcs = |v: &[String]| v.iter().map(|s| std::sync::Arc::from(s.as_str())).collect::<Vec<_>>();
    if let Some(c) = cert {
        return Some((warden_policy::Principal::certificate(c), format!("certificate identity {c:?}")));
    }
    if token.is_none() && scopes.is_empty() && roles.is_empty() {
        return None;
    }
    let subject = token.unwrap_or("-");
    let who = match token {
        Some(t) => format!("token of {t:?} with scopes {scopes:?} and roles {roles:?}"),
        None => format!("a principal holding roles {roles:?} (scopes {scopes:?})"),
    };
    Some((warden_policy::Principal::token(subject, arcs(roles), arcs(scopes)), who))
}

/// The `ACTION TOPIC` of `--explain`: the operation (`None` when the topic is not valid for
/// that action: denied, as the broker never gets that far) and the topic as given.
use warden::admin::policy_store::{acl_line, Operation};

fn explain_operation(op: &[String]) -> anyhow::Result<(Option<Operation>, &str)> {
    let (action, topic) = match op {
        [a, t] => (a.as_str(), t.as_str()),
        _ => anyhow::bail!("--explain needs ACTION TOPIC"),
    };
    let operation = Operation::parse(action, topic).map_err(|e| anyhow::anyhow!(e))?;
    if operation.is_none() {
        println!("deny: {topic:?} is not a valid topic for this action");
    }
    Ok((operation, topic))
}

/// `--explain` for `principal` through the broker's own decision (ACL file, policy store,
/// token scopes together), naming the deciding source.
fn explain_for(
    cfg: &Config,
    principal: &warden_policy::Principal,
    who: &str,
    client: &str,
    op: &[String],
) -> anyhow::Result<bool> {
    let Some(operation) = explain_operation(op)?.0 else { return Ok(false) };
    let store = warden::admin::policy_store::load(&cfg.data_dir)?;
    let acl = warden::admin::policy_store::load_acl(&cfg.authz)?;
    let policy = warden_policy::PolicyAuthorizer::new(acl, false).with_store(std::sync::Arc::new(store.compile()));
    let (d, by) = policy.explain(principal, client, operation.action(mqtt_codec::QoS::AtMostOnce, false));
    let verdict = if d.is_allowed() { "allow" } else { "deny" };
    let by = match (&by, &cfg.authz.acl_file) {
        (warden_policy::DecidedBy::Acl(line), Some(path)) if *line > 0 => acl_line(path, *line),
        _ => by.to_string(),
    };
    println!("{verdict}: decided by {by} ({who})");
    Ok(d.is_allowed())
}

fn explain_decision(
    cfg: &Config,
    user: Option<&str>,
    from: Option<std::net::IpAddr>,
    client: &str,
    op: &[String],
) -> anyhow::Result<bool> {
    let (Some(operation), topic) = explain_operation(op)? else { return Ok(false) };
    let action = operation.action(mqtt_codec::QoS::AtMostOnce, false);
    let who = user.map_or_else(|| "anonymous".to_string(), |u| format!("user {u:?}"));
    let store = warden::admin::policy_store::load(&cfg.data_dir)?;
    if store.has_rules() {
        // The policy store is a source too: explain the combined decision.
        let acl = warden::admin::policy_store::load_acl(&cfg.authz)?;
        let policy = warden_policy::PolicyAuthorizer::new(acl, false).with_store(std::sync::Arc::new(store.compile()));
        let principal = user.map_or_else(warden_policy::Principal::anonymous, warden_policy::Principal::user);
        let principal = match from {
            Some(ip) => principal.with_peer(ip),
            None => principal,
        };
        let (d, by) = policy.explain(&principal, client, action);
        let verdict = if d.is_allowed() { "allow" } else { "deny" };
        println!("{verdict}: decided by {by} (ACL file and policy store, {who})");
        return Ok(d.is_allowed());
    }
    let Some(acl_path) = &cfg.authz.acl_file else {
        println!(
            "allow: no ACL file is configured, so {who} may do anything (token clients are bound by their scopes)"
        );
        return Ok(true);
    };
    let text = std::fs::read_to_string(acl_path).with_context(|| format!("reading {}", acl_path.display()))?;
    let acl = warden_policy::acl::AclFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", acl_path.display()))?;
    let allowed = match acl.explain_from(user, client, from, action) {
        Some(m) if m.line == 0 => {
            println!("deny: {topic:?} is not a valid topic for this action");
            false
        }
        Some(m) => {
            let rule = text.lines().nth(m.line - 1).unwrap_or("").trim();
            let verdict = if m.allowed { "allow" } else { "deny" };
            println!("{verdict}: {}:{}: {rule}", acl_path.display(), m.line);
            m.allowed
        }
        None => {
            println!("deny: no rule in {} matches (default deny)", acl_path.display());
            false
        }
    };
    Ok(allowed)
}

fn serve(config: Option<PathBuf>, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let embedded = config.is_none();
    // Before the log starts: a configuration that does not load is printed by `main`.
    let mut cfg = match &config {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default(),
    };
    let log_file = init_logging(&cfg.log, log_format)?;
    let mut admin_password = None;
    let mut admin_token = None;
    if embedded {
        if let Some(pf) = &cfg.auth.password_file {
            admin_password = warden::cli::bootstrap::ensure_admin(&cfg.data_dir, pf)?;
        }
        // The admin API and the console need an admin token: made on first start, shown once.
        let (hash, token) = warden::cli::bootstrap::ensure_admin_token(&cfg.data_dir)?;
        if let Some(http) = cfg.http.as_mut() {
            http.admin_token_hash = Some(warden::config::Secret(hash));
        }
        admin_token = token;
        let (pki, created) = warden::cli::cert::ensure_dev_pki(&cfg.data_dir.join("tls"))?;
        if created {
            info!(ca = %pki.ca_cert.display(), "created a development CA and a localhost server certificate");
        }
    }
    // Every connection is a descriptor: the soft limit up to the hard one, before anything opens.
    match warden::admission::fdlimit::raise() {
        Ok((before, after)) if after > before => info!(from = before, to = after, "raised the file descriptor limit"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    // `worker_threads`: one per core unless the configuration says (TOKIO_WORKER_THREADS, which
    // tokio reads, still applies when it does not).
    if let Some(n) = cfg.worker_threads {
        rt.worker_threads(n.get());
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let server = Server::start(&cfg).await?;
        banner(&server, &cfg, embedded, admin_password.as_deref(), admin_token.as_deref());
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        warden::sd_notify::notify("READY=1");
        loop {
            tokio::select! {
                // The log file first, so that what the reload says lands in the new one.
                _ = hup.recv() => {
                    reopen_log(log_file.as_ref());
                    warden::sd_notify::notify("RELOADING=1");
                    server.reload();
                    warden::sd_notify::notify("READY=1");
                }
                _ = usr1.recv() => reopen_log(log_file.as_ref()),
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        info!("shutting down");
        warden::sd_notify::notify("STOPPING=1");
        server.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })
    .inspect_err(|e| error!("{e:#}"))
}

fn banner(server: &Server, cfg: &Config, embedded: bool, admin_password: Option<&str>, admin_token: Option<&str>) {
    let source = match &cfg.source {
        Some(p) => p.display().to_string(),
        None => "embedded default configuration".to_string(),
    };
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    info!(config = %source, data_dir = %cfg.data_dir.display(), worker_threads = workers, "{}", warden_core::broker::VERSION);
    for l in &server.listeners {
        match l.protocol {
            ListenerProtocol::Mqtt => info!("listening: mqtt://{}", l.addr),
            ListenerProtocol::Mqtts => info!("listening: mqtts://{}", l.addr),
            ListenerProtocol::Ws => info!("listening: ws://{}{}", l.addr, l.path),
            ListenerProtocol::Wss => info!("listening: wss://{}{}", l.addr, l.path),
        }
    }
    if let (Some(a), Some(h)) = (server.http_addr, &cfg.http) {
        info!("listening: {}://{a} (token service: /oauth/token, /.well-known/jwks.json)", h.scheme());
    }
    if embedded {
        // The one-time password is shown once, on the terminal only (stdout), never in the logs.
        let pw = admin_password.map_or_else(
            || "<password>".to_string(),
            |p| {
                println!();
                println!(
                    "  First start: created user 'admin' in {}",
                    cfg.auth.password_file.as_ref().map_or(String::new(), |p| p.display().to_string())
                );
                println!("  One-time password (shown only now; change it with `warden passwd`): {p}");
                format!("'{p}'")
            },
        );
        println!();
        if let Some(a) = server.addr(ListenerProtocol::Mqtt) {
            println!("  Try: mosquitto_sub -h {} -p {} -u admin -P {pw} -t '#' -v", a.ip(), a.port());
        }
        if let Some(a) = server.addr(ListenerProtocol::Mqtts) {
            let ca = cfg.data_dir.join("tls").join("ca.pem");
            println!(
                "  TLS: mosquitto_sub -h localhost -p {} --cafile {} -u admin -P {pw} -t '#' -v",
                a.port(),
                ca.display()
            );
            println!(
                "  Device certificates: warden cert client --dir {} --cn DEVICE_ID",
                ca.parent().unwrap_or(&ca).display()
            );
        }
        if let (Some(a), Some(h)) = (server.http_addr, &cfg.http) {
            println!("  Security console: {}://{a}/console/", h.scheme());
            match admin_token {
                Some(t) => println!(
                    "  Admin token (shown only now; its hash is in {}): {t}",
                    cfg.data_dir.join(warden::cli::bootstrap::ADMIN_TOKEN_HASH_FILE).display()
                ),
                None => println!(
                    "  Sign in with the admin token shown on the first start (delete {} and restart for a new one)",
                    cfg.data_dir.join(warden::cli::bootstrap::ADMIN_TOKEN_HASH_FILE).display()
                ),
            }
        }
        println!();
    }
    if !cfg.auth.allow_anonymous {
        info!("anonymous clients are refused");
    }
}
