//! The deploy dialog: a manifest (uploaded or pasted), a name, workers,
//! size and the queue toggles; then a live view of the deploy until the
//! app serves or is rolled back. A manifest the API refuses comes back to
//! the dialog with the line and column it names marked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::app::size_select;
use super::calls::{Refused, segment};
use super::session::{Flash, Session};
use super::view::{self, Section, csrf};
use super::{Console, Signed, after, csrf_ok, forged, refused_page};
use crate::model::{AppStatus, DeployRequest};

/// The largest deploy form (the manifest and the fields).
pub const MAX_UPLOAD: usize = 1 << 20;

/// How long the dialog waits for the API before it shows the deploy's
/// progress instead: a refusal (a bad manifest, a name taken, a quota)
/// comes well within it and is shown on the dialog itself.
const REFUSAL_WAIT: Duration = Duration::from_millis(1500);

/// Deploys kept for their progress page.
const KEPT: usize = 1000;
/// Deploys kept per tenant: its own oldest goes first.
const KEPT_PER_TENANT: usize = 20;

/// How a deploy the console started went.
#[derive(Debug, Clone)]
pub struct Progress {
    /// When it started, in Unix milliseconds.
    pub started_ms: u64,
    /// How it ended, once it has.
    pub outcome: Option<Result<AppStatus, String>>,
}

/// The deploys the console started, by tenant and app name.
#[derive(Default)]
pub struct Deploys(Mutex<HashMap<(String, String), Progress>>);

impl Deploys {
    fn set(&self, tenant: &str, name: &str, progress: Progress) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_string(), name.to_string());
        let own = all.keys().filter(|(t, _)| t == tenant).count();
        if !all.contains_key(&key)
            && own >= KEPT_PER_TENANT
            && let Some(oldest) = all
                .iter()
                .filter(|((t, _), _)| t == tenant)
                .min_by_key(|(_, p)| p.started_ms)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        if all.len() >= KEPT
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, p)| p.started_ms)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert((tenant.to_string(), name.to_string()), progress);
    }

    /// Tenant `tenant`'s deploy of app `name`, if the console started one.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Progress> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_string(), name.to_string()))
            .cloned()
    }
}

/// What the dialog's form held (kept to show it again after a refusal).
#[derive(Debug, Default)]
struct DeployForm {
    csrf: String,
    name: String,
    manifest: String,
    workers: String,
    size: String,
    persistent: bool,
    encrypt: bool,
    canary: String,
}

impl DeployForm {
    /// Reads the multipart form; an uploaded file wins over pasted text.
    async fn read(mut form: Multipart) -> Result<Self, String> {
        let mut f = DeployForm::default();
        let mut file = String::new();
        while let Some(field) = form.next_field().await.map_err(|e| e.body_text())? {
            let name = field.name().unwrap_or("").to_string();
            let text = field.text().await.map_err(|e| e.body_text())?;
            match name.as_str() {
                "csrf" => f.csrf = text,
                "name" => f.name = text.trim().to_string(),
                "manifest" => f.manifest = text,
                "file" => file = text,
                "workers" => f.workers = text,
                "size" => f.size = text,
                "persistent" => f.persistent = true,
                "encrypt" => f.encrypt = true,
                "canary" => f.canary = text.trim().to_string(),
                _ => {}
            }
        }
        if !file.trim().is_empty() {
            f.manifest = file;
        }
        Ok(f)
    }

    fn request(&self) -> Result<DeployRequest, String> {
        let workers = self
            .workers
            .trim()
            .parse()
            .map_err(|_| format!("workers must be 1 to 8, not {:?}", self.workers))?;
        let size =
            self.size.trim().parse().map_err(|_| {
                format!("size must be one of the sizes listed, not {:?}", self.size)
            })?;
        if self.manifest.trim().is_empty() {
            return Err("choose a manifest file or paste one".into());
        }
        let canary = match self.canary.as_str() {
            "" => None,
            c => Some(c.parse::<u8>().map_err(|_| {
                format!("a canary takes 1 to 99 percent of the requests, not {c:?}")
            })?),
        };
        Ok(DeployRequest {
            name: (!self.name.is_empty()).then(|| self.name.clone()),
            manifest: self.manifest.clone(),
            workers,
            size,
            persistent_queues: self.persistent,
            encrypt_queues: self.encrypt,
            properties: Default::default(),
            secure_properties: Default::default(),
            canary,
        })
    }

