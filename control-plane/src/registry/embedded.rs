//! The embedded backend: one redb file, one table keyed by (kind, id), each
//! write one durable transaction.
//!
//! Registry files written before values were sealed hold plaintext JSON in
//! the tables `apps`, `placements` and `tenants`. Such a file is converted
//! when opened: its records are sealed into a fresh file that then replaces
//! it (a rename, so a crash leaves one or the other whole), so no plaintext
//! stays behind in the file's free pages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::{RecordKind, Sealed, Sealer, Store, StoreError};

pub(super) const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("registry");
/// The unsealed layout of older files.
const OLD_APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const OLD_PLACEMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("placements");
const OLD_TENANTS: TableDefinition<&str, &str> = TableDefinition::new("tenants");

pub(super) struct Embedded {
    db: Arc<Database>,
    name: String,
}

fn fail(op: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError {
        op,
        message: e.to_string(),
    }
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> StoreError {
    move |e| StoreError {
        op,
        message: e.to_string(),
    }
}

/// Runs blocking redb work off the async threads.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError {
            op,
            message: e.to_string(),
        })?
}

impl Embedded {
    /// Opens (or creates) the file at `path`, sealing an older plaintext file's records.
    pub(super) async fn open(path: PathBuf, sealer: Sealer) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        let db = blocking("open", move || open_file(&path, &sealer)).await?;
        Ok(Embedded {
            db: Arc::new(db),
            name,
        })
    }
}

fn open_file(path: &Path, sealer: &Sealer) -> Result<Database, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create directory"))?;
    }
    let with_table = |db: Database| -> Result<Database, redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        Ok(db)
    };
    let db = Database::create(path).map_err(|e| fail("open")(e.into()))?;
    let Some(old) = read_unsealed(&db).map_err(fail("read older layout"))? else {
        return with_table(db).map_err(fail("open"));
    };
    drop(db);
    let fresh = path.with_extension("redb.sealing");
    match std::fs::remove_file(&fresh) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("seal older file")(e)),
        _ => {}
    }
    write_sealed(&fresh, &old, sealer).map_err(fail("seal older file"))?;
    std::fs::rename(&fresh, path).map_err(io("seal older file"))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("seal older file"))?;
    }
    tracing::info!(file = %path.display(), records = old.len(), "sealed the records of an older registry file");
    Database::create(path)
        .map_err(redb::Error::from)
        .and_then(with_table)
        .map_err(fail("open"))
}

/// A plaintext record of an older file.
type Unsealed = (RecordKind, String, Vec<u8>);

/// The plaintext records of an older file, if this is one.
fn read_unsealed(db: &Database) -> Result<Option<Vec<Unsealed>>, redb::Error> {
    let txn = db.begin_read()?;
    let tables: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
    let has = |name: &str| tables.iter().any(|t| t == name);
    if ![OLD_APPS.name(), OLD_PLACEMENTS.name(), OLD_TENANTS.name()]
        .into_iter()
        .any(has)
    {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (kind, def) in [
        (RecordKind::App, OLD_APPS),
        (RecordKind::Placement, OLD_PLACEMENTS),
    ] {
        if has(def.name()) {
            for item in txn.open_table(def)?.iter()? {
                let (k, v) = item?;
                out.push((kind, k.value().to_string(), v.value().to_vec()));
            }
        }
    }
    if has(OLD_TENANTS.name()) {
        for item in txn.open_table(OLD_TENANTS)?.iter()? {
            let (k, v) = item?;
            out.push((
                RecordKind::Tenant,
                k.value().to_string(),
                v.value().as_bytes().to_vec(),
            ));
        }
    }
    Ok(Some(out))
}

/// Writes `records`, sealed, into a new file at `path`.
fn write_sealed(path: &Path, records: &[Unsealed], sealer: &Sealer) -> Result<(), redb::Error> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(RECORDS)?;
        for (kind, id, plaintext) in records {
            let sealed = sealer.seal(*kind, id, plaintext);
            table.insert((kind.as_str(), id.as_str()), sealed.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

impl Store for Embedded {
    fn name(&self) -> &str {
        &self.name
    }

    fn load(&self) -> BoxFuture<'_, Result<Vec<Sealed>, StoreError>> {
        let db = self.db.clone();
        blocking("load", move || {
            let load = || -> Result<Vec<Sealed>, redb::Error> {
                let txn = db.begin_read()?;
                let mut out = Vec::new();
                for item in txn.open_table(RECORDS)?.iter()? {
                    let (k, v) = item?;
                    let (kind, id) = k.value();
                    // A kind a newer version wrote: left alone.
                    let Some(kind) = RecordKind::parse(kind) else {
                        tracing::warn!(kind, id, "skipping a registry record of an unknown kind");
                        continue;
                    };
                    out.push(Sealed {
                        kind,
                        id: id.to_string(),
                        value: v.value().to_vec(),
                    });
                }
                Ok(out)
            };
            load().map_err(fail("load"))
        })
        .boxed()
    }

    fn put(&self, record: Sealed) -> BoxFuture<'_, Result<(), StoreError>> {
        let db = self.db.clone();
        blocking("put", move || {
            let put = || -> Result<(), redb::Error> {
                let txn = db.begin_write()?;
                txn.open_table(RECORDS)?.insert(
                    (record.kind.as_str(), record.id.as_str()),
                    record.value.as_slice(),
                )?;
                txn.commit()?;
                Ok(())
            };
            put().map_err(fail("put"))
        })
        .boxed()
    }

    fn delete(&self, kind: RecordKind, id: String) -> BoxFuture<'_, Result<(), StoreError>> {
        let db = self.db.clone();
        blocking("delete", move || {
            let delete = || -> Result<(), redb::Error> {
                let txn = db.begin_write()?;
                txn.open_table(RECORDS)?
                    .remove((kind.as_str(), id.as_str()))?;
                txn.commit()?;
                Ok(())
            };
            delete().map_err(fail("delete"))
        })
        .boxed()
    }
}
