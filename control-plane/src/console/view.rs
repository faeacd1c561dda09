//! The console's page shell and the small pieces every page uses. Every
//! value is escaped by the templates (maud); nothing an app or a tenant
//! wrote is ever inserted as markup.

use maud::{DOCTYPE, Markup, html};

use super::assets;
use super::session::{Flash, Session};

/// Which section of the console a page belongs to (marked in the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Apps,
    Deploy,
    Zones,
    None,
}

/// A whole page: `title`, the signed-in person (if any), a one-shot
/// message, and `body`.
pub fn page(
    title: &str,
    section: Section,
    who: Option<&Session>,
    flash: Option<Flash>,
    body: Markup,
) -> Markup {
    let nav = |s: Section, href: &str, label: &str| {
        html! {
            a href=(href) aria-current=[(s == section).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"selfRequestsOnly":true}"#;
                title { (title) " · Worker Fabric" }
                link rel="stylesheet" href=(assets::url("console.css"));
                link rel="stylesheet" href=(assets::url("uPlot.min.css"));
                link rel="icon" href=(assets::url("favicon.svg")) type="image/svg+xml";
                script src=(assets::url("htmx.min.js")) defer {}
                script src=(assets::url("htmx-sse.js")) defer {}
                script src=(assets::url("uPlot.iife.min.js")) defer {}
                script src=(assets::url("console.js")) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console/apps" {
                        span.logo aria-hidden="true" { "◆" }
                        "Worker Fabric"
                    }
                    @if let Some(who) = who {
                        nav aria-label="Sections" {
                            (nav(Section::Apps, "/console/apps", "Apps"))
                            (nav(Section::Deploy, "/console/deploy", "Deploy"))
                            @if who.admin() {
                                (nav(Section::Zones, "/console/azs", "Zones"))
                            }
                        }
                        div.who {
                            span { "Tenant " strong data-tenant=(who.tenant) { (who.tenant) } }
                            form method="post" action="/console/sign-out" {
                                (csrf(who))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main {
                    @if let Some(flash) = flash {
                        (flash_box(&flash))
                    }
                    (body)
                }
            }
        }
    }
}

/// A one-shot message.
pub fn flash_box(flash: &Flash) -> Markup {
    match flash {
        Flash::Done(m) => html! { p.flash.done role="status" { (m) } },
        Flash::Refused(m) => html! { p.flash.refused role="alert" { (m) } },
    }
}

/// The hidden field every state-changing form carries.
pub fn csrf(who: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(who.csrf); }
}

/// A page that says what went wrong, for a person.
pub fn problem(who: Option<&Session>, title: &str, message: &str) -> Markup {
    page(
        title,
        Section::None,
        who,
        None,
        html! {
            section.card.problem {
                h1 { (title) }
                p { (message) }
                p { a href="/console/apps" { "Back to your apps" } }
            }
        },
    )
}

/// A worker's or app's state as a badge.
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge state-" (state) } { (state) } }
}

/// The last millisecond of year 9999, the latest time RFC 3339 writes.
const LATEST_MS: u64 = 253_402_300_799_999;

/// Unix milliseconds as RFC 3339, in a `<time>` (a time past year 9999,
/// which only a broken clock or a hostile record holds, shows as that).
pub fn time(ms: u64) -> Markup {
    let at = crate::access::rfc3339(ms.min(LATEST_MS));
    html! { time datetime=(at) { (at.replace('T', " ").trim_end_matches('Z')) " UTC" } }
}

/// A duration in milliseconds, short: `850 ms`, `12 s`, `4 min`, `3 h`.
pub fn age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

/// A worker size in vCores, as a person writes it.
pub fn size(vcores: f64) -> String {
    format!("{vcores} vCore{}", if vcores == 1.0 { "" } else { "s" })
}
