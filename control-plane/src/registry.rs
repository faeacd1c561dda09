//! The registry of apps, their workers' placements and the tenants' API-key
//! hashes: held whole in memory, persisted in order to a backend (a redb
//! file, or a DynamoDB table), every value sealed.
//!
//! Reads are served from memory and never wait on the backend. A change
//! updates memory at once (the next read sees it) and is queued for one
//! writer task, which persists the changed records in the order they first
//! changed, retrying with back-off while the backend is unreachable (see
//! `registry/writer.rs`). The changes a caller must know are durable
//! ([`Registry::put_app`], [`Registry::delete_app`],
//! [`Registry::add_api_key`]) return once persisted; placements, which change
//! under the supervisor's lock, are written behind.
//!
//! Every value is sealed with the fabric's keyring, the AAD binding the
//! record's kind and id, so what reaches the file or the table is ciphertext
//! and a value moved under another id fails to open. An API key is kept only
//! as its SHA-256 hash: the id of its tenant record.

mod dynamodb;
mod embedded;
mod keys;
mod placement;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::envelope::{Aad, Keyring, OpenError, ResourceKind};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::model::{AppRecord, Configuration, KEPT_CONFIGURATIONS, PurgeRecord};
pub use placement::Placement;
use placement::placement_key;

pub use keys::{KeyRecord, PREFIX_LEN, Revoked, key_id};

/// Where the registry is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A redb file (a local control plane: `<data_dir>/registry.redb`).
    Embedded(PathBuf),
    /// A DynamoDB table, reached through aws-config's default chain
    /// (`AWS_ENDPOINT_URL_DYNAMODB` points it at an emulator).
    DynamoDb {
        /// The table.
        table: String,
        /// Whether a missing table is created (else it is an error naming it).
        create: bool,
    },
}

/// The kinds of record the registry keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// An app, by name.
    App,
    /// A worker's placement, by `{app}/{version}/{index}`.
    Placement,
    /// A tenant, by the SHA-256 hash of one of its API keys.
    Tenant,
    /// An app being deleted, by name: its data is still being purged.
    Purge,
    /// An app's last configurations, by app name.
    History,
}

impl RecordKind {
    /// Every kind, in the order they are loaded.
    pub const ALL: [RecordKind; 5] = [
        RecordKind::App,
        RecordKind::Placement,
        RecordKind::Tenant,
        RecordKind::Purge,
        RecordKind::History,
    ];

    /// The kind's name in the store (and in the AAD).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::App => "app",
            RecordKind::Placement => "placement",
            RecordKind::Tenant => "tenant",
            RecordKind::Purge => "purge",
            RecordKind::History => "history",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct StoreError {
    /// The operation.
    pub op: &'static str,
    /// The cause.
    pub message: String,
}

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The backend failed.
    #[error("registry {store}: {source}")]
    Store {
        /// Which backend (a file or a table).
        store: String,
        /// What failed.
        source: StoreError,
    },
    /// A stored record cannot be opened or read: tampered, moved under
    /// another id, sealed with a key this fabric does not hold, or malformed.
    #[error("registry record {kind} {id:?} cannot be read: {reason}")]
    Record {
        /// Its kind.
        kind: RecordKind,
        /// Its id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The registry was closed: a change made since is in memory only.
    #[error("the registry is closed; the change was not persisted")]
    Closed,
}

/// A record's kind and id.
type Key = (RecordKind, String);

/// A record as a backend keeps it: its value sealed.
struct Sealed {
    kind: RecordKind,
    id: String,
    value: Vec<u8>,
}

/// Where sealed records are kept: one implementation per file in this module.
trait Store: Send + Sync {
    /// The backend, for logs and errors (a file's path, a table's name).
    fn name(&self) -> &str;
    /// Every record.
    fn load(&self) -> BoxFuture<'_, Result<Vec<Sealed>, StoreError>>;
    /// Inserts or replaces one record, durably.
    fn put(&self, record: Sealed) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Removes one record, durably (removing a missing record is no error).
    fn delete(&self, kind: RecordKind, id: String) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The app name the registry's records are sealed under: not a valid app
/// name, so no app derives the same data key.
const SEAL_SCOPE: &str = "control-plane/registry";

/// Seals and opens record values, bound to their kind and id.
#[derive(Clone)]
struct Sealer(Keyring);

impl Sealer {
    fn aad(kind: RecordKind, id: &str) -> Aad<'_> {
        Aad {
            app: SEAL_SCOPE,
            kind: ResourceKind::Registry,
            resource: kind.as_str(),
            key: id,
        }
    }

