//! Names and bodies: every form round-trips, every name is valid and stays within its app.

use super::body::{decode_body, encode_body, sqs_safe};
use super::naming::{SQS_NAME_MAX, app_prefix, fnv1a, sqs_name, tomb_name};
use crate::backend::{Part, QueueId, Stored};
use crate::settings::Settings;

#[test]
fn bodies_round_trip_in_each_form() {
    for (body, sealed, kind) in [
        (b"{\"n\":1} with spaces".to_vec(), false, " t "),
        (b"nul \0 refused by SQS".to_vec(), false, " p "),
        (vec![1, 0, 255, 32], true, " s "),
        (Vec::new(), false, " t "),
    ] {
        let m = Stored {
            id: "0193-x".into(),
            body: body.clone(),
            sealed,
            enqueued_ms: 42,
        };
        let text = encode_body(&m);
        assert!(text.contains(kind) && sqs_safe(&text), "{text}");
        let back = decode_body(&text).unwrap();
        assert_eq!(
            (back.id.as_str(), back.body, back.sealed, back.enqueued_ms),
            ("0193-x", body, sealed, 42)
        );
    }
    assert!(decode_body("a bare message").is_none());
}

fn queue(app: &str, queue: &str) -> QueueId {
    QueueId {
        app: app.into(),
        queue: queue.into(),
    }
}

fn valid_sqs_name(name: &str) -> bool {
    (1..=SQS_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[test]
fn names_of_app_names_are_as_they_always_were() {
    let q = queue("orders", "incoming.v2");
    let hash = format!("{:08x}", fnv1a("incoming.v2"));
    assert_eq!(
        sqs_name("fabric-", &q, Part::Main),
        format!("fabric-orders_incoming-v2_{hash}")
    );
    assert_eq!(
        sqs_name("fabric-", &q, Part::Dead),
        format!("fabric-orders_incoming-v2_{hash}_dlq")
    );
}

#[test]
fn the_longest_app_ids_with_the_longest_prefix_name_valid_distinct_queues() {
    use common::app::{MAX_APP_NAME, MAX_RESOURCE_NAME, validate_app_id};
    let longest_id = format!("{}--{}", "a".repeat(MAX_APP_NAME), "z9".repeat(8));
    assert_eq!(longest_id.len(), 58);
    assert!(validate_app_id(&longest_id).is_ok());
    assert!(validate_app_id(&format!("{longest_id}x")).is_err());
    let queues = [
        "q".repeat(MAX_RESOURCE_NAME),
        format!("{}r", "q".repeat(MAX_RESOURCE_NAME - 1)),
        "a.b".repeat(MAX_RESOURCE_NAME / 3),
        "a-b".repeat(MAX_RESOURCE_NAME / 3),
        "x".into(),
    ];
    for prefix in ["", "fabric-", &"P".repeat(16)] {
        assert!(checked_prefix(prefix), "{prefix:?}");
        for len in 1..=MAX_APP_NAME {
            for app in [
                "a".repeat(len),
                format!("{}--{}", "a".repeat(len), "z9".repeat(8)),
                format!("{}--k", "a".repeat(len)),
            ] {
                let mut names = std::collections::BTreeSet::new();
                for name in &queues {
                    for part in [Part::Main, Part::Dead] {
                        let sqs = sqs_name(prefix, &queue(&app, name), part);
                        assert!(valid_sqs_name(&sqs), "{sqs:?} ({} chars)", sqs.len());
                        assert!(sqs.starts_with(&app_prefix(prefix, &app)), "{sqs}");
                        assert!(names.insert(sqs.clone()), "{sqs} twice");
                    }
                }
            }
        }
        let tomb = tomb_name(prefix, &longest_id);
        assert!(valid_sqs_name(&tomb), "{tomb} ({} chars)", tomb.len());
    }
}

fn checked_prefix(p: &str) -> bool {
    let settings = Settings {
        sqs_prefix: p.into(),
        ..Settings::default()
    };
    settings.validate().is_ok()
}

#[test]
fn an_apps_prefix_matches_its_own_queues_only() {
    let apps = ["shop", "shop--x", "shop--xy", "shop-1", "shopx", "s"];
    let long = "q".repeat(64);
    for prefix in ["fabric-", "P".repeat(16).as_str()] {
        for app in apps {
            let ours = app_prefix(prefix, app);
            for other in apps {
                for name in ["a", long.as_str()] {
                    for part in [Part::Main, Part::Dead] {
                        let sqs = sqs_name(prefix, &queue(other, name), part);
                        assert_eq!(sqs.starts_with(&ours), app == other, "{ours} vs {sqs}");
                    }
                }
                assert!(!tomb_name(prefix, other).starts_with(&ours));
            }
            let marker = tomb_name(prefix, "");
            assert!(!ours.starts_with(&marker), "{ours} vs {marker}");
        }
    }
}
