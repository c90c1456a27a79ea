//! Where the ledger is: `--database`, else the data directory's SQLite file.

use anyhow::{Context, Result};
use grantline_ledger::NoteVerifier;
use grantline_store::{Database, keyfile};
use std::path::PathBuf;

/// The application a command started, with the ledger's lock held until it is dropped.
pub struct OpenApp {
    app: grantline_server::App,
    _lock: Option<crate::lock::Held>,
}

impl std::ops::Deref for OpenApp {
    type Target = grantline_server::App;
    fn deref(&self) -> &grantline_server::App {
        &self.app
    }
}

pub struct Location {
    pub data_dir: PathBuf,
    pub database: Database,
    pub config: Option<PathBuf>,
}

impl Location {
    pub fn resolve(
        data_dir: Option<PathBuf>,
        database: Option<String>,
        config: Option<PathBuf>,
    ) -> Result<Location> {
        let data_dir = data_dir.unwrap_or_else(default_data_dir);
        let database = match database {
            Some(url) => Database::parse(&url)?,
            None => Database::in_data_dir(&data_dir),
        };
        Ok(Location {
            data_dir,
            database,
            config,
        })
    }

    /// Starts the application (ledger, state, keys, bootstrap admin, config clients), holding
    /// an SQLite ledger's lock as a server does, so that no restore replaces the ledger under
    /// the command (its writes would be lost with the ledger moved aside).
    pub async fn app(&self, ledger: grantline_store::LedgerOptions) -> Result<OpenApp> {
        let config = grantline_server::Config::load(self.config.as_deref())?;
        let lock = match &self.database {
            Database::Sqlite(path) => crate::lock::serving(path)?,
            Database::Postgres(_) => None,
        };
        let app = grantline_server::App::start(grantline_server::Options {
            config,
            data_dir: self.data_dir.clone(),
            database: self.database.clone(),
            ledger,
            serving: false,
            sign_in: None,
        })
        .await?;
        Ok(OpenApp { app, _lock: lock })
    }

    /// As [`Location::app`], for a command that acts on what the ledger holds already
    /// (containment, erasure, listings): refused, before anything is created or appended, when
    /// there is no ledger there or it holds no event — a data directory or database that is not
    /// the server's (an unset `GRANTLINE_DATA_DIR`, a typo) would otherwise get a new ledger,
    /// keys and an administrator, and the command would answer "no such family" about it.
    pub async fn existing_app(&self, ledger: grantline_store::LedgerOptions) -> Result<OpenApp> {
        let missing = || {
            anyhow::anyhow!(
                "no ledger with events at {} (data directory {}): is this the server's \
                 --database / --data-dir (GRANTLINE_DATABASE_URL, GRANTLINE_DATA_DIR)? Nothing \
                 was created or changed",
                self.database.display(),
                self.data_dir.display()
            )
        };
        let store = match grantline_store::Store::connect(&self.database, false).await {
            Ok(s) => s,
            Err(grantline_store::StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing());
            }
            Err(e) => return Err(e.into()),
        };
        // A database without the ledger's tables (PostgreSQL, before its first start) holds no
        // events either.
        let head = store.head().await.ok().flatten();
        store.close().await;
        if head.is_none() {
            return Err(missing());
        }
        self.app(ledger).await
    }

    /// Keys trusted to have signed checkpoints: those given, else the local key's public half.
    pub fn trusted_keys(&self, given: &[String]) -> Result<(Vec<NoteVerifier>, &'static str)> {
        if !given.is_empty() {
            let mut keys: Vec<NoteVerifier> = Vec::new();
            for k in given {
                let k = NoteVerifier::parse(k).with_context(|| format!("--public-key {k}"))?;
                // The same key twice is one key (and not two that must each be in force).
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            return Ok((keys, "given"));
        }
        // After a rotation the local key is the newest: start from the first one the key
        // history names, and follow the handovers from there.
        if let Some(first) = keyfile::key_history(&self.data_dir)?.into_iter().next() {
            return Ok((vec![first], "the first key of the local key history"));
        }
        match keyfile::load_signer(&self.data_dir)? {
            Some(s) => Ok((vec![s.verifier()], "local key")),
            None => Ok((Vec::new(), "none")),
        }
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("grantline");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/grantline"),
        None => PathBuf::from("grantline-data"),
    }
}
