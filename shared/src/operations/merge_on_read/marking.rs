//! Marking: each change decided against the stored rows it matched, as the copy-on-write
//! MERGE's clauses would: the rows that go into deletion vectors and the new row versions.

use arrow::array::{Array, StringArray};
use deltalake::operations::merge::MergeMetrics;

use super::scan::Hits;
use crate::operations::change_feed::MergeOnReadChanges;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The change's values (old ones where the change did not log a column).
    Upsert,
    /// Flagged deleted (soft delete of a stored key): the delete's values where its image is
    /// full, else the stored row's (see [`full_images`]).
    SoftDelete,
    /// The delete's image, flagged deleted (soft delete of a key the table never held).
    Marker,
    /// The stored row with the columns an older change still sets (see [`ColumnSeqs::fills`]).
    Fill,
}

/// Where a tracked column's value comes from in a new row version.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    Source,
    Stored,
}

/// The columns with their own sequence, as the changes and the matched rows hold them.
pub(super) struct ColumnSeqs {
    /// Tracked column names.
    pub(super) columns: Vec<String>,
    /// Per tracked column: the changes' `_dms_seq_of_` values.
    pub(super) source: Vec<StringArray>,
    /// Per hit, per tracked column: the stored `_dms_seq_of_` values.
    pub(super) stored: Vec<Vec<StringArray>>,
    /// Per hit: the stored `_dms_seq`.
    pub(super) stored_seq: Vec<StringArray>,
    pub(super) seq: StringArray,
    pub(super) nosup: Option<StringArray>,
}

impl ColumnSeqs {
    fn unlogged(&self, change: usize, c: usize) -> bool {
        self.nosup
            .as_ref()
            .is_some_and(|n| !n.is_null(change) && n.value(change).contains(&format!("|{}|", self.columns[c])))
    }

    fn source_own(&self, change: usize, c: usize) -> Option<&str> {
        let a = &self.source[c];
        (!a.is_null(change)).then(|| a.value(change))
    }

    /// The sequence of the change that set the change's value of column `c`.
    fn source_seq(&self, change: usize, c: usize) -> &str {
        self.source_own(change, c).unwrap_or_else(|| self.seq.value(change))
    }

    fn stored_own(&self, (h, pos): (usize, usize), c: usize) -> Option<&str> {
        let a = &self.stored[h][c];
        (!a.is_null(pos)).then(|| a.value(pos))
    }

    fn stored_seq(&self, at: (usize, usize), c: usize) -> &str {
        self.stored_own(at, c)
            .unwrap_or_else(|| self.stored_seq[at.0].value(at.1))
    }

    /// Whether an older change sets column `c` of the stored row: the stored value came from
    /// an even older change.
    pub(super) fn fills(&self, change: usize, at: (usize, usize), c: usize) -> bool {
        !self.unlogged(change, c) && self.stored_own(at, c).is_some_and(|t| self.source_seq(change, c) > t)
    }

    /// Per tracked column, for each new row: where the value comes from and the column's own
    /// sequence (NULL: the row's).
    pub(super) fn choose(&self, rows: &[NewRow], full: &[bool]) -> Vec<(Vec<Take>, StringArray)> {
        (0..self.columns.len())
            .map(|c| {
                let mut takes = Vec::with_capacity(rows.len());
                let seqs: StringArray = rows
                    .iter()
                    .map(|r| {
                        let ch = r.change as usize;
                        let (take, seq) = match (r.kind, r.old) {
                            (Kind::Fill, Some(at)) if self.fills(ch, at, c) => {
                                (Take::Source, Some(self.source_seq(ch, c)))
                            }
                            (Kind::Fill, Some(at)) => (Take::Stored, self.stored_own(at, c)),
                            (Kind::Marker, _) | (Kind::Fill, None) => (Take::Source, self.source_own(ch, c)),
                            // A row created by a change that did not log the column: any
                            // change that logged it may fill it in.
                            (_, None) if self.unlogged(ch, c) => (Take::Source, Some("")),
                            (_, None) => (Take::Source, self.source_own(ch, c)),
                            (kind, Some(at)) => {
                                let applies = kind == Kind::Upsert || full[ch];
                                if applies && !self.unlogged(ch, c) && self.source_seq(ch, c) > self.stored_seq(at, c) {
                                    (Take::Source, self.source_own(ch, c))
                                } else {
                                    (Take::Stored, Some(self.stored_seq(at, c)))
                                }
                            }
                        };
                        takes.push(take);
                        seq.map(str::to_string)
                    })
                    .collect();
                (takes, seqs)
            })
            .collect()
    }
}

