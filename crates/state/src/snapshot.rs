//! A snapshot of the fold: the [`State`] after some seq, with the chain hash of that seq, as
//! CBOR. It saves folding from seq 1; it is trusted only after the chain hash it names is
//! found at its seq in the ledger (see the server's `snapshots` module), so a stale, foreign
//! or edited snapshot is refused rather than believed.

use crate::State;
use grantline_ledger::Hash;
use serde::{Deserialize, Serialize};

/// The encoding's version: a snapshot of another version is refused (and a full fold done),
/// never misread.
pub const FORMAT: u32 = 1;

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a snapshot: {0}")]
    Malformed(String),
    #[error("snapshot format {found}, this build reads {FORMAT}")]
    Format { found: u32 },
    #[error("snapshot header says seq {header}, its state seq {state}")]
    Inconsistent { header: u64, state: u64 },
}

/// Every snapshot file starts with these bytes, then the format as a big-endian u32, then
/// the CBOR body: a reader can refuse another format without decoding the body.
const MAGIC: &[u8; 8] = b"GLSNAP\0\0";

#[derive(Serialize)]
struct Out<'a> {
    seq: u64,
    hash: [u8; 32],
    state: &'a State,
}

#[derive(Deserialize)]
struct In {
    seq: u64,
    hash: [u8; 32],
    state: State,
}

/// `state` as a snapshot taken where the chain hash is `hash`.
pub fn encode(state: &State, hash: &Hash) -> Result<Vec<u8>, SnapshotError> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT.to_be_bytes());
    cbor4ii::serde::to_vec(
        out,
        &Out {
            seq: state.seq,
            hash: hash.0,
            state,
        },
    )
    .map_err(|e| SnapshotError::Malformed(e.to_string()))
}

/// The state and the chain hash it claims, from a snapshot's bytes.
pub fn decode(bytes: &[u8]) -> Result<(Hash, State), SnapshotError> {
    let Some(body) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(SnapshotError::Malformed("no snapshot header".into()));
    };
    let (format, body) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| SnapshotError::Malformed("truncated header".into()))?;
    let found = u32::from_be_bytes(*format);
    if found != FORMAT {
        return Err(SnapshotError::Format { found });
    }
    let s: In =
        cbor4ii::serde::from_slice(body).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    if s.seq != s.state.seq {
        return Err(SnapshotError::Inconsistent {
            header: s.seq,
            state: s.state.seq,
        });
    }
    Ok((Hash(s.hash), s.state))
}
