//! The admin ban list: client ids, user names, IP addresses and CIDR blocks, each with an
//! optional expiry; persisted in `<data_dir>/bans.json` (written atomically), loaded at start
//! (a corrupt file refuses start, naming the file and the reason).
//!
//! Addresses are checked at accept time, before any TLS handshake or hashing (next to the
//! per-address guard); client ids and user names as soon as the CONNECT is decoded, before
//! authentication, and the authenticated principal's name again after it. A banned CONNECT
//! gets CONNACK 0x8A Banned (v3: 0x05 Not authorized).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4
//! peer, and so what the admin API shows for it) are the IPv4 address they carry: a ban value
//! in that form is stored as the IPv4 address (`::ffff:10.0.0.0/104` as `10.0.0.0/8`), and a
//! peer is checked as its IPv4 address, so either spelling bans either kind of peer.

use crate::fsutil::FileError;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use warden_http::admin::{Ban, BanKind};

/// The file in the data directory.
pub const FILE: &str = "bans.json";

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BanFile {
    version: u32,
    #[serde(default)]
    bans: Vec<Ban>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    V4(u32, u32),
    V6(u128, u32),
}

/// The address a peer is checked and counted as: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) is the IPv4 address it carries; every other address is itself.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `a.b.c.d/n` or `x::/n` (or a plain address as a /32 or /128). A block inside
/// `::ffff:0:0/96` (IPv4-mapped) is the IPv4 block it maps.
fn parse_net(s: &str) -> Option<Net> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (s, None),
    };
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            let len = len.unwrap_or(32);
            (len <= 32).then_some(Net::V4(u32::from(a), len))
        }
        IpAddr::V6(a) => {
            let len = len.unwrap_or(128);
            match a.to_ipv4_mapped() {
                Some(v4) if (96..=128).contains(&len) => Some(Net::V4(u32::from(v4), len - 96)),
                _ => (len <= 128).then_some(Net::V6(u128::from(a), len)),
            }
        }
    }
}

fn net_contains(net: Net, ip: IpAddr) -> bool {
    match (net, canonical_ip(ip)) {
        (Net::V4(n, len), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (u32::from(a) & mask) == (n & mask)
        }
        (Net::V6(n, len), ip) => {
            // An IPv4 peer is inside an IPv6 block that covers its mapped form (`::/0`).
            let a = match ip {
                IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
                IpAddr::V6(v6) => u128::from(v6),
            };
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            (a & mask) == (n & mask)
        }
        (Net::V4(..), IpAddr::V6(_)) => false,
    }
}

/// The stored spelling of an `ip` or `cidr` ban value: an IPv4-mapped address or block is
/// written as the IPv4 one (so that adding, listing and removing agree on one form); any
/// other value (names, and addresses that do not parse) is kept as given.
fn canonical_value(kind: BanKind, value: &str) -> String {
    let mapped = |a: &str| a.parse::<std::net::Ipv6Addr>().ok().and_then(|a| a.to_ipv4_mapped());
    match kind {
        BanKind::Ip => mapped(value).map_or_else(|| value.to_owned(), |v4: Ipv4Addr| v4.to_string()),
        BanKind::Cidr => match value.split_once('/') {
            Some((a, l)) => match (mapped(a), l.parse::<u32>()) {
                (Some(v4), Ok(len)) if (96..=128).contains(&len) => format!("{v4}/{}", len - 96),
                _ => value.to_owned(),
            },
            None => mapped(value).map_or_else(|| value.to_owned(), |v4| v4.to_string()),
        },
        _ => value.to_owned(),
    }
}

/// `ban` with its value in the stored spelling ([`canonical_value`]).
fn canonical(mut ban: Ban) -> Ban {
    ban.value = canonical_value(ban.kind, &ban.value);
    ban
}

/// Check a ban before it is stored: the value must parse for its kind.
pub fn validate(ban: &Ban) -> Result<(), String> {
    if ban.value.is_empty() || ban.value.len() > 65535 || ban.value.contains('\0') {
        return Err("ban value must be 1 to 65535 bytes without U+0000".into());
    }
    match ban.kind {
        BanKind::Ip if ban.value.contains('/') || parse_net(&ban.value).is_none() => {
            Err(format!("'{}' is not an IP address", ban.value))
        }
        BanKind::Cidr if parse_net(&ban.value).is_none() => Err(format!("'{}' is not a CIDR block", ban.value)),
        _ => Ok(()),
    }
}

struct Compiled {
    bans: Vec<Ban>,
    nets: Vec<(Net, Option<u64>)>,
}

