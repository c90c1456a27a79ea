//! Protected resources (RFC 8707 / RFC 9728): what a token can be for.

use grantline_ledger::TokenFormat;

/// A scope a resource offers, with the description the consent page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeDef {
    pub name: String,
    pub description: String,
}

/// A protected resource. Its identifier is an absolute URL; a trailing slash does not make a
/// different resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Canonical identifier (no trailing slash), the `aud` of its tokens.
    pub id: String,
    /// Short name, e.g. `demo`.
    pub name: String,
    pub description: String,
    pub scopes: Vec<ScopeDef>,
    /// Granted when a request names no scope.
    pub default_scopes: Vec<String>,
    pub token_format: TokenFormat,
}

impl Resource {
    /// Whether the resource offers `scope`.
    pub fn offers(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s.name == scope)
    }

    /// The description of one of its scopes (or of `offline_access`).
    pub fn describe(&self, scope: &str) -> String {
        if scope == crate::scope::OFFLINE_ACCESS {
            return "Stay connected: keep access while you are away (refresh tokens)".into();
        }
        self.scopes
            .iter()
            .find(|s| s.name == scope)
            .map(|s| s.description.clone())
            .unwrap_or_else(|| scope.to_string())
    }
}

/// A resource identifier without its trailing slash, so `…/mcp/demo` and `…/mcp/demo/` match.
pub fn canonical_resource(id: &str) -> &str {
    let trimmed = id.trim_end_matches('/');
    if trimmed.ends_with(':') || trimmed.is_empty() {
        id
    } else {
        trimmed
    }
}

/// Finds the configured resource a request names.
pub fn find<'r>(resources: &'r [Resource], requested: &str) -> Option<&'r Resource> {
    let want = canonical_resource(requested);
    resources.iter().find(|r| canonical_resource(&r.id) == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_slash_names_the_same_resource() {
        assert_eq!(
            canonical_resource("https://a.example/mcp/demo/"),
            "https://a.example/mcp/demo"
        );
        assert_eq!(
            canonical_resource("https://a.example/mcp/demo"),
            "https://a.example/mcp/demo"
        );
        assert_eq!(
            canonical_resource("https://a.example/"),
            "https://a.example"
        );
    }
}
