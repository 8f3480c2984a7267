//! `dms2delta run`: replicate every DMS file under a folder or S3 prefix into the lake, once or
//! watching for new files.
//!
//! One pass ([`run_once`]) lists the source, decodes the files not applied yet (full-load files
//! first, then CDC files, each group by key), commits every table with pending change sets and
//! reports per table. A file is "applied" when a commit of its table recorded the change set of
//! that exact object version (bucket, key and ETag) in the Delta log, so a second pass over the
//! same files decodes nothing; with `--force` everything is decoded again and the commit's
//! sequence guard refuses every change the table already has.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use dms2delta::config::{Config, Validated};
use dms2delta::failpoint::Failpoints;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::pipeline::Pipeline;
use dms2delta::quarantine::{list_reports, QuarantineReport};
use dms2delta::route::{route, FileKind, Route};
use dms2delta::stage::change_set_id;
use dms2delta::storage::Location;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectMeta;
use tokio::sync::Notify;

use crate::common::{
    config_required, configured_tables, human_duration, human_time, known_tables, load_config, or_dash, pipeline,
    report_location, table_info, table_location, text_table, CliResult, Failure, TableInfo,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where DMS writes its files: a local folder standing for the configured source bucket(s)
    /// (object keys are paths below it), or s3://bucket[/prefix] (one of the configured buckets).
    #[arg(long, value_name = "DIR|S3_URI")]
    pub source: String,

    /// Where the Delta tables live; overrides `lake` in the configuration.
    #[arg(long, value_name = "DIR|S3_URI")]
    pub lake: Option<String>,

    /// The configuration: sources, tables, staging and quarantine locations (local path or
    /// s3://bucket/key). Required.
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,

    /// Keep running: look for new files every --interval seconds and apply them (Ctrl-C stops
    /// after the current pass).
    #[arg(long)]
    pub watch: bool,

    /// Seconds between two passes in --watch mode.
    #[arg(long, value_name = "SECS", default_value_t = 10, requires = "watch")]
    pub interval: u64,

    /// Stop after this many passes in --watch mode (default: until Ctrl-C).
    #[arg(long, value_name = "N", requires = "watch")]
    pub max_polls: Option<u64>,

    /// Decode every file again, even those already applied. Safe: changes the tables already
    /// have are refused by the sequence guard, so only missing changes are applied.
    #[arg(long)]
    pub force: bool,
}

/// The files to replicate.
#[derive(Debug, Clone)]
pub struct Source {
    /// The buckets whose sources may own a file, tried in order; the first is listed.
    pub buckets: Vec<String>,
    /// Only keys below this prefix are listed.
    pub prefix: Option<Path>,
    /// The local folder, when the source is one.
    pub dir: Option<PathBuf>,
    /// For messages.
    pub shown: String,
}

impl Source {
    /// A file of this source, for people: its local path, or its `s3://` URI.
    pub fn file(&self, bucket: &str, key: &str) -> String {
        match &self.dir {
            Some(d) => d.join(key).display().to_string(),
            None => format!("s3://{bucket}/{key}"),
        }
    }
}

