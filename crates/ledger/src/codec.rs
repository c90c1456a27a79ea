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
}

struct PayloadBody<'a>(&'a crate::Payload);

impl Serialize for PayloadBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_body(s)
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = if self.tenant.is_some() { 9 } else { 8 };
        let mut m = s.serialize_map(Some(n))?;
        m.serialize_entry("seq", &self.seq)?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("time", &self.time)?;
        m.serialize_entry("stream", &self.stream)?;
        m.serialize_entry("version", &self.version)?;
        m.serialize_entry("kind", self.kind().as_str())?;
        m.serialize_entry("actor", &self.actor)?;
        if let Some(t) = &self.tenant {
            m.serialize_entry("tenant", t)?;
        }
        m.serialize_entry("payload", &PayloadBody(&self.payload))?;
        m.end()
    }
}

impl<'de> serde::Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parts = d.deserialize_map(EnvelopeVisitor { payload: true })?;
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
            actor: parts.actor.ok_or_else(|| de::Error::missing_field("actor"))?,
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

struct EnvelopeVisitor {
    payload: bool,
}

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
                "actor" if actor.is_none() => {
                    if self.payload {
                        actor = Some(map.next_value::<Actor>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        actor = Some(Actor::System);
                    }
                }
                "tenant" if tenant.is_none() => tenant = Some(map.next_value::<String>()?),
                "payload" if !saw_payload => {
                    saw_payload = true;
                    if self.payload {
                        let k = kind
                            .as_deref()
                            .ok_or_else(|| de::Error::custom("payload before kind"))?;
                        let k = Kind::parse(k)
                            .ok_or_else(|| de::Error::custom(format!("unknown kind {k:?}")))?;
                        payload = Some(map.next_value_seed(PayloadSeed(k))?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
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
pub fn decode(body: &[u8]) -> Result<Envelope, CodecError> {
    let mut rest = body;
    let env: Envelope =
        ciborium::from_reader(&mut rest).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the body",
            rest.len()
        )));
    }
    Ok(env)
}

/// Decodes only the indexed columns of a body (payload skipped, not interpreted): the fast
/// path for verification, which compares them with the row's columns.
pub fn decode_header(body: &[u8]) -> Result<Header, CodecError> {
    struct HeaderOnly(Parts);
    impl<'de> serde::Deserialize<'de> for HeaderOnly {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(EnvelopeVisitor { payload: false })
                .map(HeaderOnly)
        }
    }
    let mut rest = body;
    let h: HeaderOnly =
        ciborium::from_reader(&mut rest).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the body",
            rest.len()
        )));
    }
    Ok(h.0.header)
}
