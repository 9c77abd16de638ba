//! Password files and hashing.
//!
//! A password file is Mosquitto-style text: one `user:hash` per line, blank lines and lines
//! starting with `#` ignored. The user name is everything before the first `:`. Accepted hash
//! formats:
//! - PHC strings `$argon2id$…` (also `$argon2i$`, `$argon2d$`); new hashes are argon2id
//!   ([`hash_password`]);
//! - Mosquitto `$6$<b64 salt>$<b64 hash>`: SHA-512(password ‖ salt);
//! - Mosquitto `$7$<iterations>$<b64 salt>$<b64 hash>`: PBKDF2-HMAC-SHA512, 64-byte output;
//! - SCRAM-SHA-256 credentials in the RFC 5803 layout,
//!   `SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`
//!   ([`hash_password_scram`]), iterations in
//!   [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`].
//!   Such a user can log in with a plain password (checked against StoredKey) and with MQTT 5
//!   SCRAM-SHA-256 ([`PasswordFile::scram_credentials`], [`crate::scram`]); users with other
//!   formats can only use plain passwords.
//!
//! Pure code: no filesystem, no clock. Errors and `Debug` output never contain hashes or
//! passwords.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Stored SCRAM-SHA-256 credentials (defined in [`crate::scram`]).
pub use crate::scram::ScramCredentials;
use crate::scram::{DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS};

/// Largest argon2 working memory accepted from a password file, in 1 KiB blocks (1 GiB).
/// Larger values would let one line make every verification allocate without bound.
const MAX_ARGON2_BLOCKS: usize = 1 << 20;

/// Length of the digest in Mosquitto `$6$` / `$7$` hashes.
const MOSQ_HASH_LEN: usize = 64;

/// Prefix of stored SCRAM-SHA-256 credentials (RFC 5803).
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// Salt length for [`hash_password_scram`].
const SCRAM_SALT_LEN: usize = 16;

/// Standard base64 alphabet; padding optional (Mosquitto writes it, but be lenient).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a line (or a hash / user name given to [`upsert_user`]) was refused.
/// Never carries the hash text or any secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Missing ':' between user name and hash.
    #[error("missing ':' between user name and hash")]
    MissingSeparator,
    /// Empty user name.
    #[error("empty user name")]
    EmptyUser,
    /// User name has leading or trailing whitespace.
    #[error("user name has leading or trailing whitespace")]
    UserWhitespace,
    /// User name contains a forbidden character.
    #[error("user name contains a forbidden character")]
    UserForbiddenChar,
    /// User name starts with '#'.
    #[error("user name starts with '#'")]
    UserStartsWithHash,
    /// Missing hash.
    #[error("missing hash")]
    MissingHash,
    /// Hash contains whitespace or control characters.
    #[error("hash contains whitespace or control characters")]
    HashWhitespace,
    /// Unknown hash format.
    #[error("unknown hash format")]
    UnknownFormat,
    /// Malformed argon2 hash.
    #[error("malformed argon2 hash")]
    MalformedArgon2,
    /// Argon2 memory cost too large.
    #[error("argon2 memory cost too large")]
    Argon2TooLarge,
    /// Malformed $6$ hash.
    #[error("malformed $6$ hash")]
    MalformedSha512,
    /// Malformed $7$ hash.
    #[error("malformed $7$ hash")]
    MalformedPbkdf2,
    /// Malformed SCRAM-SHA-256 hash.
    #[error("malformed SCRAM-SHA-256 hash")]
    MalformedScram,
    /// SCRAM-SHA-256 iteration count out of range (4096..=1000000).
    #[error("SCRAM-SHA-256 iteration count out of range (4096..=1000000)")]
    ScramIterations,
    /// Duplicate user (first defined on line `first_line`).
    #[error("duplicate user (first defined on line {first_line})")]
    DuplicateUser {
        /// Where the user was first defined (1-based).
        first_line: usize,
    },
}

/// Error from [`PasswordFile::parse`] or [`upsert_user`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordFileError {
    /// A line of the file (1-based) is malformed.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: Reason,
    },
    /// The user name given to [`upsert_user`] cannot be stored.
    #[error("invalid user name: {0}")]
    InvalidUser(Reason),
    /// The hash given to [`upsert_user`] is not in an accepted format.
    #[error("invalid hash: {0}")]
    InvalidHash(Reason),
    /// An entry given to [`PasswordFile::from_entries`] (0-based position; the user name is
    /// not secret, the hash is never shown) is refused.
    #[error("entry {index} (user {user:?}): {reason}")]
    Entry {
        /// Position among the entries, from 0.
        index: usize,
        /// Its user name.
        user: String,
        /// What is wrong with it.
        reason: Reason,
    },
}

/// A parsed, validated stored hash.
enum StoredHash {
    /// PHC string (argon2id / argon2i / argon2d), validated at parse time.
    Argon2(String),
    /// Mosquitto `$6$`.
    Sha512 { salt: Vec<u8>, hash: [u8; MOSQ_HASH_LEN] },
    /// Mosquitto `$7$`.
    Pbkdf2 { iterations: u32, salt: Vec<u8>, hash: [u8; MOSQ_HASH_LEN] },
    /// RFC 5803 `SCRAM-SHA-256$…`.
    Scram(ScramCredentials),
}

