//! The SCD type 2 history (`history.enabled`, docs/replication-contract.md "History"): one
//! row per version of each key, exact in any delivery order, in both merge modes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use dms2delta::operations::commit::CommitMetrics;
use dms2delta::sim::{rows_of, Value};
use support::reload::{put_written, Written, C1, C2, GEN0, RELOADED};
use support::Mini;

/// Headerless CSV: Op, the commit time (`timestamp_column`), the columns, `AR_H_CHANGE_SEQ`.
const SOURCE: &str = r##"
  - name: my
    bucket: dms
    timestamp_column: ts
    sequence_column: AR_H_CHANGE_SEQ
    csv: { no_sup_value: "#NOSUP#" }
    tables:
      - schema: app
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: n, type: INT4 }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
"##;

const T: &str = "my.app.t";
const HISTORY: &str = "history:\n  enabled: true\n";
const DELETION_VECTORS: &str = "  deletion_vectors: true\n";
/// 2024-05-28 12:00:00 UTC.
const BASE_SECONDS: i64 = 1_716_897_600;

const COLUMNS: [&str; 8] = [
    "id",
    "name",
    "n",
    "_dms_seq",
    "_op",
    "_valid_from",
    "_valid_to",
    "_is_current",
];

fn mini(dv: bool) -> Mini {
    let extra = if dv {
        format!("{DELETION_VECTORS}{HISTORY}")
    } else {
        HISTORY.to_string()
    };
    Mini::new(SOURCE, &extra)
}

/// A change at `micros` after 12:00:00 with counter `c`: its CSV line and its `_dms_seq`.
fn line(op: char, micros: i64, id: i64, name: &str, n: &str, c: u64) -> (String, String) {
    let at = chrono::DateTime::from_timestamp_micros(BASE_SECONDS * 1_000_000 + micros).unwrap();
    let ts = at.format("%Y-%m-%d %H:%M:%S%.6f");
    let hundredths = at.timestamp_subsec_micros() / 10_000;
    let seq = format!("{}{hundredths:02}{c:019}", at.format("%Y%m%d%H%M%S"));
    (format!("{op},{ts},{id},{name},{n},{seq}\n"), format!("1S{seq}"))
}

fn cdc(i: usize) -> String {
    format!("app/t/20240528-13{:02}{:02}000.csv", i / 60, i % 60)
}

async fn history_rows(m: &Mini) -> Vec<Vec<String>> {
    history_of(m, ("my", "app", "t"), &COLUMNS).await
}

/// The `columns` of the history of `table` (namespace, schema, table; keyed by an integer `id`
/// first among `columns`, which also name `_dms_seq`) as canonical text, by key then sequence.
async fn history_of(m: &Mini, (ns, schema, table): (&str, &str, &str), columns: &[&str]) -> Vec<Vec<String>> {
    let spec = m.pipeline.config.table_by_target(ns, schema, table).unwrap();
    let batches = m
        .pipeline
        .read_table(&m.pipeline.history_location(&spec))
        .await
        .unwrap();
    let cols: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let seq = columns.iter().position(|c| *c == "_dms_seq").unwrap();
    let mut rows: Vec<Vec<String>> = rows_of(&batches, &cols)
        .unwrap()
        .into_iter()
        .map(|r| r.iter().map(Value::canonical).collect())
        .collect();
    rows.sort_by(|a, b| (a[0].parse::<i64>().unwrap(), &a[seq]).cmp(&(b[0].parse::<i64>().unwrap(), &b[seq])));
    rows
}

fn micros_text(micros: i64) -> String {
    (BASE_SECONDS * 1_000_000 + micros).to_string()
}

/// Puts and decodes `files` in `order` (an index may come twice: a redelivery), committing
/// after each file, or once at the end when `grouped`.
async fn deliver(m: &Mini, files: &[String], order: &[usize], grouped: bool) -> Vec<CommitMetrics> {
    let mut out = Vec::new();
    for &i in order {
        m.put(&cdc(i), files[i].as_bytes());
        let d = m.decode(&cdc(i)).await;
        assert!(
            matches!(d, dms2delta::operations::decode::DecodeOutcome::Staged(_)),
            "{d:?}"
        );
        if !grouped {
            out.extend(m.pipeline.commit_all().await.unwrap());
        }
    }
    if grouped {
        out.extend(m.pipeline.commit_all().await.unwrap());
    }
    out
}

