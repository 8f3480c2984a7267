//! Several change sets of one table -> one deduplicated change set in the table's shape.
//!
//! Files written before and after a DDL change differ in columns and types. Columns a change set
//! lacks are marked "not logged" (keep the table's value); narrower values are cast up; a column
//! whose new type is wider than the table's asks for the table to be widened; anything else
//! rejects that change set alone.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::{DataType, Field, Schema};

use crate::changes::{
    column_of_seq, column_seq_name, is_meta, meta_fields, nosup_columns, Deduper, NOSUP, SOURCE_FILE,
};
use crate::error::{BadInputKind, InputProblem};
use crate::types::{widening, Widening};

/// The result of unifying change sets.
#[derive(Debug)]
pub struct Unified {
    /// The deduplicated changes: data columns in table order (new ones last), then metadata.
    pub batch: Option<RecordBatch>,
    /// Change sets that cannot be applied, by index, with the reason.
    pub rejected: Vec<(usize, String)>,
    /// Table columns that must be widened first: (column, from, to).
    pub widen: Vec<(String, DataType, DataType)>,
    /// Columns the table does not have yet (column sequences included).
    pub new_columns: Vec<String>,
}

/// `table`: the table's data columns and column sequences (no other metadata), or `None` for a
/// table not created yet.
///
/// A column some change did not log gets its own sequence column (`_dms_seq_of_<column>`,
/// between the data and the metadata columns), as does every column the table already tracks:
/// a value the deduplication takes from an older change keeps that change's sequence.
pub fn unify(table: Option<&[Field]>, sets: &[Vec<RecordBatch>], keys: &[String]) -> Result<Unified, InputProblem> {
    let mut order: Vec<String> = Vec::new();
    let mut types: HashMap<String, DataType> = HashMap::new();
    let mut in_table: HashMap<String, DataType> = HashMap::new();
    let mut tracked: Vec<String> = Vec::new();
    for f in table.unwrap_or_default() {
        if let Some(c) = column_of_seq(f.name()) {
            tracked.push(c.to_string());
            in_table.insert(f.name().clone(), f.data_type().clone());
            continue;
        }
        order.push(f.name().clone());
        types.insert(f.name().clone(), f.data_type().clone());
        in_table.insert(f.name().clone(), f.data_type().clone());
    }
    let mut rejected = Vec::new();
    let mut widen: Vec<(String, DataType, DataType)> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let Some(first) = set.first() else { continue };
        let mut reason = None;
        let mut local_widen = Vec::new();
        let mut local_new = Vec::new();
        for f in first.schema().fields() {
            if is_meta(f.name()) {
                continue;
            }
            match types.get(f.name()) {
                Some(current) => match widening(current, f.data_type()) {
                    Widening::Same | Widening::CastUp => {}
                    Widening::Widen => local_widen.push((f.name().clone(), current.clone(), f.data_type().clone())),
                    Widening::Incompatible => {
                        reason = Some(format!(
                            "column `{}` changed type from {current} to {}, which cannot be converted safely",
                            f.name(),
                            f.data_type()
                        ));
                        break;
                    }
                },
                None => local_new.push((f.name().clone(), f.data_type().clone())),
            }
        }
        if let Some(r) = reason {
            rejected.push((i, r));
            continue;
        }
        for (name, from, to) in local_widen {
            types.insert(name.clone(), to.clone());
            if let Some(w) = widen.iter_mut().find(|w| w.0 == name) {
                w.2 = to;
            } else if in_table.contains_key(&name) {
                widen.push((name, from, to));
            }
        }
        for (name, dt) in local_new {
            order.push(name.clone());
            types.insert(name, dt);
        }
    }

    for (i, set) in sets.iter().enumerate() {
        if rejected.iter().any(|(r, _)| *r == i) {
            continue;
        }
        for name in unlogged_columns(set) {
            if !tracked.contains(&name) {
                tracked.push(name);
            }
        }
    }
    // In table order, so the schema does not depend on which change sets came together.
    let col_seqs: Vec<String> = order
        .iter()
        .filter(|c| tracked.contains(c))
        .map(|c| column_seq_name(c))
        .collect();
    let mut fields: Vec<Field> = order.iter().map(|n| Field::new(n, types[n].clone(), true)).collect();
    fields.extend(col_seqs.iter().map(|n| Field::new(n, DataType::Utf8, true)));
    fields.extend(meta_fields());
    let schema = Arc::new(Schema::new(fields));
    let mut dedup: Option<Deduper> = None;
    // Changes with equal sequences break by push order (see `Deduper`). Across files that must
    // be the order DMS wrote them, which their names (write times) give, not the order they
    // happened to be staged in.
    let mut push_order: Vec<usize> = (0..sets.len()).collect();
    push_order.sort_by_cached_key(|&i| source_file(&sets[i]));
    for i in push_order {
        let set = &sets[i];
        if rejected.iter().any(|(r, _)| *r == i) {
            continue;
        }
        for b in set {
            if b.num_rows() == 0 {
                continue;
            }
            let aligned = align(b, &schema, &order, &col_seqs)?;
            let d = match &mut dedup {
                Some(d) => d,
                slot @ None => slot.insert(Deduper::new(schema.clone(), keys)?),
            };
            d.push(aligned)?;
        }
    }
    let batch = match dedup {
        Some(d) => d.finish()?,
        None => None,
    };
    let new_columns = order
        .iter()
        .chain(&col_seqs)
        .filter(|n| !in_table.contains_key(*n))
        .cloned()
        .collect();
    Ok(Unified {
        batch,
        rejected,
        widen,
        new_columns,
    })
}

