//! The admin audit trail's record (SPEC §9): who changed what through the admin API, when,
//! from where, and with what result. The broker persists records (behind
//! [`super::AdminBackend::audit`]); this module only builds them and reads times.
//!
//! A record never carries a secret: no password, no client secret, no hash of either, no
//! token. Passwords and secrets show up as `"password": "set"` / `"secret": "set"`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `actor` of a change made with the static admin token.
pub const ACTOR_ADMIN_TOKEN: &str = "admin-token";
/// `actor` of a change made on the broker's machine with a `warden` subcommand that edits the
/// data directory itself (`warden oauth …`).
pub const ACTOR_CLI: &str = "cli";

/// Who is calling the admin API: set by the admin check for every authenticated request (as a
/// request extension) and written into the audit records of the changes it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminActor {
    /// [`ACTOR_ADMIN_TOKEN`], or `oauth:<client id>` for an access token of the built-in token
    /// service with the `admin` scope.
    pub name: String,
    /// The TCP peer of the request (none only in tests that call the router without a socket).
    pub peer: Option<SocketAddr>,
}

/// One entry of the admin audit trail (one JSON line in `<data_dir>/audit.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, RFC 3339 in UTC (`2026-12-06T02:15:07Z`).
    pub time: String,
    /// When, unix seconds.
    pub unix: u64,
    /// Who: `admin-token`, `oauth:<client id>`, `cli`, `behaviour-watch`.
    pub actor: String,
    /// From where: the HTTP peer address, `local` for the CLI.
    pub peer: String,
    /// What kind of change: `user.create`, `ban.add`, `client.kick`, ….
    pub action: String,
    /// What it was applied to: a user, group, role, client id, ban value, OAuth client id.
    pub target: String,
    /// What changed (never a secret).
    #[serde(default)]
    pub detail: Value,
    /// `ok` or `refused`.
    pub result: String,
    /// The HTTP status answered (0 for a change that did not go through HTTP).
    #[serde(default)]
    pub status: u16,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AuditRecord {
    /// A record stamped now, result `ok`, status 0, no detail.
    pub fn now(actor: &str, peer: &str, action: &str, target: &str) -> AuditRecord {
        let unix = unix_now();
        AuditRecord {
            time: rfc3339(unix),
            unix,
            actor: actor.to_owned(),
            peer: peer.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: Value::Object(Default::default()),
            result: RESULT_OK.to_owned(),
            status: 0,
            error: None,
        }
    }
}

/// `result` of a change that was made.
pub const RESULT_OK: &str = "ok";
/// `result` of a change that was refused (validation, conflict, not found, …).
pub const RESULT_REFUSED: &str = "refused";

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 in UTC, to the second (`1970-01-01T00:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A `since` value: unix seconds (`1796523307`) or an RFC 3339 date-time
/// (`2026-12-06T02:15:07Z`, `2026-12-06T03:15:07.5+01:00`). Times before 1970 read as 0;
/// fractions of a second are dropped.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    parse_rfc3339(s)
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        s.get(r).filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo as u32) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || ob[3] != b':' || !matches!(ob[0], b'+' | b'-') {
                return None;
            }
            let two = |r: std::ops::Range<usize>| -> Option<i64> {
                rest.get(r).filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?.parse().ok()
            };
            let (oh, om) = (two(1..3)?, two(4..6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if ob[0] == b'+' {
                o
            } else {
                -o
            }
        }
    };
    let t = days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(t.max(0) as u64)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_and_parse_both_ways() {
        for (unix, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_868_799, "2000-02-29T23:59:59Z"),
            (946_681_200, "1999-12-31T23:00:00Z"),
            (1_796_523_307, "2026-12-06T02:15:07Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
        ] {
            assert_eq!(rfc3339(unix), text);
            assert_eq!(parse_time(text), Some(unix), "{text}");
            assert_eq!(parse_time(&unix.to_string()), Some(unix));
        }
        assert_eq!(parse_time("2026-12-06T03:15:07.25+01:00"), Some(1_796_523_307));
        assert_eq!(parse_time("2026-12-05t21:15:07-05:00"), Some(1_796_523_307));
        assert_eq!(parse_time("1960-01-01T00:00:00Z"), Some(0));
        for bad in [
            "",
            "yesterday",
            "-5",
            "2026-12-06",
            "2026-12-06T02:15:07",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-06T24:00:00Z",
            "2026-12-06T02:15:07.Z",
            "2026-12-06T02:15:07+1:00",
            "2026-12-06T02:15:07+01:0x",
            "2026-12-06T02:15:07Zjunk",
            "+026-12-06T02:15:07Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_record_serialises_to_one_json_line_and_back() {
        let mut r = AuditRecord::now("admin-token", "127.0.0.1:1", "user.create", "ann");
        r.detail = serde_json::json!({"password": "set", "roles": ["dev"]});
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        assert!(!line.contains("\"error\""), "no error field when ok: {line}");
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(parse_time(&r.time), Some(r.unix));
    }
}