/// Points the configuration's source buckets at `--source`.
///
/// A local folder stands for every bucket the sources name (DMS object keys are paths below
/// it). An `s3://` source must be one of those buckets; any local mapping of it is dropped.
pub fn attach_source(config: &mut Config, source: &str) -> CliResult<Source> {
    let mut buckets: Vec<String> = Vec::new();
    for s in &config.sources {
        if !buckets.contains(&s.bucket) {
            buckets.push(s.bucket.clone());
        }
    }
    let loc = Location::parse(source).map_err(|r| Failure::usage(format!("--source {source}: {r}")))?;
    match loc {
        Location::Local { dir } => {
            if !dir.is_dir() {
                return Err(Failure::new(format!(
                    "the source folder {} does not exist",
                    dir.display()
                )));
            }
            let abs = std::path::absolute(&dir)
                .map_err(|e| Failure::new(format!("cannot resolve {}: {e}", dir.display())))?;
            for b in &buckets {
                config.storage.buckets.insert(b.clone(), abs.display().to_string());
            }
            Ok(Source {
                buckets,
                prefix: None,
                shown: abs.display().to_string(),
                dir: Some(abs),
            })
        }
        Location::S3 { bucket, prefix } => {
            if !buckets.contains(&bucket) {
                return Err(Failure::new(format!(
                    "no source in the configuration reads bucket `{bucket}` (they read: {}); point \
                     --source at one of those buckets or add a source for it",
                    buckets.join(", ")
                )));
            }
            config.storage.buckets.remove(&bucket);
            Ok(Source {
                shown: source.trim().to_string(),
                buckets: vec![bucket],
                prefix: if prefix.is_empty() {
                    None
                } else {
                    // Folder names as spelled (`dms/Åland`), not percent-encoded.
                    Some(Path::parse(&prefix).map_err(|e| Failure::usage(format!("--source {source}: {e}")))?)
                },
                dir: None,
            })
        }
        Location::Memory { .. } => Err(Failure::usage("--source: memory:// is for tests only")),
    }
}

/// What one pass did to one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRow {
    /// `namespace.schema.table`.
    pub name: String,
    /// Source files applied in this pass.
    pub files: usize,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Changes refused because the table already had a newer one.
    pub stale: u64,
    /// The table after the pass.
    pub info: TableInfo,
    /// Files of this table set aside with a report (from this pass or before).
    pub quarantined: usize,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Objects found under the source.
    pub listed: usize,
    /// Files decoded in this pass.
    pub decoded: usize,
    /// Files whose changes the tables already hold (not decoded again).
    pub already_applied: usize,
    /// Files quarantined by an earlier pass and unchanged since (not decoded again).
    pub quarantined_earlier: usize,
    /// Files not meant for decoding, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Files quarantined in this pass: report location, report.
    pub quarantined: Vec<(String, QuarantineReport)>,
    /// Every configured table and every table in the lake.
    pub tables: Vec<TableRow>,
    /// Every report in the quarantine after the pass.
    pub open_reports: Vec<(String, QuarantineReport)>,
    /// Tables whose commit failed in this pass (`namespace.schema.table`, why); their files
    /// are decoded again by the next pass. Every other table was committed.
    pub failed: Vec<(String, String)>,
}

impl RunReport {
    /// Rows inserted, updated or deleted in this pass.
    pub fn changed_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.inserted + t.updated + t.deleted).sum()
    }
}

/// What passes remember between each other (in --watch mode).
#[derive(Debug, Default)]
pub struct RunState {
    /// Change set ids (bucket, key, ETag) of files whose changes are in the tables (or that
    /// had none).
    done: HashSet<String>,
    /// Ids of files set aside with a report; a changed file gets a new id and is decoded again.
    quarantined: HashSet<String>,
    loaded: bool,
}

enum Plan {
    Skip(String),
    Decode { bucket: String, rank: u8 },
}

/// Which bucket's source owns `key`, and whether it is a full-load file (decoded first).
fn plan_file(config: &Validated, buckets: &[String], key: &str) -> Plan {
    let mut ignored: Option<&str> = None;
    for b in buckets {
        match route(config, b, key) {
            Ok(Route::Ignore(why)) => {
                ignored.get_or_insert(why);
            }
            Ok(Route::File(r)) => {
                if let (Some(schema), Some(table)) = (&r.schema, &r.table) {
                    if let Ok(None) = config.table(r.source, schema, table) {
                        return Plan::Skip("table not selected by the source's rules".into());
                    }
                }
                let rank = if r.kind == FileKind::Load { 0 } else { 1 };
                return Plan::Decode {
                    bucket: b.clone(),
                    rank,
                };
            }
            // Under a source but not in DMS's layout: decode writes the quarantine report.
            Err(_) => {
                return Plan::Decode {
                    bucket: b.clone(),
                    rank: 1,
                }
            }
        }
    }
    Plan::Skip(ignored.unwrap_or("not under any configured source").to_string())
}

