//! SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, for MQTT 5 enhanced authentication
//! (authentication method [`MECHANISM`]; the messages travel as Authentication Data in
//! CONNECT / AUTH / CONNACK).
//!
//! The exchange is driven by the caller:
//! 1. [`ScramServer::client_first`] parses the client-first-message and yields the user name;
//! 2. the caller looks up that user's [`ScramCredentials`] (e.g.
//!    [`PasswordFile::scram_credentials`](crate::password::PasswordFile::scram_credentials))
//!    and calls [`ScramServer::server_first`], which returns the server-first-message to send.
//!    An unknown user (`None`) gets deterministic fake credentials, so the exchange looks the
//!    same and fails only at the proof with [`ScramError::InvalidProof`]: the server does not
//!    reveal which user names exist;
//! 3. [`ScramServer::client_final`] checks the client-final-message and returns the user name
//!    and the server-final-message (`v=<ServerSignature>`) to send on success.
//!
//! # What is accepted
//! - No channel binding: the GS2 header must be `n,,` or `y,,` (we never offer
//!   `SCRAM-SHA-256-PLUS`, so `y` is legitimate); `p=<cb-name>` is refused with
//!   [`ScramError::UnsupportedChannelBinding`]. The client-final `c=` must be the base64 of
//!   the GS2 header exactly (`biws` for `n,,`, `eSws` for `y,,`).
//! - An authorization identity `a=` is accepted only when it equals the user name
//!   ([`ScramError::AuthzidMismatch`] otherwise): nobody acts for somebody else.
//! - User names: `=2C` and `=3D` are decoded to `,` and `=` (RFC 5802 §5.1); any other `=`
//!   sequence, a NUL, or an empty name is [`ScramError::Malformed`]. **No SASLprep**: user
//!   names and passwords are compared as the exact UTF-8 bytes the client sends, without
//!   normalisation (for ASCII this is what SASLprep gives anyway). A client that applies
//!   SASLprep to non-ASCII input may therefore derive a different key than the one stored.
//! - A mandatory extension (`m=`) is refused ([`ScramError::UnsupportedExtension`]); other
//!   extensions after the nonce are syntax-checked and ignored, as RFC 5802 asks.
//! - Messages longer than [`MAX_MESSAGE_LEN`] or not UTF-8 are malformed.
//!
//! The fake credentials for unknown users come from a random per-process secret: they are
//! stable for the life of the process (the same salt on every attempt) but change on
//! restart, unlike a real user's salt.
//!
//! Pure code: no I/O, no clock; randomness only from the OS RNG. Errors and `Debug` output
//! never contain keys, proofs or salted passwords.

use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore as _;
use ring::hmac;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The MQTT 5 Authentication Method (and SASL mechanism name).
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Smallest iteration count accepted for stored credentials (RFC 7677 §4).
pub const MIN_ITERATIONS: u32 = 4096;

/// Largest iteration count accepted for stored credentials: a stored line must not make a
/// login (or a plain-password check) arbitrarily slow.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Iteration count for newly hashed passwords and for unknown users' fake credentials.
pub const DEFAULT_ITERATIONS: u32 = 10_000;

/// Longest SCRAM message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Length of a SHA-256 digest (and of StoredKey, ServerKey, ClientProof).
const KEY_LEN: usize = 32;

/// Random bytes in a server nonce (base64-encoded to 32 characters).
const SERVER_NONCE_BYTES: usize = 24;

/// Salt length of the fake credentials (same as newly hashed passwords).
const FAKE_SALT_LEN: usize = 16;

