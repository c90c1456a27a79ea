//! Personal data sealed under a per-subject key, so erasing the key erases the data without
//! touching the hash chain (crypto-shredding).
//!
//! Keys live outside the ledger (the store's `subject_keys` table); events carry only [`Sealed`]
//! values. Cipher: XChaCha20-Poly1305 with a random 192-bit nonce; the subject is the associated
//! data, so a value cannot be moved to another subject's event unnoticed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The subject whose key seals a value: `user:<user id>` for a known person, `anon:<YYYY-MM-DD>`
/// for data of unidentified people (failed logins, rejected registrations), erased by retention.
pub fn user_subject(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// A 256-bit per-subject data key.
#[derive(Clone)]
pub struct SubjectKey(pub [u8; 32]);

impl SubjectKey {
    pub fn generate() -> Result<Self, PiiError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|_| PiiError::Randomness)?;
        Ok(SubjectKey(k))
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey(…)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiiError {
    #[error("the subject's key has been erased")]
    Erased,
    #[error("sealed value does not decrypt under the subject's key")]
    Corrupt,
    #[error("the operating system's random generator failed")]
    Randomness,
}

/// A personal-data field as it is stored in an event body: ciphertext under the subject's key.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub subject: String,
    pub nonce: [u8; 24],
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealed({}, {} bytes)",
            self.subject,
            self.ciphertext.len()
        )
    }
}

impl Sealed {
    /// Encrypts `plaintext` for `subject` under `key`.
    pub fn seal(key: &SubjectKey, subject: &str, plaintext: &str) -> Result<Sealed, PiiError> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|_| PiiError::Randomness)?;
        Self::seal_with_nonce(key, subject, plaintext, nonce)
    }

    /// As [`Sealed::seal`] with a given nonce: only for deterministic samples (a nonce must
    /// never be used twice under one key for real data).
    pub(crate) fn seal_with_nonce(
        key: &SubjectKey,
        subject: &str,
        plaintext: &str,
        nonce: [u8; 24],
    ) -> Result<Sealed, PiiError> {
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                AeadPayload {
                    msg: plaintext.as_bytes(),
                    aad: subject.as_bytes(),
                },
            )
            .map_err(|_| PiiError::Corrupt)?;
        Ok(Sealed {
            subject: subject.to_string(),
            nonce,
            ciphertext,
        })
    }

    /// Decrypts with the subject's key.
    pub fn open(&self, key: &SubjectKey) -> Result<String, PiiError> {
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&self.nonce),
                AeadPayload {
                    msg: &self.ciphertext,
                    aad: self.subject.as_bytes(),
                },
            )
            .map_err(|_| PiiError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| PiiError::Corrupt)
    }
}

#[derive(Deserialize)]
struct SealedWire {
    subject: String,
    #[serde(with = "crate::bytes")]
    nonce: Vec<u8>,
    #[serde(with = "crate::bytes")]
    ct: Vec<u8>,
}

/// The same wire form, borrowed: encoding a body or an export line copies nothing.
#[derive(Serialize)]
struct SealedWireRef<'a> {
    subject: &'a str,
    #[serde(with = "crate::bytes")]
    nonce: &'a [u8],
    #[serde(with = "crate::bytes")]
    ct: &'a [u8],
}

/// What a sealed value reads as once its subject's key is gone.
pub const ERASED: &str = "[erased]";

/// The texts of sealed values by nonce: `None` for a value that reads as [`ERASED`].
pub type Opened = Vec<([u8; 24], Option<String>)>;

struct Revealing {
    opened: Opened,
    unopened: Vec<Sealed>,
}

