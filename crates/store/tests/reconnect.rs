//! PostgreSQL: the ledger writer's own connection comes back after the server dropped it — a
//! restart, a failover, a proxy's idle timeout. While no connection can be made, appends fail
//! closed at once with the reason; once one can, the writer goes on without a restart.

mod common;

use common::*;
use grantline_ledger::*;
use grantline_store::testing::{self, TestDb};
use grantline_store::{Database, StoreError};
use sqlx::Connection;
use std::time::{Duration, Instant};

/// A connection to the test database of its own, that outlives whatever the test terminates.
async fn admin(db: &TestDb) -> sqlx::PgConnection {
    let Database::Postgres(url) = &db.db else {
        unreachable!("PostgreSQL tests only")
    };
    sqlx::PgConnection::connect(url).await.unwrap()
}

/// Terminates the writer's connections (its own and the side one); returns how many of the
/// writer's own there were.
async fn drop_writer(admin: &mut sqlx::PgConnection) -> usize {
    let killed: Vec<(String, bool)> = sqlx::query_as(
        "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() \
           AND application_name IN ('grantline-ledger-writer', 'grantline-ledger-side')",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(killed.iter().all(|(_, ok)| *ok), "{killed:?}");
    killed
        .iter()
        .filter(|(name, _)| name == "grantline-ledger-writer")
        .count()
}

async fn writer_connections(admin: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'grantline-ledger-writer'",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

/// The server dropped the writer's idle connection: the next append finds it gone at its first
/// statement, before anything is written, and is written on a new connection — the caller
/// never sees the drop.
#[tokio::test]
async fn an_append_after_the_writers_connection_was_dropped_is_written_on_a_new_one() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let mut admin = admin(&db).await;
    let ledger = open_with(&db, quiet()).await;
    let mut answers = vec![append_one(&ledger, tool_call(0)).await];
    assert_eq!(
        writer_connections(&mut admin).await,
        1,
        "named in pg_stat_activity"
    );

    assert_eq!(drop_writer(&mut admin).await, 1);
    let r = ledger
        .append(Append::new(vec![tool_call(1)]))
        .await
        .expect("written on a new connection");
    assert_eq!(r[0].seq(), 2);
    answers.extend(r);
    assert!(ledger.healthy());
    assert_eq!(writer_connections(&mut admin).await, 1);

    // And again, many appends at once (groups planned ahead on the side connection too).
    assert_eq!(drop_writer(&mut admin).await, 1);
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.append(Append::new(vec![tool_call(10 + i)])).await })
        })
        .collect();
    for t in tasks {
        answers.extend(t.await.unwrap().expect("written on a new connection"));
    }
    assert!(ledger.healthy());
    assert_eq!(verify(ledger.store()).await.unwrap().events, 66);
    let stored = ledger.store().read(0, 100).await.unwrap();
    assert_eq!(stored.len(), answers.len());
}

/// The database takes no connections for a while (a server restarting, a failover under way):
/// appends fail closed at once, saying why, nothing is written and the write probe says the
/// ledger is not writable; once connections are taken again the writer goes on by itself.
#[tokio::test]
async fn while_no_connection_can_be_made_appends_fail_closed_and_the_writer_comes_back() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let mut admin = admin(&db).await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    // The test database's own connections cannot close it to new ones: the cluster's can.
    let mut cluster = sqlx::PgConnection::connect(db.pg_admin.as_deref().unwrap())
        .await
        .unwrap();
    let ledger = open_with(&db, quiet()).await;
    append_one(&ledger, tool_call(0)).await;

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false"
    )))
    .execute(&mut cluster)
    .await
    .unwrap();
    assert_eq!(drop_writer(&mut admin).await, 1);
    for i in 0..3u64 {
        let started = Instant::now();
        match ledger.append(Append::new(vec![tool_call(1 + i)])).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("not currently accepting connections"), "{m}")
            }
            other => panic!("append {i} while no connection can be made: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "failed at once, not after a time-out: {:?}",
            started.elapsed()
        );
        assert!(!ledger.healthy());
    }
    assert!(ledger.probe().await.is_err());
    assert_eq!(writer_connections(&mut admin).await, 0);

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
    )))
    .execute(&mut cluster)
    .await
    .unwrap();
    // The probe (as `/readyz` runs it) finds the ledger writable again, within a few retries.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.probe().await.is_err() {
        assert!(Instant::now() < deadline, "the writer did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ledger.healthy());
    let r = append_one(&ledger, tool_call(99)).await;
    assert_eq!(r.seq(), 2, "nothing of the failed appends was written");
    assert_eq!(verify(ledger.store()).await.unwrap().events, 2);
}

