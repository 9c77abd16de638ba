//! What the token service keeps in the data directory (`warden oauth …`, in [`crate::cli::oauth`],
//! edits it too).
//!
//! - `<data_dir>/oauth/signing-key.pem`: the current signing key (Ed25519, PKCS#8, 0600), made
//!   on first start. `warden oauth rotate-key` moves it to `oauth/retired/<kid>.pem` and writes
//!   a new one; retired keys stay in the JWKS so tokens they signed keep verifying until they
//!   expire (delete a retired file to stop that).
//! - `<data_dir>/oauth/clients.toml`: OAuth clients created with `warden oauth client add`
//!   (`[[client]]` tables, the same keys as `[[oauth.client]]` in the configuration).
//!
//! A running broker picks up both on SIGHUP. Each change is written to the admin audit trail
//! (actor `cli`, [`crate::admin::audit_log`]). On a node of a cluster the stored clients are
//! one shared document ([`crate::admin::cluster_sync::OAUTH_CLIENTS`]): changed through the
//! admin API or found changed by a SIGHUP, the file is published; another node's version
//! replaces it ([`replace_stored_clients`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warden_policy::jwt::SigningKey;

use crate::config::{Config, OAuthClientConfig, Secret};
use crate::fsutil::write_atomically;

/// `<data_dir>/oauth`.
pub fn oauth_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("oauth")
}

/// The signing keys: the current one first (made if missing), then the retired ones.
pub fn load_keys(data_dir: &Path) -> crate::Result<Vec<SigningKey>> {
    let dir = oauth_dir(data_dir);
    let current = dir.join("signing-key.pem");
    let mut keys = vec![if current.exists() {
        read_key(&current)?
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(format!("{}: cannot create", dir.display()), e))?;
        let key = SigningKey::generate();
        write_atomically(&current, key.to_pkcs8_pem().as_bytes())
            .map_err(|e| crate::Error::io(format!("{}: cannot write", current.display()), e))?;
        tracing::info!(kid = key.kid(), "created the token service's signing key");
        key
    }];
    let retired = dir.join("retired");
    if retired.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&retired)
            .map_err(|e| crate::Error::io(format!("{}: cannot read", retired.display()), e))?
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

fn read_key(path: &Path) -> crate::Result<SigningKey> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| crate::Error::io(format!("{}: cannot read", path.display()), e))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| crate::Error::invalid(path, e))
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<StoredClient>,
}

