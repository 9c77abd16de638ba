//! `[cluster]` (SPEC §11): this broker as one node of several, sharing state over NATS.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::Secret;

/// `[cluster]` as the file gives it (the password is resolved with the other secrets).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    /// This node's name, unique in the cluster: 1 to 64 characters of `A-Z a-z 0-9 _ -`.
    /// Required.
    node: Spanned<String>,
    /// NATS server URLs (`nats://host:port` or `tls://host:port`; no credentials in the URL).
    /// Required, at least one.
    nats: Spanned<Vec<String>>,
    /// JetStream replicas of the cluster's streams (1 to 5). Default 3.
    #[serde(default = "default_replicas")]
    replicas: Spanned<usize>,
    /// The first token of every NATS subject and stream name the cluster uses, so that
    /// several clusters can share one NATS system. Default `"warden"`.
    #[serde(default = "default_prefix")]
    subject_prefix: Spanned<String>,
    /// NATS user name (with `nats_password`). Default: none.
    nats_user: Option<Spanned<String>>,
    /// NATS password: inline, `"env:NAME"`, or from `nats_password_file`. Default: none.
    #[serde(default)]
    #[allow(dead_code)] // read by the secret pass
    nats_password: Option<toml::Value>,
    /// A file holding the NATS password. Default: none.
    #[serde(default)]
    #[allow(dead_code)] // read by the secret pass
    nats_password_file: Option<toml::Value>,
    /// A NATS credentials file (JWT and NKey seed), instead of a user and password. Default: none.
    nats_creds_file: Option<Spanned<PathBuf>>,
    /// How long a QoS 1/2 message is tried until JetStream keeps it on a quorum before the
    /// client's PUBLISH is refused (no PUBACK; the connection ends with 0x89 and the client
    /// sends it again): long enough for a stream leader to be elected after a NATS server is
    /// lost. `"1s"` to `"300s"`. Default `"25s"`.
    #[serde(default = "default_publish_timeout")]
    publish_timeout: Spanned<String>,
    /// How long the cluster's client registry may be away and still count as a leader
    /// election (NATS elects 4 to 9 s after a server is lost): meanwhile a CONNECT whose client
    /// id no other node holds is granted on a replica's copy of the registry (written once the
    /// bucket has a leader again), and other CONNECTs wait for it; once the registry has been
    /// away for longer (no quorum), CONNECTs get CONNACK 0x88 (Server unavailable) after one
    /// short try (docs/cluster.md, "Provisional claims"). `"1s"` to `"60s"`. Default `"12s"`.
    #[serde(default = "default_connect_patience")]
    connect_patience: Spanned<String>,
}

fn default_publish_timeout() -> Spanned<String> {
    Spanned::new(0..0, "25s".to_owned())
}

fn default_connect_patience() -> Spanned<String> {
    Spanned::new(0..0, "12s".to_owned())
}

fn default_replicas() -> Spanned<usize> {
    Spanned::new(0..0, 3)
}

fn default_prefix() -> Spanned<String> {
    Spanned::new(0..0, "warden".to_owned())
}

/// The secret keys of `[cluster]`, for the lenient second pass.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ClusterSecretKeys {
    pub(super) nats_password: Option<Spanned<String>>,
    pub(super) nats_password_file: Option<Spanned<PathBuf>>,
}

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's name, unique in the cluster (`A-Z a-z 0-9 _ -`, at most 64).
    pub node: String,
    /// NATS server URLs (`nats://host:port` or `tls://host:port`).
    pub nats: Vec<String>,
    /// JetStream replicas for the cluster's streams and buckets (1 to 5; default 3).
    pub replicas: usize,
    /// The first token of every NATS subject the cluster uses (default `warden`).
    pub subject_prefix: String,
    /// NATS user name (with `nats_password`).
    pub nats_user: Option<String>,
    /// NATS password: inline, `"env:NAME"` or `nats_password_file`.
    pub nats_password: Option<Secret>,
    /// A NATS credentials file (JWT and NKey seed), resolved against the file's directory.
    pub nats_creds_file: Option<PathBuf>,
    /// How long a QoS 1/2 message is tried until JetStream keeps it (default 25 s).
    pub publish_timeout: std::time::Duration,
    /// How long a CONNECT waits for the client registry before CONNACK 0x88 (default 12 s).
    pub connect_patience: std::time::Duration,
}

