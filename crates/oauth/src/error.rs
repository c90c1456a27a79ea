//! OAuth errors: each knows its RFC 6749 / 7591 / 8707 / 7009 code and HTTP status, in one place.

use std::fmt;

/// Error codes of RFC 6749 §4.1.2.1 and §5.2, RFC 7591 §3.2.2, RFC 8707 and RFC 7009.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    InvalidRedirectUri,
    InvalidClientMetadata,
    UnsupportedTokenType,
    ServerError,
    TemporarilyUnavailable,
}

impl ErrorCode {
    /// The registered error string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::InvalidRedirectUri => "invalid_redirect_uri",
            ErrorCode::InvalidClientMetadata => "invalid_client_metadata",
            ErrorCode::UnsupportedTokenType => "unsupported_token_type",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// The HTTP status a JSON endpoint answers with (RFC 6749 §5.2: 400, or 401 for a failed
    /// client authentication).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidClient => 401,
            ErrorCode::AccessDenied => 403,
            ErrorCode::ServerError => 500,
            ErrorCode::TemporarilyUnavailable => 503,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth error with a human-readable description (`error_description`).
/// Shown (in logs above all) as `code: description`, the description as it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {}", self.wire_description())]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: String,
}

/// The most characters an `error_description` keeps: descriptions quote what the caller sent,
/// which may be as long as a request.
pub const MAX_DESCRIPTION_CHARS: usize = 300;

/// `text` as RFC 6749 allows an `error_description` (§4.1.2.1, §5.2: printable ASCII without
/// `"` and `\`), at most [`MAX_DESCRIPTION_CHARS`]: a quote becomes `'`, a backslash `/`,
/// dashes and ellipses their ASCII forms, any other character outside the set `?`, and a longer
/// text is cut with `...`.
pub fn description_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_DESCRIPTION_CHARS));
    let mut buf = [0u8; 4];
    for c in text.chars() {
        let ascii: &str = match c {
            '"' | '\u{2018}' | '\u{2019}' | '\u{201C}' | '\u{201D}' => "'",
            '\\' => "/",
            '\u{2013}' | '\u{2212}' => "-",
            '\u{2014}' => "--",
            '\u{2026}' => "...",
            '\u{2192}' => "->",
            ' '..='~' => c.encode_utf8(&mut buf),
            _ => "?",
        };
        if out.len() + ascii.len() > MAX_DESCRIPTION_CHARS - 3 {
            out.push_str("...");
            break;
        }
        out.push_str(ascii);
    }
    out
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
        }
    }

    /// The description as it may be sent (see [`description_text`]): what the JSON body, an
    /// error redirect and the log carry. The description itself is kept as written, for the
    /// pages, the admin API and the command line.
    pub fn wire_description(&self) -> std::borrow::Cow<'_, str> {
        let d = &self.description;
        if d.len() <= MAX_DESCRIPTION_CHARS
            && d.bytes()
                .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E))
        {
            std::borrow::Cow::Borrowed(d)
        } else {
            std::borrow::Cow::Owned(description_text(d))
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidClient, d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidGrant, d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidScope, d)
    }
    pub fn invalid_target(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidTarget, d)
    }
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::UnauthorizedClient, d)
    }

    /// The RFC 6749 §5.2 JSON body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.code.as_str(), "error_description": self.wire_description() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6749 §5.2: `error_description` is %x20-21 / %x23-5B / %x5D-7E.
    fn rfc_safe(s: &str) -> bool {
        s.bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E))
    }

    #[test]
    fn descriptions_are_sent_in_the_rfc_set_and_bounded() {
        let long = "A".repeat(60_000);
        for raw in [
            format!("grant_type {:?} is not supported", "x\"y\\z"),
            "scope \u{e9}t\u{e9} is not offered\n\r\t".to_string(),
            format!("unknown client {long}"),
            "https://b\u{fc}cher.example/cb is not registered".to_string(),
        ] {
            let e = OAuthError::invalid_request(raw.clone());
            let sent = e.to_json()["error_description"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(rfc_safe(&sent), "{raw:?} was sent as {sent:?}");
            assert!(sent.len() <= MAX_DESCRIPTION_CHARS && !sent.is_empty());
            assert_eq!(e.description, raw, "kept as written for pages and commands");
        }
        let cut = OAuthError::invalid_request(format!("unknown client {long}"));
        assert!(cut.wire_description().ends_with("..."));
        assert!(cut.wire_description().len() <= MAX_DESCRIPTION_CHARS);
        // What was safe already is sent as it was; typography becomes its ASCII form.
        let plain = "code_verifier does not match the code_challenge";
        assert_eq!(OAuthError::invalid_grant(plain).wire_description(), plain);
        assert_eq!(
            OAuthError::invalid_request("a name of 1\u{2013}100 characters \u{2014} \"x\"\u{2026}")
                .wire_description(),
            "a name of 1-100 characters -- 'x'..."
        );
        let exactly = "B".repeat(MAX_DESCRIPTION_CHARS);
        assert_eq!(
            OAuthError::invalid_request(exactly.clone()).wire_description(),
            exactly
        );
    }
}