/// The scenario of the contract's history promise: an insert, an update that did not log `n`,
/// an update, a full delete, a re-insert followed in the same file by an update that did not
/// log `name`; another key deleted with a key-only image. Delivered in order, in reverse,
/// with the second file late (splitting the interval it falls into), with redeliveries, and
/// all at once: the history is the same.
async fn history_is_exact_in_any_delivery_order(dv: bool) {
    let s = 1_000_000;
    let l = |parts: &[(String, String)]| parts.iter().map(|p| p.0.clone()).collect::<String>();
    let f0 = [line('I', 10 * s, 1, "a", "1", 1), line('I', 11 * s, 2, "x", "7", 2)];
    let f1 = [line('U', 20 * s, 1, "b", "#NOSUP#", 3)];
    let f2 = [line('U', 30 * s, 1, "c", "3", 4), line('D', 31 * s, 2, "", "", 5)];
    let f3 = [line('D', 40 * s, 1, "c", "3", 6)];
    let f4 = [
        line('I', 50 * s, 1, "e", "5", 7),
        line('U', 51 * s, 1, "#NOSUP#", "6", 8),
    ];
    let files = vec![l(&f0), l(&f1), l(&f2), l(&f3), l(&f4)];
    let seq = |p: &[(String, String)], i: usize| p[i].1.clone();
    let t = |sec: i64| micros_text(sec * s);
    let row = |id: &str, name: &str, n: &str, sq: String, op: &str, from: String, to: Option<String>, cur: bool| {
        vec![
            id.to_string(),
            name.to_string(),
            n.to_string(),
            sq,
            op.to_string(),
            from,
            to.unwrap_or_else(|| "null".into()),
            cur.to_string(),
        ]
    };
    let expected = vec![
        row("1", "a", "1", seq(&f0, 0), "I", t(10), Some(t(20)), false),
        // `n` not logged: the previous version's.
        row("1", "b", "1", seq(&f1, 0), "U", t(20), Some(t(30)), false),
        row("1", "c", "3", seq(&f2, 0), "U", t(30), Some(t(40)), false),
        row("1", "c", "3", seq(&f3, 0), "D", t(40), Some(t(50)), false),
        row("1", "e", "5", seq(&f4, 0), "I", t(50), Some(t(51)), false),
        // Intermediate versions of one file are kept; `name` not logged.
        row("1", "e", "6", seq(&f4, 1), "U", t(51), None, true),
        row("2", "x", "7", seq(&f0, 1), "I", t(11), Some(t(31)), false),
        // A key-only delete image shows the values it closes.
        row("2", "x", "7", seq(&f2, 1), "D", t(31), None, false),
    ];
    // Merge-on-read applies the same changes to the table by another route; the history
    // is written the same way in both modes, so it gets the adversarial orders only.
    let orders: &[(&[usize], bool)] = if dv {
        &[(&[2, 4, 2, 0, 3, 1, 4, 0], false), (&[3, 1, 4, 0, 2], true)]
    } else {
        &[
            (&[4, 3, 2, 1, 0], false),
            (&[0, 2, 3, 4, 1], false),
            (&[2, 4, 2, 0, 3, 1, 4, 0], false),
            (&[3, 1, 4, 0, 2], true),
        ]
    };
    let mut late = 0;
    for &(order, grouped) in orders {
        let m = mini(dv);
        let metrics = deliver(&m, &files, order, grouped).await;
        late += order.windows(2).filter(|w| w[1] < w[0]).count();
        let got = history_rows(&m).await;
        assert_eq!(got, expected, "order {order:?} grouped {grouped} dv {dv}");
        assert!(metrics.iter().all(|c| c.history.is_some()), "{metrics:?}");
        // The current versions are the table's rows.
        let current: Vec<Vec<String>> = got.iter().filter(|r| r[7] == "true").map(|r| r[..3].to_vec()).collect();
        assert_eq!(m.rows(T, &["id", "name", "n"]).await, current, "order {order:?}");
        // A redelivered file changes nothing: no history commit at all.
        let again = deliver(&m, &files, &[order[0]], false).await;
        let h = again[0].history.clone().unwrap();
        assert_eq!(h.version, None, "{h:?}");
        assert!(h.changes > 0, "{h:?}");
        assert_eq!(history_rows(&m).await, expected);
    }
    assert!(late > 0, "no delivery came late");
}

