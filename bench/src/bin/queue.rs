//! Queue benchmark: publish → lease → ack through queue-svc against the raw
//! SQS SDK doing the same work on the same emulator, in the same run, and the
//! embedded backend's figures.
//!
//! A cycle is a batch of 10 published, leased and acked (3 calls either way).
//! Throughput runs `WORKERS` concurrent cycles, each worker on its own queue,
//! in phases that alternate between raw and queue-svc (which goes first
//! alternates too); each cycle's publish, lease and ack steps are timed as
//! well. Put and take latencies come from one message at a time, the sides
//! interleaved message by message.
//!
//! `added_p50_ms` is the latency queue-svc adds to one message's publish →
//! lease → ack (a put then a take, nothing else running), queue-svc's p50
//! less the raw SDK's. The throughput rounds saturate the emulator on
//! purpose, so their cycle latency is mostly time spent queueing for the
//! emulator's CPU, which queue-svc shares on one machine; that cost is the
//! throughput ratio, and the saturated cycles' p50 difference is printed
//! beside it rather than counted twice.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use common::shutdown::Shutdown;
use common::token::{Scope, TokenKey};
use fabric_bench::raw_pipeline::delete_entries;
use fabric_bench::{Latencies, bench_line};
use queue_svc::api::QueueSpec;
use queue_svc::client::{Client, LeaseOptions};
use queue_svc::{BackendKind, Config, Settings};
use tokio::net::TcpListener;

const WORKERS: usize = 8;
/// Each throughput phase; raw and queue-svc alternate `ROUNDS` times, so a
/// change in the machine's load falls on both alike.
const PHASE: Duration = Duration::from_secs(4);
const ROUNDS: usize = 3;
const SINGLES: usize = 200;
const BATCH: usize = 10;
const BODY: &str = r#"{"orderId":"A-1001","customer":"bench","total":4200,"items":[1,2,3]}"#;

/// The time a cycle spent in each of its steps: publish, lease(s), ack(s).
#[derive(Default, Clone, Copy)]
struct Steps([Duration; 3]);

const STEP_NAMES: [&str; 3] = ["publish", "lease", "ack"];

/// What throughput phases measured.
#[derive(Default)]
struct Run {
    msgs_per_s: f64,
    cycles: Latencies,
    /// Per step of a cycle, as in [`STEP_NAMES`].
    steps: [Latencies; 3],
    secs: f64,
}

impl Run {
    /// Merges another phase: messages over the summed time.
    fn add(&mut self, other: Run) {
        let msgs = self.msgs_per_s * self.secs + other.msgs_per_s * other.secs;
        self.secs += other.secs;
        self.msgs_per_s = msgs / self.secs;
        self.cycles.extend(other.cycles);
        for (mine, theirs) in self.steps.iter_mut().zip(other.steps) {
            mine.extend(theirs);
        }
    }
}

/// One publish → lease → ack cycle of a batch, on some queue.
trait Cycle: Clone + Send + 'static {
    fn cycle(&self, worker: usize) -> impl Future<Output = Steps> + Send;
    fn put(&self) -> impl Future<Output = ()> + Send;
    fn take(&self) -> impl Future<Output = ()> + Send;
}

