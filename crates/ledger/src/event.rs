//! The event envelope: what every ledger row holds, and the types an appender is given.

use crate::{Hash, Kind, Payload, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The aggregate an event belongs to, written `type:id` (`client:…`, `user:…`, `grant:…`, `family:…`,
/// `pat:…`, `resource:…`). Versions are counted per stream for optimistic concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// A stream id from its type and id, e.g. `StreamId::new("family", "f_123")`.
    ///
    /// Ids come from callers (a metadata-document client id is a URL of any length), so the
    /// name is derived here, where the stream is created: `type:id` when that is a valid name
    /// (see [`StreamId::parse`]), else `type:#` and the blake3 of the id. The same id always
    /// gives the same stream, and every stream name the ledger holds parses.
    pub fn new(kind: &str, id: &str) -> Self {
        let plain = format!("{kind}:{id}");
        if Self::valid(&plain) {
            return StreamId(plain);
        }
        StreamId(format!("{kind}:#{}", blake3::hash(id.as_bytes()).to_hex()))
    }
    /// A stream with no id part, such as `registrations` or `keys` (a constant name).
    pub fn named(name: &str) -> Self {
        StreamId(name.to_string())
    }
    pub fn client(id: &str) -> Self {
        Self::new("client", id)
    }
    pub fn user(id: &str) -> Self {
        Self::new("user", id)
    }
    pub fn grant(id: &str) -> Self {
        Self::new("grant", id)
    }
    pub fn family(id: &str) -> Self {
        Self::new("family", id)
    }
    pub fn pat(id: &str) -> Self {
        Self::new("pat", id)
    }
    pub fn resource(id: &str) -> Self {
        Self::new("resource", id)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// As decoded from a body: no validation, so the header scanner reads what serde reads.
    pub(crate) fn from_raw(s: &str) -> Self {
        StreamId(s.to_string())
    }
    /// Accepts any non-empty string of at most [`StreamId::MAX_LEN`] printable ASCII,
    /// non-space characters.
    pub fn parse(s: &str) -> Option<Self> {
        Self::valid(s).then(|| StreamId(s.to_string()))
    }

    /// The longest stream name, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Whether this stream's name is one [`StreamId::parse`] accepts: the writer refuses
    /// any other.
    pub fn is_valid(&self) -> bool {
        Self::valid(&self.0)
    }

    fn valid(s: &str) -> bool {
        !s.is_empty() && s.len() <= Self::MAX_LEN && s.bytes().all(|c| c.is_ascii_graphic())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who caused an event. Written as a map `{"type": "user", "id": "…"}` (`id` only for users
/// and clients); read by [`Actor`]'s own `Deserialize` below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// Grantline itself (expiry sweeps, checkpoints, rules).
    System,
    /// A signed-in end user or admin, by user id.
    User { id: String },
    /// An OAuth client acting for itself or a user, by client id.
    Client { id: String },
    /// Someone at the command line on the server host.
    Operator,
}

/// Reads the map the derived `Serialize` writes, keys in any order, unknown keys ignored (as
/// serde's derive for an internally tagged enum does). By hand because that derive buffers
/// the whole map into serde's `Content` first: ~2 % of an export's CPU went to reading actors.
impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Actor, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
        use std::borrow::Cow;

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Actor;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an actor map with a `type`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Actor, A::Error> {
                let mut kind: Option<Cow<'de, str>> = None;
                let mut id: Option<String> = None;
                while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                    match key.as_ref() {
                        "type" if kind.is_some() => return Err(A::Error::duplicate_field("type")),
                        "type" => kind = Some(map.next_value::<CowStr<'de>>()?.0),
                        "id" if id.is_some() => return Err(A::Error::duplicate_field("id")),
                        "id" => id = Some(map.next_value()?),
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                let kind = kind.ok_or_else(|| A::Error::missing_field("type"))?;
                let id = || id.ok_or_else(|| A::Error::missing_field("id"));
                Ok(match kind.as_ref() {
                    "system" => Actor::System,
                    "operator" => Actor::Operator,
                    "user" => Actor::User { id: id()? },
                    "client" => Actor::Client { id: id()? },
                    other => {
                        return Err(A::Error::unknown_variant(
                            other,
                            &["system", "user", "client", "operator"],
                        ));
                    }
                })
            }
        }

        /// A string borrowed from the input when the format can, owned when it cannot.
        struct CowStr<'de>(Cow<'de, str>);
        impl<'de> Deserialize<'de> for CowStr<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct S;
                impl<'de> Visitor<'de> for S {
                    type Value = CowStr<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
                        Ok(CowStr(Cow::Borrowed(v)))
                    }
                    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                        Ok(CowStr(Cow::Owned(v.to_owned())))
                    }
                    fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
                        Ok(CowStr(Cow::Owned(v)))
                    }
                }
                d.deserialize_str(S)
            }
        }

        d.deserialize_map(V)
    }
}

/// The envelope and payload of one event, exactly as encoded in its CBOR body.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Global position, 1, 2, 3 … without gaps.
    pub seq: u64,
    /// UUIDv7; the idempotency key SIEMs dedupe on.
    pub id: Uuid,
    /// Append time, UTC microseconds; non-decreasing in seq order.
    pub time: Timestamp,
    pub stream: StreamId,
    /// Position within `stream`, from 1.
    pub version: u64,
    pub actor: Actor,
    pub tenant: Option<String>,
    pub payload: Payload,
}

impl Envelope {
    pub fn kind(&self) -> Kind {
        self.payload.kind()
    }
}

/// The indexed columns of an event, decoded from its body without the payload (for verification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub id: Uuid,
    pub time: Timestamp,
    pub stream: StreamId,
    pub version: u64,
    pub kind: String,
}

/// An event after it was appended: its envelope plus its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub envelope: Envelope,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl Recorded {
    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }
    pub fn payload(&self) -> &Payload {
        &self.envelope.payload
    }
    pub fn time(&self) -> Timestamp {
        self.envelope.time
    }
}

/// An event a decider proposes; the appender gives it seq, id, time and version.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub stream: StreamId,
    pub actor: Actor,
    pub tenant: Option<String>,
    pub payload: Payload,
}

impl NewEvent {
    pub fn new(stream: StreamId, actor: Actor, payload: impl Into<Payload>) -> Self {
        NewEvent {
            stream,
            actor,
            tenant: None,
            payload: payload.into(),
        }
    }
}

/// What a decider saw of a stream when it decided: checked again under the append lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check (facts that cannot conflict, such as a tool call record).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this.
    Exactly(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` (0 = no stream) satisfies this expectation.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exactly(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exactly(v) => write!(f, "version {v}"),
        }
    }
}

/// One atomic append: events to write together, and the stream versions they were decided on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Append {
    pub events: Vec<NewEvent>,
    pub expect: Vec<(StreamId, ExpectedVersion)>,
}

impl Append {
    pub fn new(events: Vec<NewEvent>) -> Self {
        Append {
            events,
            expect: Vec::new(),
        }
    }
    /// Requires `stream` to be at `expected` when this append is written.
    pub fn expect(mut self, stream: StreamId, expected: ExpectedVersion) -> Self {
        self.expect.push((stream, expected));
        self
    }
}
