//! Connecting to a ledger database (SQLite file or PostgreSQL), migrations, and reads.

use crate::reach::Reach;
use crate::{Result, StoreError};
use futures::TryStreamExt;
use grantline_ledger::verify::{CheckedRow, RawCheckpoint, RawRow, RowRef};
use grantline_ledger::{Hash, Recorded};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Where a ledger lives: `sqlite:PATH` (embedded default) or `postgres://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

/// The SQLite file inside a data directory.
pub const SQLITE_FILE: &str = "grantline.db";

/// `url` without a password: the one in `user:password@` and a `password=` parameter (which
/// PostgreSQL's URLs also take) read `***`.
fn redacted(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once("://") {
            Some((scheme, userinfo)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_string(),
            },
            None => match creds.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => base.to_string(),
            },
        },
        None => base.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

impl Database {
    pub fn parse(url: &str) -> Result<Database> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_string()));
        }
        // Never echoed whole: a mistyped scheme may still carry a password.
        let shown = || StoreError::BadUrl(redacted(url));
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(shown)?;
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(shown());
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
            Database::Postgres(url) => redacted(url),
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
            // Let the SQLite worker thread run ahead of the reader: far fewer wake-ups on scans.
            .row_buffer_size(8192)
            .disable_statement_logging()
    }

    pub(crate) fn pg_options(url: &str) -> Result<PgConnectOptions> {
        // `connect_timeout` is read by `connect_timeout` below; sqlx does not know it.
        let url = match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| !kv.starts_with("connect_timeout="))
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        };
        Ok(PgConnectOptions::from_str(&url)?.disable_statement_logging())
    }
}

/// How long connecting to PostgreSQL may take: the URL's first `connect_timeout` (whole
/// seconds, at least 1; unlike libpq, 0 does not mean for ever), else 10 s.
pub(crate) fn connect_timeout(url: &str) -> std::time::Duration {
    let secs = url
        .split_once('?')
        .into_iter()
        .flat_map(|(_, query)| query.split('&'))
        .find_map(|kv| kv.strip_prefix("connect_timeout=")?.parse::<u64>().ok())
        .unwrap_or(10);
    std::time::Duration::from_secs(secs.max(1))
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
    /// PostgreSQL: whether the server can be reached, as this process last found.
    reach: Option<Arc<Reach>>,
}

const ROW_COLUMNS_SQLITE: &str = "seq, id, time, stream, version, kind, body, prev_hash, hash";
/// A PostgreSQL `time` as microseconds, or NULL where it has none (`infinity`, or past what
/// 64 bits of microseconds hold): a tampered time is a finding at its row, not an error that
/// stops the read.
macro_rules! pg_micros {
    ($column:literal) => {
        concat!(
            "CASE WHEN isfinite(",
            $column,
            ") AND ",
            $column,
            " < '290000-01-01' THEN (EXTRACT(EPOCH FROM ",
            $column,
            ") * 1000000)::int8 END"
        )
    };
}
pub(crate) use pg_micros;

const ROW_COLUMNS_PG: &str = concat!(
    "seq, id, ",
    pg_micros!("time"),
    " AS time, stream, version, kind, body, prev_hash, hash"
);

/// Creates `dir` (and its parents) if missing, the last one readable by its owner only
/// (0700): it holds the ledger, the keys and the audit index. An existing one is left as it is.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates an empty SQLite file readable by its owner only (0600) if none is there: it holds
/// the personal-data keys and password hashes, and SQLite gives its WAL the same mode.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// See [`Store::exclusive`]: the lock is released when this is dropped (its transaction, which
/// wrote nothing, rolled back).
pub struct Exclusive(#[allow(dead_code)] Option<sqlx::Transaction<'static, sqlx::Postgres>>);

impl Store {
    /// Connects; with `create`, a missing SQLite file (and its directory) is created, readable
    /// by the owner only.
    pub async fn connect(db: &Database, create: bool) -> Result<Store> {
        let mut reach = None;
        let pool = match db {
            Database::Sqlite(path) => {
                if create {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        private_dir(dir)?;
                    }
                    private_file(path)?;
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
            Database::Postgres(url) => {
                let opts = Database::pg_options(url)?;
                // One direct attempt first: a server that is down or refuses is reported at
                // once ("Connection refused"), not after the pool's 30 s of retries; one that
                // does not answer at all (packets dropped) after the connect timeout, not after
                // the kernel's two minutes of retries.
                use sqlx::Connection;
                let wait = connect_timeout(url);
                match tokio::time::timeout(wait, sqlx::PgConnection::connect_with(&opts)).await {
                    Ok(conn) => conn?.close().await?,
                    Err(_) => {
                        return Err(StoreError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "PostgreSQL at {}:{} did not answer within {} s",
                                opts.get_host(),
                                opts.get_port(),
                                wait.as_secs()
                            ),
                        )));
                    }
                }
                // The pool retries a refused connection until its acquire time-out (30 s by
                // default): while PostgreSQL is away, a read would hang that long. It waits
                // the connect timeout, as everything else that connects does, and once one
                // read found PostgreSQL unreachable, new connections fail at once (`Reach`).
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(wait)
                    .connect_with(opts.clone())
                    .await?;
                reach = Some(Arc::new(Reach::new(pool.clone(), opts, wait)));
                Pool::Postgres(pool)
            }
        };
        Ok(Store {
            pool,
            db: db.clone(),
            reach,
        })
    }

    /// Connects for reading only (`grantline verify`): an SQLite file is opened read-only with
    /// its journal mode left as it is, so checking a copy (a backup's file, evidence) changes
    /// nothing in it. PostgreSQL connects as [`Store::connect`] does.
    pub async fn connect_read_only(db: &Database) -> Result<Store> {
        let Database::Sqlite(path) = db else {
            return Store::connect(db, false).await;
        };
        if !path.exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no ledger at {}", path.display()),
            )));
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(30))
            .row_buffer_size(8192)
            .disable_statement_logging();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
            db: db.clone(),
            reach: None,
        })
    }

    /// Applies the migrations of `migrations/sqlite` or `migrations/postgres` that are not yet
    /// applied. When all are, nothing is written, so a least-privilege role (INSERT and SELECT
    /// only) can start against a database its owner migrated.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match &self.pool {
            Pool::Sqlite(_) => sqlx::migrate!("../../migrations/sqlite"),
            Pool::Postgres(_) => sqlx::migrate!("../../migrations/postgres"),
        };
        let sql = "SELECT version FROM _sqlx_migrations WHERE success";
        let applied: Option<Vec<i64>> = match &self.pool {
            Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await.ok(),
            Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await.ok(),
        };
        if let Some(applied) = applied
            && migrator.iter().all(|m| applied.contains(&m.version))
        {
            return Ok(());
        }
        match &self.pool {
            Pool::Sqlite(p) => migrator.run(p).await?,
            Pool::Postgres(p) => migrator.run(p).await?,
        }
        Ok(())
    }

    /// Versions of this build's migrations the database has not applied (readiness: a
    /// server must not answer on a schema older than its code).
    pub async fn pending_migrations(&self) -> Result<Vec<i64>> {
        let migrator = match &self.pool {
            Pool::Sqlite(_) => sqlx::migrate!("../../migrations/sqlite"),
            Pool::Postgres(_) => sqlx::migrate!("../../migrations/postgres"),
        };
        let sql = "SELECT version FROM _sqlx_migrations WHERE success";
        let applied: Vec<i64> = match &self.pool {
            Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await?,
            Pool::Postgres(p) => self.pg(sqlx::query_scalar(sql).fetch_all(p)).await?,
        };
        Ok(migrator
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect())
    }

    /// A statement on PostgreSQL's pool: failing at once, with why, if it needs a new
    /// connection while the server is known to be unreachable, and saying why when the pool
    /// could not connect (see [`Reach`]).
    pub(crate) async fn pg<T>(&self, read: impl Future<Output = sqlx::Result<T>>) -> Result<T> {
        match &self.reach {
            Some(reach) => reach.run(read).await,
            None => Ok(read.await?),
        }
    }

    /// Held while a decision that no stream expectation guards is decided and appended (a
    /// user's count of live personal access tokens: each token's events are on a stream of
    /// its own). On PostgreSQL, where several instances append, a transaction-scoped advisory
    /// lock on `name`, taken by every instance alike and released when the guard is dropped.
    /// On SQLite nothing: a CLI command writing beside the server (`grantline pat create`) is
    /// not held to it.
    pub async fn exclusive(&self, name: &str) -> Result<Exclusive> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(Exclusive(None)),
            Pool::Postgres(p) => {
                let mut tx = self.pg(p.begin()).await?;
                self.pg(
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))")
                        .bind(name)
                        .execute(&mut *tx),
                )
                .await?;
                Ok(Exclusive(Some(tx)))
            }
        }
    }

    /// PostgreSQL: changes each time the server can be reached again after this process found
    /// it could not (see [`Reach`]). `None` on SQLite.
    pub fn came_back(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.reach.as_ref().map(|r| r.came_back())
    }

    /// A `LISTEN`ing connection to PostgreSQL, on a pool of its own (see
    /// [`Reach::listener_pool`]).
    pub(crate) async fn pg_listener(&self) -> Result<sqlx::postgres::PgListener> {
        let Some(reach) = &self.reach else {
            return Err(StoreError::BadUrl(self.db.display()));
        };
        let pool = reach.listener_pool();
        self.pg(sqlx::postgres::PgListener::connect_with(&pool))
            .await
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `f` with the SQLite database file's path on the blocking pool (a scan through a
    /// private rusqlite connection).
    async fn on_sqlite_file<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let Database::Sqlite(path) = &self.db else {
            return Err(StoreError::BadUrl(self.db.display()));
        };
        let path = path.clone();
        tokio::task::spawn_blocking(move || f(&path))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Up to `limit` rows with seq > `after`, in seq order, as stored (nothing checked).
    pub async fn raw_rows(&self, after: u64, limit: u32) -> Result<Vec<RawRow>> {
        self.raw_rows_into(after, limit, Vec::new()).await
    }

    /// [`Store::raw_rows`] into the rows of a page already read: on SQLite their buffers are
    /// overwritten rather than allocated again (a [`Tail`](crate::Tail) reuses two pages).
    pub async fn raw_rows_into(
        &self,
        after: u64,
        limit: u32,
        mut reuse: Vec<RawRow>,
    ) -> Result<Vec<RawRow>> {
        // No seq lies beyond i64 (the column's type): nothing comes after such a position,
        // and it must not wrap to a negative one and read from the start.
        if i64::try_from(after).is_err() {
            reuse.clear();
            return Ok(reuse);
        }
        match &self.pool {
            Pool::Sqlite(_) => {
                self.on_sqlite_file(move |path| scan_sqlite(path, after, limit, reuse))
                    .await
            }
            Pool::Postgres(p) => self
                .pg(pg_page(p, after, limit))
                .await?
                .iter()
                .map(raw_row)
                .collect(),
        }
    }

    /// Up to `limit` rows with seq > `after`, in seq order, each checked on its own
    /// ([`CheckedRow::check`]) into the rows of a page already checked: what `verify`'s walk
    /// reads. On SQLite rows are checked in SQLite's own buffers, not copied first.
    pub async fn checked_rows_into(
        &self,
        after: u64,
        limit: u32,
        reuse: Vec<CheckedRow>,
    ) -> Result<Vec<CheckedRow>> {
        match &self.pool {
            Pool::Sqlite(_) => {
                self.on_sqlite_file(move |path| scan_sqlite_checked(path, after, limit, reuse))
                    .await
            }
            // Each row is checked in the buffer it arrived in, as on SQLite: no copy of it.
            Pool::Postgres(p) => {
                let rows = self.pg(pg_page(p, after, limit)).await?;
                tokio::task::spawn_blocking(move || {
                    let mut out = reuse;
                    out.clear();
                    for r in &rows {
                        out.push(CheckedRow::check(pg_row_ref(r)?));
                    }
                    Ok(out)
                })
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
            }
        }
    }

    /// Events with seq > `after`, each checked (columns agree with the body, hash matches the
    /// body, chain links to the previous row) before it is decoded. A row that fails is an error.
    pub async fn read(&self, after: u64, limit: u32) -> Result<Vec<Recorded>> {
        let rows = self.raw_rows(after, limit).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let prev = self.link_to(after).await?;
        Ok(decode_rows(rows, after, prev).await?.0)
    }

    /// As [`Store::read`], for a reader that holds the event at `after` with hash `prev`: the
    /// first row must link to it, so a ledger rewritten or gone back under the reader is
    /// `Corrupt`, not read on as if it followed what the reader holds.
    pub async fn read_linked(&self, after: u64, prev: Hash, limit: u32) -> Result<Vec<Recorded>> {
        let rows = self.raw_rows(after, limit).await?;
        if rows.is_empty() {
            // Nothing after it: the row at `after` must still be the one held (a ledger that
            // went back to exactly this seq, with another event there, reads nothing new).
            if after > 0 && self.hash_at(after).await? != Some(prev) {
                return Err(StoreError::Corrupt {
                    seq: after,
                    problem: "not the event this reader holds at this seq".into(),
                });
            }
            return Ok(Vec::new());
        }
        Ok(decode_rows(rows, after, Some(prev)).await?.0)
    }

    /// The hash the first row after `after` must link to, for a read that found rows there:
    /// none before the first event; the row at `after` otherwise, which must be there (a
    /// missing or unreadable one would let the first row read go unchecked against what the
    /// reader already holds).
    pub(crate) async fn link_to(&self, after: u64) -> Result<Option<Hash>> {
        if after == 0 {
            return Ok(None);
        }
        match self.hash_at(after).await? {
            Some(h) => Ok(Some(h)),
            None => Err(StoreError::Corrupt {
                seq: after,
                problem: "the row rows after it link to is missing or its hash unreadable".into(),
            }),
        }
    }

    /// The events of `kinds` with a seq in `(after, upto]`, in seq order: what a reader
    /// starting mid-ledger needs of the events before its start (the names of users and
    /// clients), without reading and decoding the others. Each row is checked against its
    /// columns and its own hash; its links to neighbours that are not read are not (`verify`
    /// checks those).
    pub async fn read_kinds(
        &self,
        kinds: &[grantline_ledger::Kind],
        after: u64,
        upto: u64,
    ) -> Result<Vec<Recorded>> {
        // Kind names are the catalogue's own constants, never caller text.
        let list = kinds
            .iter()
            .map(|k| format!("'{}'", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        if list.is_empty() {
            return Ok(Vec::new());
        }
        self.checked_where(&format!("kind IN ({list})"), after, upto)
            .await
    }

    /// The rows with a seq in `(after, upto]` that `condition` also selects (the crate's own
    /// SQL, never caller text), in seq order, each checked against its columns and its own
    /// hash. Read as `verify` reads: a column of another type is the row's problem to report
    /// (`Corrupt`), not a database error.
    async fn checked_where(&self, condition: &str, after: u64, upto: u64) -> Result<Vec<Recorded>> {
        let upto = upto.min(i64::MAX as u64) as i64;
        let after = after.min(i64::MAX as u64) as i64;
        let rows = match &self.pool {
            Pool::Sqlite(_) => {
                let condition = format!("seq <= ?1 AND seq > ?2 AND {condition}");
                self.on_sqlite_file(move |path| {
                    let mut out = Vec::new();
                    scan_sqlite_where(path, &condition, &[&upto, &after], None, |row| {
                        let mut r = RawRow::default();
                        assign(&mut r, row);
                        out.push(Ok(r));
                    })?;
                    Ok(out)
                })
                .await?
            }
            Pool::Postgres(p) => {
                let sql = format!(
                    "SELECT {ROW_COLUMNS_PG} FROM events WHERE seq <= $1 AND seq > $2 AND {condition} ORDER BY seq"
                );
                let read = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(upto)
                    .bind(after)
                    .fetch(p)
                    .map_ok(|r| raw_row(&r))
                    .try_collect::<Vec<_>>();
                self.pg(read).await?
            }
        };
        rows.into_iter()
            .map(|row| {
                let row = row?;
                // A negative seq (not possible past the table's CHECK) fails as a mismatch.
                decode_checked(&row, row.seq.max(0) as u64, None)
            })
            .collect()
    }

    /// The events of the `keys` stream (key introductions and rotations) with seq ≤ `upto`, in
    /// seq order, each checked against its columns and its own hash (as [`Store::read_kinds`]):
    /// read through the stream's index, so a walk that starts from a checkpoint learns the
    /// checkpoint keys in force there without reading the rows before it.
    pub async fn key_events(&self, upto: u64) -> Result<Vec<Recorded>> {
        self.checked_where("stream = 'keys'", 0, upto).await
    }

    /// Every event after `after`, in pages of `page`: the next page is read and decoded while
    /// `f` handles the current one. `f` returns `false` to stop early.
    pub async fn each_page(
        &self,
        after: u64,
        page: u32,
        mut f: impl FnMut(&[Recorded]) -> bool,
    ) -> Result<()> {
        let read = |after: u64| {
            let s = self.clone();
            tokio::spawn(async move { s.read(after, page).await })
        };
        let mut next = read(after);
        loop {
            let events = next
                .await
                .map_err(|e| StoreError::Invalid(format!("reading events: {e}")))??;
            let Some(last) = events.last() else {
                return Ok(());
            };
            next = read(last.seq());
            if !f(&events) {
                next.abort();
                return Ok(());
            }
        }
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
                self.pg(sqlx::query_scalar("SELECT hash FROM events WHERE seq = $1")
                    .bind(seq as i64)
                    .fetch_optional(p))
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
                self.pg(
                    sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                        .fetch_optional(p),
                )
                .await?
            }
        };
        Ok(row.map(|(s, h)| (s as u64, Hash::from_slice(&h).unwrap_or_default())))
    }

    /// Every stored checkpoint, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<RawCheckpoint>> {
        self.checkpoints_after(-1).await
    }

    /// The stored checkpoints of a tree larger than `size`, oldest first: what a walk that
    /// starts from a checkpoint of that size still checks (the rows below it are not held).
    pub async fn checkpoints_after(&self, size: i64) -> Result<Vec<RawCheckpoint>> {
        let rows: Vec<(i64, Vec<u8>, String)> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT tree_size, root, note FROM checkpoints WHERE tree_size > ? ORDER BY tree_size, id",
                )
                .bind(size)
                .fetch_all(p)
                .await?
            }
            Pool::Postgres(p) => {
                self.pg(sqlx::query_as(
                    "SELECT tree_size, root, note FROM checkpoints WHERE tree_size > $1 ORDER BY tree_size, id",
                )
                .bind(size)
                .fetch_all(p))
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

    /// The newest checkpoint's tree size and when it was written (µs since the epoch), if any:
    /// how far the signed head trails the ledger (readiness, metrics). Of a size the ledger
    /// holds: a row inserted past the head would show a signer that stopped as up to date.
    pub async fn newest_checkpoint(&self) -> Result<Option<(u64, i64)>> {
        let row: Option<(i64, Option<i64>)> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT tree_size, time FROM checkpoints \
                     WHERE tree_size <= (SELECT COALESCE(MAX(seq), 0) FROM events) \
                     ORDER BY id DESC LIMIT 1",
                )
                    .fetch_optional(p)
                    .await?
            }
            Pool::Postgres(p) => {
                self.pg(sqlx::query_as(concat!(
                    "SELECT tree_size, ",
                    pg_micros!("time"),
                    " FROM checkpoints WHERE tree_size <= (SELECT COALESCE(MAX(seq), 0) FROM events) \
                     ORDER BY id DESC LIMIT 1"
                ))
                .fetch_optional(p))
                    .await?
            }
        };
        // A time that does not read (tampered) is the oldest there is: the checkpoint's age
        // then says something is wrong rather than nothing.
        Ok(row.map(|(size, time)| (size as u64, time.unwrap_or(0))))
    }

    /// The stored `(seq, hash)` of the rows in seq `(after, upto]`, in order, as stored
    /// (nothing checked; at most what exists), read in pages.
    pub async fn chain_hash_rows(&self, after: u64, upto: u64) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut from = after;
        while from < upto {
            let batch = self.chain_hash_page(from, upto).await?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            from = last.max(0) as u64;
            out.extend(batch);
        }
        Ok(out)
    }

    /// Up to 50,000 stored `(seq, hash)` rows in seq `(from, upto]`.
    async fn chain_hash_page(&self, from: u64, upto: u64) -> Result<Vec<(i64, Vec<u8>)>> {
        let (from, upto) = (
            from.min(i64::MAX as u64) as i64,
            upto.min(i64::MAX as u64) as i64,
        );
        Ok(match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT seq, hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 50000",
                )
                .bind(from)
                .bind(upto)
                .fetch_all(p)
                .await?
            }
            Pool::Postgres(p) => {
                self.pg(sqlx::query_as(
                    "SELECT seq, hash FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT 50000",
                )
                .bind(from)
                .bind(upto)
                .fetch_all(p))
                .await?
            }
        })
    }

    /// The checkpoint of tree size `at` (the newest when `None`) to serve and prove against:
    /// one of a size the ledger holds, as stored. Whoever may insert into `checkpoints` could
    /// add a row of any size, which no later checkpoint would ever pass (the writer ignores it
    /// too), to be served as the newest for good.
    pub async fn checkpoint(&self, at: Option<u64>) -> Result<Option<RawCheckpoint>> {
        let head = self.count().await?;
        if at.is_some_and(|n| n > head) {
            return Ok(None);
        }
        let row = self
            .checkpoint_row(at.unwrap_or(head), at.is_some())
            .await?;
        Ok(row.map(|(c, _)| c))
    }

    /// The stored checkpoint of tree size `at` (the newest when `None`) with the Merkle
    /// frontier saved beside it, as stored, whatever its size: `verify --from-checkpoint`
    /// judges one past the head (a ledger cut back under it is NOT INTACT).
    pub async fn checkpoint_with_frontier(
        &self,
        at: Option<u64>,
    ) -> Result<Option<(RawCheckpoint, Vec<u8>)>> {
        self.checkpoint_row(at.unwrap_or(u64::MAX), at.is_some())
            .await
    }

    /// The newest stored checkpoint of a size at most `bound` (exactly `bound` when `exact`),
    /// with its frontier.
    async fn checkpoint_row(
        &self,
        bound: u64,
        exact: bool,
    ) -> Result<Option<(RawCheckpoint, Vec<u8>)>> {
        let size = bound.min(i64::MAX as u64) as i64;
        let row: Option<(i64, Vec<u8>, String, Vec<u8>)> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT tree_size, root, note, frontier FROM checkpoints WHERE tree_size <= ? \
                     ORDER BY tree_size DESC, id DESC LIMIT 1",
                )
                .bind(size)
                .fetch_optional(p)
                .await?
            }
            Pool::Postgres(p) => {
                self.pg(sqlx::query_as(
                    "SELECT tree_size, root, note, frontier FROM checkpoints WHERE tree_size <= $1 \
                     ORDER BY tree_size DESC, id DESC LIMIT 1",
                )
                .bind(size)
                .fetch_optional(p))
                    .await?
            }
        };
        Ok(row
            .filter(|(tree_size, ..)| !exact || u64::try_from(*tree_size) == Ok(bound))
            .map(|(tree_size, root, note, frontier)| {
                (
                    RawCheckpoint {
                        tree_size,
                        root,
                        note,
                    },
                    frontier,
                )
            }))
    }

    /// Chain hashes of seq 1..=upto, in order (the Merkle tree's leaf data), for proofs (see
    /// [`Store::chain_hashes_between`]).
    pub async fn chain_hashes(&self, upto: u64) -> Result<Vec<Hash>> {
        self.chain_hashes_between(0, upto).await
    }

    /// Chain hashes of seq `after+1..=upto`, in order. Read page by page into 32-byte hashes
    /// (no row held as a vector of its own), and sized by what the ledger holds, not by `upto`
    /// (a checkpoint row's tree size, which may be altered); a ledger holding fewer is
    /// `Corrupt`.
    pub async fn chain_hashes_between(&self, after: u64, upto: u64) -> Result<Vec<Hash>> {
        let head = self.count().await?;
        let want = upto.min(head).saturating_sub(after);
        let mut out = Vec::with_capacity(want.min(usize::MAX as u64) as usize);
        let mut from = after;
        while from < upto {
            let batch = self.chain_hash_page(from, upto).await?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            for (seq, h) in batch {
                let want = after + out.len() as u64 + 1;
                if seq as u64 != want {
                    return Err(StoreError::Corrupt {
                        seq: want,
                        problem: "missing row".into(),
                    });
                }
                out.push(Hash::from_slice(&h).ok_or(StoreError::Corrupt {
                    seq: want,
                    problem: "hash is not 32 bytes".into(),
                })?);
            }
            from = last.max(0) as u64;
        }
        // Fewer than asked: a proof over them would be of a smaller tree than the one named.
        if after + (out.len() as u64) < upto {
            return Err(StoreError::Corrupt {
                seq: after + out.len() as u64 + 1,
                problem: format!(
                    "the ledger holds {} events, not {upto}",
                    after + out.len() as u64
                ),
            });
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
                self.pg(sqlx::query_scalar(
                    "SELECT kind FROM events WHERE stream = $1 ORDER BY version",
                )
                .bind(stream.as_str())
                .fetch_all(p))
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
                self.pg(
                    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::int8 FROM events")
                        .fetch_one(p),
                )
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

/// How much of the database file a scan maps: SQLite caps it at 2 GiB; beyond it, reads.
const SCAN_MMAP_BYTES: i64 = 1 << 30;

/// Bulk scan on SQLite through a private read-only connection (rusqlite, no mutex): sqlx's
/// worker thread hands rows over one at a time under SQLite's serialized mutex, which made
/// full-ledger scans (verify, replay) several times slower than SQLite itself.
fn scan_sqlite(path: &Path, after: u64, limit: u32, mut out: Vec<RawRow>) -> Result<Vec<RawRow>> {
    let mut n = 0usize;
    scan_sqlite_with(path, after, limit, |row| {
        if n == out.len() {
            out.push(RawRow::default());
        }
        assign(&mut out[n], row);
        n += 1;
    })?;
    out.truncate(n);
    Ok(out)
}

/// Overwrites `into` with `row`, reusing its buffers.
fn assign(into: &mut RawRow, row: RowRef<'_>) {
    fn bytes(into: &mut Vec<u8>, b: &[u8]) {
        // A reused buffer does not keep the size of the largest body it ever held.
        if into.capacity() > (4 * b.len()).max(16 * 1024) {
            *into = Vec::new();
        }
        into.clear();
        into.extend_from_slice(b);
    }
    into.seq = row.seq;
    into.id = row.id;
    into.time = row.time;
    into.stream.clear();
    into.stream.push_str(row.stream);
    into.version = row.version;
    into.kind.clear();
    into.kind.push_str(row.kind);
    bytes(&mut into.body, row.body);
    bytes(&mut into.prev_hash, row.prev_hash);
    bytes(&mut into.hash, row.hash);
    into.unreadable = row.unreadable;
}

/// [`Store::checked_rows_into`] on SQLite: each row is checked while SQLite's buffers hold
/// it, and only what linking it needs is kept (no body is copied but a key rotation's).
fn scan_sqlite_checked(
    path: &Path,
    after: u64,
    limit: u32,
    mut out: Vec<CheckedRow>,
) -> Result<Vec<CheckedRow>> {
    out.clear();
    scan_sqlite_with(path, after, limit, |row| out.push(CheckedRow::check(row)))?;
    Ok(out)
}

/// Calls `each` with up to `limit` rows with seq > `after`, in seq order, borrowed from
/// SQLite's buffers.
fn scan_sqlite_with(
    path: &Path,
    after: u64,
    limit: u32,
    each: impl FnMut(RowRef<'_>),
) -> Result<()> {
    scan_sqlite_where(path, "seq > ?1", &[&(after as i64)], Some(limit), each)
}

/// Calls `each` with the rows `condition` selects (at most `limit`), in seq order, borrowed
/// from SQLite's buffers. `condition` is the crate's own SQL, never caller text.
fn scan_sqlite_where(
    path: &Path,
    condition: &str,
    params: &[&dyn rusqlite::ToSql],
    limit: Option<u32>,
    mut each: impl FnMut(RowRef<'_>),
) -> Result<()> {
    use rusqlite::OpenFlags;
    use rusqlite::types::ValueRef;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    // Pages read through a memory map rather than copied in by read(2) (~4 % of an export
    // in the kernel alone). Every SQLite read of events comes here (replay, verify, export,
    // the indexer, and a server's audit pages and sinks): a disk error while reading the
    // mapped file, or the file cut short behind SQLite's back, ends the process (SIGBUS)
    // instead of failing the read. SQLite itself never shrinks the file under a reader.
    conn.pragma_update(None, "mmap_size", SCAN_MMAP_BYTES)?;
    let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let mut stmt = conn.prepare(&format!(
        "SELECT {ROW_COLUMNS_SQLITE} FROM events WHERE {condition} ORDER BY seq{limit}"
    ))?;
    let mut rows = stmt.query(params)?;
    // A tampered row may hold text where bytes belong (SQLite is dynamically typed): read the
    // bytes either way and let verification judge them. A number stands as its text.
    fn bytes<'a>(value: ValueRef<'a>, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        match value {
            ValueRef::Blob(b) | ValueRef::Text(b) => b,
            ValueRef::Null => &[],
            ValueRef::Integer(n) => {
                *scratch = n.to_string().into_bytes();
                scratch
            }
            ValueRef::Real(f) => {
                *scratch = f.to_string().into_bytes();
                scratch
            }
        }
    }
    // The indexed columns: a value of another type (or NULL, or text that is not UTF-8) is
    // not a database error but a row verification reports (`RowRef::unreadable`).
    fn text(value: ValueRef<'_>) -> Option<&str> {
        match value {
            ValueRef::Text(t) => std::str::from_utf8(t).ok(),
            _ => None,
        }
    }
    fn integer(value: ValueRef<'_>) -> Option<i64> {
        match value {
            ValueRef::Integer(n) => Some(n),
            _ => None,
        }
    }
    fn id(value: ValueRef<'_>) -> Option<uuid::Uuid> {
        match value {
            ValueRef::Blob(b) | ValueRef::Text(b) => uuid::Uuid::from_slice(b).ok(),
            _ => None,
        }
    }
    let mut scratch = [Vec::new(), Vec::new(), Vec::new()];
    while let Some(r) = rows.next()? {
        let [body, prev_hash, hash] = &mut scratch;
        let mut unreadable = None;
        let mut note = |column: &'static str, ok: bool| {
            if !ok && unreadable.is_none() {
                unreadable = Some(column);
            }
        };
        let id = id(r.get_ref(1)?);
        note("id", id.is_some());
        let time = integer(r.get_ref(2)?);
        note("time", time.is_some());
        let stream = text(r.get_ref(3)?);
        note("stream", stream.is_some());
        let version = integer(r.get_ref(4)?);
        note("version", version.is_some());
        let kind = text(r.get_ref(5)?);
        note("kind", kind.is_some());
        each(RowRef {
            // The rowid: always an integer.
            seq: r.get(0)?,
            id: id.unwrap_or_default(),
            time: time.unwrap_or_default(),
            stream: stream.unwrap_or_default(),
            version: version.unwrap_or_default(),
            kind: kind.unwrap_or_default(),
            body: bytes(r.get_ref(6)?, body),
            prev_hash: bytes(r.get_ref(7)?, prev_hash),
            hash: bytes(r.get_ref(8)?, hash),
            unreadable,
        });
    }
    Ok(())
}

/// Up to `limit` rows with seq > `after`, in seq order, on PostgreSQL, as received.
async fn pg_page(p: &PgPool, after: u64, limit: u32) -> sqlx::Result<Vec<sqlx::postgres::PgRow>> {
    let sql = format!("SELECT {ROW_COLUMNS_PG} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(p)
        .await
}

/// A PostgreSQL row as stored, owned: [`pg_row_ref`] copied.
fn raw_row(r: &sqlx::postgres::PgRow) -> Result<RawRow> {
    let mut row = RawRow::default();
    assign(&mut row, pg_row_ref(r)?);
    Ok(row)
}

/// A PostgreSQL row's columns, borrowed from the row as received.
fn pg_row_ref(r: &sqlx::postgres::PgRow) -> Result<RowRef<'_>> {
    // A NULL where a tamperer dropped a NOT NULL constraint is not a database error but a
    // row verification reports (`RawRow::unreadable`); a NULL body or hash reads as empty,
    // which fails its own check.
    let id: Option<uuid::Uuid> = r.try_get(1)?;
    let time: Option<i64> = r.try_get(2)?;
    let stream: Option<&str> = r.try_get(3)?;
    let version: Option<i64> = r.try_get(4)?;
    let kind: Option<&str> = r.try_get(5)?;
    let unreadable = [
        ("id", id.is_none()),
        ("time", time.is_none()),
        ("stream", stream.is_none()),
        ("version", version.is_none()),
        ("kind", kind.is_none()),
    ]
    .into_iter()
    .find_map(|(column, null)| null.then_some(column));
    Ok(RowRef {
        seq: r.try_get(0)?,
        id: id.unwrap_or_default(),
        time: time.unwrap_or_default(),
        stream: stream.unwrap_or_default(),
        version: version.unwrap_or_default(),
        kind: kind.unwrap_or_default(),
        body: r.try_get::<Option<&[u8]>, _>(6)?.unwrap_or_default(),
        prev_hash: r.try_get::<Option<&[u8]>, _>(7)?.unwrap_or_default(),
        hash: r.try_get::<Option<&[u8]>, _>(8)?.unwrap_or_default(),
        unreadable,
    })
}

/// Checks and decodes rows that follow `after` (whose hash is `prev`), in parallel chunks on
/// the blocking pool for large pages; the chain links between chunks are checked in order.
/// The rows are handed back so that a reader following the ledger reads the next page into
/// their buffers instead of allocating (and freeing) five buffers a row.
pub(crate) async fn decode_rows(
    rows: Vec<RawRow>,
    after: u64,
    prev: Option<Hash>,
) -> Result<(Vec<Recorded>, Vec<RawRow>)> {
    const CHUNK: usize = 2048;
    if rows.len() <= CHUNK {
        let mut prev = prev;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let r = decode_checked(row, after + 1 + i as u64, prev.as_ref())?;
            prev = Some(r.hash);
            out.push(r);
        }
        return Ok((out, rows));
    }
    // A few large chunks rather than many: each chunk's vector is one large allocation (and
    // under glibc's malloc, which library users may have, consolidates every small free chunk
    // of the thread's arena).
    let chunk = rows.len().div_ceil(4).max(CHUNK);
    let rows = std::sync::Arc::new(rows);
    let mut handles = Vec::new();
    for start in (0..rows.len()).step_by(chunk) {
        let rows = rows.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            let end = (start + chunk).min(rows.len());
            let mut out = Vec::with_capacity(end - start);
            for (i, row) in rows[start..end].iter().enumerate() {
                // Links inside the chunk are checked here; the first row's link below.
                let prev = out.last().map(|r: &Recorded| r.hash);
                out.push(decode_checked(
                    row,
                    after + 1 + (start + i) as u64,
                    prev.as_ref(),
                )?);
            }
            Ok::<_, StoreError>(out)
        }));
    }
    let mut out = Vec::with_capacity(rows.len());
    let mut prev = prev;
    for h in handles {
        let chunk = h
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        if let Some(first) = chunk.first() {
            let ok = match prev {
                Some(p) => first.prev_hash == p,
                None => first.seq() > 1 || first.prev_hash == grantline_ledger::GENESIS,
            };
            if !ok {
                return Err(StoreError::Corrupt {
                    seq: first.seq(),
                    problem: "prev_hash does not link to the previous event".into(),
                });
            }
        }
        prev = chunk.last().map(|r| r.hash).or(prev);
        out.extend(chunk);
    }
    // Every task has finished (and dropped its handle on the rows): they are ours again.
    let rows = std::sync::Arc::try_unwrap(rows).unwrap_or_default();
    Ok((out, rows))
}

/// Checks one row against its body and the expected position, then decodes it: the body is
/// decoded once, its header compared with the columns, its hash recomputed.
pub(crate) fn decode_checked(
    row: &RawRow,
    expect_seq: u64,
    prev: Option<&Hash>,
) -> Result<Recorded> {
    let corrupt = |problem: String| StoreError::Corrupt {
        seq: expect_seq,
        problem,
    };
    if row.seq != expect_seq as i64 {
        return Err(corrupt(format!(
            "expected seq {expect_seq}, found {}",
            row.seq
        )));
    }
    let envelope = grantline_ledger::decode(&row.body).map_err(|e| corrupt(e.to_string()))?;
    let agrees = envelope.seq as i64 == row.seq
        && envelope.id == row.id
        && envelope.time.0 == row.time
        && envelope.stream.as_str() == row.stream
        && envelope.version as i64 == row.version
        && envelope.kind().as_str() == row.kind
        && row.unreadable.is_none();
    if !agrees {
        return Err(corrupt("columns disagree with the body".into()));
    }
    let prev_hash =
        Hash::from_slice(&row.prev_hash).ok_or_else(|| corrupt("prev_hash length".into()))?;
    let hash = Hash::from_slice(&row.hash).ok_or_else(|| corrupt("hash length".into()))?;
    if grantline_ledger::chain_hash(&prev_hash, &row.body) != hash {
        return Err(corrupt("body does not match its hash".into()));
    }
    match prev {
        Some(p) if *p != prev_hash => {
            return Err(corrupt(
                "prev_hash does not link to the previous event".into(),
            ));
        }
        None if expect_seq == 1 && prev_hash != grantline_ledger::GENESIS => {
            return Err(corrupt("first event does not chain from genesis".into()));
        }
        _ => {}
    }
    Ok(Recorded {
        envelope,
        prev_hash,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No password of a URL is printed: not in `user:password@`, not as a `password=`
    /// parameter, not when the scheme is mistyped and the URL is refused.
    #[test]
    fn printed_urls_hold_no_password() {
        let shown = |url: &str| Database::Postgres(url.into()).display();
        assert_eq!(
            shown("postgres://gl:s3cret@db.example:5432/gl"),
            "postgres://gl:***@db.example:5432/gl"
        );
        assert_eq!(
            shown("postgresql://gl@db.example/gl?sslmode=require&password=s3cret"),
            "postgresql://gl@db.example/gl?sslmode=require&password=***"
        );
        assert_eq!(
            shown("postgres://db.example/gl"),
            "postgres://db.example/gl"
        );
        assert_eq!(
            shown("postgres://gl:p@ss@db.example/gl"),
            "postgres://gl:***@db.example/gl"
        );
        for bad in [
            "postgress://gl:s3cret@db.example/gl",
            "mysql://x/y?password=s3cret",
        ] {
            let e = Database::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
