//! Logging through `tracing`: human or JSON lines (`FABRIC_LOG_FORMAT`), filtered by `RUST_LOG`,
//! and the `kind` field that names the events a reader counts.

use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event (the default).
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::field(
                "FABRIC_LOG_FORMAT",
                format!("{other:?} is not one of human, json"),
            )),
        }
    }
}

/// Installs the global subscriber for `component`; logs go to stderr.
///
/// `RUST_LOG` filters (default `info`); `FABRIC_LOG_FORMAT` picks the format.
/// Calling it twice keeps the first subscriber (tests start several components).
pub fn init(component: &str) -> Result<(), ConfigError> {
    let format: LogFormat = std::env::var("FABRIC_LOG_FORMAT")
        .unwrap_or_default()
        .parse()?;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| ConfigError::field("RUST_LOG", format!("{spec:?}: {e}")))?,
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if installed.is_ok() {
        tracing::debug!(component, ?format, "logging initialised");
    }
    Ok(())
}

/// What a log event reports, written as its `kind` field
/// (`tracing::info!(kind = EventKind::EffectDuplicate.as_str(), …)`).
///
/// Readers that count events (the chaos verdict, an alert) match this field,
/// never the message text, so rewording a message cannot change a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A queue delivery's flow completed but its ack failed: the message
    /// comes back after its lock, and its effects already happened.
    DeliveryAckFailed,
    /// A queue delivery's flow failed; the message is released to be tried again.
    DeliveryRolledBack,
    /// A queue delivery's flow failed on its last allowed delivery; the
    /// message went to the dead-letter queue.
    DeliveryDeadLettered,
    /// `idempotent` stopped an event whose key was already processed.
    EffectDuplicate,
    /// A process's shutdown grace ran out with work still under way.
    GraceExpired,
    /// The control plane SIGKILLed a worker that outlived its grace period.
    WorkerKilled,
}

impl EventKind {
    /// Every kind, for tests and readers that list them.
    pub const ALL: [EventKind; 6] = [
        EventKind::DeliveryAckFailed,
        EventKind::DeliveryRolledBack,
        EventKind::DeliveryDeadLettered,
        EventKind::EffectDuplicate,
        EventKind::GraceExpired,
        EventKind::WorkerKilled,
    ];

    /// The `kind` field's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::DeliveryAckFailed => "delivery.ack_failed",
            EventKind::DeliveryRolledBack => "delivery.rolled_back",
            EventKind::DeliveryDeadLettered => "delivery.dead_lettered",
            EventKind::EffectDuplicate => "effect.duplicate",
            EventKind::GraceExpired => "shutdown.grace_expired",
            EventKind::WorkerKilled => "worker.killed",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an event kind"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_reads_back_as_itself() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        assert!("duplicate; stopped".parse::<EventKind>().is_err());
    }

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("".parse::<LogFormat>().unwrap(), LogFormat::Human);
        let err = "xml".parse::<LogFormat>().unwrap_err().to_string();
        assert!(
            err.contains("FABRIC_LOG_FORMAT") && err.contains("xml"),
            "{err}"
        );
    }
}