impl StoredHash {
    /// Every format costs at least one argon2id verification: a user stored as `$6$`, `$7$` or
    /// SCRAM was otherwise refused in about a millisecond, and an unknown or argon2 user in
    /// tens — which told an attacker which names exist (and how they are stored).
    fn verify(&self, password: &[u8]) -> bool {
        if let StoredHash::Argon2(phc) = self {
            return verify_argon2(phc, password);
        }
        let ok = self.verify_fast(password);
        std::hint::black_box(verify_argon2(dummy_hash(), password));
        ok
    }

    /// The check of a format other than argon2, alone.
    fn verify_fast(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Argon2(phc) => verify_argon2(phc, password),
            StoredHash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                let out = h.finalize();
                out.as_slice().ct_eq(hash.as_slice()).into()
            }
            StoredHash::Pbkdf2 { iterations, salt, hash } => {
                let mut out = [0u8; MOSQ_HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            StoredHash::Scram(creds) => creds.verify_password(password),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// argon2id verifications run on this thread (tests of the timing equalisation).
    static ARGON2_RUNS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn verify_argon2(phc: &str, password: &[u8]) -> bool {
    #[cfg(test)]
    ARGON2_RUNS.with(|n| n.set(n.get() + 1));
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Parses and validates one hash (no surrounding whitespace allowed).
fn parse_hash(s: &str) -> Result<StoredHash, Reason> {
    if s.is_empty() {
        return Err(Reason::MissingHash);
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Reason::HashWhitespace);
    }
    if s.starts_with("$argon2id$") || s.starts_with("$argon2i$") || s.starts_with("$argon2d$") {
        parse_argon2(s)?;
        Ok(StoredHash::Argon2(s.to_owned()))
    } else if let Some(rest) = s.strip_prefix("$6$") {
        let (salt, hash) = rest.split_once('$').ok_or(Reason::MalformedSha512)?;
        let salt = decode_salt(salt).ok_or(Reason::MalformedSha512)?;
        let hash = decode_digest(hash).ok_or(Reason::MalformedSha512)?;
        Ok(StoredHash::Sha512 { salt, hash })
    } else if let Some(rest) = s.strip_prefix("$7$") {
        let mut parts = rest.split('$');
        let (Some(iter), Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::MalformedPbkdf2);
        };
        // Mosquitto stores the count as a C int; plain decimal digits only.
        if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Reason::MalformedPbkdf2);
        }
        let iterations: u32 = iter.parse().map_err(|_| Reason::MalformedPbkdf2)?;
        if iterations == 0 || iterations > i32::MAX as u32 {
            return Err(Reason::MalformedPbkdf2);
        }
        let salt = decode_salt(salt).ok_or(Reason::MalformedPbkdf2)?;
        let hash = decode_digest(hash).ok_or(Reason::MalformedPbkdf2)?;
        Ok(StoredHash::Pbkdf2 { iterations, salt, hash })
    } else if let Some(rest) = s.strip_prefix(SCRAM_PREFIX) {
        parse_scram(rest).map(StoredHash::Scram)
    } else {
        Err(Reason::UnknownFormat)
    }
}

fn parse_argon2(s: &str) -> Result<(), Reason> {
    let parsed = PasswordHash::new(s).map_err(|_| Reason::MalformedArgon2)?;
    // Algorithm and version must be ones the argon2 crate can run.
    argon2::Algorithm::try_from(parsed.algorithm).map_err(|_| Reason::MalformedArgon2)?;
    if let Some(v) = parsed.version {
        argon2::Version::try_from(v).map_err(|_| Reason::MalformedArgon2)?;
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(Reason::MalformedArgon2);
    }
    let params = Params::try_from(&parsed).map_err(|_| Reason::MalformedArgon2)?;
    if params.block_count() > MAX_ARGON2_BLOCKS {
        return Err(Reason::Argon2TooLarge);
    }
    Ok(())
}

/// Parses `<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>` (after the prefix).
fn parse_scram(s: &str) -> Result<ScramCredentials, Reason> {
    let (params, keys) = s.split_once('$').ok_or(Reason::MalformedScram)?;
    let (iter, salt) = params.split_once(':').ok_or(Reason::MalformedScram)?;
    let (stored_key, server_key) = keys.split_once(':').ok_or(Reason::MalformedScram)?;
    if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::MalformedScram);
    }
    // Too many digits for a u32 is out of range too, not malformed.
    let iterations = iter.parse::<u32>().unwrap_or(u32::MAX);
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(Reason::ScramIterations);
    }
    let salt = decode_salt(salt).ok_or(Reason::MalformedScram)?;
    let stored_key = decode_key(stored_key).ok_or(Reason::MalformedScram)?;
    let server_key = decode_key(server_key).ok_or(Reason::MalformedScram)?;
    Ok(ScramCredentials { salt, iterations, stored_key, server_key })
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    B64.decode(s).ok()?.try_into().ok()
}

fn format_scram(c: &ScramCredentials) -> String {
    format!(
        "{SCRAM_PREFIX}{}:{}${}:{}",
        c.iterations,
        B64.encode(&c.salt),
        B64.encode(c.stored_key),
        B64.encode(c.server_key)
    )
}

fn decode_salt(s: &str) -> Option<Vec<u8>> {
    let salt = B64.decode(s).ok()?;
    (!salt.is_empty()).then_some(salt)
}

fn decode_digest(s: &str) -> Option<[u8; MOSQ_HASH_LEN]> {
    B64.decode(s).ok()?.try_into().ok()
}

