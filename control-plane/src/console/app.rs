//! An app's page (its live parts from [`super::apps`], then logs,
//! properties and history) and the forms on it: scale, restart, delete,
//! properties, rollback.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::apps::{
    AppData, api_path, app_path, chart_view, events_view, queues_view, summary, workers_view,
};
use super::calls::Refused;
use super::session::{Flash, Session};
use super::view::{self, Section, badge, csrf};
use super::{Console, Nothing, Posted, Signed, after, done, refused_page};
use crate::model::{AppStatus, Configuration, Outcome, WorkerInfo};

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
            @if let Some(c) = &s.canary {
                form.inline method="post" action={ (path) "/promote" } {
                    (csrf(who))
                    button.primary type="submit" { "Promote v" (c.version) }
                }
                form.inline method="post" action={ (path) "/abort" } {
                    (csrf(who))
                    button type="submit" { "Abort v" (c.version) }
                }
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

fn autoscale_view(who: &Session, s: &AppStatus) -> Markup {
    let path = format!("{}/autoscale", app_path(&s.app.name));
    let p = s.app.autoscale.clone();
    let target = |t: Option<u32>| t.map(|t| t.to_string()).unwrap_or_default();
    html! {
        p data-autoscale=(if p.is_some() { "on" } else { "off" }) {
            @match &p {
                Some(p) => { "Scales by itself: " (crate::model::describe_policy(p)) ". Each change is an event below." }
                None => { "Off: the app runs the workers it is given." }
            }
        }
        form.inline method="post" action=(path) {
            (csrf(who))
            input type="hidden" name="action" value="set";
            label { "Min " input type="number" name="min" min="1" max="8" required value=(p.as_ref().map_or(1, |p| p.min)); }
            label { "Max " input type="number" name="max" min="1" max="8" required value=(p.as_ref().map_or(s.app.workers.max(2), |p| p.max)); }
            label { "Backlog per worker " input type="number" name="queue_backlog" min="1" placeholder="messages" value=(target(p.as_ref().and_then(|p| p.queue_backlog))); }
            label { "CPU % " input type="number" name="cpu" min="1" max="100" value=(target(p.as_ref().and_then(|p| p.cpu))); }
            label { "Concurrency % " input type="number" name="concurrency" min="1" max="100" value=(target(p.as_ref().and_then(|p| p.concurrency))); }
            button type="submit" { @if p.is_some() { "Change" } @else { "Turn on" } }
        }
        @if p.is_some() {
            form.inline method="post" action=(path) {
                (csrf(who))
                input type="hidden" name="action" value="off";
                button type="submit" { "Turn off" }
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
    let data = match AppData::load(&console, &who, &name, true).await {
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
        section #autoscaling {
            h2 { "Autoscaling" }
            (autoscale_view(&who, s))
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

#[derive(Deserialize)]
pub(super) struct ScaleForm {
    workers: String,
    size: String,
}

/// `POST /console/apps/{name}/scale`.
pub(super) async fn scale(
    State(console): State<Console>,
    Path(name): Path<String>,
    Posted(who, f): Posted<ScaleForm>,
) -> Response {
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
    Path(name): Path<String>,
    Posted(who, Nothing {}): Posted<Nothing>,
) -> Response {
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
    confirm: String,
}

/// `POST /console/apps/{name}/delete`: only with the app's name typed.
pub(super) async fn delete(
    State(console): State<Console>,
    Path(name): Path<String>,
    Posted(who, f): Posted<DeleteForm>,
) -> Response {
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
    Path(name): Path<String>,
    Posted(who, f): Posted<PropertyForm>,
) -> Response {
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
    to: String,
}

/// `POST /console/apps/{name}/rollback`.
pub(super) async fn rollback(
    State(console): State<Console>,
    Path(name): Path<String>,
    Posted(who, f): Posted<RollbackForm>,
) -> Response {
    let to = app_path(&name) + "#history";
    let Ok(number) = f.to.trim().parse::<u64>() else {
        let refused = Flash::Refused("the configuration to roll back to is a number".into());
        return after(&console, &who, &to, refused);
    };
    let req = crate::model::RollbackRequest { to: Some(number) };
    let r = console
        .post::<AppStatus>(&who.key, &api_path(&name, "/rollback"), &req)
        .await;
    done(&console, &who, &to, r, |s| {
        format!(
            "rolled back to configuration #{number}; {} serves it as v{}",
            s.app.name, s.app.version
        )
    })
}

#[derive(Deserialize)]
pub(super) struct AutoscaleForm {
    action: String,
    #[serde(default)]
    min: String,
    #[serde(default)]
    max: String,
    #[serde(default)]
    queue_backlog: String,
    #[serde(default)]
    cpu: String,
    #[serde(default)]
    concurrency: String,
}

/// `POST /console/apps/{name}/autoscale`: set the app's scaling policy, or
/// turn it off.
pub(super) async fn autoscale(
    State(console): State<Console>,
    Path(name): Path<String>,
    Posted(who, f): Posted<AutoscaleForm>,
) -> Response {
    let to = app_path(&name) + "#autoscaling";
    let path = api_path(&name, "/autoscale");
    if f.action == "off" {
        let r = console
            .call::<AppStatus>(&who.key, axum::http::Method::DELETE, &path, None::<&()>)
            .await;
        return done(&console, &who, &to, r, |s| {
            format!("{} no longer scales by itself", s.app.name)
        });
    }
    let number = |field: &str, v: &str| -> Result<Option<u32>, String> {
        match v.trim() {
            "" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{field} must be a whole number")),
        }
    };
    let policy = (|| {
        Ok::<_, String>(crate::model::ScalePolicy {
            min: number("min", &f.min)?.unwrap_or(0),
            max: number("max", &f.max)?.unwrap_or(0),
            queue_backlog: number("the backlog target", &f.queue_backlog)?,
            cpu: number("the CPU target", &f.cpu)?,
            concurrency: number("the concurrency target", &f.concurrency)?,
        })
    })();
    let policy = match policy {
        Ok(p) => p,
        Err(e) => return after(&console, &who, &to, Flash::Refused(e)),
    };
    let r = console
        .call::<AppStatus>(&who.key, axum::http::Method::PUT, &path, Some(&policy))
        .await;
    done(&console, &who, &to, r, |s| {
        let how = s
            .app
            .autoscale
            .as_ref()
            .map(crate::model::describe_policy)
            .unwrap_or_default();
        format!("{} scales by itself: {how}", s.app.name)
    })
}

/// `POST /console/apps/{name}/promote`: the canary takes every request.
pub(super) async fn promote(
    State(console): State<Console>,
    Path(name): Path<String>,
    Posted(who, Nothing {}): Posted<Nothing>,
) -> Response {
    let r = console
        .post::<AppStatus>(&who.key, &api_path(&name, "/promote"), &())
        .await;
    done(&console, &who, &app_path(&name), r, |s| {
        format!(
            "{} v{} is promoted: it takes every request",
            s.app.name, s.app.version
        )
    })
}

/// `POST /console/apps/{name}/abort`: the canary is retired.
pub(super) async fn abort(
    State(console): State<Console>,
    Path(name): Path<String>,
    Posted(who, Nothing {}): Posted<Nothing>,
) -> Response {
    let r = console
        .post::<AppStatus>(&who.key, &api_path(&name, "/abort"), &())
        .await;
    done(&console, &who, &app_path(&name), r, |s| {
        format!(
            "the canary is retired; {} v{} takes every request",
            s.app.name, s.app.version
        )
    })
}
