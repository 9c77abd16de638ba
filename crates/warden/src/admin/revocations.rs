//! Revoked access tokens of the built-in token service survive a restart (SPEC §5, §7): a
//! revoked token stays refused until it expires.
//!
//! `<data_dir>/oauth/revoked.json` holds `{"revoked": [{"jti": "...", "exp": 1700000000}]}`,
//! rewritten atomically (temporary file, fsync, rename, fsync of the directory) on every
//! revocation — before `/oauth/revoke` answers — without the entries already past their
//! token's `exp` (plus the verifier's grace), and loaded at start. A file that cannot be read
//! or parsed stops the start: silently forgetting revocations would let revoked tokens back in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::warn;
use warden_http::OAuthService;

use crate::fsutil::{write_atomically, FileError};

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokedFile {
    revoked: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    jti: String,
    exp: u64,
}

/// The file revocations are kept in.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("oauth").join("revoked.json")
}

/// Read the saved revocations (none when the file does not exist).
pub fn load(data_dir: &Path) -> Result<Vec<(String, u64)>, FileError> {
    let p = path(data_dir);
    if !p.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&p).map_err(|source| FileError::Read { path: p.clone(), source })?;
    let file: RevokedFile = serde_json::from_str(&text).map_err(|e| FileError::CorruptAt {
        path: p.clone(),
        line: e.line(),
        reason: format!("{e} (remove the file only if losing every revocation is acceptable)"),
    })?;
    Ok(file.revoked.into_iter().map(|e| (e.jti, e.exp)).collect())
}

/// Write `entries` to the file, atomically.
pub fn save(data_dir: &Path, entries: Vec<(String, u64)>) -> Result<(), FileError> {
    let p = path(data_dir);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|source| FileError::Write { path: dir.to_owned(), source })?;
    }
    let file = RevokedFile { revoked: entries.into_iter().map(|(jti, exp)| Entry { jti, exp }).collect() };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| FileError::Invalid(e.to_string()))?;
    write_atomically(&p, &json).map_err(|source| FileError::Write { path: p, source })
}

/// Load the saved revocations into `service` and keep the file up to date from now on.
pub fn attach(service: &Arc<OAuthService>, data_dir: &Path) -> Result<(), FileError> {
    service.restore_revocations(load(data_dir)?);
    // Rewrite at start too: entries that expired while the broker was down are pruned.
    save(data_dir, service.revocations())?;
    let weak: Weak<OAuthService> = Arc::downgrade(service);
    let dir = data_dir.to_path_buf();
    // One writer at a time; each writes the whole current set, so the last one wins with
    // everything. Revocations are rare; the write (with fsync) happens before the answer.
    let writing = Mutex::new(());
    service.on_revoke(Box::new(move |_jti| {
        let Some(service) = weak.upgrade() else { return };
        let _one = writing.lock();
        if let Err(e) = save(&dir, service.revocations()) {
            warn!(error = %e, "could not save the token revocation list; the revocation holds until restart");
        }
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty(), "no file: nothing revoked");
        save(dir.path(), vec![("a".into(), 10), ("b".into(), 20)]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![("a".to_string(), 10), ("b".to_string(), 20)]);
        std::fs::write(path(dir.path()), "{\n\"revoked\": [\n{\"jti\": 1}]}").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("revoked.json:3:"), "{e}");
    }
}