/// Checks a user name against what a password file line can hold.
fn check_user(user: &str) -> Result<(), Reason> {
    if user.is_empty() {
        return Err(Reason::EmptyUser);
    }
    if user.contains([':', '\n', '\r', '\0']) {
        return Err(Reason::UserForbiddenChar);
    }
    if user.trim() != user {
        return Err(Reason::UserWhitespace);
    }
    if user.starts_with('#') {
        return Err(Reason::UserStartsWithHash);
    }
    Ok(())
}

/// What one line of a password file is.
enum Line<'a> {
    /// Blank or comment.
    Skip,
    Entry {
        user: &'a str,
        hash: &'a str,
    },
}

/// Splits one line (without its `\n`) into user and hash; the hash is not validated here.
fn split_line(raw: &str) -> Result<Line<'_>, Reason> {
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(Line::Skip);
    }
    let (user, hash) = line.split_once(':').ok_or(Reason::MissingSeparator)?;
    check_user(user)?;
    Ok(Line::Entry { user, hash: hash.trim() })
}

/// How a stored hash is made, for audits (`warden audit`): the scheme and its work factor,
/// never the hash itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashScheme {
    /// argon2id / argon2i / argon2d (PHC string).
    Argon2,
    /// Mosquitto `$6$`: one round of SHA-512 (fast to brute-force).
    MosquittoSha512,
    /// Mosquitto `$7$`: PBKDF2-HMAC-SHA512 with this many iterations.
    MosquittoPbkdf2 {
        /// PBKDF2 iterations.
        iterations: u32,
    },
    /// RFC 5803 SCRAM-SHA-256 credentials with this many iterations.
    ScramSha256 {
        /// PBKDF2 iterations.
        iterations: u32,
    },
}

/// A parsed password file: user name → stored hash.
pub struct PasswordFile {
    users: HashMap<String, StoredHash>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile").field("users", &self.users.len()).finish()
    }
}

/// Collects validated entries, each named by a position (a line number, or an index) so that
/// a duplicate can name the first one.
#[derive(Default)]
struct Builder {
    users: HashMap<String, (usize, StoredHash)>,
}

impl Builder {
    /// Add `user` with stored `hash` (trimmed), found at `at`.
    fn add(&mut self, at: usize, user: &str, hash: &str) -> Result<(), Reason> {
        check_user(user)?;
        if let Some(&(first_line, _)) = self.users.get(user) {
            return Err(Reason::DuplicateUser { first_line });
        }
        let stored = parse_hash(hash.trim())?;
        self.users.insert(user.to_owned(), (at, stored));
        Ok(())
    }

    fn build(self) -> PasswordFile {
        PasswordFile { users: self.users.into_iter().map(|(u, (_, h))| (u, h)).collect() }
    }
}

impl PasswordFile {
    /// Parses the text of a password file. The first bad line is reported by its 1-based number.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut b = Builder::default();
        for (idx, raw) in text.split('\n').enumerate() {
            let line = idx + 1;
            let err = |reason| PasswordFileError::Line { line, reason };
            let Line::Entry { user, hash } = split_line(raw).map_err(err)? else {
                continue;
            };
            b.add(line, user, hash).map_err(err)?;
        }
        Ok(b.build())
    }

    /// Builds the set from `(user, stored hash)` pairs (e.g. the policy store's users), with
    /// the checks a password file's lines get: a user name a line could hold, each user once,
    /// a hash in an accepted format. The first bad entry is reported by its 0-based position
    /// (a duplicate's `first_line` is the first entry's position).
    pub fn from_entries<U: AsRef<str>, H: AsRef<str>>(
        entries: impl IntoIterator<Item = (U, H)>,
    ) -> Result<PasswordFile, PasswordFileError> {
        let mut b = Builder::default();
        for (index, (user, hash)) in entries.into_iter().enumerate() {
            let user = user.as_ref();
            b.add(index, user, hash.as_ref()).map_err(|reason| PasswordFileError::Entry {
                index,
                user: user.to_owned(),
                reason,
            })?;
        }
        Ok(b.build())
    }

    /// Every user with the scheme of its stored hash, sorted by user name.
    pub fn schemes(&self) -> Vec<(&str, HashScheme)> {
        let mut v: Vec<(&str, HashScheme)> = self
            .users
            .iter()
            .map(|(u, h)| {
                let scheme = match h {
                    StoredHash::Argon2(_) => HashScheme::Argon2,
                    StoredHash::Sha512 { .. } => HashScheme::MosquittoSha512,
                    StoredHash::Pbkdf2 { iterations, .. } => HashScheme::MosquittoPbkdf2 { iterations: *iterations },
                    StoredHash::Scram(c) => HashScheme::ScramSha256 { iterations: c.iterations },
                };
                (u.as_str(), scheme)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Checks `password` for `username`. Unknown users cost the same argon2id work as a real
    /// verification; empty passwords and unknown users are always refused.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let ok = match self.users.get(username) {
            Some(stored) => stored.verify(password),
            None => {
                std::hint::black_box(verify_argon2(dummy_hash(), password));
                false
            }
        };
        ok && !password.is_empty()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file names no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// True when `user` has a line in the file.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// `user`'s SCRAM-SHA-256 credentials, or `None` when the user is unknown or their line is
    /// in another format (then pass `None` to
    /// [`ScramServer::server_first`](crate::scram::ScramServer::server_first), which fails the
    /// exchange at the proof without revealing which case it was).
    pub fn scram_credentials(&self, user: &str) -> Option<ScramCredentials> {
        match self.users.get(user)? {
            StoredHash::Scram(creds) => Some(creds.clone()),
            _ => None,
        }
    }
}

/// Checks `password` against one stored hash (any format a password file accepts), e.g. an
/// OAuth client's `secret_hash`. A hash that does not parse costs the same argon2id work and
/// fails; an empty password always fails.
pub fn verify_hash(hash: &str, password: &[u8]) -> bool {
    let ok = match parse_hash(hash.trim()) {
        Ok(stored) => stored.verify(password),
        Err(_) => {
            std::hint::black_box(verify_argon2(dummy_hash(), password));
            false
        }
    };
    ok && !password.is_empty()
}

/// True when `hash` is in a format [`verify_hash`] understands (for config validation).
pub fn is_valid_hash(hash: &str) -> bool {
    parse_hash(hash.trim()).is_ok()
}

/// Why `hash` is not in a format [`verify_hash`] understands (for imports naming the reason).
pub fn check_hash(hash: &str) -> Result<(), Reason> {
    parse_hash(hash.trim()).map(|_| ())
}

/// A fixed argon2id hash (of a random password) to verify against for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut pw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut pw);
        hash_password(&pw)
    })
}

