//! `fabric logs`: an app's workers' lines through the API, followed live,
//! filtered, and never another tenant's.

use std::time::Duration;

use fabric_tests::fabric::{Fabric, HELLO};
use fabric_tests::process::{Proc, Stream};

const WAIT: Duration = Duration::from_secs(30);

/// A manifest that logs each note it is posted, with a marker of its own.
fn logging_app(dir: &std::path::Path, name: &str, marker: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"name: {name}
flows:
  - name: note
    source: {{ http: {{ method: POST, path: /notes }} }}
    steps:
      - log: '"{marker}: \(.text)"'
      - respond: {{ status: 202, body: '{{ok: true}}' }}
"#
        ),
    )
    .unwrap();
    path.display().to_string()
}

async fn post_note(fabric: &Fabric, app: &str, text: &str) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/notes", fabric.proxy))
        .header("host", format!("{app}.fabric.localhost"))
        .json(&serde_json::json!({ "text": text }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_an_apps_flow_lines_and_never_show_another_tenants() {
    let fabric = Fabric::start();
    let dir = tempfile::tempdir().unwrap();
    let (acme, globex) = (fabric.tenant("acme").await, fabric.tenant("globex").await);
    let as_tenant = |key: &str, args: &[&str]| {
        let run = fabric.cli_env(args, &[("FABRIC_TOKEN", key)]);
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        run
    };
    let mine = logging_app(dir.path(), "notes", "acme-note");
    let theirs = logging_app(dir.path(), "other", "globex-secret-line");
    as_tenant(
        &acme,
        &["apps", "deploy", &mine, "--workers", "2", "--size", "0.1"],
    );
    as_tenant(
        &globex,
        &["apps", "deploy", &theirs, "--workers", "1", "--size", "0.1"],
    );
    post_note(&fabric, "other", "theirs").await;

    // Followed: a flow's line shows up while the command runs.
    let mut cmd = fabric_tests::fabric_command();
    cmd.arg("--data-dir")
        .arg(&fabric.data)
        .args(["logs", "notes", "-f", "--output", "json"])
        .env("FABRIC_TOKEN", &acme);
    let mut follow = Proc::spawn(cmd);
    post_note(&fabric, "notes", "first").await;
    follow.wait_for_line(WAIT, |s, l| {
        s == Stream::Stdout && l.contains("acme-note: first")
    });
    post_note(&fabric, "notes", "second").await;
    follow.wait_for_line(WAIT, |s, l| {
        s == Stream::Stdout && l.contains("acme-note: second")
    });
    let seen = follow.lines_of(Stream::Stdout).join("\n");
    assert!(!seen.contains("globex-secret-line"), "{seen}");
    let line: serde_json::Value = serde_json::from_str(
        follow
            .lines_of(Stream::Stdout)
            .iter()
            .find(|l| l.contains("acme-note: first"))
            .unwrap(),
    )
    .unwrap();
    assert!(line["worker"].as_str().unwrap().starts_with("notes-"));
    assert!(line["fields"]["correlation_id"].is_string(), "{line}");
    drop(follow);

    // Filters; and the same answer as a table.
    let grep = as_tenant(
        &acme,
        &["logs", "notes", "--grep", "second", "--output", "json"],
    );
    let lines: Vec<&str> = grep.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", grep.stdout);
    let errors = as_tenant(&acme, &["logs", "notes", "--level", "error"]);
    assert!(!errors.stdout.contains("acme-note"), "{}", errors.stdout);
    let one = as_tenant(
        &acme,
        &["logs", "notes", "--worker", "notes-1", "--output", "json"],
    );
    assert!(
        one.stdout
            .lines()
            .all(|l| l.contains("\"worker\":\"notes-1\"")),
        "{}",
        one.stdout
    );

    // Another tenant's app is not found, its lines not shown; bad input is refused.
    let refused = fabric.cli_env(&["logs", "other"], &[("FABRIC_TOKEN", &acme)]);
    assert_eq!(refused.code, Some(4), "{}", refused.stderr);
    assert!(!refused.stdout.contains("globex"));
    for args in [
        vec!["logs", "notes", "--since", "yesterday"],
        vec!["logs", "notes", "--worker", "other-1"],
    ] {
        let run = fabric.cli_env(&args, &[("FABRIC_TOKEN", &acme)]);
        assert_ne!(run.code, Some(0), "{args:?}");
    }
    // The demo app's lines are its own too (the admin sees every app).
    let run = fabric.cli(&["apps", "deploy", HELLO, "--workers", "1", "--size", "0.1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let hello = fabric.cli(&["logs", "hello", "--output", "json"]).stdout;
    assert!(
        !hello.contains("acme-note") && !hello.contains("globex"),
        "{hello}"
    );
}
