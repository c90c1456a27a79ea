//! Token formats: opaque `gla_`/`glr_`/`glp_` strings (256 random bits, stored only as a
//! blake3 digest) and RFC 9068 JWT access tokens signed with Ed25519 (EdDSA).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use grantline_ledger::Timestamp;
use serde::Serialize;

/// Access token prefix.
pub const ACCESS_PREFIX: &str = "gla_";
/// Refresh token prefix.
pub const REFRESH_PREFIX: &str = "glr_";
/// Personal access token prefix.
pub const PAT_PREFIX: &str = "glp_";
/// Authorization code prefix.
pub const CODE_PREFIX: &str = "glc_";

/// A secret string; its `Debug` shows only the prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix: String = self.0.chars().take(4).collect();
        write!(f, "Secret({prefix}…)")
    }
}

impl Secret {
    /// `prefix` + base64url of 32 random bytes.
    pub fn from_random(prefix: &str, bytes: [u8; 32]) -> Secret {
        Secret(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The blake3 digest under which the secret is stored and looked up.
    pub fn digest(&self) -> String {
        grantline_ledger::secret_digest(self.0.as_bytes())
    }
}

/// Randomness a token decider needs, drawn by the caller: ids and secret material. `Debug`
/// shows only the ids.
#[derive(Clone)]
pub struct Fresh {
    pub access_id: String,
    pub access_bytes: [u8; 32],
    pub refresh_id: String,
    pub refresh: Secret,
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh")
            .field("access_id", &self.access_id)
            .field("refresh_id", &self.refresh_id)
            .finish_non_exhaustive()
    }
}

/// Signs RFC 9068 JWT access tokens.
#[derive(Clone)]
pub struct JwtSigner {
    pub key: SigningKey,
    pub kid: String,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtSigner({})", self.kid)
    }
}

/// RFC 9068 §2.2 claims.
#[derive(Debug, Serialize)]
pub struct AccessClaims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub client_id: &'a str,
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: &'a str,
}

impl JwtSigner {
    /// The key id published in the JWKS: base64url of the first 16 bytes of blake3(public key).
    pub fn kid_for(key: &VerifyingKey) -> String {
        URL_SAFE_NO_PAD.encode(&blake3::hash(key.as_bytes()).as_bytes()[..16])
    }

    pub fn new(key: SigningKey) -> Self {
        let kid = Self::kid_for(&key.verifying_key());
        JwtSigner { key, kid }
    }

    /// A compact JWS with header `{"alg":"EdDSA","typ":"at+jwt","kid":…}`.
    pub fn sign(&self, claims: &AccessClaims<'_>) -> String {
        self.sign_json("at+jwt", &serde_json::to_value(claims).unwrap_or_default())
    }

    /// A compact JWS over any JSON claims set, with the given `typ`.
    pub fn sign_json(&self, typ: &str, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({ "alg": "EdDSA", "typ": typ, "kid": self.kid });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// The claims of a compact JWS this signer made with `typ` (header `alg` EdDSA, this
    /// `kid`, strict Ed25519 verification); `None` for anything else.
    pub fn verify_json(&self, token: &str, typ: &str) -> Option<serde_json::Value> {
        verify_jws(&self.key.verifying_key(), &self.kid, token, typ)
    }

    /// The JWK (RFC 8037) of the public key.
    pub fn jwk(&self) -> serde_json::Value {
        jwk(&self.key.verifying_key(), &self.kid)
    }
}

/// The `kid` a compact JWS names in its header, unverified: which key to check it with.
pub fn jws_kid(token: &str) -> Option<String> {
    if token.len() > 8192 {
        return None;
    }
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?).ok()?;
    header["kid"].as_str().map(str::to_string)
}

/// The claims of a compact JWS signed with `typ` by `key`, known as `kid` (header `alg`
/// EdDSA, that `kid`, strict Ed25519 verification); `None` for anything else.
pub fn verify_jws(
    key: &VerifyingKey,
    kid: &str,
    token: &str,
    typ: &str,
) -> Option<serde_json::Value> {
    if token.len() > 8192 {
        return None;
    }
    let mut parts = token.split('.');
    let (h, c, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    if header["alg"] != "EdDSA" || header["typ"] != typ || header["kid"] != kid {
        return None;
    }
    let sig = ed25519_dalek::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).ok()?).ok()?;
    key.verify_strict(format!("{h}.{c}").as_bytes(), &sig)
        .ok()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()
}

/// An OKP/Ed25519 JWK.
pub fn jwk(key: &VerifyingKey, kid: &str) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// Seconds from `now` until `t`, never negative.
pub fn seconds_until(now: Timestamp, t: Timestamp) -> i64 {
    ((t.0 - now.0) / 1_000_000).max(0)
}

/// The JSON answer of the token endpoint (RFC 6749 §5.1). `Debug` hides the tokens.
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn jwt_verifies_with_its_jwk() {
        let signer = JwtSigner::new(SigningKey::from_bytes(&[7; 32]));
        let claims = AccessClaims {
            iss: "https://as.example",
            sub: "usr_1",
            aud: "https://as.example/mcp/demo",
            client_id: "cli_1",
            scope: "demo:read".into(),
            iat: 1,
            exp: 2,
            jti: "at_1",
        };
        let jwt = signer.sign(&claims);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], "EdDSA");
        let jwk = signer.jwk();
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let key = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(key.verify(input.as_bytes(), &sig).is_ok());
        assert!(key.verify(b"other", &sig).is_err());
    }

    #[test]
    fn secret_debug_hides_the_value() {
        let s = Secret::from_random(ACCESS_PREFIX, [1; 32]);
        assert!(s.as_str().starts_with("gla_"));
        assert_eq!(s.as_str().len(), 4 + 43);
        assert_eq!(format!("{s:?}"), "Secret(gla_…)");
    }
}
