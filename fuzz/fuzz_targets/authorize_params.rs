//! Fuzz target `authorize_params`: the properties in `grantline_oauth::properties::authorize_holds`, also run as property tests in CI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grantline_oauth::properties::authorize_holds(data);
});
