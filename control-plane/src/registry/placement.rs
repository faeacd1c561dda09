//! Where a worker runs, as the registry records it: what a restarted
//! control plane needs to adopt the worker through its scheduler.

use serde::{Deserialize, Serialize};

use crate::scheduler::Worker;

/// Where a worker runs, remembered so a restarted control plane can adopt it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The app.
    pub app: String,
    /// The app version it runs.
    pub version: u64,
    /// Its index n within the app.
    pub index: u32,
    /// Its availability zone.
    pub az: String,
    /// Where it listens.
    pub address: String,
    /// Where it serves its ops endpoints (absent for a worker started before
    /// they had a port of their own: they are then on `address`).
    #[serde(default)]
    pub ops_address: Option<String>,
    /// Its scheduler's name for it (see [`Worker::handle`]); absent in a
    /// record from before handles, whose `pid` is then its handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Its process id, when it is a process on this machine.
    pub pid: Option<u32>,
    /// Who it is beyond its handle (see [`Worker::identity`]).
    #[serde(default)]
    pub identity: Option<String>,
    /// Times it was restarted.
    pub restarts: u32,
}

impl Placement {
    /// The worker as its scheduler recorded it, when the record names one.
    pub fn worker(&self) -> Option<Worker> {
        let handle = self
            .handle
            .clone()
            .or_else(|| self.pid.map(|p| p.to_string()))?;
        Some(Worker {
            handle,
            address: self.address.parse().ok()?,
            ops_address: self.ops_address(),
            identity: self.identity.clone(),
            pid: self.pid,
        })
    }

    /// Where the worker's `/readyz` answers.
    pub fn ops_address(&self) -> std::net::SocketAddr {
        self.ops_address
            .as_deref()
            .unwrap_or(&self.address)
            .parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Whether an earlier version of the fabric started this worker: it has
    /// no process identity or ops port, and it was started with what that
    /// version gave workers (the whole environment among them).
    pub fn from_an_earlier_fabric(&self) -> bool {
        self.identity.is_none() || self.ops_address.is_none()
    }

    /// Where `worker`, worker `index` of `app` at `version` in `az`, runs.
    pub fn of(
        app: &str,
        version: u64,
        index: u32,
        az: &str,
        worker: &Worker,
        restarts: u32,
    ) -> Self {
        Placement {
            app: app.to_string(),
            version,
            index,
            az: az.to_string(),
            address: worker.address.to_string(),
            ops_address: Some(worker.ops_address.to_string()),
            handle: Some(worker.handle.clone()),
            pid: worker.pid,
            identity: worker.identity.clone(),
            restarts,
        }
    }

    pub(super) fn key(&self) -> String {
        placement_key(&self.app, self.version, self.index)
    }
}

/// The registry's id of worker `index` of `app` at `version`.
pub(super) fn placement_key(app: &str, version: u64, index: u32) -> String {
    format!("{app}/{version}/{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Placement {
        Placement {
            app: "orders".into(),
            version: 1,
            index: 1,
            az: "a".into(),
            address: "127.0.1.1:5000".into(),
            ops_address: Some("127.0.1.1:5001".into()),
            handle: Some("42".into()),
            pid: Some(42),
            identity: Some("boot:42".into()),
            restarts: 0,
        }
    }

    #[test]
    fn a_placement_names_its_worker_by_handle_or_by_an_older_records_pid() {
        let p = recorded();
        let w = p.worker().expect("a recorded worker");
        assert_eq!(w.handle, "42");
        assert_eq!(w.ops_address.to_string(), "127.0.1.1:5001");
        assert_eq!(
            Placement::of("orders", 1, 1, "a", &w, 0),
            p,
            "a worker's placement records what adopting it needs"
        );
        // A record written before handles: its pid is the handle.
        let older: Placement = serde_json::from_value(serde_json::json!({
            "app": "orders", "version": 1, "index": 1, "az": "a",
            "address": "127.0.1.1:5000", "pid": 7, "restarts": 0
        }))
        .unwrap();
        let w = older.worker().expect("a worker by its pid");
        assert_eq!((w.handle.as_str(), w.identity), ("7", None));
        assert_eq!(w.ops_address, w.address, "ops on the app's port then");
        // A record naming no worker (no handle, no pid) is nobody to adopt.
        let nobody = Placement {
            handle: None,
            pid: None,
            ..recorded()
        };
        assert_eq!(nobody.worker(), None);
    }
}
