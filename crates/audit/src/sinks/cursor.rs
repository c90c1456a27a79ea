//! A sink's durable cursor and status: the last seq its receiver acknowledged, when, and the
//! last error — one small JSON file per sink, replaced atomically (written aside, synced,
//! renamed), so a crash leaves the old cursor or the new one, never a torn one.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a sink has delivered, and how its last attempt went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// The last seq the receiver acknowledged (every event up to it was delivered).
    pub seq: u64,
    /// The chain hash of the event at `seq` (hex): at start the sink checks that the ledger
    /// still holds that event there (a database restored to another history does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When that was (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// Events delivered since the cursor file was created.
    #[serde(default)]
    pub delivered: u64,
    /// The last failure, and when; cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// Failed attempts in a row.
    #[serde(default)]
    pub failures: u64,
}

/// The cursor file of one sink.
#[derive(Debug, Clone)]
pub struct SinkCursor {
    path: PathBuf,
}

impl SinkCursor {
    /// The cursor of sink `name` under `dir` (`<dir>/<name>.json`).
    pub fn new(dir: &Path, name: &str) -> SinkCursor {
        SinkCursor {
            path: dir.join(format!("{name}.json")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved status; a sink never run starts at seq 0.
    pub fn load(&self) -> std::io::Result<SinkStatus> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SinkStatus::default()),
            Err(e) => Err(e),
        }
    }

    /// Saves the status durably.
    pub fn save(&self, s: &SinkStatus) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(s).unwrap_or_default())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
