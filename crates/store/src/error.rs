use grantline_ledger::{ExpectedVersion, StreamId};

/// Errors of the store. `Conflict` is the optimistic-concurrency answer (reload, decide again);
/// `Unavailable` means the ledger could not write and the caller must fail closed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} is at version {actual}, the decision expected {expected}")]
    Conflict {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: u64,
    },
    #[error("already exists: {0}")]
    Exists(String),
    #[error("the ledger cannot append: {0}")]
    Unavailable(String),
    /// PostgreSQL cannot be reached (refused, shutting down, no answer): reads fail at once
    /// with why until a new connection can be made.
    #[error("PostgreSQL cannot be reached: {0}")]
    Unreachable(String),
    #[error("invalid append: {0}")]
    Invalid(String),
    /// Not the error's `source`: its text is already here, and a chain printed in full would
    /// repeat it with sqlx's wording (see [`describe`]).
    #[error("database error: {}", describe(.0))]
    Database(sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("bad database URL {0:?}: expected sqlite:PATH or postgres://…")]
    BadUrl(String),
    #[error("ledger row at seq {seq} is not intact: {problem}")]
    Corrupt { seq: u64, problem: String },
    #[error("checkpoint key: {0}")]
    Key(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Something asked for by name that is not stored (a checkpoint of a given size).
    #[error("{0}")]
    NotFound(String),
    /// A backup that cannot be written or restored, and why.
    #[error("backup: {0}")]
    Backup(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Database(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// sqlx's text for `e`, but a PostgreSQL error as its message and SQLSTATE: sqlx appends the
/// line of PostgreSQL's own source that raised it (`role "x" does not exist at line 768`),
/// which reads as a line of the operator's configuration. PostgreSQL's `DETAIL` is left out:
/// it can quote the values of a row.
pub(crate) fn describe(e: &sqlx::Error) -> String {
    let pg = match e {
        sqlx::Error::Database(d) => d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>(),
        _ => None,
    };
    match pg {
        Some(pg) => format!("{} (SQLSTATE {})", pg.message(), pg.code()),
        None => e.to_string(),
    }
}
