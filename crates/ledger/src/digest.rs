//! How digest fields (`*_digest`, token `digest`, `consent_page`) are written in event bodies.
//!
//! In memory and in JSON a digest is 64 lowercase hex characters. Body format 1 wrote that
//! text into the CBOR body (66 bytes); body format 2 writes the 32 bytes themselves as a CBOR
//! byte string (34 bytes). The decoder reads both, told apart by the CBOR major type of each
//! field, so every body ever written decodes to the same event; bodies are never rewritten
//! (their bytes are what the chain hashes). A value that is not a 32-byte lowercase hex
//! digest is written as text, as format 1 did, so nothing is lost.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use std::fmt;

/// The 32 bytes of a lowercase hex digest, if `v` is one.
fn digest_bytes(v: &str) -> Option<[u8; 32]> {
    if v.len() != 64 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(v, &mut out).ok()?;
    Some(out)
}

pub fn serialize<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    // JSON writes the text as it is: only a body needs the bytes.
    if s.is_human_readable() {
        return s.serialize_str(v);
    }
    match digest_bytes(v) {
        Some(b) => s.serialize_bytes(&b),
        None => s.serialize_str(v),
    }
}

struct DigestVisitor;

impl Visitor<'_> for DigestVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a digest: 32 bytes, or text")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<String, E> {
        if v.len() != 32 {
            return Err(E::invalid_length(v.len(), &"32 bytes"));
        }
        let mut out = [0u8; 64];
        hex::encode_to_slice(v, &mut out).map_err(E::custom)?;
        std::str::from_utf8(&out)
            .map(str::to_owned)
            .map_err(E::custom)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(DigestVisitor)
}

/// The same for an optional digest (`None` is left out of the body, as before).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&Field(v)),
            None => s.serialize_none(),
        }
    }

    struct Field<'a>(&'a str);

    impl serde::Serialize for Field<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(self.0, s)
        }
    }

    struct Some_;

    impl<'de> Visitor<'de> for Some_ {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a digest or nothing")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::deserialize(d).map(Some)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_option(Some_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_hex_of_32_bytes_becomes_bytes() {
        let d = crate::secret_digest(b"token");
        assert_eq!(digest_bytes(&d).map(hex::encode), Some(d.clone()));
        assert_eq!(digest_bytes(&d.to_uppercase()), None, "kept as written");
        assert_eq!(digest_bytes(&d[..62]), None);
        assert_eq!(digest_bytes(&format!("{}zz", &d[..62])), None);
        assert_eq!(digest_bytes(""), None);
    }
}
