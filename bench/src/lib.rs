//! Shared helpers for the benchmarks in `src/bin/`: latency percentiles and the `BENCH` line.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Latency samples of one measured run.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-th percentile (0..=100) in milliseconds, nearest rank; 0 when empty.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, sorted.len()) - 1;
        sorted[idx].as_secs_f64() * 1000.0
    }
}

/// The release `fabric` binary beside this bench's own; panics with
/// `how_to_build` when it is missing.
pub fn fabric_binary(how_to_build: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let fabric = exe.with_file_name("fabric");
    assert!(
        fabric.is_file(),
        "{} is missing: {how_to_build}",
        fabric.display()
    );
    fabric
}

/// A field of `/proc/PID/status` (`VmRSS`, `VmHWM`) in MB; 0 when unreadable.
pub fn mem_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Formats the closing `BENCH <name> key=value ...` line.
pub fn bench_line(name: &str, fields: &[(&str, f64)]) -> String {
    let mut line = format!("BENCH {name}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v:.3}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), 50.0);
        assert_eq!(l.percentile_ms(99.0), 99.0);
        assert_eq!(l.percentile_ms(100.0), 100.0);
        assert_eq!(Latencies::default().percentile_ms(50.0), 0.0);
        assert_eq!(
            bench_line("q", &[("a", 1.0), ("b", 0.25)]),
            "BENCH q a=1.000 b=0.250"
        );
    }
}
