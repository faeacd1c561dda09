//! Group commit for redb, shared by the services' embedded backends.
//!
//! One writer thread takes every write waiting for it, applies them in order
//! in one transaction and commits once (one fsync), then answers each. A
//! write is answered only after the commit that holds it; under load, many
//! writes share one fsync instead of queueing for one each.
//!
//! A write says how it ended ([`Outcome`]): done; refused having changed
//! nothing (a lost lease, a failed condition), which does not stop the
//! others; or failed part-way, which may have left the transaction half
//! changed, so the whole batch is rolled back and every write in it is
//! answered with an error.

use std::sync::{Arc, mpsc};

use redb::{Database, WriteTransaction};
use tokio::sync::oneshot;

/// The most writes one transaction takes.
const MAX_BATCH: usize = 256;

/// How one write ended, inside the shared transaction.
pub enum Outcome<T, E> {
    /// Applied; answered once the transaction commits.
    Done(T),
    /// Refused before changing anything: answered at once, the batch goes on.
    Refused(E),
    /// Failed, perhaps part-way: the batch is rolled back.
    Failed(E),
}

/// Why a write did not land.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError<E> {
    /// The write itself refused or failed.
    #[error("{0}")]
    Write(E),
    /// Its transaction did not commit (the store failed, or another write of
    /// the same batch failed part-way); nothing of it landed.
    #[error("not committed: {0}")]
    NotCommitted(String),
}

/// Reports a write's outcome once its transaction committed (`Ok`) or not.
type Done = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write applied inside a shared transaction: whether the batch may still
/// commit, and its report.
type Job = Box<dyn FnOnce(&WriteTransaction) -> (bool, Done) + Send>;

/// The handle of a database's writer thread. Cheap to clone; when the last
/// clone goes, the thread finishes what it holds and stops, and the database
/// is closed by the time the drop returns (so a restart in the same process
/// can open the file again).
#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<Writer>,
}

struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl GroupCommit {
    /// Starts the writer thread of `db`, named `name`.
    pub fn start(db: Arc<Database>, name: &str) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer(&db, &queue))?;
        Ok(GroupCommit {
            inner: Arc::new(Writer {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
        })
    }

    /// Applies `f` in the writer's next transaction; answers once that
    /// transaction committed (or at once, when `f` refused).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, CommitError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Outcome<T, E> + Send + 'static,
    {
        let (job, answer) = job(f);
        let gone = || CommitError::NotCommitted("the writer is gone (see the log)".into());
        let jobs = self.inner.jobs.as_ref().ok_or_else(gone)?;
        jobs.send(job).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

type Answer<T, E> = oneshot::Receiver<Result<T, CommitError<E>>>;

/// `f` as a job for the writer, and where its answer arrives.
fn job<T, E, F>(f: F) -> (Job, Answer<T, E>)
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(&WriteTransaction) -> Outcome<T, E> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |txn| {
        let (clean, answer): (bool, Result<T, CommitError<E>>) = match f(txn) {
            Outcome::Done(value) => (true, Ok(value)),
            Outcome::Refused(e) => (true, Err(CommitError::Write(e))),
            Outcome::Failed(e) => (false, Err(CommitError::Write(e))),
        };
        let done: Done = Box::new(move |committed| {
            let answer = match (answer, committed) {
                (Ok(value), Ok(())) => Ok(value),
                (Ok(_), Err(why)) => Err(CommitError::NotCommitted(why)),
                (Err(e), _) => Err(e),
            };
            let _ = tx.send(answer);
        });
        (clean, done)
    });
    (job, rx)
}

/// The writer thread: batches waiting writes into one transaction each.
fn writer(db: &Database, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                // Dropping the jobs unapplied tells each waiting caller.
                tracing::error!(error = %e, writes = batch.len(), "embedded store cannot begin a write");
                continue;
            }
        };
        let mut clean = true;
        let mut reports = Vec::with_capacity(batch.len());
        for job in batch {
            let (ok, done) = job(&txn);
            clean &= ok;
            reports.push(done);
        }
        let committed = if clean {
            txn.commit().map_err(|e| e.to_string())
        } else {
            let _ = txn.abort();
            Err("rolled back with a write of the same batch that failed".to_string())
        };
        for done in reports {
            done(committed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn put(txn: &WriteTransaction, k: &str, v: u64) -> Result<(), redb::Error> {
        txn.open_table(T)?.insert(k, v)?;
        Ok(())
    }

    fn get(db: &Database, k: &str) -> Option<u64> {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).ok()?;
        t.get(k).unwrap().map(|v| v.value())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land_and_a_refusal_stops_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("g.redb")).unwrap());
        let gc = GroupCommit::start(db.clone(), "test-writer").unwrap();
        let writes = (0..200u64).map(|i| {
            let gc = gc.clone();
            tokio::spawn(async move {
                gc.write(move |txn| {
                    if i.is_multiple_of(10) {
                        return Outcome::Refused(format!("refused {i}"));
                    }
                    match put(txn, &format!("k{i}"), i) {
                        Ok(()) => Outcome::Done(i),
                        Err(e) => Outcome::Failed(e.to_string()),
                    }
                })
                .await
            })
        });
        for (i, w) in futures_join(writes).await.into_iter().enumerate() {
            let i = i as u64;
            match w {
                Ok(v) => assert_eq!(v, i),
                Err(CommitError::Write(e)) => {
                    assert!(i.is_multiple_of(10));
                    assert_eq!(e, format!("refused {i}"));
                }
                Err(e) => panic!("write {i}: {e}"),
            }
            assert_eq!(
                get(&db, &format!("k{i}")),
                (!i.is_multiple_of(10)).then_some(i)
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_last_handle_closes_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.redb");
        let db = Arc::new(Database::create(&path).unwrap());
        let gc = GroupCommit::start(db.clone(), "test-writer").unwrap();
        gc.write(|txn| match put(txn, "k", 7) {
            Ok(()) => Outcome::Done(()),
            Err(e) => Outcome::<(), String>::Failed(e.to_string()),
        })
        .await
        .unwrap();
        drop((db, gc));
        let again = Database::create(&path).expect("the file is free again");
        assert_eq!(get(&again, "k"), Some(7));
    }

    #[tokio::test]
    async fn a_write_failing_part_way_rolls_back_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("g.redb")).unwrap();
        // Both writes wait in the queue before the writer runs: one batch.
        let (good, good_answer) = job(|txn| match put(txn, "good", 1) {
            Ok(()) => Outcome::Done(()),
            Err(e) => Outcome::Failed(e.to_string()),
        });
        let (bad, bad_answer) = job(|txn| {
            put(txn, "half", 1).unwrap();
            Outcome::<(), String>::Failed("broke after a change".into())
        });
        let (tx, rx) = mpsc::channel();
        tx.send(good).unwrap();
        tx.send(bad).unwrap();
        drop(tx);
        writer(&db, &rx);
        let (good, bad) = (good_answer.await.unwrap(), bad_answer.await.unwrap());
        assert!(matches!(bad, Err(CommitError::Write(_))), "{bad:?}");
        assert!(
            matches!(good, Err(CommitError::NotCommitted(_))),
            "the batch was rolled back: {good:?}"
        );
        assert_eq!(get(&db, "half"), None);
        assert_eq!(get(&db, "good"), None);
    }

    async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
