//! The CBOR body: how an [`Envelope`] becomes the bytes that are stored and hashed, and back.
//!
//! The body is a CBOR map with text keys in a fixed order: `seq`, `id` (16-byte UUIDv7),
//! `time` (µs), `stream`, `version`, `kind`, `actor`, `tenant` (only when set), `payload`.
//! Decoding reads `kind` before `payload` and picks the payload type from it; malformed,
//! truncated or inconsistent input is an error, never a panic.

use crate::payload::PayloadSeed;
use crate::{Actor, Envelope, Header, Kind, StreamId, Timestamp};

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserializer, Serialize, Serializer};
use std::fmt;
use uuid::Uuid;

/// Why a body could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("malformed CBOR body: {0}")]
    Malformed(String),
    #[error("body could not be encoded: {0}")]
    Encode(String),
    /// The writer refuses to append this event (see [`encode_for_append`]).
    #[error("event refused by the ledger: {0}")]
    Refused(String),
}

/// The largest body the writer appends. Every caller-supplied value is bounded well below
/// this by the deciders; this is the ledger's own last line.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Encodes an envelope for appending, refusing what a reader could not read back: a stream
/// name [`StreamId::parse`] would not accept, a body over [`MAX_BODY_BYTES`], or a body that
/// does not decode to the same envelope. The writer stores nothing its readers would refuse.
pub fn encode_for_append(envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
    if !envelope.stream.is_valid() {
        return Err(CodecError::Refused(format!(
            "stream name is not valid ({} bytes)",
            envelope.stream.as_str().len()
        )));
    }
    let body = encode(envelope)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(CodecError::Refused(format!(
            "{} event body of {} bytes is over the {MAX_BODY_BYTES}-byte limit",
            envelope.kind().as_str(),
            body.len()
        )));
    }
    match decode(&body) {
        Ok(back) if &back == envelope => Ok(body),
        Ok(_) => Err(CodecError::Refused(
            "the body does not decode to the same event".into(),
        )),
        Err(e) => Err(CodecError::Refused(format!(
            "the body would not read back: {e}"
        ))),
    }
}

/// An event's body without its head: the CBOR of its `actor`, `tenant` (when set) and
/// `payload` entries, exactly as they appear at the end of the body. The appender encodes and
/// checks it outside the append lock ([`encode_tail`]); the writer only frames it behind the
/// head it assigns ([`frame`]). The bytes are the same as [`encode`]'s: no new body format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    bytes: Vec<u8>,
    entries: u8,
}

impl Tail {
    /// The encoded entries.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The fields the writer assigns under the append lock: everything before `actor` in a body.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub seq: u64,
    pub id: Uuid,
    pub time: Timestamp,
    pub stream: &'a StreamId,
    pub version: u64,
    pub kind: Kind,
}

/// Encodes and checks what the appender can of an event's body: the stream name is valid, the
/// actor, tenant and payload read back as themselves, and the body cannot be far over
/// [`MAX_BODY_BYTES`] (the writer checks the exact size once framed). The same refusals as
/// [`encode_for_append`], moved off the writer's thread.
pub fn encode_tail(event: &crate::NewEvent) -> Result<Tail, CodecError> {
    if !event.stream.is_valid() {
        return Err(CodecError::Refused(format!(
            "stream name is not valid ({} bytes)",
            event.stream.as_str().len()
        )));
    }
    let kind = event.payload.kind();
    let head = Head {
        seq: 0,
        id: Uuid::nil(),
        time: Timestamp(0),
        stream: &event.stream,
        version: 0,
        kind,
    };
    let view = EnvelopeRef {
        head,
        actor: &event.actor,
        tenant: event.tenant.as_deref(),
        payload: &event.payload,
    };
    let mut body = Vec::with_capacity(512);
    ciborium::into_writer(&view, &mut body).map_err(|e| CodecError::Encode(e.to_string()))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(CodecError::Refused(format!(
            "{} event body of {} bytes is over the {MAX_BODY_BYTES}-byte limit",
            kind.as_str(),
            body.len()
        )));
    }
    let entries = if event.tenant.is_some() { 9 } else { 8 };
    let mut head_bytes = Vec::with_capacity(64);
    write_head(&mut head_bytes, &head, entries);
    if !body.starts_with(&head_bytes) {
        return Err(CodecError::Encode(
            "the body does not begin with the head the writer frames".into(),
        ));
    }
    match decode(&body) {
        Ok(back)
            if back.actor == event.actor
                && back.tenant == event.tenant
                && back.payload == event.payload
                && back.stream == event.stream => {}
        Ok(_) => {
            return Err(CodecError::Refused(
                "the body does not decode to the same event".into(),
            ));
        }
        Err(e) => {
            return Err(CodecError::Refused(format!(
                "the body would not read back: {e}"
            )));
        }
    }
    body.drain(..head_bytes.len());
    Ok(Tail {
        bytes: body,
        entries,
    })
}