    /// The app's name when one was given and it is a valid one: the
    /// progress page's name. (Without it, the dialog waits for the API's
    /// answer: the manifest is read only by the API, under its bounds.)
    fn app_name(&self) -> Option<String> {
        (!self.name.is_empty() && common::app::validate_app_name(&self.name).is_ok())
            .then(|| self.name.clone())
    }
}

/// The line and column a manifest refusal names (`line 3, column 7: ...`).
fn position(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find("line ")? + 5..];
    let (line, rest) = rest.split_once(", column ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.parse().ok()?, column.parse().ok()?))
}

/// The manifest with line numbers, the line a refusal names marked.
fn marked_manifest(manifest: &str, at: (usize, usize)) -> Markup {
    let (line, column) = at;
    let lines: Vec<&str> = manifest.lines().collect();
    let first = line.saturating_sub(4).max(1);
    let last = line.saturating_add(3).min(lines.len());
    html! {
        ol.manifest start=(first) aria-label="The manifest around the refused line" {
            @for n in first..=last {
                @let text = lines.get(n - 1).copied().unwrap_or("");
                @if n == line {
                    li.refused data-line=(n) {
                        code { (text) }
                        span.caret aria-hidden="true" { (" ".repeat(column.saturating_sub(1).min(text.chars().count()))) "^" }
                    }
                } @else {
                    li { code { (text) } }
                }
            }
        }
    }
}

fn dialog_page(
    who: &Session,
    flash: Option<Flash>,
    form: &DeployForm,
    refusal: Option<&str>,
) -> Markup {
    let size = form.size.parse().unwrap_or(0.1);
    let workers: u32 = form.workers.parse().unwrap_or(1);
    let body = html! {
        h1 { "Deploy an app" }
        @if let Some(message) = refusal {
            div.flash.refused role="alert" {
                p { strong { "Not deployed: " } (message) }
                @if let Some(at) = position(message) {
                    (marked_manifest(&form.manifest, at))
                }
            }
        }
        form.card.deploy method="post" action="/console/deploy" enctype="multipart/form-data" {
            (csrf(who))
            fieldset {
                legend { "Manifest" }
                label for="file" { "A manifest file" }
                input #file type="file" name="file" accept=".yaml,.yml,text/yaml";
                label for="manifest" { "or paste it" }
                textarea #manifest name="manifest" rows="14" spellcheck="false" { (form.manifest) }
            }
            fieldset.grid {
                legend { "Settings" }
                label { "Name" input name="name" value=(form.name) placeholder="the manifest's name:" autocomplete="off"; }
                label { "Workers" select name="workers" {
                    @for n in 1..=8u32 { option value=(n) selected[n == workers] { (n) } }
                } }
                label { "Size" (size_select("size", size)) }
                label.check { input type="checkbox" name="persistent" value="on" checked[form.persistent]; " Persistent queues (shared by the app's workers, kept in the queue service)" }
                label.check { input type="checkbox" name="encrypt" value="on" checked[form.encrypt]; " Seal queue messages at rest" }
                label { "Canary %" input type="number" name="canary" min="1" max="99" value=(form.canary) placeholder="all at once"; }
            }
            button.primary type="submit" { "Deploy" }
        }
    };
    view::page("Deploy", Section::Deploy, Some(who), flash, body)
}

/// `GET /console/deploy`.
pub(super) async fn dialog(Signed(who, flash): Signed) -> Response {
    let form = DeployForm {
        workers: "1".into(),
        size: "0.1".into(),
        encrypt: true,
        ..DeployForm::default()
    };
    dialog_page(&who, flash, &form, None).into_response()
}

