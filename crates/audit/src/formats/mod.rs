//! Export formats for SIEMs and reviewers. Each takes an [`ExportItem`]: the event as recorded
//! (body decoded, personal data opened, erased or redacted) with its chain position, and the
//! reviewer's [`AuditRecord`] of it.

pub mod cef;
pub mod csv;
pub mod ecs;
pub mod ocsf;

use crate::keys::KeyCache;
use crate::mapping::{AsOf, Changes, Directory, Names, Opener, Recording, changes_names, map};
use crate::record::{AuditRecord, REDACTED};
use grantline_ledger::codec::PayloadBody;
use grantline_ledger::pii::Opened;
use grantline_ledger::{Recorded, Sealed};
use grantline_store::{Keyring, StoreError};
use serde_json::Value;
use std::ops::Range;

/// The product name and version every format names.
pub const PRODUCT: &str = "Grantline";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The event as recorded, body decoded, one JSON object per line.
    Jsonl,
    /// OCSF 1.8.0, one JSON object per line.
    Ocsf,
    /// Elastic Common Schema, one JSON object per line.
    Ecs,
    /// ArcSight CEF, one line per event.
    Cef,
    /// The reviewer's columns, RFC 4180.
    Csv,
}

impl Format {
    pub const ALL: &'static [Format] = &[
        Format::Jsonl,
        Format::Ocsf,
        Format::Ecs,
        Format::Cef,
        Format::Csv,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Ocsf => "ocsf",
            Format::Ecs => "ecs",
            Format::Cef => "cef",
            Format::Csv => "csv",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.iter().copied().find(|f| f.as_str() == s)
    }

    /// The HTTP content type of a document in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Cef => "text/plain; charset=utf-8",
            _ => "application/x-ndjson",
        }
    }

    /// The first line of a document, if the format has one.
    pub fn header(self) -> Option<String> {
        (self == Format::Csv).then(csv::header)
    }

    /// One item as one line (no newline).
    pub fn line(self, item: &ExportItem) -> String {
        let mut out = Vec::with_capacity(1024);
        self.write_line(item, &mut out);
        // Every format writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends one item as one line (no newline) to `out`: what an export loop calls with one
    /// buffer reused for every event.
    pub fn write_line(self, item: &ExportItem, out: &mut Vec<u8>) {
        match self {
            // Writing a JSON value into a Vec cannot fail.
            Format::Jsonl => out.extend_from_slice(&item.json),
            Format::Ocsf => ocsf::write(item, out),
            Format::Ecs => drop(serde_json::to_writer(&mut *out, &ecs::record(item))),
            Format::Cef => out.extend_from_slice(cef::line(item).as_bytes()),
            Format::Csv => out.extend_from_slice(csv::row(&item.record).as_bytes()),
        }
    }
}

/// One event ready for export.
#[derive(Debug, Clone)]
pub struct ExportItem {
    /// The event as recorded, one JSON object: the envelope's fields in the body's order,
    /// personal data opened (or `[erased]`/`[redacted]`), then `hash` and `prev_hash`.
    pub json: Vec<u8>,
    /// Where the value of `stream` is in `json`.
    pub stream: Range<usize>,
    /// Where the value of `payload` is in `json`.
    pub payload: Range<usize>,
    pub record: AuditRecord,
    pub prev_hash: String,
}

impl ExportItem {
    /// The event as recorded, as a JSON value (for pages and tools that show one event).
    pub fn event(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// The payload as recorded, JSON text.
    pub fn payload_json(&self) -> &[u8] {
        self.json.get(self.payload.clone()).unwrap_or(b"null")
    }

    /// The stream as recorded, JSON text.
    pub fn stream_json(&self) -> &[u8] {
        self.json.get(self.stream.clone()).unwrap_or(b"null")
    }
}

/// Builds export items in seq order: opens personal data (or masks it), keeps the names of
/// users and clients seen so far.
pub struct Exporter {
    keys: KeyCache,
    dir: Directory,
    redact: bool,
    /// The buffers the parts of a span are rendered into, kept from page to page: fresh ones
    /// of a page's size would be new memory the kernel zeroes every time.
    parts: Vec<Vec<u8>>,
}

/// Opens for one item: masks what it opens when asked, and opens each sealed value once
/// (the mapping and the event as recorded both read it).
struct Masking<'a> {
    inner: &'a mut dyn Opener,
    mask: Option<&'static str>,
    opened: Opened,
}

