//! The stages run in one process, the way the Lambdas run them one event at a time: used by the
//! CLI, the demo, the convergence tests and the benchmarks.

use std::sync::Arc;

use arrow::array::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;

use crate::config::{TableSpec, Validated};
use crate::error::{Error, Result, Stage};
use crate::failpoint::Failpoints;
use crate::lake::{self, delta_err};
use crate::operations::commit::{CommitChangesBuilder, CommitMetrics};
use crate::operations::decode::{DecodeBuilder, DecodeOutcome};
use crate::stage::pending_tables;
use crate::storage::{Location, Stores};

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
    pub async fn pending(&self) -> Result<Vec<(String, String, String)>> {
        let (store, root) = self.stores.resolve(&self.config.staging)?;
        pending_tables(store.as_ref(), &root).await
    }

    /// Commits every pending table until nothing is pending.
    pub async fn commit_all(&self) -> Result<Vec<CommitMetrics>> {
        let mut out = Vec::new();
        loop {
            let pending = self.pending().await?;
            if pending.is_empty() {
                return Ok(out);
            }
            for (ns, schema, table) in pending {
                out.push(self.commit(&ns, &schema, &table, Failpoints::default()).await?);
            }
        }
    }

    /// Where a table lives.
    pub fn table_location(&self, spec: &TableSpec) -> Location {
        self.config.lake.join(&spec.lake_path())
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
        let df_err = |e: deltalake::datafusion::error::DataFusionError| Error::Internal {
            stage: Stage::Commit,
            context: loc.to_string(),
            reason: e.to_string(),
            retryable: true,
        };
        let provider = table.table_provider().await.map_err(df_err)?;
        ctx.register_table("t", provider).map_err(df_err)?;
        ctx.table("t").await.map_err(df_err)?.collect().await.map_err(df_err)
    }
}