pub(super) struct NewRow {
    pub(super) change: u32,
    /// (index into the hits list, position in it) of the stored row replaced.
    pub(super) old: Option<(usize, usize)>,
    pub(super) kind: Kind,
}

/// What marking decided: per hit, the positions of the rows its file's deletion vector gains;
/// the new row versions; the rows retired, for the change feed.
pub(super) struct Marks {
    pub(super) marks: Vec<Vec<u64>>,
    pub(super) new_rows: Vec<NewRow>,
    pub(super) changes: MergeOnReadChanges,
}

/// Decides each change (`op`, `seq`, one per source row) against the stored rows it matched in
/// `hits`, counting what it does into `metrics`. `soft`: deletes flag rows; `feed`: the change
/// feed records the rows retired.
pub(super) fn decide(
    hits: &[Hits],
    op: &StringArray,
    seq: &StringArray,
    column_seqs: &ColumnSeqs,
    (soft, feed): (bool, bool),
    metrics: &mut MergeMetrics,
) -> Marks {
    let n = op.len();
    let stored_seq = &column_seqs.stored_seq;
    let mut matched: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (h, hit) in hits.iter().enumerate() {
        for (pos, change) in hit.changes.iter().enumerate() {
            matched[*change as usize].push((h, pos));
        }
    }
    let mut marks: Vec<Vec<u64>> = vec![Vec::new(); hits.len()];
    let mut new_rows: Vec<NewRow> = Vec::new();
    let mut changes = MergeOnReadChanges::default();
    for (change, here) in matched.iter().enumerate() {
        let is_delete = op.value(change) == "D";
        let newer: Vec<(usize, usize)> = here
            .iter()
            .copied()
            .filter(|(h, pos)| {
                let stored = &stored_seq[*h];
                !seq.is_null(change) && !stored.is_null(*pos) && seq.value(change) > stored.value(*pos)
            })
            .collect();
        // As the copy-on-write MERGE's clauses: matched and newer updates or deletes, matched
        // and not newer is stale, unmatched inserts (or leaves a soft-delete marker).
        let kind = match (here.is_empty(), is_delete, soft) {
            (false, false, _) if newer.is_empty() => {
                // Stale as a row; it may still carry a column value newer than the stored one.
                let Some(&at) = here.first() else { continue };
                if !(0..column_seqs.columns.len()).any(|c| column_seqs.fills(change, at, c)) {
                    continue;
                }
                metrics.num_target_rows_updated += 1;
                marks[at.0].push(hits[at.0].rows[at.1]);
                if feed {
                    changes.retire(at.0, at.1, false);
                }
                new_rows.push(NewRow {
                    change: change as u32,
                    old: Some(at),
                    kind: Kind::Fill,
                });
                continue;
            }
            (false, ..) if newer.is_empty() => continue,
            (false, true, false) => {
                metrics.num_target_rows_deleted += 1;
                None
            }
            (false, true, true) => {
                metrics.num_target_rows_updated += 1;
                Some(Kind::SoftDelete)
            }
            (false, false, _) => {
                metrics.num_target_rows_updated += 1;
                Some(Kind::Upsert)
            }
            (true, false, _) => {
                metrics.num_target_rows_inserted += 1;
                Some(Kind::Upsert)
            }
            (true, true, true) => {
                metrics.num_target_rows_inserted += 1;
                Some(Kind::Marker)
            }
            (true, true, false) => None,
        };
        for (h, pos) in &newer {
            marks[*h].push(hits[*h].rows[*pos]);
            if feed {
                changes.retire(*h, *pos, is_delete && !soft);
            }
        }
        if let Some(kind) = kind {
            new_rows.push(NewRow {
                change: change as u32,
                old: newer.first().copied(),
                kind,
            });
        }
    }
    Marks {
        marks,
        new_rows,
        changes,
    }
}
