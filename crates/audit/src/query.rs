//! The audit query language, in the style of GitHub's and Okta's audit logs:
//!
//! ```text
//! kind:tool.called user:alice@example.com tool:delete_* outcome:denied
//! time:>=2026-11-01  time:2026-11-01..2026-11-07  time:>-24h
//! -client:"Claude Desktop"  ip:10.0.0.0/8  (kind:token.revoked OR kind:family.revoked)  "free text"
//! ```
//!
//! Terms side by side must all hold (AND); `OR` between terms, parentheses to group, `-` (or
//! `NOT`) to negate. A qualifier is `name:value`; a value may be quoted, may end in `*` (prefix),
//! and for `time` and `seq` may be a comparison (`>`, `>=`, `<`, `<=`) or a range `a..b`. A bare
//! word or quoted phrase searches the free text. Values are compared without regard to case.
//! `docs/audit.md` is the reference; [`parse`] turns a query into an [`Expr`] with every
//! relative time resolved against `now`, and reports the position of any problem.

use std::net::{IpAddr, Ipv6Addr};

/// A field a qualifier filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Kind,
    Category,
    Outcome,
    Severity,
    Actor,
    /// `user:` matches the user id, username or email.
    User,
    Email,
    /// `client:` matches the client id or name.
    Client,
    Credential,
    Family,
    Grant,
    Resource,
    Tool,
    Scope,
    Error,
    Request,
    /// `trace:` matches the W3C trace id of the request an event came from.
    Trace,
    UserAgent,
    Id,
    /// The subject whose key seals personal data in the event (`user:<id>`, `anon:<day>`).
    Subject,
    Ip,
    Time,
    Seq,
}

impl Field {
    /// Every qualifier name, with the field it filters.
    pub const NAMES: &'static [(&'static str, Field)] = &[
        ("kind", Field::Kind),
        ("action", Field::Kind),
        ("category", Field::Category),
        ("outcome", Field::Outcome),
        ("severity", Field::Severity),
        ("actor", Field::Actor),
        ("user", Field::User),
        ("email", Field::Email),
        ("client", Field::Client),
        ("credential", Field::Credential),
        ("token", Field::Credential),
        ("family", Field::Family),
        ("grant", Field::Grant),
        ("resource", Field::Resource),
        ("tool", Field::Tool),
        ("scope", Field::Scope),
        ("error", Field::Error),
        ("request", Field::Request),
        ("trace", Field::Trace),
        ("ua", Field::UserAgent),
        ("user_agent", Field::UserAgent),
        ("id", Field::Id),
        ("subject", Field::Subject),
        ("ip", Field::Ip),
        ("time", Field::Time),
        ("seq", Field::Seq),
    ];

    fn by_name(name: &str) -> Option<Field> {
        let lower = name.to_ascii_lowercase();
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|(_, f)| *f)
    }
}

/// What a qualifier's value asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Equal to this (lowercased).
    Term(String),
    /// Starts with this (lowercased); empty: the field is present.
    Prefix(String),
    /// `time`: microseconds in `[from, to)`; `None` is unbounded.
    Time(Option<i64>, Option<i64>),
    /// `seq`: in `[from, to]`.
    Seq(u64, u64),
    /// `ip`: the address within this network (IPv4 as mapped IPv6), first and last address.
    Network(Ipv6Addr, Ipv6Addr),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Everything (the empty query).
    All,
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Match(Field, Value),
    /// Free text: these tokens in this order; the last may be a prefix.
    Text {
        tokens: Vec<String>,
        prefix: bool,
    },
}

/// A query that does not parse: where (1-based character column) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct QueryError {
    pub column: usize,
    pub message: String,
}

/// The longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// How deeply parentheses and negations may nest.
const MAX_DEPTH: usize = 32;
/// The most terms (words, each word of a phrase, `field:value`) in one query: the index walks
/// the postings of each, over every window of seqs a page needs.
pub const MAX_TERMS: usize = 64;
/// The most values ending in `*` in one query: each is an automaton run over every word of
/// its field, with a set of matching documents the size of the index built for it.
pub const MAX_PREFIXES: usize = 16;
/// The longest value before a trailing `*`, in bytes: the index matches a prefix with an
/// automaton of about one state per byte, and refuses one of over a thousand states.
pub const MAX_PREFIX_BYTES: usize = 256;

