//! The Kubernetes objects that run one worker, built from its spec alone, so
//! that `fabric apps deploy --render kubernetes` prints exactly what the
//! scheduler creates.
//!
//! Per app version: a `Secret` holding the manifest and the app token, which
//! owns the version's Pods (deleting it collects them), and a
//! `PodDisruptionBudget` that lets a voluntary eviction take one worker at a
//! time. Per worker: one `Pod`, pinned to its AZ by node affinity on the zone
//! label, under the restricted Pod Security profile.

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};
use workers::size::{SIZES, WorkerSize};

use super::super::WorkerSpec;
use super::KubernetesSettings;

/// The label every object the scheduler manages carries, and its value:
/// what its watch selects.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "fabric-control-plane");
/// Where the app token sits in the version's Secret.
pub const TOKEN_KEY: &str = "token";
/// Where the manifest sits in the version's Secret.
pub const MANIFEST_KEY: &str = "manifest";
/// Where a worker's container reads its manifest.
const MANIFEST_DIR: &str = "/etc/fabric";
/// The environment variable that carries the app token: read from the
/// Secret, never written into the Pod spec.
const TOKEN_ENV: &str = "FABRIC_APP_TOKEN";
/// How long a Pod stays bound to a node that stopped answering before it is
/// evicted (Kubernetes' default is 300 s); the supervisor's own probes
/// replace the worker sooner.
const UNREACHABLE_TOLERATION_S: i64 = 5;

/// The name of an app version's Secret and PodDisruptionBudget.
pub fn version_name(spec: &WorkerSpec) -> String {
    format!("wf-{}-v{}", spec.app_id, spec.version)
}

/// The name of a worker's Pod: its version's, its index, and `suffix` (each
/// start's own, so a start never meets a Pod of the one before that is still
/// terminating).
pub fn pod_name(spec: &WorkerSpec, suffix: &str) -> String {
    format!("{}-{}-{suffix}", version_name(spec), spec.index)
}

/// The labels of every object of `spec`'s app version.
fn version_labels(spec: &WorkerSpec) -> Value {
    json!({
        "app.kubernetes.io/name": "fabric-worker",
        "app.kubernetes.io/part-of": "worker-fabric",
        MANAGED_BY.0: MANAGED_BY.1,
        "app.kubernetes.io/instance": spec.app,
        "app.kubernetes.io/version": format!("v{}", spec.version),
        "fabric.dev/app": spec.app,
        "fabric.dev/app-id": spec.app_id,
        "fabric.dev/version": spec.version.to_string(),
        "fabric.dev/tenant": spec.tenant,
    })
}

/// What selects one app version's Pods.
fn version_selector(spec: &WorkerSpec) -> Value {
    json!({
        "fabric.dev/app-id": spec.app_id,
        "fabric.dev/version": spec.version.to_string(),
    })
}

/// The size's CPU (`100m` for 0.1 vCore) and memory (`512Mi`), as requests
/// and limits both: a worker gets what its size buys and no more.
fn resources(size: f64) -> Value {
    let size: WorkerSize = SIZES
        .into_iter()
        .find(|s| (s.vcores - size).abs() < 1e-9)
        .unwrap_or(SIZES[0]);
    let cpu = format!("{}m", (size.vcores * 1000.0).round() as u64);
    let memory = format!("{}Mi", size.memory / (1024 * 1024));
    json!({
        "requests": { "cpu": cpu, "memory": memory },
        "limits": { "cpu": cpu, "memory": memory },
    })
}

/// An app version's Secret: its manifest and app token. `token` is `None`
/// when rendering for review, which shows where the token goes, not one.
pub fn secret(spec: &WorkerSpec, s: &KubernetesSettings) -> Secret {
    let token = spec
        .env
        .iter()
        .find(|(k, _)| k == TOKEN_ENV)
        .map_or("<minted at deploy>", |(_, v)| v.as_str());
    typed(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": version_name(spec),
            "namespace": s.namespace,
            "labels": version_labels(spec),
        },
        "type": "Opaque",
        "stringData": { MANIFEST_KEY: &*spec.manifest, TOKEN_KEY: token },
    }))
}

/// An app version's PodDisruptionBudget: a drain evicts one worker at a time.
pub fn disruption_budget(
    spec: &WorkerSpec,
    s: &KubernetesSettings,
    owner: &Value,
) -> PodDisruptionBudget {
    typed(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": version_name(spec),
            "namespace": s.namespace,
            "labels": version_labels(spec),
            "ownerReferences": [owner],
        },
        "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": version_selector(spec) },
        },
    }))
}

