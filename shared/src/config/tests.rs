use super::*;
use crate::error::BadInputKind;
use crate::types::{ColumnType, TypeError};

const BASE: &str = r#"
lake: /tmp/lake
staging: /tmp/staging
quarantine: /tmp/quarantine
sources:
  - name: mysql
    bucket: dms
    bucket_folder: raw/mysql
    sequence_column: AR_H_CHANGE_SEQ
    rules:
      - { action: include, schema: hr, table: "%" }
      - { action: exclude, schema: hr, table: "audit_%" }
      - { action: rename, schema: hr, table: emp, to_table: employees }
    tables:
      - schema: hr
        table: emp
        keys: [id]
        columns:
          - { name: id, type: INT4 }
          - { name: name, type: STRING }
          - { name: salary, type: NUMERIC, precision: 10, scale: 2 }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
  - name: pg
    bucket: dms
    bucket_folder: raw/pg
    table_definitions:
      TableCount: "1"
      Tables:
        - TableName: accounts
          TablePath: public/accounts/
          TableOwner: public
          TableColumns:
            - { ColumnName: id, ColumnType: INT8, ColumnNullable: "false", ColumnIsPk: "true" }
            - { ColumnName: balance, ColumnType: NUMERIC, ColumnPrecision: "12", ColumnScale: "2" }
          TableColumnsTotal: "2"
"#;

