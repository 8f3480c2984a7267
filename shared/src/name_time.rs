//! CDC file names written in a local time zone (DMS `DatePartitionTimezone`), brought back to
//! UTC so that they order as the changes happened.
//!
//! DMS names each CDC file by the time it opens it, converted to the zone. Outside the hour a
//! fall-back transition repeats, the local time names one instant. Inside it, a name stands for
//! two instants an hour apart, and the name alone cannot say which: an older file named 01:50
//! (summer time) can follow a newer one named 01:10 (winter time). The object's LastModified
//! (set when its upload completes, shortly after DMS named it) decides: the candidate at or
//! before it and nearest to it. Without one, the earlier candidate is taken and a warning logged.
//! A sequence column (`AR_H_CHANGE_SEQ`) makes all of this moot for ordering.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Why a file name's time could not be read as a UTC time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameTimeError {
    #[error("`{0}` is not a CDC file name time")]
    NotATime(String),
    #[error(
        "the name time {civil} does not exist in {zone} (it falls in the hour skipped when the clocks go forward), so DMS cannot have named the file in that zone; check date_partitioning.timezone against the endpoint's DatePartitionTimezone"
    )]
    Skipped { civil: NaiveDateTime, zone: Tz },
}

/// The 18 name digits `YYYYMMDDHHMMSSmmmm` of a CDC file named in `zone`, as the UTC digits of
/// the instant DMS named it at. `Err` says why the name cannot be a DMS name in that zone.
pub fn to_utc_digits(digits: &str, zone: Tz, last_modified: Option<DateTime<Utc>>) -> Result<String, NameTimeError> {
    let (civil, rest) = parse(digits).ok_or_else(|| NameTimeError::NotATime(digits.to_string()))?;
    let instant = match zone.from_local_datetime(&civil) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
            let (early, late) = if a <= b { (a, b) } else { (b, a) };
            match last_modified {
                // The later candidate only when the object was written after it: a file's
                // name time is never after its upload.
                Some(lm) if late <= lm => late,
                Some(_) => early,
                None => {
                    tracing::warn!(
                        name_time = %civil,
                        zone = %zone,
                        "a CDC file named inside the repeated hour of a fall-back transition, without a LastModified time: taking the earlier of its two instants"
                    );
                    early
                }
            }
        }
        LocalResult::None => return Err(NameTimeError::Skipped { civil, zone }),
    };
    Ok(format!("{}{rest}", instant.format("%Y%m%d%H%M%S")))
}

/// The civil time of the first 14 digits, and the sub-second digits after them (kept as they are:
/// no zone has a sub-second offset).
fn parse(digits: &str) -> Option<(NaiveDateTime, &str)> {
    if digits.len() < 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let civil = NaiveDateTime::parse_from_str(&digits[..14], "%Y%m%d%H%M%S").ok()?;
    Some((civil, &digits[14..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn an_ordinary_local_name_is_its_utc_instant() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap_or(Tz::UTC);
        // Summer: UTC+2; winter: UTC+1.
        assert_eq!(
            to_utc_digits("202407011230150120", berlin, None).unwrap(),
            "202407011030150120"
        );
        assert_eq!(
            to_utc_digits("202401011230150120", berlin, None).unwrap(),
            "202401011130150120"
        );
        // Across midnight and a year.
        assert_eq!(
            to_utc_digits("202501010030000000", berlin, None).unwrap(),
            "202412312330000000"
        );
    }

    #[test]
    fn inside_the_repeated_hour_last_modified_decides() {
        let ny: Tz = "America/New_York".parse().unwrap_or(Tz::UTC);
        // 2024-11-03 01:00-02:00 happens twice in New York: 05:xx UTC (EDT), then 06:xx UTC (EST).
        let older = "202411030150000000"; // named at 05:50 UTC
        let newer = "202411030110000000"; // named at 06:10 UTC
        let a = to_utc_digits(older, ny, Some(utc("2024-11-03T05:50:40Z"))).unwrap();
        let b = to_utc_digits(newer, ny, Some(utc("2024-11-03T06:10:35Z"))).unwrap();
        assert_eq!(a, "202411030550000000");
        assert_eq!(b, "202411030610000000");
        assert!(a < b, "the older file sorts first although its local name sorts last");
        // Without LastModified, the earlier instant.
        assert_eq!(to_utc_digits(newer, ny, None).unwrap(), "202411030510000000");
    }

    #[test]
    fn a_name_in_the_skipped_hour_is_refused_with_the_setting_named() {
        let ny: Tz = "America/New_York".parse().unwrap_or(Tz::UTC);
        let e = to_utc_digits("202403100230000000", ny, None).unwrap_err();
        assert!(matches!(e, NameTimeError::Skipped { .. }), "{e}");
        assert!(e.to_string().contains("date_partitioning.timezone"), "{e}");
        assert!(matches!(
            to_utc_digits("2024", ny, None),
            Err(NameTimeError::NotATime(_))
        ));
    }
}
