//! One error type for the library. Every variant carries the context a user needs (which file,
//! which table, which stage) and answers two questions the callers act on: can a retry help, and
//! must the input be quarantined.

use std::fmt;

/// The pipeline stage an error happened in; named in error reports and quarantine files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Config,
    Route,
    Decode,
    Stage,
    Commit,
    Compact,
    Reprocess,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Stage::Config => "config",
            Stage::Route => "route",
            Stage::Decode => "decode",
            Stage::Stage => "stage",
            Stage::Commit => "commit",
            Stage::Compact => "compact",
            Stage::Reprocess => "reprocess",
        };
        f.write_str(s)
    }
}

/// Why an input file cannot be used. Each kind maps to a fix the user can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadInputKind {
    /// The bytes are not a readable Parquet / gzip / CSV file.
    CorruptFile,
    /// A CSV row has a different number of fields than the table's columns imply.
    FieldCount,
    /// An `Op` value other than I, U or D.
    UnknownOp,
    /// A key column is null or empty, or missing from the file.
    MissingKey,
    /// A value cannot be read as its column's type.
    BadValue,
    /// Bytes that are not UTF-8 where text is expected.
    InvalidUtf8,
    /// A headerless CSV table without configured columns.
    NoColumns,
    /// A table without configured key columns.
    NoKey,
    /// The object key does not fit the DMS layout of any configured source.
    UnroutableKey,
    /// A change whose schema cannot be applied to the existing table.
    IncompatibleSchema,
    /// A table name the configuration does not know in a CDC_TXN file.
    UnknownTable,
    /// A field or file beyond the configured limits.
    TooLarge,
    /// A staged change set for a lake table no configured table lands at any more.
    TableNotConfigured,
}

impl BadInputKind {
    /// What the user can do about it, in plain words.
    pub fn fix(self) -> &'static str {
        match self {
            BadInputKind::CorruptFile => {
                "the object is damaged or not a DMS output file: check the DMS task's S3 settings \
                 (DataFormat, CompressionType), re-upload or reload the table, then run reprocess"
            }
            BadInputKind::FieldCount => {
                "the configured columns do not match the file: update the table's `columns` (or \
                 `table_definitions`) to the source table's current columns, or enable \
                 AddColumnName on the DMS endpoint, then run reprocess"
            }
            BadInputKind::UnknownOp => {
                "the first field must be I, U or D: check that the file is DMS CDC output and that \
                 the configured columns match, then run reprocess"
            }
            BadInputKind::MissingKey => {
                "every row needs its key columns: check the table's `keys` in the configuration and \
                 the source table's primary key / replica identity, then run reprocess"
            }
            BadInputKind::BadValue => {
                "a value does not match its configured type: correct the column's `type` (or, for \
                 digits beyond a decimal's scale, its `precision` and `scale`) in the \
                 configuration, then run reprocess"
            }
            BadInputKind::InvalidUtf8 => {
                "DMS writes UTF-8: check the source database's character set and the DMS endpoint \
                 settings, then reload the table"
            }
            BadInputKind::NoColumns => {
                "headerless CSV needs the table's columns: add `columns` (or the DMS \
                 `table_definitions` JSON) for this table, or enable AddColumnName on the DMS \
                 endpoint, then run reprocess"
            }
            BadInputKind::NoKey => {
                "add the table with its `keys` to the source's `tables` in the configuration (or \
                 mark ColumnIsPk in `table_definitions`), then run reprocess"
            }
            BadInputKind::UnroutableKey => {
                "the key must look like [bucket_folder/]schema/table/[date folders/]file, or \
                 [bucket_folder/]schema/table/<partition folder>/LOAD… for a parallel full load: \
                 check the source's `bucket_folder`, `cdc_path` and `date_partitioning` settings, \
                 then run reprocess"
            }
            BadInputKind::IncompatibleSchema => {
                "the column's type changed in a way Delta cannot widen, or a Parquet column's type \
                 cannot be converted to its configured `type` without loss: set the configured \
                 type to the source column's type, or rebuild the table (drop it and reload from \
                 DMS), then run reprocess"
            }
            BadInputKind::UnknownTable => {
                "add the table to the source's `tables` (or exclude it with a rule), then run \
                 reprocess"
            }
            BadInputKind::TooLarge => {
                "the file exceeds the `limits.*` setting the reason names: raise it in the \
                 configuration (the limits bound decode memory, so give the decode function memory \
                 for it) or split the source change, then run reprocess"
            }
            BadInputKind::TableNotConfigured => {
                "if the table should still replicate, restore its settings (or map its new name \
                 with a rename rule); then run reprocess: it decodes the DMS file again under the \
                 current configuration, so a renamed table's changes reach its new name, and an \
                 excluded table's changes are dropped and this report removed"
            }
        }
    }
}

impl fmt::Display for BadInputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(v.as_str().unwrap_or("bad_input"))
    }
}

