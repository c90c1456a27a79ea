//! Inclusion proofs (one event against the newest checkpoint) and consistency proofs (one
//! checkpoint extends another), in the form `grantline proof` prints, the witness endpoints
//! serve and `grantline verify-proof` checks.

use base64::Engine;
use grantline_ledger::Hash;
use grantline_ledger::merkle::{
    consistency_path, inclusion_path, leaf_hash, node_hash, root_of, split_u64,
};
use grantline_store::{Store, StoreError};
use serde_json::{Value, json};

fn b64(h: &Hash) -> String {
    base64::engine::general_purpose::STANDARD.encode(h.0)
}

/// Leaves under each subtree root [`Subtrees`] keeps.
const CHUNK: u64 = 1024;

/// Chain hashes read (and hashed off the async workers) at a time when subtree roots are
/// added: a bound on the memory one extension holds.
const CHUNKS_A_READ: u64 = 64;

/// The roots of the ledger's complete, aligned subtrees of [`CHUNK`] leaves (nodes of every
/// tree past them, RFC 6962 splitting at powers of two), kept between proofs. A proof then
/// reads the leaves of at most the few chunks its path reaches into, and hashes the roots
/// above them: O(size / CHUNK) work instead of every leaf. The first proof, and each after
/// the ledger grew by chunks, reads the chain hashes not yet covered once.
#[derive(Debug, Default)]
pub struct Subtrees {
    chunks: tokio::sync::Mutex<Chunks>,
}

#[derive(Debug, Default)]
struct Chunks {
    roots: Vec<Hash>,
    /// The chain hash of the last leaf the roots cover: a ledger that no longer holds it
    /// (restored, or cut back and grown again) is read again from seq 1.
    last: Option<Hash>,
}

