//! A hostile tenant against a real local fabric, through the API, the CLI
//! and the load balancer: each attack of the tenant-isolation issue, and
//! what now stops it (docs/security.md names each test).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fabric_tests::fabric::Fabric;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Deploys `manifest` as the holder of `key`; the API's status and body.
async fn deploy(f: &Fabric, key: &str, manifest: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"manifest": manifest, "workers": 1, "size": 0.1});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = reqwest::Client::new()
        .post(format!("{}/v1/apps", f.url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("the control plane answers");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// `GET path` through the load balancer with `Host: {app}.fabric.localhost`.
async fn via_lb(f: &Fabric, app: &str, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{}{path}", f.proxy))
        .header("host", format!("{app}.fabric.localhost"))
        .send()
        .await
        .expect("the load balancer answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The environment a running process was started with.
fn environ(pid: i64) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
        .replace('\0', "\n")
}

fn var(env: &str, name: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_default()
        .to_string()
}

async fn until<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    fabric_tests::until(what, WAIT, f).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_manifest_is_refused_and_the_fabric_stays_up() {
    let f = Fabric::start();
    let key = f.tenant("mallory").await;
    // The 2 KB request that overflowed the control plane's stack.
    let deep = format!("{}.{}", "[".repeat(1000), "]".repeat(1000));
    let parens = format!("{}.{}", "(".repeat(5000), ")".repeat(5000));
    let nested_yaml = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    for expr in [
        deep.as_str(),
        parens.as_str(),
        "env",
        "$ENV.HOME",
        "halt(7)",
        "halt_error",
        "input",
        "debug",
    ] {
        let manifest = format!(
            "name: evil\nflows:\n  - name: f\n    source: {{ http: {{ method: GET, path: /x }} }}\n    steps:\n      - set-payload: '{expr}'\n"
        );
        let (status, body) = deploy(&f, &key, &manifest, json!({})).await;
        assert_eq!(status, 400, "{}: {body}", &expr[..expr.len().min(20)]);
        assert_eq!(body["error"], "MANIFEST");
        assert!(
            body["message"].as_str().unwrap().contains("line 6"),
            "{body}"
        );
    }
    let manifest = format!("name: evil\nproperties: {{ a: {nested_yaml} }}\nflows: []\n");
    let (status, _) = deploy(&f, &key, &manifest, json!({})).await;
    assert_eq!(status, 400);
    // Still up: the fabric answers, and the CLI refuses a deep file itself.
    let run = f.cli(&["apps", "list", "--output", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("evil.yaml");
    std::fs::write(
        &file,
        format!("name: evil\nflows:\n  - name: f\n    steps:\n      - set-payload: '{parens}'\n"),
    )
    .unwrap();
    let run = f.cli(&[
        "apps",
        "deploy",
        file.to_str().unwrap(),
        "--workers",
        "1",
        "--size",
        "0.1",
    ]);
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(
        run.stderr.contains("nothing was deployed"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flows_reach_neither_the_host_nor_the_fabrics_own_ports() {
    let f = Fabric::start_env(&[
        ("HOSTILE_MARKER", "host-secret-1f2e"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-9c8b"),
    ]);
    let key = f.tenant("mallory").await;
    let admin = f.component_url("lb-proxy");
    let queues = f.component_url("queue-svc");
    let control = f.url();
    let call = |path: &str, url: &str, method: &str| {
        format!(
            "  - name: f{n}\n    source: {{ http: {{ method: GET, path: {path} }} }}\n    steps:\n      - http-request: {{ method: {method}, url: '\"{url}\"', body: '{{}}' }}\n",
            n = path.trim_start_matches('/')
        )
    };
    let manifest = [
        "name: probe\nflows:\n".to_string(),
        call("/admin", &format!("{admin}/routes"), "PUT"),
        call("/control", &format!("{control}/v1/apps"), "GET"),
        call("/metrics", &format!("{queues}/metrics"), "GET"),
        call("/cloud", "http://169.254.169.254/latest/meta-data/", "GET"),
        call("/apps", &format!("http://{}/hello/probe", f.proxy), "GET"),
        "  - name: own\n    source: { http: { method: GET, path: /healthz } }\n    steps:\n      - set-payload: '\"own\"'\n".to_string(),
    ]
    .concat();
    let (status, body) = deploy(&f, &key, &manifest, json!({})).await;
    assert_eq!(status, 200, "{body}");
    for path in ["/admin", "/control", "/metrics", "/cloud"] {
        let (status, body) = via_lb(&f, "probe", path).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body.contains("egress policy"), "{path}: {body}");
    }
    // Apps call apps through the load balancer's public port (here with no
    // `hello` deployed, the balancer's own 404 comes back as the flow's error).
    let (status, body) = via_lb(&f, "probe", "/apps").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("answered 404"),
        "reached the load balancer: {body}"
    );
    // The worker's ops endpoints are not the app's: the app owns /healthz
    // here, and /metrics is not routed at all.
    assert_eq!(
        via_lb(&f, "probe", "/healthz").await,
        (200, "own".to_string())
    );
    let (status, _) = via_lb(&f, "probe", "/readyz").await;
    assert_eq!(status, 404, "a worker's /readyz is not on the app's port");
    // The route table is the control plane's alone.
    let r = reqwest::Client::new()
        .put(format!("{admin}/routes"))
        .json(&json!({"apps": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The worker was started with none of the fabric's environment.
    let w = &f.workers("probe")[0];
    let env = environ(w["pid"].as_i64().unwrap());
    assert!(!env.is_empty(), "the worker's environment is readable here");
    for secret in ["host-secret-1f2e", "aws-secret-9c8b", "HOME="] {
        assert!(!env.contains(secret), "{secret} reached the worker:\n{env}");
    }
    assert!(!var(&env, "FABRIC_APP_TOKEN").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn widened_to_loopback_flows_still_reach_none_of_the_fabrics_own_ports() {
    // An operator who lets flows call services on this machine.
    let f = Fabric::start_env(&[("FABRIC_EGRESS_ALLOW", "[127.0.0.0/8]")]);
    let key = f.tenant("mallory").await;
    let mine = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mine_addr = mine.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "a neighbour" }));
    tokio::spawn(async move { axum::serve(mine, app).await });
    let port = |url: &str| {
        url.rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    };
    let (control, queues) = (f.url(), f.component_url("queue-svc"));
    let targets = [
        ("/control", control.clone()),
        ("/queues", format!("{queues}/metrics")),
        // The same ports on another loopback address: a service bound to
        // 0.0.0.0 would answer there.
        ("/control2", format!("http://127.0.0.2:{}", port(&control))),
        (
            "/queues2",
            format!("http://127.0.0.3:{}/metrics", port(&queues)),
        ),
        ("/neighbour", format!("http://{mine_addr}/")),
    ];
    let mut manifest = "name: probe\nflows:\n".to_string();
    for (path, url) in &targets {
        manifest.push_str(&format!(
            "  - name: f{n}\n    source: {{ http: {{ method: GET, path: {path} }} }}\n    steps:\n      - http-request: {{ method: GET, url: '\"{url}\"' }}\n",
            n = path.trim_start_matches('/')
        ));
    }
    let (status, body) = deploy(&f, &key, &manifest, json!({})).await;
    assert_eq!(status, 200, "{body}");
    for (path, _) in &targets[..4] {
        let (status, body) = via_lb(&f, "probe", path).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body.contains("egress policy"), "{path}: {body}");
    }
    assert_eq!(
        via_lb(&f, "probe", "/neighbour").await,
        (200, "a neighbour".to_string()),
        "what the operator allowed is reached"
    );
}

const SHOP: &str = r#"
name: shop
flows:
  - name: put
    source: { http: { method: POST, path: '/items/{id}' } }
    steps:
      - store: { store: items, key: '$attributes.uri.id', value: '.' }
      - publish: { queue: audit }
  - name: get
    source: { http: { method: GET, path: '/items/{id}' } }
    steps:
      - retrieve: { store: items, key: '$attributes.uri.id' }
  - name: audit
    source: { queue: { name: audit } }
    steps:
      - log: '"audited"'
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_name_starts_empty_and_the_old_instance_opens_nothing() {
    let f = Fabric::start();
    let (a, b) = (f.tenant("alice").await, f.tenant("bob").await);
    let persistent = json!({"persistentQueues": true});
    let (status, body) = deploy(&f, &a, SHOP, persistent.clone()).await;
    assert_eq!(status, 200, "{body}");
    let put = reqwest::Client::new()
        .post(format!("http://{}/items/1", f.proxy))
        .header("host", "shop.fabric.localhost")
        .json(&json!({"owner": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let env = environ(f.workers("shop")[0]["pid"].as_i64().unwrap());
    let (old_id, old_token) = (var(&env, "FABRIC_APP_ID"), var(&env, "FABRIC_APP_TOKEN"));
    assert!(old_id.starts_with("shop--"), "{old_id}");
    let logs = f.data.join("workers");
    let has_logs = |id: &str| {
        std::fs::read_dir(&logs)
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{id}-"))
                })
            })
            .unwrap_or(false)
    };
    assert!(has_logs(&old_id));

    // Names that would answer at one of shop's worker hosts are refused.
    let shadow = SHOP.replace("name: shop", "name: shop-1");
    let (status, body) = deploy(&f, &b, &shadow, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("share a host"),
        "{body}"
    );

    let run = f.cli_env(&["apps", "delete", "shop"], &[("FABRIC_TOKEN", a.as_str())]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("data purged"), "{}", run.stdout);
    assert!(!has_logs(&old_id), "the old instance's logs are gone");

    let (status, body) = deploy(&f, &b, SHOP, persistent).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["instance"], old_id.trim_start_matches("shop--"));
    let (status, _) = via_lb(&f, "shop", "/items/1").await;
    assert_eq!(status, 404, "bob's shop holds nothing of alice's");
    // Alice's old token opens neither her purged instance nor bob's.
    let env = environ(f.workers("shop")[0]["pid"].as_i64().unwrap());
    let new_id = var(&env, "FABRIC_APP_ID");
    let http = reqwest::Client::new();
    for id in [&old_id, &new_id] {
        let store = http
            .get(format!(
                "{}/v1/apps/{id}/stores/items/keys/1",
                f.component_url("objectstore-svc")
            ))
            .bearer_auth(&old_token)
            .send()
            .await
            .unwrap();
        assert_eq!(store.status(), 403, "{id}");
        let queues = http
            .get(format!(
                "{}/v1/apps/{id}/queues",
                f.component_url("queue-svc")
            ))
            .bearer_auth(&old_token)
            .send()
            .await
            .unwrap();
        assert_eq!(queues.status(), 403, "{id}");
    }
    // Bob sees his own shop's events only.
    let events = f
        .cli_env(
            &["events", "--output", "json"],
            &[("FABRIC_TOKEN", b.as_str())],
        )
        .stdout;
    assert!(events.contains("shop v1 is serving"), "{events}");
    assert_eq!(
        events.matches("\"deploy.done\"").count(),
        1,
        "alice's deploy is not in bob's view: {events}"
    );
    // A name whose worker hosts an existing app would take is refused too.
    let cart = SHOP.replace("name: shop", "name: cart-2");
    assert_eq!(deploy(&f, &a, &cart, json!({})).await.0, 200);
    let cart = SHOP.replace("name: shop", "name: cart");
    assert_eq!(deploy(&f, &b, &cart, json!({})).await.0, 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_expressions_and_slow_bodies_leave_the_worker_serving() {
    use tokio::io::AsyncWriteExt;
    let f = Fabric::start();
    let key = f.tenant("mallory").await;
    let manifest = r#"
name: spin
flows:
  - name: loop
    source: { http: { method: GET, path: /loop } }
    steps: [ { set-payload: 'last(repeat(1))' } ]
  - name: recurse
    source: { http: { method: GET, path: /recurse } }
    steps: [ { set-payload: 'def f: f; f' } ]
  - name: deep
    source: { http: { method: GET, path: /deep } }
    steps: [ { set-payload: 'def f: 1 + f; f' } ]
  - name: order
    source: { http: { method: POST, path: /orders } }
    steps: [ { validate: '.orderId != null' }, { set-payload: '{accepted: .orderId}' } ]
"#;
    let (status, body) = deploy(&f, &key, manifest, json!({})).await;
    assert_eq!(status, 200, "{body}");
    for path in ["/loop", "/recurse", "/deep"] {
        let (status, body) = via_lb(&f, "spin", path).await;
        assert_eq!(status, 500, "{path}: {body}");
        assert!(body.contains("EXPRESSION"), "{body}");
        assert!(
            !body.contains("repeat") && !body.contains("def f"),
            "{body}"
        );
    }
    // A client's malformed body is the client's error, and the flow's
    // source is not in the answer.
    let r = reqwest::Client::new()
        .post(format!("http://{}/orders", f.proxy))
        .header("host", "spin.fabric.localhost")
        .body("Transfer_Encoding: chunked")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(!text.contains(".orderId"), "{text}");
    // Clients trickling bodies (more than a 0.1 worker's 16 slots) hold
    // connections, not slots.
    let mut stuck = Vec::new();
    for _ in 0..24 {
        let mut s = tokio::net::TcpStream::connect(&f.proxy).await.unwrap();
        s.write_all(
            b"POST /orders HTTP/1.1\r\nhost: spin.fabric.localhost\r\ncontent-length: 1000\r\n\r\n{\"orderId\":",
        )
        .await
        .unwrap();
        stuck.push(s);
    }
    let r = reqwest::Client::new()
        .post(format!("http://{}/orders", f.proxy))
        .header("host", "spin.fabric.localhost")
        .json(&json!({"orderId": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(stuck);
    let ws = f.workers("spin");
    assert_eq!(ws[0]["state"], "ready", "{ws:?}");
    assert_eq!(ws[0]["restarts"], 0, "never restarted: {ws:?}");
}

const POISON: &str = r#"
name: vault
flows:
  - name: accept
    source: { http: { method: POST, path: /in } }
    steps: [ { publish: { queue: work } }, { respond: { status: 202 } } ]
  - name: work
    source: { queue: { name: work, max-deliveries: 2 } }
    steps: [ { set-payload: '.secret + 1' } ]
"#;

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_fabric_keeps_is_private_and_sealed_by_default() {
    let mut f = Fabric::start();
    let admin_key = f.admin_key();
    assert!(
        !f.stdout().iter().any(|l| l.contains(&admin_key)),
        "fabric up does not print the admin key"
    );
    let key = f.tenant("tess").await;
    let (status, body) = deploy(&f, &key, POISON, json!({"persistentQueues": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["encryptQueues"], true,
        "encrypted unless asked otherwise"
    );
    const MARKER: &str = "payload-marker-7d3a";
    let r = reqwest::Client::new()
        .post(format!("http://{}/in", f.proxy))
        .header("host", "vault.fabric.localhost")
        .json(&json!({"secret": MARKER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let q = until("the poisoned message dead-lettered", async || {
        let q = f.cli(&["queues", "vault", "--output", "json"]).json();
        (q["queues"][0]["dlqDepth"] == 1).then_some(q)
    })
    .await;
    assert_eq!(q["queues"][0]["encrypted"], true);
    // Nothing under the data directory holds the payload in the clear, and
    // everything there is its owner's alone.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&f.data), 0o700);
    assert!(!f.data.join("apps").exists(), "no plaintext manifests");
    let mut files = Vec::new();
    walk(&f.data, &mut files);
    for p in files {
        let expected = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), expected, "{}", p.display());
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !fabric_tests::contains(&bytes, MARKER.as_bytes()),
                "{} holds the payload",
                p.display()
            );
        }
    }
    assert!(
        f.log_lines(MARKER).is_empty(),
        "fabric up logged the payload"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_sends_the_local_admin_key_to_the_local_fabric_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.key"), "wfk_local-admin-key\n").unwrap();
    std::fs::write(dir.path().join("control-plane.url"), "http://127.0.0.1:9\n").unwrap();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", elsewhere.local_addr().unwrap());
    elsewhere.set_nonblocking(true).unwrap();
    let out = fabric_tests::fabric_command()
        .args(["--data-dir", dir.path().to_str().unwrap(), "--server", &url])
        .args(["apps", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FABRIC_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(elsewhere.accept().is_err(), "nothing was sent to {url}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_held_to_their_quota_and_request_rate() {
    let f = Fabric::start_env(&[
        ("FABRIC_TENANT_QUOTA__APPS", "1"),
        ("FABRIC_TENANT_QUOTA__WORKERS", "2"),
        ("FABRIC_API_RATE_PER_KEY", "5"),
    ]);
    let key = f.tenant("greedy").await;
    let hello = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/hello.yaml"
    ))
    .unwrap();
    assert_eq!(deploy(&f, &key, &hello, json!({})).await.0, 200);
    let other = hello.replace("name: hello", "name: hello-eu");
    let (status, body) = deploy(&f, &key, &other, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("QUOTA")),
        "{body}"
    );
    let run = f.cli_env(
        &["apps", "scale", "hello", "--workers", "3"],
        &[("FABRIC_TOKEN", key.as_str())],
    );
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("workers"), "{}", run.stderr);
    // Past its rate, a key is told to slow down; the admin key is not bounded.
    let http = reqwest::Client::new();
    let mut limited = None;
    for _ in 0..200 {
        let r = http
            .get(format!("{}/v1/apps", f.url()))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the key was limited");
    assert!(r.headers().contains_key("retry-after"));
    let r = http
        .get(format!("{}/v1/apps", f.url()))
        .bearer_auth(f.admin_key())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
