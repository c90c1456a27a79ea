//! PKCE (RFC 7636), S256 only: OAuth 2.1 and the MCP authorization spec require it.

use crate::OAuthError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Checks an authorization request's challenge: present, method `S256`, 43 base64url chars.
/// `plain`, an unknown method and a missing one (which RFC 7636 reads as `plain`) are refused.
pub fn check_challenge(
    challenge: Option<&str>,
    method: Option<&str>,
) -> Result<String, OAuthError> {
    let challenge = challenge
        .filter(|c| !c.is_empty())
        .ok_or_else(|| OAuthError::invalid_request("code_challenge is required (PKCE, S256)"))?;
    match method {
        Some("S256") => {}
        Some("plain") | None => {
            return Err(OAuthError::invalid_request(
                "code_challenge_method must be S256; plain is not allowed",
            ));
        }
        Some(_) => {
            return Err(OAuthError::invalid_request(
                "unsupported code_challenge_method; only S256 is supported",
            ));
        }
    }
    let ok = challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(OAuthError::invalid_request(
            "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
        ));
    }
    Ok(challenge.to_string())
}

/// The S256 challenge of a verifier.
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` (43–128 unreserved characters) hashes to `challenge`; constant time.
pub fn verify(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len()) && verifier.bytes().all(unreserved);
    let computed = challenge_of(verifier);
    let equal: bool = computed.as_bytes().ct_eq(challenge.as_bytes()).into();
    well_formed && equal
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc7636_appendix_b() {
        assert_eq!(challenge_of(VERIFIER), CHALLENGE);
        assert!(verify(VERIFIER, CHALLENGE));
    }

    #[test]
    fn wrong_or_short_verifier_fails() {
        assert!(!verify(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXl",
            CHALLENGE
        ));
        assert!(!verify("short", &challenge_of("short")));
        assert!(!verify(&"a".repeat(129), &challenge_of(&"a".repeat(129))));
    }

    #[test]
    fn challenge_rules() {
        assert!(check_challenge(Some(CHALLENGE), Some("S256")).is_ok());
        for (c, m) in [
            (Some(CHALLENGE), Some("plain")),
            (Some(CHALLENGE), None),
            (Some(CHALLENGE), Some("S512")),
            (None, Some("S256")),
            (Some("abc"), Some("S256")),
        ] {
            assert_eq!(
                check_challenge(c, m).unwrap_err().code.as_str(),
                "invalid_request"
            );
        }
    }
}
