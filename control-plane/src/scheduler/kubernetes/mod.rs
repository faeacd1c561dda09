//! The Kubernetes scheduler: each worker one Pod, pinned to its AZ by node
//! affinity on the zone label, in one namespace the control plane manages.
//!
//! One Pod per worker (rather than a StatefulSet or Deployment per version)
//! keeps the supervisor the one that places, heals, moves workers out of a
//! failed AZ and switches versions side by side, exactly as it does with the
//! local scheduler: a controller of the cluster's own would heal and spread
//! the same Pods a second time, by rules of its own. What Kubernetes adds is
//! where a Pod runs (the zone's nodes), the limits of its size, and the
//! restricted sandbox (see [`objects`]).
//!
//! What the scheduler knows of its Pods comes from one watch over the
//! namespace's managed Pods, kept in a reflector's store: a start waits there
//! for its Pod's IP, `alive` reads it, adopting checks a Pod's uid against
//! the one recorded. The API is called only to create and delete objects and
//! to read a Pod's log.

pub mod objects;
#[cfg(test)]
mod supervised;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Scheduler, SchedulerError, Worker, WorkerSpec};

/// The Kubernetes scheduler's settings (`[kubernetes]` in the control
/// plane's config, `FABRIC_KUBERNETES__*` in its environment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubernetesSettings {
    /// The namespace workers run in; the control plane's role is limited to it.
    pub namespace: String,
    /// The image workers run (`fabric serve worker`).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// The node label whose values are the zones the control plane's `azs`
    /// name.
    pub zone_label: String,
    /// The port a worker serves its app on.
    pub app_port: u16,
    /// The port a worker serves `/healthz`, `/readyz` and `/metrics` on.
    pub ops_port: u16,
    /// How long a worker Pod may take to stop when deleted without a grace
    /// of the supervisor's (it always gives one).
    pub termination_grace_s: i64,
    /// How long a start waits for its Pod to be placed and given an address.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            namespace: "fabric-apps".into(),
            image: concat!("worker-fabric:", env!("CARGO_PKG_VERSION")).into(),
            image_pull_policy: "IfNotPresent".into(),
            zone_label: "topology.kubernetes.io/zone".into(),
            app_port: 8080,
            ops_port: 8081,
            termination_grace_s: 30,
            start_timeout: Duration::from_secs(120),
        }
    }
}

/// The field manager the scheduler's server-side applies are made under.
const MANAGER: &str = "fabric-control-plane";
/// Pod-name collisions a start tries past before it gives up.
const NAME_TRIES: usize = 3;

/// Runs workers as Pods.
pub struct KubernetesScheduler {
    settings: KubernetesSettings,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    budgets: Api<PodDisruptionBudget>,
    /// Every managed Pod of the namespace, as the watch last saw it.
    store: Store<Pod>,
    /// Counts the watch's events: waiting for a change is waiting on it.
    seen: watch::Receiver<u64>,
    watching: tokio::task::AbortHandle,
}

impl Drop for KubernetesScheduler {
    fn drop(&mut self) {
        self.watching.abort();
    }
}

/// Why a call to the cluster failed, for a worker's start.
fn cluster_error(spec: &WorkerSpec, what: &str, e: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::Cluster {
        id: format!("{}-{}", spec.app, spec.index),
        reason: format!("{what}: {e}"),
    }
}

