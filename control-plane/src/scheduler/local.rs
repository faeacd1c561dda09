//! The local scheduler: workers as child processes, AZs as loopback ranges.
//!
//! AZ number k (in the configured order, from 1) owns `127.0.k.0/24`; worker n
//! of an app listens on `127.0.k.n` at two ports the scheduler picks: the
//! app's, and the ops port for `/healthz`, `/readyz` and `/metrics`. Each
//! worker's output goes to `<data_dir>/workers/{app}-{n}-v{version}.log`.
//!
//! A worker runs a tenant's code, so it starts with an empty environment
//! plus [`PASSED_ENV`] and what the supervisor gives it (its app token and
//! the services' URLs), in the logs directory, and reads its manifest from
//! standard input: nothing of the fabric's own (keys, admin token, cloud
//! credentials) is in reach, and no manifest is written to disk.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Running, Scheduler, SchedulerError, WorkerSpec};

/// What a worker inherits from the control plane's environment: logging,
/// and the worker tunables an operator sets for every worker.
pub const PASSED_ENV: [&str; 6] = [
    "RUST_LOG",
    "RUST_BACKTRACE",
    "FABRIC_LEASE_LOCK",
    "FABRIC_PRIMARY_TTL",
    "FABRIC_BACKING_WAIT",
    "FABRIC_SHUTDOWN_GRACE",
];

/// Runs workers as child processes of this one.
pub struct LocalScheduler {
    binary: PathBuf,
    azs: Vec<String>,
    logs: PathBuf,
}

impl LocalScheduler {
    /// Workers run `binary serve worker`; logs go under `data_dir/workers`.
    pub fn new(binary: PathBuf, azs: Vec<String>, data_dir: &std::path::Path) -> Self {
        LocalScheduler {
            binary,
            azs,
            logs: data_dir.join("workers"),
        }
    }

    fn log_path(&self, spec: &WorkerSpec) -> PathBuf {
        self.logs
            .join(format!("{}-{}-v{}.log", spec.app, spec.index, spec.version))
    }

    fn ip(&self, az: &str, index: u32) -> Result<Ipv4Addr, SchedulerError> {
        let k = self
            .azs
            .iter()
            .position(|a| a == az)
            .ok_or_else(|| SchedulerError::UnknownAz(az.into()))?;
        Ok(Ipv4Addr::new(
            127,
            0,
            (k + 1).min(254) as u8,
            index.clamp(1, 254) as u8,
        ))
    }
}

fn pid_of(p: u32) -> Pid {
    Pid::from_raw(p as i32)
}

impl Scheduler for LocalScheduler {
    fn start(&self, spec: &WorkerSpec) -> Result<Running, SchedulerError> {
        let id = format!("{}-{}", spec.app, spec.index);
        let err = |source| SchedulerError::Spawn {
            id: id.clone(),
            source,
        };
        let ip = self.ip(&spec.az, spec.index)?;
        // The ports are picked here and handed over; the worker binds them at once.
        let pick = || {
            TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .map_err(err)
        };
        let (address, ops_address) = (pick()?, pick()?);
        std::fs::create_dir_all(&self.logs).map_err(err)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path(spec))
            .map_err(err)?;
        let log_err = log.try_clone().map_err(err)?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(["serve", "worker"])
            .env_clear()
            .envs(
                PASSED_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .env("FABRIC_LISTEN", address.to_string())
            .env("FABRIC_OPS_LISTEN", ops_address.to_string())
            .env("FABRIC_MANIFEST", "-")
            .env("FABRIC_APP", &spec.app)
            .env("FABRIC_SIZE", spec.size.to_string())
            .env(
                "FABRIC_WORKER_ID",
                format!("{}-{}-v{}", spec.app, spec.index, spec.version),
            )
            .env("FABRIC_LOG_FORMAT", "json")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.logs)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            // A worker outlives a control plane that is killed, so a restarted
            // one can adopt it; it is stopped explicitly otherwise.
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(err)?;
        let pid = child.id().unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            let manifest = spec.manifest.clone();
            // Larger than a pipe holds: written beside the start, then closed.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if let Err(e) = stdin.write_all(manifest.as_bytes()).await {
                    tracing::warn!(pid, error = %e, "could not hand a worker its manifest");
                }
            });
        }
        Ok(Running {
            address,
            ops_address,
            pid,
            child: Some(child),
        })
    }

    fn alive(&self, worker: &mut Running) -> bool {
        match &mut worker.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => kill(pid_of(worker.pid), None).is_ok(),
        }
    }

    fn kill(&self, worker: &mut Running) {
        let _ = kill(pid_of(worker.pid), Signal::SIGKILL);
        if let Some(child) = &mut worker.child {
            let _ = child.try_wait();
        }
    }

    fn stop(&self, mut worker: Running, grace: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let _ = kill(pid_of(worker.pid), Signal::SIGTERM);
            let exited = match &mut worker.child {
                Some(child) => tokio::time::timeout(grace, child.wait()).await.is_ok(),
                None => {
                    let deadline = tokio::time::Instant::now() + grace;
                    loop {
                        if kill(pid_of(worker.pid), None).is_err() {
                            break true;
                        }
                        if tokio::time::Instant::now() >= deadline {
                            break false;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            if !exited {
                tracing::warn!(
                    pid = worker.pid,
                    grace = ?grace,
                    "a worker did not stop within its grace period; killing it"
                );
                let _ = kill(pid_of(worker.pid), Signal::SIGKILL);
                if let Some(child) = &mut worker.child {
                    let _ = child.wait().await;
                }
            }
        })
    }

    fn log_tail(&self, spec: &WorkerSpec, lines: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.log_path(spec)).ok()?;
        let all: Vec<&str> = text.lines().collect();
        Some(all[all.len().saturating_sub(lines)..].join("\n"))
    }
}
