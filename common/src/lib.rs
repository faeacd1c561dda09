//! Pieces every Worker Fabric component shares: envelope encryption, app tokens,
//! names, configuration, telemetry, shutdown and the operational HTTP endpoints.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backoff;
pub mod coalesce;
pub mod config;
pub mod envelope;
#[cfg(feature = "embedded")]
pub mod group_commit;
pub mod http;
#[cfg(feature = "kms")]
pub mod kms;
pub mod memory;
mod random;
pub mod routes;
pub mod secret_file;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod tombstone;
