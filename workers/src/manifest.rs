//! The app manifest: YAML parsed with source locations, checked whole, compiled to flows.
//!
//! Loading refuses a manifest that does not parse, names a processor or field
//! that does not exist, refers to a flow or queue that is not there, or holds
//! a jq expression that does not compile, with the line, column and reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::error::ErrorType;
use crate::expr::Expr;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {reason}")]
pub struct ManifestError {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What is wrong there.
    pub reason: String,
}

type Text = Spanned<String>;

fn at<T>(s: &Spanned<T>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        line: s.referenced.line(),
        column: s.referenced.column(),
        reason: reason.into(),
    }
}

// ---- The YAML shape (the contract users write against) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppDef {
    name: Option<Text>,
    #[serde(default)]
    properties: BTreeMap<String, Value>,
    flows: Vec<Spanned<FlowDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FlowDef {
    name: Text,
    source: Option<Spanned<SourceDef>>,
    #[serde(default)]
    strategy: StrategyDef,
    max_concurrency: Option<usize>,
    steps: Vec<Spanned<StepDef>>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum StrategyDef {
    #[default]
    Synchronous,
    QueuedAsync,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum SourceDef {
    Http {
        method: Text,
        path: Text,
    },
    Queue {
        name: Text,
        #[serde(default = "one")]
        concurrency: usize,
        #[serde(rename = "max-deliveries", default = "five")]
        max_deliveries: u32,
    },
    Schedule {
        every: Option<Text>,
        cron: Option<Text>,
    },
}

fn one() -> usize {
    1
}
fn five() -> u32 {
    5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum StepDef {
    Log(Text),
    SetPayload(Text),
    SetVariable {
        name: Text,
        value: Text,
    },
    Validate(Text),
    Publish {
        queue: Text,
        body: Option<Text>,
    },
    Respond {
        status: Option<Spanned<u16>>,
        body: Option<Text>,
        #[serde(default)]
        headers: BTreeMap<String, Text>,
    },
    Choice {
        when: Vec<WhenDef>,
        #[serde(default)]
        otherwise: Vec<Spanned<StepDef>>,
    },
    FlowRef(Text),
    Try {
        steps: Vec<Spanned<StepDef>>,
        #[serde(rename = "on-error", default)]
        on_error: Vec<OnErrorDef>,
    },
    RaiseError {
        #[serde(rename = "type")]
        kind: Text,
        message: Option<Text>,
        status: Option<Spanned<u16>>,
    },
    HttpRequest {
        #[serde(default = "get")]
        method: Text,
        url: Text,
        body: Option<Text>,
        #[serde(default)]
        headers: BTreeMap<String, Text>,
        timeout: Option<Text>,
    },
    Store {
        store: Text,
        key: Text,
        value: Option<Text>,
        ttl: Option<Text>,
    },
    Retrieve {
        store: Text,
        key: Text,
        default: Option<Text>,
        target: Option<Text>,
    },
    Remove {
        store: Text,
        key: Text,
    },
    Idempotent {
        key: Text,
        ttl: Option<Text>,
    },
    Aggregate {
        key: Text,
        size: Spanned<u32>,
        ttl: Option<Text>,
    },
}

fn get() -> Text {
    Spanned::new(
        "GET".into(),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenDef {
    #[serde(rename = "if")]
    condition: Text,
    steps: Vec<Spanned<StepDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OnErrorDef {
    #[serde(rename = "type", default)]
    types: Vec<Text>,
    #[serde(default)]
    propagate: bool,
    steps: Vec<Spanned<StepDef>>,
}

// ---- The compiled app ----

/// A loaded, checked app.
#[derive(Debug)]
pub struct App {
    /// The app's name from the manifest, if it gives one.
    pub name: Option<String>,
    /// `properties`, readable in expressions as `$props`.
    pub properties: Value,
    /// Every flow, in manifest order.
    pub flows: Vec<Arc<Flow>>,
}

impl App {
    /// The flow named `name`.
    pub fn flow(&self, name: &str) -> Option<&Arc<Flow>> {
        self.flows.iter().find(|f| &*f.name == name)
    }

    /// Whether the app needs the object store: a store processor, or a
    /// schedule (which runs only on the primary worker, elected there).
    pub fn uses_store(&self) -> bool {
        self.flows.iter().any(|f| {
            matches!(f.source, Some(Source::Schedule(_))) || f.steps.iter().any(Step::uses_store)
        })
    }

    /// The paths the app's HTTP flows answer.
    pub fn http_paths(&self) -> impl Iterator<Item = &str> {
        self.flows.iter().filter_map(|f| match &f.source {
            Some(Source::Http { path, .. }) => Some(path.as_str()),
            _ => None,
        })
    }

    /// The queues the app's flows consume, with their delivery limits.
    pub fn queues(&self) -> impl Iterator<Item = (&str, u32)> {
        self.flows.iter().filter_map(|f| match &f.source {
            Some(Source::Queue {
                name,
                max_deliveries,
                ..
            }) => Some((name.as_str(), *max_deliveries)),
            _ => None,
        })
    }
}

/// One flow.
#[derive(Debug)]
pub struct Flow {
    /// Its name.
    pub name: Arc<str>,
    /// What starts it; `None` for a flow only reached by `flow-ref`.
    pub source: Option<Source>,
    /// How it is run.
    pub strategy: Strategy,
    /// Its steps.
    pub steps: Vec<Step>,
}

/// What starts a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An HTTP request: method and path (with `{param}` segments).
    Http {
        /// Upper-case method.
        method: String,
        /// The path pattern.
        path: String,
    },
    /// A message on one of the app's queues.
    Queue {
        /// The queue.
        name: String,
        /// Messages processed at once.
        concurrency: usize,
        /// Deliveries before a message goes to the dead-letter queue.
        max_deliveries: u32,
    },
    /// A timer, run on the app's primary worker only.
    Schedule(Trigger),
}

/// When a `schedule` source fires.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// At every multiple of this period since the Unix epoch, so every
    /// worker of the app agrees on the ticks.
    Every(Duration),
    /// At the times of a cron expression (seconds first), in UTC.
    Cron {
        /// The expression as written.
        expr: String,
        /// The parsed schedule.
        schedule: Box<cron::Schedule>,
    },
}

impl PartialEq for Trigger {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Trigger::Every(a), Trigger::Every(b)) => a == b,
            (Trigger::Cron { expr: a, .. }, Trigger::Cron { expr: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Trigger {}

/// How a flow's events are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// On the source's own task, bounded by the worker's ceiling.
    Synchronous,
    /// Queued, at most this many at once.
    QueuedAsync {
        /// The flow's own concurrency bound.
        max_concurrency: usize,
    },
}

/// A processor, compiled.
#[derive(Debug)]
pub enum Step {
    /// Logs the expression's text.
    Log(Expr),
    /// Replaces the payload.
    SetPayload(Expr),
    /// Sets `$vars.<name>`.
    SetVariable {
        /// The variable.
        name: String,
        /// Its new value.
        value: Expr,
    },
    /// Fails with `VALIDATION` when the condition is false or null.
    Validate(Expr),
    /// Sends the payload (or `body`) to one of the app's queues.
    Publish {
        /// The queue.
        queue: String,
        /// What to send, when not the payload.
        body: Option<Expr>,
    },
    /// Sets the HTTP response.
    Respond {
        /// The status.
        status: u16,
        /// The body, when not the payload at the end.
        body: Option<Expr>,
        /// Extra headers.
        headers: Vec<(String, Expr)>,
    },
    /// Runs the first branch whose condition holds, else `otherwise`.
    Choice {
        /// Conditions and their steps, in order.
        when: Vec<(Expr, Vec<Step>)>,
        /// Steps when none holds.
        otherwise: Vec<Step>,
    },
    /// Runs another flow's steps on this event.
    FlowRef(String),
    /// Runs `steps`; an error is handled by the first matching handler.
    Try {
        /// The guarded steps.
        steps: Vec<Step>,
        /// Handlers, in order.
        on_error: Vec<OnError>,
    },
    /// Fails with an error of the app's choosing.
    RaiseError {
        /// Its type.
        kind: ErrorType,
        /// Its message.
        message: Option<Expr>,
        /// The HTTP status, when not the type's default.
        status: Option<u16>,
    },
    /// Calls an HTTP endpoint; the response body becomes the payload.
    HttpRequest {
        /// The method.
        method: reqwest::Method,
        /// The URL.
        url: Expr,
        /// The body, when any.
        body: Option<Expr>,
        /// Headers.
        headers: Vec<(String, Expr)>,
        /// How long to wait for the whole response.
        timeout: Duration,
    },
    /// Writes a value to one of the app's stores.
    Store {
        /// The store.
        store: String,
        /// The key.
        key: Expr,
        /// The value, when not the payload.
        value: Option<Expr>,
        /// Expire the key after this long.
        ttl: Option<Duration>,
    },
    /// Reads a value: into the payload, or into `$vars.<target>`.
    Retrieve {
        /// The store.
        store: String,
        /// The key.
        key: Expr,
        /// The value when the key is absent; without one, absence is `NOT_FOUND`.
        default: Option<Expr>,
        /// The variable to set instead of the payload.
        target: Option<String>,
    },
    /// Deletes a key (absent is fine).
    Remove {
        /// The store.
        store: String,
        /// The key.
        key: Expr,
    },
    /// Lets an event with this key through once; a duplicate stops the flow
    /// as a success.
    Idempotent {
        /// The key.
        key: Expr,
        /// How long the key is remembered.
        ttl: Duration,
    },
    /// Collects events into groups of `size` held in the object store; the
    /// event that completes a group goes on with the group's payloads, the
    /// others stop as a success.
    Aggregate {
        /// The group's key.
        key: Expr,
        /// Members per group.
        size: u32,
        /// How long a group is kept.
        ttl: Duration,
    },
}

impl Step {
    /// Whether this step, or one inside it, needs the object store.
    fn uses_store(&self) -> bool {
        match self {
            Step::Store { .. }
            | Step::Retrieve { .. }
            | Step::Remove { .. }
            | Step::Idempotent { .. }
            | Step::Aggregate { .. } => true,
            Step::Choice { when, otherwise } => {
                when.iter().any(|(_, s)| s.iter().any(Step::uses_store))
                    || otherwise.iter().any(Step::uses_store)
            }
            Step::Try { steps, on_error } => {
                steps.iter().any(Step::uses_store)
                    || on_error
                        .iter()
                        .any(|h| h.steps.iter().any(Step::uses_store))
            }
            _ => false,
        }
    }
}

/// One `on-error` handler.
#[derive(Debug)]
pub struct OnError {
    /// The types it handles; empty for any.
    pub types: Vec<ErrorType>,
    /// Re-raise after the handler's steps instead of continuing.
    pub propagate: bool,
    /// The handler's steps.
    pub steps: Vec<Step>,
}

/// The default (and longest) wait of an `http-request`.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_CONCURRENCY: usize = 1024;
/// The longest a stored key lives (the object store's own limit).
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long `idempotent` and `aggregate` remember a key unless told.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(24 * 3600);
const MIN_EVERY: Duration = Duration::from_millis(100);
const MAX_GROUP: u32 = 1000;
/// Paths a worker serves itself when its ops endpoints share the app's
/// listener (a worker started by hand without `ops_listen`).
pub const OPS_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The largest manifest, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// The most YAML events aliases may replay in one manifest (serde-saphyr's
/// default is a million: a few anchored 8 KiB expressions, each aliased
/// thousands of times, would be gigabytes of text to compile).
pub const MAX_ALIAS_REPLAYS: usize = 10_000;

/// The most expression text one manifest compiles, aliases expanded:
/// twice what a manifest without aliases can hold.
pub const MAX_EXPRESSION_TEXT: usize = 2 * MAX_MANIFEST_BYTES;

thread_local! {
    /// Expression text the manifest being checked may still compile. Each
    /// check runs on a thread of its own ([`load`]), so this is per manifest.
    static EXPRESSION_TEXT_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Parses and checks a manifest. Any text gets an answer: the app, or the
/// line, column and reason it is refused. Checking runs on a thread of its
/// own with a deep stack (see [`crate::expr::bounds`]), so no manifest can
/// overflow the caller's stack, and a panic while checking is a refusal.
pub fn load(yaml: &str) -> Result<App, ManifestError> {
    if yaml.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError {
            line: 1,
            column: 1,
            reason: format!(
                "the manifest is {} bytes, more than {MAX_MANIFEST_BYTES}",
                yaml.len()
            ),
        });
    }
    crate::expr::bounds::isolated(|| load_here(yaml)).unwrap_or_else(|panic| {
        Err(ManifestError {
            line: 1,
            column: 1,
            reason: format!("the manifest could not be checked ({panic})"),
        })
    })
}

fn load_here(yaml: &str) -> Result<App, ManifestError> {
    EXPRESSION_TEXT_LEFT.with(|left| left.set(MAX_EXPRESSION_TEXT));
    let options = serde_saphyr::options! {
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: MAX_ALIAS_REPLAYS },
    };
    let def: AppDef = serde_saphyr::from_str_with_options(yaml, options).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let text = e.to_string();
        // The first line holds the reason; the rest is a rendered snippet.
        let first = text.lines().next().unwrap_or("invalid manifest");
        let reason = first
            .split_once(&format!("line {line} column {column}: "))
            .map_or(first, |(_, r)| r)
            .trim_start_matches("error: ")
            .to_string();
        ManifestError {
            line,
            column,
            reason,
        }
    })?;
    Checker::new(&def)?.app(def)
}

struct Checker {
    flows: HashSet<String>,
    consumed_queues: HashSet<String>,
}

impl Checker {
    fn new(def: &AppDef) -> Result<Self, ManifestError> {
        if let Some(name) = &def.name {
            common::app::validate_app_name(&name.value).map_err(|e| at(name, e.to_string()))?;
        }
        if def.flows.is_empty() {
            return Err(ManifestError {
                line: 1,
                column: 1,
                reason: "an app needs at least one flow".into(),
            });
        }
        let mut flows = HashSet::new();
        let mut consumed_queues = HashSet::new();
        let mut routes: HashMap<(String, String), ()> = HashMap::new();
        // The same router the HTTP source uses refuses patterns it cannot tell apart.
        let mut router = matchit::Router::new();
        let mut paths = HashSet::new();
        for flow in &def.flows {
            let name = &flow.value.name;
            if name.value.is_empty() {
                return Err(at(name, "a flow needs a name"));
            }
            if !flows.insert(name.value.clone()) {
                return Err(at(name, format!("flow {:?} is defined twice", name.value)));
            }
            match flow.value.source.as_ref().map(|s| &s.value) {
                Some(SourceDef::Http { method, path }) => {
                    let m = check_method(method)?;
                    let shape = check_path(path)?;
                    if paths.insert(path.value.clone()) {
                        router
                            .insert(path.value.clone(), ())
                            .map_err(|e| at(path, format!("path {:?}: {e}", path.value)))?;
                    }
                    if routes.insert((m.to_string(), shape), ()).is_some() {
                        return Err(at(
                            path,
                            format!("another flow already answers {m} {}", path.value),
                        ));
                    }
                }
                Some(SourceDef::Queue {
                    name,
                    concurrency,
                    max_deliveries,
                }) => {
                    common::app::validate_resource_name("queue", &name.value)
                        .map_err(|e| at(name, e.to_string()))?;
                    if !consumed_queues.insert(name.value.clone()) {
                        return Err(at(
                            name,
                            format!("queue {:?} already has a consuming flow", name.value),
                        ));
                    }
                    if *concurrency == 0 || *concurrency > MAX_CONCURRENCY {
                        return Err(at(
                            name,
                            format!("concurrency must be 1 to {MAX_CONCURRENCY}"),
                        ));
                    }
                    if *max_deliveries == 0 || *max_deliveries > 1000 {
                        return Err(at(name, "max-deliveries must be 1 to 1000"));
                    }
                }
                Some(SourceDef::Schedule { .. }) => {
                    let source = flow.value.source.as_ref().expect("matched above");
                    trigger(source)?;
                }
                None => {}
            }
        }
        Ok(Checker {
            flows,
            consumed_queues,
        })
    }

    fn app(&self, def: AppDef) -> Result<App, ManifestError> {
        let mut flows = Vec::with_capacity(def.flows.len());
        for flow in def.flows {
            let f = flow.value;
            let strategy = match (f.strategy, f.max_concurrency) {
                (StrategyDef::Synchronous, None) => Strategy::Synchronous,
                (StrategyDef::Synchronous, Some(_)) => {
                    return Err(at(&f.name, "max-concurrency needs strategy: queued-async"));
                }
                (StrategyDef::QueuedAsync, n) => {
                    let n = n.unwrap_or(16);
                    if n == 0 || n > MAX_CONCURRENCY {
                        return Err(at(
                            &f.name,
                            format!("max-concurrency must be 1 to {MAX_CONCURRENCY}"),
                        ));
                    }
                    Strategy::QueuedAsync { max_concurrency: n }
                }
            };
            let source = f.source.map(|s| match s.value {
                SourceDef::Schedule { .. } => {
                    Source::Schedule(trigger(&s).expect("checked when the checker was made"))
                }
                SourceDef::Http { method, path } => Source::Http {
                    method: method.value.to_ascii_uppercase(),
                    path: path.value,
                },
                SourceDef::Queue {
                    name,
                    concurrency,
                    max_deliveries,
                } => Source::Queue {
                    name: name.value,
                    concurrency,
                    max_deliveries,
                },
            });
            let steps = self.steps(f.steps)?;
            flows.push(Arc::new(Flow {
                name: f.name.value.into(),
                source,
                strategy,
                steps,
            }));
        }
        check_flow_refs_acyclic(&flows)?;
        Ok(App {
            name: def.name.map(|n| n.value),
            properties: Value::Object(def.properties.into_iter().collect()),
            flows,
        })
    }

    fn steps(&self, defs: Vec<Spanned<StepDef>>) -> Result<Vec<Step>, ManifestError> {
        defs.into_iter().map(|d| self.step(d.value)).collect()
    }

    fn step(&self, def: StepDef) -> Result<Step, ManifestError> {
        Ok(match def {
            StepDef::Log(e) => Step::Log(expr(&e)?),
            StepDef::SetPayload(e) => Step::SetPayload(expr(&e)?),
            StepDef::SetVariable { name, value } => {
                if name.value.is_empty() || name.value == "error" {
                    return Err(at(&name, "a variable needs a name other than \"error\""));
                }
                Step::SetVariable {
                    name: name.value,
                    value: expr(&value)?,
                }
            }
            StepDef::Validate(e) => Step::Validate(expr(&e)?),
            StepDef::Publish { queue, body } => {
                if !self.consumed_queues.contains(&queue.value) {
                    return Err(at(
                        &queue,
                        format!("no flow consumes queue {:?}", queue.value),
                    ));
                }
                Step::Publish {
                    queue: queue.value,
                    body: body.as_ref().map(expr).transpose()?,
                }
            }
            StepDef::Respond {
                status,
                body,
                headers,
            } => Step::Respond {
                status: match status {
                    Some(s) if !(100..=599).contains(&s.value) => {
                        return Err(at(&s, format!("status {} is not an HTTP status", s.value)));
                    }
                    Some(s) => s.value,
                    None => 200,
                },
                body: body.as_ref().map(expr).transpose()?,
                headers: header_exprs(headers)?,
            },
            StepDef::Choice { when, otherwise } => Step::Choice {
                when: when
                    .into_iter()
                    .map(|w| Ok((expr(&w.condition)?, self.steps(w.steps)?)))
                    .collect::<Result<_, ManifestError>>()?,
                otherwise: self.steps(otherwise)?,
            },
            StepDef::FlowRef(name) => {
                if !self.flows.contains(&name.value) {
                    return Err(at(
                        &name,
                        format!("flow-ref to {:?}, which no flow is named", name.value),
                    ));
                }
                Step::FlowRef(name.value)
            }
            StepDef::Try { steps, on_error } => Step::Try {
                steps: self.steps(steps)?,
                on_error: on_error
                    .into_iter()
                    .map(|h| {
                        Ok(OnError {
                            types: h.types.iter().map(|t| ErrorType::parse(&t.value)).collect(),
                            propagate: h.propagate,
                            steps: self.steps(h.steps)?,
                        })
                    })
                    .collect::<Result<_, ManifestError>>()?,
            },
            StepDef::RaiseError {
                kind,
                message,
                status,
            } => {
                if kind.value.is_empty() {
                    return Err(at(&kind, "an error needs a type"));
                }
                Step::RaiseError {
                    kind: ErrorType::parse(&kind.value),
                    message: message.as_ref().map(expr).transpose()?,
                    status: match status {
                        Some(s) if !(400..=599).contains(&s.value) => {
                            return Err(at(&s, "an error status must be 400 to 599"));
                        }
                        s => s.map(|s| s.value),
                    },
                }
            }
            StepDef::HttpRequest {
                method,
                url,
                body,
                headers,
                timeout,
            } => Step::HttpRequest {
                method: reqwest::Method::from_bytes(method.value.to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                    at(&method, format!("{:?} is not an HTTP method", method.value))
                })?,
                url: expr(&url)?,
                body: body.as_ref().map(expr).transpose()?,
                headers: header_exprs(headers)?,
                timeout: match timeout {
                    None => HTTP_REQUEST_TIMEOUT,
                    Some(t) => {
                        let d = humantime_duration(&t)?;
                        if d.is_zero() || d > MAX_HTTP_REQUEST_TIMEOUT {
                            return Err(at(&t, "timeout must be above 0 and at most 5m"));
                        }
                        d
                    }
                },
            },
            StepDef::Store {
                store,
                key,
                value,
                ttl,
            } => Step::Store {
                store: store_name(store)?,
                key: expr(&key)?,
                value: value.as_ref().map(expr).transpose()?,
                ttl: ttl.as_ref().map(key_ttl).transpose()?,
            },
            StepDef::Retrieve {
                store,
                key,
                default,
                target,
            } => Step::Retrieve {
                store: store_name(store)?,
                key: expr(&key)?,
                default: default.as_ref().map(expr).transpose()?,
                target: match target {
                    Some(t) if t.value.is_empty() || t.value == "error" => {
                        return Err(at(&t, "a target needs a name other than \"error\""));
                    }
                    t => t.map(|t| t.value),
                },
            },
            StepDef::Remove { store, key } => Step::Remove {
                store: store_name(store)?,
                key: expr(&key)?,
            },
            StepDef::Idempotent { key, ttl } => Step::Idempotent {
                key: expr(&key)?,
                ttl: ttl
                    .as_ref()
                    .map(key_ttl)
                    .transpose()?
                    .unwrap_or(DEFAULT_KEY_TTL),
            },
            StepDef::Aggregate { key, size, ttl } => {
                if size.value < 1 || size.value > MAX_GROUP {
                    return Err(at(&size, format!("size must be 1 to {MAX_GROUP}")));
                }
                Step::Aggregate {
                    key: expr(&key)?,
                    size: size.value,
                    ttl: ttl
                        .as_ref()
                        .map(key_ttl)
                        .transpose()?
                        .unwrap_or(DEFAULT_KEY_TTL),
                }
            }
        })
    }
}

