//! PostgreSQL: whether a [`Store`](crate::Store)'s server can be reached, as it last found.
//!
//! sqlx's pool retries a refused connection until its acquire timeout and then reports only
//! "pool timed out while waiting for an open connection". So once a read finds that no
//! connection can be made (one direct attempt tells why: refused, the server shutting down,
//! no answer), a read fails at once with that reason unless the pool has an idle connection
//! that still answers. At most every [`RETRY_AFTER`], one such read tries a new connection
//! first, and the first that succeeds lets reads through again. So after a restart the
//! pool's dead connections cost a ping each, not the connect timeout each, and a server that
//! refuses only new connections (`too many clients`) keeps serving reads on the idle ones the
//! pool has (a read that finds them all busy fails rather than waits). No task runs in the
//! background.

use crate::{Result, StoreError};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long after a failed attempt the next one is made.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(500);

/// One PostgreSQL server (and database and user) as this process can reach it.
#[derive(Debug)]
pub(crate) struct Reach {
    options: PgConnectOptions,
    connect_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Set while the server is known not to be reachable.
    down: Option<Down>,
    /// A read is trying a new connection.
    attempting: bool,
}

#[derive(Debug)]
struct Down {
    /// Why, as the last attempt found.
    reason: String,
    since: Instant,
    tried: Instant,
}

impl Reach {
    /// A `Reach` of the server `options` connect to, found reachable a moment ago.
    pub(crate) fn new(options: &PgConnectOptions, connect_timeout: Duration) -> Reach {
        Reach {
            options: options.clone(),
            connect_timeout,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `read`, unless the server is known to be unreachable and `holds` finds the pool
    /// has no idle connection that answers: then it fails at once with the reason (or, when
    /// an attempt is due, after one). A read that fails because no connection could be had is
    /// answered with why.
    pub(crate) async fn run<T>(
        &self,
        holds: impl Future<Output = bool>,
        read: impl Future<Output = sqlx::Result<T>>,
    ) -> Result<T> {
        if self.is_down() && !holds.await {
            self.ready().await?;
        }
        match read.await {
            Ok(v) => Ok(v),
            Err(e) if cut_off(&e) => Err(self.found(e).await),
            Err(e) => Err(e.into()),
        }
    }

    fn is_down(&self) -> bool {
        self.state().down.is_some()
    }

    /// How long an attempt to connect may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Whether a read that needs a new connection may go to the server: yes unless it is
    /// known down; when it is and the last attempt is [`RETRY_AFTER`] old, this caller makes
    /// the next one.
    async fn ready(&self) -> Result<()> {
        {
            let mut state = self.state();
            let State { down, attempting } = &mut *state;
            match down {
                None => return Ok(()),
                Some(d) if *attempting || d.tried.elapsed() < RETRY_AFTER => {
                    return Err(unreachable(&d.reason));
                }
                Some(_) => *attempting = true,
            }
        }
        // Cleared however the attempt ends, a caller that gives up included.
        let _attempting = Attempting(self);
        let outcome = self.attempt().await;
        let mut state = self.state();
        match outcome {
            Ok(()) => {
                if let Some(d) = state.down.take() {
                    tracing::info!(
                        server = %self.server(),
                        after_secs = d.since.elapsed().as_secs_f64(),
                        "PostgreSQL can be reached again"
                    );
                }
                Ok(())
            }
            Err(reason) => {
                let e = unreachable(&reason);
                if let Some(d) = state.down.as_mut() {
                    d.reason = reason;
                    d.tried = Instant::now();
                }
                Err(e)
            }
        }
    }

    /// After a read was cut off (`e`): one direct attempt says whether the server can be
    /// reached. When it cannot, it is marked down with why; when it can, `e` was a passing
    /// failure (a connection closed under the read, a pool busy until its timeout) and is
    /// returned as it is.
    async fn found(&self, e: sqlx::Error) -> StoreError {
        if let Some(d) = &self.state().down {
            return unreachable(&d.reason);
        }
        match self.attempt().await {
            Ok(()) => e.into(),
            Err(reason) => {
                let err = unreachable(&reason);
                self.down(reason);
                err
            }
        }
    }

    /// The server could not be connected to, for `reason`: reads that need a new connection
    /// fail at once from now on, until an attempt succeeds.
    fn down(&self, reason: String) {
        let mut state = self.state();
        let now = Instant::now();
        match state.down.as_mut() {
            Some(d) => {
                d.reason = reason;
                d.tried = now;
            }
            None => {
                tracing::warn!(
                    server = %self.server(),
                    %reason,
                    "PostgreSQL cannot be reached; reads fail at once until it can"
                );
                state.down = Some(Down {
                    reason,
                    since: now,
                    tried: now,
                });
            }
        }
    }

    /// One new connection, closed at once, within the connect timeout.
    async fn attempt(&self) -> std::result::Result<(), String> {
        match tokio::time::timeout(
            self.connect_timeout,
            PgConnection::connect_with(&self.options),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Ok(())
            }
            Ok(Err(e)) => Err(crate::error::describe(&e)),
            Err(_) => Err(format!(
                "{} did not answer within {} s",
                self.server(),
                self.connect_timeout.as_secs()
            )),
        }
    }

    fn server(&self) -> String {
        format!(
            "PostgreSQL at {}:{}",
            self.options.get_host(),
            self.options.get_port()
        )
    }
}

/// Clears [`State::attempting`] when dropped.
struct Attempting<'a>(&'a Reach);

