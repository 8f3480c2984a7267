//! Column types: the DMS type names users configure, the Arrow types Delta can store, and the
//! widening of the types Delta lacks (unsigned integers, TIME).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::compute::kernels::cast::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::error::ArrowError;

/// The time zone Delta's `timestamp` type carries. Wall-clock DATETIME values are stored as if UTC.
pub const UTC: &str = "UTC";

/// A column type the decoder can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal(u8, i8),
    Boolean,
    Utf8,
    Binary,
    Date,
    Timestamp,
}

/// Why a configured type was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("`{0}`: expected DECIMAL(precision,scale)")]
    DecimalArguments(String),
    #[error(
        "unknown type `{0}`; use a DMS type name (INT1, INT2, INT4, INT8, UINT1..UINT8, REAL4, REAL8, NUMERIC, BOOLEAN, STRING, WSTRING, CLOB, BLOB, DATE, TIME, DATETIME) or DECIMAL(p,s)"
    )]
    Unknown(String),
    #[error("decimal precision must be 1..=38 and scale 0..=precision, got {precision:?},{scale:?}")]
    Decimal { precision: Option<u8>, scale: Option<i8> },
}

impl ColumnType {
    /// Reads a configured type: DMS names (`INT4`, `UINT8`, `NUMERIC`, `REAL8`, `DATETIME`, …),
    /// or `DECIMAL(p,s)`.
    pub fn from_config(name: &str, precision: Option<u8>, scale: Option<i8>) -> Result<ColumnType, TypeError> {
        let upper = name.trim().to_ascii_uppercase();
        if let Some(args) = upper
            .strip_prefix("DECIMAL(")
            .or_else(|| upper.strip_prefix("NUMERIC("))
            .and_then(|r| r.strip_suffix(')'))
        {
            let mut it = args.split(',').map(|s| s.trim().parse::<i64>());
            let p = it.next().and_then(|r| r.ok());
            let s = it.next().and_then(|r| r.ok()).unwrap_or(0);
            return match p {
                Some(p) => decimal(u8::try_from(p).ok(), i8::try_from(s).ok()),
                None => Err(TypeError::DecimalArguments(name.to_string())),
            };
        }
        let ty = match upper.as_str() {
            "INT1" | "TINYINT" | "BYTE" => ColumnType::Int8,
            "INT2" | "SMALLINT" | "UINT1" => ColumnType::Int16,
            "INT4" | "INT" | "INTEGER" | "UINT2" => ColumnType::Int32,
            "INT8" | "BIGINT" | "UINT4" => ColumnType::Int64,
            "UINT8" => ColumnType::Decimal(20, 0),
            "REAL4" | "FLOAT" => ColumnType::Float32,
            "REAL8" | "DOUBLE" => ColumnType::Float64,
            "NUMERIC" | "DECIMAL" => return decimal(precision.or(Some(38)), scale.or(Some(0))),
            "BOOLEAN" | "BOOL" => ColumnType::Boolean,
            "STRING" | "WSTRING" | "CLOB" | "NCLOB" | "TIME" | "VARCHAR" | "TEXT" => ColumnType::Utf8,
            "BLOB" | "BYTES" | "BINARY" => ColumnType::Binary,
            "DATE" => ColumnType::Date,
            "DATETIME" | "TIMESTAMP" => ColumnType::Timestamp,
            _ => return Err(TypeError::Unknown(name.to_string())),
        };
        Ok(ty)
    }

    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Int8 => DataType::Int8,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Decimal(p, s) => DataType::Decimal128(p, s),
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Binary => DataType::Binary,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        }
    }
}

fn decimal(p: Option<u8>, s: Option<i8>) -> Result<ColumnType, TypeError> {
    match (p, s) {
        // PostgreSQL numerics beyond Delta's 38 digits arrive as text; keep them as text.
        (Some(p), Some(_)) if p > 38 => Ok(ColumnType::Utf8),
        (Some(p), Some(s)) if p >= 1 && s >= 0 && (s as i16) <= p as i16 => Ok(ColumnType::Decimal(p, s)),
        _ => Err(TypeError::Decimal { precision: p, scale: s }),
    }
}