/// A client stored in the data directory: its secret only as a salted slow hash (the form the
/// cluster shares it in too, [`crate::admin::cluster_sync::OAUTH_CLIENTS`]).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
pub struct StoredClient {
    /// The client id.
    pub id: String,
    /// The secret's hash (a PHC string; never the secret).
    pub secret_hash: String,
    /// The scopes its tokens may carry.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The policy-store roles its tokens carry.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `<data_dir>/oauth/clients.toml`.
pub fn clients_path(data_dir: &Path) -> PathBuf {
    oauth_dir(data_dir).join("clients.toml")
}

fn read_clients_file(data_dir: &Path) -> crate::Result<ClientsFile> {
    let path = clients_path(data_dir);
    if !path.exists() {
        return Ok(ClientsFile::default());
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| crate::Error::io(format!("{}: cannot read", path.display()), e))?;
    toml::from_str(&text).map_err(|e| crate::Error::invalid(&path, e.message()))
}

/// True when `<data_dir>/oauth/clients.toml` holds a client `id`.
pub fn is_stored_client(data_dir: &Path, id: &str) -> crate::Result<bool> {
    Ok(read_clients_file(data_dir)?.client.iter().any(|c| c.id == id))
}

/// Clients from the configuration, then those created with `warden oauth client add` (an id
/// in both is an error: one place decides a client's secret).
pub fn all_clients(cfg: &Config) -> crate::Result<Vec<OAuthClientConfig>> {
    let mut out = cfg.oauth.clients.clone();
    for c in read_clients_file(&cfg.data_dir)?.client {
        if out.iter().any(|o| o.id == c.id) {
            return Err(crate::Error::OAuth(format!(
                "OAuth client {:?} is declared both in the configuration and in {}",
                c.id,
                clients_path(&cfg.data_dir).display()
            )));
        }
        if !warden_policy::password::is_valid_hash(&c.secret_hash) {
            return Err(crate::Error::OAuth(format!(
                "{}: client {:?} has an invalid secret_hash",
                clients_path(&cfg.data_dir).display(),
                c.id
            )));
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
) -> crate::Result<()> {
    if id.is_empty() || warden_policy::cert::check_identity(id).is_err() {
        return Err(crate::Error::OAuth(format!(
            "client id {id:?} is not a valid principal name (no + # / * or control characters)"
        )));
    }
    if cfg.oauth.clients.iter().any(|c| c.id == id) {
        return Err(crate::Error::OAuth(format!("client {id:?} is declared in the configuration; change it there")));
    }
    let mut f = read_clients_file(&cfg.data_dir)?;
    f.client.retain(|c| c.id != id);
    f.client.push(StoredClient { id: id.to_owned(), secret_hash, scopes, roles });
    write_clients(&cfg.data_dir, &f)
}

/// Remove a client stored in the data directory; false when there was none.
pub fn remove_stored_client(data_dir: &Path, id: &str) -> crate::Result<bool> {
    let mut f = read_clients_file(data_dir)?;
    let before = f.client.len();
    f.client.retain(|c| c.id != id);
    if f.client.len() == before {
        return Ok(false);
    }
    write_clients(data_dir, &f)?;
    Ok(true)
}

/// The clients stored in the data directory (`warden oauth client add`, the admin API), in
/// the file's order.
pub fn stored_clients(data_dir: &Path) -> crate::Result<Vec<StoredClient>> {
    Ok(read_clients_file(data_dir)?.client)
}

/// Replace the clients stored in the data directory with `clients` (another node's version,
/// SPEC §11): a client whose id this node's configuration declares, whose id is not a valid
/// principal name, or whose `secret_hash` is not a hash this broker verifies is left out
/// (each named in the answer). An unchanged file is not written again.
pub fn replace_stored_clients(cfg: &Config, clients: Vec<StoredClient>) -> crate::Result<Vec<String>> {
    let mut left_out = Vec::new();
    let mut kept: Vec<StoredClient> = Vec::with_capacity(clients.len());
    for c in clients {
        let valid = !c.id.is_empty()
            && warden_policy::cert::check_identity(&c.id).is_ok()
            && warden_policy::password::is_valid_hash(&c.secret_hash)
            && !cfg.oauth.clients.iter().any(|d| d.id == c.id)
            && !kept.iter().any(|k| k.id == c.id);
        if valid {
            kept.push(c);
        } else {
            left_out.push(c.id);
        }
    }
    if read_clients_file(&cfg.data_dir)?.client != kept {
        write_clients(&cfg.data_dir, &ClientsFile { client: kept })?;
    }
    Ok(left_out)
}

fn write_clients(data_dir: &Path, f: &ClientsFile) -> crate::Result<()> {
    let path = clients_path(data_dir);
    let dir = oauth_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(format!("{}: cannot create", dir.display()), e))?;
    let text = toml::to_string(f).map_err(|e| crate::Error::OAuth(format!("serialising clients: {e}")))?;
    write_atomically(&path, text.as_bytes())
        .map_err(|e| crate::Error::io(format!("{}: cannot write", path.display()), e))
}

/// Every OAuth client (configured and stored) as the token service takes them.
pub fn oauth_clients(cfg: &Config) -> crate::Result<Vec<warden_http::OAuthClient>> {
    Ok(all_clients(cfg)?
        .into_iter()
        .map(|c| warden_http::OAuthClient { id: c.id, secret_hash: c.secret_hash.0, scopes: c.scopes, roles: c.roles })
        .collect())
}
