//! Signed checkpoints in the C2SP signed-note / tlog-checkpoint text format:
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//!
//! — <key name> <base64(key id ‖ Ed25519 signature)>
//! ```
//!
//! The key id is the first four bytes of `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)`, and keys
//! are written as signed-note verifier keys (`name+hexid+base64(0x01 ‖ key)`), so Go's
//! `golang.org/x/mod/sumdb/note`, witnesses and other tlog tooling read them as they are.

use crate::Hash;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

const ED25519_TYPE: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed key: {0}")]
    BadKey(String),
    /// Signed only by keys not trusted here (`name+keyid` of each): not evidence of
    /// tampering, just of a key the verifier was not given.
    #[error("no signature by a trusted key (signed by {})", .0.join(", "))]
    UnknownSigner(Vec<String>),
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    #[error("the operating system's random generator failed")]
    Randomness,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn key_id(name: &str, public: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519_TYPE]);
    h.update(public.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The public half: verifies notes signed by one named key.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a verifier key `name+hexid+base64(0x01 ‖ key)`, checking that the id matches.
    pub fn parse(vkey: &str) -> Result<Self, CheckpointError> {
        let bad = |m: &str| CheckpointError::BadKey(m.to_string());
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+keyid+key"));
        };
        if !valid_name(name) || id.len() != 8 {
            return Err(bad("bad name or key id"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| bad("key id is not hex"))?;
        let raw = STANDARD.decode(b64).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519_TYPE {
            return Err(bad("not an Ed25519 key"));
        }
        let bytes: [u8; 32] = raw[1..].try_into().map_err(|_| bad("key length"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("invalid Ed25519 point"))?;
        if key_id(name, &key) != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            id,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id, as 8 hex digits.
    pub fn key_id_hex(&self) -> String {
        format!("{:08x}", self.id)
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![ED25519_TYPE];
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, STANDARD.encode(raw))
    }
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteVerifier({self})")
    }
}

/// The private half: signs checkpoints. Its `Debug` never prints the key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteSigner({}+{:08x})", self.name, self.id)
    }
}

impl NoteSigner {
    /// A fresh key named `name` (the log's origin, e.g. `grantline.example.com/ledger`).
    pub fn generate(name: &str) -> Result<Self, CheckpointError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| CheckpointError::Randomness)?;
        Self::from_seed(name, seed)
    }

    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, CheckpointError> {
        if !valid_name(name) {
            return Err(CheckpointError::BadKey(format!(
                "key name {name:?} must be non-empty, without spaces or '+'"
            )));
        }
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, &key.verifying_key());
        Ok(NoteSigner {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// Parses the signed-note private key format `PRIVATE+KEY+name+hexid+base64(0x01 ‖ seed)`.
    pub fn parse(skey: &str) -> Result<Self, CheckpointError> {
        let bad = |m: &str| CheckpointError::BadKey(m.to_string());
        let rest = skey
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("expected PRIVATE+KEY+name+keyid+key"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected PRIVATE+KEY+name+keyid+key"));
        };
        let raw = STANDARD.decode(b64).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519_TYPE {
            return Err(bad("not an Ed25519 key"));
        }
        let seed: [u8; 32] = raw[1..].try_into().map_err(|_| bad("key length"))?;
        let signer = Self::from_seed(name, seed)?;
        if format!("{:08x}", signer.id) != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(signer)
    }

    /// A 32-byte key derived from this private key for `context` (e.g. a MAC key for files
    /// only the key's holder should write); never equal to the signing key.
    pub fn derive_key(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, self.key.as_bytes())
    }

    /// The private key in signed-note format (what the key file holds).
    pub fn to_private_string(&self) -> String {
        let mut raw = vec![ED25519_TYPE];
        raw.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            STANDARD.encode(raw)
        )
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs the note text (which must end in a newline) and returns the whole signed note.
    pub fn sign_note(&self, text: &str) -> String {
        let sig: Signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        )
    }

    /// Signs a checkpoint of the tree (`size`, `root`) for `origin`.
    /// Hands over to `next`: the note a `signing_key.rotated` event carries.
    pub fn hand_over_to(&self, next: &NoteVerifier) -> String {
        self.sign_note(&format!(
            "{HANDOVER}\nfrom {}\nto {next}\n",
            self.verifier()
        ))
    }

    pub fn sign_checkpoint(&self, origin: &str, size: u64, root: &Hash) -> String {
        self.sign_note(&Checkpoint::text(origin, size, root))
    }
}

/// The body of a tlog checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size and base64 root, each on its own line.
    pub fn text(origin: &str, size: u64, root: &Hash) -> String {
        format!("{origin}\n{size}\n{}\n", STANDARD.encode(root.0))
    }

    /// Parses a signed checkpoint note and verifies it: every signature line by a trusted key
    /// (same name and key id) must verify, and at least one must be present.
    pub fn open(note: &str, trusted: &[NoteVerifier]) -> Result<Checkpoint, CheckpointError> {
        Self::parse_text(open_note(note, trusted)?)
    }

    /// Parses the note text without checking signatures.
    pub fn parse_text(text: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = |m: &str| CheckpointError::Malformed(m.to_string());
        let mut lines = text.lines();
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size_line = lines.next().ok_or_else(|| bad("no tree size"))?;
        if size_line.is_empty()
            || !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(bad("tree size is not a decimal number"));
        }
        let size = size_line.parse().map_err(|_| bad("tree size overflows"))?;
        let root = STANDARD
            .decode(lines.next().ok_or_else(|| bad("no root hash"))?)
            .ok()
            .and_then(|b| Hash::from_slice(&b))
            .ok_or_else(|| bad("root hash is not 32 bytes of base64"))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