/// The library's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration document is invalid; `path` names the offending field.
    #[error("configuration error at `{path}`: {reason}")]
    Config { path: String, reason: String },

    /// An input file that can never be processed as it is; it gets quarantined.
    #[error("{stage} failed for {file}{}: {kind}: {reason}. Fix: {}", table.as_ref().map(|t| format!(" (table {t})")).unwrap_or_default(), kind.fix())]
    BadInput {
        stage: Stage,
        file: String,
        table: Option<String>,
        kind: BadInputKind,
        reason: String,
    },

    /// A storage call failed; most of these are transient.
    #[error("storage error during {op} on {location}: {source}")]
    Storage {
        op: &'static str,
        location: String,
        #[source]
        source: object_store::Error,
    },

    /// A local file-system call failed (temporary spool files).
    #[error("i/o error during {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The object named by an event no longer exists (e.g. DMS deleted it on a truncate).
    #[error("{location} no longer exists")]
    Gone { location: String },

    /// An event payload that is not one of the supported shapes.
    #[error("unsupported event: {reason}")]
    Event { reason: String },

    /// A conflict with a concurrent writer that outlived the configured retries.
    /// The Delta engine's answer to the last attempt is the source.
    #[cfg(feature = "delta")]
    #[error("commit to {table} still conflicting after {attempts} attempts: {source}")]
    Conflict {
        table: String,
        attempts: u32,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    /// The Delta engine failed; whether a retry helps is read from the engine's error
    /// ([`delta_is_retryable`]).
    #[cfg(feature = "delta")]
    #[error("{stage} internal error on {context}: {source}")]
    Delta {
        stage: Stage,
        context: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    /// A library below (Parquet, Arrow, the query engine, JSON) failed on our data; the caller
    /// knows whether the step may pass on a retry.
    #[error("{stage} internal error on {context}: {source}")]
    Library {
        stage: Stage,
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        retryable: bool,
    },

    /// A failure inside the Delta engine or Arrow that is not about the input.
    #[error("{stage} internal error on {context}: {reason}")]
    Internal {
        stage: Stage,
        context: String,
        reason: String,
        retryable: bool,
    },

    /// A failpoint fired (tests only): behaves like a crash of the invocation.
    #[error("failpoint `{0}` fired")]
    Failpoint(String),
}

impl Error {
    /// Something of our own making went wrong in `stage` (not the input, not storage): a retry
    /// does not help.
    pub fn internal(stage: Stage, context: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Internal {
            stage,
            context: context.into(),
            reason: reason.to_string(),
            retryable: false,
        }
    }

    /// Whether running the same work again may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config { .. } | Error::BadInput { .. } | Error::Event { .. } => false,
            Error::Gone { .. } => false,
            Error::Storage { source, .. } => storage_is_transient(source),
            Error::Io { .. } | Error::Failpoint(_) => true,
            #[cfg(feature = "delta")]
            Error::Conflict { .. } => true,
            #[cfg(feature = "delta")]
            Error::Delta { source, .. } => delta_is_retryable(source),
            Error::Internal { retryable, .. } | Error::Library { retryable, .. } => *retryable,
        }
    }

    /// A library's failure on `context`, with it as the source.
    pub(crate) fn library<E: std::error::Error + Send + Sync + 'static>(
        stage: Stage,
        context: impl fmt::Display,
        retryable: bool,
    ) -> impl FnOnce(E) -> Error {
        let context = context.to_string();
        move |e| Error::Library {
            stage,
            context,
            source: Box::new(e),
            retryable,
        }
    }

    /// Whether the input must be set aside with a report instead of retried.
    pub fn is_quarantine(&self) -> bool {
        matches!(self, Error::BadInput { .. })
    }

    pub(crate) fn storage(op: &'static str, location: impl fmt::Display) -> impl FnOnce(object_store::Error) -> Error {
        let location = location.to_string();
        move |source| match source {
            object_store::Error::NotFound { .. } => Error::Gone { location },
            source => Error::Storage { op, location, source },
        }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { op, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a storage failure may pass on a retry: the one answer for direct store calls and for
/// the Delta engine's. Refusals (permissions, credentials, a path or operation the store does
/// not take) stay refusals; anything else (timeouts, throttling, a precondition another writer
/// broke) may not happen again. A missing object is transient for the engine, which reads the
/// files a snapshot names and finds one removed since (a compaction's vacuum): reading the log
/// again names the files that are there. Direct calls make a missing object [`Error::Gone`]
/// first ([`Error::storage`]), which is final.
pub fn storage_is_transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    )
}

/// Whether an engine error means another writer got there first (re-read and retry), told by
/// the error's type.
#[cfg(feature = "delta")]
pub fn is_conflict(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    use deltalake::DeltaTableError;
    match e {
        DeltaTableError::VersionAlreadyExists(_) => true,
        DeltaTableError::Transaction { source } => matches!(
            source,
            TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::VersionAlreadyExists(_)
        ),
        _ => false,
    }
}

/// Whether an engine error may pass on a retry: a lost commit race, a storage failure that
/// [`storage_is_transient`] calls transient, or an I/O error.
#[cfg(feature = "delta")]
pub fn delta_is_retryable(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::DeltaTableError;
    match e {
        DeltaTableError::ObjectStore { source } => storage_is_transient(source),
        DeltaTableError::Io { .. } => true,
        e => is_conflict(e),
    }
}

