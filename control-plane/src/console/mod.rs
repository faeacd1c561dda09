//! The web console, served by the control plane under `/console`: a list
//! of apps, an app's workers per zone, queues, logs, properties and
//! history, a deploy dialog, and the zones (for the admin).
//!
//! Pages are rendered on the server (maud) and readable without
//! JavaScript; htmx swaps in what server-sent events push (workers, queues,
//! events), and uPlot draws a queue's depth. Every page and form goes
//! through the API in process with the signed-in key ([`calls`]), so the
//! console can show and do exactly what that key may. The rooms:
//!
//! - [`session`]: sessions, cookies, CSRF tokens;
//! - [`calls`]: the in-process API calls;
//! - [`view`]: the page shell and shared pieces; [`assets`]: the static files;
//! - [`apps`]: the apps list and an app's live parts; [`app`]: an app's
//!   page and its forms; [`dead_letters`]: a queue's dead letters;
//! - [`deploy`]: the deploy dialog and its progress;
//! - [`zones`]: the zones (admin);
//! - [`live`]: the live updates; [`samples`]: queue depths over time.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api::Api;

mod app;
mod apps;
mod assets;
mod calls;
mod dead_letters;
mod deploy;
mod live;
mod samples;
pub(crate) mod session;
mod view;
mod zones;

#[cfg(test)]
mod tests;

use calls::Refused;
use session::{Flash, Session, Sessions};
use view::Section;

/// The console's state: the API it calls, its sessions, the deploys it
/// started, and the queue depths it samples.
#[derive(Clone)]
pub(crate) struct Console {
    /// The API's routes, called in process.
    api: Router,
    sessions: Arc<Sessions>,
    deploys: Arc<deploy::Deploys>,
    samples: Arc<samples::Samples>,
    /// Whether cookies are marked `Secure` (the console is reached over TLS).
    secure_cookies: bool,
}

/// How the console is set up (`[console]` in the control plane's settings).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// How long a session lasts from sign-in.
    #[serde(with = "humantime_serde")]
    pub session: std::time::Duration,
    /// How long a session lasts with no page asked for.
    #[serde(with = "humantime_serde")]
    pub idle: std::time::Duration,
    /// Mark cookies `Secure`: the console is reached over TLS (through a
    /// proxy that terminates it). A request that says it came over HTTPS
    /// (`X-Forwarded-Proto: https`) gets `Secure` cookies either way.
    pub secure_cookies: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        let lifetimes = session::Lifetimes::default();
        ConsoleSettings {
            session: lifetimes.absolute,
            idle: lifetimes.idle,
            secure_cookies: false,
        }
    }
}

impl Console {
    /// A console over `api` (the API's routes), sampling queue depths of
    /// `internal`'s apps until `shutdown`.
    pub fn start(
        api: Router,
        internal: Api,
        settings: ConsoleSettings,
        shutdown: &common::shutdown::Shutdown,
    ) -> Self {
        let samples = Arc::new(samples::Samples::default());
        {
            let (samples, sd) = (samples.clone(), shutdown.clone());
            shutdown.spawn("console-samples", async move {
                samples.run(internal, sd).await;
                Ok::<_, std::convert::Infallible>(())
            });
        }
        Console {
            api,
            sessions: Arc::new(Sessions::new(session::Lifetimes {
                absolute: settings.session,
                idle: settings.idle,
            })),
            deploys: Arc::default(),
            samples,
            secure_cookies: settings.secure_cookies,
        }
    }

