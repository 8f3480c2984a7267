//! `dms2delta demo`: the whole pipeline on a laptop, in seconds, with nothing to set up.
//!
//! Simulates what three DMS tasks would write to S3 (MySQL as headerless CSV, PostgreSQL as CSV
//! with a header, Oracle as Parquet; two tables each; a full load, then inserts, updates,
//! deletes and re-inserts), adds one broken file, replicates everything into a local Delta lake
//! with the same code as `run`, and checks every table against the simulated source tables.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use dms2delta::config::Config;
use dms2delta::sim::{diff, rows_of, simulate, Format, SimOptions, Simulation};

use crate::common::{text_table, CliResult, Failure};
use crate::run::{attach_source, run_once, summary_table, write_quarantine, RunReport, RunState};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The folder to work in; created if missing and must be empty. Default: a new folder in the
    /// system's temporary directory (printed first, and kept so you can look around).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The bucket folder of the broken file and its table.
const BAD_TABLE: &str = "pg.app.t1";
const BAD_KEY: &str = "dms/pg/app/t1/20240528-235959999.csv";

/// The history the demo replays: small enough for seconds in a debug build, big enough to have
/// every kind of change in every table.
pub fn options() -> SimOptions {
    SimOptions {
        seed: 2024,
        tables: 2,
        keys: 12,
        changes: 40,
        max_file_changes: 8,
        formats: Format::ALL.to_vec(),
        ..SimOptions::default()
    }
}

/// A CDC file for `pg.app.t1` whose second change has the operation `X`.
fn broken_file(sim: &Simulation) -> CliResult<Vec<u8>> {
    let columns = sim
        .columns
        .get(BAD_TABLE)
        .ok_or_else(|| Failure::new(format!("the simulation has no table {BAD_TABLE}")))?;
    let values = |id: u32, op: &str| -> String {
        let mut row = vec![op.to_string()];
        for c in columns {
            row.push(match c.as_str() {
                "id" => id.to_string(),
                "region" => "eu".into(),
                "name" => "Mallory".into(),
                "amount" => "1.00".into(),
                "active" => "t".into(),
                "updated" => "2024-05-28 23:59:59.000000".into(),
                _ => String::new(),
            });
        }
        row.join(",")
    };
    Ok(format!("Op,{}\n{}\n{}\n", columns.join(","), values(900, "I"), values(901, "X")).into_bytes())
}

fn prepare_dir(dir: Option<&Path>) -> CliResult<PathBuf> {
    match dir {
        Some(d) => {
            if d.exists() {
                let mut entries = std::fs::read_dir(d)
                    .map_err(|e| Failure::new(format!("cannot use {} as the demo folder: {e}", d.display())))?;
                if entries.next().is_some() {
                    return Err(Failure::new(format!(
                        "the demo folder {} is not empty: pass a new or empty folder with --dir",
                        d.display()
                    )));
                }
            }
            std::fs::create_dir_all(d).map_err(|e| Failure::new(format!("cannot create {}: {e}", d.display())))?;
            std::path::absolute(d).map_err(|e| Failure::new(format!("cannot resolve {}: {e}", d.display())))
        }
        None => tempfile::Builder::new()
            .prefix("dms2delta-demo-")
            .tempdir()
            .map(|t| t.keep())
            .map_err(|e| Failure::new(format!("cannot create a temporary folder: {e}"))),
    }
}

/// `31 decoded, 0 already applied, 1 quarantined`.
fn counts(report: &RunReport) -> String {
    let mut parts = vec![
        format!("{} files decoded", report.decoded),
        format!("{} already applied", report.already_applied),
    ];
    if !report.quarantined.is_empty() {
        parts.push(format!("{} quarantined", report.quarantined.len()));
    }
    if report.quarantined_earlier > 0 {
        parts.push(format!("{} quarantined earlier", report.quarantined_earlier));
    }
    parts.join(", ")
}

/// The files in two deliveries: every full load and the first half of each table's CDC files,
/// then the rest with the broken file.
fn arrivals(sim: &Simulation) -> (Vec<(&str, &[u8])>, Vec<(&str, &[u8])>) {
    let folder = |k: &str| k.rsplit_once('/').map(|(f, _)| f.to_string()).unwrap_or_default();
    let mut first = Vec::new();
    let mut second: Vec<(&str, &[u8])> = Vec::new();
    let folders: std::collections::BTreeSet<String> = sim.files.iter().map(|f| folder(&f.key)).collect();
    for dir in folders {
        let files: Vec<_> = sim.files.iter().filter(|f| folder(&f.key) == dir).collect();
        let cdc: Vec<_> = files.iter().filter(|f| !f.key.contains("/LOAD")).collect();
        let early = cdc.len() / 2;
        for f in &files {
            let late = cdc.iter().skip(early).any(|c| c.key == f.key);
            let entry = (f.key.as_str(), f.bytes.as_slice());
            if late {
                second.push(entry);
            } else {
                first.push(entry);
            }
        }
    }
    (first, second)
}

