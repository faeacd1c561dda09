//! The `fabric` binary as a user runs it: `fabric up` and `fabric serve`, their
//! output, their keys, their exit codes and their shutdown.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use fabric_tests::process::{Proc, Stream};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(30);

fn fabric() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fabric"));
    for (key, _) in std::env::vars() {
        if key.starts_with("FABRIC_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

fn urls(lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn up_serves_every_component_and_stops_on_sigint() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = fabric();
    cmd.arg("up")
        .arg("--demo")
        .arg("--data-dir")
        .arg(data.path());
    cmd.args(["--proxy-port", "0"]);
    // Stopped with SIGINT even if an assertion fails, so its workers go too.
    let mut up = Proc::spawn_graceful(cmd);
    up.wait_for_line(WAIT, |s, l| {
        s == Stream::Stdout && l.contains("Press Ctrl-C")
    });
    let stdout = up.lines_of(Stream::Stdout);
    for app in ["hello", "orders"] {
        assert!(
            stdout
                .iter()
                .any(|l| l.contains(&format!("Demo app {app} v1 is serving on 2/2 workers"))),
            "{stdout:#?}"
        );
    }
    let tries: Vec<&str> = stdout
        .iter()
        .copied()
        .filter(|l| l.contains("curl "))
        .collect();
    assert_eq!(
        urls(&tries).len(),
        4,
        "hello, post an order, read it back, and the Host-header form: {tries:#?}"
    );
    let components: Vec<&str> = stdout
        .iter()
        .copied()
        .filter(|l| l.contains("/healthz") || l.contains("control-plane "))
        .collect();
    let urls = urls(&components);
    assert_eq!(urls.len(), 4, "one URL per component: {:?}", up.seen);

    let client = reqwest::Client::new();
    for url in &urls {
        assert!(url.starts_with("http://127.0.0.1:"), "loopback only: {url}");
        for path in ["/healthz", "/readyz"] {
            let r = client.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}{path}");
        }
        let metrics = client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("fabric_build_info"), "{metrics}");
    }
    // The load balancer's data port is the one asked for (any free one), and routes.
    let data_addr = up
        .lines_of(Stream::Stdout)
        .iter()
        .find_map(|l| l.strip_prefix("Apps answer through the load balancer on "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the data port is printed")
        .to_string();
    assert!(
        !data_addr.ends_with(":8080"),
        "--proxy-port 0 honoured: {data_addr}"
    );
    let r = client
        .get(format!("http://{data_addr}/"))
        .header("host", "nope.fabric.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The demo app answers through the load balancer, balanced and per worker.
    for host in ["hello", "hello-1", "hello-2"] {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let r = client
                .get(format!("http://{data_addr}/hello/you"))
                .header("host", format!("{host}.fabric.localhost"))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["message"], "hello, you");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{host}: {}",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for file in ["admin.key", "control-plane.url"] {
        assert!(data.path().join(file).is_file(), "{file}");
    }
    let listed = fabric()
        .args(["workers", "hello", "--output", "json", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let workers: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let worker_pids: Vec<i32> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(worker_pids.len(), 2, "{workers}");
    for name in ["queue-svc", "objectstore-svc", "control-plane", "lb-proxy"] {
        assert!(
            up.lines_of(Stream::Stdout).iter().any(|l| l.contains(name)),
            "{name} listed"
        );
    }

    // A local fabric generates its keys, readable by their owner only.
    for file in ["master.key", "fabric.secret"] {
        let meta = std::fs::metadata(data.path().join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
    }
    let key_before = std::fs::read(data.path().join("master.key")).unwrap();

    up.signal(Signal::SIGINT);
    let status = up.wait_exit(WAIT);
    assert!(
        status.success(),
        "clean exit after SIGINT: {status:?} {:?}",
        up.seen
    );
    assert!(
        up.lines_of(Stream::Stdout)
            .iter()
            .any(|l| l.contains("stopped"))
    );
    for pid in worker_pids {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
            "worker {pid} left behind"
        );
    }
    for url in &urls {
        assert!(
            client.get(format!("{url}/healthz")).send().await.is_err(),
            "{url} still answers"
        );
    }

    // A second start keeps the keys of the first.
    let mut cmd = fabric();
    cmd.arg("up").arg("--data-dir").arg(data.path());
    cmd.args(["--proxy-port", "0"]);
    let mut again = Proc::spawn_graceful(cmd);
    again.wait_for_line(WAIT, |s, l| {
        s == Stream::Stdout && l.contains("Press Ctrl-C")
    });
    assert_eq!(
        std::fs::read(data.path().join("master.key")).unwrap(),
        key_before
    );
    again.signal(Signal::SIGTERM);
    assert!(again.wait_exit(WAIT).success());
}

#[tokio::test]
async fn serve_logs_json_and_drains_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = fabric();
    cmd.args(["serve", "queue-svc"])
        .env("FABRIC_DATA_DIR", data.path())
        .env("FABRIC_LISTEN", "127.0.0.1:0")
        .env("FABRIC_LOG_FORMAT", "json");
    let mut svc = Proc::spawn(cmd);
    let line = svc.wait_for_line(WAIT, |s, l| s == Stream::Stderr && l.contains("listening"));
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["component"], "queue-svc");
    let addr = event["addr"].as_str().expect("addr field").to_string();
    let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
    svc.signal(Signal::SIGTERM);
    assert!(svc.wait_exit(WAIT).success(), "{:?}", svc.seen);
}

/// Runs `fabric serve queue-svc` with `env` and expects exit 64 and one line naming `needle`.
fn refused(env: &[(&str, &str)], args: &[&str], needle: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = fabric();
    cmd.args(["serve", "queue-svc"])
        .args(args)
        .env("FABRIC_DATA_DIR", data.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(64),
        "exit 64 for {env:?} {args:?}: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("invalid configuration: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle} in {stderr}");
    stderr
}

#[test]
fn invalid_configuration_exits_64_with_one_line() {
    refused(&[("FABRIC_LISTEN", "nowhere")], &[], "listen");
    refused(
        &[("FABRIC_SHUTDOWN_GRACE", "eventually")],
        &[],
        "shutdown_grace",
    );
    refused(&[("FABRIC_LOG_FORMAT", "xml")], &[], "FABRIC_LOG_FORMAT");
    // A field of queue-svc's own settings: named, with where it came from.
    refused(&[("FABRIC_RETENTION", "99d")], &[], "retention: ");
    let stderr = refused(&[("FABRIC_MAX_DELIVERIES", "0")], &[], "max_deliveries: ");
    assert!(stderr.contains("(in FABRIC_MAX_DELIVERIES)"), "{stderr}");
    refused(&[("RUST_LOG", "a=b=c")], &[], "RUST_LOG");
    refused(
        &[],
        &["--config", "/nonexistent/fabric.toml"],
        "/nonexistent/fabric.toml",
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nshutdown_grace = 5\n").unwrap();
    refused(&[], &["--config", file.to_str().unwrap()], "svc.toml");
}

#[test]
fn a_bad_master_key_is_refused_without_echoing_it() {
    // 16 bytes, base64: the right encoding, the wrong length.
    let short = "c2l4dGVlbiBieXRlcyBrZXk=";
    let stderr = refused(&[("FABRIC_MASTER_KEY", short)], &[], "FABRIC_MASTER_KEY");
    assert!(!stderr.contains(short), "{stderr}");
    let stderr = refused(&[("FABRIC_SECRET", "%%%")], &[], "FABRIC_SECRET");
    assert!(!stderr.contains("%%%"), "{stderr}");
}

#[tokio::test]
async fn serve_worker_runs_a_manifest_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("echo.yaml");
    std::fs::write(
        &good,
        "name: echo\nflows:\n  - name: echo\n    source: { http: { method: POST, path: /echo } }\n    steps:\n      - set-payload: '{got: .}'\n",
    )
    .unwrap();
    let mut cmd = fabric();
    cmd.args(["serve", "worker"])
        .env("FABRIC_DATA_DIR", dir.path())
        .env("FABRIC_MANIFEST", &good)
        .env("FABRIC_SIZE", "0.1")
        .env("FABRIC_LOG_FORMAT", "json");
    let mut worker = Proc::spawn(cmd);
    let line = worker.wait_for_line(WAIT, |s, l| s == Stream::Stderr && l.contains("listening"));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = event["addr"].as_str().unwrap().to_string();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/echo"))
        .json(&serde_json::json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"got": {"a": 1}})
    );
    worker.signal(Signal::SIGTERM);
    assert!(worker.wait_exit(WAIT).success(), "{:?}", worker.seen);

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "flows:\n  - name: a\n    steps:\n      - set-payload: '.a |'\n",
    )
    .unwrap();
    for (env, needle) in [
        (("FABRIC_MANIFEST", bad.to_str().unwrap()), "line 4, column"),
        (
            ("FABRIC_MANIFEST", "/nonexistent.yaml"),
            "/nonexistent.yaml",
        ),
    ] {
        let out = fabric()
            .args(["serve", "worker"])
            .env(env.0, env.1)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(needle), "{needle} in {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let out = fabric()
        .args(["serve", "worker"])
        .env("FABRIC_MANIFEST", &good)
        .env("FABRIC_SIZE", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker size"));
}

/// A worker of size 0.1 (a 512 MiB heap) running `code` on POST /run.
fn memory_worker(dir: &std::path::Path, code: &str) -> (Proc, String) {
    let manifest = dir.join("grow.yaml");
    std::fs::write(
        &manifest,
        format!("name: grow\nflows:\n  - name: grow\n    source: {{ http: {{ method: POST, path: /run }} }}\n    steps:\n      - set-payload: '{code}'\n"),
    )
    .unwrap();
    let mut cmd = fabric();
    cmd.args(["serve", "worker"])
        .env("FABRIC_DATA_DIR", dir)
        .env("FABRIC_MANIFEST", &manifest)
        .env("FABRIC_SIZE", "0.1")
        .env("FABRIC_LOG_FORMAT", "json");
    let mut worker = Proc::spawn(cmd);
    let line = worker.wait_for_line(WAIT, |s, l| s == Stream::Stderr && l.contains("listening"));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = event["addr"].as_str().unwrap().to_string();
    (worker, format!("http://{addr}/run"))
}

#[tokio::test]
async fn a_worker_stops_an_expression_at_its_memory_and_never_outgrows_it() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    // Growing a step at a time (10 KB a step, a gigabyte in all): the run
    // stops with an error near the ceiling, and the worker goes on serving.
    let grow = r#"reduce range(100000) as $i ([]; . + ["x" * 10000]) | length"#;
    let (mut worker, url) = memory_worker(dir.path(), grow);
    let r = client.post(&url).json(&0).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(body.contains("more memory than its worker has"), "{body}");
    let again = client.post(&url).json(&0).send().await.unwrap();
    assert_eq!(again.status(), 500, "the worker still answers");
    worker.signal(Signal::SIGTERM);
    assert!(worker.wait_exit(WAIT).success(), "{:?}", worker.seen);

    // Ten gigabytes in one step: the allocation is refused and the worker
    // ends, as a container past its memory limit does; the host never
    // gives it the memory.
    let (mut worker, url) = memory_worker(dir.path(), r#""x" * 10000000000 | length"#);
    let sent = client.post(&url).json(&0).send().await;
    if let Ok(r) = sent {
        panic!(
            "the worker answered {}: {}",
            r.status(),
            r.text().await.unwrap()
        );
    }
    let status = worker.wait_exit(WAIT);
    assert!(!status.success(), "{status:?}");
    let stderr = worker.lines_of(Stream::Stderr).join("\n");
    assert!(stderr.contains("memory allocation"), "{stderr}");
}

#[test]
fn render_kubernetes_prints_one_pod_per_zone_and_needs_no_fabric() {
    let dir = tempfile::tempdir().unwrap();
    let out = fabric()
        .env("FABRIC_DATA_DIR", dir.path())
        .env(
            "FABRIC_KUBERNETES__IMAGE",
            "registry.example/worker-fabric:1.2.3",
        )
        .args([
            "apps",
            "deploy",
            "../examples/orders.yaml",
            "--workers",
            "3",
        ])
        .args([
            "--size",
            "0.1",
            "--render",
            "kubernetes",
            "--tenant",
            "acme",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).expect("a YAML document"))
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Secret", "PodDisruptionBudget", "Pod", "Pod", "Pod"]
    );
    let zones: Vec<&str> = docs[2..]
        .iter()
        .map(|p| {
            p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(zones, ["a", "b", "c"], "one worker per zone");
    for pod in &docs[2..] {
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], "registry.example/worker-fabric:1.2.3");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["resources"]["limits"]["cpu"], "100m");
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(pod["metadata"]["labels"]["fabric.dev/tenant"], "acme");
    }
    assert_eq!(docs[1]["spec"]["maxUnavailable"], 1);
    // A manifest that does not load renders nothing.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "flows: [").unwrap();
    let out = fabric()
        .env("FABRIC_DATA_DIR", dir.path())
        .args(["apps", "deploy"])
        .arg(&bad)
        .args(["--workers", "1", "--size", "0.1", "--render", "kubernetes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(out.stdout.is_empty());
}
