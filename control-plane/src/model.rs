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
    /// Properties to set (over those the app has, which it keeps).
    #[serde(default, skip_serializing_if = "Properties::is_empty")]
    pub properties: Properties,
    /// Secure properties to set (over those the app has).
    #[serde(default, skip_serializing_if = "Properties::is_empty")]
    pub secure_properties: Properties,
    /// Deploy as a canary taking this percentage (1 to 99) of the app's
    /// requests beside its serving version, until promoted or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u8>,
}

impl DeployRequest {
    /// A deploy of `manifest` on `workers` of `size`, named by the manifest,
    /// with transient queues and nothing else set (change fields with `..`).
    pub fn of(manifest: impl Into<String>, workers: u32, size: f64) -> Self {
        DeployRequest {
            name: None,
            manifest: manifest.into(),
            workers,
            size,
            persistent_queues: false,
            encrypt_queues: true,
            properties: Properties::new(),
            secure_properties: Properties::new(),
            canary: None,
        }
    }
}

/// A change of an app's properties: a new configuration, deployed side by side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PropertiesRequest {
    /// Properties to set.
    #[serde(default)]
    pub set: Properties,
    /// Secure properties to set.
    #[serde(default)]
    pub set_secure: Properties,
    /// Properties (plain or secure) to remove.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// A rollback: to configuration `to`, or to the last one that served
/// before the serving one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    /// The configuration's number.
    #[serde(default)]
    pub to: Option<u64>,
}

/// One configuration an app ran (or tried to): every deploy, property
/// change, resize, restart and rollback makes one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    /// Its number, from 1, per app.
    pub number: u64,
    /// What made it: `deploy`, `set`, `unset`, `scale`, `restart`, `rollback to N`.
    pub change: String,
    /// The tenant that made it.
    pub by: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The app version it ran as, when it served.
    #[serde(default)]
    pub version: Option<u64>,
    /// The manifest's text.
    pub manifest: String,
    /// Workers.
    pub workers: u32,
    /// Worker size.
    pub size: f64,
    /// Persistent queues on.
    pub persistent_queues: bool,
    /// Queue encryption on.
    pub encrypt_queues: bool,
    /// Properties.
    #[serde(default)]
    pub properties: Properties,
    /// Secure properties (sealed with the registry's record; masked in answers).
    #[serde(default)]
    pub secure_properties: Properties,
}

/// How a configuration's deploy ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Outcome {
    /// It served (and may still).
    Deployed,
    /// It never served and was rolled back (the one before kept serving).
    Failed {
        /// Why.
        reason: String,
    },
}

impl Configuration {
    /// The configuration `record` is, made by `by` through `change`.
    pub fn of(record: &AppRecord, number: u64, change: &str, by: &str, outcome: Outcome) -> Self {
        Configuration {
            number,
            change: change.to_string(),
            by: by.to_string(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            version: matches!(outcome, Outcome::Deployed).then_some(record.version),
            outcome,
            manifest: record.manifest.clone(),
            workers: record.workers,
            size: record.size,
            persistent_queues: record.persistent_queues,
            encrypt_queues: record.encrypt_queues,
            properties: record.properties.clone(),
            secure_properties: record.secure_properties.clone(),
        }
    }

    /// As anyone sees it: secure values masked.
    pub fn masked(mut self) -> Self {
        mask(&mut self.secure_properties);
        self
    }

    /// `record` running this configuration again.
    pub fn applied_to(&self, record: AppRecord) -> AppRecord {
        AppRecord {
            manifest: self.manifest.clone(),
            workers: self.workers,
            size: self.size,
            persistent_queues: self.persistent_queues,
            encrypt_queues: self.encrypt_queues,
            properties: self.properties.clone(),
            secure_properties: self.secure_properties.clone(),
            ..record
        }
    }
}

/// How many configurations of an app are kept (older ones are pruned).
pub const KEPT_CONFIGURATIONS: usize = 10;

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
    /// Properties set for the app: over the manifest's own, read by flows
    /// as `$props`.
    #[serde(default, skip_serializing_if = "Properties::is_empty")]
    pub properties: Properties,
    /// Secure properties: as `properties`, but write-only: kept only sealed
    /// (the registry seals every record), handed to the app's workers only,
    /// and shown everywhere else as [`MASK`].
    #[serde(default, skip_serializing_if = "Properties::is_empty")]
    pub secure_properties: Properties,
    /// How the app scales by itself, when it does (`fabric apps autoscale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<ScalePolicy>,
}