impl Opener for Masking<'_> {
    fn open(&mut self, s: &Sealed) -> Option<String> {
        if let Some((_, v)) = self.opened.iter().find(|(n, _)| *n == s.nonce) {
            return v.clone();
        }
        let v = match (self.inner.open(s), self.mask) {
            (Some(_), Some(mask)) => Some(mask.to_string()),
            (v, _) => v,
        };
        self.opened.push((s.nonce, v.clone()));
        v
    }
}

impl Exporter {
    /// `dir`: the names known before the first event exported (from the index, or a pass
    /// over the ledger before `after`). `redact`: leave personal data out.
    pub fn new(keyring: Keyring, dir: Directory, redact: bool) -> Exporter {
        let keys = KeyCache::new(keyring);
        Exporter {
            keys,
            dir,
            redact,
            parts: Vec::new(),
        }
    }

    /// After `user.erased`, the user's personal data reads as `[erased]` whether or not the
    /// erasure itself is exported, even before their key is deleted.
    fn forget_if_erased(&mut self, r: &Recorded) {
        if let grantline_ledger::Payload::UserErased(e) = r.payload() {
            self.keys
                .forget(&grantline_ledger::pii::user_subject(&e.user_id));
        }
    }

    /// Learns names (and erasures) from an event that is not exported: one before the export
    /// range, or of a kind left out (no keys needed for clients).
    pub async fn learn(&mut self, r: &Recorded) -> Result<(), StoreError> {
        if changes_names(r) {
            self.forget_if_erased(r);
            self.keys.prepare(r).await?;
            map(r, &mut self.dir, &mut self.keys.opener());
        }
        Ok(())
    }

    /// The export item of `r` (mapped once when its keys are cached, again after loading
    /// them when not; kinds that name users or clients are tried against a scratch directory first).
    pub async fn item(&mut self, r: &Recorded) -> Result<ExportItem, StoreError> {
        self.forget_if_erased(r);
        if !changes_names(r) {
            return self.item_as_of(r, &Changes::default()).await;
        }
        let mask = self.redact.then_some(REDACTED);
        self.load_keys(std::iter::once(r), mask).await?;
        Ok(build_item(r, &mut self.dir, &mut self.keys.opener(), mask))
    }

    /// The item of an event that changes no names, read with the names as of its seq
    /// (`changes` over the directory): mapped once when its keys are cached, again after
    /// loading them when not.
    async fn item_as_of(
        &mut self,
        r: &Recorded,
        changes: &Changes,
    ) -> Result<ExportItem, StoreError> {
        let mask = self.redact.then_some(REDACTED);
        let mut tries = 0;
        loop {
            let mut opener = self.keys.opener();
            let names = &mut AsOf {
                dir: &self.dir,
                changes,
                seq: r.seq(),
            };
            let item = build_item(r, names, &mut opener, mask);
            tries += 1;
            // A key that cannot be loaded reads as erased.
            if opener.missing.is_empty() || tries > 4 {
                return Ok(item);
            }
            self.keys.load(opener.missing).await?;
        }
    }
}

