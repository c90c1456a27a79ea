//! Verification of a stored ledger, row by row: every hash, column/body agreement, seq
//! contiguity, the chain links, every checkpoint signature and root, and the tail against the
//! newest checkpoint. Pure: the store feeds rows in seq order.

use crate::checkpoint::{Checkpoint, CheckpointError, NoteVerifier};
use crate::merkle::Frontier;
use crate::{GENESIS, Hash, chain_hash, codec};
use std::fmt;
use uuid::Uuid;

/// One `events` row as stored, before anything is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRow {
    pub seq: i64,
    pub id: Uuid,
    pub time: i64,
    pub stream: String,
    pub version: i64,
    pub kind: String,
    pub body: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    /// The first of `id`, `time`, `stream`, `version` and `kind` whose stored value could
    /// not be read as its type (NULL, or in SQLite a value of another type or text that is
    /// not UTF-8); that field holds a placeholder. Verification reports the column as
    /// disagreeing with the body, and readers refuse the row, rather than stop on a
    /// database error.
    pub unreadable: Option<&'static str>,
}

impl RawRow {
    /// The row borrowed, as [`check_row`] reads it.
    pub fn as_ref(&self) -> RowRef<'_> {
        RowRef {
            seq: self.seq,
            id: self.id,
            time: self.time,
            stream: &self.stream,
            version: self.version,
            kind: &self.kind,
            body: &self.body,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
            unreadable: self.unreadable,
        }
    }
}

/// One `events` row as stored, borrowed from wherever it was read: a [`RawRow`], or the
/// database's own buffers while a scan stands on it (so a walk need not copy every body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef<'a> {
    pub seq: i64,
    pub id: Uuid,
    pub time: i64,
    pub stream: &'a str,
    pub version: i64,
    pub kind: &'a str,
    pub body: &'a [u8],
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    /// As [`RawRow::unreadable`].
    pub unreadable: Option<&'static str>,
}

/// A row checked on its own by [`check_row`], with what [`ChainVerifier`] still needs of it
/// to link it in order: its seq, the hash it chains to, and the body of a row whose kind is
/// `signing_key.rotated` (followed when it rotates the checkpoint key). Small enough to keep a
/// page of them without the bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRow {
    seq: i64,
    /// `None` when the stored `prev_hash` is not a hash at all.
    prev_hash: Option<Hash>,
    own: Result<Hash, Problem>,
    /// The body, for a row whose kind column is `signing_key.rotated` only.
    rotation: Option<Vec<u8>>,
}

impl CheckedRow {
    /// Checks `row` on its own ([`check_row`]) and keeps what linking it needs.
    pub fn check(row: RowRef<'_>) -> CheckedRow {
        let own = check_row(row);
        CheckedRow::with(row, own)
    }

    /// `row` with [`check_row`]'s result for it, computed elsewhere.
    fn with(row: RowRef<'_>, own: Result<Hash, Problem>) -> CheckedRow {
        CheckedRow {
            seq: row.seq,
            prev_hash: Hash::from_slice(row.prev_hash),
            own,
            rotation: (row.kind == crate::Kind::SigningKeyRotated.as_str())
                .then(|| row.body.to_vec()),
        }
    }
}

/// Whether a `signing_key.rotated` body hands over the checkpoint key (a body that does not
/// decode is a finding of its own row).
fn hands_over_checkpoint_key(body: &[u8]) -> bool {
    crate::codec::decode(body).is_ok_and(|env| {
        matches!(&env.payload, crate::Payload::SigningKeyRotated(r)
            if r.purpose == crate::KeyPurpose::Checkpoint)
    })
}

/// One `checkpoints` row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCheckpoint {
    pub tree_size: i64,
    pub root: Vec<u8>,
    pub note: String,
}

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Rows are missing: `expected` should have come next, `found` came instead.
    MissingRows { found: u64 },
    /// The row at this seq holds the body of another event.
    Reordered { holds: u64 },
    /// A column disagrees with the body it indexes.
    ColumnMismatch { column: &'static str },
    /// The body does not decode.
    MalformedBody { error: String },
    /// The stored hash is not the hash of the stored body: the body (or the hash) was changed.
    BodyChanged,
    /// `prev_hash` is not the previous event's hash.
    ChainBroken,
    /// A checkpoint's signature does not verify or is by an unknown key.
    CheckpointSignature { size: u64, error: String },
    /// A checkpoint's root does not match the events it covers: events after the previous
    /// good checkpoint were rewritten (and re-chained).
    CheckpointRoot { size: u64 },
    /// The ledger ends before the newest signed checkpoint.
    Truncated { checkpoint_size: u64, events: u64 },
    /// A checkpoint-key rotation that the key in force did not sign (or that is malformed).
    KeyRotation { error: String },
    /// The Merkle frontier stored beside a signed checkpoint does not lead to its root: the
    /// checkpoints table was altered.
    CheckpointFrontier { size: u64 },
}

