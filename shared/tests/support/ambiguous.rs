//! Ambiguous commits: a Delta log write lands but its answer is lost, so the committer cannot
//! tell whether its version exists. Shared by the local-folder and the S3 test binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dms2delta::failpoint::Failpoints;
use dms2delta::faults::{Call, Fault, FaultyStore};
use dms2delta::operations::commit::{applied_files, CommitMetrics};
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::sim::{Format, SimOptions};
use dms2delta::storage::StoreWrapper;

use super::{Lab, On};

/// Lost answers injected, by which log they hit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// Writes to a replicated table's log.
    pub table: u64,
    /// Writes to a tombstone table's log.
    pub tombstones: u64,
    /// Conflicts between the concurrent committers.
    pub conflicts: u64,
}

impl std::ops::AddAssign for Lost {
    fn add_assign(&mut self, o: Lost) {
        self.table += o.table;
        self.tombstones += o.tombstones;
        self.conflicts += o.conflicts;
    }
}

/// A log entry whose answer was lost: the table (`namespace.schema.table`) and version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LostEntry {
    table: String,
    version: u64,
}

/// `…/<ns>/<schema>/<table>/_delta_log/<version>.json` -> the entry, and whether it is a
/// tombstone table's log.
fn parse_log_path(path: &str) -> Option<(LostEntry, bool)> {
    let (dir, file) = path.split_once("/_delta_log/")?;
    let version = file.strip_suffix(".json")?.parse().ok()?;
    let parts: Vec<&str> = dir.rsplitn(4, '/').collect();
    let table = format!("{}.{}.{}", parts.get(2)?, parts.get(1)?, parts.first()?);
    Some((LostEntry { table, version }, dir.contains("_dms2delta/tombstones/")))
}

/// The files of the history committed in DMS's order, a few at a time, by two committers per
/// table racing each other, while a share of the Delta log writes land but answer with an error
/// (table logs and tombstone logs alike). Then: the tables equal the source (data and stored
/// sequences), the logs are whole, nothing is pending or quarantined, and the traceability
/// record names the right versions: each successful commit's version names exactly the files
/// that commit reported, each version whose answer was lost names files that some successful
/// commit reported too, and every file is named by some version.
pub async fn ambiguous_commits(seed: u64, on: On, dv: bool) -> Result<Lost, String> {
    println!("ambiguous commit case: seed {seed} on {on:?}, deletion vectors {dv}");
    let context = format!("seed {seed} on {on:?} (deletion vectors {dv})");
    run(seed, on, dv).await.map_err(|e| format!("{context}: {e}"))
}

