//! A snapshot of the fold: the [`State`] after some seq, with the chain hash of that seq, as
//! CBOR. It saves folding from seq 1. It is believed only when its tag verifies — a keyed
//! blake3 MAC over everything after it, under a key derived from the checkpoint signing key,
//! so only a holder of that key could have written it — and the chain hash it names is found
//! at its seq in the ledger (the server's `snapshots` module): a damaged, edited, stale or
//! foreign snapshot is refused rather than believed.
//!
//! Layout: `GLSNAP\0\0`, the format (u32 BE), the tag (32 bytes), the seq (u64 BE), the chain
//! hash (32 bytes), then two length-prefixed (u64 BE) CBOR parts holding disjoint fields of
//! the state, so that both cores decode one each.

use crate::State;
use crate::model::*;
use crate::table::Table;
use grantline_ledger::{Hash, StreamId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The encoding's version: a snapshot of another version is refused (and a full fold done),
/// never misread. 2: users carry the seqs of their last sign-in and of the end of their
/// sessions (a format 1 snapshot lacks them, and sessions must not come back to life). 3:
/// families carry `live_until`, and what expired is forgotten daily (a format 2 snapshot
/// holds neither). 4: each policy's stream version (a format 3 snapshot lacks it, and a
/// policy change decided on it would conflict for ever). 5: users carry who made them (an
/// administrator or an identity provider's sign-in), which decides whether an account may be
/// linked by email. 6: clients carry when their redirect URIs last changed (consents given
/// before are asked again). 7: a user's sessions ending revokes their grants and personal
/// access tokens made before it (a snapshot folded before may hold ones that survived a
/// containment's race). 8: an unused dynamic registration leaves the state when it expires
/// (a format 7 snapshot still holds the ones expired before it). 9: a client registered again
/// over one the state holds (the configuration taking over a metadata-document client) stays
/// disabled and used, and asks consents again for new redirect URIs (a format 8 snapshot
/// folded such an event as a fresh client). 10: the tag covers the header (the format
/// included): a file of an earlier format, whose tag did not, cannot be relabelled as this
/// one and read under rules it was not folded by.
pub const FORMAT: u32 = 10;

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a snapshot: {0}")]
    Malformed(String),
    #[error("snapshot format {found}, this build reads {FORMAT}")]
    Format { found: u32 },
    #[error("snapshot header says seq {header}, its state seq {state}")]
    Inconsistent { header: u64, state: u64 },
    #[error("its tag does not verify: damaged, edited, or written under another checkpoint key")]
    Tag,
}

/// The context the snapshot MAC key is derived under (from the checkpoint signing key).
pub const MAC_CONTEXT: &str = "grantline 2026 state snapshot mac";

const MAGIC: &[u8; 8] = b"GLSNAP\0\0";

/// The first part: the small maps, grants, families and access tokens.
#[derive(Serialize, Deserialize, Default)]
struct First {
    seq: u64,
    time: Timestamp,
    clients: HashMap<String, Client>,
    users: HashMap<String, User>,
    grants: HashMap<String, Grant>,
    grant_index: HashMap<GrantKey, String>,
    families: HashMap<String, Family>,
    access_tokens: Table<AccessToken>,
    access_by_id: Table<String>,
    pats: HashMap<String, Pat>,
    pat_by_digest: HashMap<String, String>,
    signing_keys: HashMap<String, SigningKey>,
    policies: HashMap<String, HashMap<String, String>>,
    policy_versions: HashMap<String, u64>,
    ended_sessions: HashMap<String, Timestamp>,
    client_streams: HashMap<StreamId, String>,
    answered_consent_pages: HashMap<String, Timestamp>,
    checkpoint_handovers: Vec<(u64, String)>,
}

/// The second part: codes and refresh tokens.
#[derive(Serialize, Deserialize, Default)]
struct Second {
    codes: HashMap<String, Code>,
    refresh_tokens: Table<RefreshToken>,
    refresh_by_id: Table<String>,
}

/// Splits a state into its parts. Destructured field by field: a field added to `State` and
/// not here does not compile, so no field is ever left out of a snapshot.
fn split(state: State) -> (First, Second) {
    let State {
        seq,
        time,
        clients,
        users,
        grants,
        grant_index,
        families,
        codes,
        access_tokens,
        access_by_id,
        refresh_tokens,
        refresh_by_id,
        pats,
        pat_by_digest,
        signing_keys,
        policies,
        policy_versions,
        ended_sessions,
        client_streams,
        answered_consent_pages,
        checkpoint_handovers,
    } = state;
    (
        First {
            seq,
            time,
            clients,
            users,
            grants,
            grant_index,
            families,
            access_tokens,
            access_by_id,
            pats,
            pat_by_digest,
            signing_keys,
            policies,
            policy_versions,
            ended_sessions,
            client_streams,
            answered_consent_pages,
            checkpoint_handovers,
        },
        Second {
            codes,
            refresh_tokens,
            refresh_by_id,
        },
    )
}

