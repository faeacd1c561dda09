//! The apps list, and the parts of an app's page its live stream sends
//! again as they change: its summary, workers per zone, queues, depth
//! chart and events.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::calls::{Refused, segment};
use super::session::Session;
use super::view::{self, Section, badge};
use super::{Console, Signed, refused_page};
use crate::model::{AppQueues, AppStatus, AzStatus, Event, WorkerInfo, WorkerState};

/// Events shown on an app's page.
const EVENTS_SHOWN: usize = 15;

/// What an app's status is, in a word.
pub(super) fn status_word(app: &AppStatus) -> &'static str {
    if app.app.version == 0 {
        "deploying"
    } else if app.ready >= app.app.workers {
        "running"
    } else if app.ready == 0 {
        "down"
    } else {
        "degraded"
    }
}

pub(super) fn app_path(name: &str) -> String {
    format!("/console/apps/{}", segment(name))
}

pub(super) fn api_path(name: &str, rest: &str) -> String {
    format!("/v1/apps/{}{rest}", segment(name))
}

/// The rows of the apps table.
pub(super) fn app_rows(apps: &[AppStatus]) -> Markup {
    html! {
        @if apps.is_empty() {
            tr { td colspan="7" .empty { "No apps yet. " a href="/console/deploy" { "Deploy one" } "." } }
        }
        @for a in apps {
            tr data-app=(a.app.name) {
                th scope="row" { a href=(app_path(&a.app.name)) { (a.app.name) } }
                td { (badge(status_word(a))) }
                td.num { "v" (a.app.version) }
                td.num data-ready { (a.ready) " / " (a.app.workers) }
                td { (view::size(a.app.size)) }
                td { @if a.app.persistent_queues { "persistent" @if a.app.encrypt_queues { " · sealed" } } @else { "transient" } }
                td { a.url href=(a.url) { (a.url) } }
            }
        }
    }
}

/// `GET /console/apps`.
pub(super) async fn list(State(console): State<Console>, Signed(who, flash): Signed) -> Response {
    let apps: Vec<AppStatus> = match console.get(&who.key, "/v1/apps").await {
        Ok(apps) => apps,
        Err(e) => return refused_page(&console, &who, e),
    };
    let body = html! {
        div.heading {
            h1 { "Apps" }
            a.button.primary href="/console/deploy" { "Deploy an app" }
        }
        div hx-ext="sse" sse-connect="/console/apps/live" {
            table.apps {
                thead { tr { th { "Name" } th { "Status" } th { "Version" } th { "Workers ready" } th { "Size" } th { "Queues" } th { "URL" } } }
                tbody sse-swap="apps" { (app_rows(&apps)) }
            }
        }
    };
    view::page("Apps", Section::Apps, Some(&who), flash, body).into_response()
}

/// Everything an app's page shows.
pub(super) struct AppData {
    pub status: AppStatus,
    pub workers: Vec<WorkerInfo>,
    pub zones: Vec<AzStatus>,
    pub queues: Option<AppQueues>,
    pub events: Vec<Event>,
}

impl AppData {
    /// Loads app `name`'s page data as `who`, its queues too when
    /// `queues`; they are left out when queue-svc does not answer (the
    /// rest of the page still shows).
    pub async fn load(
        console: &Console,
        who: &Session,
        name: &str,
        queues: bool,
    ) -> Result<Self, Refused> {
        let status: AppStatus = console.get(&who.key, &api_path(name, "")).await?;
        let (workers_path, queues_path) = (api_path(name, "/workers"), api_path(name, "/queues"));
        let counts = async {
            match queues {
                true => console.get::<AppQueues>(&who.key, &queues_path).await.ok(),
                false => None,
            }
        };
        let (workers, zones, queues, events) = tokio::join!(
            console.get::<Vec<WorkerInfo>>(&who.key, &workers_path),
            console.get::<Vec<AzStatus>>(&who.key, "/v1/azs"),
            counts,
            console.get::<Vec<Event>>(&who.key, "/v1/events"),
        );
        Ok(AppData {
            workers: workers?,
            zones: zones?,
            queues,
            events: app_events(events?, &status.app.name),
            status,
        })
    }
}

/// The newest [`EVENTS_SHOWN`] of `events` about app `name`, newest first.
pub(super) fn app_events(events: Vec<Event>, name: &str) -> Vec<Event> {
    let mut mine: Vec<Event> = events
        .into_iter()
        .filter(|e| e.app.as_deref() == Some(name))
        .collect();
    mine.reverse();
    mine.truncate(EVENTS_SHOWN);
    mine
}

/// The app's summary line.
pub(super) fn summary(s: &AppStatus) -> Markup {
    html! {
        dl.summary {
            div { dt { "Status" } dd { (badge(status_word(s))) } }
            div { dt { "Version" } dd { "v" (s.app.version) } }
            div { dt { "Workers ready" } dd data-ready { (s.ready) " / " (s.app.workers) } }
            div { dt { "Size" } dd { (view::size(s.app.size)) } }
            div { dt { "Queues" } dd { @if s.app.persistent_queues { "persistent" @if s.app.encrypt_queues { ", sealed at rest" } } @else { "transient" } } }
            @if let Some(c) = &s.canary {
                div data-canary=(c.version) { dt { "Canary" } dd { (badge("canary")) " v" (c.version) " takes " (c.weight) "% (" (c.ready) " ready)" } }
            }
            div { dt { "Autoscaling" } dd { @match &s.app.autoscale { Some(p) => { (p.min) "–" (p.max) " workers" } None => { "off" } } } }
            div { dt { "URL" } dd { a href=(s.url) { (s.url) } } }
        }
    }
}

