//! CSV records read within the configured limits. Each limit is enforced as the bytes arrive, so
//! a file crafted to inflate into one giant field, one giant record or endless text is refused
//! after at most the limit's worth of memory, never after buffering all of it.
//!
//! Fields are parsed by `csv_core` one at a time into a buffer this module owns, which is what
//! lets it (a) stop a field or record at the limit and (b) tell a quoted empty field (`""`, an
//! empty string) from an unquoted one (nothing between the delimiters, NULL in DMS output).

use std::io::BufRead;

use csv_core::{ReadFieldResult, Reader, ReaderBuilder};

use crate::error::{BadInputKind, InputProblem};

/// Most fields one record may have. Far above any source DMS reads (SQL Server's wide tables
/// stop at 30,000 columns); it bounds the per-field bookkeeping of a record of empty fields.
pub(super) const MAX_FIELDS: usize = 100_000;

/// The limits one file is read under, with the configuration paths that set them (named in
/// reports so the user knows what to raise).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadLimits {
    /// Longest value (after unquoting) in bytes: `limits.max_field_bytes`.
    pub field: usize,
    /// Longest record as written in the file, in bytes: `limits.max_record_bytes`.
    pub record: usize,
    /// Most CSV text in the file, in bytes, after gzip inflation: `limits.max_inflated_bytes`.
    pub text: u64,
}

/// One record: its fields' bytes back to back, where each ends, and which empty ones were
/// quoted.
#[derive(Debug, Default)]
pub(super) struct Record {
    bytes: Vec<u8>,
    used: usize,
    ends: Vec<usize>,
    quoted_empty: Vec<bool>,
    line: u64,
}

impl Record {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.bytes.get(start..end)
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// All fields' bytes, back to back.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.used]
    }

    /// Whether field `i` was written as `""`: an empty string, not a missing value.
    pub fn is_quoted_empty(&self, i: usize) -> bool {
        self.quoted_empty.get(i).copied().unwrap_or(false)
    }

    /// The line the record starts on (1-based).
    pub fn line(&self) -> u64 {
        self.line
    }

    fn clear(&mut self) {
        self.used = 0;
        self.ends.clear();
        self.quoted_empty.clear();
    }
}

/// Reads records from CSV text (already inflated) under [`ReadLimits`].
pub(super) struct RecordReader<R> {
    input: R,
    core: Reader,
    quote: u8,
    limits: ReadLimits,
    /// CSV text consumed so far.
    text: u64,
    gzip: bool,
    done: bool,
}

/// The first allocation for a record's bytes; doubled as needed up to the record limit.
const INITIAL_RECORD_BYTES: usize = 4096;

impl<R: BufRead> RecordReader<R> {
    pub fn new(input: R, delimiter: u8, limits: ReadLimits, gzip: bool) -> RecordReader<R> {
        let quote = b'"';
        let core = ReaderBuilder::new()
            .delimiter(delimiter)
            .quote(quote)
            .double_quote(true)
            .build();
        RecordReader {
            input,
            core,
            quote,
            limits,
            text: 0,
            gzip,
            done: false,
        }
    }

    /// Reads the next record into `rec`; `false` at the end of the file.
    pub fn read(&mut self, rec: &mut Record) -> Result<bool, InputProblem> {
        rec.clear();
        if self.done {
            return Ok(false);
        }
        rec.line = self.core.line();
        let mut field_start = 0usize;
        let mut quote_seen = false;
        let mut raw = 0usize;
        loop {
            if rec.used == rec.bytes.len() {
                self.grow(rec)?;
            }
            let gzip = self.gzip;
            let input = self.input.fill_buf().map_err(|e| io_error(e, gzip))?;
            let (res, nin, nout) = self.core.read_field(input, &mut rec.bytes[rec.used..]);
            // Only an empty field needs to know whether it was quoted, and only its own few
            // bytes (delimiter, terminator, the quotes) are searched.
            if rec.used + nout == field_start && !quote_seen {
                quote_seen = input[..nin].contains(&self.quote);
            }
            self.input.consume(nin);
            rec.used += nout;
            raw += nin;
            self.text += nin as u64;
            if self.text > self.limits.text {
                return Err(InputProblem::new(
                    BadInputKind::TooLarge,
                    format!(
                        "the file holds more than {} bytes of CSV text{}, the limits.max_inflated_bytes setting",
                        self.limits.text,
                        if self.gzip { " once inflated" } else { "" }
                    ),
                ));
            }
            if rec.used - field_start > self.limits.field {
                return Err(InputProblem::new(
                    BadInputKind::TooLarge,
                    format!(
                        "line {}: field {} is longer than {} bytes, the limits.max_field_bytes setting",
                        rec.line,
                        rec.ends.len() + 1,
                        self.limits.field
                    ),
                ));
            }
            if raw > self.limits.record {
                return Err(InputProblem::new(
                    BadInputKind::TooLarge,
                    format!(
                        "line {}: the record is longer than {} bytes (after {} fields), the limits.max_record_bytes setting; a quote left open also makes one record of many lines",
                        rec.line,
                        self.limits.record,
                        rec.ends.len()
                    ),
                ));
            }
            match res {
                ReadFieldResult::InputEmpty | ReadFieldResult::OutputFull => {}
                ReadFieldResult::Field { record_end } => {
                    if rec.ends.len() == MAX_FIELDS {
                        return Err(InputProblem::new(
                            BadInputKind::TooLarge,
                            format!(
                                "line {}: the record has more than {MAX_FIELDS} fields, more columns than any source database allows",
                                rec.line
                            ),
                        ));
                    }
                    rec.quoted_empty.push(rec.used == field_start && quote_seen);
                    rec.ends.push(rec.used);
                    field_start = rec.used;
                    quote_seen = false;
                    if record_end {
                        return Ok(true);
                    }
                }
                ReadFieldResult::End => {
                    self.done = true;
                    return Ok(false);
                }
            }
        }
    }

