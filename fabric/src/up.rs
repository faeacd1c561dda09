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
    /// Where keys and local state live.
    #[arg(long, env = "FABRIC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Port of the load balancer's data path: apps answer at `{app}.{domain}:PORT`.
    #[arg(long, env = "FABRIC_PROXY_PORT", default_value_t = 8080)]
    proxy_port: u16,
    /// The domain apps answer under.
    #[arg(long, env = "FABRIC_DOMAIN", default_value = "fabric.localhost")]
    domain: String,
}

/// Starts every component, prints where each answers, and runs until a signal.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(common::config::default_data_dir);
    let config: ServiceConfig = ServiceConfig {
        data_dir: data_dir.clone(),
        ..ServiceConfig::default()
    };
    let keyring = common::secrets::keyring(&config).unwrap_or_else(|e| e.exit());
    common::secrets::token_key(&config).unwrap_or_else(|e| e.exit());

    let shutdown = Shutdown::new(Duration::from_secs(10));
    shutdown.on_signals();
    // The data path binds first, so a taken port stops `up` before anything starts.
    let proxy_listener = TcpListener::bind((config.listen.ip(), args.proxy_port))
        .await
        .map_err(|e| anyhow::anyhow!("lb-proxy: cannot listen on port {}: {e}", args.proxy_port))?;
    let proxy_addr = proxy_listener.local_addr()?;
    let mut proxy_listener = Some(proxy_listener);
    let mut lines = Vec::new();
    for component in Component::ALL {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        lines.push(format!(
            "  {:<16} http://{addr}  (/healthz /readyz /metrics)",
            component.name()
        ));
        let (config, sd) = (config.clone(), shutdown.clone());
        if let Some(http) = proxy_listener.take_if(|_| component == Component::LbProxy) {
            let settings = lb_proxy::Settings {
                proxy_listen: proxy_addr,
                domain: args.domain.clone(),
                ..lb_proxy::Settings::default()
            };
            let listeners = lb_proxy::Listeners {
                admin: listener,
                http,
                https: None,
            };
            shutdown.spawn(component.name(), async move {
                lb_proxy::serve(config.with_settings(settings), listeners, sd).await
            });
            continue;
        }
        shutdown.spawn(component.name(), async move {
            component.run_with(&config, listener, sd).await
        });
    }
    println!(
        "Worker Fabric is up (data in {}, master key version {}).",
        data_dir.display(),
        keyring.newest_version()
    );
    println!("Components, serving their health and metrics endpoints:");
    for line in &lines {
        println!("{line}");
    }
    println!(
        "Apps answer through the load balancer on {proxy_addr} as {{app}}.{} (or with that Host header).",
        args.domain
    );
    println!(
        "The queue and object store APIs, workers, routing and the demo app are not built yet;"
    );
    println!("this build runs the foundation they stand on. Press Ctrl-C to stop.");
    shutdown.triggered().await;
    let clean = shutdown.drain().await;
    println!(
        "Worker Fabric stopped{}.",
        if clean { "" } else { " (grace period expired)" }
    );
    Ok(())
}
