//! The browser `Origin` a request to `/mcp/...` may carry: the issuer's own, or one the
//! configuration allows (`server.allowed_origins`). Anything else is refused before
//! authentication, as the MCP transport requires against DNS rebinding.

/// The serialised origin (`scheme://host[:port]`) of a URL, lowercase; `None` if it has none.
pub fn of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    match u.origin() {
        o @ url::Origin::Tuple(..) => Some(o.ascii_serialization().to_ascii_lowercase()),
        url::Origin::Opaque(_) => None,
    }
}

/// Whether a request carrying `Origin: origin` may reach the gateway for `issuer`.
pub fn allowed(issuer: &str, configured: &[String], origin: &[u8]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if of(issuer).is_some_and(|o| o == origin) {
        return true;
    }
    configured
        .iter()
        .any(|c| of(c).is_some_and(|o| o == origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_issuers_origin_and_configured_ones() {
        let issuer = "https://auth.example.com/prefix";
        let cfg = vec!["https://app.example".to_string()];
        assert!(allowed(issuer, &cfg, b"https://auth.example.com"));
        assert!(allowed(issuer, &cfg, b"https://AUTH.example.com"));
        assert!(allowed(issuer, &cfg, b"https://app.example"));
        assert!(
            !allowed(issuer, &cfg, b"http://auth.example.com"),
            "scheme counts"
        );
        assert!(
            !allowed(issuer, &cfg, b"https://auth.example.com:8443"),
            "port counts"
        );
        assert!(!allowed(issuer, &cfg, b"http://evil.example.com"));
        assert!(!allowed(issuer, &cfg, b"null"));
        assert!(!allowed(issuer, &[], b"https://app.example"));
        assert!(allowed(
            "http://127.0.0.1:8080",
            &[],
            b"http://127.0.0.1:8080"
        ));
        assert!(!allowed(
            "http://127.0.0.1:8080",
            &[],
            b"http://localhost:8080"
        ));
    }
}
