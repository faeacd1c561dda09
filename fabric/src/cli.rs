//! The tenant commands: `apps`, `workers`, `events`, `az`, against the control plane's API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use control_plane::client::{Client, ClientError, Deleted};
use control_plane::model::{AppStatus, DeployRequest, ScaleRequest, WorkerInfo};
use serde::Serialize;

/// Where `fabric up` leaves the control plane's URL for other commands.
pub const URL_FILE: &str = "control-plane.url";

/// How to reach the control plane.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The control plane's URL; default: the local fabric's (from `fabric up`).
    #[arg(long, env = "FABRIC_URL", global = true)]
    server: Option<String>,
    /// An API key; default: the local fabric's admin key, for the local fabric only.
    #[arg(long, env = "FABRIC_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Where a local fabric keeps its state (to find its URL and key).
    #[arg(long, env = "FABRIC_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

/// Output formats.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns, for people.
    Table,
    /// JSON, for scripts.
    Json,
}

/// `fabric apps ...`
#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Deploy an app, or redeploy it side by side; waits until it serves.
    Deploy {
        /// The app manifest (YAML).
        file: PathBuf,
        /// The app's name (default: the manifest's `name`).
        #[arg(long)]
        name: Option<String>,
        /// Workers, 1 to 8.
        #[arg(long)]
        workers: u32,
        /// Worker size in vCores: 0.1, 0.2, 1, 2, 4, 8, 16.
        #[arg(long)]
        size: f64,
        /// Keep queues in queue-svc, shared by all workers, with zero message loss.
        #[arg(long)]
        persistent_queues: bool,
        /// Encrypt persistent queue messages at rest (the default; kept for scripts).
        #[arg(long, conflicts_with = "no_encrypt_queues")]
        encrypt_queues: bool,
        /// Keep persistent queue messages in plaintext at rest (an opt-out).
        #[arg(long)]
        no_encrypt_queues: bool,
        /// Deploy nothing: print, as YAML, the objects this scheduler would
        /// create for the app (with the control plane's settings from its
        /// environment or `--config`). No fabric is needed.
        #[arg(long, value_name = "SCHEDULER")]
        render: Option<Render>,
        /// With `--render`: the control plane's config file.
        #[arg(long, requires = "render")]
        config: Option<PathBuf>,
        /// With `--render`: the tenant the app is rendered for.
        #[arg(long, requires = "render", default_value = "default")]
        tenant: String,
    },
    /// List apps.
    List,
    /// Show one app.
    Show {
        /// The app.
        name: String,
    },
    /// Change an app's worker count (and size: a side-by-side redeploy).
    Scale {
        /// The app.
        name: String,
        /// Workers, 1 to 8.
        #[arg(long)]
        workers: u32,
        /// A new worker size.
        #[arg(long)]
        size: Option<f64>,
    },
    /// Restart an app's workers: a side-by-side redeploy of the same version's
    /// settings, so no request fails.
    Restart {
        /// The app.
        name: String,
    },
    /// Remove an app (its workers drain first).
    Delete {
        /// The app.
        name: String,
    },
}

/// `fabric az ...`
#[derive(Subcommand, Debug)]
pub enum AzCommand {
    /// Take a whole AZ down: its workers move to the others.
    Fail {
        /// The AZ.
        az: String,
    },
    /// Bring an AZ back: the spread is rebuilt.
    Restore {
        /// The AZ.
        az: String,
    },
}

/// Exit codes (besides 0 and clap's 2 for usage).
mod exit {
    pub const API: u8 = 1;
    pub const UNREACHABLE: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const MANIFEST: u8 = 65;
    pub const ROLLED_BACK: u8 = 69;
    pub const NO_INPUT: u8 = 66;
    pub const USAGE: u8 = 64;
    pub const CONFIG: u8 = 78;
}

impl Target {
    /// The local fabric's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(common::config::default_data_dir)
    }

    fn client(&self) -> Result<Client, (u8, String)> {
        let dir = self.data_dir();
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let local = read(URL_FILE);
        let url = self.server.clone().or_else(|| local.clone()).ok_or_else(|| {
            (exit::UNREACHABLE, format!("no control plane: set FABRIC_URL or --server, or start one with `fabric up` (looked in {})", dir.display()))
        })?;
        // The local admin key goes only to the URL stored beside it: another
        // server must be given its own key, never handed this one.
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        let for_local = local.as_deref().is_some_and(|l| same(l, &url));
        let key = match (&self.token, for_local) {
            (Some(token), _) => token.clone(),
            (None, true) => read(control_plane::ADMIN_KEY_FILE).ok_or_else(|| {
                (
                    exit::API,
                    "no API key: set FABRIC_TOKEN or --token".to_string(),
                )
            })?,
            (None, false) => {
                return Err((
                    exit::API,
                    format!(
                        "no API key for {url}: the local fabric's admin key is only sent to the local fabric; set FABRIC_TOKEN or --token"
                    ),
                ));
            }
        };
        Ok(Client::new(&url, &key))
    }
}

