//! `warden cert ca|server|client`: a development PKI (rcgen) for people who have none yet.
//! (Being written.)

use std::path::{Path, PathBuf};

/// `warden cert …` arguments.
#[derive(clap::Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CertCommand {
    /// Make a CA.
    Ca,
}

/// Run `warden cert …`.
pub fn run(_args: &CertArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// Paths of the development PKI the embedded default uses.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// Server certificate chain (PEM).
    pub server_cert: PathBuf,
    /// Server private key (PEM).
    pub server_key: PathBuf,
}

/// Create (if missing) a development CA and a server certificate for localhost/127.0.0.1
/// under `dir`. Returns the paths, and whether they were created now.
pub fn ensure_dev_pki(_dir: &Path) -> anyhow::Result<(DevPki, bool)> {
    anyhow::bail!("not implemented yet")
}
