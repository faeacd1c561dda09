//! Active health checks: every worker's health path probed periodically, on
//! its ops address when the route table gives one; rise and fall thresholds
//! decide when it goes out and comes back.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use common::shutdown::Shutdown;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::endpoint::{Health, Probed};
use crate::routes::Routes;
use crate::settings::Settings;

/// Probes every worker of the live table each `health_interval` until shutdown.
pub async fn probe_loop(
    settings: Settings,
    routes: Arc<Routes>,
    shutdown: Shutdown,
) -> Result<(), std::convert::Infallible> {
    if settings.health_interval.is_zero() {
        return Ok(());
    }
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.health_timeout));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector);
    loop {
        tokio::select! {
            () = tokio::time::sleep(settings.health_interval) => {}
            () = shutdown.triggered() => return Ok(()),
        }
        let table = routes.load();
        // Health is kept by worker address; the probe goes where the
        // worker serves its ops endpoints, which may be another port.
        let workers: HashMap<&str, (&str, &Arc<Health>)> = table
            .apps
            .values()
            .flat_map(|a| a.endpoints())
            .map(|w| (&*w.address, (&*w.probe, &w.health)))
            .collect();
        let probes = workers.into_iter().map(|(addr, (probe, health))| {
            let client = client.clone();
            let uri = format!("http://{probe}{}", settings.health_path);
            async move {
                let ok = match uri.parse() {
                    Ok(uri) => matches!(
                        tokio::time::timeout(settings.health_timeout, client.get(uri)).await,
                        Ok(Ok(r)) if r.status().is_success()
                    ),
                    Err(_) => false,
                };
                if !ok {
                    tracing::debug!(addr, probe, "health probe failed");
                }
                match health.probed(ok, settings.health_rise, settings.health_fall) {
                    Some(Probed::Back { rises }) => {
                        tracing::info!(addr, rises, "worker back after good probes");
                    }
                    Some(Probed::Out { falls }) => {
                        tracing::warn!(addr, falls, "worker out after failed probes");
                    }
                    None => {}
                }
            }
        });
        futures::future::join_all(probes).await;
    }
}