thread_local! {
    static REVEALING: std::cell::RefCell<Option<Revealing>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` — a serialization into a human-readable format (JSON) — with every sealed value
/// written as the text `opened` holds for its nonce instead of its `{subject, nonce, ct}` form:
/// how an export writes an event as recorded, personal data opened, without an intermediate
/// value. A sealed value `opened` has no entry for is written as [`ERASED`] and returned, so
/// the caller can open it and run `f` again. Binary formats (CBOR bodies) are never affected.
/// `f` must only serialize what is to be revealed: anything else it writes as JSON on this
/// thread (a log line, another event) would be revealed too. A call inside `f` reveals with
/// its own table and gives the outer one back when it ends.
pub fn revealing<R>(opened: &mut Opened, f: impl FnOnce() -> R) -> (R, Vec<Sealed>) {
    /// Puts back what was revealing before, even when `f` panics.
    struct End(Option<Revealing>);
    impl Drop for End {
        fn drop(&mut self) {
            let outer = self.0.take();
            REVEALING.with_borrow_mut(|r| *r = outer);
        }
    }
    let table = std::mem::take(opened);
    let outer = REVEALING.with_borrow_mut(|r| {
        r.replace(Revealing {
            opened: table,
            unopened: Vec::new(),
        })
    });
    let end = End(outer);
    let out = f();
    let r = REVEALING.with_borrow_mut(Option::take);
    drop(end);
    match r {
        Some(r) => {
            *opened = r.opened;
            (out, r.unopened)
        }
        None => (out, Vec::new()),
    }
}

impl Serialize for Sealed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() && REVEALING.with_borrow(Option::is_some) {
            return REVEALING.with_borrow_mut(|r| {
                let Some(Revealing { opened, unopened }) = r else {
                    return s.serialize_str(ERASED);
                };
                match opened.iter().find(|(n, _)| *n == self.nonce) {
                    Some((_, text)) => s.serialize_str(text.as_deref().unwrap_or(ERASED)),
                    None => {
                        unopened.push(self.clone());
                        s.serialize_str(ERASED)
                    }
                }
            });
        }
        SealedWireRef {
            subject: &self.subject,
            nonce: &self.nonce,
            ct: &self.ciphertext,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Sealed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = SealedWire::deserialize(d)?;
        let nonce = <[u8; 24]>::try_from(w.nonce.as_slice())
            .map_err(|_| serde::de::Error::custom("sealed nonce must be 24 bytes"))?;
        Ok(Sealed {
            subject: w.subject,
            nonce,
            ciphertext: w.ct,
        })
    }
}

/// Byte strings: CBOR `bstr` in bodies, base64url text in human-readable formats (JSON).
pub(crate) mod bytes_impl {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&URL_SAFE_NO_PAD.encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes or base64url text")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                URL_SAFE_NO_PAD.decode(v).map_err(E::custom)
            }
        }
        // The owned forms: a borrowed `bytes`/`str` is limited to the decoder's scratch
        // buffer (4 KiB in ciborium), and a reader must accept every body the writer accepts.
        if d.is_human_readable() {
            d.deserialize_string(V)
        } else {
            d.deserialize_byte_buf(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_wrong_key() {
        let k = SubjectKey::generate().unwrap();
        let s = Sealed::seal(&k, "user:u1", "alice@example.com").unwrap();
        assert!(
            !s.ciphertext.windows(5).any(|w| w == b"alice"),
            "ciphertext must not contain the plaintext"
        );
        assert_eq!(s.open(&k).unwrap(), "alice@example.com");
        let other = SubjectKey::generate().unwrap();
        assert_eq!(s.open(&other), Err(PiiError::Corrupt));
        let mut moved = s.clone();
        moved.subject = "user:u2".into();
        assert_eq!(
            moved.open(&k),
            Err(PiiError::Corrupt),
            "subject is bound as AAD"
        );
    }

    #[test]
    fn revealing_writes_opened_text_in_json_only_and_only_while_it_runs() {
        let k = SubjectKey::generate().unwrap();
        let known = Sealed::seal(&k, "user:u1", "alice@example.com").unwrap();
        let unknown = Sealed::seal(&k, "user:u1", "10.0.0.1").unwrap();
        let wire = serde_json::to_string(&known).unwrap();
        assert!(wire.contains("\"ct\""), "{wire}");
        let mut opened: Opened = vec![(known.nonce, Some("alice@example.com".into()))];
        let ((json, cbor), unopened) = revealing(&mut opened, || {
            let mut cbor = Vec::new();
            ciborium::into_writer(&known, &mut cbor).unwrap();
            (serde_json::to_string(&[&known, &unknown]).unwrap(), cbor)
        });
        assert_eq!(json, r#"["alice@example.com","[erased]"]"#);
        assert_eq!(
            unopened,
            vec![unknown.clone()],
            "what had no text is returned"
        );
        assert_eq!(opened.len(), 1, "the table is given back");
        let back: Sealed = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert_eq!(back, known, "a binary format still writes the sealed value");
        assert_eq!(serde_json::to_string(&known).unwrap(), wire, "and it ends");
        // A call inside another reveals with its own table and gives the outer one back.
        let other = Sealed::seal(&k, "user:u2", "bob@example.com").unwrap();
        let (json, _) = revealing(&mut opened, || {
            let mut inner: Opened = vec![(other.nonce, Some("bob@example.com".into()))];
            let (inner_json, missing) = revealing(&mut inner, || {
                serde_json::to_string(&[&known, &other]).unwrap()
            });
            assert_eq!(inner_json, r#"["[erased]","bob@example.com"]"#);
            assert_eq!(missing, vec![known.clone()]);
            format!("{inner_json} {}", serde_json::to_string(&known).unwrap())
        });
        assert!(json.ends_with(r#" "alice@example.com""#), "{json}");
        assert_eq!(opened.len(), 1);
        // A panic inside does not leave the thread revealing.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            revealing(&mut opened, || panic!("inside"))
        }));
        assert!(caught.is_err());
        assert_eq!(serde_json::to_string(&known).unwrap(), wire);
    }
}