impl Subtrees {
    /// The roots of the first `size / CHUNK` chunks, reading what is not kept yet.
    async fn roots(&self, store: &Store, size: u64) -> Result<Vec<Hash>, StoreError> {
        let full = size / CHUNK;
        let mut chunks = self.chunks.lock().await;
        if let Some(last) = chunks.last {
            let at = chunks.roots.len() as u64 * CHUNK;
            if store.hash_at(at).await? != Some(last) {
                *chunks = Chunks::default();
            }
        }
        while (chunks.roots.len() as u64) < full {
            let have = chunks.roots.len() as u64;
            let upto = full.min(have + CHUNKS_A_READ);
            let chain = store
                .chain_hashes_between(have * CHUNK, upto * CHUNK)
                .await?;
            let last = chain.last().copied();
            let roots = tokio::task::spawn_blocking(move || {
                chain
                    .chunks(CHUNK as usize)
                    .map(|c| root_of(&c.iter().map(leaf_hash).collect::<Vec<_>>()))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| StoreError::Invalid(format!("computing a proof failed: {e}")))?;
            chunks.roots.extend(roots);
            chunks.last = last;
        }
        Ok(chunks.roots[..full as usize].to_vec())
    }

    /// The hash of each subtree (`lo..hi`) a proof over a tree of `size` asks for, computed
    /// from the kept roots and the leaves of the chunks the proof reaches into. `proof` is
    /// run twice: once to learn which subtrees it asks for, then to answer.
    async fn prove(
        &self,
        store: &Store,
        size: u64,
        proof: impl Fn(&mut dyn FnMut(u64, u64) -> Hash) -> Option<Vec<Hash>>,
    ) -> Result<Option<Vec<Hash>>, StoreError> {
        let mut asked = Vec::new();
        if proof(&mut |lo, hi| {
            asked.push((lo, hi));
            Hash::default()
        })
        .is_none()
        {
            return Ok(None);
        }
        let mut partial = std::collections::BTreeSet::new();
        for (lo, hi) in asked {
            chunks_reached(lo, hi, &mut partial);
        }
        let roots = self.roots(store, size).await?;
        let mut leaves = std::collections::HashMap::new();
        for c in partial {
            let chain = store
                .chain_hashes_between(c * CHUNK, ((c + 1) * CHUNK).min(size))
                .await?;
            leaves.insert(c, chain.iter().map(leaf_hash).collect::<Vec<_>>());
        }
        let mut missing = false;
        let path = proof(&mut |lo, hi| {
            subtree(lo, hi, &roots, &leaves).unwrap_or_else(|| {
                missing = true;
                Hash::default()
            })
        });
        if missing {
            return Err(StoreError::Invalid(
                "a proof asked for a subtree it was not prepared for".into(),
            ));
        }
        Ok(path)
    }
}

/// Whether `lo..hi` is one whole chunk (its root is kept).
fn whole_chunk(lo: u64, hi: u64) -> bool {
    hi - lo == CHUNK && lo.is_multiple_of(CHUNK)
}

/// Adds to `out` the chunks whose leaves the hash of `lo..hi` needs: those it covers only in
/// part.
fn chunks_reached(lo: u64, hi: u64, out: &mut std::collections::BTreeSet<u64>) {
    if hi <= lo || whole_chunk(lo, hi) {
        return;
    }
    if lo / CHUNK == (hi - 1) / CHUNK {
        out.insert(lo / CHUNK);
        return;
    }
    let k = split_u64(hi - lo);
    chunks_reached(lo, lo + k, out);
    chunks_reached(lo + k, hi, out);
}

/// The hash of leaves `lo..hi` from the kept chunk roots and the leaves read, as RFC 6962
/// splits it; `None` when a chunk it needs was not read.
fn subtree(
    lo: u64,
    hi: u64,
    roots: &[Hash],
    leaves: &std::collections::HashMap<u64, Vec<Hash>>,
) -> Option<Hash> {
    if whole_chunk(lo, hi) {
        return roots.get((lo / CHUNK) as usize).copied();
    }
    if lo / CHUNK == (hi - 1) / CHUNK {
        let c = lo / CHUNK;
        let held = leaves.get(&c)?;
        let (from, to) = ((lo - c * CHUNK) as usize, (hi - c * CHUNK) as usize);
        return held.get(from..to).map(root_of);
    }
    let k = split_u64(hi - lo);
    Some(node_hash(
        &subtree(lo, lo + k, roots, leaves)?,
        &subtree(lo + k, hi, roots, leaves)?,
    ))
}

/// The proof that event `seq` is in the tree of the checkpoint of size `at` (the newest when
/// `None`; a witness names the one it keeps): `None` when there is no such checkpoint or it
/// does not cover `seq`. `turn` (a caller's limit on proofs at once) is held until the proof
/// is computed, or until the caller stops waiting for it (hashing already begun on a blocking
/// thread, one batch of chain hashes at most, ends on its own).
pub async fn inclusion(
    store: &Store,
    subtrees: &Subtrees,
    seq: u64,
    at: Option<u64>,
    turn: impl Send + 'static,
) -> Result<Option<Value>, StoreError> {
    let Some(newest) = store.checkpoint(at).await? else {
        return Ok(None);
    };
    let size = newest.tree_size.max(0) as u64;
    if seq == 0 || seq > size {
        return Ok(None);
    }
    let Some(chain) = store.hash_at(seq).await? else {
        return Ok(None);
    };
    let Some(path) = subtrees
        .prove(store, size, |root| inclusion_path(size, seq - 1, root))
        .await?
    else {
        return Ok(None);
    };
    drop(turn);
    Ok(Some(json!({
        "type": "inclusion",
        "seq": seq,
        "chain_hash": chain.to_hex(),
        "index": seq - 1,
        "tree_size": size,
        "hashes": path.iter().map(b64).collect::<Vec<_>>(),
        "checkpoint": newest.note,
    })))
}

/// The proof that the checkpoint of tree size `to` (the newest when `None`) extends the one of
/// size `from`, with both signed checkpoints: `None` when either is not a checkpoint of this
/// ledger or `from` is not below `to`.
pub async fn consistency(
    store: &Store,
    subtrees: &Subtrees,
    from: u64,
    to: Option<u64>,
    turn: impl Send + 'static,
) -> Result<Option<Value>, StoreError> {
    let Some(new) = store.checkpoint(to).await? else {
        return Ok(None);
    };
    let Some(old) = store.checkpoint(Some(from)).await? else {
        return Ok(None);
    };
    let (old_size, new_size) = (old.tree_size.max(0) as u64, new.tree_size.max(0) as u64);
    if old_size == 0 || old_size > new_size {
        return Ok(None);
    }
    let Some(path) = subtrees
        .prove(store, new_size, |root| {
            consistency_path(new_size, old_size, root)
        })
        .await?
    else {
        return Ok(None);
    };
    drop(turn);
    Ok(Some(json!({
        "type": "consistency",
        "old_size": old_size,
        "new_size": new_size,
        "hashes": path.iter().map(b64).collect::<Vec<_>>(),
        "old_checkpoint": old.note,
        "new_checkpoint": new.note,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantline_ledger::Append;
    use grantline_ledger::merkle::{consistency_proof, inclusion_proof};
    use grantline_store::{Ledger, testing};

    async fn ledger_of(events: u64, from: u64) -> (testing::TestDb, Ledger) {
        let db = testing::sqlite().await;
        let ledger = Ledger::open(&db.db, testing::signer(), Default::default())
            .await
            .unwrap();
        grow(&ledger, events, from).await;
        (db, ledger)
    }

    async fn grow(ledger: &Ledger, events: u64, from: u64) {
        for batch in (from..from + events).collect::<Vec<_>>().chunks(500) {
            let events = batch.iter().map(|&i| testing::tool_call(i)).collect();
            ledger.append(Append::new(events)).await.unwrap();
        }
    }

    async fn leaves(store: &Store, size: u64) -> Vec<Hash> {
        let chain = store.chain_hashes(size).await.unwrap();
        chain.iter().map(leaf_hash).collect()
    }

    /// Paths over kept chunk roots are the paths over every leaf, for leaves and old sizes at
    /// chunk edges, inside chunks, and in the last partial chunk; and the kept roots follow a
    /// ledger that grew, and are dropped for one that is not the ledger they were read from.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paths_over_kept_subtrees_are_the_paths_over_every_leaf() {
        let (_db, ledger) = ledger_of(2 * CHUNK + 600, 0).await;
        let store = ledger.store().clone();
        let subtrees = Subtrees::default();
        let edges = |size: u64| {
            let mut at = vec![0, 1, 7, size / 2, size - 1];
            for c in 1..=size / CHUNK {
                at.extend([c * CHUNK - 1, c * CHUNK, c * CHUNK + 1]);
            }
            at.retain(|&i| i < size);
            at
        };
        for size in [
            1,
            2,
            700,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            2 * CHUNK + 600,
        ] {
            let all = leaves(&store, size).await;
            for index in edges(size) {
                let kept = subtrees
                    .prove(&store, size, |root| inclusion_path(size, index, root))
                    .await
                    .unwrap();
                assert_eq!(
                    kept,
                    inclusion_proof(&all, index as usize),
                    "{index} of {size}"
                );
            }
            for old in edges(size).into_iter().map(|i| i + 1) {
                let kept = subtrees
                    .prove(&store, size, |root| consistency_path(size, old, root))
                    .await
                    .unwrap();
                assert_eq!(
                    kept,
                    consistency_proof(&all, old as usize),
                    "{old} of {size}"
                );
            }
        }
        assert_eq!(subtrees.chunks.lock().await.roots.len(), 2);
        assert_eq!(
            subtrees
                .prove(&store, 10, |root| inclusion_path(10, 10, root))
                .await
                .unwrap(),
            None
        );

        // Grown by two chunks: the roots kept are extended.
        grow(&ledger, 2 * CHUNK, 2 * CHUNK + 600).await;
        let size = 4 * CHUNK + 600;
        let all = leaves(&store, size).await;
        for index in [5, 3 * CHUNK + 2, size - 1] {
            let kept = subtrees
                .prove(&store, size, |root| inclusion_path(size, index, root))
                .await
                .unwrap();
            assert_eq!(kept, inclusion_proof(&all, index as usize));
        }
        assert_eq!(subtrees.chunks.lock().await.roots.len(), 4);

        // Another ledger under the same roots (a restore): they are read again.
        let (_other_db, other) = ledger_of(3 * CHUNK, 1_000_000).await;
        let size = 3 * CHUNK;
        let all = leaves(other.store(), size).await;
        let kept = subtrees
            .prove(other.store(), size, |root| inclusion_path(size, 1, root))
            .await
            .unwrap();
        assert_eq!(kept, inclusion_proof(&all, 1));
        other.shutdown().await;
        ledger.shutdown().await;
    }
}