impl Exporter {
    /// Writes the lines of the events of a page that `wanted` selects, in `format`, in seq
    /// order, each followed by a newline, and learns names from the others: what calling
    /// [`Exporter::item`] or [`Exporter::learn`] on each in turn writes, with the mapping and
    /// formatting spread over the machine's cores. Returns how many lines.
    pub async fn write_page(
        &mut self,
        events: &[Recorded],
        wanted: &(dyn Fn(&Recorded) -> bool + Sync),
        format: Format,
        out: &mut Vec<u8>,
    ) -> Result<u64, StoreError> {
        let mut lines = 0;
        let mut rest = events;
        // An erasure changes which keys open what: the events before it are written first,
        // then it alone.
        while let Some(i) = rest.iter().position(is_erasure) {
            lines += self.write_span(&rest[..i], wanted, format, out).await?;
            let r = &rest[i];
            if wanted(r) {
                let item = self.item(r).await?;
                format.write_line(&item, out);
                out.push(b'\n');
                lines += 1;
            } else {
                self.learn(r).await?;
            }
            rest = &rest[i + 1..];
        }
        lines += self.write_span(rest, wanted, format, out).await?;
        Ok(lines)
    }

    /// Writes a span of events holding no erasure. First, in order, the few that change names
    /// are mapped (their keys loaded) and their changes recorded at their seqs; then the
    /// wanted events are split over the cores, each mapped with the names as of its seq; an
    /// event whose keys were not loaded yet is written again, in its place, once they are.
    async fn write_span(
        &mut self,
        span: &[Recorded],
        wanted: &(dyn Fn(&Recorded) -> bool + Sync),
        format: Format,
        out: &mut Vec<u8>,
    ) -> Result<u64, StoreError> {
        let mask = self.redact.then_some(REDACTED);
        let mut changes = Changes::default();
        // The lines of the events that change names, by their index in `span`.
        let mut aside: Vec<(usize, Vec<u8>)> = Vec::new();
        self.load_keys(span.iter().filter(|r| changes_names(r)), mask)
            .await?;
        for (i, r) in span.iter().enumerate().filter(|(_, r)| changes_names(r)) {
            let mut names = Recording {
                dir: &self.dir,
                changes: &mut changes,
                seq: r.seq(),
            };
            if wanted(r) {
                let item = build_item(r, &mut names, &mut self.keys.opener(), mask);
                let mut line = Vec::with_capacity(1024);
                format.write_line(&item, &mut line);
                line.push(b'\n');
                aside.push((i, line));
            } else {
                map(r, &mut names, &mut self.keys.opener());
            }
        }
        let chosen: Vec<usize> = (0..span.len()).filter(|&i| wanted(&span[i])).collect();
        if !chosen.is_empty() {
            let workers = cores().min(chosen.len().div_ceil(MIN_PART));
            let part = chosen.len().div_ceil(workers);
            // The first part is rendered straight into the caller's buffer, after what it
            // holds; the others into buffers kept from page to page, then appended. A caller
            // that clears and reuses its buffer gets no new memory page after page.
            let mut bufs = std::mem::take(&mut self.parts);
            bufs.resize_with(workers - 1, Vec::new);
            let base = out.len();
            let mut parts: Vec<Rendered> =
                {
                    let render = |at: &[usize], out: Vec<u8>| {
                        let env = Span {
                            events: span,
                            aside: &aside,
                            keys: &self.keys,
                            dir: &self.dir,
                            changes: &changes,
                            mask,
                            format,
                        };
                        env.render(at, out)
                    };
                    let mut chunks = chosen.chunks(part);
                    let first = chunks.next().unwrap_or_default();
                    let first_buf = std::mem::take(out);
                    off_the_runtime(|| {
                        std::thread::scope(|s| {
                            let others: Vec<_> = chunks
                                .zip(bufs)
                                .map(|(c, mut b)| {
                                    b.clear();
                                    s.spawn(move || render(c, b))
                                })
                                .collect();
                            let mut parts = vec![render(first, first_buf)];
                            // A part that panicked (a bug) panics here too.
                            parts.extend(others.into_iter().map(|h| {
                                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
                            }));
                            parts
                        })
                    })
                };
            // The caller's buffer back, holding what it held and the first part's lines.
            *out = std::mem::take(&mut parts[0].out);
            let missing: Vec<String> = parts
                .iter()
                .flat_map(|p| p.missing.iter().flat_map(|(_, s)| s.iter().cloned()))
                .collect();
            if missing.is_empty() {
                out.reserve(parts[1..].iter().map(|p| p.out.len()).sum());
                for p in &parts[1..] {
                    out.extend_from_slice(&p.out);
                }
            } else {
                // Rare (keys not loaded yet): the first part's lines are taken out again and
                // every part is written anew, event by event where a key was missing.
                parts[0].out = out.split_off(base);
                for end in &mut parts[0].ends {
                    *end -= base;
                }
                self.keys.load(missing).await?;
                for (p, at) in parts.iter().zip(chosen.chunks(part)) {
                    let mut from = 0;
                    for &(j, _) in &p.missing {
                        out.extend_from_slice(&p.out[from..p.ends[j]]);
                        from = p.ends[j];
                        let item = self.item_as_of(&span[at[j]], &changes).await?;
                        format.write_line(&item, out);
                        out.push(b'\n');
                    }
                    out.extend_from_slice(&p.out[from..]);
                }
            }
            // Kept for the next page, but not at the size of a catch-up once pages are small.
            self.parts = parts
                .into_iter()
                .skip(1)
                .map(|p| {
                    let mut b = p.out;
                    b.clear();
                    b.shrink_to(chosen.len().max(MIN_PART) * 4096);
                    b
                })
                .collect();
        }
        changes.apply(&mut self.dir);
        Ok(chosen.len() as u64)
    }

