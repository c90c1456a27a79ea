//! Grantline's event store: the append-only `events` and `checkpoints` tables on SQLite and
//! PostgreSQL, the group-commit appender, tailing by seq, and the erasable personal-data keys.

pub mod backup;
mod credentials;
mod database;
mod error;
mod failing;
mod federation;
pub mod keyfile;
mod keyring;
mod reach;
mod tail;
#[cfg(feature = "testing")]
pub mod testing;
mod writer;

pub use credentials::{Credential, Credentials};
pub use database::{Database, Exclusive, Pool, SQLITE_FILE, Store, private_dir};
pub use error::{Result, StoreError};
pub use failing::Failing;
pub use federation::{Federation, StoredTokens};
pub use keyring::Keyring;
pub use tail::Tail;
pub use writer::{CommitHook, GroupCommit, GroupCommitHook, Ledger, LedgerOptions, PG_CHANNEL};

use grantline_ledger::NoteVerifier;
use grantline_ledger::verify::{ChainVerifier, CheckedRow, Finding, Start, StartError, Summary};

/// Walks the whole ledger and returns its summary or the first finding. `progress` is called
/// with the number of events checked so far.
pub async fn verify(
    store: &Store,
    trusted: &[NoteVerifier],
    progress: impl FnMut(u64),
) -> Result<std::result::Result<Summary, Finding>> {
    let checkpoints = store.checkpoints().await?;
    walk(store, ChainVerifier::new(checkpoints, trusted), 0, progress).await
}

/// Walks only the rows after a signed checkpoint (the newest, or the one of tree size `at`):
/// the checkpoint must open with the key in force at its size (the trusted keys followed
/// through the checkpoint-key handovers before it, read by their stream), the frontier stored with it must lead to its
/// root, and the stored hashes of the rows of its lowest subtree must rebuild that frontier
/// (proving the hash the next row chains to); everything after it is checked as by [`verify`].
/// The rows the checkpoint covers are trusted, not read. `StartError::Untrusted` when the
/// checkpoint is signed only by keys not given here; `StartError::Finding` for the first thing
/// found wrong.
pub async fn verify_from_checkpoint(
    store: &Store,
    trusted: &[NoteVerifier],
    at: Option<u64>,
    mut progress: impl FnMut(u64),
) -> Result<std::result::Result<Summary, StartError>> {
    let Some((checkpoint, frontier)) = store.checkpoint_with_frontier(at).await? else {
        return Err(StoreError::NotFound(match at {
            Some(n) => format!("there is no checkpoint of tree size {n}"),
            None => "the ledger has no checkpoint to start from".into(),
        }));
    };
    let size = u64::try_from(checkpoint.tree_size).unwrap_or(0);
    // A key row whose body was changed is a finding like any other, not "cannot tell".
    let keys = match store.key_events(size).await {
        Ok(k) => k,
        Err(StoreError::Corrupt { seq, problem }) => {
            return Ok(Err(StartError::Finding(
                grantline_ledger::verify::Finding {
                    seq,
                    problem: grantline_ledger::verify::Problem::KeyRotation { error: problem },
                },
            )));
        }
        Err(e) => return Err(e),
    };
    let start = match Start::open(&checkpoint, &frontier, trusted, &keys) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let (after, upto) = start.anchor();
    let anchor = store.chain_hash_rows(after, upto).await?;
    let size = start.size();
    let checkpoints = store
        .checkpoints_after(i64::try_from(size).unwrap_or(i64::MAX))
        .await?;
    let verifier = match ChainVerifier::resume(start, &anchor, checkpoints, trusted) {
        Ok(v) => v,
        Err(f) => return Ok(Err(StartError::Finding(f))),
    };
    progress(size);
    Ok(walk(store, verifier, size, progress)
        .await?
        .map_err(StartError::Finding))
}

