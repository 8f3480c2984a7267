//! The pipeline against a real S3 API (moto's server on 127.0.0.1, started by the test set-up):
//! conditional writes enforced by the endpoint, the contract end to end, concurrent committers,
//! the randomized convergence cases, and an independent reader over S3.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use dms2delta::failpoint::Failpoints;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::sim::{Format, SimOptions};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use support::converge::{run_case, run_case_via, seeds, shown, CaseStats};
use support::proxy::FaultProxy;
use support::{Lab, On};

/// Delta commits are safe on S3 only because the endpoint refuses a second `PutObject` with
/// `If-None-Match: *` on the same key; prove the endpoint in use really does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_enforces_conditional_writes() {
    let lab = Lab::on_s3(&SimOptions::default(), None).await;
    let store = lab.pipeline.stores.bucket(&lab.bucket).unwrap();
    let key = Path::from("_delta_log/00000000000000000007.json");
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store.put_opts(&key, "first".into(), create()).await.unwrap();
    let second = store.put_opts(&key, "second".into(), create()).await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "{second:?}"
    );
    let kept = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&kept[..], b"first");

    // Sixteen writers racing for one new key: exactly one wins.
    let race = Path::from("_delta_log/00000000000000000008.json");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let race = race.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_opts(&race, format!("writer {i}").into(), create())
                .await
                .is_ok()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_on_s3_matches_the_source_and_an_independent_reader_agrees() {
    Lab::on_s3(&SimOptions::default(), None).await.in_order_twice().await;
}

/// Eight committers per table, three tables at once, released together after every few files:
/// conflicts happen, are retried within the configured bound, and nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_committers_per_table_lose_nothing() {
    let opts = SimOptions {
        seed: 7,
        keys: 12,
        changes: 40,
        max_file_changes: 8,
        formats: Format::ALL.to_vec(),
        ..SimOptions::default()
    };
    let lab = Lab::on_s3(&opts, None).await;
    let max_attempts = lab.pipeline.config.config.commit.max_attempts;
    let pipeline = Arc::new(lab.pipeline.clone());
    let (mut conflicts, mut commits) = (0u32, 0usize);
    for chunk in lab.sim.files.chunks(6) {
        let mut tables = std::collections::BTreeSet::new();
        for f in chunk {
            if let DecodeOutcome::Staged(m) = pipeline
                .decode(&lab.bucket, &f.key, Some("e".into()), Failpoints::default())
                .await
                .unwrap()
            {
                tables.extend(m.tables.into_iter().map(|t| t.table));
            }
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(tables.len() * 8));
        let mut tasks = Vec::new();
        for t in &tables {
            let parts: Vec<String> = t.splitn(3, '.').map(str::to_string).collect();
            for _ in 0..8 {
                let (p, parts, barrier) = (pipeline.clone(), parts.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    loop {
                        match p.commit(&parts[0], &parts[1], &parts[2], Failpoints::default()).await {
                            Ok(m) => return Ok(m),
                            // Past the bound the queue would redeliver; so does this loop.
                            Err(e) if e.is_retryable() => continue,
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                }));
            }
        }
        for t in tasks {
            let m = t.await.unwrap().unwrap();
            assert!(m.attempts <= max_attempts, "{m:?}");
            conflicts += m.conflicts;
            commits += 1;
        }
    }
    assert!(
        lab.pipeline.pending().await.unwrap().is_empty(),
        "change sets left behind"
    );
    lab.check().await.unwrap();
    assert!(
        conflicts > 0,
        "{commits} commits and not one conflict: the committers did not race"
    );
    println!("{commits} commits, {conflicts} conflicts retried");
}

