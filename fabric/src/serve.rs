//! `fabric serve <component>`: one component alone, as in a real deployment.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};

use common::config::{self, ServiceConfig};
use common::shutdown::Shutdown;
use serde::Serialize;
use serde::de::DeserializeOwned;
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
    /// One worker of one app (started by the control plane's scheduler).
    Worker,
}

/// Loads `component`'s configuration and serves it until a signal.
pub async fn run(component: Component, file: Option<PathBuf>) -> anyhow::Result<()> {
    let file = file.as_deref();
    match component {
        Component::QueueSvc => serve(queue_svc::NAME, file, Keys::Needed, queue_svc::run).await,
        Component::ObjectstoreSvc => {
            serve(
                objectstore_svc::NAME,
                file,
                Keys::Needed,
                objectstore_svc::run,
            )
            .await
        }
        Component::ControlPlane => {
            serve(control_plane::NAME, file, Keys::Needed, control_plane::run).await
        }
        Component::LbProxy => serve(lb_proxy::NAME, file, Keys::Secret, lb_proxy::run).await,
        // A worker runs a tenant's code: it holds its app token and no key.
        Component::Worker => serve(workers::NAME, file, Keys::None, workers::run).await,
    }
}

/// The async runtime's threads for `component`: a worker's come from its
/// size, as does its memory ceiling, set here.
///
/// A worker whose configuration or manifest is invalid exits 64 here, before
/// anything starts, with one line saying what and where.
pub fn runtime_threads(component: Component, file: Option<&Path>) -> Option<usize> {
    if component != Component::Worker {
        return None;
    }
    let config: workers::Config = config::load(file).unwrap_or_else(|e| e.exit());
    let invalid = |e: workers::StartError| -> ! { config::ConfigError(e.to_string()).exit() };
    if let Err(e) = config.settings.load_app() {
        invalid(e)
    }
    // Set before the runtime starts, so everything the worker holds counts.
    common::memory::set_ceiling(config.settings.size.memory);
    Some(config.settings.size.runtime_threads)
}

/// Whether a component reads the fabric's keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// It seals, opens or verifies: its keys are checked at start.
    Needed,
    /// It only verifies tokens (the load balancer): the fabric secret is
    /// checked at start; it has no use for the master key, so it neither
    /// reads one (from KMS) nor makes one.
    Secret,
    /// It must not read them (a worker).
    None,
}

/// Loads the configuration (exit 64 when invalid), binds, serves until a signal, drains.
async fn serve<S, F, Fut, E>(
    name: &str,
    file: Option<&Path>,
    keys: Keys,
    run: F,
) -> anyhow::Result<()>
where
    S: Serialize + DeserializeOwned + Default,
    F: FnOnce(ServiceConfig<S>, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config: ServiceConfig<S> = config::load(file).unwrap_or_else(|e| e.exit());
    // Keys are checked at start, so a bad key is a config error, not a later failure.
    if keys != Keys::None {
        if let Err(e) = common::secret_file::make_private(&config.data_dir) {
            config::ConfigError(format!("data_dir {}: {e}", config.data_dir.display())).exit();
        }
        if keys == Keys::Needed {
            common::secrets::load_keyring(&config)
                .await
                .unwrap_or_else(|e| e.exit());
        }
        common::secrets::token_key(&config).unwrap_or_else(|e| e.exit());
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("{name}: cannot listen on {}: {e}", config.listen))?;
    let shutdown = Shutdown::new(config.shutdown_grace);
    shutdown.on_signals();
    run(config, listener, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    shutdown.drain().await;
    Ok(())
}
