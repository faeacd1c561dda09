//! queue-svc's own settings, beside the common service fields in the TOML file and `FABRIC_*` variables.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use common::config::ConfigError;
use serde::{Deserialize, Serialize};

/// The longest retention SQS allows, and so ours.
pub const MAX_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// The shortest retention SQS allows.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

/// Which store holds the queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A redb file in the data directory: one machine, no AWS needed.
    #[default]
    Embedded,
    /// Amazon SQS (or an emulator) through aws-config's default chain.
    Sqs,
}

impl FromStr for BackendKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(BackendKind::Embedded),
            "sqs" => Ok(BackendKind::Sqs),
            other => Err(ConfigError::field(
                "backend",
                format!("{other:?} is not a backend; expected \"embedded\" or \"sqs\""),
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Embedded => "embedded",
            BackendKind::Sqs => "sqs",
        })
    }
}

/// queue-svc's settings; every field has a working local default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where queues live: `embedded` (a redb file in `data_dir`) or `sqs` (`FABRIC_BACKEND`).
    pub backend: BackendKind,
    /// Prefix of every SQS queue this service creates, so a fabric's queues
    /// are told apart from others in the account (`FABRIC_SQS_PREFIX`).
    pub sqs_prefix: String,
    /// How long an unconsumed message is kept: 4 days by default, 1 minute to
    /// 14 days (`FABRIC_RETENTION`). Dead letters are kept 14 days.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Deliveries after which a message moves to its queue's DLQ, for queues
    /// declared without their own (`FABRIC_MAX_DELIVERIES`).
    pub max_deliveries: u32,
    /// Back-off after a message's first rollback; it doubles with each
    /// further delivery (`FABRIC_ROLLBACK_BACKOFF`).
    #[serde(with = "humantime_serde")]
    pub rollback_backoff: Duration,
    /// The longest rollback back-off (`FABRIC_ROLLBACK_BACKOFF_MAX`).
    #[serde(with = "humantime_serde")]
    pub rollback_backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backend: BackendKind::Embedded,
            sqs_prefix: "fabric-".into(),
            retention: Duration::from_secs(4 * 24 * 3600),
            max_deliveries: 5,
            rollback_backoff: Duration::from_secs(1),
            rollback_backoff_max: Duration::from_secs(300),
        }
    }
}

impl Settings {
    /// Checks the values against what the backends accept.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_RETENTION..=MAX_RETENTION).contains(&self.retention) {
            return Err(ConfigError::field(
                "retention",
                "must be between 1 minute and 14 days",
            ));
        }
        if !(1..=1000).contains(&self.max_deliveries) {
            return Err(ConfigError::field(
                "max_deliveries",
                "must be between 1 and 1000",
            ));
        }
        if self.rollback_backoff > self.rollback_backoff_max
            || self.rollback_backoff_max > Duration::from_secs(12 * 3600)
        {
            return Err(ConfigError::field(
                "rollback_backoff",
                "must not exceed rollback_backoff_max, which must not exceed 12 hours",
            ));
        }
        let prefix_ok = self.sqs_prefix.len() <= 16
            && self
                .sqs_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !prefix_ok {
            return Err(ConfigError::field(
                "sqs_prefix",
                "at most 16 letters, digits or '-'",
            ));
        }
        Ok(())
    }

    /// The back-off before a rolled-back message is visible again, after `deliveries`.
    pub fn backoff(&self, deliveries: u32) -> Duration {
        let doublings = deliveries.saturating_sub(1).min(20);
        self.rollback_backoff
            .saturating_mul(1 << doublings)
            .min(self.rollback_backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_backoff_doubles_to_a_ceiling() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.backoff(1), Duration::from_secs(1));
        assert_eq!(s.backoff(3), Duration::from_secs(4));
        assert_eq!(s.backoff(100), Duration::from_secs(300));
        assert_eq!("sqs".parse::<BackendKind>().unwrap(), BackendKind::Sqs);
        assert!("s3".parse::<BackendKind>().is_err());
        let bad = Settings {
            retention: Duration::from_secs(15 * 24 * 3600),
            ..Settings::default()
        };
        assert!(bad.validate().is_err());
    }
}
