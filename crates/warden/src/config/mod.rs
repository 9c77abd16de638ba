//! Configuration: a TOML file (SPEC §2) turned into a validated, typed [`Config`].
//!
//! Every problem is reported as `path/to/warden.toml:LINE: reason`. Unknown keys are errors
//! (`deny_unknown_fields` everywhere); values are validated while they are deserialized (so the
//! TOML error carries the value's span) or, for checks that involve several values, afterwards
//! using `toml::Spanned` positions.

mod cluster;
mod enroll;
pub mod lookup;
mod watch;

pub use cluster::ClusterSettings;
pub use enroll::EnrollConfig;
pub use warden_policy::cidr::Cidr;
pub use watch::WatchConfig;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;
use warden_policy::authn::{ListenerAuth, Method, Methods};

/// Largest packet MQTT can express (variable byte integer maximum, 256 MiB - 1).
pub const MQTT_MAX_PACKET_SIZE: u32 = 268_435_455;

/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "./warden-data";

/// Default URL path of WebSocket listeners.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// A loaded and validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Data directory; relative paths given in a file are resolved against the file's directory.
    pub data_dir: PathBuf,
    /// `[[listener]]` tables; at least one, no duplicate bind addresses.
    pub listeners: Vec<ListenerConfig>,
    /// `[auth]`: authentication methods, anonymous access, hashing limits.
    pub auth: AuthConfig,
    /// `[identity]`: client-id rules binding client ids to principals.
    pub identity: IdentityConfig,
    /// The HTTP side (token service, metrics); `None` when `[http]` is absent.
    pub http: Option<HttpConfig>,
    /// The built-in OAuth 2.0 token service (needs `[http]`).
    pub oauth: OAuthConfig,
    /// `[authz]`: ACL file, policy store, what a denial does.
    pub authz: AuthzConfig,
    /// `[limits]`: abuse limits, quotas, timeouts.
    pub limits: Limits,
    /// `[persistence]`: the durable store in `data_dir`.
    pub persistence: PersistenceConfig,
    /// `[log]`: level, format and destination of the broker's log.
    pub log: LogConfig,
    /// The file this configuration was loaded from (`None` for the embedded default).
    pub source: Option<PathBuf>,
    /// Every secret the file sets, and how (inline, `env:`, `*_file`); see [`Config::warnings`].
    pub secrets: Vec<SecretRef>,
    /// `[cluster]`: this broker as one node of several (SPEC §11); `None`: a single node.
    pub cluster: Option<ClusterSettings>,
    /// `[enroll]`: enrollment by claim (off by default).
    pub enroll: EnrollConfig,
    /// `[watch]`: the behaviour watch (docs/watch.md); off by default.
    pub watch: WatchConfig,
    /// `worker_threads`: the threads that run connections; `None`: one per core.
    pub worker_threads: Option<NonZeroUsize>,
}

/// `[persistence]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceConfig {
    /// Keep sessions, queued QoS 1/2 messages and retained messages in `data_dir/state.redb`
    /// (default true). When false, all state is lost at exit.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What an acknowledgement waits for: `"sync"`, `"batched"` (default) or `"none"`.
    #[serde(default)]
    pub durability: DurabilityMode,
    /// Least time between the starts of two store commits: `"1ms"` by default, `"0ms"` (a
    /// commit starts as soon as the one before is done and a change is queued), at most 1 s. Each commit
    /// then collects more changes, and a message its subscriber acknowledged before the commit
    /// is not written at all: with the store on a fast device (tmpfs) at 100k durable msg/s,
    /// `"1ms"` halved the broker's CPU per message (docs/PERFORMANCE.md, "Durable QoS 1"). The
    /// price: a PUBACK/PUBREC that waits on the store may wait up to this much longer. No
    /// effect when commits take longer anyway (a disk's fsync).
    #[serde(default = "default_commit_interval", deserialize_with = "de_commit_interval")]
    pub commit_interval: Duration,
}

fn yes() -> bool {
    true
}

fn default_commit_interval() -> Duration {
    DEFAULT_COMMIT_INTERVAL
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            enabled: true,
            durability: DurabilityMode::Batched,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    }
}

/// `[log]`: where the log goes and what it holds. `RUST_LOG`, when set, overrides `level`;
/// `--log-format`, when given, overrides `format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// An `EnvFilter` directive string (`"info"`, `"warn,warden=debug"`), validated at load.
    pub level: String,
    /// `"text"` (the default) or `"json"` (one object per line, plain values).
    pub format: LogFormat,
    /// Append to this file (created 0600), reopened on SIGHUP and SIGUSR1 for logrotate;
    /// `None`: standard error.
    pub file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: DEFAULT_LOG_LEVEL.to_string(), format: LogFormat::Text, file: None }
    }
}

/// `[log] level` when none is given.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (control characters escaped).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[persistence] durability` (see docs/persistence.md for what each promises).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Every change is durable before the packet that answers it.
    Sync,
    /// Accepted QoS 1/2 messages for persistent sessions, retained messages and QoS 2 state
    /// are durable before they are acknowledged (group commit).
    #[default]
    Batched,
    /// Nothing waits; the store is synced once a second.
    None,
}

/// One `[[listener]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address and port to listen on (`"127.0.0.1:1883"`, `"[::]:8883"`; port 0: any free
    /// port, printed at start). No two listeners on one address.
    pub bind: SocketAddr,
    /// `"mqtt"` (default), `"mqtts"`, `"ws"` or `"wss"`; mqtts and wss need `cert` and `key`.
    pub protocol: ListenerProtocol,
    /// WebSocket URL path (ws/wss only; `"/mqtt"` by default, always starts with `/`).
    pub path: String,
    /// Browser origins allowed to open WebSocket connections besides the listener's own host
    /// (ws/wss only; exact `scheme://host[:port]`, or `"*"` for any): a handshake with another
    /// `Origin` is refused (403), one without `Origin` (not a browser) is not concerned.
    pub allowed_origins: Vec<String>,
    /// Expect a PROXY protocol v1 or v2 header (HAProxy `send-proxy`/`send-proxy-v2`, nginx
    /// stream `proxy_protocol on`, AWS NLB) at the start of every connection, before TLS and
    /// WebSocket: bans, limits, audit records, `%`-patterns and the admin API then see the
    /// address the header gives. Default `false`. Needs `proxy_trusted`; a connection from
    /// elsewhere, or without a valid header within `connect_timeout`, is closed
    /// (docs/operations.md, "Behind a load balancer").
    pub proxy_protocol: bool,
    /// The networks whose PROXY headers are believed (`["10.0.0.0/8", "127.0.0.1/32"]`; a bare
    /// address is one host): the load balancers. Required and non-empty with `proxy_protocol`.
    pub proxy_trusted: Vec<Cidr>,
    /// TLS settings (mqtts/wss only).
    pub tls: Option<TlsConfig>,
    /// The authentication methods this listener allows, among `"password"`, `"scram"`,
    /// `"certificate"`, `"token"` and `"lookup"` (the `method` names of
    /// `warden_auth_attempts_total`), e.g. `["certificate"]` on a device port, `["password",
    /// "scram"]` on an operator port. A method not listed is refused on this listener even with
    /// valid credentials (SCRAM: CONNACK 0x8C; others: 0x87, v3 return code 5). Without the
    /// key: every configured method (the default chain). Checked at load: an unknown or
    /// repeated name, `"certificate"` without `client_ca` on this listener, `"scram"` without
    /// `[auth] password_file`, `"token"` without `[auth.jwt]` or the token service, `"lookup"`
    /// without `[auth.http]`, and `auth = []` without anonymous access are errors
    /// (docs/auth/README.md, "Per-listener methods").
    pub auth: Option<Methods>,
    /// Anonymous access on this listener (`true`/`false`); without the key, `[auth]
    /// allow_anonymous` decides.
    pub allow_anonymous: Option<bool>,
}

impl ListenerConfig {
    /// What the authentication chain reads of this listener.
    pub fn auth_rules(&self) -> ListenerAuth {
        ListenerAuth { methods: self.auth, allow_anonymous: self.allow_anonymous }
    }

    /// Whether anonymous clients are admitted here (its `allow_anonymous`, else `[auth]`'s).
    pub fn anonymous(&self, auth: &AuthConfig) -> bool {
        self.allow_anonymous.unwrap_or(auth.allow_anonymous)
    }
}

/// Transport of a listener. TOML: `"mqtt"` | `"mqtts"` | `"ws"` | `"wss"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerProtocol {
    /// MQTT over plain TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

/// Whether a TLS listener asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// No certificate, no connection (refused during the handshake).
    Required,
    /// A certificate is verified when presented; without one the client falls through to the
    /// other authentication methods.
    Optional,
}

/// Which certificates of a client's chain the CRLs are checked for (`crl_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrlScope {
    /// Every certificate of the chain but the trust anchor (an intermediate CA revoked by its
    /// issuer's CRL refuses every certificate under it); each issuing CA needs a CRL among
    /// `crl`, or its certificates' status is unknown and they are refused.
    #[default]
    Chain,
    /// The client's own certificate only.
    EndEntity,
}

/// TLS settings of an mqtts/wss listener. Paths are resolved like every other path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Server certificate chain (PEM, leaf first, intermediates after).
    pub cert: PathBuf,
    /// Server private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; turns on mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Required (the default with `client_ca`) or optional.
    pub client_cert: ClientCertMode,
    /// Certificate revocation lists (PEM or DER), checked for client certificates.
    pub crls: Vec<PathBuf>,
    /// Which certificates of the client's chain the CRLs cover (default the whole chain).
    pub crl_scope: CrlScope,
    /// Which part of the client certificate names the principal (default `cn`).
    pub identity_from_cert: warden_policy::cert::IdentitySource,
    /// TLS session resumption by stateless tickets (default `true`): a reconnecting client skips
    /// the certificate exchange and signatures (docs/auth/certificates.md, "Session
    /// resumption"). The ticket keys are random, in memory only, rotated every 6 hours.
    pub session_tickets: bool,
}

/// The `[identity]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Must the client id equal (or start with) the principal's name?
    pub client_id_must_match: ClientIdMatch,
    /// A client id equal to the name of a principal the broker knows (a password-file or
    /// policy-store user, an OAuth client) is reserved for that principal (default true).
    pub reserve_principal_names: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig { client_id_must_match: ClientIdMatch::default(), reserve_principal_names: true }
    }
}

/// `[identity] client_id_must_match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdMatch {
    /// The client id equals the principal's name.
    Exact,
    /// The client id starts with the principal's name.
    Prefix,
    /// No rule (the default).
    #[default]
    Off,
}

/// The `[auth]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthConfig {
    /// Default `false`: anonymous clients are refused.
    pub allow_anonymous: bool,
    /// Password file; relative paths given in a file are resolved against the file's directory.
    /// `None` when a config file does not name one.
    pub password_file: Option<PathBuf>,
    /// `[auth.jwt]`: access tokens from an outside issuer in the CONNECT password field.
    pub jwt: Option<JwtConfig>,
    /// `[auth.http]`: third-party look-up of credentials.
    pub lookup: Option<crate::config::lookup::LookupConfig>,
    /// Default `false`: any client certificate the listener's `client_ca` verifies is accepted
    /// (unless the device registry has it inactive or revoked). `true`: only certificates
    /// registered as `active` in the device registry (`/admin/devices`) are accepted, not every
    /// certificate the CA signed (AWS IoT's model).
    pub registered_certificates_only: bool,
}

/// A secret from the configuration: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn empty_secret() -> Secret {
    Secret(String::new())
}

/// The prefix of a secret given by reference to an environment variable: `"env:NAME"`.
pub const ENV_PREFIX: &str = "env:";

/// How a configured secret is given (SPEC §13, "secrets by reference").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    /// Written in the configuration file itself (`warden check` warns about it).
    Inline,
    /// `"env:NAME"`: the value of the environment variable `NAME` when the file is loaded.
    Env(String),
    /// `<key>_file = "path"`: the file's content, trailing line break trimmed (path resolved).
    File(PathBuf),
}

/// One secret the configuration sets, and how — never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Which secret: `[auth.jwt] hs256_secret`, `[[oauth.client]] "dev-1" secret_hash`…
    pub key: String,
    /// Line of the key in the configuration file (1-based).
    pub line: usize,
    /// Where its value comes from (inline, a file, the environment).
    pub origin: SecretOrigin,
}

/// Looks environment variables up for `"env:NAME"` secrets: `None` when unset. [`Config::load`]
/// reads the process environment ([`process_env`]); tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment (a value that is not UTF-8 counts as unset).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A secret key as the file gives it: the value and the `_file` sibling, with positions.
struct SecretSlot {
    /// `[auth.jwt]`, `[[oauth.client]] "dev-1"`.
    table: String,
    /// `hs256_secret`.
    name: &'static str,
    value: Option<Spanned<String>>,
    file: Option<Spanned<PathBuf>>,
}

/// An environment variable name as POSIX has them: letters, digits and `_`, not starting with
/// a digit.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where in the file, and why, a value is refused.
type Refusal = (Range<usize>, String);

/// The secret `slot` names, read from where it points; `None` when it is not set. A refusal
/// gives the span to report and the reason, which names the key, the variable or the file but
/// never a secret.
fn resolve_secret(
    slot: SecretSlot,
    text: &str,
    base: &Path,
    env: EnvLookup<'_>,
) -> Result<Option<(Secret, SecretRef)>, Refusal> {
    let SecretSlot { table, name, value, file } = slot;
    let key = format!("{table} {name}");
    match (value, file) {
        (None, None) => Ok(None),
        (Some(v), Some(f)) => {
            let at = if f.span().start > v.span().start { f.span() } else { v.span() };
            Err((at, format!("{key} and {name}_file are both set: give the secret one way only")))
        }
        (Some(v), None) => {
            let line = line_of(text, v.span().start);
            let span = v.span();
            let v = v.into_inner();
            let Some(var) = v.strip_prefix(ENV_PREFIX) else {
                return Ok(Some((Secret(v), SecretRef { key, line, origin: SecretOrigin::Inline })));
            };
            if !is_env_name(var) {
                return Err((
                    span,
                    format!(
                        "{key}: \"{ENV_PREFIX}{}\" does not name an environment variable (letters, digits and _)",
                        var.escape_debug()
                    ),
                ));
            }
            match env(var) {
                Some(value) if !value.is_empty() => {
                    Ok(Some((Secret(value), SecretRef { key, line, origin: SecretOrigin::Env(var.to_string()) })))
                }
                _ => Err((span, format!("{key}: environment variable {var} is not set or is empty"))),
            }
        }
        (None, Some(f)) => {
            let line = line_of(text, f.span().start);
            let span = f.span();
            let path = f.into_inner();
            if path.as_os_str().is_empty() {
                return Err((span, format!("{key}_file must not be empty")));
            }
            let path = resolve(base, path);
            let content = std::fs::read_to_string(&path)
                .map_err(|e| (span.clone(), format!("{key}_file: cannot read {}: {e}", path.display())))?;
            let value = content.trim_end_matches(['\r', '\n']);
            if value.is_empty() {
                return Err((span, format!("{key}_file: {} is empty", path.display())));
            }
            Ok(Some((Secret(value.to_string()), SecretRef { key, line, origin: SecretOrigin::File(path) })))
        }
    }
}

/// The secret keys of a configuration file with their positions: a second, lenient pass over
/// the text (the typed pass has already refused anything malformed or unknown).
#[derive(Deserialize, Default)]
#[serde(default)]
struct SecretKeys {
    auth: AuthSecretKeys,
    http: HttpSecretKeys,
    oauth: OAuthSecretKeys,
    cluster: cluster::ClusterSecretKeys,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthSecretKeys {
    jwt: JwtSecretKeys,
    http: LookupSecretKeys,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JwtSecretKeys {
    hs256_secret: Option<Spanned<String>>,
    hs256_secret_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LookupSecretKeys {
    bearer_token: Option<Spanned<String>>,
    bearer_token_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HttpSecretKeys {
    admin_token_hash: Option<Spanned<String>>,
    admin_token_hash_file: Option<Spanned<PathBuf>>,
    metrics_token_hash: Option<Spanned<String>>,
    metrics_token_hash_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OAuthSecretKeys {
    client: Vec<ClientSecretKeys>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ClientSecretKeys {
    id: Option<Spanned<String>>,
    secret_hash: Option<Spanned<String>>,
    secret_hash_file: Option<Spanned<PathBuf>>,
}

/// Which CONNECT field a token's subject must equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectMatch {
    /// No requirement (the default).
    #[default]
    Off,
    /// `sub` must equal the CONNECT user name.
    Username,
    /// `sub` must equal the client id.
    ClientId,
}

/// `[auth.jwt]`: verification of outside access tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`: this broker's name at the issuer. Mandatory (a configuration without it
    /// is refused at start): without it a token the issuer made for any other service would be
    /// accepted here.
    pub audience: Option<String>,
    /// Accepted header `typ` values, compared ignoring ASCII case and an `application/`
    /// prefix. Default `["at+jwt", "JWT"]`: RFC 9068 access tokens, and the generic `JWT` that
    /// most identity providers put on theirs; `["at+jwt"]` is the strict RFC 9068 profile. A
    /// token without `typ` is refused.
    #[serde(default = "default_jwt_typ", deserialize_with = "de_jwt_typ")]
    pub typ: Vec<String>,
    /// Longest accepted token lifetime, `exp - iat` (or `exp - now` without `iat`); default
    /// 24 h, at most 366 days.
    #[serde(default = "default_max_token_lifetime", deserialize_with = "de_max_token_lifetime")]
    pub max_token_lifetime: Duration,
    /// Scope prefixes that grant publishing to the topic filter after them; default
    /// `["mqtt:pub:"]`.
    #[serde(default = "default_publish_prefixes", deserialize_with = "de_scope_prefixes")]
    pub publish_scope_prefixes: Vec<String>,
    /// Scope prefixes that grant subscribing to (and receiving from) the filter after them;
    /// default `["mqtt:sub:"]`.
    #[serde(default = "default_subscribe_prefixes", deserialize_with = "de_scope_prefixes")]
    pub subscribe_scope_prefixes: Vec<String>,
    /// Scope → policy-store role name(s) (a string or a list); default none. Scopes that are
    /// neither mapped here nor start with a prefix above grant nothing.
    #[serde(default, deserialize_with = "de_scope_roles")]
    pub scope_roles: std::collections::BTreeMap<String, Vec<String>>,
    /// A JWKS file (RFC 7517) with the issuer's public keys.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched at start, cached, refreshed on an unknown `kid` (rate-limited).
    pub jwks_url: Option<String>,
    /// A shared HS256 secret: inline, `"env:NAME"` or through `hs256_secret_file`.
    pub hs256_secret: Option<Secret>,
    /// The file `hs256_secret` was read from (resolved), when given that way.
    pub hs256_secret_file: Option<PathBuf>,
    /// Clock leeway for `exp`/`nbf` (default 0 s).
    #[serde(default, deserialize_with = "de_leeway")]
    pub leeway: Duration,
    /// Require the token subject to equal the user name or the client id.
    #[serde(default)]
    pub subject_must_match: SubjectMatch,
}

impl JwtConfig {
    /// The scope mapping these settings describe.
    pub fn scope_map(&self) -> warden_policy::authz::ScopeMap {
        warden_policy::authz::ScopeMap {
            publish: self.publish_scope_prefixes.clone(),
            subscribe: self.subscribe_scope_prefixes.clone(),
            roles: self.scope_roles.clone(),
        }
    }
}

fn default_jwt_typ() -> Vec<String> {
    vec![warden_policy::jwt::TYP_ACCESS_TOKEN.to_owned(), warden_policy::jwt::TYP_JWT.to_owned()]
}
fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(warden_policy::jwt::DEFAULT_MAX_LIFETIME_SECS)
}
fn default_publish_prefixes() -> Vec<String> {
    vec![warden_policy::authz::PUB_SCOPE_PREFIX.to_owned()]
}
fn default_subscribe_prefixes() -> Vec<String> {
    vec![warden_policy::authz::SUB_SCOPE_PREFIX.to_owned()]
}

/// Longest `max_token_lifetime`.
const MAX_TOKEN_LIFETIME_CAP: Duration = Duration::from_secs(366 * 86_400);

fn de_max_token_lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = de_duration(d, "max_token_lifetime", Duration::from_secs(1))?;
    if v > MAX_TOKEN_LIFETIME_CAP {
        return Err(de::Error::custom("max_token_lifetime: at most 366 days (8784h)"));
    }
    Ok(v)
}

/// A `typ` value: visible ASCII, no spaces.
fn de_jwt_typ<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(de::Error::custom("typ: name at least one accepted token type (e.g. \"at+jwt\")"));
    }
    for t in &v {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(de::Error::custom(format!("typ: {t:?} is not a token type (visible ASCII, no spaces)")));
        }
    }
    Ok(v)
}