    /// The console's routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/console", get(|| async { Redirect::to("/console/apps") }))
            .route("/console/", get(|| async { Redirect::to("/console/apps") }))
            .route("/console/sign-in", get(sign_in_page).post(sign_in))
            .route("/console/sign-out", post(sign_out))
            .route("/console/apps", get(apps::list))
            .route("/console/apps/live", get(live::apps))
            .route("/console/apps/{name}", get(app::show))
            .route("/console/apps/{name}/live", get(live::app))
            .route("/console/apps/{name}/scale", post(app::scale))
            .route("/console/apps/{name}/restart", post(app::restart))
            .route("/console/apps/{name}/delete", post(app::delete))
            .route("/console/apps/{name}/properties", post(app::properties))
            .route("/console/apps/{name}/rollback", post(app::rollback))
            .route("/console/apps/{name}/autoscale", post(app::autoscale))
            .route("/console/apps/{name}/promote", post(app::promote))
            .route("/console/apps/{name}/abort", post(app::abort))
            .route(
                "/console/apps/{name}/queues/{queue}",
                get(dead_letters::show).post(dead_letters::reveal),
            )
            .route(
                "/console/apps/{name}/queues/{queue}/redrive",
                post(dead_letters::redrive),
            )
            .route("/console/deploy", get(deploy::dialog).post(deploy::submit))
            .route("/console/apps/{name}/progress", get(deploy::progress))
            .route("/console/apps/{name}/progress/live", get(live::progress))
            .route("/console/azs", get(zones::page))
            .route("/console/azs/live", get(live::zones))
            .route("/console/azs/{az}/{action}", post(zones::act))
            .route("/console/assets/{name}", get(assets::serve))
            .layer(axum::extract::DefaultBodyLimit::max(deploy::MAX_UPLOAD))
            .layer(axum::middleware::from_fn(guard))
            .with_state(self)
    }

    /// Whether a response to `parts` sets `Secure` cookies.
    fn secure(&self, parts: &Parts) -> bool {
        self.secure_cookies
            || parts
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    }
}

/// What every console response carries: a content security policy that
/// allows only the console's own scripts and styles, no framing, no
/// sniffing, no caching of pages, and the time the server spent on it
/// (`Server-Timing`). A state-changing request from another origin is
/// refused before any handler sees it.
async fn guard(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    if request.method() != Method::GET
        && request.method() != Method::HEAD
        && !same_origin(request.headers(), authority.as_deref())
    {
        return (StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
    }
    let asset = request.uri().path().starts_with("/console/assets/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let spent = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={spent:.2}")) {
        h.insert("server-timing", v);
    }
    response
}

/// Whether a request's `Origin` (or, lacking it, `Referer`) is the host it
/// was sent to (its `Host`, or over HTTP/2 its `:authority`); a request
/// that names neither (a form posted by an older browser, a script) is let
/// through to the CSRF token's check.
fn same_origin(headers: &axum::http::HeaderMap, authority: Option<&str>) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(authority);
    let origin = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match (origin, host) {
        (None, _) => true,
        (Some(o), Some(host)) => {
            let rest = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .unwrap_or("");
            rest.split('/').next() == Some(host)
        }
        (Some(_), None) => false,
    }
}

/// A signed-in request: its session and the message left for its page.
pub(super) struct Signed(Session, Option<Flash>);

impl FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        match console.sessions.find(&parts.headers) {
            Some((session, flash)) => Ok(Signed(session, flash)),
            None if parts.uri.path().ends_with("/live") => {
                // A live stream of a page whose session ended: the page
                // shows it at its next load; nothing to redirect.
                Err(StatusCode::UNAUTHORIZED.into_response())
            }
            None => Err(Redirect::to("/console/sign-in").into_response()),
        }
    }
}

/// Where to go after a form: `to`, with `flash` shown there.
fn after(console: &Console, who: &Session, to: &str, flash: Flash) -> Response {
    console.sessions.flash(&who.id, flash);
    Redirect::to(to).into_response()
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

/// The answer to a form whose CSRF token is wrong.
fn forged() -> Response {
    (
        StatusCode::FORBIDDEN,
        page_for_problem(
            None,
            "Form expired",
            "This form was not sent by this console session (or the session ended). Reload the page and try again.",
        ),
    )
        .into_response()
}

/// Whether a form's `csrf` field is the session's token.
fn csrf_ok(who: &Session, sent: &str) -> bool {
    session::same(&who.csrf, sent)
}

fn page_for_problem(who: Option<&Session>, title: &str, message: &str) -> Markup {
    view::problem(who, title, message)
}

/// The page for an API refusal of a page's data: not found as a 404 (what
/// the API answers for another tenant's app), the key revoked as the
/// sign-in page, anything else with the API's message.
fn refused_page(console: &Console, who: &Session, e: Refused) -> Response {
    if e.signed_out() {
        console.sessions.end(&who.id);
        return Redirect::to("/console/sign-in").into_response();
    }
    let title = match e.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::TOO_MANY_REQUESTS => "Slow down",
        s if s.is_client_error() => "Refused",
        _ => "Something went wrong",
    };
    (e.status, view::problem(Some(who), title, &e.message)).into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    key: String,
    csrf: String,
}

/// `GET /console/sign-in`: the form, with a fresh CSRF token in a cookie
/// and in the form (a sign-in cannot be forged either).
async fn sign_in_page(State(console): State<Console>, parts: Parts) -> Response {
    sign_in_form(&console, &parts, None, StatusCode::OK)
}