mod merge_modes {
    #[tokio::test]
    async fn history_is_exact_in_any_delivery_order() {
        super::history_is_exact_in_any_delivery_order(false).await;
    }

    #[tokio::test]
    async fn history_is_exact_in_any_delivery_order_dv() {
        super::history_is_exact_in_any_delivery_order(true).await;
    }

    #[tokio::test]
    async fn history_equals_generated_histories_in_any_delivery_order() {
        for seed in [11, 12] {
            super::generated_history(seed, false).await;
        }
    }

    #[tokio::test]
    async fn history_equals_generated_histories_in_any_delivery_order_dv() {
        for seed in [21] {
            super::generated_history(seed, true).await;
        }
    }
}

/// A value of a generated change: text, NULL, or not logged.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Text(String),
    Null,
    NoSup,
}

impl V {
    fn csv(&self) -> String {
        match self {
            V::Text(t) => t.clone(),
            V::Null => String::new(),
            V::NoSup => "#NOSUP#".into(),
        }
    }

    fn shown(&self) -> String {
        match self {
            V::Text(t) => t.clone(),
            V::Null | V::NoSup => "null".into(),
        }
    }
}

/// A random history (inserts, updates some of which did not log a column, full and key-only
/// deletes, re-inserts, several changes of one key in one file, equal commit times), its files
/// delivered shuffled with redeliveries and commits at random points; the history table must
/// equal the generated history version for version.
async fn generated_history(seed: u64, dv: bool) {
    generated_history_by(seed, dv, 1).await;
}

