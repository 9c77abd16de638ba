//! `[enroll]`: enrollment by claim ([`crate::enroll`]): the CA that signs devices'
//! certificates, their lifetime, and the optional pre-provisioning hook.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Default lifetime of an enrolled device's certificate, in days.
pub(super) const DEFAULT_CERTIFICATE_DAYS: u32 = 365;
/// Longest lifetime that may be configured, in days.
pub(super) const MAX_CERTIFICATE_DAYS: u32 = 3650;
/// Default time the pre-provisioning hook has to answer.
pub(super) const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default requests being worked on at once (signing, the hook); more are refused
/// (`rate_limited`) rather than queued without bound.
pub(super) const DEFAULT_MAX_PENDING: usize = 16;

/// `[enroll]` as the file gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnroll {
    /// Serve `$warden/enroll/` (MQTT) and `POST /enroll` (HTTP). Default `false`.
    #[serde(default)]
    enabled: bool,
    /// Directory of the signing CA (`ca.pem` + `ca.key`, as `warden cert ca` makes). Default:
    /// `<data_dir>/tls`, the development CA of the embedded default.
    ca_dir: Option<Spanned<PathBuf>>,
    /// Lifetime of the certificates it signs, days (1 to 3650; clamped to the CA's own).
    certificate_days: Option<Spanned<u32>>,
    /// The pre-provisioning hook: an `http://` or `https://` URL each request is POSTed to
    /// before anything is signed. Default: none (the claim alone decides).
    hook_url: Option<Spanned<String>>,
    /// How long the hook has to answer (`"500ms"`, `"5s"`; at most 30 s). Default 5 s.
    hook_timeout: Option<Spanned<String>>,
    /// Requests worked on at once; more are refused. Default 16.
    max_pending: Option<Spanned<usize>>,
}

/// `[enroll]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollConfig {
    /// Serve enrollment.
    pub enabled: bool,
    /// Directory of the signing CA (`None`: `<data_dir>/tls`).
    pub ca_dir: Option<PathBuf>,
    /// Lifetime of the certificates it signs, days.
    pub certificate_days: u32,
    /// The pre-provisioning hook's URL.
    pub hook_url: Option<String>,
    /// How long the hook has to answer.
    pub hook_timeout: Duration,
    /// Requests worked on at once.
    pub max_pending: usize,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            enabled: false,
            ca_dir: None,
            certificate_days: DEFAULT_CERTIFICATE_DAYS,
            hook_url: None,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

impl EnrollConfig {
    /// The CA directory in force.
    pub fn ca_dir(&self, data_dir: &Path) -> PathBuf {
        self.ca_dir.clone().unwrap_or_else(|| data_dir.join("tls"))
    }
}

impl RawEnroll {
    /// Check it (file positions in the errors), paths resolved against `base`.
    pub(super) fn validate(
        self,
        base: &Path,
        resolve: impl Fn(&Path, PathBuf) -> PathBuf,
    ) -> Result<EnrollConfig, (Range<usize>, String)> {
        let mut c = EnrollConfig { enabled: self.enabled, ..Default::default() };
        if let Some(d) = self.ca_dir {
            let span = d.span();
            let p = d.into_inner();
            if p.as_os_str().is_empty() {
                return Err((span, "[enroll] ca_dir is empty".into()));
            }
            c.ca_dir = Some(resolve(base, p));
        }
        if let Some(days) = self.certificate_days {
            let v = *days.get_ref();
            if !(1..=MAX_CERTIFICATE_DAYS).contains(&v) {
                return Err((days.span(), format!("[enroll] certificate_days must be 1 to {MAX_CERTIFICATE_DAYS}")));
            }
            c.certificate_days = v;
        }
        if let Some(url) = self.hook_url {
            let span = url.span();
            let u = url.into_inner();
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err((span, "[enroll] hook_url must start with http:// or https://".into()));
            }
            if u.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err((span, "[enroll] hook_url contains white space or control characters".into()));
            }
            c.hook_url = Some(u);
        }
        if let Some(t) = self.hook_timeout {
            let v =
                super::parse_duration(t.get_ref()).map_err(|e| (t.span(), format!("[enroll] hook_timeout: {e}")))?;
            if v.is_zero() || v > Duration::from_secs(30) {
                return Err((t.span(), "[enroll] hook_timeout must be more than 0 and at most 30s".into()));
            }
            c.hook_timeout = v;
        }
        if let Some(m) = self.max_pending {
            let v = *m.get_ref();
            if !(1..=1024).contains(&v) {
                return Err((m.span(), "[enroll] max_pending must be 1 to 1024".into()));
            }
            c.max_pending = v;
        }
        Ok(c)
    }
}
