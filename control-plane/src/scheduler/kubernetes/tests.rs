//! The scheduler's conversation with a Kubernetes API server, through
//! kube's mock service (`tower-test`): a small in-memory API server answers
//! what the scheduler asks (lists, watches, creates, applies, deletes,
//! logs) as the real one does, and can fail on purpose (409, an expired
//! watch). What it cannot show — a kubelet starting containers, nodes
//! and zones — the tests do by hand: placing a Pod, deleting one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request the scheduler made: method, path and query, and body.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Value>,
    version: u64,
    uids: u64,
    watches: Vec<mpsc::UnboundedSender<Result<http_body::Frame<Bytes>, Infallible>>>,
    calls: Vec<Call>,
    /// Answers to give instead of the real one, in order, to the first
    /// request whose method and path suffix match.
    faults: Vec<(Method, &'static str, u16)>,
    /// Where new Pods are placed at once (their IP), if anywhere.
    place_at: Option<String>,
    /// Whether the next watch is told it expired (410).
    expire_next_watch: bool,
}

/// The in-memory API server. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct FakeCluster {
    state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

fn once(code: u16, body: &Value) -> Response<Body> {
    text(code, body.to_string())
}

fn text(code: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap()
}

impl FakeCluster {
    /// A client talking to a new fake cluster.
    pub(crate) fn start() -> (kube::Client, FakeCluster) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let cluster = FakeCluster::default();
        let serving = cluster.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = serving.answer(request).await;
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), cluster)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Every request so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The requests so far of `method` to a path ending in `suffix`.
    pub(crate) fn calls_to(&self, method: &Method, suffix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path.ends_with(suffix))
            .collect()
    }

    /// The next `method` request to a path ending in `suffix` is answered `code`.
    pub(crate) fn fail(&self, method: Method, suffix: &'static str, code: u16) {
        self.lock().faults.push((method, suffix, code));
    }

    /// New Pods are placed at once, at `ip`.
    pub(crate) fn place_at(&self, ip: &str) {
        self.lock().place_at = Some(ip.into());
    }

    /// The next watch is told it expired.
    pub(crate) fn expire_next_watch(&self) {
        self.lock().expire_next_watch = true;
    }

    /// Every Pod's name.
    pub(crate) fn pods(&self) -> Vec<String> {
        self.lock().pods.keys().cloned().collect()
    }

    /// Pod `name` as the cluster keeps it.
    pub(crate) fn pod(&self, name: &str) -> Option<Value> {
        self.lock().pods.get(name).cloned()
    }

    /// Gives Pod `name` an address and runs it, as a kubelet would.
    pub(crate) fn place(&self, name: &str, ip: &str) {
        let mut st = self.lock();
        let Some(mut pod) = st.pods.get(name).cloned() else {
            return;
        };
        pod["status"] = json!({"phase": "Running", "podIP": ip});
        Self::changed(&mut st, "MODIFIED", pod);
    }

    /// Deletes Pod `name` as something other than the scheduler would (a
    /// node drained, a zone lost, an operator's `kubectl delete`).
    pub(crate) fn remove(&self, name: &str) {
        let mut st = self.lock();
        if let Some(pod) = st.pods.get(name).cloned() {
            Self::changed(&mut st, "DELETED", pod);
        }
    }

    /// Records a change to `pod` and tells every watch.
    fn changed(st: &mut State, kind: &str, mut pod: Value) {
        st.version += 1;
        pod["metadata"]["resourceVersion"] = json!(st.version.to_string());
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if kind == "DELETED" {
            st.pods.remove(&name);
        } else {
            st.pods.insert(name, pod.clone());
        }
        let line = format!("{}\n", json!({"type": kind, "object": pod}));
        st.watches.retain(|w| {
            w.send(Ok(http_body::Frame::data(Bytes::from(line.clone()))))
                .is_ok()
        });
    }

    async fn answer(&self, request: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();
        let method = parts.method.clone();
        let mut st = self.lock();
        st.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        });
        if let Some(i) = st
            .faults
            .iter()
            .position(|(m, suffix, _)| *m == method && path.ends_with(suffix))
        {
            let (_, _, code) = st.faults.remove(i);
            return once(code, &status(code, "Injected"));
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // .../namespaces/{ns}/{kind}[/{name}[/{sub}]]
        let at = segments
            .iter()
            .position(|s| *s == "namespaces")
            .map_or(0, |i| i + 2);
        let kind = segments.get(at).copied().unwrap_or_default();
        let name = segments.get(at + 1).map(|s| s.to_string());
        let sub = segments.get(at + 2).copied();
        match (method.clone(), kind, name, sub) {
            (Method::GET, "pods", None, _) if query.contains("watch=true") => {
                if std::mem::take(&mut st.expire_next_watch) {
                    let gone = json!({"type": "ERROR", "object": status(410, "Expired")});
                    return text(200, format!("{gone}\n"));
                }
                let (tx, rx) = mpsc::unbounded_channel();
                st.watches.push(tx);
                let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(http_body_util::StreamBody::new(stream).boxed_unsync())
                    .unwrap()
            }
            (Method::GET, "pods", None, _) => {
                let items: Vec<Value> = st.pods.values().cloned().collect();
                once(
                    200,
                    &json!({"kind": "PodList", "apiVersion": "v1",
                            "metadata": {"resourceVersion": st.version.to_string()},
                            "items": items}),
                )
            }
            (Method::POST, "pods", None, _) => {
                let mut pod = body;
                let name = pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if st.pods.contains_key(&name) {
                    return once(409, &status(409, "AlreadyExists"));
                }
                st.uids += 1;
                pod["metadata"]["uid"] = json!(format!("pod-uid-{}", st.uids));
                pod["metadata"]["creationTimestamp"] =
                    json!(format!("2026-12-01T00:00:{:02}Z", st.uids % 60));
                pod["status"] = json!({"phase": "Pending"});
                Self::changed(&mut st, "ADDED", pod.clone());
                if let Some(ip) = st.place_at.clone() {
                    pod["status"] = json!({"phase": "Running", "podIP": ip});
                    Self::changed(&mut st, "MODIFIED", pod.clone());
                }
                once(201, &pod)
            }
            (Method::DELETE, "pods", Some(name), None) => match st.pods.get(&name).cloned() {
                Some(pod) => {
                    Self::changed(&mut st, "DELETED", pod.clone());
                    once(200, &pod)
                }
                None => once(404, &status(404, "NotFound")),
            },
            (Method::GET, "pods", Some(name), Some("log")) => match st.pods.get(&name) {
                Some(_) => text(200, format!("{name}: line 1\n{name}: line 2\n")),
                None => once(404, &status(404, "NotFound")),
            },
            (Method::PATCH, "secrets" | "poddisruptionbudgets", Some(name), None) => {
                let mut object = body;
                let uid = match st.secrets.get(&format!("{kind}/{name}")) {
                    Some(known) => known["metadata"]["uid"].clone(),
                    None => {
                        st.uids += 1;
                        json!(format!("{kind}-uid-{}", st.uids))
                    }
                };
                object["metadata"]["uid"] = uid;
                st.secrets.insert(format!("{kind}/{name}"), object.clone());
                once(200, &object)
            }
            (Method::DELETE, "secrets", Some(name), None) => {
                match st.secrets.remove(&format!("secrets/{name}")) {
                    Some(secret) => once(200, &secret),
                    None => once(404, &status(404, "NotFound")),
                }
            }
            _ => once(404, &status(404, "NotFound")),
        }
    }
}

