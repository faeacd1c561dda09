//! The apps list, an app's page (workers per zone, queues and their depth
//! over time, events, logs, properties, history) and the forms on it:
//! scale, restart, delete, properties, rollback, dead letters.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::calls::{Refused, segment};
use super::session::{Flash, Session};
use super::view::{self, Section, badge, csrf};
use super::{Console, CsrfOnly, Signed, after, csrf_ok, forged, refused_page};
use crate::model::{
    AppQueues, AppStatus, AzStatus, Configuration, DeadLetter, Event, Outcome, WorkerInfo,
    WorkerState,
};

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

fn app_path(name: &str) -> String {
    format!("/console/apps/{}", segment(name))
}

fn api_path(name: &str, rest: &str) -> String {
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
    /// Loads app `name`'s page data as `who`; the queues are left out when
    /// queue-svc does not answer (the rest of the page still shows).
    pub async fn load(console: &Console, who: &Session, name: &str) -> Result<Self, Refused> {
        let status: AppStatus = console.get(&who.key, &api_path(name, "")).await?;
        let (workers, queues) = (api_path(name, "/workers"), api_path(name, "/queues"));
        let (workers, zones, queues, events) = tokio::join!(
            console.get::<Vec<WorkerInfo>>(&who.key, &workers),
            console.get::<Vec<AzStatus>>(&who.key, "/v1/azs"),
            console.get::<AppQueues>(&who.key, &queues),
            console.get::<Vec<Event>>(&who.key, "/v1/events"),
        );
        Ok(AppData {
            workers: workers?,
            zones: zones?,
            queues: queues.ok(),
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
/// series per queue), as JSON in a `<script type="application/json">`
/// that console.js draws; a sentence says the same without JavaScript.
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
        @if samples.is_empty() {
            p.muted { "Depth over time shows once the app's persistent queues have been sampled (every 5 s)." }
        } @else {
            figure.chart {
                div.plot data-chart="depth" role="img" aria-label="Queue depth over the last 15 minutes" {}
                script type="application/json" class="chart-data" { (maud::PreEscaped(json_in_script(&data))) }
                figcaption { "Messages waiting over the last " (view::age(span_ms(samples))) " (peak " (peak) ")" }
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

/// JSON safe inside a `<script>` element: `<`, `>` and `&` escaped as
/// JSON escapes, so no text (a queue name) can close the element.
fn json_in_script(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
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

/// What the logs filter form sends.
#[derive(Debug, Default, Deserialize)]
pub(super) struct LogFilter {
    #[serde(default)]
    worker: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    grep: String,
}

impl LogFilter {
    fn query(&self) -> String {
        let mut q = vec![("limit", "100")];
        for (k, v) in [
            ("worker", &self.worker),
            ("since", &self.since),
            ("level", &self.level),
            ("grep", &self.grep),
        ] {
            if !v.is_empty() {
                q.push((k, v.as_str()));
            }
        }
        serde_urlencoded::to_string(q).unwrap_or_default()
    }
}

fn logs_view(
    name: &str,
    f: &LogFilter,
    lines: Result<Vec<crate::logs::LogLine>, Refused>,
    workers: &[WorkerInfo],
) -> Markup {
    html! {
        form.filters method="get" action={ (app_path(name)) "#logs" } {
            label { "Worker " select name="worker" {
                option value="" { "all" }
                @for w in workers { option value=(w.id) selected[f.worker == w.id] { (w.id) } }
            } }
            label { "Since " input name="since" value=(f.since) placeholder="10m" size="6"; }
            label { "Level " select name="level" {
                @for l in ["", "debug", "info", "warn", "error"] {
                    option value=(l) selected[f.level == l] { @if l.is_empty() { "any" } @else { (l) } }
                }
            } }
            label { "Text " input name="grep" value=(f.grep) type="search"; }
            button type="submit" { "Filter" }
        }
        @match lines {
            Err(e) => { p.flash.refused role="alert" { (e.message) } }
            Ok(lines) if lines.is_empty() => { p.muted { "No log lines match." } }
            Ok(lines) => {
                div.logs { table {
                    thead { tr { th { "At" } th { "Worker" } th { "Level" } th { "Message" } } }
                    tbody {
                        @for l in &lines {
                            tr class={ "level-" (l.level.to_ascii_lowercase()) } {
                                td.at { (l.at) } td { (l.worker) } td { (l.level) } td.message { (l.message) }
                            }
                        }
                    }
                } }
            }
        }
    }
}

fn properties_view(who: &Session, s: &AppStatus) -> Markup {
    let path = format!("{}/properties", app_path(&s.app.name));
    let all = s
        .app
        .properties
        .iter()
        .map(|(k, v)| (k, v, false))
        .chain(s.app.secure_properties.iter().map(|(k, v)| (k, v, true)));
    html! {
        table.properties {
            thead { tr { th { "Name" } th { "Value" } th {} } }
            tbody {
                @for (k, v, secure) in all {
                    tr data-property=(k) {
                        th scope="row" { (k) @if secure { " " span.badge { "secure" } } }
                        td { code { (v) } }
                        td { form method="post" action=(path) {
                            (csrf(who))
                            input type="hidden" name="action" value="unset";
                            input type="hidden" name="name" value=(k);
                            button.link type="submit" { "Remove" }
                        } }
                    }
                }
            }
        }
        form.inline method="post" action=(path) {
            (csrf(who))
            input type="hidden" name="action" value="set";
            label { "Name " input name="name" required maxlength="1024"; }
            label { "Value " input name="value" maxlength="1024"; }
            label.check { input type="checkbox" name="secure" value="on"; " Secure (write-only)" }
            button type="submit" { "Set" }
        }
        p.muted { "A change is a new configuration, deployed side by side: no request fails." }
    }
}

fn history_view(who: &Session, name: &str, history: &[Configuration]) -> Markup {
    let current = history
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Deployed))
        .map(|c| c.number)
        .max();
    html! {
        @if history.is_empty() { p.muted { "No history yet." } }
        @else {
            table.history {
                thead { tr { th { "#" } th { "Change" } th { "By" } th { "When" } th { "Outcome" } th { "Workers" } th {} } }
                tbody {
                    @for c in history.iter().rev() {
                        tr data-configuration=(c.number) {
                            td.num { (c.number) }
                            td { (c.change) }
                            td { (c.by) }
                            td { (view::time(c.at_ms)) }
                            td { @match &c.outcome {
                                Outcome::Deployed => { (badge("deployed")) @if let Some(v) = c.version { " as v" (v) } }
                                Outcome::Failed { reason } => { (badge("failed")) " " span.muted { (reason) } }
                            } }
                            td { (c.workers) " × " (view::size(c.size)) }
                            td {
                                @if Some(c.number) == current { span.muted { "serving" } }
                                @else if matches!(c.outcome, Outcome::Deployed) {
                                    form method="post" action={ (app_path(name)) "/rollback" } {
                                        (csrf(who))
                                        input type="hidden" name="to" value=(c.number);
                                        button type="submit" { "Roll back to #" (c.number) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn actions_view(who: &Session, s: &AppStatus) -> Markup {
    let path = app_path(&s.app.name);
    html! {
        div.actions {
            form.inline method="post" action={ (path) "/scale" } {
                (csrf(who))
                label { "Workers " input type="number" name="workers" min="1" max="8" value=(s.app.workers) required; }
                label { "Size " (size_select("size", s.app.size)) }
                button type="submit" { "Scale" }
            }
            form.inline method="post" action={ (path) "/restart" } {
                (csrf(who))
                button type="submit" { "Restart" }
            }
            details.danger {
                summary { "Delete…" }
                form method="post" action={ (path) "/delete" } {
                    (csrf(who))
                    p { "Deleting stops every worker and purges the app's queues and stores. Type " strong { (s.app.name) } " to confirm." }
                    input name="confirm" autocomplete="off" required aria-label="App name, to confirm";
                    button.danger type="submit" { "Delete " (s.app.name) }
                }
            }
        }
    }
}

/// A select of the worker sizes, `current` chosen.
pub(super) fn size_select(name: &str, current: f64) -> Markup {
    html! {
        select name=(name) {
            @for size in workers::size::SIZES {
                option value=(size.vcores) selected[size.vcores == current] { (view::size(size.vcores)) }
            }
        }
    }
}

/// `GET /console/apps/{name}`.
pub(super) async fn show(
    State(console): State<Console>,
    Signed(who, flash): Signed,
    Path(name): Path<String>,
    Query(filter): Query<LogFilter>,
) -> Response {
    let data = match AppData::load(&console, &who, &name).await {
        Ok(d) => d,
        Err(e) => return refused_page(&console, &who, e),
    };
    let history = api_path(&name, "/history");
    let logs = format!("{}?{}", api_path(&name, "/logs"), filter.query());
    let (history, lines) = tokio::join!(
        console.get::<Vec<Configuration>>(&who.key, &history),
        console.get::<Vec<crate::logs::LogLine>>(&who.key, &logs),
    );
    let s = &data.status;
    let samples = console.samples.of(&s.app.app_id());
    let live = format!("{}/live", app_path(&name));
    let body = html! {
        div hx-ext="sse" sse-connect=(live) {
            div.heading {
                h1 { (s.app.name) }
                (actions_view(&who, s))
            }
            div sse-swap="summary" { (summary(s)) }
            section #workers {
                h2 { "Workers by zone" }
                div sse-swap="workers" { (workers_view(&data.zones, &data.workers)) }
            }
            section #queues {
                h2 { "Queues" }
                div sse-swap="queues" { (queues_view(&name, data.queues.as_ref())) }
                div sse-swap="chart" { (chart_view(&samples)) }
            }
            section #events {
                h2 { "Events" }
                div sse-swap="events" { (events_view(&data.events)) }
            }
        }
        section #logs {
            h2 { "Logs" }
            (logs_view(&name, &filter, lines, &data.workers))
        }
        section #properties {
            h2 { "Properties" }
            (properties_view(&who, s))
        }
        section #history {
            h2 { "History" }
            @match history {
                Ok(h) => (history_view(&who, &name, &h)),
                Err(e) => p.flash.refused { (e.message) },
            }
        }
    };
    view::page(&s.app.name, Section::Apps, Some(&who), flash, body).into_response()
}

/// The outcome of a form that asked the API for something: back to the
/// app's page with what happened, or to the sign-in page if the key was revoked.
fn done<T>(
    console: &Console,
    who: &Session,
    to: &str,
    r: Result<T, Refused>,
    what: impl FnOnce(T) -> String,
) -> Response {
    match r {
        Ok(v) => after(console, who, to, Flash::Done(what(v))),
        Err(e) if e.signed_out() => refused_page(console, who, e),
        Err(e) => after(console, who, to, Flash::Refused(e.message)),
    }
}

#[derive(Deserialize)]
pub(super) struct ScaleForm {
    csrf: String,
    workers: String,
    size: String,
}

/// `POST /console/apps/{name}/scale`.
pub(super) async fn scale(
    State(console): State<Console>,
    Signed(who, _): Signed,
    Path(name): Path<String>,
    Form(f): Form<ScaleForm>,
) -> Response {
    if !csrf_ok(&who, &f.csrf) {
        return forged();
    }
    let to = app_path(&name);
    let (Ok(workers), Ok(size)) = (
        f.workers.trim().parse::<u32>(),
        f.size.trim().parse::<f64>(),
    ) else {
        return after(
            &console,
            &who,
            &to,
            Flash::Refused(
                "workers must be a whole number and size one of the sizes listed".into(),
            ),
        );
    };
    let req = crate::model::ScaleRequest {
        workers,
        size: Some(size),
    };
    let r = console
        .post::<AppStatus>(&who.key, &api_path(&name, "/scale"), &req)
        .await;
    done(&console, &who, &to, r, |s| {
        format!(
            "{} runs {} workers of {}",
            s.app.name,
            s.app.workers,
            view::size(s.app.size)
        )
    })
}

/// `POST /console/apps/{name}/restart`.
pub(super) async fn restart(
    State(console): State<Console>,
    Signed(who, _): Signed,
    Path(name): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if !csrf_ok(&who, &f.csrf) {
        return forged();
    }
    let r = console
        .post::<AppStatus>(&who.key, &api_path(&name, "/restart"), &())
        .await;
    done(&console, &who, &app_path(&name), r, |s| {
        format!(
            "{} restarted side by side as v{}",
            s.app.name, s.app.version
        )
    })
}

#[derive(Deserialize)]
pub(super) struct DeleteForm {
    csrf: String,
    confirm: String,
}

/// `POST /console/apps/{name}/delete`: only with the app's name typed.
pub(super) async fn delete(
    State(console): State<Console>,
    Signed(who, _): Signed,
    Path(name): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Response {
    if !csrf_ok(&who, &f.csrf) {
        return forged();
    }
    if f.confirm.trim() != name {
        return after(
            &console,
            &who,
            &app_path(&name),
            Flash::Refused(format!("type {name} to delete it")),
        );
    }
    let r = console
        .call::<serde_json::Value>(
            &who.key,
            axum::http::Method::DELETE,
            &api_path(&name, ""),
            None::<&()>,
        )
        .await;
    match r {
        Ok(_) => after(
            &console,
            &who,
            "/console/apps",
            Flash::Done(format!("{name} is deleted; its data is purged")),
        ),
        Err(e) if e.signed_out() => refused_page(&console, &who, e),
        Err(e) => after(&console, &who, &app_path(&name), Flash::Refused(e.message)),
    }
}

#[derive(Deserialize)]
pub(super) struct PropertyForm {
    csrf: String,
    action: String,
    name: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    secure: Option<String>,
}

/// `POST /console/apps/{name}/properties`: set or remove one property.
pub(super) async fn properties(
    State(console): State<Console>,
    Signed(who, _): Signed,
    Path(name): Path<String>,
    Form(f): Form<PropertyForm>,
) -> Response {
    if !csrf_ok(&who, &f.csrf) {
        return forged();
    }
    let mut req = crate::model::PropertiesRequest::default();
    let what = match f.action.as_str() {
        "unset" => {
            req.unset.push(f.name.clone());
            format!("property {} removed", f.name)
        }
        _ if f.secure.is_some() => {
            req.set_secure.insert(f.name.clone(), f.value);
            format!("secure property {} set", f.name)
        }
        _ => {
            req.set.insert(f.name.clone(), f.value);
            format!("property {} set", f.name)
        }
    };
    let r = console
        .call::<AppStatus>(
            &who.key,
            axum::http::Method::PATCH,
            &api_path(&name, "/properties"),
            Some(&req),
        )
        .await;
    done(
        &console,
        &who,
        &format!("{}#properties", app_path(&name)),
        r,
        |s| format!("{what}; {} serves it as v{}", s.app.name, s.app.version),
    )
}

#[derive(Deserialize)]
pub(super) struct RollbackForm {
    csrf: String,
    to: u64,
}

/// `POST /console/apps/{name}/rollback`.
pub(super) async fn rollback(
    State(console): State<Console>,
    Signed(who, _): Signed,
    Path(name): Path<String>,
    Form(f): Form<RollbackForm>,
) -> Response {
    if !csrf_ok(&who, &f.csrf) {
        return forged();
    }
    let req = crate::model::RollbackRequest { to: Some(f.to) };
    let r = console
        .post::<AppStatus>(&who.key, &api_path(&name, "/rollback"), &req)
        .await;
    done(
        &console,
        &who,
        &format!("{}#history", app_path(&name)),
        r,
        |s| {
            format!(
                "rolled back to configuration #{}; {} serves it as v{}",
                f.to, s.app.name, s.app.version
            )
        },
    )
}

fn dead_letters_page(
    console: &Console,
    who: &Session,
    flash: Option<Flash>,
    name: &str,
    queue: &str,
    letters: Result<Vec<DeadLetter>, Refused>,
) -> Response {
    let letters = match letters {
        Ok(l) => l,
        Err(e) => return refused_page(console, who, e),
    };
    let path = format!("{}/queues/{}", app_path(name), segment(queue));
    let body = html! {
        p.crumbs { a href=(app_path(name)) { (name) } " › queue " (queue) }
        div.heading {
            h1 { "Dead letters of " (queue) }
            form.inline method="post" action={ (path) "/redrive" } {
                (csrf(who))
                button.primary type="submit" disabled[letters.is_empty()] { "Redrive all to " (queue) }
            }
        }
        @if letters.is_empty() { p.muted { "No dead letters." } }
        @else {
            p.muted { "The oldest " (letters.len()) " shown, left where they are. In an encrypted queue a body shows only when asked for." }
            table.letters {
                thead { tr { th { "Message" } th { "Published" } th { "Deliveries" } th { "Last error" } th { "Body" } } }
                tbody {
                    @for m in &letters {
                        tr data-message=(m.id) {
                            td { code { (m.id) } }
                            td { (view::time(m.enqueued_at_ms)) }
                            td.num { (m.delivery_count) }
                            td { (m.last_error.as_deref().unwrap_or(if m.sealed { "sealed" } else { "—" })) }
                            td {
                                @if let Some(body) = &m.body { pre.body { (body) } }
                                @else {
                                    form method="post" action=(path) {
                                        (csrf(who))
                                        input type="hidden" name="reveal" value=(m.id);
                                        button.link type="submit" { "Show this message" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    view::page(
        &format!("Dead letters · {name}"),
        Section::Apps,
        Some(who),
        flash,
        body,
    )
    .into_response()
}

/// `GET /console/apps/{name}/queues/{queue}`: the queue's dead letters.
pub(super) async fn dead_letters(
    State(console): State<Console>,
    Signed(who, flash): Signed,
    Path((name, queue)): Path<(String, String)>,
) -> Response {
    let letters = console
        .get(
            &who.key,
            &format!(
                "{}/dlq",
                api_path(&name, &format!("/queues/{}", segment(&queue)))
            ),
        )
        .await;
    dead_letters_page(&console, &who, flash, &name, &queue, letters)
}

#[derive(Deserialize)]
pub(super) struct RevealForm {
    csrf: String,
    reveal: String,
}

/// `POST /console/apps/{name}/queues/{queue}`: the dead letters with one
/// message's body shown (a POST, so that it is asked for on purpose and
/// its plaintext never sits in a URL).
pub(super) async fn reveal(
    State(console): State<Console>,
    Signed(who, flash): Signed,
    Path((name, queue)): Path<(String, String)>,
    Form(f): Form<RevealForm>,
) -> Response {
    if !csrf_ok(&who, &f.csrf) {
        return forged();
    }
    let query = serde_urlencoded::to_string([("reveal", f.reveal.as_str())]).unwrap_or_default();
    let letters = console
        .get(
            &who.key,
            &format!(
                "{}/dlq?{query}",
                api_path(&name, &format!("/queues/{}", segment(&queue)))
            ),
        )
        .await;
    dead_letters_page(&console, &who, flash, &name, &queue, letters)
}

/// `POST /console/apps/{name}/queues/{queue}/redrive`.
pub(super) async fn redrive(
    State(console): State<Console>,
    Signed(who, _): Signed,
    Path((name, queue)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if !csrf_ok(&who, &f.csrf) {
        return forged();
    }
    let r = console
        .post::<crate::model::Redriven>(
            &who.key,
            &format!(
                "{}/dlq/redrive",
                api_path(&name, &format!("/queues/{}", segment(&queue)))
            ),
            &(),
        )
        .await;
    let to = format!("{}/queues/{}", app_path(&name), segment(&queue));
    done(&console, &who, &to, r, |m| {
        format!("{} dead letters moved back to {queue}", m.moved)
    })
}
