//! Bounds on every caller-supplied value that reaches an event, in one place: the deciders
//! refuse what is over them before anything is written (documented in `docs/security.md`).

/// A client's display name, in characters.
pub const CLIENT_NAME_CHARS: usize = 200;
/// `software_id` and `software_version`, in characters.
pub const SOFTWARE_CHARS: usize = 200;
/// Any URL a caller gives: redirect URIs, `client_uri`, `logo_uri`, a metadata-document
/// client id, in bytes.
pub const URL_BYTES: usize = 2048;
/// Redirect URIs per client.
pub const REDIRECT_URIS: usize = 20;
/// A `scope` parameter, in bytes.
pub const SCOPE_BYTES: usize = 1024;
/// A personal access token's name, in characters.
pub const PAT_NAME_CHARS: usize = 100;
/// A reason an operator or admin gives for a revocation or a disabling, in characters.
pub const REASON_CHARS: usize = 500;

/// Whether `c` may appear in text shown to people: no control characters, and none of the
/// invisible formatting characters that make a name read other than it is (bidirectional
/// overrides and isolates such as U+202E, zero-width characters, the line and paragraph
/// separators U+2028/U+2029 that break a log line or a name shown on one line, the byte-order
/// mark).
pub fn displayable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2028}'..='\u{2029}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Checks a display value a caller supplied: trimmed, at most `max` characters, every
/// character [`displayable`]. The error names the field.
pub fn display_text(field: &str, value: &str, max: usize) -> Result<String, String> {
    let v = value.trim();
    // The raw value is bounded too: it may be recorded as given.
    if value.len() > max * 4 || v.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    if let Some(c) = v.chars().find(|c| !displayable(*c)) {
        return Err(format!(
            "{field} contains the invisible or control character U+{:04X}",
            c as u32
        ));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_text_refuses_controls_and_direction_overrides() {
        assert_eq!(display_text("n", "  Claude  ", 10).unwrap(), "Claude");
        assert!(
            display_text("n", "Claude <b>Official</b>", 200).is_ok(),
            "escaped, not refused"
        );
        for bad in [
            "a\u{202E}gpj.exe",
            "a\u{2066}b",
            "a\u{200B}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\nb",
            "a\u{7}b",
            "\u{FEFF}x",
        ] {
            let e = display_text("client_name", bad, 200).unwrap_err();
            assert!(e.contains("client_name") && e.contains("U+"), "{e}");
        }
        assert!(display_text("n", &"é".repeat(11), 10).is_err());
        assert!(display_text("n", &"é".repeat(10), 10).is_ok());
    }
}