fn count_files(sim: &Simulation, source: &str) -> (usize, usize) {
    let prefix = format!("dms/{source}/");
    let files: Vec<_> = sim.files.iter().filter(|f| f.key.starts_with(&prefix)).collect();
    let load = files.iter().filter(|f| f.key.contains("/LOAD")).count();
    (load, files.len() - load)
}

/// `dms2delta demo`.
pub async fn execute(args: &DemoArgs, out: &mut dyn Write) -> CliResult<()> {
    let started = std::time::Instant::now();
    let dir = prepare_dir(args.dir.as_deref())?;
    let source_dir = dir.join("source");
    let p = |s: &str| dir.join(s).display().to_string();
    writeln!(
        out,
        "dms2delta demo: simulated AWS DMS output replicated into a local Delta lake."
    )?;
    writeln!(out, "Working folder: {}", dir.display())?;
    writeln!(out)?;

    // 1. What DMS would have written.
    let sim = simulate(&options());
    let broken = broken_file(&sim)?;
    let (first, mut second) = arrivals(&sim);
    second.push((BAD_KEY, broken.as_slice()));
    let mut text = String::from(
        "# Written by `dms2delta demo`: three simulated DMS tasks writing to the bucket `dms-sim`,\n\
         # which `storage.buckets` maps to the local folder source/.\n",
    );
    text.push_str(&sim.config(&p("lake"), &p("staging"), &p("quarantine"), &p("source")));
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, &text)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", config_path.display())))?;

    let opts = options();
    writeln!(out, "1. Simulated the output of three DMS tasks")?;
    writeln!(
        out,
        "   Each table: a full load, then {} changes (inserts, updates, deletes, re-inserts of deleted keys).",
        opts.changes
    )?;
    let mut t = text_table(&["Source", "DMS settings", "Tables", "Full-load files", "CDC files"]);
    for (source, settings) in [
        ("mysql", "headerless CSV, some gzipped; AR_H_CHANGE_SEQ column"),
        (
            "pg",
            "CSV with header; no sequence column; key-only deletes; 2-column key",
        ),
        ("oracle", "Parquet; AR_H_CHANGE_SEQ column"),
    ] {
        let (load, cdc) = count_files(&sim, source);
        t.add_row(vec![
            source.to_string(),
            settings.to_string(),
            opts.tables.to_string(),
            load.to_string(),
            cdc.to_string(),
        ]);
    }
    if let Some(c) = t.column_mut(1) {
        c.set_cell_alignment(comfy_table::CellAlignment::Left);
    }
    writeln!(out, "{t}")?;
    writeln!(
        out,
        "   Plus one broken file among them: {BAD_KEY} (a change whose Op is `X`, not I, U or D)."
    )?;
    writeln!(out, "   Configuration: {}", config_path.display())?;
    writeln!(out)?;

    // 2. Replicate as the files arrive, with the same code as `dms2delta run`.
    let mut config = Config::parse(&text)?;
    std::fs::create_dir_all(&source_dir)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", source_dir.display())))?;
    let source = attach_source(&mut config, &p("source"))?;
    let pipeline = crate::common::pipeline(config)?;
    writeln!(
        out,
        "2. Replicating {} into {}, pass by pass as DMS would deliver the files",
        source_dir.display(),
        dir.join("lake").display()
    )?;
    let mut state = RunState::default();
    let mut quarantined = Vec::new();
    let mut failures = Vec::new();
    let passes: [(&str, Vec<(&str, &[u8])>); 2] = [
        ("the full loads and the first half of the CDC files arrive", first),
        ("the other CDC files arrive, the broken one among them", second),
    ];
    let mut versions = Vec::new();
    for (i, (what, files)) in passes.iter().enumerate() {
        for (key, bytes) in files {
            let path = source_dir.join(key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Failure::new(format!("cannot create {}: {e}", parent.display())))?;
            }
            std::fs::write(&path, bytes).map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
        }
        let report = run_once(&pipeline, &source, &mut state, false).await?;
        writeln!(out, "   Pass {}: {what} ({})", i + 1, counts(&report))?;
        writeln!(out, "{}", summary_table(&report, false))?;
        versions = report.tables.iter().map(|t| t.info.version).collect();
        quarantined.extend(report.quarantined);
    }
    let again = run_once(&pipeline, &source, &mut state, false).await?;
    let same: Vec<_> = again.tables.iter().map(|t| t.info.version).collect();
    writeln!(
        out,
        "   Pass 3: nothing new arrives ({}); every table keeps its version.",
        counts(&again)
    )?;
    if again.decoded > 0 || again.changed_rows() > 0 || same != versions {
        failures.push("running again over the same files changed the lake".to_string());
    }
    writeln!(
        out,
        "   Each pass makes one commit per table with every change to it, so a key inserted and\n   \
         deleted in the same pass counts once, as what it did to the table. Stale: changes the\n   \
         table already had a newer version of. Newest change: the newest source commit time applied."
    )?;
    writeln!(out)?;

    // 3. Check against the simulator's source tables.
    writeln!(
        out,
        "3. Every Delta table read back and compared with the simulated source table"
    )?;
    let mut t = text_table(&["Table", "Rows in source", "Rows in Delta", "Result"]);
    for (name, expected) in &sim.expected {
        let mut parts = name.splitn(3, '.');
        let (Some(ns), Some(schema), Some(table)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Failure::new(format!("unexpected table name {name}")));
        };
        let spec = pipeline
            .config
            .table_by_target(ns, schema, table)
            .ok_or_else(|| Failure::new(format!("{name} is not in the demo's configuration")))?;
        let batches = pipeline.read_table(&pipeline.table_location(&spec)).await?;
        let columns = sim.columns.get(name).cloned().unwrap_or_default();
        let actual = rows_of(&batches, &columns).map_err(|e| Failure::new(format!("{name}: {e}")))?;
        let same = &actual == expected;
        t.add_row(vec![
            name.clone(),
            expected.len().to_string(),
            actual.len().to_string(),
            if same { "✓ identical" } else { "✗ differs" }.to_string(),
        ]);
        if !same {
            failures.push(format!("{name}:\n{}", diff(expected, &actual)));
        }
    }
    writeln!(out, "{t}")?;
    writeln!(out)?;

    // 4. The broken file.
    writeln!(
        out,
        "4. The broken file was set aside with a report; everything else was applied:"
    )?;
    let bad = quarantined.iter().find(|(_, r)| r.key == BAD_KEY);
    match bad {
        Some((at, r)) => write_quarantine(out, &source, at, r)?,
        None => failures.push(format!("{BAD_KEY} was not quarantined")),
    }
    for (at, r) in quarantined.iter().filter(|(_, r)| r.key != BAD_KEY) {
        write_quarantine(out, &source, at, r)?;
        failures.push(format!("{} was quarantined unexpectedly", r.key));
    }
    writeln!(out)?;

    if !failures.is_empty() {
        for f in &failures {
            writeln!(out, "✗ {f}")?;
        }
        return Err(Failure::new(format!(
            "the demo's check failed: {} problem{} (listed above)",
            failures.len(),
            if failures.len() == 1 { "" } else { "s" }
        )));
    }
    let cfg = config_path.display();
    writeln!(
        out,
        "All {} tables match their source. Done in {:.1}s. Try next:",
        sim.expected.len(),
        started.elapsed().as_secs_f64()
    )?;
    writeln!(out, "  dms2delta status --config {cfg}")?;
    writeln!(
        out,
        "  dms2delta query --config {cfg} \"SELECT * FROM mysql.app.t0 ORDER BY id LIMIT 5\""
    )?;
    writeln!(
        out,
        "  dms2delta run --config {cfg} --source {}   # again: nothing new to apply",
        source_dir.display()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broken_file_has_the_tables_columns_and_an_unknown_op() {
        let sim = simulate(&options());
        let text = String::from_utf8(broken_file(&sim).unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Op,id,region,name,amount,active,updated");
        assert!(lines[1].starts_with("I,900,eu,"));
        assert!(lines[2].starts_with("X,901,eu,"));
        assert!(
            !sim.files.iter().any(|f| f.key == BAD_KEY),
            "must not replace a real file"
        );
    }

    #[test]
    fn files_arrive_in_two_deliveries_with_loads_first() {
        let sim = simulate(&options());
        let (first, second) = arrivals(&sim);
        assert_eq!(first.len() + second.len(), sim.files.len());
        assert!(second.iter().all(|(k, _)| !k.contains("/LOAD")));
        // Every table gets CDC files in both deliveries.
        for name in sim.expected.keys() {
            let dir = format!("dms/{}/", name.replace('.', "/"));
            assert!(
                first.iter().any(|(k, _)| k.starts_with(&dir) && !k.contains("/LOAD")),
                "{name}"
            );
            assert!(second.iter().any(|(k, _)| k.starts_with(&dir)), "{name}");
        }
    }

    #[test]
    fn the_history_has_every_kind_of_file() {
        let sim = simulate(&options());
        for source in ["mysql", "pg", "oracle"] {
            let (load, cdc) = count_files(&sim, source);
            assert!(load >= 2 && cdc >= 2, "{source}: {load} {cdc}");
        }
        assert_eq!(sim.expected.len(), 6);
    }

    #[test]
    fn a_folder_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), b"").unwrap();
        let e = prepare_dir(Some(dir.path())).unwrap_err();
        assert!(e.message.contains("is not empty"), "{e}");
        let fresh = dir.path().join("new/demo");
        assert_eq!(prepare_dir(Some(&fresh)).unwrap(), fresh);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_replicates_checks_and_reports_the_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        execute(
            &DemoArgs {
                dir: Some(dir.path().join("demo")),
            },
            &mut out,
        )
        .await
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("✓ identical").count(), 6, "{text}");
        assert!(text.contains("unknown_op"), "{text}");
        assert!(text.contains("All 6 tables match their source."), "{text}");
        assert!(dir.path().join("demo/config.yaml").is_file());
    }
}
