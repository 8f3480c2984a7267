//! One pass: list the source, decode what is new, commit, and the report it makes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;

use dms2delta::config::Validated;
use dms2delta::failpoint::Failpoints;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::pipeline::Pipeline;
use dms2delta::quarantine::{list_reports, QuarantineReport};
use dms2delta::route::{route, FileKind, Route};
use dms2delta::stage::change_set_id;
use futures::TryStreamExt;
use object_store::ObjectMeta;

use super::source::Source;
use crate::common::{
    configured_tables, known_tables, report_location, table_info, table_location, CliResult, Failure, TableInfo,
};

/// What one pass did to one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRow {
    /// `namespace.schema.table`.
    pub name: String,
    /// Source files applied in this pass.
    pub files: usize,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Changes refused because the table already had a newer one.
    pub stale: u64,
    /// The table after the pass.
    pub info: TableInfo,
    /// Files of this table set aside with a report (from this pass or before).
    pub quarantined: usize,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Objects found under the source.
    pub listed: usize,
    /// Files decoded in this pass.
    pub decoded: usize,
    /// Files whose changes the tables already hold (not decoded again).
    pub already_applied: usize,
    /// Files quarantined by an earlier pass and unchanged since (not decoded again).
    pub quarantined_earlier: usize,
    /// Files not meant for decoding, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Files quarantined in this pass: report location, report.
    pub quarantined: Vec<(String, QuarantineReport)>,
    /// Every configured table and every table in the lake.
    pub tables: Vec<TableRow>,
    /// Every report in the quarantine after the pass.
    pub open_reports: Vec<(String, QuarantineReport)>,
    /// Tables whose commit failed in this pass (`namespace.schema.table`, why); their files
    /// are decoded again by the next pass. Every other table was committed.
    pub failed: Vec<(String, String)>,
}

impl RunReport {
    /// Rows inserted, updated or deleted in this pass.
    pub fn changed_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.inserted + t.updated + t.deleted).sum()
    }
}

/// What passes remember between each other (in --watch mode).
#[derive(Debug, Default)]
pub struct RunState {
    /// Change set ids (bucket, key, ETag) of files whose changes are in the tables (or that
    /// had none).
    done: HashSet<String>,
    /// Ids of files set aside with a report; a changed file gets a new id and is decoded again.
    quarantined: HashSet<String>,
    loaded: bool,
}

enum Plan {
    Skip(String),
    Decode { bucket: String, rank: u8 },
}

/// Which bucket's source owns `key`, and whether it is a full-load file (decoded first).
fn plan_file(config: &Validated, buckets: &[String], key: &str) -> Plan {
    let mut ignored: Option<&str> = None;
    for b in buckets {
        match route(config, b, key) {
            Ok(Route::Ignore(why)) => {
                ignored.get_or_insert(why);
            }
            Ok(Route::File(r)) => {
                if let (Some(schema), Some(table)) = (&r.schema, &r.table) {
                    if let Ok(None) = config.table(r.source, schema, table) {
                        return Plan::Skip("table not selected by the source's rules".into());
                    }
                }
                let rank = if r.kind == FileKind::Load { 0 } else { 1 };
                return Plan::Decode {
                    bucket: b.clone(),
                    rank,
                };
            }
            // Under a source but not in DMS's layout: decode writes the quarantine report.
            Err(_) => {
                return Plan::Decode {
                    bucket: b.clone(),
                    rank: 1,
                }
            }
        }
    }
    Plan::Skip(ignored.unwrap_or("not under any configured source").to_string())
}

struct Planned {
    rank: u8,
    key: String,
    bucket: String,
    etag: Option<String>,
    id: String,
}

