//! The randomized convergence case, shared by the local-folder and the S3 test binaries.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dms2delta::failpoint::Failpoints;
use dms2delta::faults::{Call, FaultyStore};
use dms2delta::operations::commit::CommitMetrics;
use dms2delta::operations::compact::CompactBuilder;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::operations::truncate::RemovalOutcome;
use dms2delta::sim::SimOptions;
use dms2delta::storage::StoreWrapper;

use super::downstream::{check_history, FeedChecked, FeedSegments, HistoryChecked};
use super::{Lab, On};

#[derive(Debug, Clone)]
enum Task {
    Decode(String),
    Commit(String, String, String),
    Compact(String, String, String),
    /// A source truncate of this table: DMS removes its files from the bucket, and their
    /// removal events join the queue at random places (some twice).
    Truncate(String),
    /// The removal event of an object, with S3's event time (microseconds).
    Removed(String, i64),
}

/// Values an update did not log, delivered in any order across files (issue 16 item 3: each
/// such column keeps its own sequence): the random cases generate them (`SimOptions::unlogged`)
/// and require some. In-order delivery is also checked by `unlogged_values_in_order_converge`.
/// (Switched on, these cases found that a redelivered update filled from an older change of the
/// same commit, equal in row sequence to the stored row, was ignored: seed 1001 with four
/// workers; now `contract.rs::a_redelivered_update_filled_from_an_older_change_sets_the_column`.)
pub const UNLOGGED_ANY_ORDER: bool = true;

/// What a case put the pipeline through, so that a test can prove its adversity happened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CaseStats {
    /// Failpoints that fired (a crash of the invocation at a stage boundary or inside a commit).
    pub crashes: u64,
    /// Delta log writes (`_delta_log/*.json`) failed by the fault-injecting store.
    pub log_faults: u64,
    /// Commit conflicts with a concurrent writer: retried inside a commit, or past its bound.
    pub conflicts: u64,
    /// Compaction runs that finished; those that wrote a checkpoint or rewrote data files;
    /// the data files they rewrote (few: a case's small tables rarely have several files).
    pub compactions: u64,
    pub compactions_changed: u64,
    pub compacted_files: u64,
    /// Maintenance with the clock moved past every retention, between the halves of a history
    /// or after it: tombstones it expired and unreferenced data files it vacuumed.
    pub tombstones_expired: u64,
    pub files_vacuumed: u64,
    /// Tables of each kind the cases simulated (see `dms2delta::sim::Variant`).
    pub soft_tables: u64,
    pub partitioned_tables: u64,
    pub added_column_tables: u64,
    pub overlapping_loads: u64,
    pub parallel_loads: u64,
    /// Tables reloaded part way through, and commits that raised a table's floor after a
    /// reload's load was over.
    pub reloads: u64,
    pub floors_raised: u64,
    /// Tables truncated at the source part way, and removal events taken for a truncate
    /// (the table folder found empty).
    pub truncated_tables: u64,
    pub truncates_seen: u64,
    /// Tables whose CDC files are named in local time and whose names cross the fall-back out
    /// of order.
    pub fall_back_tables: u64,
    /// Tables whose `AR_H_CHANGE_SEQ` rule was removed for a stretch of files, then added again.
    pub seq_toggled_tables: u64,
    /// Tables renamed at the source part way, and tables with a column renamed.
    pub renamed_tables: u64,
    pub renamed_columns: u64,
    /// Tables whose updates sometimes did not log a large value.
    pub unlogged_tables: u64,
    /// History tables compared version for version with the simulator's history; versions
    /// compared; versions whose file was first decoded after a newer version's (slotted in late);
    /// versions closing a key at a reload's or truncate's floor; versions whose unlogged values
    /// were carried from the version before.
    pub history_tables: u64,
    pub history_versions: u64,
    pub history_late: u64,
    pub history_floor_closes: u64,
    pub history_carried: u64,
    /// Tables whose change feed was replayed into them; feed rows replayed; segments replayed
    /// (one per table and check: before each maintenance past the retentions, and at the end);
    /// changes the sequence guard refused in those tables, which their feeds must not show.
    pub feed_tables: u64,
    pub feed_rows: u64,
    pub feed_segments: u64,
    pub feed_stale: u64,
}