/// How an app scales by itself: the worker count the busiest signal asks
/// for, within `min` and `max`. At least one signal is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalePolicy {
    /// Workers at least (1 to 8).
    pub min: u32,
    /// Workers at most (`min` to 8).
    pub max: u32,
    /// Messages of backlog (waiting and in flight, over the app's persistent
    /// queues) per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_backlog: Option<u32>,
    /// CPU per worker, in percent of its size's vCores (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// HTTP requests in flight per worker, in percent of its size's
    /// concurrency ceiling (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl ScalePolicy {
    /// Whether the policy can be followed: bounds in order, at least one
    /// signal, targets in range; the reason when not.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=8).contains(&self.min) || !(self.min..=8).contains(&self.max) {
            return Err(format!(
                "autoscaling needs 1 <= min <= max <= 8, not min {} and max {}",
                self.min, self.max
            ));
        }
        if self.queue_backlog.is_none() && self.cpu.is_none() && self.concurrency.is_none() {
            return Err(
                "autoscaling needs a signal: a queue backlog, a CPU or a concurrency target".into(),
            );
        }
        if self.queue_backlog == Some(0) {
            return Err("the queue backlog target is messages per worker, at least 1".into());
        }
        for (what, target) in [("CPU", self.cpu), ("concurrency", self.concurrency)] {
            if let Some(t) = target
                && !(1..=100).contains(&t)
            {
                return Err(format!(
                    "the {what} target is a percentage, 1 to 100, not {t}"
                ));
            }
        }
        Ok(())
    }
}

/// A policy, for a person: "1 to 4 workers on queue backlog 20 per worker, CPU 70%".
pub fn describe_policy(p: &ScalePolicy) -> String {
    let mut on = Vec::new();
    if let Some(t) = p.queue_backlog {
        on.push(format!("queue backlog {t} per worker"));
    }
    if let Some(t) = p.cpu {
        on.push(format!("CPU {t}%"));
    }
    if let Some(t) = p.concurrency {
        on.push(format!("concurrency {t}%"));
    }
    format!("{} to {} workers on {}", p.min, p.max, on.join(", "))
}

/// App properties: names to values.
pub type Properties = std::collections::BTreeMap<String, String>;

/// What a secure property's value is shown as.
pub const MASK: &str = "********";

/// Replaces every value of `secure` with [`MASK`].
fn mask(secure: &mut Properties) {
    secure.values_mut().for_each(|v| *v = MASK.to_string());
}

/// The most properties (plain and secure together) an app may have.
pub const MAX_PROPERTIES: usize = 300;
/// The longest property name or value, in characters.
pub const MAX_PROPERTY_LEN: usize = 1024;