async fn throughput<C: Cycle>(c: &C) -> Run {
    let start = Instant::now();
    let tasks = (0..WORKERS).map(|w| {
        let c = c.clone();
        tokio::spawn(async move {
            let mut l = Latencies::default();
            let mut steps: [Latencies; 3] = Default::default();
            while start.elapsed() < PHASE {
                let t = Instant::now();
                let s = c.cycle(w).await;
                l.record(t.elapsed());
                for (l, d) in steps.iter_mut().zip(s.0) {
                    l.record(d);
                }
            }
            (l, steps)
        })
    });
    let mut cycles = Latencies::default();
    let mut steps: [Latencies; 3] = Default::default();
    for t in futures::future::join_all(tasks).await {
        let (l, s) = t.expect("worker");
        cycles.extend(l);
        for (mine, theirs) in steps.iter_mut().zip(s) {
            mine.extend(theirs);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Run {
        msgs_per_s: (cycles.len() * BATCH) as f64 / secs,
        cycles,
        steps,
        secs,
    }
}

/// Put and take latencies, one message at a time.
#[derive(Default)]
struct Singles {
    put: Latencies,
    take: Latencies,
    /// The put and the take together: one message's publish → lease → ack.
    both: Latencies,
}

/// One put then one take through `c`, recorded in `into`.
async fn single<C: Cycle>(c: &C, into: &mut Singles) {
    let start = Instant::now();
    c.put().await;
    let put = start.elapsed();
    into.put.record(put);
    c.take().await;
    let both = start.elapsed();
    into.take.record(both - put);
    into.both.record(both);
}

/// The raw SDK on plain SQS queues: one per worker, and one for singles.
#[derive(Clone)]
struct Raw {
    sqs: aws_sdk_sqs::Client,
    urls: Vec<String>,
}

impl Raw {
    async fn new(sqs: aws_sdk_sqs::Client, prefix: &str) -> Self {
        let mut urls = Vec::new();
        for i in 0..=WORKERS {
            let out = sqs
                .create_queue()
                .queue_name(format!("{prefix}raw-{i}"))
                .send()
                .await
                .expect("create queue");
            urls.push(out.queue_url.expect("queue url"));
        }
        Raw { sqs, urls }
    }

    /// Receives and deletes `n` messages; the time spent receiving and deleting.
    async fn receive_delete(&self, url: &str, n: usize) -> (Duration, Duration) {
        let mut left = n;
        let (mut receiving, mut deleting) = (Duration::ZERO, Duration::ZERO);
        while left > 0 {
            let t = Instant::now();
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(left as i32)
                .wait_time_seconds(5)
                .visibility_timeout(30)
                .send()
                .await
                .expect("receive");
            receiving += t.elapsed();
            let entries = delete_entries(out.messages());
            if entries.is_empty() {
                continue;
            }
            left -= entries.len();
            let t = Instant::now();
            self.sqs
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("delete");
            deleting += t.elapsed();
        }
        (receiving, deleting)
    }

    /// Deletes every queue of this run, the service's included.
    async fn cleanup(&self, prefix: &str) {
        let urls = self
            .sqs
            .list_queues()
            .queue_name_prefix(prefix)
            .max_results(1000)
            .send()
            .await
            .map(|out| out.queue_urls.unwrap_or_default())
            .unwrap_or_default();
        for url in urls {
            let _ = self.sqs.delete_queue().queue_url(url).send().await;
        }
    }
}

impl Cycle for Raw {
    async fn cycle(&self, worker: usize) -> Steps {
        let url = &self.urls[worker];
        let entries = (0..BATCH)
            .map(|i| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(BODY)
                    .build()
                    .expect("entry")
            })
            .collect();
        let t = Instant::now();
        self.sqs
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send");
        let publish = t.elapsed();
        let (lease, ack) = self.receive_delete(url, BATCH).await;
        Steps([publish, lease, ack])
    }

    async fn put(&self) {
        self.sqs
            .send_message()
            .queue_url(&self.urls[WORKERS])
            .message_body(BODY)
            .send()
            .await
            .expect("send");
    }

    async fn take(&self) {
        self.receive_delete(&self.urls[WORKERS], 1).await;
    }
}

/// queue-svc through its client: one queue per worker, and one for singles.
#[derive(Clone)]
struct Svc {
    client: Client,
}

fn queue_name(worker: usize) -> String {
    format!("bench-{worker}")
}

impl Svc {
    /// Leases and acks `n` messages; the time spent leasing and acking.
    async fn lease_ack(&self, queue: &str, n: usize) -> (Duration, Duration) {
        let mut left = n;
        let (mut leasing, mut acking) = (Duration::ZERO, Duration::ZERO);
        while left > 0 {
            let opts = LeaseOptions {
                max: left,
                wait: Duration::from_secs(5),
                lock: Duration::from_secs(30),
            };
            let t = Instant::now();
            let got = self.client.lease(queue, opts).await.expect("lease");
            leasing += t.elapsed();
            if got.is_empty() {
                continue;
            }
            left -= got.len();
            let t = Instant::now();
            let r = self
                .client
                .ack_batch(got.into_iter().map(|m| m.lease_id).collect())
                .await
                .expect("ack");
            acking += t.elapsed();
            assert!(r.failed.is_empty(), "{r:?}");
        }
        (leasing, acking)
    }
}

impl Cycle for Svc {
    async fn cycle(&self, worker: usize) -> Steps {
        let q = queue_name(worker);
        let t = Instant::now();
        self.client
            .publish_batch(&q, vec![BODY.to_string(); BATCH])
            .await
            .expect("publish");
        let publish = t.elapsed();
        let (lease, ack) = self.lease_ack(&q, BATCH).await;
        Steps([publish, lease, ack])
    }

    async fn put(&self) {
        self.client
            .publish_batch(&queue_name(WORKERS), vec![BODY.to_string()])
            .await
            .expect("publish");
    }

    async fn take(&self) {
        self.lease_ack(&queue_name(WORKERS), 1).await;
    }
}

/// Starts queue-svc on 127.0.0.1:0 in this process; a client once it is ready.
async fn start_svc(backend: BackendKind, prefix: &str, data: &std::path::Path) -> (Svc, Shutdown) {
    let key = TokenKey::load_or_generate(&data.join(common::secrets::SECRET_FILE)).expect("key");
    let config = Config {
        data_dir: data.to_path_buf(),
        settings: Settings {
            backend,
            sqs_prefix: prefix.to_string(),
            ..Settings::default()
        },
        ..Config::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new(Duration::from_secs(5));
    let sd = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = queue_svc::run(config, listener, sd).await {
            eprintln!("queue-svc failed: {e}");
            std::process::exit(1);
        }
    });
    let http = reqwest::Client::new();
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = Client::new(
        &base,
        "bench",
        &key.issue("bench", Scope::Worker, Duration::from_secs(3600)),
    );
    for w in 0..=WORKERS {
        client
            .declare(&queue_name(w), &QueueSpec::default())
            .await
            .expect("declare");
    }
    (Svc { client }, shutdown)
}