impl std::ops::AddAssign for CaseStats {
    fn add_assign(&mut self, o: CaseStats) {
        self.crashes += o.crashes;
        self.log_faults += o.log_faults;
        self.conflicts += o.conflicts;
        self.compactions += o.compactions;
        self.compactions_changed += o.compactions_changed;
        self.compacted_files += o.compacted_files;
        self.tombstones_expired += o.tombstones_expired;
        self.files_vacuumed += o.files_vacuumed;
        self.soft_tables += o.soft_tables;
        self.partitioned_tables += o.partitioned_tables;
        self.added_column_tables += o.added_column_tables;
        self.overlapping_loads += o.overlapping_loads;
        self.parallel_loads += o.parallel_loads;
        self.reloads += o.reloads;
        self.floors_raised += o.floors_raised;
        self.truncated_tables += o.truncated_tables;
        self.truncates_seen += o.truncates_seen;
        self.fall_back_tables += o.fall_back_tables;
        self.seq_toggled_tables += o.seq_toggled_tables;
        self.renamed_tables += o.renamed_tables;
        self.renamed_columns += o.renamed_columns;
        self.unlogged_tables += o.unlogged_tables;
        self.history_tables += o.history_tables;
        self.history_versions += o.history_versions;
        self.history_late += o.history_late;
        self.history_floor_closes += o.history_floor_closes;
        self.history_carried += o.history_carried;
        self.feed_tables += o.feed_tables;
        self.feed_rows += o.feed_rows;
        self.feed_segments += o.feed_segments;
        self.feed_stale += o.feed_stale;
    }
}

impl fmt::Display for CaseStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} crashes, {} failed log writes, {} commit conflicts, {} compactions ({} wrote a checkpoint or rewrote files, {} files rewritten), \
             {} tombstones expired and {} files vacuumed with the clock past retention; tables: {} soft delete, {} partitioned, \
             {} with a column added mid-stream, {} with a full load overlapping CDC, {} loaded in parallel, {} reloaded \
             ({} floors raised), {} truncated ({} removal events taken for a truncate), {} with local-time names across the \
             fall-back, {} with the sequence rule toggled, {} renamed, {} with a column renamed, {} with unlogged values; \
             {} history tables ({} versions compared, {} slotted in late, {} closed at a floor, {} with carried values), \
             {} change feeds ({} rows replayed in {} segments, {} refused changes kept out)",
            self.crashes,
            self.log_faults,
            self.conflicts,
            self.compactions,
            self.compactions_changed,
            self.compacted_files,
            self.tombstones_expired,
            self.files_vacuumed,
            self.soft_tables,
            self.partitioned_tables,
            self.added_column_tables,
            self.overlapping_loads,
            self.parallel_loads,
            self.reloads,
            self.floors_raised,
            self.truncated_tables,
            self.truncates_seen,
            self.fall_back_tables,
            self.seq_toggled_tables,
            self.renamed_tables,
            self.renamed_columns,
            self.unlogged_tables,
            self.history_tables,
            self.history_versions,
            self.history_late,
            self.history_floor_closes,
            self.history_carried,
            self.feed_tables,
            self.feed_rows,
            self.feed_segments,
            self.feed_stale
        )
    }
}

impl CaseStats {
    /// Over a whole test run: each kind of adversity the cases inject happened at least once
    /// (a single case may well see none, e.g. one worker has nobody to conflict with).
    pub fn require_adversity(&self) -> Result<(), String> {
        self.require_adversity_but(&[])
    }

