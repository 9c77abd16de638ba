//! First start of the embedded default configuration: create the data directory and an
//! `admin` user with a random one-time password, printed once (like a database's initial
//! superuser). The password itself is stored only as an argon2id hash.

use std::path::Path;

use anyhow::Context;
use rand::distributions::{Alphanumeric, DistString};
use warden_policy::password::{hash_password, upsert_user};

/// The initial administrator's user name.
pub const ADMIN_USER: &str = "admin";

/// Create `password_file` with an `admin` user when it does not exist yet. Returns the
/// generated password (to be shown once) when it created the file.
pub fn ensure_admin(data_dir: &Path, password_file: &Path) -> anyhow::Result<Option<String>> {
    if password_file.exists() {
        return Ok(None);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("{}: cannot create data directory", data_dir.display()))?;
    let password = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24);
    let text = upsert_user("", ADMIN_USER, &hash_password(password.as_bytes()))?;
    crate::fsutil::write_atomically(password_file, text.as_bytes())
        .with_context(|| format!("{}: cannot write password file", password_file.display()))?;
    Ok(Some(password))
}
