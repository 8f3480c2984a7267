//! The stages run in one process, the way the Lambdas run them one event at a time: used by the
//! CLI, the demo, the convergence tests and the benchmarks.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;

use crate::config::{TableSpec, Validated};
use crate::error::{Error, Result, Stage};
use crate::failpoint::Failpoints;
use crate::lake::{self, delta_err};
use crate::model::TableId;
use crate::operations::commit::{CommitChangesBuilder, CommitMetrics};
use crate::operations::decode::{DecodeBuilder, DecodeOutcome};
use crate::operations::truncate::{RemovalBuilder, RemovalOutcome};
use crate::stage::pending_tables;
use crate::storage::{Location, Stores};

/// What committing every pending table did.
#[derive(Debug, Default)]
pub struct CommitPass {
    pub committed: Vec<CommitMetrics>,
    /// Tables whose commit failed (`namespace.schema.table`, why); their change sets wait.
    pub failed: Vec<(String, Error)>,
}

/// A configuration and its stores.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub config: Arc<Validated>,
    pub stores: Arc<Stores>,
}

impl Pipeline {
    pub fn new(config: Arc<Validated>, stores: Arc<Stores>) -> Pipeline {
        Pipeline { config, stores }
    }

    /// Decode stage for one object.
    pub async fn decode(
        &self,
        bucket: &str,
        key: &str,
        etag: Option<String>,
        failpoints: Failpoints,
    ) -> Result<DecodeOutcome> {
        DecodeBuilder::new(self.config.clone(), &self.stores)
            .with_object(bucket, key)
            .with_etag(etag)
            .with_failpoints(failpoints)
            .await
    }

    /// Decode stage for the removal of one object at `time` (see [`RemovalBuilder`]).
    pub async fn removed(
        &self,
        bucket: &str,
        key: &str,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<RemovalOutcome> {
        RemovalBuilder::new(self.config.clone(), &self.stores)
            .with_object(bucket, key)
            .with_event_time(Some(time))
            .await
    }

    /// Commit stage for one table.
    pub async fn commit(
        &self,
        namespace: &str,
        schema: &str,
        table: &str,
        failpoints: Failpoints,
    ) -> Result<CommitMetrics> {
        CommitChangesBuilder::new(self.config.clone(), &self.stores)
            .with_table(namespace, schema, table)
            .with_failpoints(failpoints)
            .await
    }

    /// Tables with staged change sets waiting for the commit stage.
    pub async fn pending(&self) -> Result<Vec<TableId>> {
        let (store, root) = self.stores.resolve(&self.config.staging)?;
        pending_tables(store.as_ref(), &root).await
    }

    /// Commits every pending table until nothing is pending, each on its own: a table whose
    /// commit fails is reported in [`CommitPass::failed`] and left for the next pass, and every
    /// other table still commits.
    pub async fn commit_pending(&self) -> Result<CommitPass> {
        let mut pass = CommitPass::default();
        // Tables that failed, or whose commit took nothing from the staging area, are not tried
        // again in this pass (a pass must end whatever the staging area holds).
        let mut settled: HashSet<TableId> = HashSet::new();
        loop {
            let pending: Vec<_> = self
                .pending()
                .await?
                .into_iter()
                .filter(|t| !settled.contains(t))
                .collect();
            if pending.is_empty() {
                return Ok(pass);
            }
            for t in pending {
                match self
                    .commit(&t.namespace, &t.schema, &t.table, Failpoints::default())
                    .await
                {
                    Ok(m) => {
                        if m.change_sets == 0 && m.quarantined.is_empty() && m.moved.is_empty() {
                            settled.insert(t.clone());
                        }
                        pass.committed.push(m);
                    }
                    Err(e) => {
                        tracing::warn!(table = %t, error = %e, "commit failed; other tables go on");
                        pass.failed.push((t.qualified_name(), e));
                        settled.insert(t.clone());
                    }
                }
            }
        }
    }

    /// Like [`Pipeline::commit_pending`], failing with the first table's error (after every
    /// other table was committed).
    pub async fn commit_all(&self) -> Result<Vec<CommitMetrics>> {
        let pass = self.commit_pending().await?;
        match pass.failed.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(pass.committed),
        }
    }

    /// Where a table lives.
    pub fn table_location(&self, spec: &TableSpec) -> Location {
        self.config.lake.join(&spec.lake_path())
    }

    /// Where a table's SCD type 2 history table lives (`history.enabled`).
    pub fn history_location(&self, spec: &TableSpec) -> Location {
        self.config.lake.join(&spec.history_path())
    }

    /// Reads a whole table (all columns, current version). Empty when there is no table.
    pub async fn read_table(&self, loc: &Location) -> Result<Vec<RecordBatch>> {
        let (table, exists) = lake::open(&self.stores, loc).await?;
        if !exists {
            return Ok(Vec::new());
        }
        let ctx = SessionContext::new();
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| delta_err(Stage::Commit, loc, e))?;
        let df_err = |e: deltalake::datafusion::error::DataFusionError| Error::library(Stage::Commit, loc, true)(e);
        let provider = table.table_provider().await.map_err(df_err)?;
        ctx.register_table("t", provider).map_err(df_err)?;
        ctx.table("t").await.map_err(df_err)?.collect().await.map_err(df_err)
    }
}
