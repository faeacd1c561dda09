//! Runs a flow's steps on an event: the processors' behaviour lives here.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use common::telemetry::EventKind;
use serde_json::Value;

use crate::egress::{EgressError, Outbound};
use crate::error::{ErrorType, FlowError};
use crate::event::Event;
use crate::expr::Evaluator;
use crate::manifest::{App, Flow, Step};
use crate::metrics::Metrics;
use crate::queues::Queues;
use crate::store::{Admission, Claim, Gathered, Stores};

/// The HTTP response a flow chose with `respond`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body; `None` means the payload at the end of the flow.
    pub body: Option<Value>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

/// An event in a running flow, with the response chosen so far.
#[derive(Debug)]
pub struct Exec {
    /// The event.
    pub event: Event,
    /// The response set by `respond`, if any.
    pub reply: Option<Reply>,
    /// Set by `idempotent` on a duplicate and by `aggregate` on a member that
    /// does not complete its group: the flow ends here as a success.
    pub stopped: bool,
    /// `idempotent` claims to settle when the flow ends.
    claims: Vec<Claim>,
    /// The flow the event started in: it scopes idempotency keys and groups.
    flow: Arc<str>,
}

/// Everything a flow needs at run time. Shared by every source of the worker.
pub struct Engine {
    app: Arc<App>,
    flows: HashMap<String, Arc<Flow>>,
    queues: Queues,
    stores: Option<Stores>,
    http: crate::egress::Client,
    metrics: Metrics,
    expr: Evaluator,
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), FlowError>> + Send + 'a>>;

impl Engine {
    /// An engine for `app`, publishing to `queues`, keeping state in `stores`
    /// (needed when the app uses the object store; see [`App::uses_store`]).
    /// Its expressions run on `expr`; its `http-request`s go out through `http`.
    pub fn new(
        app: Arc<App>,
        queues: Queues,
        stores: Option<Stores>,
        metrics: Metrics,
        expr: Evaluator,
        http: crate::egress::Client,
    ) -> Self {
        let flows = app
            .flows
            .iter()
            .map(|f| (f.name.to_string(), f.clone()))
            .collect();
        Engine {
            app,
            flows,
            queues,
            stores,
            http,
            metrics,
            expr,
        }
    }

    /// The app.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The app's queues.
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// The app's stores, when the worker has the object store.
    pub fn stores(&self) -> Option<&Stores> {
        self.stores.as_ref()
    }

    fn store(&self) -> Result<&Stores, FlowError> {
        // Checked at start: an app that uses the store does not start without one.
        self.stores
            .as_ref()
            .ok_or_else(|| FlowError::new(ErrorType::Store, "this worker has no object store"))
    }

    /// Runs `flow` on `event`, recording its latency and outcome. When the
    /// flow ends, its `idempotent` claims are settled: done on success (a
    /// failure to record that fails the flow, so a queue message is tried
    /// again), released on failure.
    pub async fn run(&self, flow: &Flow, event: Event) -> Result<Exec, FlowError> {
        let started = std::time::Instant::now();
        let mut exec = Exec {
            event,
            reply: None,
            stopped: false,
            claims: Vec::new(),
            flow: flow.name.clone(),
        };
        let mut result = self.steps(&flow.steps, &mut exec).await;
        let claims = std::mem::take(&mut exec.claims);
        if let Ok(stores) = self.store() {
            for claim in &claims {
                match &result {
                    Ok(()) => result = stores.settle(claim).await,
                    Err(_) => stores.release(claim).await,
                }
            }
        }
        self.metrics
            .flow_finished(&flow.name, started.elapsed(), result.as_ref().err());
        result.map(|()| exec)
    }

