//! Properties, secure properties, configuration history and rollback,
//! through the `fabric` command line against a real local fabric (the
//! embedded backend, and the AWS backend on the emulators).

use std::path::Path;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use fabric_tests::fabric::Fabric;
use serde_json::Value;

/// A secure property's value: it must appear nowhere but in the flow's hands.
const MARKER: &str = "MARKER-s3cr3t-7f1e9a";

const MANIFEST: &str = r#"name: props
properties: { greeting: hello }
flows:
  - name: show
    source: { http: { method: GET, path: /props } }
    steps:
      - set-payload: '{greeting: $props.greeting, knows: ($props.password | explode | add)}'
"#;

/// What the flow makes of the secret (the sum of its characters), so that
/// the test sees it at work without the flow ever answering it.
fn knows() -> u64 {
    MARKER.chars().map(|c| c as u64).sum()
}

fn manifest(dir: &Path) -> String {
    let path = dir.join("props.yaml");
    std::fs::write(&path, MANIFEST).unwrap();
    path.display().to_string()
}

/// What the app answers through the load balancer, once it answers.
async fn props(fabric: &Fabric) -> Value {
    fabric_tests::until(
        "props through the load balancer",
        Duration::from_secs(30),
        async || {
            let r = reqwest::Client::new()
                .get(format!("http://{}/props", fabric.proxy))
                .header("host", "props.fabric.localhost")
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => Ok(r.json::<Value>().await.unwrap()),
                other => Err(other.map(|r| r.status())),
            }
        },
    )
    .await
}

/// Every file under `dir`, read raw.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Deploys with a property and a secure one, checks both in a flow and the
/// secret's absence from every answer, then set, unset, history and
/// rollback. Returns the fabric's own output, for the caller's scan.
async fn properties_round(fabric: &Fabric, file: &str) {
    let run = fabric.cli(&[
        "apps",
        "deploy",
        file,
        "--workers",
        "1",
        "--size",
        "0.1",
        "--property",
        "greeting=hi",
        "--secure-property",
        &format!("password={MARKER}"),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(!run.stdout.contains(MARKER) && !run.stderr.contains(MARKER));
    // Set over the manifest's, and the secret at work in the flow.
    assert_eq!(
        props(fabric).await,
        serde_json::json!({"greeting": "hi", "knows": knows()})
    );

    let show = fabric.cli(&["apps", "show", "props", "--output", "json"]);
    assert_eq!(show.json()[0]["properties"]["greeting"], "hi");
    assert_eq!(show.json()[0]["secureProperties"]["password"], "********");
    for answer in [
        show.stdout,
        fabric.cli(&["apps", "list", "--output", "json"]).stdout,
        fabric.cli(&["events", "--output", "json"]).stdout,
        fabric.cli(&["workers", "props", "--output", "json"]).stdout,
    ] {
        assert!(!answer.contains(MARKER), "{answer}");
    }

    // set, then unset: each a new configuration, side by side.
    let run = fabric.cli(&["apps", "set", "props", "greeting=hey"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(props(fabric).await["greeting"], "hey");
    let run = fabric.cli(&["apps", "unset", "props", "greeting"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        props(fabric).await,
        serde_json::json!({"greeting": "hello", "knows": knows()})
    );

    let history = fabric
        .cli(&["apps", "history", "props", "--output", "json"])
        .json();
    let changes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        ["unset", "set", "deploy"],
        "newest first: {history}"
    );
    assert!(!history.to_string().contains(MARKER));
    assert_eq!(history[2]["secureProperties"]["password"], "********");

    // Back to the first configuration: its property, and its own secret.
    let run = fabric.cli(&["apps", "rollback", "props", "--to", "1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        props(fabric).await,
        serde_json::json!({"greeting": "hi", "knows": knows()})
    );
    let history = fabric
        .cli(&["apps", "history", "props", "--output", "json"])
        .json();
    assert_eq!(history[0]["change"], "rollback to 1");

    // Refused with a clear answer, nothing changed.
    for (args, needle) in [
        (vec!["apps", "set", "props", "bad name=1"], "property name"),
        (vec!["apps", "set", "props", "novalue"], "name=value"),
        (vec!["apps", "unset", "props", "nope"], "no property"),
        (
            vec!["apps", "rollback", "props", "--to", "99"],
            "no configuration 99",
        ),
    ] {
        let run = fabric.cli(&args);
        assert_ne!(run.code, Some(0), "{args:?}");
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
    let long = format!("big={}", "x".repeat(1025));
    let run = fabric.cli(&["apps", "set", "props", &long]);
    assert!(run.stderr.contains("over 1024"), "{}", run.stderr);
    assert_eq!(props(fabric).await["greeting"], "hi");
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_reach_flows_secrets_stay_sealed_and_any_configuration_comes_back() {
    // Workers inherit this: a version with persistent queues refuses to
    // start (a lock of 0 s is out of range), so it crash-loops.
    let mut fabric = Fabric::start_env(&[("FABRIC_LEASE_LOCK", "0s")]);
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(dir.path());
    properties_round(&fabric, &file).await;

    // A version that crash-loops is rolled back by itself and listed as failed.
    let run = fabric.cli(&[
        "apps",
        "deploy",
        &file,
        "--workers",
        "1",
        "--size",
        "0.1",
        "--persistent-queues",
    ]);
    assert_eq!(run.code, Some(69), "{}", run.stderr);
    let history = fabric
        .cli(&["apps", "history", "props", "--output", "json"])
        .json();
    assert_eq!(history[0]["outcome"]["state"], "failed", "{history}");
    assert_eq!(
        props(&fabric).await["greeting"],
        "hi",
        "the serving one serves on"
    );
    let table = fabric.cli(&["apps", "history", "props"]).stdout;
    assert!(table.contains("failed: "), "{table}");

    // Nowhere in the fabric's own output, nor (once it stopped) in the data
    // directory (registry, worker logs), is the secret in plaintext.
    let logged = fabric.log_lines(MARKER);
    assert!(
        logged.is_empty(),
        "the fabric logged the secret: {logged:?}"
    );
    assert!(fabric.stop(), "a clean stop");
    for (path, bytes) in files(&fabric.data) {
        assert!(!holds(&bytes, MARKER), "{path} holds the secret");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_aws_backend_secure_properties_are_sealed_in_the_table() {
    fabric_tests::Emulators::from_env();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let prefix = format!("p{}x{}-", std::process::id() % 100_000, nanos % 10_000);
    let fabric = Fabric::start_env(&[("FABRIC_UP_BACKEND", "aws"), ("FABRIC_AWS_PREFIX", &prefix)]);
    let dir = tempfile::tempdir().unwrap();
    properties_round(&fabric, &manifest(dir.path())).await;
    // Every raw item of the registry table: sealed, the secret in none.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let items = dynamodb
        .scan()
        .table_name(format!("{prefix}registry"))
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert!(
        items
            .iter()
            .any(|i| i.get("kind") == Some(&AttributeValue::S("history".into())))
    );
    for item in items {
        assert!(!format!("{item:?}").contains(MARKER), "{item:?}");
    }
    for (path, bytes) in files(&fabric.data) {
        assert!(!holds(&bytes, MARKER), "{path} holds the secret");
    }
}