/// Whether a Kubernetes API error is the answer `code`.
fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl KubernetesScheduler {
    /// A scheduler over `client`, watching its namespace's managed Pods from now on.
    pub fn new(client: kube::Client, settings: KubernetesSettings) -> Self {
        let ns = settings.namespace.as_str();
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let (store, writer) = reflector::store();
        let (tell, seen) = watch::channel(0u64);
        let selector = format!("{}={}", objects::MANAGED_BY.0, objects::MANAGED_BY.1);
        let events = watcher(pods.clone(), watcher::Config::default().labels(&selector))
            .default_backoff()
            .reflect(writer);
        let watching = tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "the worker Pods' watch failed; it restarts");
                }
                tell.send_modify(|n| *n += 1);
            }
        })
        .abort_handle();
        KubernetesScheduler {
            secrets: Api::namespaced(client.clone(), ns),
            budgets: Api::namespaced(client, ns),
            pods,
            settings,
            store,
            seen,
            watching,
        }
    }

    fn pod(&self, name: &str) -> Option<std::sync::Arc<Pod>> {
        self.store
            .get(&ObjectRef::new(name).within(&self.settings.namespace))
    }

    /// The worker a Pod is, once it has an address.
    fn worker_of(&self, pod: &Pod) -> Option<Worker> {
        let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
        Some(Worker {
            handle: pod.metadata.name.clone()?,
            address: SocketAddr::new(ip, self.settings.app_port),
            ops_address: SocketAddr::new(ip, self.settings.ops_port),
            identity: pod.metadata.uid.clone(),
            pid: None,
        })
    }

    /// Makes sure `spec`'s version has its Secret and disruption budget;
    /// returns the owner reference its Pods carry.
    async fn version_objects(
        &self,
        spec: &WorkerSpec,
    ) -> Result<serde_json::Value, SchedulerError> {
        let name = objects::version_name(spec);
        let apply = PatchParams::apply(MANAGER).force();
        let secret = self
            .secrets
            .patch(
                &name,
                &apply,
                &Patch::Apply(objects::secret(spec, &self.settings)),
            )
            .await
            .map_err(|e| cluster_error(spec, "applying the version's Secret", e))?;
        let uid = secret.metadata.uid.unwrap_or_default();
        let owner = objects::owned_by(spec, &uid);
        let budget = objects::disruption_budget(spec, &self.settings, &owner);
        self.budgets
            .patch(&name, &apply, &Patch::Apply(budget))
            .await
            .map_err(|e| cluster_error(spec, "applying the version's disruption budget", e))?;
        Ok(owner)
    }

    /// Creates `spec`'s Pod under a fresh name; returns that name.
    async fn create_pod(
        &self,
        spec: &WorkerSpec,
        owner: &serde_json::Value,
    ) -> Result<String, SchedulerError> {
        let mut last = None;
        for _ in 0..NAME_TRIES {
            let suffix = common::app::new_instance()[..5].to_string();
            let pod = objects::pod(spec, &self.settings, &suffix, owner);
            match self.pods.create(&PostParams::default(), &pod).await {
                Ok(created) => return Ok(created.metadata.name.unwrap_or_default()),
                // A Pod of that name exists (a start before this one): another name.
                Err(e) if is_status(&e, 409) => last = Some(e),
                Err(e) => return Err(cluster_error(spec, "creating the worker's Pod", e)),
            }
        }
        Err(cluster_error(
            spec,
            "creating the worker's Pod",
            last.map_or_else(String::new, |e| e.to_string()),
        ))
    }

    /// Waits until Pod `name` has an address (it is placed and started).
    async fn placed(&self, spec: &WorkerSpec, name: &str) -> Result<Worker, SchedulerError> {
        let deadline = tokio::time::Instant::now() + self.settings.start_timeout;
        let mut seen = self.seen.clone();
        loop {
            seen.borrow_and_update();
            if let Some(pod) = self.pod(name) {
                if let Some(worker) = self.worker_of(&pod) {
                    return Ok(worker);
                }
                if ended(&pod) {
                    return Err(cluster_error(
                        spec,
                        "its Pod",
                        "ended before it had an address",
                    ));
                }
            }
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                return Err(cluster_error(
                    spec,
                    "its Pod",
                    format!("not placed within {:?}", self.settings.start_timeout),
                ));
            }
        }
    }

    async fn delete_pod(&self, name: &str, grace: u32) {
        match self
            .pods
            .delete(name, &DeleteParams::default().grace_period(grace))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => tracing::warn!(pod = name, error = %e, "could not delete a worker's Pod"),
        }
    }

    /// Waits up to `wait` until Pod `name` is gone from the watch.
    async fn gone(&self, name: &str, wait: Duration) -> bool {
        let mut seen = self.seen.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            seen.borrow_and_update();
            if self.pod(name).is_none() {
                return true;
            }
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Deletes the Secret (and with it the disruption budget) of the
    /// version Pod `stopped` ran, once no other Pod of it is left.
    async fn retire_version(&self, stopped: &Pod) {
        let labels = stopped.metadata.labels.clone().unwrap_or_default();
        let (Some(app_id), Some(version)) = (
            labels.get("fabric.dev/app-id"),
            labels.get("fabric.dev/version"),
        ) else {
            return;
        };
        let others = self.store.state().iter().any(|p| {
            let l = p.metadata.labels.as_ref();
            p.metadata.name != stopped.metadata.name
                && l.and_then(|l| l.get("fabric.dev/app-id")) == Some(app_id)
                && l.and_then(|l| l.get("fabric.dev/version")) == Some(version)
        });
        if others {
            return;
        }
        let name = format!("wf-{app_id}-v{version}");
        match self
            .secrets
            .delete(&name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                tracing::warn!(secret = name, error = %e, "could not delete a retired version's Secret")
            }
        }
    }
}

