//! The `dms2delta` binary as a user runs it, on temporary folders.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use dms2delta::config::Config;
use dms2delta::pipeline::Pipeline;
use dms2delta::sim::{diff, rows_of, simulate, Format, SimOptions, Simulation};
use dms2delta::storage::Stores;

fn dms2delta(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dms2delta"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run dms2delta")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Fails with a plain one-line message on stderr and a non-zero exit code.
fn fails(o: &Output, code: i32, message: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(message), "expected `{message}` in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `run` applied everything else but `n` files wait in the quarantine: exit status 3.
fn quarantined_exit(o: &Output, n: usize) {
    let files = if n == 1 { "file is" } else { "files are" };
    fails(o, 3, &format!("applied, but {n} {files} quarantined"));
}

/// The rows of the text tables in `text`: cells of lines drawn with `│`.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('│'))
        .map(|l| l.trim_matches('│').split('┆').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// The summary row of `table` (columns: Table, Files, Inserted, Updated, Deleted, Stale,
/// Version, Rows, Lag, Quarantined).
fn row<'a>(rows: &'a [Vec<String>], table: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == table)
        .unwrap_or_else(|| panic!("no row for {table} in {rows:?}"))
}

/// A simulated DMS output folder with its configuration, whose lake is elsewhere: the tests
/// pass --lake.
struct Site {
    dir: tempfile::TempDir,
    sim: Simulation,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulate(&SimOptions {
            seed: 11,
            tables: 1,
            keys: 10,
            changes: 24,
            max_file_changes: 6,
            formats: Format::ALL.to_vec(),
            ..SimOptions::default()
        });
        sim.write_files(&dir.path().join("source")).unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let text = sim.config(&p("not-the-lake"), &p("staging"), &p("quarantine"), &p("unused"));
        std::fs::write(dir.path().join("config.yaml"), text).unwrap();
        Site { dir, sim }
    }

    fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    fn arg(&self, s: &str) -> String {
        self.path(s).display().to_string()
    }

    fn run(&self, extra: &[&str]) -> Output {
        let (config, source, lake) = (self.arg("config.yaml"), self.arg("source"), self.arg("lake"));
        let mut args = vec!["run", "--config", &config, "--source", &source, "--lake", &lake];
        args.extend_from_slice(extra);
        dms2delta(&args)
    }

    /// Every table read back with dms2delta's reader equals the simulated source table.
    fn check(&self) {
        let text = self.sim.config(
            &self.arg("lake"),
            &self.arg("staging"),
            &self.arg("quarantine"),
            &self.arg("source"),
        );
        let config = Arc::new(Config::from_text(&text).unwrap());
        let pipeline = Pipeline::new(config.clone(), Arc::new(Stores::new(config.config.storage.clone())));
        let rt = tokio::runtime::Runtime::new().unwrap();
        for (name, expected) in &self.sim.expected {
            let mut p = name.splitn(3, '.');
            let (ns, s, t) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            let spec = config.table_by_target(ns, s, t).unwrap();
            let batches = rt
                .block_on(pipeline.read_table(&pipeline.table_location(&spec)))
                .unwrap();
            let actual = rows_of(&batches, &self.sim.columns[name]).unwrap();
            assert_eq!(&actual, expected, "{name}:\n{}", diff(expected, &actual));
        }
    }
}

fn exists(p: &Path) -> bool {
    p.exists()
}

