//! The runtime manager: deploys apps, places workers across AZs, heals them, publishes routes.
//!
//! So far this crate serves only its operational endpoints (`/healthz`,
//! `/readyz`, `/metrics`); its API is built on top of [`run`].
#![forbid(unsafe_code)]

use common::config::{NoSettings, ServiceConfig};
use common::shutdown::Shutdown;
use tokio::net::TcpListener;

/// The component's name in logs and metrics.
pub const NAME: &str = "control-plane";

/// The component's configuration: the common service fields and its own settings.
pub type Config = ServiceConfig<NoSettings>;

/// Serves the component on `listener` until `shutdown`.
pub async fn run(
    _config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    common::http::serve_ops_only(NAME, listener, shutdown).await
}