/// A user's stored SCRAM-SHA-256 credentials (RFC 5802 §3): enough to run the exchange and
/// verify a plain password, never the password itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// The salt the client derives its salted password with.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("salt_len", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredentials {
    /// Derives credentials from a password: SaltedPassword = PBKDF2-HMAC-SHA-256(password,
    /// salt, iterations), StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key")),
    /// ServerKey = HMAC(SaltedPassword, "Server Key"). The password is used as given (no
    /// SASLprep). Costs `iterations` HMAC rounds; callers bound it.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramCredentials {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        ScramCredentials {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// True when `password` derives this StoredKey (constant-time comparison). Costs
    /// `self.iterations` HMAC rounds.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let salted = salted_password(password, &self.salt, self.iterations);
        let stored_key = sha256(&hmac_sha256(&salted, b"Client Key"));
        stored_key.ct_eq(&self.stored_key).into()
    }
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; KEY_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg);
    tag.as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// Why an exchange was refused. Never carries secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The message does not follow the RFC 5802 syntax (or is too long, or not UTF-8).
    #[error("malformed SCRAM message")]
    Malformed,
    /// The client asked for channel binding (`p=`), which Warden does not offer.
    #[error("channel binding not supported")]
    UnsupportedChannelBinding,
    /// An authorization identity different from the user name.
    #[error("authorization identity differs from user name")]
    AuthzidMismatch,
    /// A mandatory extension (`m=`).
    #[error("unsupported mandatory extension")]
    UnsupportedExtension,
    /// The client-final `c=` is not the GS2 header of the client-first-message.
    #[error("channel binding data does not match")]
    ChannelBindingMismatch,
    /// The client-final nonce is not the combined nonce of the server-first-message.
    #[error("nonce mismatch")]
    NonceMismatch,
    /// Wrong proof: wrong password, or unknown user (deliberately indistinguishable).
    #[error("invalid proof")]
    InvalidProof,
}

impl ScramError {
    /// The RFC 5802 §7 `server-error-value` for this error. Unknown users are reported as
    /// `invalid-proof`, like a wrong password.
    pub fn server_error_value(self) -> &'static str {
        match self {
            ScramError::Malformed => "other-error",
            ScramError::UnsupportedChannelBinding => "channel-binding-not-supported",
            ScramError::AuthzidMismatch => "invalid-username-encoding",
            ScramError::UnsupportedExtension => "extensions-not-supported",
            ScramError::ChannelBindingMismatch => "channel-bindings-dont-match",
            ScramError::NonceMismatch => "other-error",
            ScramError::InvalidProof => "invalid-proof",
        }
    }

    /// A server-final-message carrying this error: `e=<server-error-value>`.
    pub fn server_final_message(self) -> Vec<u8> {
        format!("e={}", self.server_error_value()).into_bytes()
    }
}

/// A parsed client-first-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user name, with `=2C` / `=3D` decoded; not normalised.
    pub username: String,
    /// The GS2 header (`n,,`, `y,,`, or with `a=<authzid>`), as sent.
    gs2_header: String,
    /// client-first-message-bare, as sent (part of the AuthMessage).
    bare: String,
    client_nonce: String,
}

