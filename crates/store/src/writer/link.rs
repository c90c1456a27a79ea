//! PostgreSQL: how the ledger writer's own connection comes back after it failed — the
//! server restarted, failed over, or a proxy or the network cut the connection.
//!
//! A statement that finds the connection gone ([`lost`]: closed, reset, the server shutting
//! down, or `BEGIN` unanswered for the connect timeout), or a commit whose rollback fails too,
//! marks the link down; the next group (or probe) then starts on a new connection. Other
//! failures (disk full, a read-only server) keep the connection: a new one would fail alike.
//! Every statement has a deadline (`BEGIN` the connect timeout, the others
//! [`STATEMENT_DEADLINE`]), past which the connection counts as lost. While no new connection
//! can be made, groups fail closed at once with the reason; attempts
//! are made in the background, at most every [`RETRY_AFTER`], each bounded by the connect
//! timeout, so a server that drops packets holds a group for at most [`GRACE`].
//!
//! A connection cut mid-transaction can leave its server backend waiting, holding the append
//! lock, until TCP keepalive notices (hours): the writer's connection sets
//! `idle_in_transaction_session_timeout`, so the server ends such a backend after 30 s (the
//! writer itself never idles inside a transaction), and `statement_timeout` and
//! `lock_timeout` below [`STATEMENT_DEADLINE`], so a backend cut off while it waits for the
//! append lock stops waiting too ([`SERVER_LIMITS`]).

use crate::{Result, StoreError};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The `application_name` of the writer's own connection, as `pg_stat_activity` shows it.
pub(super) const WRITER_APPLICATION: &str = "grantline-ledger-writer";

/// How long a group waits for a connection attempt under way before it fails: a server that
/// is back answers well within it.
pub(super) const GRACE: Duration = Duration::from_millis(100);

/// The writer connection's server-side limits (see the module's doc): a transaction left idle
/// is ended, and a statement — the append lock's wait above all — is cancelled by the server
/// before [`STATEMENT_DEADLINE`], so that deadline fires only on a network gone silent, and a
/// lock wait never outlives the writer's interest in it. And a commit is durable before it is
/// answered: `synchronous_commit = off` set on the database or role (a tuning some
/// administrators apply) would answer appends the server could lose in a crash, so it is
/// turned back on for this connection; any other setting (`local`, `remote_write`, `on`,
/// `remote_apply`) flushes locally first and is kept. Plain SQL (no PL/pgSQL, which a
/// database may not grant), and a connection on which these do not hold is not used: the
/// writer would answer appends its limits or its durability no longer cover. (Behind a pooler
/// in transaction mode a session's settings do not follow its transactions: the writer needs a
/// session of its own; docs/operations.md.)
const SERVER_LIMITS: &str = "SET idle_in_transaction_session_timeout = '30s'; \
     SET statement_timeout = '25s'; SET lock_timeout = '25s'; \
     SELECT set_config('synchronous_commit', 'on', false) \
     WHERE current_setting('synchronous_commit') = 'off'";

/// How long after a failed attempt the next one is made.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The writer's PostgreSQL connection's way back.
pub(super) struct PgLink {
    options: PgConnectOptions,
    connect_timeout: Duration,
    down: Option<Down>,
    /// When the last new connection was made: one that fails again at once waits
    /// [`RETRY_AFTER`] before the next, so a server that accepts and then drops connections
    /// is not reconnected to at every group.
    connected_at: Option<Instant>,
}

/// A link known to be down since a failure.
struct Down {
    /// Why: the failure that took it down, or the last attempt's.
    error: String,
    attempt: Option<JoinHandle<std::result::Result<PgConnection, String>>>,
    retry_at: Instant,
}

impl PgLink {
    pub(super) fn new(options: PgConnectOptions, connect_timeout: Duration) -> PgLink {
        PgLink {
            options: options.application_name(WRITER_APPLICATION),
            connect_timeout,
            down: None,
            connected_at: None,
        }
    }

    /// How long a connection may take (the database URL's `connect_timeout`, else 10 s).
    pub(super) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The options the writer's first connection is made with.
    pub(super) fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// Whether the link is up, as far as the writer knows.
    pub(super) fn is_up(&self) -> bool {
        self.down.is_none()
    }

    /// After the connection was found gone (see the module's doc): the next use starts on a
    /// new one, at once unless the last new one was made less than [`RETRY_AFTER`] ago — or
    /// at once anyway when `idle`: it died while nothing was sent on it, and a group is about
    /// to try once more (at most one such try a group).
    pub(super) fn failed(&mut self, error: &StoreError, idle: bool) {
        if self.down.is_none() {
            tracing::warn!(error = %error,
                "the ledger writer's PostgreSQL connection is gone; connecting again");
            let now = Instant::now();
            let backoff = self
                .connected_at
                .map_or(now, |at| (at + RETRY_AFTER).max(now));
            self.down = Some(Down {
                error: error.to_string(),
                attempt: None,
                retry_at: if idle { now } else { backoff },
            });
        }
    }

