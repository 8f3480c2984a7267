//! `dms2delta status`: where each table stands: its Delta version and size, the last source file
//! applied, how far behind the source it is, what waits in staging and what was set aside.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Args;
use dms2delta::operations::commit::applied_files;
use dms2delta::pipeline::Pipeline;
use dms2delta::quarantine::{list_reports, QuarantineReport};
use futures::TryStreamExt;

use crate::common::{
    config_required, human_duration, human_time, known_tables, load_config, or_dash, pipeline, report_location,
    require_existing, shown, table_info, table_location, text_table, CliResult, LakeTable, TableInfo,
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Where the Delta tables live; overrides `lake` in the configuration.
    #[arg(long, value_name = "DIR|S3_URI")]
    pub lake: Option<String>,

    /// The configuration (local path or s3://bucket/key); it names the tables, the staging
    /// area and the quarantine. Required.
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
}

/// One table's line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableStatus {
    pub name: String,
    pub info: TableInfo,
    /// The version that applied it and the file.
    pub last_applied: Option<(u64, String)>,
    /// Change sets staged and not committed yet.
    pub pending: usize,
    pub quarantined: usize,
}

/// Everything `status` shows.
#[derive(Debug, Default)]
pub struct Status {
    pub tables: Vec<TableStatus>,
    /// Report location, report.
    pub reports: Vec<(String, QuarantineReport)>,
}

/// How many commits back to look for the last applied file (compactions and other writers'
/// commits name none).
const HISTORY_DEPTH: usize = 50;

pub async fn collect(pipeline: &Pipeline) -> CliResult<Status> {
    let config = &pipeline.config;
    let mut tables: Vec<LakeTable> = known_tables(pipeline).await?.into_iter().map(|(t, _)| t).collect();

    // Pending change sets, counted per table.
    let mut pending: BTreeMap<LakeTable, usize> = BTreeMap::new();
    let (stage_store, stage_root) = pipeline.stores.resolve(&config.staging)?;
    for t in pipeline.pending().await? {
        let dir = dms2delta::stage::names_dir(&stage_root, &t)?;
        let staged: Vec<_> = stage_store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| crate::common::Failure::new(format!("cannot list staged change sets in {dir}: {e}")))?;
        if !tables.contains(&t) {
            tables.push(t.clone());
        }
        pending.insert(
            t,
            staged
                .iter()
                .filter(|m| m.location.as_ref().ends_with(".parquet"))
                .count(),
        );
    }
    tables.sort();

    let (qstore, qroot) = pipeline.stores.resolve(&config.quarantine)?;
    let reports: Vec<(String, QuarantineReport)> = list_reports(qstore.as_ref(), &qroot)
        .await?
        .into_iter()
        .map(|(p, r)| (report_location(&pipeline.stores, &config.quarantine, p.as_ref()), r))
        .collect();

    let mut out = Vec::new();
    for t in tables {
        let loc = table_location(&t, &config.lake);
        let info = table_info(&pipeline.stores, &loc).await?;
        let last_applied = if info.version.is_some() {
            applied_files(&pipeline.stores, &loc, Some(HISTORY_DEPTH))
                .await?
                .into_iter()
                .find_map(|(v, files)| files.last().map(|f| (v, f.clone())))
        } else {
            None
        };
        let name = t.qualified_name();
        out.push(TableStatus {
            quarantined: reports
                .iter()
                .filter(|(_, r)| r.table.as_deref() == Some(name.as_str()))
                .count(),
            pending: pending.get(&t).copied().unwrap_or(0),
            name,
            info,
            last_applied,
        });
    }
    Ok(Status { tables: out, reports })
}

/// The file name of an `s3://bucket/…/name` URI.
fn file_name(uri: &str) -> &str {
    uri.rsplit('/').next().unwrap_or(uri)
}

