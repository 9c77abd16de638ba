//! `warden oauth …`: OAuth clients stored in the data directory, and the token service's
//! signing key ([`crate::admin::oauth_store`] keeps both).

use std::path::PathBuf;

use anyhow::bail;
use warden_policy::jwt::SigningKey;

use crate::admin::oauth_store::{
    all_clients, clients_path, is_stored_client, load_keys, oauth_dir, put_stored_client, remove_stored_client,
};
use crate::config::Config;
use crate::fsutil::write_atomically;

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
            let exists = is_stored_client(data_dir, id)?;
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
