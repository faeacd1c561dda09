//! What the control plane sends out: each route table to the load
//! balancers it pushes to (again, unchanged, every few seconds, for one that
//! restarted), and each event to the events webhook.

use std::time::Duration;

use common::shutdown::Shutdown;
use common::token::TokenKey;
use tokio::sync::watch;

use crate::{model, supervisor};

/// The client for the control plane's own outbound calls (routes, webhooks).
pub(crate) fn outbound_http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// How long the internal token sent with each route push is valid: issued
/// afresh for every push, so this only has to cover the request itself and
/// the clocks of two machines disagreeing; a token that leaks is soon useless.
const ROUTES_TOKEN_TTL: Duration = Duration::from_secs(300);

/// How often the current route table is sent again, unchanged: a load
/// balancer that restarted (and starts empty) serves again within this.
const ROUTES_RESEND: Duration = Duration::from_secs(5);

/// Pushes every new route table to `target` until shutdown, with an internal
/// token from `key` (the load balancer takes tables from nobody else); a
/// failed push is retried (with the newest table) until it lands.
pub(crate) async fn push_routes(
    sup: supervisor::Supervisor,
    target: String,
    key: TokenKey,
    shutdown: Shutdown,
) {
    let tables = sup.routes();
    let id = sup.route_target();
    let landed = move |version| sup.route_landed(id, version);
    send_routes(tables, target, key, ROUTES_RESEND, landed, shutdown).await;
}

/// Sends every table `tables` holds to `target`, each retried until it
/// lands (then `landed` is told its version), and the current one again
/// every `resend`.
async fn send_routes(
    mut tables: watch::Receiver<common::routes::RouteTable>,
    target: String,
    key: TokenKey,
    resend: Duration,
    landed: impl Fn(u64),
    shutdown: Shutdown,
) {
    let http = outbound_http();
    loop {
        let table = tables.borrow_and_update().clone();
        loop {
            match put_routes(&http, &target, &key, &table).await {
                Ok(r) if r.status().is_success() => {
                    landed(table.version);
                    break;
                }
                Ok(r) => {
                    tracing::warn!(%target, status = %r.status(), version = table.version, "route push refused")
                }
                Err(e) => {
                    tracing::warn!(%target, error = %e, version = table.version, "route push failed")
                }
            }
            tokio::select! {
                () = shutdown.triggered() => return,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if tables.has_changed().unwrap_or(false) {
                break;
            }
        }
        tokio::select! {
            () = shutdown.triggered() => return,
            changed = tables.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(resend) => {}
        }
    }
}

/// One push of `table` to the load balancer at `target`, with a fresh
/// internal token from `key`.
async fn put_routes(
    http: &reqwest::Client,
    target: &str,
    key: &TokenKey,
    table: &common::routes::RouteTable,
) -> reqwest::Result<reqwest::Response> {
    http.put(target)
        .bearer_auth(key.issue_internal(ROUTES_TOKEN_TTL))
        .json(table)
        .send()
        .await
}

/// Sends every event to `url`, in order, each retried with back-off until it
/// lands. Events are read from the broadcast feed; if the webhook is down so
/// long that the feed overflows, the skipped events are counted in a warning
/// (they stay readable with `fabric events`).
pub(crate) async fn send_events(
    mut rx: tokio::sync::broadcast::Receiver<model::Event>,
    url: String,
    shutdown: Shutdown,
) {
    use tokio::sync::broadcast::error::RecvError;
    let http = outbound_http();
    loop {
        let event = tokio::select! {
            () = shutdown.triggered() => return,
            e = rx.recv() => match e {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "events webhook fell behind; events skipped");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        let mut backoff =
            common::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        loop {
            match http.post(&url).json(&event).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => {
                    tracing::warn!(status = %r.status(), seq = event.seq, "events webhook refused an event")
                }
                Err(e) => tracing::warn!(error = %e, seq = event.seq, "events webhook unreachable"),
            }
            tokio::select! {
                () = shutdown.triggered() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load balancer's admin `/routes` stand-in: 200 for this fabric's
    /// internal token, 401 otherwise.
    async fn receiver(key: TokenKey) -> String {
        use axum::http::{HeaderMap, StatusCode};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/routes",
            axum::routing::put(move |headers: HeaderMap| async move {
                match common::http::bearer_token(&headers).map(|t| key.verify_internal(t)) {
                    Some(Ok(_)) => StatusCode::OK,
                    _ => StatusCode::UNAUTHORIZED,
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/routes")
    }

    #[tokio::test]
    async fn route_pushes_carry_an_internal_token_of_this_fabric() {
        let key = TokenKey::generate();
        let table = common::routes::RouteTable::default();
        let http = outbound_http();
        let ours = receiver(key.clone()).await;
        let r = put_routes(&http, &ours, &key, &table).await.unwrap();
        assert_eq!(r.status(), 200);
        // Another fabric's load balancer refuses it.
        let theirs = receiver(TokenKey::generate()).await;
        let r = put_routes(&http, &theirs, &key, &table).await.unwrap();
        assert_eq!(r.status(), 401);
    }

    #[tokio::test]
    async fn the_current_route_table_is_sent_again_for_a_balancer_that_restarted() {
        let key = TokenKey::generate();
        let (received, mut puts) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/routes",
            axum::routing::put(
                move |axum::Json(t): axum::Json<common::routes::RouteTable>| {
                    let received = received.clone();
                    async move {
                        let _ = received.send(t.version);
                        "ok"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}/routes", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (tables, rx) = watch::channel(common::routes::RouteTable {
            version: 7,
            ..Default::default()
        });
        let shutdown = Shutdown::new(Duration::from_secs(1));
        let sending = tokio::spawn(send_routes(
            rx,
            target,
            key,
            Duration::from_millis(50),
            |_| {},
            shutdown.clone(),
        ));
        // Sent once, then again unchanged (a restarted balancer starts empty).
        assert_eq!(puts.recv().await, Some(7));
        assert_eq!(puts.recv().await, Some(7));
        tables.send_modify(|t| t.version = 8);
        while puts.recv().await != Some(8) {}
        shutdown.trigger();
        sending.await.unwrap();
    }
}
