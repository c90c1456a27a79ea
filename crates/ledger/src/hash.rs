//! 32-byte digests and the blake3 chain rule.

use std::fmt;

/// A 32-byte digest: a chain hash (blake3) or a Merkle node (SHA-256).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        <[u8; 32]>::try_from(bytes).ok().map(Hash)
    }

    pub fn from_hex(s: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash(out))
    }

    pub fn to_hex(&self) -> String {
        // `hex::encode` goes through a char iterator; the table write into a fixed buffer is
        // several times faster, and every export line and proof writes two of these.
        let mut out = [0u8; 64];
        match hex::encode_to_slice(self.0, &mut out).map(|()| std::str::from_utf8(&out)) {
            // Hex digits are ASCII: the strict check takes its ASCII fast path.
            Ok(Ok(s)) => s.to_owned(),
            _ => hex::encode(self.0),
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// Domain separation for event chain hashes, so a chain hash can never collide with another blake3 use.
pub const CHAIN_DOMAIN_TAG: &[u8] = b"grantline/ledger/event/v1\n";

/// `prev_hash` of event seq 1: the fixed genesis value.
pub const GENESIS: Hash = Hash([0u8; 32]);

/// `hash = blake3(domain tag ‖ prev_hash ‖ body)` over the stored body bytes.
pub fn chain_hash(prev: &Hash, body: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(CHAIN_DOMAIN_TAG);
    h.update(&prev.0);
    h.update(body);
    Hash(*h.finalize().as_bytes())
}

/// A keyed-free blake3 digest as lowercase hex: how secrets (tokens, codes, client secrets) appear in events.
pub fn secret_digest(secret: &[u8]) -> String {
    blake3::hash(secret).to_hex().to_string()
}
