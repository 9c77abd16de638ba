//! The broker's log (`[log]`, SPEC §9): the filter in effect and the log file that logrotate
//! can rotate.
//!
//! - [`filter_directives`]: `RUST_LOG` when set, else `[log] level`; rustls' per-connection
//!   `WARN Illegal SNI extension` (every TLS client that connects by IP address sends the
//!   address as SNI, which RFC 6066 forbids, and rustls says so each time) is silenced at its
//!   source, target [`RUSTLS_SNI_TARGET`], unless the operator's directives name rustls.
//! - [`LogFile`]: the `[log] file` writer, appended to and created 0600; [`LogFile::reopen`]
//!   (SIGHUP, SIGUSR1) opens the path again, so after `logrotate` renamed the file away the
//!   next lines go to a new file at the configured path (`postrotate kill -HUP`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The module that logs `Illegal SNI extension: ignoring IP address presented as hostname`
/// (rustls 0.23 `msgs/handshake.rs`, through the `log` crate: its target is its module path).
pub const RUSTLS_SNI_TARGET: &str = "rustls::msgs::handshake";

/// The directive that keeps rustls' SNI warning out of the log (its errors still show).
pub const QUIET_RUSTLS_SNI: &str = "rustls::msgs::handshake=error";

/// The filter directives in effect: `rust_log` (the `RUST_LOG` variable) when it is set and not
/// empty, else `level`; then [`QUIET_RUSTLS_SNI`] appended, unless a directive names a rustls
/// target itself (the operator's choice stands) or nothing below `error` is logged anyway.
pub fn filter_directives(level: &str, rust_log: Option<&str>) -> String {
    let base = rust_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(level).trim();
    let names_rustls = base.split(',').any(|d| d.trim().starts_with("rustls"));
    let quiet_anyway = EnvFilter::builder()
        .parse(base)
        .ok()
        .and_then(|f| f.max_level_hint())
        .is_some_and(|max| max <= LevelFilter::ERROR);
    if names_rustls || quiet_anyway || base.is_empty() {
        base.to_string()
    } else {
        format!("{base},{QUIET_RUSTLS_SNI}")
    }
}

/// The `EnvFilter` for `[log] level` and `RUST_LOG` (see [`filter_directives`]). A `RUST_LOG`
/// that does not parse is reported (the returned message) and `level` used instead; `level`
/// was validated when the configuration was loaded.
pub fn env_filter(level: &str, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let parse = |d: &str| EnvFilter::builder().parse(d);
    match parse(&filter_directives(level, rust_log)) {
        Ok(f) => (f, None),
        Err(e) => {
            let note = format!("RUST_LOG is not a valid log filter ({e}); using [log] level {level:?}");
            let f = parse(&filter_directives(level, None)).unwrap_or_else(|_| EnvFilter::new("info"));
            (f, Some(note))
        }
    }
}

/// The `[log] file` writer: one open file shared by every thread (each event is written whole
/// under the lock), reopened at the same path on request.
#[derive(Clone, Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    /// Opens `path` for appending, creating it with mode 0600 when missing.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile { path: path.to_path_buf(), file: Arc::new(Mutex::new(open_append(path)?)) })
    }

    /// Opens the path again (after logrotate moved the file away: a new one, 0600) and writes
    /// from now on there. On an error the current file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let new = open_append(&self.path)?;
        let mut file = self.file.lock();
        let _ = file.flush();
        *file = new;
        Ok(())
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// A locked [`LogFile`] for one event.
pub struct LogFileWriter<'a>(MutexGuard<'a, File>);

impl Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self.file.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_reopened_after_a_rotation() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.log");
        let log = LogFile::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        log.make_writer().write_all(b"first\n").unwrap();
        // logrotate: rename, then (postrotate) the signal.
        let rotated = dir.path().join("warden.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        // Until the reopen, lines still go to the renamed file.
        log.make_writer().write_all(b"second\n").unwrap();
        log.reopen().unwrap();
        log.make_writer().write_all(b"third\n").unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "first\nsecond\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A clone writes to the same (reopened) file; reopening an existing file appends.
        let clone = log.clone();
        clone.reopen().unwrap();
        clone.make_writer().write_all(b"fourth\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third\nfourth\n");
        assert_eq!(log.path(), path);
    }

    #[test]
    fn a_reopen_that_fails_keeps_the_current_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("warden.log");
        let log = LogFile::open(&path).unwrap();
        let moved = dir.path().join("moved");
        std::fs::rename(&sub, &moved).unwrap();
        assert!(log.reopen().is_err(), "the directory is gone");
        log.make_writer().write_all(b"still here\n").unwrap();
        assert_eq!(std::fs::read_to_string(moved.join("warden.log")).unwrap(), "still here\n");
    }

    #[test]
    fn rustls_sni_warning_is_filtered_unless_the_operator_names_rustls() {
        assert_eq!(filter_directives("info", None), format!("info,{QUIET_RUSTLS_SNI}"));
        assert_eq!(filter_directives("debug,warden=trace", None), format!("debug,warden=trace,{QUIET_RUSTLS_SNI}"));
        // RUST_LOG wins over the level; an empty one does not count.
        assert_eq!(filter_directives("info", Some("warn")), format!("warn,{QUIET_RUSTLS_SNI}"));
        assert_eq!(filter_directives("debug", Some(" ")), format!("debug,{QUIET_RUSTLS_SNI}"));
        // The operator names rustls: their choice stands.
        assert_eq!(filter_directives("info,rustls=debug", None), "info,rustls=debug");
        assert_eq!(filter_directives("info", Some("rustls::msgs=trace")), "rustls::msgs=trace");
        // Nothing below error anyway: no directive that would enable rustls' errors under "off".
        assert_eq!(filter_directives("off", None), "off");
        assert_eq!(filter_directives("error", None), "error");
        // The directive is the module that logs the warning.
        assert!(QUIET_RUSTLS_SNI.starts_with(RUSTLS_SNI_TARGET));
    }

    /// The filter built from the directives drops rustls' SNI warning (a `log` record with
    /// target `rustls::msgs::handshake`, as rustls logs it) and keeps everything else.
    #[test]
    fn the_filter_drops_the_sni_warning_and_keeps_the_rest() {
        use tracing_subscriber::layer::SubscriberExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.log");
        let file = LogFile::open(&path).unwrap();
        let (filter, note) = env_filter("info", None);
        assert!(note.is_none());
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(file).with_ansi(false));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension: ignoring IP address presented as hostname (127.0.0.1)");
            tracing::error!(target: "rustls::msgs::handshake", "a rustls error");
            tracing::warn!(target: "rustls::server::hs", "another rustls warning");
            tracing::info!(target: "warden::server", "listening");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("Illegal SNI"), "{text}");
        assert!(text.contains("a rustls error") && text.contains("another rustls warning"), "{text}");
        assert!(text.contains("listening"), "{text}");
        // A RUST_LOG that does not parse: the level, and a note saying so.
        let (_, note) = env_filter("info", Some("warden=loud"));
        assert!(note.is_some_and(|n| n.contains("RUST_LOG")));
    }
}