/// [`generated_history`] delivered by `workers` concurrent invocations (each decodes a file
/// and commits whatever is pending, so commits of the table race); returns the conflicts the
/// table's and the history's commits met and retried.
async fn generated_history_by(seed: u64, dv: bool, workers: usize) -> u32 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let keys = 5;
    let mut live: BTreeMap<i64, (V, V)> = BTreeMap::new();
    // Per key: (seq, op, name, n as shown, commit micros).
    let mut expected: BTreeMap<i64, Vec<(String, char, String, String, i64)>> = BTreeMap::new();
    let mut files: Vec<String> = Vec::new();
    let mut micros = 0i64;
    let mut counter = 0u64;
    let mut unlogged = 0;
    while files.len() < 8 {
        let mut body = String::new();
        for _ in 0..rng.usize(1..=4) {
            if rng.u8(0..4) > 0 {
                micros += rng.i64(1..3_000_000);
            }
            counter += 1;
            let id = rng.i64(0..keys);
            let value = |rng: &mut fastrand::Rng, nosup: bool| match rng.u8(0..8) {
                0 => V::Null,
                1 | 2 if nosup => V::NoSup,
                _ => V::Text(rng.u32(0..1000).to_string()),
            };
            let (op, name, n) = match live.get(&id).cloned() {
                None => ('I', value(&mut rng, false), value(&mut rng, false)),
                Some(old) if rng.u8(0..4) == 0 => {
                    // A full image, or a key-only one (every non-key value NULL).
                    if rng.bool() {
                        ('D', old.0, old.1)
                    } else {
                        ('D', V::Null, V::Null)
                    }
                }
                Some(_) => ('U', value(&mut rng, true), value(&mut rng, true)),
            };
            let (text, seq) = line(op, micros, id, &name.csv(), &n.csv(), counter);
            body.push_str(&text);
            let prev = live.get(&id).cloned();
            // What the version holds: unlogged values (and a key-only delete's) are the
            // previous version's.
            let carry = |v: &V, old: Option<&V>| match (v, old) {
                (V::NoSup, Some(o)) => o.clone(),
                (V::NoSup, None) => V::Null,
                (v, _) => v.clone(),
            };
            let (hn, hv) = if op == 'D' && name == V::Null && n == V::Null {
                prev.clone().unwrap_or((V::Null, V::Null))
            } else {
                (
                    carry(&name, prev.as_ref().map(|p| &p.0)),
                    carry(&n, prev.as_ref().map(|p| &p.1)),
                )
            };
            unlogged += usize::from(name == V::NoSup) + usize::from(n == V::NoSup);
            if op == 'D' {
                live.remove(&id);
            } else {
                live.insert(id, (hn.clone(), hv.clone()));
            }
            expected
                .entry(id)
                .or_default()
                .push((seq, op, hn.shown(), hv.shown(), micros));
        }
        files.push(body);
    }
    let mut want: Vec<Vec<String>> = Vec::new();
    for (id, versions) in &expected {
        for (i, (seq, op, name, n, at)) in versions.iter().enumerate() {
            let to = versions.get(i + 1).map_or("null".to_string(), |v| micros_text(v.4));
            let current = i + 1 == versions.len() && *op != 'D';
            want.push(vec![
                id.to_string(),
                name.clone(),
                n.clone(),
                seq.clone(),
                op.to_string(),
                micros_text(*at),
                to,
                current.to_string(),
            ]);
        }
    }
    // Shuffled, some files twice, commits at random points.
    let mut order: Vec<usize> = (0..files.len()).collect();
    rng.shuffle(&mut order);
    let dups = 3;
    for _ in 0..dups {
        let f = rng.usize(0..files.len());
        let at = rng.usize(0..=order.len());
        order.insert(at, f);
    }
    let late = (0..order.len())
        .filter(|&i| order[..i].iter().any(|&e| e > order[i]))
        .count();
    let m = mini(dv);
    let mut conflicts = 0;
    if workers > 1 {
        for (i, body) in files.iter().enumerate() {
            m.put(&cdc(i), body.as_bytes());
        }
        let queue = std::sync::Arc::new(std::sync::Mutex::new(order.clone()));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (p, queue) = (m.pipeline.clone(), queue.clone());
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some(i) = next else { break };
                    p.decode("dms", &cdc(i), Some("etag".into()), Default::default())
                        .await
                        .unwrap();
                    // Past `commit.max_attempts` a commit gives up and its change sets wait
                    // for the next run (the queue's retry): do as the queue would.
                    loop {
                        match p.commit_all().await {
                            Ok(done) => {
                                for c in done {
                                    conflicts += c.conflicts + c.history.map_or(0, |h| h.conflicts);
                                }
                                break;
                            }
                            Err(dms2delta::error::Error::Conflict { attempts, .. }) => conflicts += attempts,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            }));
        }
        for t in tasks {
            conflicts += t.await.unwrap();
        }
    } else {
        for &i in &order {
            m.put(&cdc(i), files[i].as_bytes());
            m.decode(&cdc(i)).await;
            if rng.bool() {
                m.pipeline.commit_all().await.unwrap();
            }
        }
    }
    m.pipeline.commit_all().await.unwrap();
    eprintln!("seed {seed} dv {dv}: {} files delivered as {order:?}, {late} late, {dups} redelivered, {unlogged} unlogged values, {} versions", files.len(), want.len());
    assert!(
        late > 0 && unlogged > 0,
        "seed {seed}: no late file or no unlogged value"
    );
    let got = history_rows(&m).await;
    if got != want {
        let show = |rows: &[Vec<String>]| rows.iter().map(|r| r.join(" ")).collect::<Vec<_>>().join("\n");
        panic!(
            "seed {seed} dv {dv}: history differs\nwant:\n{}\ngot:\n{}",
            show(&want),
            show(&got)
        );
    }
    let current: Vec<Vec<String>> = got.iter().filter(|r| r[7] == "true").map(|r| r[..3].to_vec()).collect();
    assert_eq!(m.rows(T, &["id", "name", "n"]).await, current, "seed {seed}");
    conflicts
}

/// Concurrent invocations committing one table: the table's and the history's commits
/// conflict, retry, and the history still equals the generated one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_give_the_same_history() {
    let seed = 31;
    let conflicts = generated_history_by(seed, false, 4).await;
    eprintln!("seed {seed}: {conflicts} conflicts retried");
    assert!(conflicts > 0, "seed {seed}: no commit met a concurrent one");
}