    /// [`CaseStats::require_adversity`] without the kinds named in `spared` (short runs that
    /// cannot be expected to meet every one; the long local run requires them all).
    pub fn require_adversity_but(&self, spared: &[&str]) -> Result<(), String> {
        let missing: Vec<&str> = [
            (self.crashes, "crash"),
            (self.log_faults, "failed log write"),
            (self.conflicts, "commit conflict"),
            (self.compactions_changed, "compaction that changed the table"),
            (self.tombstones_expired, "tombstone expiry"),
            (self.files_vacuumed, "vacuumed file"),
            (self.soft_tables, "soft-delete table"),
            (self.partitioned_tables, "partitioned table"),
            (self.added_column_tables, "column added mid-stream"),
            (self.overlapping_loads, "full load overlapping CDC"),
            (self.parallel_loads, "parallel full load"),
            (self.reloads, "table reload"),
            (self.floors_raised, "floor raised after a reload"),
            (self.truncated_tables, "table truncate"),
            (self.truncates_seen, "removal event taken for a truncate"),
            (self.fall_back_tables, "local-time name across the fall-back"),
            (self.seq_toggled_tables, "sequence rule toggled"),
            (self.renamed_tables, "table rename"),
            (self.renamed_columns, "column rename"),
            (self.unlogged_tables, "unlogged value"),
            (self.history_tables, "history table"),
            (self.history_versions, "history version compared"),
            (self.history_late, "history version slotted in late"),
            (self.history_floor_closes, "history version closed at a floor"),
            (self.history_carried, "history version with carried values"),
            (self.feed_tables, "change feed table"),
            (self.feed_rows, "change feed row replayed"),
            (self.feed_stale, "refused change in a change feed table"),
        ]
        .iter()
        .filter(|(n, what)| *n == 0 && !spared.contains(what))
        .map(|(_, what)| *what)
        .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the cases never injected a {}: they proved nothing about it ({self})",
                missing.join(", nor a ")
            ))
        }
    }
}

/// The live counters behind [`CaseStats`], shared by the workers and the fault injectors.
#[derive(Default)]
struct Counters {
    crashes: AtomicU64,
    log_faults: AtomicU64,
    conflicts: AtomicU64,
    compactions: AtomicU64,
    compactions_changed: AtomicU64,
    compacted_files: AtomicU64,
    tombstones_expired: AtomicU64,
    files_vacuumed: AtomicU64,
    floors_raised: AtomicU64,
    truncates_seen: AtomicU64,
    /// Changes the sequence guard refused, by table.
    stale: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Objects in the order their decodes began (redeliveries too).
    decoded: Mutex<Vec<String>>,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn stats(&self) -> CaseStats {
        CaseStats {
            crashes: self.crashes.load(Ordering::Relaxed),
            log_faults: self.log_faults.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            compactions: self.compactions.load(Ordering::Relaxed),
            compactions_changed: self.compactions_changed.load(Ordering::Relaxed),
            compacted_files: self.compacted_files.load(Ordering::Relaxed),
            tombstones_expired: self.tombstones_expired.load(Ordering::Relaxed),
            files_vacuumed: self.files_vacuumed.load(Ordering::Relaxed),
            floors_raised: self.floors_raised.load(Ordering::Relaxed),
            truncates_seen: self.truncates_seen.load(Ordering::Relaxed),
            ..CaseStats::default()
        }
    }

    /// Counts a commit's conflicts; a change set it quarantined fails the case (no case here
    /// delivers anything that deserves it).
    fn commit(&self, m: &CommitMetrics) -> Result<(), String> {
        Counters::add(&self.conflicts, u64::from(m.conflicts));
        *self.stale.lock().unwrap().entry(m.table.clone()).or_default() += m.rows_stale;
        Counters::add(&self.floors_raised, u64::from(m.floor.is_some()));
        if m.quarantined.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "commit {} quarantined change sets: {:?}",
                m.table, m.quarantined
            ))
        }
    }
}

