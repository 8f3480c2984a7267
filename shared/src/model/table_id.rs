use std::fmt;

/// A table in the lake: `namespace`, `schema` and `table` after renames. Ordered and hashed by
/// those three, so work grouped by table comes out in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId {
    pub namespace: String,
    pub schema: String,
    pub table: String,
}

impl TableId {
    pub fn new(namespace: impl Into<String>, schema: impl Into<String>, table: impl Into<String>) -> TableId {
        TableId {
            namespace: namespace.into(),
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// `namespace.schema.table`: the table's name in logs, metrics, queries and answers.
    pub fn qualified_name(&self) -> String {
        self.to_string()
    }

    /// `namespace/schema/table`: the table's folder below the lake root.
    pub fn lake_path(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.schema, self.table)
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.namespace, self.schema, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_orders_by_its_three_parts() {
        let a = TableId::new("pg", "public", "accounts");
        let b = TableId::new("pg", "public", "orders");
        assert_eq!(a.to_string(), "pg.public.accounts");
        assert_eq!(a.qualified_name(), "pg.public.accounts");
        assert_eq!(a.lake_path(), "pg/public/accounts");
        assert!(a < b);
    }
}
