//! Inclusion and consistency proofs, printed as JSON and checked offline.
//!
//! An inclusion proof names the event (seq, chain hash) and carries the RFC 6962 audit path
//! and the signed checkpoint it leads to; a consistency proof carries both checkpoints.
//! `verify-proof` needs nothing but the proof file and the verifier key.

use crate::location::Location;
use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use grantline_ledger::merkle::{self, leaf_hash};
use grantline_ledger::{Checkpoint, Hash, NoteVerifier};
use grantline_store::Store;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The event to prove (inclusion proof against the newest checkpoint that covers it).
    #[arg(required_unless_present = "consistency")]
    seq: Option<u64>,
    /// Against the checkpoint of this tree size instead of the newest (the one a witness
    /// keeps, for `verify-proof --checkpoint`).
    #[arg(long, requires = "seq")]
    size: Option<u64>,
    /// Instead: a consistency proof from the checkpoint of this tree size to the newest one.
    #[arg(long, conflicts_with = "seq")]
    consistency: Option<u64>,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The proof file (`-` for standard input).
    proof: PathBuf,
    /// Verifier key trusted to sign checkpoints (repeatable).
    #[arg(long = "public-key", required = true)]
    public_keys: Vec<String>,
    /// Checkpoint-key handovers to follow from the keys given (the JSON of
    /// `/.well-known/grantline/key-handovers`): after a rotation, the first key is enough.
    #[arg(long)]
    handovers: Option<PathBuf>,
    /// A signed checkpoint kept elsewhere (a witness's copy) to check against instead of the
    /// one in the proof: for an inclusion proof, the checkpoint it leads to; for a consistency
    /// proof, the old one — so a log rewritten since that copy was taken is caught.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

/// A proof as printed by `grantline proof`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Proof {
    Inclusion {
        seq: u64,
        /// The event's blake3 chain hash (hex): the Merkle leaf data.
        chain_hash: String,
        /// Zero-based leaf index (seq − 1).
        index: u64,
        tree_size: u64,
        /// Audit path, base64, RFC 6962 order.
        hashes: Vec<String>,
        checkpoint: String,
    },
    Consistency {
        old_size: u64,
        new_size: u64,
        hashes: Vec<String>,
        old_checkpoint: String,
        new_checkpoint: String,
    },
}

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    let store = Store::connect_read_only(&loc.database)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))?;
    let newest = store
        .checkpoint(None)
        .await?
        .context("the ledger has no checkpoint yet")?;
    let size = newest.tree_size.max(0) as u64;
    if let Some(seq) = args.seq {
        let Some(proof) =
            grantline_audit::proof::inclusion(&store, &Default::default(), seq, args.size, ())
                .await?
        else {
            match args.size {
                Some(m) => bail!(
                    "no inclusion proof of seq {seq} against a checkpoint of tree size {m}: is \
                     {m} the size of one of this ledger's checkpoints, and {seq} at most {m}?"
                ),
                None => {
                    bail!("seq {seq} is not covered by the newest checkpoint (tree size {size})")
                }
            }
        };
        println!("{}", serde_json::to_string_pretty(&proof)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(old) = args.consistency else {
        bail!("give a seq or --consistency SIZE");
    };
    let Some(proof) =
        grantline_audit::proof::consistency(&store, &Default::default(), old, None, ()).await?
    else {
        bail!(
            "no consistency proof from size {old} to {size}: is {old} the size of a checkpoint below it?"
        );
    };
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(ExitCode::SUCCESS)
}

fn hashes(list: &[String]) -> Result<Vec<Hash>> {
    list.iter()
        .map(|s| {
            STANDARD
                .decode(s)
                .ok()
                .and_then(|b| Hash::from_slice(&b))
                .with_context(|| format!("proof hash {s:?} is not 32 bytes of base64"))
        })
        .collect()
}

#[derive(Deserialize)]
struct Handover {
    seq: u64,
    handover: String,
}

/// The checkpoint keys in force by tree size: the keys given, then each key a handover signed
/// by the key in force introduced, for checkpoints beyond the handover's seq (one of the
/// handover's own size may be signed by either key, as `verify`'s walk allows).
struct KeysBySize {
    /// `(seq of the handover, keys in force after it)`, in seq order; the first is `(0, given)`.
    eras: Vec<(u64, Vec<NoteVerifier>)>,
}

impl KeysBySize {
    fn given(keys: Vec<NoteVerifier>) -> Self {
        KeysBySize {
            eras: vec![(0, keys)],
        }
    }

    /// Every key any era trusts: what a checkpoint must be signed by to be judged at all.
    fn all(&self) -> Vec<NoteVerifier> {
        let mut all: Vec<NoteVerifier> = Vec::new();
        for k in self.eras.iter().flat_map(|(_, keys)| keys) {
            if !all.contains(k) {
                all.push(k.clone());
            }
        }
        all
    }

    /// The keys that may sign a checkpoint of tree size `size`.
    fn at(&self, size: u64) -> Vec<NoteVerifier> {
        let mut keys: Vec<NoteVerifier> = self
            .eras
            .iter()
            .rev()
            .find(|(seq, _)| *seq < size || *seq == 0)
            .map(|(_, k)| k.clone())
            .unwrap_or_default();
        for (_, k) in self.eras.iter().filter(|(seq, _)| *seq == size && size > 0) {
            keys.extend(k.iter().cloned());
        }
        keys
    }

    /// Follows the handovers in `path`, in seq order. One signed by the key in force adds its
    /// key from then on (the keys before it retire); one signed by a key already retired is
    /// tampering (Grantline hands over only from the key in force), as is one a key in force
    /// signed that does not verify; one by a key not trusted here is skipped (what it
    /// introduces stays untrusted).
    fn follow(&mut self, path: &std::path::Path) -> Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut list: Vec<Handover> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a list of handovers", path.display()))?;
        list.sort_by_key(|h| h.seq);
        // The same handover twice (two downloads put together) is one handover.
        list.dedup_by(|a, b| a.seq == b.seq && a.handover == b.handover);
        for h in list {
            let in_force = self.eras.last().map(|(_, k)| k.clone()).unwrap_or_default();
            match grantline_ledger::KeyHandover::open(&h.handover, &in_force) {
                Ok(k) => self.eras.push((h.seq, vec![k.to])),
                Err(grantline_ledger::CheckpointError::UnknownSigner(_)) => {
                    let retired: Vec<NoteVerifier> = self
                        .all()
                        .into_iter()
                        .filter(|k| !in_force.contains(k))
                        .collect();
                    if grantline_ledger::KeyHandover::open(&h.handover, &retired).is_ok() {
                        return Err(anyhow::Error::new(Tampered(format!(
                            "the key handover at seq {} is signed by a key handed over before it",
                            h.seq
                        ))));
                    }
                }
                Err(e) => {
                    return Err(anyhow::Error::new(Tampered(format!(
                        "the key handover at seq {}: {e}",
                        h.seq
                    ))));
                }
            }
        }
        Ok(())
    }
}

