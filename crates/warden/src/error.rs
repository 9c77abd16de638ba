//! The shell's one error tree: what the library modules of `warden` fail with ([`Error`], one
//! variant per concern), so that `anyhow` is left to the binary (`main.rs`) and its commands
//! (`cli/`), which only report. See docs/STYLE.md "Errors".
//!
//! Display keeps the texts operators have always read: a file and a line for what is wrong in a
//! file named by the configuration (`passwd:3: missing hash`), the file and the reason for a
//! file that is wrong as a whole, the action for an I/O failure. The cause of an I/O failure is
//! its [`source`](std::error::Error::source); `{:#}` (alternate Display) writes the whole chain
//! joined by `": "`, as `anyhow` does, so `format!("{e:#}")` reads the same as before.
//!
//! The errors of narrower concerns stay typed where they arise and are variants here:
//! [`ConfigError`] (the configuration file), [`FileError`] (state files in the data directory),
//! [`TlsError`] (certificates, keys, CRLs), the store's and the cluster's. What a peer is told
//! is mapped elsewhere, once: a CONNECT refusal by `warden_policy::authn` (reason code), an
//! admin request's failure by `warden_http` (HTTP status).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::fsutil::FileError;
use crate::tls::TlsError;

/// `Result` with the shell's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a library operation of the shell failed, by concern.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read or is not valid (`path:line: reason`).
    Config(ConfigError),
    /// A line of a file the configuration names (password file, ACL file) is not valid.
    /// Display: `path:line: reason`.
    ConfigLine {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong, in words.
        reason: String,
    },
    /// A setting's value cannot be used, in words naming it (`[auth.http] url must …`).
    Setting(String),
    /// A file (a key, a JWKS, the OAuth clients file, the policy store) was read but is not
    /// valid as a whole. Display: `path: reason`.
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// An I/O operation failed. Display: what was being done; the cause is the source.
    Io {
        /// What was being done (naming the file or address).
        context: String,
        /// The cause.
        source: io::Error,
    },
    /// A state file in the data directory (ban list, revocations, audit trail).
    State(FileError),
    /// A listener's TLS material (certificates, keys, CRLs). Display: the listener; the TLS
    /// error is the source.
    Tls {
        /// The listener (`mqtts listener 0.0.0.0:8883`, `[http] listener …`).
        listener: String,
        /// What is wrong.
        source: TlsError,
    },
    /// The persistent store could not be opened.
    Store(warden_store::StoreError),
    /// The cluster could not start.
    Cluster(warden_cluster::ClusterError),
    /// The policy store's content cannot be applied (its users' password hashes).
    Policy(String),
    /// An OAuth client cannot be stored or loaded as asked (declared twice, invalid id or
    /// secret hash).
    OAuth(String),
    /// A request the broker made over HTTP (a JWKS fetch) failed or its answer is not valid.
    Http(String),
}

impl Error {
    /// An I/O failure while doing `context`.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// `path: reason`: a file that is not valid as a whole.
    pub fn invalid(path: &Path, reason: impl fmt::Display) -> Error {
        Error::Invalid { path: path.to_path_buf(), reason: reason.to_string() }
    }

    /// `path:line: reason`: a line of a file the configuration names.
    pub fn config_line(path: &Path, line: usize, reason: impl fmt::Display) -> Error {
        Error::ConfigLine { path: path.to_path_buf(), line, reason: reason.to_string() }
    }

    /// A password file's parse error, with the file's name (`path:line: reason`).
    pub fn password_file(path: &Path, e: warden_policy::password::PasswordFileError) -> Error {
        match e {
            warden_policy::password::PasswordFileError::Line { line, reason } => Error::config_line(path, line, reason),
            other => Error::invalid(path, other),
        }
    }

    /// An ACL file's parse error, with the file's name (`path:line: reason`).
    pub fn acl_file(path: &Path, e: warden_policy::acl::AclError) -> Error {
        Error::config_line(path, e.line, e.reason)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => fmt::Display::fmt(e, f)?,
            Error::ConfigLine { path, line, reason } => write!(f, "{}:{line}: {reason}", path.display())?,
            Error::Setting(s) | Error::Policy(s) | Error::OAuth(s) | Error::Http(s) => f.write_str(s)?,
            Error::Invalid { path, reason } => write!(f, "{}: {reason}", path.display())?,
            Error::Io { context, .. } => f.write_str(context)?,
            Error::State(e) => fmt::Display::fmt(e, f)?,
            Error::Tls { listener, .. } => f.write_str(listener)?,
            Error::Store(_) => f.write_str("cannot open the store")?,
            Error::Cluster(e) => fmt::Display::fmt(e, f)?,
        }
        if f.alternate() {
            // The causes, as anyhow's `{:#}` writes them.
            let mut cause = std::error::Error::source(self);
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the wrapped error's own cause.
            Error::Config(e) => e.source(),
            Error::State(e) => e.source(),
            Error::Cluster(e) => e.source(),
            Error::Io { source, .. } => Some(source),
            Error::Tls { source, .. } => Some(source),
            Error::Store(e) => Some(e),
            Error::ConfigLine { .. }
            | Error::Setting(_)
            | Error::Invalid { .. }
            | Error::Policy(_)
            | Error::OAuth(_)
            | Error::Http(_) => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl From<FileError> for Error {
    fn from(e: FileError) -> Error {
        Error::State(e)
    }
}

impl From<warden_cluster::ClusterError> for Error {
    fn from(e: warden_cluster::ClusterError) -> Error {
        Error::Cluster(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_file_and_line_and_alternate_adds_the_causes() {
        let e = Error::config_line(Path::new("/etc/warden/passwd"), 3, "missing hash");
        assert_eq!(e.to_string(), "/etc/warden/passwd:3: missing hash");
        assert_eq!(format!("{e:#}"), "/etc/warden/passwd:3: missing hash");
        let io = io::Error::new(io::ErrorKind::NotFound, "No such file or directory");
        let e = Error::io("/x/acl: cannot read ACL file", io);
        assert_eq!(e.to_string(), "/x/acl: cannot read ACL file");
        assert_eq!(format!("{e:#}"), "/x/acl: cannot read ACL file: No such file or directory");
        let pw = warden_policy::password::PasswordFile::parse("ann\n").unwrap_err();
        assert_eq!(
            Error::password_file(Path::new("pw"), pw).to_string(),
            "pw:1: missing ':' between user name and hash"
        );
        let acl = warden_policy::acl::AclFile::parse("user\n").unwrap_err();
        assert!(Error::acl_file(Path::new("acl"), acl).to_string().starts_with("acl:1: "));
    }
}