    /// `Ok(None)` when the link is up; `Ok(Some(connection))`, to be used from now on, when
    /// it was down and a new connection was made, waiting at most `wait` for an attempt under
    /// way; an error, and the group fails closed, while it stays down.
    pub(super) async fn restore(&mut self, wait: Duration) -> Result<Option<PgConnection>> {
        let Some(down) = self.down.as_mut() else {
            return Ok(None);
        };
        if down.attempt.is_none() {
            if Instant::now() < down.retry_at {
                return Err(unavailable(&down.error));
            }
            let (options, timeout) = (self.options.clone(), self.connect_timeout);
            down.attempt = Some(tokio::spawn(async move {
                match tokio::time::timeout(timeout, connect(&options)).await {
                    Ok(Ok(conn)) => Ok(conn),
                    Ok(Err(e)) => Err(crate::error::describe(&e)),
                    Err(_) => Err(format!(
                        "PostgreSQL at {}:{} did not answer within {} s",
                        options.get_host(),
                        options.get_port(),
                        timeout.as_secs()
                    )),
                }
            }));
        }
        let Some(attempt) = down.attempt.as_mut() else {
            return Err(unavailable(&down.error));
        };
        let joined = match tokio::time::timeout(wait, attempt).await {
            // Still connecting: this group fails, the attempt goes on for the next.
            Err(_) => return Err(unavailable(&down.error)),
            Ok(joined) => joined,
        };
        down.attempt = None;
        match joined {
            Ok(Ok(conn)) => {
                tracing::info!("the ledger writer connected to PostgreSQL again");
                self.down = None;
                self.connected_at = Some(Instant::now());
                Ok(Some(conn))
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "the ledger writer could not connect to PostgreSQL");
                down.error = error;
                down.retry_at = Instant::now() + RETRY_AFTER;
                Err(unavailable(&down.error))
            }
            Err(join) => {
                down.error = join.to_string();
                down.retry_at = Instant::now() + RETRY_AFTER;
                Err(unavailable(&down.error))
            }
        }
    }
}

/// Connects the writer's connection: `options` with the settings of the module's doc.
pub(super) async fn connect(options: &PgConnectOptions) -> sqlx::Result<PgConnection> {
    let mut conn = PgConnection::connect_with(options).await?;
    sqlx::raw_sql(SERVER_LIMITS).execute(&mut conn).await?;
    Ok(conn)
}

/// How long any other statement of the writer's (the lock, the inserts, `COMMIT`) may take
/// before its connection counts as lost: far longer than a group's insert or a wait for
/// another instance's commit, far shorter than the kernel's retransmissions when the network
/// went silent in the middle of a group.
pub(super) const STATEMENT_DEADLINE: Duration = Duration::from_secs(30);

/// `statement`, answered within `wait` or counted as a lost connection.
pub(super) async fn within<T, E: Into<StoreError>>(
    wait: Duration,
    statement: &str,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(wait, fut).await {
        Ok(done) => done.map_err(Into::into),
        Err(_) => Err(unanswered(statement, wait)),
    }
}

/// `statement` had no answer within `wait`: the connection counts as lost ([`lost`]).
pub(super) fn unanswered(statement: &str, wait: Duration) -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "PostgreSQL did not answer {statement} within {} s",
            wait.as_secs()
        ),
    )))
}

/// Whether `error` says the connection itself is gone (not the statement): the server closed
/// it or is shutting down, or the socket failed or went silent. Nothing was written by a
/// statement that failed so before the group's inserts.
pub(super) fn lost(error: &StoreError) -> bool {
    match error {
        StoreError::Database(
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_),
        ) => true,
        // 08: connection exception; 57P01–57P03: the server is shutting down or starting.
        StoreError::Database(sqlx::Error::Database(e)) => e
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

fn unavailable(error: &str) -> StoreError {
    StoreError::Unavailable(format!("no connection to PostgreSQL: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_is_about_the_connection_not_the_statement() {
        assert!(lost(&unanswered("BEGIN", Duration::from_secs(1))));
        assert!(lost(&StoreError::Database(sqlx::Error::Io(
            std::io::ErrorKind::ConnectionReset.into()
        ))));
        assert!(!lost(&StoreError::Database(sqlx::Error::RowNotFound)));
        assert!(!lost(&StoreError::Invalid("a row refused".into())));
    }

    /// The server ends a transaction the writer's connection left open, and cancels a wait for
    /// the append lock before the writer's own deadline, so a connection cut halfway cannot
    /// hold the lock, or wait for it, for hours.
    #[tokio::test]
    async fn the_writers_connection_has_the_server_end_a_transaction_left_idle() {
        let Some(db) = crate::testing::postgres().await else {
            return;
        };
        let crate::Database::Postgres(url) = &db.db else {
            unreachable!("PostgreSQL")
        };
        // A database whose administrator turned durable commits off: not for the ledger.
        let options = crate::Database::pg_options(url).unwrap();
        let mut admin = PgConnection::connect_with(&options).await.unwrap();
        sqlx::raw_sql(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', \
             current_database()); END $$",
        )
        .execute(&mut admin)
        .await
        .unwrap();
        let link = PgLink::new(options, GRACE);
        let mut conn = connect(link.options()).await.unwrap();
        let settings: (String, String, String, String, String) = sqlx::query_as(
            "SELECT current_setting('idle_in_transaction_session_timeout'), \
                    current_setting('statement_timeout'), current_setting('lock_timeout'), \
                    current_setting('application_name'), current_setting('synchronous_commit')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            settings,
            (
                "30s".into(),
                "25s".into(),
                "25s".into(),
                WRITER_APPLICATION.into(),
                "on".into()
            )
        );
        // Another connection to that database has it off: the setting was in force.
        let other: (String,) = sqlx::query_as("SELECT current_setting('synchronous_commit')")
            .fetch_one(&mut PgConnection::connect_with(link.options()).await.unwrap())
            .await
            .unwrap();
        assert_eq!(other.0, "off");
    }
}
