//! Webhook batches: a JSON body `{"events": [...]}` signed with HMAC-SHA256 over
//! `<timestamp>.<body>`, sent as `Grantline-Signature: t=<timestamp>,v1=<hex>`. A receiver
//! recomputes it with the shared secret, compares in constant time, and refuses timestamps
//! too far from its clock (replays).

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "grantline-signature";

/// The body of a batch.
pub fn body(events: &[Value]) -> String {
    json!({ "events": events }).to_string()
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a signature header as a receiver would: well formed, made with `secret` over this
/// body, and within `tolerance_secs` of `now`.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if now.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return false;
    }
    mac(secret, t, body).verify_slice(&v1).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let h = signature(b"secret", 1_700_000_000, b"{\"events\":[]}");
        assert!(verify(
            b"secret",
            &h,
            b"{\"events\":[]}",
            1_700_000_010,
            300
        ));
        assert!(!verify(
            b"other",
            &h,
            b"{\"events\":[]}",
            1_700_000_010,
            300
        ));
        assert!(!verify(
            b"secret",
            &h,
            b"{\"events\":[1]}",
            1_700_000_010,
            300
        ));
        assert!(
            !verify(b"secret", &h, b"{\"events\":[]}", 1_700_001_000, 300),
            "too old"
        );
        // A timestamp at the end of the range is too old, not an overflow.
        assert!(!verify(b"k", "t=-9223372036854775808,v1=00", b"", 1, 300));
        assert!(!verify(b"k", "t=9223372036854775807,v1=00", b"", -5, 300));
        assert!(!verify(b"secret", "t=x,v1=zz", b"", 0, 300));
    }
}