/// The first key of a key history kept outside the database (oldest first,
/// `checkpoint-keys.pub`) that the ledger's checkpoint-key handovers do not lead to, in order,
/// from the history's first key: `None` when every one is reached. A walk trusts the handovers
/// it reads (and `--from-checkpoint` those before its checkpoint without reading the rows around
/// them): one removed, with the rows after it rewritten and signed by the key it retired, reads
/// as a history without the rotation; the local history says there was one. The history may
/// skip keys (a restore writes the first key and the one in force; servers sharing a ledger
/// each record only their own rotations), so its keys need only lie along the chain, in order.
pub async fn unreached_history_key(
    store: &Store,
    history: &[NoteVerifier],
) -> Result<Option<NoteVerifier>> {
    let Some(first) = history.first() else {
        return Ok(None);
    };
    let keys = store.key_events(u64::MAX).await?;
    // The keys each handover names (whole keys, from its note: a key id is 32 bits, and a key
    // whose id matches another's is cheap to make), in seq order.
    let handovers: Vec<(NoteVerifier, NoteVerifier)> = keys
        .iter()
        .filter_map(|r| match r.payload() {
            grantline_ledger::Payload::SigningKeyRotated(k)
                if k.purpose == grantline_ledger::KeyPurpose::Checkpoint =>
            {
                let h = grantline_ledger::KeyHandover::parse_unverified(k.endorsement.as_deref()?)
                    .ok()?;
                Some((h.from, h.to))
            }
            _ => None,
        })
        .collect();
    let mut chain = vec![first.clone()];
    while let Some((_, next)) = handovers
        .iter()
        .find(|(from, to)| chain.last().is_some_and(|last| from == last) && !chain.contains(to))
    {
        chain.push(next.clone());
    }
    let mut along = chain.iter();
    Ok(history.iter().find(|k| !along.any(|c| c == *k)).cloned())
}

/// Rows per page of [`verify`]'s walk: each page is read and checked as one piece of work.
pub const VERIFY_PAGE_ROWS: u32 = 10_000;

/// How many readers [`verify`]'s walk runs: one per core, at most 8.
pub fn verify_readers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
}

/// Feeds the rows after `after` to `verifier` in seq order. One reader per core (at most 8,
/// [`verify_readers`]) reads and checks pages on its own (reader `w` takes pages `w`, `w + readers`, …: page `i` is the
/// rows after `after + i × page`), so reading and checking keep every core busy without a
/// barrier between pages; the chain, the Merkle tree and the checkpoints are then followed
/// here in order. Seqs are contiguous in a sound ledger, so page `i` holds exactly the rows
/// `after + i × page + 1 ..`; where they are not, the first row out of place is a finding
/// before any overlap between pages matters. The walk ends at the first page that is not
/// full: the end of the ledger when it was read.
async fn walk(
    store: &Store,
    mut verifier: ChainVerifier,
    after: u64,
    mut progress: impl FnMut(u64),
) -> Result<std::result::Result<Summary, Finding>> {
    let readers = verify_readers();
    let mut pages = Vec::with_capacity(readers);
    let mut spares = Vec::with_capacity(readers);
    let mut tasks = tokio::task::JoinSet::new();
    for first in 0..readers {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<CheckedRow>>>(1);
        let (spare_tx, mut spare_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<CheckedRow>>();
        // Three pages per reader (one read into, one waiting, one being followed), handed
        // back once followed: a walk allocates them once, not at every page. (On PostgreSQL
        // each reader also holds the page of rows it is checking, bodies and all.)
        for _ in 0..3 {
            let _ = spare_tx.send(Vec::new());
        }
        pages.push(rx);
        spares.push(spare_tx);
        let store = store.clone();
        tasks.spawn(async move {
            let mut i = first as u64;
            // No buffer back: the walk is over.
            while let Some(reuse) = spare_rx.recv().await {
                let from = i
                    .checked_mul(u64::from(VERIFY_PAGE_ROWS))
                    .and_then(|n| n.checked_add(after))
                    .filter(|&n| i64::try_from(n).is_ok());
                // No seq lies beyond i64: past it, a page is empty (the walk ends there).
                let page = match from {
                    Some(from) => store.checked_rows_into(from, VERIFY_PAGE_ROWS, reuse).await,
                    None => Ok(Vec::new()),
                };
                let last = page
                    .as_ref()
                    .map_or(true, |rows| rows.len() < VERIFY_PAGE_ROWS as usize);
                if tx.send(page).await.is_err() || last {
                    return;
                }
                i += readers as u64;
            }
        });
    }
    let mut i = 0usize;
    loop {
        // A reader stops only after sending its last page, so a closed channel here means it
        // failed: never end the walk early as if the ledger ended there.
        let Some(page) = pages[i % readers].recv().await else {
            return Err(StoreError::Unavailable(
                "a reader of the walk stopped before the end of the ledger".into(),
            ));
        };
        let mut rows = page?;
        let full = rows.len() == VERIFY_PAGE_ROWS as usize;
        if !rows.is_empty() {
            for row in rows.drain(..) {
                if let Err(f) = verifier.push_checked(row) {
                    return Ok(Err(f));
                }
            }
            progress(verifier.events());
        }
        if !full {
            break;
        }
        // The reader may have stopped already; then the page is simply dropped.
        let _ = spares[i % readers].send(rows);
        i += 1;
    }
    drop(pages);
    tasks.shutdown().await;
    Ok(verifier.finish())
}
