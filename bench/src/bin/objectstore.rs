//! objectstore-svc against the raw DynamoDB SDK on the same emulator, plus the embedded backend.
//!
//! For each of get, put and compare-and-set, the same number of operations
//! runs from the same number of concurrent tasks through the service (HTTP,
//! sealing, DynamoDB backend) and straight through the SDK, alternating in
//! rounds so that drift in the emulator's speed hits both alike. Then each
//! operation runs `SINGLES` times one at a time, service and SDK interleaved
//! call by call: the latency the service adds. (The concurrent rounds
//! saturate the emulator, so their latencies are mostly queueing for its
//! CPU, which the service shares on one machine; they are printed, and their
//! cost is the throughput ratio.) Values are 1 KiB. The closing line:
//!
//! `BENCH objectstore throughput_ratio=<service ops/s ÷ SDK ops/s, all three
//! operations> added_p50_ms=<largest per-operation p50 difference, one call
//! at a time> embedded_ops_per_s=<the same mix against the embedded backend>`

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::shutdown::Shutdown;
use common::token::Scope;
use fabric_bench::{Latencies, bench_line};
use futures::future::join_all;
use objectstore_svc::backend::BackendKind;
use objectstore_svc::client::{Client, Precondition, PutOptions};
use objectstore_svc::{Config, Settings};
use tokio::net::TcpListener;

const TASKS: usize = 8;
const OPS_PER_TASK: usize = 150;
const ROUNDS: usize = 3;
const SINGLES: usize = 200;
const VALUE: usize = 1024;
const APP: &str = "bench";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put,
    Get,
    Cas,
}

const OPS: [Op; 3] = [Op::Put, Op::Get, Op::Cas];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Cas => "cas",
        }
    }
}

/// Samples and wall time of one side for one operation, over all rounds.
#[derive(Default, Clone)]
struct Run {
    latencies: Latencies,
    wall: Duration,
}

impl Run {
    fn ops_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Anything that can do the three operations on key `task`.
trait Target: Send + Sync + 'static {
    fn op(&self, op: Op, task: usize, etag: &mut String) -> impl Future<Output = ()> + Send;
}

struct Service {
    client: Client,
    store: String,
}

impl Target for Service {
    async fn op(&self, op: Op, task: usize, etag: &mut String) {
        let key = format!("key-{task}");
        match op {
            Op::Put => {
                *etag = self
                    .client
                    .put(&self.store, &key, vec![b'v'; VALUE], &PutOptions::default())
                    .await
                    .expect("service put")
                    .etag;
            }
            Op::Get => {
                let got = self
                    .client
                    .get(&self.store, &key)
                    .await
                    .expect("service get");
                assert!(got.is_some_and(|g| g.value.len() == VALUE));
            }
            Op::Cas => {
                let options = PutOptions {
                    precondition: Precondition::IfMatch(etag.clone()),
                    ..PutOptions::default()
                };
                *etag = self
                    .client
                    .put(&self.store, &key, vec![b'c'; VALUE], &options)
                    .await
                    .expect("service compare-and-set")
                    .etag;
            }
        }
    }
}

struct Sdk {
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    pk: String,
}

impl Target for Sdk {
    async fn op(&self, op: Op, task: usize, etag: &mut String) {
        let key = format!("key-{task}");
        let pk = AttributeValue::S(self.pk.clone());
        let sk = AttributeValue::S(key);
        let put = |fill: u8, new: &str| {
            self.ddb
                .put_item()
                .table_name(&self.table)
                .item("pk", pk.clone())
                .item("sk", sk.clone())
                .item("e", AttributeValue::S(new.to_string()))
                .item("v", AttributeValue::B(vec![fill; VALUE].into()))
        };
        let new = uuid::Uuid::new_v4().simple().to_string();
        match op {
            Op::Put => {
                put(b'v', &new).send().await.expect("sdk put");
                *etag = new;
            }
            Op::Get => {
                let got = self
                    .ddb
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", pk.clone())
                    .key("sk", sk.clone())
                    .consistent_read(true)
                    .send()
                    .await
                    .expect("sdk get");
                assert!(got.item.is_some());
            }
            Op::Cas => {
                put(b'c', &new)
                    .condition_expression("e = :old")
                    .expression_attribute_values(":old", AttributeValue::S(etag.clone()))
                    .send()
                    .await
                    .expect("sdk compare-and-set");
                *etag = new;
            }
        }
    }
}

