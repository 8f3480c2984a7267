//! Keeping a data catalog (the Glue Data Catalog in production) in step with the lake, so Athena
//! can query a table as soon as its first commit lands and sees a new column as soon as the
//! source adds it, without a crawler.
//!
//! The catalog itself sits behind [`Catalog`] (the AWS implementation lives in the commit
//! function, which alone links the Glue SDK); what is registered, and when, is decided here.
//! [`CatalogSync`] remembers, per execution environment, the schema it last saw registered, so
//! the catalog is called once per table per cold start and again only when the schema changes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::datatypes::{DataType, Field, Schema};

use crate::model::TableId;
use crate::storage::Location;

/// The parameter naming the lake table a catalog entry stands for: a catalog table that lacks
/// it, or names another table, was not made by us and is never overwritten.
pub const PARAM_LAKE_TABLE: &str = "dms2delta.table";
/// The Delta version the registered schema was read at: a slower invocation holding an older
/// schema must not undo a newer one.
pub const PARAM_DELTA_VERSION: &str = "dms2delta.delta_version";

/// A column as the catalog stores it: Hive type names (`bigint`, `decimal(12,2)`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    pub type_name: String,
}

/// One lake table as registered in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTable {
    pub database: String,
    /// The catalog's name for it (see [`catalog_name`]).
    pub name: String,
    /// `namespace.schema.table`; absent on an entry someone else made.
    pub lake_table: Option<String>,
    /// `s3://bucket/prefix` of the Delta table.
    pub location: String,
    pub columns: Vec<CatalogColumn>,
    pub partition_keys: Vec<CatalogColumn>,
    /// The Delta version the columns were read at, when known.
    pub delta_version: Option<u64>,
    /// Parameters of the existing entry that dms2delta does not set (someone's tags, notes),
    /// carried into an update so it keeps them.
    pub other_parameters: std::collections::BTreeMap<String, String>,
}

impl CatalogTable {
    fn same_shape(&self, other: &CatalogTable) -> bool {
        self.columns == other.columns && self.partition_keys == other.partition_keys && self.location == other.location
    }
}

/// What [`CatalogSync::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogChange {
    Created,
    Updated,
    /// The catalog already held this schema (or a newer one).
    Unchanged,
    /// Known to be registered with this schema in this execution environment: no call made.
    Cached,
}

impl fmt::Display for CatalogChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CatalogChange::Created => "created",
            CatalogChange::Updated => "updated",
            CatalogChange::Unchanged => "unchanged",
            CatalogChange::Cached => "cached",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "stage commit: catalog table {database}.{name} exists for {found}, not for lake table {table} at {location}; \
         fix: drop or rename that catalog table, or register this lake table in another database"
    )]
    Foreign {
        database: String,
        name: String,
        table: String,
        location: String,
        found: String,
    },
    #[error(
        "stage commit: lake table {table} is at {location}, which is not on S3; \
         fix: the catalog serves S3 tables only, so unset the catalog database for local runs"
    )]
    NotOnS3 { table: String, location: String },
    #[error(
        "stage commit: column `{column}` of lake table {table} has type {data_type}, which the catalog cannot describe; \
         fix: report it, with the source column's type"
    )]
    UnsupportedType {
        table: String,
        column: String,
        data_type: String,
    },
    #[error("stage commit: catalog call {operation} for {database}.{name} failed: {reason}")]
    Call {
        operation: &'static str,
        database: String,
        name: String,
        reason: String,
        retryable: bool,
    },
    /// Someone created the entry between our read and our create; read again.
    #[error("stage commit: catalog table {database}.{name} was created concurrently")]
    AlreadyExists { database: String, name: String },
}

impl CatalogError {
    /// Whether the same call can succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::Call { retryable, .. } => *retryable,
            CatalogError::AlreadyExists { .. } => true,
            CatalogError::Foreign { .. } | CatalogError::NotOnS3 { .. } | CatalogError::UnsupportedType { .. } => false,
        }
    }
}

/// A data catalog's table API: read, create and replace one table definition.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync + fmt::Debug {
    async fn get(&self, database: &str, name: &str) -> Result<Option<CatalogTable>, CatalogError>;
    /// Fails with [`CatalogError::AlreadyExists`] when the table exists.
    async fn create(&self, table: &CatalogTable) -> Result<(), CatalogError>;
    async fn update(&self, table: &CatalogTable) -> Result<(), CatalogError>;
}