/// The randomized convergence cases (shuffled delivery, duplicates, crashes, failed log writes,
/// compaction, up to 8 workers), on S3: the fixed seeds and one drawn fresh each run. Fewer cases
/// than on folders: each S3 call is an HTTP round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_order_duplicates_crashes_and_concurrency_converge_on_s3() {
    let (seeds, replay) = seeds("S3", 5000, 6, 1);
    let replay = replay
        .map(|r| format!("fresh seeds this run; replay them with {r} cargo test -p dms2delta --test s3 any_order"))
        .unwrap_or_default();
    shown(&replay);
    let mut failures = Vec::new();
    let mut total = CaseStats::default();
    for &seed in &seeds {
        match run_case(seed, On::S3).await {
            Ok(stats) => total += stats,
            Err(e) => failures.push(e),
        }
    }
    shown(&format!("{} convergence cases on S3: {total}", seeds.len()));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed ({replay}):\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
    // Seven cases often have nothing to vacuum (merge-on-read commits remove no files, and
    // compaction of a few small files may find nothing to rewrite); the local run, with four
    // times the cases, requires it. Reloads, truncates and local-time names are not generated
    // here: they need the LastModified the simulator sets, and the endpoint stamps its own.
    // Seven cases may draw no table with unlogged values; the local run requires them.
    // History and change-feed tables are drawn on folders only (CI time; both options have
    // S3 tests of their own in history.rs and change_feed.rs).
    if let Err(e) = total.require_adversity_but(&[
        "vacuumed file",
        "table reload",
        "floor raised after a reload",
        "table truncate",
        "removal event taken for a truncate",
        "local-time name across the fall-back",
        "unlogged value",
        "history table",
        "history version compared",
        "history version slotted in late",
        "history version closed at a floor",
        "history version with carried values",
        "change feed table",
        "change feed row replayed",
        "refused change in a change feed table",
    ]) {
        panic!("{e} ({replay})");
    }
}

/// S3's own failures, injected by a proxy between the pipeline and the endpoint at random
/// requests: 503 SlowDown, 500, connections dropped before the request and after the server acted
/// (the writer cannot tell whether its commit landed). Retries with backoff absorb them, the log
/// has no partial or missing version, and the tables still equal the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_and_dropped_connections_still_converge() {
    let moto = support::s3::moto();
    let (seeds, replay) = seeds("S3_FAULT", 7000, 3, 1);
    let replay = replay
        .map(|r| format!("fresh seeds this run; replay them with {r} cargo test -p dms2delta --test s3 s3_errors"))
        .unwrap_or_default();
    shown(&replay);
    let cases = seeds.len();
    let mut failures = Vec::new();
    let mut injected = 0;
    let mut total = CaseStats::default();
    for &seed in &seeds {
        let proxy = FaultProxy::start(&moto.url, 0.04, seed).await;
        match run_case_via(seed, On::S3, Some(&proxy.url), || proxy.disable()).await {
            Ok(stats) => total += stats,
            Err(e) => failures.push(e),
        }
        injected += proxy.injected.total();
        println!("seed {seed}: injected {:?}", proxy.injected);
    }
    shown(&format!(
        "{cases} cases through the fault proxy: {injected} S3 faults, {total}"
    ));
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed ({replay}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(injected > 0, "the proxy injected nothing ({replay})");
}

/// A Delta log write on S3 lands but its answer is lost (table log and tombstone log) while
/// another committer races on the same table: the tables end exact and every version names the
/// files it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_neither_lost_nor_doubled_on_s3() {
    use support::ambiguous::{ambiguous_commits, require_lost};
    let lost = ambiguous_commits(41, On::S3, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    shown(&format!("ambiguous commits on S3: {lost:?}"));
    require_lost(&lost).unwrap();
}

