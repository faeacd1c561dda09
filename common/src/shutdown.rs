//! One shutdown signal for a whole process: cloned into every task, with a grace timeout.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::telemetry::EventKind;

/// The drain signal. Clone it into every listener, checker and consumer loop.
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
}

impl Shutdown {
    /// A signal whose drain waits at most `grace` for tracked tasks.
    pub fn new(grace: Duration) -> Self {
        Shutdown {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            grace,
        }
    }

    /// How long tasks may take to finish once shutdown begins.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Begins shutdown: every clone sees it.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when shutdown begins.
    pub fn triggered(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Triggers shutdown on the first SIGINT or SIGTERM.
    ///
    /// The handlers are installed before this returns, so a signal that
    /// arrives right after (say, once a "ready" line is printed) is caught
    /// rather than killing the process.
    pub fn on_signals(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        let this = self.clone();
        tokio::spawn(async move {
            let signal = wait_for_signal(signals).await;
            tracing::info!(signal, "shutdown signal received; draining");
            this.trigger();
        });
    }

    /// Spawns a named task that shutdown waits for; its exit is logged.
    pub fn spawn<F, E>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.tracker.spawn(async move {
            tracing::debug!(task = name, "task started");
            match task.await {
                Ok(()) => tracing::debug!(task = name, "task exited"),
                Err(e) => tracing::error!(task = name, error = %e, "task failed"),
            }
        })
    }

    /// Triggers shutdown and waits up to the grace period for spawned tasks.
    /// Returns false when the grace period ran out first.
    pub async fn drain(&self) -> bool {
        self.trigger();
        self.tracker.close();
        let done = tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(kind = EventKind::GraceExpired.as_str(), grace = ?self.grace, "grace period expired with tasks still running");
        }
        done
    }
}

async fn wait_for_signal(
    signals: (
        std::io::Result<tokio::signal::unix::Signal>,
        std::io::Result<tokio::signal::unix::Signal>,
    ),
) -> &'static str {
    match signals {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => {
            // Without signal handlers a process can still be stopped; wait forever.
            tracing::error!("could not install signal handlers");
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn drain_waits_for_tasks_that_finish_in_time() {
        let sd = Shutdown::new(Duration::from_secs(5));
        let finished = Arc::new(AtomicBool::new(false));
        let (f, s) = (finished.clone(), sd.clone());
        sd.spawn("worker", async move {
            s.triggered().await;
            f.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        });
        assert!(sd.drain().await);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_grace_period() {
        let sd = Shutdown::new(Duration::from_millis(50));
        sd.spawn("stuck", async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        });
        assert!(!sd.drain().await);
        assert!(sd.is_triggered());
    }
}
