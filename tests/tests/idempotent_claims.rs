//! `idempotent` claims against a real object store: a delivery still running
//! is never joined by a duplicate of itself (a lapsed lease, a queue that
//! delivered twice), however long it runs; the duplicate waits and ends as a
//! duplicate. A delivery whose worker died is taken over once its claim
//! expires; one whose worker is stopping is rolled back rather than wait.

use std::time::Duration;

use common::shutdown::Shutdown;
use fabric_tests::backing::Backing;
use workers::error::ErrorType;
use workers::store::{Admission, Claim, Stores};

/// Short, so that the test outlives several heartbeats.
const LIVE: Duration = Duration::from_millis(900);
const WAIT: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(600);

async fn proceed(stores: &Stores, key: &str, owner: &str) -> Claim {
    match stores.claim("process", key, owner, WINDOW).await {
        Ok(Admission::Proceed(c)) => c,
        other => panic!("{owner} should proceed with {key}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_delivery_is_never_joined_by_its_own_duplicate() {
    let backing = Backing::start();
    let stores = Stores::new(backing.stores("idem")).with_claim_times(LIVE, WAIT);

    // A flow runs for four lifetimes of an unrenewed claim while the same
    // message is delivered again, and another message with the same key
    // arrives: both wait, and end as duplicates once the first settles.
    let first = proceed(&stores, "order-1", "msg-1").await;
    let waiting: Vec<_> = ["msg-1", "msg-2"]
        .into_iter()
        .map(|owner| {
            let stores = stores.clone();
            tokio::spawn(async move { stores.claim("process", "order-1", owner, WINDOW).await })
        })
        .collect();
    tokio::time::sleep(LIVE * 4).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a duplicate went on beside a running delivery"
    );
    stores.settle(&first).await.expect("settle");
    for w in waiting {
        assert!(matches!(w.await.unwrap(), Ok(Admission::Duplicate)));
    }

    // The first delivery's worker dies mid-flow: no settle, no release, its
    // heartbeat stops. The redelivery waits for the claim to expire, then
    // goes on.
    let dying = proceed(&stores, "order-2", "msg-3").await;
    let redelivery = {
        let stores = stores.clone();
        tokio::spawn(async move { stores.claim("process", "order-2", "msg-3", WINDOW).await })
    };
    drop(dying);
    let taken = match redelivery.await.unwrap() {
        Ok(Admission::Proceed(c)) => c,
        other => panic!("the redelivery should take over: {other:?}"),
    };
    stores.settle(&taken).await.expect("settle");

    // A delivery that waits longer than it may is rolled back, to try later.
    let long = proceed(&stores, "order-3", "msg-4").await;
    let impatient = Stores::new(backing.stores("idem")).with_claim_times(LIVE, LIVE);
    match impatient.claim("process", "order-3", "msg-5", WINDOW).await {
        Err(e) => assert_eq!(e.kind, ErrorType::Store, "{e:?}"),
        Ok(a) => panic!("should be rolled back while the other runs: {a:?}"),
    }

    // A failed flow gives its claim back at once.
    stores.release(&long).await;
    proceed(&stores, "order-3", "msg-5").await;

    // A worker told to stop does not wait for a running delivery of its key
    // (it would start the work at the end of its grace period, and be killed
    // half-way through it): its delivery is rolled back, for a worker that
    // stays. Were the stop ignored, it would wait for the settle below and
    // end as a duplicate.
    let running = proceed(&stores, "order-4", "msg-6").await;
    let stop = Shutdown::new(Duration::from_secs(1));
    let stopping = Stores::new(backing.stores("idem"))
        .with_claim_times(LIVE, WAIT)
        .stopping_on(stop.clone());
    let waiting =
        tokio::spawn(async move { stopping.claim("process", "order-4", "msg-7", WINDOW).await });
    tokio::time::sleep(LIVE).await;
    assert!(!waiting.is_finished(), "it waits while the worker runs");
    stop.trigger();
    tokio::time::sleep(LIVE * 4).await;
    stores.settle(&running).await.expect("settle");
    match waiting.await.unwrap() {
        Err(e) => assert_eq!(e.kind, ErrorType::Store, "{e:?}"),
        Ok(a) => panic!("a stopping worker should roll the delivery back: {a:?}"),
    }
}