async fn run(seed: u64, on: On, dv: bool) -> Result<Lost, String> {
    let opts = SimOptions {
        seed,
        tables: 1,
        keys: 8,
        changes: 30,
        max_file_changes: 4,
        formats: Format::ALL.to_vec(),
        ..SimOptions::default()
    };
    let lost: Arc<Mutex<Vec<(LostEntry, bool)>>> = Arc::default();
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    let (l, r) = (lost.clone(), rng.clone());
    let wrapper: StoreWrapper = Arc::new(move |inner| {
        let (l, r) = (l.clone(), r.clone());
        Arc::new(FaultyStore::with_faults(inner, move |call, path| {
            if call != Call::Put {
                return Fault::Pass;
            }
            let Some((entry, tomb)) = parse_log_path(path.as_ref()) else {
                return Fault::Pass;
            };
            // Tombstone writes are rarer (only commits with deletes make them): lose more.
            let p = if tomb { 0.5 } else { 0.3 };
            if r.lock().unwrap().f64() < p {
                l.lock().unwrap().push((entry, tomb));
                Fault::FailAfter
            } else {
                Fault::Pass
            }
        }))
    });
    let lab = Lab::configured(on, &opts, Some(wrapper), None, dv, "").await;
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut commits: Vec<CommitMetrics> = Vec::new();
    for chunk in lab.sim.files.chunks(4) {
        let mut tables = BTreeSet::new();
        for f in chunk {
            match lab
                .pipeline
                .decode(&lab.bucket, &f.key, Some("e".into()), Failpoints::default())
                .await
            {
                Ok(DecodeOutcome::Staged(m)) => tables.extend(m.tables.into_iter().map(|t| t.table)),
                other => return Err(format!("decode {}: {other:?}", f.key)),
            }
        }
        let mut tasks = Vec::new();
        for t in &tables {
            let parts: Vec<String> = t.splitn(3, '.').map(str::to_string).collect();
            // Two committers on the same table, released together.
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            for _ in 0..2 {
                let (p, parts, barrier) = (lab.pipeline.clone(), parts.clone(), barrier.clone());
                let conflicts = conflicts.clone();
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let mut done = Vec::new();
                    // The queue redelivers what failed; so does this loop, bounded.
                    for _ in 0..500 {
                        match p.commit(&parts[0], &parts[1], &parts[2], Failpoints::default()).await {
                            Ok(m) => {
                                conflicts.fetch_add(u64::from(m.conflicts), Ordering::Relaxed);
                                done.push(m);
                                return Ok(done);
                            }
                            Err(e) if e.is_retryable() => {
                                if let dms2delta::Error::Conflict { attempts, .. } = &e {
                                    conflicts.fetch_add(u64::from(*attempts), Ordering::Relaxed);
                                }
                            }
                            Err(e) => return Err(format!("commit {}: {e}", parts.join("."))),
                        }
                    }
                    Err(format!("commit {}: still failing after 500 tries", parts.join(".")))
                }));
            }
        }
        for t in tasks {
            commits.extend(t.await.map_err(|e| format!("committer: {e}"))??);
        }
    }
    let pending = lab.pipeline.pending().await.map_err(|e| e.to_string())?;
    if !pending.is_empty() {
        return Err(format!("change sets left staged: {pending:?}"));
    }
    if let Some(m) = commits.iter().find(|m| !m.quarantined.is_empty()) {
        return Err(format!("quarantined: {m:?}"));
    }
    lab.check_quarantine().await?;
    lab.check_log().await?;
    lab.check().await?;
    let lost = lost.lock().unwrap().clone();
    check_trace(&lab, &commits, &lost).await?;
    Ok(Lost {
        table: lost.iter().filter(|(_, tomb)| !tomb).count() as u64,
        tombstones: lost.iter().filter(|(_, tomb)| *tomb).count() as u64,
        conflicts: conflicts.load(Ordering::Relaxed),
    })
}

/// Versions and files trace each other (see [`ambiguous_commits`]).
async fn check_trace(lab: &Lab, commits: &[CommitMetrics], lost: &[(LostEntry, bool)]) -> Result<(), String> {
    for name in lab.sim.expected.keys() {
        let mut p = name.splitn(3, '.');
        let (ns, schema, table) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let spec = lab.pipeline.config.table_by_target(ns, schema, table).unwrap();
        let loc = lab.pipeline.table_location(&spec);
        let trace: BTreeMap<u64, BTreeSet<String>> = applied_files(&lab.pipeline.stores, &loc, None)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(v, files)| (v, files.into_iter().collect()))
            .collect();
        let mut reported: BTreeSet<String> = BTreeSet::new();
        for m in commits.iter().filter(|m| &m.table == name) {
            let Some(v) = m.version else { continue };
            let said: BTreeSet<String> = m.source_files.iter().cloned().collect();
            if trace.get(&v) != Some(&said) {
                return Err(format!(
                    "{name}: a commit reported version {v} for {said:?}, but that version names {:?}",
                    trace.get(&v)
                ));
            }
            reported.extend(said);
        }
        for (entry, _) in lost.iter().filter(|(e, tomb)| !tomb && &e.table == name) {
            // Versions that only create the table or change its protocol name no files.
            let Some(named) = trace.get(&entry.version) else {
                continue;
            };
            if let Some(f) = named.iter().find(|f| !reported.contains(*f)) {
                return Err(format!(
                    "{name}: version {} (answer lost) applied {f}, which no successful commit reported",
                    entry.version
                ));
            }
        }
        let folder = format!("/{}/", name.replace('.', "/"));
        for f in lab.sim.files.iter().filter(|f| f.key.contains(&folder)) {
            if !trace.values().flatten().any(|t| t.ends_with(&f.key)) {
                return Err(format!("{name}: no version names {}", f.key));
            }
        }
    }
    Ok(())
}

/// The totals over several cases must show that both kinds of lost answer, and conflicts
/// between the committers, really happened.
pub fn require_lost(total: &Lost) -> Result<(), String> {
    if total.table == 0 || total.tombstones == 0 || total.conflicts == 0 {
        return Err(format!(
            "adversity missing: {} lost table-log answers, {} lost tombstone-log answers, {} conflicts",
            total.table, total.tombstones, total.conflicts
        ));
    }
    Ok(())
}
