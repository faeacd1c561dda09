//! bench/chaos: a long chaos run — tens of thousands of orders through the
//! load balancer with a fault every few seconds — checked like the short one
//! in the test suite (`tests/tests/chaos.rs`, same harness).
//!
//! Ends with `BENCH chaos accepted=<n> lost=<n> duplicated_effects=<n>
//! redelivered=<n> faults=<n>` and exits 1 on any loss, duplicate, repeat a
//! kill cannot explain, or leak.
//! Knobs (environment): `CHAOS_BACKEND` (`embedded` or `aws`), `CHAOS_ORDERS`,
//! `CHAOS_RATE` (orders/s), `CHAOS_CLIENTS`, `CHAOS_FAULTS`,
//! `CHAOS_FAULT_EVERY_MS`, `CHAOS_SEED`.

use std::time::Duration;

use fabric_tests::chaos::{Backends, Plan, run};

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let fabric_bin = fabric_bench::fabric_binary("build it with `cargo build --release -p fabric`");
    let backends = match std::env::var("CHAOS_BACKEND").as_deref() {
        Ok("embedded") => Backends::Embedded,
        Ok("aws") => Backends::Aws,
        _ if std::env::var_os("AWS_ENDPOINT_URL_SQS").is_some() => Backends::Aws,
        _ => Backends::Embedded,
    };
    let seed = knob(
        "CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_secs()),
    );
    let plan = Plan {
        fabric_bin,
        backends,
        seed,
        clients: knob("CHAOS_CLIENTS", 8),
        rate: knob("CHAOS_RATE", 100),
        faults: knob("CHAOS_FAULTS", 60),
        fault_every: Duration::from_millis(knob("CHAOS_FAULT_EVERY_MS", 3000)),
        min_orders: knob("CHAOS_ORDERS", 20_000),
    };
    let report = run(&plan).await;
    println!("chaos: {}", report.counts());
    println!("chaos: at rest read {}", report.at_rest_read);
    for (what, list) in [
        ("lost", &report.lost_ids),
        ("duplicated", &report.duplicated_ids),
        ("plaintext at rest", &report.at_rest_leaks),
    ] {
        if !list.is_empty() {
            println!("chaos: {what}: {list:?}");
        }
    }
    println!(
        "BENCH chaos accepted={} lost={} duplicated_effects={} redelivered={} faults={}",
        report.accepted,
        report.lost,
        report.duplicated_effects,
        report.redelivered,
        report.faults.len()
    );
    let backend = match &plan.backends {
        Backends::Embedded => "embedded backends",
        Backends::Aws => "the SQS and DynamoDB emulators",
    };
    let figures = [
        ("orders accepted (202)", report.accepted),
        ("refused or unanswered", report.refused + report.no_answer),
        ("redelivered", report.redelivered),
        ("faults injected", report.faults.len()),
        ("lost", report.lost),
        ("effects duplicated", report.duplicated_effects),
        ("dead-lettered", report.dead_lettered as usize),
        ("plaintext found at rest", report.at_rest_leaks.len()),
    ];
    fabric_bench::report::Report {
        name: "chaos".into(),
        title: format!(
            "A chaos run through the whole fabric as processes on {backend} (seed {seed}): \
             {} clients at {} orders/s, a fault every {:?}; what must be zero is lost, \
             duplicated, dead-lettered and plaintext at rest.",
            plan.clients, plan.rate, plan.fault_every
        ),
        header: ["figure", "count"].map(String::from).to_vec(),
        rows: figures
            .iter()
            .map(|(what, n)| vec![what.to_string(), n.to_string()])
            .collect(),
        chart: fabric_bench::report::Chart {
            y_label: "count".into(),
            categories: figures.iter().map(|(what, _)| what.to_string()).collect(),
            series: vec![(
                "this run".into(),
                figures.iter().map(|(_, n)| *n as f64).collect(),
            )],
        },
    }
    .write();
    let clean = report.lost == 0
        && report.duplicated_effects == 0
        && report.dead_lettered == 0
        && report.repeats_beyond_kills() == 0
        && report.at_rest_leaks.is_empty();
    std::process::exit(if clean { 0 } else { 1 });
}
