//! The local scheduler: workers as child processes, AZs as loopback ranges.
//!
//! AZ number k (in the configured order, from 1) owns `127.0.k.0/24`; worker n
//! of an app listens on `127.0.k.n` at two ports the scheduler picks: the
//! app's, and the ops port for `/healthz`, `/readyz` and `/metrics`. Each
//! worker's output goes to `<data_dir>/workers/{app id}-{n}-v{version}.log`
//! (mode 0600), an app instance's own.
//!
//! A worker runs a tenant's code, so it starts with an empty environment
//! plus [`PASSED_ENV`] and what the supervisor gives it (its app token and
//! the services' URLs), in the logs directory, and reads its manifest from
//! standard input: nothing of the fabric's own (keys, admin token, cloud
//! credentials) is in reach, and no manifest is written to disk.

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use common::telemetry::EventKind;
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;

use super::{Scheduler, SchedulerError, Worker, WorkerSpec};

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
    /// The workers this process started, by pid, until they are reaped.
    children: Mutex<HashMap<u32, Child>>,
}

impl LocalScheduler {
    /// Workers run `binary serve worker`; logs go under `data_dir/workers`.
    pub fn new(binary: PathBuf, azs: Vec<String>, data_dir: &std::path::Path) -> Self {
        LocalScheduler {
            binary,
            azs,
            logs: data_dir.join("workers"),
            children: Mutex::default(),
        }
    }

