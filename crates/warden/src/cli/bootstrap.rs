//! First start of the embedded default configuration: create the data directory and an
//! `admin` user with a random one-time password, printed once (like a database's initial
//! superuser), and an admin token for the admin API and the console, printed once too. Both
//! are stored only as argon2id hashes.

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

/// Where the embedded default keeps the admin token's hash.
pub const ADMIN_TOKEN_HASH_FILE: &str = "admin-token.hash";

/// The admin token's hash in `<data_dir>/admin-token.hash`, made with a new random token when
/// the file does not exist yet: returns the hash, and the token (to be shown once) when it
/// made it. The file is private to the broker's user (0600).
pub fn ensure_admin_token(data_dir: &Path) -> anyhow::Result<(String, Option<String>)> {
    let path = data_dir.join(ADMIN_TOKEN_HASH_FILE);
    if path.exists() {
        let hash = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let hash = hash.trim().to_owned();
        anyhow::ensure!(hash.starts_with("$argon2"), "{}: not an argon2 hash", path.display());
        return Ok((hash, None));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("{}: cannot create data directory", data_dir.display()))?;
    let token = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32);
    let hash = hash_password(token.as_bytes());
    crate::fsutil::write_atomically(&path, format!("{hash}\n").as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("{}: cannot make it private", path.display()))?;
    }
    Ok((hash, Some(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_made_once_and_kept_only_as_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (hash, token) = ensure_admin_token(dir.path()).unwrap();
        let token = token.expect("made on first start");
        assert!(warden_policy::password::verify_hash(&hash, token.as_bytes()));
        let on_disk = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_HASH_FILE)).unwrap();
        assert!(!on_disk.contains(&token));
        let (again, none) = ensure_admin_token(dir.path()).unwrap();
        assert_eq!((again, none), (hash, None), "the second start keeps it and shows nothing");
        std::fs::write(dir.path().join(ADMIN_TOKEN_HASH_FILE), "plain-text").unwrap();
        assert!(ensure_admin_token(dir.path()).is_err(), "a file that is not a hash is refused");
    }
}
