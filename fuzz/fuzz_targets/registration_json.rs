//! Fuzz target `registration_json`: the properties in `grantline_oauth::properties::registration_holds`, also run as property tests in CI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grantline_oauth::properties::registration_holds(data);
});