    fn log_path(&self, spec: &WorkerSpec) -> PathBuf {
        self.logs.join(format!(
            "{}-{}-v{}.log",
            spec.app_id, spec.index, spec.version
        ))
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

/// A process's identity: this boot's id and the process's start time (in
/// clock ticks since boot), which together no later process shares.
fn process_identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis; the start time is field 22.
    let after = &stat[stat.rfind(')')? + 1..];
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{}:{start}", boot.trim()))
}

/// The most of a worker's log [`log_tail`] reads.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// Whether process `pid` was started as worker `worker_id`.
fn started_as(pid: u32, worker_id: &str) -> bool {
    let wanted = format!("FABRIC_WORKER_ID={worker_id}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
        .unwrap_or(false)
}

fn pid_of(p: u32) -> Pid {
    Pid::from_raw(p as i32)
}

impl LocalScheduler {
    fn spawn(&self, spec: &WorkerSpec) -> Result<Worker, SchedulerError> {
        let err = |source| SchedulerError::Spawn {
            id: format!("{}-{}", spec.app, spec.index),
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
            .env("FABRIC_APP_ID", &spec.app_id)
            .env("FABRIC_SIZE", spec.size.to_string())
            .env("FABRIC_WORKER_ID", spec.name())
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
        let identity = process_identity(pid);
        self.children().insert(pid, child);
        Ok(Worker {
            handle: pid.to_string(),
            address,
            ops_address,
            identity,
            pid: Some(pid),
        })
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether process `pid` runs: a child of this process that exited is
    /// reaped (and forgotten) here.
    fn runs(&self, pid: u32) -> bool {
        let mut children = self.children();
        match children.get_mut(&pid).map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                children.remove(&pid);
                false
            }
            None => kill(pid_of(pid), None).is_ok(),
        }
    }

    /// Waits up to `grace` for process `pid` to end; whether it did.
    async fn exited_within(&self, pid: u32, grace: Duration) -> bool {
        let child = self.children().remove(&pid);
        match child {
            Some(mut child) => {
                tokio::time::timeout(grace, child.wait()).await.is_ok() || {
                    // Still running: kept, so that it is reaped when killed.
                    self.children().insert(pid, child);
                    false
                }
            }
            None => {
                let deadline = tokio::time::Instant::now() + grace;
                loop {
                    if kill(pid_of(pid), None).is_err() {
                        break true;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Kills process `pid` and, when it is a child, reaps it.
    async fn kill_now(&self, pid: u32) {
        let _ = kill(pid_of(pid), Signal::SIGKILL);
        let child = self.children().remove(&pid);
        if let Some(mut child) = child {
            let _ = child.wait().await;
        }
    }

    fn adopt_now(&self, recorded: &Worker, name: &str) -> Option<Worker> {
        let pid: u32 = recorded.handle.parse().ok().filter(|p| *p > 0)?;
        if kill(pid_of(pid), None).is_err() {
            return None;
        }
        let ours = match &recorded.identity {
            Some(id) => process_identity(pid).as_ref() == Some(id),
            // Recorded before identities were: the worker's own name in its environment.
            None => started_as(pid, name),
        };
        ours.then(|| Worker {
            pid: Some(pid),
            ..recorded.clone()
        })
    }
}

/// The last `lines` whole lines of the log at `path`, read from its last
/// [`LOG_TAIL_BYTES`] only: a worker's log may be as large as its app made it.
fn log_tail(path: &Path, lines: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut end = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut end).ok()?;
    let text = String::from_utf8_lossy(&end);
    let mut all: Vec<&str> = text.lines().collect();
    if from > 0 && !all.is_empty() {
        all.remove(0); // cut mid-line
    }
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// The process id a worker's handle names (`0`, which signals no process,
/// for a handle this scheduler did not give).
fn pid(worker: &Worker) -> u32 {
    worker.handle.parse().unwrap_or(0)
}

impl Scheduler for LocalScheduler {
    fn start<'a>(&'a self, spec: &'a WorkerSpec) -> BoxFuture<'a, Result<Worker, SchedulerError>> {
        Box::pin(async move { self.spawn(spec) })
    }

    fn alive<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, bool> {
        Box::pin(async move { pid(worker) > 0 && self.runs(pid(worker)) })
    }

    fn adopt<'a>(&'a self, recorded: &'a Worker, name: &'a str) -> BoxFuture<'a, Option<Worker>> {
        Box::pin(async move { self.adopt_now(recorded, name) })
    }

    fn kill<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if pid(worker) > 0 {
                self.kill_now(pid(worker)).await;
            }
        })
    }

    fn stop<'a>(&'a self, worker: &'a Worker, grace: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let pid = pid(worker);
            if pid == 0 {
                return;
            }
            let _ = kill(pid_of(pid), Signal::SIGTERM);
            if !self.exited_within(pid, grace).await {
                tracing::warn!(
                    kind = EventKind::WorkerKilled.as_str(),
                    pid,
                    grace = ?grace,
                    "a worker did not stop within its grace period; killing it"
                );
                self.kill_now(pid).await;
            }
        })
    }

    fn logs<'a>(&'a self, spec: &'a WorkerSpec, lines: usize) -> BoxFuture<'a, Option<String>> {
        let path = self.log_path(spec);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || log_tail(&path, lines))
                .await
                .ok()
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkerSpec {
        WorkerSpec {
            app: "shop".into(),
            app_id: "shop--abc".into(),
            tenant: "acme".into(),
            version: 1,
            index: 1,
            az: "a".into(),
            manifest: "".into(),
            size: 0.1,
            env: Vec::new(),
        }
    }

    #[test]
    fn a_log_tail_reads_the_end_of_a_large_log_only() {
        let dir = tempfile::tempdir().unwrap();
        let sched = LocalScheduler::new("fabric".into(), vec!["a".into()], dir.path());
        let spec = spec();
        let path = sched.log_path(&spec);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            log_tail(&path, 3).unwrap(),
            "line 99997\nline 99998\nline 99999"
        );
        // More lines than the tail holds: whole lines only.
        let tail = log_tail(&path, 1_000_000).unwrap();
        assert!(tail.len() as u64 <= LOG_TAIL_BYTES);
        assert!(tail.starts_with("line "), "{}", &tail[..20]);
    }

    #[test]
    fn a_process_is_known_by_its_boot_and_start_time_while_it_lives() {
        let me = std::process::id();
        let id = process_identity(me).expect("this process has an identity");
        assert_eq!(process_identity(me), Some(id.clone()), "stable");
        let boot = id.split(':').next().unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let theirs = process_identity(other.id()).expect("a live child has one");
        assert!(theirs.starts_with(boot), "the same boot: {theirs}");
        other.kill().unwrap();
        other.wait().unwrap();
        assert_eq!(
            process_identity(other.id()),
            None,
            "a gone process has none"
        );
    }

    #[test]
    fn a_pid_taken_by_another_process_is_not_adopted() {
        let s = LocalScheduler::new(
            PathBuf::from("/bin/false"),
            vec!["a".into()],
            std::path::Path::new("/tmp"),
        );
        let addr = "127.0.0.1:1".parse().unwrap();
        let me = std::process::id();
        let recorded = |identity: Option<String>| Worker {
            handle: me.to_string(),
            address: addr,
            ops_address: addr,
            identity,
            pid: Some(me),
        };
        // This test process is alive, but it is not the recorded worker.
        assert!(
            s.adopt_now(&recorded(Some("another-boot:1".into())), "w-1-v1")
                .is_none()
        );
        assert!(s.adopt_now(&recorded(None), "w-1-v1").is_none());
        let mine = recorded(process_identity(me));
        assert_eq!(s.adopt_now(&mine, "w-1-v1"), Some(mine.clone()));
        // A handle that names no process is nobody.
        let nobody = Worker {
            handle: "not-a-pid".into(),
            ..mine
        };
        assert!(s.adopt_now(&nobody, "w-1-v1").is_none());
    }

    #[tokio::test]
    async fn a_started_worker_is_alive_until_stopped_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        // `sleep serve worker`: a worker that exits at once.
        let s = LocalScheduler::new(PathBuf::from("/bin/sleep"), vec!["a".into()], dir.path());
        let spec = spec();
        let w = s.start(&spec).await.unwrap();
        assert_eq!(w.handle, w.pid.unwrap().to_string());
        // `sleep` refuses its arguments and exits: noticed, and reaped.
        tokio::time::timeout(Duration::from_secs(10), async {
            while s.alive(&w).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("an exited worker is noticed");
        assert!(s.children().is_empty(), "an exited child is reaped");
        // A process that does not end on SIGTERM is killed after the grace.
        let child = tokio::process::Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .spawn()
            .unwrap();
        let stubborn = child.id().unwrap();
        s.children().insert(stubborn, child);
        let w = Worker {
            handle: stubborn.to_string(),
            pid: Some(stubborn),
            ..w
        };
        assert!(s.alive(&w).await);
        s.stop(&w, Duration::from_millis(100)).await;
        assert!(!s.alive(&w).await);
        assert!(s.children().is_empty());
    }
}