struct Planned {
    rank: u8,
    key: String,
    bucket: String,
    etag: Option<String>,
    id: String,
}

/// One pass: list, decode what is new, commit, report.
pub async fn run_once(pipeline: &Pipeline, source: &Source, state: &mut RunState, force: bool) -> CliResult<RunReport> {
    let config = &pipeline.config;
    let first = source
        .buckets
        .first()
        .ok_or_else(|| Failure::new("the configuration has no sources"))?;
    let store = pipeline.stores.bucket(first)?;
    let metas: Vec<ObjectMeta> = store
        .list(source.prefix.as_ref())
        .try_collect()
        .await
        .map_err(|e| Failure {
            retryable: true,
            ..Failure::new(format!("cannot list {}: {e}", source.shown))
        })?;

    let (qstore, qroot) = pipeline.stores.resolve(&config.quarantine)?;
    if !state.loaded && !force {
        for spec in configured_tables(config) {
            state.done.extend(
                dms2delta::operations::commit::applied_change_sets(&pipeline.stores, &pipeline.table_location(&spec))
                    .await?,
            );
        }
        for (_, r) in list_reports(qstore.as_ref(), &qroot).await? {
            state
                .quarantined
                .insert(change_set_id(&r.bucket, &r.key, r.etag.as_deref()));
        }
        state.loaded = true;
    }

    let mut report = RunReport {
        listed: metas.len(),
        ..Default::default()
    };
    let mut plan = Vec::new();
    for m in metas {
        let key = m.location.as_ref().to_string();
        match plan_file(config, &source.buckets, &key) {
            Plan::Skip(why) => *report.skipped.entry(why).or_default() += 1,
            Plan::Decode { bucket, rank } => {
                let id = change_set_id(&bucket, &key, m.e_tag.as_deref());
                if !force && state.done.contains(&id) {
                    report.already_applied += 1;
                    continue;
                }
                if !force && state.quarantined.contains(&id) {
                    report.quarantined_earlier += 1;
                    continue;
                }
                plan.push(Planned {
                    rank,
                    key,
                    bucket,
                    etag: m.e_tag,
                    id,
                });
            }
        }
    }
    plan.sort_by(|a, b| (a.rank, &a.key).cmp(&(b.rank, &b.key)));

    let progress = std::io::stderr().is_terminal() && plan.len() > 1;
    // Each decoded file with the tables it staged changes for.
    let mut decoded_ids: Vec<(String, Vec<String>)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        if progress {
            eprint!("\rDecoding {}/{}…", i + 1, plan.len());
        }
        let outcome = pipeline
            .decode(&p.bucket, &p.key, p.etag.clone(), Failpoints::default())
            .await?;
        report.decoded += 1;
        let tables = match outcome {
            DecodeOutcome::Staged(m) => m.tables.into_iter().map(|t| t.table).collect(),
            DecodeOutcome::Skipped { reason } => {
                *report.skipped.entry(reason).or_default() += 1;
                Vec::new()
            }
            DecodeOutcome::Quarantined {
                report: r,
                report_location,
            } => {
                let at = report_location_for(pipeline, &report_location);
                report.quarantined.push((at, *r));
                state.quarantined.insert(p.id.clone());
                continue;
            }
        };
        decoded_ids.push((p.id.clone(), tables));
    }
    if progress {
        eprint!("\rCommitting…{:20}\r", "");
    }

    // One table's failure (an unusable name, a storage error) leaves every other table going.
    let pass = pipeline.commit_pending().await?;
    if progress {
        eprint!("\r{:40}\r", "");
    }
    report.failed = pass.failed.iter().map(|(t, e)| (t.clone(), e.to_string())).collect();
    let failed: HashSet<&str> = pass.failed.iter().map(|(t, _)| t.as_str()).collect();
    // Only now are the decoded files' changes in the tables (not those of a failed table).
    state.done.extend(
        decoded_ids
            .into_iter()
            .filter(|(_, tables)| tables.iter().all(|t| !failed.contains(t.as_str())))
            .map(|(id, _)| id),
    );

    let mut by_table: HashMap<String, TableRow> = HashMap::new();
    for m in pass.committed {
        // Nothing committed (change sets set aside have their reports among `open_reports`):
        // no row, so a table no longer configured does not show up as a phantom.
        if m.change_sets == 0 {
            continue;
        }
        let row = by_table.entry(m.table.clone()).or_insert_with(|| TableRow {
            name: m.table.clone(),
            ..Default::default()
        });
        row.files += m.source_files.len();
        row.inserted += m.rows_inserted;
        row.updated += m.rows_updated;
        row.deleted += m.rows_deleted;
        row.stale += m.rows_stale;
    }
    for (t, _) in known_tables(pipeline).await? {
        let name = t.qualified_name();
        let mut row = by_table.remove(&name).unwrap_or_else(|| TableRow {
            name: name.clone(),
            ..Default::default()
        });
        row.info = table_info(&pipeline.stores, &table_location(&t, &config.lake)).await?;
        report.tables.push(row);
    }
    report.tables.extend(by_table.into_values());
    report.tables.sort_by(|a, b| a.name.cmp(&b.name));

    report.open_reports = list_reports(qstore.as_ref(), &qroot)
        .await?
        .into_iter()
        .map(|(p, r)| (report_location_for(pipeline, p.as_ref()), r))
        .collect();
    for row in &mut report.tables {
        row.quarantined = report
            .open_reports
            .iter()
            .filter(|(_, r)| r.table.as_deref() == Some(row.name.as_str()))
            .count();
    }
    Ok(report)
}