pub fn render(out: &mut dyn Write, pipeline: &Pipeline, status: &Status) -> CliResult<()> {
    let config = &pipeline.config;
    writeln!(out, "Lake:       {}", shown(&config.lake))?;
    writeln!(out, "Staging:    {}", shown(&config.staging))?;
    writeln!(out, "Quarantine: {}", shown(&config.quarantine))?;
    let mut t = text_table(&[
        "Table",
        "Version",
        "Rows",
        "Last applied file",
        "Newest change",
        "Lag",
        "Pending",
        "Quarantined",
    ]);
    for s in &status.tables {
        t.add_row(vec![
            s.name.clone(),
            or_dash(s.info.version),
            or_dash(s.info.rows),
            s.last_applied
                .as_ref()
                .map(|(_, f)| file_name(f).to_string())
                .unwrap_or_else(|| "-".into()),
            s.info.newest_change.map(human_time).unwrap_or_else(|| "-".into()),
            s.info.lag_seconds().map(human_duration).unwrap_or_else(|| "-".into()),
            s.pending.to_string(),
            s.quarantined.to_string(),
        ]);
    }
    if let Some(c) = t.column_mut(3) {
        c.set_cell_alignment(comfy_table::CellAlignment::Left);
    }
    writeln!(out, "{t}")?;
    if status.tables.is_empty() {
        writeln!(
            out,
            "No tables yet: the configuration names none and the lake holds none."
        )?;
    }
    let pending: usize = status.tables.iter().map(|s| s.pending).sum();
    if pending > 0 {
        writeln!(
            out,
            "{pending} change set{} staged and waiting for a commit (`dms2delta run` or the commit function applies them).",
            if pending == 1 { " is" } else { "s are" }
        )?;
    }
    if status.reports.is_empty() {
        writeln!(out, "No quarantined files.")?;
    } else {
        writeln!(out, "Quarantined files ({}):", status.reports.len())?;
        for (at, r) in &status.reports {
            writeln!(out, "  ✗ {}", r.file)?;
            if let Some(t) = &r.table {
                writeln!(out, "    table:  {t}")?;
            }
            writeln!(out, "    reason: {}: {}", r.kind, r.reason)?;
            writeln!(out, "    fix:    {}", r.fix)?;
            writeln!(out, "    report: {at} (written {})", r.time)?;
        }
    }
    Ok(())
}

/// `dms2delta status`.
pub async fn execute(args: &StatusArgs, out: &mut dyn Write) -> CliResult<()> {
    let Some(config_path) = &args.config else {
        return Err(config_required("status"));
    };
    let config = load_config(config_path, args.lake.as_deref()).await?;
    let pipeline = pipeline(config)?;
    require_existing(&pipeline.stores.physical(&pipeline.config.lake), "lake")?;
    let status = collect(&pipeline).await?;
    render(out, &pipeline, &status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{attach_source, run_once, RunState};
    use dms2delta::config::Config;
    use dms2delta::sim::{simulate, Format, SimOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_shows_versions_pending_change_sets_and_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulate(&SimOptions {
            seed: 5,
            tables: 1,
            keys: 6,
            changes: 10,
            max_file_changes: 4,
            formats: vec![Format::CsvSeq],
            ..SimOptions::default()
        });
        let p = |s: &str| dir.path().join(s).display().to_string();
        sim.write_files(&dir.path().join("source")).unwrap();
        let text = sim.config(&p("lake"), &p("staged"), &p("quarantine"), &p("source"));
        let mut config = Config::parse(&text).unwrap();
        let source = attach_source(&mut config, &p("source")).unwrap();
        let pipeline = crate::common::pipeline(config).unwrap();
        run_once(&pipeline, &source, &mut RunState::default(), false)
            .await
            .unwrap();

        // A file that cannot be decoded, and one decoded but not committed yet.
        let bad = "dms/mysql/app/t0/20300101-000000000.csv";
        std::fs::write(dir.path().join("source").join(bad), b"X,1,2,3\n").unwrap();
        pipeline
            .decode(&sim.bucket, bad, None, Default::default())
            .await
            .unwrap();
        let last = sim.files.last().unwrap();
        pipeline
            .decode(&sim.bucket, &last.key, Some("again".into()), Default::default())
            .await
            .unwrap();

        let status = collect(&pipeline).await.unwrap();
        assert_eq!(status.tables.len(), 1);
        let t = &status.tables[0];
        assert_eq!(t.name, "mysql.app.t0");
        assert!(t.info.version.is_some());
        assert_eq!(t.pending, 1);
        assert_eq!(t.quarantined, 1);
        let (_, file) = t.last_applied.clone().unwrap();
        assert_eq!(file, format!("s3://{}/{}", sim.bucket, last.key));
        assert!(t.info.newest_change.is_some());
        assert_eq!(status.reports.len(), 1);
        assert!(status.reports[0].0.ends_with("20300101-000000000.csv.error.json"));

        let mut out = Vec::new();
        render(&mut out, &pipeline, &status).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("mysql.app.t0"), "{text}");
        assert!(text.contains(file_name(&last.key)), "{text}");
        assert!(text.contains("1 change set is staged"), "{text}");
        assert!(text.contains("Quarantined files (1):"), "{text}");
        assert!(text.contains("reason: field_count"), "{text}");
    }
}