/// The first thing found wrong: the seq it concerns and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub seq: u64,
    pub problem: Problem,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.problem {
            Problem::MissingRows { found } => write!(
                f,
                "seq {seq}: missing row (expected seq {seq}, next row is seq {found})"
            ),
            Problem::Reordered { holds } => write!(
                f,
                "seq {seq}: reordered rows (the row at seq {seq} holds the body of seq {holds})"
            ),
            Problem::ColumnMismatch { column } => write!(
                f,
                "seq {seq}: column `{column}` disagrees with the body (row altered)"
            ),
            Problem::MalformedBody { error } => write!(f, "seq {seq}: malformed body: {error}"),
            Problem::BodyChanged => write!(
                f,
                "seq {seq}: changed body (hash does not match the stored bytes)"
            ),
            Problem::ChainBroken => write!(
                f,
                "seq {seq}: broken chain (prev_hash is not the hash of seq {})",
                seq.saturating_sub(1)
            ),
            Problem::CheckpointSignature { size, error } => {
                write!(
                    f,
                    "seq {seq}: bad checkpoint signature at tree size {size}: {error}"
                )
            }
            Problem::CheckpointRoot { size } => write!(
                f,
                "seq {seq}: checkpoint at tree size {size} does not match the events \
                 (events from seq {seq} to {size} were rewritten)"
            ),
            Problem::Truncated {
                checkpoint_size,
                events,
            } => write!(
                f,
                "seq {seq}: truncated tail (ledger ends at seq {events}, \
                 but a signed checkpoint covers {checkpoint_size} events)"
            ),
            Problem::KeyRotation { error } => {
                write!(f, "seq {seq}: checkpoint key rotation not valid: {error}")
            }
            Problem::CheckpointFrontier { size } => write!(
                f,
                "seq {seq}: the frontier stored with the checkpoint at tree size {size} does not \
                 lead to its signed root (checkpoints table altered)"
            ),
        }
    }
}

/// What an intact ledger looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    /// The walk began after this seq, at a trusted checkpoint (0: from the first event).
    pub from: u64,
    pub checkpoints: u64,
    pub head: Hash,
    /// The size of the newest checkpoint a trusted key signed and the walk confirmed (the
    /// checkpoint it began at, on a walk resumed from one; 0: none). The events after it hold
    /// together as a chain, but no signature vouches for them yet: a writer without the key
    /// could have rewritten them, and a ledger none of whose events is covered proves nothing.
    pub signed_through: u64,
    /// Checkpoints signed only by keys not trusted here: the chain is intact, but whether it
    /// is the chain those checkpoints vouch for cannot be told without their key.
    pub untrusted: Vec<Untrusted>,
    /// The checkpoint keys in force at the head, when they descend from a key the check was
    /// given (through the handovers on the ledger); empty when that cannot be told. What a
    /// signature made now by this ledger's key verifies under. On a full walk from the first
    /// event with the first key of the history, that key's successor if any; on a walk
    /// resumed from a checkpoint, every key given until a handover after it.
    pub keys_in_force: Vec<NoteVerifier>,
    /// Of two or more keys given, those this ledger never put in force: none signed a
    /// checkpoint the walk verified, and no handover it followed named them. Grantline signs
    /// only with the key in force, so a key the checker knows as this ledger's that the ledger
    /// never reached means its handover was removed (and what followed re-signed with the key
    /// before), or that the key is another ledger's. (With one key given, a ledger not signed
    /// yet is no finding.)
    pub never_in_force: Vec<NoteVerifier>,
}

/// A checkpoint signed by a key the verifier was not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// Its tree size.
    pub size: u64,
    /// `name+keyid` of the keys that signed it.
    pub by: String,
}

