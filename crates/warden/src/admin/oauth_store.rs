//! What the token service keeps in the data directory, and `warden oauth …`.
//!
//! - `<data_dir>/oauth/signing-key.pem`: the current signing key (Ed25519, PKCS#8, 0600), made
//!   on first start. `warden oauth rotate-key` moves it to `oauth/retired/<kid>.pem` and writes
//!   a new one; retired keys stay in the JWKS so tokens they signed keep verifying until they
//!   expire (delete a retired file to stop that).
//! - `<data_dir>/oauth/clients.toml`: OAuth clients created with `warden oauth client add`
//!   (`[[client]]` tables, the same keys as `[[oauth.client]]` in the configuration).
//!
//! A running broker picks up both on SIGHUP. Each change is written to the admin audit trail
//! (actor `cli`, [`crate::admin::audit_log`]).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use warden_policy::jwt::SigningKey;

use crate::config::{Config, OAuthClientConfig, Secret};
use crate::fsutil::write_atomically;

fn oauth_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("oauth")
}

/// The signing keys: the current one first (made if missing), then the retired ones.
pub fn load_keys(data_dir: &Path) -> anyhow::Result<Vec<SigningKey>> {
    let dir = oauth_dir(data_dir);
    let current = dir.join("signing-key.pem");
    let mut keys = vec![if current.exists() {
        read_key(&current)?
    } else {
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let key = SigningKey::generate();
        write_atomically(&current, key.to_pkcs8_pem().as_bytes())
            .with_context(|| format!("{}: cannot write", current.display()))?;
        tracing::info!(kid = key.kid(), "created the token service's signing key");
        key
    }];
    let retired = dir.join("retired");
    if retired.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&retired)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        files.sort();
        for f in files {
            keys.push(read_key(&f)?);
        }
    }
    Ok(keys)
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<StoredClient>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct StoredClient {
    id: String,
    secret_hash: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
}

fn clients_path(data_dir: &Path) -> PathBuf {
    oauth_dir(data_dir).join("clients.toml")
}

fn read_clients_file(data_dir: &Path) -> anyhow::Result<ClientsFile> {
    let path = clients_path(data_dir);
    if !path.exists() {
        return Ok(ClientsFile::default());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.message()))
}

/// Clients from the configuration, then those created with `warden oauth client add` (an id
/// in both is an error: one place decides a client's secret).
pub fn all_clients(cfg: &Config) -> anyhow::Result<Vec<OAuthClientConfig>> {
    let mut out = cfg.oauth.clients.clone();
    for c in read_clients_file(&cfg.data_dir)?.client {
        if out.iter().any(|o| o.id == c.id) {
            bail!(
                "OAuth client {:?} is declared both in the configuration and in {}",
                c.id,
                clients_path(&cfg.data_dir).display()
            );
        }
        if !warden_policy::password::is_valid_hash(&c.secret_hash) {
            bail!("{}: client {:?} has an invalid secret_hash", clients_path(&cfg.data_dir).display(), c.id);
        }
        out.push(OAuthClientConfig {
            id: c.id,
            secret_hash: Secret(c.secret_hash),
            secret_hash_file: None,
            scopes: c.scopes,
            roles: c.roles,
        });
    }
    Ok(out)
}

/// Add or replace a client stored in the data directory (the admin API's `POST
/// /admin/oauth/clients`). Clients declared in the configuration cannot be changed here.
pub fn put_stored_client(
    cfg: &Config,
    id: &str,
    secret_hash: String,
    scopes: Vec<String>,
    roles: Vec<String>,
) -> anyhow::Result<()> {
    if id.is_empty() || warden_policy::cert::check_identity(id).is_err() {
        bail!("client id {id:?} is not a valid principal name (no + # / * or control characters)");
    }
    if cfg.oauth.clients.iter().any(|c| c.id == id) {
        bail!("client {id:?} is declared in the configuration; change it there");
    }
    let mut f = read_clients_file(&cfg.data_dir)?;
    f.client.retain(|c| c.id != id);
    f.client.push(StoredClient { id: id.to_owned(), secret_hash, scopes, roles });
    write_clients(&cfg.data_dir, &f)
}

/// Remove a client stored in the data directory; false when there was none.
pub fn remove_stored_client(data_dir: &Path, id: &str) -> anyhow::Result<bool> {
    let mut f = read_clients_file(data_dir)?;
    let before = f.client.len();
    f.client.retain(|c| c.id != id);
    if f.client.len() == before {
        return Ok(false);
    }
    write_clients(data_dir, &f)?;
    Ok(true)
}

