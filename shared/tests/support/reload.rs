//! The reload fixture of the contract, change feed, history and DMS-signal tests: a PostgreSQL
//! table (header CSV, no sequence column) loaded, changed, reloaded by DMS "Reload table" (the
//! snapshot written as LOAD files again under the same names) and changed again, each file
//! with the LastModified DMS gave it, which reload detection reads.

use super::Mini;

/// The table's source: `pg.app.t`, keyed by `id`.
pub const RELOADED: &str = r#"
  - name: pg
    bucket: dms
    csv: { header: true }
    tables:
      - schema: app
        table: t
        keys: [id]
"#;

/// A DMS file: key, content, and when DMS wrote it (its LastModified).
pub type Written = (&'static str, &'static [u8], &'static str);

/// Gen 0: rows 1-3. C1: 1 updated, 4 inserted, 3 deleted. While DMS was not capturing, the
/// source deleted 2, inserted 3 again, updated 4 and inserted 5; the reload's snapshot (same
/// name as the first load) holds that. C2, after the reload: 5 updated, 6 inserted.
pub const GEN0: Written = (
    "app/t/LOAD00000001.csv",
    b"id,name\n1,one\n2,two\n3,three\n",
    "2024-05-28T10:00:00Z",
);
pub const C1: Written = (
    "app/t/20240528-100500000.csv",
    b"Op,id,name\nU,1,one-v2\nI,4,four\nD,3,\n",
    "2024-05-28T10:05:30Z",
);
pub const GEN1: Written = (
    "app/t/LOAD00000001.csv",
    b"id,name\n1,one-v2\n3,three-again\n4,four-v2\n5,five\n",
    "2024-05-28T11:00:00Z",
);
pub const C2: Written = (
    "app/t/20240528-111000000.csv",
    b"Op,id,name\nU,5,five-v2\nI,6,six\n",
    "2024-05-28T11:10:20Z",
);

/// Puts the file in the mini lab's bucket with its LastModified.
pub fn put_written(m: &Mini, (key, bytes, written): Written) {
    m.put(key, bytes);
    let t: std::time::SystemTime = chrono::DateTime::parse_from_rfc3339(written).unwrap().into();
    std::fs::File::options()
        .write(true)
        .open(m.dir.path().join("bucket").join(key))
        .unwrap()
        .set_modified(t)
        .unwrap();
}
