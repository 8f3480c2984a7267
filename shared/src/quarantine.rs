//! Error reports for files that cannot be processed. The file itself stays where it is; a JSON
//! report beside the quarantine prefix says what went wrong and what to do.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{BadInputKind, Error, Result, Stage};
use crate::storage::path_below;

/// The report written for a quarantined file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineReport {
    /// `s3://bucket/key` of the file that failed.
    pub file: String,
    pub bucket: String,
    pub key: String,
    pub etag: Option<String>,
    /// `namespace.schema.table`, when known.
    pub table: Option<String>,
    pub stage: Stage,
    pub kind: BadInputKind,
    pub reason: String,
    /// What the user can do about it.
    pub fix: String,
    /// Whether running reprocess without changing anything could succeed.
    pub retryable: bool,
    /// When the report was written (RFC 3339, UTC).
    pub time: String,
    pub dms2delta_version: String,
}

impl QuarantineReport {
    /// A report for a bad-input error. Other errors are retried, not quarantined.
    pub fn from_error(err: &Error, bucket: &str, key: &str, etag: Option<&str>) -> Option<QuarantineReport> {
        match err {
            Error::BadInput {
                stage,
                table,
                kind,
                reason,
                ..
            } => Some(QuarantineReport {
                file: format!("s3://{bucket}/{key}"),
                bucket: bucket.to_string(),
                key: key.to_string(),
                etag: etag.map(str::to_string),
                table: table.clone(),
                stage: *stage,
                kind: *kind,
                reason: reason.clone(),
                fix: kind.fix().to_string(),
                retryable: false,
                time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                dms2delta_version: env!("CARGO_PKG_VERSION").to_string(),
            }),
            _ => None,
        }
    }
}

/// Where the report for `bucket/key` lives below the quarantine root. Derived from the key, so a
/// retry overwrites its own report instead of piling up copies.
pub fn report_path(root: &Path, bucket: &str, key: &str) -> Path {
    let mut segments = vec![bucket.to_string()];
    segments.extend(key.split('/').map(str::to_string));
    if let Some(last) = segments.last_mut() {
        last.push_str(".error.json");
    }
    // Spelled like the key, so a person finds the report of `Åland/t/LOAD1.csv` where they look;
    // a key that cannot be one (an unroutable key with empty segments) is stored encoded.
    path_below(root, &segments).unwrap_or_else(|_| {
        segments
            .iter()
            .filter(|s| !s.is_empty())
            .fold(root.clone(), |p, s| p.join(s.as_str()))
    })
}

pub async fn write_report(store: &dyn ObjectStore, root: &Path, report: &QuarantineReport) -> Result<Path> {
    let path = report_path(root, &report.bucket, &report.key);
    let body = serde_json::to_vec_pretty(report).map_err(Error::library(report.stage, &path, false))?;
    store
        .put(&path, PutPayload::from(body))
        .await
        .map_err(Error::storage("put quarantine report", &path))?;
    Ok(path)
}

/// Reads every report below the root (for `status` and reprocess).
pub async fn list_reports(store: &dyn ObjectStore, root: &Path) -> Result<Vec<(Path, QuarantineReport)>> {
    use futures::TryStreamExt;
    let metas: Vec<_> = store
        .list(Some(root))
        .try_collect()
        .await
        .map_err(Error::storage("list quarantine", root))?;
    let mut out = Vec::new();
    for m in metas {
        if !m.location.as_ref().ends_with(".error.json") {
            continue;
        }
        let bytes = store
            .get(&m.location)
            .await
            .map_err(Error::storage("get quarantine report", &m.location))?
            .bytes()
            .await
            .map_err(Error::storage("read quarantine report", &m.location))?;
        if let Ok(r) = serde_json::from_slice::<QuarantineReport>(&bytes) {
            out.push((m.location, r));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::InputProblem;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn report_names_file_table_stage_reason_and_fix() {
        let err = InputProblem::new(BadInputKind::FieldCount, "line 3: 4 fields where the table has 5").into_error(
            Stage::Decode,
            "s3://dms/hr/emp/LOAD00000001.csv",
            Some("src.hr.emp"),
        );
        let r = QuarantineReport::from_error(&err, "dms", "hr/emp/LOAD00000001.csv", Some("abc")).unwrap();
        let store = InMemory::new();
        let root = Path::from("quarantine");
        let p = write_report(&store, &root, &r).await.unwrap();
        assert_eq!(p.as_ref(), "quarantine/dms/hr/emp/LOAD00000001.csv.error.json");
        let listed = list_reports(&store, &root).await.unwrap();
        assert_eq!(listed.len(), 1);
        let back = &listed[0].1;
        assert_eq!(back.file, "s3://dms/hr/emp/LOAD00000001.csv");
        assert_eq!(back.table.as_deref(), Some("src.hr.emp"));
        assert_eq!(back.stage, Stage::Decode);
        assert_eq!(back.kind, BadInputKind::FieldCount);
        assert!(back.reason.contains("line 3"));
        assert!(back.fix.contains("columns"));
        // Retryable errors are not quarantined.
        let flaky = Error::Io {
            op: "x",
            source: std::io::Error::other("y"),
        };
        assert!(QuarantineReport::from_error(&flaky, "b", "k", None).is_none());
    }
}
