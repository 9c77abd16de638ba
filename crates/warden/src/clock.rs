//! The shell's one wall clock. The core and the policy crate read no clock (time is an
//! argument); the shell reads `Instant::now()` for deadlines and this for what is compared with
//! unix times (token `exp`, ban expiry, certificate validity, audit records).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch (0 if the system clock is set before it).
pub fn unix_now() -> u64 {
    unix_nanos() / 1_000_000_000
}

/// Nanoseconds since the unix epoch, saturating (0 if the system clock is set before it).
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_and_nanoseconds_agree() {
        let (s, n) = (super::unix_now(), super::unix_nanos());
        assert!(s > 1_700_000_000, "a clock after 2023");
        assert!(n / 1_000_000_000 >= s && n / 1_000_000_000 - s <= 1);
    }
}
