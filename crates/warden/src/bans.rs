//! The admin ban list: client ids, user names, IP addresses and CIDR blocks, each with an
//! optional expiry; persisted in `<data_dir>/bans.json` (written atomically), loaded at start
//! (a corrupt file refuses start, naming the file and the reason).
//!
//! Addresses are checked at accept time, before any TLS handshake or hashing (next to the
//! per-address guard); client ids and user names as soon as the CONNECT is decoded, before
//! authentication, and the authenticated principal's name again after it. A banned CONNECT
//! gets CONNACK 0x8A Banned (v3: 0x05 Not authorized).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
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

/// `a.b.c.d/n` or `x::/n` (or a plain address as a /32 or /128).
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
            (len <= 128).then_some(Net::V6(u128::from(a), len))
        }
    }
}

fn net_contains(net: Net, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (net, ip) {
        (Net::V4(n, len), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (u32::from(a) & mask) == (n & mask)
        }
        (Net::V6(n, len), IpAddr::V6(a)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            (u128::from(a) & mask) == (n & mask)
        }
        _ => false,
    }
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
    pub fn load(data_dir: &Path) -> anyhow::Result<BanList> {
        let path = data_dir.join(FILE);
        let bans = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let f: BanFile = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: corrupt ban list: {e}", path.display()))?;
                if f.version != 1 {
                    anyhow::bail!("{}: unsupported version {}", path.display(), f.version);
                }
                for b in &f.bans {
                    validate(b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                }
                f.bans
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        Ok(BanList { path, current: RwLock::new(Arc::new(compile(bans))), write: Mutex::new(()) })
    }

    /// The bans (expired ones included until removed).
    pub fn list(&self) -> Vec<Ban> {
        self.current.read().bans.clone()
    }

    fn store(&self, bans: Vec<Ban>) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&BanFile { version: 1, bans: bans.clone() })? + "\n";
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::passwd_cmd::write_atomically(&self.path, text.as_bytes())
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        *self.current.write() = Arc::new(compile(bans));
        Ok(())
    }

    /// Add or replace (same kind and value) a ban, persisted before it applies.
    pub fn add(&self, ban: Ban) -> anyhow::Result<()> {
        validate(&ban).map_err(|e| anyhow::anyhow!(e))?;
        let _w = self.write.lock();
        let mut bans = self.list();
        bans.retain(|b| !(b.kind == ban.kind && b.value == ban.value));
        bans.push(ban);
        self.store(bans)
    }

    /// Remove a ban; false when there was none.
    pub fn remove(&self, kind: BanKind, value: &str) -> anyhow::Result<bool> {
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
