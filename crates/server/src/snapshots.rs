//! Snapshots of the projection in the data directory (`snapshots/state-<seq>.cbor`), so that a
//! start, `replay` and `state` fold only the tail. A snapshot is believed only when the chain
//! hash it names is the ledger's hash at its seq: one from another ledger, from a rewritten
//! history, or damaged on disk is refused with a warning, and the fold starts earlier (from an
//! older snapshot, or from seq 1).

use anyhow::{Context, Result};
use grantline_state::history::Until;
use grantline_state::{State, snapshot};
use grantline_store::Store;
use std::path::{Path, PathBuf};

/// Snapshots kept; older ones are removed after a new one is written.
pub const KEEP: usize = 3;

/// The snapshot directory of one data directory, and the key their tags are made with.
#[derive(Clone)]
pub struct Snapshots {
    dir: PathBuf,
    mac_key: [u8; 32],
    /// One snapshot written at a time by this process (the background loop's and the one at
    /// shutdown would otherwise share a file being written).
    writing: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The snapshot files in `dir`, newest first: (seq, path), by name.
fn list_in(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let seq = name
                .strip_prefix("state-")?
                .strip_suffix(".cbor")?
                .parse()
                .ok()?;
            Some((seq, e.path()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found
}

/// Removes the snapshots of `data_dir` taken after `head` (a restore went back to it): they
/// are of a history the ledger no longer holds, refused at every start, and the newest of
/// them would hold back new snapshots until the ledger passed it. Returns what was removed.
pub fn remove_after(data_dir: &Path, head: u64) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (seq, path) in list_in(&data_dir.join("snapshots")) {
        if seq > head {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

impl Snapshots {
    /// Snapshots tagged under a key derived from the checkpoint signing key `signer`: only
    /// its holder writes snapshots that are believed.
    pub fn in_data_dir(data_dir: &Path, signer: &grantline_ledger::NoteSigner) -> Snapshots {
        Snapshots {
            dir: data_dir.join("snapshots"),
            mac_key: signer.derive_key(snapshot::MAC_CONTEXT),
            writing: Default::default(),
        }
    }

    /// Where the snapshot of `seq` lives.
    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("state-{seq:020}.cbor"))
    }

    /// The snapshots here, newest first: (seq, path).
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        list_in(&self.dir)
    }

    /// Writes `state` as the snapshot of its seq, with the ledger's chain hash there; keeps
    /// the newest [`KEEP`]. The file appears whole or not at all (written aside, synced,
    /// renamed).
    pub async fn write(&self, store: &Store, state: State) -> Result<PathBuf> {
        let seq = state.seq;
        let hash = store
            .hash_at(seq)
            .await?
            .with_context(|| format!("the ledger has no event {seq} to snapshot at"))?;
        let dir = self.dir.clone();
        let key = self.mac_key;
        let path = self.path(seq);
        let target = path.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let bytes = snapshot::encode(state, &hash, &key)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let tmp = target.with_extension("cbor.tmp");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                f.write_all(&bytes)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &target)?;
            Ok(())
        })
        .await??;
        // Never the one just written: an operator's snapshot of an earlier seq (`grantline
        // snapshot --at`) stays until the next one is written.
        for (_, old) in self
            .list()
            .into_iter()
            .skip(KEEP)
            .filter(|(_, p)| *p != path)
        {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(path = %old.display(), error = %e, "could not remove an old snapshot");
            }
        }
        Ok(path)
    }

    /// The newest snapshot that matches this ledger and does not reach past `until`; `None`
    /// when there is none (then fold from seq 1). Each one refused is logged with why.
    pub async fn newest_valid(&self, store: &Store, until: Option<Until>) -> Option<State> {
        for (seq, path) in self.list() {
            if let Some(Until::Seq(n)) = until
                && seq > n
            {
                continue;
            }
            match self.check(store, seq, &path).await {
                Ok(state) => {
                    if let Some(Until::Time(t)) = until
                        && state.time > t
                    {
                        continue;
                    }
                    tracing::info!(seq, path = %path.display(), "starting from a snapshot");
                    return Some(state);
                }
                Err(e) => tracing::warn!(
                    seq,
                    path = %path.display(),
                    "snapshot refused, folding without it: {e:#}"
                ),
            }
        }
        None
    }

    async fn check(&self, store: &Store, seq: u64, path: &Path) -> Result<State> {
        let p = path.to_path_buf();
        let key = self.mac_key;
        let (hash, state) = tokio::task::spawn_blocking(move || -> Result<_> {
            let bytes = std::fs::read(&p)?;
            Ok(snapshot::decode(&bytes, &key)?)
        })
        .await??;
        anyhow::ensure!(
            state.seq == seq,
            "its name says seq {seq}, its content seq {}",
            state.seq
        );
        match store.hash_at(seq).await? {
            Some(h) if h == hash => Ok(state),
            Some(h) => anyhow::bail!(
                "its chain hash {} is not the ledger's {} at seq {seq}",
                hash.to_hex(),
                h.to_hex()
            ),
            None => anyhow::bail!("the ledger has no event {seq}"),
        }
    }
}

/// A running server snapshots its projection after this many events (checked every minute),
/// and at shutdown after [`AT_SHUTDOWN`].
pub const EVERY_EVENTS: u64 = 100_000;
/// Events since the newest snapshot that make a graceful stop write one.
pub const AT_SHUTDOWN: u64 = 1_000;

impl crate::App {
    /// Writes a snapshot of the projection when at least `events` were folded since the newest
    /// one. Failing to write one is logged and changes nothing else: snapshots only save time.
    pub async fn snapshot_if_due(&self, events: u64) {
        let snapshots = self.snapshots.clone();
        let _one = snapshots.writing.lock().await;
        let newest = snapshots.list().first().map_or(0, |s| s.0);
        if self.projection.seq() < newest + events.max(1) {
            return;
        }
        let state = self.projection.read().clone();
        let seq = state.seq;
        match snapshots.write(self.store(), state).await {
            Ok(path) => tracing::info!(seq, path = %path.display(), "snapshot written"),
            Err(e) => tracing::warn!(seq, "could not write a snapshot: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_removes_the_snapshots_after_its_head_and_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("snapshots");
        std::fs::create_dir_all(&dir).unwrap();
        for seq in [100, 200, 300] {
            std::fs::write(dir.join(format!("state-{seq:020}.cbor")), b"x").unwrap();
        }
        std::fs::write(dir.join("notes.txt"), b"not a snapshot").unwrap();
        let removed = remove_after(d.path(), 200).unwrap();
        assert_eq!(removed, vec![dir.join(format!("state-{:020}.cbor", 300))]);
        let left: Vec<u64> = list_in(&dir).into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![200, 100]);
        assert!(dir.join("notes.txt").exists());
        // No snapshots directory at all: nothing to do.
        let empty = tempfile::tempdir().unwrap();
        assert!(remove_after(empty.path(), 0).unwrap().is_empty());
    }
}
