//! Load generations and table floors: what a table reload (and a truncate) means for sequences.
//!
//! A DMS task writes a table's full load as LOAD files, then its changes as CDC files, named by
//! the time DMS wrote them. A reload (console "Reload table data", a restart with full load,
//! `TargetTablePrepMode` DROP_AND_CREATE or TRUNCATE_BEFORE_LOAD) writes a new snapshot as LOAD
//! files again, usually under the same names, and CDC goes on after it. DMS writes no CDC file
//! for a table while its full load runs: the changes of that time are cached and written after
//! the load. So a LOAD object written after one of its table's CDC files belongs to a reload,
//! and the newest CDC file written before it (`C`) divides the table's history:
//!
//! - every change in `C` and before it is older than the new snapshot;
//! - every change written after the load is at least as new as the snapshot's rows.
//!
//! The reload's rows therefore get sequences just above `C`'s (the generation's *anchor*), so
//! they replace older values and yield to later changes, in any delivery order. Rows the new
//! snapshot lacks (deleted at the source while DMS was not capturing) are removed by raising the
//! table's *floor* to the anchor once the load is over: every row, and every change arriving
//! later, sequenced below the floor is gone. A truncate raises the floor the same way, to the
//! time of the removal.
//!
//! Evidence of time is only taken from CDC objects whose upload time (LastModified) agrees with
//! the time in their name: files copied into the bucket later (a replay, a test fixture) carry
//! no information about when DMS wrote them, and must never turn a first load into a reload.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

/// What raised (or will raise) a table's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FloorKind {
    /// A reload's snapshot: the floor rises once its load is over.
    Reload,
    /// A truncate (or drop) at the source: the floor rises at once.
    Truncate,
}

impl FloorKind {
    fn as_str(self) -> &'static str {
        match self {
            FloorKind::Reload => "reload",
            FloorKind::Truncate => "truncate",
        }
    }
}

/// How a table's changes are sequenced, which decides how an anchor is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqKind {
    /// `1F<18 digits of the file name's UTC time>:<row>`.
    FileName,
    /// `1S<35 digits of AR_H_CHANGE_SEQ>`, whose first 16 digits are the commit's UTC time.
    ChangeSeq,
}

/// A point in a table's history: every change sequenced below it is older, every change above
/// it newer. Text order is the order of [`crate::changes::Sequence`] strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Anchor(String);

/// Characters that follow a time in an anchor: above every digit and `:`, so the anchor sorts
/// after every change of its own instant and below every later instant.
const AFTER_TIME: char = ';';

impl Anchor {
    /// The anchor just after `utc_digits` (at least 16 digits `YYYYMMDDHHMMSShh…` of UTC time),
    /// or, for [`SeqKind::ChangeSeq`] given all 35 digits of an `AR_H_CHANGE_SEQ`, just after
    /// that change.
    pub fn after(kind: SeqKind, utc_digits: &str) -> Option<Anchor> {
        if utc_digits.len() < 16 || !utc_digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(match kind {
            SeqKind::FileName => Anchor(format!(
                "1F{:0<18}{AFTER_TIME}",
                &utc_digits[..utc_digits.len().min(18)]
            )),
            SeqKind::ChangeSeq if utc_digits.len() == 35 => Anchor(format!("1S{utc_digits}{AFTER_TIME}")),
            SeqKind::ChangeSeq => Anchor(format!("1S{}{AFTER_TIME}", &utc_digits[..16])),
        })
    }