    /// Makes room for more field bytes, never beyond what the record limit allows (plus one
    /// byte, so going over the limit is seen).
    fn grow(&self, rec: &mut Record) -> Result<(), InputProblem> {
        let cap = self.limits.record.saturating_add(1);
        let want = (rec.bytes.len().saturating_mul(2)).clamp(INITIAL_RECORD_BYTES, cap.max(INITIAL_RECORD_BYTES));
        if want <= rec.bytes.len() {
            return Err(InputProblem::new(
                BadInputKind::TooLarge,
                format!(
                    "line {}: the record is longer than {} bytes, the limits.max_record_bytes setting",
                    rec.line, self.limits.record
                ),
            ));
        }
        rec.bytes.resize(want, 0);
        Ok(())
    }
}

fn io_error(e: std::io::Error, gzip: bool) -> InputProblem {
    if gzip {
        InputProblem::new(
            BadInputKind::CorruptFile,
            format!("the gzip stream is truncated or damaged: {e}"),
        )
    } else {
        InputProblem::new(BadInputKind::CorruptFile, format!("cannot read the file: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ReadLimits {
        ReadLimits {
            field: 16,
            record: 64,
            text: 1 << 20,
        }
    }

    fn records(text: &[u8], limits: ReadLimits) -> Result<Vec<Vec<(String, bool)>>, InputProblem> {
        let mut r = RecordReader::new(std::io::BufReader::with_capacity(7, text), b',', limits, false);
        let mut rec = Record::default();
        let mut out = Vec::new();
        while r.read(&mut rec)? {
            out.push(
                (0..rec.len())
                    .map(|i| {
                        (
                            String::from_utf8_lossy(rec.get(i).unwrap_or_default()).into_owned(),
                            rec.is_quoted_empty(i),
                        )
                    })
                    .collect(),
            );
        }
        Ok(out)
    }

    fn f(v: &str, quoted_empty: bool) -> (String, bool) {
        (v.to_string(), quoted_empty)
    }

    #[test]
    fn quoted_empty_fields_are_told_from_missing_ones() {
        // Tiny input buffer (7 bytes): fields and their quotes straddle refills.
        let got = records(b"a,,\"\",\"x\"\n\"\",,\"a,\"\"b\"\"\"\r\n,\"\"\n\"\"", limits()).unwrap();
        assert_eq!(
            got,
            vec![
                vec![f("a", false), f("", false), f("", true), f("x", false)],
                vec![f("", true), f("", false), f("a,\"b\"", false)],
                vec![f("", false), f("", true)],
                vec![f("", true)],
            ]
        );
    }

    #[test]
    fn lines_are_those_records_start_on() {
        let mut r = RecordReader::new(&b"a\n\"b\nc\"\nd\n"[..], b',', limits(), false);
        let mut rec = Record::default();
        let mut lines = Vec::new();
        while r.read(&mut rec).unwrap() {
            lines.push(rec.line());
        }
        assert_eq!(lines, vec![1, 2, 4]);
    }

    #[test]
    fn each_limit_stops_reading_and_names_its_setting() {
        let field = records(&[b'x'; 17], limits()).unwrap_err();
        assert_eq!(field.kind, BadInputKind::TooLarge);
        assert!(field.reason.contains("limits.max_field_bytes"), "{}", field.reason);
        // Many small fields: no field is long, the record is.
        let record = records("ab,".repeat(40).as_bytes(), limits()).unwrap_err();
        assert!(record.reason.contains("limits.max_record_bytes"), "{}", record.reason);
        // An open quote swallowing the rest of the file is one long record.
        let open = records(
            b"\"abc\nd\ne\nf\ng\nh\ni\nj\nk\nl\nm\nn\no\np\nq\nr\ns\nt\nu\nv\nw\nx\ny\nz\naa\nbb\ncc\ndd\nee\nff\n",
            limits(),
        )
        .unwrap_err();
        assert!(open.reason.contains("max_field_bytes") || open.reason.contains("max_record_bytes"));
        // Within the per-record limits, the file's text is too long.
        let text = records("a,b\n".repeat(100).as_bytes(), ReadLimits { text: 200, ..limits() }).unwrap_err();
        assert!(text.reason.contains("limits.max_inflated_bytes"), "{}", text.reason);
        assert_eq!(
            records("a,b\n".repeat(50).as_bytes(), ReadLimits { text: 200, ..limits() })
                .unwrap()
                .len(),
            50
        );
    }

    #[test]
    fn memory_stays_within_the_record_limit() {
        // A field far beyond the limit: the buffer never grows past the limit.
        let text = vec![b'x'; 1 << 20];
        let mut r = RecordReader::new(&text[..], b',', limits(), false);
        let mut rec = Record::default();
        assert!(r.read(&mut rec).is_err());
        assert!(rec.bytes.len() <= INITIAL_RECORD_BYTES.max(limits().record + 1));
    }
}