/// `POST /console/deploy`: starts the deploy, and waits a moment for a
/// refusal to show on the dialog; otherwise shows its progress.
pub(super) async fn submit(
    State(console): State<Console>,
    Signed(who, _): Signed,
    form: Multipart,
) -> Response {
    let form = match DeployForm::read(form).await {
        Ok(f) => f,
        Err(e) => {
            let f = DeployForm::default();
            return (
                StatusCode::BAD_REQUEST,
                dialog_page(&who, None, &f, Some(&e)),
            )
                .into_response();
        }
    };
    if !csrf_ok(&who, &form.csrf) {
        return forged();
    }
    let req = match form.request() {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                dialog_page(&who, None, &form, Some(&e)),
            )
                .into_response();
        }
    };
    let name = form.app_name();
    let started_ms = crate::access::now_ms();
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let (console, who, name) = (console.clone(), who.clone(), name.clone());
        tokio::spawn(async move {
            if let Some(name) = &name {
                console.deploys.set(
                    &who.tenant,
                    name,
                    Progress {
                        started_ms,
                        outcome: None,
                    },
                );
            }
            let r: Result<AppStatus, Refused> = console.post(&who.key, "/v1/apps", &req).await;
            if let Some(name) = &name {
                let outcome = r.clone().map_err(|e| e.message);
                console.deploys.set(
                    &who.tenant,
                    name,
                    Progress {
                        started_ms,
                        outcome: Some(outcome),
                    },
                );
            }
            let _ = tx.send(r);
        });
    }
    let rx = async { rx.await.ok() };
    let waited = match &name {
        Some(_) => tokio::time::timeout(REFUSAL_WAIT, rx).await.ok().flatten(),
        // Without a name there is no progress page to show: the answer is awaited.
        None => rx.await,
    };
    match (waited, name) {
        (Some(Err(e)), _) if e.signed_out() => refused_page(&console, &who, e),
        (Some(Err(e)), _) => {
            (e.status, dialog_page(&who, None, &form, Some(&e.message))).into_response()
        }
        // Served already, or still under way: its progress page says which.
        (Some(Ok(_)) | None, Some(name)) => {
            Redirect::to(&format!("/console/apps/{}/progress", segment(&name))).into_response()
        }
        (Some(Ok(s)), None) => {
            let to = format!("/console/apps/{}", segment(&s.app.name));
            after(
                &console,
                &who,
                &to,
                Flash::Done(format!(
                    "{} v{} serves at {}",
                    s.app.name, s.app.version, s.url
                )),
            )
        }
        (None, None) => refused_page(
            &console,
            &who,
            Refused {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "the deploy's outcome was lost".into(),
            },
        ),
    }
}

/// The progress panel: how the deploy stands and the app's events since it started.
pub(super) fn progress_view(name: &str, p: &Progress, events: &[crate::model::Event]) -> Markup {
    html! {
        @match &p.outcome {
            None => p.progress.running role="status" data-outcome="running" { span.spinner aria-hidden="true" {} "Deploying " strong { (name) } "…" },
            Some(Ok(s)) => p.progress.done role="status" data-outcome="served" {
                strong { (name) } " v" (s.app.version) " serves at " a href=(s.url) { (s.url) } ". "
                a href={ "/console/apps/" (segment(name)) } { "Open the app" }
            },
            Some(Err(m)) => p.progress.failed role="alert" data-outcome="failed" {
                "Not deployed: " (m) " "
                a href="/console/deploy" { "Back to the dialog" }
            },
        }
        ol.events {
            @for e in events.iter().filter(|e| e.at_ms + 1000 >= p.started_ms) {
                li data-kind=(e.kind) { (view::time(e.at_ms)) " " span.kind { (e.kind) } " " span { (e.message) } }
            }
        }
    }
}

/// `GET /console/apps/{name}/progress`.
pub(super) async fn progress(
    State(console): State<Console>,
    Signed(who, flash): Signed,
    Path(name): Path<String>,
) -> Response {
    let Some(p) = console.deploys.get(&who.tenant, &name) else {
        return Redirect::to(&format!("/console/apps/{}", segment(&name))).into_response();
    };
    let events: Vec<crate::model::Event> = match console.get(&who.key, "/v1/events").await {
        Ok(e) => e,
        Err(e) => return refused_page(&console, &who, e),
    };
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| e.app.as_deref() == Some(name.as_str()))
        .collect();
    let live = format!("/console/apps/{}/progress/live", segment(&name));
    let body = html! {
        h1 { "Deploying " (name) }
        div hx-ext="sse" sse-connect=(live) {
            div sse-swap="progress" { (progress_view(&name, &p, &events)) }
        }
    };
    view::page(
        &format!("Deploying {name}"),
        Section::Deploy,
        Some(&who),
        flash,
        body,
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_refused_position() {
        assert_eq!(
            position("manifest refused: line 3, column 7: no such step"),
            Some((3, 7))
        );
        assert_eq!(position("manifest refused: line 3"), None);
        assert_eq!(position("no position"), None);
        assert_eq!(position("line 99999999999999999999999, column 1: x"), None);
    }

    #[test]
    fn marks_the_line_even_past_the_end() {
        let m = marked_manifest("a: 1\nb: 2\n", (9, 400)).into_string();
        assert!(!m.contains("data-line"), "{m}");
        let m = marked_manifest("a: 1\nb: <x>\n", (2, 4)).into_string();
        assert!(m.contains("data-line=\"2\""), "{m}");
        assert!(m.contains("b: &lt;x&gt;"), "{m}");
    }
}