/// The owner reference to an app version's Secret with `uid`.
pub fn owned_by(spec: &WorkerSpec, uid: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "name": version_name(spec),
        "uid": uid,
        "blockOwnerDeletion": true,
    })
}

/// One worker's Pod, named with `suffix`, owned through `owner`.
pub fn pod(spec: &WorkerSpec, s: &KubernetesSettings, suffix: &str, owner: &Value) -> Pod {
    let mut labels = version_labels(spec);
    labels["fabric.dev/worker"] = json!(format!("{}-{}", spec.app, spec.index));
    let mut env = vec![
        json!({"name": "FABRIC_LISTEN", "value": format!("0.0.0.0:{}", s.app_port)}),
        json!({"name": "FABRIC_OPS_LISTEN", "value": format!("0.0.0.0:{}", s.ops_port)}),
        json!({"name": "FABRIC_MANIFEST", "value": format!("{MANIFEST_DIR}/manifest.yaml")}),
        json!({"name": "FABRIC_APP", "value": spec.app}),
        json!({"name": "FABRIC_APP_ID", "value": spec.app_id}),
        json!({"name": "FABRIC_SIZE", "value": spec.size.to_string()}),
        json!({"name": "FABRIC_WORKER_ID", "value": spec.name()}),
        json!({"name": "FABRIC_LOG_FORMAT", "value": "json"}),
    ];
    for (name, value) in &spec.env {
        env.push(if name == TOKEN_ENV {
            json!({"name": name, "valueFrom": {"secretKeyRef": {
                "name": version_name(spec), "key": TOKEN_KEY,
            }}})
        } else {
            json!({"name": name, "value": value})
        });
    }
    let untolerated = |key: &str| {
        json!({
            "key": key, "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": UNREACHABLE_TOLERATION_S,
        })
    };
    let probe = |path: &str, period: u32| {
        json!({
            "httpGet": { "path": path, "port": "ops" },
            "periodSeconds": period, "timeoutSeconds": 1, "failureThreshold": 3,
        })
    };
    typed(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec, suffix),
            "namespace": s.namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            // The supervisor restarts a worker, with back-off and in another
            // AZ when its own is down; the kubelet does not.
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": s.termination_grace_s,
            "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchExpressions": [{
                    "key": s.zone_label, "operator": "In", "values": [spec.az],
                }]}],
            }}},
            "tolerations": [
                untolerated("node.kubernetes.io/unreachable"),
                untolerated("node.kubernetes.io/not-ready"),
            ],
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "containers": [{
                "name": "worker",
                "image": s.image,
                "imagePullPolicy": s.image_pull_policy,
                "args": ["serve", "worker"],
                "env": env,
                "ports": [
                    { "name": "app", "containerPort": s.app_port, "protocol": "TCP" },
                    { "name": "ops", "containerPort": s.ops_port, "protocol": "TCP" },
                ],
                "readinessProbe": probe("/readyz", 1),
                "livenessProbe": probe("/healthz", 10),
                "resources": resources(spec.size),
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true,
                    "capabilities": { "drop": ["ALL"] },
                    "seccompProfile": { "type": "RuntimeDefault" },
                },
                "volumeMounts": [
                    { "name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": true },
                    { "name": "tmp", "mountPath": "/tmp" },
                ],
            }],
            "volumes": [
                { "name": "manifest", "secret": {
                    "secretName": version_name(spec),
                    "items": [{ "key": MANIFEST_KEY, "path": "manifest.yaml" }],
                    "defaultMode": 0o440,
                }},
                { "name": "tmp", "emptyDir": { "sizeLimit": "64Mi" } },
            ],
        },
    }))
}

/// Every object an app's workers `specs` run as, as multi-document YAML
/// (the app token shown as a placeholder).
pub fn render(specs: &[WorkerSpec], s: &KubernetesSettings) -> String {
    let mut docs: Vec<Value> = Vec::new();
    if let Some(first) = specs.first() {
        let mut shown = first.clone();
        shown.env.retain(|(k, _)| k != TOKEN_ENV);
        docs.push(as_value(&secret(&shown, s)));
        let owner = owned_by(first, "<uid of the Secret, once created>");
        docs.push(as_value(&disruption_budget(first, s, &owner)));
    }
    for spec in specs {
        let owner = owned_by(spec, "<uid of the Secret, once created>");
        docs.push(as_value(&pod(spec, s, "xxxxx", &owner)));
    }
    serde_saphyr::to_string_multiple(&docs).unwrap_or_default()
}

fn as_value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// `value` as its typed object: the shape is fixed here, so a mismatch is a
/// bug in this file (caught by its tests), never input's doing.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a Kubernetes object of the shape this file builds")
}
