//! The commit function as a library: `main.rs` wires it into the Lambda runtime, and the
//! event-driven end-to-end tests drive the same handler from SQS queues on the local endpoint.

pub mod glue;
pub mod handler;
