//! The RFC 6962 Merkle tree over the chain: SHA-256, `0x00` leaf and `0x01` node prefixes,
//! leaves = the events' 32-byte blake3 chain hashes. Standard transparency-log tooling and
//! witnesses can check our roots and proofs (RFC 9162 §2.1 verification algorithms).

use crate::Hash;
use sha2::{Digest, Sha256};

/// Leaf hash of an event: `SHA-256(0x00 ‖ chain hash)`.
pub fn leaf_hash(chain_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(chain_hash.0);
    Hash(h.finalize().into())
}

/// Interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// Why a proof did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("proof has the wrong number of hashes for these sizes")]
    WrongLength,
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    #[error("sizes are not consistent: {old} > {new}")]
    BadSizes { old: u64, new: u64 },
}

/// The right edge of a growing tree: the roots of its perfect subtrees, so appending a leaf and
/// computing the root cost O(log n). The appender keeps one to sign checkpoints without re-reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, hash), heights strictly decreasing from bottom to top of the stack.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf given its event's chain hash.
    pub fn push(&mut self, chain_hash: &Hash) {
        self.push_leaf_hash(leaf_hash(chain_hash));
    }

    pub fn push_leaf_hash(&mut self, leaf: Hash) {
        let mut cur = (0u32, leaf);
        while let Some(&(h, top)) = self.nodes.last() {
            if h != cur.0 {
                break;
            }
            self.nodes.pop();
            cur = (h + 1, node_hash(&top, &cur.1));
        }
        self.nodes.push(cur);
        self.size += 1;
    }

    /// The RFC 6962 root of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }

    /// The frontier without its lowest perfect subtree, and that subtree's leaf count: pushing
    /// the leaves of the last `count` events onto the first gives this frontier back. This is
    /// how a verifier starting from a checkpoint confirms the stored hashes of the events just
    /// before it without reading the whole prefix. `None` for the empty tree.
    pub fn split_lowest(&self) -> Option<(Frontier, u64)> {
        let &(height, _) = self.nodes.last()?;
        let count = 1u64 << height;
        let mut base = self.clone();
        base.nodes.pop();
        base.size -= count;
        Some((base, count))
    }

    /// Serialized form (size, then heights and hashes), so a checkpoint can resume the tree.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.nodes.len() * 36);
        out.extend_from_slice(&self.size.to_be_bytes());
        for (h, hash) in &self.nodes {
            out.extend_from_slice(&h.to_be_bytes());
            out.extend_from_slice(&hash.0);
        }
        out
    }

    /// Parses [`Frontier::to_bytes`]; `None` when the bytes do not describe a consistent frontier.
    pub fn from_bytes(bytes: &[u8]) -> Option<Frontier> {
        let size = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let rest = &bytes[8..];
        if !rest.len().is_multiple_of(36) {
            return None;
        }
        let nodes: Vec<(u32, Hash)> = rest
            .chunks_exact(36)
            .map(|c| {
                let h = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                (h, Hash::from_slice(&c[4..]).unwrap_or_default())
            })
            .collect();
        // The heights must be exactly the set bits of `size`, highest first.
        let expect: Vec<u32> = (0..64).rev().filter(|b| size >> b & 1 == 1).collect();
        (nodes.iter().map(|n| n.0).collect::<Vec<_>>() == expect)
            .then_some(Frontier { size, nodes })
    }
}

fn split(n: usize) -> usize {
    split_u64(n as u64) as usize
}

/// MTH over leaf hashes (already `leaf_hash`ed).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// Inclusion proof (RFC 6962 PATH) of leaf `index` in the tree of `leaves`.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    inclusion_path(leaves.len() as u64, index as u64, &mut |lo, hi| {
        root_of(&leaves[lo as usize..hi as usize])
    })
}

/// Consistency proof (RFC 6962 PROOF) that the tree of size `old` is a prefix of `leaves`.
pub fn consistency_proof(leaves: &[Hash], old: usize) -> Option<Vec<Hash>> {
    consistency_path(leaves.len() as u64, old as u64, &mut |lo, hi| {
        root_of(&leaves[lo as usize..hi as usize])
    })
}

/// RFC 6962 PATH of leaf `index` in a tree of `size` leaves, each subtree's hash (of leaves
/// `lo..hi`) asked of `root`: whoever keeps subtree roots answers without every leaf at hand.
pub fn inclusion_path(
    size: u64,
    index: u64,
    root: &mut dyn FnMut(u64, u64) -> Hash,
) -> Option<Vec<Hash>> {
    if index >= size {
        return None;
    }
    fn path(m: u64, lo: u64, hi: u64, root: &mut dyn FnMut(u64, u64) -> Hash, out: &mut Vec<Hash>) {
        if hi - lo <= 1 {
            return;
        }
        let k = split_u64(hi - lo);
        if m < k {
            path(m, lo, lo + k, root, out);
            out.push(root(lo + k, hi));
        } else {
            path(m - k, lo + k, hi, root, out);
            out.push(root(lo, lo + k));
        }
    }
    let mut out = Vec::new();
    path(index, 0, size, root, &mut out);
    Some(out)
}

