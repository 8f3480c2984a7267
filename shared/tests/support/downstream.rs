//! The downstream options checked against the simulator's full history, not only its final
//! state: a table's SCD type 2 history version for version ([`check_history`]), and its change
//! feed replayed segment by segment into the table ([`FeedSegments`]).

use std::collections::{BTreeMap, HashMap};

use dms2delta::operations::history::{FLOOR_SOURCE, IS_CURRENT, OP_COLUMN, VALID_FROM, VALID_TO};
use dms2delta::sim::{rows_of, SimVersion, Value, DELETED_FLAG};

use super::feed::{self, Replay};
use super::Lab;

const SEQ: &str = dms2delta::changes::SEQ;
const SOURCE_FILE: &str = dms2delta::changes::SOURCE_FILE;

/// What [`check_history`] compared.
#[derive(Debug, Default, Clone, Copy)]
pub struct HistoryChecked {
    pub tables: u64,
    pub versions: u64,
    /// Versions whose file was first decoded after the file of a newer version of the same key:
    /// the history had to slot them in below what it already held.
    pub late: u64,
    /// Versions closing a key at a reload's or truncate's floor.
    pub floor_closes: u64,
    /// Versions whose unlogged values came from the version before them.
    pub carried: u64,
    /// Objects a truncate removed before any decode of them read it.
    pub removed_unread: u64,
    /// Keys whose delete was in such an object: still live at the truncate, closed by its floor.
    pub unread_deletes_closed: u64,
}

fn split3(name: &str) -> (&str, &str, &str) {
    let mut p = name.splitn(3, '.');
    (
        p.next().unwrap_or_default(),
        p.next().unwrap_or_default(),
        p.next().unwrap_or_default(),
    )
}

/// A history row read back: its data values, then the version's columns.
struct Row {
    values: Vec<Value>,
    seq: Value,
    op: Value,
    from: Option<i64>,
    to: Option<i64>,
    current: Value,
    file: Value,
}

fn ts(v: &Value) -> Option<i64> {
    match v {
        Value::Ts(t) => Some(*t),
        _ => None,
    }
}

