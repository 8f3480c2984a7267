//! A table's floor (see [`crate::generation`]): the sequence below which nothing of the table is
//! current any more, after a reload's load is over or a truncate. Raising it removes every row
//! sequenced below it (hard delete mode) or marks it deleted (soft), and from then on every
//! change below it is refused as stale, so a late file from before the reload or truncate can
//! never bring an old row back. The floor is a table property, read with the snapshot every
//! commit already loads.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use deltalake::datafusion::common::{Column, ScalarValue};
use deltalake::datafusion::functions::string::expr_fn::starts_with;
use deltalake::datafusion::prelude::{lit, Expr, SessionContext};
use deltalake::{DeltaResult, DeltaTable};

use crate::changes::{DELETED, DELETED_AT, SEQ, SOURCE_FILE};
use crate::config::{DeleteMode, TableSpec};
use crate::generation::Anchor;
use crate::types::UTC;

/// The table property holding the floor.
pub const FLOOR_PROPERTY: &str = "dms2delta.floor";

/// The table property holding, after a truncate of a table ordered by `AR_H_CHANGE_SEQ`, the
/// UTC time (16 digits) the truncate's floor is after. That floor is the removal's time, while a
/// change's sequence is its commit time at the source: a change committed after the TRUNCATE but
/// before DMS removed the files (DMS's replication lag) sorts below the floor, yet DMS wrote it
/// in a CDC file named after the removal. Changes of such files are the table's new history
/// whatever their sequence. Empty when the floor was raised by anything else.
pub const FILES_AFTER_PROPERTY: &str = "dms2delta.floor_files_after";

/// The table's floor, if one was ever raised.
pub fn table_floor(table: &DeltaTable) -> Option<Anchor> {
    let snapshot = table.snapshot().ok()?;
    let text = snapshot.metadata().configuration().get(FLOOR_PROPERTY)?;
    Anchor::parse(text)
}

/// The time [`FILES_AFTER_PROPERTY`] holds, if the table's floor was raised by such a truncate.
pub fn table_files_after(table: &DeltaTable) -> Option<String> {
    let snapshot = table.snapshot().ok()?;
    let text = snapshot.metadata().configuration().get(FILES_AFTER_PROPERTY)?;
    (!text.is_empty()).then(|| text.clone())
}

/// Which DMS files are the table's new history whatever their changes' sequences: given a
/// change's `_dms_source_file`, whether DMS named it after the truncate (see
/// [`FILES_AFTER_PROPERTY`]). `None` for a floor without such files.
pub type NewerFile<'a> = Option<&'a (dyn Fn(&str) -> bool + Sync)>;

/// The changes of `source` at or above `floor`, and those of files `newer_file` says were
/// written after it (the others are refused as stale).
pub fn drop_below(source: RecordBatch, floor: &Anchor, newer_file: NewerFile) -> Result<RecordBatch, ArrowError> {
    let i = source.schema().index_of(SEQ)?;
    let seqs = source.column(i).as_string::<i32>();
    let mut keep: Vec<bool> = (0..seqs.len())
        .map(|r| seqs.is_null(r) || seqs.value(r) >= floor.as_str())
        .collect();
    if keep.iter().all(|k| *k) {
        return Ok(source);
    }
    if let Some(newer) = newer_file {
        let files = cast(source.column(source.schema().index_of(SOURCE_FILE)?), &DataType::Utf8)?;
        let files = files.as_string::<i32>();
        // One answer per file: a change set holds the rows of a handful of files.
        let mut known: HashMap<&str, bool> = HashMap::new();
        for (r, k) in keep.iter_mut().enumerate() {
            if !*k && !files.is_null(r) {
                let f = files.value(r);
                *k = *known.entry(f).or_insert_with(|| newer(f));
            }
        }
    }
    let keep = BooleanArray::from(keep);
    if keep.true_count() == source.num_rows() {
        return Ok(source);
    }
    filter_record_batch(&source, &keep)
}

/// Raises the table's floor to `anchor` (its own commit, first, so that from then on no commit
/// can bring back what the sweep removes) and removes the rows sequenced below it. `files_after`
/// is the time of a truncate of a table ordered by `AR_H_CHANGE_SEQ` (see
/// [`FILES_AFTER_PROPERTY`]), `None` for other floors. Returns the table and the rows removed or
/// marked deleted. Both steps are idempotent: a run cut short is completed by the next one.
pub async fn raise(
    table: DeltaTable,
    spec: &TableSpec,
    anchor: &Anchor,
    files_after: Option<&str>,
) -> DeltaResult<(DeltaTable, u64)> {
    let table = if table_floor(&table).is_some_and(|f| &f >= anchor) {
        table
    } else {
        table
            .set_tbl_properties()
            // Our own properties, not Delta's.
            .with_raise_if_not_exists(false)
            .with_properties(HashMap::from([
                (FLOOR_PROPERTY.to_string(), anchor.as_str().to_string()),
                (
                    FILES_AFTER_PROPERTY.to_string(),
                    files_after.unwrap_or_default().to_string(),
                ),
            ]))
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

/// The anchor just below the change sequenced `seq` (`1S` and the 35 digits of an
/// `AR_H_CHANGE_SEQ`), above every change before it; `None` for other sequences.
pub fn just_below(seq: &str) -> Option<Anchor> {
    let digits = seq.strip_prefix("1S").filter(|d| d.len() == 35)?;
    let n: u128 = digits.parse().ok()?;
    Anchor::after(
        crate::generation::SeqKind::ChangeSeq,
        &format!("{:035}", n.checked_sub(1)?),
    )
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
        let kept = drop_below(b, &floor, None).unwrap();
        let kept: Vec<&str> = kept.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(kept, vec![gen_row.as_str(), "1F202405281200000000:000000000001"]);
    }
}