/// Scope prefixes: non-empty, no spaces (RFC 6749 §3.3 scope characters).
fn de_scope_prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for p in &v {
        if p.is_empty() {
            return Err(de::Error::custom("an empty scope prefix would make every scope a topic filter"));
        }
        if !valid_scope_token(p) {
            return Err(de::Error::custom(format!("scope prefix {p:?} has characters a scope cannot have")));
        }
    }
    Ok(v)
}

/// RFC 6749 §3.3: `1*( %x21 / %x23-5B / %x5D-7E )`.
fn valid_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// `scope_roles`: scope → a role name or a list of them.
fn de_scope_roles<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Roles {
        One(String),
        Many(Vec<String>),
    }
    let raw = std::collections::BTreeMap::<String, Roles>::deserialize(d)?;
    let mut out = std::collections::BTreeMap::new();
    for (scope, roles) in raw {
        if !valid_scope_token(&scope) {
            return Err(de::Error::custom(format!("scope_roles: {scope:?} is not a scope")));
        }
        let roles = match roles {
            Roles::One(r) => vec![r],
            Roles::Many(v) => v,
        };
        for r in &roles {
            warden_policy::store::valid_name("role", r)
                .map_err(|e| de::Error::custom(format!("scope_roles: {scope:?}: {e}")))?;
        }
        out.insert(scope, roles);
    }
    Ok(out)
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address of the HTTP listener.
    pub bind: SocketAddr,
    /// Hash (argon2id, `warden passwd --hash-only`) of the static admin API token, if any.
    pub admin_token_hash: Option<Secret>,
    /// Hash of a bearer token `GET /metrics` then requires (`Authorization: Bearer …`); none
    /// (the default): metrics are served without authentication.
    pub metrics_token_hash: Option<Secret>,
    /// Connection limits and timeouts of the HTTP listener.
    pub limits: HttpLimits,
    /// TLS (`cert`, `key`, optional `client_ca`, as for mqtts/wss listeners): HTTPS when set.
    pub tls: Option<TlsConfig>,
    /// `allow_plain_http = true`: plain HTTP on a non-loopback address is accepted (behind a
    /// TLS-terminating proxy, say). Without it such a configuration is refused at load.
    pub allow_plain_http: bool,
}

impl HttpConfig {
    /// A plain HTTP listener on `bind` with the default limits and no admin token.
    pub fn new(bind: SocketAddr) -> HttpConfig {
        HttpConfig {
            bind,
            admin_token_hash: None,
            metrics_token_hash: None,
            limits: HttpLimits::default(),
            tls: None,
            allow_plain_http: false,
        }
    }

    /// `http` or `https`: the scheme of the listener's URLs.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Is `ip` a loopback address (`127.0.0.0/8`, `::1`, or `::ffff:127.x.y.z`)?
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `[http]` limits: what one client (or all of them) can hold of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open HTTP connections at most (default 1024); more are closed when accepted.
    pub max_connections: usize,
    /// Open HTTP connections per source address at most (default 64).
    pub max_connections_per_ip: usize,
    /// A connection must send a request's complete headers within this (default 10 s), also
    /// counted from the end of the previous response on a kept-alive connection: else it is
    /// closed (slowloris).
    pub header_timeout: Duration,
    /// Reading a request's body and answering it must finish within this (default 30 s; 408
    /// otherwise), and a connection on which no byte moves for this long is closed.
    pub request_timeout: Duration,
    /// Largest request body (default 64 KiB; 413 beyond). The token service and the admin API
    /// keep their own, smaller limit (16 KiB).
    pub max_body_size: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            max_connections_per_ip: 64,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body_size: 64 * 1024,
        }
    }
}

fn de_http_max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_connections", 1, 1_000_000)?)
}
fn de_http_max_connections_per_ip<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_connections_per_ip", 1, 1_000_000)?)
}
fn de_http_header_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "header_timeout", Duration::from_millis(1))
}
fn de_http_request_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "request_timeout", Duration::from_millis(1))
}
fn de_http_max_body_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size(d, "max_body_size", 1, 1 << 30)
}

/// One `[[oauth.client]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientConfig {
    /// Client id (also the `sub` of its tokens).
    pub id: String,
    /// Hash of the client secret (`warden passwd --hash-only`): inline, `"env:NAME"` or
    /// through `secret_hash_file`.
    #[serde(default = "empty_secret")]
    pub secret_hash: Secret,
    /// The file `secret_hash` was read from (resolved), when given that way.
    pub secret_hash_file: Option<PathBuf>,
    /// Scopes the client may ask for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles carried in its tokens.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `[oauth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// On by default where `[http]` exists.
    pub enabled: bool,
    /// `iss` of minted tokens (default `http://<http.bind>`).
    pub issuer: Option<String>,
    /// Lifetime of access tokens (default 15 min).
    pub token_ttl: Duration,
    /// `aud` of minted tokens, if any.
    pub audience: Option<String>,
    /// Declared clients.
    pub clients: Vec<OAuthClientConfig>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            enabled: true,
            issuer: None,
            token_ttl: Duration::from_secs(900),
            audience: None,
            clients: Vec::new(),
        }
    }
}

/// What a denied publish gets (`[authz] on_deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDeny {
    /// v5 DISCONNECT 0x87 (v3: the connection is closed).
    #[default]
    Disconnect,
    /// Acknowledge (v5 with 0x87) and do not deliver.
    Drop,
}

/// Which authorization decisions go to the audit log (`[authz] audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    /// Denials only (the default).
    #[default]
    Denials,
    /// Every decision (publish, subscribe, receive): costly on a busy broker.
    All,
}

/// `[authz]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzConfig {
    /// Mosquitto-syntax ACL file.
    pub acl_file: Option<PathBuf>,
    /// Disconnect or drop on a denied publish.
    pub on_deny: OnDeny,
    /// Which decisions are written to the audit log.
    pub audit: AuditMode,
    /// Deliver a retained message only while its publisher may still publish it (else it is
    /// removed). Default true.
    pub check_retain_source: bool,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            acl_file: None,
            on_deny: OnDeny::default(),
            audit: AuditMode::default(),
            check_retain_source: true,
        }
    }
}

/// The `[limits]` table. Every field has a default ([`Limits::default`]).
///
/// Sizes accept integer bytes or strings such as `"256KiB"` (see [`parse_size`]); durations
/// accept integer seconds or strings such as `"500ms"`, `"10s"`, `"5m"`, `"1h"` (see
/// [`parse_duration`]). Values are range-checked while they are deserialized.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Bytes, 64 ..= 268435455. Default 256 KiB.
    #[serde(deserialize_with = "de_max_packet_size")]
    pub max_packet_size: u32,
    /// > 0. Default 10 s.
    #[serde(deserialize_with = "de_connect_timeout")]
    pub connect_timeout: Duration,
    /// Per session, >= 1. Default 10000.
    #[serde(deserialize_with = "de_max_queued_messages")]
    pub max_queued_messages: usize,
    /// Per session, >= 1 byte. Default 16 MiB.
    #[serde(deserialize_with = "de_max_queued_bytes")]
    pub max_queued_bytes: u64,
    /// Bytes queued across all the sessions of one principal (kind and name), >= 1 byte;
    /// beyond it new deliveries to that principal's sessions are dropped and counted. `None`
    /// (not set): a quarter of `max_memory` when that is set, else 64 MiB (see
    /// [`Limits::queued_bytes_per_principal`]).
    #[serde(deserialize_with = "de_max_queued_bytes_per_principal")]
    pub max_queued_bytes_per_principal: Option<u64>,
    /// Advertised in CONNACK (v5); 0 disables topic aliases. Default 10.
    #[serde(deserialize_with = "de_topic_alias_maximum")]
    pub topic_alias_maximum: u16,
    /// >= 1 s. Default 10 s.
    #[serde(deserialize_with = "de_sys_interval")]
    pub sys_interval: Duration,
    /// >= 1. Default 100000.
    #[serde(deserialize_with = "de_max_connections")]
    pub max_connections: usize,
    /// Receive Maximum the broker advertises (inbound QoS>0 inflight per client), 1 ..= 65535.
    /// Default 100.
    #[serde(deserialize_with = "de_receive_maximum")]
    pub receive_maximum: u16,
    /// Outbound inflight per client (further capped by the client's receive maximum),
    /// 1 ..= 65535. Default 100.
    #[serde(deserialize_with = "de_max_inflight")]
    pub max_inflight: u16,
    /// Seconds, 1 ..= 65535; a v5 client asking for more (or 0) gets Server Keep Alive.
    /// Default 65535.
    #[serde(deserialize_with = "de_max_keep_alive")]
    pub max_keep_alive: u16,
    /// Seconds, 0 ..= 4294967295 (u32::MAX = never expires). Default 604800 (7 days).
    #[serde(deserialize_with = "de_max_session_expiry")]
    pub max_session_expiry: u32,
    /// >= 1. Default 128.
    #[serde(deserialize_with = "de_max_topic_levels")]
    pub max_topic_levels: usize,
    /// >= 1. Default 1000.
    #[serde(deserialize_with = "de_max_subscriptions_per_client")]
    pub max_subscriptions_per_client: usize,
    /// Persistent sessions (session expiry above 0) one principal (kind and name) may hold,
    /// at least 1; a CONNECT that would make one more gets 0x97 Quota exceeded (v3: 0x03).
    /// Default 1000.
    #[serde(deserialize_with = "de_max_sessions_per_principal")]
    pub max_sessions_per_principal: usize,
    /// Subscriptions across all the sessions of one principal, >= 1; a filter beyond it gets
    /// 0x97 in the SUBACK (v3: 0x80). Default 10000.
    #[serde(deserialize_with = "de_max_subscriptions_per_principal")]
    pub max_subscriptions_per_principal: usize,
    /// Bytes of topic filters across all the sessions of one principal, >= 1 byte; as
    /// `max_subscriptions_per_principal`. Default 2 MiB.
    #[serde(deserialize_with = "de_max_subscription_bytes_per_principal")]
    pub max_subscription_bytes_per_principal: u64,
    /// Retained messages one principal may hold, >= 1; beyond it a retained PUBLISH is not
    /// retained (v5 QoS 1/2: PUBACK/PUBREC 0x97, not routed). Default 10000.
    #[serde(deserialize_with = "de_max_retained_messages_per_principal")]
    pub max_retained_messages_per_principal: usize,
    /// Bytes (topic + payload) of the retained messages of one principal, >= 1 byte; as
    /// `max_retained_messages_per_principal`. Default 32 MiB.
    #[serde(deserialize_with = "de_max_retained_bytes_per_principal")]
    pub max_retained_bytes_per_principal: u64,
    /// Retained messages in the broker, all publishers together, >= 1. Default 1000000.
    #[serde(deserialize_with = "de_max_retained_messages")]
    pub max_retained_messages: usize,
    /// Bytes of retained messages in the broker, >= 1 byte. Default 512 MiB.
    #[serde(deserialize_with = "de_max_retained_bytes")]
    pub max_retained_bytes: u64,
    /// Live connections from one source address, >= 1. Default 1000.
    #[serde(deserialize_with = "de_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// New connections per second from one source address (token bucket with a burst of the
    /// same size), >= 1. Default 200.
    #[serde(deserialize_with = "de_connect_rate_per_ip")]
    pub connect_rate_per_ip: u32,
    /// Failed authentications from one address before it is banned for a while.
    pub auth_fail_ban: AuthFailBan,
    /// PUBLISH packets per second per connection (token bucket, burst = one second's worth);
    /// 0 = off. Default 1000.
    #[serde(deserialize_with = "de_max_publish_rate")]
    pub max_publish_rate: u32,
    /// PUBLISH bytes (whole packets) per second per connection (token bucket, burst = one
    /// second's worth but at least `max_packet_size`); 0 = off. Default 10 MiB.
    #[serde(deserialize_with = "de_max_publish_bandwidth")]
    pub max_publish_bandwidth: u64,
    /// How long a connection over its publish rate or bandwidth is throttled (reading paused)
    /// before it is disconnected (v5 0x96 / 0x97); 0 = disconnect at once. Default 10 s.
    #[serde(deserialize_with = "de_publish_throttle")]
    pub publish_throttle: Duration,
    /// The TLS handshake of mqtts/wss connections must finish within this, > 0. Default 10 s.
    #[serde(deserialize_with = "de_tls_handshake_timeout")]
    pub tls_handshake_timeout: Duration,
    /// Failed authentications of one user name from one address before that pair backs off.
    pub auth_fail_backoff: AuthFailBackoff,
    /// Bytes of queued messages and connection buffers across the broker above which
    /// publishers stop being read (heaviest first); 0 = off. Default 2 GiB.
    #[serde(deserialize_with = "de_max_memory")]
    pub max_memory: u64,
    /// A connection whose pending output does not move for this long is closed; 0 = off.
    /// Default 60 s.
    #[serde(deserialize_with = "de_write_stall_timeout")]
    pub write_stall_timeout: Duration,
    /// Password verifications (argon2id: CPU and ~19 MiB each) run at once on the blocking
    /// pool, 0 ..= 1024; 0 = the number of cores minus one, at least 1. Default 0. One budget
    /// for the whole process: MQTT CONNECT passwords, OAuth client secrets, the admin token and
    /// passwords hashed through the admin API all take a slot from it.
    #[serde(deserialize_with = "de_auth_hash_concurrency")]
    pub auth_hash_concurrency: usize,
    /// Of those slots, how many the HTTP side (token service, admin API) may hold at once,
    /// 0 ..= 1024 (never more than `auth_hash_concurrency`); 0 = half of them, at least 1.
    /// Default 0. A flood of HTTP requests with wrong secrets then leaves the rest to MQTT
    /// CONNECTs; an HTTP request that finds no slot within `auth_hash_wait` gets 503.
    #[serde(deserialize_with = "de_auth_hash_http_max")]
    pub auth_hash_http_max: usize,
    /// A CONNECT (or an HTTP request with a secret) that waits longer than this for a
    /// verification slot is refused with v5 0x89 Server busy (v3 0x03; HTTP 503) and not counted
    /// as a failed login; 0 = refuse at once when every slot is taken. Default 2 s.
    #[serde(deserialize_with = "de_auth_hash_wait")]
    pub auth_hash_wait: Duration,
    /// A plain-TCP connection with nothing to read, write or wait for parks after this long:
    /// its task ends and one thread watches its socket until input, a delivery, an end signal
    /// or its keep alive wakes it (memory per idle connection); 0 = never. Default 2 s.
    #[serde(deserialize_with = "de_idle_park_after")]
    pub idle_park_after: Duration,
    /// A connection that keeps coming back soon after it parked (a device publishing every
    /// few seconds) waits up to this long before it parks again: one and a half times the
    /// time between its bursts of activity, when that is under this bound (a park and resume
    /// per message costs more CPU than the memory it saves is worth). Devices quiet for longer
    /// (keep alives of a minute) park after `idle_park_after`. At most 10 min; not below
    /// `idle_park_after` (equal: a fixed delay). Default 15 s.
    #[serde(deserialize_with = "de_idle_park_max")]
    pub idle_park_max: Duration,
}

/// `auth_fail_backoff = { failures = 5, initial = "1s", max = "5m" }`: after `failures`
/// failed authentications of one user name from one source address, further CONNECTs for
/// that user name from that address are refused without checking the credentials for
/// `initial`, doubling with every further failure up to `max`; a success clears it. Per
/// (user name, address): failures from other addresses never lock the user out (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthFailBackoff {
    /// Failures before the backoff starts, >= 1.
    #[serde(deserialize_with = "de_backoff_failures")]
    pub failures: u32,
    /// First backoff, >= 1 ms.
    #[serde(deserialize_with = "de_backoff_initial")]
    pub initial: Duration,
    /// Longest backoff, >= 1 ms (and the time after which a quiet pair is forgotten).
    #[serde(deserialize_with = "de_backoff_max")]
    pub max: Duration,
}

impl Default for AuthFailBackoff {
    fn default() -> Self {
        AuthFailBackoff { failures: 5, initial: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

fn de_backoff_failures<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    narrow(de_int(d, "failures", 1, u32::MAX.into())?)
}
fn de_backoff_initial<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "initial", Duration::from_millis(1))
}
fn de_backoff_max<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "max", Duration::from_millis(1))
}
fn de_max_publish_rate<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    narrow(de_int(d, "max_publish_rate", 0, u32::MAX.into())?)
}
fn de_max_publish_bandwidth<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size(d, "max_publish_bandwidth", 0, u64::MAX)
}
fn de_publish_throttle<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "publish_throttle", Duration::ZERO)
}
fn de_tls_handshake_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "tls_handshake_timeout", Duration::from_millis(1))
}
fn de_max_queued_bytes_per_principal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d, "max_queued_bytes_per_principal", 1, u64::MAX).map(Some)
}
fn de_max_memory<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size(d, "max_memory", 0, u64::MAX)
}
fn de_write_stall_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "write_stall_timeout", Duration::ZERO)
}
fn de_auth_hash_concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "auth_hash_concurrency", 0, 1024)?)
}
fn de_auth_hash_http_max<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "auth_hash_http_max", 0, 1024)?)
}
fn de_idle_park_after<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "idle_park_after", Duration::ZERO)
}
fn de_idle_park_max<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = de_duration(d, "idle_park_max", Duration::ZERO)?;
    if v > Duration::from_secs(600) {
        return Err(de::Error::custom("idle_park_max: at most 10m"));
    }
    Ok(v)
}
fn de_auth_hash_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "auth_hash_wait", Duration::ZERO)
}

