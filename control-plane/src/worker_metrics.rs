//! Reading a worker's `/metrics` on its ops port (what the autoscaler and
//! the canary judge read): bounded in time and size, and only the few
//! numbers they need, each a finite number at or above zero, or nothing.

use std::net::SocketAddr;
use std::time::Duration;

/// How long a worker's `/metrics` may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of a worker's `/metrics` read (a worker's is a few KiB).
const MAX_METRICS: usize = 1 << 20;

/// A client for scraping workers.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(SCRAPE_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// At most [`MAX_METRICS`] bytes of the worker's `/metrics` at `ops`;
/// empty when it does not answer.
pub(crate) async fn scrape(http: &reqwest::Client, ops: SocketAddr) -> String {
    let Ok(mut r) = http.get(format!("http://{ops}/metrics")).send().await else {
        return String::new();
    };
    if !r.status().is_success() {
        return String::new();
    }
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        text.extend_from_slice(&chunk);
        if text.len() > MAX_METRICS {
            text.truncate(MAX_METRICS);
            break;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The value of the unlabelled metric `name`.
pub(crate) fn value(text: &str, name: &str) -> Option<f64> {
    samples(text, name)
        .find(|(labels, _)| labels.is_empty())
        .map(|(_, v)| v)
}

/// The sum of metric `name` over its series whose labels hold `label`
/// (`class="5xx"`), or over every series when `label` is empty.
pub(crate) fn sum(text: &str, name: &str, label: &str) -> f64 {
    samples(text, name)
        .filter(|(labels, _)| label.is_empty() || labels.split(',').any(|l| l == label))
        .map(|(_, v)| v)
        .sum()
}

/// Metric `name`'s series: their labels (between the braces) and values.
fn samples<'t>(text: &'t str, name: &'t str) -> impl Iterator<Item = (&'t str, f64)> + 't {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |l| {
            let (series, v) = l.rsplit_once(' ')?;
            let labels = match series.strip_prefix(name)? {
                "" => "",
                rest => rest.strip_prefix('{')?.strip_suffix('}')?,
            };
            let v = v.trim().parse::<f64>().ok()?;
            (v.is_finite() && v >= 0.0).then_some((labels, v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_and_sums_series() {
        let text = "# TYPE x counter\nfabric_worker_http_requests_total{flow=\"a\",class=\"2xx\"} 7\n\
                    fabric_worker_http_requests_total{flow=\"a\",class=\"5xx\"} 2\n\
                    fabric_worker_http_requests_total{flow=\"b\",class=\"5xx\"} 1\n\
                    fabric_worker_http_requests_totalx 100\nfabric_worker_http_in_flight 3\n\
                    fabric_worker_cpu_seconds_total NaN\nfabric_worker_http_in_flight_other 9\n";
        let r = "fabric_worker_http_requests_total";
        assert_eq!(sum(text, r, ""), 10.0);
        assert_eq!(sum(text, r, "class=\"5xx\""), 3.0);
        assert_eq!(value(text, "fabric_worker_http_in_flight"), Some(3.0));
        assert_eq!(value(text, "fabric_worker_cpu_seconds_total"), None);
        assert_eq!(value("", "x"), None);
        assert_eq!(sum("x{a=\"1\"} -5\n", "x", ""), 0.0);
    }
}