/// Whether a Pod has ended or is being deleted: it serves no more.
fn ended(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Failed" | "Succeeded")
        )
}

/// The worker name (`{app}-{n}-v{version}`) a Pod was started as.
fn started_as(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|v| v.name == "FABRIC_WORKER_ID")?
        .value
        .as_deref()
}

impl Scheduler for KubernetesScheduler {
    fn start<'a>(&'a self, spec: &'a WorkerSpec) -> BoxFuture<'a, Result<Worker, SchedulerError>> {
        Box::pin(async move {
            let owner = self.version_objects(spec).await?;
            let name = self.create_pod(spec, &owner).await?;
            let placed = self.placed(spec, &name).await;
            if placed.is_err() {
                self.delete_pod(&name, 0).await;
            }
            placed
        })
    }

    fn alive<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            self.pod(&worker.handle)
                .is_some_and(|p| p.metadata.uid == worker.identity && !ended(&p))
        })
    }

    fn adopt<'a>(&'a self, recorded: &'a Worker, name: &'a str) -> BoxFuture<'a, Option<Worker>> {
        Box::pin(async move {
            // What the watch lists first is what the cluster runs now.
            let listed = self.store.wait_until_ready();
            tokio::time::timeout(self.settings.start_timeout, listed)
                .await
                .ok()?
                .ok()?;
            let pod = self.pod(&recorded.handle)?;
            let ours = recorded.identity.is_some()
                && pod.metadata.uid == recorded.identity
                && started_as(&pod) == Some(name)
                && !ended(&pod);
            ours.then(|| self.worker_of(&pod)).flatten()
        })
    }

    fn kill<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.delete_pod(&worker.handle, 0).await })
    }

    fn stop<'a>(&'a self, worker: &'a Worker, grace: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let pod = self.pod(&worker.handle);
            let seconds = u32::try_from(grace.as_secs().max(1)).unwrap_or(u32::MAX);
            self.delete_pod(&worker.handle, seconds).await;
            // The kubelet kills it after the grace; a node that stopped
            // answering never says so, and the wait ends.
            self.gone(&worker.handle, grace + Duration::from_secs(5))
                .await;
            if let Some(pod) = pod {
                self.retire_version(&pod).await;
            }
        })
    }

    fn logs<'a>(&'a self, spec: &'a WorkerSpec, lines: usize) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let worker = format!("{}-{}", spec.app, spec.index);
            let pod = self
                .store
                .state()
                .into_iter()
                .filter(|p| {
                    let l = p.metadata.labels.as_ref();
                    l.and_then(|l| l.get("fabric.dev/app-id")) == Some(&spec.app_id)
                        && l.and_then(|l| l.get("fabric.dev/version"))
                            == Some(&spec.version.to_string())
                        && l.and_then(|l| l.get("fabric.dev/worker")) == Some(&worker)
                })
                .max_by_key(|p| p.metadata.creation_timestamp.clone())?;
            let params = LogParams {
                tail_lines: Some(i64::try_from(lines).unwrap_or(i64::MAX)),
                ..LogParams::default()
            };
            self.pods
                .logs(pod.metadata.name.as_deref()?, &params)
                .await
                .ok()
        })
    }
}
