//! The route table: the contract between the control plane, which publishes
//! each app's workers, and the load balancer, which routes by it. Defined
//! once, here, for both ends; a table is replaced whole, never patched, and
//! the load balancer refuses fields it does not know.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Most workers one app may list (the balancer tracks tried workers in a 64-bit mask).
pub const MAX_WORKERS: usize = 64;

/// Whether a worker takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Takes new requests.
    Ready,
    /// Finishes the requests it has, takes no new ones (but still answers its direct URL).
    Draining,
}

/// One worker of an app, as the control plane publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRoute {
    /// The worker's number within its app: `{app}-{index}.{domain}` reaches it alone.
    pub index: u32,
    /// Where the worker listens, `host:port`.
    pub address: String,
    /// Whether it takes new requests.
    pub state: WorkerState,
    /// Where the worker serves its ops endpoints (`/healthz`, `/readyz`,
    /// `/metrics`), `host:port`, apart from its app's traffic: active probes
    /// go there when it is given, else to `address` (where the app may own
    /// those paths itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// One app's workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoutes {
    /// The app's workers (of its serving version; their direct URLs).
    pub workers: Vec<WorkerRoute>,
    /// A canary: a new version's workers, given a share of the app's
    /// requests (not of its direct URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRoutes>,
}

/// A canary version of an app and its share of the app's requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRoutes {
    /// The percentage of the app's requests it takes (1 to 99).
    pub weight: u8,
    /// Its workers.
    pub workers: Vec<WorkerRoute>,
}

/// The whole route table, as published: replaced whole, never patched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// The publisher's version of the table, for logs and the admin API.
    #[serde(default)]
    pub version: u64,
    /// Apps by name.
    #[serde(default)]
    pub apps: BTreeMap<String, AppRoutes>,
}

/// A route table that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The file could not be read.
    #[error("route file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a route table.
    #[error("route table {origin}: {reason}")]
    Parse {
        /// Where the table came from.
        origin: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The table parses but says something impossible.
    #[error("route table: app {app:?}: {reason}")]
    Invalid {
        /// The app at fault.
        app: String,
        /// What is wrong.
        reason: String,
    },
}

impl RouteTable {
    /// Reads a table from a `.toml` file, or JSON otherwise.
    pub fn from_file(path: &Path) -> Result<Self, RouteError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouteError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let origin = path.display().to_string();
        let table: RouteTable = if path.extension().is_some_and(|e| e == "toml") {
            toml_from_str(&text, &origin)?
        } else {
            serde_json::from_str(&text).map_err(|e| RouteError::Parse {
                origin,
                reason: e.to_string(),
            })?
        };
        table.validate()?;
        Ok(table)
    }

    /// Checks names, addresses and indexes.
    pub fn validate(&self) -> Result<(), RouteError> {
        for (app, spec) in &self.apps {
            let invalid = |reason: String| RouteError::Invalid {
                app: app.clone(),
                reason,
            };
            let name_ok = !app.is_empty()
                && app
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !name_ok {
                return Err(invalid(
                    "an app name is lower-case letters, digits and '-'".into(),
                ));
            }
            let canary = spec.canary.as_ref();
            if let Some(c) = canary
                && !(1..=99).contains(&c.weight)
            {
                return Err(invalid(format!(
                    "a canary's weight is 1 to 99 percent, not {}",
                    c.weight
                )));
            }
            let canary_workers = canary.map_or(&[][..], |c| &c.workers[..]);
            if spec.workers.len() + canary_workers.len() > MAX_WORKERS {
                return Err(invalid(format!("more than {MAX_WORKERS} workers")));
            }
            check_workers(&spec.workers, &invalid)?;
            check_workers(canary_workers, &invalid)?;
        }
        Ok(())
    }
}

/// Checks one group of workers: each index once among the ready ones and
/// once among the draining ones (a version being replaced drains beside
/// its successor, whose worker n is ready), addresses `host:port`.
fn check_workers(
    workers: &[WorkerRoute],
    invalid: &impl Fn(String) -> RouteError,
) -> Result<(), RouteError> {
    let mut seen = std::collections::BTreeSet::new();
    for w in workers {
        if !seen.insert((w.index, w.state == WorkerState::Ready)) {
            return Err(invalid(format!("worker index {} appears twice", w.index)));
        }
        for (field, value) in [("address", Some(&w.address)), ("health", w.health.as_ref())] {
            if let Some(value) = value
                && !host_port(value)
            {
                return Err(invalid(format!(
                    "worker {}: {field} {value:?} is not host:port",
                    w.index
                )));
            }
        }
    }
    Ok(())
}

