//! Prometheus metrics per app: requests by status class, upstream latency,
//! retries, ejections, requests refused over the app's share.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    app: String,
    class: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The proxy's metric families, registered once.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<StatusLabel, Counter>,
    latency: Family<AppLabel, Histogram, fn() -> Histogram>,
    retries: Family<AppLabel, Counter>,
    ejections: Family<AppLabel, Counter>,
    shed: Family<AppLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            ejections: Family::default(),
            shed: Family::default(),
        }
    }
}

/// Requests that matched no app are counted under this app label.
pub const NO_APP: &str = "-";

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    /// Registers the families in `registry` (under its `fabric` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "proxy_requests",
            "Requests answered, by app and status class",
            self.requests.clone(),
        );
        registry.register(
            "proxy_upstream_seconds",
            "Time from sending a request to a worker to its response headers",
            self.latency.clone(),
        );
        registry.register(
            "proxy_retries",
            "Requests sent again to another worker",
            self.retries.clone(),
        );
        registry.register(
            "proxy_ejections",
            "Workers taken out after a connect error or reset",
            self.ejections.clone(),
        );
        registry.register(
            "proxy_shed",
            "Requests answered 503 at once because their app had its share of requests in flight",
            self.shed.clone(),
        );
    }

    /// The handles for one app, looked up once per route-table swap.
    pub fn app(&self, app: &str) -> AppMetrics {
        let label = AppLabel { app: app.into() };
        AppMetrics {
            by_class: CLASSES.map(|class| {
                self.requests
                    .get_or_create(&StatusLabel {
                        app: app.into(),
                        class,
                    })
                    .clone()
            }),
            latency: self.latency.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&label).clone(),
            ejections: self.ejections.get_or_create(&label).clone(),
            shed: self.shed.get_or_create(&label).clone(),
        }
    }
}

/// One app's metric handles: counting is an atomic add, no lookup.
#[derive(Clone, Debug)]
pub struct AppMetrics {
    by_class: [Counter; 5],
    /// Upstream response-header latency, seconds.
    pub latency: Histogram,
    /// Retries to another worker.
    pub retries: Counter,
    /// Passive ejections.
    pub ejections: Counter,
    /// Requests refused over the app's share.
    pub shed: Counter,
}

impl AppMetrics {
    /// Counts one answered request with `status`.
    pub fn answered(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
    }
}
