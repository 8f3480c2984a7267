//! Shared set-up for the integration tests: a simulated DMS history on local folders, the
//! pipeline over it, and the comparison of the lake with the simulator's expected state.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use dms2delta::config::Config;
use dms2delta::pipeline::Pipeline;
use dms2delta::sim::{rows_of, simulate, SimOptions, Simulation};
use dms2delta::storage::{StoreWrapper, Stores};
use object_store::ObjectStoreExt;

pub fn pipeline(text: &str, wrapper: Option<StoreWrapper>) -> Pipeline {
    let config = Arc::new(Config::from_text(text).unwrap());
    let mut stores = Stores::new(config.config.storage.clone());
    if let Some(w) = wrapper {
        stores = stores.with_delta_wrapper(w);
    }
    Pipeline::new(config, Arc::new(stores))
}

pub mod ambiguous;
pub mod converge;
pub mod downstream;
pub mod feed;
pub mod proxy;
pub mod reload;
pub mod s3;

pub use s3::{python, repo};

/// Where a lab keeps the DMS files, staging and the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// Local folders, the bucket mapped to one of them.
    Folders,
    /// Buckets on the local S3 endpoint, reached the way users reach S3.
    S3,
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub sim: Simulation,
    pub pipeline: Pipeline,
    /// The bucket the DMS files are in (what S3 events name).
    pub bucket: String,
    pub on: On,
    /// The configuration document the pipeline runs with.
    pub config_text: String,
    /// On S3: the endpoint the Python reader must use.
    endpoint: Option<String>,
    /// Commits mark replaced rows with deletion vectors (merge-on-read).
    pub deletion_vectors: bool,
}

// Conflicts are expected here; short backoffs keep the suite fast.
const FAST_COMMITS: &str = "commit:\n  backoff_base_ms: 2\n  backoff_max_ms: 100\n  max_attempts: 60\n";

/// The commit settings of a lab: fast retries, and merge-on-read when `dv`.
fn commit_settings(dv: bool) -> String {
    let mut text = FAST_COMMITS.to_string();
    if dv {
        text.push_str("  deletion_vectors: true\n");
    }
    text
}

impl Lab {
    /// A lab on local folders.
    pub fn new(opts: &SimOptions, wrapper: Option<StoreWrapper>) -> Lab {
        Lab::new_with(opts, wrapper, false)
    }

    /// A lab on local folders whose commits use deletion vectors when `dv`.
    pub fn new_with(opts: &SimOptions, wrapper: Option<StoreWrapper>, dv: bool) -> Lab {
        Lab::new_configured(opts, wrapper, dv, "")
    }

    /// [`Lab::new_with`], `extra` appended to its configuration.
    pub fn new_configured(opts: &SimOptions, wrapper: Option<StoreWrapper>, dv: bool, extra: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulate(opts);
        let p = |s: &str| dir.path().join(s).display().to_string();
        let data = dir.path().join("bucket");
        sim.write_files(&data).unwrap();
        let mut text = sim.config(&p("lake"), &p("staged"), &p("quarantine"), &data.display().to_string());
        text.push_str(&commit_settings(dv));
        text.push_str(extra);
        let pipeline = pipeline(&text, wrapper);
        let bucket = sim.bucket.clone();
        Lab {
            dir,
            sim,
            pipeline,
            bucket,
            on: On::Folders,
            config_text: text,
            endpoint: None,
            deletion_vectors: dv,
        }
    }

    /// A lab on the local S3 endpoint: fresh buckets for the DMS files and for the lake.
    pub async fn on_s3(opts: &SimOptions, wrapper: Option<StoreWrapper>) -> Lab {
        Lab::on_s3_via(opts, wrapper, None).await
    }

    /// Like [`Lab::on_s3`], with the pipeline talking to `endpoint` (a proxy in front of moto).
    pub async fn on_s3_via(opts: &SimOptions, wrapper: Option<StoreWrapper>, endpoint: Option<&str>) -> Lab {
        Lab::on_s3_via_with(opts, wrapper, endpoint, false).await
    }

