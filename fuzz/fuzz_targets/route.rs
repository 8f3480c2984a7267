//! The key router on arbitrary object keys.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dms2delta::fuzzing::route_key(data);
});
