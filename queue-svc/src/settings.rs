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
    #[serde(deserialize_with = "checked::prefix")]
    pub sqs_prefix: String,
    /// How long an unconsumed message is kept: 4 days by default, 1 minute to
    /// 14 days (`FABRIC_RETENTION`). Dead letters are kept 14 days.
    #[serde(
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "checked::retention"
    )]
    pub retention: Duration,
    /// Deliveries after which a message moves to its queue's DLQ, for queues
    /// declared without their own (`FABRIC_MAX_DELIVERIES`).
    #[serde(deserialize_with = "checked::max_deliveries")]
    pub max_deliveries: u32,
    /// Back-off after a message's first rollback; it doubles with each
    /// further delivery (`FABRIC_ROLLBACK_BACKOFF`).
    #[serde(with = "humantime_serde")]
    pub rollback_backoff: Duration,
    /// The longest rollback back-off (`FABRIC_ROLLBACK_BACKOFF_MAX`).
    #[serde(with = "humantime_serde")]
    pub rollback_backoff_max: Duration,
    /// The KMS key (id, ARN or alias) SQS encrypts the queues this service
    /// creates with (SSE-KMS; `FABRIC_SQS_KMS_KEY`; the stack's `KeyArn`).
    /// Unset, SQS encrypts them with its own keys (SSE-SQS). `fabric up
    /// --backend aws` sets it to the fabric's key.
    pub sqs_kms_key: Option<String>,
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
            sqs_kms_key: None,
        }
    }
}

impl Settings {
    /// Checks the values against what the backends accept (loading from a
    /// file or the environment checks each field already; this is for
    /// settings built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |name, r: Result<(), &str>| r.map_err(|e| ConfigError::field(name, e));
        field("retention", checked::retention_ok(self.retention))?;
        field(
            "max_deliveries",
            checked::max_deliveries_ok(self.max_deliveries),
        )?;
        field("sqs_prefix", checked::prefix_ok(&self.sqs_prefix))?;
        if self.rollback_backoff > self.rollback_backoff_max
            || self.rollback_backoff_max > Duration::from_secs(12 * 3600)
        {
            return Err(ConfigError::field(
                "rollback_backoff",
                "must not exceed rollback_backoff_max, which must not exceed 12 hours",
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

/// Fields checked as they are read, so a bad value is a configuration error (exit 64).
mod checked {
    use std::time::Duration;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    use super::{MAX_RETENTION, MIN_RETENTION};

    pub(super) fn retention_ok(d: Duration) -> Result<(), &'static str> {
        (MIN_RETENTION..=MAX_RETENTION)
            .contains(&d)
            .then_some(())
            .ok_or("must be between 1 minute and 14 days")
    }

    pub(super) fn max_deliveries_ok(n: u32) -> Result<(), &'static str> {
        (1..=1000)
            .contains(&n)
            .then_some(())
            .ok_or("must be between 1 and 1000")
    }

    pub(super) fn prefix_ok(p: &str) -> Result<(), &'static str> {
        (p.len() <= 16 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .then_some(())
            .ok_or("at most 16 letters, digits or '-'")
    }

    pub(super) fn retention<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = humantime_serde::deserialize(d)?;
        retention_ok(v).map(|()| v).map_err(D::Error::custom)
    }

    pub(super) fn max_deliveries<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = u32::deserialize(d)?;
        max_deliveries_ok(v).map(|()| v).map_err(D::Error::custom)
    }

    pub(super) fn prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let v = String::deserialize(d)?;
        prefix_ok(&v).map(|()| v).map_err(D::Error::custom)
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
        let read = |json: &str| serde_json::from_str::<Settings>(json);
        assert_eq!(
            read(r#"{"retention": "7d"}"#).unwrap().retention.as_secs(),
            7 * 86400
        );
        for bad in [
            r#"{"retention": "15d"}"#,
            r#"{"max_deliveries": 0}"#,
            r#"{"sqs_prefix": "no spaces"}"#,
            r#"{"backend": "s3"}"#,
        ] {
            let e = read(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
    }
}