/// Splits free text the way the index does: runs of alphanumeric characters, lowercased,
/// tokens over 40 bytes dropped.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty() && t.len() < 40)
        .map(|t| t.to_lowercase())
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Or,
    And,
    Not,
    /// `name:value` (value raw, quotes removed; `quoted` when it was quoted).
    Qual {
        name: String,
        value: String,
        quoted: bool,
        value_at: usize,
    },
    Word {
        text: String,
        quoted: bool,
    },
}

fn err(column: usize, message: impl Into<String>) -> QueryError {
    QueryError {
        column,
        message: message.into(),
    }
}

/// Reads a quoted string starting at `chars[i] == '"'`; returns the text and the index after it.
fn quoted(chars: &[char], i: usize) -> Result<(String, usize), QueryError> {
    let mut out = String::new();
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '"' => return Ok((out, j + 1)),
            '\\' if j + 1 < chars.len() && matches!(chars[j + 1], '"' | '\\') => {
                out.push(chars[j + 1]);
                j += 2;
            }
            c => {
                out.push(c);
                j += 1;
            }
        }
    }
    Err(err(i + 1, "this quote is never closed"))
}

fn lex(q: &str) -> Result<Vec<(usize, Tok)>, QueryError> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push((at, Tok::LParen));
                i += 1;
                continue;
            }
            ')' => {
                out.push((at, Tok::RParen));
                i += 1;
                continue;
            }
            '-' if i + 1 < chars.len() && !chars[i + 1].is_whitespace() => {
                out.push((at, Tok::Not));
                i += 1;
                continue;
            }
            '"' => {
                let (text, next) = quoted(&chars, i)?;
                out.push((is_at(at), Tok::Word { text, quoted: true }));
                i = next;
                continue;
            }
            _ => {}
        }
        // A bare run up to whitespace or a parenthesis; a `name:` prefix makes it a qualifier.
        let start = i;
        while i < chars.len()
            && !chars[i].is_whitespace()
            && !matches!(chars[i], '(' | ')' | ':' | '"')
        {
            i += 1;
        }
        if i < chars.len() && chars[i] == ':' && i > start {
            let name: String = chars[start..i].iter().collect();
            i += 1;
            let value_at = i + 1;
            if i < chars.len() && chars[i] == '"' {
                let (value, next) = quoted(&chars, i)?;
                i = next;
                out.push((
                    at,
                    Tok::Qual {
                        name,
                        value,
                        quoted: true,
                        value_at,
                    },
                ));
            } else {
                let vstart = i;
                while i < chars.len() && !chars[i].is_whitespace() && !matches!(chars[i], '(' | ')')
                {
                    i += 1;
                }
                let value: String = chars[vstart..i].iter().collect();
                if value.is_empty() {
                    return Err(err(value_at, format!("`{name}:` needs a value")));
                }
                out.push((
                    at,
                    Tok::Qual {
                        name,
                        value,
                        quoted: false,
                        value_at,
                    },
                ));
            }
            continue;
        }
        if i == start {
            // A lone ':' or a '"' inside a word.
            return Err(err(at, format!("unexpected `{}`", chars[i])));
        }
        let word: String = chars[start..i].iter().collect();
        let tok = match word.as_str() {
            "OR" => Tok::Or,
            "AND" => Tok::And,
            "NOT" => Tok::Not,
            _ => Tok::Word {
                text: word,
                quoted: false,
            },
        };
        out.push((at, tok));
    }
    Ok(out)
}

fn is_at(at: usize) -> usize {
    at
}

struct Parser<'a> {
    toks: &'a [(usize, Tok)],
    pos: usize,
    now: i64,
    end: usize,
    /// Terms so far, and those ending in `*` (see [`MAX_TERMS`], [`MAX_PREFIXES`]).
    terms: usize,
    prefixes: usize,
}

