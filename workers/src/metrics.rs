//! The worker's Prometheus metrics: requests, flow latency, errors,
//! messages, HTTP requests in flight and CPU time (what the control
//! plane's autoscaler reads).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::FlowError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    flow: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    flow: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    flow: String,
    outcome: String,
}

/// What a queue message's processing ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// The flow finished; the message is acked.
    Processed,
    /// The flow failed; the message goes back for another delivery.
    RolledBack,
    /// The flow failed on the last allowed delivery; the message is dead-lettered.
    DeadLettered,
}

/// The worker's metrics, registered once. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    latency: Family<FlowLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    messages: Family<MessageLabels, Counter>,
    in_flight: Gauge,
    registry: Arc<Registry>,
}

/// The process's CPU time (user and system), read at each scrape.
#[derive(Debug)]
struct CpuTime;

impl Collector for CpuTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use nix::sys::resource::{UsageWho, getrusage};
        let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
            return Ok(());
        };
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        let cpu = ConstCounter::new(secs(usage.user_time()) + secs(usage.system_time()));
        let metric = encoder.encode_descriptor(
            "worker_cpu_seconds",
            "CPU time the worker has used, user and system",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(metric)
    }
}

/// An HTTP request in flight, counted until it is dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Registers the worker's metrics in a fresh registry.
    pub fn new() -> Self {
        let mut registry = common::http::registry("worker");
        let latency = Family::<FlowLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let errors = Family::<ErrorLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "worker_flow_duration_seconds",
            "Time to run a flow",
            latency.clone(),
        );
        registry.register(
            "worker_flow_errors",
            "Flows that ended in an error, by type",
            errors.clone(),
        );
        registry.register(
            "worker_http_requests",
            "HTTP requests answered, by status class",
            requests.clone(),
        );
        registry.register(
            "worker_queue_messages",
            "Queue messages handled, by outcome",
            messages.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "worker_http_in_flight",
            "HTTP requests holding a slot under the worker's concurrency ceiling",
            in_flight.clone(),
        );
        registry.register_collector(Box::new(CpuTime));
        Metrics {
            latency,
            errors,
            requests,
            messages,
            in_flight,
            registry: Arc::new(registry),
        }
    }

    /// Counts an HTTP request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// The registry, for `/metrics`.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Records a finished flow.
    pub fn flow_finished(&self, flow: &str, took: Duration, error: Option<&FlowError>) {
        self.latency
            .get_or_create(&FlowLabels {
                flow: flow.to_string(),
            })
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            let labels = ErrorLabels {
                flow: flow.to_string(),
                kind: e.kind.name().to_string(),
            };
            self.errors.get_or_create(&labels).inc();
        }
    }

    /// Records an HTTP answer.
    pub fn request(&self, flow: &str, status: u16) {
        let class = format!("{}xx", status / 100);
        self.requests
            .get_or_create(&RequestLabels {
                flow: flow.to_string(),
                class,
            })
            .inc();
    }

    /// Records a queue message's outcome.
    pub fn message(&self, flow: &str, outcome: MessageOutcome) {
        let outcome = match outcome {
            MessageOutcome::Processed => "processed",
            MessageOutcome::RolledBack => "rolled_back",
            MessageOutcome::DeadLettered => "dead_lettered",
        };
        self.messages
            .get_or_create(&MessageLabels {
                flow: flow.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