/// A store named in a manifest: a valid resource name not starting with `_`
/// (those are the runtime's own: idempotency keys, groups, schedule ticks).
fn store_name(name: Text) -> Result<String, ManifestError> {
    common::app::validate_resource_name("store", &name.value)
        .map_err(|e| at(&name, e.to_string()))?;
    if name.value.starts_with('_') {
        return Err(at(
            &name,
            "store names starting with '_' are reserved for the runtime",
        ));
    }
    Ok(name.value)
}

fn key_ttl(text: &Text) -> Result<Duration, ManifestError> {
    let d = humantime_duration(text)?;
    if d < Duration::from_secs(1) || d > MAX_TTL {
        return Err(at(text, "ttl must be 1s to 30d"));
    }
    Ok(d)
}

/// The trigger of a `schedule` source: exactly one of `every` and `cron`.
fn trigger(source: &Spanned<SourceDef>) -> Result<Trigger, ManifestError> {
    let SourceDef::Schedule { every, cron } = &source.value else {
        return Err(at(source, "not a schedule"));
    };
    match (every, cron) {
        (Some(every), None) => {
            let d = humantime_duration(every)?;
            if d < MIN_EVERY || d > MAX_TTL {
                return Err(at(every, "every must be 100ms to 30d"));
            }
            Ok(Trigger::Every(d))
        }
        (None, Some(text)) => {
            // A classic five-field expression runs at second 0.
            let fields = text.value.split_whitespace().count();
            let full = if fields == 5 {
                format!("0 {}", text.value)
            } else {
                text.value.clone()
            };
            let schedule = full
                .parse::<cron::Schedule>()
                .map_err(|e| at(text, format!("cron expression {:?}: {e}", text.value)))?;
            Ok(Trigger::Cron {
                expr: text.value.clone(),
                schedule: Box::new(schedule),
            })
        }
        _ => Err(at(source, "a schedule needs exactly one of every and cron")),
    }
}