impl Parser<'_> {
    /// Counts a term at `at` against the bounds on a query's work.
    fn count(&mut self, e: &Expr, at: usize) -> Result<(), QueryError> {
        // Each word of a phrase (or of a dotted or hyphenated word) is a walk of its own.
        self.terms += match e {
            Expr::Text { tokens, .. } => tokens.len().max(1),
            _ => 1,
        };
        if self.terms > MAX_TERMS {
            return Err(err(
                at,
                format!(
                    "a query holds at most {MAX_TERMS} terms, each word of a phrase counted; \
                     search in parts"
                ),
            ));
        }
        let prefix = match e {
            Expr::Text { prefix, .. } => *prefix,
            Expr::Match(_, Value::Prefix(p)) => !p.is_empty(),
            _ => false,
        };
        if prefix {
            self.prefixes += 1;
            if self.prefixes > MAX_PREFIXES {
                return Err(err(
                    at,
                    format!(
                        "a query holds at most {MAX_PREFIXES} values ending in `*` (each is \
                         matched against every word the index holds); search in parts"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn peek(&self) -> Option<&(usize, Tok)> {
        self.toks.get(self.pos)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, QueryError> {
        let mut parts = vec![self.and(depth)?];
        while let Some((_, Tok::Or)) = self.peek() {
            let at = self.peek().map(|t| t.0).unwrap_or(self.end);
            self.pos += 1;
            if matches!(
                self.peek(),
                None | Some((_, Tok::RParen)) | Some((_, Tok::Or))
            ) {
                return Err(err(at, "`OR` needs a term after it"));
            }
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, QueryError> {
        let mut parts = Vec::new();
        loop {
            match self.peek() {
                None | Some((_, Tok::RParen)) | Some((_, Tok::Or)) => break,
                Some((at, Tok::And)) => {
                    let at = *at;
                    self.pos += 1;
                    if parts.is_empty()
                        || matches!(
                            self.peek(),
                            None | Some((_, Tok::RParen)) | Some((_, Tok::Or))
                        )
                    {
                        return Err(err(at, "`AND` needs a term on each side"));
                    }
                }
                _ => parts.push(self.unary(depth)?),
            }
        }
        if parts.is_empty() {
            let at = self.peek().map(|t| t.0).unwrap_or(self.end);
            return Err(err(at, "expected a term here"));
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, QueryError> {
        if depth > MAX_DEPTH {
            let at = self.peek().map(|t| t.0).unwrap_or(self.end);
            return Err(err(at, "nested too deeply"));
        }
        let Some((at, tok)) = self.peek().cloned() else {
            return Err(err(self.end, "expected a term here"));
        };
        self.pos += 1;
        match tok {
            Tok::Not => {
                if matches!(
                    self.peek(),
                    None | Some((_, Tok::RParen)) | Some((_, Tok::Or)) | Some((_, Tok::And))
                ) {
                    return Err(err(at, "`-` needs a term after it"));
                }
                Ok(Expr::Not(Box::new(self.unary(depth + 1)?)))
            }
            Tok::LParen => {
                if let Some((_, Tok::RParen)) = self.peek() {
                    return Err(err(at, "empty parentheses"));
                }
                let inner = self.or(depth + 1)?;
                match self.peek() {
                    Some((_, Tok::RParen)) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(err(at, "this parenthesis is never closed")),
                }
            }
            Tok::RParen => Err(err(at, "`)` without a matching `(`")),
            Tok::Or | Tok::And => Err(err(at, "expected a term here")),
            Tok::Word { text, quoted } => {
                let e = text_expr(&text, quoted, at)?;
                self.count(&e, at)?;
                Ok(e)
            }
            Tok::Qual {
                name,
                value,
                quoted,
                value_at,
            } => {
                let field = Field::by_name(&name).ok_or_else(|| {
                    err(
                        at,
                        format!(
                            "unknown qualifier `{name}:`; known: {}",
                            Field::NAMES
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                let e = qualifier(field, &value, quoted, value_at, self.now)?;
                self.count(&e, at)?;
                Ok(e)
            }
        }
    }
}

fn text_expr(text: &str, quoted: bool, at: usize) -> Result<Expr, QueryError> {
    let (body, prefix) = match text.strip_suffix('*') {
        Some(b) if !quoted => (b, true),
        _ => (text, false),
    };
    // The index keeps no word of 40 bytes or more (hashes, ids of 64 hex digits): one in the
    // query would be dropped, silently widening a phrase, so it is refused with the way round.
    if let Some(long) = body
        .split(|c: char| !c.is_alphanumeric())
        .find(|t| t.len() >= 40)
    {
        return Err(err(
            at,
            format!(
                "`{long}` is too long a word for free text (the index keeps words under 40 \
                 bytes): search a field for it (credential:, request:, …) or its start with `*`"
            ),
        ));
    }
    let tokens = tokenize(body);
    if tokens.is_empty() {
        return Err(err(
            at,
            format!("`{text}` has no letters or digits to search for"),
        ));
    }
    Ok(Expr::Text { tokens, prefix })
}

fn qualifier(
    field: Field,
    value: &str,
    quoted: bool,
    at: usize,
    now: i64,
) -> Result<Expr, QueryError> {
    match field {
        Field::Time => {
            time_value(value, at, now).map(|(a, b)| Expr::Match(field, Value::Time(a, b)))
        }
        Field::Seq => seq_value(value, at).map(|(a, b)| Expr::Match(field, Value::Seq(a, b))),
        Field::Ip => ip_value(value, at).map(|(a, b)| Expr::Match(field, Value::Network(a, b))),
        _ => {
            let lower = value.to_lowercase();
            match lower.strip_suffix('*') {
                Some(p) if !quoted => {
                    if p.contains('*') {
                        return Err(err(at, "`*` may only end a value"));
                    }
                    if p.len() > MAX_PREFIX_BYTES {
                        return Err(err(
                            at,
                            format!("a value before `*` is at most {MAX_PREFIX_BYTES} bytes"),
                        ));
                    }
                    Ok(Expr::Match(field, Value::Prefix(p.to_string())))
                }
                _ => {
                    if !quoted && lower.contains('*') {
                        return Err(err(at, "`*` may only end a value"));
                    }
                    Ok(Expr::Match(field, Value::Term(lower)))
                }
            }
        }
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A point in time: `(start, end)` of the instant or day it names.
fn instant(s: &str, at: usize, now: i64) -> Result<(i64, i64), QueryError> {
    if let Some(rel) = s.strip_prefix('-') {
        let cut = rel.char_indices().last().map_or(0, |(i, _)| i);
        let (num, unit) = rel.split_at(cut);
        let n: i64 = num
            .parse()
            .ok()
            .filter(|n: &i64| *n >= 0 && *n <= 100_000)
            .ok_or_else(|| err(at, format!("`{s}` is not a relative time like -24h or -7d")))?;
        let unit_us: i64 = match unit {
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => MICROS_PER_DAY,
            "w" => 7 * MICROS_PER_DAY,
            _ => return Err(err(at, format!("`{s}`: the unit must be s, m, h, d or w"))),
        };
        let t = now - n * unit_us;
        return Ok((t, t + 1));
    }
    if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        let t = grantline_ledger::Timestamp::parse_rfc3339(&format!("{s}T00:00:00Z"))
            .ok_or_else(|| err(at, format!("`{s}` is not a date (YYYY-MM-DD)")))?;
        return Ok((t.0, t.0 + MICROS_PER_DAY));
    }
    let t = rfc3339(s).ok_or_else(|| {
        err(
            at,
            format!("`{s}` is not a date, an RFC 3339 time or a relative time like -24h"),
        )
    })?;
    Ok((t, t + 1))
}

/// RFC 3339 with `Z` or a numeric offset, to UTC microseconds.
fn rfc3339(s: &str) -> Option<i64> {
    if let Some(t) = grantline_ledger::Timestamp::parse_rfc3339(s) {
        return Some(t.0);
    }
    let (body, sign, off) = {
        let n = s.len();
        if n < 6 || !s.is_char_boundary(n - 6) {
            return None;
        }
        let (b, o) = s.split_at(n - 6);
        let sign = match o.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        (b, sign, &o[1..])
    };
    let (hh, mm) = off.split_once(':')?;
    let (hh, mm): (i64, i64) = (hh.parse().ok()?, mm.parse().ok()?);
    if hh > 23 || mm > 59 {
        return None;
    }
    let t = grantline_ledger::Timestamp::parse_rfc3339(&format!("{body}Z"))?;
    Some(t.0 - sign * (hh * 3600 + mm * 60) * 1_000_000)
}

fn time_value(v: &str, at: usize, now: i64) -> Result<(Option<i64>, Option<i64>), QueryError> {
    if let Some((a, b)) = v.split_once("..") {
        let from = if a.is_empty() {
            None
        } else {
            Some(instant(a, at, now)?.0)
        };
        let to = if b.is_empty() {
            None
        } else {
            Some(instant(b, at + a.chars().count() + 2, now)?.1)
        };
        if from.is_none() && to.is_none() {
            return Err(err(at, "a range needs at least one end"));
        }
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(err(at, format!("`{v}` ends before it starts")));
        }
        return Ok((from, to));
    }
    let (op, rest) = split_op(v);
    let (start, end) = instant(rest, at + op.len(), now)?;
    Ok(match op {
        ">" => (Some(end), None),
        ">=" => (Some(start), None),
        "<" => (None, Some(start)),
        "<=" => (None, Some(end)),
        _ => (Some(start), Some(end)),
    })
}

fn split_op(v: &str) -> (&str, &str) {
    for op in [">=", "<=", ">", "<"] {
        if let Some(rest) = v.strip_prefix(op) {
            return (op, rest);
        }
    }
    ("", v)
}

fn seq_value(v: &str, at: usize) -> Result<(u64, u64), QueryError> {
    let num = |s: &str, at: usize| {
        s.parse::<u64>()
            .map_err(|_| err(at, format!("`{s}` is not a sequence number")))
    };
    if let Some((a, b)) = v.split_once("..") {
        let from = if a.is_empty() { 0 } else { num(a, at)? };
        let to = if b.is_empty() {
            u64::MAX
        } else {
            num(b, at + a.chars().count() + 2)?
        };
        if from > to {
            return Err(err(at, format!("`{v}` ends before it starts")));
        }
        return Ok((from, to));
    }
    let (op, rest) = split_op(v);
    let n = num(rest, at + op.len())?;
    Ok(match op {
        ">" => (n.saturating_add(1), u64::MAX),
        ">=" => (n, u64::MAX),
        "<" => (
            0,
            n.checked_sub(1)
                .ok_or_else(|| err(at, "no seq is below 0"))?,
        ),
        "<=" => (0, n),
        _ => (n, n),
    })
}

/// An address as IPv6 (IPv4 mapped), the form the index keeps.
pub fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn ip_value(v: &str, at: usize) -> Result<(Ipv6Addr, Ipv6Addr), QueryError> {
    let bad = || err(at, format!("`{v}` is not an IP address or a CIDR network"));
    let (addr, len) = match v.split_once('/') {
        // At most three digits: no length a network has, and no sum below to overflow.
        Some((a, l)) if l.len() <= 3 => (a, Some(l.parse::<u32>().map_err(|_| bad())?)),
        Some(_) => return Err(bad()),
        None => (v, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let (bits, max) = match ip {
        IpAddr::V4(_) => (len.map(|l| l + 96), 32),
        IpAddr::V6(_) => (len, 128),
    };
    if len.is_some_and(|l| l > max) {
        return Err(err(
            at,
            format!("`{v}`: the prefix length is at most {max}"),
        ));
    }
    let bits = bits.unwrap_or(128);
    let x = u128::from(to_v6(ip));
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    Ok((Ipv6Addr::from(x & mask), Ipv6Addr::from(x | !mask)))
}

/// Parses `q`, resolving relative times against `now` (microseconds). The empty query is
/// [`Expr::All`].
pub fn parse(q: &str, now: i64) -> Result<Expr, QueryError> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(err(
            1,
            format!("the query is longer than {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let toks = lex(q)?;
    if toks.is_empty() {
        return Ok(Expr::All);
    }
    let mut p = Parser {
        toks: &toks,
        pos: 0,
        now,
        end: q.chars().count() + 1,
        terms: 0,
        prefixes: 0,
    };
    let e = p.or(0)?;
    if let Some((at, _)) = p.peek() {
        return Err(err(*at, "`)` without a matching `(`"));
    }
    Ok(e)
}
