//! The worker runtime: runs one instance of one app's flows.
//!
//! Empty for now: the flow runtime (manifest loading, sources, processors,
//! strategies) is built here next; see the project's docs for the plan.
#![forbid(unsafe_code)]
