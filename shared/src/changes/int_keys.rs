//! Integer keys as `u64`s, and the radix sort both deduplications group them with.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Date64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};

use crate::error::{BadInputKind, InputProblem};

/// Key types whose values are integers of at most 64 bits, so a key is a `u64`.
pub(super) fn int_key(t: &DataType) -> bool {
    casts_to_i64(t)
        || matches!(
            t,
            DataType::UInt64 | DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
        )
}

/// Integer types that cast to `i64` without loss (the merge-on-read key index keeps those as
/// `i64`, so their statistics bounds are plain JSON integers).
pub fn casts_to_i64(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

/// Appends the (non-null) key column's values as `u64`s, each with `at(row)`. Only equality
/// matters, so any one-to-one mapping will do: signed values keep their bits.
pub(super) fn push_int_keys<T>(
    col: &ArrayRef,
    out: &mut Vec<(u64, T)>,
    at: impl Fn(usize) -> T,
) -> Result<(), InputProblem> {
    fn extend<P: ArrowPrimitiveType, T>(
        col: &ArrayRef,
        out: &mut Vec<(u64, T)>,
        at: impl Fn(usize) -> T,
        to_u64: impl Fn(P::Native) -> u64,
    ) {
        let values = col.as_primitive::<P>().values();
        out.extend(values.iter().enumerate().map(|(r, &v)| (to_u64(v), at(r))));
    }
    match col.data_type() {
        DataType::Int8 => extend::<Int8Type, T>(col, out, at, |v| v as i64 as u64),
        DataType::Int16 => extend::<Int16Type, T>(col, out, at, |v| v as i64 as u64),
        DataType::Int32 => extend::<Int32Type, T>(col, out, at, |v| v as i64 as u64),
        DataType::Int64 => extend::<Int64Type, T>(col, out, at, |v| v as u64),
        DataType::UInt8 => extend::<UInt8Type, T>(col, out, at, u64::from),
        DataType::UInt16 => extend::<UInt16Type, T>(col, out, at, u64::from),
        DataType::UInt32 => extend::<UInt32Type, T>(col, out, at, u64::from),
        DataType::UInt64 => extend::<UInt64Type, T>(col, out, at, |v| v),
        DataType::Date32 => extend::<Date32Type, T>(col, out, at, |v| v as i64 as u64),
        DataType::Date64 => extend::<Date64Type, T>(col, out, at, |v| v as u64),
        DataType::Timestamp(TimeUnit::Second, _) => extend::<TimestampSecondType, T>(col, out, at, |v| v as u64),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            extend::<TimestampMillisecondType, T>(col, out, at, |v| v as u64)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            extend::<TimestampMicrosecondType, T>(col, out, at, |v| v as u64)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            extend::<TimestampNanosecondType, T>(col, out, at, |v| v as u64)
        }
        other => {
            return Err(InputProblem::new(
                BadInputKind::IncompatibleSchema,
                format!("a key column of type {other} where an integer key was expected"),
            ))
        }
    }
    Ok(())
}

/// Stable LSD radix sort by key, 11 bits a pass, skipping the bits all keys share (keys from
/// one table usually span far fewer than 64 bits, so two or three passes are typical).
pub(super) fn radix_sort_by_key<T: Copy + Default>(rows: &mut Vec<(u64, T)>) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    let Some(&(first, _)) = rows.first() else {
        return;
    };
    let differ = rows.iter().fold(0u64, |acc, &(k, _)| acc | (k ^ first));
    if differ == 0 {
        return;
    }
    let low = differ.trailing_zeros();
    let high = 64 - differ.leading_zeros();
    let mut buf: Vec<(u64, T)> = vec![(0, T::default()); rows.len()];
    let mut shift = low;
    while shift < high {
        let digit = |k: u64| ((k >> shift) as usize) & (BUCKETS - 1);
        let mut counts = vec![0usize; BUCKETS];
        for &(k, _) in rows.iter() {
            counts[digit(k)] += 1;
        }
        let mut total = 0;
        for c in counts.iter_mut() {
            let n = *c;
            *c = total;
            total += n;
        }
        for &item in rows.iter() {
            let d = digit(item.0);
            buf[counts[d]] = item;
            counts[d] += 1;
        }
        std::mem::swap(rows, &mut buf);
        shift += BITS;
    }
}
