//! Latency histogram and /proc readings of the broker (CPU time, RSS) and of the generator.

use std::fs;

use anyhow::{anyhow, Context, Result};

/// Clock ticks per second of `utime`/`stime` in /proc/PID/stat (`getconf CLK_TCK`; 100 on Linux).
pub(crate) const CLK_TCK: f64 = 100.0;

/// A log-linear histogram of nanosecond values: exact below 1,024 ns, then 512 sub-buckets per
/// power of two (relative error under 0.2%), up to about 18 minutes.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 9;
const SUB: u64 = 1 << SUB_BITS; // 512
const LINEAR: u64 = SUB * 2; // 1024
const OCTAVES: usize = 31;

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; LINEAR as usize + OCTAVES * SUB as usize], total: 0, max: 0 }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let bits = 63 - v.leading_zeros(); // >= 10
        let shift = bits - SUB_BITS; // >= 1
        let mantissa = (v >> shift) - SUB; // 0..512
        let octave = (shift - 1) as usize;
        (LINEAR as usize + octave.min(OCTAVES - 1) * SUB as usize + mantissa as usize)
            .min(LINEAR as usize + OCTAVES * SUB as usize - 1)
    }

    fn value_of(i: usize) -> u64 {
        if (i as u64) < LINEAR {
            return i as u64;
        }
        let j = i - LINEAR as usize;
        let shift = (j / SUB as usize) as u32 + 1;
        let mantissa = (j % SUB as usize) as u64 + SUB;
        // The middle of the bucket.
        (mantissa << shift) + (1u64 << shift) / 2
    }

    /// Record one value (ns).
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Add another histogram's counts.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), in ns; `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value_of(i).min(self.max));
            }
        }
        Some(self.max)
    }

    /// Largest value recorded (ns).
    pub(crate) fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }
}

/// CPU seconds (user + system) a process has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    cpu_from_stat(&stat)
}

/// CPU seconds of this process.
pub(crate) fn own_cpu_seconds() -> Result<f64> {
    cpu_from_stat(&fs::read_to_string("/proc/self/stat")?)
}

fn cpu_from_stat(stat: &str) -> Result<f64> {
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 and stime field 15.
    let utime: u64 = fields.get(11).ok_or_else(|| anyhow!("bad stat"))?.parse()?;
    let stime: u64 = fields.get(12).ok_or_else(|| anyhow!("bad stat"))?.parse()?;
    Ok((utime + stime) as f64 / CLK_TCK)
}

/// CPU seconds all processes of the machine have used so far (/proc/stat: everything but idle
/// and iowait), to tell how much else ran beside the broker and the generator.
pub(crate) fn host_busy_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or_else(|| anyhow!("empty /proc/stat"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = v.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| x).sum();
    Ok(busy as f64 / CLK_TCK)
}

/// Memory figures from /proc/PID/status, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM).
    pub hwm_kib: u64,
}

/// Read VmRSS and VmHWM of a process.
pub(crate) fn memory(pid: u32) -> Result<Memory> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [(0.5, 50_000_000f64), (0.99, 99_000_000.0), (0.999, 99_900_000.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!((got - want).abs() / want < 0.005, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), Some(100_000_000));
        let mut small = Histogram::default();
        small.record(7);
        assert_eq!(small.quantile(0.5), Some(7));
    }

    #[test]
    fn stat_parsing_skips_the_command_name() {
        let line = "123 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert!((cpu_from_stat(line).unwrap() - 3.0).abs() < 1e-9);
    }
}