impl Summary {
    /// Whether every checkpoint was signed by a trusted key.
    pub fn fully_trusted(&self) -> bool {
        self.untrusted.is_empty()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from > 0 {
            write!(
                f,
                "ok: {} events (seq {}..={} checked from the signed checkpoint at {}), \
                 {} checkpoints, head {}",
                self.events,
                self.from + 1,
                self.events,
                self.from,
                self.checkpoints,
                self.head
            )?;
        } else {
            write!(
                f,
                "ok: {} events, {} checkpoints, head {}",
                self.events, self.checkpoints, self.head
            )?;
        }
        if self.signed_through < self.events {
            write!(
                f,
                "; signed through seq {}, the {} events after it not yet covered by a \
                 checkpoint",
                self.signed_through,
                self.events - self.signed_through
            )?;
        }
        Ok(())
    }
}

/// The checks on one row that need nothing but the row: body decodes (all of it, as every
/// reader decodes it), columns agree with it, stored hash is the hash of the stored body over
/// the stored `prev_hash`. Independent per row, so a caller may run them in parallel.
pub fn check_row(row: RowRef<'_>) -> Result<Hash, Problem> {
    match codec::decode(row.body) {
        Ok(env) => {
            check_columns(
                row,
                env.seq,
                env.id,
                env.time.0,
                env.stream.as_str(),
                env.version,
                env.kind().as_str(),
            )?;
            check_hash(row)
        }
        // Say what is wrong as precisely as the header allows: a changed body (its hash
        // tells), reordered rows, an altered column; else the body is malformed as written.
        Err(e) => {
            let header = codec::decode_header(row.body).map_err(|e| Problem::MalformedBody {
                error: e.to_string(),
            })?;
            check_columns(
                row,
                header.seq,
                header.id,
                header.time.0,
                header.stream.as_str(),
                header.version,
                &header.kind,
            )?;
            check_hash(row)?;
            Err(Problem::MalformedBody {
                error: e.to_string(),
            })
        }
    }
}

fn check_columns(
    row: RowRef<'_>,
    seq: u64,
    id: Uuid,
    time: i64,
    stream: &str,
    version: u64,
    kind: &str,
) -> Result<(), Problem> {
    if seq as i64 != row.seq {
        return Err(Problem::Reordered { holds: seq });
    }
    // In column order, so the first column that is wrong is the one named: a column that
    // could not be read holds a placeholder, and is wrong whatever the placeholder is.
    let differs = [
        ("id", id != row.id),
        ("time", time != row.time),
        ("stream", stream != row.stream),
        ("version", version as i64 != row.version),
        ("kind", kind != row.kind),
    ];
    match differs
        .into_iter()
        .find(|(column, differs)| *differs || row.unreadable == Some(*column))
    {
        Some((column, _)) => Err(Problem::ColumnMismatch { column }),
        None => Ok(()),
    }
}

fn check_hash(row: RowRef<'_>) -> Result<Hash, Problem> {
    let prev = Hash::from_slice(row.prev_hash).ok_or(Problem::ChainBroken)?;
    let stored = Hash::from_slice(row.hash).ok_or(Problem::BodyChanged)?;
    if chain_hash(&prev, row.body) != stored {
        return Err(Problem::BodyChanged);
    }
    Ok(stored)
}

/// A rotation event names the key its handover introduces: its id, and the whole key (an id
/// is 32 bits, and a key with another's id is cheap to make).
fn names_its_handovers_key(
    r: &crate::SigningKeyRotated,
    handover: &crate::KeyHandover,
) -> Result<(), String> {
    use base64::Engine;
    if handover.to.key_id_hex() != r.key_id {
        return Err(format!(
            "the event names key {} but its handover names {}",
            r.key_id,
            handover.to.key_id_hex()
        ));
    }
    let named = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&r.public_key)
        .ok();
    if named.as_deref() != Some(handover.to.public_key().as_bytes().as_slice()) {
        return Err(format!(
            "the event's public key is not the key its handover names ({})",
            handover.to.key_id_hex()
        ));
    }
    Ok(())
}

/// A signed checkpoint to start a walk from instead of the first event (`grantline verify
/// --from-checkpoint`): opened with a trusted key, and the Merkle frontier stored beside it
/// checked against its signed root. The rows it covers are trusted, not read — a full walk
/// checks them; what follows it is checked as fully as by [`ChainVerifier::new`].
#[derive(Debug, Clone)]
pub struct Start {
    size: u64,
    frontier: Frontier,
    /// The checkpoint keys in force at the checkpoint, as a walk from genesis would hold them
    /// there (see [`ChainVerifier`]'s fields of the same names).
    in_force: Vec<NoteVerifier>,
    in_force_trusted: bool,
    retired: Vec<(NoteVerifier, u64)>,
    /// Keys given that were in force up to the checkpoint (see [`ChainVerifier`]).
    reached: Vec<NoteVerifier>,
    followed: bool,
}

