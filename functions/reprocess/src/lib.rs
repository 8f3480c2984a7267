//! The reprocess function as a library: `main.rs` wires it into the Lambda runtime, and the
//! end-to-end tests drive the same handler against the local S3/SQS endpoint.

pub mod handler;
pub mod queues;