/// A finding of tampering, as opposed to a check that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Tampered(String);

/// Exit codes as `verify`'s: 0 the proof holds, 1 it does not (tampered), 2 cannot tell
/// (a key not given, an unreadable file).
pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    match check(args) {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast_ref::<Tampered>() {
            Some(t) => {
                println!("INVALID: {t}");
                Ok(ExitCode::from(1))
            }
            None => Err(e),
        },
    }
}

fn check(args: VerifyArgs) -> Result<ExitCode> {
    let text = if args.proof.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.proof)
            .with_context(|| format!("reading {}", args.proof.display()))?
    };
    let proof: Proof = serde_json::from_str(&text).context("the proof is not valid proof JSON")?;
    let mut keys = KeysBySize::given(
        args.public_keys
            .iter()
            .map(|k| NoteVerifier::parse(k).with_context(|| format!("--public-key {k}")))
            .collect::<Result<Vec<_>>>()?,
    );
    if let Some(path) = &args.handovers {
        keys.follow(path)?;
    }
    // A checkpoint by a key not given here cannot be judged (exit 2); one whose trusted
    // signature fails, or signed by a key not in force at its tree size, is tampered (exit 1),
    // like a proof that does not verify.
    let open = |note: &str, what: &str| -> Result<Checkpoint> {
        let cp = Checkpoint::open(note, &keys.all()).map_err(|e| match e {
            grantline_ledger::CheckpointError::UnknownSigner(_) => anyhow::anyhow!(
                "the {what} checkpoint: {e}; pass that signer's verifier key with --public-key"
            ),
            e => anyhow::Error::new(Tampered(format!("the {what} checkpoint: {e}"))),
        })?;
        Checkpoint::open(note, &keys.at(cp.size)).map_err(|_| {
            anyhow::Error::new(Tampered(format!(
                "the {what} checkpoint (tree size {}) is signed by a key that was handed over \
                 before it: not the key in force at that size",
                cp.size
            )))
        })
    };
    let verdict = match proof {
        Proof::Inclusion {
            seq,
            chain_hash,
            index,
            tree_size,
            hashes: path,
            checkpoint,
        } => {
            let note = match &args.checkpoint {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => checkpoint,
            };
            let cp = open(&note, "the")?;
            if cp.size != tree_size {
                bail!(
                    "proof is for tree size {tree_size}, the checkpoint is of size {}",
                    cp.size
                );
            }
            if index.checked_add(1) != Some(seq) {
                bail!("index {index} does not belong to seq {seq}");
            }
            let leaf = leaf_hash(
                &Hash::from_hex(&chain_hash).context("chain_hash is not 32 bytes of hex")?,
            );
            merkle::verify_inclusion(&leaf, index, tree_size, &hashes(&path)?, &cp.root)
                .map(|_| format!("ok: event {seq} (chain hash {chain_hash}) is in the checkpoint of size {tree_size}"))
        }
        Proof::Consistency {
            old_size,
            new_size,
            hashes: path,
            old_checkpoint,
            new_checkpoint,
        } => {
            let old_note = match &args.checkpoint {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => old_checkpoint,
            };
            let old = open(&old_note, "old")?;
            let new = open(&new_checkpoint, "new")?;
            if (old.size, new.size) != (old_size, new_size) {
                bail!(
                    "proof sizes {old_size}→{new_size} differ from the checkpoints' {}→{}",
                    old.size,
                    new.size
                );
            }
            merkle::verify_consistency(old_size, new_size, &old.root, &new.root, &hashes(&path)?)
                .map(|_| {
                    format!(
                        "ok: the checkpoint of size {new_size} extends the one of size {old_size}"
                    )
                })
        }
    };
    match verdict {
        Ok(msg) => {
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("INVALID: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