/// Checks a property's name and value: a name of letters, digits, `.`,
/// `_` and `-`, each at most [`MAX_PROPERTY_LEN`] characters, the value
/// without control characters other than tab and newline.
pub fn check_property(name: &str, value: &str) -> Result<(), String> {
    let shown: String = name.chars().take(40).collect();
    if name.is_empty() || name.chars().count() > MAX_PROPERTY_LEN {
        return Err(format!(
            "property name {shown:?} must be 1 to {MAX_PROPERTY_LEN} characters"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "property name {shown:?}: only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if value.chars().count() > MAX_PROPERTY_LEN {
        return Err(format!(
            "property {shown:?}: its value is over {MAX_PROPERTY_LEN} characters"
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\t' && c != '\n')
    {
        return Err(format!(
            "property {shown:?}: its value holds a control character"
        ));
    }
    Ok(())
}

/// Checks an app's properties together: each one, their number, and that
/// no name is both plain and secure.
pub fn check_properties(plain: &Properties, secure: &Properties) -> Result<(), String> {
    for (k, v) in plain.iter().chain(secure) {
        check_property(k, v)?;
    }
    if plain.len() + secure.len() > MAX_PROPERTIES {
        return Err(format!(
            "an app has at most {MAX_PROPERTIES} properties, not {}",
            plain.len() + secure.len()
        ));
    }
    if let Some(both) = plain.keys().find(|k| secure.contains_key(*k)) {
        return Err(format!("property {both:?} is set both plain and secure"));
    }
    Ok(())
}

impl AppRecord {
    /// The record as anyone but its workers sees it: secure values masked.
    pub fn masked(mut self) -> Self {
        mask(&mut self.secure_properties);
        self
    }

    /// The properties its workers get, secure ones among them.
    pub fn worker_properties(&self) -> Properties {
        let mut all = self.properties.clone();
        all.extend(
            self.secure_properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        all
    }

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
            properties: Properties::new(),
            secure_properties: Properties::new(),
            autoscale: None,
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
    /// A canary running beside the serving version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// A canary as an app's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Its version.
    pub version: u64,
    /// The percentage of the app's requests it takes.
    pub weight: u8,
    /// Its workers that are ready.
    pub ready: u32,
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
    /// The tenant whose app it concerns (what the events webhook's tenant
    /// filter reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
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

/// A message in a queue's dead-letter queue, as the console and
/// `GET /v1/apps/{n}/queues/{q}/dlq` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The message's id.
    pub id: String,
    /// Times it was delivered before it was dead-lettered.
    pub delivery_count: u32,
    /// When it was published, in Unix milliseconds.
    pub enqueued_at_ms: u64,
    /// Its body and last error are withheld: the queue is encrypted and
    /// this message was not asked for.
    pub sealed: bool,
    /// Why it was dead-lettered (the last error a consumer reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its body, unless sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// What a redrive moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    /// Dead letters moved back to their queue.
    pub moved: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hostile_properties_are_refused_naming_what_is_wrong() {
        assert!(
            check_properties(
                &props(&[("db.url", "x"), ("a_b-c", "tab\tand\nline")]),
                &props(&[("pw", "s")])
            )
            .is_ok()
        );
        let refused = |plain: Properties, secure: Properties, needle: &str| {
            let e = check_properties(&plain, &secure).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        refused(props(&[("", "x")]), props(&[]), "1 to 1024");
        refused(props(&[("a b", "x")]), props(&[]), "only letters");
        refused(props(&[("é", "x")]), props(&[]), "only letters");
        refused(
            props(&[("k", "bell\u{7}")]),
            props(&[]),
            "control character",
        );
        refused(
            props(&[("k", &"x".repeat(MAX_PROPERTY_LEN + 1))]),
            props(&[]),
            "over 1024",
        );
        refused(
            props(&[(&"k".repeat(MAX_PROPERTY_LEN + 1), "x")]),
            props(&[]),
            "1 to 1024",
        );
        refused(
            props(&[("k", "1")]),
            props(&[("k", "2")]),
            "both plain and secure",
        );
        let many: Properties = (0..=MAX_PROPERTIES)
            .map(|i| (format!("p{i}"), "v".into()))
            .collect();
        refused(many, props(&[]), "at most 300");
        // At the limits exactly: accepted.
        let full: Properties = (0..MAX_PROPERTIES)
            .map(|i| (format!("p{i}"), "v".repeat(MAX_PROPERTY_LEN)))
            .collect();
        assert!(check_properties(&full, &Properties::new()).is_ok());
    }

    #[test]
    fn masking_hides_every_secure_value_and_nothing_else() {
        let record = AppRecord {
            name: "shop".into(),
            tenant: "t".into(),
            instance: String::new(),
            version: 1,
            manifest: String::new(),
            workers: 1,
            size: 0.1,
            persistent_queues: false,
            encrypt_queues: true,
            properties: props(&[("greeting", "hi")]),
            secure_properties: props(&[("pw", "s3cr3t")]),
            autoscale: None,
        };
        let config = Configuration::of(&record, 1, "deploy", "t", Outcome::Deployed);
        assert_eq!(
            record.worker_properties(),
            props(&[("greeting", "hi"), ("pw", "s3cr3t")])
        );
        let shown = record.masked();
        assert_eq!(shown.secure_properties, props(&[("pw", MASK)]));
        assert_eq!(shown.properties, props(&[("greeting", "hi")]));
        assert_eq!(config.masked().secure_properties, props(&[("pw", MASK)]));
    }
}