fn fail(e: ClientError) -> (u8, String) {
    let code = match &e {
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        ClientError::Api { kind, .. } if kind == "MANIFEST" => exit::MANIFEST,
        ClientError::Api { kind, .. } if kind == "NOT_READY" => exit::ROLLED_BACK,
        ClientError::Api { status, .. } if status.as_u16() == 404 => exit::NOT_FOUND,
        ClientError::Api { .. } => exit::API,
        ClientError::BadStream { .. } => exit::API,
    };
    (code, e.to_string())
}

fn done(result: Result<(), (u8, String)>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("fabric: {message}");
            ExitCode::from(code)
        }
    }
}

fn print<T: Serialize>(output: Output, value: &T, table: impl FnOnce(&T) -> Vec<Vec<String>>) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => {
            let rows = table(value);
            let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
                .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
                .collect();
            for row in rows {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
        }
    }
}

fn app_rows(apps: &Vec<AppStatus>) -> Vec<Vec<String>> {
    let mut rows = vec![
        ["NAME", "VERSION", "WORKERS", "SIZE", "QUEUES", "URL"]
            .map(String::from)
            .to_vec(),
    ];
    for a in apps {
        let queues = match (a.app.persistent_queues, a.app.encrypt_queues) {
            (true, true) => "persistent, encrypted",
            (true, false) => "persistent",
            _ => "transient",
        };
        rows.push(vec![
            a.app.name.clone(),
            format!("v{}", a.app.version),
            format!("{}/{}", a.ready, a.app.workers),
            a.app.size.to_string(),
            queues.into(),
            a.url.clone(),
        ]);
    }
    rows
}

fn worker_rows(workers: &Vec<WorkerInfo>) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "ID", "VERSION", "AZ", "STATE", "ADDRESS", "PID", "RESTARTS", "URL",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for w in workers {
        rows.push(vec![
            w.id.clone(),
            format!("v{}", w.version),
            w.az.clone(),
            format!("{:?}", w.state).to_lowercase(),
            w.address.clone(),
            w.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            w.restarts.to_string(),
            w.url.clone(),
        ]);
    }
    rows
}

fn read_manifest(file: &Path) -> Result<String, (u8, String)> {
    std::fs::read_to_string(file).map_err(|e| (exit::NO_INPUT, format!("{}: {e}", file.display())))
}

/// The manifest in `file`, refused here already, with line and column,
/// before anything is sent.
fn checked_manifest(file: &Path) -> Result<String, (u8, String)> {
    let manifest = read_manifest(file)?;
    match workers::manifest::load(&manifest) {
        Ok(_) => Ok(manifest),
        Err(e) => Err((
            exit::MANIFEST,
            format!("{}: {e}; nothing was deployed", file.display()),
        )),
    }
}

/// What `apps deploy --render` prints the objects of.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// The Kubernetes scheduler's Secret, disruption budget and Pods.
    Kubernetes,
}

/// Runs an `apps` command.
pub async fn apps(target: Target, command: AppsCommand) -> ExitCode {
    done(apps_inner(&target, command).await)
}

async fn apps_inner(target: &Target, command: AppsCommand) -> Result<(), (u8, String)> {
    if let AppsCommand::Deploy {
        file,
        name,
        workers,
        size,
        persistent_queues,
        no_encrypt_queues,
        render: Some(Render::Kubernetes),
        config,
        tenant,
        ..
    } = command
    {
        let manifest = checked_manifest(&file)?;
        let settings = common::config::load::<control_plane::Config>(config.as_deref())
            .map_err(|e| (exit::CONFIG, e.to_string()))?
            .settings;
        let record = control_plane::model::AppRecord::rendered(
            name,
            tenant,
            manifest,
            workers,
            size,
            persistent_queues,
            !no_encrypt_queues,
        )
        .map_err(|e| (exit::USAGE, e))?;
        print!("{}", control_plane::render_kubernetes(&settings, &record));
        return Ok(());
    }
    let client = target.client()?;
    match command {
        AppsCommand::Deploy {
            file,
            name,
            workers,
            size,
            persistent_queues,
            encrypt_queues: _,
            no_encrypt_queues,
            ..
        } => {
            let manifest = checked_manifest(&file)?;
            let req = DeployRequest {
                name,
                manifest,
                workers,
                size,
                persistent_queues,
                encrypt_queues: !no_encrypt_queues,
            };
            let progress = progress(&client, target.output);
            let result = client.deploy(&req).await;
            progress.abort();
            let status = result.map_err(fail)?;
            match target.output {
                Output::Json => print(Output::Json, &status, |_| Vec::new()),
                Output::Table => {
                    println!(
                        "{} v{} is serving on {}/{} workers at {}",
                        status.app.name,
                        status.app.version,
                        status.ready,
                        status.app.workers,
                        status.url
                    );
                }
            }
        }
        AppsCommand::List => {
            let apps = client.apps().await.map_err(fail)?;
            print(target.output, &apps, app_rows);
        }
        AppsCommand::Show { name } => {
            let app = client.app(&name).await.map_err(fail)?;
            print(target.output, &vec![app], app_rows);
        }
        AppsCommand::Scale {
            name,
            workers,
            size,
        } => {
            let progress = progress(&client, target.output);
            let result = client.scale(&name, &ScaleRequest { workers, size }).await;
            progress.abort();
            let app = result.map_err(fail)?;
            print(target.output, &vec![app], app_rows);
        }
        AppsCommand::Restart { name } => {
            let progress = progress(&client, target.output);
            let result = client.restart(&name).await;
            progress.abort();
            let app = result.map_err(fail)?;
            print(target.output, &vec![app], app_rows);
        }
        AppsCommand::Delete { name } => {
            let deleted = client.delete(&name).await.map_err(fail)?;
            if target.output == Output::Table {
                match deleted {
                    Deleted::Purged => println!("{name} deleted, its data purged"),
                    Deleted::Purging => println!(
                        "{name} deleted; its data is being purged, and its name is free once that is done"
                    ),
                }
            }
        }
    }
    Ok(())
}

