//! The checker: walks the parsed manifest whole and compiles it to the app.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use serde_saphyr::Spanned;

use super::model::{App, Flow, OnError, Source, Step, Strategy};
use super::shape::{AppDef, SourceDef, StepDef, StrategyDef};
use super::values::{
    check_method, check_path, expr, header_exprs, humantime_duration, key_ttl, store_name, trigger,
};
use super::{
    DEFAULT_KEY_TTL, HTTP_REQUEST_TIMEOUT, MAX_CONCURRENCY, MAX_GROUP, MAX_HTTP_REQUEST_TIMEOUT,
    ManifestError, Text, at,
};
use crate::error::ErrorType;

pub(super) struct Checker {
    flows: HashSet<String>,
    consumed_queues: HashSet<String>,
    /// The `flow-ref` targets of the flow being compiled, with where each is
    /// written, in step order, so a cycle is reported at the ref closing it.
    flow_refs: Vec<Text>,
}

impl Checker {
    pub(super) fn new(def: &AppDef) -> Result<Self, ManifestError> {
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
            flow_refs: Vec::new(),
        })
    }

    pub(super) fn app(mut self, def: AppDef) -> Result<App, ManifestError> {
        let mut flows = Vec::with_capacity(def.flows.len());
        let mut refs = Vec::with_capacity(def.flows.len());
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
            refs.push(std::mem::take(&mut self.flow_refs));
            flows.push(Arc::new(Flow {
                name: f.name.value.into(),
                source,
                strategy,
                steps,
            }));
        }
        check_flow_refs_acyclic(&flows, &refs)?;
        Ok(App {
            name: def.name.map(|n| n.value),
            properties: Value::Object(def.properties.into_iter().collect()),
            flows,
        })
    }

    fn steps(&mut self, defs: Vec<Spanned<StepDef>>) -> Result<Vec<Step>, ManifestError> {
        defs.into_iter().map(|d| self.step(d.value)).collect()
    }

    fn step(&mut self, def: StepDef) -> Result<Step, ManifestError> {
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
                let target = name.value.clone();
                self.flow_refs.push(name);
                Step::FlowRef(target)
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

/// Refuses flow-refs that form a cycle, at the ref that closes it. `refs`
/// holds each flow's refs (in `flows` order), each ref's target where it is
/// written.
fn check_flow_refs_acyclic(flows: &[Arc<Flow>], refs: &[Vec<Text>]) -> Result<(), ManifestError> {
    let graph: HashMap<&str, &[Text]> = flows
        .iter()
        .zip(refs)
        .map(|(f, out)| (&*f.name, out.as_slice()))
        .collect();
    // Depth-first search with colours: a grey node met again closes a cycle,
    // and the ref that led to it is where the cycle is reported.
    fn visit<'a>(
        n: &'a str,
        graph: &HashMap<&'a str, &'a [Text]>,
        state: &mut HashMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<(Vec<String>, &'a Text)> {
        state.insert(n, false);
        path.push(n);
        for next in graph.get(n).copied().unwrap_or_default() {
            match state.get(next.value.as_str()) {
                Some(true) => {}
                Some(false) => {
                    let start = path.iter().position(|p| *p == next.value).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(next.value.clone());
                    return Some((cycle, next));
                }
                None => {
                    if let Some(found) = visit(&next.value, graph, state, path) {
                        return Some(found);
                    }
                }
            }
        }
        path.pop();
        state.insert(n, true);
        None
    }
    let mut state = HashMap::new();
    for f in flows {
        if state.contains_key(&*f.name) {
            continue;
        }
        if let Some((cycle, closing)) = visit(&f.name, &graph, &mut state, &mut Vec::new()) {
            return Err(at(
                closing,
                format!("flow-refs form a cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
    Ok(())
}
