//! DMS's table statistics behind `dms2delta::dms::LoadProgress`: one
//! `DescribeTableStatistics` call per question, filtered to the table (only with the `dms`
//! feature, which the commit and reprocess functions enable; decode does not link the SDK).

use async_trait::async_trait;
use aws_sdk_databasemigration::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_databasemigration::types::{Filter, TableStatistics};
use chrono::{DateTime, TimeZone, Utc};
use dms2delta::dms::{DmsError, LoadProgress, TableLoad};

/// The SDK, for the functions that build the client.
pub use aws_sdk_databasemigration as sdk;

const OPERATION: &str = "DescribeTableStatistics";

#[derive(Debug, Clone)]
pub struct DmsApi {
    client: aws_sdk_databasemigration::Client,
}

impl DmsApi {
    pub fn new(client: aws_sdk_databasemigration::Client) -> DmsApi {
        DmsApi { client }
    }
}

fn time(t: Option<&aws_sdk_databasemigration::primitives::DateTime>) -> Option<DateTime<Utc>> {
    let t = t?;
    Utc.timestamp_opt(t.secs(), t.subsec_nanos()).single()
}

fn load_of(s: &TableStatistics) -> TableLoad {
    TableLoad {
        state: s.table_state().unwrap_or_default().to_string(),
        full_load_start: time(s.full_load_start_time()),
        full_load_end: time(s.full_load_end_time()),
        reloaded: s.full_load_reloaded(),
    }
}

fn call_error<E, R>(task: &str, e: SdkError<E, R>) -> DmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (throttled, reason) = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            let code = err.code().unwrap_or("unknown");
            let hint = if code == "AccessDeniedException" {
                "; fix: allow dms:DescribeTableStatistics on this task in the function's role (template parameter DmsReplicationTaskArns)"
            } else if code == "ResourceNotFoundFault" {
                "; fix: sources[].dms_task_arn names no task in this account and region"
            } else {
                ""
            };
            (
                code.contains("Throttl"),
                format!("{code}: {}{hint}", err.message().unwrap_or("no message")),
            )
        }
        other => (false, DisplayErrorContext(other).to_string()),
    };
    DmsError {
        operation: OPERATION,
        task: task.to_string(),
        reason,
        throttled,
    }
}

#[async_trait]
impl LoadProgress for DmsApi {
    async fn table_load(&self, task_arn: &str, schema: &str, table: &str) -> Result<Option<TableLoad>, DmsError> {
        let filter = |name: &str, value: &str| {
            Filter::builder()
                .name(name)
                .values(value)
                .build()
                .map_err(|e| DmsError {
                    operation: OPERATION,
                    task: task_arn.to_string(),
                    reason: e.to_string(),
                    throttled: false,
                })
        };
        let out = self
            .client
            .describe_table_statistics()
            .replication_task_arn(task_arn)
            .filters(filter("schema-name", schema)?)
            .filters(filter("table-name", table)?)
            .send()
            .await
            .map_err(|e| call_error(task_arn, e))?;
        let stats = out.table_statistics();
        // The filters select the table; its own entry is taken by exact name first.
        let entry = stats
            .iter()
            .find(|s| s.schema_name() == Some(schema) && s.table_name() == Some(table))
            .or_else(|| {
                stats.iter().find(|s| {
                    s.schema_name().is_some_and(|n| n.eq_ignore_ascii_case(schema))
                        && s.table_name().is_some_and(|n| n.eq_ignore_ascii_case(table))
                })
            });
        Ok(entry.map(load_of))
    }
}
