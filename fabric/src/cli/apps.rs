//! `fabric apps ...`: deploy (or render), list, show, scale, restart,
//! properties, history, rollback and delete.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use control_plane::client::{Client, ClientError, Deleted};
use control_plane::model::{AppStatus, DeployRequest, PropertiesRequest, ScaleRequest};

use super::{Output, Target, done, exit, fail, print};

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
        /// A property, `name=value`, over the manifest's (repeatable); the
        /// app keeps those set before.
        #[arg(long = "property", value_name = "NAME=VALUE")]
        properties: Vec<String>,
        /// Properties from a file: a YAML map, or `name=value` lines (`.properties`).
        #[arg(long, value_name = "FILE")]
        properties_file: Option<PathBuf>,
        /// A secure property, `name=value`: write-only, shown as `********`.
        #[arg(long = "secure-property", value_name = "NAME=VALUE")]
        secure_properties: Vec<String>,
        /// Deploy as a canary beside the serving version, taking this
        /// percentage of the app's requests (1 to 99) until `apps promote`
        /// or `apps abort`.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=99))]
        canary: Option<u8>,
    },
    /// Set properties (`name=value`): a new configuration, deployed side by side.
    Set {
        /// The app.
        name: String,
        /// Properties to set.
        #[arg(value_name = "NAME=VALUE")]
        properties: Vec<String>,
        /// A secure property to set (repeatable).
        #[arg(long = "secure", value_name = "NAME=VALUE")]
        secure: Vec<String>,
    },
    /// Remove properties (plain or secure): a new configuration, deployed side by side.
    Unset {
        /// The app.
        name: String,
        /// The properties' names.
        #[arg(required = true)]
        properties: Vec<String>,
    },
    /// The app's last configurations (deploys, property changes, resizes,
    /// restarts, rollbacks), newest first.
    History {
        /// The app.
        name: String,
    },
    /// Deploy a kept configuration again, side by side (by default the last
    /// one that served before the serving one).
    Rollback {
        /// The app.
        name: String,
        /// The configuration's number (see `history`).
        #[arg(long)]
        to: Option<u64>,
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
    /// Make an app's canary its serving version: it takes every request,
    /// and the version it ran beside drains and stops.
    Promote {
        /// The app.
        name: String,
    },
    /// Retire an app's canary: the serving version takes every request again.
    Abort {
        /// The app.
        name: String,
    },
    /// Let an app scale by itself between --min and --max workers, to the
    /// count the busiest of its signals asks for (at least one target), or
    /// turn that off (--off).
    Autoscale {
        /// The app.
        name: String,
        /// Workers at least (1 to 8).
        #[arg(long, required_unless_present = "off")]
        min: Option<u32>,
        /// Workers at most (min to 8).
        #[arg(long, required_unless_present = "off")]
        max: Option<u32>,
        /// Messages of backlog (waiting and in flight, over the app's
        /// persistent queues) per worker.
        #[arg(long)]
        queue_backlog: Option<u32>,
        /// CPU per worker, in percent of its size's vCores.
        #[arg(long)]
        cpu: Option<u32>,
        /// HTTP requests in flight per worker, in percent of its size's
        /// concurrency ceiling.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Turn autoscaling off: the app keeps the workers it runs.
        #[arg(long, conflicts_with_all = ["min", "max", "queue_backlog", "cpu", "concurrency"])]
        off: bool,
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
            properties,
            properties_file,
            secure_properties,
            canary,
            ..
        } => {
            let manifest = checked_manifest(&file)?;
            let usage = |e: String| (exit::USAGE, e);
            let mut set = match &properties_file {
                Some(f) => crate::properties::read_file(f).map_err(usage)?,
                None => Default::default(),
            };
            set.extend(crate::properties::parse_pairs(&properties).map_err(usage)?);
            let req = DeployRequest {
                name,
                manifest,
                workers,
                size,
                persistent_queues,
                encrypt_queues: !no_encrypt_queues,
                properties: set,
                secure_properties: crate::properties::parse_pairs(&secure_properties)
                    .map_err(usage)?,
                canary,
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
            let (policy, canary) = (app.app.autoscale.clone(), app.canary.clone());
            print(target.output, &vec![app], app_rows);
            if let (Some(p), Output::Table) = (policy, target.output) {
                println!("autoscaling: {}", control_plane::model::describe_policy(&p));
            }
            if let (Some(c), Output::Table) = (canary, target.output) {
                println!(
                    "canary: v{} takes {}% of the requests ({} workers ready); `fabric apps promote {name}` or `abort {name}`",
                    c.version, c.weight, c.ready
                );
            }
        }
        AppsCommand::Promote { name } => {
            let app = client.promote(&name).await.map_err(fail)?;
            print(target.output, &vec![app], app_rows);
        }
        AppsCommand::Abort { name } => {
            let app = client.abort_canary(&name).await.map_err(fail)?;
            print(target.output, &vec![app], app_rows);
        }
        AppsCommand::Autoscale {
            name,
            min,
            max,
            queue_backlog,
            cpu,
            concurrency,
            off,
        } => {
            let policy = (!off).then(|| control_plane::model::ScalePolicy {
                min: min.unwrap_or(1),
                max: max.unwrap_or(1),
                queue_backlog,
                cpu,
                concurrency,
            });
            if let Some(p) = &policy {
                p.check().map_err(|e| (exit::USAGE, e))?;
            }
            let app = client
                .autoscale(&name, policy.as_ref())
                .await
                .map_err(fail)?;
            print(target.output, &vec![app.clone()], app_rows);
            if target.output == Output::Table {
                match &app.app.autoscale {
                    Some(p) => {
                        println!("autoscaling: {}", control_plane::model::describe_policy(p))
                    }
                    None => println!("autoscaling: off"),
                }
            }
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
        AppsCommand::Set {
            name,
            properties,
            secure,
        } => {
            let usage = |e: String| (exit::USAGE, e);
            let req = PropertiesRequest {
                set: crate::properties::parse_pairs(&properties).map_err(usage)?,
                set_secure: crate::properties::parse_pairs(&secure).map_err(usage)?,
                unset: Vec::new(),
            };
            redeployed(&client, target.output, client.set_properties(&name, &req)).await?;
        }
        AppsCommand::Unset { name, properties } => {
            let req = PropertiesRequest {
                unset: properties,
                ..Default::default()
            };
            redeployed(&client, target.output, client.set_properties(&name, &req)).await?;
        }
        AppsCommand::History { name } => {
            let kept = client.history(&name).await.map_err(fail)?;
            print(target.output, &kept, crate::properties::history_rows);
        }
        AppsCommand::Rollback { name, to } => {
            redeployed(&client, target.output, client.rollback(&name, to)).await?;
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

/// Waits for a side-by-side redeploy with its progress shown, and prints the app.
async fn redeployed(
    client: &Client,
    output: Output,
    change: impl std::future::Future<Output = Result<AppStatus, ClientError>>,
) -> Result<(), (u8, String)> {
    let progress = progress(client, output);
    let result = change.await;
    progress.abort();
    let app = result.map_err(fail)?;
    print(output, &vec![app], app_rows);
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
