//! The admin audit trail on disk (SPEC §9): `<data_dir>/audit.jsonl`, one JSON object per
//! line ([`AuditRecord`]: time, actor, peer, action, target, detail, result), append-only,
//! mode 0600, each record flushed to disk (`fsync`) before the change is answered. Past
//! [`MAX_BYTES`] the file becomes `audit.jsonl.1` (replacing the previous one) and a new one is
//! started, so the trail takes at most twice that. Every record is also logged at `info` on
//! the target `warden::admin_audit`.
//!
//! Writers: the broker's admin API ([`crate::admin::backend`]) and the `warden oauth …`
//! subcommands, which edit the data directory themselves (actor `cli`). Each record is one
//! `write` on a file opened with `O_APPEND`, so the two never interleave within a line.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::fsutil::FileError;
use parking_lot::Mutex;
use warden_http::admin::audit::AuditRecord;

/// Size past which the audit file is rotated to `audit.jsonl.1`.
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The file name in the data directory.
pub const FILE_NAME: &str = "audit.jsonl";

/// The log target every record is also written to.
pub const LOG_TARGET: &str = "warden::admin_audit";

/// The audit trail of one data directory.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    /// Appends (and rotation) of this process, one at a time.
    lock: Mutex<()>,
}

impl AuditLog {
    /// The trail in `data_dir`.
    pub fn new(data_dir: &Path) -> AuditLog {
        Self::with_max_bytes(data_dir, MAX_BYTES)
    }

    /// With another rotation size (tests).
    pub fn with_max_bytes(data_dir: &Path, max_bytes: u64) -> AuditLog {
        AuditLog { path: data_dir.join(FILE_NAME), max_bytes, lock: Mutex::new(()) }
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Append one record: logged on [`LOG_TARGET`], then written and flushed to disk.
    pub fn append(&self, r: &AuditRecord) -> Result<(), FileError> {
        let detail = r.detail.to_string();
        tracing::info!(
            target: LOG_TARGET,
            actor = %crate::logsafe::Escaped(&r.actor),
            peer = %r.peer,
            action = %r.action,
            target_name = %crate::logsafe::Escaped(&r.target),
            detail = %crate::logsafe::Escaped(&detail),
            result = %r.result,
            status = r.status,
            error = r.error.as_deref(),
            "admin change"
        );
        let mut line =
            serde_json::to_string(r).map_err(|e| FileError::Invalid(format!("serialising an audit record: {e}")))?;
        line.push('\n');
        let _one = self.lock.lock();
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| FileError::Write { path: dir.to_path_buf(), source })?;
        }
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len > 0 && len + line.len() as u64 > self.max_bytes {
            std::fs::rename(&self.path, self.rotated())
                .map_err(|source| FileError::Write { path: self.path.to_path_buf(), source })?;
            if let Some(dir) = self.path.parent() {
                // The rename itself on disk (best effort: not every platform opens directories).
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
        }
        let mut f = open_append(&self.path)?;
        f.write_all(line.as_bytes()).map_err(|source| FileError::Write { path: self.path.to_path_buf(), source })?;
        f.sync_data().map_err(|source| FileError::Write { path: self.path.to_path_buf(), source })?;
        Ok(())
    }

    /// The records stamped at or after `since` (unix seconds), oldest first: the newest
    /// `limit` of them. Lines that are not records (a torn last line after a crash) are
    /// skipped.
    pub fn since(&self, since: u64, limit: usize) -> Result<Vec<AuditRecord>, FileError> {
        let mut out = std::collections::VecDeque::new();
        for path in [self.rotated(), self.path.clone()] {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).map_err(|source| FileError::Read { path: path.to_path_buf(), source }),
            };
            for line in BufReader::new(f).split(b'\n') {
                let line = line.map_err(|source| FileError::Read { path: path.to_path_buf(), source })?;
                let Ok(r) = serde_json::from_slice::<AuditRecord>(&line) else { continue };
                if r.unix >= since && limit > 0 {
                    if out.len() == limit {
                        out.pop_front();
                    }
                    out.push_back(r);
                }
            }
        }
        Ok(out.into())
    }
}

#[cfg(unix)]
fn open_append(path: &Path) -> Result<File, FileError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| FileError::Write { path: path.to_path_buf(), source })?;
    // A file made by hand (or by an older version) with a wider mode is narrowed.
    let mode =
        f.metadata().map_err(|source| FileError::Read { path: path.to_path_buf(), source })?.permissions().mode();
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|source| FileError::Write { path: path.to_path_buf(), source })?;
    }
    Ok(f)
}

#[cfg(not(unix))]
fn open_append(path: &Path) -> Result<File, FileError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| FileError::Write { path: path.to_path_buf(), source })
}