impl Drop for Attempting<'_> {
    fn drop(&mut self) {
        self.0.state().attempting = false;
    }
}

/// Whether a read failed for want of a connection (not for what it asked): the pool timed
/// out opening one, the socket failed, or the server closed it or is shutting down or
/// starting up.
fn cut_off(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // 08: connection exception; 57P01–57P03: the server is shutting down or starting.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

fn unreachable(reason: &str) -> StoreError {
    StoreError::Unreachable(reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_cut_off_by_the_connection_not_by_what_it_asked() {
        assert!(cut_off(&sqlx::Error::PoolTimedOut));
        assert!(cut_off(&sqlx::Error::Io(
            std::io::ErrorKind::ConnectionRefused.into()
        )));
        assert!(!cut_off(&sqlx::Error::RowNotFound));
        assert!(!cut_off(&sqlx::Error::ColumnNotFound("seq".into())));
    }

    fn closed_port() -> u16 {
        // A port just released: nothing listens on it (refused at once).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn reach(port: u16) -> Reach {
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("grantline")
            .database(&format!("reach_{port}"));
        Reach::new(&options, Duration::from_secs(2))
    }

    #[tokio::test]
    async fn a_server_found_unreachable_fails_reads_at_once_with_why_and_retries_in_a_while() {
        let port = closed_port();
        let reach = reach(port);
        // The pool's answer after its timeout; the reach says why.
        let first = reach
            .run(async { false }, async {
                Err::<(), _>(sqlx::Error::PoolTimedOut)
            })
            .await;
        let why = first.unwrap_err().to_string();
        assert!(why.contains("refused"), "{why}");
        // The next read is not run at all: it fails at once, with the same reason.
        let mut ran = false;
        let second = reach
            .run(async { false }, async {
                ran = true;
                Ok(())
            })
            .await;
        assert!(!ran, "a read went to a server known to be down");
        assert_eq!(second.unwrap_err().to_string(), why);
        // After RETRY_AFTER one read tries again; still refused, it fails with the reason.
        tokio::time::sleep(RETRY_AFTER).await;
        let third = reach.run(async { false }, async { Ok(()) }).await;
        assert!(third.unwrap_err().to_string().contains("refused"));
        // A pool that still holds a connection may serve the read on it: it is let through.
        assert!(reach.run(async { true }, async { Ok(()) }).await.is_ok());
        // And one the pool could not serve says why, without another attempt.
        let cut = reach
            .run(async { true }, async {
                Err::<(), _>(sqlx::Error::PoolTimedOut)
            })
            .await;
        assert_eq!(cut.unwrap_err().to_string(), why);
    }

    #[tokio::test]
    async fn a_read_that_fails_for_what_it_asked_marks_nothing() {
        let port = closed_port();
        let reach = reach(port);
        let err = reach
            .run(async { false }, async {
                Err::<(), _>(sqlx::Error::RowNotFound)
            })
            .await
            .unwrap_err();
        // Not a connection failure: returned as it is, nothing marked down.
        assert!(matches!(
            err,
            StoreError::Database(sqlx::Error::RowNotFound)
        ));
        assert!(reach.state().down.is_none());
    }
}