/// A bucket policy may refuse writes without encryption headers: with `server_side_encryption`
/// set, every object the pipeline writes (staged change sets, Delta data files and log entries)
/// carries it, as the endpoint reports back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_carries_the_configured_server_side_encryption() {
    let moto = support::s3::moto();
    let opts = SimOptions {
        formats: vec![Format::Parquet],
        ..SimOptions::default()
    };
    let lab = Lab::on_s3_with(&opts, None, None, "").await;
    lab.upload_all().await;
    let lake_bucket = moto.bucket("sse").await;
    let storage = format!(
        "{}  server_side_encryption: aws:kms\n  kms_key_id: alias/dms2delta-test\n",
        moto.storage_yaml()
    );
    let text = lab.sim.config_on(
        &format!("s3://{lake_bucket}/lake"),
        &format!("s3://{lake_bucket}/lake/_dms2delta/staged"),
        &format!("s3://{lake_bucket}/lake/_dms2delta/quarantine"),
        &lab.bucket,
        &storage,
    );
    let pipeline = support::pipeline(&text, None);
    let first = &lab.sim.files[0];
    pipeline
        .decode(&lab.bucket, &first.key, None, Failpoints::default())
        .await
        .unwrap();
    // A staged change set, before commit takes it.
    let store = pipeline.stores.bucket(&lake_bucket).unwrap();
    let listed = |store: Arc<dyn ObjectStore>| async move {
        use futures::TryStreamExt;
        store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    };
    let staged = listed(store.clone()).await;
    assert!(staged.iter().any(|k| k.contains("_dms2delta/staged/")), "{staged:?}");
    let mut checked = 0;
    for key in &staged {
        let (sse, kms_key) = sse_of(moto, &lake_bucket, key).await;
        assert_eq!(
            (sse.as_deref(), kms_key.as_deref()),
            (Some("aws:kms"), Some("alias/dms2delta-test")),
            "{key}"
        );
        checked += 1;
    }
    pipeline.commit_all().await.unwrap();
    let mut keys = listed(store).await;
    assert!(
        keys.iter().any(|k| k.contains("_delta_log/00000000000000000000.json")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.ends_with(".parquet") && !k.contains("_dms2delta")),
        "{keys:?}"
    );
    keys.retain(|k| !k.contains("_dms2delta/staged/"));
    for key in &keys {
        let (sse, kms_key) = sse_of(moto, &lake_bucket, key).await;
        assert_eq!(sse.as_deref(), Some("aws:kms"), "{key}");
        assert_eq!(kms_key.as_deref(), Some("alias/dms2delta-test"), "{key}");
        checked += 1;
    }
    assert!(checked >= 2, "{keys:?}");
}

/// The encryption the endpoint reports for an object, and its KMS key.
async fn sse_of(moto: &support::s3::Moto, bucket: &str, key: &str) -> (Option<String>, Option<String>) {
    // Anonymous reads are refused; moto reads the caller from the credential scope only.
    let r = reqwest::Client::new()
        .head(format!("{}/{bucket}/{key}", moto.url))
        .header("Authorization", support::s3::UNSIGNED_S3_AUTH)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "HEAD {key}: {}", r.status());
    let h = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    (
        h("x-amz-server-side-encryption"),
        h("x-amz-server-side-encryption-aws-kms-key-id"),
    )
}

/// The pipeline of `lab`'s configuration in a process of its own (its own stores, so its own
/// held snapshots), holding snapshots or not.
fn another_process(lab: &Lab, snapshots: bool) -> dms2delta::pipeline::Pipeline {
    let config = Arc::new(dms2delta::config::Config::from_text(&lab.config_text).unwrap());
    let mut stores = dms2delta::storage::Stores::new(config.config.storage.clone());
    if !snapshots {
        stores = stores.without_snapshot_cache();
    }
    dms2delta::pipeline::Pipeline::new(config, Arc::new(stores))
}

/// Decodes one DMS file with `decoder` and commits its tables with `committer`; the versions.
async fn decode_and_commit(
    decoder: &dms2delta::pipeline::Pipeline,
    committer: &dms2delta::pipeline::Pipeline,
    bucket: &str,
    key: &str,
) -> Vec<u64> {
    let out = decoder.decode(bucket, key, None, Failpoints::default()).await.unwrap();
    let DecodeOutcome::Staged(m) = out else {
        panic!("{key}: {out:?}")
    };
    let mut versions = Vec::new();
    for t in &m.tables {
        let mut p = t.table.splitn(3, '.');
        let (ns, s, tb) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let cm = committer.commit(ns, s, tb, Failpoints::default()).await.unwrap();
        versions.push(cm.version.unwrap());
    }
    versions
}

