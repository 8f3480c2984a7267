//! The Glue Data Catalog behind `dms2delta::catalog::Catalog`: each lake table becomes an
//! external table Athena (engine v3) reads natively from the Delta log (`table_type=DELTA`),
//! and Spark on EMR or Glue through `spark.sql.sources.provider=delta`.

use std::collections::HashMap;

use aws_sdk_glue::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_glue::types::{Column, SerDeInfo, StorageDescriptor, Table, TableInput};
use dms2delta::catalog::{Catalog, CatalogColumn, CatalogError, CatalogTable, PARAM_DELTA_VERSION, PARAM_LAKE_TABLE};

const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";
const PARQUET_INPUT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
const PARQUET_OUTPUT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";

#[derive(Debug, Clone)]
pub struct Glue {
    client: aws_sdk_glue::Client,
}

impl Glue {
    pub fn new(client: aws_sdk_glue::Client) -> Glue {
        Glue { client }
    }
}

/// Glue error codes a later call can get past without anyone changing anything.
const RETRYABLE_CODES: [&str; 4] = [
    "ThrottlingException",
    "InternalServiceException",
    "OperationTimeoutException",
    "ConcurrentModificationException",
];

fn call_error<E, R>(operation: &'static str, t: (&str, &str), e: SdkError<E, R>) -> CatalogError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (retryable, reason) = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            let code = err.code().unwrap_or("unknown");
            let hint = if code == "AccessDeniedException" {
                "; fix: allow this action on the catalog, the database and its tables in the function's role"
            } else if code == "EntityNotFoundException" {
                "; fix: create the Glue database (the stack does when CreateGlueDatabase is true)"
            } else {
                ""
            };
            (
                RETRYABLE_CODES.contains(&code),
                format!("{code}: {}{hint}", err.message().unwrap_or("no message")),
            )
        }
        // Timeouts, dropped connections and the like: the call may work next time.
        other => (true, DisplayErrorContext(other).to_string()),
    };
    CatalogError::Call {
        operation,
        database: t.0.to_string(),
        name: t.1.to_string(),
        reason,
        retryable,
    }
}

fn columns(cols: &[CatalogColumn]) -> Result<Vec<Column>, CatalogError> {
    cols.iter()
        .map(|c| {
            Column::builder()
                .name(&c.name)
                .r#type(&c.type_name)
                .build()
                .map_err(|e| CatalogError::Call {
                    operation: "build column",
                    database: String::new(),
                    name: c.name.clone(),
                    reason: e.to_string(),
                    retryable: false,
                })
        })
        .collect()
}

/// The table input for `t`, with the parameters someone else added to the entry.
fn table_input(t: &CatalogTable) -> Result<TableInput, CatalogError> {
    let invalid = |e: aws_sdk_glue::error::BuildError| CatalogError::Call {
        operation: "build table input",
        database: t.database.clone(),
        name: t.name.clone(),
        reason: e.to_string(),
        retryable: false,
    };
    let mut params: HashMap<String, String> = t.other_parameters.clone().into_iter().collect();
    params.insert("EXTERNAL".into(), "TRUE".into());
    params.insert("table_type".into(), "DELTA".into());
    params.insert("spark.sql.sources.provider".into(), "delta".into());
    params.insert(PARAM_LAKE_TABLE.into(), t.lake_table.clone().unwrap_or_default());
    match t.delta_version {
        Some(v) => params.insert(PARAM_DELTA_VERSION.into(), v.to_string()),
        None => params.remove(PARAM_DELTA_VERSION),
    };
    let sd = StorageDescriptor::builder()
        .location(&t.location)
        .set_columns(Some(columns(&t.columns)?))
        .input_format(PARQUET_INPUT)
        .output_format(PARQUET_OUTPUT)
        .serde_info(
            SerDeInfo::builder()
                .serialization_library(PARQUET_SERDE)
                .parameters("path", &t.location)
                .build(),
        )
        .build();
    TableInput::builder()
        .name(&t.name)
        .description(format!(
            "Delta table replicated by dms2delta from {}",
            t.lake_table.as_deref().unwrap_or("?")
        ))
        .table_type("EXTERNAL_TABLE")
        .set_parameters(Some(params))
        .storage_descriptor(sd)
        .set_partition_keys(Some(columns(&t.partition_keys)?))
        .build()
        .map_err(invalid)
}

fn from_glue(database: &str, t: &Table) -> CatalogTable {
    let col = |c: &Column| CatalogColumn {
        name: c.name().to_string(),
        type_name: c.r#type().unwrap_or_default().to_string(),
    };
    let params = t.parameters();
    let sd = t.storage_descriptor();
    let ours = [
        "EXTERNAL",
        "table_type",
        "spark.sql.sources.provider",
        PARAM_LAKE_TABLE,
        PARAM_DELTA_VERSION,
    ];
    CatalogTable {
        other_parameters: params
            .map(|p| {
                p.iter()
                    .filter(|(k, _)| !ours.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        database: database.to_string(),
        name: t.name().to_string(),
        lake_table: params.and_then(|p| p.get(PARAM_LAKE_TABLE)).cloned(),
        location: sd.and_then(|s| s.location()).unwrap_or_default().to_string(),
        columns: sd.map(|s| s.columns().iter().map(col).collect()).unwrap_or_default(),
        partition_keys: t.partition_keys().iter().map(col).collect(),
        delta_version: params
            .and_then(|p| p.get(PARAM_DELTA_VERSION))
            .and_then(|v| v.parse().ok()),
    }
}

#[async_trait::async_trait]
impl Catalog for Glue {
    async fn get(&self, database: &str, name: &str) -> Result<Option<CatalogTable>, CatalogError> {
        match self.client.get_table().database_name(database).name(name).send().await {
            Ok(out) => Ok(out.table().map(|t| from_glue(database, t))),
            Err(SdkError::ServiceError(s)) if s.err().is_entity_not_found_exception() => Ok(None),
            Err(e) => Err(call_error("GetTable", (database, name), e)),
        }
    }

    async fn create(&self, t: &CatalogTable) -> Result<(), CatalogError> {
        let input = table_input(t)?;
        match self
            .client
            .create_table()
            .database_name(&t.database)
            .table_input(input)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(s)) if s.err().is_already_exists_exception() => {
                Err(CatalogError::AlreadyExists {
                    database: t.database.clone(),
                    name: t.name.clone(),
                })
            }
            Err(e) => Err(call_error("CreateTable", (&t.database, &t.name), e)),
        }
    }

    async fn update(&self, t: &CatalogTable) -> Result<(), CatalogError> {
        let input = table_input(t)?;
        self.client
            .update_table()
            .database_name(&t.database)
            .table_input(input)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| call_error("UpdateTable", (&t.database, &t.name), e))
    }
}