/// The catalog name of a lake table: `namespace_schema_table`, lower case, every character
/// other than a letter, a digit or `_` replaced by `_` (the names Athena accepts unquoted).
///
/// Glue and Athena take only ASCII letters, digits and `_`, so names in other scripts
/// (`Åland`, `日本`) would all fold to runs of `_` and collide; such a name, and one longer than
/// Glue's 255 characters, ends in `_` and 8 hex digits of a hash of the exact lake name instead.
pub fn catalog_name(namespace: &str, schema: &str, table: &str) -> String {
    let folded = [namespace, schema, table]
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("_");
    let lossy = [namespace, schema, table].iter().any(|p| !p.is_ascii());
    if !lossy && folded.len() <= MAX_CATALOG_NAME {
        return folded;
    }
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in [namespace, schema, table] {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let tag = hex::encode(&h.finalize()[..4]);
    // `folded` is ASCII, so any byte index is a character boundary.
    let keep = folded.len().min(MAX_CATALOG_NAME - tag.len() - 1);
    format!("{}_{tag}", &folded[..keep])
}

/// Glue's longest table name.
const MAX_CATALOG_NAME: usize = 255;

/// The catalog type of an Arrow type as the lake stores it.
pub fn hive_type(dt: &DataType) -> Option<String> {
    Some(match dt {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::List(f) | DataType::LargeList(f) => format!("array<{}>", hive_type(f.data_type())?),
        DataType::Struct(fields) => {
            let parts: Option<Vec<String>> = fields
                .iter()
                .map(|f| Some(format!("{}:{}", f.name(), hive_type(f.data_type())?)))
                .collect();
            format!("struct<{}>", parts?.join(","))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                hive_type(kv[0].data_type())?,
                hive_type(kv[1].data_type())?
            ),
            _ => return None,
        },
        _ => return None,
    })
}

/// The catalog definition of a lake table from its Delta schema.
pub fn definition(
    database: &str,
    lake_table: &TableId,
    location: &Location,
    schema: &Schema,
    partition_columns: &[String],
    delta_version: Option<u64>,
) -> Result<CatalogTable, CatalogError> {
    let qualified = lake_table.qualified_name();
    if !matches!(location, Location::S3 { .. }) {
        return Err(CatalogError::NotOnS3 {
            table: qualified,
            location: location.to_string(),
        });
    }
    let column = |f: &Field| -> Result<CatalogColumn, CatalogError> {
        Ok(CatalogColumn {
            name: f.name().clone(),
            type_name: hive_type(f.data_type()).ok_or_else(|| CatalogError::UnsupportedType {
                table: qualified.clone(),
                column: f.name().clone(),
                data_type: f.data_type().to_string(),
            })?,
        })
    };
    let mut columns = Vec::new();
    let mut partition_keys = Vec::new();
    for f in schema.fields() {
        if !partition_columns.contains(f.name()) {
            columns.push(column(f)?);
        }
    }
    // Partition keys in the table's partition order, as Hive lists them.
    for p in partition_columns {
        if let Ok(f) = schema.field_with_name(p) {
            partition_keys.push(column(f)?);
        }
    }
    Ok(CatalogTable {
        database: database.to_string(),
        name: catalog_name(&lake_table.namespace, &lake_table.schema, &lake_table.table),
        lake_table: Some(qualified),
        location: location.url(),
        columns,
        partition_keys,
        delta_version,
        other_parameters: Default::default(),
    })
}

/// Registers lake tables in one catalog database and keeps their schemas current.
#[derive(Debug)]
pub struct CatalogSync {
    catalog: Arc<dyn Catalog>,
    database: String,
    /// Catalog name -> the definition last known to be registered.
    seen: Mutex<HashMap<String, CatalogTable>>,
}