/// The README's "as of" query, run by the Python `deltalake` package's engine on the history
/// table: the row as it was at a time between two versions, and nothing for a time at which
/// the key was deleted.
#[tokio::test]
async fn the_python_reader_answers_an_as_of_query() {
    if support::skip_python() {
        eprintln!("DMS2DELTA_SKIP_PYTHON=1: skipped");
        return;
    }
    let python = support::python().expect("no Python with deltalake: set DMS2DELTA_PYTHON");
    let m = mini(false);
    let s = 1_000_000;
    let files = vec![
        line('I', 10 * s, 1, "a", "1", 1).0,
        line('U', 20 * s, 1, "b", "2", 2).0,
        line('D', 30 * s, 1, "b", "2", 3).0,
    ];
    deliver(&m, &files, &[2, 0, 1], false).await;
    let spec = m.pipeline.config.table_by_target("my", "app", "t").unwrap();
    let path = m.dir.path().join("lake").join(spec.history_path());
    let script = r#"
import sys
import pyarrow
from deltalake import DeltaTable, QueryBuilder
h = DeltaTable(sys.argv[1])
for at in sys.argv[2:]:
    rows = pyarrow.table(QueryBuilder().register("h", h).execute(f"""
        SELECT id, name, n FROM h
        WHERE _op <> 'D'
          AND (_valid_from IS NULL OR _valid_from <= TIMESTAMP '{at}')
          AND (_valid_to IS NULL OR _valid_to > TIMESTAMP '{at}')
        ORDER BY id""")).to_pylist()
    print(at, [tuple(r.values()) for r in rows])
"#;
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .args([
            "2024-05-28T12:00:05Z",
            "2024-05-28T12:00:15Z",
            "2024-05-28T12:00:20Z",
            "2024-05-28T12:00:25Z",
            "2024-05-28T12:00:35Z",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec![
            "2024-05-28T12:00:05Z []",
            "2024-05-28T12:00:15Z [(1, 'a', 1)]",
            "2024-05-28T12:00:20Z [(1, 'b', 2)]",
            "2024-05-28T12:00:25Z [(1, 'b', 2)]",
            "2024-05-28T12:00:35Z []",
        ],
        "{text}"
    );
}

/// The reload fixture with the snapshot in two files: row 1 in the second, which may come after
/// the floor rose.
const RELOAD_FILES: [Written; 5] = [
    GEN0,
    C1,
    (
        "app/t/LOAD00000001.csv",
        b"id,name\n3,three-again\n4,four-v2\n5,five\n",
        "2024-05-28T11:00:00Z",
    ),
    C2,
    ("app/t/LOAD00000002.csv", b"id,name\n1,one-v2\n", "2024-05-28T11:00:01Z"),
];

/// A reload closes, at its anchor, every version its snapshot lacks (key 2, deleted while
/// nothing was captured), and only those: keys the snapshot holds go on with the snapshot's
/// row as a new version, in any order of the reload, the changes around it and the commits.
#[tokio::test]
async fn a_reload_closes_the_versions_its_snapshot_lacks_in_any_order() {
    let want: Vec<Vec<&str>> = vec![
        vec!["1", "one", "I", "false"],
        vec!["1", "one-v2", "U", "false"],
        vec!["1", "one-v2", "I", "true"],
        vec!["2", "two", "I", "false"],
        vec!["2", "two", "D", "false"],
        vec!["3", "three", "I", "false"],
        vec!["3", "three", "D", "false"],
        vec!["3", "three-again", "I", "true"],
        vec!["4", "four", "I", "false"],
        vec!["4", "four-v2", "I", "true"],
        vec!["5", "five", "I", "false"],
        vec!["5", "five-v2", "U", "true"],
        vec!["6", "six", "I", "true"],
    ];
    let runs: [(&[usize], bool, &str); 3] = [
        (&[1, 2, 3, 4], true, ""),
        (&[4, 3, 2, 1], true, DELETION_VECTORS),
        (&[3, 1, 4, 2], false, ""),
    ];
    let mut reopened = 0;
    for (order, commit_each, dv) in runs {
        let m = Mini::new(RELOADED, &format!("{dv}{HISTORY}"));
        put_written(&m, RELOAD_FILES[0]);
        m.decode(RELOAD_FILES[0].0).await;
        // Every file is in the bucket before the reload's is decoded: decode tells a reload
        // from the first load by the CDC files written before it.
        for &i in order {
            put_written(&m, RELOAD_FILES[i]);
        }
        let mut floor = None;
        for &i in order {
            m.decode(RELOAD_FILES[i].0).await;
            if commit_each {
                for c in m.pipeline.commit_all().await.unwrap() {
                    reopened += c.history.map_or(0, |h| h.versions_removed);
                    floor = c.floor.or(floor);
                }
            }
        }
        for c in m.pipeline.commit_all().await.unwrap() {
            reopened += c.history.map_or(0, |h| h.versions_removed);
            floor = c.floor.or(floor);
        }
        let ctx = format!("order {order:?}, commit each {commit_each}, dv {}", !dv.is_empty());
        let floor = floor.unwrap_or_else(|| panic!("{ctx}: the floor never rose"));
        let rows = history_of(
            &m,
            ("pg", "app", "t"),
            &[
                "id",
                "name",
                "_op",
                "_is_current",
                "_dms_seq",
                "_valid_from",
                "_valid_to",
            ],
        )
        .await;
        let got: Vec<Vec<&str>> = rows
            .iter()
            .map(|r| r[..4].iter().map(String::as_str).collect())
            .collect();
        assert_eq!(got, want, "{ctx}");
        // Key 2's closing version sits at the floor; each version ends where the next begins.
        assert_eq!(rows[4][4], floor, "{ctx}");
        for w in rows.windows(2).filter(|w| w[0][0] == w[1][0]) {
            assert_eq!(w[0][6], w[1][5], "{ctx}: {w:?}");
        }
        let current: Vec<Vec<String>> = rows
            .iter()
            .filter(|r| r[3] == "true")
            .map(|r| r[..2].to_vec())
            .collect();
        assert_eq!(m.rows("pg.app.t", &["id", "name"]).await, current, "{ctx}");
    }
    assert!(
        reopened > 0,
        "no snapshot row came after its key was closed at the floor"
    );
}

/// Parquet files (decoded by their own route): every change of a file is a version, a value
/// an update did not log (`unlogged_when_null`) is the previous version's, and a column a
/// later file adds is added to the history.
#[tokio::test]
async fn parquet_changes_keep_every_version_and_a_later_column() {
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::DataType;
    use std::sync::Arc;
    let source = "\n  - name: ora\n    bucket: dms\n    tables:\n      - schema: app\n        table: t\n        keys: [id]\n        unlogged_when_null: [body]\n";
    let m = Mini::new(source, HISTORY);
    let text = |v: &[Option<&str>]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
    let ids = |v: &[i64]| Arc::new(Int64Array::from(v.to_vec())) as ArrayRef;
    let second = support::parquet(vec![
        ("Op", DataType::Utf8, text(&[Some("U"), Some("D")])),
        ("id", DataType::Int64, ids(&[1, 2])),
        ("body", DataType::Utf8, text(&[None, Some("b2")])),
        ("n", DataType::Int64, ids(&[5, 4])),
        ("note", DataType::Utf8, text(&[Some("later"), None])),
    ]);
    let first = support::parquet(vec![
        (
            "Op",
            DataType::Utf8,
            text(&[Some("I"), Some("U"), Some("I"), Some("U")]),
        ),
        ("id", DataType::Int64, ids(&[1, 1, 2, 2])),
        (
            "body",
            DataType::Utf8,
            text(&[Some("big"), None, Some("b1"), Some("b2")]),
        ),
        ("n", DataType::Int64, ids(&[1, 2, 3, 4])),
    ]);
    // The later file first.
    m.apply("app/t/20240528-195141302.parquet", &second).await;
    m.apply("app/t/20240528-195141301.parquet", &first).await;
    let rows = history_of(
        &m,
        ("ora", "app", "t"),
        &["id", "body", "n", "note", "_op", "_is_current", "_dms_seq"],
    )
    .await;
    let got: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| r[..6].iter().map(String::as_str).collect())
        .collect();
    assert_eq!(
        got,
        vec![
            vec!["1", "big", "1", "null", "I", "false"],
            vec!["1", "big", "2", "null", "U", "false"],
            vec!["1", "big", "5", "later", "U", "true"],
            vec!["2", "b1", "3", "null", "I", "false"],
            vec!["2", "b2", "4", "null", "U", "false"],
            vec!["2", "b2", "4", "null", "D", "false"],
        ]
    );
    assert_eq!(
        m.rows("ora.app.t", &["id", "body", "n", "note"]).await,
        vec![vec!["1", "big", "5", "later"]]
    );
}

