//! queue-svc's Prometheus metrics: messages through each operation, per app.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Message counters, registered in the service's registry.
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    messages: Family<Labels, Counter>,
}

impl Metrics {
    /// Registers the counters in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        registry.register(
            "queue_messages",
            "Messages by operation (published, leased, acked, rolled_back, dead_lettered, redriven) and app",
            m.messages.clone(),
        );
        m
    }

    /// Counts `n` messages through `op` for `app`.
    pub(crate) fn count(&self, op: &str, app: &str, n: usize) {
        if n == 0 {
            return;
        }
        self.messages
            .get_or_create(&vec![
                ("op".to_string(), op.to_string()),
                ("app".to_string(), app.to_string()),
            ])
            .inc_by(n as u64);
    }
}