/// Every history table of the lab equals the history the simulator wrote its files from, as the
/// replication contract defines it: one version per change in sequence order (a key's versions
/// ordered by `_dms_seq`), a closing delete at each floor that found the key live, values not
/// logged carried from the version before, `_valid_from` the version's own time but never before
/// its predecessor's, `_valid_to` the next version's `_valid_from`, and `_is_current` only on a
/// key's newest version when it is not a delete. The closing versions of a truncate are checked
/// for their place (between the versions before and after it), their `_op` and `_dms_source_file`
/// and carried values; their anchor is the removal's time, which the lab does not fix. The
/// removal events of one truncate may raise the floor in steps; a key is still closed once.
/// An object a truncate removed may be gone before any decode of it ran: its versions are in
/// the history either all or not at all, and a floor closes only what is there.
/// `decoded` lists the objects in the order their first decode began.
pub async fn check_history(lab: &Lab, decoded: &[String]) -> Result<HistoryChecked, String> {
    let mut out = HistoryChecked::default();
    let first_decode: HashMap<&str, usize> = decoded.iter().enumerate().rev().map(|(i, k)| (k.as_str(), i)).collect();
    for (name, truth) in &lab.sim.history {
        if !lab.sim.variants[name].history {
            continue;
        }
        out.tables += 1;
        let (ns, schema, table) = split3(name);
        let spec = lab
            .pipeline
            .config
            .table_by_target(ns, schema, table)
            .ok_or_else(|| format!("{name}: not configured"))?;
        let batches = lab
            .pipeline
            .read_table(&lab.pipeline.history_location(&spec))
            .await
            .map_err(|e| format!("history of {name}: {e}"))?;
        let data: Vec<String> = lab.sim.columns[name]
            .iter()
            .filter(|c| *c != DELETED_FLAG)
            .cloned()
            .collect();
        let width = data.len();
        let k = lab.sim.key_columns[name];
        let mut columns = data.clone();
        for c in [SEQ, OP_COLUMN, VALID_FROM, VALID_TO, IS_CURRENT, SOURCE_FILE] {
            columns.push(c.to_string());
        }
        let mut actual: BTreeMap<Vec<Value>, Vec<Row>> = BTreeMap::new();
        for mut r in rows_of(&batches, &columns).map_err(|e| format!("history of {name}: {e}"))? {
            let tail = r.split_off(width);
            let mut t = tail.into_iter();
            let mut next = || t.next().unwrap_or(Value::Null);
            let row = Row {
                values: r,
                seq: next(),
                op: next(),
                from: ts(&next()),
                to: ts(&next()),
                current: next(),
                file: next(),
            };
            actual.entry(row.values[..k].to_vec()).or_default().push(row);
        }
        for rows in actual.values_mut() {
            rows.sort_by(|a, b| a.seq.cmp(&b.seq));
        }
        let show = |want: &[SimVersion], got: &[Row]| {
            let mut s = String::from("  the simulator's versions:\n");
            for v in want {
                s.push_str(&format!(
                    "    {:?} {} at {:?} {:?} unlogged {:?} ({:?})\n",
                    v.seq, v.op, v.micros, v.row, v.unlogged, v.file
                ));
            }
            s.push_str("  the history's:\n");
            for r in got {
                s.push_str(&format!(
                    "    {} {} {:?}..{:?} current {} {:?} ({})\n",
                    r.seq.canonical(),
                    r.op.canonical(),
                    r.from,
                    r.to,
                    r.current.canonical(),
                    r.values,
                    r.file.canonical()
                ));
            }
            s
        };
        // Removed objects whose changes reached the history: those with any version in it.
        let removed: std::collections::BTreeSet<&str> = lab
            .sim
            .removals
            .iter()
            .filter(|r| &r.table == name)
            .map(|r| r.key.as_str())
            .collect();
        let read: std::collections::BTreeSet<&str> = truth
            .iter()
            .flat_map(|(key, vs)| vs.iter().map(move |v| (key, v)))
            .filter(|(key, v)| {
                v.file.as_deref().is_some_and(|f| removed.contains(f))
                    && actual.get(*key).is_some_and(|rows| {
                        rows.iter()
                            .any(|r| v.seq.as_ref().is_some_and(|s| r.seq == Value::Str(s.clone())))
                    })
            })
            .filter_map(|(_, v)| v.file.as_deref())
            .collect();
        out.removed_unread += removed.len().saturating_sub(read.len()) as u64;
        let truth: BTreeMap<Vec<Value>, Vec<SimVersion>> = truth
            .iter()
            .map(|(key, vs)| {
                let mut live = false;
                let mut kept: Vec<SimVersion> = vs
                    .iter()
                    .filter(|v| {
                        let unread = v
                            .file
                            .as_deref()
                            .is_some_and(|f| removed.contains(f) && !read.contains(f));
                        let keep = !unread && (!v.floor || live);
                        if keep {
                            live = v.op != 'D';
                        }
                        keep
                    })
                    .cloned()
                    .collect();
                // A delete in an object DMS removed before it was read leaves the key live when
                // the truncate's floor rises: the floor closes it, as it closes any live key.
                let unread_removed = |v: &SimVersion| {
                    v.file
                        .as_deref()
                        .is_some_and(|f| removed.contains(f) && !read.contains(f))
                };
                if vs.iter().any(|v| v.op == 'D' && !v.floor && unread_removed(v)) {
                    let before = |v: &SimVersion| v.file.as_deref().is_some_and(|f| removed.contains(f));
                    if let Some(last) = kept.iter().rposition(before) {
                        let closed = kept.get(last + 1).is_some_and(|n| n.floor);
                        if kept[last].op != 'D' && !closed {
                            let mut row = key.clone();
                            row.resize(kept[last].row.len(), Value::Null);
                            let width = row.len();
                            kept.insert(
                                last + 1,
                                SimVersion {
                                    seq: None,
                                    op: 'D',
                                    micros: None,
                                    row,
                                    unlogged: (key.len()..width).collect(),
                                    file: None,
                                    floor: true,
                                },
                            );
                            out.unread_deletes_closed += 1;
                        }
                    }
                }
                (key.clone(), kept)
            })
            .filter(|(_, vs)| !vs.is_empty())
            .collect();
        let empty = Vec::new();
        let keys: std::collections::BTreeSet<&Vec<Value>> = truth.keys().chain(actual.keys()).collect();
        for key in keys {
            let want = truth.get(key).unwrap_or(&empty);
            let all = actual.get(key).map(Vec::as_slice).unwrap_or(&[]);
            let floor_row = |r: &Row| r.file == Value::Str(FLOOR_SOURCE.into());
            // Each row with the start of the row after it (which its `_valid_to` must be). A key
            // is closed once at a floor, however many steps a truncate's floor rose in.
            let mut got: Vec<&Row> = Vec::with_capacity(all.len());
            let mut next_from: Vec<Option<i64>> = Vec::with_capacity(all.len());
            for (i, r) in all.iter().enumerate() {
                if i > 0 && floor_row(r) && floor_row(&all[i - 1]) {
                    return Err(format!(
                        "history of {name}, key {key:?}: two closing versions in a row\n{}",
                        show(want, all)
                    ));
                }
                got.push(r);
                next_from.push(all.get(i + 1).and_then(|x| x.from));
            }
            let got = got.as_slice();
            let fail = |what: String| Err(format!("history of {name}, key {key:?}: {what}\n{}", show(want, all)));
            if want.len() != got.len() {
                return fail(format!("{} versions expected, {} read", want.len(), got.len()));
            }
            let mut prev_values: Option<Vec<Value>> = None;
            let mut prev_from: Option<i64> = None;
            for (j, (v, a)) in want.iter().zip(got).enumerate() {
                let mut values = v.row.clone();
                for &c in v.unlogged.iter().filter(|&&c| c >= k) {
                    values[c] = prev_values.as_ref().map_or(Value::Null, |p| p[c].clone());
                }
                out.carried += u64::from(!v.unlogged.is_empty() && !v.floor && j > 0);
                let from = if v.floor {
                    out.floor_closes += 1;
                    let after_prev = j == 0 || a.seq > got[j - 1].seq;
                    let before_next = want
                        .get(j + 1)
                        .and_then(|n| n.seq.clone())
                        .is_none_or(|n| a.seq < Value::Str(n));
                    let placed = match &v.seq {
                        Some(s) => a.seq == Value::Str(s.clone()),
                        None => after_prev && before_next,
                    };
                    if !placed || a.file != Value::Str(FLOOR_SOURCE.into()) {
                        return fail(format!("version {j} should close the key at the floor {:?}", v.seq));
                    }
                    if a.from.is_none() || (prev_from.is_some() && a.from < prev_from) {
                        return fail(format!(
                            "the floor's version {j} starts at {:?}, before its predecessor",
                            a.from
                        ));
                    }
                    a.from
                } else {
                    if a.seq != Value::Str(v.seq.clone().unwrap_or_default()) {
                        return fail(format!("version {j} has the wrong sequence"));
                    }
                    match (v.micros, prev_from) {
                        (Some(t), Some(p)) => Some(t.max(p)),
                        (t, p) => t.or(p),
                    }
                };
                if a.op != Value::Str(v.op.to_string()) {
                    return fail(format!("version {j} should be `{}`", v.op));
                }
                if a.values != values {
                    return fail(format!("version {j} should hold {values:?}"));
                }
                if a.from != from {
                    return fail(format!("version {j} should be valid from {from:?}"));
                }
                let next_from = next_from[j];
                if a.to != next_from {
                    return fail(format!(
                        "version {j} should be valid to {next_from:?} (the next version's start)"
                    ));
                }
                let current = j + 1 == want.len() && v.op != 'D';
                if a.current != Value::Bool(current) {
                    return fail(format!("version {j} should have `_is_current` {current}"));
                }
                if let Some(at) = v.file.as_deref().and_then(|f| first_decode.get(f)) {
                    let newer_first = want[j + 1..]
                        .iter()
                        .filter_map(|n| n.file.as_deref().and_then(|f| first_decode.get(f)))
                        .any(|n| n < at);
                    out.late += u64::from(newer_first);
                }
                out.versions += 1;
                prev_values = Some(values);
                prev_from = from;
            }
        }
    }
    Ok(out)
}