/// The type Delta stores for an Arrow type found in a DMS Parquet file, or `None` when the type
/// cannot be stored at all.
pub fn delta_type(dt: &DataType) -> Option<DataType> {
    Some(match dt {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => dt.clone(),
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Decimal128(20, 0),
        DataType::Float16 | DataType::Float32 => DataType::Float32,
        DataType::Float64 => DataType::Float64,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            DataType::Decimal128(*p, *s)
        }
        DataType::Decimal256(p, s) if *p <= 38 => DataType::Decimal128(*p, *s),
        DataType::Decimal256(..) => DataType::Utf8,
        DataType::Boolean => DataType::Boolean,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            DataType::Binary
        }
        DataType::Date32 | DataType::Date64 => DataType::Date32,
        DataType::Time32(_) | DataType::Time64(_) => DataType::Utf8,
        DataType::Timestamp(..) => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        DataType::Null => DataType::Utf8,
        DataType::Dictionary(_, v) => return delta_type(v),
        _ => return None,
    })
}

/// Converts a column to its Delta type. Timestamps without a zone are wall-clock values: they are
/// kept as the same digits, labelled UTC.
pub fn to_delta(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    let source = match array.data_type() {
        DataType::Dictionary(_, v) => cast_with_options(array, v, &strict())?,
        _ => array.clone(),
    };
    let out = match (source.data_type(), target) {
        (DataType::Timestamp(unit, None), DataType::Timestamp(..)) => {
            // Wall-clock values are kept as if UTC: a new label on the same numbers, not a cast
            // (which would look up a zone offset for every value).
            let labelled = arrow::array::make_array(
                source
                    .to_data()
                    .into_builder()
                    .data_type(DataType::Timestamp(*unit, Some(UTC.into())))
                    .build()?,
            );
            if labelled.data_type() == target {
                labelled
            } else {
                cast_with_options(&labelled, target, &strict())?
            }
        }
        (DataType::Time32(_) | DataType::Time64(_), DataType::Utf8) => time_to_text(&source)?,
        _ => cast_with_options(&source, target, &strict())?,
    };
    Ok(out)
}

fn strict() -> CastOptions<'static> {
    CastOptions {
        safe: false,
        ..Default::default()
    }
}

/// TIME as `HH:MM:SS[.ffffff]`, the text DMS's CSV output uses.
fn time_to_text(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let micros = cast_with_options(array, &DataType::Time64(TimeUnit::Microsecond), &strict())?;
    let micros = micros.as_primitive::<arrow::datatypes::Time64MicrosecondType>();
    let out: StringArray = micros
        .iter()
        .map(|v| {
            v.map(|us| {
                let secs = us.div_euclid(1_000_000);
                let frac = us.rem_euclid(1_000_000);
                let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
                if frac == 0 {
                    format!("{h:02}:{m:02}:{s:02}")
                } else {
                    format!("{h:02}:{m:02}:{s:02}.{frac:06}")
                }
            })
        })
        .collect();
    Ok(Arc::new(out))
}

/// Whether a column of type `from` in the table can take values of type `to` from a new file
/// without losing information (Delta's type widening, plus the widenings DMS needs).
pub fn widening(from: &DataType, to: &DataType) -> Widening {
    if from == to {
        Widening::Same
    } else if widens(from, to) {
        Widening::Widen
    } else if widens(to, from) {
        // A narrower value in a wider column: the file's values are cast up to the table's type.
        Widening::CastUp
    } else {
        Widening::Incompatible
    }
}

fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (Float32, Float64) => true,
        (Int8 | Int16 | Int32, Float64) => true,
        (Date32, Timestamp(..)) => false,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => s2 >= s1 && (*p2 as i16 - *s2 as i16) >= (*p1 as i16 - *s1 as i16),
        (Int8 | Int16 | Int32 | Int64, Decimal128(p, s)) => {
            let digits = match from {
                Int8 => 3,
                Int16 => 5,
                Int32 => 10,
                _ => 20,
            };
            (*p as i16 - *s as i16) >= digits
        }
        _ => false,
    }
}

/// How a file's column type relates to the table's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Widening {
    Same,
    /// The table's column must be widened to the file's type.
    Widen,
    /// The file's values fit the table's wider type.
    CastUp,
    Incompatible,
}

/// A nullable field of a Delta type.
pub fn field(name: &str, dt: DataType) -> Field {
    Field::new(name, dt, true)
}