/// Every change of `sets`, none dropped, in the shape of `data` (a table's data columns) and
/// the metadata columns: the input of a history (see `operations::history`). Change sets come
/// in the order DMS wrote their files (as [`unify`] pushes them), rows in file order. Columns a
/// change set lacks are marked not logged, narrower values are cast up; a column `data` lacks
/// is left out (the caller passes the table as the commit left it, which has them all).
pub fn align_all(data: &[Field], sets: &[Vec<RecordBatch>]) -> Result<Vec<RecordBatch>, InputProblem> {
    let order: Vec<String> = data.iter().map(|f| f.name().clone()).collect();
    let mut fields: Vec<Field> = data.iter().map(|f| f.clone().with_nullable(true)).collect();
    fields.extend(meta_fields());
    let schema = Arc::new(Schema::new(fields));
    let mut push_order: Vec<usize> = (0..sets.len()).collect();
    push_order.sort_by_cached_key(|&i| source_file(&sets[i]));
    let mut out = Vec::new();
    for i in push_order {
        for b in &sets[i] {
            if b.num_rows() > 0 {
                out.push(align(b, &schema, &order, &[])?);
            }
        }
    }
    Ok(out)
}

/// The DMS file a change set was decoded from (one per change set).
fn source_file(set: &[RecordBatch]) -> Option<String> {
    let b = set.iter().find(|b| b.num_rows() > 0)?;
    let col = b.column_by_name(SOURCE_FILE)?;
    let text = cast(&col.slice(0, 1), &DataType::Utf8).ok()?;
    let text = text.as_string_opt::<i32>()?;
    (!text.is_null(0)).then(|| text.value(0).to_string())
}

/// The columns a change set marks as not logged somewhere (columns it lacks altogether are not
/// among them: no older change can carry a newer value of a column the source did not have).
fn unlogged_columns(set: &[RecordBatch]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for b in set {
        let Some(a) = b.column_by_name(NOSUP).and_then(|c| c.as_string_opt::<i32>()) else {
            continue;
        };
        if a.null_count() == a.len() {
            continue;
        }
        let mut last: Option<&str> = None;
        for v in a.iter().flatten() {
            // Runs of rows share a list; parse each distinct one once.
            if last == Some(v) {
                continue;
            }
            last = Some(v);
            for c in nosup_columns(v) {
                if b.schema().index_of(c).is_ok() && !names.iter().any(|n| n == c) {
                    names.push(c.to_string());
                }
            }
        }
    }
    names
}

