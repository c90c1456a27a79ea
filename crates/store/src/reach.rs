//! PostgreSQL: whether a [`Store`](crate::Store)'s server can be reached, as it last found.
//!
//! sqlx's pool retries a refused connection until its acquire timeout, then reports only
//! "pool timed out while waiting for an open connection", and offers no way to make it give up
//! sooner. So once a statement is cut off for want of a connection and one direct attempt
//! confirms that none can be made (and says why: refused, the server shutting down, no
//! answer), the server is marked down: the reason is what every statement cut off meanwhile
//! reports, and the pool's options for *new* connections point at a socket path that does not
//! exist, so opening one fails at once (a missing path is not retried) instead of waiting the
//! acquire timeout. Idle connections still serve: a server that refuses only new connections
//! (`too many clients`) keeps serving on those the pool has. While down, a statement starts an
//! attempt in the background at most every [`RETRY_AFTER`]; the first that succeeds gives the
//! pool its options back.

use crate::{Result, StoreError};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long after a failed attempt the next one is made.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Where the pool's new connections go while the server is known to be unreachable: nowhere.
const NOWHERE: &str = "/nonexistent/grantline: PostgreSQL is known to be unreachable";

/// One PostgreSQL server as a pool reaches it.
#[derive(Debug)]
pub(crate) struct Reach {
    pool: PgPool,
    /// The pool's own options, given back when the server can be reached again.
    options: PgConnectOptions,
    connect_timeout: Duration,
    state: Mutex<State>,
    /// How many times the server came back ([`State::ups`]), for loops that back off while
    /// it is away and should not sit out the rest of their wait once it is here again.
    came_back: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Set while the server is known not to be reachable.
    down: Option<Down>,
    /// An attempt to connect runs in the background.
    attempting: bool,
    /// How many times the server came back: an attempt that fails after it did, having
    /// started before, does not mark it down again.
    ups: u64,
}

#[derive(Debug)]
struct Down {
    /// Why, as the last attempt found.
    reason: String,
    since: Instant,
    tried: Instant,
}

impl Reach {
    /// The `Reach` of `pool`, which connects with `options` (found reachable a moment ago).
    pub(crate) fn new(pool: PgPool, options: PgConnectOptions, connect_timeout: Duration) -> Reach {
        Reach {
            pool,
            options,
            connect_timeout,
            state: Mutex::default(),
            came_back: watch::Sender::new(0),
        }
    }