fn settings() -> KubernetesSettings {
    KubernetesSettings {
        start_timeout: Duration::from_secs(10),
        ..KubernetesSettings::default()
    }
}

fn spec(index: u32, az: &str) -> WorkerSpec {
    WorkerSpec {
        app: "shop".into(),
        app_id: "shop--k2m9p4q1x7".into(),
        tenant: "acme".into(),
        version: 1,
        index,
        az: az.into(),
        manifest: "name: shop\nflows: []\n".into(),
        size: 0.2,
        env: vec![
            ("FABRIC_APP_TOKEN".into(), "secret-token-5e1f".into()),
            ("FABRIC_QUEUE_URL".into(), "http://queue-svc:8080".into()),
        ],
    }
}

#[tokio::test]
async fn a_start_applies_its_versions_objects_creates_a_pod_and_waits_for_its_address() {
    let (client, cluster) = FakeCluster::start();
    let scheduler = KubernetesScheduler::new(client, settings());
    let spec = spec(2, "b");
    let starting = scheduler.start(&spec);
    let placing = async {
        // The kubelet's part: the Pod the scheduler created gets an address.
        let name = loop {
            if let Some(n) = cluster.pods().pop() {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        cluster.place(&name, "10.0.2.7");
    };
    let (worker, ()) = tokio::join!(starting, placing);
    let worker = worker.expect("started");
    assert_eq!(worker.address.to_string(), "10.0.2.7:8080");
    assert_eq!(worker.ops_address.to_string(), "10.0.2.7:8081");
    assert_eq!(worker.pid, None);
    let pod = cluster.pod(&worker.handle).expect("the Pod");
    assert_eq!(worker.identity.as_deref(), pod["metadata"]["uid"].as_str());

    // The version's Secret and budget first, then the Pod, owned by the Secret.
    let writes: Vec<(Method, String)> = cluster
        .calls()
        .into_iter()
        .filter(|c| c.method != Method::GET)
        .map(|c| (c.method, c.path))
        .collect();
    assert_eq!(
        writes,
        [
            (Method::PATCH, "/api/v1/namespaces/fabric-apps/secrets/wf-shop--k2m9p4q1x7-v1".to_string()),
            (Method::PATCH, "/apis/policy/v1/namespaces/fabric-apps/poddisruptionbudgets/wf-shop--k2m9p4q1x7-v1".to_string()),
            (Method::POST, "/api/v1/namespaces/fabric-apps/pods".to_string()),
        ]
    );
    let secret = &cluster.calls()[0];
    assert!(
        secret.query.contains("fieldManager=fabric-control-plane"),
        "{}",
        secret.query
    );
    assert_eq!(secret.body["stringData"]["token"], "secret-token-5e1f");
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["uid"],
        "secrets-uid-1"
    );
    assert!(
        worker.handle.starts_with("wf-shop--k2m9p4q1x7-v1-2-"),
        "{}",
        worker.handle
    );
    // Pinned to its AZ; the token read from the Secret, never in the Pod.
    let zone = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(
        zone,
        &json!({"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"]})
    );
    assert!(!pod.to_string().contains("secret-token-5e1f"));
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"],
        json!({"cpu": "200m", "memory": "1024Mi"})
    );
    assert!(scheduler.alive(&worker).await);
}