fn join(a: First, b: Second) -> State {
    State {
        seq: a.seq,
        time: a.time,
        clients: a.clients,
        users: a.users,
        grants: a.grants,
        grant_index: a.grant_index,
        families: a.families,
        codes: b.codes,
        access_tokens: a.access_tokens,
        access_by_id: a.access_by_id,
        refresh_tokens: b.refresh_tokens,
        refresh_by_id: b.refresh_by_id,
        pats: a.pats,
        pat_by_digest: a.pat_by_digest,
        signing_keys: a.signing_keys,
        policies: a.policies,
        policy_versions: a.policy_versions,
        ended_sessions: a.ended_sessions,
        client_streams: a.client_streams,
        answered_consent_pages: a.answered_consent_pages,
        checkpoint_handovers: a.checkpoint_handovers,
    }
}

fn cbor<T: Serialize>(v: &T) -> Result<Vec<u8>, SnapshotError> {
    cbor4ii::serde::to_vec(Vec::new(), v).map_err(|e| SnapshotError::Malformed(e.to_string()))
}

fn uncbor<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, SnapshotError> {
    cbor4ii::serde::from_slice(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))
}

/// `state` as a snapshot taken where the chain hash is `hash`. Takes the state (a clone, for
/// a live one) so that its parts can be encoded on two threads.
pub fn encode(state: State, hash: &Hash, mac_key: &[u8; 32]) -> Result<Vec<u8>, SnapshotError> {
    let seq = state.seq;
    let (first, second) = split(state);
    let (a, b) = std::thread::scope(|s| {
        let b = s.spawn(|| cbor(&second));
        (cbor(&first), b.join())
    });
    let (a, b) = (
        a?,
        b.map_err(|_| SnapshotError::Malformed("encoding failed".into()))??,
    );
    let mut out = Vec::with_capacity(8 + 4 + 32 + 8 + 32 + 16 + a.len() + b.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    let tag_at = out.len();
    out.extend_from_slice(&[0; 32]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&hash.0);
    for part in [&a, &b] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    let tag = tag_of(mac_key, &out[..tag_at], &out[tag_at + 32..]);
    out[tag_at..tag_at + 32].copy_from_slice(tag.as_bytes());
    Ok(out)
}

/// The tag of a snapshot: its header (magic and format) and everything after the tag.
fn tag_of(mac_key: &[u8; 32], header: &[u8], rest: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(mac_key);
    h.update(header);
    h.update(rest);
    h.finalize()
}

/// Takes `n` bytes off the front of `rest`.
fn take<'b>(rest: &mut &'b [u8], n: usize, what: &str) -> Result<&'b [u8], SnapshotError> {
    if rest.len() < n {
        return Err(SnapshotError::Malformed(format!("truncated at the {what}")));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

/// The state and the chain hash it claims, from a snapshot's bytes.
pub fn decode(bytes: &[u8], mac_key: &[u8; 32]) -> Result<(Hash, State), SnapshotError> {
    let mut rest = bytes;
    if take(&mut rest, MAGIC.len(), "header")? != MAGIC.as_slice() {
        return Err(SnapshotError::Malformed("no snapshot header".into()));
    }
    let mut format = [0u8; 4];
    format.copy_from_slice(take(&mut rest, 4, "format")?);
    let found = u32::from_be_bytes(format);
    if found != FORMAT {
        return Err(SnapshotError::Format { found });
    }
    let header = &bytes[..MAGIC.len() + 4];
    let mut tag = [0u8; 32];
    tag.copy_from_slice(take(&mut rest, 32, "tag")?);
    // blake3::Hash compares in constant time.
    if tag_of(mac_key, header, rest) != blake3::Hash::from_bytes(tag) {
        return Err(SnapshotError::Tag);
    }
    let seq = be_u64(take(&mut rest, 8, "seq")?);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(take(&mut rest, 32, "hash")?);
    let len = be_u64(take(&mut rest, 8, "first part's length")?);
    let a = take(
        &mut rest,
        usize::try_from(len).unwrap_or(usize::MAX),
        "first part",
    )?;
    let len = be_u64(take(&mut rest, 8, "second part's length")?);
    let b = take(
        &mut rest,
        usize::try_from(len).unwrap_or(usize::MAX),
        "second part",
    )?;
    if !rest.is_empty() {
        return Err(SnapshotError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| uncbor::<Second>(b));
        (uncbor::<First>(a), second.join())
    });
    let first = first?;
    let second = second.map_err(|_| SnapshotError::Malformed("decoding failed".into()))??;
    if first.seq != seq {
        return Err(SnapshotError::Inconsistent {
            header: seq,
            state: first.seq,
        });
    }
    Ok((Hash(hash), join(first, second)))
}
