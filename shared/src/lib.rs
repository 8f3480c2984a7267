//! dms2delta: replicate AWS DMS output on S3 into Delta Lake tables.
//!
//! Layers, bottom first. A module uses only modules of lower layers, never one of its own layer
//! or above, and the files of a folder module (`operations`, `decode`) never use each other in a
//! cycle; `tests/layers.rs` reads the source and fails otherwise. Nothing here depends on Lambda
//! types.
//!
//! 1. `error`, `types`, `generation`, `name_time`, `deadline`, `metrics`, `snapshot_cache`, `tombstone_cache`, `deletion_vector`, `faults`: the words and codecs everything shares: errors, column types, sequences and floors, file-name times, deadlines, report shapes, held Delta snapshots and tombstones, the deletion-vector format, a failing store for tests.
//! 2. `model`, `storage`, `events`, `failpoint`, `lease`: table identity, metadata column names and table specs; where things are stored (with its own options); notifications read into work; crash points; leases.
//! 3. `config`, `changes`, `lake`, `quarantine`: the configuration resolved into table specs; change sets (column schema, sequences, deduplication); opening Delta tables; quarantine reports.
//! 4. `route`, `stage`, `dms`, `unify`, `bootstrap`, `sim`: object keys into tables; the staging area; DMS's table statistics; schema unification; start-up; the simulated DMS source.
//! 5. `decode`: a DMS file into deduplicated change sets.
//! 6. `operations`, `fuzzing`: the stages as operations (decode, commit, compact, truncate, history, reprocess); the fuzz targets' entry points.
//! 7. `pipeline`, `catalog`: the stages run together (CLI, tests); the Glue Data Catalog following commits.
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
pub mod model;
pub mod name_time;
pub mod operations;
#[cfg(feature = "delta")]
pub mod pipeline;
pub mod quarantine;
pub mod route;
#[cfg(feature = "testing")]
pub mod sim;
#[cfg(feature = "delta")]
pub mod snapshot_cache;
pub mod stage;
pub mod storage;
#[cfg(feature = "delta")]
pub mod tombstone_cache;
pub mod types;
pub mod unify;

pub use error::{BadInputKind, Error, Result, Stage};