/// Forwards connections to PostgreSQL. Frozen, it holds what either side sends and keeps the
/// connections open, as a network that silently drops packets does; stopped, its port
/// refuses connections, as a server that is down does.
struct Proxy {
    addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    closing: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to`, holding each read while `gate` says frozen.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *gate.borrow_and_update() {
            if gate.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn to(url: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Proxy::serve(listener, url)
    }

    fn serve(listener: tokio::net::TcpListener, url: &str) -> Proxy {
        use std::str::FromStr;
        let o = sqlx::postgres::PgConnectOptions::from_str(url).unwrap();
        let upstream = format!("{}:{}", o.get_host(), o.get_port());
        let addr = listener.local_addr().unwrap();
        let (frozen, gate) = tokio::sync::watch::channel(false);
        let (closing, mut closed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => break,
                    },
                    _ = closed.changed() => break,
                };
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                open.spawn(pipe(cr, sw, gate.clone()));
                open.spawn(pipe(sr, cw, gate.clone()));
            }
            // The port closed; the connections forwarded so far go on until `stop`.
            drop(listener);
            std::future::pending::<()>().await;
        });
        Proxy {
            addr,
            frozen,
            closing,
            task,
        }
    }

    /// A stopped proxy's port forwarding again (the server is back).
    async fn restart(addr: std::net::SocketAddr, url: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Proxy::serve(listener, url)
    }

    /// The URL `url` becomes through the proxy.
    fn url(&self, url: &str) -> String {
        use std::str::FromStr;
        let o = sqlx::postgres::PgConnectOptions::from_str(url).unwrap();
        url.replace(
            &format!("{}:{}", o.get_host(), o.get_port()),
            &self.addr.to_string(),
        )
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Closes the port (new connections are refused); those forwarded so far go on.
    fn close_port(&self) {
        self.closing.send_replace(true);
    }

    /// Closes every forwarded connection and the port.
    fn stop(self) {
        self.task.abort();
    }
}

/// The network between the writer and PostgreSQL silently drops everything (a firewall that
/// forgot the connection, a cable pulled): the next group's `BEGIN` is unanswered, and after
/// the connect timeout the connection counts as lost and a new one is tried, which does not
/// answer either — the appends fail closed within seconds instead of waiting for the kernel's
/// retransmissions (~15 minutes). When the network is back, the writer goes on.
#[tokio::test]
async fn a_network_that_drops_everything_fails_appends_within_the_connect_timeout() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let Database::Postgres(url) = &db.db else {
        unreachable!()
    };
    let proxy = Proxy::to(url).await;
    let through = Database::parse(&format!("{}?connect_timeout=1", proxy.url(url))).unwrap();
    let ledger = grantline_store::Ledger::open(&through, testing::signer(), quiet())
        .await
        .unwrap();
    append_one(&ledger, tool_call(0)).await;

    proxy.freeze(true);
    let started = Instant::now();
    let r = ledger.append(Append::new(vec![tool_call(1)])).await;
    let took = started.elapsed();
    match r {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("did not answer"), "{m}"),
        other => panic!("append over a silent network: {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "failed after {took:?}");
    assert!(!ledger.healthy());

    proxy.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.probe().await.is_err() {
        assert!(Instant::now() < deadline, "the writer did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(append_one(&ledger, tool_call(2)).await.seq(), 2);
    assert_eq!(verify(ledger.store()).await.unwrap().events, 2);
    proxy.stop();
}

/// A commit that fails for a reason that is not the connection's (here the database fails
/// the row with an internal error, as a full disk would) keeps the connection: the next group
/// is written on the same one, not on a new connection made at every group.
#[tokio::test]
async fn a_failure_that_is_not_the_connections_keeps_the_connection() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let mut admin = admin(&db).await;
    let ledger = open_with(&db, quiet()).await;
    append_one(&ledger, tool_call(0)).await;
    let pid = || {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'grantline-ledger-writer'",
        )
    };
    let before = pid().fetch_all(&mut admin).await.unwrap();
    assert_eq!(before.len(), 1);
    exec(
        ledger.store(),
        "CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           RAISE EXCEPTION 'could not extend file' USING ERRCODE = '53100'; END $$; \
         CREATE TRIGGER broken BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION broken()",
    )
    .await
    .unwrap();
    for i in 0..3 {
        match ledger.append(Append::new(vec![tool_call(1 + i)])).await {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("could not extend file"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(!ledger.healthy());
    exec(ledger.store(), "DROP TRIGGER broken ON events")
        .await
        .unwrap();
    assert_eq!(append_one(&ledger, tool_call(9)).await.seq(), 2);
    assert_eq!(
        pid().fetch_all(&mut admin).await.unwrap(),
        before,
        "the same connection"
    );
}

/// A store of `url` through `proxy`, connecting within 5 s: longer than the reads that fail
/// "at once" below may take.
async fn store_through(proxy: &Proxy, url: &str) -> grantline_store::Store {
    let store = grantline_store::Store::connect(
        &Database::parse(&format!("{}?connect_timeout=5", proxy.url(url))).unwrap(),
        false,
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

/// A fresh test database (dropped with its handle), its URL, a proxy in front of it and a
/// migrated store reading through the proxy; `None` without a test PostgreSQL.
async fn proxied() -> Option<(TestDb, String, Proxy, grantline_store::Store)> {
    let db = testing::postgres().await?;
    let Database::Postgres(url) = &db.db else {
        unreachable!()
    };
    let url = url.clone();
    let proxy = Proxy::to(&url).await;
    let store = store_through(&proxy, &url).await;
    Some((db, url, proxy, store))
}

fn pg_pool(store: &grantline_store::Store) -> &sqlx::PgPool {
    let grantline_store::Pool::Postgres(pool) = store.pool() else {
        unreachable!("PostgreSQL")
    };
    pool
}

/// While PostgreSQL is down (its port refuses connections), the first read that needs a new
/// connection fails soon after the half second at which a direct attempt beside it finds the
/// port refused — not after the connect timeout (the URL's `connect_timeout`, 5 s here) for
/// which the pool retries a refused connection, nor after sqlx's default 30 s — and says
/// "refused", not "pool timed out"; the reads after it fail at once with the same reason; and
/// once the server is back, reads go through again.
#[tokio::test]
async fn reads_while_postgresql_is_down_say_why_and_fail_at_once_after_the_first() {
    let Some((_db, url, proxy, store)) = proxied().await else {
        return;
    };
    let (url, addr) = (url.as_str(), proxy.addr);
    assert_eq!(store.count().await.unwrap(), 0);
    // The pool holds several connections, all of them dead once the server goes.
    let pool = pg_pool(&store);
    let sleep = || sqlx::query("SELECT pg_sleep(0.2)").execute(pool);
    futures::future::try_join_all((0..4).map(|_| sleep()))
        .await
        .unwrap();
    // Given back to the pool by tasks of their own: idle a moment later.
    let deadline = Instant::now() + Duration::from_secs(2);
    while pool.num_idle() < 4 {
        assert!(Instant::now() < deadline, "{} idle", pool.num_idle());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    proxy.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first read finds the pooled connections dead, and the pool retries a new one;
    // the attempt made beside it after half a second finds the port refused and marks the
    // server down, and the pool's next retry ends the read with why.
    let started = Instant::now();
    let read = store.count().await;
    let took = started.elapsed();
    let Err(first) = read else {
        panic!("read through a port that refuses: {read:?}")
    };
    assert!(
        took < Duration::from_secs(2),
        "failed after {took:?}, not soon after the check at 0.5 s: {first}"
    );
    let first = first.to_string();
    assert!(
        first.contains("cannot be reached") && first.contains("refused"),
        "{first}"
    );
    // The reads after it fail at once: the pool's other connections are found dead by a
    // ping each, and a new one is known not to be had.
    for _ in 0..3 {
        let started = Instant::now();
        let e = store.hash_at(1).await.unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "waited {:?}: {e}",
            started.elapsed()
        );
        assert!(e.contains("refused"), "{e}");
    }

    // Back: within a retry period, reads go through again.
    let _proxy = Proxy::restart(addr, url).await;
    let back = Instant::now();
    while let Err(e) = store.count().await {
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "reads did not come back: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An attempt at most every 0.5 s: well within 2 s, even on a busy machine.
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
}

/// PostgreSQL refuses new connections (`too many clients`, a `pg_hba.conf` change, a pooler at
/// its limit) while the pool's own connections still work. A statement that needs a new one
/// fails soon after the check beside it, saying why; from then on statements are served on the
/// pool's connections as before, and one that needs a new connection fails at once, until a
/// new connection can be made again.
#[tokio::test]
async fn while_only_new_connections_are_refused_the_pools_own_still_serve() {
    let Some((_db, url, proxy, store)) = proxied().await else {
        return;
    };
    let (url, addr) = (url.as_str(), proxy.addr);
    let pool = pg_pool(&store).clone();
    // `n` statements at once on the pool, holding `n` connections for `secs`.
    let busy_for = |n: usize, secs: f64| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let sql = format!("SELECT pg_sleep({secs})");
            let sleep = || sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&pool);
            futures::future::try_join_all((0..n).map(|_| sleep()))
                .await
                .map(|_| ())
        })
    };
    // Until every connection the pool holds is back in it, idle (sqlx gives them back from a
    // task of their own, a moment after a statement ends).
    let all_idle = || async {
        let deadline = Instant::now() + Duration::from_secs(2);
        while pool.num_idle() != pool.size() as usize {
            assert!(
                Instant::now() < deadline,
                "{} of {} idle",
                pool.num_idle(),
                pool.size()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // Until the busy statements hold every connection.
    let none_idle = || async {
        let deadline = Instant::now() + Duration::from_secs(2);
        while pool.num_idle() != 0 {
            assert!(Instant::now() < deadline, "{} idle", pool.num_idle());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    busy_for(3, 0.1).await.unwrap().unwrap();
    all_idle().await;
    // Keeping them all busy leaves none for another statement.
    let size = pool.size();
    assert!(size >= 3, "{size}");
    let all_busy = |secs: f64| busy_for(size as usize, secs);

    proxy.close_port();
    // All busy: one more statement needs a new connection, which is refused.
    let busy = all_busy(1.5);
    none_idle().await;
    let started = Instant::now();
    let e = store.count().await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not soon after the check at 0.5 s: {:?}",
        started.elapsed()
    );
    assert!(
        e.contains("cannot be reached") && e.contains("refused"),
        "{e}"
    );
    busy.await
        .unwrap()
        .expect("served on the pool's own connections");
    all_idle().await;

    // Known down, statements are served on the connections the pool has.
    for _ in 0..5 {
        assert_eq!(store.count().await.unwrap(), 0);
    }
    assert_eq!(pool.size(), size, "no connection was dropped");
    all_idle().await;
    // One that needs a new connection fails at once.
    let busy = all_busy(0.5);
    none_idle().await;
    let started = Instant::now();
    let e = store.count().await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "waited {:?}: {e}",
        started.elapsed()
    );
    assert!(e.contains("refused"), "{e}");
    busy.await.unwrap().unwrap();
    all_idle().await;

    // New connections are taken again (the port open again, the old connections kept): a
    // statement beside the busy ones is served, once the attempt it starts has succeeded.
    let _reopened = Proxy::restart(addr, url).await;
    let back = Instant::now();
    loop {
        let busy = all_busy(0.3);
        none_idle().await;
        let third = store.count().await;
        busy.await.unwrap().unwrap();
        all_idle().await;
        if third.is_ok() {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "{third:?}");
    }
}

/// CPU time this thread has used so far (Linux's `/proc/thread-self/schedstat`, in ns), when
/// the kernel keeps it. A `#[tokio::test]` runs its tasks on its one thread, so this is what
/// the test's tasks spent.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// A follower of the ledger with `LISTEN` (an exporter, another instance's indexer) waits for
/// a notification when PostgreSQL goes away, and the process's other reads find it gone
/// meanwhile. sqlx's listener reconnects at once after an I/O error, and again at once while
/// connecting fails with one: on the main pool, whose new connections fail at once once the
/// server is known down, that was a busy loop until the wait ended. On a pool of its own its
/// attempts wait as connecting does. The follower is told the server cannot be reached, and
/// once it is back it is woken by the next append's notification.
#[tokio::test]
async fn a_follower_waiting_on_listen_when_postgresql_goes_away_does_not_spin_and_comes_back() {
    if thread_cpu().is_none() {
        eprintln!("skipped: no /proc/thread-self/schedstat to measure CPU time with");
        return;
    }
    let Some((db, url, proxy, store)) = proxied().await else {
        return;
    };
    let (url, addr) = (url.as_str(), proxy.addr);
    // The writer is another process's, on a connection of its own that the outage spares.
    let ledger = open_with(&db, quiet()).await;
    append_one(&ledger, tool_call(0)).await;
    let mut tail = grantline_store::Tail::new(&store, 0, None).await.unwrap();
    assert_eq!(tail.next(10).await.unwrap().len(), 1);

    // Waiting on LISTEN (nothing new) when the server goes.
    let waiting = tokio::spawn(async move {
        let r = tail.next(10).await;
        (tail, r)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "nothing new, yet the wait ended");
    let cpu = thread_cpu().unwrap_or_default();
    proxy.stop();
    // The process's other work finds the server gone meanwhile, as a server's does.
    let reader = store.clone();
    let others = tokio::spawn(async move {
        loop {
            let _ = reader.count().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (mut tail, r) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the follower kept waiting after the server went")
        .unwrap();
    let spent = thread_cpu().unwrap_or_default().saturating_sub(cpu);
    others.abort();
    let e = r.expect_err("a read while the server is down").to_string();
    assert!(e.contains("refused"), "{e}");
    // The wait ends a second after it began (the follower's own time-out). Reconnecting
    // through the main pool was a busy loop from when the other reads marked the server down
    // (about half a second in) to then: ~300 ms of CPU here. Attempts that wait cost ~6 ms.
    assert!(
        spent < Duration::from_millis(100),
        "{spent:?} of CPU while waiting"
    );

    let _proxy = Proxy::restart(addr, url).await;
    let back = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), tail.next(10)).await {
            Ok(Ok(events)) => panic!("nothing was appended, yet {events:?}"),
            Ok(Err(_)) => {
                assert!(
                    back.elapsed() < Duration::from_secs(5),
                    "reads did not come back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => break,
        }
    }
    // Reads work again and the follower waits; an append's notification wakes it. Without
    // one it would read again only when its one-second wait ends, ~0.9 s after the append.
    let waiting = tokio::spawn(async move { tail.next(10).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    append_one(&ledger, tool_call(1)).await;
    let appended = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the follower did not see the append")
        .unwrap()
        .unwrap();
    assert_eq!(got.iter().map(|r| r.seq()).collect::<Vec<_>>(), vec![2]);
    assert!(
        appended.elapsed() < Duration::from_millis(500),
        "seen {:?} after the append: not woken by its notification",
        appended.elapsed()
    );
}