/// One pass: list, decode what is new, commit, report.
pub async fn run_once(pipeline: &Pipeline, source: &Source, state: &mut RunState, force: bool) -> CliResult<RunReport> {
    let config = &pipeline.config;
    let first = source
        .buckets
        .first()
        .ok_or_else(|| Failure::new("the configuration has no sources"))?;
    let store = pipeline.stores.bucket(first)?;
    let metas: Vec<ObjectMeta> = store
        .list(source.prefix.as_ref())
        .try_collect()
        .await
        .map_err(|e| Failure {
            retryable: true,
            ..Failure::new(format!("cannot list {}: {e}", source.shown))
        })?;

    let (qstore, qroot) = pipeline.stores.resolve(&config.quarantine)?;
    if !state.loaded && !force {
        for spec in configured_tables(config) {
            state.done.extend(
                dms2delta::operations::commit::applied_change_sets(&pipeline.stores, &pipeline.table_location(&spec))
                    .await?,
            );
        }
        for (_, r) in list_reports(qstore.as_ref(), &qroot).await? {
            state
                .quarantined
                .insert(change_set_id(&r.bucket, &r.key, r.etag.as_deref()));
        }
        state.loaded = true;
    }

    let mut report = RunReport {
        listed: metas.len(),
        ..Default::default()
    };
    let mut plan = Vec::new();
    for m in metas {
        let key = m.location.as_ref().to_string();
        match plan_file(config, &source.buckets, &key) {
            Plan::Skip(why) => *report.skipped.entry(why).or_default() += 1,
            Plan::Decode { bucket, rank } => {
                let id = change_set_id(&bucket, &key, m.e_tag.as_deref());
                if !force && state.done.contains(&id) {
                    report.already_applied += 1;
                    continue;
                }
                if !force && state.quarantined.contains(&id) {
                    report.quarantined_earlier += 1;
                    continue;
                }
                plan.push(Planned {
                    rank,
                    key,
                    bucket,
                    etag: m.e_tag,
                    id,
                });
            }
        }
    }
    plan.sort_by(|a, b| (a.rank, &a.key).cmp(&(b.rank, &b.key)));

    let progress = std::io::stderr().is_terminal() && plan.len() > 1;
    // Each decoded file with the tables it staged changes for.
    let mut decoded_ids: Vec<(String, Vec<String>)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        if progress {
            eprint!("\rDecoding {}/{}…", i + 1, plan.len());
        }
        let outcome = pipeline
            .decode(&p.bucket, &p.key, p.etag.clone(), Failpoints::default())
            .await?;
        report.decoded += 1;
        let tables = match outcome {
            DecodeOutcome::Staged(m) => m.tables.into_iter().map(|t| t.table).collect(),
            DecodeOutcome::Skipped { reason } => {
                *report.skipped.entry(reason).or_default() += 1;
                Vec::new()
            }
            DecodeOutcome::Quarantined {
                report: r,
                report_location,
            } => {
                let at = report_location_for(pipeline, &report_location);
                report.quarantined.push((at, *r));
                state.quarantined.insert(p.id.clone());
                continue;
            }
        };
        decoded_ids.push((p.id.clone(), tables));
    }
    if progress {
        eprint!("\rCommitting…{:20}\r", "");
    }

    // One table's failure (an unusable name, a storage error) leaves every other table going.
    let pass = pipeline.commit_pending().await?;
    if progress {
        eprint!("\r{:40}\r", "");
    }
    report.failed = pass.failed.iter().map(|(t, e)| (t.clone(), e.to_string())).collect();
    let failed: HashSet<&str> = pass.failed.iter().map(|(t, _)| t.as_str()).collect();
    // Only now are the decoded files' changes in the tables (not those of a failed table).
    state.done.extend(
        decoded_ids
            .into_iter()
            .filter(|(_, tables)| tables.iter().all(|t| !failed.contains(t.as_str())))
            .map(|(id, _)| id),
    );

    let mut by_table: HashMap<String, TableRow> = HashMap::new();
    for m in pass.committed {
        // Nothing committed (change sets set aside have their reports among `open_reports`):
        // no row, so a table no longer configured does not show up as a phantom.
        if m.change_sets == 0 {
            continue;
        }
        let row = by_table.entry(m.table.clone()).or_insert_with(|| TableRow {
            name: m.table.clone(),
            ..Default::default()
        });
        row.files += m.source_files.len();
        row.inserted += m.rows_inserted;
        row.updated += m.rows_updated;
        row.deleted += m.rows_deleted;
        row.stale += m.rows_stale;
    }
    for (t, _) in known_tables(pipeline).await? {
        let name = t.qualified_name();
        let mut row = by_table.remove(&name).unwrap_or_else(|| TableRow {
            name: name.clone(),
            ..Default::default()
        });
        row.info = table_info(&pipeline.stores, &table_location(&t, &config.lake)).await?;
        report.tables.push(row);
    }
    report.tables.extend(by_table.into_values());
    report.tables.sort_by(|a, b| a.name.cmp(&b.name));

    report.open_reports = list_reports(qstore.as_ref(), &qroot)
        .await?
        .into_iter()
        .map(|(p, r)| (report_location_for(pipeline, p.as_ref()), r))
        .collect();
    for row in &mut report.tables {
        row.quarantined = report
            .open_reports
            .iter()
            .filter(|(_, r)| r.table.as_deref() == Some(row.name.as_str()))
            .count();
    }
    Ok(report)
}

fn report_location_for(pipeline: &Pipeline, path: &str) -> String {
    report_location(&pipeline.stores, &pipeline.config.quarantine, path)
}