impl CatalogSync {
    pub fn new(catalog: Arc<dyn Catalog>, database: impl Into<String>) -> CatalogSync {
        CatalogSync {
            catalog,
            database: database.into(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Brings the catalog in step with what a commit to the lake table `table` left: `None` when the commit wrote nothing (no schema to register).
    #[cfg(feature = "delta")]
    pub async fn follow(
        &self,
        config: &crate::config::Validated,
        table: &TableId,
        m: &crate::operations::commit::CommitMetrics,
    ) -> Result<Option<CatalogChange>, CatalogError> {
        let Some(schema) = &m.table_schema else {
            return Ok(None);
        };
        let Some(spec) = config.table_by_target(&table.namespace, &table.schema, &table.table) else {
            return Ok(None);
        };
        let location = config.lake.join(&spec.lake_path());
        let want = definition(
            &self.database,
            table,
            &location,
            schema,
            &m.partition_columns,
            m.version,
        )?;
        self.sync(&want).await.map(Some)
    }

    /// Makes the catalog describe `want` (built by [`definition`] for this database): creates
    /// the entry, replaces an older schema, or leaves a current or newer one alone. Safe to run
    /// concurrently for the same table and to repeat.
    pub async fn sync(&self, want: &CatalogTable) -> Result<CatalogChange, CatalogError> {
        if self.is_cached(want) {
            return Ok(CatalogChange::Cached);
        }
        // A concurrent creator can win between our read and our create: read again.
        let mut last = None;
        for _ in 0..3 {
            match self.sync_once(want).await {
                Err(e @ CatalogError::AlreadyExists { .. }) => last = Some(e),
                Ok(change) => {
                    if let Ok(mut seen) = self.seen.lock() {
                        seen.insert(want.name.clone(), want.clone());
                    }
                    return Ok(change);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(CatalogError::AlreadyExists {
            database: want.database.clone(),
            name: want.name.clone(),
        }))
    }

    fn is_cached(&self, want: &CatalogTable) -> bool {
        self.seen
            .lock()
            .ok()
            .and_then(|seen| seen.get(&want.name).map(|have| have.same_shape(want)))
            .unwrap_or(false)
    }

    async fn sync_once(&self, want: &CatalogTable) -> Result<CatalogChange, CatalogError> {
        let Some(have) = self.catalog.get(&want.database, &want.name).await? else {
            self.catalog.create(want).await?;
            return Ok(CatalogChange::Created);
        };
        if have.lake_table != want.lake_table || have.location != want.location {
            return Err(CatalogError::Foreign {
                database: want.database.clone(),
                name: want.name.clone(),
                table: want.lake_table.clone().unwrap_or_default(),
                location: want.location.clone(),
                found: match &have.lake_table {
                    Some(t) => format!("lake table {t} at {}", have.location),
                    None => format!("something else (no {PARAM_LAKE_TABLE} parameter) at {}", have.location),
                },
            });
        }
        if have.same_shape(want) {
            return Ok(CatalogChange::Unchanged);
        }
        if let (Some(h), Some(w)) = (have.delta_version, want.delta_version) {
            if h > w {
                return Ok(CatalogChange::Unchanged);
            }
        }
        let mut update = want.clone();
        update.other_parameters = have.other_parameters;
        self.catalog.update(&update).await?;
        Ok(CatalogChange::Updated)
    }
}

/// A catalog in memory, for tests and local runs.
#[derive(Debug, Default)]
pub struct MemoryCatalog {
    tables: Mutex<HashMap<(String, String), CatalogTable>>,
    /// Calls made, in order (`get`, `create`, `update`).
    pub calls: Mutex<Vec<&'static str>>,
}

impl MemoryCatalog {
    pub fn insert(&self, t: CatalogTable) {
        if let Ok(mut tables) = self.tables.lock() {
            tables.insert((t.database.clone(), t.name.clone()), t);
        }
    }

    pub fn table(&self, database: &str, name: &str) -> Option<CatalogTable> {
        self.tables
            .lock()
            .ok()?
            .get(&(database.to_string(), name.to_string()))
            .cloned()
    }

    fn record(&self, call: &'static str) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

fn poisoned(operation: &'static str, t: (&str, &str)) -> CatalogError {
    CatalogError::Call {
        operation,
        database: t.0.to_string(),
        name: t.1.to_string(),
        reason: "lock poisoned".into(),
        retryable: false,
    }
}

#[async_trait::async_trait]
impl Catalog for MemoryCatalog {
    async fn get(&self, database: &str, name: &str) -> Result<Option<CatalogTable>, CatalogError> {
        self.record("get");
        // Let concurrent callers interleave between read and create, as they do on a real catalog.
        tokio::task::yield_now().await;
        let tables = self.tables.lock().map_err(|_| poisoned("get", (database, name)))?;
        Ok(tables.get(&(database.to_string(), name.to_string())).cloned())
    }

    async fn create(&self, table: &CatalogTable) -> Result<(), CatalogError> {
        self.record("create");
        let mut tables = self
            .tables
            .lock()
            .map_err(|_| poisoned("create", (&table.database, &table.name)))?;
        let key = (table.database.clone(), table.name.clone());
        if tables.contains_key(&key) {
            return Err(CatalogError::AlreadyExists {
                database: table.database.clone(),
                name: table.name.clone(),
            });
        }
        tables.insert(key, table.clone());
        Ok(())
    }

    async fn update(&self, table: &CatalogTable) -> Result<(), CatalogError> {
        self.record("update");
        let mut tables = self
            .tables
            .lock()
            .map_err(|_| poisoned("update", (&table.database, &table.name)))?;
        tables.insert((table.database.clone(), table.name.clone()), table.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