/// Whether `s` is `host:port`, as a URI authority.
fn host_port(s: &str) -> bool {
    s.parse::<axum::http::uri::Authority>().is_ok()
        && s.rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// TOML through figment, which the workspace already uses for configuration.
fn toml_from_str(text: &str, origin: &str) -> Result<RouteTable, RouteError> {
    use figment::providers::{Format, Toml};
    figment::Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| RouteError::Parse {
            origin: origin.into(),
            reason: e.to_string().replace('\n', " "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let worker = |index, state| WorkerRoute {
            index,
            address: format!("127.0.0.{index}:8081"),
            state,
            health: Some(format!("127.0.0.{index}:9091")),
        };
        RouteTable {
            version: 7,
            apps: BTreeMap::from([(
                "orders".to_string(),
                AppRoutes {
                    workers: vec![
                        worker(1, WorkerState::Ready),
                        worker(2, WorkerState::Draining),
                    ],
                    canary: None,
                },
            )]),
        }
    }

    #[test]
    fn a_published_table_reads_back_the_same_and_says_its_states_in_words() {
        let t = table();
        let text = serde_json::to_string(&t).unwrap();
        assert!(text.contains(r#""state":"ready""#), "{text}");
        assert!(text.contains(r#""state":"draining""#), "{text}");
        let back: RouteTable = serde_json::from_str(&text).unwrap();
        assert_eq!(back, t);
        back.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_states_are_refused() {
        let text = serde_json::to_string(&table()).unwrap();
        let extra = text.replacen(r#""index":1"#, r#""index":1,"weight":3"#, 1);
        assert!(serde_json::from_str::<RouteTable>(&extra).is_err());
        let state = text.replacen("draining", "starting", 1);
        assert!(serde_json::from_str::<RouteTable>(&state).is_err());
    }

    #[test]
    fn impossible_tables_are_invalid() {
        let mut t = table();
        let orders = t.apps.get_mut("orders").unwrap();
        orders.workers[1].index = 1;
        orders.workers[1].state = WorkerState::Ready;
        assert!(t.validate().unwrap_err().to_string().contains("twice"));
        let mut t = table();
        t.apps.get_mut("orders").unwrap().workers[0].address = "nowhere".into();
        assert!(t.validate().is_err());
        let mut t = table();
        let spec = t.apps.remove("orders").unwrap();
        t.apps.insert("Orders".into(), spec);
        assert!(t.validate().is_err());
    }

    #[test]
    fn a_draining_worker_may_share_its_index_with_its_ready_successor() {
        let mut t = table();
        let workers = &mut t.apps.get_mut("orders").unwrap().workers;
        workers[1].index = 1;
        t.validate().unwrap();
        let mut twice = t.clone();
        twice.apps.get_mut("orders").unwrap().workers[1].state = WorkerState::Ready;
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn a_canary_has_a_weight_of_1_to_99_and_its_own_indexes() {
        let with = |weight: u8, indexes: &[u32]| {
            let mut t = table();
            let workers = indexes
                .iter()
                .map(|&index| WorkerRoute {
                    index,
                    address: format!("127.0.1.{index}:8081"),
                    state: WorkerState::Ready,
                    health: None,
                })
                .collect();
            t.apps.get_mut("orders").unwrap().canary = Some(CanaryRoutes { weight, workers });
            t
        };
        // Its indexes may repeat the app's own (its workers have no direct URL).
        with(10, &[1, 2]).validate().unwrap();
        with(99, &[1]).validate().unwrap();
        for bad in [with(0, &[1]), with(100, &[1]), with(10, &[1, 1])] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let crowded: Vec<u32> = (0..63).collect();
        assert!(
            with(10, &crowded)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("more than 64")
        );
        let text = serde_json::to_string(&with(10, &[1])).unwrap();
        assert!(text.contains(r#""canary":{"weight":10"#), "{text}");
        assert!(!serde_json::to_string(&table()).unwrap().contains("canary"));
    }
}