/// Why a walk cannot start from a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// Signed only by keys not given to this check (`name+keyid`): nothing can be trusted
    /// from it here.
    Untrusted(String),
    /// The checkpoint itself is not what its signer wrote.
    Finding(Finding),
}

impl Start {
    /// Opens a stored checkpoint and the frontier saved with it, judged by the key in force at
    /// its tree size: the keys given, followed through the checkpoint-key handovers among
    /// `keys` (the events of the `keys` stream up to the checkpoint's size; others are
    /// ignored), as a walk from genesis follows them. So a checkpoint signed by the key a
    /// handover retired before it is a finding, and the newest checkpoint after a rotation
    /// opens with the first key.
    pub fn open(
        checkpoint: &RawCheckpoint,
        frontier: &[u8],
        trusted: &[NoteVerifier],
        keys: &[crate::Recorded],
    ) -> Result<Start, StartError> {
        let size = checkpoint.tree_size.max(0) as u64;
        let bad = |problem| StartError::Finding(Finding { seq: size, problem });
        let signature = |error: String| bad(Problem::CheckpointSignature { size, error });
        let handovers = keys.iter().filter_map(|r| match r.payload() {
            crate::Payload::SigningKeyRotated(k) if k.purpose == crate::KeyPurpose::Checkpoint => {
                Some((r.seq(), k))
            }
            _ => None,
        });
        let mut walk = ChainVerifier::new(Vec::new(), trusted);
        for (seq, k) in handovers.clone().filter(|(seq, _)| *seq < size) {
            walk.follow_rotation(k, seq)
                .map_err(|problem| StartError::Finding(Finding { seq, problem }))?;
        }
        // A handover at the checkpoint's own seq takes effect after it: the key it retires
        // may still sign the checkpoint of that size.
        walk.handing_over = handovers.clone().any(|(seq, _)| seq == size);
        let pending = PendingCheckpoint {
            size,
            note: checkpoint.note.clone(),
            root: checkpoint.root.clone(),
        };
        // One the retiring key did not sign may be the new key's, as in the walk's `push`.
        let by_the_new_key = walk.handing_over
            && matches!(
                Checkpoint::open(&pending.note, &walk.in_force),
                Err(CheckpointError::UnknownSigner(_))
            );
        let follow_at_size = |walk: &mut ChainVerifier| {
            for (seq, k) in handovers.clone().filter(|(seq, _)| *seq == size) {
                walk.follow_rotation(k, seq)
                    .map_err(|problem| StartError::Finding(Finding { seq, problem }))?;
            }
            walk.handing_over = false;
            Ok::<(), StartError>(())
        };
        if by_the_new_key {
            follow_at_size(&mut walk)?;
        }
        let root = match walk.judge(&pending) {
            Verdict::Signed(root) => {
                walk.note_signers(&pending.note);
                root
            }
            Verdict::Untrusted(by) => return Err(StartError::Untrusted(by)),
            Verdict::Bad(error) => return Err(signature(error)),
        };
        if size == 0 {
            return Err(signature("tree_size column disagrees with the note".into()));
        }
        let frontier = Frontier::from_bytes(frontier)
            .filter(|f| f.size() == size && f.root() == root)
            .ok_or_else(|| bad(Problem::CheckpointFrontier { size }))?;
        if !by_the_new_key {
            follow_at_size(&mut walk)?;
        }
        Ok(Start {
            size,
            frontier,
            in_force: walk.in_force,
            in_force_trusted: walk.in_force_trusted,
            retired: walk.retired,
            followed: walk.followed,
            reached: walk.reached,
        })
    }

    /// The checkpoint's tree size: the walk checks the rows after it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The seqs `(after, upto]` whose stored hashes tie the checkpoint to the rows after it:
    /// the events of the frontier's lowest perfect subtree (the last one alone when the size
    /// is odd, at most the whole prefix when it is a power of two). Only their hashes are read.
    pub fn anchor(&self) -> (u64, u64) {
        let count = self.frontier.split_lowest().map_or(0, |(_, n)| n);
        (self.size - count, self.size)
    }
}

