//! What the logs may carry at info level: where (files, tables, stages) and how much, never the
//! rows themselves. A distinctive value in good and bad rows must not reach any log line, while
//! the pipeline's own events do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use dms2delta::failpoint::Failpoints;
use support::Mini;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SOURCE: &str = "  - name: shop
    bucket: dms
    bucket_folder: dms
    tables:
      - schema: s
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT4 }
          - { name: name, type: STRING }
          - { name: n, type: INT4 }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_values_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // Global, so tasks on every runtime thread log here too (the only test in this binary).
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let m = Mini::new(SOURCE, "");
    // Good rows, then bad ones of every kind that names a value's position.
    m.apply(
        "dms/s/t/20240601-000000001.csv",
        b"I,1,SECRETNAME1,2\nI,2,SECRETNAME2,3\n",
    )
    .await;
    for (i, bad) in [
        &b"SECRETOP,1,a,2\n"[..],
        b"I,SECRETKEY,a,2\n",
        b"I,1,a,SECRETINT\n",
        b"I,1,SECRETFIELDS\n",
    ]
    .iter()
    .enumerate()
    {
        let key = format!("dms/s/t/20240601-00000001{i}.csv");
        m.put(&key, bad);
        m.pipeline
            .decode("dms", &key, None, Failpoints::default())
            .await
            .unwrap();
    }
    m.pipeline.commit_all().await.unwrap();

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("file quarantined"),
        "the quarantines were not logged:\n{text}"
    );
    assert!(!text.contains("SECRET"), "row data in the logs:\n{text}");
}
