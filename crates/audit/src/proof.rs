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

/// The Merkle leaves of the first `size` events, refused when the ledger holds fewer.
pub async fn leaves(store: &Store, size: u64) -> Result<Vec<Hash>, StoreError> {
    let leaves: Vec<Hash> = store
        .chain_hashes(size)
        .await?
        .iter()
        .map(leaf_hash)
        .collect();
    if leaves.len() as u64 != size {
        return Err(StoreError::Invalid(format!(
            "the ledger has {} events but its newest checkpoint covers {size}",
            leaves.len()
        )));
    }
    Ok(leaves)
}

/// The proof that event `seq` is in the tree of the newest checkpoint: `None` when no
/// checkpoint covers it yet.
pub async fn inclusion(store: &Store, seq: u64) -> Result<Option<Value>, StoreError> {
    let checkpoints = store.checkpoints().await?;
    let Some(newest) = checkpoints.iter().max_by_key(|c| c.tree_size) else {
        return Ok(None);
    };
    let size = newest.tree_size as u64;
    if seq == 0 || seq > size {
        return Ok(None);
    }
    let Some(chain) = store.hash_at(seq).await? else {
        return Ok(None);
    };
    let leaves = leaves(store, size).await?;
    let Some(path) = inclusion_proof(&leaves, (seq - 1) as usize) else {
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
) -> Result<Option<Value>, StoreError> {
    let checkpoints = store.checkpoints().await?;
    let Some(new) = (match to {
        Some(to) => checkpoints.iter().find(|c| c.tree_size as u64 == to),
        None => checkpoints.iter().max_by_key(|c| c.tree_size),
    }) else {
        return Ok(None);
    };
    let Some(old) = checkpoints.iter().find(|c| c.tree_size as u64 == from) else {
        return Ok(None);
    };
    let (old_size, new_size) = (old.tree_size as u64, new.tree_size as u64);
    if old_size == 0 || old_size > new_size {
        return Ok(None);
    }
    let leaves = leaves(store, new_size).await?;
    let Some(path) = consistency_proof(&leaves, old_size as usize) else {
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