/// Verifies a signed note: every signature line by a trusted key (same name and key id) must
/// verify, and at least one must be present. Returns the note's text.
pub fn open_note<'n>(note: &'n str, trusted: &[NoteVerifier]) -> Result<&'n str, CheckpointError> {
    let (text, sigs) = split_note(note)?;
    let mut verified = false;
    let mut others = Vec::new();
    for line in sigs.lines() {
        let line = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| CheckpointError::Malformed("signature line without '— '".into()))?;
        let (name, b64) = line
            .split_once(' ')
            .ok_or_else(|| CheckpointError::Malformed("signature line shape".into()))?;
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| CheckpointError::Malformed("signature is not base64".into()))?;
        if blob.len() < 4 {
            return Err(CheckpointError::Malformed("signature too short".into()));
        }
        let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        let Some(v) = trusted.iter().find(|v| v.name == name && v.id == id) else {
            others.push(format!("{name}+{id:08x}"));
            continue;
        };
        let sig = Signature::from_slice(&blob[4..])
            .map_err(|_| CheckpointError::BadSignature(v.to_string()))?;
        v.key
            .verify(text.as_bytes(), &sig)
            .map_err(|_| CheckpointError::BadSignature(format!("{}+{:08x}", v.name, v.id)))?;
        verified = true;
    }
    if !verified {
        return Err(CheckpointError::UnknownSigner(others));
    }
    Ok(text)
}

/// The first line of a key handover's text.
const HANDOVER: &str = "grantline checkpoint key handover";

/// A checkpoint key handing over to its successor: a note signed by the old key whose text
/// names both (`grantline checkpoint key handover`, `from <vkey>`, `to <vkey>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHandover {
    pub from: NoteVerifier,
    pub to: NoteVerifier,
}

impl KeyHandover {
    /// The handover in `note` if a key in `in_force` signed it (and it is that key that hands
    /// over).
    pub fn open(note: &str, in_force: &[NoteVerifier]) -> Result<KeyHandover, CheckpointError> {
        let h = Self::parse_text(open_note(note, in_force)?)?;
        if !in_force.contains(&h.from) {
            return Err(CheckpointError::Malformed(
                "the handover is signed by a key other than the one it hands over from".into(),
            ));
        }
        Ok(h)
    }

    /// The handover's text, signatures not checked.
    pub fn parse_unverified(note: &str) -> Result<KeyHandover, CheckpointError> {
        Self::parse_text(split_note(note)?.0)
    }

    fn parse_text(text: &str) -> Result<KeyHandover, CheckpointError> {
        let bad = |m: &str| CheckpointError::Malformed(format!("key handover: {m}"));
        let mut lines = text.lines();
        if lines.next() != Some(HANDOVER) {
            return Err(bad("not a key handover"));
        }
        let mut key = |prefix: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(prefix))
                .ok_or_else(|| bad(&format!("no {prefix}line")))
                .and_then(NoteVerifier::parse)
        };
        let from = key("from ")?;
        let to = key("to ")?;
        Ok(KeyHandover { from, to })
    }
}

fn split_note(note: &str) -> Result<(&str, &str), CheckpointError> {
    let bad = |m: &str| CheckpointError::Malformed(m.to_string());
    if !note.ends_with('\n') {
        return Err(bad("note does not end with a newline"));
    }
    let idx = note
        .rfind("\n\n")
        .ok_or_else(|| bad("no blank line before the signatures"))?;
    let (text, sigs) = (&note[..idx + 1], &note[idx + 2..]);
    if text.contains("\n\n") || sigs.is_empty() {
        return Err(bad("note shape"));
    }
    Ok((text, sigs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_open_and_tamper() {
        let s = NoteSigner::generate("grantline.test/ledger").unwrap();
        let v = s.verifier();
        assert_eq!(NoteVerifier::parse(&v.to_string()).unwrap(), v);
        assert_eq!(
            NoteSigner::parse(&s.to_private_string())
                .unwrap()
                .verifier(),
            v
        );
        let root = Hash([7; 32]);
        let note = s.sign_checkpoint("grantline.test/ledger", 42, &root);
        let cp = Checkpoint::open(&note, std::slice::from_ref(&v)).unwrap();
        assert_eq!((cp.size, cp.root), (42, root));

        let altered = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            Checkpoint::open(&altered, std::slice::from_ref(&v)),
            Err(CheckpointError::BadSignature(_))
        ));
        let other = NoteSigner::generate("grantline.test/ledger")
            .unwrap()
            .verifier();
        assert_eq!(
            Checkpoint::open(&note, &[other]),
            Err(CheckpointError::UnknownSigner(vec![format!(
                "grantline.test/ledger+{}",
                v.key_id_hex()
            )]))
        );
        assert!(Checkpoint::open("garbage", &[v]).is_err());
    }
}
