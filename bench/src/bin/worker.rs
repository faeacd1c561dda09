//! bench/worker: the `orders` accept → process pipeline on one worker of size 1,
//! beside the same worker's plain HTTP echo, and the worker's idle memory.
//!
//! Starts queue-svc and objectstore-svc (embedded backends) and one worker
//! (`fabric serve worker`, size 1, persistent queues) as processes, the way
//! the control plane starts them, with `examples/orders.yaml` plus an echo
//! flow. Measures, in this order: idle RSS once the worker is ready and
//! quiet; echo requests/s with keep-alive clients; then `ORDERS` orders
//! POSTed and timed until the worker has processed (stored) every one.
//! Reports each process's CPU per phase, so the busiest one shows. Ends with
//! `BENCH worker e2e_msgs_per_s=<x> idle_rss_mb=<y>`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::token::{Scope, TokenKey};
use fabric_bench::{Latencies, bench_line, cpu_s, mem_mb};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const APP: &str = "orders";
/// The plain echo beside the pipeline: same worker, no queue, no store.
const ECHO_FLOW: &str = r#"
  - name: echo
    source: { http: { method: GET, path: '/echo/{x}' } }
    steps:
      - set-payload: '{echo: $attributes.uri.x}'
"#;
/// Concurrent keep-alive clients, for the echo and for the POSTs.
const CLIENTS: usize = 32;
const ECHO_WARMUP: Duration = Duration::from_secs(1);
const ECHO_PHASE: Duration = Duration::from_secs(5);
const WARM_ORDERS: usize = 500;
/// Orders the `process` flow of examples/orders.yaml has in hand at once
/// (checked against it), which the raw SDKs' pipeline gets too.
const CONCURRENCY: usize = 128;
/// How long orders are sent at half the measured rate, for their latency.
const PACED_PHASE: Duration = Duration::from_secs(4);
/// Orders in the timed phase, unless `ORDERS` in the environment says
/// otherwise (more make a phase long enough to profile).
const DEFAULT_ORDERS: usize = 10_000;
/// How long the worker is left alone before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(2);
const START_WAIT: Duration = Duration::from_secs(30);
const DRAIN_WAIT: Duration = Duration::from_secs(300);

/// A started component, killed by pid when dropped (also on panic).
struct Proc {
    name: &'static str,
    child: Child,
    /// Lines it logged, and how many of them were warnings or errors.
    lines: Arc<AtomicU64>,
    warnings: Arc<AtomicU64>,
}

