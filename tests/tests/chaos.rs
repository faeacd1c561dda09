//! Zero message loss, proven by history: the whole fabric as separate
//! processes, `orders` on three workers over three AZs with persistent,
//! encrypted queues, a stream of orders through the load balancer while
//! workers, an AZ, queue-svc, objectstore-svc and the control plane are
//! killed; then every accepted order must be stored, each effect once, and
//! nothing readable at rest. On the embedded backends, and on SQS + DynamoDB
//! as the fabric's CloudFormation stack (`infra/aws`) declares them, deployed
//! into the emulator, the components creating nothing but per-app queues.

use std::time::Duration;

use fabric_tests::chaos::{Backends, Plan, Report, run};

fn plan(backends: Backends) -> Plan {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_secs())
        });
    Plan {
        fabric_bin: fabric_tests::fabric_bin(),
        backends,
        seed,
        clients: 4,
        rate: 40,
        faults: 5,
        fault_every: Duration::from_millis(1500),
        min_orders: 300,
    }
}

fn check(report: &Report) {
    println!("chaos: {}", report.counts());
    println!("chaos: faults {:?}", report.faults);
    println!("chaos: at rest read {}", report.at_rest_read);
    assert_eq!(
        report.lost, 0,
        "accepted orders lost (seed {}): {:?}; dead letters: {:?}",
        report.seed, report.lost_ids, report.dead_letters
    );
    assert_eq!(
        report.duplicated_effects, 0,
        "orders processed twice past idempotent (seed {}): {:?}",
        report.seed, report.duplicated_ids
    );
    assert_eq!(
        report.dead_lettered, 0,
        "messages dead-lettered (seed {}): {:?}",
        report.seed, report.dead_letters
    );
    assert_eq!(
        report.repeats_beyond_kills(),
        0,
        "more repeats blamed on {} worker kills than they can explain (seed {}): {}",
        report.worker_kills,
        report.seed,
        report.counts()
    );
    // Without resent orders the run would not test `idempotent`; without a
    // caught duplicate in the logs, the verdict is not reading them.
    assert!(
        report.resent > 0 && report.duplicates_caught > 0,
        "idempotent was exercised (seed {}): {}",
        report.seed,
        report.counts()
    );
    assert!(
        report.at_rest_leaks.is_empty(),
        "plaintext at rest: {:?}",
        report.at_rest_leaks
    );
    assert!(
        report.accepted > 0 && report.faults.len() == 5,
        "the run did run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_order_is_lost_through_chaos_on_embedded_backends() {
    check(&run(&plan(Backends::Embedded)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_order_is_lost_through_chaos_on_sqs_and_dynamodb() {
    fabric_tests::Emulators::from_env();
    check(&run(&plan(Backends::Aws)).await);
}