/// Runs `op` OPS_PER_TASK times from each of TASKS tasks; `etags` carry each key's ETag.
async fn measure<T: Target>(target: &Arc<T>, op: Op, etags: &mut [String]) -> Run {
    let started = Instant::now();
    let tasks = etags.iter_mut().enumerate().map(|(task, etag)| {
        let target = target.clone();
        async move {
            let mut latencies = Latencies::default();
            for _ in 0..OPS_PER_TASK {
                let t = Instant::now();
                target.op(op, task, etag).await;
                latencies.record(t.elapsed());
            }
            latencies
        }
    });
    let mut run = Run::default();
    for l in join_all(tasks).await {
        run.latencies.extend(l);
    }
    run.wall = started.elapsed();
    run
}

/// Starts objectstore-svc in this process on 127.0.0.1:0 and returns a client of it.
async fn start_service(
    backend: BackendKind,
    table: &str,
    data: &std::path::Path,
    shutdown: &Shutdown,
) -> Client {
    let config = Config {
        data_dir: data.to_path_buf(),
        settings: Settings {
            backend,
            table: table.to_string(),
        },
        // The run's own table, made when missing.
        create_resources: true,
        ..Config::default()
    };
    let tokens = common::secrets::token_key(&config).expect("token key");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(objectstore_svc::run(config, listener, shutdown.clone()));
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200, "service ready");
    let token = tokens.issue(APP, Scope::Worker, Duration::from_secs(3600));
    Client::new(&base, APP, &token).expect("client")
}

fn report(side: &str, op: Op, run: &Run) {
    println!(
        "{side:<10} {:<4} {:>8.0} ops/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} ops)",
        op.name(),
        run.ops_per_s(),
        run.latencies.percentile_ms(50.0),
        run.latencies.percentile_ms(99.0),
        run.latencies.len()
    );
}

fn total_ops_per_s(runs: &[Run]) -> f64 {
    let ops: usize = runs.iter().map(|r| r.latencies.len()).sum();
    let wall: f64 = runs.iter().map(|r| r.wall.as_secs_f64()).sum();
    ops as f64 / wall.max(1e-9)
}

