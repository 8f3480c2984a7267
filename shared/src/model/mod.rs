//! The words every layer shares: which table ([`TableId`]), the metadata columns dms2delta adds
//! ([`columns`]), and what the configuration resolved for a table ([`TableSpec`]). Plain data
//! with no behaviour beyond naming, so that storage, decoding, staging and the Delta operations
//! can all speak of a table without depending on each other or on how the configuration is read.

pub mod columns;
mod spec;
mod table_id;

pub use spec::{Column, CompactConfig, DeleteMode, TableSpec, MIN_VACUUM_RETENTION_HOURS};
pub use table_id::TableId;