fn report_location_for(pipeline: &Pipeline, path: &str) -> String {
    report_location(&pipeline.stores, &pipeline.config.quarantine, path)
}

/// The per-table summary of a pass; with `lag` false, the newest source commit time is shown
/// instead of how long ago it was.
pub fn summary_table(report: &RunReport, lag: bool) -> comfy_table::Table {
    let mut t = text_table(&[
        "Table",
        "Files",
        "Inserted",
        "Updated",
        "Deleted",
        "Stale",
        "Version",
        "Rows",
        if lag { "Lag" } else { "Newest change" },
        "Quarantined",
    ]);
    for r in &report.tables {
        t.add_row(vec![
            r.name.clone(),
            r.files.to_string(),
            r.inserted.to_string(),
            r.updated.to_string(),
            r.deleted.to_string(),
            r.stale.to_string(),
            or_dash(r.info.version),
            or_dash(r.info.rows),
            if lag {
                r.info.lag_seconds().map(human_duration)
            } else {
                r.info.newest_change.map(human_time)
            }
            .unwrap_or_else(|| "-".into()),
            r.quarantined.to_string(),
        ]);
    }
    t
}

/// One line: what the pass looked at.
pub fn headline(report: &RunReport, source: &Source) -> String {
    let mut parts = vec![
        format!("{} decoded", report.decoded),
        format!("{} already applied", report.already_applied),
    ];
    if !report.quarantined.is_empty() {
        parts.push(format!("{} quarantined", report.quarantined.len()));
    }
    if report.quarantined_earlier > 0 {
        parts.push(format!("{} quarantined earlier", report.quarantined_earlier));
    }
    let skipped: usize = report.skipped.values().sum();
    if skipped > 0 {
        let why: Vec<String> = report.skipped.iter().map(|(w, n)| format!("{n} {w}")).collect();
        parts.push(format!("{skipped} skipped ({})", why.join(", ")));
    }
    format!(
        "{} file{} under {}: {}",
        report.listed,
        if report.listed == 1 { "" } else { "s" },
        source.shown,
        parts.join(", ")
    )
}