/// `auth_fail_ban = { failures = 20, within = "60s", ban = "300s" }`: after `failures` failed
/// authentications from one source address within `within`, that address is refused for
/// `ban` — before any TLS handshake or password hashing. Per address only: failures from other
/// addresses never lock a user out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthFailBan {
    /// Failures that trigger a ban, >= 1.
    #[serde(deserialize_with = "de_ban_failures")]
    pub failures: u32,
    /// The window they are counted in.
    #[serde(deserialize_with = "de_ban_within")]
    pub within: Duration,
    /// How long the address is refused.
    #[serde(deserialize_with = "de_ban_duration")]
    pub ban: Duration,
}

impl Default for AuthFailBan {
    fn default() -> Self {
        AuthFailBan { failures: 20, within: Duration::from_secs(60), ban: Duration::from_secs(300) }
    }
}

fn de_ban_failures<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    narrow(de_int(d, "failures", 1, u32::MAX.into())?)
}
fn de_ban_within<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "within", Duration::from_secs(1))
}
fn de_ban_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "ban", Duration::from_secs(1))
}
fn de_max_connections_per_ip<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_connections_per_ip", 1, usize::MAX as u64)?)
}
fn de_connect_rate_per_ip<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    narrow(de_int(d, "connect_rate_per_ip", 1, u32::MAX.into())?)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 256 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_queued_messages: 10_000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_queued_bytes_per_principal: None,
            topic_alias_maximum: 10,
            sys_interval: Duration::from_secs(10),
            max_connections: 100_000,
            receive_maximum: 100,
            max_inflight: 100,
            max_keep_alive: 65_535,
            max_session_expiry: 604_800,
            max_topic_levels: 128,
            max_subscriptions_per_client: 1000,
            max_sessions_per_principal: 1000,
            max_subscriptions_per_principal: 10_000,
            max_subscription_bytes_per_principal: 2 * 1024 * 1024,
            max_retained_messages_per_principal: 10_000,
            max_retained_bytes_per_principal: 32 * 1024 * 1024,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 512 * 1024 * 1024,
            max_connections_per_ip: 1000,
            connect_rate_per_ip: 200,
            auth_fail_ban: AuthFailBan::default(),
            max_publish_rate: 1000,
            max_publish_bandwidth: 10 * 1024 * 1024,
            publish_throttle: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            auth_fail_backoff: AuthFailBackoff::default(),
            max_memory: 2 * 1024 * 1024 * 1024,
            write_stall_timeout: Duration::from_secs(60),
            auth_hash_concurrency: 0,
            auth_hash_http_max: 0,
            auth_hash_wait: Duration::from_secs(2),
            idle_park_after: Duration::from_secs(2),
            idle_park_max: Duration::from_secs(15),
        }
    }
}

impl Limits {
    /// `max_queued_bytes_per_principal` in force: as set, else a quarter of `max_memory`
    /// when that is set (one principal's offline queues cannot take the broker over the mark
    /// alone), else 64 MiB.
    pub fn queued_bytes_per_principal(&self) -> u64 {
        match self.max_queued_bytes_per_principal {
            Some(b) => b,
            None if self.max_memory > 0 => (self.max_memory / 4).max(1),
            None => 64 * 1024 * 1024,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. Display: `path: reason`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration. Display: `path:line: reason`.
    #[error("{}:{line}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong, in words.
        reason: String,
    },
}

impl Config {
    /// Reads and validates the configuration file at `path`; `"env:NAME"` secrets come from
    /// the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, &process_env)
    }

    /// [`Config::load`] with `"env:NAME"` secrets looked up in `env`.
    pub fn load_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Config::parse_with_env(&text, path, env)
    }

    /// [`Config::load`], but reporting every error it can find rather than the first
    /// (`warden check`). After an error on a line that holds one whole `key = value` naming
    /// that key in its reason (an unknown key, a bad value, a value at odds with another), the
    /// line is set aside and the file validated again, so independent mistakes in different
    /// tables are all listed, each with its file:line. It stops at an error that does not fit
    /// that shape (a TOML syntax error, a missing table or key) or that only follows from a
    /// line set aside.
    ///
    /// Returns the errors, and the configuration as validated with those lines set aside (when
    /// it then validates), so that what it refers to can be checked too.
    pub fn load_all_errors(path: &Path) -> (Option<Config>, Vec<ConfigError>) {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse_all_errors(&text, path, &process_env),
            Err(source) => (None, vec![ConfigError::Io { path: path.to_path_buf(), source }]),
        }
    }

    /// [`Config::load_all_errors`] for `text` (see [`Config::parse_with_env`]).
    pub fn parse_all_errors(text: &str, path: &Path, env: EnvLookup<'_>) -> (Option<Config>, Vec<ConfigError>) {
        /// The key of a line that is exactly one `key = value`, else None.
        fn single_key(line: &str) -> Option<String> {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('[') || t.starts_with('#') {
                return None;
            }
            let table: toml::Table = toml::from_str(line).ok()?;
            let mut keys = table.keys();
            match (keys.next(), keys.next()) {
                (Some(k), None) => Some(k.clone()),
                _ => None,
            }
        }
        let mut lines: Vec<&str> = text.split('\n').collect();
        let mut set_aside: Vec<String> = Vec::new();
        let mut errors = Vec::new();
        let mut work = text.to_string();
        // Each round sets one line aside: at most one round per line, plus the last.
        for _ in 0..=lines.len() {
            let e = match Config::parse_with_env(&work, path, env) {
                Ok(cfg) => return (Some(cfg), errors),
                Err(e) => e,
            };
            let ConfigError::Invalid { line, reason, .. } = &e else {
                errors.push(e);
                break;
            };
            // "missing field `bind`" after `bind = …` was set aside: not a mistake of its own.
            if set_aside.iter().any(|k| reason.contains(&format!("`{k}`"))) && reason.contains("missing") {
                break;
            }
            // serde's type errors carry the value's span but do not name the key: name it.
            let serde_says = ["invalid type", "invalid value", "unknown variant", "invalid length"]
                .iter()
                .any(|p| reason.starts_with(p));
            let key = lines
                .get(line.wrapping_sub(1))
                .and_then(|l| single_key(l))
                .filter(|k| serde_says || reason.contains(k.as_str()));
            let line = *line;
            let e = match (&key, e) {
                (Some(k), ConfigError::Invalid { path, line, reason }) if !reason.contains(k.as_str()) => {
                    ConfigError::Invalid { path, line, reason: format!("{k}: {reason}") }
                }
                (_, e) => e,
            };
            errors.push(e);
            let Some(key) = key else { break };
            lines[line - 1] = "";
            set_aside.push(key);
            work = lines.join("\n");
        }
        (None, errors)
    }

    /// Parses and validates configuration `text`; `path` names the file in error messages,
    /// anchors relative paths (its directory) and becomes [`Config::source`]. `"env:NAME"`
    /// secrets come from the process environment; `*_file` secrets are read.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, path, &process_env)
    }

    /// [`Config::parse`] with `"env:NAME"` secrets looked up in `env`.
    pub fn parse_with_env(text: &str, path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let invalid = |span: Option<Range<usize>>, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: span.map_or(1, |s| line_of(text, s.start)),
            reason,
        };
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| invalid(e.span(), one_line(e.message())))?;
        let base = path.parent().unwrap_or(Path::new(""));

        // Secrets: inline, "env:NAME" or `<key>_file`, resolved before they are validated.
        let keys: SecretKeys = toml::from_str(text).map_err(|e| invalid(e.span(), one_line(e.message())))?;
        let mut secrets = Vec::new();
        let mut take = |slot: SecretSlot| -> Result<(Option<Secret>, Option<PathBuf>), ConfigError> {
            match resolve_secret(slot, text, base, env).map_err(|(s, r)| invalid(Some(s), r))? {
                None => Ok((None, None)),
                Some((secret, r)) => {
                    let file = match &r.origin {
                        SecretOrigin::File(p) => Some(p.clone()),
                        _ => None,
                    };
                    secrets.push(r);
                    Ok((Some(secret), file))
                }
            }
        };
        if let Some(j) = raw.auth.jwt.as_mut() {
            let k = keys.auth.jwt;
            let j = j.get_mut();
            (j.hs256_secret, j.hs256_secret_file) = take(SecretSlot {
                table: "[auth.jwt]".into(),
                name: "hs256_secret",
                value: k.hs256_secret,
                file: k.hs256_secret_file,
            })?;
        }
        if let Some(l) = raw.auth.http.as_mut() {
            let k = keys.auth.http;
            (l.bearer_token, l.bearer_token_file) = take(SecretSlot {
                table: "[auth.http]".into(),
                name: "bearer_token",
                value: k.bearer_token,
                file: k.bearer_token_file,
            })?;
        }
        let cluster_password = match raw.cluster.is_some() {
            true => {
                take(SecretSlot {
                    table: "[cluster]".into(),
                    name: "nats_password",
                    value: keys.cluster.nats_password,
                    file: keys.cluster.nats_password_file,
                })?
                .0
            }
            false => None,
        };
        if let Some(h) = raw.http.as_mut() {
            let k = keys.http;
            let h = h.get_mut();
            let (hash, file) = take(SecretSlot {
                table: "[http]".into(),
                name: "admin_token_hash",
                value: k.admin_token_hash,
                file: k.admin_token_hash_file,
            })?;
            h.admin_token_hash = hash.map(|s| s.0);
            h.admin_token_hash_file = file;
            let (hash, file) = take(SecretSlot {
                table: "[http]".into(),
                name: "metrics_token_hash",
                value: k.metrics_token_hash,
                file: k.metrics_token_hash_file,
            })?;
            h.metrics_token_hash = hash.map(|s| s.0);
            h.metrics_token_hash_file = file;
        }
        if let Some(o) = raw.oauth.as_mut() {
            let oauth_span = o.span();
            for (c, k) in o.get_mut().client.iter_mut().zip(keys.oauth.client) {
                // (toml cannot give the span of a table in an array of tables: use its id's.)
                let span = k.id.as_ref().map_or(oauth_span.clone(), Spanned::span);
                let table = format!("[[oauth.client]] {:?}", c.id);
                match take(SecretSlot { table, name: "secret_hash", value: k.secret_hash, file: k.secret_hash_file })? {
                    (Some(hash), file) => (c.secret_hash, c.secret_hash_file) = (hash, file),
                    (None, _) => {
                        return Err(invalid(
                            Some(span),
                            format!("[[oauth.client]] {:?} needs secret_hash (or secret_hash_file)", c.id),
                        ))
                    }
                }
            }
        }

        let data_dir = match raw.data_dir {
            Some(d) => resolve(base, non_empty_path(d, "data_dir").map_err(|(s, r)| invalid(Some(s), r))?),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };

        let password_file = match raw.auth.password_file {
            Some(p) => Some(resolve(base, non_empty_path(p, "password_file").map_err(|(s, r)| invalid(Some(s), r))?)),
            None => None,
        };

        let jwt = match raw.auth.jwt {
            None => None,
            Some(j) => {
                let span = j.span();
                let mut j = j.into_inner();
                if j.jwks_file.is_none() && j.jwks_url.is_none() && j.hs256_secret.is_none() {
                    return Err(invalid(
                        Some(span),
                        "[auth.jwt] needs a key source: jwks_file, jwks_url or hs256_secret".into(),
                    ));
                }
                if j.audience.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        Some(span),
                        "[auth.jwt] needs `audience`: the `aud` value tokens for this broker carry (without it, \
                         a token the issuer made for any other service would be accepted here)"
                            .into(),
                    ));
                }
                if j.hs256_secret.as_ref().is_some_and(|s| s.0.len() < 16) {
                    return Err(invalid(Some(span), "[auth.jwt] hs256_secret must be at least 16 bytes".into()));
                }
                if let Some(u) = &j.jwks_url {
                    if !(u.starts_with("https://") || u.starts_with("http://")) {
                        return Err(invalid(Some(span), format!("[auth.jwt] jwks_url {u:?} is not an http(s) URL")));
                    }
                }
                j.jwks_file = j.jwks_file.map(|p| resolve(base, p));
                Some(j)
            }
        };
        let http = match raw.http {
            None => None,
            Some(h) => {
                let span = h.span();
                let h = h.into_inner();
                for (key, t) in
                    [("admin_token_hash", &h.admin_token_hash), ("metrics_token_hash", &h.metrics_token_hash)]
                {
                    if t.as_ref().is_some_and(|t| !warden_policy::password::is_valid_hash(t)) {
                        return Err(invalid(
                            Some(span),
                            format!("[http] {key} is not a hash (use `warden passwd --hash-only`)"),
                        ));
                    }
                }
                let limits = h.limits();
                let tls = tls_settings(&h.tls_keys(), "the [http] listener", true, base)
                    .map_err(|(s, r)| invalid(Some(s.unwrap_or_else(|| span.clone())), r))?;
                let bind_span = h.bind.span();
                let bind = h.bind.into_inner().0;
                // RFC 6749 §3.2: the token endpoint needs TLS; client secrets and admin tokens
                // must not cross a network in clear. Loopback never leaves the host.
                if tls.is_none() && !is_loopback(bind.ip()) && !h.allow_plain_http {
                    return Err(invalid(
                        Some(bind_span),
                        format!(
                            "[http] bind {bind} is not a loopback address and the HTTP listener has no TLS: \
                             client secrets and admin tokens would cross the network in clear (RFC 6749 §3.2). \
                             Set `cert` and `key` in [http], bind 127.0.0.1, or set `allow_plain_http = true` \
                             (behind a TLS-terminating proxy)"
                        ),
                    ));
                }
                Some(HttpConfig {
                    bind,
                    admin_token_hash: h.admin_token_hash.map(Secret),
                    metrics_token_hash: h.metrics_token_hash.map(Secret),
                    limits,
                    tls,
                    allow_plain_http: h.allow_plain_http,
                })
            }
        };
        let mut oauth = OAuthConfig::default();
        if let Some(o) = raw.oauth {
            let span = o.span();
            let o = o.into_inner();
            oauth.enabled = o.enabled.unwrap_or(true);
            oauth.issuer = o.issuer;
            oauth.audience = o.audience;
            if let Some(t) = o.token_ttl {
                oauth.token_ttl = t.0;
            }
            let mut ids = std::collections::HashSet::new();
            for c in &o.client {
                if c.id.is_empty() || !ids.insert(c.id.clone()) {
                    return Err(invalid(
                        Some(span.clone()),
                        format!("[[oauth.client]] id {:?} is empty or repeated", c.id),
                    ));
                }
                if !warden_policy::password::is_valid_hash(&c.secret_hash.0) {
                    return Err(invalid(
                        Some(span.clone()),
                        format!(
                            "[[oauth.client]] {:?}: secret_hash is not a hash (use `warden passwd --hash-only`)",
                            c.id
                        ),
                    ));
                }
            }
            oauth.clients = o.client;
            if oauth.enabled && http.is_none() && !oauth.clients.is_empty() {
                return Err(invalid(Some(span), "[oauth] clients are declared but there is no [http] listener".into()));
            }
        }
        let authz = match raw.authz {
            None => AuthzConfig::default(),
            Some(a) => AuthzConfig {
                acl_file: match a.acl_file {
                    Some(p) => {
                        Some(resolve(base, non_empty_path(p, "acl_file").map_err(|(s, r)| invalid(Some(s), r))?))
                    }
                    None => None,
                },
                on_deny: a.on_deny,
                audit: a.audit,
                check_retain_source: a.check_retain_source,
            },
        };

        let Some(raw_listeners) = raw.listeners else {
            return Err(invalid(None, "no listener configured: at least one [[listener]] table is required".into()));
        };
        if raw_listeners.get_ref().0.is_empty() {
            return Err(invalid(
                Some(raw_listeners.span()),
                "no listener configured: at least one [[listener]] table is required".into(),
            ));
        }
        let mut listeners = Vec::with_capacity(raw_listeners.get_ref().0.len());
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for l in raw_listeners.into_inner().0 {
            let protocol = l.protocol.as_ref().map_or(ListenerProtocol::Mqtt, |p| *p.get_ref());
            // Errors about the listener as a whole point at its `protocol` (or `bind`) line.
            let at = l.protocol.as_ref().map_or_else(|| l.bind.span(), |p| p.span());
            let what = format!("a {protocol} listener");
            let keys = if protocol.is_tls() { Some(l.tls_keys()) } else { None };
            let tls = match keys {
                Some(k) => tls_settings(&k, &what, false, base),
                None => no_tls_keys(&l.tls_keys(), protocol),
            }
            .map_err(|(s, r)| invalid(Some(s.unwrap_or(at)), r))?;
            let bind_span = l.bind.span();
            let bind = l.bind.into_inner().0;
            // Port 0 asks the OS for any free port: two such listeners do not collide.
            if bind.port() != 0 {
                let line = line_of(text, bind_span.start);
                if let Some(first) = seen.insert(bind, line) {
                    return Err(invalid(
                        Some(bind_span),
                        format!("duplicate bind address {bind} (already used by the listener on line {first})"),
                    ));
                }
            }
            let path = match l.path {
                None => DEFAULT_WS_PATH.to_string(),
                Some(p) => {
                    let span = p.span();
                    let p = p.into_inner();
                    if !protocol.is_ws() {
                        return Err(invalid(
                            Some(span),
                            format!("`path` applies only to ws and wss listeners, not {protocol}"),
                        ));
                    }
                    if !p.starts_with('/') {
                        return Err(invalid(Some(span), format!("invalid listener path {p:?}: must start with '/'")));
                    }
                    p
                }
            };
            let allowed_origins = match l.allowed_origins {
                None => Vec::new(),
                Some(o) => {
                    let span = o.span();
                    let o = o.into_inner();
                    if !protocol.is_ws() {
                        return Err(invalid(
                            Some(span),
                            format!("`allowed_origins` applies only to ws and wss listeners, not {protocol}"),
                        ));
                    }
                    if let Some(bad) = o.iter().find(|x| *x != "*" && *x != "null" && !x.contains("://")) {
                        return Err(invalid(
                            Some(span),
                            format!(
                                "allowed_origins: {bad:?} is not an origin (scheme://host[:port], \"null\" or \"*\")"
                            ),
                        ));
                    }
                    o
                }
            };
            let proxy_protocol = l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
            let proxy_trusted = match (l.proxy_trusted, &l.proxy_protocol) {
                (None, _) if proxy_protocol => {
                    return Err(invalid(
                        l.proxy_protocol.map(|p| p.span()),
                        "`proxy_protocol = true` needs `proxy_trusted`: the load balancers' networks \
                         (e.g. [\"10.0.0.0/8\"])"
                            .into(),
                    ))
                }
                (None, _) => Vec::new(),
                (Some(list), _) if !proxy_protocol => {
                    return Err(invalid(
                        Some(list.span()),
                        "`proxy_trusted` applies only with `proxy_protocol = true`".into(),
                    ))
                }
                (Some(list), _) => {
                    let span = list.span();
                    let list = list.into_inner();
                    if list.is_empty() {
                        return Err(invalid(
                            Some(span),
                            "`proxy_trusted` is empty: no load balancer could connect to this listener".into(),
                        ));
                    }
                    let mut nets = Vec::with_capacity(list.len());
                    for c in list {
                        let at = c.span();
                        nets.push(
                            c.into_inner()
                                .parse::<Cidr>()
                                .map_err(|e| invalid(Some(at), format!("proxy_trusted: {e}")))?,
                        );
                    }
                    nets
                }
            };
            let allow_anonymous = l.allow_anonymous.as_ref().map(|a| *a.get_ref());
            let auth = match l.auth {
                None => None,
                Some(list) => {
                    let span = list.span();
                    let mut set = Methods::NONE;
                    for name in list.into_inner() {
                        let at = name.span();
                        let name = name.into_inner();
                        let method = match Method::from_name(&name) {
                            Some(Method::Anonymous) => {
                                return Err(invalid(
                                    Some(at),
                                    "auth: \"anonymous\" is not a method here; set `allow_anonymous = true` on the listener"
                                        .into(),
                                ))
                            }
                            Some(m) => m,
                            None => {
                                return Err(invalid(
                                    Some(at),
                                    format!(
                                        "auth: unknown authentication method {name:?} \
                                         (expected password, scram, certificate, token or lookup)"
                                    ),
                                ))
                            }
                        };
                        if set.contains(method) {
                            return Err(invalid(Some(at), format!("auth: {name:?} is listed twice")));
                        }
                        // A method this broker cannot perform would refuse every client of it.
                        let missing = match method {
                            Method::Certificate if tls.as_ref().is_none_or(|t| t.client_ca.is_none()) => Some(
                                "\"certificate\" needs TLS client-certificate verification on this listener \
                                 (an mqtts or wss listener with `client_ca`)",
                            ),
                            Method::Scram if password_file.is_none() => {
                                Some("\"scram\" needs [auth] password_file (it holds the SCRAM credentials)")
                            }
                            Method::Token if jwt.is_none() && !(http.is_some() && oauth.enabled) => {
                                Some("\"token\" needs [auth.jwt] or the built-in token service ([http] with [oauth])")
                            }
                            Method::Lookup if raw.auth.http.is_none() => Some("\"lookup\" needs [auth.http]"),
                            _ => None,
                        };
                        if let Some(why) = missing {
                            return Err(invalid(Some(at), format!("auth: {why}")));
                        }
                        set = set.with(method);
                    }
                    if set == Methods::NONE && !allow_anonymous.unwrap_or(raw.auth.allow_anonymous) {
                        return Err(invalid(
                            Some(span),
                            "auth = [] and no anonymous access: no client could connect to this listener \
                             (list a method, or set allow_anonymous = true)"
                                .into(),
                        ));
                    }
                    Some(set)
                }
            };
            listeners.push(ListenerConfig {
                bind,
                protocol,
                path,
                allowed_origins,
                proxy_protocol,
                proxy_trusted,
                tls,
                auth,
                allow_anonymous,
            });
        }

        let log = match raw.log {
            None => LogConfig::default(),
            Some(l) => LogConfig {
                level: l.level,
                format: l.format,
                file: match l.file {
                    Some(p) => Some(resolve(base, non_empty_path(p, "file").map_err(|(s, r)| invalid(Some(s), r))?)),
                    None => None,
                },
            },
        };

        let cluster = match raw.cluster {
            Some(c) => {
                Some(c.into_inner().validate(cluster_password, base, resolve).map_err(|(s, r)| invalid(Some(s), r))?)
            }
            None => None,
        };

        let enroll = match raw.enroll {
            Some(e) => e.validate(base, resolve).map_err(|(s, r)| invalid(Some(s), r))?,
            None => EnrollConfig::default(),
        };

        Ok(Config {
            data_dir,
            listeners,
            auth: AuthConfig {
                allow_anonymous: raw.auth.allow_anonymous,
                password_file,
                jwt,
                lookup: raw.auth.http,
                registered_certificates_only: raw.auth.registered_certificates_only,
            },
            identity: IdentityConfig {
                client_id_must_match: raw.identity.client_id_must_match,
                reserve_principal_names: raw.identity.reserve_principal_names,
            },
            http,
            oauth,
            authz,
            limits: raw.limits,
            persistence: raw.persistence,
            watch: raw.watch,
            worker_threads: raw.worker_threads,
            log,
            source: Some(path.to_path_buf()),
            secrets,
            cluster,
            enroll,
        })
    }

    /// For a reload (SIGHUP): this configuration with the OAuth clients' secret hashes that are
    /// given by reference (`"env:NAME"`, `secret_hash_file`) read again — the source file with
    /// `env` — so that a rotated hash applies without a restart. Everything else stays as it
    /// was loaded (other secrets, like other settings, take a restart); an error (the file or a
    /// reference no longer loads) leaves the caller with the configuration it has.
    pub fn with_reread_secrets(&self, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let key = |id: &str| format!("[[oauth.client]] {id:?} secret_hash");
        let by_ref = |id: &str| self.secrets.iter().any(|r| r.key == key(id) && r.origin != SecretOrigin::Inline);
        let mut out = self.clone();
        let Some(path) = &self.source else { return Ok(out) };
        if !self.oauth.clients.iter().any(|c| by_ref(&c.id)) {
            return Ok(out);
        }
        let fresh = Config::load_with_env(path, env)?;
        for c in out.oauth.clients.iter_mut().filter(|c| by_ref(&c.id)) {
            if let Some(f) = fresh.oauth.clients.iter().find(|f| f.id == c.id) {
                c.secret_hash = f.secret_hash.clone();
                c.secret_hash_file = f.secret_hash_file.clone();
            }
        }
        Ok(out)
    }

    /// What `warden check` prints and the broker logs once at start, as warnings (SPEC §13):
    /// each secret written inline in the file (not those given as `"env:NAME"` or `*_file`),
    /// and each secret file that group or others may open (mode & 0o077): `*_file` secrets,
    /// the password file, TLS private keys and the token service's signing keys. Never a
    /// secret's value.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let file = self.source.as_ref().map_or_else(|| "configuration".to_string(), |p| p.display().to_string());
        for r in &self.secrets {
            if r.origin == SecretOrigin::Inline {
                let name = r.key.rsplit(' ').next().unwrap_or(&r.key);
                out.push(format!(
                    "{file}:{}: {} is written inline in the configuration file; give it as \
                     {name} = \"env:NAME\" or {name}_file = \"/path\" (a 0600 file) instead",
                    r.line, r.key
                ));
            }
        }
        for (what, path) in self.secret_files() {
            if let Some(mode) = open_to_others(&path) {
                out.push(format!(
                    "{what} {} can be opened by group or others (mode {mode:04o}); chmod 600 it",
                    path.display()
                ));
            }
        }
        out
    }

    /// The files holding secrets this configuration names or implies, each once: what they
    /// are and where.
    pub fn secret_files(&self) -> Vec<(String, PathBuf)> {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut add = |what: String, path: PathBuf| {
            if !files.iter().any(|(_, p)| *p == path) {
                files.push((what, path));
            }
        };
        for r in &self.secrets {
            if let SecretOrigin::File(p) = &r.origin {
                add(format!("{}_file", r.key), p.clone());
            }
        }
        if let Some(p) = &self.auth.password_file {
            add("[auth] password_file".into(), p.clone());
        }
        for l in &self.listeners {
            if let Some(t) = &l.tls {
                add(format!("TLS key of the {} listener {}", l.protocol, l.bind), t.key.clone());
            }
        }
        if self.http.is_some() && self.oauth.enabled {
            let dir = self.data_dir.join("oauth");
            add("token service signing key".into(), dir.join("signing-key.pem"));
            if let Ok(retired) = std::fs::read_dir(dir.join("retired")) {
                let mut paths: Vec<PathBuf> = retired.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                for p in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "pem")) {
                    add("retired token service signing key".into(), p);
                }
            }
        }
        files
    }

    /// The configuration used when no file is given, loopback only: MQTT on 127.0.0.1:1883,
    /// MQTT over TLS on 127.0.0.1:8883, WebSocket on 127.0.0.1:9001 and WebSocket over TLS on
    /// 127.0.0.1:8443 (path `/mqtt`), and the HTTP side over TLS on 127.0.0.1:8080. TLS uses
    /// the development PKI in `./warden-data/tls` (created on first start); on the MQTT
    /// listeners client certificates signed by its CA are accepted (optional) with the CN as
    /// identity. Anonymous clients are refused; password file
    /// `./warden-data/passwd`; default limits. The behaviour watch is off (`[watch] enabled =
    /// true` turns it on with the default rules, docs/watch.md).
    pub fn embedded_default() -> Config {
        let data_dir = PathBuf::from(DEFAULT_DATA_DIR);
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let pki = data_dir.join("tls");
        let tls = TlsConfig {
            cert: pki.join("server.pem"),
            key: pki.join("server.key"),
            client_ca: Some(pki.join("ca.pem")),
            client_cert: ClientCertMode::Optional,
            crls: Vec::new(),
            crl_scope: CrlScope::Chain,
            identity_from_cert: warden_policy::cert::IdentitySource::Cn,
            session_tickets: true,
        };
        let listener = |port, protocol: ListenerProtocol| ListenerConfig {
            bind: SocketAddr::new(localhost, port),
            protocol,
            path: DEFAULT_WS_PATH.to_string(),
            allowed_origins: Vec::new(),
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
            tls: protocol.is_tls().then(|| tls.clone()),
            auth: None,
            allow_anonymous: None,
        };
        Config {
            listeners: vec![
                listener(1883, ListenerProtocol::Mqtt),
                listener(8883, ListenerProtocol::Mqtts),
                listener(9001, ListenerProtocol::Ws),
                listener(8443, ListenerProtocol::Wss),
            ],
            auth: AuthConfig {
                allow_anonymous: false,
                password_file: Some(data_dir.join("passwd")),
                jwt: None,
                lookup: None,
                registered_certificates_only: false,
            },
            identity: IdentityConfig::default(),
            // HTTPS on loopback with the development server certificate (no client CA).
            http: Some(HttpConfig {
                tls: Some(TlsConfig { client_ca: None, client_cert: ClientCertMode::Required, ..tls.clone() }),
                ..HttpConfig::new(SocketAddr::new(localhost, 8080))
            }),
            oauth: OAuthConfig::default(),
            authz: AuthzConfig::default(),
            data_dir,
            limits: Limits::default(),
            persistence: PersistenceConfig::default(),
            cluster: None,
            enroll: EnrollConfig::default(),
            watch: WatchConfig::default(),
            worker_threads: None,
            log: LogConfig::default(),
            source: None,
            secrets: Vec::new(),
        }
    }
}