fn sign_in_form(
    console: &Console,
    parts: &Parts,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let token = session::random_token();
    let body = html! {
        section.card.sign-in {
            h1 { "Sign in" }
            p.muted { "Use an API key: the admin key `fabric up` wrote, or a tenant's key from `fabric tenants create` or `fabric keys create`." }
            @if let Some(error) = error {
                p.flash.refused role="alert" { (error) }
            }
            form method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(token);
                label for="key" { "API key" }
                input #key type="password" name="key" autocomplete="current-password" required autofocus;
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    let (name, cookie) = session::set_cookie(
        session::SIGN_IN_COOKIE,
        &token,
        std::time::Duration::from_secs(3600),
        console.secure(parts),
    );
    (
        status,
        [(name, cookie)],
        view::page("Sign in", Section::None, None, None, body),
    )
        .into_response()
}

/// `POST /console/sign-in`: checks the key with the API (`GET /v1/keys`
/// names the caller's own key and tenant) and starts a session.
async fn sign_in(
    State(console): State<Console>,
    parts: Parts,
    Form(form): Form<SignInForm>,
) -> Response {
    let cookie_token = session::cookie(&parts.headers, session::SIGN_IN_COOKIE).unwrap_or("");
    if cookie_token.is_empty() || !session::same(cookie_token, &form.csrf) {
        return forged();
    }
    let key = form.key.trim().to_string();
    let keys: Result<Vec<crate::access::KeyInfo>, Refused> = console.get(&key, "/v1/keys").await;
    let tenant = match keys.map(|ks| ks.into_iter().find(|k| k.current)) {
        Ok(Some(k)) => k.tenant,
        Ok(None) => {
            return sign_in_form(
                &console,
                &parts,
                Some("this key is not known"),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => {
            let status = if e.signed_out() {
                StatusCode::UNAUTHORIZED
            } else {
                e.status
            };
            return sign_in_form(&console, &parts, Some(&e.message), status);
        }
    };
    let session = console.sessions.start(key, tenant);
    let secure = console.secure(&parts);
    let lifetime = console.sessions.lifetimes().absolute;
    let (name, cookie) = session::set_cookie(session::COOKIE_NAME, &session.id, lifetime, secure);
    let (gone, spent) = session::set_cookie(
        session::SIGN_IN_COOKIE,
        "",
        std::time::Duration::ZERO,
        secure,
    );
    (
        axum::response::AppendHeaders([(name, cookie), (gone, spent)]),
        Redirect::to("/console/apps"),
    )
        .into_response()
}

/// A form with no fields but its CSRF token.
#[derive(Deserialize)]
struct Nothing {}

/// What a state-changing form sends: its CSRF token beside its fields.
#[derive(Deserialize)]
struct WithCsrf<F> {
    csrf: String,
    #[serde(flatten)]
    form: F,
}

/// A form posted by a signed-in session with the session's CSRF token:
/// the session and the form's fields. Every state-changing form but the
/// sign-in and the deploy upload (which check theirs themselves) is read
/// through it, so none can forget the check: a wrong token is 403 before
/// the handler runs.
pub(super) struct Posted<F>(Session, F);

impl<F: serde::de::DeserializeOwned + Send> axum::extract::FromRequest<Console> for Posted<F> {
    type Rejection = Response;

    async fn from_request(request: Request, console: &Console) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Signed(who, _) = Signed::from_request_parts(&mut parts, console).await?;
        let request = Request::from_parts(parts, body);
        let Form(sent) = Form::<WithCsrf<F>>::from_request(request, console)
            .await
            .map_err(|e| {
                let page = view::problem(Some(&who), "Form refused", &e.body_text());
                (StatusCode::BAD_REQUEST, page).into_response()
            })?;
        if !csrf_ok(&who, &sent.csrf) {
            return Err(forged());
        }
        Ok(Posted(who, sent.form))
    }
}

/// `POST /console/sign-out`.
async fn sign_out(
    State(console): State<Console>,
    parts: Parts,
    Posted(who, Nothing {}): Posted<Nothing>,
) -> Response {
    console.sessions.end(&who.id);
    let (name, cookie) = session::set_cookie(
        session::COOKIE_NAME,
        "",
        std::time::Duration::ZERO,
        console.secure(&parts),
    );
    ([(name, cookie)], Redirect::to("/console/sign-in")).into_response()
}
