//! Scope strings (RFC 6749 §3.3): space-delimited, case-sensitive tokens of `NQCHAR`s.

use crate::OAuthError;
use std::collections::BTreeSet;

/// The scope that asks for a refresh token (OpenID Connect, and what MCP clients send).
pub const OFFLINE_ACCESS: &str = "offline_access";

/// Parses a scope parameter; an empty or absent one is the empty set.
pub fn parse(s: &str) -> Result<BTreeSet<String>, OAuthError> {
    let mut out = BTreeSet::new();
    for token in s.split(' ').filter(|t| !t.is_empty()) {
        let ok = token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok || token.len() > 200 {
            return Err(OAuthError::invalid_scope(format!(
                "malformed scope token {:?}",
                token.chars().take(40).collect::<String>()
            )));
        }
        out.insert(token.to_string());
    }
    if out.len() > 64 {
        return Err(OAuthError::invalid_scope("too many scopes"));
    }
    Ok(out)
}

/// The space-delimited form.
pub fn join<'a>(scopes: impl IntoIterator<Item = &'a String>) -> String {
    scopes
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins() {
        let s = parse("b a  a offline_access").unwrap();
        assert_eq!(join(&s), "a b offline_access");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_quotes_and_backslashes() {
        assert_eq!(parse("a\"b").unwrap_err().code.as_str(), "invalid_scope");
        assert!(parse("a\\b").is_err());
        assert!(parse("tab\there").is_err());
    }
}
