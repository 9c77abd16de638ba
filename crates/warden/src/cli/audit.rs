//! `warden audit --config FILE [--format text|json]`: the posture audit (SPEC §13) of a
//! configuration and what it names (ACL file, policy store, certificates, password file,
//! secret files). Exit status: 0 when no finding is high or critical, 1 when one is, 2 when the
//! configuration cannot be read — so it can gate a deployment pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::admin::posture::{self, Severity};
use crate::config::Config;

/// Arguments of `warden audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Configuration file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Output: readable text (default) or JSON.
    #[arg(long, value_enum, default_value_t = AuditFormat::Text)]
    pub format: AuditFormat,
}

/// Output format of `warden audit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    /// One block per finding, then the counts.
    Text,
    /// `{"findings": [...], "counts": {...}, "highest": ..., "fail": ...}`.
    Json,
}

/// Run `warden audit`: prints the findings to stdout; exit 0, 1 (a high or critical finding)
/// or 2 (the configuration cannot be read).
pub fn run(args: &AuditArgs) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: {e}");
            return ExitCode::from(2);
        }
    };
    let now = i64::try_from(crate::auth::tokens::unix_now()).unwrap_or(i64::MAX);
    let input = posture::load(&cfg, None, Vec::new(), now);
    let findings = posture::audit(&input);
    let text = match args.format {
        AuditFormat::Text => posture::report_text(&findings),
        AuditFormat::Json => format!("{:#}\n", posture::report_json(&findings)),
    };
    print!("{text}");
    if posture::highest(&findings).is_some_and(|s| s >= Severity::High) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
