//! Crash safety of queue-svc on both backends: `kill -9` with leases
//! outstanding, restart, and every acked message stays gone while every
//! unacked one is delivered again.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::token::{Scope, TokenKey};
use fabric_tests::process::{Proc, Stream};
use fabric_tests::{Emulators, fabric_command};
use nix::sys::signal::Signal;
use queue_svc::api::QueueSpec;
use queue_svc::client::{Client, LeaseOptions};

const WAIT: Duration = Duration::from_secs(30);
const QUEUE: &str = "jobs";
const APP: &str = "crashy";

/// Starts `fabric serve queue-svc` on 127.0.0.1:0 and returns it with its base URL, once ready.
async fn start(data: &Path, backend: &str, prefix: &str) -> (Proc, String) {
    let mut cmd = fabric_command();
    cmd.args(["serve", "queue-svc"])
        .env("RUST_LOG", "info")
        .env("FABRIC_LOG_FORMAT", "json")
        .env("FABRIC_LISTEN", "127.0.0.1:0")
        .env("FABRIC_DATA_DIR", data)
        .env("FABRIC_BACKEND", backend)
        .env("FABRIC_SQS_PREFIX", prefix);
    let mut svc = Proc::spawn(cmd);
    let line = svc.wait_for_line(WAIT, |s, l| s == Stream::Stderr && l.contains("listening"));
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let base = format!("http://{}", event["addr"].as_str().expect("addr field"));
    let http = reqwest::Client::new();
    // What the service logged before it listened, for the panic.
    let seen = &svc.seen;
    // 10 s: what 500 tries 20 ms apart allowed.
    fabric_tests::until(
        "queue-svc ready",
        Duration::from_secs(10),
        async || match http.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            _ => Err(seen),
        },
    )
    .await;
    (svc, base)
}

fn lease_opts(lock: Duration, wait: Duration) -> LeaseOptions {
    LeaseOptions {
        max: 10,
        wait,
        lock,
    }
}

async fn kill_with_leases_outstanding(backend: &str) {
    if backend == "sqs" {
        Emulators::from_env();
    }
    let data = tempfile::tempdir().unwrap();
    let unique = fabric_tests::unique_name("c").replace('-', "");
    let prefix = format!("{}-", &unique[..unique.len().min(15)]);
    let key = TokenKey::load_or_generate(&data.path().join(common::secrets::SECRET_FILE)).unwrap();
    let token = key.issue(APP, Scope::Worker, Duration::from_secs(3600));

    let (svc, base) = start(data.path(), backend, &prefix).await;
    let c = Client::new(&base, APP, &token);
    let spec = QueueSpec {
        encrypted: true,
        max_deliveries: Some(10),
    };
    c.declare(QUEUE, &spec).await.unwrap();
    let mut all = BTreeSet::new();
    for chunk in 0..3 {
        let bodies: Vec<String> = (0..10).map(|i| format!("job-{}", chunk * 10 + i)).collect();
        c.publish_batch(QUEUE, bodies.clone()).await.unwrap();
        all.extend(bodies);
    }
    // Lease 20 with a short lock, ack 10 of them, hold the other 10.
    let mut leased = Vec::new();
    while leased.len() < 20 {
        let got = c
            .lease(
                QUEUE,
                lease_opts(Duration::from_secs(2), Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert!(!got.is_empty(), "leased only {}", leased.len());
        leased.extend(got);
    }
    leased.truncate(20);
    let (acked, held) = leased.split_at(10);
    let r = c
        .ack_batch(acked.iter().map(|m| m.lease_id.clone()).collect())
        .await
        .unwrap();
    assert_eq!(r.acked, 10, "{r:?}");
    let acked: BTreeSet<String> = acked.iter().map(|m| m.body.clone()).collect();
    assert_eq!(held.len(), 10);

    svc.signal(Signal::SIGKILL);
    drop(svc);

    let (_svc, base) = start(data.path(), backend, &prefix).await;
    let c = Client::new(&base, APP, &token);
    let expected: BTreeSet<String> = all.difference(&acked).cloned().collect();
    let mut got = BTreeSet::new();
    let long = Duration::from_secs(60);
    while got.len() < expected.len() {
        let batch = c
            .lease(QUEUE, lease_opts(long, Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(
            !batch.is_empty(),
            "after the restart only {} of {} unacked messages came back",
            got.len(),
            expected.len()
        );
        for m in batch {
            assert!(!acked.contains(&m.body), "acked {} came back", m.body);
            got.insert(m.body);
        }
    }
    assert_eq!(got, expected, "every unacked message, nothing else");
    // Nothing more: the acked ones stay gone once every lock has run out.
    let rest = c
        .lease(QUEUE, lease_opts(long, Duration::from_secs(3)))
        .await
        .unwrap();
    assert!(rest.is_empty(), "unexpected: {rest:?}");

    if backend == "embedded" {
        let raw = std::fs::read(data.path().join(queue_svc::EMBEDDED_FILE)).unwrap();
        assert!(
            !fabric_tests::contains(&raw, b"job-1"),
            "an encrypted queue's plaintext is in the file"
        );
    }
}

#[tokio::test]
async fn embedded_survives_kill_9() {
    kill_with_leases_outstanding("embedded").await;
}

#[tokio::test]
async fn sqs_survives_kill_9() {
    kill_with_leases_outstanding("sqs").await;
}
