//! The compiled app: flows, sources and steps, as the runtime runs them.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::error::ErrorType;
use crate::expr::Expr;

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
