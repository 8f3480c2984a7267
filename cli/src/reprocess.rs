//! `dms2delta reprocess`: the reprocess function's reconciliation, for a lake reached from this
//! machine. Files whose events were lost are decoded, quarantined files are tried again (their
//! reports go once they decode), and tables with change sets waiting are committed.

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::Args;
use dms2delta::operations::reprocess::{ReprocessBuilder, ReprocessMetrics};

use crate::common::{config_required, load_config, pipeline, require_existing, CliResult, Failure};

#[derive(Debug, Args)]
pub struct ReprocessArgs {
    /// The configuration (local path or s3://bucket/key). Required.
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,

    /// Where the Delta tables live; overrides `lake` in the configuration.
    #[arg(long, value_name = "DIR|S3_URI")]
    pub lake: Option<String>,

    /// Only this table, as `namespace.schema.table`.
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,

    /// Look for lost events only among DMS files written at or after this time (RFC 3339, e.g.
    /// 2026-11-27T00:00:00Z); quarantined files are tried again whatever their age.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,

    /// Show what would be done and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Leave quarantined files alone.
    #[arg(long)]
    pub skip_quarantined: bool,
}

pub fn parse_since(text: &str) -> CliResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Failure::usage(format!(
                "--since {text}: not an RFC 3339 time ({e}); e.g. 2026-11-27T00:00:00Z"
            ))
        })
}

pub async fn execute(args: &ReprocessArgs, out: &mut dyn Write) -> CliResult<()> {
    let Some(config_path) = &args.config else {
        return Err(config_required("reprocess"));
    };
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let config = load_config(config_path, args.lake.as_deref()).await?;
    let pipeline = pipeline(config)?;
    require_existing(&pipeline.stores.physical(&pipeline.config.lake), "lake")?;
    let m = ReprocessBuilder::new(pipeline.config.clone(), &pipeline.stores)
        .with_table(args.table.clone())
        .with_since(since)
        .with_dry_run(args.dry_run)
        .with_retry_quarantined(!args.skip_quarantined)
        .await?;
    render(out, &m)?;
    if !m.tables_failed.is_empty() {
        return Err(crate::common::Failure::new(format!(
            "{} table(s) could not be committed; every other table was",
            m.tables_failed.len()
        )));
    }
    Ok(())
}

pub fn render(out: &mut dyn Write, m: &ReprocessMetrics) -> CliResult<()> {
    let mode = if m.dry_run { " (dry run: nothing changed)" } else { "" };
    writeln!(out, "Reprocess{mode}:")?;
    writeln!(
        out,
        "  {} DMS files: {} applied, {} staged, {} missing (events lost)",
        m.files_listed, m.files_applied, m.files_staged, m.files_missing
    )?;
    for f in &m.missing {
        writeln!(out, "    missing: {f}")?;
    }
    if !m.dry_run {
        writeln!(out, "  {} missing files decoded again", m.files_requeued)?;
    }
    writeln!(
        out,
        "  {} quarantined: {} recovered, {} still bad",
        m.quarantined, m.quarantine_recovered, m.quarantine_still_bad
    )?;
    for f in &m.recovered {
        writeln!(out, "    recovered: {f}")?;
    }
    let verb = if m.dry_run { "to commit" } else { "committed" };
    writeln!(
        out,
        "  tables {verb}: {}",
        if m.tables_committed.is_empty() {
            "none".to_string()
        } else {
            m.tables_committed.join(", ")
        }
    )?;
    if !m.dry_run {
        writeln!(out, "  rows changed: {}", m.rows_changed)?;
    }
    for f in &m.tables_failed {
        writeln!(out, "    not committed: {f}")?;
    }
    if m.remaining > 0 {
        writeln!(out, "  {} left for the next run", m.remaining)?;
    }
    Ok(())
}
