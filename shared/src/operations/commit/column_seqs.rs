//! Columns with their own sequence in the MERGE's clauses.

use std::ops::Not;

use arrow::array::RecordBatch;
use deltalake::datafusion::functions::core::expr_fn::coalesce;
use deltalake::datafusion::prelude::{lit, when, Expr};
use deltalake::operations::merge::{InsertBuilder, UpdateBuilder};

use crate::model::columns::{column_of_seq, column_seq_name, SEQ};

use super::exprs::{s, t, target_col, unlogged};

/// The columns with their own sequence (`_dms_seq_of_<column>`) in a MERGE: a column takes a
/// change's value only if the change logged it and its value is newer than the table's, so a
/// late, older change still sets a column a newer change did not log.
pub(super) struct Tracked {
    /// (column, whether the table has the column, whether it has its sequence column).
    columns: Vec<(String, bool, bool)>,
}

impl Tracked {
    pub(super) fn new(source: &RecordBatch, in_table: &[String]) -> Tracked {
        let has = |n: &str| in_table.iter().any(|t| t == n);
        let columns = source
            .schema()
            .fields()
            .iter()
            .filter_map(|f| column_of_seq(f.name()))
            .map(|c| (c.to_string(), has(c), has(&column_seq_name(c))))
            .collect();
        Tracked { columns }
    }

    pub(super) fn has(&self, c: &str) -> bool {
        self.columns.iter().any(|(n, ..)| n == c)
    }

    fn entry(&self, c: &str) -> (bool, bool) {
        self.columns
            .iter()
            .find(|(n, ..)| n == c)
            .map_or((false, false), |&(_, col, seq)| (col, seq))
    }

    /// The sequence of the change that set the source's value of `c`.
    fn source_seq(c: &str) -> Expr {
        coalesce(vec![s(&column_seq_name(c)), s(SEQ)])
    }

    /// The sequence of the change that set the table's value of `c`.
    fn target_seq(&self, c: &str) -> Expr {
        match self.entry(c) {
            (_, true) => coalesce(vec![t(&column_seq_name(c)), t(SEQ)]),
            _ => t(SEQ),
        }
    }

    /// Whether a newer change (`applies`: it carries values at all) sets `c`.
    fn takes(&self, c: &str, applies: Expr) -> Expr {
        let newer_value = Tracked::source_seq(c).gt(self.target_seq(c));
        applies.and(unlogged(c).not()).and(newer_value)
    }

    pub(super) fn newer_value(&self, c: &str, applies: Expr) -> Expr {
        if !self.entry(c).0 {
            // The table gains the column now: it has no value to keep.
            return s(c);
        }
        when(self.takes(c, applies), s(c))
            .otherwise(t(c))
            .unwrap_or_else(|_| s(c))
    }

    /// The column sequences after a newer change (`applies` as for [`Tracked::takes`]).
    pub(super) fn newer_seqs(&self, mut u: UpdateBuilder, applies: Expr) -> UpdateBuilder {
        for (c, in_table, _) in &self.columns {
            let seq = if *in_table {
                when(self.takes(c, applies.clone()), s(&column_seq_name(c)))
                    .otherwise(self.target_seq(c))
                    .unwrap_or_else(|_| s(&column_seq_name(c)))
            } else {
                self.insert_seq(c)
            };
            u = u.update(target_col(&column_seq_name(c)), seq);
        }
        u
    }

    /// A row the change creates: a column it did not log has no value from any change yet, so
    /// the oldest sequence (`''`) lets any change that logged it fill it in.
    fn insert_seq(&self, c: &str) -> Expr {
        when(unlogged(c), lit(""))
            .otherwise(s(&column_seq_name(c)))
            .unwrap_or_else(|_| s(&column_seq_name(c)))
    }

    pub(super) fn insert_seqs(&self, mut i: InsertBuilder, row: bool) -> InsertBuilder {
        for (c, ..) in &self.columns {
            let seq = if row {
                self.insert_seq(c)
            } else {
                s(&column_seq_name(c))
            };
            i = i.set(target_col(&column_seq_name(c)), seq);
        }
        i
    }

    /// An older change sets `c` where the table's value came from an even older change.
    fn fills(c: &str) -> Expr {
        let seq = t(&column_seq_name(c));
        seq.clone()
            .is_not_null()
            .and(unlogged(c).not())
            .and(Tracked::source_seq(c).gt(seq))
    }

    /// Matched rows an older change still has values for, if the table tracks any column. "Older"
    /// includes the same row sequence: a redelivered change whose not-logged column the
    /// deduplication filled from an older change of the same commit carries more than the row
    /// the table holds for it.
    pub(super) fn older_predicate(&self) -> Option<Expr> {
        self.columns
            .iter()
            .filter(|(_, col, seq)| *col && *seq)
            .map(|(c, ..)| Tracked::fills(c))
            .reduce(Expr::or)
            .map(|any| s(SEQ).lt_eq(t(SEQ)).and(any))
    }

    pub(super) fn older_update(&self, mut u: UpdateBuilder) -> UpdateBuilder {
        for (c, ..) in self.columns.iter().filter(|(_, col, seq)| *col && *seq) {
            let name = column_seq_name(c);
            u = u
                .update(
                    target_col(c),
                    when(Tracked::fills(c), s(c)).otherwise(t(c)).unwrap_or_else(|_| t(c)),
                )
                .update(
                    target_col(&name),
                    when(Tracked::fills(c), Tracked::source_seq(c))
                        .otherwise(t(&name))
                        .unwrap_or_else(|_| t(&name)),
                );
        }
        u
    }
}