fn expr(text: &Text) -> Result<Expr, ManifestError> {
    let spent = EXPRESSION_TEXT_LEFT.with(|left| {
        let now = left.get().checked_sub(text.value.len());
        left.set(now.unwrap_or(0));
        now.is_none()
    });
    if spent {
        return Err(at(
            text,
            format!(
                "the manifest's expressions (aliases expanded) are more than {MAX_EXPRESSION_TEXT} bytes"
            ),
        ));
    }
    Expr::compile(&text.value).map_err(|e| at(text, format!("expression {:?}: {e}", text.value)))
}

/// Headers that frame a message or belong to one connection: the server or
/// client that sends the message sets them, a flow does not (a flow's own
/// `content-length` or `transfer-encoding` beside the real one would be a
/// message two readers split differently).
const FRAMING_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn header_exprs(headers: BTreeMap<String, Text>) -> Result<Vec<(String, Expr)>, ManifestError> {
    headers
        .into_iter()
        .map(|(name, value)| {
            let parsed = axum::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| at(&value, format!("{name:?} is not a header name")))?;
            if FRAMING_HEADERS.contains(&parsed.as_str()) {
                return Err(at(
                    &value,
                    format!("header {name} is set by the fabric, not by a flow"),
                ));
            }
            Ok((name, expr(&value)?))
        })
        .collect()
}

