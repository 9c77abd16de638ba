//! The command-line tools beside `warden run` (the parsing itself is in `main.rs`).
//!
//! # Layout
//! - [`passwd`]: `warden passwd` (the Mosquitto-compatible password file).
//! - [`cert`]: `warden cert` (a CA, server and client certificates, revocation, CRLs).
//! - [`oauth`]: `warden oauth` (OAuth clients stored in the data directory, the signing key).
//! - [`token`]: `warden token` (mint a token from the built-in token service's key).
//! - [`admin`]: `warden admin …`, the CLI over the admin API.
//! - [`import`]: `warden import` (Mosquitto dynamic-security JSON, mosquitto.conf).
//! - [`audit`]: `warden audit` (the posture audit, a deployment gate).
//! - [`bootstrap`]: first start of the embedded default (the `admin` user).

pub mod admin;
pub mod audit;
pub mod bootstrap;
pub mod cert;
pub mod import;
pub mod oauth;
pub mod passwd;
pub mod token;
