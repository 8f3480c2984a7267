//! The decoder on arbitrary bytes, under each layout: the first byte picks the layout, the rest
//! is the file (CSV, gzip or Parquet, sniffed by magic as in production).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&which, file)) = data.split_first() {
        dms2delta::fuzzing::decode_bytes(usize::from(which), file);
    }
});