/// An invocation that dies after the table's commit and before the history's (or after the
/// history's, before the change sets are removed) leaves the change sets staged; the next
/// commit finds them stale for the table and gives them to the history again, which ends the
/// same as without the crash.
#[tokio::test]
async fn a_commit_that_dies_around_the_history_is_completed_by_the_next() {
    use dms2delta::failpoint::{Failpoints, COMMIT_BEFORE_CLEANUP, COMMIT_BEFORE_HISTORY};
    let s = 1_000_000;
    let files = [
        [line('I', 10 * s, 1, "a", "1", 1).0, line('U', 11 * s, 1, "b", "2", 2).0].concat(),
        line('U', 20 * s, 1, "c", "#NOSUP#", 3).0,
    ];
    let reference = mini(false);
    deliver(&reference, &files, &[0, 1], false).await;
    let want = history_rows(&reference).await;
    assert_eq!(want.len(), 3);
    let mut crashes = 0;
    for point in [COMMIT_BEFORE_HISTORY, COMMIT_BEFORE_CLEANUP] {
        let m = mini(false);
        for (i, body) in files.iter().enumerate() {
            m.put(&cdc(i), body.as_bytes());
            m.decode(&cdc(i)).await;
            let fp = Failpoints::new(move |p| p == point);
            let e = m.pipeline.commit("my", "app", "t", fp).await.unwrap_err();
            assert!(matches!(e, dms2delta::error::Error::Failpoint(_)), "{e}");
            crashes += 1;
            // The retry: the table's changes are stale now, the history's are not (or, after
            // the history was written, change nothing).
            let c = m.pipeline.commit_all().await.unwrap();
            assert_eq!(c[0].rows_inserted + c[0].rows_updated, 0, "{c:?}");
        }
        assert_eq!(history_rows(&m).await, want, "crash at {point}");
    }
    assert_eq!(crashes, 4);
}

