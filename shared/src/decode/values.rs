//! DMS's CSV value text -> typed Arrow values.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, Int8Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::Decimal128Type;

use crate::config::Column;
use crate::types::{ColumnType, UTC};

/// Parses `yyyy-MM-dd HH:mm:ss[.f…]` (0 to 9 fractional digits, `T` also accepted) into
/// microseconds since the epoch, treating the wall-clock time as UTC. Extra digits are truncated.
pub fn parse_timestamp_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || (b[10] != b' ' && b[10] != b'T') {
        return None;
    }
    let days = parse_date_days(&s[..10])?;
    let two = |i: usize| -> Option<i64> {
        let (x, y) = (b.get(i)?, b.get(i + 1)?);
        (x.is_ascii_digit() && y.is_ascii_digit()).then(|| ((x - b'0') * 10 + (y - b'0')) as i64)
    };
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, m, sec) = (two(11)?, two(14)?, two(17)?);
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let mut micros = 0i64;
    let rest = &s[19..];
    if !rest.is_empty() {
        let frac = rest.strip_prefix('.')?;
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        for (i, c) in frac.bytes().take(6).enumerate() {
            micros += (c - b'0') as i64 * 10i64.pow(5 - i as u32);
        }
    }
    Some(days * 86_400_000_000 + (h * 3600 + m * 60 + sec) * 1_000_000 + micros)
}

/// `yyyy-MM-dd` -> days since 1970-01-01.
pub fn parse_date_days(s: &str) -> Option<i64> {
    let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((d - epoch).num_days())
}

/// `true/false`, `t/f`, `1/0`, `y/n`, `yes/no`, any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "y" | "yes" => Some(true),
        "false" | "f" | "0" | "n" | "no" => Some(false),
        _ => None,
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("\\x")).unwrap_or(s);
    hex::decode(s).ok()
}

/// Why a value's text cannot be stored in its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Not text of the type (names what was expected).
    Type(&'static str),
    /// A decimal with significant digits beyond the column's scale: storing it would drop them.
    Scale { digits: usize, scale: i8 },
}

impl std::fmt::Display for NotStored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStored::Type(what) => write!(f, "is not {what}"),
            NotStored::Scale { digits, scale } => write!(
                f,
                "has {digits} digits after the decimal point but the column's scale is {scale}, so digits would be lost; set the column's `scale` (and `precision`) to at least {digits} in the configuration"
            ),
        }
    }
}

/// The digits after the decimal point that a decimal's text needs (trailing zeros do not count;
/// an exponent shifts them). `None` when the text is not a plain decimal number.
fn decimal_digits(t: &str) -> Option<usize> {
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let frac = mantissa.split_once('.').map_or("", |(_, f)| f);
    let significant = frac.trim_end_matches('0').len() as i64;
    Some(usize::try_from(significant.saturating_sub(exp)).unwrap_or(0))
}

