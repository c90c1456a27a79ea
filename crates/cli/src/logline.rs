//! The log's writer: one event, one line. Field values can hold text an upstream or a client
//! chose (an identity provider's `iss` or error text, an upstream's answer), and a newline in
//! one would let it write a line of its own that reads as the server's ("… INFO admin signed
//! in"). Every control character but the line's own final newline, and the characters that
//! reorder or hide text (bidirectional overrides, zero-width ones), is written escaped.

use std::borrow::Cow;
use std::io::{self, Write};

/// `line` with what could break or disguise it escaped (`\n`, `\r`, `\u{202e}`, …). Escape
/// sequences (ESC) are left alone: the formatter colours the log at a terminal, and escapes
/// them in field values itself.
pub fn one_line(line: &str) -> Cow<'_, str> {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let unsafe_char =
        |c: char| c != '\u{1b}' && c != '\t' && !grantline_oauth::limits::displayable(c);
    if !body.chars().any(unsafe_char) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if body.len() < line.len() {
        out.push('\n');
    }
    Cow::Owned(out)
}

/// Standard error, each event written through [`one_line`].
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter hands over one whole event at a time, as UTF-8.
        let text = String::from_utf8_lossy(buf);
        io::stderr().write_all(one_line(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn an_event_stays_one_line_and_reads_as_written() {
        let plain = "2026-12-06T10:00:00Z  INFO upstream sign-in failed provider=corp\n";
        assert_eq!(one_line(plain), plain);
        let forged = "INFO sign-in failed detail=x\n2026-12-06T10:00:01Z  INFO admin signed in\n";
        assert_eq!(
            one_line(forged),
            "INFO sign-in failed detail=x\\n2026-12-06T10:00:01Z  INFO admin signed in\n"
        );
        assert_eq!(
            one_line("a\rb\u{202e}c\u{200b}d\u{0}e\u{85}f\n"),
            "a\\rb\\u{202e}c\\u{200b}d\\u{0}e\\u{85}f\n"
        );
        // Colour codes and tabs are the formatter's own.
        let coloured = "\u{1b}[32m INFO\u{1b}[0m\tdone\n";
        assert_eq!(one_line(coloured), coloured);
        assert_eq!(
            one_line("no newline at the end\u{2066}"),
            "no newline at the end\\u{2066}"
        );
    }
}
