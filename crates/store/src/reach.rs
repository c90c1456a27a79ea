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
//!
//! A statement still waiting after [`CHECK_AFTER`] gets a direct attempt beside it (one at a
//! time, at most one every [`RETRY_AFTER`]; a statement that finds one under way or just
//! begun gets its own when one is due): when that attempt finds the server
//! gone — the connection refused, no answer, the server shutting down — the server is marked
//! down at once. The pool reads its options again before each retry of a new connection, so a
//! statement waiting for one then fails at the next retry, with why, instead of after the
//! pool's retries of a refused connection for its whole acquire timeout; a statement running
//! on a connection the pool holds is left to finish.

use crate::{Result, StoreError};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// How long after a failed attempt the next one is made.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(500);

/// How long a statement runs before a direct attempt checks, beside it, that the server can
/// be reached: longer than a read on a healthy server takes, far shorter than the pool's wait.
/// A healthy server busy with slower statements gets at most one such connection every
/// [`RETRY_AFTER`].
pub(crate) const CHECK_AFTER: Duration = Duration::from_millis(500);

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
    /// An attempt runs beside a slow statement ([`CHECK_AFTER`]).
    checking: bool,
    /// When the last attempt beside a slow statement began.
    checked_at: Option<Instant>,
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
        let mut began_down = self.retry_if_due();
        let mut statement = std::pin::pin!(statement);
        // What the check beside the statement found (a server that answers: it can be reached,
        // or it turned the client away), the server's `ups` when the check began, and when.
        let mut checked = None;
        let result = match tokio::time::timeout(CHECK_AFTER, statement.as_mut()).await {
            Ok(r) => r,
            Err(_) => loop {
                let Some((ups, mut check)) = self.check_beside(began_down.is_some()) else {
                    // Known down, its statements fail at once. Otherwise another statement's
                    // check runs or began just now: this one gets its own when one is due.
                    if began_down.is_some() || self.state().down.is_some() {
                        break statement.await;
                    }
                    match tokio::time::timeout(RETRY_AFTER, statement.as_mut()).await {
                        Ok(r) => break r,
                        Err(_) => continue,
                    }
                };
                // The check's answer (`None`: its task ended without one) and when it came;
                // the receiver is not polled again once it answered.
                let mut answered = None;
                let r = tokio::select! {
                    r = statement.as_mut() => r,
                    o = &mut check => {
                        answered = Some((o.ok(), Instant::now()));
                        statement.await
                    }
                };
                // Cut off while the check runs: its answer says why, no second attempt
                // (unless the server is known down meanwhile, which says it at once).
                if answered.is_none()
                    && matches!(&r, Err(e) if cut_off(e))
                    && self.state().down.is_none()
                {
                    answered = Some((check.await.ok(), Instant::now()));
                }
                match answered {
                    // The check marked the server down: that is why, even if it came
                    // back before the statement failed (on the pool's `NOWHERE`).
                    Some((Some(Err(f)), _)) if f.gone => began_down = Some(f.reason),
                    Some((Some(outcome), at)) => checked = Some((ups, outcome, at)),
                    _ => {}
                }
                break r;
            },
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) if cut_off(&e) => Err(self.found(e, began_down, checked).await),
            Err(e) => Err(e.into()),
        }
    }

    /// An attempt in the background beside a slow statement, unless one runs or began within
    /// [`RETRY_AFTER`], or the server is known down (its statements fail at once then): the
    /// server's `ups` now, and the attempt's outcome to come. A server found gone is marked
    /// down by the attempt itself, whether the statement still waits for it or not.
    fn check_beside(
        self: &Arc<Self>,
        began_down: bool,
    ) -> Option<(u64, oneshot::Receiver<std::result::Result<(), Failure>>)> {
        let ups = {
            let mut state = self.state();
            let recent = state.checked_at.is_some_and(|t| t.elapsed() < RETRY_AFTER);
            if began_down || state.down.is_some() || state.checking || recent {
                return None;
            }
            state.checking = true;
            state.checked_at = Some(Instant::now());
            state.ups
        };
        // Made before the task, so the flag is cleared however it ends.
        let checking = Checking(self.clone());
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = checking.0.attempt().await;
            if let Err(f) = &outcome
                && f.gone
            {
                checking.0.mark_down(ups, f.reason.clone());
            }
            drop(checking);
            let _ = tx.send(outcome);
        });
        Some((ups, rx))
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
    fn settle(&self, outcome: std::result::Result<(), Failure>) {
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
            Err(f) => {
                if let Some(d) = state.down.as_mut() {
                    d.reason = f.reason;
                    d.tried = Instant::now();
                }
            }
        }
    }

    /// After a statement was cut off (`e`): the reason, when the server is known down, or
    /// was when the statement began or during it (`began_down`: it came back meanwhile, and
    /// `e` may be the pool's [`NOWHERE`], which says nothing); otherwise one direct attempt
    /// says whether it can be reached — or what the check beside the statement found
    /// (`checked`), when it is under [`RETRY_AFTER`] old. When it cannot, it is marked down
    /// with why; when it can, `e` was a passing failure (a connection closed under the
    /// statement, a pool busy until its timeout) and is returned as it is.
    async fn found(
        &self,
        e: sqlx::Error,
        began_down: Option<String>,
        checked: Option<(u64, std::result::Result<(), Failure>, Instant)>,
    ) -> StoreError {
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
        let (ups, outcome) = match checked {
            Some((ups, outcome, at)) if at.elapsed() < RETRY_AFTER => (ups, outcome),
            _ => (ups, self.attempt().await),
        };
        match outcome {
            Ok(()) => e.into(),
            Err(f) => {
                let err = unreachable(&f.reason);
                self.mark_down(ups, f.reason);
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
    async fn attempt(&self) -> std::result::Result<(), Failure> {
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
            Ok(Err(e)) => Err(Failure {
                reason: crate::error::describe(&e),
                gone: gone(&e),
            }),
            Err(_) => Err(Failure {
                reason: format!(
                    "{} did not answer within {} s",
                    self.server(),
                    self.connect_timeout.as_secs()
                ),
                gone: true,
            }),
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

/// Why an attempt to connect failed.
#[derive(Debug)]
struct Failure {
    reason: String,
    /// The server is gone, not turning this client away: the connection refused or reset, no
    /// answer, the server shutting down or starting. Found beside a slow statement, it marks
    /// the server down at once.
    gone: bool,
}

/// Whether a failure to connect means the server is gone (see [`Failure::gone`]), not that it
/// turned this client away (`too many clients`, authentication, TLS), which leaves the pool's
/// own connections serving.
fn gone(e: &sqlx::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        // Not a local shortage (no file descriptors, no memory): that is no news of the server.
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | BrokenPipe
                | UnexpectedEof
                | TimedOut
                | HostUnreachable
                | NetworkUnreachable
                | NotFound
        ),
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

/// Clears [`State::checking`] when dropped.
struct Checking(Arc<Reach>);

impl Drop for Checking {
    fn drop(&mut self) {
        self.0.state().checking = false;
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

    /// The reach of a fresh database on the test PostgreSQL (`None` when there is none), and
    /// the database, dropped with its handle.
    async fn test_server() -> Option<(crate::testing::TestDb, Arc<Reach>)> {
        let db = crate::testing::postgres().await?;
        let crate::Database::Postgres(url) = &db.db else {
            unreachable!("PostgreSQL")
        };
        let options = crate::Database::pg_options(url).unwrap();
        let reach = reach(options, Duration::from_secs(2));
        Some((db, reach))
    }

    /// Until the check beside a statement has ended (within 5 s).
    async fn check_ended(reach: &Reach) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while reach.state().checking {
            assert!(Instant::now() < deadline, "the check did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A server on a free local port that counts each connection it accepts (one message on
    /// the channel each) and hands it to `serve`, and the options to connect to it without TLS.
    async fn fake_server<F, Fut>(
        serve: F,
    ) -> (PgConnectOptions, tokio::sync::mpsc::UnboundedReceiver<()>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, count) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (c, _) = listener.accept().await.unwrap();
                accepted.send(()).unwrap();
                tokio::spawn(serve(c));
            }
        });
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .ssl_mode(sqlx::postgres::PgSslMode::Disable)
            .username("grantline")
            .database("grantline");
        (options, count)
    }

    /// Reads a client's startup message (no TLS asked for).
    async fn startup(c: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut len = [0u8; 4];
        c.read_exact(&mut len).await.unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        c.read_exact(&mut rest).await.unwrap();
    }

    /// One message of PostgreSQL's protocol: its tag, its length, its body.
    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// As PostgreSQL refuses a connection: an error with SQLSTATE `code`.
    async fn refuse(mut c: tokio::net::TcpStream, code: &'static str, text: &'static str) {
        use tokio::io::AsyncWriteExt;
        startup(&mut c).await;
        let mut fields = Vec::new();
        for (tag, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', text)] {
            fields.push(tag);
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        c.write_all(&message(b'E', &fields)).await.unwrap();
        c.flush().await.unwrap();
    }

    /// As PostgreSQL lets a client in without a password, then holds the session until the
    /// client leaves.
    async fn welcome(mut c: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        startup(&mut c).await;
        let mut reply = message(b'R', &0u32.to_be_bytes());
        reply.extend(message(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
        reply.extend(message(b'Z', b"I"));
        c.write_all(&reply).await.unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
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
        let Some((_db, reach)) = test_server().await else {
            return;
        };
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

    /// A statement the pool keeps retrying a refused connection for (its wait is 5 s here)
    /// ends soon after the check at [`CHECK_AFTER`] marks the server down, with why.
    #[tokio::test]
    async fn a_statement_waiting_on_a_refused_server_ends_soon_after_the_check_saying_why() {
        let reach = reach(nothing_listens(), Duration::from_secs(5));
        let pool = reach.pool.clone();
        let started = Instant::now();
        let e = reach
            .run(async move { sqlx::query("SELECT 1").execute(&pool).await })
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= CHECK_AFTER && took < Duration::from_secs(2),
            "ended after {took:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains("cannot be reached") && e.contains("refused"),
            "{e}"
        );
        assert!(reach.down_because().is_some());
    }

    /// A slow statement that needs no new connection (here: no connection at all) is left to
    /// finish when the check beside it finds the server gone; the server is marked down.
    #[tokio::test]
    async fn a_statement_running_when_the_check_finds_the_server_gone_is_left_to_finish() {
        let reach = reach(nothing_listens(), Duration::from_secs(5));
        let answer = reach
            .run(async {
                tokio::time::sleep(CHECK_AFTER + Duration::from_millis(700)).await;
                Ok::<_, sqlx::Error>(7)
            })
            .await
            .unwrap();
        assert_eq!(answer, 7);
        let why = reach.down_because().expect("marked down by the check");
        assert!(why.contains("refused"), "{why}");
    }

    /// A server that answers but turns this client away (`too many clients`) is not gone:
    /// the check beside slow statements marks nothing; and two slow statements at once, done
    /// before a second check is due, get one check between them.
    #[tokio::test]
    async fn a_server_that_turns_the_client_away_is_not_marked_down_by_the_check() {
        let (options, mut checks) =
            fake_server(|c| refuse(c, "53300", "sorry, too many clients already")).await;
        let reach = reach(options, Duration::from_secs(5));
        let slow = |n| async move {
            tokio::time::sleep(CHECK_AFTER + Duration::from_millis(300)).await;
            Ok::<_, sqlx::Error>(n)
        };
        let (a, b) = tokio::join!(reach.run(slow(7)), reach.run(slow(8)));
        assert_eq!((a.unwrap(), b.unwrap()), (7, 8));
        tokio::time::timeout(Duration::from_secs(5), checks.recv())
            .await
            .expect("a check was made");
        check_ended(&reach).await;
        assert!(reach.down_because().is_none());
        assert!(checks.try_recv().is_err(), "a second check was made");
    }

    /// Against a server that accepts and never answers, a statement cut off first (here as
    /// by the pool's time-out, at 0.7 s) waits for the check under way rather than making a
    /// second attempt: it fails as the check's connect timeout ends (0.5 + 2 s), saying why,
    /// after one connection.
    #[tokio::test]
    async fn a_statement_cut_off_while_its_check_waits_on_a_silent_server_takes_its_answer() {
        // Holds each connection and says nothing.
        let (options, mut attempts) = fake_server(|c| async move {
            std::future::pending::<()>().await;
            drop(c)
        })
        .await;
        let reach = reach(options, Duration::from_secs(5));
        let started = Instant::now();
        let e = reach
            .run(async {
                tokio::time::sleep(CHECK_AFTER + Duration::from_millis(200)).await;
                Err::<(), _>(sqlx::Error::PoolTimedOut)
            })
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(2400) && took < Duration::from_secs(4),
            "{took:?}"
        );
        assert!(e.to_string().contains("did not answer within 2 s"), "{e}");
        assert!(reach.down_because().is_some());
        attempts.recv().await.unwrap();
        assert!(attempts.try_recv().is_err(), "a second attempt was made");
    }

    /// A slow statement on a healthy server finishes, and the check beside it marks nothing.
    #[tokio::test]
    async fn a_slow_statement_on_a_reachable_server_finishes_and_marks_nothing() {
        let Some((_db, reach)) = test_server().await else {
            return;
        };
        let pool = reach.pool.clone();
        reach
            .run(async move { sqlx::query("SELECT pg_sleep(1.5)").execute(&pool).await })
            .await
            .unwrap();
        assert!(reach.state().checked_at.is_some(), "a check was made");
        check_ended(&reach).await;
        assert!(reach.down_because().is_none());
    }

    /// A statement that finds another's check just begun gets one of its own when it is due:
    /// the first check (beside `a`) finds the server, which then starts to shut down (57P03),
    /// and the check made 0.5 s later beside `b` marks it down while `b` still waits.
    #[tokio::test]
    async fn a_statement_that_found_a_check_just_begun_gets_its_own_when_due() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let served = Arc::new(AtomicUsize::new(0));
        let (options, mut connections) = fake_server(move |c| {
            let first = served.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    welcome(c).await
                } else {
                    refuse(c, "57P03", "the database system is shutting down").await
                }
            }
        })
        .await;
        let reach = reach(options, Duration::from_secs(5));
        let slow = |secs: f64| async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Ok::<_, sqlx::Error>(())
        };
        let started = Instant::now();
        let a = tokio::spawn({
            let reach = reach.clone();
            async move { reach.run(slow(4.0)).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = tokio::spawn({
            let reach = reach.clone();
            async move { reach.run(slow(3.5)).await }
        });
        // `b`'s own check is due at 1.2 s (`a`'s began at 0.5 s); without it, nothing would
        // look before `b` ends at 3.7 s.
        tokio::time::sleep(Duration::from_millis(2500) - started.elapsed()).await;
        let why = reach.down_because().expect("marked down by b's own check");
        assert!(why.contains("shutting down"), "{why}");
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        let mut made = 0;
        while connections.try_recv().is_ok() {
            made += 1;
        }
        assert_eq!(made, 2, "connections the checks made");
    }
}