fn humantime_duration(text: &Text) -> Result<Duration, ManifestError> {
    #[derive(Deserialize)]
    struct D(#[serde(with = "humantime_serde")] Duration);
    serde_json::from_value::<D>(Value::String(text.value.clone()))
        .map(|d| d.0)
        .map_err(|_| {
            at(
                text,
                format!("{:?} is not a duration (like 500ms, 10s, 1m)", text.value),
            )
        })
}

fn check_method(method: &Text) -> Result<&'static str, ManifestError> {
    const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    let upper = method.value.to_ascii_uppercase();
    METHODS.into_iter().find(|m| *m == upper).ok_or_else(|| {
        at(
            method,
            format!("{:?} is not one of {}", method.value, METHODS.join(", ")),
        )
    })
}

/// Checks a path pattern and returns its shape (parameters unnamed), so that
/// two patterns the router could not tell apart are caught as duplicates.
fn check_path(path: &Text) -> Result<String, ManifestError> {
    let p = &path.value;
    if !p.starts_with('/') {
        return Err(at(path, "a path starts with '/'"));
    }
    let mut shape = String::new();
    let segments: Vec<&str> = p[1..].split('/').collect();
    let mut names = HashSet::new();
    for (i, seg) in segments.iter().enumerate() {
        shape.push('/');
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, wildcard) = match inner.strip_prefix('*') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(at(
                    path,
                    format!("path parameter {seg:?} must be {{name}} or {{*name}}"),
                ));
            }
            if wildcard && i + 1 != segments.len() {
                return Err(at(path, "a {*name} parameter must be the last segment"));
            }
            if !names.insert(name) {
                return Err(at(path, format!("path parameter {name:?} appears twice")));
            }
            shape.push_str(if wildcard { "{*}" } else { "{}" });
        } else if seg.contains(['{', '}', '*', '?', '#', ':']) {
            return Err(at(
                path,
                format!("path segment {seg:?} has a reserved character"),
            ));
        } else {
            shape.push_str(seg);
        }
    }
    Ok(shape)
}