/// A warm commit function does not read again the log versions it already holds: it updates
/// the snapshot its last commit left (see `lake::SnapshotCache`). Counted at the S3 endpoint:
/// GETs of the table's log entries at or below the version this process wrote last. Without
/// held snapshots every commit reads them all (that count must not be zero, or the counting
/// sees nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_commit_reads_no_log_version_it_already_holds() {
    let moto = support::s3::moto();
    let opts = SimOptions {
        seed: 5,
        keys: 40,
        changes: 48,
        max_file_changes: 6,
        formats: vec![Format::Parquet],
        ..SimOptions::default()
    };
    let mut known_reads = Vec::new();
    for snapshots in [false, true] {
        let proxy = FaultProxy::start(&moto.url, 0.0, 1).await;
        let lab = Lab::on_s3_with(&opts, None, Some(&proxy.url), "").await;
        let p = another_process(&lab, snapshots);
        let mut last: Option<u64> = None;
        let mut reads = 0;
        for f in &lab.sim.files {
            lab.upload(&f.key, f.bytes.clone()).await;
            proxy.requests.take_lines(true);
            let versions = decode_and_commit(&p, &p, &lab.bucket, &f.key).await;
            for (_, line) in proxy.requests.take_lines(false) {
                let line = line.replace("%2F", "/");
                let Some(v) = line
                    .strip_prefix("GET ")
                    .filter(|l| !l.contains("_dms2delta/"))
                    .and_then(|l| l.split("/_delta_log/").nth(1))
                    .and_then(|f| f.strip_suffix(".json"))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                if last.is_some_and(|held| v <= held) {
                    reads += 1;
                }
            }
            last = versions.into_iter().max();
        }
        assert!(last.is_some_and(|v| v >= 5), "too short a history: {last:?}");
        lab.check().await.unwrap();
        known_reads.push(reads);
    }
    println!(
        "GETs of log versions the process already held: without held snapshots {}, with {}",
        known_reads[0], known_reads[1]
    );
    assert!(known_reads[0] > 0, "the count saw no log read at all");
    assert_eq!(known_reads[1], 0, "a warm commit read log versions it held");
}

/// A warm commit function reads each tombstone file at most once: it holds what it read of the
/// tombstone table and reads only the files added since (see `operations::tombstones`); the
/// tombstones it writes itself it never reads. Counted at the S3 endpoint: GETs of tombstone data
/// files an earlier commit of the same process already read. Without held state (a cold function
/// each time) every commit reads them all again (that count must not be zero, or the counting sees
/// nothing). The history holds hard deletes, so the tombstone table grows a file per delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_commit_reads_no_tombstone_file_it_already_holds() {
    let moto = support::s3::moto();
    let opts = SimOptions {
        seed: 5,
        keys: 40,
        changes: 48,
        max_file_changes: 6,
        formats: vec![Format::Parquet],
        ..SimOptions::default()
    };
    let mut counts = Vec::new();
    for held in [false, true] {
        let per_commit = gets_per_commit(moto, &opts, held, |l| {
            l.contains("_dms2delta/tombstones/") && l.ends_with(".parquet")
        })
        .await;
        let mut seen = std::collections::HashSet::new();
        let (mut reads, mut again) = (0, 0);
        for paths in per_commit {
            reads += paths.len();
            again += paths.iter().filter(|p| seen.contains(*p)).count();
            seen.extend(paths);
        }
        counts.push((reads, again, seen.len()));
    }
    println!(
        "tombstone file GETs (all, of files read by an earlier commit, distinct files): without held state {:?}, with {:?}",
        counts[0], counts[1]
    );
    assert!(counts[0].1 > 0, "the count saw no tombstone file read again at all");
    assert_eq!(counts[1].1, 0, "a warm commit read a tombstone file it held");
}