fn compile(bans: Vec<Ban>) -> Compiled {
    let nets = bans
        .iter()
        .filter(|b| matches!(b.kind, BanKind::Ip | BanKind::Cidr))
        .filter_map(|b| parse_net(&b.value).map(|n| (n, b.expires_at)))
        .collect();
    Compiled { bans, nets }
}

fn live(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_none_or(|e| now < e)
}

/// The ban list in force.
pub struct BanList {
    path: PathBuf,
    current: RwLock<Arc<Compiled>>,
    write: Mutex<()>,
}

impl std::fmt::Debug for BanList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BanList").field("path", &self.path).finish_non_exhaustive()
    }
}

impl BanList {
    /// Load `<data_dir>/bans.json` (missing: empty).
    pub fn load(data_dir: &Path) -> Result<BanList, FileError> {
        let path = data_dir.join(FILE);
        let bans = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let corrupt = |reason: String| FileError::Corrupt { path: path.clone(), reason };
                let f: BanFile = serde_json::from_str(&text).map_err(|e| corrupt(format!("corrupt ban list: {e}")))?;
                if f.version != 1 {
                    return Err(corrupt(format!("unsupported version {}", f.version)));
                }
                for b in &f.bans {
                    validate(b).map_err(|e| corrupt(e.to_string()))?;
                }
                f.bans.into_iter().map(canonical).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(FileError::Read { path, source }),
        };
        Ok(BanList { path, current: RwLock::new(Arc::new(compile(bans))), write: Mutex::new(()) })
    }

    /// The bans (expired ones included until removed).
    pub fn list(&self) -> Vec<Ban> {
        self.current.read().bans.clone()
    }

    /// How many bans are in force at `now` (unix seconds): the expired ones left out.
    pub fn in_force(&self, now: u64) -> usize {
        self.current.read().bans.iter().filter(|b| b.expires_at.is_none_or(|t| t > now)).count()
    }

    fn store(&self, bans: Vec<Ban>) -> Result<(), FileError> {
        let text = serde_json::to_string_pretty(&BanFile { version: 1, bans: bans.clone() })
            .map_err(|e| FileError::Invalid(e.to_string()))?
            + "\n";
        let write_error = |source| FileError::Write { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_error)?;
        }
        crate::fsutil::write_atomically(&self.path, text.as_bytes()).map_err(write_error)?;
        *self.current.write() = Arc::new(compile(bans));
        Ok(())
    }

    /// Add or replace (same kind and value) a ban, persisted before it applies. An
    /// IPv4-mapped address or block is stored as the IPv4 one.
    pub fn add(&self, ban: Ban) -> Result<(), FileError> {
        validate(&ban).map_err(|e| FileError::Invalid(e.to_string()))?;
        let ban = canonical(ban);
        let _w = self.write.lock();
        let mut bans = self.list();
        bans.retain(|b| !(b.kind == ban.kind && b.value == ban.value));
        bans.push(ban);
        self.store(bans)
    }

    /// Remove a ban; false when there was none.
    pub fn remove(&self, kind: BanKind, value: &str) -> Result<bool, FileError> {
        let value = canonical_value(kind, value);
        let _w = self.write.lock();
        let mut bans = self.list();
        let n = bans.len();
        bans.retain(|b| !(b.kind == kind && b.value == value));
        if bans.len() == n {
            return Ok(false);
        }
        self.store(bans).map(|_| true)
    }

    /// Is this address banned (an `ip` or `cidr` ban)? Cheap: checked on every accept.
    pub fn ip_banned(&self, ip: IpAddr, now: u64) -> bool {
        let c = self.current.read().clone();
        c.nets.iter().any(|&(n, exp)| live(exp, now) && net_contains(n, ip))
    }

    /// Is this client id or user name banned?
    pub fn name_banned(&self, client_id: &str, username: Option<&str>, now: u64) -> bool {
        let c = self.current.read().clone();
        c.bans.iter().any(|b| {
            live(b.expires_at, now)
                && match b.kind {
                    BanKind::ClientId => b.value == client_id,
                    BanKind::Username => Some(b.value.as_str()) == username,
                    _ => false,
                }
        })
    }

    /// Does `ban` match this live connection?
    pub fn matches(ban: &Ban, client_id: &str, principal_name: &str, peer: IpAddr) -> bool {
        match ban.kind {
            BanKind::ClientId => ban.value == client_id,
            BanKind::Username => ban.value == principal_name,
            BanKind::Ip | BanKind::Cidr => parse_net(&ban.value).is_some_and(|n| net_contains(n, peer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(kind: BanKind, value: &str, expires_at: Option<u64>) -> Ban {
        Ban { kind, value: value.into(), expires_at, reason: None }
    }

    #[test]
    fn cidr_and_ip_matching() {
        let dir = tempfile::tempdir().unwrap();
        let l = BanList::load(dir.path()).unwrap();
        l.add(ban(BanKind::Cidr, "10.1.0.0/16", None)).unwrap();
        l.add(ban(BanKind::Ip, "2001:db8::1", Some(100))).unwrap();
        assert!(l.ip_banned("10.1.2.3".parse().unwrap(), 0));
        assert!(l.ip_banned("::ffff:10.1.2.3".parse().unwrap(), 0), "v4-mapped");
        assert!(!l.ip_banned("10.2.0.1".parse().unwrap(), 0));
        assert!(l.ip_banned("2001:db8::1".parse().unwrap(), 99));
        assert!(!l.ip_banned("2001:db8::1".parse().unwrap(), 100), "expired");
        assert!(l.add(ban(BanKind::Cidr, "10.0.0.0/33", None)).is_err());
        assert!(l.add(ban(BanKind::Ip, "10.0.0.0/8", None)).is_err());
        assert!(l.add(ban(BanKind::ClientId, "", None)).is_err());
        // Persisted and reloaded.
        let again = BanList::load(dir.path()).unwrap();
        assert_eq!(again.list(), l.list());
        assert!(again.remove(BanKind::Cidr, "10.1.0.0/16").unwrap());
        assert!(!again.remove(BanKind::Cidr, "10.1.0.0/16").unwrap());
        assert!(!again.ip_banned("10.1.2.3".parse().unwrap(), 0));
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address() {
        let dir = tempfile::tempdir().unwrap();
        let l = BanList::load(dir.path()).unwrap();
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        // A mapped ban (the form the admin API shows for dual-stack peers) bans the IPv4 peer.
        l.add(ban(BanKind::Ip, "::ffff:127.0.0.9", None)).unwrap();
        assert!(l.ip_banned(v4("127.0.0.9"), 0));
        assert!(l.ip_banned(v4("::ffff:127.0.0.9"), 0));
        assert!(!l.ip_banned(v4("127.0.0.10"), 0));
        assert_eq!(l.list()[0].value, "127.0.0.9", "stored as the IPv4 address");
        // Removed by either spelling.
        assert!(l.remove(BanKind::Ip, "127.0.0.9").unwrap());
        assert!(!l.ip_banned(v4("127.0.0.9"), 0));
        // And the other way round: an IPv4 ban matches the mapped peer.
        l.add(ban(BanKind::Ip, "127.0.0.8", None)).unwrap();
        assert!(l.ip_banned(v4("::ffff:127.0.0.8"), 0));
        assert!(l.remove(BanKind::Ip, "::ffff:127.0.0.8").unwrap());
        // Blocks.
        l.add(ban(BanKind::Cidr, "::ffff:10.0.0.0/104", None)).unwrap();
        assert_eq!(l.list()[0].value, "10.0.0.0/8");
        assert!(l.ip_banned(v4("10.9.8.7"), 0) && l.ip_banned(v4("::ffff:10.9.8.7"), 0));
        assert!(!l.ip_banned(v4("11.0.0.1"), 0));
        l.add(ban(BanKind::Cidr, "::/0", None)).unwrap();
        assert!(l.ip_banned(v4("192.0.2.1"), 0), "::/0 covers the mapped IPv4 space");
        assert!(l.ip_banned(v4("2001:db8::1"), 0));
        // A live connection from a mapped peer matches an IPv4 ban, and the reverse.
        let b = ban(BanKind::Ip, "::ffff:127.0.0.9", None);
        assert!(BanList::matches(&b, "c", "u", v4("127.0.0.9")));
        assert!(BanList::matches(&ban(BanKind::Ip, "127.0.0.9", None), "c", "u", v4("::ffff:127.0.0.9")));
        // A file written with the mapped form loads canonical.
        std::fs::write(dir.path().join(FILE), r#"{"version":1,"bans":[{"kind":"ip","value":"::ffff:192.0.2.7"}]}"#)
            .unwrap();
        let again = BanList::load(dir.path()).unwrap();
        assert!(again.ip_banned(v4("192.0.2.7"), 0));
        assert_eq!(again.list()[0].value, "192.0.2.7");
    }

    #[test]
    fn names_and_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let l = BanList::load(dir.path()).unwrap();
        l.add(ban(BanKind::ClientId, "evil", None)).unwrap();
        l.add(ban(BanKind::Username, "mallory", None)).unwrap();
        assert!(l.name_banned("evil", None, 0));
        assert!(l.name_banned("x", Some("mallory"), 0));
        assert!(!l.name_banned("x", Some("ann"), 0));
        std::fs::write(dir.path().join(FILE), "{ nope").unwrap();
        let e = BanList::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("bans.json") && e.contains("corrupt"), "{e}");
    }
}