    /// [`Lab::on_s3_via`], commits using deletion vectors when `dv`.
    pub async fn on_s3_via_with(
        opts: &SimOptions,
        wrapper: Option<StoreWrapper>,
        endpoint: Option<&str>,
        dv: bool,
    ) -> Lab {
        let lab = Lab::on_s3_configured(opts, wrapper, endpoint, "", dv).await;
        lab.upload_all().await;
        lab
    }

    /// A lab on `on` (on S3 through `endpoint` when given), `extra` appended to its
    /// configuration, every DMS file in place.
    pub async fn configured(
        on: On,
        opts: &SimOptions,
        wrapper: Option<StoreWrapper>,
        endpoint: Option<&str>,
        dv: bool,
        extra: &str,
    ) -> Lab {
        match on {
            On::Folders => Lab::new_configured(opts, wrapper, dv, extra),
            On::S3 => {
                let lab = Lab::on_s3_configured(opts, wrapper, endpoint, extra, dv).await;
                lab.upload_all().await;
                lab
            }
        }
    }

    /// A lab on the S3 endpoint laid out as deployed (staging and quarantine below the lake
    /// prefix, see docs/deploy.md), `extra` appended to its configuration; nothing uploaded yet.
    pub async fn on_s3_with(
        opts: &SimOptions,
        wrapper: Option<StoreWrapper>,
        endpoint: Option<&str>,
        extra: &str,
    ) -> Lab {
        Lab::on_s3_configured(opts, wrapper, endpoint, extra, false).await
    }

    async fn on_s3_configured(
        opts: &SimOptions,
        wrapper: Option<StoreWrapper>,
        endpoint: Option<&str>,
        extra: &str,
        dv: bool,
    ) -> Lab {
        let moto = s3::moto();
        let dir = tempfile::tempdir().unwrap();
        let sim = simulate(opts);
        let bucket = moto.bucket("dms").await;
        let lake = moto.bucket("lake").await;
        let mut text = sim.config_on(
            &format!("s3://{lake}/lake"),
            &format!("s3://{lake}/lake/_dms2delta/staged"),
            &format!("s3://{lake}/lake/_dms2delta/quarantine"),
            &bucket,
            &s3::storage_yaml(endpoint.unwrap_or(&moto.url)),
        );
        text.push_str(&commit_settings(dv));
        text.push_str(extra);
        let pipeline = pipeline(&text, wrapper);
        Lab {
            dir,
            sim,
            pipeline,
            bucket,
            on: On::S3,
            config_text: text,
            endpoint: Some(moto.url.clone()),
            deletion_vectors: dv,
        }
    }

    /// Puts an object into the DMS bucket straight on the endpoint (never through a proxy).
    pub async fn upload(&self, key: &str, bytes: Vec<u8>) {
        let moto = s3::moto();
        let direct = Stores::new(
            Config::from_text(&self.sim.config_on("/l", "/s", "/q", &self.bucket, &moto.storage_yaml()))
                .unwrap()
                .config
                .storage
                .clone(),
        );
        direct
            .bucket(&self.bucket)
            .unwrap()
            .put(&object_store::path::Path::from(key), bytes.into())
            .await
            .unwrap();
    }

    /// Every DMS file of the history, in the order DMS wrote them.
    pub async fn upload_all(&self) {
        for f in &self.sim.files {
            self.upload(&f.key, f.bytes.clone()).await;
        }
    }

    /// The configuration every stage of this lab runs with.
    pub fn config(&self) -> Arc<dms2delta::config::Validated> {
        self.pipeline.config.clone()
    }

    pub async fn on(on: On, opts: &SimOptions, wrapper: Option<StoreWrapper>) -> Lab {
        Lab::on_with(on, opts, wrapper, false).await
    }

    pub async fn on_with(on: On, opts: &SimOptions, wrapper: Option<StoreWrapper>, dv: bool) -> Lab {
        match on {
            On::Folders => Lab::new_with(opts, wrapper, dv),
            On::S3 => Lab::on_s3_via_with(opts, wrapper, None, dv).await,
        }
    }