    /// Loads every key the items of `events` open, in as few queries as it can (for events
    /// that change names, before they are mapped for real: a name is never remembered as
    /// erased for want of a key).
    async fn load_keys<'r>(
        &mut self,
        events: impl Iterator<Item = &'r Recorded> + Clone,
        mask: Option<&'static str>,
    ) -> Result<(), StoreError> {
        for _ in 0..4 {
            let mut missing = Vec::new();
            for r in events.clone() {
                let mut opener = self.keys.opener();
                build_item(r, &mut Directory::default(), &mut opener, mask);
                missing.extend(opener.missing);
            }
            if missing.is_empty() {
                break;
            }
            self.keys.load(missing).await?;
        }
        Ok(())
    }
}

fn is_erasure(r: &Recorded) -> bool {
    r.envelope.kind() == grantline_ledger::Kind::UserErased
}

/// The cores the export spreads a page over (at most 4), asked once.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4)
    })
}

/// Below this many events a span is not split further.
const MIN_PART: usize = 256;

/// The lines of one part of a span: `ends[j]` is where the `j`th event's line ends in `out`;
/// an event whose keys are not loaded has no line, and is listed in `missing` with the
/// subjects.
struct Rendered {
    out: Vec<u8>,
    ends: Vec<usize>,
    missing: Vec<(usize, Vec<String>)>,
}

/// What every part of a span reads.
struct Span<'a> {
    events: &'a [Recorded],
    aside: &'a [(usize, Vec<u8>)],
    keys: &'a KeyCache,
    dir: &'a Directory,
    changes: &'a Changes,
    mask: Option<&'static str>,
    format: Format,
}

impl Span<'_> {
    /// Renders the events at indexes `at` of the span, in that order, after what `out` holds.
    fn render(&self, at: &[usize], out: Vec<u8>) -> Rendered {
        let mut r = Rendered {
            out,
            ends: Vec::with_capacity(at.len()),
            missing: Vec::new(),
        };
        // One buffer for the event as recorded, reused from event to event.
        let mut json = Vec::with_capacity(2048);
        for (j, &i) in at.iter().enumerate() {
            if let Ok(k) = self.aside.binary_search_by_key(&i, |(k, _)| *k) {
                r.out.extend_from_slice(&self.aside[k].1);
            } else {
                let e = &self.events[i];
                let mut opener = self.keys.opener();
                let mut names = AsOf {
                    dir: self.dir,
                    changes: self.changes,
                    seq: e.seq(),
                };
                let item = build_into(e, &mut names, &mut opener, self.mask, json);
                if opener.missing.is_empty() {
                    self.format.write_line(&item, &mut r.out);
                    r.out.push(b'\n');
                } else {
                    r.missing.push((j, opener.missing));
                }
                json = item.json;
            }
            r.ends.push(r.out.len());
        }
        r
    }
}

