//! Grantline's ledger model: typed events and their CBOR bodies, the blake3 hash chain, the
//! RFC 6962 Merkle tree, signed checkpoints and proofs, sealed personal data, and the pure
//! verifier. No I/O: the `store` crate persists what this crate defines.

pub mod checkpoint;
pub mod codec;
mod digest;
mod event;
mod hash;
pub mod merkle;
mod payload;
pub mod pii;
pub mod properties;
pub mod samples;
mod time;
pub mod verify;

pub(crate) use pii::bytes_impl as bytes;

pub use checkpoint::{
    Checkpoint, CheckpointError, KeyHandover, NoteSigner, NoteVerifier, open_note,
};
pub use codec::{CodecError, MAX_BODY_BYTES, decode, decode_header, encode, encode_for_append};
pub use event::{Actor, Append, Envelope, ExpectedVersion, Header, NewEvent, Recorded, StreamId};
pub use hash::{CHAIN_DOMAIN_TAG, GENESIS, Hash, chain_hash, secret_digest};
pub use payload::*;
pub use pii::{PiiError, Sealed, SubjectKey};
pub use time::Timestamp;
