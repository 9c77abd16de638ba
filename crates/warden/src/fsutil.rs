//! Files the broker and its tools write: the one atomic writer (temporary file beside the
//! target, fsync, rename, directory fsync), so that a crash or a full disk leaves either the old
//! file or the new one, never a torn one, and a secret is never readable by others, not even
//! briefly.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a state file in the data directory (ban list, revocations, stores) could not be read
/// or written: each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file exists but could not be read.
    #[error("{}: cannot read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file (or its directory) could not be written.
    #[error("{}: cannot write", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file was read but its content is not valid.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The file was read but a line of it is not valid.
    #[error("{}:{line}: {reason}", path.display())]
    CorruptAt {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong, in words.
        reason: String,
    },
    /// What was to be stored is not valid (nothing was written).
    #[error("{0}")]
    Invalid(String),
}

/// Write `data` to `path` atomically. A new file gets mode 0600 on unix; an existing file keeps
/// its permissions (an operator who made the password file group-readable keeps that).
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    write(path, data, None)
}

/// Write `data` to `path` atomically with exactly `mode` on unix (e.g. 0600 for a private key,
/// 0644 for a certificate), whatever the file had before.
pub fn write_atomically_with_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write(path, data, Some(mode))
}

fn write(path: &Path, data: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}.{:08x}", std::process::id(), rand::random::<u32>()));
    let tmp = dir.join(tmp_name);

    if let Err(e) = write_and_rename(&tmp, path, data, mode) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename durable; not all platforms can open a directory, so best effort.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_and_rename(tmp: &Path, path: &Path, data: &[u8], mode: Option<u32>) -> io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode.unwrap_or(0o600));
    let mut f = opts.open(tmp)?;
    if mode.is_none() {
        if let Ok(meta) = fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
    }
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(tmp, path)
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_file_is_private_and_an_existing_one_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        write_atomically(&p, b"one").unwrap();
        assert_eq!(mode(&p), 0o600);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(mode(&p), 0o640);
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }

    #[test]
    fn an_explicit_mode_wins_over_the_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically_with_mode(&p, b"secret", 0o600).unwrap();
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        assert!(write_atomically(&p, b"x").is_err());
        assert!(write_atomically(Path::new("/"), b"x").is_err(), "no file name");
    }
}
