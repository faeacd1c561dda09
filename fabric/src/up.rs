//! `fabric up`: every component of the fabric in this process, on loopback, until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use common::config::ServiceConfig;
use common::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::serve::Component;

/// Options of `fabric up`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Availability zones (labels; each gets its own loopback range).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c")]
    azs: Vec<String>,
    /// Deploy the demo app (examples/hello.yaml, two workers) once the fabric is up.
    #[arg(long)]
    demo: bool,
}

/// The demo app `--demo` deploys.
const DEMO: &str = include_str!("../../examples/hello.yaml");

async fn deploy_demo(url: &str, key: &str) -> anyhow::Result<()> {
    let client = control_plane::client::Client::new(url, key);
    let req = control_plane::model::DeployRequest {
        name: None,
        manifest: DEMO.to_string(),
        workers: 2,
        size: 0.1,
        persistent_queues: false,
        encrypt_queues: false,
    };
    let app = client.deploy(&req).await?;
    println!(
        "Demo app {} v{} is serving on {}/{} workers:",
        app.app.name, app.app.version, app.ready, app.app.workers
    );
    for w in client.workers(&app.app.name).await? {
        println!(
            "  {:<8} AZ {}  curl http://{}/hello/you",
            w.id, w.az, w.address
        );
    }
    Ok(())
}

/// Starts every component, prints where each answers, and runs until a signal;
/// then drains and stops everything it started, workers included.
pub async fn run(args: Args, data_dir: PathBuf) -> anyhow::Result<()> {
    let config: ServiceConfig = ServiceConfig {
        data_dir: data_dir.clone(),
        ..ServiceConfig::default()
    };
    let keyring = common::secrets::keyring(&config).unwrap_or_else(|e| e.exit());
    common::secrets::token_key(&config).unwrap_or_else(|e| e.exit());

    let shutdown = Shutdown::new(Duration::from_secs(10));
    shutdown.on_signals();
    let mut lines = Vec::new();
    for component in Component::ALL
        .into_iter()
        .filter(|c| *c != Component::ControlPlane)
    {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        lines.push(format!(
            "  {:<16} http://{addr}  (/healthz /readyz /metrics)",
            component.name()
        ));
        let (config, sd) = (config.clone(), shutdown.clone());
        shutdown.spawn(component.name(), async move {
            component.run_with(&config, listener, sd).await
        });
    }

    let listener = TcpListener::bind(config.listen).await?;
    let cp_url = format!("http://{}", listener.local_addr()?);
    let cp_config = config.with_settings(control_plane::Settings {
        azs: args.azs,
        ..Default::default()
    });
    let admin_key = control_plane::admin_key(&data_dir)?;
    {
        let sd = shutdown.clone();
        shutdown.spawn(control_plane::NAME, async move {
            control_plane::run(cp_config, listener, sd).await
        });
    }
    let url_file = data_dir.join(crate::cli::URL_FILE);
    std::fs::write(&url_file, format!("{cp_url}\n"))?;

    println!(
        "Worker Fabric is up (data in {}, master key version {}).",
        data_dir.display(),
        keyring.newest_version()
    );
    println!("  control-plane    {cp_url}  (the API `fabric apps ...` talks to)");
    for line in &lines {
        println!("{line}");
    }
    println!("Admin API key: {admin_key}");
    if args.demo
        && let Err(e) = deploy_demo(&cp_url, &admin_key).await
    {
        eprintln!("fabric: the demo app did not deploy: {e}");
    }
    println!("Other `fabric` commands on this machine find this fabric by themselves, e.g.:");
    println!("  fabric apps deploy examples/hello.yaml --workers 2 --size 0.1");
    println!("Apps run on transient queues for now: persistent queues, the object store and");
    println!("routing through the load balancer are being built. Press Ctrl-C to stop.");
    shutdown.triggered().await;
    let clean = shutdown.drain().await;
    let _ = std::fs::remove_file(&url_file);
    println!(
        "Worker Fabric stopped{}.",
        if clean { "" } else { " (grace period expired)" }
    );
    Ok(())
}
