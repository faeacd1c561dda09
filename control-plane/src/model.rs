//! The control plane's API types, shared by the server and the `fabric` CLI.

use serde::{Deserialize, Serialize};

/// A deploy (or redeploy) request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployRequest {
    /// The app's name; the manifest's own when absent.
    pub name: Option<String>,
    /// The manifest's YAML text.
    pub manifest: String,
    /// Workers, 1 to 8.
    pub workers: u32,
    /// Worker size in vCores.
    pub size: f64,
    /// Queues shared by all workers and kept in queue-svc.
    #[serde(default)]
    pub persistent_queues: bool,
    /// Persistent queue messages sealed before they reach the backend: on
    /// unless the tenant opts out (`false`).
    #[serde(default = "on")]
    pub encrypt_queues: bool,
}

fn on() -> bool {
    true
}

/// A scale request: new worker count, and optionally a new size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleRequest {
    /// Workers, 1 to 8.
    pub workers: u32,
    /// A new size (a side-by-side redeploy) when given.
    pub size: Option<f64>,
}

/// An app as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRecord {
    /// The app's name.
    pub name: String,
    /// The tenant that owns it.
    pub tenant: String,
    /// This app's instance, minted at its first deploy and kept until it
    /// is deleted: its tokens, data keys, queues and stores are bound to
    /// it (see [`AppRecord::app_id`]), so a later app of the same name
    /// starts empty. Empty for an app deployed before instances existed.
    #[serde(default)]
    pub instance: String,
    /// The running version (1 on first deploy; 0 while the first deploy is
    /// under way and nothing serves).
    pub version: u64,
    /// The manifest's text.
    pub manifest: String,
    /// Wanted workers.
    pub workers: u32,
    /// Worker size.
    pub size: f64,
    /// Persistent queues on.
    pub persistent_queues: bool,
    /// Queue encryption on.
    pub encrypt_queues: bool,
}

impl AppRecord {
    /// The record a first deploy of `manifest` would make, checked as the
    /// API checks it, for showing what its workers would run as (the
    /// instance is a placeholder: each deploy mints its own).
    pub fn rendered(
        name: Option<String>,
        tenant: String,
        manifest: String,
        workers: u32,
        size: f64,
        persistent_queues: bool,
        encrypt_queues: bool,
    ) -> Result<Self, String> {
        if !(1..=8).contains(&workers) {
            return Err(format!("workers must be 1 to 8, not {workers}"));
        }
        size.to_string()
            .parse::<workers::size::WorkerSize>()
            .map_err(|e| e.to_string())?;
        let app = workers::manifest::load(&manifest).map_err(|e| e.to_string())?;
        let name = name
            .or(app.name.clone())
            .ok_or("the app needs a name: give --name or put name: in the manifest")?;
        common::app::validate_app_name(&name).map_err(|e| e.to_string())?;
        common::app::validate_app_name(&tenant)
            .map_err(|e| e.to_string().replace("app name", "tenant name"))?;
        Ok(AppRecord {
            name,
            tenant,
            instance: "x".repeat(common::app::INSTANCE_LEN),
            version: 1,
            manifest,
            workers,
            size,
            persistent_queues,
            encrypt_queues,
        })
    }

    /// The id the app's workers, tokens and data have at the services.
    pub fn app_id(&self) -> String {
        common::app::app_id(&self.name, &self.instance)
    }
}

/// What one tenant may run at once: checked at every deploy and scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    /// Apps (those being deployed or deleted included).
    pub apps: u32,
    /// Workers over all its apps (the wanted counts).
    pub workers: u32,
    /// vCores over all its apps: workers × size.
    pub vcores: f64,
}

impl Default for Quota {
    /// Enough for a team's apps on one machine; an operator sets their own.
    fn default() -> Self {
        Quota {
            apps: 50,
            workers: 100,
            vcores: 50.0,
        }
    }
}

/// An app being deleted: its data is purged from the services, and only
/// then is its name free again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeRecord {
    /// The app's name.
    pub name: String,
    /// The id its data is kept under.
    pub app_id: String,
    /// The tenant that owned it.
    pub tenant: String,
}

/// What `apps list` and `apps show` print for an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// The record.
    #[serde(flatten)]
    pub app: AppRecord,
    /// Workers of the running version that are ready.
    pub ready: u32,
    /// The app's URL through the load balancer.
    pub url: String,
}

/// A worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Started, not ready yet.
    Starting,
    /// Answering `/readyz`.
    Ready,
    /// Taking no new work; finishing its own.
    Draining,
    /// Exited or unready; waiting to be restarted.
    Down,
}

/// One worker, as `fabric workers N` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    /// `{app}-{n}`.
    pub id: String,
    /// Its index n within the app (1-based).
    pub index: u32,
    /// The app version it runs.
    pub version: u64,
    /// Its availability zone.
    pub az: String,
    /// Its state.
    pub state: WorkerState,
    /// Where it listens.
    pub address: String,
    /// Its process id (local scheduler).
    pub pid: Option<u32>,
    /// Times it was restarted.
    pub restarts: u32,
    /// Its direct URL through the load balancer.
    pub url: String,
}

/// Something that happened: for `fabric events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increasing sequence number.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The app concerned, if any.
    pub app: Option<String>,
    /// The app instance concerned: an earlier app of the same name's events
    /// are not the current one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// What kind: `worker.down`, `worker.up`, `worker.moved`, `az.down`,
    /// `az.up`, `deploy.started`, `deploy.ready`, `deploy.done`, `deploy.failed`, ...
    pub kind: String,
    /// A sentence for a person.
    pub message: String,
}

/// An availability zone and whether it is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AzStatus {
    /// The zone's label.
    pub name: String,
    /// Whether workers may run there.
    pub up: bool,
}

/// What `fabric queues APP` prints: the app's queues and their counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppQueues {
    /// The app.
    pub app: String,
    /// `persistent` (in queue-svc, with counts) or `transient` (in each
    /// worker's memory: names only; counts are on each worker's `/metrics`).
    pub mode: String,
    /// Each queue; counts are absent for transient queues.
    pub queues: Vec<QueueInfo>,
}

/// One queue's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Messages waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u64>,
    /// Messages leased and not yet acked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
    /// Messages in the dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_depth: Option<u64>,
    /// Age of the oldest waiting message, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_ms: Option<u64>,
    /// Whether messages are sealed at rest.
    pub encrypted: bool,
}