#[test]
fn demo_replicates_checks_and_reports_the_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let started = std::time::Instant::now();
    let out = ok(&dms2delta(&["demo", "--dir", &demo.display().to_string()]));
    assert!(
        started.elapsed().as_secs() < 60,
        "the demo took {:?}",
        started.elapsed()
    );
    assert!(out.contains(&format!("Working folder: {}", demo.display())), "{out}");
    assert_eq!(out.matches("✓ identical").count(), 6, "{out}");
    assert!(out.contains("All 6 tables match their source."), "{out}");
    // The quarantine report: the file, the reason, the fix, where the report is.
    assert!(out.contains("dms/pg/app/t1/20240528-235959999.csv"), "{out}");
    assert!(
        out.contains("reason: unknown_op: line 3: Op `X` is not I, U or D"),
        "{out}"
    );
    assert!(out.contains("fix:    the first field must be I, U or D"), "{out}");
    assert!(out.contains("20240528-235959999.csv.error.json"), "{out}");
    assert!(exists(&demo.join("config.yaml")));
    assert!(exists(
        &demo.join("quarantine/dms-sim/dms/pg/app/t1/20240528-235959999.csv.error.json")
    ));
    assert!(exists(&demo.join("lake/mysql/app/t0/_delta_log")));

    // Its configuration works with the other commands.
    let config = demo.join("config.yaml").display().to_string();
    let status = ok(&dms2delta(&["status", "--config", &config]));
    assert!(status.contains("Quarantined files (1):"), "{status}");
    // The demo's broken file still waits in the quarantine: exit status 3.
    let o = dms2delta(&[
        "run",
        "--config",
        &config,
        "--source",
        &demo.join("source").display().to_string(),
    ]);
    quarantined_exit(&o, 1);
    let again = stdout(&o);
    assert!(again.contains("Nothing new to apply"), "{again}");

    // A folder in use is refused.
    fails(
        &dms2delta(&["demo", "--dir", &demo.display().to_string()]),
        1,
        "is not empty",
    );
}

#[test]
fn running_twice_applies_nothing_the_second_time() {
    let site = Site::new();
    let files = site.sim.files.len();
    let first = ok(&site.run(&[]));
    assert!(first.contains(&format!("{files} files under")), "{first}");
    assert!(
        first.contains(&format!("{files} decoded, 0 already applied")),
        "{first}"
    );
    let rows = table_rows(&first);
    for name in site.sim.expected.keys() {
        let r = row(&rows, name);
        assert_ne!(r[1], "0", "{name} applied no file: {first}");
        assert_eq!(r[7], site.sim.expected[name].len().to_string(), "{first}");
    }
    assert!(exists(&site.path("lake")), "--lake overrides the configuration");
    assert!(!exists(&site.path("not-the-lake")));
    site.check();

    let second = ok(&site.run(&[]));
    assert!(
        second.contains(&format!("0 decoded, {files} already applied")),
        "{second}"
    );
    assert!(second.contains("Nothing new to apply"), "{second}");
    let rows2 = table_rows(&second);
    for name in site.sim.expected.keys() {
        let (r1, r2) = (row(&rows, name), row(&rows2, name));
        assert_eq!(&r2[1..6], ["0", "0", "0", "0", "0"], "{name}: {second}");
        assert_eq!(r2[6], r1[6], "{name}: the version must not move");
    }

    // Decoding everything again: the sequence guard refuses every change.
    let forced = ok(&site.run(&["--force"]));
    assert!(forced.contains(&format!("{files} decoded")), "{forced}");
    for name in site.sim.expected.keys() {
        let r = row(&table_rows(&forced), name).to_vec();
        assert_eq!(&r[2..5], ["0", "0", "0"], "{name}: {forced}");
    }
    site.check();
}

#[test]
fn a_bad_file_is_reported_and_the_rest_applied() {
    let site = Site::new();
    let bad = "dms/mysql/app/t0/20240528-235959999.csv";
    std::fs::write(
        site.path("source").join(bad),
        "X,2024-05-28 23:59:59,1,a,1.00,true,2024-05-28 23:59:59,\n",
    )
    .unwrap();
    // Everything else applied, one file set aside: the documented exit status 3.
    let o = site.run(&[]);
    quarantined_exit(&o, 1);
    let out = stdout(&o);
    assert!(out.contains("1 quarantined"), "{out}");
    assert!(out.contains("Set aside in this pass (the rest was applied):"), "{out}");
    assert!(
        out.contains(&site.path("source").join(bad).display().to_string()),
        "{out}"
    );
    assert!(out.contains("unknown_op"), "{out}");
    assert!(out.contains("fix:"), "{out}");
    assert_eq!(row(&table_rows(&out), "mysql.app.t0")[9], "1", "{out}");
    site.check();

    // Not decoded again until it changes; status lists it; still exit 3 while it waits.
    let o = site.run(&[]);
    quarantined_exit(&o, 1);
    let again = stdout(&o);
    assert!(again.contains("1 quarantined earlier"), "{again}");
    assert!(
        again.contains("1 file quarantined earlier still waits for a fix"),
        "{again}"
    );
    let status = ok(&dms2delta(&[
        "status",
        "--config",
        &site.arg("config.yaml"),
        "--lake",
        &site.arg("lake"),
    ]));
    assert!(status.contains("Quarantined files (1):"), "{status}");
    assert!(status.contains(bad), "{status}");
}

