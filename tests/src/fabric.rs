//! A whole local fabric (`fabric up`) under test, and its command line.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{Proc, Stream};

const START: Duration = Duration::from_secs(60);

/// A running `fabric up` with its own data directory.
pub struct Fabric {
    proc: Option<Proc>,
    /// The load balancer's data-path address (`host:port`).
    pub proxy: String,
    /// Its data directory (keys, registry, logs).
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// The result of one `fabric` command.
pub struct Run {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Standard output as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Fabric {
    /// Starts a fabric in a fresh temporary data directory.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_path_buf();
        let mut f = Self::start_in(&data);
        f._dir = Some(dir);
        f
    }

    /// Starts a fabric in a fresh temporary data directory, with extra
    /// environment (which its workers inherit).
    pub fn start_env(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_path_buf();
        let mut f = Self::launch(&data, env);
        f._dir = Some(dir);
        f
    }

    /// Starts a fabric on an existing data directory (a restart).
    pub fn start_in(data: &Path) -> Self {
        Self::launch(data, &[])
    }

    /// Starts a fabric on an existing data directory with extra environment
    /// (a restart with the same options).
    pub fn start_in_env(data: &Path, env: &[(&str, &str)]) -> Self {
        Self::launch(data, env)
    }

    fn launch(data: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = crate::fabric_command();
        cmd.envs(env.iter().copied());
        cmd.arg("up")
            .arg("--data-dir")
            .arg(data)
            .args(["--proxy-port", "0"])
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn(cmd);
        proc.wait_for_line(START, |s, l| {
            s == Stream::Stdout && l.contains("Press Ctrl-C")
        });
        const PROXY_LINE: &str = "Apps answer through the load balancer on ";
        let proxy = proc
            .lines_of(Stream::Stdout)
            .iter()
            .find_map(|l| l.split_once(PROXY_LINE))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .expect("fabric up prints the load balancer's address")
            .to_string();
        Fabric {
            proc: Some(proc),
            proxy,
            data: data.to_path_buf(),
            _dir: None,
        }
    }

    /// Runs `fabric ARGS` against this fabric.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_env(args, &[])
    }

    /// Runs `fabric ARGS` with extra environment.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = crate::fabric_command();
        cmd.arg("--data-dir").arg(&self.data).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run fabric").into()
    }

    /// `fabric apps deploy` of `manifest` (written to a file of its own)
    /// with `--workers` and `--size 0.1` and `extra` arguments, as the
    /// holder of `key` (the local admin when `None`).
    pub fn deploy_text(
        &self,
        manifest: &str,
        workers: u32,
        extra: &[&str],
        key: Option<&str>,
    ) -> Run {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("app.yaml");
        std::fs::write(&file, manifest).expect("the manifest");
        let workers = workers.to_string();
        let mut args = vec![
            "apps",
            "deploy",
            file.to_str().unwrap_or_default(),
            "--workers",
            &workers,
            "--size",
            "0.1",
        ];
        args.extend_from_slice(extra);
        match key {
            Some(key) => self.cli_env(&args, &[("FABRIC_TOKEN", key)]),
            None => self.cli(&args),
        }
    }

    /// The URL `fabric up` printed for `component` (`queue-svc`,
    /// `objectstore-svc`, `lb-proxy`'s admin port).
    pub fn component_url(&self, component: &str) -> String {
        self.stdout()
            .iter()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(component)).then(|| words.next())?
            })
            .unwrap_or_else(|| panic!("fabric up printed no URL for {component}"))
            .to_string()
    }

    /// What `fabric up` printed on its standard output so far.
    pub fn stdout(&self) -> Vec<String> {
        self.proc
            .as_ref()
            .map(|p| {
                p.lines_of(Stream::Stdout)
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A new tenant's API key, made with the admin key.
    pub async fn tenant(&self, name: &str) -> String {
        control_plane::client::Client::new(&self.url(), &self.admin_key())
            .create_tenant(name)
            .await
            .expect("a tenant is made")
    }

    /// The admin API key.
    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.key"))
            .expect("admin key")
            .trim()
            .to_string()
    }

    /// The control plane's URL.
    pub fn url(&self) -> String {
        std::fs::read_to_string(self.data.join("control-plane.url"))
            .expect("url file")
            .trim()
            .to_string()
    }

    /// `fabric workers APP --output json`.
    pub fn workers(&self, app: &str) -> Vec<serde_json::Value> {
        let run = self.cli(&["workers", app, "--output", "json"]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        run.json().as_array().cloned().unwrap_or_default()
    }

    /// Polls `fabric workers APP` until `pred` holds for the list.
    pub fn wait_workers(
        &self,
        app: &str,
        what: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        self.wait_workers_within(app, what, START, pred)
    }

    /// [`Fabric::wait_workers`], for at most `within`.
    pub fn wait_workers_within(
        &self,
        app: &str,
        what: &str,
        within: std::time::Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        crate::until_sync(what, within, || {
            let w = self.workers(app);
            if pred(&w) { Ok(w) } else { Err(w) }
        })
    }

    /// The lines `fabric up` has logged so far that contain `needle`, for
    /// failure messages.
    pub fn log_lines(&mut self, needle: &str) -> Vec<String> {
        let Some(p) = self.proc.as_mut() else {
            return Vec::new();
        };
        p.drain();
        p.seen
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Kills `fabric up` with SIGKILL, leaving its workers running (a crash).
    pub fn crash(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(Signal::SIGKILL);
            p.wait_exit(START);
        }
    }

    /// Stops `fabric up` with SIGINT and waits for it: it stops its workers.
    pub fn stop(&mut self) -> bool {
        match self.proc.take() {
            Some(mut p) => {
                p.signal(Signal::SIGINT);
                p.wait_exit(START).success()
            }
            None => true,
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The demo's smallest app, `examples/hello.yaml`.
pub const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello.yaml");

/// Whether `fabric workers` lists exactly `n` workers, all ready.
pub fn ready(ws: &[serde_json::Value], n: usize) -> bool {
    ws.len() == n && ws.iter().all(|w| w["state"] == "ready")
}

/// A worker's pid, from `fabric workers`.
pub fn pid(w: &serde_json::Value) -> i32 {
    w["pid"].as_i64().expect("pid") as i32
}

/// Asks a hello worker at `address` to greet, directly; it must answer 200.
pub async fn greet(address: &str) -> serde_json::Value {
    let r = reqwest::get(format!("http://{address}/hello/test"))
        .await
        .expect("worker answers");
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}