/// An Arrow builder for one column, fed with text.
#[derive(Debug)]
pub enum ColumnBuilder {
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Boolean(BooleanBuilder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    pub fn new(ty: ColumnType, capacity: usize) -> ColumnBuilder {
        match ty {
            ColumnType::Int8 => ColumnBuilder::Int8(Int8Builder::with_capacity(capacity)),
            ColumnType::Int16 => ColumnBuilder::Int16(Int16Builder::with_capacity(capacity)),
            ColumnType::Int32 => ColumnBuilder::Int32(Int32Builder::with_capacity(capacity)),
            ColumnType::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            ColumnType::Float32 => ColumnBuilder::Float32(Float32Builder::with_capacity(capacity)),
            ColumnType::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            ColumnType::Decimal(p, s) => ColumnBuilder::Decimal(Decimal128Builder::with_capacity(capacity), p, s),
            ColumnType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Utf8 => ColumnBuilder::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
            ColumnType::Binary => ColumnBuilder::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            ColumnType::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            ColumnType::Timestamp => ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity)),
        }
    }

    pub fn for_column(c: &Column, capacity: usize) -> ColumnBuilder {
        ColumnBuilder::new(c.ty, capacity)
    }

    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Int8(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b, ..) => b.append_null(),
            ColumnBuilder::Boolean(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
        }
    }

    /// Whether an empty field is a value (a string) rather than NULL when a null sentinel is set.
    pub fn takes_empty(&self) -> bool {
        matches!(self, ColumnBuilder::Utf8(_) | ColumnBuilder::Binary(_))
    }

    /// Appends the value `s`; `Err` says why it cannot be stored. Nothing is rounded: a decimal
    /// with more significant digits than the column's scale is refused, not cut.
    pub fn append_text(&mut self, s: &str) -> Result<(), NotStored> {
        fn int<T: std::str::FromStr>(s: &str) -> Result<T, NotStored> {
            let t = s.trim();
            let t = t.strip_prefix('+').unwrap_or(t);
            t.parse::<T>().map_err(|_| NotStored::Type("an integer in range"))
        }
        let not = NotStored::Type;
        match self {
            ColumnBuilder::Int8(b) => b.append_value(int(s)?),
            ColumnBuilder::Int16(b) => b.append_value(int(s)?),
            ColumnBuilder::Int32(b) => b.append_value(int(s)?),
            ColumnBuilder::Int64(b) => b.append_value(int(s)?),
            ColumnBuilder::Float32(b) => b.append_value(s.trim().parse::<f32>().map_err(|_| not("a number"))?),
            ColumnBuilder::Float64(b) => b.append_value(s.trim().parse::<f64>().map_err(|_| not("a number"))?),
            ColumnBuilder::Decimal(b, p, sc) => {
                let t = s.trim();
                let t = t.strip_prefix('+').unwrap_or(t);
                let wanted = "a decimal within the column's precision";
                // Checked first: the parser would silently cut digits beyond the scale.
                let digits = decimal_digits(t).ok_or(not(wanted))?;
                if digits > usize::try_from(*sc).unwrap_or(0) {
                    return Err(NotStored::Scale { digits, scale: *sc });
                }
                let v = arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(t, *p, *sc)
                    .map_err(|_| not(wanted))?;
                b.append_value(v)
            }
            ColumnBuilder::Boolean(b) => b.append_value(parse_bool(s).ok_or(not("a boolean (true/false, t/f, 1/0)"))?),
            ColumnBuilder::Utf8(b) => b.append_value(s),
            ColumnBuilder::Binary(b) => b.append_value(parse_hex(s).ok_or(not("hexadecimal bytes"))?),
            ColumnBuilder::Date(b) => {
                let d = parse_date_days(s).ok_or(not("a date yyyy-MM-dd"))?;
                b.append_value(i32::try_from(d).map_err(|_| not("a date in range"))?)
            }
            ColumnBuilder::Timestamp(b) => {
                b.append_value(parse_timestamp_micros(s).ok_or(not("a timestamp yyyy-MM-dd HH:mm:ss[.fffffffff]"))?)
            }
        }
        Ok(())
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Int8(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .unwrap_or_else(|_| arrow::array::Decimal128Array::from(Vec::<i128>::new())),
            ),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish().with_timezone(UTC)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    #[test]
    fn timestamps_with_0_to_9_fraction_digits() {
        let base = parse_timestamp_micros("2024-05-28 19:51:41").unwrap();
        assert_eq!(base, 1_716_925_901_000_000);
        assert_eq!(parse_timestamp_micros("2024-05-28 19:51:41.3"), Some(base + 300_000));
        assert_eq!(
            parse_timestamp_micros("2024-05-28 19:51:41.380000"),
            Some(base + 380_000)
        );
        assert_eq!(
            parse_timestamp_micros("2024-05-28T19:51:41.123456789"),
            Some(base + 123_456)
        );
        assert_eq!(parse_timestamp_micros("1969-12-31 23:59:59"), Some(-1_000_000));
        for bad in [
            "2024-05-28",
            "2024-05-28 19:51:41.",
            "2024-05-28 19:51:41.1234567890",
            "2024-05-28 25:00:00",
            "2024-02-30 00:00:00",
            "x",
        ] {
            assert_eq!(parse_timestamp_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn dms_number_and_bool_text() {
        let mut f = ColumnBuilder::new(ColumnType::Float64, 4);
        f.append_text("+5.0656000000000000e+05").unwrap();
        f.append_text("-1.1118453000000000e-01").unwrap();
        let a = f.finish();
        let a = a.as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(a.value(0), 506560.0);
        assert_eq!(a.value(1), -0.11118453);

        let mut d = ColumnBuilder::new(ColumnType::Decimal(10, 2), 4);
        d.append_text("24000.00").unwrap();
        d.append_text("-0.5").unwrap();
        assert!(d.append_text("abc").is_err());
        let a = d.finish();
        let a = a.as_primitive::<Decimal128Type>();
        assert_eq!((a.value(0), a.value(1)), (2_400_000, -50));
        assert_eq!(a.precision(), 10);

        for (t, want) in [("true", true), ("f", false), ("1", true), ("0", false), ("T", true)] {
            assert_eq!(parse_bool(t), Some(want));
        }
        assert_eq!(parse_bool("maybe"), None);

        // Digits beyond the scale are refused, never cut; trailing zeros and exponents count
        // by the digits they really need.
        let mut d = ColumnBuilder::new(ColumnType::Decimal(38, 10), 4);
        assert_eq!(
            d.append_text("0.00000000019"),
            Err(NotStored::Scale { digits: 11, scale: 10 })
        );
        assert_eq!(
            d.append_text("1.5e-10"),
            Err(NotStored::Scale { digits: 11, scale: 10 })
        );
        d.append_text("0.0000000001").unwrap();
        d.append_text("0.000000000100000").unwrap();
        d.append_text("1.25e3").unwrap();
        let a = d.finish();
        let a = a.as_primitive::<Decimal128Type>();
        assert_eq!((a.value(0), a.value(1), a.value(2)), (1, 1, 12_500_000_000_000));
        let mut whole = ColumnBuilder::new(ColumnType::Decimal(10, 0), 1);
        assert!(matches!(
            whole.append_text("7.5"),
            Err(NotStored::Scale { digits: 1, scale: 0 })
        ));
        whole.append_text("7.000").unwrap();

        let mut i = ColumnBuilder::new(ColumnType::Int32, 2);
        i.append_text(" 42").unwrap();
        assert!(i.append_text("99999999999").is_err());
        assert_eq!(i.finish().len(), 1);
    }
}
