//! Randomness and ids. Ids are UUIDv7 (time-ordered) with a type prefix; secrets are 256 bits.

use grantline_oauth::tokens::{Fresh, REFRESH_PREFIX, Secret};

/// 32 random bytes from the OS.
pub fn bytes32() -> [u8; 32] {
    let mut b = [0u8; 32];
    // The OS RNG failing is not something a request can recover from; getrandom documents it
    // as effectively impossible on Linux after boot.
    if getrandom::fill(&mut b).is_err() {
        panic!("the operating system's random number generator failed");
    }
    b
}

/// A prefixed UUIDv7 id, e.g. `cli_0197…`.
pub fn id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A prefixed 256-bit secret.
pub fn secret(prefix: &str) -> Secret {
    Secret::from_random(prefix, bytes32())
}

/// Fresh material for a token response.
pub fn fresh_tokens() -> Fresh {
    Fresh {
        access_id: id("at"),
        access_bytes: bytes32(),
        refresh_id: id("rt"),
        refresh: secret(REFRESH_PREFIX),
    }
}
