//! The service's own Prometheus metrics: operations by outcome, and their latency.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpStatus {
    op: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

/// Counters and histograms of API operations.
#[derive(Clone, Debug)]
pub struct Metrics {
    ops: Family<OpStatus, Counter>,
    latency: Family<Op, Histogram>,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let ops = Family::<OpStatus, Counter>::default();
        let latency = Family::<Op, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_25, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "objectstore_requests",
            "Object store API requests by operation and status",
            ops.clone(),
        );
        registry.register(
            "objectstore_request_duration_seconds",
            "Object store API request latency by operation",
            latency.clone(),
        );
        Metrics {
            ops,
            latency: latency.clone(),
        }
    }

    /// Records one finished request.
    pub fn record(&self, op: &'static str, status: u16, took: Duration) {
        self.ops.get_or_create(&OpStatus { op, status }).inc();
        self.latency
            .get_or_create(&Op { op })
            .observe(took.as_secs_f64());
    }
}
