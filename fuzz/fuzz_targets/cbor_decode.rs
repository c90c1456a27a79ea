//! Fuzz target `cbor_decode`: the properties in `grantline_ledger::properties::decode_holds`, also run as property tests in CI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grantline_ledger::properties::decode_holds(data);
});
