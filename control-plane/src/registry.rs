//! The registry of apps, their workers' placements and the tenants' API keys,
//! kept in a crash-safe embedded store (redb) so a restarted control plane
//! still knows every app and can take its workers back.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::AppRecord;

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const PLACEMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("placements");
const TENANTS: TableDefinition<&str, &str> = TableDefinition::new("tenants");

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store failed.
    #[error("registry store: {0}")]
    Store(#[from] redb::Error),
    /// A record could not be (de)serialised.
    #[error("registry record: {0}")]
    Record(#[from] serde_json::Error),
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for RegistryError {
            fn from(e: $t) -> Self {
                RegistryError::Store(e.into())
            }
        }
    )*};
}
store_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

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
    /// Its process id.
    pub pid: Option<u32>,
    /// Times it was restarted.
    pub restarts: u32,
}

impl Placement {
    fn key(&self) -> String {
        format!("{}/{}/{}", self.app, self.version, self.index)
    }
}

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    db: Arc<Database>,
}

fn key_hash(api_key: &str) -> String {
    Sha256::digest(api_key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Registry {
    /// Opens (or creates) the registry file at `path`.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| RegistryError::Store(redb::Error::Io(e)))?;
        }
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(APPS)?;
        txn.open_table(PLACEMENTS)?;
        txn.open_table(TENANTS)?;
        txn.commit()?;
        Ok(Registry { db: Arc::new(db) })
    }

    /// Saves an app record (insert or replace).
    pub fn put_app(&self, app: &AppRecord) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec(app)?;
        let txn = self.db.begin_write()?;
        txn.open_table(APPS)?
            .insert(app.name.as_str(), bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Removes an app and every placement of it.
    pub fn delete_app(&self, name: &str) -> Result<(), RegistryError> {
        let txn = self.db.begin_write()?;
        txn.open_table(APPS)?.remove(name)?;
        {
            let mut placements = txn.open_table(PLACEMENTS)?;
            let prefix = format!("{name}/");
            let keys: Vec<String> = placements
                .iter()?
                .filter_map(Result::ok)
                .map(|(k, _)| k.value().to_string())
                .filter(|k| k.starts_with(&prefix))
                .collect();
            for k in keys {
                placements.remove(k.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// One app.
    pub fn app(&self, name: &str) -> Result<Option<AppRecord>, RegistryError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(APPS)?;
        match table.get(name)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every app, by name.
    pub fn apps(&self) -> Result<Vec<AppRecord>, RegistryError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(APPS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Records where a worker runs.
    pub fn put_placement(&self, p: &Placement) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec(p)?;
        let txn = self.db.begin_write()?;
        txn.open_table(PLACEMENTS)?
            .insert(p.key().as_str(), bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Forgets a worker.
    pub fn remove_placement(&self, p: &Placement) -> Result<(), RegistryError> {
        let txn = self.db.begin_write()?;
        txn.open_table(PLACEMENTS)?.remove(p.key().as_str())?;
        txn.commit()?;
        Ok(())
    }

    /// Every recorded worker.
    pub fn placements(&self) -> Result<Vec<Placement>, RegistryError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PLACEMENTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Registers an API key for `tenant`; only its hash is stored.
    pub fn add_api_key(&self, api_key: &str, tenant: &str) -> Result<(), RegistryError> {
        let txn = self.db.begin_write()?;
        txn.open_table(TENANTS)?
            .insert(key_hash(api_key).as_str(), tenant)?;
        txn.commit()?;
        Ok(())
    }

    /// The tenant an API key belongs to.
    pub fn tenant_of(&self, api_key: &str) -> Result<Option<String>, RegistryError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TENANTS)?;
        Ok(table
            .get(key_hash(api_key).as_str())?
            .map(|v| v.value().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> AppRecord {
        AppRecord {
            name: name.into(),
            tenant: "t1".into(),
            version: 1,
            manifest: "flows: []".into(),
            workers: 2,
            size: 0.1,
            persistent_queues: false,
            encrypt_queues: false,
        }
    }

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        {
            let r = Registry::open(&path).unwrap();
            r.put_app(&record("orders")).unwrap();
            r.put_app(&record("billing")).unwrap();
            r.add_api_key("secret-key", "t1").unwrap();
            let p = Placement {
                app: "orders".into(),
                version: 1,
                index: 1,
                az: "a".into(),
                address: "127.0.1.1:5000".into(),
                pid: Some(42),
                restarts: 0,
            };
            r.put_placement(&p).unwrap();
        }
        let r = Registry::open(&path).unwrap();
        let names: Vec<String> = r.apps().unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["billing", "orders"]);
        assert_eq!(r.placements().unwrap().len(), 1);
        assert_eq!(r.tenant_of("secret-key").unwrap().as_deref(), Some("t1"));
        assert_eq!(r.tenant_of("other").unwrap(), None);
        r.delete_app("orders").unwrap();
        assert!(r.app("orders").unwrap().is_none());
        assert!(r.placements().unwrap().is_empty());
        // Only the key's hash is on disk.
        drop(r);
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(10).any(|w| w == b"secret-key"));
    }
}
