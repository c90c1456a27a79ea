//! Per-subject keys for personal data (crypto-shredding). Keys live in `subject_keys`, outside
//! the ledger; destroying one makes every value sealed under it unreadable while the chain,
//! which only ever saw ciphertext, still verifies.

use crate::database::{Pool, Store};
use crate::{Result, StoreError};
use grantline_ledger::{PiiError, Sealed, SubjectKey, Timestamp};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// PostgreSQL: a subject's key is made and erased one at a time, on every instance (a
/// transaction-scoped advisory lock on the subject).
const SUBJECT_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))";
/// Whatever the database's default isolation: under repeatable read the snapshot would be
/// taken at the lock's statement, before the lock is granted, and miss an erasure committed
/// while it waited.
const READ_COMMITTED: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// Checkpoints the SQLite WAL and truncates it, so that a deleted key's bytes leave the WAL
/// file as well as the table. A truncation waits for readers of older snapshots (a backup's
/// copy, a long export) while holding the WAL's write lock, which stops the ledger's appends
/// meanwhile: each try waits at most a short moment, a few times over; past them the WAL is
/// left to the writer's own checkpoints, which overwrite the old frames as the WAL starts
/// over, and the log says so.
async fn truncate_wal(p: &sqlx::SqlitePool, subject: &str) -> Result<()> {
    const TRIES: usize = 20;
    let mut c = p.acquire().await?;
    let (previous,): (i64,) = sqlx::query_as("PRAGMA busy_timeout")
        .fetch_one(&mut *c)
        .await?;
    let tries = async {
        sqlx::query("PRAGMA busy_timeout = 100")
            .execute(&mut *c)
            .await?;
        for _ in 0..TRIES {
            // The first column says whether a reader kept it from finishing.
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut *c)
                .await?;
            if busy == 0 {
                return Ok(true);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok::<bool, sqlx::Error>(false)
    }
    .await;
    let restore = sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {previous}"));
    let restored = sqlx::query(restore).execute(&mut *c).await;
    if tries.is_err() || restored.is_err() {
        // Not back to the pool with a short busy timeout: closed instead.
        drop(c.detach());
    }
    if !tries? {
        tracing::warn!(
            subject,
            "the erased key is deleted, but the WAL could not be truncated while older reads \
             went on: its old frames are overwritten as the writer's checkpoints start it over \
             (`grantline user erase <user id>` again truncates it once the reads are over)"
        );
    }
    restored?;
    Ok(())
}

/// Seals and opens personal data; erases subjects.
#[derive(Clone)]
pub struct Keyring {
    store: Store,
    cache: Arc<Mutex<HashMap<String, SubjectKey>>>,
    /// Subjects this process knows to be erased (from the ledger): never loaded or cached
    /// again, even in the moment between `user.erased` and the key's deletion.
    gone: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Keyring {
    pub fn new(store: &Store) -> Keyring {
        Keyring {
            store: store.clone(),
            cache: Arc::default(),
            gone: Arc::default(),
        }
    }

    /// Drops a subject's key from this process's cache: called when `user.erased` is folded,
    /// whichever process erased it, so no running instance seals or opens with a destroyed
    /// key.
    pub fn forget(&self, subject: &str) {
        if let Ok(mut gone) = self.gone.lock() {
            gone.insert(subject.to_string());
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(subject);
        }
    }

    fn is_gone(&self, subject: &str) -> bool {
        self.gone
            .lock()
            .map(|g| g.contains(subject))
            .unwrap_or(true)
    }

    fn cached(&self, subject: &str) -> Option<SubjectKey> {
        self.cache.lock().ok()?.get(subject).cloned()
    }

    /// Seals `plaintext` for `subject`, creating the subject's key (durably) on first use.
    /// Refused for an erased subject.
    pub async fn seal(&self, subject: &str, plaintext: &str) -> Result<Sealed> {
        let key = match self.cached(subject).filter(|_| !self.is_gone(subject)) {
            Some(k) => k,
            None => self.get_or_create(subject).await?,
        };
        Sealed::seal(&key, subject, plaintext).map_err(|e| StoreError::Key(e.to_string()))
    }

    async fn get_or_create(&self, subject: &str) -> Result<SubjectKey> {
        if self.is_gone(subject) || self.is_erased(subject).await? {
            return Err(StoreError::Invalid(format!(
                "subject {subject} was erased; no personal data may be stored for it"
            )));
        }
        let fresh = SubjectKey::generate().map_err(|e| StoreError::Key(e.to_string()))?;
        let now = Timestamp::now().0;
        // The check above is a fast answer; this one holds against an erasure committed since
        // (by the command line, or another instance that has not read `user.erased` yet): the
        // key is made only where no erasure is recorded, in the same statement on SQLite
        // (whose writes are one at a time), and under the subject's lock that `erase` takes on
        // PostgreSQL.
        match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query(
                    "INSERT INTO subject_keys (subject, key, created) SELECT ?1, ?2, ?3 \
                     WHERE NOT EXISTS (SELECT 1 FROM erased_subjects WHERE subject = ?1) \
                     ON CONFLICT (subject) DO NOTHING",
                )
                .bind(subject)
                .bind(fresh.0.as_slice())
                .bind(now)
                .execute(p)
                .await?;
            }
            Pool::Postgres(p) => {
                let pg = &self.store;
                let mut tx = pg.pg(p.begin()).await?;
                pg.pg(sqlx::query(READ_COMMITTED).execute(&mut *tx)).await?;
                pg.pg(sqlx::query(SUBJECT_LOCK).bind(subject).execute(&mut *tx))
                    .await?;
                pg.pg(sqlx::query(
                    "INSERT INTO subject_keys (subject, key) SELECT $1, $2 \
                     WHERE NOT EXISTS (SELECT 1 FROM erased_subjects WHERE subject = $1) \
                     ON CONFLICT (subject) DO NOTHING",
                )
                .bind(subject)
                .bind(fresh.0.as_slice())
                .execute(&mut *tx))
                    .await?;
                pg.pg(tx.commit()).await?;
            }
        }
        if self.is_erased(subject).await? {
            return Err(StoreError::Invalid(format!(
                "subject {subject} was erased; no personal data may be stored for it"
            )));
        }
        self.load(subject)
            .await?
            .ok_or_else(|| StoreError::Key(format!("key for {subject} vanished")))
    }

    async fn load(&self, subject: &str) -> Result<Option<SubjectKey>> {
        if self.is_gone(subject) {
            return Ok(None);
        }
        if let Some(k) = self.cached(subject) {
            return Ok(Some(k));
        }
        let bytes: Option<Vec<u8>> = match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar("SELECT key FROM subject_keys WHERE subject = ?")
                    .bind(subject)
                    .fetch_optional(p)
                    .await?
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(
                        sqlx::query_scalar("SELECT key FROM subject_keys WHERE subject = $1")
                            .bind(subject)
                            .fetch_optional(p),
                    )
                    .await?
            }
        };
        let key = bytes.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok().map(SubjectKey));
        if let (Some(k), Ok(mut cache)) = (&key, self.cache.lock()) {
            cache.insert(subject.to_string(), k.clone());
        }
        // Erased while the row was being read: drop what was just cached.
        if self.is_gone(subject) {
            if let Ok(mut cache) = self.cache.lock() {
                cache.remove(subject);
            }
            return Ok(None);
        }
        Ok(key)
    }

    /// Opens a sealed value; `Err(PiiError::Erased)` inside once its subject was erased.
    pub async fn open(&self, sealed: &Sealed) -> Result<std::result::Result<String, PiiError>> {
        Ok(match self.load(&sealed.subject).await? {
            Some(k) => sealed.open(&k),
            None => Err(PiiError::Erased),
        })
    }

    /// The subject's key, for a reader that opens many values at once (the audit indexer);
    /// `None` once the subject was erased.
    pub async fn key(&self, subject: &str) -> Result<Option<SubjectKey>> {
        self.load(subject).await
    }

    /// The keys of many subjects at once, in one query per few hundred (what [`Keyring::key`]
    /// gives for each, without a round trip per subject): `None` for an erased subject. Each
    /// subject is answered once, however often it is asked for.
    pub async fn keys(&self, subjects: &[String]) -> Result<Vec<(String, Option<SubjectKey>)>> {
        let mut out = Vec::with_capacity(subjects.len());
        let mut wanted = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in subjects {
            if !seen.insert(s.as_str()) {
                continue;
            }
            if self.is_gone(s) {
                out.push((s.clone(), None));
            } else if let Some(k) = self.cached(s) {
                out.push((s.clone(), Some(k)));
            } else {
                wanted.push(s.clone());
            }
        }
        for chunk in wanted.chunks(500) {
            let rows: Vec<(String, Vec<u8>)> = match &self.store.pool {
                Pool::Sqlite(p) => {
                    let list = serde_json::to_string(chunk)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?;
                    sqlx::query_as(
                        "SELECT subject, key FROM subject_keys WHERE subject IN (SELECT value FROM json_each(?))",
                    )
                    .bind(list)
                    .fetch_all(p)
                    .await?
                }
                Pool::Postgres(p) => {
                    self.store
                        .pg(sqlx::query_as(
                            "SELECT subject, key FROM subject_keys WHERE subject = ANY($1)",
                        )
                        .bind(chunk)
                        .fetch_all(p))
                        .await?
                }
            };
            let mut found: HashMap<String, SubjectKey> = rows
                .into_iter()
                .filter_map(|(s, b)| {
                    Some((s, SubjectKey(<[u8; 32]>::try_from(b.as_slice()).ok()?)))
                })
                .collect();
            if let Ok(mut cache) = self.cache.lock() {
                for (s, k) in &found {
                    cache.insert(s.clone(), k.clone());
                }
            }
            for s in chunk {
                // Erased while the rows were being read: drop what was just cached.
                if self.is_gone(s) {
                    if let Ok(mut cache) = self.cache.lock() {
                        cache.remove(s);
                    }
                    out.push((s.clone(), None));
                } else {
                    out.push((s.clone(), found.remove(s)));
                }
            }
        }
        Ok(out)
    }

    pub async fn is_erased(&self, subject: &str) -> Result<bool> {
        let n: i64 = match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM erased_subjects WHERE subject = ?")
                    .bind(subject)
                    .fetch_one(p)
                    .await?
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query_scalar(
                        "SELECT COUNT(*) FROM erased_subjects WHERE subject = $1",
                    )
                    .bind(subject)
                    .fetch_one(p))
                    .await?
            }
        };
        Ok(n > 0)
    }

    /// Destroys the subject's key for good. Returns whether a key existed. On SQLite the WAL
    /// is checkpointed and truncated so the key bytes leave the files, not just the table.
    pub async fn erase(&self, subject: &str) -> Result<bool> {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(subject);
        }
        let deleted = match &self.store.pool {
            Pool::Sqlite(p) => {
                let mut tx = p.begin().await?;
                let n = sqlx::query("DELETE FROM subject_keys WHERE subject = ?")
                    .bind(subject)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(
                    "INSERT OR IGNORE INTO erased_subjects (subject, erased_at) VALUES (?, ?)",
                )
                .bind(subject)
                .bind(Timestamp::now().0)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                truncate_wal(p, subject).await?;
                n
            }
            Pool::Postgres(p) => {
                let pg = &self.store;
                let mut tx = pg.pg(p.begin()).await?;
                pg.pg(sqlx::query(READ_COMMITTED).execute(&mut *tx)).await?;
                pg.pg(sqlx::query(SUBJECT_LOCK).bind(subject).execute(&mut *tx))
                    .await?;
                let n = pg
                    .pg(sqlx::query("DELETE FROM subject_keys WHERE subject = $1")
                        .bind(subject)
                        .execute(&mut *tx))
                    .await?
                    .rows_affected();
                pg.pg(sqlx::query(
                    "INSERT INTO erased_subjects (subject) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(subject)
                .execute(&mut *tx))
                    .await?;
                pg.pg(tx.commit()).await?;
                n
            }
        };
        Ok(deleted > 0)
    }
}