/// The export item of `r`, personal data opened with `o`, or replaced by `mask`.
pub fn build_item(
    r: &Recorded,
    dir: &mut impl Names,
    o: &mut dyn Opener,
    mask: Option<&'static str>,
) -> ExportItem {
    build_into(r, dir, o, mask, Vec::with_capacity(2048))
}

/// [`build_item`] with the event written into `json` (cleared first): a loop over many
/// events hands each item's buffer on to the next.
fn build_into(
    r: &Recorded,
    dir: &mut impl Names,
    o: &mut dyn Opener,
    mask: Option<&'static str>,
    mut json: Vec<u8>,
) -> ExportItem {
    let mut masking = Masking {
        inner: o,
        mask,
        opened: Vec::new(),
    };
    let mut record = map(r, dir, &mut masking);
    if let Some(m) = mask {
        record.mask_personal(m);
    }
    let prev_hash = r.prev_hash.to_hex();
    // The mapping opened most sealed values; one it did not read is opened here and the event
    // written again (at most as many times as it has sealed values, in practice once).
    let (stream, payload) = loop {
        json.clear();
        let (ranges, unopened) = grantline_ledger::pii::revealing(&mut masking.opened, || {
            write_event(r, [&record.hash, &prev_hash], &mut json)
        });
        if unopened.is_empty() {
            break ranges;
        }
        for s in &unopened {
            masking.open(s);
        }
    };
    ExportItem {
        json,
        stream,
        payload,
        record,
        prev_hash,
    }
}

/// Writes the event as recorded as one JSON object — the body's fields in its order, then
/// `hash` and `prev_hash` (hex, given) — and returns where the values of `stream` and
/// `payload` are.
/// Sealed values are written as [`grantline_ledger::pii::revealing`] has them.
fn write_event(
    r: &Recorded,
    [hash, prev_hash]: [&str; 2],
    out: &mut Vec<u8>,
) -> (Range<usize>, Range<usize>) {
    // Serializing ids, numbers, strings and payload structs into a Vec cannot fail.
    fn put(out: &mut Vec<u8>, v: &impl serde::Serialize) {
        let _ = sonic_rs::to_writer(&mut *out, v);
    }
    let e = &r.envelope;
    out.extend_from_slice(b"{\"seq\":");
    put(out, &e.seq);
    out.extend_from_slice(b",\"id\":");
    put(out, &e.id);
    out.extend_from_slice(b",\"time\":");
    put(out, &e.time);
    out.extend_from_slice(b",\"stream\":");
    let start = out.len();
    put(out, &e.stream);
    let stream = start..out.len();
    out.extend_from_slice(b",\"version\":");
    put(out, &e.version);
    out.extend_from_slice(b",\"kind\":");
    put(out, &e.kind().as_str());
    out.extend_from_slice(b",\"actor\":");
    put(out, &e.actor);
    if let Some(t) = &e.tenant {
        out.extend_from_slice(b",\"tenant\":");
        put(out, t);
    }
    out.extend_from_slice(b",\"payload\":");
    let start = out.len();
    put(out, &PayloadBody(&e.payload));
    let payload = start..out.len();
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\",\"prev_hash\":\"");
    out.extend_from_slice(prev_hash.as_bytes());
    out.extend_from_slice(b"\"}");
    (stream, payload)
}

/// Runs `f`, CPU work of many milliseconds (a page of up to 10,000 records), letting the
/// runtime move its other tasks off this worker meanwhile where it can (a multi-threaded
/// runtime): the server's two workers on a two-core host serve every other request.
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