/// Prints a quarantine report.
pub fn write_quarantine(out: &mut dyn Write, source: &Source, at: &str, r: &QuarantineReport) -> CliResult<()> {
    writeln!(out, "  ✗ {}", source.file(&r.bucket, &r.key))?;
    if let Some(t) = &r.table {
        writeln!(out, "    table:  {t}")?;
    }
    writeln!(out, "    reason: {}: {}", r.kind, r.reason)?;
    writeln!(out, "    fix:    {}", r.fix)?;
    writeln!(out, "    report: {at}")?;
    Ok(())
}

/// Prints a pass: the headline, the table, and the quarantined files.
pub fn render(out: &mut dyn Write, report: &RunReport, source: &Source) -> CliResult<()> {
    writeln!(out, "{}", headline(report, source))?;
    writeln!(out, "{}", summary_table(report, true))?;
    if report.decoded == 0 && report.changed_rows() == 0 {
        writeln!(out, "Nothing new to apply: the lake is up to date with the source.")?;
    }
    if !report.quarantined.is_empty() {
        writeln!(out, "Set aside in this pass (the rest was applied):")?;
        for (at, r) in &report.quarantined {
            write_quarantine(out, source, at, r)?;
        }
    }
    if !report.failed.is_empty() {
        writeln!(
            out,
            "Not committed in this pass (every other table was; the next pass tries again):"
        )?;
        for (table, why) in &report.failed {
            writeln!(out, "  ✗ {table}")?;
            writeln!(out, "    error:  {why}")?;
        }
    }
    let earlier = report.open_reports.len().saturating_sub(report.quarantined.len());
    if earlier > 0 {
        writeln!(
            out,
            "{earlier} file{} quarantined earlier still wait{} for a fix: see `dms2delta status`.",
            if earlier == 1 { "" } else { "s" },
            if earlier == 1 { "s" } else { "" },
        )?;
    }
    Ok(())
}

/// `run`'s exit status after a pass exits with this `Failure` code when files are quarantined
/// and nothing failed (README, "Exit status").
pub const EXIT_QUARANTINED: u8 = 3;

/// What a pass means for the exit status: `Ok` when every file is in the lake; code 1 when a
/// table could not be committed; [`EXIT_QUARANTINED`] when everything else was applied but
/// files wait in the quarantine (from this pass or an earlier one).
pub fn pass_status(report: &RunReport) -> CliResult<()> {
    if !report.failed.is_empty() {
        let names: Vec<&str> = report.failed.iter().map(|(t, _)| t.as_str()).collect();
        return Err(Failure::new(format!(
            "{} table{} could not be committed ({}); every other table was",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        )));
    }
    let n = report.open_reports.len();
    if n > 0 {
        return Err(Failure {
            code: EXIT_QUARANTINED,
            ..Failure::new(format!(
                "applied, but {n} file{} quarantined: see the reports above or `dms2delta status`",
                if n == 1 { " is" } else { "s are" }
            ))
        });
    }
    Ok(())
}

/// How a watch loop is bounded.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub interval: Duration,
    pub max_polls: Option<u64>,
    pub force: bool,
}

