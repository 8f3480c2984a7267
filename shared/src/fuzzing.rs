//! Entry points for the fuzz targets (fuzz/, cargo-fuzz) and for the test that replays their
//! corpus on stable Rust (shared/tests/fuzz_corpus.rs). Each takes arbitrary bytes and must
//! return, never panic: bad input is an error value, whatever it is.

use std::io::Write;
use std::sync::OnceLock;

use crate::config::{Config, Validated};
use crate::decode::{decode_file, FileContext};
use crate::route::{route, Route};

/// A configuration covering every decoder path: headerless CSV with a sequence and a timestamp
/// column, CSV with a header, Parquet, a date-partitioned source, and transaction-ordered files.
const CONFIG: &str = "lake: /nonexistent/lake
staging: /nonexistent/staged
quarantine: /nonexistent/quarantine
sources:
  - name: mysql
    bucket: dms
    bucket_folder: dms/mysql
    timestamp_column: ts
    sequence_column: AR_H_CHANGE_SEQ
    cdc_path: txn
    csv: { no_sup_value: '@@nosup@@' }
    tables:
      - schema: s
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT4 }
          - { name: name, type: STRING }
          - { name: amount, type: NUMERIC, precision: 10, scale: 2 }
          - { name: at, type: DATETIME }
          - { name: ok, type: BOOLEAN }
          - { name: f, type: REAL8 }
      - { schema: s, table: p, keys: [id] }
  - name: pg
    bucket: dms
    bucket_folder: dms/pg
    csv: { header: true }
    date_partitioning: { enabled: true }
    tables:
      - { schema: s, table: t, keys: [id, region] }
";

/// `None` only if CONFIG itself were invalid (the unit test below would fail first).
fn config() -> Option<&'static Validated> {
    static C: OnceLock<Option<Validated>> = OnceLock::new();
    C.get_or_init(|| Config::from_text(CONFIG).ok()).as_ref()
}

/// The keys the decoder is fed under: one per layout the configuration has.
pub const KEYS: &[&str] = &[
    "dms/mysql/s/t/20240528-195141380.csv",
    "dms/mysql/s/t/LOAD00000001.csv",
    "dms/mysql/s/p/20240528-195141380.parquet",
    "dms/mysql/txn/CDC_TXN-20240528195141380.csv",
    "dms/pg/s/t/2024/05/28/20240528-195141380.csv",
];

/// Decodes `data` as the DMS file at `KEYS[which % KEYS.len()]`. Returns whether it decoded.
pub fn decode_bytes(which: usize, data: &[u8]) -> bool {
    let key = KEYS[which % KEYS.len()];
    let Some(cfg) = config() else {
        return false;
    };
    let Ok(Route::File(routed)) = route(cfg, "dms", key) else {
        return false;
    };
    let table = match (&routed.schema, &routed.table) {
        (Some(s), Some(t)) => cfg.table(routed.source, s, t).ok().flatten(),
        _ => None,
    };
    let Ok(mut file) = tempfile::tempfile() else {
        return false;
    };
    if file.write_all(data).is_err() {
        return false;
    }
    let source_file = format!("s3://dms/{key}");
    let ctx = FileContext {
        config: cfg,
        routed: &routed,
        source_file: &source_file,
        table: table.as_ref(),
        max_field_bytes: cfg.config.limits.max_field_bytes,
    };
    decode_file(file, &ctx).is_ok()
}

/// Routes `data` (lossily as UTF-8) as an object key. Returns whether it named a DMS file.
pub fn route_key(data: &[u8]) -> bool {
    let key = String::from_utf8_lossy(data);
    config().is_some_and(|c| matches!(route(c, "dms", &key), Ok(Route::File(_))))
}

/// Parses `data` as a Lambda payload, and as an SQS message body. Returns whether either named
/// objects.
pub fn parse_event(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let as_body = crate::events::parse_body(&text).is_ok_and(|o| !o.is_empty());
    let as_payload = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| crate::events::parse(&v).ok())
        .is_some();
    as_body || as_payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_routes_and_good_input_decodes() {
        assert!(config().is_some(), "CONFIG does not validate");
        for k in KEYS {
            assert!(route_key(k.as_bytes()), "{k}");
        }
        assert!(decode_bytes(
            0,
            b"I,2024-05-28 19:51:41.380000,1,a,1.00,2024-05-28 19:51:41,true,1.5,20240528195141380000000000000000061\n"
        ));
        assert!(!decode_bytes(0, b"\x00\x01garbage"));
        assert!(parse_event(
            br#"{"Records":[{"eventSource":"aws:s3","s3":{"bucket":{"name":"dms"},"object":{"key":"a"}}}]}"#
        ));
    }
}
