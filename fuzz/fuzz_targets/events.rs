//! The Lambda payload and SQS body parsers on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dms2delta::fuzzing::parse_event(data);
});