/// A stored checkpoint, judged when the walk reaches its tree size: by the key in force then.
struct PendingCheckpoint {
    size: u64,
    note: String,
    root: Vec<u8>,
}

/// What a checkpoint's signature says before its root is compared.
enum Verdict {
    /// Signed by the key in force (trusted): this is its root.
    Signed(Hash),
    /// Signed only by keys not trusted here (`name+keyid`): the chain can still be walked,
    /// but this checkpoint proves nothing.
    Untrusted(String),
    /// A trusted key's signature that does not verify, a key that was not in force at that
    /// seq, or a malformed note.
    Bad(String),
}

/// Walks the rows in seq order and reports the first problem. Checkpoints are judged by the
/// key in force at their tree size: the trusted keys at first, then each key a
/// `signing_key.rotated` handover signed by the key in force introduced (effective for
/// checkpoints beyond the rotation's seq).
pub struct ChainVerifier {
    /// Where the walk began (0, or the size of the trusted checkpoint it resumed from).
    from: u64,
    next_seq: u64,
    prev: Hash,
    frontier: Frontier,
    pending: std::collections::VecDeque<PendingCheckpoint>,
    checkpoints: u64,
    last_good: u64,
    untrusted: Vec<Untrusted>,
    /// The checkpoint keys in force.
    in_force: Vec<NoteVerifier>,
    /// Whether `in_force` descends from a trusted key (false after a handover this check
    /// could not verify: what it introduced proves nothing here).
    in_force_trusted: bool,
    /// Keys handed over from, with the seq of the handover.
    retired: Vec<(NoteVerifier, u64)>,
    /// The keys this check was given.
    trusted: Vec<NoteVerifier>,
    /// Whether a checkpoint by a trusted key has verified: the keys given are then known to be
    /// this ledger's, and a handover they did not sign is tampering, not a key not given.
    confirmed: bool,
    /// Whether a checkpoint by the key in force has verified in this walk since it came into
    /// force (not one a resumed walk started from, past which a rotation may lie that it did
    /// not read): only then is a checkpoint by another key tampering rather than "cannot tell".
    signed_in_walk: bool,
    /// The row being linked hands the checkpoint key over: a checkpoint of its own size may be
    /// signed by either key (the new key's first one stands in for a missing last one).
    handing_over: bool,
    /// The keys that were in force somewhere in the walk: each signed a checkpoint it
    /// verified, or a handover it followed named it (kept only when two or more keys were
    /// given: [`Summary::never_in_force`]).
    reached: Vec<NoteVerifier>,
    /// Whether a handover has been followed, in this walk or before its start.
    followed: bool,
}

impl ChainVerifier {
    /// Starts from genesis with the stored checkpoints and the keys trusted to sign them.
    pub fn new(mut checkpoints: Vec<RawCheckpoint>, trusted: &[NoteVerifier]) -> Self {
        checkpoints.sort_by_key(|c| c.tree_size);
        let count = checkpoints.len() as u64;
        let pending = checkpoints
            .into_iter()
            .map(|c| PendingCheckpoint {
                size: c.tree_size.max(0) as u64,
                note: c.note,
                root: c.root,
            })
            .collect();
        ChainVerifier {
            from: 0,
            next_seq: 1,
            prev: GENESIS,
            frontier: Frontier::new(),
            pending,
            checkpoints: count,
            last_good: 0,
            untrusted: Vec::new(),
            in_force: trusted.to_vec(),
            in_force_trusted: true,
            retired: Vec::new(),
            trusted: trusted.to_vec(),
            confirmed: false,
            signed_in_walk: false,
            handing_over: false,
            followed: false,
            reached: Vec::new(),
        }
    }

