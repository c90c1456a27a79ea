//! Grantline's event store: the append-only `events` and `checkpoints` tables on SQLite and
//! PostgreSQL, the group-commit appender, tailing by seq, and the erasable personal-data keys.

pub mod backup;
mod credentials;
mod database;
mod error;
mod federation;
pub mod keyfile;
mod keyring;
mod tail;
#[cfg(feature = "testing")]
pub mod testing;
mod writer;

pub use credentials::{Credential, Credentials};
pub use database::{Database, Pool, SQLITE_FILE, Store};
pub use error::{Result, StoreError};
pub use federation::{Federation, StoredTokens};
pub use keyring::Keyring;
pub use tail::Tail;
pub use writer::{CommitHook, GroupCommit, GroupCommitHook, Ledger, LedgerOptions, PG_CHANNEL};

use grantline_ledger::NoteVerifier;
use grantline_ledger::verify::{ChainVerifier, Finding, Start, StartError, Summary};

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
/// the checkpoint must open with a trusted key, the frontier stored with it must lead to its
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
    let start = match Start::open(&checkpoint, &frontier, trusted) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let (after, upto) = start.anchor();
    let anchor = store.chain_hash_rows(after, upto).await?;
    let size = start.size();
    let checkpoints = store.checkpoints().await?;
    let verifier = match ChainVerifier::resume(start, &anchor, checkpoints, trusted) {
        Ok(v) => v,
        Err(f) => return Ok(Err(StartError::Finding(f))),
    };
    progress(size);
    Ok(walk(store, verifier, size, progress)
        .await?
        .map_err(StartError::Finding))
}

/// Feeds the rows after `after` to `verifier`, reading the next page while this one is checked.
async fn walk(
    store: &Store,
    mut verifier: ChainVerifier,
    mut after: u64,
    mut progress: impl FnMut(u64),
) -> Result<std::result::Result<Summary, Finding>> {
    let page = 20_000u32;
    let mut next = tokio::spawn({
        let store = store.clone();
        async move { store.raw_rows(after, page).await }
    });
    // The page checked last time: its buffers are read into again.
    let mut spare = Vec::new();
    loop {
        let rows = next
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        let Some(last) = rows.last() else { break };
        let last_seq = last.seq.max(0) as u64;
        // Read the next page while this one is checked; check rows on the blocking pool in
        // parallel chunks, then link them in order.
        next = tokio::spawn({
            let store = store.clone();
            let reuse = std::mem::take(&mut spare);
            async move { store.raw_rows_into(last_seq.max(after), page, reuse).await }
        });
        let rows = std::sync::Arc::new(rows);
        let own = parallel_check(rows.clone()).await?;
        for (row, own) in rows.iter().zip(own) {
            if let Err(f) = verifier.push(row, Some(own)) {
                next.abort();
                return Ok(Err(f));
            }
        }
        spare = std::sync::Arc::try_unwrap(rows).unwrap_or_default();
        after = last_seq;
        progress(verifier.events());
    }
    Ok(verifier.finish())
}

async fn parallel_check(
    rows: std::sync::Arc<Vec<grantline_ledger::verify::RawRow>>,
) -> Result<Vec<std::result::Result<grantline_ledger::Hash, grantline_ledger::verify::Problem>>> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let chunk = rows.len().div_ceil(workers).max(1);
    let mut handles = Vec::new();
    for start in (0..rows.len()).step_by(chunk) {
        let rows = rows.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            rows[start..(start + chunk).min(rows.len())]
                .iter()
                .map(grantline_ledger::verify::check_row)
                .collect::<Vec<_>>()
        }));
    }
    let mut out = Vec::with_capacity(rows.len());
    for h in handles {
        out.extend(
            h.await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?,
        );
    }
    Ok(out)
}