/// A scheduler over a fake cluster that places every Pod at once.
fn placing_cluster() -> (KubernetesScheduler, FakeCluster) {
    let (client, cluster) = FakeCluster::start();
    cluster.place_at("10.0.1.5");
    (KubernetesScheduler::new(client, settings()), cluster)
}

#[tokio::test]
async fn a_pod_deleted_out_from_under_the_scheduler_is_no_longer_alive() {
    let (scheduler, cluster) = placing_cluster();
    let worker = scheduler.start(&spec(1, "a")).await.unwrap();
    assert!(scheduler.alive(&worker).await);
    cluster.remove(&worker.handle);
    let mut seen = scheduler.seen.clone();
    while scheduler.alive(&worker).await {
        tokio::time::timeout(Duration::from_secs(5), seen.changed())
            .await
            .expect("the watch tells of the deletion")
            .unwrap();
    }
    // A Pod of the same name but another uid is not the worker either.
    let impostor = Worker {
        identity: Some("another-uid".into()),
        ..scheduler.start(&spec(1, "a")).await.unwrap()
    };
    assert!(!scheduler.alive(&impostor).await);
}

#[tokio::test]
async fn a_pod_name_already_taken_is_tried_again_under_another() {
    let (scheduler, cluster) = placing_cluster();
    cluster.fail(Method::POST, "/pods", 409);
    let worker = scheduler
        .start(&spec(1, "a"))
        .await
        .expect("started on the second name");
    let creates = cluster.calls_to(&Method::POST, "/pods");
    assert_eq!(creates.len(), 2);
    assert_ne!(
        creates[0].body["metadata"]["name"],
        creates[1].body["metadata"]["name"]
    );
    assert_eq!(creates[1].body["metadata"]["name"], worker.handle.as_str());
    // Other refusals are the start's error, with what was asked.
    cluster.fail(Method::POST, "/pods", 403);
    let refused = scheduler
        .start(&spec(2, "b"))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("creating the worker's Pod"), "{refused}");
}

