//! The console's pieces on hostile input: every text an app or a tenant
//! wrote is escaped, live fragments cannot break the event stream,
//! sessions end, and forms from elsewhere are refused. (Whole pages and
//! forms against a running fabric are in `tests/tests/console_pages.rs`;
//! in a browser, `tests/tests/console.rs`.)

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};

use super::apps::{chart_view, events_view, queues_view, workers_view};
use super::same_origin;
use super::samples::Sample;
use super::session::{self, Lifetimes, Sessions};
use crate::model::{AppQueues, AzStatus, Event, QueueInfo, WorkerInfo, WorkerState};

const HOSTILE: &str = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&amp;";

fn assert_escaped(html: &str) {
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("<img src=x"), "{html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");
}

#[test]
fn app_written_text_is_escaped_everywhere_it_shows() {
    let event = Event {
        seq: 1,
        at_ms: 0,
        app: Some("a".into()),
        app_id: None,
        tenant: None,
        kind: HOSTILE.into(),
        message: HOSTILE.into(),
    };
    assert_escaped(&events_view(&[event]).into_string());
    let queues = AppQueues {
        app: "a".into(),
        mode: "persistent".into(),
        queues: vec![QueueInfo {
            name: HOSTILE.into(),
            depth: Some(1),
            in_flight: Some(0),
            dlq_depth: Some(2),
            oldest_age_ms: Some(5),
            encrypted: true,
        }],
    };
    let html = queues_view("a", Some(&queues)).into_string();
    assert_escaped(&html);
    assert!(
        !html.contains("href=\"/console/apps/a/queues/<"),
        "a queue name in a link is escaped as a path segment: {html}"
    );
    let worker = WorkerInfo {
        id: "a-1".into(),
        index: 1,
        version: 1,
        az: HOSTILE.into(),
        state: WorkerState::Ready,
        address: "127.0.0.1:1".into(),
        pid: Some(7),
        restarts: 0,
        url: format!("http://x/{HOSTILE}"),
    };
    let zones = [AzStatus {
        name: HOSTILE.into(),
        up: true,
    }];
    assert_escaped(&workers_view(&zones, &[worker]).into_string());
}

#[test]
fn chart_data_cannot_leave_its_attribute() {
    let sample = |at_ms| Sample {
        at_ms,
        depths: BTreeMap::from([(HOSTILE.to_string(), 3)]),
    };
    let samples = vec![sample(1_000), sample(6_000)];
    let html = chart_view(&samples).into_string();
    assert_escaped(&html);
    assert!(!html.contains("\"'>"), "{html}");
}

#[test]
fn a_carriage_return_in_a_live_fragment_does_not_break_the_stream() {
    // SSE cannot carry a CR: it is sent as a character reference, never a panic.
    let e = super::live::event("events", "line one\rline two\r\nthree");
    drop(e);
}

fn same_origin_h(h: &HeaderMap) -> bool {
    same_origin(h, None)
}

#[test]
fn forms_from_another_origin_are_refused() {
    let headers = |pairs: &[(header::HeaderName, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, HeaderValue::from_str(v).unwrap());
        }
        h
    };
    let host = (header::HOST, "127.0.0.1:8000");
    assert!(same_origin_h(&headers(std::slice::from_ref(&host))));
    assert!(same_origin_h(&headers(&[
        host.clone(),
        (header::ORIGIN, "http://127.0.0.1:8000")
    ])));
    assert!(!same_origin_h(&headers(&[
        host.clone(),
        (header::ORIGIN, "http://evil.example")
    ])));
    assert!(!same_origin_h(&headers(&[
        host.clone(),
        (header::ORIGIN, "http://127.0.0.1:8000.evil.example")
    ])));
    assert!(!same_origin_h(&headers(&[
        host.clone(),
        (header::REFERER, "https://evil.example/127.0.0.1:8000")
    ])));
    assert!(!same_origin_h(&headers(&[host, (header::ORIGIN, "null")])));
    // Over HTTP/2 the host is the request's authority.
    let h2 = headers(&[(header::ORIGIN, "http://127.0.0.1:8000")]);
    assert!(same_origin(&h2, Some("127.0.0.1:8000")));
    assert!(!same_origin(&h2, Some("127.0.0.1:9000")));
    assert!(!same_origin(&h2, None));
}

