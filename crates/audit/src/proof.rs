//! Inclusion proofs (one event against the newest checkpoint) and consistency proofs (one
//! checkpoint extends another), in the form `grantline proof` prints, the witness endpoints
//! serve and `grantline verify-proof` checks.

use base64::Engine;
use grantline_ledger::Hash;
use grantline_ledger::merkle::{consistency_proof, inclusion_proof, leaf_hash};
use grantline_store::{Store, StoreError};
use serde_json::{Value, json};

fn b64(h: &Hash) -> String {
    base64::engine::general_purpose::STANDARD.encode(h.0)
}

/// `proof` over the leaves of `chain` (the first `size` chain hashes), computed off the async
/// workers: a proof hashes every leaf of the tree, which takes a while on a large ledger.
/// `turn` (a caller's limit on proofs at once) is held until the hashing ends, also when the
/// caller stops waiting for it: the blocking work cannot be cancelled, so a client that hangs
/// up must not free its turn for another while its proof still runs.
async fn blocking<T: Send + 'static>(
    chain: Vec<Hash>,
    size: u64,
    turn: impl Send + 'static,
    proof: impl FnOnce(&[Hash]) -> T + Send + 'static,
) -> Result<T, StoreError> {
    if chain.len() as u64 != size {
        return Err(StoreError::Invalid(format!(
            "the ledger has {} events but its newest checkpoint covers {size}",
            chain.len()
        )));
    }
    tokio::task::spawn_blocking(move || {
        // The leaves in place of the chain hashes: one vector of the tree's size, not two.
        let mut leaves = chain;
        for h in &mut leaves {
            *h = leaf_hash(h);
        }
        let out = proof(&leaves);
        drop(turn);
        out
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("computing a proof failed: {e}")))
}

/// The proof that event `seq` is in the tree of the checkpoint of size `at` (the newest when
/// `None`; a witness names the one it keeps): `None` when there is no such checkpoint or it
/// does not cover `seq`. `turn` is held until the proof is computed (see [`blocking`]).
pub async fn inclusion(
    store: &Store,
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
    let chain_hashes = store.chain_hashes(size).await?;
    let Some(path) = blocking(chain_hashes, size, turn, move |l| {
        inclusion_proof(l, (seq - 1) as usize)
    })
    .await?
    else {
        return Ok(None);
    };
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
    let chain_hashes = store.chain_hashes(new_size).await?;
    let Some(path) = blocking(chain_hashes, new_size, turn, move |l| {
        consistency_proof(l, old_size as usize)
    })
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(json!({
        "type": "consistency",
        "old_size": old_size,
        "new_size": new_size,
        "hashes": path.iter().map(b64).collect::<Vec<_>>(),
        "old_checkpoint": old.note,
        "new_checkpoint": new.note,
    })))
}