    /// Changes each time the server can be reached again after it was marked down.
    pub(crate) fn came_back(&self) -> watch::Receiver<u64> {
        self.came_back.subscribe()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `statement` on the pool. While the server is known to be unreachable it fails at
    /// once if it needs a new connection, and an attempt to reconnect is started when one is
    /// due. A statement cut off for want of a connection is answered with why.
    pub(crate) async fn run<T>(
        self: &Arc<Self>,
        statement: impl Future<Output = sqlx::Result<T>>,
    ) -> Result<T> {
        let began_down = self.retry_if_due();
        match statement.await {
            Ok(v) => Ok(v),
            Err(e) if cut_off(&e) => Err(self.found(e, began_down).await),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the server is known to be unreachable, and why.
    #[cfg(test)]
    fn down_because(&self) -> Option<String> {
        self.state().down.as_ref().map(|d| d.reason.clone())
    }

    /// While down, and no attempt ran for [`RETRY_AFTER`]: one in the background (no
    /// statement waits for it). The reason it is down, if it is.
    fn retry_if_due(self: &Arc<Self>) -> Option<String> {
        let reason = {
            let mut state = self.state();
            let State {
                down, attempting, ..
            } = &mut *state;
            match down {
                Some(d) if !*attempting && d.tried.elapsed() >= RETRY_AFTER => {
                    *attempting = true;
                    d.reason.clone()
                }
                Some(d) => return Some(d.reason.clone()),
                None => return None,
            }
        };
        // Made before the task, so the flag is cleared however it ends, a task dropped
        // unpolled by a runtime shutting down included.
        let attempting = Attempting(self.clone());
        tokio::spawn(async move {
            let outcome = attempting.0.attempt().await;
            attempting.0.settle(outcome);
        });
        Some(reason)
    }

    /// The outcome of an attempt made while down.
    fn settle(&self, outcome: std::result::Result<(), String>) {
        let mut state = self.state();
        match outcome {
            Ok(()) => {
                if let Some(d) = state.down.take() {
                    state.ups += 1;
                    self.pool.set_connect_options(self.options.clone());
                    self.came_back.send_replace(state.ups);
                    tracing::info!(
                        server = %self.server(),
                        after_secs = d.since.elapsed().as_secs_f64(),
                        "PostgreSQL can be reached again"
                    );
                }
            }
            Err(reason) => {
                if let Some(d) = state.down.as_mut() {
                    d.reason = reason;
                    d.tried = Instant::now();
                }
            }
        }
    }

    /// After a statement was cut off (`e`): the reason, when the server is known down, or
    /// was when the statement began (`began_down`: it came back meanwhile, and `e` may be the
    /// pool's [`NOWHERE`], which says nothing); otherwise one direct attempt says whether it
    /// can be reached. When it cannot, it is marked down with why; when it can, `e` was a
    /// passing failure (a connection closed under the statement, a pool busy until its
    /// timeout) and is returned as it is.
    async fn found(&self, e: sqlx::Error, began_down: Option<String>) -> StoreError {
        let ups = {
            let state = self.state();
            if let Some(d) = &state.down {
                return unreachable(&d.reason);
            }
            if let Some(reason) = began_down {
                return unreachable(&reason);
            }
            state.ups
        };
        match self.attempt().await {
            Ok(()) => e.into(),
            Err(reason) => {
                let err = unreachable(&reason);
                self.mark_down(ups, reason);
                err
            }
        }
    }

    /// An attempt begun when the server had come back `ups` times failed, for `reason`.
    fn mark_down(&self, ups: u64, reason: String) {
        let mut state = self.state();
        if state.ups != ups {
            // It came back while this attempt ran.
            return;
        }
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
                    "PostgreSQL cannot be reached; statements that need a new connection \
                     fail at once until it can"
                );
                self.pool
                    .set_connect_options(self.options.clone().socket(NOWHERE));
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

    /// A pool of one connection with the server's own options, for a `LISTEN`: sqlx's
    /// listener reconnects through its pool and retries an I/O error at once, so on the main
    /// pool, whose new connections fail at once while the server is down, it would spin.
    pub(crate) fn listener_pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(self.options.clone())
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
struct Attempting(Arc<Reach>);

impl Drop for Attempting {
    fn drop(&mut self) {
        self.0.state().attempting = false;
    }
}

/// Whether a statement failed for want of a connection (not for what it asked): the pool
/// timed out opening one, the socket failed, or the server closed it or is shutting down or
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
    use sqlx::postgres::PgPoolOptions;

    #[test]
    fn a_statement_is_cut_off_by_the_connection_not_by_what_it_asked() {
        assert!(cut_off(&sqlx::Error::PoolTimedOut));
        assert!(cut_off(&sqlx::Error::Io(
            std::io::ErrorKind::ConnectionRefused.into()
        )));
        assert!(!cut_off(&sqlx::Error::RowNotFound));
        assert!(!cut_off(&sqlx::Error::ColumnNotFound("seq".into())));
    }

    /// A pool (not connected yet) of a server at `options`, waiting `acquire` for a connection.
    fn reach(options: PgConnectOptions, acquire: Duration) -> Arc<Reach> {
        let pool = PgPoolOptions::new()
            .acquire_timeout(acquire)
            .connect_lazy_with(options.clone());
        Arc::new(Reach::new(pool, options, Duration::from_secs(2)))
    }

    fn nothing_listens() -> PgConnectOptions {
        // A port just released: nothing listens on it (refused at once).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("grantline")
            .database("grantline")
    }

    #[tokio::test]
    async fn a_server_found_unreachable_fails_new_connections_at_once_saying_why() {
        let reach = reach(nothing_listens(), Duration::from_secs(3));
        // The pool's answer after its retries; the reach says why, and marks it down.
        let first = reach
            .run(async { Err::<(), _>(sqlx::Error::PoolTimedOut) })
            .await;
        let why = first.unwrap_err().to_string();
        assert!(
            why.contains("cannot be reached") && why.contains("refused"),
            "{why}"
        );
        assert!(reach.down_because().is_some());
        // A statement on the pool needs a new connection: it fails at once with the same
        // reason, not after the pool's 3 s of retries.
        for _ in 0..3 {
            let started = Instant::now();
            let pool = reach.pool.clone();
            let e = reach
                .run(async move { sqlx::query("SELECT 1").execute(&pool).await })
                .await
                .unwrap_err();
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "waited {:?}",
                started.elapsed()
            );
            assert_eq!(e.to_string(), why);
        }
    }

    #[tokio::test]
    async fn a_statement_that_fails_for_what_it_asked_marks_nothing() {
        let reach = reach(nothing_listens(), Duration::from_secs(1));
        let err = reach
            .run(async { Err::<(), _>(sqlx::Error::RowNotFound) })
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::Database(sqlx::Error::RowNotFound)
        ));
        assert!(reach.down_because().is_none());
    }

