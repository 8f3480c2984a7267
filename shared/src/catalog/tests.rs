use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};

use super::*;

fn lake() -> Location {
    Location::parse("s3://lake/tables/pg/public/accounts").unwrap()
}

fn schema(extra: Option<Field>) -> Schema {
    let mut fields = vec![
        Field::new("id", DataType::Int64, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new(
            "updated",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("_dms_seq", DataType::Utf8, true),
    ];
    fields.extend(extra);
    Schema::new(fields)
}

fn def(extra: Option<Field>, version: u64) -> CatalogTable {
    definition(
        "lakehouse",
        &TableId::new("pg", "public", "accounts"),
        &lake(),
        &schema(extra),
        &["region".to_string()],
        Some(version),
    )
    .unwrap()
}

#[test]
fn names_are_what_athena_takes_unquoted() {
    assert_eq!(catalog_name("pg", "public", "accounts"), "pg_public_accounts");
    assert_eq!(
        catalog_name("ERP-2", "Sales Data", "Order$Lines"),
        "erp_2_sales_data_order_lines"
    );
    assert_eq!(catalog_name("", "dbo", "t"), "dbo_t");
}

#[test]
fn names_in_other_scripts_and_long_names_stay_apart() {
    let a = catalog_name("erp", "日本", "注文");
    let b = catalog_name("erp", "中国", "订单");
    assert_ne!(a, b);
    for n in [&a, &b] {
        assert!(n.starts_with("erp_"), "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{n}"
        );
    }
    assert_ne!(catalog_name("pg", "Åland", "t"), catalog_name("pg", "Öland", "t"));
    // Deterministic: every commit and every function instance finds the same entry.
    assert_eq!(a, catalog_name("erp", "日本", "注文"));
    let long = "x".repeat(300);
    let n = catalog_name("pg", "public", &long);
    assert_eq!(n.len(), 255);
    assert_ne!(n, catalog_name("pg", "public", &"x".repeat(299)));
}

#[test]
fn types_map_to_hive_names_and_partitions_become_partition_keys() {
    let d = def(None, 3);
    let cols: Vec<(&str, &str)> = d
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .collect();
    assert_eq!(
        cols,
        [
            ("id", "bigint"),
            ("amount", "decimal(12,2)"),
            ("updated", "timestamp"),
            ("_dms_seq", "string")
        ]
    );
    assert_eq!(
        d.partition_keys,
        [CatalogColumn {
            name: "region".into(),
            type_name: "string".into()
        }]
    );
    assert_eq!(d.location, "s3://lake/tables/pg/public/accounts");
    assert_eq!(d.lake_table.as_deref(), Some("pg.public.accounts"));
    let nested = DataType::Struct(Fields::from(vec![
        Field::new("a", DataType::Int32, true),
        Field::new_list("b", Field::new("item", DataType::Boolean, true), true),
    ]));
    assert_eq!(hive_type(&nested).unwrap(), "struct<a:int,b:array<boolean>>");
    assert_eq!(hive_type(&DataType::Date32).unwrap(), "date");
    assert_eq!(hive_type(&DataType::Float16), None);
}

#[test]
fn a_local_table_or_an_undescribable_type_is_a_clear_error() {
    let e = definition(
        "db",
        &TableId::new("a", "b", "c"),
        &Location::parse("/tmp/x").unwrap(),
        &schema(None),
        &[],
        None,
    )
    .unwrap_err();
    assert!(matches!(e, CatalogError::NotOnS3 { .. }) && !e.is_retryable());
    assert!(e.to_string().contains("fix:"), "{e}");
    let odd = Schema::new(vec![Field::new("h", DataType::Float16, true)]);
    let e = definition("db", &TableId::new("a", "b", "c"), &lake(), &odd, &[], None).unwrap_err();
    assert!(e.to_string().contains("`h`") && e.to_string().contains("fix:"), "{e}");
}

#[tokio::test]
async fn created_once_then_cached_then_updated_when_a_column_is_added() {
    let mem = Arc::new(MemoryCatalog::default());
    let sync = CatalogSync::new(mem.clone(), "lakehouse");
    assert_eq!(sync.sync(&def(None, 0)).await.unwrap(), CatalogChange::Created);
    assert_eq!(sync.sync(&def(None, 1)).await.unwrap(), CatalogChange::Cached);
    assert_eq!(*mem.calls.lock().unwrap(), ["get", "create"]);

    let wider = def(Some(Field::new("email", DataType::Utf8, true)), 2);
    assert_eq!(sync.sync(&wider).await.unwrap(), CatalogChange::Updated);
    let stored = mem.table("lakehouse", "pg_public_accounts").unwrap();
    assert_eq!(stored.columns.last().unwrap().name, "email");
    assert_eq!(stored.delta_version, Some(2));

    // A new execution environment finds it current and only reads.
    let other = CatalogSync::new(mem.clone(), "lakehouse");
    assert_eq!(other.sync(&wider).await.unwrap(), CatalogChange::Unchanged);
}

#[tokio::test]
async fn an_update_keeps_parameters_someone_else_added() {
    let mem = Arc::new(MemoryCatalog::default());
    let mut tagged = def(None, 1);
    tagged.other_parameters.insert("owner".into(), "data-team".into());
    mem.insert(tagged);
    let sync = CatalogSync::new(mem.clone(), "lakehouse");
    let wider = def(Some(Field::new("email", DataType::Utf8, true)), 2);
    assert_eq!(sync.sync(&wider).await.unwrap(), CatalogChange::Updated);
    let stored = mem.table("lakehouse", "pg_public_accounts").unwrap();
    assert_eq!(
        stored.other_parameters.get("owner").map(String::as_str),
        Some("data-team")
    );
    assert_eq!(stored.columns, wider.columns);
}

#[tokio::test]
async fn an_older_schema_never_replaces_a_newer_one() {
    let mem = Arc::new(MemoryCatalog::default());
    let fast = CatalogSync::new(mem.clone(), "lakehouse");
    let slow = CatalogSync::new(mem.clone(), "lakehouse");
    fast.sync(&def(Some(Field::new("email", DataType::Utf8, true)), 5))
        .await
        .unwrap();
    // An invocation that read the table at version 4 finishes later.
    assert_eq!(slow.sync(&def(None, 4)).await.unwrap(), CatalogChange::Unchanged);
    assert_eq!(mem.table("lakehouse", "pg_public_accounts").unwrap().columns.len(), 5);
}

#[tokio::test]
async fn a_catalog_table_someone_else_made_is_never_overwritten() {
    let mem = Arc::new(MemoryCatalog::default());
    let mut theirs = def(None, 1);
    theirs.lake_table = None;
    theirs.location = "s3://elsewhere/t".into();
    mem.insert(theirs.clone());
    let e = CatalogSync::new(mem.clone(), "lakehouse")
        .sync(&def(None, 1))
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::Foreign { .. }) && !e.is_retryable(), "{e}");
    assert!(
        e.to_string().contains("s3://elsewhere/t") && e.to_string().contains("fix:"),
        "{e}"
    );
    assert_eq!(mem.table("lakehouse", "pg_public_accounts").unwrap(), theirs);
}

#[tokio::test]
async fn concurrent_first_commits_register_the_table_once() {
    let mem = Arc::new(MemoryCatalog::default());
    let want = def(None, 0);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let sync = CatalogSync::new(mem.clone(), "lakehouse");
            let want = want.clone();
            tokio::spawn(async move { sync.sync(&want).await })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            CatalogChange::Created => created += 1,
            CatalogChange::Unchanged => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(mem.table("lakehouse", "pg_public_accounts").unwrap(), want);
}