/// Maps a whole Parquet schema to Delta types, naming the first column that cannot be stored.
pub fn delta_schema(schema: &Schema) -> Result<Vec<(String, DataType)>, NotStorable> {
    schema
        .fields()
        .iter()
        .map(|f| match delta_type(f.data_type()) {
            Some(dt) => Ok((f.name().clone(), dt)),
            None => Err(NotStorable {
                column: f.name().clone(),
                data_type: f.data_type().clone(),
            }),
        })
        .collect()
}

/// A Parquet column whose type has no Delta counterpart.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column `{column}` has type {data_type} which Delta cannot store")]
pub struct NotStorable {
    pub column: String,
    pub data_type: DataType,
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Time32SecondArray, TimestampMillisecondArray, UInt64Array, UInt8Array};

    #[test]
    fn dms_type_names() {
        assert_eq!(ColumnType::from_config("int4", None, None), Ok(ColumnType::Int32));
        assert_eq!(
            ColumnType::from_config("UINT8", None, None),
            Ok(ColumnType::Decimal(20, 0))
        );
        assert_eq!(ColumnType::from_config("UINT4", None, None), Ok(ColumnType::Int64));
        assert_eq!(
            ColumnType::from_config("NUMERIC", Some(10), Some(2)),
            Ok(ColumnType::Decimal(10, 2))
        );
        assert_eq!(
            ColumnType::from_config("NUMERIC", Some(60), Some(2)),
            Ok(ColumnType::Utf8)
        );
        assert_eq!(
            ColumnType::from_config("decimal(12, 3)", None, None),
            Ok(ColumnType::Decimal(12, 3))
        );
        assert_eq!(ColumnType::from_config("TIME", None, None), Ok(ColumnType::Utf8));
        assert!(ColumnType::from_config("NUMERIC", Some(5), Some(9)).is_err());
        assert!(ColumnType::from_config("GEOMETRY", None, None).is_err());
    }

    #[test]
    fn parquet_types_widen_to_delta() {
        assert_eq!(delta_type(&DataType::UInt8), Some(DataType::Int16));
        assert_eq!(delta_type(&DataType::UInt16), Some(DataType::Int32));
        assert_eq!(delta_type(&DataType::UInt32), Some(DataType::Int64));
        assert_eq!(delta_type(&DataType::UInt64), Some(DataType::Decimal128(20, 0)));
        assert_eq!(
            delta_type(&DataType::Time64(TimeUnit::Microsecond)),
            Some(DataType::Utf8)
        );
        assert_eq!(
            delta_type(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            Some(DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())))
        );

        let u: ArrayRef = Arc::new(UInt64Array::from(vec![Some(u64::MAX), None]));
        let d = to_delta(&u, &DataType::Decimal128(20, 0)).unwrap();
        assert_eq!(
            d.as_primitive::<arrow::datatypes::Decimal128Type>().value(0),
            u64::MAX as i128
        );
        let u8s: ArrayRef = Arc::new(UInt8Array::from(vec![255]));
        assert_eq!(
            to_delta(&u8s, &DataType::Int16)
                .unwrap()
                .as_primitive::<arrow::datatypes::Int16Type>()
                .value(0),
            255
        );

        let t: ArrayRef = Arc::new(Time32SecondArray::from(vec![Some(3723), None]));
        let s = to_delta(&t, &DataType::Utf8).unwrap();
        assert_eq!(s.as_string::<i32>().value(0), "01:02:03");
        assert!(s.is_null(1));

        // Wall-clock millis keep their digits.
        let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![1_700_000_000_123]));
        let out = to_delta(&ts, &DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))).unwrap();
        assert_eq!(
            out.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            1_700_000_000_123_000
        );
    }

    #[test]
    fn widening_rules() {
        assert_eq!(widening(&DataType::Int32, &DataType::Int64), Widening::Widen);
        assert_eq!(widening(&DataType::Int64, &DataType::Int32), Widening::CastUp);
        assert_eq!(widening(&DataType::Int64, &DataType::Utf8), Widening::Incompatible);
        assert_eq!(
            widening(&DataType::Decimal128(10, 2), &DataType::Decimal128(12, 2)),
            Widening::Widen
        );
        assert_eq!(
            widening(&DataType::Decimal128(10, 2), &DataType::Decimal128(10, 3)),
            Widening::Incompatible
        );
        assert_eq!(widening(&DataType::Utf8, &DataType::Utf8), Widening::Same);
    }
}