#[tokio::main]
async fn main() {
    if std::env::var("AWS_ENDPOINT_URL_DYNAMODB").is_err() {
        eprintln!(
            "AWS_ENDPOINT_URL_DYNAMODB is not set: run bench/objectstore/run, which starts the emulators"
        );
        std::process::exit(2);
    }
    let data = tempfile::tempdir().expect("temp dir");
    let shutdown = Shutdown::new(Duration::from_secs(5));
    let table = format!("wf-bench-objectstore-{}", std::process::id());
    let store = format!("s{}", std::process::id());

    let service = Arc::new(Service {
        client: start_service(
            BackendKind::DynamoDb,
            &table,
            &data.path().join("ddb"),
            &shutdown,
        )
        .await,
        store: store.clone(),
    });
    let sdk_config = common::aws::sdk_config().await;
    let sdk = Arc::new(Sdk {
        ddb: aws_sdk_dynamodb::Client::new(&sdk_config),
        table: table.clone(),
        pk: format!("raw#{store}"),
    });
    let embedded = Arc::new(Service {
        client: start_service(
            BackendKind::Embedded,
            "",
            &data.path().join("embedded"),
            &shutdown,
        )
        .await,
        store,
    });

    // One call at a time, the two sides interleaved call by call.
    let (mut svc_one, mut sdk_one) = (
        vec![Latencies::default(); OPS.len()],
        vec![Latencies::default(); OPS.len()],
    );
    let (mut svc_etag, mut sdk_etag) = (String::new(), String::new());
    service.op(Op::Put, 0, &mut svc_etag).await;
    sdk.op(Op::Put, 0, &mut sdk_etag).await;
    for (i, op) in OPS.into_iter().enumerate() {
        for _ in 0..SINGLES {
            let t = Instant::now();
            service.op(op, 0, &mut svc_etag).await;
            svc_one[i].record(t.elapsed());
            let t = Instant::now();
            sdk.op(op, 0, &mut sdk_etag).await;
            sdk_one[i].record(t.elapsed());
        }
    }

    let mut svc_runs: Vec<Run> = vec![Run::default(); OPS.len()];
    let mut sdk_runs: Vec<Run> = vec![Run::default(); OPS.len()];
    let mut emb_runs: Vec<Run> = vec![Run::default(); OPS.len()];
    let (mut svc_etags, mut sdk_etags, mut emb_etags) = (
        vec![String::new(); TASKS],
        vec![String::new(); TASKS],
        vec![String::new(); TASKS],
    );
    // Warm up connections and the emulator's table.
    measure(&service, Op::Put, &mut svc_etags).await;
    measure(&sdk, Op::Put, &mut sdk_etags).await;
    measure(&embedded, Op::Put, &mut emb_etags).await;
    for round in 0..ROUNDS {
        for (i, op) in OPS.into_iter().enumerate() {
            // Alternate which side goes first.
            let (a, b) = if round % 2 == 0 {
                (
                    measure(&service, op, &mut svc_etags).await,
                    measure(&sdk, op, &mut sdk_etags).await,
                )
            } else {
                let b = measure(&sdk, op, &mut sdk_etags).await;
                (measure(&service, op, &mut svc_etags).await, b)
            };
            for (runs, run) in [(&mut svc_runs, a), (&mut sdk_runs, b)] {
                runs[i].latencies.extend(run.latencies);
                runs[i].wall += run.wall;
            }
            let e = measure(&embedded, op, &mut emb_etags).await;
            emb_runs[i].latencies.extend(e.latencies);
            emb_runs[i].wall += e.wall;
        }
    }

    println!(
        "objectstore: {TASKS} tasks, {} ops per operation and side, {VALUE}-byte values",
        TASKS * OPS_PER_TASK * ROUNDS
    );
    for (i, op) in OPS.into_iter().enumerate() {
        report("sdk", op, &sdk_runs[i]);
        report("service", op, &svc_runs[i]);
        report("embedded", op, &emb_runs[i]);
    }
    println!("one call at a time ({SINGLES} each, interleaved):");
    for (i, op) in OPS.into_iter().enumerate() {
        println!(
            "  {:<4} p50 sdk {:>7.3} ms  service {:>7.3} ms  p99 sdk {:>7.3} ms  service {:>7.3} ms",
            op.name(),
            sdk_one[i].percentile_ms(50.0),
            svc_one[i].percentile_ms(50.0),
            sdk_one[i].percentile_ms(99.0),
            svc_one[i].percentile_ms(99.0),
        );
    }
    let sides = [
        ("raw SDK (DynamoDB)", &sdk_runs, &sdk_one),
        ("objectstore-svc (DynamoDB)", &svc_runs, &svc_one),
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (i, op) in OPS.into_iter().enumerate() {
        for (side, runs, one) in sides {
            rows.push(vec![
                op.name().into(),
                side.into(),
                format!("{:.0}", runs[i].ops_per_s()),
                format!(
                    "{:.2} / {:.2}",
                    runs[i].latencies.percentile_ms(50.0),
                    runs[i].latencies.percentile_ms(99.0)
                ),
                format!(
                    "{:.2} / {:.2}",
                    one[i].percentile_ms(50.0),
                    one[i].percentile_ms(99.0)
                ),
            ]);
        }
        rows.push(vec![
            op.name().into(),
            "objectstore-svc (redb)".into(),
            format!("{:.0}", emb_runs[i].ops_per_s()),
            format!(
                "{:.2} / {:.2}",
                emb_runs[i].latencies.percentile_ms(50.0),
                emb_runs[i].latencies.percentile_ms(99.0)
            ),
            "".into(),
        ]);
    }
    let series = |name: &str, runs: &[Run]| {
        (
            name.to_string(),
            runs.iter().map(Run::ops_per_s).collect::<Vec<_>>(),
        )
    };
    fabric_bench::report::Report {
        name: "objectstore".into(),
        title: format!(
            "objectstore-svc against the raw AWS SDK on the same DynamoDB emulator, and on its \
             embedded backend: {TASKS} concurrent tasks, {VALUE}-byte values, {ROUNDS} \
             alternating rounds; one call at a time beside."
        ),
        header: [
            "operation",
            "side",
            "ops/s",
            "p50 / p99 ms, concurrent",
            "p50 / p99 ms, one at a time",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        chart: fabric_bench::report::Chart {
            y_label: "operations per second".into(),
            categories: OPS.iter().map(|o| o.name().to_string()).collect(),
            series: vec![
                series("raw SDK (DynamoDB)", &sdk_runs),
                series("objectstore-svc (DynamoDB)", &svc_runs),
                series("objectstore-svc (redb)", &emb_runs),
            ],
        },
    }
    .write();
    let ratio = total_ops_per_s(&svc_runs) / total_ops_per_s(&sdk_runs);
    let added = svc_one
        .iter()
        .zip(&sdk_one)
        .map(|(svc, sdk)| svc.percentile_ms(50.0) - sdk.percentile_ms(50.0))
        .fold(f64::MIN, f64::max);
    let embedded_ops = total_ops_per_s(&emb_runs);
    shutdown.trigger();
    let ddb = aws_sdk_dynamodb::Client::new(&sdk_config);
    if let Err(e) = ddb.delete_table().table_name(&table).send().await {
        eprintln!("could not delete the bench table {table}: {e}");
    }
    println!(
        "{}",
        bench_line(
            "objectstore",
            &[
                ("throughput_ratio", ratio),
                ("added_p50_ms", added),
                ("embedded_ops_per_s", embedded_ops),
            ],
        )
    );
}
