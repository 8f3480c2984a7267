//! How a pass is shown: the headline, the per-table summary, quarantined files, and the exit status.

use std::io::Write;

use dms2delta::quarantine::QuarantineReport;

use super::pass::RunReport;
use super::source::Source;
use crate::common::{human_duration, human_time, or_dash, text_table, CliResult, Failure};

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
