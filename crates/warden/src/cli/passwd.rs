//! `warden passwd FILE USER [--password-stdin]`, `warden passwd -D FILE USER` and
//! `warden passwd --hash-only` (SPEC §1, §9).
//!
//! All parsing and hashing lives in `warden_policy::password`; this file only does I/O.

use std::fs;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use warden_policy::password::{hash_password, hash_password_scram, remove_user, upsert_user};

fn make_hash(args: &PasswdArgs, password: &[u8]) -> String {
    if args.scram {
        hash_password_scram(password)
    } else {
        hash_password(password)
    }
}

/// Add or update a user in a password file (argon2id), or print a hash.
#[derive(clap::Args, Debug)]
pub struct PasswdArgs {
    /// Password file to create or update.
    #[arg(required_unless_present = "hash_only")]
    pub file: Option<PathBuf>,
    /// User name to add, update or (with -D) delete.
    #[arg(required_unless_present = "hash_only")]
    pub user: Option<String>,
    /// Delete USER from FILE (like `mosquitto_passwd -D`): an error when no line names USER.
    /// A running broker applies it on SIGHUP.
    #[arg(short = 'D', long = "delete", conflicts_with_all = ["password_stdin", "hash_only", "scram"])]
    pub delete: bool,
    /// Read the password as one line from stdin instead of the terminal.
    #[arg(long)]
    pub password_stdin: bool,
    /// Print just the argon2id hash of one password line read from stdin.
    #[arg(long, conflicts_with_all = ["file", "user"])]
    pub hash_only: bool,
    /// Store SCRAM-SHA-256 credentials (RFC 5803 form) instead of argon2id: the user can then
    /// log in with MQTT 5 enhanced authentication (SCRAM-SHA-256) as well as with the password.
    #[arg(long)]
    pub scram: bool,
}

/// `warden passwd`: add, update or delete (`-D`) a user, or print a hash (`--hash-only`).
pub fn run(args: &PasswdArgs) -> anyhow::Result<()> {
    if args.hash_only {
        let password = read_stdin_line()?;
        println!("{}", make_hash(args, &password));
        return Ok(());
    }
    let (Some(file), Some(user)) = (&args.file, &args.user) else {
        bail!("usage: warden passwd FILE USER [--password-stdin] | warden passwd -D FILE USER | warden passwd --hash-only");
    };
    if args.delete {
        return delete(file, user);
    }
    let password = if args.password_stdin { read_stdin_line()? } else { read_terminal_twice()? };
    let hash = make_hash(args, &password);

    let existing = match fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let text = upsert_user(existing.as_deref().unwrap_or(""), user, &hash)
        .with_context(|| format!("updating {}", file.display()))?;
    write_atomically(file, text.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
    let verb = if existing.is_some() { "updated" } else { "created" };
    eprintln!("{verb} {}: set password for user {user:?}", file.display());
    Ok(())
}

/// `warden passwd -D FILE USER`: rewrite FILE without USER's line (atomically, mode kept).
fn delete(file: &Path, user: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let Some(text) = remove_user(&text, user).with_context(|| format!("{}", file.display()))? else {
        bail!("{}: no user {user:?} in this file; nothing deleted", file.display());
    };
    write_atomically(file, text.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
    eprintln!("updated {}: deleted user {user:?} (a running broker applies this on SIGHUP)", file.display());
    Ok(())
}

/// Reads one line from stdin; the trailing "\n" or "\r\n" is not part of the password.
pub(crate) fn read_stdin_line() -> anyhow::Result<Vec<u8>> {
    let mut line = Vec::new();
    io::stdin().lock().read_until(b'\n', &mut line).context("reading stdin")?;
    if line.ends_with(b"\n") {
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
    }
    check_not_empty(line)
}

pub(crate) fn read_terminal_twice() -> anyhow::Result<Vec<u8>> {
    let first = rpassword::prompt_password("Password: ").context("reading password")?;
    let second = rpassword::prompt_password("Reenter password: ").context("reading password")?;
    if first != second {
        bail!("passwords do not match");
    }
    check_not_empty(first.into_bytes())
}

fn check_not_empty(password: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if password.is_empty() {
        bail!("empty password refused");
    }
    Ok(password)
}

use crate::fsutil::write_atomically;