/// Writes a line the test harness does not capture, so CI logs show it on success too.
pub fn shown(line: &str) {
    use std::io::Write;
    if !line.is_empty() {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// The seeds a convergence test runs: `DMS2DELTA_<prefix>_CASES` cases (default `cases`) from
/// `DMS2DELTA_<prefix>_SEED` (default `base`), and, unless that seed is set, `fresh` more from a
/// base drawn from the clock, so every CI run also tries cases no run tried before. Returns the
/// seeds and the line that replays the fresh ones.
pub fn seeds(prefix: &str, base: u64, cases: u64, fresh: u64) -> (Vec<u64>, Option<String>) {
    let var = |what: &str| {
        std::env::var(format!("DMS2DELTA_{prefix}_{what}"))
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
    };
    let cases = var("CASES").unwrap_or(cases);
    match var("SEED") {
        Some(b) => ((b..b + cases).collect(), None),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            // Far from the fixed seeds, and far from overflowing.
            let drawn = 1_000_000 + fastrand::Rng::with_seed(nanos).u64(0..1 << 40);
            let mut all: Vec<u64> = (base..base + cases).collect();
            all.extend(drawn..drawn + fresh);
            let replay = format!("DMS2DELTA_{prefix}_SEED={drawn} DMS2DELTA_{prefix}_CASES={fresh}");
            (all, Some(replay))
        }
    }
}

/// Compaction settings that give the few files of a case something to do.
const CASE_COMPACTION: &str = "compact:\n  min_small_files: 2\n  checkpoint_interval: 4\n  check_every_commits: 2\n";

/// One randomized run, on local folders or on the S3 endpoint: shuffled delivery with
/// duplicates, one to three tables per source of every kind the simulator makes (soft delete,
/// partitioned, a column added mid-stream, a full load overlapping CDC, NULL and empty values,
/// equal commit times), crashes at every stage boundary and inside the commit, failed Delta log
/// writes (after data files were written), compaction running between commits, 1 to 8 workers,
/// and maintenance with the clock past every retention (tombstone expiry, vacuum): between the
/// two halves of the history in some cases, after it in others. Tables also go through the
/// lifecycle events the simulator makes (reloads, truncates with their removal events,
/// local-time names across the fall-back on folders; the sequence rule toggled and renames
/// everywhere; unlogged values with [`UNLOGGED_ANY_ORDER`]). On folders, some tables keep a
/// history and some write the change feed: each history must equal the simulator's history
/// version for version, and each feed must replay into its table (see `super::downstream`).
/// Returns what adversity it injected; every error names the seed.
pub async fn run_case(seed: u64, on: On) -> Result<CaseStats, String> {
    run_case_via(seed, on, None, || {}).await
}

/// What the workers of a case share.
struct Case {
    fault_rng: Arc<Mutex<fastrand::Rng>>,
    counters: Arc<Counters>,
    /// Chance that a failpoint fires, and that a finished commit is followed by a compaction.
    crash: f64,
    compact: f64,
    workers: usize,
}

/// [`run_case`] with the pipeline reaching S3 through `endpoint` (a fault-injecting proxy);
/// `before_check` runs once every worker is done, before the tables are read back.
pub async fn run_case_via(
    seed: u64,
    on: On,
    endpoint: Option<&str>,
    before_check: impl FnOnce(),
) -> Result<CaseStats, String> {
    // Shown by the test harness only when the test fails: covers panics, which carry no seed.
    println!("convergence case: seed {seed} on {on:?}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let opts = SimOptions {
        seed,
        tables: rng.usize(1..=3),
        keys: rng.u32(3..15),
        changes: rng.usize(5..40),
        max_file_changes: rng.usize(1..10),
        // A random non-empty subset of the formats keeps each case short; the seeds cover all.
        formats: {
            let mut f: Vec<_> = dms2delta::sim::Format::ALL
                .iter()
                .copied()
                .filter(|_| rng.bool())
                .collect();
            if f.is_empty() {
                f.push(dms2delta::sim::Format::ALL[rng.usize(0..3)]);
            }
            f
        },
        variety: true,
        // An S3 endpoint stamps its own LastModified, which reload detection, the truncate's
        // listing and the instant of a name inside the repeated hour read.
        reloads: matches!(on, On::Folders),
        truncates: matches!(on, On::Folders),
        local_time: matches!(on, On::Folders),
        unlogged: UNLOGGED_ANY_ORDER,
        renames: true,
        seq_toggles: true,
        // On folders only (CI time; both options have their own S3 tests).
        history: matches!(on, On::Folders),
        change_feed: matches!(on, On::Folders),
    };
    let counters = Arc::new(Counters::default());
    let fault_rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed)));
    let log_fault = rng.f64() * 0.3;
    let (fr, c) = (fault_rng.clone(), counters.clone());
    let wrapper: StoreWrapper = Arc::new(move |inner| {
        let (fr, c) = (fr.clone(), c.clone());
        Arc::new(FaultyStore::new(inner, move |call, path| {
            let fail = call == Call::Put
                && path.as_ref().contains("_delta_log/")
                && path.as_ref().ends_with(".json")
                && fr.lock().unwrap().f64() < log_fault;
            if fail {
                Counters::add(&c.log_faults, 1);
            }
            fail
        }))
    });
    // Half the cases commit merge-on-read (deletion vectors), from a stream of their own so
    // the other choices of a seed stay as they were.
    let dv = fastrand::Rng::with_seed(seed ^ 0xd1f).bool();
    let crash = rng.f64() * 0.3;
    let workers = rng.usize(1..=8);
    // How often a finished commit is followed by a compaction of its table (never in some cases).
    let compact = if rng.u8(0..4) == 0 { 0.0 } else { rng.f64() * 0.5 };
    // Deliver the history in two halves with expiry and vacuum in between, or all at once.
    let halves = rng.bool();
    let context = format!(
        "seed {seed} on {on:?} ({} tables per source, formats {:?}, {workers} workers, crash {crash:.2}, \
         log fault {log_fault:.2}, compaction {compact:.2}, deletion vectors {dv}, delivered in halves {halves})",
        opts.tables, opts.formats
    );
    let lab = Lab::configured(on, &opts, Some(wrapper), endpoint, dv, CASE_COMPACTION).await;
    let case = Case {
        fault_rng,
        counters: counters.clone(),
        crash,
        compact,
        workers,
    };
    let mut feeds = FeedSegments::default();
    let (mut history, mut feed) = (HistoryChecked::default(), FeedChecked::default());
    let run = async {
        let keys = |epoch: Option<u8>| -> Vec<String> {
            lab.sim
                .files
                .iter()
                .filter(|f| epoch.is_none_or(|e| f.epoch == e))
                .map(|f| f.key.clone())
                .collect()
        };
        // A table's truncate falls in the half of its history its removals do.
        let truncates = |epoch: Option<u8>| -> Vec<Task> {
            let mut tables: Vec<&String> = lab
                .sim
                .removals
                .iter()
                .filter(|r| epoch.is_none_or(|e| r.epoch == e))
                .map(|r| &r.table)
                .collect();
            tables.dedup();
            tables.into_iter().map(|t| Task::Truncate(t.clone())).collect()
        };
        let phases = if halves {
            vec![(keys(Some(0)), truncates(Some(0))), (keys(Some(1)), truncates(Some(1)))]
        } else {
            vec![(keys(None), truncates(None))]
        };
        for (i, (phase, truncates)) in phases.iter().enumerate() {
            let mut deliveries: Vec<Task> = phase.iter().map(|k| Task::Decode(k.clone())).collect();
            for _ in 0..rng.usize(0..=deliveries.len()) {
                let d = deliveries[rng.usize(0..deliveries.len())].clone();
                deliveries.push(d);
            }
            rng.shuffle(&mut deliveries);
            // Removal events come only from a truncate. It falls in the later half of the
            // phase's deliveries, so that the table usually holds rows it must lose; files
            // before it whose events come after it are gone by then (nothing to decode).
            for t in truncates {
                let at = rng.usize(deliveries.len() / 2..=deliveries.len());
                deliveries.insert(at, t.clone());
            }
            deliver(&lab, &case, deliveries).await?;
            sweep(&lab, &counters).await?;
            // Expiry between the halves: every change after it is newer than what expired.
            if i == 0 || rng.bool() {
                // It deletes what the feed of the versions so far is read from.
                add_feed(&mut feed, feeds.check(&lab).await?);
                expire(&lab, &counters).await?;
            }
        }
        before_check();
        add_feed(&mut feed, feeds.check(&lab).await?);
        let decoded = counters.decoded.lock().unwrap().clone();
        history = check_history(&lab, &decoded).await?;
        lab.check_quarantine().await?;
        lab.check_log().await?;
        if let Err(e) = lab.check().await {
            let mut logs = String::new();
            for name in lab.sim.expected.keys().filter(|n| e.contains(&format!("table {n}:"))) {
                logs.push_str(&format!("log of {name}:\n{}", lab.log_summary(name).await));
            }
            return Err(format!("{e}\n{logs}"));
        }
        Ok(())
    };
    run.await.map_err(|e| format!("{context}: {e}"))?;
    let mut stats = counters.stats();
    stats.history_tables = history.tables;
    stats.history_versions = history.versions;
    stats.history_late = history.late;
    stats.history_floor_closes = history.floor_closes;
    stats.history_carried = history.carried;
    stats.feed_tables = feed.tables;
    stats.feed_rows = feed.rows;
    stats.feed_segments = feed.segments;
    for (table, n) in counters.stale.lock().unwrap().iter() {
        if lab.sim.variants.get(table).is_some_and(|v| v.change_feed) {
            stats.feed_stale += n;
        }
    }
    for v in lab.sim.variants.values() {
        stats.truncated_tables += u64::from(v.truncate);
        stats.fall_back_tables += u64::from(v.fall_back);
        stats.seq_toggled_tables += u64::from(v.seq_toggled);
        stats.renamed_tables += u64::from(v.renamed_table);
        stats.renamed_columns += u64::from(v.renamed_column);
        stats.unlogged_tables += u64::from(v.unlogged);
        stats.soft_tables += u64::from(v.soft);
        stats.partitioned_tables += u64::from(v.partitioned);
        stats.added_column_tables += u64::from(v.added_column);
        stats.overlapping_loads += u64::from(v.load_after > 0);
        stats.parallel_loads += u64::from(v.parallel_load);
        stats.reloads += u64::from(v.reload);
    }
    Ok(stats)
}

