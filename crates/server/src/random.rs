//! Randomness and ids. Ids are UUIDv7 (time-ordered) with a type prefix; secrets are 256 bits.

use grantline_oauth::tokens::{Fresh, REFRESH_PREFIX, Secret};

/// 32 random bytes from the OS.
pub fn bytes32() -> [u8; 32] {
    let [b] = secrets();
    b
}

/// `N` times 32 random bytes from the OS, in one system call.
fn secrets<const N: usize>() -> [[u8; 32]; N] {
    let mut b = [[0u8; 32]; N];
    // The OS RNG failing is not something a request can recover from; getrandom documents it
    // as effectively impossible on Linux after boot.
    if getrandom::fill(b.as_flattened_mut()).is_err() {
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

/// Fresh material for a token response. Both secrets come from one read of the OS generator:
/// a system call fewer on every token request.
pub fn fresh_tokens() -> Fresh {
    let [access, refresh] = secrets();
    Fresh {
        access_id: id("at"),
        access_bytes: access,
        refresh_id: id("rt"),
        refresh: Secret::from_random(REFRESH_PREFIX, refresh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_response_gets_two_distinct_secrets_each_time() {
        let (a, b) = (fresh_tokens(), fresh_tokens());
        let refresh_bytes = |f: &Fresh| f.refresh.as_str()[REFRESH_PREFIX.len()..].to_string();
        let encoded = |bytes: [u8; 32]| Secret::from_random("", bytes).as_str().to_string();
        assert_ne!(encoded(a.access_bytes), refresh_bytes(&a));
        assert_ne!(a.access_bytes, b.access_bytes);
        assert_ne!(refresh_bytes(&a), refresh_bytes(&b));
        assert_ne!(a.access_bytes, [0u8; 32]);
        assert_ne!(refresh_bytes(&a), encoded([0u8; 32]));
    }
}