fn err_of(text: &str) -> (String, String) {
    match Config::from_text(text) {
        Err(Error::Config { path, reason }) => (path, reason),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn parses_yaml_and_resolves_tables() {
    let v = Config::from_text(BASE).unwrap();
    let t = v.table(0, "hr", "emp").unwrap().unwrap();
    assert_eq!(t.keys, vec!["id"]);
    assert_eq!(t.target_table, "employees");
    assert_eq!(t.qualified_name(), "mysql.hr.employees");
    assert_eq!(t.sequence_column.as_deref(), Some("AR_H_CHANGE_SEQ"));
    assert_eq!(t.columns.as_ref().unwrap().len(), 4);
    // Excluded by a rule, and not included by any rule.
    assert_eq!(v.table(0, "hr", "audit_log").unwrap(), None);
    assert_eq!(v.table(0, "sales", "orders").unwrap(), None);
    // Selected but no key configured.
    let e = v.table(0, "hr", "dept").unwrap_err();
    assert_eq!(e.kind, BadInputKind::NoKey);
}

#[test]
fn dms_table_definitions_give_columns_and_keys() {
    let v = Config::from_text(BASE).unwrap();
    let t = v.table(1, "public", "accounts").unwrap().unwrap();
    assert_eq!(t.keys, vec!["id"]);
    assert_eq!(t.namespace, "pg");
    let cols = t.columns.unwrap();
    assert_eq!(cols[1].ty, ColumnType::Decimal(12, 2));
}

#[test]
fn a_rename_that_lands_two_tables_on_one_is_refused_with_its_rule() {
    let two = |rules: &str| {
        format!(
            r#"
lake: /l
staging: /s
quarantine: /q
sources:
  - name: erp
    bucket: dms
    rules:
{rules}
    tables:
      - {{ schema: sales, table: t1, keys: [id] }}
      - {{ schema: sales, table: t2, keys: [id] }}
      - {{ schema: hr, table: t1, keys: [id] }}
"#
        )
    };
    // `t%` -> one name: t1 and t2 of sales would share sales.t.
    let (path, reason) = err_of(&two(
        r#"      - { action: rename, schema: sales, table: "t%", to_table: t }"#,
    ));
    assert_eq!(path, "sources[0].rules[0]");
    assert!(reason.contains("sales.t1") && reason.contains("sales.t2"), "{reason}");
    assert!(reason.contains("erp.sales.t"), "{reason}");
    // Every schema onto one: sales.t1 and hr.t1 collide.
    let (path, reason) = err_of(&two(
        r#"      - { action: rename, schema: "%", table: t1, to_schema: all }"#,
    ));
    assert_eq!(path, "sources[0].rules[0]");
    assert!(reason.contains("all.t1"), "{reason}");
    // Onto an existing table's name.
    let (path, _) = err_of(&two(r#"      - { action: include, schema: "%", table: "%" }
      - { action: rename, schema: sales, table: t2, to_table: t1 }"#));
    assert_eq!(path, "sources[0].rules[1]");
    // One-to-one renames and an excluded table out of the way are fine.
    Config::from_text(&two(
        r#"      - { action: rename, schema: sales, table: "%", to_schema: sales_v2 }"#,
    ))
    .unwrap();
    Config::from_text(&two(r#"      - { action: exclude, schema: sales, table: t2 }
      - { action: rename, schema: sales, table: "t%", to_table: t }"#))
    .unwrap();
}

#[test]
fn a_name_the_delta_engine_would_decode_twice_is_refused_unless_renamed() {
    let text = |rules: &str| {
        format!(
                "lake: /l\nstaging: /s\nquarantine: /q\nsources:\n  - name: erp\n    bucket: dms\n    rules:\n{rules}    tables:\n      - {{ schema: \"50%off\", table: \"a%20b\", keys: [id] }}\n"
            )
    };
    let (path, reason) = err_of(&text("      - { action: include, schema: \"%\", table: \"%\" }\n"));
    assert_eq!(path, "sources[0].tables");
    assert!(reason.contains("`a%20b`") && reason.contains("rename"), "{reason}");
    // `50%off` holds no escape (`%of`), so only the table needs a new name.
    let v = Config::from_text(&text(
        "      - { action: rename, schema: \"50%off\", table: \"a%20b\", to_table: a_b }\n",
    ))
    .unwrap();
    assert_eq!(v.table(0, "50%off", "a%20b").unwrap().unwrap().target_table, "a_b");
}

#[test]
fn json_documents_are_accepted() {
    let text = r#"{"lake":"/l","staging":"/s","quarantine":"/q","sources":[{"name":"a","bucket":"b"}]}"#;
    let v = Config::from_text(text).unwrap();
    assert_eq!(v.sources()[0].csv.delimiter, ",");
}

#[test]
fn unknown_fields_name_their_path() {
    let (path, reason) = err_of(&BASE.replace("keys: [id]", "keys: [id]\n        colums: []"));
    assert_eq!(path, "sources[0].tables[0].colums");
    assert!(reason.contains("unknown field `colums`"), "{reason}");
    let (path, reason) = err_of(&BASE.replace("staging:", "stagign: x\nstaging:"));
    assert_eq!(path, "stagign");
    assert!(reason.contains("stagign"), "{reason}");
    let (path, _) = err_of(&BASE.replace("ColumnIsPk: \"true\"", "ColumnIsPk: \"true\", Bogus: 1"));
    assert!(
        path.starts_with("sources[1].table_definitions.Tables[0].TableColumns[0]"),
        "{path}"
    );
}

#[test]
fn change_data_feed_is_off_by_default_set_globally_and_overridden_per_table() {
    let v = Config::from_text(BASE).unwrap();
    assert!(!v.table(0, "hr", "emp").unwrap().unwrap().change_data_feed);
    let on = format!("{BASE}commit:\n  change_data_feed: true\n");
    let v = Config::from_text(&on).unwrap();
    assert!(v.table(0, "hr", "emp").unwrap().unwrap().change_data_feed);
    assert!(v.table(1, "public", "accounts").unwrap().unwrap().change_data_feed);
    let off_here = on.replace("keys: [id]", "keys: [id]\n        change_data_feed: false");
    let v = Config::from_text(&off_here).unwrap();
    assert!(!v.table(0, "hr", "emp").unwrap().unwrap().change_data_feed);
    assert!(v.table(1, "public", "accounts").unwrap().unwrap().change_data_feed);
    let (path, _) = err_of(&format!("{BASE}commit:\n  change_data_feed: maybe\n"));
    assert!(path.starts_with("commit"), "{path}");
}

#[test]
fn merge_on_read_is_off_by_default_set_globally_and_overridden_per_table() {
    let v = Config::from_text(BASE).unwrap();
    assert!(!v.table(0, "hr", "emp").unwrap().unwrap().deletion_vectors);
    assert_eq!(v.config.compact.purge_deleted_percent, 5);
    let on = format!("{BASE}commit:\n  deletion_vectors: true\n");
    let v = Config::from_text(&on).unwrap();
    assert!(v.table(0, "hr", "emp").unwrap().unwrap().deletion_vectors);
    assert!(v.table(1, "public", "accounts").unwrap().unwrap().deletion_vectors);
    let off_here = on.replace("keys: [id]", "keys: [id]\n        deletion_vectors: false");
    let v = Config::from_text(&off_here).unwrap();
    assert!(!v.table(0, "hr", "emp").unwrap().unwrap().deletion_vectors);
    assert!(v.table(1, "public", "accounts").unwrap().unwrap().deletion_vectors);
    for bad in ["0", "101"] {
        let (path, _) = err_of(&format!("{BASE}compact:\n  purge_deleted_percent: {bad}\n"));
        assert_eq!(path, "compact.purge_deleted_percent");
    }
}

#[test]
fn history_is_off_by_default_set_globally_and_overridden_per_table() {
    let v = Config::from_text(BASE).unwrap();
    assert!(!v.table(0, "hr", "emp").unwrap().unwrap().history);
    let on = format!("{BASE}history:\n  enabled: true\n");
    let v = Config::from_text(&on).unwrap();
    let emp = v.table(0, "hr", "emp").unwrap().unwrap();
    assert!(emp.history);
    assert_eq!(emp.history_path(), "_dms2delta/history/mysql/hr/employees");
    assert!(v.table(1, "public", "accounts").unwrap().unwrap().history);
    let off_here = on.replace("keys: [id]", "keys: [id]\n        history: { enabled: false }");
    let v = Config::from_text(&off_here).unwrap();
    assert!(!v.table(0, "hr", "emp").unwrap().unwrap().history);
    assert!(v.table(1, "public", "accounts").unwrap().unwrap().history);
    let (path, _) = err_of(&format!("{BASE}history:\n  enabled: true\n  location: x\n"));
    assert_eq!(path, "history.location");
}

#[test]
fn each_kind_of_mistake_is_reported_with_its_path() {
    let cases: Vec<(String, &str)> = vec![
        (
            BASE.replace("keys: [id]", "keys: [idx]"),
            "sources[0].tables[0].keys[0]",
        ),
        (
            BASE.replace("type: INT4", "type: INTEGER4"),
            "sources[0].tables[0].columns[0].type",
        ),
        (BASE.replace("name: pg", "name: mysql"), "sources[1].name"),
        (BASE.replace("lake: /tmp/lake", "lake: ftp://x/y"), "lake"),
        (
            BASE.replace("bucket_folder: raw/pg", "bucket_folder: raw/../pg"),
            "sources[1].bucket_folder",
        ),
        (
            BASE.replace("to_table: employees", "to_table: a/b"),
            "sources[0].rules[2]",
        ),
        (
            BASE.replace("ColumnType: INT8", "ColumnType: WEIRD"),
            "sources[1].table_definitions.Tables[0].TableColumns[0]",
        ),
        (format!("{BASE}commit:\n  max_attempts: 0\n"), "commit.max_attempts"),
        (
            format!("{BASE}compact:\n  vacuum_retention_hours: 24\n"),
            "compact.vacuum_retention_hours",
        ),
        (
            format!("{BASE}storage:\n  endpoint: http://127.0.0.1:5000\n  path_style: true\n"),
            "storage.endpoint",
        ),
        (
            format!("{BASE}storage:\n  endpoint: https://minio.example:9000\n"),
            "storage.endpoint",
        ),
        (
            format!("{BASE}storage:\n  server_side_encryption: AES256\n  kms_key_id: k\n"),
            "storage.kms_key_id",
        ),
        (
            format!("{BASE}storage:\n  server_side_encryption: aws:sse\n"),
            "storage.server_side_encryption",
        ),
        (
            BASE.replace(
                "    bucket_folder: raw/mysql",
                "    bucket_folder: raw/mysql\n    csv: {delimiter: \";;\"}",
            ),
            "sources[0].csv.delimiter",
        ),
        (
            BASE.replace(
                "sources:\n  - name: mysql",
                "sources:\n  - name: mysql\n    namespace: pg",
            ),
            "sources[1].namespace",
        ),
    ];
    for (text, want) in cases {
        let (path, reason) = err_of(&text);
        assert_eq!(path, want, "{reason}");
        assert!(!reason.is_empty());
    }
    let (path, _) = err_of("lake: /l\nstaging: /s\nquarantine: /q\nsources: []\n");
    assert_eq!(path, "sources");
}

#[test]
fn wildcards() {
    assert!(wildcard_match("%", "anything"));
    assert!(wildcard_match("audit_%", "audit_log"));
    assert!(!wildcard_match("audit_%", "xaudit_log"));
    assert!(wildcard_match("%_log", "audit_log"));
    assert!(wildcard_match("a%b%c", "aXXbYYc"));
    assert!(!wildcard_match("a%b%c", "aXXcYYb"));
    assert!(wildcard_match("emp", "emp"));
    assert!(!wildcard_match("emp", "emps"));
    assert!(!wildcard_match("ab%ba", "aba"));
}

#[test]
fn a_dms_task_arn_must_name_a_replication_task() {
    let with = |arn: &str| {
        BASE.replace(
            "    bucket_folder: raw/mysql\n",
            &format!("    bucket_folder: raw/mysql\n    dms_task_arn: \"{arn}\"\n"),
        )
    };
    for ok in [
        "arn:aws:dms:us-east-1:123456789012:task:F8TBR5IJGVM78ZQYCR60BO87AF",
        "arn:aws-cn:dms:cn-north-1:123456789012:task:my-task-1",
        "arn:aws-us-gov:dms:us-gov-west-1:123456789012:task:ABC",
    ] {
        let v = Config::from_text(&with(ok)).unwrap();
        assert_eq!(v.sources()[0].dms_task_arn.as_deref(), Some(ok));
        assert_eq!(v.sources()[1].dms_task_arn, None);
    }
    for bad in [
        "F8TBR5IJGVM78ZQYCR60BO87AF",
        "arn:aws:dms:us-east-1:123456789012:rep:ABC",
        "arn:aws:dms:us-east-1:123456789012:replication-config:ABC",
        "arn:aws:dms:us-east-1:12345:task:ABC",
        "arn:aws:s3:us-east-1:123456789012:task:ABC",
        "arn:aws:dms:us-east-1:123456789012:task:",
        "arn:aws:dms:us-east-1:123456789012:task:a/b",
        "arn:aws:dms::123456789012:task:ABC",
    ] {
        let (path, reason) = err_of(&with(bad));
        assert_eq!(path, "sources[0].dms_task_arn", "{bad}");
        assert!(reason.contains("not a DMS replication task ARN"), "{bad}: {reason}");
    }
}

#[test]
fn a_bad_name_prefix_or_column_definition_keeps_its_message() {
    let (path, reason) = err_of(&BASE.replace("name: mysql", "name: \"..\""));
    assert_eq!(path, "sources[0].name");
    assert_eq!(reason, "`..` is not a usable name");
    let (path, reason) = err_of(&BASE.replace("name: mysql", "name: \"a/b\""));
    assert_eq!(path, "sources[0].name");
    assert_eq!(
        reason,
        "`a/b` must be at most 255 characters without `/`, `\\` or control characters"
    );
    let (path, reason) = err_of(&BASE.replace("bucket_folder: raw/mysql", "bucket_folder: \"/\""));
    assert_eq!(path, "sources[0].bucket_folder");
    assert_eq!(reason, "an empty prefix; omit the field instead");
    // A prefix's bad folder is reported as that folder's problem.
    let (path, reason) = err_of(&BASE.replace("bucket_folder: raw/mysql", "bucket_folder: raw/../x"));
    assert_eq!(path, "sources[0].bucket_folder");
    assert_eq!(reason, "`..` is not a usable name");
    let (path, reason) = err_of(&BASE.replace("ColumnPrecision: \"12\"", "ColumnPrecision: \"300\""));
    assert!(
        path.starts_with("sources[1].table_definitions.Tables[0].TableColumns[1]"),
        "{path}"
    );
    assert_eq!(reason, "ColumnPrecision 300 out of range");
}

#[test]
fn a_bad_dms_column_says_which_part_and_keeps_its_cause() {
    use std::error::Error as _;
    let column = |name: &str, ty: &str, precision: Option<i64>| DmsColumn {
        column_name: name.into(),
        column_type: ty.into(),
        column_nullable: None,
        column_is_pk: None,
        column_length: None,
        column_precision: precision.map(Loose::Int),
        column_scale: None,
        column_date_format: None,
    };
    let e = schema::dms_column(&column("x", "NUMERIC", Some(300))).unwrap_err();
    assert!(matches!(e, schema::BadDmsColumn::Precision { value: 300, .. }), "{e:?}");
    assert!(e.source().is_some_and(|s| s.is::<std::num::TryFromIntError>()), "{e:?}");
    let e = schema::dms_column(&column("x", "NOSUCHTYPE", None)).unwrap_err();
    assert!(
        matches!(&e, schema::BadDmsColumn::Type(TypeError::Unknown(t)) if t == "NOSUCHTYPE"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), TypeError::Unknown("NOSUCHTYPE".into()).to_string());
    let e = schema::dms_column(&column("", "INT4", None)).unwrap_err();
    assert!(matches!(e, schema::BadDmsColumn::NoName), "{e:?}");
    assert_eq!(e.to_string(), "empty ColumnName");
}
