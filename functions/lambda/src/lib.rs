//! The Lambda glue the four functions share, so that each handler reads as wiring:
//!
//! - [`Invocation`]: what a function is invoked with. SQS batches are read into
//!   `aws_lambda_events`' typed [`SqsEvent`]; the other shapes (S3 notifications, EventBridge
//!   events) stay JSON for `dms2delta::events`, which reads every envelope they come in.
//! - [`ByTable`]: one invocation's work grouped by table, each table run once, and the outcome
//!   fanned back out to the messages that named it ([`SqsBatchResponse`] partial batch failures,
//!   or one summary for a direct invocation).
//! - [`cold_start`] and [`serve`]: the state is built once per execution environment and each
//!   invocation reaches its handler with the [`Deadline`] from the Lambda [`Context`].

#[cfg(feature = "dms")]
pub mod dms;
mod invocation;
mod serve;
mod tables;

pub use invocation::{batch_response, Invocation};
pub use serve::{cold_start, deadline_of, invoke, serve};
pub use tables::{ByTable, Outcome, Ran, Table};

pub use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
pub use dms2delta::deadline::Deadline;
pub use lambda_runtime::{Context, Error, LambdaEvent};