    pub fn lake_dir(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    /// Each table's rows, read back with dms2delta's own reader, against the expected state:
    /// the data columns, and per key the stored sequence (`_dms_seq`) against the sequence of
    /// the key's newest change in the simulated files.
    pub async fn check(&self) -> Result<(), String> {
        for (name, expected) in &self.sim.expected {
            let mut parts = name.splitn(3, '.');
            let (ns, schema, table) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            let spec = self.pipeline.config.table_by_target(ns, schema, table).unwrap();
            let batches = self
                .pipeline
                .read_table(&self.pipeline.table_location(&spec))
                .await
                .map_err(|e| e.to_string())?;
            let mut columns = self.sim.columns[name].clone();
            columns.push(dms2delta::changes::SEQ.to_string());
            let with_seq = rows_of(&batches, &columns)?;
            let mut actual: Vec<Vec<dms2delta::sim::Value>> = Vec::with_capacity(with_seq.len());
            let mut seqs = std::collections::BTreeMap::new();
            let k = self.sim.key_columns[name];
            for mut row in with_seq {
                let seq = row.pop().unwrap_or(dms2delta::sim::Value::Null);
                seqs.insert(row[..k].to_vec(), seq);
                actual.push(row);
            }
            actual.sort();
            let actual = self.sim.comparable(name, actual);
            if &actual != expected {
                return Err(format!(
                    "table {name}: {} rows expected, {} read\n{}",
                    expected.len(),
                    actual.len(),
                    dms2delta::sim::diff(expected, &actual)
                ));
            }
            for (key, want) in &self.sim.expected_seq[name] {
                let got = seqs.get(key);
                if got != Some(&dms2delta::sim::Value::Str(want.clone())) {
                    return Err(format!(
                        "table {name}: key {key:?} stores {} `{}`, the newest change has `{want}`",
                        dms2delta::changes::SEQ,
                        got.map(|v| v.canonical()).unwrap_or_else(|| "nothing".into()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Nothing was quarantined: no report below the quarantine prefix.
    pub async fn check_quarantine(&self) -> Result<(), String> {
        let (store, root) = self
            .pipeline
            .stores
            .resolve(&self.pipeline.config.quarantine)
            .map_err(|e| e.to_string())?;
        let reports = dms2delta::quarantine::list_reports(store.as_ref(), &root)
            .await
            .map_err(|e| e.to_string())?;
        if reports.is_empty() {
            Ok(())
        } else {
            let what: Vec<String> = reports
                .iter()
                .map(|(p, r)| format!("{p}: {} {:?}: {}", r.file, r.kind, r.reason))
                .collect();
            Err(format!("{} files quarantined:\n{}", what.len(), what.join("\n")))
        }
    }

    /// Every file delivered once in DMS's order, then all of them again: the tables equal the
    /// source (read back by dms2delta, the log checked, and by the Python reader), and the
    /// second delivery changes nothing.
    pub async fn in_order_twice(&self) -> Vec<dms2delta::operations::commit::CommitMetrics> {
        use dms2delta::failpoint::Failpoints;
        use dms2delta::operations::decode::DecodeOutcome;
        for f in &self.sim.files {
            let out = self
                .pipeline
                .decode(&self.bucket, &f.key, Some("e".into()), Failpoints::default())
                .await
                .unwrap();
            assert!(matches!(out, DecodeOutcome::Staged(_)), "{}: {out:?}", f.key);
        }
        let commits = self.pipeline.commit_all().await.unwrap();
        assert!(commits.iter().any(|m| m.created_table), "{commits:?}");
        self.check().await.unwrap();
        self.check_log().await.unwrap();
        if !skip_python() {
            self.check_with_python().unwrap();
        }
        for f in &self.sim.files {
            self.pipeline
                .decode(&self.bucket, &f.key, Some("e".into()), Failpoints::default())
                .await
                .unwrap();
        }
        let again = self.pipeline.commit_all().await.unwrap();
        assert!(
            again
                .iter()
                .all(|m| m.rows_inserted + m.rows_updated + m.rows_deleted == 0),
            "{again:?}"
        );
        self.check().await.unwrap();
        commits
    }

    /// Every file delivered in DMS's order and committed on its own (each commit meets the rows
    /// of the ones before); the tables equal the source, read back by dms2delta and by the
    /// Python reader, and the log is whole.
    pub async fn one_commit_per_file(&self) -> Vec<dms2delta::operations::commit::CommitMetrics> {
        use dms2delta::failpoint::Failpoints;
        let mut commits = Vec::new();
        for f in &self.sim.files {
            self.pipeline
                .decode(&self.bucket, &f.key, Some("e".into()), Failpoints::default())
                .await
                .unwrap();
            commits.extend(self.pipeline.commit_all().await.unwrap());
        }
        self.check().await.unwrap();
        self.check_log().await.unwrap();
        if !skip_python() {
            self.check_with_python().unwrap();
        }
        commits
    }

    /// Every table's log is whole: versions 0..=n with no gap, each entry complete JSON lines
    /// of one action each (an interrupted commit must leave no partial version).
    pub async fn check_log(&self) -> Result<(), String> {
        use futures::TryStreamExt;
        for name in self.sim.expected.keys() {
            let mut p = name.splitn(3, '.');
            let (ns, schema, table) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            let spec = self.pipeline.config.table_by_target(ns, schema, table).unwrap();
            let loc = self.pipeline.table_location(&spec);
            let (store, root) = self
                .pipeline
                .stores
                .resolve(&self.pipeline.stores.physical(&loc))
                .map_err(|e| e.to_string())?;
            let log = object_store::path::Path::from(format!("{root}/_delta_log"));
            let files: Vec<_> = store.list(Some(&log)).try_collect().await.map_err(|e| e.to_string())?;
            let mut versions = Vec::new();
            for f in files {
                let file = f.location.filename().unwrap_or_default().to_string();
                let Some(v) = file.strip_suffix(".json").and_then(|v| v.parse::<u64>().ok()) else {
                    continue;
                };
                let bytes = store
                    .get(&f.location)
                    .await
                    .map_err(|e| e.to_string())?
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())?;
                let text = std::str::from_utf8(&bytes).map_err(|e| format!("{name} v{v}: {e}"))?;
                for line in text.lines().filter(|l| !l.is_empty()) {
                    let action: serde_json::Value =
                        serde_json::from_str(line).map_err(|e| format!("{name} v{v}: broken entry: {e}"))?;
                    if action.as_object().map(|o| o.len()) != Some(1) {
                        return Err(format!("{name} v{v}: not one action per line: {line}"));
                    }
                    // The minimum protocol, which Athena, Spark and DuckDB all read: no reader
                    // or writer features (deletion vectors, timestamp_ntz, column mapping).
                    // With merge-on-read: deletion vectors and nothing else. A table with the
                    // change feed also has what the feed needs: writer 4, or at writer 7 the
                    // `changeDataFeed` writer feature.
                    if let Some(p) = action.get("protocol") {
                        let (r, w) = (p["minReaderVersion"].as_u64(), p["minWriterVersion"].as_u64());
                        let dv_only = serde_json::json!(["deletionVectors"]);
                        let feed = spec.change_data_feed;
                        // Writer version 2's own features (appendOnly, invariants) are listed
                        // explicitly at writer 7.
                        let writer_ok = p["writerFeatures"].as_array().is_some_and(|f| {
                            f.iter().any(|x| x == "deletionVectors")
                                && f.iter().all(|x| {
                                    let x = x.as_str().unwrap_or("");
                                    ["deletionVectors", "appendOnly", "invariants"].contains(&x)
                                        || (feed && x == "changeDataFeed")
                                })
                        });
                        let max_writer = if feed { Some(4) } else { Some(2) };
                        if self.deletion_vectors {
                            if r != Some(3) || w != Some(7) || p.get("readerFeatures") != Some(&dv_only) || !writer_ok {
                                return Err(format!("{name} v{v}: not the deletion-vector protocol: {p}"));
                            }
                        } else if r > Some(1)
                            || w > max_writer
                            || p.get("readerFeatures").is_some()
                            || p.get("writerFeatures").is_some()
                        {
                            return Err(format!(
                                "{name} v{v}: protocol above reader 1 / writer {max_writer:?}: {p}"
                            ));
                        }
                    }
                }
                versions.push(v);
            }
            versions.sort_unstable();
            if versions.iter().enumerate().any(|(i, v)| *v != i as u64) {
                return Err(format!("{name}: log versions have a gap: {versions:?}"));
            }
        }
        Ok(())
    }

    /// One line per version of a table's log: the operation and the files it added and
    /// removed (short names, `+dv` when the entry carries a deletion vector), for failures.
    pub async fn log_summary(&self, name: &str) -> String {
        use futures::TryStreamExt;
        let mut p = name.splitn(3, '.');
        let (ns, schema, table) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let spec = self.pipeline.config.table_by_target(ns, schema, table).unwrap();
        let loc = self.pipeline.table_location(&spec);
        let Ok((store, root)) = self.pipeline.stores.resolve(&self.pipeline.stores.physical(&loc)) else {
            return String::new();
        };
        let log = object_store::path::Path::from(format!("{root}/_delta_log"));
        let mut files: Vec<_> = store.list(Some(&log)).try_collect().await.unwrap_or_default();
        files.sort_by(|a, b| a.location.cmp(&b.location));
        let mut out = String::new();
        for f in files.iter().filter(|f| f.location.as_ref().ends_with(".json")) {
            let Ok(r) = store.get(&f.location).await else { continue };
            let bytes = r.bytes().await.unwrap_or_default();
            let short = |p: &serde_json::Value| {
                let p = p["path"].as_str().unwrap_or("?");
                p.get(p.len().saturating_sub(20)..).unwrap_or(p).to_string()
            };
            let (mut op, mut adds, mut removes) = (String::new(), Vec::new(), Vec::new());
            for line in String::from_utf8_lossy(&bytes).lines() {
                let Ok(a) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if let Some(ci) = a.get("commitInfo") {
                    op = ci["operation"].as_str().unwrap_or("?").to_string();
                }
                for (kind, list) in [("add", &mut adds), ("remove", &mut removes)] {
                    if let Some(x) = a.get(kind) {
                        let dv = if x.get("deletionVector").is_some_and(|d| !d.is_null()) {
                            "+dv"
                        } else {
                            ""
                        };
                        let dc = if x["dataChange"].as_bool() == Some(false) {
                            "(no data change)"
                        } else {
                            ""
                        };
                        list.push(format!("{}{dv}{dc}", short(x)));
                    }
                }
            }
            out.push_str(&format!(
                "  {}: {op} add {adds:?} remove {removes:?}\n",
                f.location.filename().unwrap_or_default()
            ));
        }
        out
    }

    /// The same comparison through an independent reader: the Python `deltalake` package.
    pub fn check_with_python(&self) -> Result<(), String> {
        for (name, expected) in &self.sim.expected {
            let cols = self.sim.columns[name].join(",");
            let table = match &self.endpoint {
                Some(_) => {
                    let mut p = name.splitn(3, '.');
                    let (ns, schema, table) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
                    let spec = self.pipeline.config.table_by_target(ns, schema, table).unwrap();
                    self.pipeline.table_location(&spec).url()
                }
                None => self.lake_dir().join(name.replace('.', "/")).display().to_string(),
            };
            let mut got = run_python(
                "read_delta.py",
                [table.as_str(), cols.as_str()],
                self.endpoint.as_deref(),
            )
            .map_err(|e| format!("table {name}: {e}"))?;
            // What the contract leaves open is blanked on both sides, as `Simulation::comparable`
            // does: the non-key values of soft-deleted rows of key-only-image tables.
            if self.sim.key_only_soft.contains(name) {
                let k = self.sim.key_columns[name];
                for line in &mut got {
                    let mut fields: Vec<&str> = line.split('\t').collect();
                    let n = fields.len();
                    if n > k && fields[n - 1] == "true" {
                        fields[k..n - 1].iter_mut().for_each(|f| *f = "null");
                        *line = fields.join("\t");
                    }
                }
            }
            got.sort();
            let mut want: Vec<String> = expected
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|v| {
                            v.canonical()
                                .replace('\\', "\\\\")
                                .replace('\t', "\\t")
                                .replace('\n', "\\n")
                        })
                        .collect::<Vec<_>>()
                        .join("\t")
                })
                .collect();
            want.sort();
            if got != want {
                return Err(format!(
                    "python reader: table {name} differs: expected {want:?}, got {got:?}"
                ));
            }
        }
        Ok(())
    }
}

/// A Parquet file of one batch with these columns (name, type, values), as DMS might write it.
pub fn parquet(fields: Vec<(&str, arrow::datatypes::DataType, arrow::array::ArrayRef)>) -> Vec<u8> {
    let schema = Arc::new(arrow::datatypes::Schema::new(
        fields
            .iter()
            .map(|(n, dt, _)| arrow::datatypes::Field::new(*n, dt.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = arrow::array::RecordBatch::try_new(schema.clone(), fields.into_iter().map(|f| f.2).collect()).unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

/// Runs `tests/<script>` with `args` by the Python that has the `deltalake` package (S3 through
/// `endpoint` when given), and returns its output lines.
pub fn run_python<'a>(
    script: &str,
    args: impl IntoIterator<Item = &'a str>,
    endpoint: Option<&str>,
) -> Result<Vec<String>, String> {
    let Some(python) = python() else {
        return Err("no Python with the deltalake package: run `.ci/run` once or set DMS2DELTA_PYTHON (DMS2DELTA_SKIP_PYTHON=1 skips this check)".into());
    };
    let mut cmd = std::process::Command::new(&python);
    if let Some(ep) = endpoint {
        cmd.env("AWS_ENDPOINT_URL", ep);
    }
    let out = cmd
        .arg(repo().join("tests").join(script))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "python {script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

pub fn skip_python() -> bool {
    std::env::var("DMS2DELTA_SKIP_PYTHON").is_ok_and(|v| v == "1")
}

/// A hand-made source for targeted contract tests.
pub struct Mini {
    pub dir: tempfile::TempDir,
    pub pipeline: Pipeline,
}

impl Mini {
    /// `sources` is the YAML of the `sources:` list; the bucket `dms` maps to a local folder.
    pub fn new(sources: &str, extra: &str) -> Mini {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "lake: {d}/lake\nstaging: {d}/staged\nquarantine: {d}/quarantine\nstorage:\n  buckets:\n    dms: {d}/bucket\ncommit:\n  backoff_base_ms: 2\n  backoff_max_ms: 50\n{extra}sources:\n{sources}"
        );
        let config = Arc::new(Config::from_text(&text).unwrap());
        let stores = Stores::new(config.config.storage.clone());
        Mini {
            pipeline: Pipeline::new(config, Arc::new(stores)),
            dir,
        }
    }

    pub fn put(&self, key: &str, bytes: &[u8]) {
        let p = self.dir.path().join("bucket").join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    pub async fn decode(&self, key: &str) -> dms2delta::operations::decode::DecodeOutcome {
        self.pipeline
            .decode(
                "dms",
                key,
                Some("etag".into()),
                dms2delta::failpoint::Failpoints::default(),
            )
            .await
            .unwrap()
    }

    /// Puts, decodes and commits one file.
    pub async fn apply(&self, key: &str, bytes: &[u8]) -> dms2delta::operations::commit::CommitMetrics {
        self.put(key, bytes);
        let out = self.decode(key).await;
        assert!(
            matches!(out, dms2delta::operations::decode::DecodeOutcome::Staged(_)),
            "{out:?}"
        );
        let mut m = self.pipeline.commit_all().await.unwrap();
        assert_eq!(m.len(), 1, "{m:?}");
        m.remove(0)
    }

    pub fn location(&self, table: &str) -> dms2delta::storage::Location {
        let mut p = table.splitn(3, '.');
        let (ns, s, t) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let spec = self.pipeline.config.table_by_target(ns, s, t).unwrap();
        self.pipeline.table_location(&spec)
    }

    pub async fn batches(&self, table: &str) -> Vec<arrow::array::RecordBatch> {
        self.pipeline.read_table(&self.location(table)).await.unwrap()
    }

    /// Rows of `cols` as canonical text, sorted.
    pub async fn rows(&self, table: &str, cols: &[&str]) -> Vec<Vec<String>> {
        let cols: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        rows_of(&self.batches(table).await, &cols)
            .unwrap()
            .into_iter()
            .map(|r| r.iter().map(|v| v.canonical()).collect())
            .collect()
    }
}