    fn steps<'a>(&'a self, steps: &'a [Step], exec: &'a mut Exec) -> StepFuture<'a> {
        Box::pin(async move {
            for step in steps {
                if exec.stopped {
                    break;
                }
                self.step(step, exec).await?;
            }
            Ok(())
        })
    }

    async fn step(&self, step: &Step, exec: &mut Exec) -> Result<(), FlowError> {
        let ev = &self.expr;
        match step {
            Step::Log(e) => {
                let text = ev.text(e, &exec.event).await?;
                tracing::info!(correlation_id = %exec.event.correlation_id, "{text}");
            }
            Step::SetPayload(e) => exec.event.payload = ev.value(e, &exec.event).await?,
            Step::SetVariable { name, value } => {
                let v = ev.value(value, &exec.event).await?;
                exec.event.vars.insert(name.clone(), v);
            }
            Step::Validate(e) => {
                if !ev.truth(e, &exec.event).await? {
                    // The condition is the flow's source: it goes to the log, not the client.
                    tracing::info!(correlation_id = %exec.event.correlation_id, condition = e.source(), "validation failed");
                    return Err(FlowError::new(
                        ErrorType::Validation,
                        "the event failed the flow's validation",
                    ));
                }
            }
            Step::Publish { queue, body } => {
                let payload = match body {
                    Some(b) => ev.value(b, &exec.event).await?,
                    None => exec.event.payload.clone(),
                };
                self.queues
                    .publish(queue, payload, exec.event.correlation_id.clone())
                    .await?;
            }
            Step::Respond {
                status,
                body,
                headers,
            } => {
                let body = match body {
                    Some(b) => Some(ev.value(b, &exec.event).await?),
                    None => None,
                };
                let mut values = Vec::with_capacity(headers.len());
                for (name, value) in headers {
                    values.push((name.clone(), ev.text(value, &exec.event).await?));
                }
                let headers = values;
                exec.reply = Some(Reply {
                    status: *status,
                    body,
                    headers,
                });
            }
            Step::Choice { when, otherwise } => {
                for (cond, branch) in when {
                    if ev.truth(cond, &exec.event).await? {
                        return self.steps(branch, exec).await;
                    }
                }
                self.steps(otherwise, exec).await?;
            }
            Step::FlowRef(name) => {
                // Checked at load: every flow-ref names a flow, and they form no cycle.
                let flow = self.flows.get(name).ok_or_else(|| {
                    FlowError::new(ErrorType::NotFound, format!("no flow named {name:?}"))
                })?;
                self.steps(&flow.steps, exec).await?;
            }
            Step::Try { steps, on_error } => {
                let Err(err) = self.steps(steps, exec).await else {
                    return Ok(());
                };
                let Some(handler) = on_error
                    .iter()
                    .find(|h| h.types.is_empty() || h.types.contains(&err.kind))
                else {
                    return Err(err);
                };
                exec.event.vars.insert("error".into(), err.to_value());
                let handled = self.steps(&handler.steps, exec).await;
                exec.event.vars.remove("error");
                handled?;
                if handler.propagate {
                    return Err(err);
                }
            }
            Step::RaiseError {
                kind,
                message,
                status,
            } => {
                let message = match message {
                    Some(m) => ev.text(m, &exec.event).await?,
                    None => format!("{} raised", kind.name()),
                };
                let mut err = FlowError::new(kind.clone(), message);
                err.status = status.and_then(|s| axum::http::StatusCode::from_u16(s).ok());
                return Err(err);
            }
            Step::HttpRequest {
                method,
                url,
                body,
                headers,
                timeout,
            } => {
                let url = ev.text(url, &exec.event).await?;
                let mut values = Vec::with_capacity(headers.len());
                for (name, value) in headers {
                    values.push((name.clone(), ev.text(value, &exec.event).await?));
                }
                let body = match body {
                    Some(b) => Some(match ev.value(b, &exec.event).await? {
                        Value::String(s) => (Bytes::from(s), "text/plain; charset=utf-8"),
                        other => (Bytes::from(other.to_string()), "application/json"),
                    }),
                    None => None,
                };
                let out = Outbound {
                    method: method.clone(),
                    url,
                    headers: values,
                    body,
                    timeout: *timeout,
                };
                exec.event.payload = self.http_call(out).await?;
            }
            Step::Store {
                store,
                key,
                value,
                ttl,
            } => {
                let key = ev.text(key, &exec.event).await?;
                let value = match value {
                    Some(v) => ev.value(v, &exec.event).await?,
                    None => exec.event.payload.clone(),
                };
                self.store()?.put(store, &key, &value, *ttl).await?;
            }
            Step::Retrieve {
                store,
                key,
                default,
                target,
            } => {
                let key = ev.text(key, &exec.event).await?;
                let value = match (self.store()?.get(store, &key).await?, default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => ev.value(d, &exec.event).await?,
                    (None, None) => {
                        return Err(FlowError::new(
                            ErrorType::NotFound,
                            format!("no key {key:?} in store {store:?}"),
                        ));
                    }
                };
                match target {
                    Some(name) => {
                        exec.event.vars.insert(name.clone(), value);
                    }
                    None => exec.event.payload = value,
                }
            }
            Step::Remove { store, key } => {
                let key = ev.text(key, &exec.event).await?;
                self.store()?.remove(store, &key).await?;
            }
            Step::Idempotent { key, ttl } => {
                let key = ev.text(key, &exec.event).await?;
                let flow = exec.flow.clone();
                match self
                    .store()?
                    .claim(&flow, &key, &exec.event.id, *ttl)
                    .await?
                {
                    Admission::Proceed(claim) => exec.claims.push(claim),
                    Admission::Duplicate => {
                        // The key is payload data: it stays out of the log.
                        tracing::info!(kind = EventKind::EffectDuplicate.as_str(), correlation_id = %exec.event.correlation_id, "duplicate; stopped");
                        exec.stopped = true;
                    }
                }
            }
            Step::Aggregate { key, size, ttl } => {
                let key = ev.text(key, &exec.event).await?;
                let flow = exec.flow.clone();
                let gathered = self
                    .store()?
                    .gather(
                        &flow,
                        &key,
                        &exec.event.id,
                        &exec.event.payload,
                        *size,
                        *ttl,
                    )
                    .await?;
                match gathered {
                    Gathered::Complete(members) => exec.event.payload = Value::Array(members),
                    Gathered::Held => exec.stopped = true,
                }
            }
        }
        Ok(())
    }

    async fn http_call(&self, out: Outbound) -> Result<Value, FlowError> {
        let target = format!("{} {}", out.method, crate::egress::origin(&out.url));
        let (status, bytes) = self.http.send(out).await.map_err(|e| {
            let kind = match e {
                EgressError::Timeout(_) => ErrorType::Timeout,
                _ => ErrorType::Http,
            };
            FlowError::new(kind, format!("{target}: {e}"))
        })?;
        if !status.is_success() {
            return Err(FlowError::new(
                ErrorType::Http,
                format!("{target} answered {status}"),
            ));
        }
        Ok(crate::event::payload_from_bytes(&bytes))
    }
}
