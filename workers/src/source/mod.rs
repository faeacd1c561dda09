//! What starts flows: HTTP requests and queue messages.

pub mod http;
pub mod queue;