/// Passes until `stop` is notified or `max_polls` passes are done. `after_pass` runs after each
/// pass with its number (tests add files there). A pass that fails in a way a retry may fix is
/// reported and the loop goes on.
pub async fn watch(
    pipeline: &Pipeline,
    source: &Source,
    opts: &WatchOptions,
    stop: Arc<Notify>,
    out: &mut dyn Write,
    mut after_pass: impl FnMut(u64, &RunReport),
) -> CliResult<u64> {
    let mut state = RunState::default();
    let mut polls = 0u64;
    loop {
        polls += 1;
        let now = chrono::Utc::now().format("%H:%M:%S");
        // --force applies to the first pass only; later passes look at new files.
        match run_once(pipeline, source, &mut state, opts.force && polls == 1).await {
            Ok(report) => {
                if polls == 1 || report.decoded > 0 {
                    writeln!(out, "[{now}] pass {polls}")?;
                    render(out, &report, source)?;
                    writeln!(
                        out,
                        "Watching {} for new files every {}s (Ctrl-C to stop)…",
                        source.shown,
                        opts.interval.as_secs()
                    )?;
                }
                after_pass(polls, &report);
            }
            Err(e) if e.retryable => {
                eprintln!("[{now}] pass {polls} failed, will try again: {e}");
            }
            Err(e) => return Err(e),
        }
        out.flush()?;
        if opts.max_polls.is_some_and(|m| polls >= m) {
            return Ok(polls);
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = stop.notified() => {
                writeln!(out, "Stopped after {polls} pass{}.", if polls == 1 { "" } else { "es" })?;
                return Ok(polls);
            }
        }
    }
}