/// What [`FeedSegments::check`] replayed.
#[derive(Debug, Default, Clone, Copy)]
pub struct FeedChecked {
    pub tables: u64,
    /// Feed rows replayed, and segments of versions checked (one per table and check).
    pub rows: u64,
    pub segments: u64,
}

/// Each feed table's change feed, checked in segments: maintenance with the clock past every
/// retention deletes the files older versions' changes are in (change files, and the data files
/// a commit without change files is read from), so the feed is replayed up to the table's
/// version before each such run, onto the rows the table held at the end of the previous
/// segment, and must end with exactly the table's rows, each key's written sequence never
/// going down across segments. The first segment starts at version 0, the table's creation.
#[derive(Default)]
pub struct FeedSegments {
    /// By table: the first version not replayed yet, the columns of the rows held, the replay.
    at: BTreeMap<String, (u64, Vec<String>, Replay)>,
}

impl FeedSegments {
    pub async fn check(&mut self, lab: &Lab) -> Result<FeedChecked, String> {
        let mut out = FeedChecked::default();
        for name in lab.sim.expected.keys() {
            if !lab.sim.variants[name].change_feed {
                continue;
            }
            out.tables += 1;
            let (ns, schema, table) = split3(name);
            let spec = lab
                .pipeline
                .config
                .table_by_target(ns, schema, table)
                .ok_or_else(|| format!("{name}: not configured"))?;
            let loc = lab.pipeline.table_location(&spec);
            let (handle, exists) = dms2delta::lake::open(&lab.pipeline.stores, &loc)
                .await
                .map_err(|e| e.to_string())?;
            if !exists {
                continue;
            }
            let version = handle.version().unwrap_or(0);
            let batches = lab.pipeline.read_table(&loc).await.map_err(|e| e.to_string())?;
            // A table whose rows are all deleted reads back as no batch: its columns are the
            // snapshot's.
            let schema = match batches.first() {
                Some(first) => first.schema(),
                None => handle
                    .snapshot()
                    .map_err(|e| format!("{name}: {e}"))?
                    .snapshot()
                    .arrow_schema(),
            };
            let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let k = lab.sim.key_columns[name];
            let keys: Vec<&str> = lab.sim.columns[name][..k].iter().map(String::as_str).collect();
            let (from, held_columns, mut replay) = self.at.remove(name).unwrap_or_default();
            // Rows held from an earlier segment, in this segment's columns (a column added since
            // is NULL in them, as in the table).
            let mut replay_now = Replay {
                newest: std::mem::take(&mut replay.newest),
                state: BTreeMap::new(),
            };
            for (key, row) in std::mem::take(&mut replay.state) {
                let by_name: HashMap<&str, &Value> = held_columns.iter().map(String::as_str).zip(&row).collect();
                let row = columns
                    .iter()
                    .map(|c| by_name.get(c.as_str()).map_or(Value::Null, |v| (*v).clone()))
                    .collect();
                replay_now.state.insert(key, row);
            }
            if from <= version {
                let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
                let f = feed::read_range(&lab.pipeline.stores, &loc, &cols, from, Some(version)).await?;
                f.replay_onto(&keys, &mut replay_now)
                    .map_err(|e| format!("{name}: replaying the feed from version {from} to {version}: {e}"))?;
                out.rows += f.rows.len() as u64;
                out.segments += 1;
            }
            let table_rows = rows_of(&batches, &columns)?;
            let replayed: Vec<Vec<Value>> = replay_now.state.values().cloned().collect();
            let mut sorted = replayed.clone();
            sorted.sort();
            if sorted != table_rows {
                return Err(format!(
                    "{name}: the feed replayed from version {from} to {version} is not the table\n{}",
                    dms2delta::sim::diff(&table_rows, &sorted)
                ));
            }
            self.at.insert(name.clone(), (version + 1, columns, replay_now));
        }
        Ok(out)
    }
}
