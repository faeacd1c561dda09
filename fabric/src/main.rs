//! `fabric`: run a whole fabric here (`fabric up`) or one component (`fabric serve`).
#![forbid(unsafe_code)]

mod cli;
mod master_key;
mod properties;
mod serve;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Worker Fabric: deploy apps onto workers spread over availability zones.
#[derive(Parser, Debug)]
#[command(name = "fabric", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: cli::Target,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole fabric on this machine until Ctrl-C.
    Up(up::Args),
    /// Run one component alone, configured by a TOML file and FABRIC_* variables.
    Serve {
        /// The component to run.
        component: serve::Component,
        /// A TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Deploy, list, show, scale and delete apps.
    #[command(subcommand)]
    Apps(cli::AppsCommand),
    /// An app's workers: id, AZ, state, address, restarts, direct URL.
    Workers {
        /// The app.
        app: String,
    },
    /// An app's queues: depth, in-flight, dead letters, age of the oldest message.
    Queues {
        /// The app.
        app: String,
    },
    /// An app's log: its workers' lines, oldest first.
    Logs(cli::LogsArgs),
    /// Alerts and changes: workers down/up/moved, AZs, deploy steps.
    Events {
        /// Keep following new events.
        #[arg(long, short)]
        follow: bool,
    },
    /// Take a whole AZ down, or bring it back (local scheduler).
    #[command(subcommand)]
    Az(cli::AzCommand),
    /// Create, list and delete tenants (the admin key only).
    #[command(subcommand)]
    Tenants(cli::TenantsCommand),
    /// Your tenant's API keys: create, list, revoke (to rotate them).
    #[command(subcommand)]
    Keys(cli::KeysCommand),
    /// The fabric's master keyring: add a KMS-wrapped version (rotation).
    #[command(subcommand, name = "master-key")]
    MasterKey(master_key::MasterKeyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = common::telemetry::init("fabric") {
        e.exit();
    }
    if matches!(cli.command, Command::Up(_) | Command::Serve { .. }) {
        // Whatever the fabric writes (keys, stores, logs) is its user's alone.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve { component, config } = &cli.command
        && let Some(threads) = serve::runtime_threads(*component, config.as_deref())
    {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fabric: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = cli.target;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args, target.data_dir()).await.map(Ok),
            Command::Serve { component, config } => serve::run(component, config).await.map(Ok),
            Command::Apps(c) => Ok(Err(cli::apps(target, c).await)),
            Command::Workers { app } => Ok(Err(cli::workers(target, app).await)),
            Command::Queues { app } => Ok(Err(cli::queues(target, app).await)),
            Command::Logs(args) => Ok(Err(cli::logs(target, args).await)),
            Command::Events { follow } => Ok(Err(cli::events(target, follow).await)),
            Command::Az(c) => Ok(Err(cli::az(target, c).await)),
            Command::Tenants(c) => Ok(Err(cli::tenants(target, c).await)),
            Command::Keys(c) => Ok(Err(cli::keys(target, c).await)),
            Command::MasterKey(c) => master_key::run(c, target.data_dir()).await.map(Ok),
        }
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(code)) => code,
        Err(e) => {
            eprintln!("fabric: {e:#}");
            ExitCode::FAILURE
        }
    }
}