/// One batch in the unified shape.
fn align(
    b: &RecordBatch,
    schema: &Arc<Schema>,
    order: &[String],
    col_seqs: &[String],
) -> Result<RecordBatch, InputProblem> {
    let n = b.num_rows();
    let bad = |e: String| InputProblem::new(BadInputKind::IncompatibleSchema, e);
    let mut missing: Vec<&str> = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (name, field) in order.iter().zip(schema.fields()) {
        match b.schema().index_of(name) {
            Ok(i) => {
                let c = b.column(i);
                if c.data_type() == field.data_type() {
                    cols.push(c.clone());
                } else {
                    cols.push(cast(c, field.data_type()).map_err(|e| bad(format!("column `{name}`: {e}")))?);
                }
            }
            Err(_) => {
                missing.push(name);
                cols.push(new_null_array(field.data_type(), n));
            }
        }
    }
    for name in col_seqs {
        cols.push(match b.column_by_name(name) {
            Some(c) => c.clone(),
            None => new_null_array(&DataType::Utf8, n),
        });
    }
    for f in meta_fields() {
        let i = b
            .schema()
            .index_of(f.name())
            .map_err(|_| bad(format!("change set lacks `{}`", f.name())))?;
        let mut c = b.column(i).clone();
        if c.data_type() != f.data_type() {
            // Change sets staged by earlier versions kept `_dms_source_file` as plain text.
            c = cast(&c, f.data_type()).map_err(|e| bad(format!("column `{}`: {e}", f.name())))?;
        }
        if f.name() == NOSUP && !missing.is_empty() {
            // Columns this change set never had are "not logged": the table keeps its values.
            let extra: String = missing.iter().map(|m| format!("{m}|")).collect();
            let old = c.as_string::<i32>();
            let merged: StringArray = (0..n)
                .map(|r| {
                    Some(if old.is_null(r) {
                        format!("|{extra}")
                    } else {
                        format!("{}{extra}", old.value(r))
                    })
                })
                .collect();
            cols.push(Arc::new(merged));
        } else {
            cols.push(c);
        }
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::tests::batch;
    use arrow::array::Int64Array;

    fn keys() -> Vec<String> {
        vec!["id".to_string()]
    }

    /// `b` as if decoded from the DMS file `file`.
    fn from_file(b: RecordBatch, file: &str) -> RecordBatch {
        let mut cols = b.columns().to_vec();
        let i = b.schema().index_of(SOURCE_FILE).unwrap();
        cols[i] = crate::changes::source_file_column(file, b.num_rows()).unwrap();
        RecordBatch::try_new(b.schema(), cols).unwrap()
    }

    #[test]
    fn equal_sequences_in_two_files_end_as_the_later_file() {
        // The same AR_H_CHANGE_SEQ in two files: the file DMS wrote later wins, in whichever
        // order the change sets were staged.
        let early = from_file(
            batch(&[(1, Some("early"), "U", "1S5", None)]),
            "s3://dms/s/t/20240601-000000001.csv",
        );
        let late = from_file(
            batch(&[(1, Some("late"), "U", "1S5", None)]),
            "s3://dms/s/t/20240601-000000002.csv",
        );
        for sets in [
            vec![vec![early.clone()], vec![late.clone()]],
            vec![vec![late.clone()], vec![early.clone()]],
        ] {
            let b = unify(None, &sets, &keys()).unwrap().batch.unwrap();
            let v = b.column(b.schema().index_of("v").unwrap()).as_string::<i32>();
            assert_eq!(v.value(0), "late");
        }
    }

    #[test]
    fn a_value_taken_from_an_older_change_set_keeps_that_changes_sequence() {
        // The change at 7 did not log `v`; the one at 5, in another file, did. Committed
        // together, the row is the change at 7 with `v` from 5, and `v`'s own sequence says 5,
        // so a change at 6 arriving later still sets it.
        let table = vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
        ];
        let logged = from_file(batch(&[(1, Some("full"), "U", "1S5", None)]), "s3://dms/s/t/1.csv");
        let unlogged = from_file(batch(&[(1, None, "U", "1S7", Some("|v|"))]), "s3://dms/s/t/2.csv");
        for sets in [
            vec![vec![logged.clone()], vec![unlogged.clone()]],
            vec![vec![unlogged.clone()], vec![logged.clone()]],
        ] {
            let u = unify(Some(&table), &sets, &keys()).unwrap();
            assert_eq!(u.new_columns, vec![column_seq_name("v")]);
            let b = u.batch.unwrap();
            let text = |name: &str| {
                let c = b.column(b.schema().index_of(name).unwrap()).as_string::<i32>();
                (!c.is_null(0)).then(|| c.value(0).to_string())
            };
            assert_eq!(text("_dms_seq").as_deref(), Some("1S7"));
            assert_eq!(text("v").as_deref(), Some("full"));
            assert_eq!(text(&column_seq_name("v")).as_deref(), Some("1S5"));
            assert_eq!(text(NOSUP), None);
        }
        // Alone, the unlogged change keeps its mark and gets no value or sequence for `v`.
        let u = unify(Some(&table), &[vec![unlogged]], &keys()).unwrap();
        let b = u.batch.unwrap();
        let seq = b.column(b.schema().index_of(&column_seq_name("v")).unwrap());
        assert!(seq.is_null(0));
        // A table that tracks `v` already gets the column with every change set, and a column
        // missing from a change set is not tracked for that.
        let tracked = vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
            Field::new("w", DataType::Utf8, true),
            Field::new(column_seq_name("v"), DataType::Utf8, true),
        ];
        let u = unify(Some(&tracked), &[vec![logged]], &keys()).unwrap();
        assert!(u.new_columns.is_empty(), "{:?}", u.new_columns);
        let b = u.batch.unwrap();
        assert!(b.schema().index_of(&column_seq_name("v")).is_ok());
        assert!(b.schema().index_of(&column_seq_name("w")).is_err());
    }

    #[test]
    fn missing_columns_become_not_logged_and_new_ones_are_added() {
        // Table has id, v, extra; the change set has id, v only.
        let table = vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
            Field::new("extra", DataType::Int32, true),
        ];
        let u = unify(
            Some(&table),
            &[vec![batch(&[(1, Some("a"), "U", "1F1", None)])]],
            &keys(),
        )
        .unwrap();
        let b = u.batch.unwrap();
        let nosup = b.column(b.schema().index_of(NOSUP).unwrap()).as_string::<i32>();
        assert_eq!(nosup.value(0), "|extra|");
        assert!(u.new_columns.is_empty());
        // A table without `v`: the change set adds it.
        let table = vec![Field::new("id", DataType::Int64, true)];
        let u = unify(
            Some(&table),
            &[vec![batch(&[(1, Some("a"), "U", "1F1", None)])]],
            &keys(),
        )
        .unwrap();
        assert_eq!(u.new_columns, vec!["v".to_string()]);
    }

    #[test]
    fn narrower_values_are_cast_wider_types_widen_and_incompatible_sets_are_rejected() {
        let table = vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Int32, true),
        ];
        let mk = |dt: DataType, arr: ArrayRef| {
            let base = batch(&[(7, None, "I", "1F1", None)]);
            let mut fields: Vec<Field> = base.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[1] = Field::new("v", dt, true);
            let mut cols = base.columns().to_vec();
            cols[1] = arr;
            RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
        };
        let wider = mk(DataType::Int64, Arc::new(Int64Array::from(vec![1i64 << 40])));
        let text = mk(DataType::Utf8, Arc::new(StringArray::from(vec!["x"])));
        let narrow = mk(DataType::Int16, Arc::new(arrow::array::Int16Array::from(vec![3i16])));
        let u = unify(Some(&table), &[vec![narrow], vec![wider], vec![text]], &keys()).unwrap();
        assert_eq!(u.rejected.len(), 1);
        assert_eq!(u.rejected[0].0, 2);
        assert!(u.rejected[0].1.contains("column `v`"));
        assert_eq!(u.widen, vec![("v".to_string(), DataType::Int32, DataType::Int64)]);
        let b = u.batch.unwrap();
        assert_eq!(b.schema().field(1).data_type(), &DataType::Int64);
    }

    /// Change sets staged before an upgrade kept `_dms_source_file` as plain text; they must
    /// still be applied, beside new ones, and deduplicated with them.
    #[test]
    fn change_sets_staged_by_an_earlier_version_still_apply() {
        use crate::changes::{source_file_type, SOURCE_FILE};
        let new = batch(&[(1, Some("new"), "U", "1F2", None)]);
        let i = new.schema().index_of(SOURCE_FILE).unwrap();
        let mut fields: Vec<Field> = new.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[i] = Field::new(SOURCE_FILE, DataType::Utf8, false);
        let old_rows = batch(&[(1, Some("old"), "I", "1F1", None), (2, Some("b"), "I", "1F1", None)]);
        let mut cols = old_rows.columns().to_vec();
        cols[i] = Arc::new(StringArray::from(vec!["s3://dms/old.csv"; 2]));
        let old = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        let u = unify(None, &[vec![old], vec![new]], &keys()).unwrap();
        assert!(u.rejected.is_empty());
        let b = u.batch.unwrap();
        assert_eq!(b.schema().field(i).data_type(), &source_file_type());
        let mut rows: Vec<(i64, String)> = (0..b.num_rows())
            .map(|r| {
                let id = b.column(0).as_primitive::<arrow::datatypes::Int64Type>().value(r);
                (id, b.column(1).as_string::<i32>().value(r).to_string())
            })
            .collect();
        rows.sort();
        assert_eq!(rows, vec![(1, "new".to_string()), (2, "b".to_string())]);
    }
}