impl Proc {
    /// Starts `fabric serve <component>` and returns it with the address it
    /// logged as listening.
    fn serve(
        fabric: &Path,
        name: &'static str,
        component: &str,
        env: &[(&str, &str)],
    ) -> (Self, String) {
        let mut child = Command::new(fabric)
            .args(["serve", component])
            .env("FABRIC_LISTEN", "127.0.0.1:0")
            .env("FABRIC_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let proc = Proc {
            name,
            child,
            lines: Arc::default(),
            warnings: Arc::default(),
        };
        let (tx, rx) = mpsc::channel();
        let (lines, warnings) = (proc.lines.clone(), proc.warnings.clone());
        // Reads its log to the end, so it never blocks on a full pipe; hands
        // over every line until the one that says it listens.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.fetch_add(1, Ordering::Relaxed);
                if line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#) {
                    warnings.fetch_add(1, Ordering::Relaxed);
                }
                let listening = line.contains("listening");
                if let Some(t) = &tx
                    && t.send(line).is_ok()
                    && !listening
                {
                    continue;
                }
                tx = None;
            }
        });
        let deadline = Instant::now() + START_WAIT;
        let mut seen = Vec::new();
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening") => break line,
                Ok(line) => seen.push(line),
                Err(e) => panic!("{name} did not log that it listens ({e}); it logged {seen:#?}"),
            }
        };
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        let addr = event["addr"].as_str().expect("the listening line has addr");
        (proc, format!("http://{addr}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// CPU use of every process of the run over one phase.
struct Cpu {
    pids: Vec<(&'static str, String)>,
    start: Vec<f64>,
    at: Instant,
}

impl Cpu {
    fn start(procs: &[&Proc]) -> Self {
        let mut pids: Vec<_> = procs
            .iter()
            .map(|p| (p.name, p.pid().to_string()))
            .collect();
        pids.push(("bench client", "self".to_string()));
        let start = pids.iter().map(|(_, p)| cpu_s(p)).collect();
        Cpu {
            pids,
            start,
            at: Instant::now(),
        }
    }

    /// Each process's share of one core since `start`, in percent.
    fn report(&self) -> String {
        let wall = self.at.elapsed().as_secs_f64();
        let parts: Vec<String> = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|((name, pid), s)| format!("{name} {:.0}%", (cpu_s(pid) - s) / wall * 100.0))
            .collect();
        parts.join(", ")
    }
}

/// The sum of a worker metric's samples whose line holds every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("worker metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Mean duration in ms of `flow`'s runs between two scrapes.
fn flow_mean_ms(before: &str, after: &str, flow: &str) -> f64 {
    let label = format!("flow=\"{flow}\"");
    let d = |t: &str, s: &str| {
        metric(
            t,
            &format!("fabric_worker_flow_duration_seconds_{s}"),
            &[&label],
        )
    };
    let n = d(after, "count") - d(before, "count");
    if n == 0.0 {
        return 0.0;
    }
    (d(after, "sum") - d(before, "sum")) / n * 1000.0
}

async fn processed(http: &reqwest::Client, base: &str) -> usize {
    let text = metrics(http, base).await;
    metric(
        &text,
        "fabric_worker_queue_messages_total",
        &["flow=\"process\"", "outcome=\"processed\""],
    ) as usize
}

/// `CLIENTS` keep-alive clients GET the echo flow for `phase`.
async fn echo(http: &reqwest::Client, base: &str, phase: Duration) -> (f64, Latencies) {
    let start = Instant::now();
    let tasks = (0..CLIENTS).map(|c| {
        let (http, url) = (http.clone(), format!("{base}/echo/c{c}"));
        tokio::spawn(async move {
            let mut l = Latencies::default();
            while start.elapsed() < phase {
                let t = Instant::now();
                let resp = http.get(&url).send().await.expect("echo request");
                assert_eq!(resp.status(), 200, "echo answered");
                resp.bytes().await.expect("echo body");
                l.record(t.elapsed());
            }
            l
        })
    });
    let mut all = Latencies::default();
    for t in futures::future::join_all(tasks).await {
        all.extend(t.expect("echo client"));
    }
    (all.len() as f64 / start.elapsed().as_secs_f64(), all)
}

/// What POSTing a batch of orders measured.
struct Accepted {
    latencies: Latencies,
    /// From the first POST to the last 202.
    secs: f64,
    /// Answers other than 202 (retried).
    refused: u64,
}

/// POSTs one order until it is answered 202; how many 5xx answers it was
/// retried after (anything else fails the bench).
async fn post_until_accepted(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> u64 {
    let mut retried = 0;
    loop {
        let resp = http
            .post(url)
            .json(body)
            .send()
            .await
            .expect("POST /orders");
        let status = resp.status();
        resp.bytes().await.expect("accept body");
        if status == 202 {
            return retried;
        }
        assert!(status.is_server_error(), "order refused with {status}");
        retried += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs `n` orders `{prefix}-{i}` over `CLIENTS` clients; each until it gets a 202.
async fn post_orders(http: &reqwest::Client, base: &str, prefix: &str, n: usize) -> Accepted {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let tasks = (0..CLIENTS).map(|_| {
        let (http, url, prefix) = (http.clone(), format!("{base}/orders"), prefix.to_string());
        let (next, refused) = (next.clone(), refused.clone());
        tokio::spawn(async move {
            let mut l = Latencies::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return l;
                }
                let body = serde_json::json!({
                    "orderId": format!("{prefix}-{i}"),
                    "customer": "bench",
                    "total": 4200,
                    "items": [1, 2, 3],
                });
                let t = Instant::now();
                let retried = post_until_accepted(&http, &url, &body).await;
                l.record(t.elapsed());
                refused.fetch_add(retried, Ordering::Relaxed);
            }
        })
    });
    let mut latencies = Latencies::default();
    for t in futures::future::join_all(tasks).await {
        latencies.extend(t.expect("order client"));
    }
    Accepted {
        latencies,
        secs: start.elapsed().as_secs_f64(),
        refused: refused.load(Ordering::Relaxed),
    }
}

/// Seconds since the Unix epoch, as the worker's `now` gives them.
fn epoch_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// When one paced order was sent and when its 202 came, in epoch seconds.
struct Sent {
    id: String,
    sent: f64,
    accepted: f64,
}

/// POSTs `n` orders `{prefix}-{i}` at `rate` a second, order `i` at
/// `i / rate` after the start whatever the answers before it (an open
/// loop over `CLIENTS` clients), each until it gets a 202.
async fn post_paced(
    http: &reqwest::Client,
    base: &str,
    prefix: &str,
    n: usize,
    rate: f64,
) -> Vec<Sent> {
    let start = tokio::time::Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks = (0..CLIENTS).map(|_| {
        let (http, url, prefix) = (http.clone(), format!("{base}/orders"), prefix.to_string());
        let next = next.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return sent;
                }
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                let id = format!("{prefix}-{i}");
                let body = serde_json::json!({"orderId": id, "customer": "bench", "total": 4200});
                let at = epoch_s();
                post_until_accepted(&http, &url, &body).await;
                sent.push(Sent {
                    id,
                    sent: at,
                    accepted: epoch_s(),
                });
            }
        })
    });
    let mut all = Vec::new();
    for t in futures::future::join_all(tasks).await {
        all.extend(t.expect("paced client"));
    }
    all
}