/// Server state between server-first-message and client-final-message.
pub struct ScramServer {
    username: String,
    gs2_header: String,
    /// client-first-message-bare "," server-first-message "," (the AuthMessage prefix).
    auth_prefix: String,
    /// client nonce ‖ server nonce.
    nonce: String,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
    /// True for an unknown user: the proof always fails.
    fake: bool,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer").field("username", &self.username).finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Parses a client-first-message. The caller then looks up `username`'s credentials and
    /// calls [`ScramServer::server_first`].
    pub fn client_first(msg: &[u8]) -> Result<ClientFirst, ScramError> {
        let msg = as_message(msg)?;
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed)?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(ScramError::UnsupportedChannelBinding),
            _ => return Err(ScramError::Malformed),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed)?;
        let authzid = match authzid {
            "" => None,
            a => Some(decode_saslname(a.strip_prefix("a=").ok_or(ScramError::Malformed)?)?),
        };
        let gs2_header = &msg[..msg.len() - bare.len()];

        let mut attrs = bare.split(',');
        let user = attrs.next().ok_or(ScramError::Malformed)?;
        if user.starts_with("m=") {
            return Err(ScramError::UnsupportedExtension);
        }
        let username = decode_saslname(user.strip_prefix("n=").ok_or(ScramError::Malformed)?)?;
        let nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed)?;
        check_nonce(nonce)?;
        check_extensions(attrs)?;
        if authzid.is_some_and(|a| a != username) {
            return Err(ScramError::AuthzidMismatch);
        }
        Ok(ClientFirst {
            username,
            gs2_header: gs2_header.to_owned(),
            bare: bare.to_owned(),
            client_nonce: nonce.to_owned(),
        })
    }

    /// Produces the server-first-message `r=<client nonce><server nonce>,s=<salt>,i=<n>`, with
    /// a fresh server nonce (24 random bytes, base64). `creds` is `None` for an unknown user
    /// (or one without SCRAM credentials): deterministic fake credentials derived from the
    /// user name and a per-process secret are used, and the exchange fails at the proof.
    pub fn server_first(first: ClientFirst, creds: Option<&ScramCredentials>) -> (ScramServer, Vec<u8>) {
        let mut raw = [0u8; SERVER_NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let server_nonce = STANDARD.encode(raw);
        Self::start(first, creds, &server_nonce)
    }

    /// [`ScramServer::server_first`] with a given server nonce, for test vectors. The nonce
    /// must be non-empty printable ASCII without `,` ([`ScramError::Malformed`] otherwise).
    /// Production code must use `server_first`: the nonce has to be fresh and unpredictable.
    pub fn server_first_with_nonce(
        first: ClientFirst,
        creds: Option<&ScramCredentials>,
        server_nonce: &str,
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        check_nonce(server_nonce)?;
        Ok(Self::start(first, creds, server_nonce))
    }

    fn start(first: ClientFirst, creds: Option<&ScramCredentials>, server_nonce: &str) -> (ScramServer, Vec<u8>) {
        let fake_creds;
        let (creds, fake) = match creds {
            Some(c) => (c, false),
            None => {
                fake_creds = fake_credentials(&first.username);
                (&fake_creds, true)
            }
        };
        let nonce = format!("{}{server_nonce}", first.client_nonce);
        let server_first = format!("r={nonce},s={},i={}", STANDARD.encode(&creds.salt), creds.iterations);
        let auth_prefix = format!("{},{server_first},", first.bare);
        let server = ScramServer {
            username: first.username,
            gs2_header: first.gs2_header,
            auth_prefix,
            nonce,
            stored_key: creds.stored_key,
            server_key: creds.server_key,
            fake,
        };
        (server, server_first.into_bytes())
    }

    /// Checks a client-final-message `c=<gs2 header b64>,r=<nonce>[,ext…],p=<proof>`: the
    /// channel binding echo, the combined nonce and the ClientProof (constant time). Returns
    /// the user name and the server-final-message `v=<ServerSignature>`.
    pub fn client_final(self, msg: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
        let msg = as_message(msg)?;
        let (without_proof, proof) = msg.rsplit_once(',').ok_or(ScramError::Malformed)?;
        let proof = proof.strip_prefix("p=").ok_or(ScramError::Malformed)?;
        let proof = decode_b64(proof)?;
        let proof: [u8; KEY_LEN] = proof.try_into().map_err(|_| ScramError::Malformed)?;

        let mut attrs = without_proof.split(',');
        let cb = attrs.next().and_then(|a| a.strip_prefix("c=")).ok_or(ScramError::Malformed)?;
        let cb = decode_b64(cb)?;
        let nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed)?;
        check_nonce(nonce)?;
        check_extensions(attrs)?;

        if cb != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if !bool::from(nonce.as_bytes().ct_eq(self.nonce.as_bytes())) {
            return Err(ScramError::NonceMismatch);
        }

        let auth_message = format!("{}{without_proof}", self.auth_prefix);
        let client_signature = hmac_sha256(&self.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let matches: bool = sha256(&client_key).ct_eq(&self.stored_key).into();
        if !matches | self.fake {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac_sha256(&self.server_key, auth_message.as_bytes());
        Ok((self.username, format!("v={}", STANDARD.encode(server_signature)).into_bytes()))
    }
}

/// Fake credentials for `username`, stable for the life of the process. The keys are
/// unrelated to any password, and [`ScramServer`] refuses the proof regardless.
fn fake_credentials(username: &str) -> ScramCredentials {
    static SECRET: OnceLock<[u8; KEY_LEN]> = OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut s = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut s);
        s
    });
    let derive = |label: &[u8]| {
        let mut msg = Vec::with_capacity(label.len() + 1 + username.len());
        msg.extend_from_slice(label);
        msg.push(0);
        msg.extend_from_slice(username.as_bytes());
        hmac_sha256(secret, &msg)
    };
    ScramCredentials {
        salt: derive(b"salt")[..FAKE_SALT_LEN].to_vec(),
        iterations: DEFAULT_ITERATIONS,
        stored_key: derive(b"stored key"),
        server_key: derive(b"server key"),
    }
}