/// `dms2delta run`.
pub async fn execute(args: &RunArgs, out: &mut dyn Write) -> CliResult<()> {
    let Some(config_path) = &args.config else {
        return Err(config_required("run"));
    };
    let mut config = load_config(config_path, args.lake.as_deref()).await?;
    let source = attach_source(&mut config, &args.source)?;
    let pipeline = pipeline(config)?;
    if args.watch {
        let stop = Arc::new(Notify::new());
        let on_signal = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_signal.notify_one();
            }
        });
        let opts = WatchOptions {
            interval: Duration::from_secs(args.interval),
            max_polls: args.max_polls,
            force: args.force,
        };
        // The exit status is the last pass's.
        let mut last = Ok(());
        watch(&pipeline, &source, &opts, stop, out, |_, report| {
            last = pass_status(report)
        })
        .await?;
        last
    } else {
        let report = run_once(&pipeline, &source, &mut RunState::default(), args.force).await?;
        render(out, &report, &source)?;
        pass_status(&report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dms2delta::sim::{rows_of, simulate, SimOptions, Simulation};

    struct Bench {
        dir: tempfile::TempDir,
        sim: Simulation,
        pipeline: Pipeline,
        source: Source,
    }

    fn small() -> SimOptions {
        SimOptions {
            seed: 3,
            tables: 1,
            keys: 8,
            changes: 16,
            max_file_changes: 5,
            formats: vec![dms2delta::sim::Format::CsvHeader],
            ..SimOptions::default()
        }
    }

    fn bench(opts: &SimOptions) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulate(opts);
        let p = |s: &str| dir.path().join(s).display().to_string();
        std::fs::create_dir_all(dir.path().join("source")).unwrap();
        let text = sim.config(&p("elsewhere"), &p("staged"), &p("quarantine"), &p("unused"));
        let mut config = load_config_text(&text);
        config.lake = p("lake");
        let source = attach_source(&mut config, &p("source")).unwrap();
        Bench {
            pipeline: pipeline(config).unwrap(),
            dir,
            sim,
            source,
        }
    }

    fn load_config_text(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    async fn check(b: &Bench) {
        for (name, expected) in &b.sim.expected {
            let mut p = name.splitn(3, '.');
            let (ns, s, t) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            let spec = b.pipeline.config.table_by_target(ns, s, t).unwrap();
            let batches = b.pipeline.read_table(&b.pipeline.table_location(&spec)).await.unwrap();
            let actual = rows_of(&batches, &b.sim.columns[name]).unwrap();
            assert_eq!(&actual, expected, "{}", dms2delta::sim::diff(expected, &actual));
        }
    }

    #[test]
    fn a_local_source_stands_for_every_bucket_and_s3_must_be_configured() {
        let sim = simulate(&small());
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::parse(&sim.config("/l", "/s", "/q", "/d")).unwrap();
        let s = attach_source(&mut c, &dir.path().display().to_string()).unwrap();
        assert_eq!(s.buckets, vec!["dms-sim"]);
        assert_eq!(c.storage.buckets["dms-sim"], dir.path().display().to_string());

        let mut c = Config::parse(&sim.config("/l", "/s", "/q", "/d")).unwrap();
        let s = attach_source(&mut c, "s3://dms-sim/dms/pg").unwrap();
        assert_eq!(s.prefix.as_ref().map(|p| p.as_ref()), Some("dms/pg"));
        assert!(
            !c.storage.buckets.contains_key("dms-sim"),
            "the local mapping is dropped"
        );
        assert_eq!(s.file("dms-sim", "k/x.csv"), "s3://dms-sim/k/x.csv");

        let e = attach_source(&mut c, "s3://other/x").unwrap_err();
        assert!(
            e.message
                .contains("no source in the configuration reads bucket `other`"),
            "{e}"
        );
        let e = attach_source(&mut c, "/nonexistent/dms-out").unwrap_err();
        assert_eq!(e.message, "the source folder /nonexistent/dms-out does not exist");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_applies_new_files_only_and_force_changes_nothing() {
        let b = bench(&small());
        b.sim.write_files(&b.dir.path().join("source")).unwrap();
        std::fs::write(b.dir.path().join("source/README.txt"), b"not DMS output").unwrap();
        let first = run_once(&b.pipeline, &b.source, &mut RunState::default(), false)
            .await
            .unwrap();
        assert_eq!(first.decoded, b.sim.files.len());
        assert_eq!(first.skipped.get("not under any configured source"), Some(&1));
        assert!(first.changed_rows() > 0);
        assert_eq!(first.tables.len(), 1);
        assert_eq!(first.tables[0].files, b.sim.files.len());
        check(&b).await;

        let second = run_once(&b.pipeline, &b.source, &mut RunState::default(), false)
            .await
            .unwrap();
        assert_eq!(second.decoded, 0);
        assert_eq!(second.already_applied, b.sim.files.len());
        assert_eq!(second.changed_rows(), 0);
        assert_eq!(second.tables[0].info.version, first.tables[0].info.version);

        let forced = run_once(&b.pipeline, &b.source, &mut RunState::default(), true)
            .await
            .unwrap();
        assert_eq!(forced.decoded, b.sim.files.len());
        assert_eq!(forced.changed_rows(), 0, "{:?}", forced.tables);
        assert_eq!(forced.tables[0].files, b.sim.files.len());
        check(&b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watching_applies_files_that_arrive_between_passes() {
        let b = bench(&small());
        let src = b.dir.path().join("source");
        let half = b.sim.files.len() / 2;
        let write = |files: &[dms2delta::sim::SimFile]| {
            for f in files {
                let p = src.join(&f.key);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, &f.bytes).unwrap();
            }
        };
        write(&b.sim.files[..half]);
        let opts = WatchOptions {
            interval: Duration::from_millis(10),
            max_polls: Some(3),
            force: false,
        };
        let mut decoded = Vec::new();
        let mut out = Vec::new();
        let polls = watch(
            &b.pipeline,
            &b.source,
            &opts,
            Arc::new(Notify::new()),
            &mut out,
            |n, r| {
                decoded.push(r.decoded);
                if n == 1 {
                    write(&b.sim.files[half..]);
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(polls, 3);
        assert_eq!(decoded, vec![half, b.sim.files.len() - half, 0]);
        check(&b).await;
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("] pass ").count(), 2, "{text}");
        assert!(text.contains("Watching"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watching_stops_when_told() {
        let b = bench(&small());
        let stop = Arc::new(Notify::new());
        stop.notify_one();
        let opts = WatchOptions {
            interval: Duration::from_secs(3600),
            max_polls: None,
            force: false,
        };
        let mut out = Vec::new();
        let polls = watch(&b.pipeline, &b.source, &opts, stop, &mut out, |_, _| {})
            .await
            .unwrap();
        assert_eq!(polls, 1);
        assert!(String::from_utf8(out).unwrap().contains("Stopped after 1 pass."));
    }
}
