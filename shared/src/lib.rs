//! dms2delta: replicate AWS DMS output on S3 into Delta Lake tables.
//!
//! Layers, each using only those below it: `events` and `route` turn notifications and object
//! keys into work; `decode` turns a DMS file into deduplicated change sets (`changes`), which
//! `stage` writes for the commit stage. Nothing here depends on Lambda types.
//!
//! Test scaffolding (`sim`, the simulated DMS source; `faults`, a storage that fails on purpose;
//! `fuzzing`, the fuzz targets' entry points) is compiled only with the `testing` feature, which
//! the CLI, the tests, the benches and the fuzz targets enable and the Lambdas do not;
//! `failpoint` is always there, as a no-op without it.

pub mod bootstrap;
pub mod catalog;
pub mod changes;
pub mod config;
pub mod deadline;
pub mod decode;
#[cfg(feature = "delta")]
pub mod deletion_vector;
pub mod dms;
pub mod error;
pub mod events;
pub mod failpoint;
#[cfg(feature = "testing")]
pub mod faults;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod generation;
#[cfg(feature = "delta")]
pub mod lake;
pub mod lease;
pub mod metrics;
pub mod name_time;
pub mod operations;
#[cfg(feature = "delta")]
pub mod pipeline;
pub mod quarantine;
pub mod route;
#[cfg(feature = "testing")]
pub mod sim;
pub mod stage;
pub mod storage;
pub mod types;
pub mod unify;

pub use error::{BadInputKind, Error, Result, Stage};