/// Runs `opts`'s history on S3 through a counting proxy, one decode and commit per file in a
/// process that holds its state or not (`held`), checks the table, and returns, per file, the
/// paths of the GETs its decode and commit made that `keep` selects (in order, repeats kept).
async fn gets_per_commit(
    moto: &support::s3::Moto,
    opts: &SimOptions,
    held: bool,
    keep: impl Fn(&str) -> bool,
) -> Vec<Vec<String>> {
    let proxy = FaultProxy::start(&moto.url, 0.0, 1).await;
    let lab = Lab::on_s3_with(opts, None, Some(&proxy.url), "").await;
    let p = another_process(&lab, held);
    let mut per_commit = Vec::new();
    for f in &lab.sim.files {
        lab.upload(&f.key, f.bytes.clone()).await;
        proxy.requests.take_lines(true);
        decode_and_commit(&p, &p, &lab.bucket, &f.key).await;
        per_commit.push(
            proxy
                .requests
                .take_lines(false)
                .into_iter()
                .filter_map(|(_, line)| {
                    let line = line.replace("%2F", "/");
                    line.strip_prefix("GET ")
                        .map(|l| l.split('?').next().unwrap_or(l).to_string())
                        .filter(|l| keep(l))
                })
                .collect(),
        );
    }
    lab.check().await.unwrap();
    per_commit
}

/// A copy-on-write commit fetches each small data file it meets once, whole, and reads it from
/// memory for the scan, the matched rows and the copy: counted at the S3 endpoint (before, a
/// touched file took five GETs in a row: footer, key columns, matched rows, footer, copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_fetches_each_small_data_file_it_meets_once() {
    let moto = support::s3::moto();
    let opts = SimOptions {
        seed: 5,
        keys: 40,
        changes: 48,
        max_file_changes: 6,
        formats: vec![Format::Parquet],
        ..SimOptions::default()
    };
    let per_commit = gets_per_commit(moto, &opts, true, |l| {
        l.contains("/part-") && l.ends_with(".parquet") && !l.contains("_dms2delta/") && !l.contains("_delta_log/")
    })
    .await;
    let (mut reads, mut again) = (0, 0);
    for paths in per_commit {
        let mut now = std::collections::HashSet::new();
        reads += paths.len();
        again += paths.into_iter().filter(|p| !now.insert(p.clone())).count();
    }
    println!("table data file GETs: {reads}, of a file the same commit had already read: {again}");
    assert!(reads > 0, "no commit read a data file: the count saw nothing");
    assert_eq!(again, 0, "a commit fetched a small data file more than once");
}

/// Two warm commit functions take turns on one table, each holding its own snapshot: each
/// brings its snapshot past the other's commits, and the table ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_functions_taking_turns_see_each_others_commits() {
    let opts = SimOptions {
        seed: 8,
        keys: 30,
        changes: 60,
        max_file_changes: 5,
        formats: vec![Format::Parquet, Format::CsvSeq],
        ..SimOptions::default()
    };
    let lab = Lab::on_s3_with(&opts, None, None, "").await;
    let (a, b) = (another_process(&lab, true), another_process(&lab, true));
    let mut seen = Vec::new();
    for (i, f) in lab.sim.files.iter().enumerate() {
        lab.upload(&f.key, f.bytes.clone()).await;
        let p = if i % 2 == 0 { &a } else { &b };
        seen.extend(decode_and_commit(p, p, &lab.bucket, &f.key).await);
    }
    assert!(lab.sim.files.len() >= 4, "too short a history");
    lab.check().await.unwrap();
    lab.check_with_python().unwrap_or_else(|e| {
        if !support::skip_python() {
            panic!("{e}")
        }
    });
}
