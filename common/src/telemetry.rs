//! Logging through `tracing`: human or JSON lines (`FABRIC_LOG_FORMAT`), filtered by `RUST_LOG`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
