//! Shared helpers for the benchmarks in `src/bin/`: latency percentiles and the `BENCH` line.
#![forbid(unsafe_code)]

use std::time::Duration;

pub mod raw_pipeline;
pub mod report;

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

/// `/proc/PID/stat` counts CPU time in USER_HZ, 100 on Linux.
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds (user + system) process `pid` (a number, or `self`) has used
/// so far; 0 when it is gone.
pub fn cpu_s(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: utime and stime are fields 14
    // and 15 of the line, 11 and 12 after the name.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / TICKS_PER_S
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

/// A `fabric up` of a benchmark's own (embedded backend, its load balancer
/// on a free port, a temporary data directory), stopped by pid when dropped.
pub struct LocalFabric {
    process: std::process::Child,
    /// The control plane's base URL.
    pub url: String,
    /// The admin API key.
    pub admin: String,
    /// The load balancer's data-path address (`host:port`).
    pub proxy: String,
    _data: tempfile::TempDir,
}

impl LocalFabric {
    /// Starts the release `fabric` beside this bench (`how_to_build` says how
    /// to make it when missing) and waits until it serves.
    pub fn start(how_to_build: &str) -> Self {
        Self::start_env(how_to_build, &[])
    }

    /// [`LocalFabric::start`] with extra environment (settings as `FABRIC_*`).
    pub fn start_env(how_to_build: &str, env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        let data = tempfile::tempdir().expect("temp dir");
        let mut process = std::process::Command::new(fabric_binary(how_to_build))
            .args(["up", "--proxy-port", "0", "--data-dir"])
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start fabric up");
        let stdout = process.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut proxy = String::new();
        for line in lines.by_ref() {
            let line = line.expect("fabric up output");
            if let Some((_, rest)) = line.split_once("Apps answer through the load balancer on ") {
                proxy = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let read = |f: &str| {
            std::fs::read_to_string(data.path().join(f))
                .expect(f)
                .trim()
                .to_string()
        };
        LocalFabric {
            url: read("control-plane.url"),
            admin: read("admin.key"),
            proxy,
            process,
            _data: data,
        }
    }

    /// The `fabric up` process's id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// An API client with the admin key.
    pub fn client(&self) -> control_plane::client::Client {
        control_plane::client::Client::new(&self.url, &self.admin)
    }
}

impl Drop for LocalFabric {
    fn drop(&mut self) {
        // SIGINT: `fabric up` drains and stops its workers.
        let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.process.wait();
    }
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