impl ListenerProtocol {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Mqtts => "mqtts",
            ListenerProtocol::Ws => "ws",
            ListenerProtocol::Wss => "wss",
        }
    }

    /// mqtts or wss.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerProtocol::Mqtts | ListenerProtocol::Wss)
    }

    /// ws or wss.
    pub fn is_ws(self) -> bool {
        matches!(self, ListenerProtocol::Ws | ListenerProtocol::Wss)
    }
}

impl fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ListenerProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ListenerProtocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a listener protocol: \"mqtt\", \"mqtts\", \"ws\" or \"wss\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenerProtocol, E> {
                match v {
                    "mqtt" => Ok(ListenerProtocol::Mqtt),
                    "mqtts" => Ok(ListenerProtocol::Mqtts),
                    "ws" => Ok(ListenerProtocol::Ws),
                    "wss" => Ok(ListenerProtocol::Wss),
                    _ => Err(E::custom(format!(
                        "unknown protocol {v:?}, expected \"mqtt\", \"mqtts\", \"ws\" or \"wss\""
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses a size: a whole number of bytes with an optional unit, `B`, `KiB`, `MiB`, `GiB`
/// (powers of 2) or `KB`/`kB`, `MB`, `GB` (powers of 10); e.g. `"256KiB"`, `"16 MiB"`,
/// `"1000"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = split_number(s, "size")?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!("invalid size {s:?}: unknown unit {unit:?} (expected B, KiB, MiB, GiB, KB, MB or GB)"))
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Parses a duration: a whole number with a unit, `ms`, `s`, `m` or `h`; e.g. `"500ms"`,
/// `"10s"`, `"5m"`, `"1h"`. (Integer seconds are accepted by the config fields themselves.)
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(s, "duration")?;
    let secs = |mult: u64| {
        n.checked_mul(mult).map(Duration::from_secs).ok_or_else(|| format!("invalid duration {s:?}: too large"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "" => Err(format!("invalid duration {s:?}: missing unit (ms, s, m or h)")),
        _ => Err(format!("invalid duration {s:?}: unknown unit {unit:?} (expected ms, s, m or h)")),
    }
}

/// Splits `" 16 MiB "` into `(16, "MiB")`; `what` names the kind of value in errors.
fn split_number<'a>(s: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("invalid {what} {s:?}: expected a whole number followed by a unit"));
    }
    let n = t[..digits].parse::<u64>().map_err(|_| format!("invalid {what} {s:?}: too large"))?;
    Ok((n, t[digits..].trim_start()))
}

// ---------------------------------------------------------------------------------------------
// Raw (file-shaped) structures; positions kept where validation spans several values.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<Spanned<PathBuf>>,
    #[serde(rename = "listener")]
    listeners: Option<Spanned<RawListeners>>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    identity: RawIdentity,
    http: Option<Spanned<RawHttp>>,
    oauth: Option<Spanned<RawOAuth>>,
    authz: Option<RawAuthz>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    persistence: PersistenceConfig,
    log: Option<RawLog>,
    cluster: Option<Spanned<cluster::RawCluster>>,
    enroll: Option<enroll::RawEnroll>,
    #[serde(default)]
    watch: WatchConfig,
    #[serde(default, deserialize_with = "de_worker_threads")]
    worker_threads: Option<NonZeroUsize>,
}

/// `worker_threads` (top level): 1 to 1024.
fn de_worker_threads<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroUsize>, D::Error> {
    let n = narrow(de_int(d, "worker_threads", 1, 1024)?)?;
    Ok(NonZeroUsize::new(n))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_log_level", deserialize_with = "de_log_level")]
    level: String,
    #[serde(default)]
    format: LogFormat,
    file: Option<Spanned<PathBuf>>,
}

fn default_log_level() -> String {
    DEFAULT_LOG_LEVEL.to_string()
}

/// `[log] level`: an `EnvFilter` directive string; a bad one is refused here, at its line.
fn de_log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = String::deserialize(d)?;
    if v.trim().is_empty() {
        return Err(de::Error::custom("level must not be empty (e.g. \"info\" or \"warn,warden=debug\")"));
    }
    // A bare word is a level; `warden` alone would be read as "every level of target warden",
    // which is far likelier a misspelt level: a target takes `target=level`.
    let levels = ["off", "error", "warn", "info", "debug", "trace", "0", "1", "2", "3", "4", "5"];
    if let Some(bad) = v
        .split(',')
        .map(str::trim)
        .find(|d| !d.is_empty() && !d.contains(['=', '[']) && !levels.contains(&d.to_ascii_lowercase().as_str()))
    {
        return Err(de::Error::custom(format!(
            "level {v:?}: {bad:?} is not a level (off, error, warn, info, debug, trace); a target takes \
             `target=level`"
        )));
    }
    tracing_subscriber::EnvFilter::builder().parse(&v).map_err(|e| {
        de::Error::custom(format!("level {v:?} is not a log filter ({e}); e.g. \"info\" or \"warn,warden=debug\""))
    })?;
    Ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    bind: Spanned<BindAddr>,
    admin_token_hash: Option<String>,
    admin_token_hash_file: Option<PathBuf>,
    metrics_token_hash: Option<String>,
    metrics_token_hash_file: Option<PathBuf>,
    #[serde(default)]
    allow_plain_http: bool,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    client_ca: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<ClientCertMode>>,
    crl: Option<Spanned<OneOrMany>>,
    crl_scope: Option<Spanned<CrlScope>>,
    #[serde(default = "http_default_max_connections", deserialize_with = "de_http_max_connections")]
    max_connections: usize,
    #[serde(default = "http_default_max_connections_per_ip", deserialize_with = "de_http_max_connections_per_ip")]
    max_connections_per_ip: usize,
    #[serde(default = "http_default_header_timeout", deserialize_with = "de_http_header_timeout")]
    header_timeout: Duration,
    #[serde(default = "http_default_request_timeout", deserialize_with = "de_http_request_timeout")]
    request_timeout: Duration,
    #[serde(default = "http_default_max_body_size", deserialize_with = "de_http_max_body_size")]
    max_body_size: u64,
}

impl RawHttp {
    fn tls_keys(&self) -> RawTls<'_> {
        RawTls {
            cert: &self.cert,
            key: &self.key,
            client_ca: &self.client_ca,
            client_cert: &self.client_cert,
            crl: &self.crl,
            crl_scope: &self.crl_scope,
            identity_from_cert: &None,
            session_tickets: &None,
        }
    }

    fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
            max_body_size: self.max_body_size,
        }
    }
}

fn http_default_max_connections() -> usize {
    HttpLimits::default().max_connections
}
fn http_default_max_connections_per_ip() -> usize {
    HttpLimits::default().max_connections_per_ip
}
fn http_default_header_timeout() -> Duration {
    HttpLimits::default().header_timeout
}
fn http_default_request_timeout() -> Duration {
    HttpLimits::default().request_timeout
}
fn http_default_max_body_size() -> u64 {
    HttpLimits::default().max_body_size
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth {
    enabled: Option<bool>,
    issuer: Option<String>,
    token_ttl: Option<Ttl>,
    audience: Option<String>,
    #[serde(default)]
    client: Vec<OAuthClientConfig>,
}

/// A token lifetime (1 s ..= 1 day).
struct Ttl(Duration);

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = de_duration(d, "token_ttl", Duration::from_secs(1))?;
        if v > Duration::from_secs(86_400) {
            return Err(de::Error::custom("token_ttl: at most 1 day (24h)"));
        }
        Ok(Ttl(v))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    acl_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    on_deny: OnDeny,
    #[serde(default)]
    audit: AuditMode,
    #[serde(default = "yes")]
    check_retain_source: bool,
}