#[tokio::test]
async fn kill_deletes_at_once_and_stop_gives_the_grace_then_retires_the_version() {
    let (scheduler, cluster) = placing_cluster();
    let one = scheduler.start(&spec(1, "a")).await.unwrap();
    let two = scheduler.start(&spec(2, "b")).await.unwrap();
    scheduler.kill(&one).await;
    let deletes = cluster.calls_to(&Method::DELETE, &one.handle);
    assert_eq!(deletes[0].body["gracePeriodSeconds"], 0);
    scheduler.stop(&two, Duration::from_secs(7)).await;
    let deletes = cluster.calls_to(&Method::DELETE, &two.handle);
    assert_eq!(deletes[0].body["gracePeriodSeconds"], 7);
    assert!(cluster.pods().is_empty());
    // The version's last worker gone, its Secret goes (the budget with it).
    let secret = cluster.calls_to(&Method::DELETE, "/secrets/wf-shop--k2m9p4q1x7-v1");
    assert_eq!(secret.len(), 1);
}

#[tokio::test]
async fn stopping_one_of_a_versions_workers_keeps_its_secret() {
    let (scheduler, cluster) = placing_cluster();
    let one = scheduler.start(&spec(1, "a")).await.unwrap();
    let _two = scheduler.start(&spec(2, "b")).await.unwrap();
    scheduler.stop(&one, Duration::from_secs(1)).await;
    assert!(
        cluster
            .calls_to(&Method::DELETE, "/secrets/wf-shop--k2m9p4q1x7-v1")
            .is_empty()
    );
}

#[tokio::test]
async fn adopting_checks_the_pods_uid_and_the_worker_it_was_started_as() {
    let (scheduler, _cluster) = placing_cluster();
    let worker = scheduler.start(&spec(1, "a")).await.unwrap();
    // A control plane restarted: a new scheduler, the same cluster.
    let recorded = worker.clone();
    assert_eq!(
        scheduler.adopt(&recorded, "shop-1-v1").await,
        Some(worker.clone())
    );
    assert_eq!(
        scheduler.adopt(&recorded, "shop-2-v1").await,
        None,
        "another worker's name"
    );
    let other = Worker {
        identity: Some("pod-uid-999".into()),
        ..worker.clone()
    };
    assert_eq!(
        scheduler.adopt(&other, "shop-1-v1").await,
        None,
        "a Pod since replaced"
    );
    let unknown = Worker {
        identity: None,
        ..worker
    };
    assert_eq!(
        scheduler.adopt(&unknown, "shop-1-v1").await,
        None,
        "no identity, no adoption"
    );
}

#[tokio::test]
async fn a_watch_that_expired_is_listed_again_and_nothing_is_missed() {
    let (client, cluster) = FakeCluster::start();
    cluster.place_at("10.0.3.9");
    cluster.expire_next_watch();
    let scheduler = KubernetesScheduler::new(client, settings());
    // Created while the watch is being restarted: the new list holds it.
    let worker = scheduler
        .start(&spec(1, "c"))
        .await
        .expect("seen through the relist");
    assert!(scheduler.alive(&worker).await);
    let lists = cluster
        .calls()
        .into_iter()
        .filter(|c| {
            c.method == Method::GET && c.path.ends_with("/pods") && !c.query.contains("watch=true")
        })
        .count();
    assert!(lists >= 2, "listed again after the 410: {lists}");
}

#[tokio::test]
async fn a_pod_never_placed_is_deleted_and_its_start_fails() {
    let (client, cluster) = FakeCluster::start();
    let scheduler = KubernetesScheduler::new(
        client,
        KubernetesSettings {
            start_timeout: Duration::from_millis(300),
            ..settings()
        },
    );
    let err = scheduler
        .start(&spec(1, "a"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not placed within"), "{err}");
    assert!(cluster.pods().is_empty(), "the Pod was deleted");
}

#[tokio::test]
async fn a_workers_log_comes_from_its_pods_log() {
    let (scheduler, cluster) = placing_cluster();
    let worker = scheduler.start(&spec(1, "a")).await.unwrap();
    let log = scheduler.logs(&spec(1, "a"), 5).await.expect("a log");
    assert!(log.contains(&format!("{}: line 2", worker.handle)), "{log}");
    let asked = cluster.calls_to(&Method::GET, "/log");
    assert!(asked[0].query.contains("tailLines=5"), "{}", asked[0].query);
    assert_eq!(
        scheduler.logs(&spec(3, "c"), 5).await,
        None,
        "no such worker"
    );
}
