//! A persistent queue's dead letters: shown (an encrypted queue's bodies
//! only when asked for, one at a time) and redriven to their queue.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::apps::{api_path, app_path};
use super::calls::{Refused, segment};
use super::session::{Flash, Session};
use super::view::{self, Section, csrf};
use super::{Console, Nothing, Posted, Signed, done, refused_page};
use crate::model::DeadLetter;

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
pub(super) async fn show(
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
    reveal: String,
}

/// `POST /console/apps/{name}/queues/{queue}`: the dead letters with one
/// message's body shown (a POST, so that it is asked for on purpose and
/// its plaintext never sits in a URL).
pub(super) async fn reveal(
    State(console): State<Console>,
    Path((name, queue)): Path<(String, String)>,
    Posted(who, f): Posted<RevealForm>,
) -> Response {
    let flash = None;
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
    Path((name, queue)): Path<(String, String)>,
    Posted(who, Nothing {}): Posted<Nothing>,
) -> Response {
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