    /// The anchor at an instant (a removal's time).
    pub fn at(kind: SeqKind, t: DateTime<Utc>) -> Anchor {
        let digits = format!("{}{:04}", t.format("%Y%m%d%H%M%S"), t.timestamp_subsec_micros() / 100);
        // Eighteen digits of time always fit either form.
        Anchor::after(kind, &digits).unwrap_or_else(|| Anchor(String::from("1")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text full-load rows of this generation's file `folder/stem` start with, before their
    /// row number: above the anchor, below every later change.
    pub fn load_prefix(&self, folder: Option<&str>, stem: &str) -> String {
        match folder {
            Some(f) => format!("{}L{f}/{stem}:", self.0),
            None => format!("{}L{stem}:", self.0),
        }
    }

    /// Whether `seq` is a change written after this generation's load (not one of its own rows):
    /// DMS writes those only once the load is over.
    pub fn is_later_change(&self, seq: &str) -> bool {
        seq > self.0.as_str() && !seq.strip_prefix(self.0.as_str()).is_some_and(|r| r.starts_with('L'))
    }

    /// The marker file name recording this anchor in a table's staging folder, e.g.
    /// `reload-F202405281951413800.floor`.
    pub fn marker_name(&self, kind: FloorKind) -> String {
        let (letter, digits) = self.parts();
        format!("{}-{letter}{digits}.floor", kind.as_str())
    }

    /// The kind and anchor a marker file name records.
    pub fn from_marker_name(name: &str) -> Option<(FloorKind, Anchor)> {
        let stem = name.strip_suffix(".floor")?;
        let (kind, rest) = match stem.split_once('-')? {
            ("reload", r) => (FloorKind::Reload, r),
            ("truncate", r) => (FloorKind::Truncate, r),
            _ => return None,
        };
        let mut chars = rest.chars();
        let seq = match chars.next()? {
            'F' => SeqKind::FileName,
            'S' => SeqKind::ChangeSeq,
            _ => return None,
        };
        let anchor = Anchor::after(seq, chars.as_str())?;
        // Only names this module writes: the round trip must be exact.
        (anchor.parts().1 == chars.as_str()).then_some((kind, anchor))
    }

    /// An anchor read back from a table property.
    pub fn parse(text: &str) -> Option<Anchor> {
        let (seq, rest) = match text.get(..2)? {
            "1F" => (SeqKind::FileName, &text[2..]),
            "1S" => (SeqKind::ChangeSeq, &text[2..]),
            _ => return None,
        };
        let a = Anchor::after(seq, rest.strip_suffix(AFTER_TIME)?)?;
        (a.0 == text).then_some(a)
    }

    /// The first 16 digits (`YYYYMMDDHHMMSShh`, UTC) of the instant the anchor is after.
    pub fn time_digits(&self) -> &str {
        let digits = self.parts().1;
        digits.get(..16).unwrap_or(digits)
    }

    fn parts(&self) -> (char, &str) {
        let letter = if self.0.starts_with("1S") { 'S' } else { 'F' };
        (letter, self.0[2..].trim_end_matches(AFTER_TIME))
    }
}

/// A CDC object of the table, as a listing shows it.
#[derive(Debug, Clone)]
pub struct ListedCdc {
    /// Its key.
    pub key: String,
    /// The UTC time of its name: 18 digits `YYYYMMDDHHMMSSmmmm`.
    pub name_utc: String,
    pub last_modified: DateTime<Utc>,
}

/// The anchor of the generation a LOAD object written at `load_written` belongs to, from the
/// CDC objects of its table: `None` for the first load (no CDC file written before it whose
/// upload time agrees with its name within `max_skew`).
pub fn reload_anchor(
    kind: SeqKind,
    load_written: DateTime<Utc>,
    cdc: &[ListedCdc],
    max_skew: chrono::Duration,
) -> Option<Anchor> {
    newest_before(load_written, cdc, max_skew).and_then(|c| Anchor::after(kind, &c.name_utc))
}

/// The newest CDC object written before `load_written` whose upload time agrees with its name:
/// the table's last file before a reload. For a table ordered by `AR_H_CHANGE_SEQ`, that file's
/// newest change is the exact anchor (its name only tells when DMS named the file).
pub fn newest_before(load_written: DateTime<Utc>, cdc: &[ListedCdc], max_skew: chrono::Duration) -> Option<&ListedCdc> {
    cdc.iter()
        .filter(|c| c.last_modified < load_written)
        .filter(|c| {
            name_instant(&c.name_utc).is_some_and(|named| {
                // A file's upload completes after DMS names it, and not long after.
                c.last_modified >= named - chrono::Duration::seconds(5) && c.last_modified - named <= max_skew
            })
        })
        .max_by(|a, b| a.name_utc.cmp(&b.name_utc))
}

/// The instant of 18 name digits.
fn name_instant(digits: &str) -> Option<DateTime<Utc>> {
    if digits.len() < 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let civil = NaiveDateTime::parse_from_str(&digits[..14], "%Y%m%d%H%M%S").ok()?;
    let frac: String = digits[14..].chars().take(6).collect();
    let micros = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10i64.pow(6 - frac.len() as u32)
    };
    Some(Utc.from_utc_datetime(&civil) + chrono::Duration::microseconds(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cdc(name: &str, lm: &str) -> ListedCdc {
        ListedCdc {
            key: format!("app/t/{name}.csv"),
            name_utc: name.into(),
            last_modified: at(lm),
        }
    }

    #[test]
    fn anchors_sort_between_the_changes_before_and_after_them() {
        let a = Anchor::after(SeqKind::FileName, "202405281951413800").unwrap();
        let before = "1F202405281951413800:000000000007";
        let after = "1F202405281951413801:000000000000";
        let row = format!("{}000000000003", a.load_prefix(Some("p1"), "LOAD00000001"));
        assert!(before < a.as_str() && a.as_str() < row.as_str() && row.as_str() < after);
        assert!("0LLOAD00000001:000000000001" < a.as_str());
        assert!(a.is_later_change(after) && !a.is_later_change(&row) && !a.is_later_change(before));

        let s = Anchor::after(SeqKind::ChangeSeq, "202405281951413800").unwrap();
        assert_eq!(s.as_str(), "1S2024052819514138;");
        assert!("1S20240528195141380000000000000000061" < s.as_str());
        assert!(s.as_str() < "1S20240528195141390000000000000000001");
    }

    #[test]
    fn marker_names_and_properties_round_trip() {
        for kind in [SeqKind::FileName, SeqKind::ChangeSeq] {
            let a = Anchor::after(kind, "202405281951413800").unwrap();
            for f in [FloorKind::Reload, FloorKind::Truncate] {
                assert_eq!(Anchor::from_marker_name(&a.marker_name(f)), Some((f, a.clone())));
            }
            assert_eq!(Anchor::parse(a.as_str()), Some(a));
        }
        let exact = Anchor::after(SeqKind::ChangeSeq, "20240528195141380000000000000000061").unwrap();
        assert_eq!(exact.as_str(), "1S20240528195141380000000000000000061;");
        assert_eq!(
            Anchor::from_marker_name(&exact.marker_name(FloorKind::Reload)),
            Some((FloorKind::Reload, exact.clone()))
        );
        assert_eq!(Anchor::parse(exact.as_str()), Some(exact.clone()));
        assert!("1S20240528195141380000000000000000061" < exact.as_str());
        assert!(exact.as_str() < "1S20240528195141380000000000000000062");
        assert_eq!(Anchor::from_marker_name("reload-X2024.floor"), None);
        assert_eq!(Anchor::from_marker_name("0123abcd.parquet"), None);
        assert_eq!(Anchor::parse("0LLOAD00000001:"), None);
    }

    #[test]
    fn a_load_written_after_a_cdc_file_is_a_reload_anchored_at_the_newest_one() {
        let skew = chrono::Duration::hours(1);
        let listed = [
            cdc("202405281000000000", "2024-05-28T10:00:30Z"),
            cdc("202405281100000000", "2024-05-28T11:00:40Z"),
            // Written after the load: not evidence for it.
            cdc("202405281300000000", "2024-05-28T13:00:10Z"),
        ];
        let a = reload_anchor(SeqKind::FileName, at("2024-05-28T12:00:00Z"), &listed, skew).unwrap();
        assert_eq!(a, Anchor::after(SeqKind::FileName, "202405281100000000").unwrap());
        // The first load: written before every CDC file.
        assert_eq!(
            reload_anchor(SeqKind::FileName, at("2024-05-28T09:00:00Z"), &listed, skew),
            None
        );
    }

    #[test]
    fn files_whose_upload_time_disagrees_with_their_name_are_no_evidence() {
        let skew = chrono::Duration::hours(1);
        // Copied into the bucket two years after DMS named them (a replay, a fixture).
        let replayed = [cdc("202405281000000000", "2026-12-01T00:00:00Z")];
        assert_eq!(
            reload_anchor(SeqKind::FileName, at("2026-12-01T00:00:05Z"), &replayed, skew),
            None
        );
        // Uploaded before the time in its name: not DMS's clock either.
        let early = [cdc("202405281000000000", "2024-05-28T09:00:00Z")];
        assert_eq!(
            reload_anchor(SeqKind::FileName, at("2024-05-28T12:00:00Z"), &early, skew),
            None
        );
    }
}