fn cookie_headers(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("other=1; {}={id}; x=y", session::COOKIE_NAME)).unwrap(),
    );
    h
}

#[test]
fn a_session_is_found_by_its_cookie_and_ends() {
    let sessions = Sessions::new(Lifetimes::default());
    let s = sessions.start("wfk_key".into(), "acme".into());
    let (found, flash) = sessions.find(&cookie_headers(&s.id)).expect("the session");
    assert_eq!(found.tenant, "acme");
    assert!(flash.is_none());
    sessions.flash(&s.id, session::Flash::Done("done".into()));
    let (_, flash) = sessions.find(&cookie_headers(&s.id)).expect("the session");
    assert_eq!(flash, Some(session::Flash::Done("done".into())));
    let (_, flash) = sessions.find(&cookie_headers(&s.id)).expect("the session");
    assert!(flash.is_none(), "a message shows once");
    assert!(sessions.find(&cookie_headers("forged")).is_none());
    sessions.end(&s.id);
    assert!(sessions.find(&cookie_headers(&s.id)).is_none());
    assert!(
        !format!("{found:?}").contains("wfk_key"),
        "the key never shows in logs"
    );
}

#[test]
fn a_tenant_holds_few_sessions_and_short_messages() {
    let sessions = Sessions::new(Lifetimes::default());
    let other = sessions.start("k2".into(), "globex".into());
    let first = sessions.start("k".into(), "acme".into());
    for _ in 1..session::MAX_SESSIONS_PER_TENANT {
        sessions.start("k".into(), "acme".into());
    }
    sessions.start("k".into(), "acme".into());
    assert!(
        sessions.find(&cookie_headers(&first.id)).is_none(),
        "past its bound, a tenant's own oldest session ends"
    );
    assert!(
        sessions.find(&cookie_headers(&other.id)).is_some(),
        "never another tenant's"
    );
    sessions.flash(&other.id, session::Flash::Refused("x".repeat(1 << 20)));
    let (_, flash) = sessions.find(&cookie_headers(&other.id)).unwrap();
    let Some(session::Flash::Refused(m)) = flash else {
        panic!("a message")
    };
    assert_eq!(
        m.chars().count(),
        session::MAX_FLASH + 1,
        "cut, with an ellipsis"
    );
}

#[test]
fn sessions_expire() {
    let idle = Sessions::new(Lifetimes {
        absolute: Duration::from_secs(3600),
        idle: Duration::ZERO,
    });
    let s = idle.start("k".into(), "acme".into());
    assert!(idle.find(&cookie_headers(&s.id)).is_none(), "idle too long");
    assert!(!idle.touch(&s.id));
    let absolute = Sessions::new(Lifetimes {
        absolute: Duration::ZERO,
        idle: Duration::from_secs(3600),
    });
    let s = absolute.start("k".into(), "acme".into());
    assert!(
        absolute.find(&cookie_headers(&s.id)).is_none(),
        "past its lifetime"
    );
}

#[test]
fn cookies_are_http_only_strict_and_secure_under_tls() {
    let (_, plain) = session::set_cookie("c", "v", Duration::from_secs(60), false);
    assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
    assert!(!plain.contains("Secure"));
    let (_, tls) = session::set_cookie("c", "v", Duration::from_secs(60), true);
    assert!(tls.ends_with("; Secure"));
}

#[test]
fn any_time_shows_without_a_panic() {
    for ms in [0, 1_796_115_174_652, u64::MAX] {
        assert!(super::view::time(ms).into_string().contains("<time"));
    }
}

#[test]
fn tokens_compare_whole() {
    assert!(session::same("abc", "abc"));
    assert!(!session::same("abc", "abd"));
    assert!(!session::same("abc", "ab"));
    assert!(!session::same("", "a"));
    assert_ne!(session::random_token(), session::random_token());
}
