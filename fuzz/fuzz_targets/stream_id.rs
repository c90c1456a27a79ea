//! Fuzz target `stream_id`: the properties in `grantline_ledger::properties::stream_id_holds`, also run as property tests in CI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grantline_ledger::properties::stream_id_holds(data);
});
