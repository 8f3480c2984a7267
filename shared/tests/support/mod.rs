//! Shared set-up for the integration tests: a simulated DMS history on local folders, the
//! pipeline over it, and the comparison of the lake with the simulator's expected state.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dms2delta::config::Config;
use dms2delta::pipeline::Pipeline;
use dms2delta::sim::{rows_of, simulate, SimOptions, Simulation};
use dms2delta::storage::{StoreWrapper, Stores};

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub sim: Simulation,
    pub pipeline: Pipeline,
}

impl Lab {
    pub fn new(opts: &SimOptions, wrapper: Option<StoreWrapper>) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulate(opts);
        let p = |s: &str| dir.path().join(s).display().to_string();
        let data = dir.path().join("bucket");
        sim.write_files(&data).unwrap();
        let text = sim.config(&p("lake"), &p("staged"), &p("quarantine"), &data.display().to_string());
        let config = Arc::new(Config::from_text(&text).unwrap());
        let mut stores = Stores::new(config.config.storage.clone());
        if let Some(w) = wrapper {
            stores = stores.with_delta_wrapper(w);
        }
        let pipeline = Pipeline::new(config, Arc::new(stores));
        Lab { dir, sim, pipeline }
    }

    pub fn lake_dir(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    /// Each table's rows, read back with dms2delta's own reader, against the expected state.
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
            let actual = rows_of(&batches, &self.sim.columns[name])?;
            if &actual != expected {
                return Err(format!(
                    "table {name}: {} rows expected, {} read\n{}",
                    expected.len(),
                    actual.len(),
                    dms2delta::sim::diff(expected, &actual)
                ));
            }
        }
        Ok(())
    }

    /// The same comparison through an independent reader: the Python `deltalake` package.
    pub fn check_with_python(&self) -> Result<(), String> {
        let Some(python) = python() else {
            return Err("no Python with the deltalake package: run `.ci/run` once or set DMS2DELTA_PYTHON (DMS2DELTA_SKIP_PYTHON=1 skips this check)".into());
        };
        for (name, expected) in &self.sim.expected {
            let path = self.lake_dir().join(name.replace('.', "/"));
            let cols = self.sim.columns[name].join(",");
            let out = std::process::Command::new(&python)
                .arg(repo().join("tests/read_delta.py"))
                .arg(&path)
                .arg(&cols)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
            if !out.status.success() {
                return Err(format!("python reader failed on {name}: {}", String::from_utf8_lossy(&out.stderr)));
            }
            let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
            got.sort();
            let mut want: Vec<String> = expected
                .iter()
                .map(|r| r.iter().map(|v| v.canonical().replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n")).collect::<Vec<_>>().join("\t"))
                .collect();
            want.sort();
            if got != want {
                return Err(format!("python reader: table {name} differs: expected {want:?}, got {got:?}"));
            }
        }
        Ok(())
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python that has the deltalake package: DMS2DELTA_PYTHON, else the repo's .venv.
pub fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DMS2DELTA_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = repo().join(".venv/bin/python");
    let ok = venv.exists()
        && std::process::Command::new(&venv)
            .args(["-c", "import deltalake"])
            .output()
            .is_ok_and(|o| o.status.success());
    ok.then_some(venv)
}

pub fn skip_python() -> bool {
    std::env::var("DMS2DELTA_SKIP_PYTHON").is_ok_and(|v| v == "1")
}
