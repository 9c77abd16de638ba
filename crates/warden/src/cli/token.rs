//! `warden token`: a small client of the built-in token service (client-credentials grant).
//! Prints the access token on stdout, nothing else, so it composes:
//! `mosquitto_pub -u dev-001 -P "$(warden token --client-id dev-001 --secret-stdin)" …`.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;

/// `warden token` arguments.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// OAuth client id.
    #[arg(long)]
    pub client_id: String,
    /// Client secret (visible in the process list: prefer --secret-stdin).
    #[arg(long, conflicts_with = "secret_stdin")]
    pub secret: Option<String>,
    /// Read the client secret from the first line of stdin.
    #[arg(long)]
    pub secret_stdin: bool,
    /// Space-separated scopes to ask for (default: all the client's scopes).
    #[arg(long)]
    pub scope: Option<String>,
    /// The token service's base URL (the embedded default configuration serves HTTPS there).
    #[arg(long, default_value = "https://127.0.0.1:8080")]
    pub url: String,
    /// CA certificate (PEM) to trust for an https URL [default: the development CA
    /// ./warden-data/tls/ca.pem for the default URL, when it exists; else the bundled roots].
    #[arg(long)]
    pub cacert: Option<std::path::PathBuf>,
}

fn form_encode(s: &str) -> String {
    // application/x-www-form-urlencoded, as RFC 6749 §2.3.1 asks for Basic credentials.
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Run `warden token`.
pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    let secret = match (&args.secret, args.secret_stdin) {
        (Some(s), _) => s.clone(),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the secret from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
        (None, false) => bail!("give the client secret with --secret-stdin (or --secret)"),
    };
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_encode(&args.client_id),
        form_encode(&secret)
    ));
    let url = format!("{}/oauth/token", args.url.trim_end_matches('/'));
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(s) = &args.scope {
        form.push(("scope", s));
    }
    let cacert = crate::tls::cli_cacert(args.cacert.as_deref(), &args.url);
    let resp = crate::tls::cli_agent(cacert.as_deref())?
        .post(&url)
        .timeout(Duration::from_secs(10))
        .set("Authorization", &format!("Basic {basic}"))
        .send_form(&form);
    let body: serde_json::Value = match resp {
        Ok(r) => r.into_json().context("token response is not JSON")?,
        Err(ureq::Error::Status(code, r)) => {
            let v: serde_json::Value = r.into_json().unwrap_or_default();
            bail!(
                "token service refused ({code}): {} {}",
                v["error"].as_str().unwrap_or("?"),
                v["error_description"].as_str().unwrap_or("")
            );
        }
        Err(e) => return Err(anyhow!("POST {url}: {e}")),
    };
    let token = body["access_token"].as_str().ok_or_else(|| anyhow!("no access_token in the response"))?;
    println!("{token}");
    Ok(())
}
