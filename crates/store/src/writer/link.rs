//! PostgreSQL: how the ledger writer's own connection comes back after it failed — the
//! server restarted, failed over, or a proxy or the network cut the connection.
//!
//! A commit or probe that fails for any reason other than a refusal of its rows marks the
//! link down; the next group (or probe) then starts on a new connection. While no new
//! connection can be made, groups fail closed at once with the reason; attempts are made in
//! the background, at most every [`RETRY_AFTER`], each bounded by the connect timeout, so a
//! server that drops packets never holds the writer for longer than [`GRACE`] a group.

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
const GRACE: Duration = Duration::from_millis(100);

/// How long after a failed attempt the next one is made.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The writer's PostgreSQL connection's way back.
pub(super) struct PgLink {
    options: PgConnectOptions,
    connect_timeout: Duration,
    down: Option<Down>,
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
        }
    }

    /// The options the writer's first connection is made with.
    pub(super) fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// Whether the link is up, as far as the writer knows.
    pub(super) fn is_up(&self) -> bool {
        self.down.is_none()
    }

    /// After a commit or probe failed for a reason other than its rows: the connection may
    /// be unusable, so the next use starts on a new one (an attempt is made at once).
    pub(super) fn failed(&mut self, error: &StoreError) {
        if self.down.is_none() {
            tracing::warn!(error = %error,
                "the ledger writer's PostgreSQL connection failed; the next group starts on a new one");
            self.down = Some(Down {
                error: error.to_string(),
                attempt: None,
                retry_at: Instant::now(),
            });
        }
    }

    /// `Ok(None)` when the link is up; `Ok(Some(connection))`, to be used from now on, when
    /// it was down and a new connection was made; an error, and the group fails closed, while
    /// it stays down.
    pub(super) async fn restore(&mut self) -> Result<Option<PgConnection>> {
        let Some(down) = self.down.as_mut() else {
            return Ok(None);
        };
        if down.attempt.is_none() {
            if Instant::now() < down.retry_at {
                return Err(unavailable(&down.error));
            }
            let (options, wait) = (self.options.clone(), self.connect_timeout);
            down.attempt = Some(tokio::spawn(async move {
                match tokio::time::timeout(wait, PgConnection::connect_with(&options)).await {
                    Ok(Ok(conn)) => Ok(conn),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "PostgreSQL at {}:{} did not answer within {} s",
                        options.get_host(),
                        options.get_port(),
                        wait.as_secs()
                    )),
                }
            }));
        }
        let Some(attempt) = down.attempt.as_mut() else {
            return Err(unavailable(&down.error));
        };
        let joined = match tokio::time::timeout(GRACE, attempt).await {
            // Still connecting: this group fails, the attempt goes on for the next.
            Err(_) => return Err(unavailable(&down.error)),
            Ok(joined) => joined,
        };
        down.attempt = None;
        match joined {
            Ok(Ok(conn)) => {
                tracing::info!("the ledger writer connected to PostgreSQL again");
                self.down = None;
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

/// Whether `error` says the connection itself is gone (not the statement): the server closed
/// it or is shutting down, or the socket failed. Nothing was written by a statement that
/// failed so before the group's inserts.
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
