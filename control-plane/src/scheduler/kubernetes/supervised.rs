//! The supervisor driving the Kubernetes scheduler against the fake API
//! server: a deploy across zones, a Pod deleted out from under it and
//! replaced, a zone failing, a side-by-side version switch and a scale
//! down — asserting the requests the cluster sees and what the supervisor
//! makes of the answers. Each Pod's `/readyz` is one local server's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::envelope::{Keyring, MasterKey};
use http::Method;
use serde_json::Value;

use super::tests::FakeCluster;
use super::*;
use crate::events::Events;
use crate::model::{AppRecord, WorkerState};
use crate::registry::{Location, Registry};
use crate::supervisor::{Supervisor, SupervisorSettings};

const WAIT: Duration = Duration::from_secs(20);

struct Fabric {
    supervisor: Supervisor,
    cluster: FakeCluster,
    shutdown: common::shutdown::Shutdown,
    _dir: tempfile::TempDir,
}

/// A `/readyz` every placed Pod answers through (they all share its address).
async fn ready_server(ready: Arc<AtomicBool>) -> u16 {
    let app = axum::Router::new().route(
        "/readyz",
        axum::routing::get(move || {
            let ready = ready.clone();
            async move {
                if ready.load(Ordering::SeqCst) {
                    http::StatusCode::OK
                } else {
                    http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

async fn fabric() -> Fabric {
    let port = ready_server(Arc::new(AtomicBool::new(true))).await;
    let (client, cluster) = FakeCluster::start();
    cluster.place_at("127.0.0.1");
    let scheduler = KubernetesScheduler::new(
        client,
        KubernetesSettings {
            app_port: port,
            ops_port: port,
            ..KubernetesSettings::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(
        &Location::Embedded(dir.path().join("registry.redb")),
        Keyring::single(MasterKey::generate()),
    )
    .await
    .unwrap();
    let supervisor = Supervisor::new(
        Arc::new(scheduler),
        registry,
        Events::new(),
        SupervisorSettings {
            data_dir: dir.path().into(),
            azs: vec!["a".into(), "b".into(), "c".into()],
            domain: "fabric.test".into(),
            proxy_port: 8080,
            ready_timeout: WAIT,
            drain_grace: Duration::from_secs(1),
        },
        Arc::new(|_: &AppRecord| vec![("FABRIC_APP_TOKEN".into(), "token-7".into())]),
    );
    let shutdown = common::shutdown::Shutdown::new(Duration::from_secs(5));
    {
        let (sup, sd) = (supervisor.clone(), shutdown.clone());
        tokio::spawn(async move { sup.run(sd).await });
    }
    Fabric {
        supervisor,
        cluster,
        shutdown,
        _dir: dir,
    }
}

fn record(version_manifest: &str, workers: u32) -> AppRecord {
    AppRecord {
        name: "shop".into(),
        tenant: "acme".into(),
        instance: "k2m9p4q1x7".into(),
        version: 0,
        manifest: format!("name: shop\n# {version_manifest}\nflows: []\n"),
        workers,
        size: 0.1,
        persistent_queues: false,
        encrypt_queues: true,
        properties: Default::default(),
        secure_properties: Default::default(),
        autoscale: None,
    }
}

/// The zone a Pod is pinned to.
fn zone(pod: &Value) -> String {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `(worker, zone)` of every Pod the cluster runs, sorted.
fn running(cluster: &FakeCluster) -> Vec<(String, String)> {
    let mut pods: Vec<(String, String)> = cluster
        .pods()
        .iter()
        .filter_map(|n| cluster.pod(n))
        .map(|p| {
            let worker = p["metadata"]["labels"]["fabric.dev/worker"]
                .as_str()
                .unwrap_or_default();
            let version = p["metadata"]["labels"]["fabric.dev/version"]
                .as_str()
                .unwrap_or_default();
            (format!("{worker}-v{version}"), zone(&p))
        })
        .collect();
    pods.sort();
    pods
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_ready(f: &Fabric, n: usize) -> bool {
    let ws = f.supervisor.workers("shop");
    ws.len() == n && ws.iter().all(|w| w.state == WorkerState::Ready)
}

#[tokio::test]
async fn the_supervisor_places_heals_moves_and_switches_versions_through_pods() {
    let f = fabric().await;
    // A deploy: one Pod per zone, each turning ready.
    let v1 = f
        .supervisor
        .deploy(record("v1", 3))
        .await
        .expect("deployed");
    assert_eq!(v1.version, 1);
    assert_eq!(
        running(&f.cluster),
        [
            ("shop-1-v1".to_string(), "a".to_string()),
            ("shop-2-v1".into(), "b".into()),
            ("shop-3-v1".into(), "c".into())
        ]
    );
    assert!(all_ready(&f, 3));
    assert!(f.supervisor.workers("shop").iter().all(|w| w.pid.is_none()));

    // A Pod deleted out from under it (a node drained): replaced in its zone.
    let victim = f
        .cluster
        .pods()
        .into_iter()
        .find(|n| n.contains("-v1-2-"))
        .unwrap();
    f.cluster.remove(&victim);
    until("the deleted Pod is replaced", || {
        f.cluster.pods().len() == 3 && !f.cluster.pods().contains(&victim) && all_ready(&f, 3)
    })
    .await;
    assert!(running(&f.cluster).contains(&("shop-2-v1".into(), "b".into())));
    assert_eq!(f.supervisor.workers("shop")[1].restarts, 1);

    // Zone b fails: its worker is deleted at once and started in another zone.
    let in_b = f
        .cluster
        .pods()
        .into_iter()
        .find(|n| f.cluster.pod(n).is_some_and(|p| zone(&p) == "b"))
        .unwrap();
    assert!(f.supervisor.fail_az("b").await);
    until("the zone's worker moved", || {
        f.cluster.pods().len() == 3
            && running(&f.cluster).iter().all(|(_, z)| z != "b")
            && all_ready(&f, 3)
    })
    .await;
    let deleted = f.cluster.calls_to(&Method::DELETE, &in_b);
    assert_eq!(
        deleted[0].body["gracePeriodSeconds"], 0,
        "killed, as a lost zone"
    );
    assert!(f.supervisor.restore_az("b").await);

    // A new version side by side: its Pods start, the old ones drain with
    // the grace, and the old version's Secret goes with its last Pod.
    let v2 = f
        .supervisor
        .deploy(record("v2", 3))
        .await
        .expect("v2 deployed");
    assert_eq!(v2.version, 2);
    until("only v2 runs", || {
        running(&f.cluster).iter().all(|(w, _)| w.ends_with("-v2"))
    })
    .await;
    let zones: std::collections::BTreeSet<String> =
        running(&f.cluster).into_iter().map(|(_, z)| z).collect();
    assert_eq!(zones.len(), 3, "one worker per zone again: {zones:?}");
    let drained = f
        .cluster
        .calls()
        .into_iter()
        .filter(|c| c.method == Method::DELETE && c.path.contains("-v1-"))
        .filter(|c| c.body["gracePeriodSeconds"] == 1)
        .count();
    assert!(drained >= 2, "the old version's workers drained: {drained}");
    // (Stops of a version's last workers run together: each may delete it;
    // the second is a 404, taken as done.)
    assert!(
        !f.cluster
            .calls_to(&Method::DELETE, "/secrets/wf-shop--k2m9p4q1x7-v1")
            .is_empty()
    );
    assert!(
        f.cluster
            .calls_to(&Method::DELETE, "/secrets/wf-shop--k2m9p4q1x7-v2")
            .is_empty()
    );

    // Scale down: the extra workers drain; the rest serve on.
    f.supervisor.scale("shop", 1).await.expect("scaled");
    until("one worker runs", || {
        f.cluster.pods().len() == 1 && all_ready(&f, 1)
    })
    .await;
    assert_eq!(running(&f.cluster)[0].0, "shop-1-v2");

    f.shutdown.trigger();
}