/// Writes a whole body into `out` (cleared first): the head the writer assigns, then the
/// appender's [`Tail`]. Refuses a body over [`MAX_BODY_BYTES`].
pub fn frame(out: &mut Vec<u8>, head: &Head<'_>, tail: &Tail) -> Result<(), CodecError> {
    out.clear();
    write_head(out, head, tail.entries);
    out.extend_from_slice(&tail.bytes);
    if out.len() > MAX_BODY_BYTES {
        return Err(CodecError::Refused(format!(
            "{} event body of {} bytes is over the {MAX_BODY_BYTES}-byte limit",
            head.kind.as_str(),
            out.len()
        )));
    }
    Ok(())
}

/// The CBOR head of a body as ciborium writes it (shortest-form integers, definite lengths).
fn write_head(out: &mut Vec<u8>, head: &Head<'_>, entries: u8) {
    put_head(out, 5, entries as u64);
    put_text(out, "seq");
    put_head(out, 0, head.seq);
    put_text(out, "id");
    put_head(out, 2, 16);
    out.extend_from_slice(head.id.as_bytes());
    put_text(out, "time");
    match head.time.0 {
        t if t >= 0 => put_head(out, 0, t as u64),
        t => put_head(out, 1, (-1 - t) as u64),
    }
    put_text(out, "stream");
    put_text(out, head.stream.as_str());
    put_text(out, "version");
    put_head(out, 0, head.version);
    put_text(out, "kind");
    put_text(out, head.kind.as_str());
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// A body's fields, borrowed: what both [`encode`] and [`encode_tail`] serialize.
struct EnvelopeRef<'a> {
    head: Head<'a>,
    actor: &'a Actor,
    tenant: Option<&'a str>,
    payload: &'a crate::Payload,
}

impl Serialize for EnvelopeRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = if self.tenant.is_some() { 9 } else { 8 };
        let mut m = s.serialize_map(Some(n))?;
        m.serialize_entry("seq", &self.head.seq)?;
        m.serialize_entry("id", &self.head.id)?;
        m.serialize_entry("time", &self.head.time)?;
        m.serialize_entry("stream", self.head.stream)?;
        m.serialize_entry("version", &self.head.version)?;
        m.serialize_entry("kind", self.head.kind.as_str())?;
        m.serialize_entry("actor", self.actor)?;
        if let Some(t) = self.tenant {
            m.serialize_entry("tenant", t)?;
        }
        m.serialize_entry("payload", &PayloadBody(self.payload))?;
        m.end()
    }
}

/// A payload's own fields, without its kind: what an event body (and the event as an export
/// writes it) holds under `payload`.
pub struct PayloadBody<'a>(pub &'a crate::Payload);

impl Serialize for PayloadBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_body(s)
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EnvelopeRef {
            head: Head {
                seq: self.seq,
                id: self.id,
                time: self.time,
                stream: &self.stream,
                version: self.version,
                kind: self.kind(),
            },
            actor: &self.actor,
            tenant: self.tenant.as_deref(),
            payload: &self.payload,
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parts = d.deserialize_map(EnvelopeVisitor)?;
        let kind = Kind::parse(&parts.header.kind)
            .ok_or_else(|| de::Error::custom(format!("unknown kind {:?}", parts.header.kind)))?;
        let payload = parts
            .payload
            .ok_or_else(|| de::Error::missing_field("payload"))?;
        if payload.kind() != kind {
            return Err(de::Error::custom("payload does not match kind"));
        }
        Ok(Envelope {
            seq: parts.header.seq,
            id: parts.header.id,
            time: parts.header.time,
            stream: parts.header.stream,
            version: parts.header.version,
            actor: parts
                .actor
                .ok_or_else(|| de::Error::missing_field("actor"))?,
            tenant: parts.tenant,
            payload,
        })
    }
}

