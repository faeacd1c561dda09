//! The tenant commands: `apps`, `workers`, `events`, `az`, `tenants`, `keys`, against the control plane's API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use control_plane::client::{Client, ClientError};
use control_plane::model::WorkerInfo;
use serde::Serialize;

mod apps;
mod tenants;

pub use apps::{AppsCommand, apps};
pub use tenants::{KeysCommand, TenantsCommand, keys, tenants};

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

/// `fabric logs N ...`
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The app.
    app: String,
    /// Keep following new lines.
    #[arg(long, short)]
    follow: bool,
    /// Only this worker's lines (`{app}-{n}`).
    #[arg(long)]
    worker: Option<String>,
    /// Only lines this recent (`10m`, `2h`).
    #[arg(long)]
    since: Option<String>,
    /// Only lines at this level or above (`debug`, `info`, `warn`, `error`).
    #[arg(long)]
    level: Option<String>,
    /// Only lines whose message holds this text.
    #[arg(long)]
    grep: Option<String>,
    /// The newest lines to show first (at most 1000).
    #[arg(long, short = 'n', default_value_t = 100)]
    lines: usize,
}

/// How often `fabric logs -f` asks for new lines.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs `fabric logs N`.
pub async fn logs(target: Target, args: LogsArgs) -> ExitCode {
    done(
        async {
            let client = target.client()?;
            let mut query: Vec<(&str, String)> = [
                ("worker", args.worker),
                ("since", args.since),
                ("level", args.level),
                ("grep", args.grep),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
            query.push(("limit", args.lines.to_string()));
            let show = |l: &control_plane::logs::LogLine| match target.output {
                Output::Json => println!("{}", serde_json::to_string(l).unwrap_or_default()),
                Output::Table => println!("{} {} {:<5} {}", l.at, l.worker, l.level, l.message),
            };
            let mut lines = client.logs(&args.app, &query).await.map_err(fail)?;
            lines.iter().for_each(show);
            if !args.follow {
                return Ok(());
            }
            let mut last = lines.pop().map(|l| l.cursor);
            query.retain(|(k, _)| *k != "limit" && *k != "since");
            query.push(("limit", control_plane::logs::MAX_LIMIT.to_string()));
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let mut asked = query.clone();
                if let Some(after) = &last {
                    asked.push(("after", after.clone()));
                }
                let new = client.logs(&args.app, &asked).await.map_err(fail)?;
                new.iter().for_each(show);
                if let Some(l) = new.last() {
                    last = Some(l.cursor.clone());
                }
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
