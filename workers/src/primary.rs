//! Primary election: one worker of an app holds the app's `primary` lease in
//! the object store, and only it runs the app's schedules.
//!
//! The lease is renewed every third of its TTL. A worker counts itself
//! primary only until a safety margin before the lease could lapse, so when
//! renewals fail it steps down before another can take over; a worker that
//! stops releases the lease so another takes over at once.

use std::time::Duration;

use common::shutdown::Shutdown;
use objectstore_svc::client::{Client, Lease};
use tokio::sync::watch;
use tokio::time::Instant;

/// The lease every worker of an app competes for.
pub const LEASE: &str = "primary";

/// Starts competing for the app's primary lease as `holder`; the receiver
/// says whether this worker is primary now.
pub fn start(
    client: Client,
    holder: String,
    ttl: Duration,
    shutdown: &Shutdown,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let sd = shutdown.clone();
    shutdown.spawn("primary-election", async move {
        elect(client, holder, ttl, tx, sd).await;
        Ok::<_, std::convert::Infallible>(())
    });
    rx
}

async fn elect(
    client: Client,
    holder: String,
    ttl: Duration,
    tx: watch::Sender<bool>,
    shutdown: Shutdown,
) {
    let every = ttl / 3;
    let mut held: Option<(Lease, Instant)> = None;
    loop {
        let asked = Instant::now();
        let result = match &held {
            Some((lease, _)) => client.renew(lease, ttl).await,
            None => client.acquire(LEASE, &holder, ttl).await,
        };
        match result {
            Ok(lease) => {
                if held.is_none() {
                    tracing::info!(
                        holder,
                        token = lease.token,
                        "became the app's primary worker"
                    );
                }
                // Trusted until a third of the TTL before it could lapse,
                // counted from before the call.
                held = Some((lease, asked + ttl - every));
            }
            Err(e) if e.is_conflict() => {
                if held.take().is_some() {
                    tracing::warn!(holder, "lost the primary lease");
                }
            }
            Err(e) => {
                tracing::warn!(holder, error = %e, "primary lease call failed");
                if held
                    .as_ref()
                    .is_some_and(|(_, until)| Instant::now() >= *until)
                {
                    tracing::warn!(
                        holder,
                        "stepping down: the primary lease could not be renewed"
                    );
                    held = None;
                }
            }
        }
        tx.send_if_modified(|primary| {
            let now = held.is_some();
            std::mem::replace(primary, now) != now
        });
        let next = match &held {
            Some((_, until)) => (asked + every).min(*until),
            None => asked + every,
        };
        tokio::select! {
            () = shutdown.triggered() => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    tx.send_replace(false);
    if let Some((lease, _)) = held
        && let Err(e) = client.release(&lease).await
    {
        tracing::warn!(holder, error = %e, "could not release the primary lease; it lapses");
    }
}