    fn seal(&self, kind: RecordKind, id: &str, plaintext: &[u8]) -> Vec<u8> {
        self.0.seal(&Self::aad(kind, id), plaintext)
    }

    fn open(&self, kind: RecordKind, id: &str, sealed: &[u8]) -> Result<Vec<u8>, RegistryError> {
        self.0
            .open(&Self::aad(kind, id), sealed)
            .map_err(|e| RegistryError::Record {
                kind,
                id: id.to_string(),
                reason: match e {
                    OpenError::Rejected => "sealed record failed authentication: altered, \
                                            moved from another record, or sealed with \
                                            another master key"
                        .into(),
                    other => other.to_string(),
                },
            })
    }
}

/// Everything the registry holds, in memory.
#[derive(Debug, Clone, Default)]
struct Records {
    apps: BTreeMap<String, AppRecord>,
    placements: BTreeMap<String, Placement>,
    /// API keys (their tenant, name, dates) by hash.
    tenants: BTreeMap<String, KeyRecord>,
    /// Apps being deleted, by name.
    purges: BTreeMap<String, PurgeRecord>,
    /// Each app's last configurations, oldest first, by app name.
    histories: BTreeMap<String, Vec<Configuration>>,
}

impl Records {
    /// Takes in one stored record's plaintext.
    fn insert(&mut self, kind: RecordKind, id: String, plaintext: &[u8]) -> Result<(), String> {
        let json = |e: serde_json::Error| e.to_string();
        match kind {
            RecordKind::App => {
                self.apps
                    .insert(id, serde_json::from_slice(plaintext).map_err(json)?);
            }
            RecordKind::Placement => {
                self.placements
                    .insert(id, serde_json::from_slice(plaintext).map_err(json)?);
            }
            RecordKind::Tenant => {
                self.tenants.insert(id, KeyRecord::parse(plaintext)?);
            }
            RecordKind::Purge => {
                self.purges
                    .insert(id, serde_json::from_slice(plaintext).map_err(json)?);
            }
            RecordKind::History => {
                self.histories
                    .insert(id, serde_json::from_slice(plaintext).map_err(json)?);
            }
        }
        Ok(())
    }

    /// The plaintext a record is stored as, or `None` when it is gone.
    fn value(&self, kind: RecordKind, id: &str) -> Option<Vec<u8>> {
        // Serialising these plain structs to JSON cannot fail.
        match kind {
            RecordKind::App => self.apps.get(id).and_then(|a| serde_json::to_vec(a).ok()),
            RecordKind::Placement => self
                .placements
                .get(id)
                .and_then(|p| serde_json::to_vec(p).ok()),
            RecordKind::Tenant => self
                .tenants
                .get(id)
                .and_then(|k| serde_json::to_vec(k).ok()),
            RecordKind::Purge => self.purges.get(id).and_then(|p| serde_json::to_vec(p).ok()),
            RecordKind::History => self
                .histories
                .get(id)
                .and_then(|h| serde_json::to_vec(h).ok()),
        }
    }