/// Prints deploy steps as they happen (on stderr, so stdout stays the result).
fn progress(client: &Client, output: Output) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    let started = std::time::Instant::now();
    let from = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tokio::spawn(async move {
        if output == Output::Json {
            return;
        }
        let _ = client
            .follow_events(|e| {
                match e {
                    Ok(e) if e.at_ms < from => {}
                    Ok(e) => eprintln!(
                        "  [{:>5.1}s] {}",
                        started.elapsed().as_secs_f64(),
                        e.message
                    ),
                    Err(bad) => eprintln!("  warning: {bad}"),
                }
                true
            })
            .await;
    })
}

/// Runs `fabric workers N`.
pub async fn workers(target: Target, app: String) -> ExitCode {
    done(
        async {
            let list = target.client()?.workers(&app).await.map_err(fail)?;
            print(target.output, &list, worker_rows);
            Ok(())
        }
        .await,
    )
}

/// Runs `fabric queues N`.
pub async fn queues(target: Target, app: String) -> ExitCode {
    done(
        async {
            let list = target.client()?.queues(&app).await.map_err(fail)?;
            print(target.output, &list, |q| {
                let mut rows = vec![
                    ["QUEUE", "DEPTH", "IN-FLIGHT", "DLQ", "OLDEST", "ENCRYPTED"]
                        .map(String::from)
                        .to_vec(),
                ];
                let n = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
                for info in &q.queues {
                    rows.push(vec![
                        info.name.clone(),
                        n(info.depth),
                        n(info.in_flight),
                        n(info.dlq_depth),
                        info.oldest_age_ms
                            .map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                        if info.encrypted { "yes".into() } else { "no".into() },
                    ]);
                }
                if q.mode == "transient" {
                    eprintln!(
                        "{} runs on transient queues: each worker holds its own in memory \
                         (counts are on each worker's /metrics); deploy with --persistent-queues to share them.",
                        q.app
                    );
                }
                rows
            });
            Ok(())
        }
        .await,
    )
}

/// Runs `fabric events [-f]`.
pub async fn events(target: Target, follow: bool) -> ExitCode {
    done(
        async {
            let client = target.client()?;
            let show = |e: &control_plane::model::Event| match target.output {
                Output::Json => println!("{}", serde_json::to_string(e).unwrap_or_default()),
                Output::Table => println!("{:>6}  {:<16}  {}", e.seq, e.kind, e.message),
            };
            if follow {
                client
                    .follow_events(|e| {
                        // One bad event is told on stderr, not fatal: the
                        // ones after it still matter to whoever is watching.
                        match e {
                            Ok(e) => show(&e),
                            Err(bad) => eprintln!("fabric: warning: {bad}"),
                        }
                        true
                    })
                    .await
                    .map_err(fail)
            } else {
                client.events().await.map_err(fail)?.iter().for_each(show);
                Ok(())
            }
        }
        .await,
    )
}

/// Runs `fabric az fail|restore A`.
pub async fn az(target: Target, command: AzCommand) -> ExitCode {
    done(
        async {
            let client = target.client()?;
            let (az, action) = match &command {
                AzCommand::Fail { az } => (az, "fail"),
                AzCommand::Restore { az } => (az, "restore"),
            };
            let zones = client.az(az, action).await.map_err(fail)?;
            print(target.output, &zones, |zs| {
                let mut rows = vec![vec!["AZ".to_string(), "STATE".to_string()]];
                rows.extend(zs.iter().map(|z| {
                    vec![
                        z.name.clone(),
                        if z.up { "up".into() } else { "down".into() },
                    ]
                }));
                rows
            });
            Ok(())
        }
        .await,
    )
}
