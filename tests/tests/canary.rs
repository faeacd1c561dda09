//! Canary deploys against a whole fabric (`fabric up`): a 10% canary takes
//! about a tenth of 2,000 requests (its direct URLs stay the serving
//! version's) and is promoted; a canary answering 500s is aborted by
//! itself while the serving version fails no request.

use std::time::Duration;

use fabric_tests::fabric::{Fabric, ready};

fn answering(body: &str) -> String {
    format!(
        "name: shop\nflows:\n  - name: hello\n    source: {{ http: {{ method: GET, path: /hello }} }}\n    steps:\n      - set-payload: '\"{body}\"'\n"
    )
}

const BROKEN: &str = "name: shop\nflows:\n  - name: hello\n    source: { http: { method: GET, path: /hello } }\n    steps:\n      - raise-error: { type: \"APP:BROKEN\", message: '\"broken\"' }\n";

fn deploy(f: &Fabric, manifest: &str, extra: &[&str]) -> fabric_tests::fabric::Run {
    f.deploy_text(manifest, 2, extra, None)
}

/// `n` requests to `host`'s `/hello`, 16 at a time: each answer's status and body.
async fn requests(f: &Fabric, host: &str, n: usize) -> Vec<(u16, String)> {
    let http = reqwest::Client::new();
    let url = format!("http://{}/hello", f.proxy);
    let mut answers = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let sent = chunk.iter().map(|_| async {
            let r = http
                .get(&url)
                .header("host", host)
                .send()
                .await
                .expect("an answer");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        });
        answers.extend(futures::future::join_all(sent).await);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_canary_takes_a_tenth_of_the_requests_and_is_promoted() {
    let f = Fabric::start();
    let run = deploy(&f, &answering("v1"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = deploy(&f, &answering("v2"), &["--canary", "10"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let shown = f.cli(&["apps", "show", "shop"]);
    assert!(
        shown
            .stdout
            .contains("canary: v2 takes 10% of the requests"),
        "{}",
        shown.stdout
    );

    let answers = requests(&f, "shop.fabric.localhost", 2000).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "no request fails");
    let to_canary = answers.iter().filter(|(_, b)| b.contains("v2")).count();
    assert!(
        (140..=260).contains(&to_canary),
        "{to_canary} of 2000 requests went to a 10% canary"
    );
    // Direct URLs are the serving version's.
    for (_, body) in requests(&f, "shop-1.fabric.localhost", 50).await {
        assert!(body.contains("v1"), "{body}");
    }
    // While the canary runs, other changes wait for its promotion or abort.
    let refused = f.cli(&["apps", "scale", "shop", "--workers", "3"]);
    assert!(
        refused.stderr.contains("a canary of shop (v2) is running"),
        "{}",
        refused.stderr
    );

    let run = f.cli(&["apps", "promote", "shop"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        requests(&f, "shop.fabric.localhost", 100)
            .await
            .iter()
            .all(|(s, b)| *s == 200 && b.contains("v2")),
        "the promoted version takes every request"
    );
    let ws = f.wait_workers("shop", "only v2's workers left", |ws| {
        ready(ws, 2) && ws.iter().all(|w| w["version"] == 2)
    });
    assert_eq!(ws.len(), 2);
    let history = f.cli(&["apps", "history", "shop"]);
    assert!(
        history.stdout.contains("promote canary"),
        "{}",
        history.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_aborted_by_itself_and_the_serving_version_fails_nothing() {
    let f = Fabric::start_env(&[
        ("FABRIC_CANARY__PERIOD", "1s"),
        ("FABRIC_CANARY__WINDOW", "5s"),
        ("FABRIC_CANARY__MIN_REQUESTS", "10"),
    ]);
    let run = deploy(&f, &answering("v1"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = deploy(&f, BROKEN, &["--canary", "50"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let mut seen = Vec::new();
    let aborted = fabric_tests::until(
        "the canary aborted by itself",
        Duration::from_secs(60),
        async || {
            seen.extend(requests(&f, "shop.fabric.localhost", 64).await);
            let events = f.cli(&["events", "--output", "json"]).stdout;
            events
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["kind"] == "canary.aborted")
                .map(|e| e["message"].as_str().unwrap_or_default().to_string())
                .ok_or(seen.len())
        },
    )
    .await;
    assert!(
        aborted.contains("v2 canary is retired: 5xx on"),
        "{aborted}"
    );
    // Every answer was the serving version's, or the canary's own error.
    for (status, body) in &seen {
        match status {
            200 => assert!(body.contains("v1"), "{body}"),
            500 => assert!(body.contains("APP:BROKEN"), "{body}"),
            other => panic!("a request failed with {other}: {body}"),
        }
    }
    assert!(
        seen.iter().any(|(s, _)| *s == 500),
        "the canary took requests"
    );
    // Retired: every request is the serving version's again.
    f.wait_workers("shop", "only v1's workers left", |ws| {
        ready(ws, 2) && ws.iter().all(|w| w["version"] == 1)
    });
    assert!(
        requests(&f, "shop.fabric.localhost", 100)
            .await
            .iter()
            .all(|(s, b)| *s == 200 && b.contains("v1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_counts_against_the_quota_beside_the_serving_version() {
    let f = Fabric::start_env(&[("FABRIC_TENANT_QUOTA__WORKERS", "3")]);
    let acme = f.tenant("acme").await;
    let as_acme = |extra: &[&str], manifest: &str| f.deploy_text(manifest, 2, extra, Some(&acme));
    let run = as_acme(&[], &answering("v1"));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Two serving workers and two canary workers would be four, past three.
    let run = as_acme(&["--canary", "10"], &answering("v2"));
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("tenant acme would run 4 workers"),
        "{}",
        run.stderr
    );
    assert!(
        f.cli(&["apps", "show", "shop"])
            .stdout
            .lines()
            .all(|l| !l.starts_with("canary:"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_of_no_app_or_of_a_weight_out_of_range_is_refused_with_nothing_started() {
    let f = Fabric::start();
    let client = control_plane::client::Client::new(&f.url(), &f.admin_key());
    let canary = |weight| control_plane::model::DeployRequest {
        canary: Some(weight),
        ..control_plane::model::DeployRequest::of(answering("v1"), 1, 0.1)
    };
    let refused = client
        .deploy(&canary(10))
        .await
        .expect_err("no serving version");
    assert!(refused.to_string().contains("deploy it first"), "{refused}");
    assert!(
        f.cli(&["apps", "show", "shop"]).code != Some(0),
        "nothing was reserved"
    );
    let run = deploy(&f, &answering("v1"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for weight in [0, 100, u8::MAX] {
        let refused = client
            .deploy(&canary(weight))
            .await
            .expect_err("out of range");
        assert!(
            refused.to_string().contains("1 to 99 percent"),
            "{weight}: {refused}"
        );
    }
    // A weight that is not a percentage at all is a bad request, not a panic.
    let http = reqwest::Client::new();
    for body in [
        serde_json::json!({"manifest": answering("v2"), "workers": 1, "size": 0.1, "canary": 1000}),
        serde_json::json!({"manifest": answering("v2"), "workers": 1, "size": 0.1, "canary": -1}),
        serde_json::json!({"manifest": answering("v2"), "workers": 1, "size": 0.1, "canary": "10"}),
    ] {
        let r = http
            .post(format!("{}/v1/apps", f.url()))
            .bearer_auth(f.admin_key())
            .json(&body)
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 400, "{body}");
    }
    let ws = f.workers("shop");
    assert!(
        ready(&ws, 2) && ws.iter().all(|w| w["version"] == 1),
        "v1 alone serves: {ws:?}"
    );
}