#[test]
fn a_table_removed_from_the_configuration_blocks_nothing() {
    let site = Site::new();
    let config = site.arg("config.yaml");
    // Stage every file, then lose the last commit: the change sets wait in the staging area.
    let (source, lake) = (site.arg("source"), site.arg("lake"));
    ok(&dms2delta(&[
        "run", "--config", &config, "--source", &source, "--lake", &lake,
    ]));
    let extra = "dms/pg/app/t0/20240528-235959999.csv";
    std::fs::write(
        site.path("source").join(extra),
        "Op,id,region,name,amount,active,updated\nI,9999,eu,late,1.00,t,2024-05-28 23:59:59\n",
    )
    .unwrap();
    // The pg table leaves the configuration (excluded by a rule) after its file was staged.
    // Reprocess reaches the DMS files through the configuration's bucket mapping.
    let text = std::fs::read_to_string(site.path("config.yaml"))
        .unwrap()
        .replace(&site.arg("unused"), &source);
    let staged_only = text.replace(
        "    csv: { header: true }\n",
        "    csv: { header: true }\n    rules:\n      - { action: exclude, schema: app, table: t0 }\n",
    );
    assert_ne!(text, staged_only);
    // Stage the new pg file with the old configuration (what a decode before the change did).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = |t: &str| {
        let mut c = dms2delta::config::Config::parse(t).unwrap();
        c.lake = lake.clone();
        c.storage.buckets.insert("dms-sim".into(), source.clone());
        Arc::new(c.validate().unwrap())
    };
    let old = cfg(&text);
    let p = Pipeline::new(old.clone(), Arc::new(Stores::new(old.config.storage.clone())));
    rt.block_on(p.decode("dms-sim", extra, None, Default::default()))
        .unwrap();
    assert_eq!(rt.block_on(p.pending()).unwrap().len(), 1);
    std::fs::write(site.path("config.yaml"), &staged_only).unwrap();

    // The run goes on: the other tables are as before, the change set is set aside with a
    // report naming the fix, and the run says so with exit status 3 (not 1), pass after pass.
    let o = dms2delta(&["run", "--config", &config, "--source", &source, "--lake", &lake]);
    quarantined_exit(&o, 1);
    let status = ok(&dms2delta(&["status", "--config", &config, "--lake", &lake]));
    assert!(status.contains("table_not_configured"), "{status}");
    assert!(status.contains(extra), "{status}");
    assert!(!row(&table_rows(&status), "mysql.app.t0").is_empty(), "{status}");
    assert_eq!(
        row(&table_rows(&status), "pg.app.t0")[6],
        "0",
        "nothing pending: {status}"
    );
    let new = cfg(&staged_only);
    let p = Pipeline::new(new.clone(), Arc::new(Stores::new(new.config.storage.clone())));
    assert!(rt.block_on(p.pending()).unwrap().is_empty(), "nothing left staged");
    quarantined_exit(
        &dms2delta(&["run", "--config", &config, "--source", &source, "--lake", &lake]),
        1,
    );

    // Reprocess decodes the file again under the current configuration: the table is excluded,
    // so its change is dropped on purpose and the report goes away.
    let re = ok(&dms2delta(&["reprocess", "--config", &config, "--lake", &lake]));
    assert!(re.contains("1 quarantined: 1 recovered, 0 still bad"), "{re}");
    ok(&dms2delta(&[
        "run", "--config", &config, "--source", &source, "--lake", &lake,
    ]));
}