/// The workers, a column per zone.
pub(super) fn workers_view(zones: &[AzStatus], workers: &[WorkerInfo]) -> Markup {
    let mut names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
    for w in workers {
        if !names.contains(&w.az.as_str()) {
            names.push(&w.az);
        }
    }
    html! {
        div.zones {
            @for zone in names {
                @let up = zones.iter().find(|z| z.name == zone).is_none_or(|z| z.up);
                section.zone data-zone=(zone) aria-label={ "Zone " (zone) } {
                    h3 { "Zone " (zone) @if !up { " " span.badge.state-down { "zone down" } } }
                    @let here: Vec<&WorkerInfo> = workers.iter().filter(|w| w.az == zone).collect();
                    @if here.is_empty() { p.muted.empty { "No workers" } }
                    @for w in here {
                        @let state = state_word(w.state);
                        article.worker data-worker=(w.id) data-state=(state) data-pid=[w.pid] data-restarts=(w.restarts) {
                            header { strong { (w.id) } (badge(state)) }
                            dl {
                                div { dt { "Version" } dd { "v" (w.version) } }
                                div { dt { "Restarts" } dd { (w.restarts) } }
                                @if let Some(pid) = w.pid { div { dt { "Process" } dd { (pid) } } }
                            }
                            a.direct href=(w.url) { (w.url) }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn state_word(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Starting => "starting",
        WorkerState::Ready => "ready",
        WorkerState::Draining => "draining",
        WorkerState::Down => "down",
    }
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "—".to_string(), |n| n.to_string())
}

/// The queues table.
pub(super) fn queues_view(name: &str, queues: Option<&AppQueues>) -> Markup {
    let Some(q) = queues else {
        return html! { p.muted { "The queue service did not answer; counts show when it does." } };
    };
    html! {
        @if q.queues.is_empty() {
            p.muted { "This app has no queues." }
        } @else {
            table.queues {
                thead { tr { th { "Queue" } th { "Waiting" } th { "In flight" } th { "Dead letters" } th { "Oldest" } th { "Sealed" } } }
                tbody {
                    @for queue in &q.queues {
                        tr data-queue=(queue.name) {
                            th scope="row" { (queue.name) }
                            td.num data-depth { (count(queue.depth)) }
                            td.num data-in-flight { (count(queue.in_flight)) }
                            td.num data-dlq {
                                @match queue.dlq_depth {
                                    Some(n) => { a href={ (app_path(name)) "/queues/" (segment(&queue.name)) } { (n) } }
                                    None => { "—" }
                                }
                            }
                            td { (queue.oldest_age_ms.map(view::age).unwrap_or_else(|| "—".into())) }
                            td { @if queue.encrypted { "yes" } @else { "no" } }
                        }
                    }
                }
            }
            @if q.mode == "transient" {
                p.muted { "Transient queues live in each worker's memory: their counts are on each worker's /metrics." }
            }
        }
    }
}

/// The depth chart's data (uPlot's columns: times in seconds, then one
/// series per queue), as JSON in the plot's `data-series` attribute that
/// console.js draws; the caption says the same without JavaScript.
pub(super) fn chart_view(samples: &[super::samples::Sample]) -> Markup {
    let mut names: Vec<&String> = samples.iter().flat_map(|s| s.depths.keys()).collect();
    names.sort();
    names.dedup();
    let times: Vec<f64> = samples.iter().map(|s| s.at_ms as f64 / 1000.0).collect();
    let series: Vec<Vec<Option<u64>>> = names
        .iter()
        .map(|n| samples.iter().map(|s| s.depths.get(*n).copied()).collect())
        .collect();
    let data = serde_json::json!({ "names": names, "times": times, "series": series });
    let peak = series
        .iter()
        .flatten()
        .flatten()
        .max()
        .copied()
        .unwrap_or(0);
    html! {
        @if samples.len() < 2 {
            p.muted { "Depth over time shows once the app's persistent queues have been sampled twice (every 5 s)." }
        } @else {
            figure.chart {
                div.plot data-chart="depth" data-series=(data.to_string()) role="img" aria-label="Queue depth over the last 15 minutes" {}
                figcaption { "Backlog (waiting and in flight) and dead letters over the last " (view::age(span_ms(samples))) " (peak " (peak) ")" }
            }
        }
    }
}

/// The time `samples` span, in milliseconds.
fn span_ms(samples: &[super::samples::Sample]) -> u64 {
    match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b.at_ms.saturating_sub(a.at_ms),
        _ => 0,
    }
}

/// The events list.
pub(super) fn events_view(events: &[Event]) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "No events yet." }
        } @else {
            ol.events {
                @for e in events {
                    li data-kind=(e.kind) {
                        (view::time(e.at_ms)) " " span.kind { (e.kind) } " " span { (e.message) }
                    }
                }
            }
        }
    }
}
