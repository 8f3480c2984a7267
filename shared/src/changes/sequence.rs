//! Sequences: DMS's change sequences and the ones made for files without them, encoded to sort as text.

use arrow::array::StringArray;
use arrow::error::ArrowError;

use crate::generation::Anchor;

/// A value that cannot be DMS's `$AR_H_CHANGE_SEQ`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an AR_H_CHANGE_SEQ (up to 35 digits)")]
pub struct NotAChangeSeq(pub String);

/// Builds sequence strings. Text order equals change order:
/// - full-load rows: `0L<file stem>:<row>`, or `0L<folder>/<file stem>:<row>` for a file in a
///   sub-folder of its table folder (a parallel-load partition), below every CDC change; a
///   reload's rows: `<anchor>L<folder/stem>:<row>` (see [`crate::generation`]);
/// - CDC rows with `$AR_H_CHANGE_SEQ`: `1S<35 digits>`;
/// - other CDC rows: `1F<18 digits of the file name's UTC time>:<row>`.
///
/// Row numbers are 12 digits, so text order is numeric order.
#[derive(Debug, Clone)]
pub struct Sequence;

impl Sequence {
    pub fn load(out: &mut String, stem: &str, row: u64) {
        Sequence::load_in(out, None, None, stem, row);
    }

    /// A full-load row of file `stem` in `folder` below its table folder. Parallel-load
    /// partitions each write their own `LOAD00000001`: with the folder in it, no two files'
    /// rows share a sequence. A folder never holds `/` at its ends and a stem never holds one,
    /// so `folder/stem` names one file; the `0L` start keeps every one below CDC changes.
    /// A reload's rows start with their generation's anchor instead (see [`crate::generation`]).
    pub fn load_in(out: &mut String, anchor: Option<&Anchor>, folder: Option<&str>, stem: &str, row: u64) {
        out.clear();
        match anchor {
            Some(a) => {
                out.push_str(a.as_str());
                out.push('L');
            }
            None => out.push_str("0L"),
        }
        if let Some(f) = folder {
            out.push_str(f);
            out.push('/');
        }
        out.push_str(stem);
        out.push(':');
        push_row(out, row);
    }

    /// A CDC row without a sequence value of its own (`file`'s form), or, in a table that
    /// orders its changes by `AR_H_CHANGE_SEQ` (`by_change_seq`), the same place in that order:
    /// see [`Sequence::in_change_seq_order`].
    pub fn file_for(out: &mut String, time_digits: &str, row: u64, by_change_seq: bool) {
        if by_change_seq {
            out.clear();
            out.push_str(&Sequence::in_change_seq_order(time_digits));
            push_row(out, row);
        } else {
            Sequence::file(out, time_digits, row);
        }
    }

    /// [`Sequence::file_for`]'s text before the row number.
    pub fn file_prefix_for(time_digits: &str, by_change_seq: bool) -> String {
        if by_change_seq {
            Sequence::in_change_seq_order(time_digits)
        } else {
            Sequence::file_prefix(time_digits)
        }
    }

    /// A CDC file without `AR_H_CHANGE_SEQ` values in a table that orders by them (the
    /// add-column rule removed while the task ran, or added later): `1S<16 time digits>:<rest>:`.
    /// A file holds changes committed up to the time in its name, so its rows go after every
    /// change committed in that hundredth of a second (`:` sorts above digits) and before every
    /// later one, and below a reload anchored there (`;` sorts above `:`). Rows keep their file
    /// order.
    pub fn in_change_seq_order(time_digits: &str) -> String {
        let split = time_digits.len().min(16);
        format!("1S{}:{}:", &time_digits[..split], &time_digits[split..])
    }

    pub fn file(out: &mut String, time_digits: &str, row: u64) {
        out.clear();
        out.push_str("1F");
        out.push_str(time_digits);
        out.push(':');
        push_row(out, row);
    }

    /// `$AR_H_CHANGE_SEQ`: 35 digits, left-padded when a shorter number arrives.
    pub fn change_seq(out: &mut String, value: &str) -> Result<(), NotAChangeSeq> {
        let v = value.trim();
        if v.is_empty() || v.len() > 35 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NotAChangeSeq(value.to_string()));
        }
        out.clear();
        out.push_str("1S");
        for _ in v.len()..35 {
            out.push('0');
        }
        out.push_str(v);
        Ok(())
    }

    /// The sequences of rows that carry none of their own: `prefix` ([`Sequence::load_prefix`]
    /// or [`Sequence::file_prefix`]) and the row number, built straight into one buffer.
    pub fn positional(prefix: &str, rows: impl ExactSizeIterator<Item = u64>) -> Result<StringArray, ArrowError> {
        let n = rows.len();
        let mut values: Vec<u8> = Vec::with_capacity(n * (prefix.len() + 12));
        let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
        offsets.push(0);
        for row in rows {
            values.extend_from_slice(prefix.as_bytes());
            values.extend_from_slice(row_digits(row).as_slice());
            let end = i32::try_from(values.len())
                .map_err(|_| ArrowError::ComputeError("sequences over 2 GiB in one batch".into()))?;
            offsets.push(end);
        }
        StringArray::try_new(arrow::buffer::OffsetBuffer::new(offsets.into()), values.into(), None)
    }

    pub fn load_prefix(stem: &str) -> String {
        Sequence::load_prefix_in(None, None, stem)
    }

    /// [`Sequence::load_in`]'s text before the row number.
    pub fn load_prefix_in(anchor: Option<&Anchor>, folder: Option<&str>, stem: &str) -> String {
        if let Some(a) = anchor {
            return a.load_prefix(folder, stem);
        }
        match folder {
            Some(f) => format!("0L{f}/{stem}:"),
            None => format!("0L{stem}:"),
        }
    }

    pub fn file_prefix(time_digits: &str) -> String {
        format!("1F{time_digits}:")
    }
}

/// Appends `row` zero-padded to 12 digits, as `{row:012}` would (called once per decoded row, so
/// without the formatting machinery).
fn push_row(out: &mut String, row: u64) {
    // Only ASCII digits, so the conversion cannot fail.
    out.push_str(std::str::from_utf8(row_digits(row).as_slice()).unwrap_or_default());
}

/// `00` to `99`.
const TWO_DIGITS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// `row` as at least 12 decimal digits (two at a time: this runs for every row decoded).
fn row_digits(row: u64) -> RowDigits {
    let mut digits = [b'0'; 20];
    let mut v = row;
    let mut i = digits.len();
    while v >= 10 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i] = TWO_DIGITS[d];
        digits[i + 1] = TWO_DIGITS[d + 1];
    }
    if v > 0 {
        i -= 1;
        digits[i] = b'0' + v as u8;
    }
    RowDigits {
        digits,
        from: i.min(digits.len() - 12),
    }
}

struct RowDigits {
    digits: [u8; 20],
    from: usize,
}

impl RowDigits {
    fn as_slice(&self) -> &[u8] {
        &self.digits[self.from..]
    }
}
