//! The static route file: reloaded whole when its modification time or size changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::shutdown::Shutdown;

use crate::routes::{RouteError, RouteTable, Routes};

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Loads the file once; an error here stops the proxy from starting.
pub fn load(path: &Path, routes: &Routes) -> Result<(), RouteError> {
    routes.replace(RouteTable::from_file(path)?)
}

/// Checks the file every `every` until shutdown; a bad new version is logged and the old table kept.
pub async fn watch(
    path: PathBuf,
    every: Duration,
    routes: Arc<Routes>,
    shutdown: Shutdown,
) -> Result<(), RouteError> {
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every.max(Duration::from_millis(50))) => {}
            () = shutdown.triggered() => return Ok(()),
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match load(&path, &routes) {
            Ok(()) => tracing::info!(path = %path.display(), "route file reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "route file not reloaded; keeping the table in use")
            }
        }
    }
}
