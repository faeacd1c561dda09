//! The registry's memory and its one writer: a change marks its record in an
//! outbox; the writer persists marked records in the order they were first
//! marked, each retried with back-off until it lands.
//!
//! A record marked again before the writer reached it keeps its place and is
//! written once, with its newest value (the writer reads the value from
//! memory when it writes, so the outbox holds keys, not copies). Every change
//! is numbered; the writer publishes the highest number below which every
//! change is persisted, which is what durable writes and [`Shared::flush`]
//! wait for.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Key, Records, RegistryError, Sealed, Sealer, Store, StoreError};

/// A failed write is retried after this, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// While the backend stays unreachable, the warning is repeated this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What the writer has done, for those waiting on it.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Every change numbered at or below this is persisted.
    persisted: u64,
    /// The writer stopped: nothing more will be persisted.
    closed: bool,
}

/// Records changed in memory and not yet persisted.
#[derive(Debug, Default)]
struct Outbox {
    /// Marked records in the order they were first marked, each with the
    /// number of its oldest unpersisted change.
    queue: VecDeque<(Key, u64)>,
    /// The oldest change of the record being written now.
    writing: Option<u64>,
    /// The number of the latest change.
    last: u64,
    /// The writer stops once the queue is empty.
    closing: bool,
}

impl Outbox {
    fn mark(&mut self, key: Key) {
        self.last += 1;
        if !self.queue.iter().any(|(k, _)| *k == key) {
            self.queue.push_back((key, self.last));
        }
    }

    /// Takes a marked record into the write in progress (which reads its newest value).
    fn absorb(&mut self, key: &Key) {
        self.queue.retain(|(k, _)| k != key);
    }

    fn persisted(&self) -> u64 {
        self.writing
            .into_iter()
            .chain(self.queue.front().map(|(_, n)| *n))
            .min()
            .map_or(self.last, |oldest| oldest - 1)
    }

    fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.writing.is_some())
    }
}

struct State {
    records: Records,
    outbox: Outbox,
}

/// The memory every [`super::Registry`] clone shares with the writer task.
pub(super) struct Shared {
    state: RwLock<State>,
    wake: Notify,
    progress: watch::Sender<Progress>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Changed records not persisted yet, as a metric.
    unwritten: Gauge,
}

impl Shared {
    /// Holds `records` and starts the writer persisting changes to `store`.
    pub(super) fn start(records: Records, store: Arc<dyn Store>, sealer: Sealer) -> Arc<Self> {
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                records,
                outbox: Outbox::default(),
            }),
            wake: Notify::new(),
            progress: watch::channel(Progress::default()).0,
            task: Mutex::new(None),
            unwritten: Gauge::default(),
        });
        let task = tokio::spawn(write_loop(shared.clone(), store, sealer));
        *shared.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        shared
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the records.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Records) -> T) -> T {
        f(&self.state().records)
    }

    /// Changes the records with `f`, which returns the keys it changed, and
    /// queues them for the writer. Returns the change's number (for
    /// [`Shared::persisted`]): 0, which is always persisted, when `f`
    /// changed nothing.
    pub(super) fn change(&self, f: impl FnOnce(&mut Records) -> Vec<Key>) -> u64 {
        let mut st = self.write();
        let changed = f(&mut st.records);
        if changed.is_empty() {
            return 0;
        }
        for key in changed {
            st.outbox.mark(key);
        }
        let number = st.outbox.last;
        self.unwritten.set(st.outbox.pending() as i64);
        drop(st);
        self.wake.notify_one();
        number
    }

    /// Waits until change `number` (and every one before it) is persisted.
    pub(super) async fn persisted(&self, number: u64) -> Result<(), RegistryError> {
        let mut rx = self.progress.subscribe();
        let progress = *rx
            .wait_for(|p| p.persisted >= number || p.closed)
            .await
            .map_err(|_| RegistryError::Closed)?;
        if progress.persisted >= number {
            Ok(())
        } else {
            Err(RegistryError::Closed)
        }
    }

    pub(super) async fn flush(&self) -> Result<(), RegistryError> {
        let last = self.state().outbox.last;
        self.persisted(last).await
    }

    pub(super) fn unpersisted(&self) -> usize {
        self.state().outbox.pending()
    }

    /// The metric of changed records not persisted yet (shares its value).
    pub(super) fn unwritten(&self) -> Gauge {
        self.unwritten.clone()
    }

    pub(super) async fn close(&self, within: Duration) -> usize {
        self.write().outbox.closing = true;
        self.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task
            && tokio::time::timeout(within, &mut task).await.is_err()
        {
            task.abort();
            let _ = task.await;
        }
        self.progress.send_modify(|p| p.closed = true);
        self.unpersisted()
    }
}

/// The writer: persists marked records one at a time, in order.
async fn write_loop(shared: Arc<Shared>, store: Arc<dyn Store>, sealer: Sealer) {
    let mut outage = Outage::default();
    loop {
        let next = {
            let mut st = shared.write();
            match st.outbox.queue.pop_front() {
                Some((key, oldest)) => {
                    st.outbox.writing = Some(oldest);
                    Some(key)
                }
                None if st.outbox.closing => break,
                None => None,
            }
        };
        let Some(key) = next else {
            shared.wake.notified().await;
            continue;
        };
        write(&shared, &*store, &sealer, &key, &mut outage).await;
        let persisted = {
            let mut st = shared.write();
            st.outbox.writing = None;
            shared.unwritten.set(st.outbox.pending() as i64);
            st.outbox.persisted()
        };
        shared
            .progress
            .send_modify(|p| p.persisted = p.persisted.max(persisted));
    }
    shared.progress.send_modify(|p| p.closed = true);
    tracing::debug!(store = store.name(), "registry writer stopped");
}

/// Persists the newest value of `key` (or its removal), retrying until it lands.
async fn write(
    shared: &Shared,
    store: &dyn Store,
    sealer: &Sealer,
    key: &Key,
    outage: &mut Outage,
) {
    let (kind, id) = (key.0, &key.1);
    let mut backoff = common::backoff::Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        let value = {
            let mut st = shared.write();
            st.outbox.absorb(key);
            st.records.value(kind, id)
        };
        let result = match value {
            Some(plaintext) => {
                store
                    .put(Sealed {
                        kind,
                        id: id.clone(),
                        value: sealer.seal(kind, id, &plaintext),
                    })
                    .await
            }
            None => store.delete(kind, id.clone()).await,
        };
        match result {
            Ok(()) => {
                outage.over(store.name());
                return;
            }
            Err(error) => {
                outage.failed(store.name(), &error, shared.unpersisted(), key);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// A run of failed writes, reported when it starts, every [`WARN_EVERY`]
/// while it lasts, and when it ends.
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    warned: Option<Instant>,
}

impl Outage {
    fn failed(&mut self, store: &str, error: &StoreError, unpersisted: usize, key: &Key) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if self.warned.is_none_or(|at| now - at >= WARN_EVERY) {
            self.warned = Some(now);
            tracing::warn!(
                store,
                %error,
                record = %format_args!("{} {}", key.0, key.1),
                unpersisted,
                down_for = ?(now - since),
                "registry unreachable: changes are kept in memory and retried until it answers"
            );
        }
    }

    fn over(&mut self, store: &str) {
        if let Some(since) = self.since.take() {
            self.warned = None;
            tracing::info!(
                store,
                down_for = ?since.elapsed(),
                "registry reachable again; writing the changes kept in memory"
            );
        }
    }
}