fn plain_token(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `url` is a NATS server address this broker can use.
fn valid_url(url: &str) -> bool {
    let rest = ["nats://", "tls://"].iter().find_map(|s| url.strip_prefix(s));
    let Some(rest) = rest else { return false };
    // user:pass@ in a URL would put a secret in the file: credentials go in their own keys.
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (rest, "4222"),
    };
    !host.is_empty() && !host.contains(['@', '/', ' ']) && port.parse::<u16>().is_ok_and(|p| p > 0)
}

impl RawCluster {
    /// Validate; a refusal gives the span and the reason.
    pub(super) fn validate(
        self,
        password: Option<Secret>,
        base: &Path,
        resolve: impl Fn(&Path, PathBuf) -> PathBuf,
    ) -> Result<ClusterSettings, (Range<usize>, String)> {
        let span = self.node.span();
        let node = self.node.into_inner();
        if !plain_token(&node) {
            return Err((span, format!("[cluster] node {node:?}: 1 to 64 characters of A-Z a-z 0-9 _ -")));
        }
        let span = self.nats.span();
        let nats = self.nats.into_inner();
        if nats.is_empty() {
            return Err((span, "[cluster] nats: give at least one NATS server URL".into()));
        }
        if let Some(bad) = nats.iter().find(|u| !valid_url(u)) {
            // A URL with credentials is not echoed: the message may end up in a log.
            let shown = if bad.contains('@') { "a URL with credentials".to_owned() } else { format!("{bad:?}") };
            return Err((
                span,
                format!(
                    "[cluster] nats: {shown} is not a NATS server URL (nats://host:port or tls://host:port, \
                     no credentials in the URL: use nats_user / nats_password or nats_creds_file)"
                ),
            ));
        }
        let span = self.replicas.span();
        let replicas = self.replicas.into_inner();
        if !(1..=5).contains(&replicas) {
            return Err((span, format!("[cluster] replicas = {replicas}: JetStream allows 1 to 5")));
        }
        let span = self.subject_prefix.span();
        let subject_prefix = self.subject_prefix.into_inner();
        if !plain_token(&subject_prefix) {
            return Err((
                span,
                format!("[cluster] subject_prefix {subject_prefix:?}: 1 to 64 characters of A-Z a-z 0-9 _ -"),
            ));
        }
        let nats_user = self.nats_user.map(Spanned::into_inner);
        if nats_user.is_some() != password.is_some() {
            return Err((span, "[cluster] nats_user and nats_password (or nats_password_file) go together".into()));
        }
        let nats_creds_file = self.nats_creds_file.map(|p| resolve(base, p.into_inner()));
        if nats_creds_file.is_some() && nats_user.is_some() {
            return Err((span, "[cluster] give nats_creds_file or nats_user / nats_password, not both".into()));
        }
        let span = self.publish_timeout.span();
        let publish_timeout = super::parse_duration(self.publish_timeout.get_ref())
            .ok()
            .filter(|d| (1..=300).contains(&d.as_secs()))
            .ok_or((span, "[cluster] publish_timeout: a duration from \"1s\" to \"300s\"".to_owned()))?;
        let span = self.connect_patience.span();
        let connect_patience = super::parse_duration(self.connect_patience.get_ref())
            .ok()
            .filter(|d| (1..=60).contains(&d.as_secs()))
            .ok_or((span, "[cluster] connect_patience: a duration from \"1s\" to \"60s\"".to_owned()))?;
        Ok(ClusterSettings {
            publish_timeout,
            connect_patience,
            node,
            nats,
            replicas,
            subject_prefix,
            nats_user,
            nats_password: password,
            nats_creds_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_url;

    #[test]
    fn nats_urls() {
        assert!(valid_url("nats://127.0.0.1:4222"));
        assert!(valid_url("tls://nats.example:4443"));
        assert!(valid_url("nats://localhost"));
        assert!(!valid_url("http://127.0.0.1:4222"));
        assert!(!valid_url("nats://u:p@127.0.0.1:4222"));
        assert!(!valid_url("nats://:4222"));
        assert!(!valid_url("nats://h:0"));
        assert!(!valid_url("nats://h:99999"));
    }
}
