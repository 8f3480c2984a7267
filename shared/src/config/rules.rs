//! Rule resolution: which source tables are selected, and the settings and lake name each resolves to.

use super::schema::{dms_column, Loose, Rule, RuleAction, SourceConfig};
use super::{cfg_err, Column, TableSpec, Validated};
use crate::error::{BadInputKind, InputProblem, Result};
use crate::types::ColumnType;

/// `%` matches any run of characters; everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('%').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    let Some((first, tail)) = parts.split_first() else {
        return false;
    };
    let Some(r) = rest.strip_prefix(first) else {
        return false;
    };
    rest = r;
    let Some((last, middle)) = tail.split_last() else {
        return false;
    };
    for m in middle {
        match rest.find(m) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Validated {
    pub fn sources(&self) -> &[SourceConfig] {
        &self.config.sources
    }

    /// Whether the rules select `schema.table` of source `source`.
    pub fn is_selected(&self, source: usize, schema: &str, table: &str) -> bool {
        let s = &self.config.sources[source];
        let matches = |r: &&Rule| wildcard_match(&r.schema, schema) && wildcard_match(&r.table, table);
        let includes: Vec<&Rule> = s.rules.iter().filter(|r| r.action == RuleAction::Include).collect();
        let included = includes.is_empty() || includes.iter().any(&matches);
        let excluded = s
            .rules
            .iter()
            .filter(|r| r.action == RuleAction::Exclude)
            .any(|r| matches(&r));
        included && !excluded
    }

    /// The table's resolved settings. `Ok(None)`: not selected by the rules.
    /// `Err`: selected but unusable (no key), with the reason.
    pub fn table(
        &self,
        source: usize,
        schema: &str,
        table: &str,
    ) -> std::result::Result<Option<TableSpec>, InputProblem> {
        if !self.is_selected(source, schema, table) {
            return Ok(None);
        }
        let s = &self.config.sources[source];
        let key = (schema.to_string(), table.to_string());
        let entry = self.tables[source].get(&key).map(|&i| &s.tables[i]);
        let def = self.definitions[source]
            .get(&key)
            .and_then(|&i| s.table_definitions.as_ref().map(|d| &d.tables[i]));
        let columns = match (entry.and_then(|t| t.columns.as_ref()), def) {
            (Some(cols), _) => Some(
                cols.iter()
                    .map(|c| {
                        ColumnType::from_config(&c.type_name, c.precision, c.scale).map(|ty| Column {
                            name: c.name.clone(),
                            ty,
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|r| InputProblem::new(BadInputKind::NoColumns, r.to_string()))?,
            ),
            (None, Some(d)) => Some(
                d.table_columns
                    .iter()
                    .map(dms_column)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|r| InputProblem::new(BadInputKind::NoColumns, r.to_string()))?,
            ),
            (None, None) => None,
        };
        let mut keys = entry.map(|t| t.keys.clone()).unwrap_or_default();
        if keys.is_empty() {
            if let Some(d) = def {
                keys = d
                    .table_columns
                    .iter()
                    .filter(|c| c.column_is_pk.as_ref().and_then(Loose::as_bool) == Some(true))
                    .map(|c| c.column_name.clone())
                    .collect();
            }
        }
        if keys.is_empty() {
            return Err(InputProblem::new(
                BadInputKind::NoKey,
                format!(
                    "table {schema}.{table} of source `{}` has no key columns configured",
                    s.name
                ),
            ));
        }
        // A table renamed at the source lands where its first name does (followed back
        // through every rename; validation refuses cycles).
        let mut landing = (schema, table);
        for _ in 0..s.tables.len() {
            let from = self.tables[source]
                .get(&(landing.0.to_string(), landing.1.to_string()))
                .and_then(|&i| s.tables[i].renamed_from.as_ref());
            match from {
                Some(f) => landing = (f.schema.as_str(), f.table.as_str()),
                None => break,
            }
        }
        let (mut target_schema, mut target_table) = (landing.0.to_string(), landing.1.to_string());
        if let Some(r) = self.rename_rule(source, landing.0, landing.1).map(|j| &s.rules[j]) {
            if let Some(ts) = &r.to_schema {
                target_schema = ts.clone();
            }
            if let Some(tt) = &r.to_table {
                target_table = tt.clone();
            }
        }
        Ok(Some(TableSpec {
            source: s.name.clone(),
            namespace: s.namespace.clone().unwrap_or_else(|| s.name.clone()),
            schema: schema.to_string(),
            table: table.to_string(),
            target_schema,
            target_table,
            keys,
            columns,
            sequence_column: entry
                .and_then(|t| t.sequence_column.clone())
                .or_else(|| s.sequence_column.clone()),
            timestamp_column: entry
                .and_then(|t| t.timestamp_column.clone())
                .or_else(|| s.timestamp_column.clone()),
            delete_mode: entry.map(|t| t.delete_mode).unwrap_or_default(),
            partition_by: entry.map(|t| t.partition_by.clone()).unwrap_or_default(),
            deletion_vectors: entry
                .and_then(|t| t.deletion_vectors)
                .unwrap_or(self.config.commit.deletion_vectors),
            change_data_feed: entry
                .and_then(|t| t.change_data_feed)
                .unwrap_or(self.config.commit.change_data_feed),
            compact: entry
                .and_then(|t| t.compact.clone())
                .unwrap_or_else(|| self.config.compact.clone()),
            renamed_columns: entry.map(|t| t.renamed_columns.clone()).unwrap_or_default(),
            unlogged_when_null: entry.map(|t| t.unlogged_when_null.clone()).unwrap_or_default(),
            follow_removals: entry.and_then(|t| t.truncates).unwrap_or(s.truncates).follow_removals,
            history: entry.and_then(|t| t.history).unwrap_or(self.config.history).enabled,
        }))
    }

    /// The table that lands at `namespace/schema/table` in the lake (after renames), among
    /// the tables that have settings (only those can have staged change sets).
    pub fn table_by_target(&self, namespace: &str, schema: &str, table: &str) -> Option<TableSpec> {
        let source = self.source_by_namespace(namespace)?;
        let s = &self.config.sources[source];
        let configured = s.tables.iter().map(|t| (t.schema.as_str(), t.table.as_str()));
        let defined = s
            .table_definitions
            .iter()
            .flat_map(|d| d.tables.iter().map(|t| (t.table_owner.as_str(), t.table_name.as_str())));
        configured
            .chain(defined)
            .filter_map(|(sc, tb)| self.table(source, sc, tb).ok().flatten())
            .find(|spec| spec.target_schema == schema && spec.target_table == table)
    }

    /// Like [`Validated::table_by_target`], with a configuration error naming the table when
    /// nothing lands there (the configuration changed under staged work or a table's log).
    pub fn require_table_by_target(&self, namespace: &str, schema: &str, table: &str) -> Result<TableSpec> {
        self.table_by_target(namespace, schema, table).ok_or_else(|| {
            cfg_err(
                "sources",
                format!("no configured table lands at {namespace}.{schema}.{table} (was the configuration changed?)"),
            )
        })
    }

    /// The index of the rename rule that applies to `schema.table` of source `source`.
    pub(super) fn rename_rule(&self, source: usize, schema: &str, table: &str) -> Option<usize> {
        self.config.sources[source].rules.iter().position(|r| {
            r.action == RuleAction::Rename && wildcard_match(&r.schema, schema) && wildcard_match(&r.table, table)
        })
    }

    /// The source whose namespace is `namespace`.
    pub fn source_by_namespace(&self, namespace: &str) -> Option<usize> {
        self.config
            .sources
            .iter()
            .position(|s| s.namespace.as_deref().unwrap_or(&s.name) == namespace)
    }
}
