//! Live updates: server-sent events whose data are HTML fragments that
//! htmx swaps into the page (`sse-swap="name"`). Each stream renders its
//! page's parts every tick, through the API with the session's key, and
//! sends only the parts that changed; it ends when the session does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;

use super::apps::{AppData, app_rows, chart_view, events_view, queues_view, summary, workers_view};
use super::calls::Refused;
use super::session::Session;
use super::{Console, Signed, deploy, zones};
use crate::model::AppStatus;

/// How often a page's parts are rendered again.
pub const TICK: Duration = Duration::from_secs(1);

/// Named HTML fragments of one tick.
type Parts = Vec<(&'static str, String)>;

/// An SSE event carrying `html` for `sse-swap="name"`. A carriage return
/// (which SSE cannot carry) is sent as its character reference.
pub(super) fn event(name: &'static str, html: &str) -> Event {
    Event::default()
        .event(name)
        .data(html.replace('\r', "&#13;"))
}

/// The stream of `render`'s parts every `every`, each sent when it changed,
/// while `who`'s session lives and the API answers; a refusal other than a
/// rate limit ends it.
fn stream<F, Fut>(
    console: Console,
    who: Session,
    every: Duration,
    mut render: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Parts, Refused>> + Send,
{
    struct State {
        sent: HashMap<&'static str, String>,
        pending: Vec<Event>,
        tick: u64,
    }
    let state = State {
        sent: HashMap::new(),
        pending: Vec::new(),
        tick: 0,
    };
    futures::stream::unfold(state, move |mut s| {
        let (console, who) = (console.clone(), who.clone());
        // Lazy: run only when this poll renders.
        let rendered = render(s.tick);
        async move {
            if let Some(e) = s.pending.pop() {
                return Some((Ok(e), s));
            }
            if s.tick > 0 {
                tokio::time::sleep(every).await;
            }
            if !console.sessions.touch(&who.id) {
                return None;
            }
            s.tick += 1;
            match rendered.await {
                Ok(parts) => {
                    for (name, html) in parts {
                        if s.sent.get(name) != Some(&html) {
                            s.pending.push(event(name, &html));
                            s.sent.insert(name, html);
                        }
                    }
                }
                Err(e) if e.status == axum::http::StatusCode::TOO_MANY_REQUESTS => {}
                Err(_) => return None,
            }
            let e = s
                .pending
                .pop()
                .unwrap_or_else(|| Event::default().comment("unchanged"));
            Some((Ok(e), s))
        }
    })
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /console/apps/live`: the apps table's rows.
pub(super) async fn apps(State(console): State<Console>, Signed(who, _): Signed) -> Response {
    let (c, w) = (console.clone(), who.clone());
    sse(stream(console, who, TICK, move |_| {
        let (c, w) = (c.clone(), w.clone());
        async move {
            let apps: Vec<AppStatus> = c.get(&w.key, "/v1/apps").await?;
            Ok(vec![("apps", app_rows(&apps).into_string())])
        }
    }))
}

/// `GET /console/apps/{name}/live`: an app's summary, workers, events and
/// (every other tick) queues and depth chart.
pub(super) async fn app(
    State(console): State<Console>,
    Signed(who, _): Signed,
    Path(name): Path<String>,
) -> Response {
    let (c, w) = (console.clone(), who.clone());
    sse(stream(console, who, TICK, move |tick| {
        let (c, w, name) = (c.clone(), w.clone(), name.clone());
        async move {
            let with_queues = tick % 2 == 0;
            let d = AppData::load(&c, &w, &name, with_queues).await?;
            let mut parts = vec![
                ("summary", summary(&d.status).into_string()),
                ("workers", workers_view(&d.zones, &d.workers).into_string()),
                ("events", events_view(&d.events).into_string()),
            ];
            if with_queues {
                parts.push((
                    "queues",
                    queues_view(&name, d.queues.as_ref()).into_string(),
                ));
                let samples = c.samples.of(&d.status.app.app_id());
                parts.push(("chart", chart_view(&samples).into_string()));
            }
            Ok(parts)
        }
    }))
}

/// `GET /console/apps/{name}/progress/live`: a deploy's progress.
pub(super) async fn progress(
    State(console): State<Console>,
    Signed(who, _): Signed,
    Path(name): Path<String>,
) -> Response {
    let (c, w) = (console.clone(), who.clone());
    sse(stream(console, who, TICK / 2, move |_| {
        let (c, w, name) = (c.clone(), w.clone(), name.clone());
        async move {
            let Some(p) = c.deploys.get(&w.tenant, &name) else {
                return Ok(Vec::new());
            };
            let events: Vec<crate::model::Event> = c.get(&w.key, "/v1/events").await?;
            let events: Vec<_> = events
                .into_iter()
                .filter(|e| e.app.as_deref() == Some(name.as_str()))
                .collect();
            Ok(vec![(
                "progress",
                deploy::progress_view(&name, &p, &events).into_string(),
            )])
        }
    }))
}

/// `GET /console/azs/live`: the zones and their workers (admin).
pub(super) async fn zones(State(console): State<Console>, Signed(who, _): Signed) -> Response {
    if !who.admin() {
        return axum::http::StatusCode::FORBIDDEN.into_response();
    }
    let (c, w) = (console.clone(), who.clone());
    sse(stream(console, who, TICK, move |_| {
        let (c, w) = (c.clone(), w.clone());
        async move {
            let (z, ws) = zones::load(&c, &w).await?;
            Ok(vec![(
                "zones",
                zones::zones_view(&w, &z, &ws).into_string(),
            )])
        }
    }))
}