fn de_leeway<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = de_duration(d, "leeway", Duration::ZERO)?;
    if v > Duration::from_secs(300) {
        return Err(de::Error::custom("leeway: at most 5 minutes"));
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    client_id_must_match: ClientIdMatch,
    #[serde(default = "yes")]
    reserve_principal_names: bool,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity { client_id_must_match: ClientIdMatch::default(), reserve_principal_names: true }
    }
}

/// A path or a list of paths.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// The TLS keys of a table (`[[listener]]` or `[http]`), as written.
struct RawTls<'a> {
    cert: &'a Option<Spanned<PathBuf>>,
    key: &'a Option<Spanned<PathBuf>>,
    client_ca: &'a Option<Spanned<PathBuf>>,
    client_cert: &'a Option<Spanned<ClientCertMode>>,
    crl: &'a Option<Spanned<OneOrMany>>,
    crl_scope: &'a Option<Spanned<CrlScope>>,
    identity_from_cert: &'a Option<Spanned<String>>,
    session_tickets: &'a Option<Spanned<bool>>,
}

impl RawTls<'_> {
    /// The TLS keys present, with their spans.
    fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        let raw = self;
        [
            ("cert", raw.cert.as_ref().map(|v| v.span())),
            ("key", raw.key.as_ref().map(|v| v.span())),
            ("client_ca", raw.client_ca.as_ref().map(|v| v.span())),
            ("client_cert", raw.client_cert.as_ref().map(|v| v.span())),
            ("crl", raw.crl.as_ref().map(|v| v.span())),
            ("crl_scope", raw.crl_scope.as_ref().map(|v| v.span())),
            ("identity_from_cert", raw.identity_from_cert.as_ref().map(|v| v.span())),
            ("session_tickets", raw.session_tickets.as_ref().map(|v| v.span())),
        ]
        .into_iter()
        .filter_map(|(k, s)| s.map(|s| (k, s)))
        .collect()
    }
}

/// A listener whose protocol has no TLS: any TLS key is an error.
fn no_tls_keys(
    raw: &RawTls<'_>,
    protocol: ListenerProtocol,
) -> Result<Option<TlsConfig>, (Option<Range<usize>>, String)> {
    match raw.present().first() {
        Some((k, span)) => {
            Err((Some(span.clone()), format!("`{k}` applies only to mqtts and wss listeners, not {protocol}")))
        }
        None => Ok(None),
    }
}

/// Validate the TLS keys of a table that may have TLS (`what` names it in errors). `optional`
/// (`[http]`): without any TLS key, no TLS (`Ok(None)`); else `cert` and `key` are required.
fn tls_settings(
    raw: &RawTls<'_>,
    what: &str,
    optional: bool,
    base: &Path,
) -> Result<Option<TlsConfig>, (Option<Range<usize>>, String)> {
    let present = raw.present();
    if optional && present.is_empty() {
        return Ok(None);
    }
    let path_of =
        |v: &Option<Spanned<PathBuf>>, name: &str| -> Result<Option<PathBuf>, (Option<Range<usize>>, String)> {
            match v {
                None => Ok(None),
                Some(p) if p.get_ref().as_os_str().is_empty() => Err((Some(p.span()), format!("`{name}` is empty"))),
                Some(p) => Ok(Some(resolve(base, p.get_ref().clone()))),
            }
        };
    let cert =
        path_of(raw.cert, "cert")?.ok_or((None, format!("{what} needs `cert` (the server certificate chain, PEM)")))?;
    let key = path_of(raw.key, "key")?.ok_or((None, format!("{what} needs `key` (the server private key, PEM)")))?;
    let client_ca = path_of(raw.client_ca, "client_ca")?;
    if client_ca.is_none() {
        for (k, span) in &present {
            if matches!(*k, "client_cert" | "crl" | "crl_scope" | "identity_from_cert") {
                return Err((Some(span.clone()), format!("`{k}` needs `client_ca` (it turns on client certificates)")));
            }
        }
    }
    let client_cert = raw.client_cert.as_ref().map_or(ClientCertMode::Required, |v| *v.get_ref());
    let crls = match raw.crl {
        None => Vec::new(),
        Some(c) => match c.get_ref() {
            OneOrMany::One(p) => vec![resolve(base, p.clone())],
            OneOrMany::Many(v) => v.iter().map(|p| resolve(base, p.clone())).collect(),
        },
    };
    let crl_scope = raw.crl_scope.as_ref().map_or(CrlScope::default(), |v| *v.get_ref());
    let identity_from_cert = match raw.identity_from_cert {
        None => warden_policy::cert::IdentitySource::Cn,
        Some(v) => v.get_ref().parse().map_err(|_| {
            (
                Some(v.span()),
                format!(
                    "identity_from_cert {:?}: expected \"cn\", \"san-dns\", \"san-uri\" or \"fingerprint\"",
                    v.get_ref()
                ),
            )
        })?,
    };
    let session_tickets = raw.session_tickets.as_ref().is_none_or(|v| *v.get_ref());
    Ok(Some(TlsConfig { cert, key, client_ca, client_cert, crls, crl_scope, identity_from_cert, session_tickets }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    bind: Spanned<BindAddr>,
    protocol: Option<Spanned<ListenerProtocol>>,
    path: Option<Spanned<String>>,
    allowed_origins: Option<Spanned<Vec<String>>>,
    proxy_protocol: Option<Spanned<bool>>,
    proxy_trusted: Option<Spanned<Vec<Spanned<String>>>>,
    auth: Option<Spanned<Vec<Spanned<String>>>>,
    allow_anonymous: Option<Spanned<bool>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    client_ca: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<ClientCertMode>>,
    crl: Option<Spanned<OneOrMany>>,
    crl_scope: Option<Spanned<CrlScope>>,
    identity_from_cert: Option<Spanned<String>>,
    session_tickets: Option<Spanned<bool>>,
}

impl RawListener {
    fn tls_keys(&self) -> RawTls<'_> {
        RawTls {
            cert: &self.cert,
            key: &self.key,
            client_ca: &self.client_ca,
            client_cert: &self.client_cert,
            crl: &self.crl,
            crl_scope: &self.crl_scope,
            identity_from_cert: &self.identity_from_cert,
            session_tickets: &self.session_tickets,
        }
    }
}

/// The `listener` key: an array of tables (`[[listener]]`), with a clear message for `[listener]`.
struct RawListeners(Vec<RawListener>);

impl<'de> Deserialize<'de> for RawListeners {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawListeners;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of tables: write [[listener]], not [listener]")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawListeners, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(l) = seq.next_element()? {
                    v.push(l);
                }
                Ok(RawListeners(v))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    allow_anonymous: bool,
    #[serde(default)]
    registered_certificates_only: bool,
    password_file: Option<Spanned<PathBuf>>,
    jwt: Option<Spanned<JwtConfig>>,
    http: Option<crate::config::lookup::LookupConfig>,
}

/// A socket address with a helpful error message.
struct BindAddr(SocketAddr);