fn report(name: &str, run: &Run, one: &Singles) {
    let (put, take) = (&one.put, &one.take);
    println!(
        "{name:<16} {:>8.0} msgs/s  cycle p50 {:>6.2} ms p99 {:>6.2} ms  put p50 {:>6.2} p99 {:>6.2} ms  take p50 {:>6.2} p99 {:>6.2} ms",
        run.msgs_per_s,
        run.cycles.percentile_ms(50.0),
        run.cycles.percentile_ms(99.0),
        put.percentile_ms(50.0),
        put.percentile_ms(99.0),
        take.percentile_ms(50.0),
        take.percentile_ms(99.0),
    );
    let steps: Vec<String> = STEP_NAMES
        .iter()
        .zip(&run.steps)
        .map(|(n, l)| {
            format!(
                "{n} p50 {:.2} p99 {:.2}",
                l.percentile_ms(50.0),
                l.percentile_ms(99.0)
            )
        })
        .collect();
    println!("{:<16} cycle steps (ms): {}", "", steps.join("  "));
}

#[tokio::main]
async fn main() {
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL_SQS") else {
        eprintln!(
            "AWS_ENDPOINT_URL_SQS is not set: run bench/queue/run, which finds or starts the emulator"
        );
        std::process::exit(2);
    };
    let host = endpoint.split("://").nth(1).unwrap_or_default();
    if !(host.starts_with("127.") || host.starts_with("localhost")) {
        eprintln!("refusing to benchmark against {endpoint}: loopback emulators only");
        std::process::exit(2);
    }
    let prefix = format!(
        "bq{:08x}-",
        std::process::id() ^ Instant::now().elapsed().subsec_nanos()
    );
    let sqs = aws_sdk_sqs::Client::new(&common::aws::sdk_config().await);
    let data = tempfile::tempdir().expect("temp dir");

    println!(
        "queue benchmark: {WORKERS} workers, {ROUNDS} alternating rounds of {PHASE:?} of \
         10-message publish/lease/ack cycles; {SINGLES} single puts and takes"
    );
    let raw = Raw::new(sqs, &prefix).await;
    let (svc, svc_stop) = start_svc(BackendKind::Sqs, &prefix, &data.path().join("sqs")).await;
    let (emb, emb_stop) = start_svc(
        BackendKind::Embedded,
        &prefix,
        &data.path().join("embedded"),
    )
    .await;

    // Warm connections and the emulator's queues before measuring.
    raw.cycle(0).await;
    svc.cycle(0).await;
    emb.cycle(0).await;

    let (mut raw_run, mut svc_run) = (Run::default(), Run::default());
    for round in 0..ROUNDS {
        // Alternate which side goes first, so a trend in the machine's load
        // does not always favour the same one.
        if round % 2 == 0 {
            raw_run.add(throughput(&raw).await);
            svc_run.add(throughput(&svc).await);
        } else {
            svc_run.add(throughput(&svc).await);
            raw_run.add(throughput(&raw).await);
        }
    }
    let emb_run = throughput(&emb).await;
    // Singles interleave the three sides message by message, as the
    // throughput rounds alternate, so that both SQS sides meet the same load.
    let (mut raw_one, mut svc_one, mut emb_one) =
        (Singles::default(), Singles::default(), Singles::default());
    for _ in 0..SINGLES {
        single(&raw, &mut raw_one).await;
        single(&svc, &mut svc_one).await;
        single(&emb, &mut emb_one).await;
    }

    report("raw SDK (SQS)", &raw_run, &raw_one);
    report("queue-svc (SQS)", &svc_run, &svc_one);
    report("queue-svc (redb)", &emb_run, &emb_one);
    println!("CloudHub documents 10-20 ms to put and 70-100 ms to take a small message.");

    let sides = [
        ("raw SDK (SQS)", &raw_run, &raw_one),
        ("queue-svc (SQS)", &svc_run, &svc_one),
        ("queue-svc (redb)", &emb_run, &emb_one),
    ];
    let ms = |l: &Latencies| {
        format!(
            "{:.2} / {:.2}",
            l.percentile_ms(50.0),
            l.percentile_ms(99.0)
        )
    };
    fabric_bench::report::Report {
        name: "queue".into(),
        title: format!(
            "queue-svc against the raw AWS SDK on the same SQS emulator, and on its embedded \
             backend: {WORKERS} workers running 10-message publish, lease and ack cycles for \
             {ROUNDS} alternating rounds of {PHASE:?}; then {SINGLES} single puts and takes \
             each. CloudHub documents 10-20 ms to put and 70-100 ms to take a small message."
        ),
        header: [
            "side",
            "msgs/s",
            "cycle p50 / p99 ms",
            "one put p50 / p99 ms",
            "one take p50 / p99 ms",
        ]
        .map(String::from)
        .to_vec(),
        rows: sides
            .iter()
            .map(|(name, run, one)| {
                vec![
                    name.to_string(),
                    format!("{:.0}", run.msgs_per_s),
                    ms(&run.cycles),
                    ms(&one.put),
                    ms(&one.take),
                ]
            })
            .collect(),
        chart: fabric_bench::report::Chart {
            y_label: "messages per second".into(),
            categories: sides.iter().map(|(name, ..)| name.to_string()).collect(),
            series: vec![(
                "publish, lease, ack".into(),
                sides.iter().map(|(_, run, _)| run.msgs_per_s).collect(),
            )],
        },
    }
    .write();

    raw.cleanup(&prefix).await;
    svc_stop.trigger();
    emb_stop.trigger();
    let ratio = svc_run.msgs_per_s / raw_run.msgs_per_s;
    let added = svc_one.both.percentile_ms(50.0) - raw_one.both.percentile_ms(50.0);
    println!(
        "one message publish/lease/ack p50: raw {:.2} ms, queue-svc {:.2} ms; \
         saturated 10-message cycle p50: raw {:.2} ms, queue-svc {:.2} ms",
        raw_one.both.percentile_ms(50.0),
        svc_one.both.percentile_ms(50.0),
        raw_run.cycles.percentile_ms(50.0),
        svc_run.cycles.percentile_ms(50.0),
    );
    println!(
        "{}",
        bench_line(
            "queue",
            &[
                ("throughput_ratio", ratio),
                ("added_p50_ms", added),
                ("embedded_msgs_per_s", emb_run.msgs_per_s),
            ]
        )
    );
}