    /// The key of every record held.
    fn keys(&self) -> Vec<Key> {
        let apps = self.apps.keys().map(|id| (RecordKind::App, id.clone()));
        let placements = self
            .placements
            .keys()
            .map(|id| (RecordKind::Placement, id.clone()));
        let tenants = self
            .tenants
            .keys()
            .map(|id| (RecordKind::Tenant, id.clone()));
        let purges = self.purges.keys().map(|id| (RecordKind::Purge, id.clone()));
        let histories = self
            .histories
            .keys()
            .map(|id| (RecordKind::History, id.clone()));
        apps.chain(placements)
            .chain(tenants)
            .chain(purges)
            .chain(histories)
            .collect()
    }
}

fn key_hash(api_key: &str) -> String {
    Sha256::digest(api_key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The registry. Cheap to clone; every clone shares one memory and one writer.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<writer::Shared>,
}

impl Registry {
    /// Opens the registry at `location` (creating the file or the table when
    /// missing), loads it whole and starts its writer. `keyring` seals and
    /// opens every value; a record it cannot open stops the start with an
    /// error naming the record.
    pub async fn open(location: &Location, keyring: Keyring) -> Result<Self, RegistryError> {
        let sealer = Sealer(keyring);
        let store: Arc<dyn Store> = match location {
            Location::Embedded(path) => Arc::new(
                embedded::Embedded::open(path.clone(), sealer.clone())
                    .await
                    .map_err(|source| RegistryError::Store {
                        store: path.display().to_string(),
                        source,
                    })?,
            ),
            Location::DynamoDb { table, create } => {
                let sdk = common::aws::sdk_config().await;
                Arc::new(
                    dynamodb::DynamoDb::open(&sdk, table, *create)
                        .await
                        .map_err(|source| RegistryError::Store {
                            store: format!("dynamodb table {table}"),
                            source,
                        })?,
                )
            }
        };
        Self::start(store, sealer).await
    }

    /// Loads every record of `store` and starts the writer.
    async fn start(store: Arc<dyn Store>, sealer: Sealer) -> Result<Self, RegistryError> {
        let sealed = store.load().await.map_err(|source| RegistryError::Store {
            store: store.name().to_string(),
            source,
        })?;
        let mut records = Records::default();
        for s in sealed {
            let plaintext = sealer.open(s.kind, &s.id, &s.value)?;
            records
                .insert(s.kind, s.id.clone(), &plaintext)
                .map_err(|reason| RegistryError::Record {
                    kind: s.kind,
                    id: s.id,
                    reason,
                })?;
        }
        tracing::info!(
            store = store.name(),
            apps = records.apps.len(),
            placements = records.placements.len(),
            "registry loaded"
        );
        Ok(Registry {
            shared: writer::Shared::start(records, store, sealer),
        })
    }

    /// Saves an app record (insert or replace); returns once it is persisted.
    pub async fn put_app(&self, app: &AppRecord) -> Result<(), RegistryError> {
        let change = self.shared.change(|r| {
            r.apps.insert(app.name.clone(), app.clone());
            vec![(RecordKind::App, app.name.clone())]
        });
        self.shared.persisted(change).await
    }

    /// Starts deleting an app: records `purge` and removes the app and
    /// every placement of it, in one change; returns once persisted. The
    /// purge record is written first, so a crash between the two leaves
    /// the app marked for purging, never forgotten with its data kept.
    pub async fn start_purge(&self, purge: &PurgeRecord) -> Result<(), RegistryError> {
        let name = purge.name.as_str();
        let change = self.shared.change(|r| {
            r.purges.insert(name.to_string(), purge.clone());
            r.apps.remove(name);
            let prefix = format!("{name}/");
            let gone: Vec<String> = r
                .placements
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            // Its configurations go with it: a later app of the name starts
            // with no history and none of its secure properties.
            r.histories.remove(name);
            let mut changed = vec![
                (RecordKind::Purge, name.to_string()),
                (RecordKind::App, name.to_string()),
                (RecordKind::History, name.to_string()),
            ];
            for k in gone {
                r.placements.remove(&k);
                changed.push((RecordKind::Placement, k));
            }
            changed
        });
        self.shared.persisted(change).await
    }

    /// Ends an app's deletion: its name is free again. Returns once persisted.
    pub async fn finish_purge(&self, name: &str, app_id: &str) -> Result<(), RegistryError> {
        let change = self.shared.change(|r| {
            // Only the purge that finished: a name deleted again since is
            // another instance's purge, still to run.
            if r.purges.get(name).is_none_or(|p| p.app_id != app_id) {
                return Vec::new();
            }
            r.purges.remove(name);
            vec![(RecordKind::Purge, name.to_string())]
        });
        self.shared.persisted(change).await
    }

    /// The app named `name` being deleted, if it is.
    pub fn purge(&self, name: &str) -> Option<PurgeRecord> {
        self.shared.read(|r| r.purges.get(name).cloned())
    }

    /// Every app being deleted.
    pub fn purges(&self) -> Vec<PurgeRecord> {
        self.shared.read(|r| r.purges.values().cloned().collect())
    }

    /// Records `config` as app `name`'s newest configuration, keeping the
    /// last [`KEPT_CONFIGURATIONS`]; returns once persisted.
    pub async fn add_configuration(
        &self,
        name: &str,
        config: Configuration,
    ) -> Result<(), RegistryError> {
        let change = self.shared.change(|r| {
            let kept = r.histories.entry(name.to_string()).or_default();
            kept.push(config.clone());
            let over = kept.len().saturating_sub(KEPT_CONFIGURATIONS);
            kept.drain(..over);
            vec![(RecordKind::History, name.to_string())]
        });
        self.shared.persisted(change).await
    }

    /// App `name`'s last configurations, oldest first.
    pub fn history(&self, name: &str) -> Vec<Configuration> {
        self.shared
            .read(|r| r.histories.get(name).cloned().unwrap_or_default())
    }

    /// One app.
    pub fn app(&self, name: &str) -> Option<AppRecord> {
        self.shared.read(|r| r.apps.get(name).cloned())
    }

    /// Every app, by name.
    pub fn apps(&self) -> Vec<AppRecord> {
        self.shared.read(|r| r.apps.values().cloned().collect())
    }

    /// Records where a worker runs (written behind: this never waits).
    pub fn put_placement(&self, p: &Placement) {
        self.shared.change(|r| {
            r.placements.insert(p.key(), p.clone());
            vec![(RecordKind::Placement, p.key())]
        });
    }

    /// Forgets a worker (written behind: this never waits).
    pub fn remove_placement(&self, app: &str, version: u64, index: u32) {
        let key = placement_key(app, version, index);
        self.shared.change(|r| {
            r.placements.remove(&key);
            vec![(RecordKind::Placement, key)]
        });
    }

    /// Every recorded worker.
    pub fn placements(&self) -> Vec<Placement> {
        self.shared
            .read(|r| r.placements.values().cloned().collect())
    }

    /// Registers an API key for `tenant` that is registered again at every
    /// start (the local admin key: it cannot be revoked); only its hash is
    /// stored. Returns once persisted (at once when the key is registered
    /// already).
    pub async fn add_api_key(&self, api_key: &str, tenant: &str) -> Result<(), RegistryError> {
        let hash = key_hash(api_key);
        let change = self.shared.change(|r| {
            if r.tenants
                .get(&hash)
                .is_some_and(|k| k.tenant == tenant && k.pinned)
            {
                return Vec::new();
            }
            let record = KeyRecord {
                name: Some(format!("{tenant} (data directory)")),
                pinned: true,
                ..KeyRecord::new(api_key, tenant)
            };
            r.tenants.insert(hash.clone(), record);
            vec![(RecordKind::Tenant, hash.clone())]
        });
        self.shared.persisted(change).await
    }

    /// The tenant an API key belongs to.
    pub fn tenant_of(&self, api_key: &str) -> Option<String> {
        self.key(api_key).map(|(_, k)| k.tenant)
    }

    /// Copies every record of `older` into this registry when this one holds
    /// no app yet (moving a registry to another backend); returns whether it
    /// did, once the copies are persisted.
    pub async fn import(&self, older: &Registry) -> Result<bool, RegistryError> {
        let from = older.shared.read(Records::clone);
        let mut copied = false;
        let change = self.shared.change(|r| {
            if !r.apps.is_empty() {
                return Vec::new();
            }
            copied = true;
            let keys = from.keys();
            r.apps.extend(from.apps);
            r.placements.extend(from.placements);
            r.tenants.extend(from.tenants);
            r.purges.extend(from.purges);
            keys
        });
        self.shared.persisted(change).await?;
        Ok(copied)
    }

    /// Waits until every change made so far is persisted.
    pub async fn flush(&self) -> Result<(), RegistryError> {
        self.shared.flush().await
    }

    /// How many changed records are not persisted yet.
    pub fn unpersisted(&self) -> usize {
        self.shared.unpersisted()
    }

    /// The same as a metric, kept up to date by every change and write.
    pub fn unpersisted_metric(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.shared.unwritten()
    }

    /// Persists what is left (waiting at most `within`), then stops the
    /// writer and releases the backend (the file's lock). Returns how many
    /// changed records were left unpersisted: 0 when everything landed.
    pub async fn close(&self, within: Duration) -> usize {
        self.shared.close(within).await
    }
}