    /// Starts after a trusted checkpoint. `anchor` holds the stored `(seq, hash)` of the rows
    /// [`Start::anchor`] names, in order: they must rebuild the checkpoint's frontier, which
    /// proves the hash the next row chains to. `checkpoints` are all stored ones; those at or
    /// below the start are not judged again.
    pub fn resume(
        start: Start,
        anchor: &[(i64, Vec<u8>)],
        checkpoints: Vec<RawCheckpoint>,
        trusted: &[NoteVerifier],
    ) -> Result<Self, Finding> {
        let (after, upto) = start.anchor();
        let Some((mut rebuilt, _)) = start.frontier.split_lowest() else {
            return Err(Finding {
                seq: 1,
                problem: Problem::CheckpointFrontier { size: start.size },
            });
        };
        let mut prev = GENESIS;
        for (i, (seq, hash)) in anchor.iter().enumerate() {
            let want = after + 1 + i as u64;
            if *seq != want as i64 || want > upto {
                return Err(Finding {
                    seq: want,
                    problem: Problem::MissingRows {
                        found: (*seq).max(0) as u64,
                    },
                });
            }
            prev = Hash::from_slice(hash).ok_or(Finding {
                seq: want,
                problem: Problem::BodyChanged,
            })?;
            rebuilt.push(&prev);
        }
        if rebuilt.size() < upto {
            return Err(Finding {
                seq: rebuilt.size() + 1,
                problem: Problem::Truncated {
                    checkpoint_size: start.size,
                    events: rebuilt.size(),
                },
            });
        }
        if rebuilt != start.frontier {
            return Err(Finding {
                seq: after + 1,
                problem: Problem::CheckpointRoot { size: start.size },
            });
        }
        let mut verifier = ChainVerifier::new(
            checkpoints
                .into_iter()
                .filter(|c| c.tree_size > start.size as i64)
                .collect(),
            trusted,
        );
        verifier.in_force = start.in_force;
        verifier.in_force_trusted = start.in_force_trusted;
        verifier.retired = start.retired;
        verifier.followed = start.followed;
        verifier.reached = start.reached;
        verifier.checkpoints += 1;
        verifier.from = start.size;
        verifier.next_seq = start.size + 1;
        verifier.prev = prev;
        verifier.frontier = start.frontier;
        verifier.last_good = start.size;
        verifier.confirmed = true;
        Ok(verifier)
    }

    /// Marks which of the keys in force signed `note` (a checkpoint that verified), when two or
    /// more keys were given.
    fn note_signers(&mut self, note: &str) {
        if self.trusted.len() < 2 {
            return;
        }
        for k in &self.in_force {
            if !self.reached.contains(k) && Checkpoint::open(note, std::slice::from_ref(k)).is_ok()
            {
                self.reached.push(k.clone());
            }
        }
    }

    /// A key a handover named was in force.
    fn note_reached(&mut self, k: &NoteVerifier) {
        if self.trusted.len() >= 2 && !self.reached.contains(k) {
            self.reached.push(k.clone());
        }
    }

    /// A checkpoint's signature, by the key in force now.
    fn judge(&self, cp: &PendingCheckpoint) -> Verdict {
        match Checkpoint::open(&cp.note, &self.in_force) {
            Ok(c) if c.size != cp.size => {
                Verdict::Bad("tree_size column disagrees with the note".into())
            }
            Ok(c) if Some(c.root) != Hash::from_slice(&cp.root) => {
                Verdict::Bad("root column disagrees with the note".into())
            }
            Ok(c) if self.in_force_trusted => Verdict::Signed(c.root),
            Ok(_) => Verdict::Untrusted(
                self.in_force
                    .iter()
                    .map(|v| format!("{}+{}", v.name(), v.key_id_hex()))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + " (introduced by a handover not verified here)",
            ),
            Err(CheckpointError::UnknownSigner(by)) => {
                let retired = self
                    .retired
                    .iter()
                    .find(|(k, _)| by.contains(&format!("{}+{}", k.name(), k.key_id_hex())));
                match retired {
                    Some((k, at)) if self.in_force_trusted => Verdict::Bad(format!(
                        "signed by {}+{}, which was handed over at seq {at}: not the key in force at seq {}",
                        k.name(),
                        k.key_id_hex(),
                        cp.size
                    )),
                    // The key in force is trusted and signed the checkpoints before this one,
                    // and no handover names another: Grantline signs only with the key in
                    // force, so this row was put there by someone else (as a handover signed
                    // by another key is, in `follow`).
                    _ if self.in_force_trusted && self.signed_in_walk && !self.handing_over => {
                        Verdict::Bad(format!(
                            "signed by {}, not by the key in force, which signed the checkpoints before it",
                            if by.is_empty() {
                                "nobody".to_string()
                            } else {
                                by.join(", ")
                            }
                        ))
                    }
                    _ if by.is_empty() => Verdict::Untrusted("no signature".into()),
                    _ => Verdict::Untrusted(by.join(", ")),
                }
            }
            Err(e) => Verdict::Bad(e.to_string()),
        }
    }