impl<'de> Deserialize<'de> for BindAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BindAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bind address such as \"127.0.0.1:1883\" or \"[::1]:1883\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BindAddr, E> {
                v.parse().map(BindAddr).map_err(|_| {
                    E::custom(format!(
                        "invalid bind address {v:?}: expected IP:PORT such as \"127.0.0.1:1883\" or \"[::1]:1883\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Range-checked value deserializers for [limits].

/// An integer, or (when `size`) a size string, in `min ..= max`.
struct IntVisitor {
    key: &'static str,
    min: u64,
    max: u64,
    size: bool,
}

impl IntVisitor {
    fn check<E: de::Error>(&self, v: u64) -> Result<u64, E> {
        if (self.min..=self.max).contains(&v) {
            Ok(v)
        } else {
            let unit = if self.size { " bytes" } else { "" };
            Err(E::custom(format!("{} must be between {} and {}{unit}, not {v}", self.key, self.min, self.max)))
        }
    }
}

impl Visitor<'_> for IntVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.size {
            write!(f, "a size for {} (bytes, or a string such as \"256KiB\")", self.key)
        } else {
            write!(f, "an integer for {} between {} and {}", self.key, self.min, self.max)
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.check(v),
            Err(_) => Err(E::custom(format!("{} must be between {} and {}, not {v}", self.key, self.min, self.max))),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        self.check(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        if !self.size {
            return Err(E::invalid_type(de::Unexpected::Str(v), &self));
        }
        let n = parse_size(v).map_err(|e| E::custom(format!("{}: {e}", self.key)))?;
        self.check(n)
    }
}

fn de_int<'de, D: Deserializer<'de>>(d: D, key: &'static str, min: u64, max: u64) -> Result<u64, D::Error> {
    d.deserialize_any(IntVisitor { key, min, max, size: false })
}

fn de_size<'de, D: Deserializer<'de>>(d: D, key: &'static str, min: u64, max: u64) -> Result<u64, D::Error> {
    d.deserialize_any(IntVisitor { key, min, max, size: true })
}

/// A duration (integer seconds or a string such as `"10s"`) of at least `min`.
struct DurationVisitor {
    key: &'static str,
    min: Duration,
}

impl DurationVisitor {
    fn check<E: de::Error>(&self, v: Duration) -> Result<Duration, E> {
        if v >= self.min {
            Ok(v)
        } else if self.min == Duration::from_millis(1) {
            Err(E::custom(format!("{} must be greater than 0", self.key)))
        } else {
            Err(E::custom(format!("{} must be at least {:?}, not {v:?}", self.key, self.min)))
        }
    }
}

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a duration for {} (integer seconds, or a string such as \"500ms\", \"10s\", \"5m\", \"1h\")",
            self.key
        )
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        match u64::try_from(v) {
            Ok(v) => self.check(Duration::from_secs(v)),
            Err(_) => Err(E::custom(format!("{} must not be negative", self.key))),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        self.check(Duration::from_secs(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        let d = parse_duration(v).map_err(|e| E::custom(format!("{}: {e}", self.key)))?;
        self.check(d)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D, key: &'static str, min: Duration) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor { key, min })
}

/// The bounds below make these narrowing conversions infallible; `map_err` keeps them honest.
fn narrow<T: TryFrom<u64>, E: de::Error>(v: u64) -> Result<T, E> {
    T::try_from(v).map_err(|_| E::custom(format!("value {v} out of range")))
}

fn de_max_packet_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    narrow(de_size(d, "max_packet_size", 64, MQTT_MAX_PACKET_SIZE.into())?)
}
/// `[persistence] commit_interval` by default (issue 24: docs/persistence.md).
const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(1);

fn de_commit_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = de_duration(d, "commit_interval", Duration::ZERO)?;
    if v > Duration::from_secs(1) {
        return Err(de::Error::custom(format!("commit_interval must be at most 1s, not {v:?}")));
    }
    Ok(v)
}
fn de_connect_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "connect_timeout", Duration::from_millis(1))
}
fn de_max_queued_messages<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_queued_messages", 1, usize::MAX as u64)?)
}
fn de_max_queued_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size(d, "max_queued_bytes", 1, u64::MAX)
}
fn de_topic_alias_maximum<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    narrow(de_int(d, "topic_alias_maximum", 0, u16::MAX.into())?)
}
fn de_sys_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration(d, "sys_interval", Duration::from_secs(1))
}
fn de_max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_connections", 1, usize::MAX as u64)?)
}
fn de_receive_maximum<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    narrow(de_int(d, "receive_maximum", 1, u16::MAX.into())?)
}
fn de_max_inflight<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    narrow(de_int(d, "max_inflight", 1, u16::MAX.into())?)
}
fn de_max_keep_alive<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    narrow(de_int(d, "max_keep_alive", 1, u16::MAX.into())?)
}
fn de_max_session_expiry<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    narrow(de_int(d, "max_session_expiry", 0, u32::MAX.into())?)
}
fn de_max_topic_levels<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_topic_levels", 1, usize::MAX as u64)?)
}
fn de_max_subscriptions_per_client<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_subscriptions_per_client", 1, usize::MAX as u64)?)
}
fn de_max_sessions_per_principal<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_sessions_per_principal", 1, usize::MAX as u64)?)
}
fn de_max_subscriptions_per_principal<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_subscriptions_per_principal", 1, usize::MAX as u64)?)
}
fn de_max_subscription_bytes_per_principal<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size(d, "max_subscription_bytes_per_principal", 1, u64::MAX)
}
fn de_max_retained_messages_per_principal<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_retained_messages_per_principal", 1, usize::MAX as u64)?)
}
fn de_max_retained_bytes_per_principal<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size(d, "max_retained_bytes_per_principal", 1, u64::MAX)
}
fn de_max_retained_messages<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    narrow(de_int(d, "max_retained_messages", 1, usize::MAX as u64)?)
}
fn de_max_retained_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size(d, "max_retained_bytes", 1, u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The permission bits of the file at `path` when group or others have any (`None` for a
/// private file, or one that cannot be examined: loading it reports that).
/// (What `warden check` and `warden audit` warn about.)
#[cfg(unix)]
pub fn open_to_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Not a Unix system: file modes are not checked.
#[cfg(not(unix))]
pub fn open_to_others(_path: &Path) -> Option<u32> {
    None
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1
}

/// TOML parser messages may span several lines; keep the report on one.
fn one_line(msg: &str) -> String {
    msg.trim().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

fn non_empty_path(p: Spanned<PathBuf>, key: &str) -> Result<PathBuf, (Range<usize>, String)> {
    if p.get_ref().as_os_str().is_empty() {
        Err((p.span(), format!("{key} must not be empty")))
    } else {
        Ok(p.into_inner())
    }
}

/// Resolves `p` against `base` (the config file's directory) unless it is absolute; drops
/// `.` components so `"./passwd"` next to `/etc/warden/warden.toml` is `/etc/warden/passwd`.
fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    let tail: PathBuf = p.components().filter(|c| *c != Component::CurDir).collect();
    if base.as_os_str().is_empty() {
        if tail.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            tail
        }
    } else {
        base.join(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "conf/warden.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(FILE))
    }

    /// Issue 24: `[persistence] commit_interval`, 1 ms by default, 0 allowed, at most 1 s.
    #[test]
    fn persistence_commit_interval_defaults_to_1ms_and_is_bounded() {
        let base = "[[listener]]\nbind = \"127.0.0.1:0\"\n";
        assert_eq!(parse(base).unwrap().persistence.commit_interval, Duration::from_millis(1));
        assert_eq!(
            parse(&format!("{base}[persistence]\nenabled = true\n")).unwrap().persistence.commit_interval,
            Duration::from_millis(1)
        );
        let cfg = parse(&format!("{base}[persistence]\ncommit_interval = \"0ms\"\n")).unwrap();
        assert_eq!(cfg.persistence.commit_interval, Duration::ZERO);
        let cfg = parse(&format!("{base}[persistence]\ncommit_interval = \"5ms\"\n")).unwrap();
        assert_eq!(cfg.persistence.commit_interval, Duration::from_millis(5));
        assert_eq!(cfg.persistence.durability, DurabilityMode::Batched);
        let err = parse(&format!("{base}[persistence]\ncommit_interval = \"2s\"\n")).unwrap_err().to_string();
        assert!(err.contains("commit_interval must be at most 1s"), "{err}");
    }

    fn all_errors(text: &str) -> (bool, Vec<String>) {
        let (cfg, errors) = Config::parse_all_errors(text, Path::new(FILE), &|_| None);
        (cfg.is_some(), errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn all_errors_lists_independent_mistakes_and_not_their_follow_ons() {
        let (ok, errors) = all_errors("[[listener]]\nbind = \"127.0.0.1:0\"\n");
        assert!(ok && errors.is_empty(), "{errors:?}");
        let (ok, errors) = all_errors(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nshape = 1\n[auth]\nallow_anonymous = \"maybe\"\n[limits]\nmax_packet_size = \"x\"\n",
        );
        assert!(ok, "valid once those lines are set aside");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with(&format!("{FILE}:3:")) && errors[0].contains("shape"), "{errors:?}");
        assert!(errors[1].starts_with(&format!("{FILE}:5:")) && errors[1].contains("allow_anonymous"), "{errors:?}");
        assert!(errors[2].starts_with(&format!("{FILE}:7:")) && errors[2].contains("max_packet_size"), "{errors:?}");
        // A required key with a bad value: reported once, not again as "missing".
        let (ok, errors) = all_errors("[[listener]]\nbind = \"nowhere\"\n");
        assert!(!ok && errors.len() == 1 && errors[0].contains(":2:"), "{errors:?}");
        // A syntax error: the one error.
        let (ok, errors) = all_errors("[limits\nmax_packet_size = 1\n");
        assert!(!ok && errors.len() == 1, "{errors:?}");
    }

    /// Parses `text`, expects an `Invalid` error on `line` whose reason contains `needle`;
    /// returns the Display string.
    fn fails_at(text: &str, line: usize, needle: &str) -> String {
        let e = parse(text).expect_err("config should be refused");
        let shown = e.to_string();
        match &e {
            ConfigError::Invalid { path, line: l, reason } => {
                assert_eq!(path, Path::new(FILE), "{shown}");
                assert_eq!(*l, line, "{shown}");
                assert!(reason.contains(needle), "{shown} lacks {needle:?}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert!(shown.starts_with(&format!("{FILE}:{line}: ")), "{shown}");
        shown
    }

    const LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:1883\"\n";

    fn with_limits(body: &str) -> String {
        // Lines 1-2 listener, line 3 [limits], body starts on line 4.
        format!("{LISTENER}[limits]\n{body}\n")
    }

    #[test]
    fn worker_threads_defaults_to_one_per_core_and_is_bounded() {
        assert_eq!(parse(LISTENER).unwrap().worker_threads, None);
        assert_eq!(Config::embedded_default().worker_threads, None);
        let c = parse(&format!("worker_threads = 1\n{LISTENER}")).unwrap();
        assert_eq!(c.worker_threads, NonZeroUsize::new(1));
        assert_eq!(
            parse(&format!("worker_threads = 1024\n{LISTENER}")).unwrap().worker_threads,
            NonZeroUsize::new(1024)
        );
        fails_at(&format!("data_dir = \"d\"\nworker_threads = 0\n{LISTENER}"), 2, "worker_threads");
        fails_at(&format!("worker_threads = 1025\n{LISTENER}"), 1, "worker_threads");
        fails_at(&format!("worker_threads = -2\n{LISTENER}"), 1, "worker_threads");
        fails_at(&format!("worker_threads = \"two\"\n{LISTENER}"), 1, "worker_threads");
    }

    #[test]
    fn spec_example_without_unsupported_tables() {
        let text = r#"data_dir = "./warden-data"

[[listener]]            # repeatable
bind = "127.0.0.1:1883"
protocol = "mqtt"       # mqtt | mqtts | ws | wss

[[listener]]
bind = "127.0.0.1:9001"
protocol = "ws"

[auth]
allow_anonymous = false
password_file = "passwd"          # argon2id; Mosquitto $6$/$7$ lines also accepted

[limits]
max_packet_size = "256KiB"
connect_timeout = "10s"
max_queued_messages = 10000       # per session, offline or slow; then QoS 0 dropped and counted
max_queued_bytes = "16MiB"        # per session, whichever limit comes first
topic_alias_maximum = 10          # advertised in CONNACK (v5)
sys_interval = "10s"              # $SYS topics are retained and refreshed this often
"#;
        let c = Config::parse(text, Path::new("/etc/warden/warden.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/warden/warden-data"));
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].bind, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(c.listeners[0].protocol, ListenerProtocol::Mqtt);
        assert_eq!(c.listeners[1].bind, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.listeners[1].protocol, ListenerProtocol::Ws);
        assert_eq!(c.listeners[1].path, "/mqtt");
        assert!(!c.auth.allow_anonymous);
        assert_eq!(c.auth.password_file, Some(PathBuf::from("/etc/warden/passwd")));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.source, Some(PathBuf::from("/etc/warden/warden.toml")));
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(LISTENER).unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.auth, AuthConfig::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.listeners[0].protocol, ListenerProtocol::Mqtt);
        assert_eq!(c.source, Some(PathBuf::from(FILE)));
    }

    #[test]
    fn defaults_match_the_brief() {
        let l = Limits::default();
        assert_eq!(l.max_packet_size, 262_144);
        assert_eq!(l.connect_timeout, Duration::from_secs(10));
        assert_eq!(l.max_queued_messages, 10_000);
        assert_eq!(l.max_queued_bytes, 16 * 1024 * 1024);
        assert_eq!(l.topic_alias_maximum, 10);
        assert_eq!(l.sys_interval, Duration::from_secs(10));
        assert_eq!(l.max_connections, 100_000);
        assert_eq!(l.receive_maximum, 100);
        assert_eq!(l.max_inflight, 100);
        assert_eq!(l.max_keep_alive, 65_535);
        assert_eq!(l.max_session_expiry, 604_800);
        assert_eq!(l.max_topic_levels, 128);
        assert_eq!(l.max_subscriptions_per_client, 1000);
        // Per-principal quotas (issue 17): safe for a device fleet with one principal each,
        // small enough that one account cannot fill memory or disk.
        assert_eq!(l.max_sessions_per_principal, 1000);
        assert_eq!(l.max_subscriptions_per_principal, 10_000);
        assert_eq!(l.max_subscription_bytes_per_principal, 2 << 20);
        assert_eq!(l.max_retained_messages_per_principal, 10_000);
        assert_eq!(l.max_retained_bytes_per_principal, 32 << 20);
        assert_eq!(l.max_retained_messages, 1_000_000);
        assert_eq!(l.max_retained_bytes, 512 << 20);

        let c = Config::embedded_default();
        assert_eq!(c.data_dir, PathBuf::from("./warden-data"));
        assert_eq!(c.source, None);
        assert_eq!(c.listeners.len(), 4);
        let by = |p| c.listeners.iter().find(|l| l.protocol == p).unwrap();
        assert_eq!(by(ListenerProtocol::Mqtt).bind, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(by(ListenerProtocol::Mqtts).bind, "127.0.0.1:8883".parse().unwrap());
        assert_eq!(by(ListenerProtocol::Ws).bind, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(by(ListenerProtocol::Wss).bind, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(by(ListenerProtocol::Ws).path, "/mqtt");
        assert!(c.listeners.iter().all(|l| l.bind.ip().is_loopback()), "loopback only");
        assert!(by(ListenerProtocol::Mqtt).tls.is_none());
        let h = c.http.clone().unwrap();
        assert_eq!(h.bind, "127.0.0.1:8080".parse().unwrap());
        let ht = h.tls.expect("the embedded default serves HTTPS with the development certificate");
        assert_eq!((ht.cert, ht.client_ca), (PathBuf::from("./warden-data/tls/server.pem"), None));
        let t = by(ListenerProtocol::Mqtts).tls.clone().unwrap();
        assert_eq!(t.client_cert, ClientCertMode::Optional);
        assert_eq!(t.client_ca, Some(PathBuf::from("./warden-data/tls/ca.pem")));
        assert!(!c.auth.allow_anonymous);
        assert_eq!(c.auth.password_file, Some(PathBuf::from("./warden-data/passwd")));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn all_limits_parse() {
        let text = with_limits(
            "max_packet_size = 1024\nconnect_timeout = 3\nmax_queued_messages = 5\n\
             max_queued_bytes = \"1MB\"\ntopic_alias_maximum = 0\nsys_interval = \"1m\"\n\
             max_connections = 7\nreceive_maximum = 65535\nmax_inflight = 1\n\
             max_keep_alive = 60\nmax_session_expiry = 4294967295\nmax_topic_levels = 8\n\
             max_subscriptions_per_client = 9",
        );
        let l = parse(&text).unwrap().limits;
        assert_eq!(
            l,
            Limits {
                max_packet_size: 1024,
                connect_timeout: Duration::from_secs(3),
                max_queued_messages: 5,
                max_queued_bytes: 1_000_000,
                topic_alias_maximum: 0,
                sys_interval: Duration::from_secs(60),
                max_connections: 7,
                receive_maximum: 65535,
                max_inflight: 1,
                max_keep_alive: 60,
                max_session_expiry: u32::MAX,
                max_topic_levels: 8,
                max_subscriptions_per_client: 9,
                ..Limits::default()
            }
        );
        // Inline-table form works too.
        let c = parse(&format!("limits = {{ connect_timeout = \"500ms\" }}\n{LISTENER}")).unwrap();
        assert_eq!(c.limits.connect_timeout, Duration::from_millis(500));
    }

    #[test]
    fn unknown_top_level_key() {
        let shown = fails_at(
            &format!("data_dir = \"d\"\ncolour_of_sky = \"blue\"\n{LISTENER}"),
            2,
            "unknown field `colour_of_sky`",
        );
        assert!(shown.contains("warden.toml"), "{shown}");
        assert!(shown.contains(":2:"), "{shown}");
        assert!(shown.contains("expected one of"), "{shown}");
    }

    #[test]
    fn unknown_keys_in_tables() {
        fails_at(&with_limits("max_packet_size = 100\nfrobs = 1"), 5, "`frobs`");
        fails_at(
            &with_limits("auth_fail_ban = { failures = 20, within = \"60s\", forever = true }"),
            4,
            "unknown field `forever`",
        );
        fails_at(&with_limits("auth_fail_ban = { failures = 0 }"), 4, "failures");
        let c = parse(&with_limits("auth_fail_ban = { failures = 5, within = \"10s\", ban = \"1m\" }\nmax_connections_per_ip = 3\nconnect_rate_per_ip = 7")).unwrap();
        assert_eq!(
            c.limits.auth_fail_ban,
            AuthFailBan { failures: 5, within: Duration::from_secs(10), ban: Duration::from_secs(60) }
        );
        assert_eq!((c.limits.max_connections_per_ip, c.limits.connect_rate_per_ip), (3, 7));
        fails_at(
            &format!("{LISTENER}protocol = \"mqtt\"\ncert = \"server.pem\"\n"),
            4,
            "`cert` applies only to mqtts and wss listeners, not mqtt",
        );
        fails_at(&format!("{LISTENER}protocol = \"mqtt\"\nsni = \"x\"\n"), 4, "unknown field `sni`");
        fails_at(&format!("{LISTENER}\n[auth]\nallow_anonymous = true\nldap = 1\n"), 6, "unknown field `ldap`");
        fails_at(
            &format!("{LISTENER}[http]\nbind = \"127.0.0.1:8080\"\nenabled = true\n"),
            5,
            "unknown field `enabled`",
        );
        fails_at(&format!("{LISTENER}[authz]\nacl = \"x\"\n"), 4, "unknown field `acl`");
        fails_at(&format!("{LISTENER}[oauth]\nttl = \"1m\"\n"), 4, "unknown field `ttl`");
        fails_at(&format!("{LISTENER}[auth.jwt]\nissuer = \"x\"\nsecret = \"y\"\n"), 5, "unknown field `secret`");
    }

    #[test]
    fn http_limits() {
        let c = parse(&format!("{LISTENER}[http]\nbind = \"127.0.0.1:8080\"\n")).unwrap();
        assert_eq!(c.http.unwrap().limits, HttpLimits::default());
        let d = HttpLimits::default();
        assert_eq!(
            (d.max_connections, d.max_connections_per_ip, d.header_timeout, d.request_timeout, d.max_body_size),
            (1024, 64, Duration::from_secs(10), Duration::from_secs(30), 64 * 1024)
        );
        let c = parse(&format!(
            "{LISTENER}[http]\nbind = \"127.0.0.1:8080\"\nmax_connections = 10\nmax_connections_per_ip = 2\n\
             header_timeout = \"1s\"\nrequest_timeout = 5\nmax_body_size = \"1MiB\"\n"
        ))
        .unwrap();
        let l = c.http.unwrap().limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip, l.header_timeout, l.request_timeout, l.max_body_size),
            (10, 2, Duration::from_secs(1), Duration::from_secs(5), 1 << 20)
        );
        let at = |body: &str, line, what| {
            fails_at(&format!("{LISTENER}[http]\nbind = \"127.0.0.1:8080\"\n{body}"), line, what)
        };
        at("max_connections = 0\n", 5, "max_connections");
        at("\nmax_connections_per_ip = -1\n", 6, "max_connections_per_ip");
        at("header_timeout = \"0s\"\n", 5, "header_timeout must be greater than 0");
        at("request_timeout = \"soon\"\n", 5, "request_timeout");
        at("max_body_size = \"12 parsecs\"\n", 5, "max_body_size");
    }

    /// Issue 17 (observation 6): client secrets and admin tokens crossed the network in clear
    /// when `[http]` bound a non-loopback address. Plain HTTP there is refused at load (file,
    /// line of `bind`, why and what to do) unless `allow_plain_http = true`; TLS or loopback
    /// are fine.
    #[test]
    fn plain_http_on_a_non_loopback_address_is_refused() {
        for bind in ["0.0.0.0:8080", "192.0.2.1:8080", "[::]:8080", "[2001:db8::1]:8080", "10.0.0.1:0"] {
            let shown = fails_at(
                &format!(
                    "{LISTENER}[http]\nadmin_token_hash = '{}'\nbind = \"{bind}\"\n",
                    warden_policy::password::hash_password(b"s")
                ),
                5,
                "is not a loopback address and the HTTP listener has no TLS",
            );
            assert!(shown.contains("allow_plain_http = true") && shown.contains("cert"), "{shown}");
        }
        for bind in ["127.0.0.1:8080", "127.0.0.9:0", "[::1]:8080", "[::ffff:127.0.0.1]:8080"] {
            let c = parse(&format!("{LISTENER}[http]\nbind = \"{bind}\"\n")).unwrap();
            let h = c.http.unwrap();
            assert!(h.tls.is_none() && !h.allow_plain_http && h.scheme() == "http", "{bind}");
        }
        let c = parse(&format!("{LISTENER}[http]\nbind = \"0.0.0.0:8080\"\nallow_plain_http = true\n")).unwrap();
        assert!(c.http.unwrap().allow_plain_http);
        let c =
            parse(&format!("{LISTENER}[http]\nbind = \"0.0.0.0:8443\"\ncert = \"s.pem\"\nkey = \"s.key\"\n")).unwrap();
        let h = c.http.unwrap();
        assert_eq!(h.scheme(), "https");
        let tls = h.tls.unwrap();
        assert_eq!(
            (tls.cert, tls.key, tls.client_ca),
            (PathBuf::from("conf/s.pem"), PathBuf::from("conf/s.key"), None)
        );
        assert!(!Config::embedded_default().http.unwrap().bind.ip().is_unspecified());
    }

    /// `[http]` TLS keys: as for mqtts/wss listeners (`cert`, `key`, optional `client_ca` with
    /// `client_cert`, `crl`, `crl_scope`); errors name the file, the line and the key.
    #[test]
    fn http_tls_keys() {
        let http = |body: &str| format!("{LISTENER}[http]\nbind = \"127.0.0.1:8443\"\n{body}");
        let c = parse(&http("cert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\ncrl = \"ca.crl\"\n")).unwrap();
        let tls = c.http.unwrap().tls.unwrap();
        assert_eq!(tls.client_ca, Some(PathBuf::from("conf/ca.pem")));
        assert_eq!(tls.client_cert, ClientCertMode::Required, "client_ca alone: a certificate is required");
        assert_eq!(tls.crls, vec![PathBuf::from("conf/ca.crl")]);
        let c = parse(&http("cert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\nclient_cert = \"optional\"\n"))
            .unwrap();
        assert_eq!(c.http.unwrap().tls.unwrap().client_cert, ClientCertMode::Optional);
        fails_at(&http("cert = \"s.pem\"\n"), 3, "the [http] listener needs `key`");
        fails_at(&http("key = \"s.key\"\n"), 3, "the [http] listener needs `cert`");
        fails_at(
            &http("cert = \"s.pem\"\nkey = \"s.key\"\nclient_cert = \"optional\"\n"),
            7,
            "`client_cert` needs `client_ca`",
        );
        fails_at(&http("cert = \"\"\nkey = \"s.key\"\n"), 5, "`cert` is empty");
        fails_at(
            &http("cert = \"s.pem\"\nkey = \"s.key\"\nidentity_from_cert = \"cn\"\n"),
            7,
            "unknown field `identity_from_cert`",
        );
        // Listeners keep their own messages.
        fails_at("[[listener]]\nbind = \"127.0.0.1:1\"\nprotocol = \"mqtts\"\n", 3, "a mqtts listener needs `cert`");
        fails_at(
            "[[listener]]\nbind = \"127.0.0.1:1\"\ncert = \"c\"\n",
            3,
            "`cert` applies only to mqtts and wss listeners",
        );
    }

    #[test]
    fn tokens_oauth_and_authz_tables() {
        let text = format!(
            "{LISTENER}[http]\nbind = \"127.0.0.1:8080\"\n[auth.jwt]\nissuer = \"i\"\naudience = \"warden\"\nhs256_secret = \"0123456789abcdef0123\"\nleeway = \"5s\"\nsubject_must_match = \"client_id\"\n[authz]\nacl_file = \"acl\"\non_deny = \"drop\"\n[oauth]\nissuer = \"https://broker.example\"\ntoken_ttl = \"5m\"\n[[oauth.client]]\nid = \"dev-001\"\nsecret_hash = '{}'\nscopes = [\"mqtt:pub:d/#\"]\n",
            warden_policy::password::hash_password(b"s")
        );
        let c = parse(&text).unwrap();
        let j = c.auth.jwt.clone().unwrap();
        assert_eq!(j.leeway, Duration::from_secs(5));
        assert_eq!(j.subject_must_match, SubjectMatch::ClientId);
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "secrets are redacted in Debug");
        assert_eq!(c.authz.acl_file, Some(PathBuf::from("conf/acl")));
        assert_eq!(c.authz.on_deny, OnDeny::Drop);
        assert!(c.authz.check_retain_source, "on unless turned off");
        assert!(parse(LISTENER).unwrap().authz.check_retain_source, "on without an [authz] table");
        let off = parse(&format!("{LISTENER}[authz]\ncheck_retain_source = false\n")).unwrap();
        assert!(!off.authz.check_retain_source);
        assert!(!crate::server::broker_config(&off).check_retain_source, "wired to the core");
        assert_eq!(c.oauth.token_ttl, Duration::from_secs(300));
        assert_eq!(c.oauth.clients[0].scopes, vec!["mqtt:pub:d/#".to_string()]);
        assert_eq!(c.http.unwrap().bind, "127.0.0.1:8080".parse().unwrap());
        fails_at(&format!("{LISTENER}[auth.jwt]\nissuer = \"x\"\n"), 3, "needs a key source");
        fails_at(
            &format!("{LISTENER}[auth.jwt]\naudience = \"w\"\nhs256_secret = \"short\"\n"),
            3,
            "at least 16 bytes",
        );
        fails_at(&format!("{LISTENER}[oauth]\ntoken_ttl = \"2d\"\n"), 4, "unknown unit");
        fails_at(&format!("{LISTENER}[oauth]\ntoken_ttl = \"48h\"\n"), 4, "at most 1 day");
        fails_at(
            &format!("{LISTENER}[http]\nbind = \"127.0.0.1:1\"\n[oauth]\n[[oauth.client]]\nid = \"a\"\nsecret_hash = \"plain\"\n"),
            5,
            "secret_hash is not a hash",
        );
    }

    /// Issue 17 item 7: `[auth.jwt]` needs an audience; typ, lifetime and scope mapping
    /// options with their defaults and refusals (file, line, reason).
    #[test]
    fn jwt_audience_typ_lifetime_and_scope_mapping() {
        let jwt = |body: &str| {
            format!("{LISTENER}[auth.jwt]\nissuer = \"i\"\nhs256_secret = \"0123456789abcdef0123\"\n{body}")
        };
        // No audience: refused at start, naming the table's line and the reason.
        let shown = fails_at(&jwt(""), 3, "needs `audience`");
        assert!(shown.contains("any other service"), "{shown}");
        fails_at(&jwt("audience = \"\"\n"), 3, "needs `audience`");

        // Defaults.
        let c = parse(&jwt("audience = \"warden\"\n")).unwrap();
        let j = c.auth.jwt.unwrap();
        assert_eq!(j.typ, ["at+jwt", "JWT"]);
        assert_eq!(j.max_token_lifetime, Duration::from_secs(86_400));
        assert_eq!(j.publish_scope_prefixes, ["mqtt:pub:"]);
        assert_eq!(j.subscribe_scope_prefixes, ["mqtt:sub:"]);
        assert!(j.scope_roles.is_empty());
        assert_eq!(j.scope_map(), warden_policy::authz::ScopeMap::default());

        // Every option set.
        let c = parse(&jwt(
            "audience = \"warden\"\ntyp = [\"at+jwt\"]\nmax_token_lifetime = \"1h\"\n\
             publish_scope_prefixes = [\"mqtt:publish:\"]\nsubscribe_scope_prefixes = [\"mqtt:subscribe:\", \"mqtt:rw:\"]\n\
             [auth.jwt.scope_roles]\n\"fleet.ops\" = \"operator\"\n\"fleet.view\" = [\"viewer\", \"auditor\"]\n",
        ))
        .unwrap();
        let j = c.auth.jwt.unwrap();
        assert_eq!(j.typ, ["at+jwt"]);
        assert_eq!(j.max_token_lifetime, Duration::from_secs(3600));
        assert_eq!(j.publish_scope_prefixes, ["mqtt:publish:"]);
        assert_eq!(j.subscribe_scope_prefixes, ["mqtt:subscribe:", "mqtt:rw:"]);
        assert_eq!(j.scope_roles["fleet.ops"], ["operator"]);
        assert_eq!(j.scope_roles["fleet.view"], ["viewer", "auditor"]);
        // Empty prefix lists are allowed (no subscribe scopes at all).
        assert!(parse(&jwt("audience = \"w\"\nsubscribe_scope_prefixes = []\n")).is_ok());

        // Refusals, at the value's line.
        let a = "audience = \"w\"\n";
        fails_at(&jwt(&format!("{a}typ = []\n")), 7, "at least one");
        fails_at(&jwt(&format!("{a}typ = [\"at jwt\"]\n")), 7, "not a token type");
        fails_at(&jwt(&format!("{a}max_token_lifetime = \"0s\"\n")), 7, "max_token_lifetime");
        fails_at(&jwt(&format!("{a}max_token_lifetime = \"8785h\"\n")), 7, "at most 366 days");
        fails_at(&jwt(&format!("{a}publish_scope_prefixes = [\"\"]\n")), 7, "empty scope prefix");
        fails_at(&jwt(&format!("{a}subscribe_scope_prefixes = [\"a b\"]\n")), 7, "characters a scope cannot have");
        fails_at(&jwt(&format!("{a}scope_roles = {{ \"x\" = \"a:b\" }}\n")), 7, "scope_roles");
        fails_at(&jwt(&format!("{a}scope_roles = {{ \"x y\" = \"r\" }}\n")), 7, "is not a scope");
        fails_at(&jwt(&format!("{a}typo = 1\n")), 7, "unknown field `typo`");
    }

    #[test]
    fn bad_listener_values() {
        let l = "[[listener]]\n";
        fails_at(&format!("{l}bind = \"nope\"\n"), 2, "invalid bind address \"nope\"");
        fails_at(
            &format!("# comment\n{l}bind = \"127.0.0.1:1\"\nprotocol = \"carrier-pigeon\"\n"),
            4,
            "unknown protocol \"carrier-pigeon\"",
        );
        fails_at(
            &format!("{LISTENER}{l}bind = \"127.0.0.1:8883\"\nprotocol = \"mqtts\"\n"),
            5,
            "a mqtts listener needs `cert`",
        );
        fails_at(
            &format!("{l}bind = \"127.0.0.1:8884\"\nprotocol = \"wss\"\ncert = \"s.pem\"\n"),
            3,
            "a wss listener needs `key`",
        );
        let tls = "bind = \"127.0.0.1:8883\"\nprotocol = \"mqtts\"\ncert = \"s.pem\"\nkey = \"s.key\"\n";
        fails_at(&format!("{l}{tls}client_cert = \"optional\"\n"), 6, "`client_cert` needs `client_ca`");
        fails_at(&format!("{l}{tls}crl = \"ca.crl\"\n"), 6, "`crl` needs `client_ca`");
        fails_at(
            &format!("{l}{tls}client_ca = \"ca.pem\"\nidentity_from_cert = \"email\"\n"),
            7,
            "identity_from_cert \"email\"",
        );
        fails_at(&format!("{l}{tls}client_ca = \"ca.pem\"\nclient_cert = \"maybe\"\n"), 7, "unknown variant `maybe`");
        let c = parse(&format!("{l}{tls}client_ca = \"ca.pem\"\ncrl = [\"a.crl\", \"/abs/b.crl\"]\nidentity_from_cert = \"san-uri\"\n[identity]\nclient_id_must_match = \"prefix\"\n")).unwrap();
        let t = c.listeners[0].tls.clone().unwrap();
        assert_eq!(t.client_cert, ClientCertMode::Required, "required is the default with client_ca");
        assert_eq!(t.crls, vec![PathBuf::from("conf/a.crl"), PathBuf::from("/abs/b.crl")]);
        assert_eq!(t.cert, PathBuf::from("conf/s.pem"));
        assert_eq!(t.identity_from_cert, warden_policy::cert::IdentitySource::SanUri);
        assert_eq!(c.identity.client_id_must_match, ClientIdMatch::Prefix);
        fails_at(
            "[identity]\nclient_id_must_match = \"sometimes\"\n[[listener]]\nbind = \"127.0.0.1:1\"\n",
            2,
            "unknown variant",
        );
        fails_at(&format!("\n{l}protocol = \"ws\"\n"), 2, "missing field `bind`");
        fails_at(&format!("{l}bind = \"127.0.0.1:1\"\nprotocol = \"ws\"\npath = \"mqtt\"\n"), 4, "must start with '/'");
        fails_at(&format!("{l}bind = \"127.0.0.1:1\"\npath = \"/mqtt\"\n"), 3, "only to ws and wss listeners");
        fails_at(
            &format!("{l}bind = \"127.0.0.1:1\"\nallowed_origins = [\"https://a\"]\n"),
            3,
            "`allowed_origins` applies only to ws and wss",
        );
        fails_at(
            &format!("{l}bind = \"127.0.0.1:1\"\nprotocol = \"ws\"\nallowed_origins = [\"console.example\"]\n"),
            4,
            "is not an origin",
        );
        fails_at("[listener]\nbind = \"127.0.0.1:1\"\n", 1, "write [[listener]]");
        let b = "bind = \"127.0.0.1:1\"\n";
        fails_at(&format!("{l}{b}proxy_protocol = true\n"), 3, "needs `proxy_trusted`");
        fails_at(&format!("{l}{b}proxy_protocol = true\nproxy_trusted = []\n"), 4, "`proxy_trusted` is empty");
        fails_at(&format!("{l}{b}proxy_trusted = [\"10.0.0.0/8\"]\n"), 3, "only with `proxy_protocol = true`");
        fails_at(
            &format!("{l}{b}proxy_protocol = true\nproxy_trusted = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n"),
            6,
            "prefix length",
        );
        fails_at(&format!("{l}{b}proxy_protocol = true\nproxy_trusted = [\"lb.example\"]\n"), 4, "is not a network");
        let c = parse(&format!("{l}{b}proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\", \"::1\"]\n")).unwrap();
        assert!(c.listeners[0].proxy_protocol);
        assert_eq!(c.listeners[0].proxy_trusted.len(), 2);
        assert!(c.listeners[0].proxy_trusted[0].contains("10.9.9.9".parse().unwrap()));
        let c = parse(&format!("{l}bind = \"[::1]:9001\"\nprotocol = \"ws\"\npath = \"/ws\"\n")).unwrap();
        assert_eq!(c.listeners[0].bind, "[::1]:9001".parse().unwrap());
        assert_eq!(c.listeners[0].path, "/ws");
    }

    /// Issue 22: `auth` and `allow_anonymous` per listener, validated at load.
    #[test]
    fn per_listener_authentication() {
        let mtls = "[[listener]]\nbind = \"127.0.0.1:8883\"\nprotocol = \"mqtts\"\ncert = \"s.pem\"\nkey = \"s.key\"\n\
                    client_ca = \"ca.pem\"\n";
        let tail = "[auth]\npassword_file = \"passwd\"\n";
        // Lines 1-6: the mTLS listener; 7: its auth.
        let c = parse(&format!("{mtls}auth = [\"certificate\"]\n{LISTENER}auth = [\"password\", \"scram\"]\nallow_anonymous = true\n{tail}"))
            .unwrap();
        let (a, b) = (&c.listeners[0], &c.listeners[1]);
        assert_eq!(a.auth, Some(Methods::NONE.with(Method::Certificate)));
        assert_eq!((a.allow_anonymous, a.anonymous(&c.auth)), (None, false));
        assert!(b.auth.is_some_and(|m| m.contains(Method::Password) && m.contains(Method::Scram)));
        assert!(!b.auth.is_some_and(|m| m.contains(Method::Certificate)));
        assert_eq!(b.auth_rules(), ListenerAuth { methods: b.auth, allow_anonymous: Some(true) });
        assert!(b.anonymous(&c.auth));
        // No `auth`: the default chain.
        let c = parse(&format!("{LISTENER}{tail}")).unwrap();
        assert_eq!(c.listeners[0].auth_rules(), ListenerAuth::default());
        // Refusals, each at the line of the offending value.
        fails_at(
            &format!("{LISTENER}auth = [\"password\", \"kerberos\"]\n{tail}"),
            3,
            "unknown authentication method \"kerberos\"",
        );
        fails_at(
            &format!("{LISTENER}auth = [\n  \"password\",\n  \"Password\",\n]\n{tail}"),
            5,
            "unknown authentication method",
        );
        fails_at(&format!("{LISTENER}auth = [\"anonymous\"]\n{tail}"), 3, "allow_anonymous = true");
        fails_at(&format!("{LISTENER}auth = [\"password\", \"password\"]\n{tail}"), 3, "listed twice");
        fails_at(
            &format!("{LISTENER}auth = [\"certificate\"]\n{tail}"),
            3,
            "needs TLS client-certificate verification",
        );
        let no_ca =
            "[[listener]]\nbind = \"127.0.0.1:8883\"\nprotocol = \"mqtts\"\ncert = \"s.pem\"\nkey = \"s.key\"\n";
        fails_at(&format!("{no_ca}auth = [\"certificate\"]\n{tail}"), 6, "needs TLS client-certificate verification");
        fails_at(&format!("{LISTENER}auth = [\"scram\"]\n"), 3, "needs [auth] password_file");
        fails_at(&format!("{LISTENER}auth = [\"token\"]\n{tail}"), 3, "needs [auth.jwt]");
        fails_at(&format!("{LISTENER}auth = [\"lookup\"]\n{tail}"), 3, "needs [auth.http]");
        fails_at(&format!("{LISTENER}auth = []\n{tail}"), 3, "no client could connect");
        fails_at(&format!("{LISTENER}auth = \"password\"\n{tail}"), 3, "invalid type");
        // An anonymous-only listener.
        let c = parse(&format!("{LISTENER}auth = []\nallow_anonymous = true\n{tail}")).unwrap();
        assert_eq!(c.listeners[0].auth, Some(Methods::NONE));
    }

    #[test]
    fn bad_limit_values() {
        fails_at(&with_limits("max_packet_size = \"12 parsecs\""), 4, "unknown unit \"parsecs\"");
        fails_at(&with_limits("\nconnect_timeout = \"0s\""), 5, "connect_timeout must be greater than 0");
        fails_at(&with_limits("connect_timeout = 0"), 4, "greater than 0");
        fails_at(&with_limits("connect_timeout = -1"), 4, "negative");
        fails_at(&with_limits("max_packet_size = 63"), 4, "between 64 and");
        fails_at(&with_limits("max_packet_size = \"256MiB\""), 4, "268435455");
        fails_at(&with_limits("max_packet_size = 1.5"), 4, "invalid type");
        fails_at(&with_limits("sys_interval = \"999ms\""), 4, "at least 1s");
        fails_at(&with_limits("receive_maximum = 0"), 4, "between 1 and 65535");
        fails_at(&with_limits("max_inflight = 65536"), 4, "between 1 and 65535");
        fails_at(&with_limits("max_keep_alive = 0"), 4, "max_keep_alive");
        fails_at(&with_limits("topic_alias_maximum = -1"), 4, "topic_alias_maximum");
        fails_at(&with_limits("max_queued_messages = 0"), 4, "max_queued_messages");
        fails_at(&with_limits("max_queued_bytes = \"0B\""), 4, "max_queued_bytes");
        fails_at(&with_limits("max_session_expiry = 4294967296"), 4, "max_session_expiry");
        fails_at(&with_limits("max_connections = \"many\""), 4, "invalid type");
        fails_at(&with_limits("max_topic_levels = 0"), 4, "max_topic_levels");
        fails_at(&with_limits("max_subscriptions_per_client = 0"), 4, "max_subscriptions_per_client");
    }

    #[test]
    fn other_bad_values() {
        fails_at("\n\ndata_dir = 5\n", 3, "invalid type");
        fails_at(&format!("data_dir = \"\"\n{LISTENER}"), 1, "data_dir must not be empty");
        fails_at(&format!("{LISTENER}[auth]\npassword_file = \"\"\n"), 4, "password_file must not be empty");
        fails_at(&format!("{LISTENER}[auth]\nallow_anonymous = \"yes\"\n"), 4, "invalid type");
        // TOML syntax errors keep their line, on one line.
        let shown = fails_at("\n[[listener]\nbind = \"127.0.0.1:1\"\n", 2, "invalid table header");
        assert!(!shown.contains('\n'), "{shown}");
    }

    #[test]
    fn relative_paths_resolve_against_config_dir() {
        let text = format!("data_dir = \"./data\"\n{LISTENER}[auth]\npassword_file = \"secrets/passwd\"\n");
        let c = Config::parse(&text, Path::new("/etc/warden/warden.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/warden/data"));
        assert_eq!(c.auth.password_file, Some(PathBuf::from("/etc/warden/secrets/passwd")));

        let c = Config::parse(&text, Path::new("rel/dir/w.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("rel/dir/data"));
        assert_eq!(c.auth.password_file, Some(PathBuf::from("rel/dir/secrets/passwd")));

        // A bare file name: relative to the working directory.
        let c = Config::parse(&text, Path::new("w.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.auth.password_file, Some(PathBuf::from("secrets/passwd")));

        // Absolute paths are kept.
        let text = format!("data_dir = \"/var/lib/warden\"\n{LISTENER}[auth]\npassword_file = \"/etc/pw\"\n");
        let c = Config::parse(&text, Path::new("/etc/warden/warden.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/warden"));
        assert_eq!(c.auth.password_file, Some(PathBuf::from("/etc/pw")));
    }

    #[test]
    fn duplicate_binds_refused() {
        let text = format!("{LISTENER}\n[[listener]]\nbind = \"127.0.0.1:1883\"\nprotocol = \"ws\"\n");
        let shown = fails_at(&text, 5, "duplicate bind address 127.0.0.1:1883");
        assert!(shown.contains("line 2"), "{shown}");
        // Port 0 (any free port) may repeat.
        let text = "[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"ws\"\n";
        assert_eq!(parse(text).unwrap().listeners.len(), 2);
    }

    #[test]
    fn listeners_required() {
        fails_at("", 1, "at least one [[listener]]");
        fails_at("data_dir = \"x\"\n[auth]\nallow_anonymous = true\n", 1, "at least one [[listener]]");
        fails_at("\nlistener = []\n", 2, "at least one [[listener]]");
    }

    #[test]
    fn load_reads_file_and_reports_io_errors() {
        let dir = std::env::temp_dir().join(format!("warden-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("warden.toml");
        std::fs::write(&file, format!("{LISTENER}[auth]\npassword_file = \"pw\"\n")).unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(c.source.as_deref(), Some(file.as_path()));
        assert_eq!(c.auth.password_file, Some(dir.join("pw")));

        std::fs::write(&file, "[[listener]]\nbind = \"nope\"\n").unwrap();
        let e = Config::load(&file).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:2: invalid bind address \"nope\": expected IP:PORT such as \"127.0.0.1:1883\" or \"[::1]:1883\"",
                file.display()
            )
        );

        let missing = dir.join("missing.toml");
        let e = Config::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(e.to_string().starts_with(&format!("{}: ", missing.display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256KiB"), Ok(262_144));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1kB"), Ok(1000));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size(" 16 MiB "), Ok(16 << 20));
        for bad in ["", "KiB", "12 parsecs", "1.5MiB", "-1", "1 kib", "99999999999999999999", "18446744073709551615KiB"]
        {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("12 parsecs").unwrap_err().contains("parsecs"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2 s "), Ok(Duration::from_secs(2)));
        for bad in ["", "s", "10", "10x", "1.5s", "-1s", "10 sec", "18446744073709551615h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn abuse_limits_parse_and_errors_name_the_line() {
        let l = Limits::default();
        assert_eq!((l.max_publish_rate, l.max_publish_bandwidth), (1000, 10 * 1024 * 1024));
        assert_eq!(l.publish_throttle, Duration::from_secs(10));
        assert_eq!(l.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.max_memory, 2 << 30);
        assert_eq!(l.write_stall_timeout, Duration::from_secs(60));
        assert_eq!(l.auth_fail_backoff, AuthFailBackoff::default());
        let c = parse(&with_limits(
            "max_publish_rate = 0\nmax_publish_bandwidth = \"1MiB\"\npublish_throttle = 0\n\
             tls_handshake_timeout = \"250ms\"\nmax_memory = \"64MiB\"\nwrite_stall_timeout = \"5s\"\n\
             auth_fail_backoff = { failures = 2, initial = \"100ms\", max = \"1m\" }",
        ))
        .unwrap();
        let l = c.limits;
        assert_eq!((l.max_publish_rate, l.max_publish_bandwidth), (0, 1 << 20));
        assert_eq!(l.publish_throttle, Duration::ZERO);
        assert_eq!(l.tls_handshake_timeout, Duration::from_millis(250));
        assert_eq!(l.max_memory, 64 << 20);
        assert_eq!(l.write_stall_timeout, Duration::from_secs(5));
        assert_eq!(
            l.auth_fail_backoff,
            AuthFailBackoff { failures: 2, initial: Duration::from_millis(100), max: Duration::from_secs(60) }
        );
        fails_at(&with_limits("max_publish_rate = -1"), 4, "max_publish_rate");
        fails_at(&with_limits("max_connections = 5\nmax_publish_bandwidth = \"9 parsecs\""), 5, "unknown unit");
        fails_at(&with_limits("tls_handshake_timeout = 0"), 4, "greater than 0");
        fails_at(&with_limits("max_memory = \"lots\""), 4, "max_memory");
        fails_at(&with_limits("max_memory = 0\nauth_hash_concurrency = 1025"), 5, "auth_hash_concurrency");
        fails_at(&with_limits("auth_hash_wait = -1"), 4, "auth_hash_wait");
        fails_at(&with_limits("auth_hash_wait = \"soon\""), 4, "auth_hash_wait");
        let l = parse(&with_limits("auth_hash_concurrency = 3\nauth_hash_wait = \"250ms\"")).unwrap().limits;
        assert_eq!((l.auth_hash_concurrency, l.auth_hash_wait), (3, Duration::from_millis(250)));
        let l = parse(&with_limits("auth_hash_wait = 0")).unwrap().limits;
        assert_eq!((l.auth_hash_concurrency, l.auth_hash_wait), (0, Duration::ZERO));
        assert_eq!(l.auth_hash_http_max, 0, "default: half of the budget");
        let l = parse(&with_limits("auth_hash_concurrency = 4\nauth_hash_http_max = 1")).unwrap().limits;
        assert_eq!((l.auth_hash_concurrency, l.auth_hash_http_max), (4, 1));
        fails_at(&with_limits("auth_hash_http_max = 1025"), 4, "auth_hash_http_max");
        fails_at(&with_limits("auth_hash_http_max = -1"), 4, "auth_hash_http_max");
        fails_at(&with_limits("auth_fail_backoff = { failures = 0 }"), 4, "failures");
        assert_eq!(Limits::default().idle_park_max, Duration::from_secs(15));
        let l = parse(&with_limits("idle_park_max = \"40s\"")).unwrap().limits;
        assert_eq!(l.idle_park_max, Duration::from_secs(40));
        fails_at(&with_limits("idle_park_max = \"11m\""), 4, "at most 10m");
        fails_at(&with_limits("idle_park_max = -1"), 4, "idle_park_max");
        // max_queued_bytes_per_principal: a quarter of max_memory, 64 MiB without it, or as set.
        assert_eq!(Limits::default().queued_bytes_per_principal(), 512 << 20);
        let l = parse(&with_limits("max_memory = 0")).unwrap().limits;
        assert_eq!(l.queued_bytes_per_principal(), 64 << 20);
        let l =
            parse(&with_limits("max_memory = \"16MiB\"\nmax_queued_bytes_per_principal = \"3MiB\"")).unwrap().limits;
        assert_eq!((l.max_queued_bytes_per_principal, l.queued_bytes_per_principal()), (Some(3 << 20), 3 << 20));
        fails_at(
            &with_limits("max_memory = 0\nmax_queued_bytes_per_principal = \"0B\""),
            5,
            "max_queued_bytes_per_principal",
        );
        fails_at(&with_limits("max_queued_bytes_per_principal = \"much\""), 4, "max_queued_bytes_per_principal");
        fails_at(&with_limits("auth_fail_backoff = { forever = true }"), 4, "unknown field `forever`");
    }

    /// Issue 17: every per-principal quota and the retained cap parse (counts as integers,
    /// bytes as sizes), and a bad value is refused at start with its line and why.
    #[test]
    fn quotas_parse_and_bad_values_are_refused_with_their_line() {
        let l = parse(&with_limits(
            "max_sessions_per_principal = 5
max_subscriptions_per_principal = 50
             max_subscription_bytes_per_principal = \"64KiB\"
max_retained_messages_per_principal = 7
             max_retained_bytes_per_principal = \"1MiB\"
max_retained_messages = 100
max_retained_bytes = 4096",
        ))
        .unwrap()
        .limits;
        assert_eq!(
            (l.max_sessions_per_principal, l.max_subscriptions_per_principal, l.max_subscription_bytes_per_principal),
            (5, 50, 64 << 10)
        );
        assert_eq!((l.max_retained_messages_per_principal, l.max_retained_bytes_per_principal), (7, 1 << 20));
        assert_eq!((l.max_retained_messages, l.max_retained_bytes), (100, 4096));
        for (bad, why) in [
            ("max_sessions_per_principal = 0", "between 1 and"),
            ("max_sessions_per_principal = -1", "not -1"),
            ("max_sessions_per_principal = \"many\"", "max_sessions_per_principal"),
            ("max_subscriptions_per_principal = 0", "max_subscriptions_per_principal must be between 1"),
            ("max_subscription_bytes_per_principal = \"0B\"", "max_subscription_bytes_per_principal"),
            ("max_subscription_bytes_per_principal = \"2 lots\"", "max_subscription_bytes_per_principal"),
            ("max_retained_messages_per_principal = 0", "max_retained_messages_per_principal"),
            ("max_retained_bytes_per_principal = 0", "max_retained_bytes_per_principal"),
            ("max_retained_messages = 0", "max_retained_messages must be between 1"),
            ("max_retained_bytes = \"-5MiB\"", "max_retained_bytes"),
        ] {
            fails_at(&with_limits(&format!("max_packet_size = 1024\n{bad}")), 5, why);
        }
    }

    // ----------------------------------------------------------------- secrets by reference

    /// An environment with exactly these variables.
    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// Writes `content` to `name` in `dir` with `mode`; returns the path.
    fn secret_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Parses `text` as `dir/warden.toml` with `env`, expecting an `Invalid` error on `line`
    /// containing `needle`; returns the Display string.
    fn refused(dir: &Path, text: &str, env: &[(&str, &str)], line: usize, needle: &str) -> String {
        let e = Config::parse_with_env(text, &dir.join("warden.toml"), &env_of(env)).expect_err("should be refused");
        let shown = e.to_string();
        match &e {
            ConfigError::Invalid { line: l, reason, .. } => {
                assert_eq!(*l, line, "{shown}");
                assert!(reason.contains(needle), "{shown} lacks {needle:?}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        shown
    }

    const JWT_HEAD: &str = "[auth.jwt]\nissuer = \"i\"\naudience = \"warden\"\n";

    #[test]
    fn secrets_inline_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let admin_hash = warden_policy::password::hash_password(b"admin-token");
        let client_hash = warden_policy::password::hash_password(b"client-secret");
        secret_file(d, "hs.secret", "file-hs256-secret-0123456789\n", 0o600);
        secret_file(d, "admin.hash", &format!("{admin_hash}\r\n"), 0o600);
        secret_file(d, "bearer", "file-bearer", 0o600);
        let env = [("HS", "env-hs256-secret-0123456789"), ("CLIENT_HASH", client_hash.as_str()), ("BEARER", "b-env")];

        // Every secret from a file or the environment (relative paths against the file's dir).
        let by_ref = format!(
            "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash_file = \"admin.hash\"\n\
             [auth.jwt]\nissuer = \"i\"\naudience = \"warden\"\nhs256_secret_file = \"hs.secret\"\n\
             [auth.http]\nurl = \"http://127.0.0.1:1/\"\nbearer_token = \"env:BEARER\"\n\
             [oauth]\n[[oauth.client]]\nid = \"dev-1\"\nsecret_hash = \"env:CLIENT_HASH\"\n"
        );
        let c = Config::parse_with_env(&by_ref, &d.join("warden.toml"), &env_of(&env)).unwrap();
        let j = c.auth.jwt.as_ref().unwrap();
        assert_eq!(j.hs256_secret, Some(Secret("file-hs256-secret-0123456789".into())), "trailing newline trimmed");
        assert_eq!(j.hs256_secret_file, Some(d.join("hs.secret")));
        assert_eq!(c.http.as_ref().unwrap().admin_token_hash, Some(Secret(admin_hash.clone())));
        assert_eq!(c.oauth.clients[0].secret_hash, Secret(client_hash.clone()));
        assert_eq!(c.oauth.clients[0].secret_hash_file, None);
        assert_eq!(c.auth.lookup.as_ref().unwrap().bearer_token, Some(Secret("b-env".into())));
        let origins: Vec<(&str, usize, &SecretOrigin)> =
            c.secrets.iter().map(|r| (r.key.as_str(), r.line, &r.origin)).collect();
        assert_eq!(
            origins,
            vec![
                ("[auth.jwt] hs256_secret", 9, &SecretOrigin::File(d.join("hs.secret"))),
                ("[auth.http] bearer_token", 12, &SecretOrigin::Env("BEARER".into())),
                ("[http] admin_token_hash", 5, &SecretOrigin::File(d.join("admin.hash"))),
                ("[[oauth.client]] \"dev-1\" secret_hash", 16, &SecretOrigin::Env("CLIENT_HASH".into())),
            ]
        );
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let shown = format!("{c:?}");
        for secret in ["file-hs256-secret", "b-env", "env-hs256"] {
            assert!(!shown.contains(secret), "{secret} printed by Debug");
        }

        // The same secrets inline, and the other way round (env <-> file).
        let inline = format!(
            "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = '{admin_hash}'\n\
             {JWT_HEAD}hs256_secret = \"env:HS\"\n\
             [auth.http]\nurl = \"http://127.0.0.1:1/\"\nbearer_token_file = \"bearer\"\n\
             [oauth]\n[[oauth.client]]\nid = \"dev-1\"\nsecret_hash = '{client_hash}'\n"
        );
        let c = Config::parse_with_env(&inline, &d.join("warden.toml"), &env_of(&env)).unwrap();
        assert_eq!(c.auth.jwt.as_ref().unwrap().hs256_secret, Some(Secret("env-hs256-secret-0123456789".into())));
        assert_eq!(c.auth.lookup.as_ref().unwrap().bearer_token, Some(Secret("file-bearer".into())));
        assert_eq!(c.auth.lookup.as_ref().unwrap().bearer_token_file, Some(d.join("bearer")));
        let inline_keys: Vec<&str> =
            c.secrets.iter().filter(|r| r.origin == SecretOrigin::Inline).map(|r| r.key.as_str()).collect();
        assert_eq!(inline_keys, ["[http] admin_token_hash", "[[oauth.client]] \"dev-1\" secret_hash"]);
        let w = c.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains(":5: [http] admin_token_hash is written inline") && w[0].contains("admin_token_hash_file")
        );
        assert!(w[1].contains("secret_hash") && w[1].contains("\"dev-1\""), "{w:?}");
        assert!(w.iter().all(|w| !w.contains(&admin_hash) && !w.contains(&client_hash)), "a secret in a warning");
    }

    #[test]
    fn secret_prefixes_other_than_env_are_literal() {
        let dir = tempfile::tempdir().unwrap();
        for literal in ["file:/etc/secret-0123456789", "ENV:HS_SECRET_0123456", "env-HS_0123456789abcdef"] {
            let text = format!("{LISTENER}{JWT_HEAD}hs256_secret = {literal:?}\n");
            let c = Config::parse_with_env(&text, &dir.path().join("w.toml"), &env_of(&[("HS_SECRET_0123456", "x")]))
                .unwrap();
            assert_eq!(c.auth.jwt.unwrap().hs256_secret, Some(Secret(literal.into())));
            assert_eq!(c.secrets[0].origin, SecretOrigin::Inline);
        }
    }

    #[test]
    fn secret_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        secret_file(d, "hs.secret", "file-hs256-secret-0123456789\n", 0o600);
        secret_file(d, "empty.secret", "\n", 0o600);
        let jwt = |line: &str| format!("{LISTENER}{JWT_HEAD}{line}\n");

        // Both forms: the later key's line.
        let text = format!(
            "{LISTENER}{JWT_HEAD}hs256_secret = \"inline-secret-0123456789\"\nhs256_secret_file = \"hs.secret\"\n"
        );
        let e = refused(d, &text, &[], 7, "hs256_secret and hs256_secret_file are both set");
        assert!(!e.contains("inline-secret") && !e.contains("file-hs256"), "{e}");
        let text = format!(
            "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash_file = \"hs.secret\"\nadmin_token_hash = \"env:A\"\n"
        );
        refused(d, &text, &[("A", "x")], 6, "admin_token_hash and admin_token_hash_file are both set");

        // env: a variable that is unset or empty, or no name at all; never the value.
        let e = refused(
            d,
            &jwt("hs256_secret = \"env:WARDEN_TEST_HS\""),
            &[],
            6,
            "environment variable WARDEN_TEST_HS is not set",
        );
        assert!(e.starts_with(&format!("{}:6: [auth.jwt] hs256_secret", d.join("warden.toml").display())), "{e}");
        refused(
            d,
            &jwt("hs256_secret = \"env:WARDEN_TEST_HS\""),
            &[("WARDEN_TEST_HS", "")],
            6,
            "is not set or is empty",
        );
        refused(d, &jwt("hs256_secret = \"env:\""), &[], 6, "does not name an environment variable");
        refused(d, &jwt("hs256_secret = \"env:A B\""), &[], 6, "does not name an environment variable");
        let text =
            format!("{LISTENER}[auth.http]\nurl = \"http://127.0.0.1:1/\"\nbearer_token = \"env:NO_SUCH_VAR\"\n");
        refused(d, &text, &[("OTHER", "v")], 5, "[auth.http] bearer_token: environment variable NO_SUCH_VAR");
        // A short secret from the environment is refused like an inline one, without showing it.
        let e = refused(d, &jwt("hs256_secret = \"env:HS\""), &[("HS", "short-value")], 3, "at least 16 bytes");
        assert!(!e.contains("short-value"), "{e}");

        // _file: unreadable, empty, or an empty path; the error names the path.
        let e = refused(d, &jwt("hs256_secret_file = \"missing.secret\""), &[], 6, "hs256_secret_file: cannot read");
        assert!(e.contains(&d.join("missing.secret").display().to_string()), "{e}");
        refused(d, &jwt("hs256_secret_file = \"empty.secret\""), &[], 6, "is empty");
        refused(d, &jwt("hs256_secret_file = \"\""), &[], 6, "hs256_secret_file must not be empty");
        let text = format!(
            "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n[oauth]\n[[oauth.client]]\nid = \"dev-1\"\nsecret_hash_file = \"nope\"\n"
        );
        refused(d, &text, &[], 8, "[[oauth.client]] \"dev-1\" secret_hash_file: cannot read");
        // A client without any secret.
        let text = format!("{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n[oauth]\n[[oauth.client]]\nid = \"dev-1\"\n");
        refused(d, &text, &[], 7, "needs secret_hash (or secret_hash_file)");
        // A file that holds something else than a hash is refused like an inline non-hash.
        let text = format!(
            "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n[oauth]\n[[oauth.client]]\nid = \"dev-1\"\nsecret_hash_file = \"hs.secret\"\n"
        );
        let e = refused(d, &text, &[], 5, "secret_hash is not a hash");
        assert!(!e.contains("file-hs256"), "{e}");
    }

    /// The value of `env:NAME` is the variable's, not the text `env:NAME`: a token signed with
    /// that text is refused, one signed with the variable's value is accepted (edge.py, §3).
    #[test]
    fn env_secret_verifies_with_the_variables_value_not_the_reference_text() {
        use warden_policy::jwt::{verify, JwtSettings, KeySet};
        let value = "env-secret-from-the-variable-0123";
        let text = format!("{LISTENER}{JWT_HEAD}hs256_secret = \"env:WARDEN_TEST_HS\"\n");
        let c = Config::parse_with_env(&text, Path::new(FILE), &env_of(&[("WARDEN_TEST_HS", value)])).unwrap();
        let j = c.auth.jwt.unwrap();
        let mut keys = KeySet::empty();
        keys.add_hs256_secret(j.hs256_secret.as_ref().unwrap().0.as_bytes());
        let settings = JwtSettings {
            issuer: j.issuer.clone(),
            audience: j.audience.clone(),
            typ: Some(j.typ.clone()),
            ..JwtSettings::default()
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = serde_json::json!({"sub": "s", "iss": "i", "aud": "warden", "iat": now, "exp": now + 60});
        let sign = |key: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
            )
            .unwrap()
        };
        assert!(verify(&sign(value), &keys, &settings, now).is_ok());
        assert!(verify(&sign("env:WARDEN_TEST_HS"), &keys, &settings, now).is_err());
    }

    #[test]
    fn warnings_about_secret_files_open_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let loose_pw = secret_file(d, "passwd-0644", "", 0o644);
        let tight_pw = secret_file(d, "passwd-0600", "", 0o600);
        secret_file(d, "hs-0640", "file-hs256-secret-0123456789", 0o640);
        secret_file(d, "hs-0600", "file-hs256-secret-0123456789", 0o600);
        let key = secret_file(d, "server.key", "", 0o604);
        let cfg = |pw: &Path, hs: &str, tls: &str| {
            let text = format!(
                "{LISTENER}{tls}[auth]\npassword_file = \"{}\"\n{JWT_HEAD}hs256_secret_file = \"{hs}\"\n",
                pw.display()
            );
            Config::parse_with_env(&text, &d.join("warden.toml"), &env_of(&[])).unwrap()
        };
        assert_eq!(cfg(&tight_pw, "hs-0600", "").warnings(), Vec::<String>::new());
        let tls = "[[listener]]\nbind = \"127.0.0.1:8883\"\nprotocol = \"mqtts\"\ncert = \"server.pem\"\nkey = \"server.key\"\n";
        let w = cfg(&loose_pw, "hs-0640", tls).warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("[auth.jwt] hs256_secret_file") && w[0].contains("hs-0640") && w[0].contains("0640"));
        assert!(w[1].contains("[auth] password_file") && w[1].contains("passwd-0644") && w[1].contains("mode 0644"));
        assert!(
            w[2].contains("TLS key of the mqtts listener 127.0.0.1:8883") && w[2].contains(&key.display().to_string())
        );
        assert!(w.iter().all(|w| w.contains("chmod 600")), "{w:?}");
    }

    #[test]
    fn reload_rereads_oauth_secret_hashes_given_by_reference() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (h1, h2, h3) = (
            warden_policy::password::hash_password(b"one"),
            warden_policy::password::hash_password(b"two"),
            warden_policy::password::hash_password(b"three"),
        );
        secret_file(d, "c.hash", &h1, 0o600);
        let text = |inline: &str| {
            format!(
                "{LISTENER}[http]\nbind = \"127.0.0.1:0\"\n[oauth]\n[[oauth.client]]\nid = \"by-file\"\n\
                 secret_hash_file = \"c.hash\"\n[[oauth.client]]\nid = \"by-env\"\nsecret_hash = \"env:H\"\n\
                 [[oauth.client]]\nid = \"inline\"\nsecret_hash = '{inline}'\n"
            )
        };
        let path = secret_file(d, "warden.toml", &text(&h1), 0o600);
        let c = Config::load_with_env(&path, &env_of(&[("H", h1.as_str())])).unwrap();
        assert!(c.oauth.clients.iter().all(|c| c.secret_hash.0 == h1));
        // The file and the variable change, and so does the inline hash in the file.
        secret_file(d, "c.hash", &h2, 0o600);
        secret_file(d, "warden.toml", &text(&h3), 0o600);
        let r = c.with_reread_secrets(&env_of(&[("H", h3.as_str())])).unwrap();
        let hashes: Vec<&str> = r.oauth.clients.iter().map(|c| c.secret_hash.0.as_str()).collect();
        assert_eq!(hashes, [h2.as_str(), h3.as_str(), h1.as_str()], "by reference re-read, inline as loaded");
        // A reference that no longer resolves: an error, and the caller keeps what it has.
        let e = c.with_reread_secrets(&env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("environment variable H is not set"), "{e}");
    }

    /// Issue 19: `[log]` (level, format, file) with defaults, and a bad level refused at its line.
    #[test]
    fn log_section() {
        let c = parse(LISTENER).unwrap();
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.log.level, "info");
        assert_eq!(Config::embedded_default().log, LogConfig::default());
        let c = Config::parse(
            &format!("{LISTENER}[log]\nlevel = \"warn,warden=debug\"\nformat = \"json\"\nfile = \"log/warden.log\"\n"),
            Path::new("/etc/warden/warden.toml"),
        )
        .unwrap();
        assert_eq!(c.log.level, "warn,warden=debug");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.file, Some(PathBuf::from("/etc/warden/log/warden.log")));
        assert_eq!(
            parse(&format!("{LISTENER}[log]\nlevel = \"WARN,rustls=off\"\n")).unwrap().log.level,
            "WARN,rustls=off"
        );
        fails_at(&format!("{LISTENER}[log]\nlevel = \"warden=loud\"\n"), 4, "level");
        fails_at(&format!("{LISTENER}[log]\nlevel = \"inof\"\n"), 4, "not a level");
        fails_at(&format!("{LISTENER}[log]\nlevel = \"\"\n"), 4, "level");
        fails_at(&format!("{LISTENER}[log]\nformat = \"xml\"\n"), 4, "xml");
        fails_at(&format!("{LISTENER}[log]\nfile = \"\"\n"), 4, "file");
        fails_at(&format!("{LISTENER}[log]\ncolour = true\n"), 4, "colour");
    }
}