fn check_flow_refs_acyclic(flows: &[Arc<Flow>]) -> Result<(), ManifestError> {
    fn refs(steps: &[Step], out: &mut Vec<String>) {
        for s in steps {
            match s {
                Step::FlowRef(n) => out.push(n.clone()),
                Step::Choice { when, otherwise } => {
                    when.iter().for_each(|(_, st)| refs(st, out));
                    refs(otherwise, out);
                }
                Step::Try { steps, on_error } => {
                    refs(steps, out);
                    on_error.iter().for_each(|h| refs(&h.steps, out));
                }
                _ => {}
            }
        }
    }
    let graph: HashMap<&str, Vec<String>> = flows
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            refs(&f.steps, &mut out);
            (&*f.name, out)
        })
        .collect();
    // Depth-first search with colours: a grey node met again closes a cycle.
    fn visit<'a>(
        n: &'a str,
        graph: &'a HashMap<&str, Vec<String>>,
        state: &mut HashMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(true) => return None,
            Some(false) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            None => {}
        }
        state.insert(n, false);
        path.push(n);
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n, true);
        None
    }
    let mut state = HashMap::new();
    for f in flows {
        if let Some(cycle) = visit(&f.name, &graph, &mut state, &mut Vec::new()) {
            return Err(ManifestError {
                line: 1,
                column: 1,
                reason: format!("flow-refs form a cycle: {}", cycle.join(" -> ")),
            });
        }
    }
    Ok(())
}