/// RFC 6962 PROOF that the tree of size `old` is a prefix of the tree of `size` leaves, each
/// subtree's hash asked of `root` (as [`inclusion_path`]).
pub fn consistency_path(
    size: u64,
    old: u64,
    root: &mut dyn FnMut(u64, u64) -> Hash,
) -> Option<Vec<Hash>> {
    if old == 0 || old > size {
        return None;
    }
    fn sub(
        m: u64,
        lo: u64,
        hi: u64,
        complete: bool,
        root: &mut dyn FnMut(u64, u64) -> Hash,
        out: &mut Vec<Hash>,
    ) {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(root(lo, hi));
            }
            return;
        }
        let k = split_u64(n);
        if m <= k {
            sub(m, lo, lo + k, complete, root, out);
            out.push(root(lo + k, hi));
        } else {
            sub(m - k, lo + k, hi, false, root, out);
            out.push(root(lo, lo + k));
        }
    }
    let mut out = Vec::new();
    sub(old, 0, size, true, root, &mut out);
    Some(out)
}

/// Largest power of two strictly smaller than n (n ≥ 2): where RFC 6962 splits a tree of n.
pub fn split_u64(n: u64) -> u64 {
    let mut k = 1u64;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// RFC 9162 §2.1.3.2: checks that `leaf` (a leaf hash) is at `index` in the tree of `size` with `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree (`old`, `old_root`) is a prefix of (`new`, `new_root`).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        // Every tree extends the empty tree; RFC 9162 defines no proof for it.
        return if proof.is_empty() && *old_root == empty_root() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&Hash(*blake3::hash(&i.to_be_bytes()).as_bytes())))
            .collect()
    }

    #[test]
    fn frontier_matches_recursive_root_and_round_trips() {
        let all = leaves(70);
        let mut f = Frontier::new();
        assert_eq!(f.root(), empty_root());
        for (i, l) in all.iter().enumerate() {
            f.push_leaf_hash(*l);
            assert_eq!(f.root(), root_of(&all[..=i]), "size {}", i + 1);
            assert_eq!(Frontier::from_bytes(&f.to_bytes()).as_ref(), Some(&f));
        }
        assert!(Frontier::from_bytes(&[0, 0, 0, 0, 0, 0, 0, 3]).is_none());
    }

    #[test]
    fn splitting_off_the_lowest_subtree_and_pushing_its_leaves_again_gives_the_frontier_back() {
        let all = leaves(70);
        let mut f = Frontier::new();
        assert!(f.split_lowest().is_none());
        for (i, l) in all.iter().enumerate() {
            f.push_leaf_hash(*l);
            let size = i as u64 + 1;
            let (mut base, count) = f.split_lowest().unwrap();
            // The lowest subtree is the lowest set bit of the size.
            assert_eq!(count, size & size.wrapping_neg(), "size {size}");
            assert_eq!(base.size(), size - count);
            let tail = &all[(size - count) as usize..=i];
            let mut wrong = base.clone();
            for l in tail {
                base.push_leaf_hash(*l);
            }
            assert_eq!(base, f, "size {size}");
            // A changed leaf in that subtree gives another frontier.
            wrong.push_leaf_hash(all[69]);
            for l in &tail[1..] {
                wrong.push_leaf_hash(*l);
            }
            assert_ne!(wrong.root(), f.root(), "size {size}");
        }
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_wrong_inputs_fail() {
        for n in 1..=33usize {
            let all = leaves(n);
            let root = root_of(&all);
            for i in 0..n {
                let p = inclusion_proof(&all, i).unwrap();
                verify_inclusion(&all[i], i as u64, n as u64, &p, &root).unwrap();
                let wrong_leaf = all[(i + 1) % n];
                if n > 1 {
                    assert!(verify_inclusion(&wrong_leaf, i as u64, n as u64, &p, &root).is_err());
                }
                assert!(verify_inclusion(&all[i], i as u64, n as u64, &p, &empty_root()).is_err());
                if !p.is_empty() {
                    let short = &p[..p.len() - 1];
                    assert!(verify_inclusion(&all[i], i as u64, n as u64, short, &root).is_err());
                }
                let mut long = p.clone();
                long.push(root);
                assert!(verify_inclusion(&all[i], i as u64, n as u64, &long, &root).is_err());
                // The root of a bigger tree does not accept this path at that size.
                let bigger = leaves(n + 1);
                assert!(
                    verify_inclusion(&all[i], i as u64, n as u64 + 1, &p, &root_of(&bigger))
                        .is_err()
                );
            }
            for m in 1..=n {
                let old_root = root_of(&all[..m]);
                let p = consistency_proof(&all, m).unwrap();
                verify_consistency(m as u64, n as u64, &old_root, &root, &p).unwrap();
                if m < n {
                    assert!(
                        verify_consistency(m as u64, n as u64, &root, &root, &p).is_err(),
                        "wrong old root {m}->{n}"
                    );
                    assert!(
                        verify_consistency(
                            m as u64,
                            n as u64 + 1,
                            &old_root,
                            &root_of(&leaves(n + 1)),
                            &p
                        )
                        .is_err(),
                        "wrong size {m}->{n}"
                    );
                }
            }
        }
    }
}