struct Parts {
    header: Header,
    actor: Option<Actor>,
    tenant: Option<String>,
    payload: Option<crate::Payload>,
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Parts;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event envelope map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
        let mut seq = None;
        let mut id: Option<Uuid> = None;
        let mut time = None;
        let mut stream: Option<StreamId> = None;
        let mut version = None;
        let mut kind: Option<String> = None;
        let mut actor = None;
        let mut tenant = None;
        let mut payload = None;
        let mut saw_payload = false;
        fn dup<E: de::Error>(k: &'static str) -> E {
            E::custom(format!("duplicate key {k:?}"))
        }
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "seq" if seq.is_none() => seq = Some(map.next_value::<u64>()?),
                "id" if id.is_none() => id = Some(map.next_value()?),
                "time" if time.is_none() => time = Some(map.next_value::<Timestamp>()?),
                "stream" if stream.is_none() => stream = Some(map.next_value()?),
                "version" if version.is_none() => version = Some(map.next_value::<u64>()?),
                "kind" if kind.is_none() => kind = Some(map.next_value::<String>()?),
                "actor" if actor.is_none() => actor = Some(map.next_value::<Actor>()?),
                "tenant" if tenant.is_none() => tenant = Some(map.next_value::<String>()?),
                "payload" if !saw_payload => {
                    saw_payload = true;
                    let k = kind
                        .as_deref()
                        .ok_or_else(|| de::Error::custom("payload before kind"))?;
                    let k = Kind::parse(k)
                        .ok_or_else(|| de::Error::custom(format!("unknown kind {k:?}")))?;
                    payload = Some(map.next_value_seed(PayloadSeed(k))?);
                }
                "seq" => return Err(dup("seq")),
                "id" => return Err(dup("id")),
                "time" => return Err(dup("time")),
                "stream" => return Err(dup("stream")),
                "version" => return Err(dup("version")),
                "kind" => return Err(dup("kind")),
                "actor" => return Err(dup("actor")),
                "tenant" => return Err(dup("tenant")),
                "payload" => return Err(dup("payload")),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !saw_payload {
            return Err(de::Error::missing_field("payload"));
        }
        Ok(Parts {
            header: Header {
                seq: seq.ok_or_else(|| de::Error::missing_field("seq"))?,
                id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                time: time.ok_or_else(|| de::Error::missing_field("time"))?,
                stream: stream.ok_or_else(|| de::Error::missing_field("stream"))?,
                version: version.ok_or_else(|| de::Error::missing_field("version"))?,
                kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            },
            actor,
            tenant,
            payload,
        })
    }
}