/// From each paced order's POST, and from its 202, until the worker stored
/// it (the `storedAt` its record carries, the worker's clock, this machine's).
/// A record stored before its 202 reached the client counts as 0 there.
async fn stored_latencies(
    stores: &objectstore_svc::client::Client,
    sent: &[Sent],
) -> (Latencies, Latencies, usize) {
    use futures::StreamExt;
    let records: Vec<(f64, f64, f64)> = futures::stream::iter(sent)
        .map(|s| async move {
            let fetched = stores
                .get("orders", &s.id)
                .await
                .expect("read an order back");
            let record: serde_json::Value =
                serde_json::from_slice(&fetched.expect("the order is stored").value)
                    .expect("a JSON record");
            let stored = record["storedAt"]
                .as_f64()
                .expect("the record has storedAt");
            (s.sent, s.accepted, stored)
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    let (mut from_post, mut from_202, mut early) = (Latencies::default(), Latencies::default(), 0);
    for (sent, accepted, stored) in records {
        from_post.record(Duration::from_secs_f64((stored - sent).max(0.0)));
        if stored < accepted {
            early += 1;
        }
        from_202.record(Duration::from_secs_f64((stored - accepted).max(0.0)));
    }
    (from_post, from_202, early)
}

/// Waits until the worker has processed `target` queue messages in all.
async fn wait_processed(http: &reqwest::Client, base: &str, target: usize) {
    let deadline = Instant::now() + DRAIN_WAIT;
    while processed(http, base).await < target {
        assert!(
            Instant::now() < deadline,
            "the worker did not process every order within {DRAIN_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys in the `orders` store, straight from the object store.
async fn stored(stores: &objectstore_svc::client::Client) -> u64 {
    stores.stats("orders").await.expect("store stats").keys
}

fn ms(l: &Latencies) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        l.percentile_ms(50.0),
        l.percentile_ms(99.0)
    )
}

async fn bench(fabric: &Path) {
    let count: usize = std::env::var("ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ORDERS);
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().to_str().expect("a UTF-8 temp dir");
    // Made before the services start, so all three share it.
    let key = TokenKey::load_or_generate(&data.path().join(common::secrets::SECRET_FILE))
        .expect("the fabric secret");
    let token = key.issue(APP, Scope::Worker, Duration::from_secs(3600));
    // On the emulators (BACKEND=aws): the services on SQS and DynamoDB under
    // names of this run's own, and the raw SDKs' pipeline as the reference.
    let aws = std::env::var("BACKEND").is_ok_and(|b| b == "aws");
    let prefix = format!("bw{:08x}-", std::process::id());
    let table = format!("{prefix}objectstore");
    let (queue_env, store_env) = if aws {
        (
            vec![
                ("FABRIC_BACKEND", "sqs"),
                ("FABRIC_SQS_PREFIX", prefix.as_str()),
            ],
            vec![
                ("FABRIC_BACKEND", "dynamodb"),
                ("FABRIC_TABLE", table.as_str()),
                ("FABRIC_CREATE_RESOURCES", "true"),
            ],
        )
    } else {
        (
            vec![("FABRIC_BACKEND", "embedded")],
            vec![("FABRIC_BACKEND", "embedded")],
        )
    };
    let (mut queue_env, mut store_env) = (queue_env, store_env);
    queue_env.push(("FABRIC_DATA_DIR", dir));
    store_env.push(("FABRIC_DATA_DIR", dir));
    let (queue_svc, queue_url) = Proc::serve(fabric, "queue-svc", "queue-svc", &queue_env);
    let (store_svc, store_url) =
        Proc::serve(fabric, "objectstore-svc", "objectstore-svc", &store_env);

    let manifest = data.path().join("orders-echo.yaml");
    let orders = include_str!("../../../examples/orders.yaml");
    assert!(
        orders.contains(&format!("concurrency: {CONCURRENCY},")),
        "examples/orders.yaml no longer processes {CONCURRENCY} at once: change CONCURRENCY"
    );
    std::fs::write(&manifest, format!("{}{ECHO_FLOW}", orders.trim_end())).expect("manifest");
    let manifest = manifest.to_str().expect("a UTF-8 path");
    let (worker, base) = Proc::serve(
        fabric,
        "worker",
        "worker",
        &[
            ("FABRIC_DATA_DIR", dir),
            ("FABRIC_MANIFEST", manifest),
            ("FABRIC_APP", APP),
            ("FABRIC_WORKER_ID", "orders-0"),
            ("FABRIC_SIZE", "1"),
            ("FABRIC_PERSISTENT_QUEUES", "true"),
            ("FABRIC_QUEUE_URL", &queue_url),
            ("FABRIC_OBJECTSTORE_URL", &store_url),
            ("FABRIC_APP_TOKEN", &token),
        ],
    );
    let procs = [&worker, &queue_svc, &store_svc];
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS * 2)
        .build()
        .expect("http client");
    let stores = objectstore_svc::client::Client::new(&store_url, APP, &token).expect("store URL");
    let queues = queue_svc::client::Client::new(&queue_url, APP, &token);

    let deadline = Instant::now() + START_WAIT;
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never turned ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let idle_rss = mem_mb(worker.pid(), "VmRSS");
    println!(
        "idle RSS: worker {idle_rss:.1} MB (queue-svc {:.1} MB, objectstore-svc {:.1} MB)",
        mem_mb(queue_svc.pid(), "VmRSS"),
        mem_mb(store_svc.pid(), "VmRSS"),
    );

    // Plain HTTP echo.
    echo(&http, &base, ECHO_WARMUP).await;
    let cpu = Cpu::start(&procs);
    let (echo_rps, echo_lat) = echo(&http, &base, ECHO_PHASE).await;
    println!(
        "echo: {echo_rps:.0} req/s over {CLIENTS} clients, {}",
        ms(&echo_lat)
    );
    println!("  CPU: {}", cpu.report());

    // Warm-up of the pipeline: connections, queue, store, caches.
    post_orders(&http, &base, "warm", WARM_ORDERS).await;
    wait_processed(&http, &base, WARM_ORDERS).await;

    // The pipeline, timed from the first POST to the last order stored.
    let before = metrics(&http, &base).await;
    let cpu = Cpu::start(&procs);
    let start = Instant::now();
    let accepted = post_orders(&http, &base, "order", count).await;
    let at_accept = processed(&http, &base).await - WARM_ORDERS;
    let queue = queues.stats("incoming").await.expect("queue stats");
    let cpu_accept = cpu.report();
    let cpu = Cpu::start(&procs);
    wait_processed(&http, &base, WARM_ORDERS + count).await;
    let mut total = start.elapsed().as_secs_f64();
    let cpu_drain = cpu.report();
    let after = metrics(&http, &base).await;
    // The worker counts a message processed once its flow has stored it;
    // confirm from the store itself.
    let want = (WARM_ORDERS + count) as u64;
    while stored(&stores).await < want {
        assert!(
            start.elapsed() < DRAIN_WAIT,
            "orders missing from the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        total = start.elapsed().as_secs_f64();
    }
    let e2e = count as f64 / total;
    let accept_rate = count as f64 / accepted.secs;
    let drain = total - accepted.secs;
    let drain_rate = (count - at_accept.min(count)) as f64 / drain.max(1e-9);
    println!(
        "pipeline: {count} orders, {CLIENTS} clients: all stored after {total:.2} s = {e2e:.0} msgs/s"
    );
    println!(
        "  accept: {accept_rate:.0} orders/s (202s), {}, {} refused and retried",
        ms(&accepted.latencies),
        accepted.refused
    );
    println!(
        "  when the last 202 came: {at_accept} processed, queue depth {} + {} in flight; \
         the rest took {drain:.2} s ({:.0} msgs/s)",
        queue.depth, queue.in_flight, drain_rate,
    );
    println!(
        "  mean flow time in the worker: accept {:.2} ms (validate, publish, respond), \
         process {:.2} ms (idempotent, store)",
        flow_mean_ms(&before, &after, "accept"),
        flow_mean_ms(&before, &after, "process"),
    );
    println!("  CPU while accepting: {cpu_accept}");
    println!("  CPU after the last 202: {cpu_drain}");
    // The raw SDKs doing the same calls on the same emulators.
    let raw = if aws {
        let raw = fabric_bench::raw_pipeline::RawPipeline::create(&prefix).await;
        let secs = raw.run("raw", count, CONCURRENCY).await;
        raw.delete().await;
        let rate = count as f64 / secs;
        println!(
            "raw SDKs, the same calls for {count} orders with {CONCURRENCY} in hand: {secs:.2} s = \
             {rate:.0} msgs/s; the pipeline is {:.2} of it",
            e2e / rate
        );
        Some(rate)
    } else {
        None
    };

    // Latency at half the rate just measured: from the POST, and from its
    // 202, until the order is stored.
    let paced_rate = e2e / 2.0;
    let paced_n = (paced_rate * PACED_PHASE.as_secs_f64()) as usize;
    let sent = post_paced(&http, &base, "paced", paced_n, paced_rate).await;
    wait_processed(&http, &base, WARM_ORDERS + count + paced_n).await;
    let (from_post, from_202, early) = stored_latencies(&stores, &sent).await;
    println!(
        "paced at {paced_rate:.0} orders/s (half the pipeline's rate), {paced_n} orders: \
         POST to stored {}; 202 to stored {} ({early} stored before their 202 reached the client)",
        ms(&from_post),
        ms(&from_202),
    );
    println!(
        "RSS after the load: worker {:.1} MB (peak {:.1} MB)",
        mem_mb(worker.pid(), "VmRSS"),
        mem_mb(worker.pid(), "VmHWM"),
    );
    for p in procs {
        let w = p.warnings.load(Ordering::Relaxed);
        println!(
            "  {} logged {} lines, {w} warnings or errors",
            p.name,
            p.lines.load(Ordering::Relaxed)
        );
    }

    let lat = |l: &Latencies| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            l.percentile_ms(50.0),
            l.percentile_ms(99.0)
        )
    };
    fabric_bench::report::Report {
        name: if aws { "worker-aws" } else { "worker" }.into(),
        title: format!(
            "The orders pipeline (HTTP accept, persistent queue, idempotent, store) on one \
             worker of size 1 with queue-svc and objectstore-svc on {}, all on one 2-core \
             machine; {count} orders over {CLIENTS} clients, beside the 202s of the same run \
             and the same worker's echo{}.",
            if aws {
                "the SQS and DynamoDB emulators"
            } else {
                "their embedded backends"
            },
            if aws {
                ", and the raw SDKs making the same calls on the same emulators"
            } else {
                ""
            }
        ),
        header: ["figure", "value", "reference of the same run"]
            .map(String::from)
            .to_vec(),
        rows: [
            vec![
                "pipeline, POST to stored".into(),
                format!("{e2e:.0} orders/s"),
                format!(
                    "{:.2} x accept only; target >= 0.80 and >= 5000/s",
                    e2e / accept_rate
                ),
            ],
            vec![
                "accept only (202s)".into(),
                format!("{accept_rate:.0} orders/s"),
                lat(&accepted.latencies),
            ],
            vec![
                "drain after the last 202".into(),
                format!("{drain_rate:.0} orders/s"),
                format!("{at_accept} processed when the last 202 came"),
            ],
            vec![
                format!("202 to stored at {paced_rate:.0}/s"),
                lat(&from_202),
                format!(
                    "POST to stored {}; CloudHub: 10-20 ms a put, 70-100 ms a take",
                    lat(&from_post)
                ),
            ],
            vec![
                "echo".into(),
                format!("{echo_rps:.0} req/s"),
                lat(&echo_lat),
            ],
            vec![
                "idle worker RSS".into(),
                format!("{idle_rss:.1} MB"),
                "target <= 20 MB".into(),
            ],
        ]
        .into_iter()
        .chain(raw.map(|rate| {
            vec![
                "raw SDKs, the same calls".into(),
                format!("{rate:.0} orders/s"),
                format!("the pipeline is {:.2} of it", e2e / rate),
            ]
        }))
        .collect(),
        chart: fabric_bench::report::Chart {
            y_label: "orders per second".into(),
            categories: [
                "accept only (202s)",
                "pipeline, POST to stored",
                "drain after the last 202",
            ]
            .map(String::from)
            .to_vec(),
            series: vec![(
                "one worker, size 1".into(),
                vec![accept_rate, e2e, drain_rate],
            )],
        },
    }
    .write();

    println!();
    println!("| figure | value | reference / target |");
    println!("|---|---|---|");
    println!(
        "| pipeline accept → process, msgs/s | {e2e:.0} | echo on the same worker: {echo_rps:.0} req/s |"
    );
    println!(
        "| accept only (202s/s) | {accept_rate:.0} | p50 {:.2} / p99 {:.2} ms |",
        accepted.latencies.percentile_ms(50.0),
        accepted.latencies.percentile_ms(99.0)
    );
    println!(
        "| pipeline / accept only | {:.2} | target >= 0.80 and >= 5000 msgs/s |",
        e2e / accept_rate
    );
    println!(
        "| 202 to stored at {paced_rate:.0}/s, ms | p50 {:.2} / p99 {:.2} | POST to stored: p50 {:.2} / p99 {:.2}; CloudHub: 10-20 per put, 70-100 per take |",
        from_202.percentile_ms(50.0),
        from_202.percentile_ms(99.0),
        from_post.percentile_ms(50.0),
        from_post.percentile_ms(99.0),
    );
    println!(
        "| echo req/s | {echo_rps:.0} | p50 {:.2} / p99 {:.2} ms |",
        echo_lat.percentile_ms(50.0),
        echo_lat.percentile_ms(99.0)
    );
    println!(
        "| idle worker RSS, MB | {idle_rss:.1} | target <= 20; a Mule runtime idles at hundreds |"
    );
    println!(
        "{}",
        bench_line(
            "worker",
            &[
                ("e2e_msgs_per_s", e2e),
                ("accept_per_s", accept_rate),
                ("stored_p50_ms", from_202.percentile_ms(50.0)),
                ("stored_p99_ms", from_202.percentile_ms(99.0)),
                ("idle_rss_mb", idle_rss),
            ]
            .into_iter()
            .chain(raw.map(|rate| ("raw_sdk_msgs_per_s", rate)))
            .chain(raw.map(|rate| ("vs_raw_sdk", e2e / rate)))
            .collect::<Vec<_>>()
        )
    );
}

#[tokio::main]
async fn main() {
    let fabric = fabric_bench::fabric_binary("run bench/worker/run");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    // Leaving `main` drops the processes, which kills them: after the run,
    // on a panic, and on Ctrl-C or SIGTERM (the bench future is dropped).
    let stopped = tokio::select! {
        () = bench(&fabric) => None,
        _ = tokio::signal::ctrl_c() => Some("interrupted"),
        _ = term.recv() => Some("terminated"),
    };
    if let Some(why) = stopped {
        eprintln!("{why}; the started processes are killed");
        std::process::exit(130);
    }
}
