//! What starts flows: HTTP requests, queue messages and schedules.

pub mod http;
pub mod queue;
pub mod schedule;
