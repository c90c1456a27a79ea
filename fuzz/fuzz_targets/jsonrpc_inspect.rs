//! Fuzz target `jsonrpc_inspect`: the properties in `grantline_gateway::properties::inspect_holds`, also run as property tests in CI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grantline_gateway::properties::inspect_holds(data);
});
