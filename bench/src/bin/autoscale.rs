//! bench/autoscale: how fast an app scales out of a backlog, and what that
//! buys, beside the same backlog on one fixed worker in the same run.
//!
//! Runs `fabric up` (the release build beside this binary, the autoscaler
//! at its defaults: a 5 s period) with flows allowed to call this machine,
//! and a delay server here that answers after [`DELAY`]. An app whose queue
//! consumer calls that server once per message (one message at a time per
//! worker: a slow flow) is deployed twice, one after the other, with
//! persistent queues: first on one fixed worker, then with a policy of 1
//! to 8 workers at 20 messages of backlog per worker. Each gets [`BACKLOG`]
//! messages at once; for the autoscaled app the bench prints the time from
//! the backlog's arrival until the first added worker serves and until the
//! wanted count serves; for both, the time until the backlog is drained.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use control_plane::model::{DeployRequest, ScalePolicy};
use fabric_bench::bench_line;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;

/// Messages put on the queue at once.
const BACKLOG: u64 = 400;
/// How long each message's call takes.
const DELAY: Duration = Duration::from_millis(50);
/// The most workers the autoscaled app may run.
const MAX: u32 = 8;

/// A server on loopback that answers every request after [`DELAY`].
async fn delay_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(DELAY).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
                }),
            ));
        }
    });
    addr
}

fn manifest(name: &str, delay: std::net::SocketAddr) -> String {
    format!(
        "name: {name}\nflows:\n  - name: accept\n    source: {{ http: {{ method: POST, path: /jobs }} }}\n    steps:\n      \
         - publish: {{ queue: jobs }}\n      - respond: {{ status: 202, body: '{{accepted: true}}' }}\n  \
         - name: work\n    source: {{ queue: {{ name: jobs, concurrency: 1 }} }}\n    steps:\n      \
         - http-request: {{ method: GET, url: '\"http://{delay}/\"' }}\n"
    )
}

/// What one run measured, in seconds from the backlog's arrival.
struct Run {
    first_added: Option<f64>,
    wanted: Option<f64>,
    drained: f64,
}

async fn ready_workers(client: &control_plane::client::Client, app: &str) -> usize {
    client.workers(app).await.map_or(0, |ws| {
        ws.iter()
            .filter(|w| w.state == control_plane::model::WorkerState::Ready)
            .count()
    })
}

async fn backlog(client: &control_plane::client::Client, app: &str) -> u64 {
    client.queues(app).await.map_or(u64::MAX, |q| {
        q.queues
            .iter()
            .map(|q| q.depth.unwrap_or(0) + q.in_flight.unwrap_or(0))
            .sum()
    })
}

async fn run(
    fabric: &fabric_bench::LocalFabric,
    app: &str,
    delay: std::net::SocketAddr,
    policy: Option<ScalePolicy>,
) -> Run {
    let client = fabric.client();
    client
        .deploy(&DeployRequest {
            persistent_queues: true,
            ..DeployRequest::of(manifest(app, delay), 1, 0.1)
        })
        .await
        .expect("the app deploys");
    let autoscaled = policy.is_some();
    if let Some(p) = &policy {
        client
            .autoscale(app, Some(p))
            .await
            .expect("its policy is set");
    }
    let http = reqwest::Client::new();
    let started = Instant::now();
    let sends = (0..BACKLOG).map(|_| {
        http.post(format!("http://{}/jobs", fabric.proxy))
            .header("host", format!("{app}.fabric.localhost"))
            .json(&serde_json::json!({}))
            .send()
    });
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.expect("a job").status(), 202);
    }
    let (mut first_added, mut wanted) = (None, None);
    loop {
        let at = started.elapsed().as_secs_f64();
        if autoscaled {
            let ready = ready_workers(&client, app).await;
            if ready > 1 && first_added.is_none() {
                first_added = Some(at);
            }
            if ready >= MAX as usize && wanted.is_none() {
                wanted = Some(at);
            }
        }
        if backlog(&client, app).await == 0 {
            let _ = client.delete(app).await;
            return Run {
                first_added,
                wanted,
                drained: at,
            };
        }
        assert!(at < 600.0, "{app} never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() {
    let delay = delay_server().await;
    let fabric = fabric_bench::LocalFabric::start_env(
        "run bench/autoscale/run",
        &[("FABRIC_EGRESS_ALLOW", "[127.0.0.0/8]")],
    );
    let fixed = run(&fabric, "fixed", delay, None).await;
    let policy = ScalePolicy {
        min: 1,
        max: MAX,
        queue_backlog: Some(20),
        cpu: None,
        concurrency: None,
    };
    let scaled = run(&fabric, "scaled", delay, Some(policy)).await;
    let s = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.1} s"));
    println!(
        "backlog {BACKLOG} messages, {} ms of work each, one at a time per worker (size 0.1)",
        DELAY.as_millis()
    );
    println!("| | first added worker serving | {MAX} workers serving | backlog drained |");
    println!("|---|---|---|---|");
    println!(
        "| one fixed worker (reference) | — | — | {:.1} s |",
        fixed.drained
    );
    println!(
        "| autoscaled 1 to {MAX} at 20 per worker | {} | {} | {:.1} s ({:.2}× the reference) |",
        s(scaled.first_added),
        s(scaled.wanted),
        scaled.drained,
        scaled.drained / fixed.drained
    );
    fabric_bench::report::Report {
        name: "autoscale".into(),
        title: format!(
            "A backlog of {BACKLOG} messages, {} ms of work each, one at a time per worker (size 0.1), \
             on an app autoscaled from 1 to {MAX} workers at 20 messages per worker (the default 5 s \
             period), beside the same backlog on one fixed worker in the same run; seconds from the \
             backlog's arrival.",
            DELAY.as_millis()
        ),
        header: ["", "first added worker serving", "all workers serving", "backlog drained"]
            .map(String::from)
            .to_vec(),
        rows: vec![
            vec![
                "one fixed worker (reference)".into(),
                "—".into(),
                "—".into(),
                format!("{:.1} s", fixed.drained),
            ],
            vec![
                format!("autoscaled 1 to {MAX}"),
                s(scaled.first_added),
                s(scaled.wanted),
                format!("{:.1} s ({:.2}×)", scaled.drained, scaled.drained / fixed.drained),
            ],
        ],
        chart: fabric_bench::report::Chart {
            y_label: "seconds".into(),
            categories: ["first added worker serving", "all workers serving", "backlog drained"]
                .map(String::from)
                .to_vec(),
            series: vec![
                (
                    "autoscaled".into(),
                    vec![
                        scaled.first_added.unwrap_or(f64::NAN),
                        scaled.wanted.unwrap_or(f64::NAN),
                        scaled.drained,
                    ],
                ),
                ("one fixed worker".into(), vec![f64::NAN, f64::NAN, fixed.drained]),
            ],
        },
    }
    .write();
    println!(
        "\n{}",
        bench_line(
            "autoscale",
            &[
                ("first_added_s", scaled.first_added.unwrap_or(f64::NAN)),
                ("wanted_s", scaled.wanted.unwrap_or(f64::NAN)),
                ("drained_s", scaled.drained),
                ("fixed_drained_s", fixed.drained),
            ]
        )
    );
}
