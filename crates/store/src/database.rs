//! Connecting to a ledger database (SQLite file or PostgreSQL), migrations, and reads.

use crate::{Result, StoreError};
use futures::TryStreamExt;
use grantline_ledger::verify::{RawCheckpoint, RawRow};
use grantline_ledger::{Hash, Recorded};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Where a ledger lives: `sqlite:PATH` (embedded default) or `postgres://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

/// The SQLite file inside a data directory.
pub const SQLITE_FILE: &str = "grantline.db";

impl Database {
    pub fn parse(url: &str) -> Result<Database> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_string()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::BadUrl(url.to_string()))?;
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(StoreError::BadUrl(url.to_string()));
        }
        Ok(Database::Sqlite(PathBuf::from(path)))
    }

    /// The embedded ledger of a data directory.
    pub fn in_data_dir(dir: &Path) -> Database {
        Database::Sqlite(dir.join(SQLITE_FILE))
    }

    /// A printable form without a password.
    pub fn display(&self) -> String {
        match self {
            Database::Sqlite(p) => format!("sqlite:{}", p.display()),
            Database::Postgres(url) => match url.split_once('@') {
                Some((creds, host)) => match creds.rsplit_once(':') {
                    Some((user, _)) if !user.ends_with('/') => format!("{user}:***@{host}"),
                    _ => url.clone(),
                },
                None => url.clone(),
            },
        }
    }

    pub(crate) fn sqlite_options(path: &Path, create: bool) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .pragma("secure_delete", "ON")
            .disable_statement_logging()
    }

    pub(crate) fn pg_options(url: &str) -> Result<PgConnectOptions> {
        Ok(PgConnectOptions::from_str(url)?.disable_statement_logging())
    }
}

/// A connection pool to either backend.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Read access to a ledger database (the appender lives in [`crate::Ledger`]).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    pub(crate) db: Database,
}

const ROW_COLUMNS_SQLITE: &str = "seq, id, time, stream, version, kind, body, prev_hash, hash";
const ROW_COLUMNS_PG: &str = "seq, id, (EXTRACT(EPOCH FROM time) * 1000000)::int8 AS time, \
                              stream, version, kind, body, prev_hash, hash";

impl Store {
    /// Connects; with `create`, a missing SQLite file (and its directory) is created.
    pub async fn connect(db: &Database, create: bool) -> Result<Store> {
        let pool = match db {
            Database::Sqlite(path) => {
                if create {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)?;
                    }
                } else if !path.exists() {
                    return Err(StoreError::Io(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no ledger at {}", path.display()),
                    )));
                }
                let opts = Database::sqlite_options(path, create);
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .connect_with(opts)
                        .await?,
                )
            }
            Database::Postgres(url) => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(Database::pg_options(url)?)
                    .await?,
            ),
        };
        Ok(Store {
            pool,
            db: db.clone(),
        })
    }

    /// Applies the migrations of `migrations/sqlite` or `migrations/postgres`.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => sqlx::migrate!("../../migrations/sqlite").run(p).await?,
            Pool::Postgres(p) => sqlx::migrate!("../../migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Up to `limit` rows with seq > `after`, in seq order, as stored (nothing checked).
    pub async fn raw_rows(&self, after: u64, limit: u32) -> Result<Vec<RawRow>> {
        match &self.pool {
            Pool::Sqlite(p) => {
                let sql = format!(
                    "SELECT {ROW_COLUMNS_SQLITE} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(after as i64)
                    .bind(limit as i64)
                    .fetch(p)
                    .map_ok(|r| raw_row(&r))
                    .try_collect::<Vec<_>>()
                    .await?;
                rows.into_iter().collect()
            }
            Pool::Postgres(p) => {
                let sql =
                    format!("SELECT {ROW_COLUMNS_PG} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(after as i64)
                    .bind(limit as i64)
                    .fetch(p)
                    .map_ok(|r| raw_row(&r))
                    .try_collect::<Vec<_>>()
                    .await?;
                rows.into_iter().collect()
            }
        }
    }

    /// Events with seq > `after`, each checked (columns agree with the body, hash matches the
    /// body, chain links to the previous row) before it is decoded. A row that fails is an error.
    pub async fn read(&self, after: u64, limit: u32) -> Result<Vec<Recorded>> {
        let rows = self.raw_rows(after, limit).await?;
        let mut prev: Option<Hash> = None;
        if after > 0 {
            prev = self.hash_at(after).await?;
        }
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            out.push(decode_checked(row, after + 1 + i as u64, prev.as_ref())?);
            prev = Some(out[i].hash);
        }
        Ok(out)
    }

    /// The chain hash stored for `seq`.
    pub async fn hash_at(&self, seq: u64) -> Result<Option<Hash>> {
        let bytes: Option<Vec<u8>> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar("SELECT hash FROM events WHERE seq = ?")
                    .bind(seq as i64)
                    .fetch_optional(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar("SELECT hash FROM events WHERE seq = $1")
                    .bind(seq as i64)
                    .fetch_optional(p)
                    .await?
            }
        };
        Ok(bytes.and_then(|b| Hash::from_slice(&b)))
    }

    /// The last seq and its hash, if any event exists.
    pub async fn head(&self) -> Result<Option<(u64, Hash)>> {
        let row: Option<(i64, Vec<u8>)> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(p)
                    .await?
            }
        };
        Ok(row.map(|(s, h)| (s as u64, Hash::from_slice(&h).unwrap_or_default())))
    }

    /// Every stored checkpoint, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<RawCheckpoint>> {
        let rows: Vec<(i64, Vec<u8>, String)> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as("SELECT tree_size, root, note FROM checkpoints ORDER BY tree_size, id")
                    .fetch_all(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_as("SELECT tree_size, root, note FROM checkpoints ORDER BY tree_size, id")
                    .fetch_all(p)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(tree_size, root, note)| RawCheckpoint {
                tree_size,
                root,
                note,
            })
            .collect())
    }

    /// Chain hashes of seq 1..=upto, in order (the Merkle tree's leaf data), for proofs.
    pub async fn chain_hashes(&self, upto: u64) -> Result<Vec<Hash>> {
        let mut out = Vec::with_capacity(upto as usize);
        let mut after = 0u64;
        while after < upto {
            let batch: Vec<(i64, Vec<u8>)> = match &self.pool {
                Pool::Sqlite(p) => {
                    sqlx::query_as(
                        "SELECT seq, hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 50000",
                    )
                    .bind(after as i64)
                    .bind(upto as i64)
                    .fetch_all(p)
                    .await?
                }
                Pool::Postgres(p) => {
                    sqlx::query_as(
                        "SELECT seq, hash FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT 50000",
                    )
                    .bind(after as i64)
                    .bind(upto as i64)
                    .fetch_all(p)
                    .await?
                }
            };
            if batch.is_empty() {
                break;
            }
            for (seq, h) in batch {
                if seq as u64 != after + 1 {
                    return Err(StoreError::Corrupt {
                        seq: after + 1,
                        problem: "missing row".into(),
                    });
                }
                after = seq as u64;
                out.push(Hash::from_slice(&h).ok_or(StoreError::Corrupt {
                    seq: after,
                    problem: "hash is not 32 bytes".into(),
                })?);
            }
        }
        Ok(out)
    }

    /// The kinds of a stream's events, in order (small streams: users, clients, grants).
    pub async fn stream_kinds(&self, stream: &grantline_ledger::StreamId) -> Result<Vec<String>> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar("SELECT kind FROM events WHERE stream = ? ORDER BY version")
                    .bind(stream.as_str())
                    .fetch_all(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar("SELECT kind FROM events WHERE stream = $1 ORDER BY version")
                    .bind(stream.as_str())
                    .fetch_all(p)
                    .await?
            }
        })
    }

    /// Number of rows (for progress bars).
    pub async fn count(&self) -> Result<u64> {
        let n: i64 = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                    .fetch_one(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::int8 FROM events")
                    .fetch_one(p)
                    .await?
            }
        };
        Ok(n as u64)
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

fn raw_row<R: Row>(r: &R) -> Result<RawRow>
where
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> uuid::Uuid: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(RawRow {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        time: r.try_get(2)?,
        stream: r.try_get(3)?,
        version: r.try_get(4)?,
        kind: r.try_get(5)?,
        body: r.try_get(6)?,
        prev_hash: r.try_get(7)?,
        hash: r.try_get(8)?,
    })
}

/// Checks one row against its body and the expected position, then decodes it.
pub(crate) fn decode_checked(row: &RawRow, expect_seq: u64, prev: Option<&Hash>) -> Result<Recorded> {
    let corrupt = |problem: String| StoreError::Corrupt {
        seq: expect_seq,
        problem,
    };
    if row.seq != expect_seq as i64 {
        return Err(corrupt(format!("expected seq {expect_seq}, found {}", row.seq)));
    }
    let hash = grantline_ledger::verify::check_row(row).map_err(|p| corrupt(format!("{p:?}")))?;
    let prev_hash = Hash::from_slice(&row.prev_hash).unwrap_or_default();
    if let Some(prev) = prev {
        if *prev != prev_hash {
            return Err(corrupt("prev_hash does not link to the previous event".into()));
        }
    } else if expect_seq == 1 && prev_hash != grantline_ledger::GENESIS {
        return Err(corrupt("first event does not chain from genesis".into()));
    }
    let envelope = grantline_ledger::decode(&row.body).map_err(|e| corrupt(e.to_string()))?;
    Ok(Recorded {
        envelope,
        prev_hash,
        hash,
    })
}