#[test]
fn status_and_query_show_the_lake() {
    let site = Site::new();
    ok(&site.run(&[]));
    let (config, lake) = (site.arg("config.yaml"), site.arg("lake"));

    let status = ok(&dms2delta(&["status", "--config", &config, "--lake", &lake]));
    let rows = table_rows(&status);
    let last = site
        .sim
        .files
        .iter()
        .rev()
        .find(|f| f.key.starts_with("dms/pg/"))
        .unwrap();
    for name in site.sim.expected.keys() {
        let r = row(&rows, name);
        assert_eq!(r[1], "1", "one commit: version 1: {status}");
        assert_eq!(r[2], site.sim.expected[name].len().to_string(), "{status}");
        assert!(r[4].starts_with("2024-05-28 "), "newest change: {status}");
        assert!(r[5].ends_with('h'), "lag in days and hours: {status}");
        assert_eq!(&r[6..8], ["0", "0"], "{status}");
    }
    let file_name = last.key.rsplit('/').next().unwrap();
    assert_eq!(row(&rows, "pg.app.t0")[3], file_name, "{status}");
    assert!(status.contains("No quarantined files."), "{status}");

    let n = site.sim.expected["oracle.app.t0"].len();
    let out = ok(&dms2delta(&[
        "query",
        "--config",
        &config,
        "--lake",
        &lake,
        "SELECT count(*) AS n FROM oracle.app.t0",
    ]));
    assert!(out.contains(&format!("| {n} ")), "{out}");
    assert!(out.trim_end().ends_with("(1 row)"), "{out}");

    // --lake alone is enough; rows come back as a table.
    let ids: Vec<i64> = site.sim.expected["mysql.app.t0"]
        .iter()
        .map(|r| match r[0] {
            dms2delta::sim::Value::Int(i) => i,
            ref other => panic!("{other:?}"),
        })
        .collect();
    let out = ok(&dms2delta(&[
        "query",
        "--lake",
        &lake,
        "SELECT id FROM mysql.app.t0 ORDER BY id",
    ]));
    let got: Vec<i64> = out
        .lines()
        .filter_map(|l| l.trim_matches('|').trim().parse().ok())
        .collect();
    assert_eq!(got, ids, "{out}");
}

#[test]
fn watching_is_bounded_by_max_polls() {
    let site = Site::new();
    let out = ok(&site.run(&["--watch", "--interval", "1", "--max-polls", "2"]));
    assert_eq!(out.matches("] pass ").count(), 1, "only the first pass had work: {out}");
    assert!(out.contains("Watching"), "{out}");
    site.check();
}

#[test]
fn mistakes_get_plain_messages_and_non_zero_exits() {
    let site = Site::new();
    let (config, source, lake) = (site.arg("config.yaml"), site.arg("source"), site.arg("lake"));
    fails(
        &dms2delta(&["run", "--source", &source]),
        2,
        "`run` needs a configuration: pass --config FILE",
    );
    fails(&dms2delta(&["status"]), 2, "`status` needs a configuration");
    fails(
        &dms2delta(&["query", "SELECT 1"]),
        2,
        "pass --config FILE or --lake DIR|S3_URI",
    );
    fails(
        &dms2delta(&["run", "--config", &config, "--source", &site.arg("nope")]),
        1,
        &format!("the source folder {} does not exist", site.arg("nope")),
    );
    fails(
        &dms2delta(&["run", "--config", &site.arg("nope.yaml"), "--source", &source]),
        1,
        "the configuration file",
    );
    fails(
        &dms2delta(&["query", "--lake", &site.arg("nope"), "SELECT 1"]),
        1,
        &format!("the lake folder {} does not exist", site.arg("nope")),
    );
    fails(
        &dms2delta(&["status", "--config", &config, "--lake", &site.arg("nope")]),
        1,
        "does not exist",
    );
    std::fs::write(site.path("broken.yaml"), "lake: /l\nstagign: x\n").unwrap();
    fails(
        &dms2delta(&["run", "--config", &site.arg("broken.yaml"), "--source", &source]),
        1,
        "configuration error at `stagign`",
    );
    ok(&site.run(&[]));
    fails(
        &dms2delta(&["query", "--lake", &lake, "SELEC * FROM mysql.app.t0"]),
        1,
        "the query failed",
    );
    fails(
        &dms2delta(&["query", "--lake", &lake, "SELECT * FROM mysql.app.nope"]),
        1,
        "the query failed",
    );
    fails(
        &dms2delta(&["query", "--lake", &lake, "DROP TABLE mysql.app.t0"]),
        1,
        "the query failed",
    );
    // Clap's own usage errors.
    let o = dms2delta(&["run", "--config", &config]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--source"), "{}", stderr(&o));
    let o = dms2delta(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["demo", "--help"],
        vec!["run", "--help"],
        vec!["status", "--help"],
        vec!["query", "--help"],
    ] {
        let out = ok(&dms2delta(&cmd));
        assert!(out.contains("Usage: dms2delta"), "{cmd:?}: {out}");
    }
    let out = ok(&dms2delta(&["query", "--help"]));
    assert!(out.contains("<namespace>.<schema>.<table>"), "{out}");
}