fn as_message(msg: &[u8]) -> Result<&str, ScramError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed);
    }
    std::str::from_utf8(msg).map_err(|_| ScramError::Malformed)
}

/// Decodes a `saslname`: `=2C` → `,`, `=3D` → `=`; other `=` sequences, NUL and the empty
/// name are refused. (`,` cannot occur: callers split on it.)
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    if s.is_empty() {
        return Err(ScramError::Malformed);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['=', '\0']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(ScramError::Malformed);
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A nonce is one or more printable ASCII characters other than `,`.
fn check_nonce(s: &str) -> Result<(), ScramError> {
    if !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        Ok(())
    } else {
        Err(ScramError::Malformed)
    }
}

/// Optional extensions: each `ALPHA "=" 1*value-char`; unknown ones are ignored.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for attr in attrs {
        let b = attr.as_bytes();
        if b.len() < 3 || !b[0].is_ascii_alphabetic() || b[1] != b'=' {
            return Err(ScramError::Malformed);
        }
    }
    Ok(())
}

fn decode_b64(s: &str) -> Result<Vec<u8>, ScramError> {
    STANDARD.decode(s).map_err(|_| ScramError::Malformed)
}

/// Client side of SCRAM-SHA-256, for tests and tools (e.g. an MQTT 5 client that
/// authenticates to Warden). Same rules as the server: no channel binding, no SASLprep.
pub struct ScramClient {
    password: Vec<u8>,
    gs2_header: String,
    bare: String,
    client_nonce: String,
    /// Set once the server-first-message has been handled.
    expected_server_signature: Option<[u8; KEY_LEN]>,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange for `username` with a random client nonce (24 bytes, base64).
    /// Returns the client state and the client-first-message (`n,,n=<user>,r=<nonce>`).
    pub fn new(username: &str, password: &[u8]) -> (ScramClient, Vec<u8>) {
        let mut raw = [0u8; SERVER_NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        Self::with_nonce(username, password, &STANDARD.encode(raw))
    }

    /// [`ScramClient::new`] with a given client nonce (test vectors). The nonce must be
    /// printable ASCII without `,`; this is not checked.
    pub fn with_nonce(username: &str, password: &[u8], client_nonce: &str) -> (ScramClient, Vec<u8>) {
        let escaped = username.replace('=', "=3D").replace(',', "=2C");
        let bare = format!("n={escaped},r={client_nonce}");
        let gs2_header = "n,,".to_owned();
        let first = format!("{gs2_header}{bare}").into_bytes();
        let client = ScramClient {
            password: password.to_vec(),
            gs2_header,
            bare,
            client_nonce: client_nonce.to_owned(),
            expected_server_signature: None,
        };
        (client, first)
    }

    /// Handles the server-first-message and returns the client-final-message. Refuses a
    /// nonce that does not extend ours and iteration counts outside
    /// [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`].
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = as_message(server_first)?;
        let mut attrs = msg.split(',');
        let nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed)?;
        let salt = attrs.next().and_then(|a| a.strip_prefix("s=")).ok_or(ScramError::Malformed)?;
        let iter = attrs.next().and_then(|a| a.strip_prefix("i=")).ok_or(ScramError::Malformed)?;
        check_extensions(attrs)?;
        check_nonce(nonce)?;
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(ScramError::NonceMismatch);
        }
        let salt = decode_b64(salt)?;
        if salt.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ScramError::Malformed);
        }
        let iterations: u32 = iter.parse().map_err(|_| ScramError::Malformed)?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Malformed);
        }

        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let server_key = hmac_sha256(&salted, b"Server Key");
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(&self.gs2_header));
        let auth_message = format!("{},{msg},{without_proof}", self.bare);
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.expected_server_signature = Some(hmac_sha256(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: `v=` must carry the expected ServerSignature
    /// ([`ScramError::InvalidProof`] otherwise, also for `e=` errors).
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let expected = self.expected_server_signature.ok_or(ScramError::Malformed)?;
        let msg = as_message(server_final)?;
        let first = msg.split(',').next().unwrap_or_default();
        let v = first.strip_prefix("v=").ok_or(ScramError::InvalidProof)?;
        let v = decode_b64(v)?;
        if bool::from(v.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(ScramError::InvalidProof)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 7677 §3.
    const C_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const S_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const S_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const C_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const S_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_creds() -> ScramCredentials {
        ScramCredentials::derive(b"pencil", &STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(), 4096)
    }

    fn rfc_server() -> ScramServer {
        let first = ScramServer::client_first(C_FIRST.as_bytes()).unwrap();
        let (server, msg) = ScramServer::server_first_with_nonce(first, Some(&rfc_creds()), S_NONCE).unwrap();
        assert_eq!(std::str::from_utf8(&msg).unwrap(), S_FIRST);
        server
    }

    #[test]
    fn rfc7677_exchange() {
        let first = ScramServer::client_first(C_FIRST.as_bytes()).unwrap();
        assert_eq!(first.username, "user");
        let (server, s_first) = ScramServer::server_first_with_nonce(first, Some(&rfc_creds()), S_NONCE).unwrap();
        assert_eq!(String::from_utf8(s_first).unwrap(), S_FIRST);
        let (user, s_final) = server.client_final(C_FINAL.as_bytes()).unwrap();
        assert_eq!(user, "user");
        assert_eq!(String::from_utf8(s_final).unwrap(), S_FINAL);
    }

    #[test]
    fn rfc7677_client_side() {
        let (mut client, c_first) = ScramClient::with_nonce("user", b"pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(String::from_utf8(c_first).unwrap(), C_FIRST);
        let c_final = client.client_final(S_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(c_final).unwrap(), C_FINAL);
        client.verify_server_final(S_FINAL.as_bytes()).unwrap();
        assert_eq!(client.verify_server_final(b"v=AAAA"), Err(ScramError::InvalidProof));
        assert_eq!(client.verify_server_final(b"e=invalid-proof"), Err(ScramError::InvalidProof));
    }

    #[test]
    fn round_trip_with_escaped_user_name() {
        for user in ["a,b=c", "=2C", "ünïcødé", "x"] {
            let creds = ScramCredentials::derive(b"secret", b"0123456789abcdef", MIN_ITERATIONS);
            let (mut client, c_first) = ScramClient::new(user, b"secret");
            let first = ScramServer::client_first(&c_first).unwrap();
            assert_eq!(first.username, user);
            let (server, s_first) = ScramServer::server_first(first, Some(&creds));
            let c_final = client.client_final(&s_first).unwrap();
            let (name, s_final) = server.client_final(&c_final).unwrap();
            assert_eq!(name, user);
            client.verify_server_final(&s_final).unwrap();
        }
    }

    #[test]
    fn server_nonces_are_fresh() {
        let nonce = |msg: &[u8]| std::str::from_utf8(msg).unwrap().split(',').next().unwrap().to_owned();
        let first = ScramServer::client_first(C_FIRST.as_bytes()).unwrap();
        let (_, a) = ScramServer::server_first(first.clone(), Some(&rfc_creds()));
        let (_, b) = ScramServer::server_first(first, Some(&rfc_creds()));
        let (a, b) = (nonce(&a), nonce(&b));
        assert_ne!(a, b);
        assert_eq!(a.len(), "r=".len() + "rOprNGfwEbeRWgbNEkqO".len() + 32);
    }

    #[test]
    fn wrong_password_refused() {
        let (mut client, c_first) = ScramClient::with_nonce("user", b"pencil!", "rOprNGfwEbeRWgbNEkqO");
        let first = ScramServer::client_first(&c_first).unwrap();
        let (server, s_first) = ScramServer::server_first_with_nonce(first, Some(&rfc_creds()), S_NONCE).unwrap();
        let c_final = client.client_final(&s_first).unwrap();
        assert_eq!(server.client_final(&c_final).unwrap_err(), ScramError::InvalidProof);

        // A flipped bit in the RFC's proof.
        let bad = C_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(rfc_server().client_final(bad.as_bytes()).unwrap_err(), ScramError::InvalidProof);
    }

    #[test]
    fn tampered_nonce_refused() {
        for nonce in [
            "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k1",
            "rOprNGfwEbeRWgbNEkqO",
            "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0x",
            "XOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        ] {
            let msg = format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
            assert_eq!(rfc_server().client_final(msg.as_bytes()).unwrap_err(), ScramError::NonceMismatch, "{nonce}");
        }
    }

    #[test]
    fn channel_binding_echo_checked() {
        // `y,,` must be echoed as eSws; biws for it is a mismatch, and vice versa.
        let bad = C_FINAL.replace("c=biws", "c=eSws");
        assert_eq!(rfc_server().client_final(bad.as_bytes()).unwrap_err(), ScramError::ChannelBindingMismatch);
        let first = ScramServer::client_first(b"y,,n=user,r=abc").unwrap();
        let (server, _) = ScramServer::server_first_with_nonce(first, Some(&rfc_creds()), "xyz").unwrap();
        let msg = b"c=biws,r=abcxyz,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(server.client_final(msg).unwrap_err(), ScramError::ChannelBindingMismatch);
        let first = ScramServer::client_first(b"y,,n=user,r=abc").unwrap();
        let (server, _) = ScramServer::server_first_with_nonce(first, Some(&rfc_creds()), "xyz").unwrap();
        let msg = b"c=eSws,r=abcxyz,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(server.client_final(msg).unwrap_err(), ScramError::InvalidProof);
    }

    #[test]
    fn authzid_equal_to_user_accepted() {
        let c_first = "n,a=user,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let first = ScramServer::client_first(c_first.as_bytes()).unwrap();
        assert_eq!(first.username, "user");
        let (server, _) = ScramServer::server_first_with_nonce(first, Some(&rfc_creds()), S_NONCE).unwrap();
        // c= must now be base64("n,a=user,"); the RFC proof no longer matches the AuthMessage.
        let msg = C_FINAL.replace("c=biws", &format!("c={}", STANDARD.encode("n,a=user,")));
        assert_eq!(server.client_final(msg.as_bytes()).unwrap_err(), ScramError::InvalidProof);
        assert_eq!(ScramServer::client_first(b"n,a=admin,n=user,r=abc").unwrap_err(), ScramError::AuthzidMismatch);
    }

    #[test]
    fn unknown_user_looks_the_same_and_fails_at_proof() {
        let (mut client, c_first) = ScramClient::new("nobody", b"pencil");
        let first = ScramServer::client_first(&c_first).unwrap();
        let (server, s_first) = ScramServer::server_first(first.clone(), None);
        let text = String::from_utf8(s_first.clone()).unwrap();
        let parts: Vec<&str> = text.split(',').collect();
        assert_eq!(parts.len(), 3, "{text}");
        assert!(parts[0].starts_with("r=") && parts[0].len() == 2 + first.client_nonce.len() + 32);
        assert_eq!(STANDARD.decode(parts[1].strip_prefix("s=").unwrap()).unwrap().len(), 16);
        assert_eq!(parts[2], "i=10000");
        let c_final = client.client_final(&s_first).unwrap();
        assert_eq!(server.client_final(&c_final).unwrap_err(), ScramError::InvalidProof);

        // Same salt on every attempt for the same name; a different one for another name.
        let salt = |name: &str| {
            let first = ScramServer::client_first(format!("n,,n={name},r=abc").as_bytes()).unwrap();
            let (_, m) = ScramServer::server_first(first, None);
            String::from_utf8(m).unwrap().split(',').nth(1).unwrap().to_owned()
        };
        assert_eq!(salt("nobody"), salt("nobody"));
        assert_ne!(salt("nobody"), salt("somebody"));

        // Even a client that knows the fake keys cannot log in.
        let fake = fake_credentials("nobody");
        let first = ScramServer::client_first(b"n,,n=nobody,r=abc").unwrap();
        let (server, s_first) = ScramServer::server_first_with_nonce(first, None, "def").unwrap();
        let auth = format!("n=nobody,r=abc,{},c=biws,r=abcdef", String::from_utf8(s_first).unwrap());
        // ClientKey is unknown (only its hash is), so forge a proof from a guessed key: fails.
        let sig = hmac_sha256(&fake.stored_key, auth.as_bytes());
        let msg = format!("c=biws,r=abcdef,p={}", STANDARD.encode(sig));
        assert_eq!(server.client_final(msg.as_bytes()).unwrap_err(), ScramError::InvalidProof);
    }

    #[test]
    fn malformed_client_first_refused() {
        use ScramError::*;
        let cases: &[(&[u8], ScramError)] = &[
            (b"", Malformed),
            (b"n", Malformed),
            (b"n,", Malformed),
            (b"n,,", Malformed),
            (b"n,,n=user", Malformed),
            (b"n,,n=user,r=", Malformed),
            (b"n,,n=,r=abc", Malformed),
            (b"n,,r=abc,n=user", Malformed),
            (b"n,,n=us=er,r=abc", Malformed),
            (b"n,,n=us=2cer,r=abc", Malformed),
            (b"n,,n=user=2,r=abc", Malformed),
            (b"n,,n=us\0er,r=abc", Malformed),
            (b"n,,n=user,r=ab c", Malformed),
            (b"n,,n=user,r=abc,", Malformed),
            (b"n,,n=user,r=abc,x", Malformed),
            (b"n,,n=user,r=abc,1=x", Malformed),
            (b"n,,n=user,r=abc,x=", Malformed),
            (b"n,,n=\xff,r=abc", Malformed),
            (b"x,,n=user,r=abc", Malformed),
            (b"N,,n=user,r=abc", Malformed),
            (b",,n=user,r=abc", Malformed),
            (b"n,x=user,n=user,r=abc", Malformed),
            (b"n,a=,n=user,r=abc", Malformed),
            (b"n=user,r=abc", Malformed),
            (b"p=tls-unique,,n=user,r=abc", UnsupportedChannelBinding),
            (b"p=tls-exporter,a=user,n=user,r=abc", UnsupportedChannelBinding),
            (b"n,,m=ext,n=user,r=abc", UnsupportedExtension),
            (b"n,a=other,n=user,r=abc", AuthzidMismatch),
        ];
        for (msg, err) in cases {
            assert_eq!(ScramServer::client_first(msg).unwrap_err(), *err, "{:?}", String::from_utf8_lossy(msg));
        }
        let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE_LEN));
        assert_eq!(ScramServer::client_first(long.as_bytes()).unwrap_err(), Malformed);

        // Accepted variants.
        let f = ScramServer::client_first(b"n,,n=a=2Cb=3Dc,r=abc,x=ignored").unwrap();
        assert_eq!(f.username, "a,b=c");
        assert_eq!(f.bare, "n=a=2Cb=3Dc,r=abc,x=ignored");
        assert_eq!(ScramServer::client_first(b"n,a=a=2Cb,n=a=2Cb,r=abc").unwrap().username, "a,b");
    }

    #[test]
    fn malformed_client_final_refused() {
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases = [
            String::new(),
            format!("c=biws,r={nonce}"),
            format!("r={nonce},p={proof}"),
            format!("c=biws,p={proof}"),
            format!("c=biws,r={nonce},p="),
            format!("c=biws,r={nonce},p=!!!!"),
            format!("c=biws,r={nonce},p=dHzb"),
            format!("c=b!ws,r={nonce},p={proof}"),
            format!("c=biws,r={nonce},p={proof},x=y"),
            format!("c=biws,r={nonce},1=y,p={proof}"),
            format!("c=biws,r=,p={proof}"),
            format!("r={nonce},c=biws,p={proof}"),
            format!("c=biws,r={nonce},p={proof}\u{0}"),
        ];
        for msg in cases {
            assert_eq!(rfc_server().client_final(msg.as_bytes()).unwrap_err(), ScramError::Malformed, "{msg:?}");
        }
        assert_eq!(rfc_server().client_final(b"c=biws,r=a\xff,p=x").unwrap_err(), ScramError::Malformed);
        // An unknown extension before the proof is ignored (but the proof then fails: it signs
        // the AuthMessage without it).
        let ext = format!("c=biws,r={nonce},x=y,p={proof}");
        assert_eq!(rfc_server().client_final(ext.as_bytes()).unwrap_err(), ScramError::InvalidProof);
    }

    #[test]
    fn injected_nonce_validated() {
        for bad in ["", "a,b", "a b", "é"] {
            let first = ScramServer::client_first(C_FIRST.as_bytes()).unwrap();
            assert!(ScramServer::server_first_with_nonce(first, None, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_refuses_bad_server_first() {
        for s_first in [
            "r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4095",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1000001",
            "r=rOprNGfwEbeRWgbNEkqOx,s=,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+4096",
            "r=rOprNGfwEbeRWgbNEkqOx,i=4096",
        ] {
            let (mut client, _) = ScramClient::with_nonce("user", b"pencil", "rOprNGfwEbeRWgbNEkqO");
            assert!(client.client_final(s_first.as_bytes()).is_err(), "{s_first}");
        }
    }

    #[test]
    fn errors_and_debug_show_no_secrets() {
        assert_eq!(format!("{:?}", rfc_creds()), "ScramCredentials { salt_len: 16, iterations: 4096, .. }");
        assert_eq!(format!("{:?}", rfc_server()), "ScramServer { username: \"user\", .. }");
        let (client, _) = ScramClient::new("user", b"pencil");
        assert_eq!(format!("{client:?}"), "ScramClient { .. }");
        assert_eq!(ScramError::InvalidProof.server_final_message(), b"e=invalid-proof");
        assert_eq!(ScramError::UnsupportedChannelBinding.server_final_message(), b"e=channel-binding-not-supported");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parsers_never_panic(
            first in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                "[npy=a-z,]{0,6}[,=]{0,3}[a-zA-Z0-9=,]{0,20}".prop_map(String::into_bytes),
                "(n|y|p=x),(a=[a-z=23CD]{0,6})?,(m=x,)?n=[a-z=23CD\u{0}]{0,8},r=[!-~]{0,8}(,[a-z1]=?[a-z]{0,3}){0,2}"
                    .prop_map(String::into_bytes),
            ],
            fin in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..128),
                "c=[a-zA-Z0-9+/=]{0,8},r=[!-~]{0,8}(,[a-z]=[a-z]{0,3}){0,2}(,p=[a-zA-Z0-9+/=]{0,48})?"
                    .prop_map(String::into_bytes),
            ],
            server_first in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            if let Ok(f) = ScramServer::client_first(&first) {
                prop_assert!(!f.username.is_empty());
                let (s, msg) = ScramServer::server_first(f.clone(), None);
                prop_assert!(ScramServer::client_first(&msg).is_err());
                prop_assert!(s.client_final(&fin).is_err());
                let (s, _) = ScramServer::server_first_with_nonce(f, Some(&rfc_creds()), "n").unwrap();
                let _ = s.client_final(&fin);
            }
            let (s, _) = ScramServer::server_first_with_nonce(
                ScramServer::client_first(C_FIRST.as_bytes()).unwrap(), None, S_NONCE).unwrap();
            prop_assert!(s.client_final(&fin).is_err());
            let (mut c, _) = ScramClient::with_nonce("user", b"pencil", "r");
            let _ = c.client_final(&server_first);
            let _ = c.verify_server_final(&fin);
        }

        #[test]
        fn escaped_names_round_trip(user in "[a-z,=é\u{1F600}]{1,12}") {
            let (_, c_first) = ScramClient::with_nonce(&user, b"pw", "abc");
            let f = ScramServer::client_first(&c_first).unwrap();
            prop_assert_eq!(f.username, user);
        }
    }
}
