//! `fabric serve <component>`: one component alone, as in a real deployment.

use std::path::PathBuf;

use common::config::{self, ServiceConfig};
use common::shutdown::Shutdown;
use tokio::net::TcpListener;

/// The components `fabric serve` can run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The queue service.
    QueueSvc,
    /// The object store service.
    ObjectstoreSvc,
    /// The control plane.
    ControlPlane,
    /// The load balancer.
    LbProxy,
}

impl Component {
    /// Every component, in start order.
    pub const ALL: [Component; 4] = [
        Component::QueueSvc,
        Component::ObjectstoreSvc,
        Component::ControlPlane,
        Component::LbProxy,
    ];

    /// The component's name.
    pub fn name(self) -> &'static str {
        match self {
            Component::QueueSvc => queue_svc::NAME,
            Component::ObjectstoreSvc => objectstore_svc::NAME,
            Component::ControlPlane => control_plane::NAME,
            Component::LbProxy => lb_proxy::NAME,
        }
    }

    /// Runs the component on `listener` until `shutdown`.
    pub async fn run(
        self,
        config: ServiceConfig,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> std::io::Result<()> {
        match self {
            Component::QueueSvc => queue_svc::run(config, listener, shutdown).await,
            Component::ObjectstoreSvc => objectstore_svc::run(config, listener, shutdown).await,
            Component::ControlPlane => control_plane::run(config, listener, shutdown).await,
            Component::LbProxy => lb_proxy::run(config, listener, shutdown).await,
        }
    }
}

/// Loads the configuration (exit 64 when invalid), binds, serves until a signal.
pub async fn run(component: Component, file: Option<PathBuf>) -> anyhow::Result<()> {
    let config: ServiceConfig = config::load(file.as_deref()).unwrap_or_else(|e| e.exit());
    // Keys are checked at start, so a bad key is a config error, not a later failure.
    common::secrets::keyring(&config).unwrap_or_else(|e| e.exit());
    common::secrets::token_key(&config).unwrap_or_else(|e| e.exit());
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot listen on {}: {e}",
            component.name(),
            config.listen
        )
    })?;
    let shutdown = Shutdown::new(config.shutdown_grace);
    shutdown.on_signals();
    component.run(config, listener, shutdown.clone()).await?;
    shutdown.drain().await;
    Ok(())
}
