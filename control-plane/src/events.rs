//! The event log: every change (worker down/up/moved, AZ down/up, deploy
//! steps), kept in a bounded ring and broadcast to followers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::model::Event;

const KEEP: usize = 1000;

/// Names the instance of an app and its tenant at the time of an event.
pub type Identify = Box<dyn Fn(&str) -> Option<(String, String)> + Send + Sync>;

/// The event log. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Mutex<(u64, VecDeque<Event>)>>,
    tx: broadcast::Sender<Event>,
    identify: Arc<OnceLock<Identify>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// An empty log.
    pub fn new() -> Self {
        Events {
            inner: Arc::new(Mutex::new((0, VecDeque::new()))),
            tx: broadcast::channel(KEEP).0,
            identify: Arc::default(),
        }
    }

    /// Stamps every later event with its app's instance and tenant, as `identify` names them.
    pub fn identify_with(&self, identify: Identify) {
        let _ = self.identify.set(identify);
    }

    /// Records and broadcasts an event.
    pub fn emit(&self, app: Option<&str>, kind: &str, message: impl Into<String>) {
        let message = message.into();
        let (app_id, tenant) = app
            .and_then(|a| self.identify.get().and_then(|f| f(a)))
            .unzip();
        let event = {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            guard.0 += 1;
            let event = Event {
                seq: guard.0,
                at_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                app: app.map(str::to_string),
                app_id,
                tenant,
                kind: kind.to_string(),
                message,
            };
            if guard.1.len() == KEEP {
                guard.1.pop_front();
            }
            guard.1.push_back(event.clone());
            event
        };
        tracing::info!(app = ?event.app, kind = %event.kind, "{}", event.message);
        let _ = self.tx.send(event);
    }

    /// The events kept so far.
    pub fn recent(&self) -> Vec<Event> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .iter()
            .cloned()
            .collect()
    }

    /// Follows new events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