/// Hashes `password` as an argon2id PHC string with a random salt and the argon2 crate's
/// default parameters (m=19456 KiB, t=2, p=1: the OWASP recommendation).
pub fn hash_password(password: &[u8]) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        // Default parameters and a generated salt are always valid; only the password length
        // could fail, and argon2 accepts up to 2^32 - 1 bytes.
        .expect("argon2id hashing with default parameters")
        .to_string()
}

/// Hashes `password` as stored SCRAM-SHA-256 credentials (RFC 5803 layout):
/// `SCRAM-SHA-256$10000:<b64 16-byte random salt>$<b64 StoredKey>:<b64 ServerKey>`. The
/// password is used as given (no SASLprep). Such a line serves both plain-password logins and
/// MQTT 5 SCRAM-SHA-256.
pub fn hash_password_scram(password: &[u8]) -> String {
    let mut salt = [0u8; SCRAM_SALT_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    format_scram(&ScramCredentials::derive(password, &salt, DEFAULT_ITERATIONS))
}

/// Returns `file_text` with `user`'s line set to `user:hash`: replaced in place when the user
/// exists, else appended. Other lines, comments and line endings are kept. The existing text
/// must parse, and `hash` must be an accepted format.
pub fn upsert_user(file_text: &str, user: &str, hash: &str) -> Result<String, PasswordFileError> {
    check_user(user).map_err(PasswordFileError::InvalidUser)?;
    parse_hash(hash).map_err(PasswordFileError::InvalidHash)?;
    PasswordFile::parse(file_text)?;

    let mut out = String::with_capacity(file_text.len() + user.len() + hash.len() + 2);
    let mut replaced = false;
    for raw in file_text.split_inclusive('\n') {
        let body = raw.strip_suffix('\n').unwrap_or(raw);
        let body = body.strip_suffix('\r').unwrap_or(body);
        // The text parsed above, so split_line cannot fail here.
        match split_line(body) {
            Ok(Line::Entry { user: u, .. }) if u == user => {
                out.push_str(user);
                out.push(':');
                out.push_str(hash);
                out.push_str(&raw[body.len()..]);
                replaced = true;
            }
            _ => out.push_str(raw),
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(user);
        out.push(':');
        out.push_str(hash);
        out.push('\n');
    }
    Ok(out)
}

/// Returns `file_text` without `user`'s line, or `None` when no line names `user`. Other
/// lines, comments and line endings are kept. The existing text must parse.
pub fn remove_user(file_text: &str, user: &str) -> Result<Option<String>, PasswordFileError> {
    PasswordFile::parse(file_text)?;
    let mut out = String::with_capacity(file_text.len());
    let mut removed = false;
    for raw in file_text.split_inclusive('\n') {
        let body = raw.strip_suffix('\n').unwrap_or(raw);
        let body = body.strip_suffix('\r').unwrap_or(body);
        // The text parsed above, so split_line cannot fail here.
        match split_line(body) {
            Ok(Line::Entry { user: u, .. }) if u == user => removed = true,
            _ => out.push_str(raw),
        }
    }
    Ok(removed.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_entries_builds_what_parse_builds() {
        let a = hash_password(b"a-pass");
        let f = PasswordFile::from_entries([("alice", a.as_str()), ("bob", SHA6)]).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.verify("alice", b"a-pass"));
        assert!(!f.verify("alice", b"wrong"));
        assert!(f.contains("bob") && !f.contains("carol"));
        // The same checks as a file's lines, reported by position, never showing the hash.
        let dup = PasswordFile::from_entries([("u", SHA6), ("v", SHA6), ("u", SHA6)]).unwrap_err();
        assert_eq!(
            dup,
            PasswordFileError::Entry { index: 2, user: "u".into(), reason: Reason::DuplicateUser { first_line: 0 } }
        );
        let bad = PasswordFile::from_entries([("u", "not-a-hash")]).unwrap_err();
        assert_eq!(bad.to_string(), "entry 0 (user \"u\"): unknown hash format");
        assert!(!bad.to_string().contains("not-a-hash"));
        for user in ["", "a:b", " lead", "#x", "nl\n"] {
            assert!(PasswordFile::from_entries([(user, SHA6)]).is_err(), "{user:?}");
        }
        assert!(PasswordFile::from_entries(Vec::<(&str, &str)>::new()).unwrap().is_empty());
        assert_eq!(check_hash(SHA6), Ok(()));
        assert_eq!(check_hash("$7$x"), Err(Reason::MalformedPbkdf2));
    }

    #[test]
    fn remove_user_keeps_the_other_lines() {
        let text = "# users\r\nalice:$argon2id$x\nbob:plain-not-parsed\n";
        // An unparsable file is refused, not rewritten.
        assert!(remove_user(text, "alice").is_err());
        let a = hash_password(b"a");
        let b = hash_password(b"b");
        let text = format!("# users\r\nalice:{a}\r\nbob:{b}\n");
        assert_eq!(remove_user(&text, "alice").unwrap().unwrap(), format!("# users\r\nbob:{b}\n"));
        assert_eq!(remove_user(&text, "bob").unwrap().unwrap(), format!("# users\r\nalice:{a}\r\n"));
        assert!(remove_user(&text, "carol").unwrap().is_none());
        assert!(remove_user("", "carol").unwrap().is_none());
    }
    use proptest::prelude::*;

    // Made with the real `mosquitto_passwd` (Mosquitto 2.x):
    //   mosquitto_passwd -H sha512 -b -c pw6 bob 's3cret!'
    //   mosquitto_passwd -H sha512 -b pw6 erin ''
    //   mosquitto_passwd -H sha512 -b pw6 frank 'a:b c'
    const MOSQ_6: &str = "\
bob:$6$WVhX5N17EUPraG/4$vhV+Kl7RPBhLbrULK5CoSXqJOEfh3aQTzCCbUAl9ZJ/qmBKYaZBwh7RBn7k+qZgompvAunEb6rMZUEAGcIzIsQ==
erin:$6$Rks7lTgXwh9Syzq2$Po6fctTzS73IK8i0piJ1D6RKHqGOjLhkw+HgoND+hNj8fMqB2oVBiaOFjrHaJZg7kYvmTAAd5Ar76ySgCYWFYw==
frank:$6$zwmVrzXcBj/jdkio$m72RJZYi6lBC7EVX5gACKqb4g6ErfjIQbnkeoC8NaJO8WyPWGsu6LgApKJs7Bgz6hOPyHg9IGm16M4lM+H1oNw==
";

    //   mosquitto_passwd -b -c pw7 alice 'correct horse'
    //   mosquitto_passwd -b -H sha512-pbkdf2 -I 1000 pw7 carol 'x'
    //   mosquitto_passwd -b pw7 dave 'pässwörd ünïcode'
    const MOSQ_7: &str = "\
alice:$7$101$p6EhehGAcOHnO3xT$Q4qbonZb8IfjArob96nKUdbwJzB0e27kDJOYqfG1dI+KVur0a0thHUSxruOUDfPWYwiy5m2rajrIOXyv2+QOhw==
carol:$7$1000$mfYwgT/Y4jM3hZ7u$DniZKh5PncUQ12f/cOy4+NC+gqd5QFkarrDMLevjVfgynmu4+lOcuI8MzbmQxsKsXGwEm3N/cOjPnRRjEUo5Dg==
dave:$7$101$xMLV0E0XbD07xjjh$5VRL76e0uvTcVcHJ88b+wCnaWCLZGGmwEBthhfu0TAKZXpJzbYs21dVV49EbXTyRfRkCtrmnknafDIk88qqESA==
";

    const SHA6: &str =
        "$6$WVhX5N17EUPraG/4$vhV+Kl7RPBhLbrULK5CoSXqJOEfh3aQTzCCbUAl9ZJ/qmBKYaZBwh7RBn7k+qZgompvAunEb6rMZUEAGcIzIsQ==";

    // RFC 7677 §3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, i=4096.
    // StoredKey / ServerKey computed independently (Python hashlib / hmac).
    const RFC7677_LINE: &str = "user:SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
        WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    fn line_err(text: &str) -> (usize, Reason) {
        match PasswordFile::parse(text) {
            Err(PasswordFileError::Line { line, reason }) => (line, reason),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn argon2id_round_trip() {
        let h = hash_password(b"hunter2");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let f = PasswordFile::parse(&format!("# comment\n\nalice:{h}\n")).unwrap();
        assert_eq!(f.len(), 1);
        assert!(f.contains("alice"));
        assert!(f.verify("alice", b"hunter2"));
        assert!(!f.verify("alice", b"hunter3"));
        assert!(!f.verify("alice", b""));
        assert!(!f.verify("bob", b"hunter2"));
        // Salts differ.
        assert_ne!(h, hash_password(b"hunter2"));
    }

    #[test]
    fn argon2i_and_argon2d_accepted() {
        for alg in [argon2::Algorithm::Argon2i, argon2::Algorithm::Argon2d] {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            let a = Argon2::new(alg, argon2::Version::V0x13, Params::new(64, 1, 1, None).unwrap());
            let h = a.hash_password(b"pw", &salt).unwrap().to_string();
            let f = PasswordFile::parse(&format!("u:{h}")).unwrap();
            assert!(f.verify("u", b"pw"), "{h}");
            assert!(!f.verify("u", b"pW"), "{h}");
        }
    }

    #[test]
    fn mosquitto_sha512_vectors() {
        let f = PasswordFile::parse(MOSQ_6).unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.verify("bob", b"s3cret!"));
        assert!(!f.verify("bob", b"s3cret"));
        assert!(!f.verify("bob", b"s3cret!\n"));
        assert!(f.verify("frank", b"a:b c"));
        // erin's stored password is empty: empty passwords are always refused.
        assert!(!f.verify("erin", b""));
        assert!(!f.verify("erin", b"x"));
    }

    #[test]
    fn mosquitto_pbkdf2_vectors() {
        let f = PasswordFile::parse(MOSQ_7).unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.verify("alice", b"correct horse"));
        assert!(!f.verify("alice", b"correct horsE"));
        assert!(f.verify("carol", b"x"));
        assert!(!f.verify("carol", b"y"));
        assert!(f.verify("dave", "pässwörd ünïcode".as_bytes()));
        assert!(!f.verify("dave", b"passwort"));
        // A hash belongs to its user only.
        assert!(!f.verify("carol", b"correct horse"));
    }

    #[test]
    fn schemes_name_each_users_format_and_work_factor() {
        let text = format!(
            "{}\nbob:{}\nz:{}\n",
            MOSQ_7.lines().next().unwrap(),
            MOSQ_6.lines().next().unwrap().split_once(':').unwrap().1,
            hash_password(b"pw")
        );
        let f = PasswordFile::parse(&text).unwrap();
        let s = f.schemes();
        assert_eq!(s[1], ("bob", HashScheme::MosquittoSha512));
        assert_eq!(s[2], ("z", HashScheme::Argon2));
        assert!(matches!(s[0], ("alice", HashScheme::MosquittoPbkdf2 { iterations }) if iterations > 0));
    }

    #[test]
    fn mixed_file_crlf_and_unknown_user() {
        let h = hash_password(b"pw");
        let text = format!("# users\r\nx:{h}\r\n{}\r\n\r\n", MOSQ_7.lines().next().unwrap());
        let f = PasswordFile::parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.verify("x", b"pw"));
        assert!(f.verify("alice", b"correct horse"));
        assert!(!f.verify("nobody", b"pw"));
        assert!(!f.verify("nobody", b""));
        assert!(!f.contains("nobody"));
        assert!(!f.verify("", b"pw"));
    }

    #[test]
    fn user_name_is_everything_before_first_colon() {
        // The hash itself can never contain ':', so "a:b:$6$…" is a malformed hash.
        let (line, reason) = line_err(&format!("a:b:{SHA6}"));
        assert_eq!((line, reason), (1, Reason::UnknownFormat));
        let f = PasswordFile::parse(&format!("user@example.com:{SHA6}")).unwrap();
        assert!(f.verify("user@example.com", b"s3cret!"));
    }

    #[test]
    fn malformed_lines_report_line_number() {
        let good = format!("bob:{SHA6}");
        let cases: &[(&str, Reason)] = &[
            ("no separator here", Reason::MissingSeparator),
            (":$6$abc$def", Reason::EmptyUser),
            ("carol:", Reason::MissingHash),
            ("carol:plaintext", Reason::UnknownFormat),
            ("carol:$1$abc$def", Reason::UnknownFormat),
            ("carol:$argon2id$garbage", Reason::MalformedArgon2),
            ("carol:$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", Reason::Argon2TooLarge),
            ("carol:$6$c2FsdA==$c2hvcnQ=", Reason::MalformedSha512),
            ("carol:$6$!!!$c2hvcnQ=", Reason::MalformedSha512),
            ("carol:$6$nodollar", Reason::MalformedSha512),
            ("carol:$7$abc$c2FsdA==$c2hvcnQ=", Reason::MalformedPbkdf2),
            ("carol:$7$0$c2FsdA==$c2hvcnQ=", Reason::MalformedPbkdf2),
            ("carol:$7$101$c2FsdA==", Reason::MalformedPbkdf2),
            (" carol:$6$x$y", Reason::UserWhitespace),
            ("ca\0rol:$6$x$y", Reason::UserForbiddenChar),
            ("carol:$6$a b$c", Reason::HashWhitespace),
            ("bob:$6$a$b", Reason::DuplicateUser { first_line: 2 }),
        ];
        for (bad, reason) in cases {
            let text = format!("# header\n{good}\n\n{bad}\n");
            assert_eq!(line_err(&text), (4, *reason), "{bad:?}");
        }
    }

    #[test]
    fn errors_never_show_hashes() {
        let secret_hash = "$7$101$c2VjcmV0c2FsdA==$bm90IDY0IGJ5dGVz";
        let err = PasswordFile::parse(&format!("u:{secret_hash}")).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert_eq!(err.to_string(), "line 1: malformed $7$ hash");
        assert!(!shown.contains("c2Vj"), "{shown}");
        assert_eq!(line_err("x\ny\n"), (1, Reason::MissingSeparator));
        assert_eq!(
            PasswordFile::parse(&format!("a:{SHA6}\nb\n")).unwrap_err().to_string(),
            "line 2: missing ':' between user name and hash"
        );
        let f = PasswordFile::parse(MOSQ_6).unwrap();
        let dbg = format!("{f:?}");
        assert_eq!(dbg, "PasswordFile { users: 3 }");
    }

    #[test]
    fn single_hash_verification() {
        let h = hash_password(b"s3cret");
        assert!(is_valid_hash(&h));
        assert!(verify_hash(&h, b"s3cret"));
        assert!(!verify_hash(&h, b"other"));
        assert!(!verify_hash("not a hash", b"s3cret"));
        assert!(!is_valid_hash("not a hash"));
    }

    #[test]
    fn empty_file() {
        let f = PasswordFile::parse("").unwrap();
        assert!(f.is_empty());
        assert!(!f.verify("a", b"b"));
        let f = PasswordFile::parse("# only comments\n\n   \n").unwrap();
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn upsert_appends_and_replaces() {
        let h1 = hash_password(b"one");
        let h2 = hash_password(b"two");

        let t = upsert_user("", "alice", &h1).unwrap();
        assert_eq!(t, format!("alice:{h1}\n"));

        // Append to a file without a trailing newline; comments kept.
        let base = format!("# keep me\nbob:{SHA6}");
        let t = upsert_user(&base, "alice", &h1).unwrap();
        assert_eq!(t, format!("# keep me\nbob:{SHA6}\nalice:{h1}\n"));

        // Replace in place, keeping order, other lines and CRLF endings.
        let crlf = format!("# c\r\nalice:{h1}\r\nbob:{SHA6}\r\n");
        let t = upsert_user(&crlf, "alice", &h2).unwrap();
        assert_eq!(t, format!("# c\r\nalice:{h2}\r\nbob:{SHA6}\r\n"));
        let f = PasswordFile::parse(&t).unwrap();
        assert!(f.verify("alice", b"two"));
        assert!(!f.verify("alice", b"one"));
        assert!(f.verify("bob", b"s3cret!"));

        // Replace the last line that has no newline.
        let t = upsert_user(&format!("bob:{SHA6}"), "bob", &h2).unwrap();
        assert_eq!(t, format!("bob:{h2}"));

        // A Mosquitto hash can be stored too.
        let t = upsert_user("", "carol", SHA6).unwrap();
        assert!(PasswordFile::parse(&t).unwrap().verify("carol", b"s3cret!"));
    }

    #[test]
    fn upsert_rejects_bad_input() {
        let h = hash_password(b"pw");
        for user in ["", "a:b", "a\nb", "a\rb", "a\0b", " a", "a ", "#a"] {
            assert!(matches!(upsert_user("", user, &h), Err(PasswordFileError::InvalidUser(_))), "{user:?}");
        }
        for hash in ["", "plain", "$6$x", "$6$c2FsdA==$c2hvcnQ=", &format!("{h}\nx:{h}")] {
            assert!(matches!(upsert_user("", "a", hash), Err(PasswordFileError::InvalidHash(_))), "{hash:?}");
        }
        assert_eq!(
            upsert_user("ok\n", "a", &h).unwrap_err(),
            PasswordFileError::Line { line: 1, reason: Reason::MissingSeparator }
        );
        assert_eq!(
            upsert_user("", "a:b", &h).unwrap_err().to_string(),
            "invalid user name: user name contains a forbidden character"
        );
    }

    #[test]
    fn scram_round_trip() {
        let h = hash_password_scram(b"hunter2");
        let (params, keys) = h.strip_prefix("SCRAM-SHA-256$10000:").unwrap().split_once('$').unwrap();
        assert_eq!(B64.decode(params).unwrap().len(), 16, "{h}");
        assert!(keys.split_once(':').is_some(), "{h}");
        assert_ne!(h, hash_password_scram(b"hunter2"));
        assert!(is_valid_hash(&h));
        assert!(verify_hash(&h, b"hunter2"));

        let argon = hash_password(b"pw");
        let f = PasswordFile::parse(&format!(
            "alice:{h}
bob:{argon}
"
        ))
        .unwrap();
        assert!(f.verify("alice", b"hunter2"));
        assert!(!f.verify("alice", b"hunter3"));
        assert!(!f.verify("alice", b""));
        assert!(!f.verify("bob", b"hunter2"));
        assert!(f.verify("bob", b"pw"));

        let creds = f.scram_credentials("alice").unwrap();
        assert_eq!((creds.iterations, creds.salt.len()), (10_000, 16));
        assert!(creds.verify_password(b"hunter2"));
        assert_eq!(creds, ScramCredentials::derive(b"hunter2", &creds.salt, 10_000));
        assert!(f.scram_credentials("bob").is_none());
        assert!(f.scram_credentials("carol").is_none());

        // upsert keeps the format.
        let t = upsert_user("", "carol", &h).unwrap();
        assert!(PasswordFile::parse(&t).unwrap().verify("carol", b"hunter2"));
        let err = format!("{:?}", PasswordFile::parse(&format!("a:{h}\na:{h}")).unwrap_err());
        assert!(!err.contains(params), "{err}");
    }

    #[test]
    fn scram_rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let derived = ScramCredentials::derive(b"pencil", &salt, 4096);
        assert_eq!(B64.encode(derived.stored_key), "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=");
        assert_eq!(B64.encode(derived.server_key), "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=");
        assert_eq!(format!("user:{}", format_scram(&derived)), RFC7677_LINE);

        let f = PasswordFile::parse(RFC7677_LINE).unwrap();
        assert!(f.verify("user", b"pencil"));
        assert!(!f.verify("user", b"Pencil"));
        let creds = f.scram_credentials("user").unwrap();
        assert_eq!(creds, derived);

        // The RFC 7677 §3 exchange against the file's credentials.
        use crate::scram::ScramServer;
        let first = ScramServer::client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        let creds = f.scram_credentials(&first.username);
        let (server, _) =
            ScramServer::server_first_with_nonce(first, creds.as_ref(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0").unwrap();
        let c_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                       p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let (user, s_final) = server.client_final(c_final.as_bytes()).unwrap();
        assert_eq!(user, "user");
        assert_eq!(s_final, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn scram_malformed_lines() {
        let salt = "W22ZaJ0SNY7soEsUEjb6gQ==";
        let keys = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
        let short = "c2hvcnQ=";
        let cases: Vec<(String, Reason)> = vec![
            (format!("SCRAM-SHA-256$4095:{salt}${keys}"), Reason::ScramIterations),
            (format!("SCRAM-SHA-256$1000001:{salt}${keys}"), Reason::ScramIterations),
            (format!("SCRAM-SHA-256$0:{salt}${keys}"), Reason::ScramIterations),
            (format!("SCRAM-SHA-256$99999999999999:{salt}${keys}"), Reason::ScramIterations),
            (format!("SCRAM-SHA-256$:{salt}${keys}"), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$+4096:{salt}${keys}"), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$4096${keys}"), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$4096:{salt}"), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$4096:${keys}"), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$4096:!!!${keys}"), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$4096:{salt}${short}:{short}"), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$4096:{salt}$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$4096:{salt}${keys}:x"), Reason::MalformedScram),
            (format!("SCRAM-SHA-256$4096:{salt}${keys}$"), Reason::MalformedScram),
            (format!("SCRAM-SHA-1$4096:{salt}${keys}"), Reason::UnknownFormat),
            (format!("scram-sha-256$4096:{salt}${keys}"), Reason::UnknownFormat),
        ];
        for (hash, reason) in cases {
            assert_eq!(line_err(&format!("u:{hash}")), (1, reason), "{hash}");
            assert!(!is_valid_hash(&hash), "{hash}");
        }
        // Both bounds are inclusive.
        assert!(is_valid_hash(&format!("SCRAM-SHA-256$4096:{salt}${keys}")));
        assert!(is_valid_hash(&format!("SCRAM-SHA-256$1000000:{salt}${keys}")));
    }

    /// Argon2 verifications run by `f`.
    fn argon2_runs(f: impl FnOnce()) -> u32 {
        ARGON2_RUNS.with(|n| n.set(0));
        f();
        ARGON2_RUNS.with(|n| n.get())
    }

    /// A user stored as `$6$`, `$7$` or SCRAM costs the same argon2id work as an argon2 or an
    /// unknown user, right or wrong password: the refusal's timing does not say which names
    /// exist or how they are stored (user enumeration by timing).
    #[test]
    fn every_format_costs_one_argon2_verification() {
        let argon = hash_password(b"pw");
        let text = format!("{MOSQ_6}{MOSQ_7}{RFC7677_LINE}\nzed:{argon}\n");
        let f = PasswordFile::parse(&text).unwrap();
        for (user, right) in
            [("bob", &b"s3cret!"[..]), ("alice", b"correct horse"), ("user", b"pencil"), ("zed", b"pw")]
        {
            assert_eq!(argon2_runs(|| assert!(f.verify(user, right))), 1, "{user} right");
            assert_eq!(argon2_runs(|| assert!(!f.verify(user, b"wrong"))), 1, "{user} wrong");
        }
        assert_eq!(argon2_runs(|| assert!(!f.verify("nobody", b"x"))), 1);
        assert_eq!(argon2_runs(|| assert!(verify_hash(SHA6, b"s3cret!"))), 1);
        assert_eq!(argon2_runs(|| assert!(!verify_hash("garbage", b"x"))), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn scram_like_lines_never_panic(
            iter in prop_oneof![Just("4096".to_owned()), "[0-9+-]{0,12}"],
            salt in proptest::collection::vec(any::<u8>(), 0..20),
            stored in proptest::collection::vec(any::<u8>(), 30..34),
            server in proptest::collection::vec(any::<u8>(), 30..34),
            tail in "[A-Za-z0-9+/=:$]{0,8}",
            password in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let (s, a, b) = (B64.encode(&salt), B64.encode(&stored), B64.encode(&server));
            let text = format!("u:SCRAM-SHA-256${iter}:{s}${a}:{b}{tail}\n");
            if let Ok(f) = PasswordFile::parse(&text) {
                let c = f.scram_credentials("u").unwrap();
                prop_assert!((4096..=1_000_000).contains(&c.iterations));
                // Keep the test fast: only run cheap derivations.
                if c.iterations <= 10_000 {
                    prop_assert!(!f.verify("u", &password) || password.is_empty() || stored.len() == 32);
                }
            }
        }

        #[test]
        fn parse_and_verify_never_panic(
            lines in proptest::collection::vec(
                prop_oneof![
                    any::<String>(),
                    "[a-z]{0,4}:\\$[67]\\$[0-9]{0,3}\\$?[A-Za-z0-9+/=$]{0,100}",
                    "[a-z]{0,4}:\\$argon2(id|i|d)\\$[a-z0-9=,$]{0,60}",
                ],
                0..6,
            ),
            user in any::<String>(),
            password in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let text = lines.join("\n");
            if let Ok(f) = PasswordFile::parse(&text) {
                let _ = f.verify(&user, &password);
                for l in &lines {
                    if let Some((u, _)) = l.split_once(':') {
                        let _ = f.verify(u, &password);
                    }
                }
            }
            let _ = upsert_user(&text, &user, SHA6);
        }

        #[test]
        fn mosquitto_like_lines_never_panic(
            iter in 0u64..5000,
            salt in proptest::collection::vec(any::<u8>(), 0..20),
            digest in proptest::collection::vec(any::<u8>(), 60..68),
            password in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let (s, d) = (B64.encode(&salt), B64.encode(&digest));
            let text = format!("a:$7${iter}${s}${d}\nb:$6${s}${d}\n");
            if let Ok(f) = PasswordFile::parse(&text) {
                prop_assert!(!f.verify("a", &password) || digest.len() == 64);
                let _ = f.verify("b", &password);
            }
        }
    }
}