/// `warden oauth …` arguments.
#[derive(clap::Args, Debug)]
pub struct OAuthArgs {
    /// Configuration file (default: the embedded default, data in ./warden-data).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    command: OAuthCommand,
}

#[derive(clap::Subcommand, Debug)]
enum OAuthCommand {
    /// Manage OAuth clients stored in the data directory.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Make a new signing key; the old one is retired but stays in the JWKS.
    RotateKey,
}

#[derive(clap::Subcommand, Debug)]
enum ClientCommand {
    /// Add (or replace) a client; the secret is read from stdin (one line) or generated.
    Add {
        /// Client id (the `sub` of its tokens).
        id: String,
        /// A scope it may ask for (repeatable), e.g. `mqtt:pub:devices/dev-001/#`.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A role carried in its tokens (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read the secret from stdin instead of generating one.
        #[arg(long)]
        secret_stdin: bool,
    },
    /// Remove a client.
    Remove {
        /// Client id.
        id: String,
    },
    /// List clients (ids, scopes, roles; never secrets).
    List,
}

fn write_clients(data_dir: &Path, f: &ClientsFile) -> anyhow::Result<()> {
    let path = clients_path(data_dir);
    std::fs::create_dir_all(oauth_dir(data_dir))?;
    let text = toml::to_string(f).context("serialising clients")?;
    write_atomically(&path, text.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))
}

/// Run `warden oauth …`.
pub fn run(args: &OAuthArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default(),
    };
    let data_dir = &cfg.data_dir;
    match &args.command {
        OAuthCommand::RotateKey => {
            let dir = oauth_dir(data_dir);
            let current = dir.join("signing-key.pem");
            let old = load_keys(data_dir)?.remove(0);
            let retired = dir.join("retired");
            std::fs::create_dir_all(&retired)?;
            let target = retired.join(format!("{}.pem", old.kid()));
            write_atomically(&target, old.to_pkcs8_pem().as_bytes())?;
            let new = SigningKey::generate();
            write_atomically(&current, new.to_pkcs8_pem().as_bytes())?;
            crate::admin::audit_log::record_cli(
                data_dir,
                "oauth.rotate_key",
                new.kid(),
                serde_json::json!({ "retired": old.kid() }),
            );
            println!("new signing key {} (retired {}); send SIGHUP to a running broker", new.kid(), old.kid());
        }
        OAuthCommand::Client(ClientCommand::List) => {
            for c in all_clients(&cfg)? {
                println!("{}\tscopes={}\troles={}", c.id, c.scopes.join(" "), c.roles.join(","));
            }
        }
        OAuthCommand::Client(ClientCommand::Remove { id }) => {
            if !remove_stored_client(data_dir, id)? {
                bail!("no client {id:?} in {}", clients_path(data_dir).display());
            }
            crate::admin::audit_log::record_cli(data_dir, "oauth_client.delete", id, serde_json::json!({}));
            println!("removed client {id:?}; send SIGHUP to a running broker");
        }
        OAuthCommand::Client(ClientCommand::Add { id, scopes, roles, secret_stdin }) => {
            let (secret, generated) = if *secret_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                (line.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                use rand::distributions::{Alphanumeric, DistString};
                (Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32), true)
            };
            if secret.is_empty() {
                bail!("empty secret");
            }
            let hash = warden_policy::password::hash_password(secret.as_bytes());
            let exists = read_clients_file(data_dir)?.client.iter().any(|c| c.id == *id);
            put_stored_client(&cfg, id, hash, scopes.clone(), roles.clone())?;
            crate::admin::audit_log::record_cli(
                data_dir,
                if exists { "oauth_client.rotate" } else { "oauth_client.create" },
                id,
                serde_json::json!({ "secret": "set", "scopes": scopes, "roles": roles }),
            );
            eprintln!("stored client {id:?} in {}; send SIGHUP to a running broker", clients_path(data_dir).display());
            if generated {
                // The only time the secret is shown.
                println!("{secret}");
            }
        }
    }
    Ok(())
}

/// Every OAuth client (configured and stored) as the token service takes them.
pub fn oauth_clients(cfg: &Config) -> anyhow::Result<Vec<warden_http::OAuthClient>> {
    Ok(all_clients(cfg)?
        .into_iter()
        .map(|c| warden_http::OAuthClient { id: c.id, secret_hash: c.secret_hash.0, scopes: c.scopes, roles: c.roles })
        .collect())
}
