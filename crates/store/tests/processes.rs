//! Several OS processes on one ledger, and a process killed mid-append.
//!
//! The test binary re-executes itself as the child (`child_appender`), which does nothing
//! unless GRANTLINE_CHILD_DB is set.

mod common;

use common::*;
use grantline_ledger::Append;
use grantline_store::testing::TestDb;
use grantline_store::{Database, Store, backend_tests};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// The child: appends GRANTLINE_CHILD_EVENTS events one by one (or forever if 0) and prints
/// `ack <seq> <id>` after each acknowledged append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_appender() {
    let Ok(url) = std::env::var("GRANTLINE_CHILD_DB") else {
        return;
    };
    let db = Database::parse(&url).unwrap();
    let n: u64 = std::env::var("GRANTLINE_CHILD_EVENTS")
        .unwrap()
        .parse()
        .unwrap();
    let tag: u64 = std::env::var("GRANTLINE_CHILD_TAG")
        .unwrap()
        .parse()
        .unwrap();
    let ledger = grantline_store::Ledger::open(&db, grantline_store::testing::signer(), quiet())
        .await
        .unwrap();
    let mut out = std::io::stdout().lock();
    // libtest has written "test child_appender ... " without a newline: start a fresh line.
    writeln!(out).unwrap();
    let mut i = 0u64;
    while n == 0 || i < n {
        let r = ledger
            .append(Append::new(vec![tool_call(tag * 1_000_000 + i)]))
            .await
            .unwrap();
        writeln!(out, "ack {} {}", r[0].seq(), r[0].envelope.id).unwrap();
        out.flush().unwrap();
        i += 1;
    }
    ledger.shutdown().await;
}

fn spawn_child(db: &TestDb, events: u64, tag: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_appender",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GRANTLINE_CHILD_DB", db.url())
        .env("GRANTLINE_CHILD_EVENTS", events.to_string())
        .env("GRANTLINE_CHILD_TAG", tag.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn acks(child: &mut std::process::Child) -> Vec<(u64, String)> {
    let out = child.stdout.take().unwrap();
    BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let mut p = l[l.find("ack ")? + 4..].split(' ');
            Some((p.next()?.parse().ok()?, p.next()?.to_string()))
        })
        .collect()
}

backend_tests! {
    async fn two_processes_appending_at_once_make_one_valid_chain(db: TestDb) {
        // Create the schema first so the children do not race on migrations.
        open(&db).await.shutdown().await;
        let mut a = spawn_child(&db, 400, 1);
        let mut b = spawn_child(&db, 400, 2);
        let (acks_a, acks_b) = std::thread::scope(|s| {
            let ha = s.spawn(|| acks(&mut a));
            let hb = s.spawn(|| acks(&mut b));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
        assert_eq!((acks_a.len(), acks_b.len()), (400, 400));
        let store = Store::connect(&db.db, false).await.unwrap();
        let summary = verify(&store).await.unwrap();
        assert_eq!(summary.events, 800);
        let mut seqs: Vec<u64> = acks_a.iter().chain(&acks_b).map(|a| a.0).collect();
        seqs.sort();
        assert_eq!(seqs, (1..=800).collect::<Vec<_>>(), "each seq acknowledged to exactly one process");
        // On PostgreSQL both processes really interleave (the advisory lock is fair); SQLite's
        // busy handler may let one process run ahead, which is fine: the chain stays linear.
        if db.backend != "postgres" {
            return;
        }
        let a_max = acks_a.iter().map(|a| a.0).max().unwrap();
        let b_min = acks_b.iter().map(|a| a.0).min().unwrap();
        let b_max = acks_b.iter().map(|a| a.0).max().unwrap();
        let a_min = acks_a.iter().map(|a| a.0).min().unwrap();
        assert!(a_max > b_min && b_max > a_min, "appends interleaved");
    }

    async fn sigkill_mid_append_keeps_every_acknowledged_event(db: TestDb) {
        open(&db).await.shutdown().await;
        let mut child = spawn_child(&db, 0, 3);
        let out = child.stdout.take().unwrap();
        let mut reader = BufReader::new(out);
        let mut seen = Vec::new();
        let mut line = String::new();
        while seen.len() < 300 {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "child ended early");
            if let Some(rest) = line.trim().find("ack ").map(|i| &line.trim()[i + 4..]) {
                let mut p = rest.split(' ');
                seen.push((p.next().unwrap().parse::<u64>().unwrap(), p.next().unwrap().to_string()));
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Anything it printed before dying was acknowledged too.
        for l in reader.lines().map_while(Result::ok) {
            if let Some(rest) = l.find("ack ").map(|i| &l[i + 4..]) {
                let mut p = rest.split(' ');
                seen.push((p.next().unwrap().parse().unwrap(), p.next().unwrap().to_string()));
            }
        }
        let store = Store::connect(&db.db, false).await.unwrap();
        let summary = verify(&store).await.expect("the ledger verifies after SIGKILL");
        let events = store.read(0, 100_000).await.unwrap();
        assert!(summary.events >= seen.len() as u64);
        for (seq, id) in &seen {
            let e = &events[(*seq - 1) as usize];
            assert_eq!(&e.envelope.id.to_string(), id, "acknowledged event {seq} is there");
        }
        // And the ledger accepts appends again, continuing the chain.
        let ledger = open(&db).await;
        let next = append_one(&ledger, tool_call(1)).await;
        assert_eq!(next.seq(), summary.events + 1);
        assert!(verify(ledger.store()).await.is_ok());
    }
}

/// A database whose default isolation is repeatable read (set by an administrator for other
/// applications): two instances appending at once still make one chain, every append
/// answered. Under repeatable read the head a writer read under the lock could miss the
/// other's commit, and the seq it took was refused as if the append were at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_append_at_once_under_a_repeatable_read_default() {
    let Some(db) = grantline_store::testing::postgres().await else {
        return;
    };
    let Database::Postgres(url) = &db.db else {
        unreachable!()
    };
    let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    grantline_store::testing::exec(
        &db,
        &format!(
            "ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'; \
             ALTER DATABASE {name} SET synchronous_commit = off"
        ),
    )
    .await;
    let a = open(&db).await;
    let b = open(&db).await;
    let run = |ledger: grantline_store::Ledger, tag: u64| {
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in 0..150 {
                let appends = (0..4).map(|j| {
                    ledger.append(Append::new(vec![tool_call(tag * 1_000_000 + i * 10 + j)]))
                });
                for r in futures::future::join_all(appends).await {
                    if let Err(e) = r {
                        failed.push(e.to_string());
                    }
                }
            }
            ledger.shutdown().await;
            failed
        })
    };
    let (fa, fb) = (run(a, 1), run(b, 2));
    let (fa, fb) = (fa.await.unwrap(), fb.await.unwrap());
    assert!(fa.is_empty() && fb.is_empty(), "{fa:?} {fb:?}");
    let store = Store::connect(&db.db, false).await.unwrap();
    assert_eq!(verify(&store).await.unwrap().events, 1200);
}