    /// Follows a `signing_key.rotated` of the checkpoint key at `seq`.
    fn follow(&mut self, body: &[u8], seq: u64) -> Result<(), Problem> {
        let env = crate::codec::decode(body).map_err(|e| Problem::MalformedBody {
            error: e.to_string(),
        })?;
        match &env.payload {
            crate::Payload::SigningKeyRotated(r) => self.follow_rotation(r, seq),
            _ => Ok(()),
        }
    }

    /// Follows a rotation at `seq` (of the checkpoint key; others change nothing here).
    fn follow_rotation(&mut self, r: &crate::SigningKeyRotated, seq: u64) -> Result<(), Problem> {
        if r.purpose != crate::KeyPurpose::Checkpoint {
            return Ok(());
        }
        let rotation = |error: String| Problem::KeyRotation { error };
        let note = r
            .endorsement
            .as_deref()
            .ok_or_else(|| rotation("no handover signed by the key it replaces".into()))?;
        // A handover into a key this check holds in force already (it was given the new key
        // alone, which signed the checkpoint of the handover's own size): nothing to follow,
        // once the event is seen to name that key.
        // Only while the walk has followed no handover (the key was given, not reached), and
        // once: a second handover into the key in force (a forged one, or one signed with a
        // stolen retired key) is judged as any is.
        if !self.followed
            && let Ok(claimed) = crate::KeyHandover::parse_unverified(note)
            && self.in_force.contains(&claimed.to)
            && !self.in_force.contains(&claimed.from)
        {
            names_its_handovers_key(r, &claimed).map_err(rotation)?;
            self.followed = true;
            return Ok(());
        }
        self.followed = true;
        let handover = match crate::KeyHandover::open(note, &self.in_force) {
            // Signed by the key in force: what it introduces is trusted if that key was, or if
            // this check was given the new key itself (a key in force reached through an
            // earlier handover this check could not verify).
            Ok(h) => {
                if self.trusted.contains(&h.to) {
                    self.in_force_trusted = true;
                }
                self.note_reached(&h.from);
                self.note_reached(&h.to);
                h
            }
            Err(CheckpointError::UnknownSigner(by)) if self.in_force_trusted && self.confirmed => {
                return Err(rotation(format!(
                    "signed by {}, not by the key in force, which signed the checkpoints before it",
                    if by.is_empty() {
                        "nobody".to_string()
                    } else {
                        by.join(", ")
                    }
                )));
            }
            Err(CheckpointError::UnknownSigner(_)) => {
                // Signed by a key not trusted here: follow it, but what it introduces proves
                // nothing (the checkpoints after it are "cannot tell") unless this check was
                // given that key itself.
                let h = crate::KeyHandover::parse_unverified(note)
                    .map_err(|e| rotation(e.to_string()))?;
                self.in_force_trusted = self.trusted.contains(&h.to);
                if self.in_force_trusted {
                    self.note_reached(&h.to);
                }
                h
            }
            Err(e) => return Err(rotation(e.to_string())),
        };
        names_its_handovers_key(r, &handover).map_err(rotation)?;
        for old in std::mem::replace(&mut self.in_force, vec![handover.to]) {
            self.retired.push((old, seq));
        }
        // The new key has signed nothing yet here: until it has, a checkpoint by another key
        // is "cannot tell", as at the start of a walk.
        self.signed_in_walk = false;
        Ok(())
    }

    /// Checks the next row; `own` is [`check_row`]'s result for it (computed here when `None`).
    pub fn push(
        &mut self,
        row: &RawRow,
        own: Option<Result<Hash, Problem>>,
    ) -> Result<(), Finding> {
        let row = row.as_ref();
        let own = own.unwrap_or_else(|| check_row(row));
        self.push_checked(CheckedRow::with(row, own))
    }