/// Encodes an envelope as its CBOR body.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(384);
    ciborium::into_writer(envelope, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a whole body. The input must be exactly one CBOR item.
///
/// Read with `cbor4ii` from the slice (strings are borrowed while the envelope is built, not
/// copied through a scratch buffer as ciborium's reader does): the same CBOR, read about twice
/// as fast, which every replay, verification and export pays per event. The tests decode every
/// kind as ciborium wrote it, and the fixture ledger as it was written.
pub fn decode(body: &[u8]) -> Result<Envelope, CodecError> {
    use cbor4ii::core::dec::Read;
    let mut de = cbor4ii::serde::Deserializer::new(cbor4ii::core::utils::SliceReader::new(body));
    let env = <Envelope as serde::Deserialize>::deserialize(&mut de)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let mut rest = de.into_inner();
    let left = rest.fill(body.len()).map_or(0, |r| r.as_ref().len());
    if left != 0 {
        return Err(CodecError::Malformed(format!(
            "{left} trailing bytes after the body"
        )));
    }
    Ok(env)
}

/// Decodes only the indexed columns of a body (actor, tenant and payload skipped, not
/// interpreted): the fast path for verification, which compares them with the row's columns.
/// A small allocation-free CBOR scanner rather than serde, because `grantline verify` runs it
/// on every row; it accepts exactly the envelope shape [`encode`] writes and is checked
/// against [`decode`] by the tests.
pub fn decode_header(body: &[u8]) -> Result<Header, CodecError> {
    let mut r = Scan { buf: body, pos: 0 };
    let (major, n) = r.head()?;
    let n = match (major, n) {
        (5, Some(n)) => n,
        _ => return Err(malformed("body is not a definite-length map")),
    };
    let mut seq = None;
    let mut id = None;
    let mut time = None;
    let mut stream = None;
    let mut version = None;
    let mut kind: Option<&str> = None;
    let (mut actor, mut payload, mut tenant) = (false, false, false);
    for _ in 0..n {
        let key = r.text()?;
        let dup = || malformed(&format!("duplicate key {key:?}"));
        match key {
            "seq" => {
                if seq.replace(r.uint()?).is_some() {
                    return Err(dup());
                }
            }
            "id" => {
                let b = r.bytes()?;
                let u = Uuid::from_slice(b).map_err(|_| malformed("id is not 16 bytes"))?;
                if id.replace(u).is_some() {
                    return Err(dup());
                }
            }
            "time" => {
                if time.replace(r.int()?).is_some() {
                    return Err(dup());
                }
            }
            "stream" => {
                if stream.replace(r.text()?).is_some() {
                    return Err(dup());
                }
            }
            "version" => {
                if version.replace(r.uint()?).is_some() {
                    return Err(dup());
                }
            }
            "kind" => {
                if kind.replace(r.text()?).is_some() {
                    return Err(dup());
                }
            }
            "payload" => {
                if std::mem::replace(&mut payload, true) {
                    return Err(dup());
                }
                let k = kind.ok_or_else(|| malformed("payload before kind"))?;
                if Kind::parse(k).is_none() {
                    return Err(malformed(&format!("unknown kind {k:?}")));
                }
                r.skip(0)?;
            }
            "actor" | "tenant" => {
                let flag = if key == "actor" {
                    &mut actor
                } else {
                    &mut tenant
                };
                if std::mem::replace(flag, true) {
                    return Err(dup());
                }
                r.skip(0)?;
            }
            _ => r.skip(0)?,
        }
    }
    if r.pos != body.len() {
        return Err(malformed(&format!(
            "{} trailing bytes after the body",
            body.len() - r.pos
        )));
    }
    let missing = |f: &str| malformed(&format!("missing field `{f}`"));
    if !actor {
        return Err(missing("actor"));
    }
    if !payload {
        return Err(missing("payload"));
    }
    Ok(Header {
        seq: seq.ok_or_else(|| missing("seq"))?,
        id: id.ok_or_else(|| missing("id"))?,
        time: Timestamp(time.ok_or_else(|| missing("time"))?),
        stream: StreamId::from_raw(stream.ok_or_else(|| missing("stream"))?),
        version: version.ok_or_else(|| missing("version"))?,
        kind: kind.ok_or_else(|| missing("kind"))?.to_string(),
    })
}

fn malformed(m: &str) -> CodecError {
    CodecError::Malformed(m.to_string())
}

/// Deepest nesting the scanner follows (ciborium's default recursion limit is 256).
const MAX_DEPTH: usize = 128;

struct Scan<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], CodecError> {
        let n = usize::try_from(n).map_err(|_| malformed("length overflows"))?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| malformed("truncated body"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Major type and argument; `None` argument = indefinite length.
    fn head(&mut self) -> Result<(u8, Option<u64>), CodecError> {
        let b = self.take(1)?[0];
        let (major, ai) = (b >> 5, b & 0x1f);
        let arg = match ai {
            0..=23 => Some(ai as u64),
            24 => Some(self.take(1)?[0] as u64),
            25 => Some(u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]]) as u64),
            26 => {
                let s = self.take(4)?;
                Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64)
            }
            27 => {
                let s = self.take(8)?;
                Some(u64::from_be_bytes(
                    s.try_into().map_err(|_| malformed("head"))?,
                ))
            }
            31 if matches!(major, 2..=5 | 7) => None,
            _ => return Err(malformed("reserved additional information")),
        };
        Ok((major, arg))
    }

    fn uint(&mut self) -> Result<u64, CodecError> {
        match self.head()? {
            (0, Some(v)) => Ok(v),
            _ => Err(malformed("expected an unsigned integer")),
        }
    }

    fn int(&mut self) -> Result<i64, CodecError> {
        match self.head()? {
            (0, Some(v)) => i64::try_from(v).map_err(|_| malformed("integer overflows")),
            (1, Some(v)) => i64::try_from(v)
                .map(|v| -1 - v)
                .map_err(|_| malformed("integer overflows")),
            _ => Err(malformed("expected an integer")),
        }
    }

    fn text(&mut self) -> Result<&'a str, CodecError> {
        match self.head()? {
            (3, Some(n)) => {
                std::str::from_utf8(self.take(n)?).map_err(|_| malformed("invalid UTF-8"))
            }
            _ => Err(malformed("expected a definite-length text string")),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        match self.head()? {
            (2, Some(n)) => self.take(n),
            _ => Err(malformed("expected a definite-length byte string")),
        }
    }

    /// Skips one complete data item.
    fn skip(&mut self, depth: usize) -> Result<(), CodecError> {
        if depth > MAX_DEPTH {
            return Err(malformed("nesting too deep"));
        }
        let (major, arg) = self.head()?;
        match (major, arg) {
            (0 | 1, Some(_)) => Ok(()),
            // Skipped text is not UTF-8-checked: the header needs only its extent, and the
            // body's hash already pins every byte of it.
            (2 | 3, Some(n)) => self.take(n).map(|_| ()),
            (4, Some(n)) => (0..n).try_for_each(|_| self.skip(depth + 1)),
            (5, Some(n)) => (0..n).try_for_each(|_| {
                self.skip(depth + 1)?;
                self.skip(depth + 1)
            }),
            (2..=5, None) => loop {
                if self.buf.get(self.pos) == Some(&0xff) {
                    self.pos += 1;
                    return Ok(());
                }
                if self.pos >= self.buf.len() {
                    return Err(malformed("truncated body"));
                }
                self.skip(depth + 1)?;
                if major == 5 {
                    self.skip(depth + 1)?;
                }
            },
            (6, Some(_)) => self.skip(depth + 1),
            (7, Some(_)) => Ok(()), // simple values and floats: the head carried the bytes
            _ => Err(malformed("unexpected break")),
        }
    }
}
