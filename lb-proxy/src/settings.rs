//! The proxy's own settings: listeners, domain, TLS, routes file, timeouts, limits, fair share, balancing, health.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a request picks one of an app's ready workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Power of two choices: of two random workers, the one with fewer requests in flight.
    #[default]
    P2c,
    /// Each worker in turn.
    RoundRobin,
}

/// The load balancer's settings; they sit at the top level of the TOML file
/// and of the environment (`FABRIC_DOMAIN`, `FABRIC_PROXY_LISTEN`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where the data path listens for plain HTTP (HTTP/1.1 and HTTP/2 prior knowledge).
    pub proxy_listen: SocketAddr,
    /// Where the data path listens for HTTPS (HTTP/2 through ALPN); none for no TLS.
    pub tls_listen: Option<SocketAddr>,
    /// The fabric's domain: apps answer at `{app}.{domain}`, workers at `{app}-{n}.{domain}`.
    pub domain: String,
    /// PEM certificate chain for `*.{domain}`; without it (and the key) a self-signed one is made.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// A JSON or TOML route table, loaded at start and reloaded when it changes.
    pub routes_file: Option<PathBuf>,
    /// How often the routes file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub routes_reload: Duration,
    /// How a request picks a worker: `p2c` or `round-robin`.
    pub balance: Balance,
    /// Threads serving the data path, each a single-threaded runtime with its
    /// own upstream pool (default: one per CPU); `0` serves it on the
    /// process's shared runtime.
    pub data_threads: usize,
    /// Whether plain `GET` and `HEAD` requests over HTTP/1.1 take the
    /// pass-through lane (docs/lb-proxy.md); off, hyper serves every request.
    pub pass_through: bool,
    /// Longest wait for a TCP connection to a worker.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for a worker's response headers once the request is sent.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Longest pause between two pieces of a request body, and for a client's request headers.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long an idle upstream connection stays in the pool.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle upstream connections kept per worker.
    pub pool_max_idle_per_worker: usize,
    /// Largest request body, in bytes (413 beyond it).
    pub max_body_bytes: u64,
    /// Largest request head (request line and headers), in bytes (431 beyond it).
    pub max_header_bytes: usize,
    /// Most client connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Most workers one request is tried on (the first try included).
    pub max_attempts: usize,
    /// Each app's share of the proxy: its requests in flight (from routing
    /// until the answer has been passed on, waiting for a worker included)
    /// may number this many per ready worker, at least one worker's worth;
    /// past it, 503 at once. `0` sets no bound. See docs/lb-proxy.md, "Fair share".
    pub app_max_in_flight_per_worker: usize,
    /// How long a worker stays out after a connect error or reset, unless a probe brings it back sooner.
    #[serde(with = "humantime_serde")]
    pub eject_for: Duration,
    /// How often each worker's health path is probed; `0s` turns active probes off.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// The path probed on each worker.
    pub health_path: String,
    /// Longest wait for a probe's answer.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Consecutive good probes that bring a worker back.
    pub health_rise: u32,
    /// Consecutive failed probes that take a worker out.
    pub health_fall: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_listen: None,
            domain: "fabric.localhost".into(),
            tls_cert_file: None,
            tls_key_file: None,
            routes_file: None,
            routes_reload: Duration::from_secs(2),
            balance: Balance::P2c,
            data_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pass_through: true,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_worker: 256,
            max_body_bytes: 1 << 30,
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            max_attempts: 3,
            // Four times the default size's concurrency ceiling (1 vCore:
            // 128 events at once), and a 4 vCore worker's whole ceiling;
            // beyond its ceiling a worker queues a request for up to 1 s,
            // then answers 503 itself. See docs/lb-proxy.md, "Fair share".
            app_max_in_flight_per_worker: 512,
            eject_for: Duration::from_secs(10),
            health_interval: Duration::from_secs(2),
            health_path: "/readyz".into(),
            health_timeout: Duration::from_secs(1),
            health_rise: 2,
            health_fall: 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Serialized, Toml};

    #[test]
    fn settings_read_from_toml_beside_their_defaults() {
        let toml = "domain = \"apps.example\"\nbalance = \"round-robin\"\n\
                    first_byte_timeout = \"5s\"\ntls_listen = \"127.0.0.1:8443\"\n";
        let s: Settings = figment::Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(toml))
            .extract()
            .unwrap();
        assert_eq!(s.domain, "apps.example");
        assert_eq!(s.balance, Balance::RoundRobin);
        assert_eq!(s.first_byte_timeout, Duration::from_secs(5));
        assert_eq!(s.tls_listen.map(|a| a.port()), Some(8443));
        assert_eq!(s.proxy_listen.port(), 8080);
        let bad = figment::Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string("balance = \"random\"\n"))
            .extract::<Settings>();
        assert!(bad.is_err());
    }
}