/// The compact function maintains the history table with its table: small files bin-packed, a
/// checkpoint written; the versions stay what they were.
#[tokio::test]
async fn compaction_packs_and_checkpoints_the_history_and_changes_no_version() {
    let m = Mini::new(SOURCE, &format!("{HISTORY}compact:\n  min_small_files: 2\n"));
    let s = 1_000_000;
    let files: Vec<String> = (0..3)
        .map(|i| line('U', (10 + i) * s, 1 + i % 2, &format!("v{i}"), "1", i as u64 + 1).0)
        .collect();
    deliver(&m, &files, &[0, 1, 2], false).await;
    let before = history_rows(&m).await;
    assert_eq!(before.len(), 3);
    let r = dms2delta::operations::compact::CompactBuilder::new(m.pipeline.config.clone(), &m.pipeline.stores)
        .with_table("my", "app", "t")
        .with_force(true)
        .await
        .unwrap();
    assert!(r.history_files_in >= 2, "{r:?}");
    assert_eq!(history_rows(&m).await, before);
    let spec = m.pipeline.config.table_by_target("my", "app", "t").unwrap();
    let log = m.dir.path().join("lake").join(spec.history_path()).join("_delta_log");
    let checkpoints = std::fs::read_dir(&log)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".checkpoint.")
        })
        .count();
    assert!(checkpoints > 0, "no checkpoint in {}", log.display());
}