    /// A statement begun while the server was down and cut off after it came back is told
    /// the outage's reason, not the error of the pool's `NOWHERE` ("No such file").
    #[tokio::test]
    async fn a_statement_cut_off_by_an_outage_that_just_ended_says_why() {
        let reach = reach(nothing_listens(), Duration::from_secs(1));
        reach.mark_down(0, "refused, then".into());
        let during = reach.clone();
        let e = reach
            .run(async move {
                during.settle(Ok(()));
                Err::<(), _>(sqlx::Error::Io(std::io::ErrorKind::NotFound.into()))
            })
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "PostgreSQL cannot be reached: refused, then");
        assert!(reach.down_because().is_none(), "back");
        assert_eq!(
            reach.pool.connect_options().get_socket(),
            None,
            "options given back"
        );
    }

    /// Marked down, a server that answers is found again by the attempt a statement starts,
    /// and the pool opens new connections to it again.
    #[tokio::test]
    async fn a_server_marked_down_is_found_again_and_gets_its_connections_back() {
        let Some(db) = crate::testing::postgres().await else {
            return;
        };
        let crate::Database::Postgres(url) = &db.db else {
            unreachable!("PostgreSQL")
        };
        let options = crate::Database::pg_options(url).unwrap();
        let reach = reach(options, Duration::from_secs(2));
        reach.mark_down(0, "refused, a while ago".into());
        let pool = reach.pool.clone();
        let select = || {
            let pool = pool.clone();
            async move { sqlx::query("SELECT 1").execute(&pool).await }
        };
        let mut came_back = reach.came_back();
        let e = reach.run(select()).await.unwrap_err();
        assert!(e.to_string().contains("a while ago"), "{e}");
        assert!(!came_back.has_changed().unwrap());
        // The attempt that statement started (due: the mark is RETRY_AFTER old) comes back.
        tokio::time::sleep(RETRY_AFTER).await;
        let back = Instant::now();
        while reach.down_because().is_some() {
            let _ = reach.run(select()).await;
            assert!(back.elapsed() < Duration::from_secs(3), "not found again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reach.run(select()).await.unwrap();
        assert!(came_back.has_changed().unwrap(), "who waits for it is told");
        assert_eq!(*came_back.borrow_and_update(), 1);
        // An attempt that began before it came back and failed after does not mark it down.
        reach.mark_down(0, "stale".into());
        assert!(reach.down_because().is_none());
    }
}