/// Record a change made by a `warden` subcommand on this machine (actor `cli`, peer `local`,
/// status 0). A failure is printed as a warning: the change is already made.
pub fn record_cli(data_dir: &Path, action: &str, target: &str, detail: serde_json::Value) {
    let mut r = AuditRecord::now(warden_http::admin::audit::ACTOR_CLI, "local", action, target);
    r.detail = detail;
    if let Err(e) = AuditLog::new(data_dir).append(&r) {
        eprintln!("warning: the change is made but could not be written to the audit trail: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(action: &str, target: &str, unix: u64) -> AuditRecord {
        let mut r = AuditRecord::now("admin-token", "127.0.0.1:9", action, target);
        r.unix = unix;
        r.time = warden_http::admin::audit::rfc3339(unix);
        r
    }

    #[test]
    fn appends_one_line_per_record_and_reads_back_since() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        assert!(log.since(0, 10).unwrap().is_empty(), "no file yet: nothing");
        for (i, a) in ["user.create", "role.create", "rule.add", "ban.add"].iter().enumerate() {
            log.append(&record(a, "x", 100 + i as u64)).unwrap();
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 4);
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["time"].is_string() && v["unix"].is_u64() && v["actor"] == "admin-token", "{l}");
        }
        let all = log.since(0, 10).unwrap();
        assert_eq!(
            all.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
            ["user.create", "role.create", "rule.add", "ban.add"]
        );
        let later = log.since(102, 10).unwrap();
        assert_eq!(later.iter().map(|r| r.unix).collect::<Vec<_>>(), [102, 103]);
        let newest = log.since(0, 3).unwrap();
        assert_eq!(newest.iter().map(|r| r.unix).collect::<Vec<_>>(), [101, 102, 103], "the newest, oldest first");
        assert!(log.since(104, 10).unwrap().is_empty());
        // A torn line (a crash mid-write) is skipped; later records still read.
        std::fs::OpenOptions::new().append(true).open(log.path()).unwrap().write_all(b"{\"time\":\"20").unwrap();
        std::fs::OpenOptions::new().append(true).open(log.path()).unwrap().write_all(b"\n").unwrap();
        log.append(&record("ban.remove", "x", 200)).unwrap();
        assert_eq!(log.since(0, 100).unwrap().len(), 5);
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_0600_even_when_it_was_wider() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&record("user.delete", "a", 1)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(log.path()), 0o600);
        std::fs::set_permissions(log.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        log.append(&record("user.delete", "b", 2)).unwrap();
        assert_eq!(mode(log.path()), 0o600);
    }

    #[test]
    fn rotates_past_the_size_bound_and_reads_across_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_string(&record("client.kick", "c-00", 1)).unwrap().len() as u64 + 1;
        // Room for three records per file.
        let log = AuditLog::with_max_bytes(dir.path(), one * 3);
        for i in 0..8u64 {
            log.append(&record("client.kick", &format!("c-{i:02}"), i)).unwrap();
        }
        let cur = std::fs::read_to_string(log.path()).unwrap();
        let old = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
        assert_eq!(cur.lines().count(), 2, "{cur}");
        assert_eq!(old.lines().count(), 3, "{old}");
        assert!(!dir.path().join("audit.jsonl.2").exists(), "one rotated file only");
        let targets: Vec<_> = log.since(0, 100).unwrap().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["c-03", "c-04", "c-05", "c-06", "c-07"], "oldest first, across the rotation");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("audit.jsonl.1")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the rotated file keeps its mode");
        }
    }

    #[test]
    fn each_record_is_also_logged_on_the_admin_audit_target() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        let buf = warden_testkit::LogBuf::default();
        let b = buf.clone();
        let sub = tracing_subscriber::fmt().json().with_writer(move || b.clone()).finish();
        tracing::subscriber::with_default(sub, || {
            // The audit callsite is shared with tests on other threads: one of them may have
            // registered it while only the global (no-op) dispatcher was there, caching
            // "never" after this default was set (tracing's interest cache race). Ask again.
            tracing::callsite::rebuild_interest_cache();
            let mut r = record("ban.add", "203.0.113.7", 5);
            r.detail = json!({"kind": "ip"});
            r.result = "refused".into();
            r.status = 400;
            r.error = Some("bad\nvalue".into());
            log.append(&r).unwrap();
        });
        let text = buf.text();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["target"], LOG_TARGET);
        assert_eq!(v["level"], "INFO");
        let f = &v["fields"];
        assert_eq!((f["actor"].as_str(), f["action"].as_str()), (Some("admin-token"), Some("ban.add")));
        assert_eq!((f["target_name"].as_str(), f["result"].as_str()), (Some("203.0.113.7"), Some("refused")));
        assert_eq!(f["detail"], r#"{"kind":"ip"}"#);
        assert_eq!(f["error"], "bad\nvalue", "a plain value (JSON escapes the newline)");
    }

    #[test]
    fn cli_records_name_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        record_cli(dir.path(), "oauth_client.delete", "dev-1", json!({}));
        let r = AuditLog::new(dir.path()).since(0, 10).unwrap();
        assert_eq!(
            (r[0].actor.as_str(), r[0].peer.as_str(), r[0].action.as_str()),
            ("cli", "local", "oauth_client.delete")
        );
    }
}
