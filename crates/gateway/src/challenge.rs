//! Refusals and their `WWW-Authenticate` challenges (RFC 6750 §3, RFC 9728 §5.1).

/// Why a request to a protected resource was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// No credential: 401 without an `error`.
    Missing,
    /// A credential that is unknown, expired, revoked, or for another resource: 401
    /// `invalid_token`.
    InvalidToken,
    /// A credential in the URL: 400 `invalid_request`.
    TokenInUrl,
    /// Above the caller's authority: 403 `insufficient_scope` (step-up).
    InsufficientScope,
    /// Forbidden by the user's role: 403, and no step-up challenge (more scope would not help).
    Forbidden,
}

/// A refusal: its kind, a reason for the log and the ledger, and the scopes the operation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenialKind,
    /// Recorded in `authorization.denied.reason`: `missing_token`, `invalid_token`,
    /// `wrong_audience`, `insufficient_scope`, `role`, `token_in_url`.
    pub reason: &'static str,
    pub required_scopes: Vec<String>,
}

impl Denial {
    pub fn new(kind: DenialKind, reason: &'static str, required_scopes: Vec<String>) -> Self {
        Denial {
            kind,
            reason,
            required_scopes,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self.kind {
            DenialKind::Missing | DenialKind::InvalidToken => 401,
            DenialKind::TokenInUrl => 400,
            DenialKind::InsufficientScope | DenialKind::Forbidden => 403,
        }
    }

    /// The `WWW-Authenticate` value: `Bearer resource_metadata="…", scope="…"` plus
    /// `error="…"` when a credential was presented.
    pub fn challenge(&self, resource_metadata: &str) -> String {
        let mut parts = vec![format!(
            "resource_metadata=\"{}\"",
            quote(resource_metadata)
        )];
        if !self.required_scopes.is_empty() && self.kind != DenialKind::Forbidden {
            parts.push(format!(
                "scope=\"{}\"",
                quote(&self.required_scopes.join(" "))
            ));
        }
        match self.kind {
            DenialKind::Missing | DenialKind::Forbidden => {}
            DenialKind::InvalidToken => parts.push("error=\"invalid_token\"".into()),
            DenialKind::TokenInUrl => parts.push("error=\"invalid_request\"".into()),
            DenialKind::InsufficientScope => parts.push("error=\"insufficient_scope\"".into()),
        }
        format!("Bearer {}", parts.join(", "))
    }
}

/// Escapes a value for a quoted-string (RFC 9110 §5.6.4).
fn quote(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let md = "https://as.example/.well-known/oauth-protected-resource/mcp/demo";
        let missing = Denial::new(
            DenialKind::Missing,
            "missing_token",
            vec!["demo:read".into()],
        );
        assert_eq!(missing.status(), 401);
        assert_eq!(
            missing.challenge(md),
            format!("Bearer resource_metadata=\"{md}\", scope=\"demo:read\"")
        );
        let up = Denial::new(
            DenialKind::InsufficientScope,
            "insufficient_scope",
            vec!["demo:read".into(), "demo:write".into()],
        );
        assert_eq!(up.status(), 403);
        assert!(
            up.challenge(md)
                .ends_with("scope=\"demo:read demo:write\", error=\"insufficient_scope\"")
        );
        // A role's refusal: 403 without a scope to step up to.
        let role = Denial::new(DenialKind::Forbidden, "role", vec!["demo:write".into()]);
        assert_eq!(role.status(), 403);
        assert_eq!(
            role.challenge(md),
            format!("Bearer resource_metadata=\"{md}\"")
        );
        let bad = Denial::new(DenialKind::InvalidToken, "wrong_audience", vec![]);
        assert!(bad.challenge(md).contains("error=\"invalid_token\""));
        assert_eq!(quote("a\"b\\c\n"), "a\\\"b\\\\c");
    }
}
