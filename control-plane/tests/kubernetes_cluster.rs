//! The Kubernetes scheduler against a real cluster: what the mocked API
//! conversation (`scheduler::kubernetes::tests`) cannot prove — that the
//! cluster accepts the objects (admission, the restricted Pod Security
//! profile), that a Pod is placed in the zone asked for, answers on its
//! address, logs, and is gone after a stop.
//!
//! Needs a cluster: run with `KUBECONFIG` set and
//! `cargo test -p control-plane --test kubernetes_cluster -- --ignored`.
//! `FABRIC_TEST_WORKER_IMAGE` names the worker image the cluster can pull
//! (`infra/docker/Dockerfile`), `FABRIC_TEST_NAMESPACE` the namespace
//! (default `fabric-apps`), `FABRIC_TEST_ZONE` a zone of its nodes. The
//! test must run where Pod IPs are reachable (in the cluster, as the
//! control plane does).

use std::time::Duration;

use control_plane::scheduler::kubernetes::{KubernetesScheduler, KubernetesSettings};
use control_plane::scheduler::{Scheduler, WorkerSpec};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set for the cluster test"))
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG) and a worker image"]
async fn a_worker_pod_starts_in_its_zone_answers_logs_and_stops() {
    let client = kube::Client::try_default()
        .await
        .expect("a cluster from KUBECONFIG");
    let settings = KubernetesSettings {
        namespace: std::env::var("FABRIC_TEST_NAMESPACE").unwrap_or_else(|_| "fabric-apps".into()),
        image: var("FABRIC_TEST_WORKER_IMAGE"),
        ..KubernetesSettings::default()
    };
    let scheduler = KubernetesScheduler::new(client, settings);
    let spec = WorkerSpec {
        app: "cluster-test".into(),
        app_id: "cluster-test".into(),
        tenant: "test".into(),
        version: 1,
        index: 1,
        az: var("FABRIC_TEST_ZONE"),
        manifest: "name: cluster-test\nflows: []\n".into(),
        size: 0.1,
        env: vec![("FABRIC_APP_TOKEN".into(), "unused".into())],
    };
    let worker = scheduler.start(&spec).await.expect("placed");
    assert!(scheduler.alive(&worker).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let probe = reqwest::Client::new();
    loop {
        let ready = probe
            .get(format!("http://{}/readyz", worker.ops_address))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(scheduler.logs(&spec, 20).await.is_some());
    scheduler.stop(&worker, Duration::from_secs(10)).await;
    assert!(!scheduler.alive(&worker).await);
}