/// Where in a file a decode problem sits; turned into an [`Error::BadInput`] by the caller that
/// knows the file's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputProblem {
    pub kind: BadInputKind,
    pub reason: String,
}

impl InputProblem {
    pub fn new(kind: BadInputKind, reason: impl Into<String>) -> Self {
        InputProblem {
            kind,
            reason: reason.into(),
        }
    }

    pub fn into_error(self, stage: Stage, file: &str, table: Option<&str>) -> Error {
        Error::BadInput {
            stage,
            file: file.to_string(),
            table: table.map(str::to_string),
            kind: self.kind,
            reason: self.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_message_names_file_table_stage_reason_and_fix() {
        let e = InputProblem::new(BadInputKind::UnknownOp, "row 3: Op `X`").into_error(
            Stage::Decode,
            "s3://b/hr/emp/20240101-000000000.csv",
            Some("hr.emp"),
        );
        let msg = e.to_string();
        assert!(msg.contains("decode failed for s3://b/hr/emp/20240101-000000000.csv"));
        assert!(msg.contains("table hr.emp"));
        assert!(msg.contains("unknown_op"));
        assert!(msg.contains("row 3: Op `X`"));
        assert!(msg.contains("Fix: the first field must be I, U or D"));
        assert!(!e.is_retryable());
        assert!(e.is_quarantine());
    }

    #[test]
    fn storage_not_found_becomes_gone_and_others_retry() {
        let gone = Error::storage("get", "s3://b/k")(object_store::Error::NotFound {
            path: "k".into(),
            source: "x".into(),
        });
        assert!(matches!(gone, Error::Gone { .. }));
        assert!(!gone.is_retryable());
        let flaky = Error::storage("get", "s3://b/k")(object_store::Error::Generic {
            store: "S3",
            source: "503 SlowDown".into(),
        });
        assert!(flaky.is_retryable());
        assert!(!flaky.is_quarantine());
    }

    fn denied() -> object_store::Error {
        object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "403".into(),
        }
    }

    #[test]
    fn a_library_failure_keeps_its_cause() {
        let cause = serde_json::from_str::<u8>("x").unwrap_err();
        let e = Error::library(Stage::Stage, "staged/t/a.parquet", false)(cause);
        assert_eq!(
            e.to_string(),
            "stage internal error on staged/t/a.parquet: expected value at line 1 column 1"
        );
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert!(source.downcast_ref::<serde_json::Error>().is_some(), "{source:?}");
        assert!(!e.is_retryable());
    }

    #[cfg(feature = "delta")]
    #[test]
    fn engine_errors_keep_their_cause_and_are_classified_by_type() {
        use deltalake::kernel::transaction::TransactionError;
        use deltalake::DeltaTableError;
        let lost = DeltaTableError::Transaction {
            source: TransactionError::VersionAlreadyExists(7),
        };
        assert!(is_conflict(&lost) && delta_is_retryable(&lost));
        // A message that merely says so is no conflict: only the type tells.
        let said = DeltaTableError::Generic("version 7 already exists".into());
        assert!(!is_conflict(&said) && !delta_is_retryable(&said));

        let e = Error::Delta {
            stage: Stage::Commit,
            context: "s3://lake/t".into(),
            source: Box::new(lost),
        };
        assert!(
            e.to_string().starts_with("commit internal error on s3://lake/t: "),
            "{e}"
        );
        let source = std::error::Error::source(&e).expect("the cause is kept");
        // Boxed (the engine's error is large), so the chain holds the box.
        let engine = source.downcast_ref::<Box<DeltaTableError>>().map(|b| &**b);
        assert!(
            matches!(engine, Some(DeltaTableError::Transaction { .. })),
            "{source:?}"
        );
        assert!(e.is_retryable());
    }

    #[cfg(feature = "delta")]
    #[test]
    fn storage_failures_get_one_answer_on_both_paths() {
        use deltalake::DeltaTableError;
        // A refusal stays a refusal whether the store was called directly or by the engine.
        let direct = Error::storage("put", "s3://b/k")(denied());
        let engine = Error::Delta {
            stage: Stage::Commit,
            context: "s3://b/t".into(),
            source: Box::new(DeltaTableError::ObjectStore { source: denied() }),
        };
        assert!(!direct.is_retryable() && !engine.is_retryable());
        // A file the engine's snapshot names but that has gone: read the log again.
        let vanished = DeltaTableError::ObjectStore {
            source: object_store::Error::NotFound {
                path: "part-0.parquet".into(),
                source: "404".into(),
            },
        };
        assert!(delta_is_retryable(&vanished));
        let slow = object_store::Error::Generic {
            store: "S3",
            source: "503 SlowDown".into(),
        };
        assert!(storage_is_transient(&slow));
        assert!(delta_is_retryable(&DeltaTableError::ObjectStore { source: slow }));
    }
}
