//! The zones (admin): each zone's state and the workers in it, with the
//! fail and restore drill.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::apps::state_word;
use super::calls::{Refused, segment};
use super::session::{Flash, Session};
use super::view::{self, Section, badge, csrf};
use super::{Console, Nothing, Posted, Signed, after, refused_page};
use crate::model::{AppStatus, AzStatus, WorkerInfo};

/// Every zone and every worker in it, as the admin sees them.
pub(super) async fn load(
    console: &Console,
    who: &Session,
) -> Result<(Vec<AzStatus>, Vec<WorkerInfo>), Refused> {
    let zones: Vec<AzStatus> = console.get(&who.key, "/v1/azs").await?;
    let apps: Vec<AppStatus> = console.get(&who.key, "/v1/apps").await?;
    let mut workers = Vec::new();
    for app in apps {
        let path = format!("/v1/apps/{}/workers", segment(&app.app.name));
        match console.get::<Vec<WorkerInfo>>(&who.key, &path).await {
            Ok(ws) => workers.extend(ws),
            // Deleted meanwhile.
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok((zones, workers))
}

/// The zones table.
pub(super) fn zones_view(who: &Session, zones: &[AzStatus], workers: &[WorkerInfo]) -> Markup {
    html! {
        div.zones {
            @for z in zones {
                @let here: Vec<&WorkerInfo> = workers.iter().filter(|w| w.az == z.name).collect();
                section.zone data-zone=(z.name) {
                    h3 { "Zone " (z.name) " " (badge(if z.up { "up" } else { "down" })) }
                    p.muted { (here.len()) @if here.len() == 1 { " worker" } @else { " workers" } }
                    ul.plain {
                        @for w in &here { li { (w.id) " " (badge(state_word(w.state))) } }
                    }
                    form method="post" action={ "/console/azs/" (segment(&z.name)) "/" (if z.up { "fail" } else { "restore" }) } {
                        (csrf(who))
                        @if z.up {
                            button.danger type="submit" { "Fail zone " (z.name) }
                        } @else {
                            button type="submit" { "Restore zone " (z.name) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/azs`.
pub(super) async fn page(State(console): State<Console>, Signed(who, flash): Signed) -> Response {
    if !who.admin() {
        return refused_page(
            &console,
            &who,
            Refused {
                status: axum::http::StatusCode::FORBIDDEN,
                message: "only the admin manages zones".into(),
            },
        );
    }
    let (zones, workers) = match load(&console, &who).await {
        Ok(z) => z,
        Err(e) => return refused_page(&console, &who, e),
    };
    let body = html! {
        h1 { "Zones" }
        p.muted { "Failing a zone stops its workers and places them in the other zones; restoring it lets workers run there again." }
        div hx-ext="sse" sse-connect="/console/azs/live" {
            div sse-swap="zones" { (zones_view(&who, &zones, &workers)) }
        }
    };
    view::page("Zones", Section::Zones, Some(&who), flash, body).into_response()
}

/// `POST /console/azs/{az}/{action}`: `fail` or `restore`.
pub(super) async fn act(
    State(console): State<Console>,
    Path((az, action)): Path<(String, String)>,
    Posted(who, Nothing {}): Posted<Nothing>,
) -> Response {
    let path = format!("/v1/azs/{}/{}", segment(&az), segment(&action));
    match console.post::<Vec<AzStatus>>(&who.key, &path, &()).await {
        Ok(_) => after(
            &console,
            &who,
            "/console/azs",
            Flash::Done(format!("zone {az}: {action} done")),
        ),
        Err(e) if e.signed_out() => refused_page(&console, &who, e),
        Err(e) => after(&console, &who, "/console/azs", Flash::Refused(e.message)),
    }
}