    /// Links the next row, already checked on its own ([`CheckedRow::check`]).
    pub fn push_checked(&mut self, row: CheckedRow) -> Result<(), Finding> {
        let seq = self.next_seq;
        let at = |problem| Finding { seq, problem };
        if row.seq != seq as i64 {
            if row.seq > seq as i64 {
                return Err(at(Problem::MissingRows {
                    found: row.seq as u64,
                }));
            }
            return Err(at(Problem::Reordered {
                holds: row.seq.max(0) as u64,
            }));
        }
        let hash = row.own.map_err(at)?;
        if row.prev_hash != Some(self.prev) {
            return Err(at(Problem::ChainBroken));
        }
        self.frontier.push(&hash);
        self.prev = hash;
        self.next_seq += 1;
        // Only a handover of the checkpoint key: at another key's rotation the key in force
        // stays, and a checkpoint it did not sign is tampering, as at any other seq.
        let hands_over = row
            .rotation
            .as_deref()
            .is_some_and(hands_over_checkpoint_key);
        self.handing_over = hands_over;
        // The checkpoints of a handover's own size that the key it retires did not sign: the
        // key it introduces may have (a server restarted after the rotation signs the head
        // again before anything is appended), so they are judged after the handover.
        let mut by_the_new_key = Vec::new();
        while self.pending.front().is_some_and(|cp| cp.size <= seq) {
            let Some(cp) = self.pending.pop_front() else {
                break;
            };
            if cp.size < seq {
                continue; // size 0 (or duplicate) checkpoints say nothing about events
            }
            if self.handing_over
                && matches!(
                    Checkpoint::open(&cp.note, &self.in_force),
                    Err(CheckpointError::UnknownSigner(_))
                )
            {
                by_the_new_key.push(cp);
                continue;
            }
            let verdict = self.judge(&cp);
            self.settle(&cp, verdict, seq)?;
        }
        self.handing_over = false;
        // A rotation takes effect after the checkpoints of its own size: the old key may
        // still vouch for the event that hands it over.
        if let Some(body) = &row.rotation {
            self.follow(body, seq).map_err(at)?;
        }
        // Still at the handover: one neither key signed proves nothing, as before it.
        self.handing_over = hands_over;
        for cp in by_the_new_key {
            let verdict = self.judge(&cp);
            self.settle(&cp, verdict, seq)?;
        }
        self.handing_over = false;
        Ok(())
    }

    /// Takes a judged checkpoint whose size is the row just linked: a finding, a checkpoint
    /// that proves nothing here, or one whose signed root must be the walk's.
    fn settle(
        &mut self,
        cp: &PendingCheckpoint,
        verdict: Verdict,
        seq: u64,
    ) -> Result<(), Finding> {
        match verdict {
            Verdict::Bad(error) => Err(Finding {
                seq,
                problem: Problem::CheckpointSignature {
                    size: cp.size,
                    error,
                },
            }),
            Verdict::Untrusted(by) => {
                self.untrusted.push(Untrusted { size: cp.size, by });
                Ok(())
            }
            Verdict::Signed(root) if root != self.frontier.root() => Err(Finding {
                seq: self.last_good + 1,
                problem: Problem::CheckpointRoot { size: cp.size },
            }),
            Verdict::Signed(_) => {
                self.last_good = cp.size;
                self.confirmed = true;
                self.signed_in_walk = true;
                self.note_signers(&cp.note);
                Ok(())
            }
        }
    }

    /// Ends the walk: the ledger must reach every signed checkpoint.
    pub fn finish(mut self) -> Result<Summary, Finding> {
        let events = self.next_seq - 1;
        let pending: Vec<PendingCheckpoint> = self.pending.drain(..).collect();
        let verdicts: Vec<(u64, Verdict)> =
            pending.iter().map(|cp| (cp.size, self.judge(cp))).collect();
        if let Some(newest) = verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Signed(_)))
            .map(|(size, _)| *size)
            .max()
        {
            return Err(Finding {
                seq: events + 1,
                problem: Problem::Truncated {
                    checkpoint_size: newest,
                    events,
                },
            });
        }
        let mut untrusted = self.untrusted;
        for (size, verdict) in verdicts {
            match verdict {
                Verdict::Bad(error) => {
                    return Err(Finding {
                        seq: size,
                        problem: Problem::CheckpointSignature { size, error },
                    });
                }
                Verdict::Untrusted(by) => untrusted.push(Untrusted { size, by }),
                Verdict::Signed(_) => {}
            }
        }
        Ok(Summary {
            events,
            from: self.from,
            checkpoints: self.checkpoints,
            head: self.prev,
            signed_through: self.last_good,
            untrusted,
            never_in_force: self
                .trusted
                .iter()
                .filter(|k| self.trusted.len() >= 2 && !self.reached.contains(k))
                .cloned()
                .collect(),
            keys_in_force: if self.in_force_trusted {
                self.in_force
            } else {
                Vec::new()
            },
        })
    }

    /// Events accepted so far.
    pub fn events(&self) -> u64 {
        self.next_seq - 1
    }
}
