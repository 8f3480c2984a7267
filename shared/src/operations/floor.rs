//! A table's floor (see [`crate::generation`]): the sequence below which nothing of the table is
//! current any more, after a reload's load is over or a truncate. Raising it removes every row
//! sequenced below it (hard delete mode) or marks it deleted (soft), and from then on every
//! change below it is refused as stale, so a late file from before the reload or truncate can
//! never bring an old row back. The floor is a table property, read with the snapshot every
//! commit already loads.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::error::ArrowError;
use deltalake::datafusion::common::{Column, ScalarValue};
use deltalake::datafusion::functions::string::expr_fn::starts_with;
use deltalake::datafusion::prelude::{lit, Expr, SessionContext};
use deltalake::{DeltaResult, DeltaTable};

use crate::changes::{DELETED, DELETED_AT, SEQ};
use crate::config::{DeleteMode, TableSpec};
use crate::generation::Anchor;
use crate::types::UTC;

/// The table property holding the floor.
pub const FLOOR_PROPERTY: &str = "dms2delta.floor";

/// The table's floor, if one was ever raised.
pub fn table_floor(table: &DeltaTable) -> Option<Anchor> {
    let snapshot = table.snapshot().ok()?;
    let text = snapshot.metadata().configuration().get(FLOOR_PROPERTY)?;
    Anchor::parse(text)
}

/// The changes of `source` at or above `floor` (the others are refused as stale).
pub fn drop_below(source: RecordBatch, floor: &Anchor) -> Result<RecordBatch, ArrowError> {
    let i = source.schema().index_of(SEQ)?;
    let seqs = source.column(i).as_string::<i32>();
    let keep: BooleanArray = (0..seqs.len())
        .map(|r| Some(seqs.is_null(r) || seqs.value(r) >= floor.as_str()))
        .collect();
    if keep.true_count() == source.num_rows() {
        return Ok(source);
    }
    filter_record_batch(&source, &keep)
}

/// Raises the table's floor to `anchor` (its own commit, first, so that from then on no commit
/// can bring back what the sweep removes) and removes the rows sequenced below it. Returns the
/// table and the rows removed or marked deleted. Both steps are idempotent: a run cut short is
/// completed by the next one.
pub async fn raise(table: DeltaTable, spec: &TableSpec, anchor: &Anchor) -> DeltaResult<(DeltaTable, u64)> {
    let table = if table_floor(&table).is_some_and(|f| &f >= anchor) {
        table
    } else {
        table
            .set_tbl_properties()
            // Our own property, not one of Delta's.
            .with_raise_if_not_exists(false)
            .with_properties(HashMap::from([(
                FLOOR_PROPERTY.to_string(),
                anchor.as_str().to_string(),
            )]))
            .await?
    };
    let below = Expr::Column(Column::new_unqualified(SEQ)).lt(lit(anchor.as_str()));
    match spec.delete_mode {
        DeleteMode::Hard => {
            let (table, m) = table.delete().with_predicate(below).await?;
            Ok((table, m.num_deleted_rows.unwrap_or(0) as u64))
        }
        DeleteMode::Soft => {
            let live = Expr::Column(Column::new_unqualified(DELETED)).is_not_true();
            let now = chrono::Utc::now().timestamp_micros();
            let at = lit(ScalarValue::TimestampMicrosecond(Some(now), Some(Arc::from(UTC))));
            let (table, m) = table
                .update()
                .with_predicate(below.and(live))
                .with_update(DELETED, lit(true))
                .with_update(DELETED_AT, at)
                .await?;
            Ok((table, m.num_updated_rows as u64))
        }
    }
}

/// Whether the table holds a change written after the load of the generation anchored at
/// `anchor` (any row above the anchor that is not one of that reload's own rows): DMS writes a
/// table's changes only once its load is over, so such a row shows that it is.
pub async fn holds_later_change(table: &DeltaTable, anchor: &Anchor) -> DeltaResult<bool> {
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let seq = || Expr::Column(Column::new_unqualified(SEQ));
    let own_rows = format!("{}L", anchor.as_str());
    let n = ctx
        .read_table(table.table_provider().await?)?
        .filter(
            seq()
                .gt(lit(anchor.as_str()))
                .and(starts_with(seq(), lit(own_rows)).is_not_true()),
        )?
        .limit(0, Some(1))?
        .count()
        .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn changes_below_the_floor_are_dropped_and_the_generation_kept() {
        let floor = Anchor::after(crate::generation::SeqKind::FileName, "202405281100000000").unwrap();
        let gen_row = format!("{}000000000001", floor.load_prefix(None, "LOAD00000001"));
        let seqs = StringArray::from(vec![
            "0LLOAD00000001:000000000001",
            "1F202405281000000000:000000000001",
            gen_row.as_str(),
            "1F202405281200000000:000000000001",
        ]);
        let schema = Arc::new(Schema::new(vec![Field::new(SEQ, DataType::Utf8, false)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(seqs)]).unwrap();
        let kept = drop_below(b, &floor).unwrap();
        let kept: Vec<&str> = kept.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(kept, vec![gen_row.as_str(), "1F202405281200000000:000000000001"]);
    }
}
