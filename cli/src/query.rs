//! `dms2delta query`: SQL over every table in the lake, with DataFusion.
//!
//! Each Delta table at `<namespace>/<schema>/<table>/` is registered under DataFusion's
//! three-part name `<namespace>.<schema>.<table>`: the namespace is a catalog, the schema a
//! schema in it. Queries are read-only.

use std::io::Write;
use std::sync::Arc;

use clap::Args;
use deltalake::datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider};
use deltalake::datafusion::datasource::{MemTable, TableProvider};
use deltalake::datafusion::execution::context::SQLOptions;
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use dms2delta::storage::{Location, Stores};

use crate::common::{discover_tables, load_config, require_existing, table_location, CliResult, Failure, LakeTable};

pub const AFTER_HELP: &str = "\
Tables are named <namespace>.<schema>.<table>, as in the lake's folders and in `dms2delta status`
(each namespace is a DataFusion catalog, each schema a schema in it), for example:

  dms2delta query --config config.yaml \"SELECT * FROM mysql.app.t0 ORDER BY id LIMIT 5\"
  dms2delta query --lake ./lake \"SELECT count(*) FROM pg.public.accounts\"
  dms2delta query --lake ./lake \"DESCRIBE mysql.app.t0\"

SHOW TABLES lists them all (and DataFusion's information_schema views).

A table written with `change_data_feed` records its changes; --changes TABLE makes them the
table `changes` (the table's columns, then _change_type: insert, update_preimage,
update_postimage or delete; _commit_version; _commit_timestamp), from --from-version (0 when
not given) to --to-version (the latest when not given), both inclusive, read into memory:

  dms2delta query --lake ./lake --changes pg.public.accounts --from-version 12
  dms2delta query --lake ./lake --changes pg.public.accounts --from-version 12 \\
    \"SELECT id, _change_type, _commit_version FROM changes WHERE _change_type <> 'update_preimage'\"

Without SQL, --changes prints every change in commit order (within a commit, preimages and
deletes first).

Unquoted names are lower-cased, as in PostgreSQL: write \"HR\".\"EMPLOYEES\" for upper-case names.
Every table has its data columns plus _dms_seq (the change's sequence) and _dms_commit_ts (its
source commit time). Queries only read: DDL, INSERT/UPDATE/DELETE and SET are refused.";

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The configuration (local path or s3://bucket/key): its `lake` and `storage` settings say
    /// where the tables are and how to reach them.
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,

    /// The lake (local folder or s3://bucket/prefix); overrides the configuration's `lake`.
    #[arg(long, value_name = "DIR|S3_URI")]
    pub lake: Option<String>,

    /// The SQL statement (with --changes, every change in commit order when not given).
    #[arg(value_name = "SQL")]
    pub sql: Option<String>,

    /// Read this table's change data feed as the table `changes` (`<namespace>.<schema>.<table>`).
    #[arg(long, value_name = "TABLE")]
    pub changes: Option<String>,

    /// The first version of the changes (inclusive).
    #[arg(long, value_name = "VERSION", requires = "changes", default_value_t = 0)]
    pub from_version: u64,

    /// The last version of the changes (inclusive); the latest when not given.
    #[arg(long, value_name = "VERSION", requires = "changes")]
    pub to_version: Option<u64>,
}

/// The statement `--changes` runs when no SQL is given: in commit order, and within a commit
/// what leaves (preimages, deletes) before what comes in, as a consumer applies them.
const ALL_CHANGES: &str = "SELECT * FROM changes ORDER BY _commit_version, \
     CASE _change_type WHEN 'update_preimage' THEN 0 WHEN 'delete' THEN 0 ELSE 1 END";

/// Registers `name`'s change feed (versions `from` to `to`) in `ctx` as the table `changes`.
pub async fn register_changes(
    ctx: &SessionContext,
    stores: &Stores,
    lake: &Location,
    tables: &[LakeTable],
    name: &str,
    from: u64,
    to: Option<u64>,
) -> CliResult<()> {
    let Some(t) = tables.iter().find(|t| t.qualified_name() == name) else {
        return Err(Failure::usage(format!(
            "--changes {name}: no such table in {lake} (`dms2delta status` lists them)"
        )));
    };
    let (table, exists) = dms2delta::lake::open(stores, &table_location(t, lake)).await?;
    if !exists {
        return Err(Failure::usage(format!(
            "--changes {name}: the table has no commits yet"
        )));
    }
    let failed = |e: String| {
        Failure::new(format!(
            "cannot read the changes of {name}: {e} (does the table have `change_data_feed` on at version {from}?)"
        ))
    };
    let provider =
        dms2delta::operations::change_feed::provider(&table, ctx, from, to).map_err(|e| failed(e.to_string()))?;
    let schema = provider.schema();
    // Read into memory first: DataFusion's sort pushdown re-plans delta-rs's change-feed scan
    // without its files (ORDER BY then fails its plan check), so queries run over a copy.
    let batches = ctx
        .read_table(Arc::new(provider))
        .map_err(|e| failed(e.to_string()))?
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let copy = MemTable::try_new(schema, vec![batches])?;
    ctx.register_table("changes", Arc::new(copy))?;
    Ok(())
}

/// A session with every table of the lake registered; returns the tables too.
pub async fn session(stores: &Stores, lake: &Location) -> CliResult<(SessionContext, Vec<LakeTable>)> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    let tables = discover_tables(stores, lake).await?;
    for t in &tables {
        let catalog = match ctx.catalog(&t.namespace) {
            Some(c) => c,
            None => {
                let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
                ctx.register_catalog(&t.namespace, c.clone());
                c
            }
        };
        let schema = match catalog.schema(&t.schema) {
            Some(s) => s,
            None => {
                let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                catalog.register_schema(&t.schema, s.clone())?;
                s
            }
        };
        let loc = table_location(t, lake);
        let (table, exists) = dms2delta::lake::open(stores, &loc).await?;
        if !exists {
            continue;
        }
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| Failure::new(format!("cannot read {}: {e}", t.qualified_name())))?;
        schema.register_table(t.table.clone(), table.table_provider().await?)?;
    }
    Ok((ctx, tables))
}