/// The simulator's sources (three formats; by seed soft deletes, partitions, a column added
/// mid-stream, a full load read while CDC ran) replicated twice: on folders in DMS's order, one
/// commit per file; and on the S3 endpoint, shuffled with redeliveries, committed at random points, with
/// merge-on-read. Both tables equal the simulated source; each history's current versions are
/// its table's rows, its versions chain (each ends where the next begins), and the two histories
/// are the same version for version.
#[tokio::test]
async fn simulated_sources_give_one_history_in_any_order_and_on_s3() {
    use dms2delta::failpoint::Failpoints;
    use support::{Lab, On};
    // Soft deletes with key-only images, partitions, a column added mid-stream, a parallel full
    // load, a full load read after changes it holds: see the variants printed below.
    let seed = 2019;
    let opts = dms2delta::sim::SimOptions {
        seed,
        tables: 1,
        keys: 6,
        changes: 14,
        max_file_changes: 5,
        variety: true,
        ..Default::default()
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut histories = Vec::new();
    let mut late = 0;
    let mut variants = String::new();
    for (on, dv) in [(On::Folders, false), (On::S3, true)] {
        let lab = Lab::configured(on, &opts, None, None, dv, HISTORY).await;
        variants = format!("{:?}", lab.sim.variants);
        let mut order: Vec<usize> = (0..lab.sim.files.len()).collect();
        if on == On::S3 {
            // Full-load files first, as the pipeline's `run` decodes them; then CDC shuffled.
            let loads = order.iter().filter(|&&i| lab.sim.files[i].key.contains("LOAD")).count();
            rng.shuffle(&mut order[loads..]);
            for _ in 0..3 {
                let f = order[rng.usize(0..order.len())];
                let at = rng.usize(0..=order.len());
                order.insert(at, f);
            }
            late += (0..order.len())
                .filter(|&i| order[..i].iter().any(|&e| e > order[i]))
                .count();
        }
        for &i in &order {
            let f = &lab.sim.files[i];
            lab.pipeline
                .decode(&lab.bucket, &f.key, Some("e".into()), Failpoints::default())
                .await
                .unwrap();
            if on == On::Folders || rng.bool() {
                lab.pipeline.commit_all().await.unwrap();
            }
        }
        lab.pipeline.commit_all().await.unwrap();
        lab.check()
            .await
            .unwrap_or_else(|e| panic!("seed {seed} on {on:?}: {e}"));
        let mut per_table = BTreeMap::new();
        for name in lab.sim.expected.keys() {
            let mut p = name.splitn(3, '.');
            let (ns, s, t) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            let spec = lab.pipeline.config.table_by_target(ns, s, t).unwrap();
            let data: Vec<String> = lab.sim.columns[name]
                .iter()
                .filter(|c| *c != dms2delta::sim::DELETED_FLAG)
                .cloned()
                .collect();
            let k = lab.sim.key_columns[name];
            let mut cols = data.clone();
            cols.extend(["_dms_seq", "_op", "_valid_from", "_valid_to", "_is_current"].map(String::from));
            let batches = lab
                .pipeline
                .read_table(&lab.pipeline.history_location(&spec))
                .await
                .unwrap();
            let mut rows = rows_of(&batches, &cols).unwrap();
            let w = data.len();
            rows.sort_by(|a, b| (&a[..k], &a[w]).cmp(&(&b[..k], &b[w])));
            for pair in rows.windows(2).filter(|p| p[0][..k] == p[1][..k]) {
                assert_eq!(pair[0][w + 3], pair[1][w + 2], "{name} on {on:?}: {pair:?}");
                assert_eq!(pair[0][w + 4], Value::Bool(false), "{name} on {on:?}: {pair:?}");
            }
            let mut current: Vec<Vec<Value>> = rows
                .iter()
                .filter(|r| r[w + 4] == Value::Bool(true))
                .map(|r| r[..w].to_vec())
                .collect();
            current.sort();
            let mut table_cols = data.clone();
            let soft = lab.sim.variants[name].soft;
            if soft {
                table_cols.push(dms2delta::sim::DELETED_FLAG.to_string());
            }
            let live: Vec<Vec<Value>> = rows_of(
                &lab.pipeline
                    .read_table(&lab.pipeline.table_location(&spec))
                    .await
                    .unwrap(),
                &table_cols,
            )
            .unwrap()
            .into_iter()
            .filter(|r| !soft || r[w] != Value::Bool(true))
            .map(|r| r[..w].to_vec())
            .collect();
            let mut live = live;
            live.sort();
            assert_eq!(current, live, "{name} on {on:?}: current versions against the table");
            assert!(rows.len() > live.len(), "{name}: no key has more than one version");
            per_table.insert(name.clone(), rows);
        }
        histories.push(per_table);
    }
    assert!(late > 0, "seed {seed}: nothing delivered late");
    assert_eq!(histories[0], histories[1], "seed {seed}: the histories differ");
    eprintln!(
        "seed {seed}: {} tables, {} versions, {late} late deliveries; {variants}",
        histories[0].len(),
        histories[0].values().map(Vec::len).sum::<usize>()
    );
}