/// Runs `deliveries` (and the commits and compactions they lead to) on the case's workers.
async fn deliver(lab: &Lab, case: &Case, deliveries: Vec<Task>) -> Result<(), String> {
    let queue = Arc::new(Mutex::new(VecDeque::from(deliveries)));
    // What a truncate removes, by table; removed objects may be gone when their creation
    // event is handled.
    let mut removals: std::collections::BTreeMap<String, Vec<(String, i64)>> = Default::default();
    for r in &lab.sim.removals {
        removals
            .entry(r.table.clone())
            .or_default()
            .push((r.key.clone(), r.micros));
    }
    let removed_keys: std::collections::BTreeSet<String> = lab.sim.removals.iter().map(|r| r.key.clone()).collect();
    let (removals, removed_keys) = (Arc::new(removals), Arc::new(removed_keys));
    let bucket_dir = lab.dir.path().join("bucket");
    let mut handles = Vec::new();
    for w in 0..case.workers {
        let queue = queue.clone();
        let pipeline = lab.pipeline.clone();
        let bucket = lab.bucket.clone();
        let (removals, removed_keys, bucket_dir) = (removals.clone(), removed_keys.clone(), bucket_dir.clone());
        let (fr, counters) = (case.fault_rng.clone(), case.counters.clone());
        let (crash, compact) = (case.crash, case.compact);
        handles.push(tokio::spawn(async move {
            let fail = {
                let (fr, counters) = (fr.clone(), counters.clone());
                Failpoints::new(move |_| {
                    let fire = fr.lock().unwrap().f64() < crash;
                    if fire {
                        Counters::add(&counters.crashes, 1);
                    }
                    fire
                })
            };
            let mut budget = 10_000;
            loop {
                let task = queue.lock().unwrap().pop_front();
                let Some(task) = task else { break };
                budget -= 1;
                if budget == 0 {
                    return Err(format!("worker {w} did not finish within 10000 tasks"));
                }
                let requeue = || queue.lock().unwrap().push_back(task.clone());
                match &task {
                    Task::Decode(key) => {
                        counters.decoded.lock().unwrap().push(key.clone());
                        match pipeline.decode(&bucket, key, Some("etag".into()), fail.clone()).await {
                            Ok(DecodeOutcome::Staged(m)) => {
                                for t in m.tables {
                                    let mut p = t.table.splitn(3, '.');
                                    let (a, b, c) = (
                                        p.next().unwrap_or_default(),
                                        p.next().unwrap_or_default(),
                                        p.next().unwrap_or_default(),
                                    );
                                    queue
                                        .lock()
                                        .unwrap()
                                        .push_back(Task::Commit(a.into(), b.into(), c.into()));
                                }
                            }
                            Ok(DecodeOutcome::Skipped { .. }) if removed_keys.contains(key) => {}
                            Ok(other) => return Err(format!("decode {key}: unexpected {other:?}")),
                            Err(e) if e.is_retryable() => requeue(),
                            Err(e) => return Err(format!("decode {key}: {e}")),
                        }
                    }
                    Task::Truncate(table) => {
                        let gone = removals.get(table).cloned().unwrap_or_default();
                        for (key, _) in &gone {
                            match std::fs::remove_file(bucket_dir.join(key)) {
                                Ok(()) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                Err(e) => return Err(format!("remove {key}: {e}")),
                            }
                        }
                        let mut q = queue.lock().unwrap();
                        let mut fr = fr.lock().unwrap();
                        for (key, micros) in gone {
                            for _ in 0..1 + usize::from(fr.u8(0..4) == 0) {
                                let at = fr.usize(0..=q.len());
                                q.insert(at, Task::Removed(key.clone(), micros));
                            }
                        }
                    }
                    Task::Removed(key, micros) => {
                        // Through SystemTime: the e2e crate that shares this file has no chrono.
                        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros((*micros).max(0) as u64);
                        match pipeline.removed(&bucket, key, at.into()).await {
                            Ok(RemovalOutcome::Truncate { table, .. }) => {
                                Counters::add(&counters.truncates_seen, 1);
                                let (a, b, c) = split3(&table);
                                queue.lock().unwrap().push_back(Task::Commit(a, b, c));
                            }
                            Ok(RemovalOutcome::Ignored { reason }) => {
                                return Err(format!("removal of {key} at {micros} µs ignored: {reason}"))
                            }
                            Err(e) if e.is_retryable() => requeue(),
                            Err(e) => return Err(format!("removal of {key}: {e}")),
                        }
                    }
                    Task::Commit(a, b, c) => match pipeline.commit(a, b, c, fail.clone()).await {
                        Ok(m) => {
                            counters.commit(&m)?;
                            if fr.lock().unwrap().f64() < compact {
                                queue
                                    .lock()
                                    .unwrap()
                                    .push_back(Task::Compact(a.clone(), b.clone(), c.clone()));
                            }
                        }
                        Err(e) if e.is_retryable() => {
                            if let dms2delta::Error::Conflict { attempts, .. } = &e {
                                Counters::add(&counters.conflicts, u64::from(*attempts));
                            }
                            requeue()
                        }
                        Err(e) => return Err(format!("commit {a}.{b}.{c}: {e}")),
                    },
                    Task::Compact(a, b, c) => {
                        // Forced runs also checkpoint, vacuum and expire tombstones.
                        let force = fr.lock().unwrap().bool();
                        let r = CompactBuilder::new(pipeline.config.clone(), &pipeline.stores)
                            .with_table(a, b, c)
                            .with_force(force)
                            .await;
                        match r {
                            Ok(m) => {
                                Counters::add(&counters.compactions, 1);
                                let rewritten = m.files_in + m.files_purged;
                                if rewritten > 0 || m.checkpoint_written {
                                    Counters::add(&counters.compactions_changed, 1);
                                }
                                Counters::add(&counters.compacted_files, rewritten);
                            }
                            // Compaction is best effort: the next commit brings it back.
                            Err(e) if e.is_retryable() => {}
                            Err(e) => return Err(format!("compact {a}.{b}.{c}: {e}")),
                        }
                    }
                }
            }
            Ok(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| format!("worker: {e}"))??;
    }
    Ok(())
}

fn add_feed(total: &mut FeedChecked, o: FeedChecked) {
    // The tables are the same at every check: count them once.
    total.tables = total.tables.max(o.tables);
    total.rows += o.rows;
    total.segments += o.segments;
}

/// `namespace.schema.table` in its three parts.
fn split3(name: &str) -> (String, String, String) {
    let mut p = name.splitn(3, '.');
    let mut next = || p.next().unwrap_or_default().to_string();
    (next(), next(), next())
}

/// Whatever crashed last is picked up by the next invocation (here: one sweep, no crashes).
async fn sweep(lab: &Lab, counters: &Counters) -> Result<(), String> {
    let mut sweeps = 0;
    loop {
        match lab.pipeline.commit_all().await {
            Ok(ms) => {
                for m in &ms {
                    counters.commit(m)?;
                }
                return Ok(());
            }
            Err(e) if e.is_retryable() && sweeps < 100 => sweeps += 1,
            Err(e) => return Err(format!("final commit sweep: {e}")),
        }
    }
}

/// Forced maintenance of every table with the clock a day past both retentions, as a compact
/// run long after the changes so far: their tombstones expire and the files their commits
/// replaced are vacuumed. Runs without the fault-injecting store wrapper (a proxy in front of
/// the endpoint still fails some requests), and the counts are those of the run that finished.
async fn expire(lab: &Lab, counters: &Counters) -> Result<(), String> {
    let config = lab.pipeline.config.clone();
    let stores = dms2delta::storage::Stores::new(config.config.storage.clone());
    let hours = config
        .config
        .commit
        .tombstone_retention_hours
        .max(config.config.compact.vacuum_retention_hours) as i64;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let later = now_ms + (hours + 24) * 3_600_000;
    for name in lab.sim.expected.keys() {
        let mut p = name.splitn(3, '.');
        let (a, b, c) = (
            p.next().unwrap_or_default(),
            p.next().unwrap_or_default(),
            p.next().unwrap_or_default(),
        );
        // Through the fault proxy, S3 errors reach this run too: retry as the next run would,
        // which comes after the lease a failed run may have left behind has expired.
        let mut attempts: i64 = 0;
        let m = loop {
            let r = CompactBuilder::new(config.clone(), &stores)
                .with_table(a, b, c)
                .with_force(true)
                .with_now_millis(later + attempts * (dms2delta::lease::LEASE_TTL_MS + 60_000))
                .await;
            match r {
                Ok(m) => break m,
                Err(e) if e.is_retryable() && attempts < 20 => attempts += 1,
                Err(e) => return Err(format!("maintenance of {name} past the retentions: {e}")),
            }
        };
        if m.yielded {
            return Err(format!("maintenance of {name} past the retentions gave way: {m:?}"));
        }
        Counters::add(&counters.tombstones_expired, m.tombstones_dropped);
        Counters::add(&counters.files_vacuumed, m.files_vacuumed);
    }
    Ok(())
}
