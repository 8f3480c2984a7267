//! Deduplication by position: the last row per integer key, for files without a sequence column.

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;

use crate::error::{BadInputKind, InputProblem};

use super::int_keys::{int_key, push_int_keys};

/// Pairs [`LastRowPerKey`] collects before it first squashes them: a file of a million rows is
/// squashed once.
const SQUASH_MIN_PAIRS: usize = 1 << 20;

/// Deduplication when only positions matter and later rows always win: a file without a
/// sequence column, keyed by one integer column. Keeps `(key, position)` pairs and, whenever
/// they have doubled since the last time, squashes them to each key's last, so memory stays
/// within twice the surviving keys (and at least [`SQUASH_MIN_PAIRS`], 16 MiB).
#[derive(Debug, Default)]
pub struct LastRowPerKey {
    rows: Vec<(u64, u64)>,
    /// Scratch space for squashing, kept between squashes: fresh memory costs page faults.
    spare: Vec<(u64, u64)>,
    kept: usize,
    rows_in: u64,
}

impl LastRowPerKey {
    /// For a file of `rows` rows (when known), so the pairs are not moved as they grow.
    pub fn with_capacity(rows: usize) -> LastRowPerKey {
        LastRowPerKey {
            rows: Vec::with_capacity(rows.min(SQUASH_MIN_PAIRS)),
            ..LastRowPerKey::default()
        }
    }

    /// Whether a key column of this type can be deduplicated here.
    pub fn supports(key: &DataType) -> bool {
        int_key(key)
    }

    /// Adds a batch's (non-null) key column; its rows sit at `first_position..`.
    pub fn push(&mut self, keys: &ArrayRef, first_position: u64) -> Result<(), InputProblem> {
        if keys.null_count() > 0 {
            return Err(InputProblem::new(BadInputKind::MissingKey, "a key column is null"));
        }
        self.rows.reserve(keys.len());
        push_int_keys(keys, &mut self.rows, |r| first_position + r as u64)?;
        self.rows_in += keys.len() as u64;
        if self.rows.len() >= SQUASH_MIN_PAIRS.max(2 * self.kept) {
            self.squash();
        }
        Ok(())
    }

    fn squash(&mut self) {
        let Some((min, max)) = self
            .rows
            .iter()
            .fold(None, |acc: Option<(u64, u64)>, &(k, _)| match acc {
                None => Some((k, k)),
                Some((lo, hi)) => Some((lo.min(k), hi.max(k))),
            })
        else {
            return;
        };
        let span = max.wrapping_sub(min);
        if span < 4 * self.rows.len() as u64 {
            // Dense keys (the usual auto-increment ids): walk the pairs from the newest and keep
            // each key's first, marking keys seen in a bitmap of the key range (small enough
            // to stay in cache); no sort needed.
            let mut seen = vec![0u64; (span / 64) as usize + 1];
            self.spare.clear();
            for &(k, p) in self.rows.iter().rev() {
                let i = k.wrapping_sub(min);
                let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
                if seen[word] & bit == 0 {
                    seen[word] |= bit;
                    self.spare.push((k, p));
                }
            }
            std::mem::swap(&mut self.rows, &mut self.spare);
        } else {
            last_per_key_sparse(&mut self.rows, &mut self.spare);
        }
        self.kept = self.rows.len();
    }

    /// Rows pushed so far.
    pub fn rows_in(&self) -> u64 {
        self.rows_in
    }

    /// The surviving positions, ascending.
    pub fn finish(mut self) -> Vec<u64> {
        self.squash();
        // Positions are below `rows_in`: a bitmap puts them in order in one pass.
        let mut bits = vec![0u64; usize::try_from(self.rows_in.div_ceil(64)).unwrap_or(0)];
        for &(_, p) in &self.rows {
            if let Some(word) = bits.get_mut((p / 64) as usize) {
                *word |= 1 << (p % 64);
            }
        }
        let mut out = Vec::with_capacity(self.rows.len());
        drop(self.rows);
        drop(self.spare);
        for (w, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                out.push(w as u64 * 64 + u64::from(word.trailing_zeros()));
                word &= word - 1;
            }
        }
        out
    }
}

/// Each key's last pair, for keys spread too thin for a bitmap: the pairs are split by key hash
/// into parts small enough for a cache-resident table (one pass, arrival order kept), then each
/// part goes through a small open-addressing table where a later pair overwrites an earlier one.
fn last_per_key_sparse(rows: &mut Vec<(u64, u64)>, split: &mut Vec<(u64, u64)>) {
    const EMPTY: u64 = u64::MAX;
    let mix = |k: u64| {
        let h = (k ^ (k >> 33)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 29)
    };
    let n = rows.len();
    let bits = (n / 2048).max(1).next_power_of_two().trailing_zeros().min(12);
    let parts = 1usize << bits;
    let part_of = |k: u64| if bits == 0 { 0 } else { (mix(k) >> (64 - bits)) as usize };
    let mut starts = vec![0usize; parts + 1];
    for &(k, _) in rows.iter() {
        starts[part_of(k) + 1] += 1;
    }
    for i in 0..parts {
        starts[i + 1] += starts[i];
    }
    let mut next = starts.clone();
    split.clear();
    split.resize(n, (0, 0));
    for &pair in rows.iter() {
        let p = part_of(pair.0);
        split[next[p]] = pair;
        next[p] += 1;
    }
    // The survivors go back into `rows`, whose memory is already in use.
    rows.clear();
    let mut table: Vec<(u64, u64)> = Vec::new();
    for part in 0..parts {
        let slice = &split[starts[part]..starts[part + 1]];
        let cap = (slice.len() * 2).next_power_of_two().max(16);
        table.clear();
        table.resize(cap, (0, EMPTY));
        let mask = cap - 1;
        for &(k, p) in slice {
            let mut i = mix(k) as usize & mask;
            loop {
                let slot = &mut table[i];
                if slot.1 == EMPTY {
                    *slot = (k, p);
                    break;
                }
                if slot.0 == k {
                    slot.1 = p;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        rows.extend(table.iter().filter(|s| s.1 != EMPTY));
    }
}