/// Runs a read-only statement and formats the result as a text table, with a row count.
pub async fn query(ctx: &SessionContext, sql: &str) -> CliResult<String> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let failed = |e: deltalake::datafusion::error::DataFusionError| Failure::new(format!("the query failed: {e}"));
    let df = ctx.sql_with_options(sql, options).await.map_err(failed)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(failed)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let table = arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)
        .map_err(|e| Failure::new(format!("cannot format the result: {e}")))?;
    Ok(format!("{table}\n({rows} row{})", if rows == 1 { "" } else { "s" }))
}

/// `dms2delta query`.
pub async fn execute(args: &QueryArgs, out: &mut dyn Write) -> CliResult<()> {
    let (stores, lake) = match (&args.config, &args.lake) {
        (Some(config), lake) => {
            let v = load_config(config, lake.as_deref()).await?.validate()?;
            (Stores::new(v.config.storage.clone()), v.lake)
        }
        (None, Some(lake)) => (
            Stores::new(Default::default()),
            Location::parse(lake).map_err(|r| Failure::usage(format!("--lake {lake}: {r}")))?,
        ),
        (None, None) => {
            return Err(Failure::usage(
                "`query` needs to know where the tables are: pass --config FILE or --lake DIR|S3_URI",
            ))
        }
    };
    require_existing(&stores.physical(&lake), "lake")?;
    let (ctx, tables) = session(&stores, &lake).await?;
    if tables.is_empty() {
        eprintln!("note: no Delta tables found in {lake}");
    }
    let sql = match (&args.sql, &args.changes) {
        (Some(sql), _) => sql.as_str(),
        (None, Some(_)) => ALL_CHANGES,
        (None, None) => return Err(Failure::usage("`query` needs a SQL statement (or --changes TABLE)")),
    };
    if let Some(name) = &args.changes {
        register_changes(&ctx, &stores, &lake, &tables, name, args.from_version, args.to_version).await?;
    }
    writeln!(out, "{}", query(&ctx, sql).await?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{attach_source, run_once, RunState};
    use dms2delta::config::Config;
    use dms2delta::sim::{simulate, SimOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_table_is_queryable_by_its_three_part_name_and_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulate(&SimOptions {
            seed: 9,
            tables: 1,
            keys: 5,
            changes: 6,
            max_file_changes: 3,
            formats: vec![dms2delta::sim::Format::Parquet, dms2delta::sim::Format::CsvHeader],
            ..SimOptions::default()
        });
        let p = |s: &str| dir.path().join(s).display().to_string();
        sim.write_files(&dir.path().join("source")).unwrap();
        let mut config = Config::parse(&sim.config(&p("lake"), &p("staged"), &p("quarantine"), &p("source"))).unwrap();
        let source = attach_source(&mut config, &p("source")).unwrap();
        let pipeline = crate::common::pipeline(config).unwrap();
        run_once(&pipeline, &source, &mut RunState::default(), false)
            .await
            .unwrap();

        let lake = Location::parse(&p("lake")).unwrap();
        let (ctx, tables) = session(&pipeline.stores, &lake).await.unwrap();
        let names: Vec<String> = tables.iter().map(LakeTable::qualified_name).collect();
        assert_eq!(names, vec!["oracle.app.t0", "pg.app.t0"]);

        let n = sim.expected["oracle.app.t0"].len();
        let text = query(&ctx, "SELECT count(*) AS n FROM oracle.app.t0").await.unwrap();
        assert!(text.contains(&format!("| {n} ")), "{text}");
        assert!(text.ends_with("(1 row)"), "{text}");

        let text = query(&ctx, "SELECT id, region FROM pg.app.t0 WHERE false")
            .await
            .unwrap();
        assert!(text.contains("| id | region |"), "{text}");
        assert!(text.ends_with("(0 rows)"), "{text}");

        let text = query(&ctx, "SHOW TABLES").await.unwrap();
        assert!(text.contains("oracle"), "{text}");

        let e = query(&ctx, "DELETE FROM oracle.app.t0").await.unwrap_err();
        assert!(e.message.starts_with("the query failed:"), "{e}");
        let e = query(&ctx, "SELEC 1").await.unwrap_err();
        assert!(e.message.starts_with("the query failed:"), "{e}");
        let e = query(&ctx, "SELECT * FROM nope.app.t0").await.unwrap_err();
        assert!(e.message.contains("nope"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_read_a_tables_feed_between_versions() {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulate(&SimOptions {
            seed: 11,
            tables: 1,
            keys: 5,
            changes: 12,
            max_file_changes: 3,
            formats: vec![dms2delta::sim::Format::CsvHeader],
            ..SimOptions::default()
        });
        let p = |s: &str| dir.path().join(s).display().to_string();
        sim.write_files(&dir.path().join("source")).unwrap();
        let mut config = Config::parse(&sim.config(&p("lake"), &p("staged"), &p("quarantine"), &p("source"))).unwrap();
        config.commit.change_data_feed = true;
        let source = attach_source(&mut config, &p("source")).unwrap();
        let pipeline = crate::common::pipeline(config).unwrap();
        run_once(&pipeline, &source, &mut RunState::default(), false)
            .await
            .unwrap();
        let lake = Location::parse(&p("lake")).unwrap();
        let name = "pg.app.t0";
        let (ctx, tables) = session(&pipeline.stores, &lake).await.unwrap();
        register_changes(&ctx, &pipeline.stores, &lake, &tables, name, 0, None)
            .await
            .unwrap();
        // Inserts minus deletes from version 0 is the table's row count.
        let text = query(
            &ctx,
            "SELECT sum(CASE _change_type WHEN 'insert' THEN 1 WHEN 'delete' THEN -1 ELSE 0 END) AS n FROM changes",
        )
        .await
        .unwrap();
        let n = sim.expected[name].len();
        assert!(text.contains(&format!("| {n} ")), "{text}");
        // Ordered (DataFusion's sort pushdown must not lose the feed's files).
        let text = query(&ctx, ALL_CHANGES).await.unwrap();
        assert!(text.contains("| insert "), "{text}");
        assert!(text.ends_with(&format!("({n} rows)")), "{text}");

        // From a later version on, only that version's changes.
        let t = tables.iter().find(|t| t.qualified_name() == name).unwrap();
        let (table, _) = dms2delta::lake::open(&pipeline.stores, &table_location(t, &lake))
            .await
            .unwrap();
        let latest = table.version().unwrap();
        let (ctx, tables) = session(&pipeline.stores, &lake).await.unwrap();
        register_changes(&ctx, &pipeline.stores, &lake, &tables, name, latest, None)
            .await
            .unwrap();
        let text = query(&ctx, "SELECT DISTINCT _commit_version FROM changes")
            .await
            .unwrap();
        assert!(text.contains(&format!("| {latest} ")), "{text}");
        assert!(text.ends_with("(1 row)"), "{text}");

        let e = register_changes(&ctx, &pipeline.stores, &lake, &tables, "pg.app.nope", 0, None)
            .await
            .unwrap_err();
        assert!(e.message.contains("no such table"), "{e}");
    }
}
