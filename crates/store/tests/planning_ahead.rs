//! PostgreSQL: while one group commit is inserted and committed, the writer takes the next
//! group from the queue and plans it on the head the current one will leave. A group planned
//! ahead is committed as planned only if the head under its lock is that head; when the group
//! before failed, or another process appended in between, it is planned again from what is
//! in the database — including the expectations it had decided on assumed versions.
//!
//! Each scene holds the append lock from another connection so that the groups form as the
//! test says: the writer blocks on the lock with its first group, the rest queue behind it.

mod common;

use common::*;
use grantline_ledger::*;
use grantline_store::testing;
use grantline_store::{GroupCommit, Ledger, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::task::JoinHandle;

type Outcome = Result<Vec<Recorded>, StoreError>;

/// Sends an append to the writer's queue and lets it get there before the next one.
async fn send(ledger: &Ledger, append: Append) -> JoinHandle<Outcome> {
    let ledger = ledger.clone();
    let task = tokio::spawn(async move { ledger.append(append).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    task
}

/// Each group commit seen: appends, events, whether it committed, whether it was planned ahead.
fn groups(commits: &Mutex<Vec<GroupCommit>>) -> Vec<(usize, usize, bool, Option<bool>)> {
    let commits = commits.lock().unwrap();
    commits
        .iter()
        .map(|c| (c.appends, c.events, c.ok, c.planned_ahead))
        .collect()
}

/// Runs the PL/pgSQL `body` before each row is inserted into `events` (a trigger, as an
/// operator's or an attacker's could be): to slow a group down or have the database fail it.
async fn before_insert(ledger: &Ledger, body: &str) {
    let sql = format!(
        "CREATE FUNCTION before_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           {body} RETURN NEW; END $$; \
         CREATE TRIGGER before_insert BEFORE INSERT ON events \
           FOR EACH ROW EXECUTE FUNCTION before_insert()"
    );
    exec(ledger.store(), &sql).await.unwrap();
}

fn disabled(id: &str, n: u64) -> NewEvent {
    NewEvent::new(
        StreamId::client(id),
        Actor::System,
        ClientDisabled {
            client_id: id.into(),
            reason: format!("test {n}"),
        },
    )
}

async fn outcome(task: JoinHandle<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("every append is answered")
        .unwrap()
}

fn conflict(outcome: &Outcome) -> (ExpectedVersion, u64) {
    match outcome {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => (*expected, *actual),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn ok(outcome: Outcome) -> Vec<Recorded> {
    outcome.unwrap_or_else(|e| panic!("append failed: {e}"))
}

/// Signs a checkpoint over everything (so the Merkle frontier the writer carried is checked)
/// and checks the ledger: it verifies, holds `events` events, every stream's versions run
/// 1, 2, 3, …, and every answer an appender got is the row the database holds.
async fn check(ledger: &Ledger, events: u64, answers: &[Recorded]) {
    assert_eq!(ledger.checkpoint().await.unwrap(), Some(events));
    let summary = verify(ledger.store()).await.unwrap();
    assert_eq!(summary.events, events);
    assert!(summary.checkpoints >= 1);
    let rows = ledger.store().read(0, 10_000).await.unwrap();
    assert_eq!(rows.len() as u64, events);
    let mut last: HashMap<StreamId, u64> = HashMap::new();
    for r in &rows {
        let v = last.entry(r.envelope.stream.clone()).or_insert(0);
        assert_eq!(r.envelope.version, *v + 1, "stream {}", r.envelope.stream);
        *v += 1;
    }
    for a in answers {
        let row = &rows[a.seq() as usize - 1];
        assert_eq!(
            (
                row.envelope.id,
                row.envelope.version,
                row.prev_hash,
                row.hash
            ),
            (a.envelope.id, a.envelope.version, a.prev_hash, a.hash),
            "seq {}",
            a.seq()
        );
    }
}

/// The next group is planned while the one before commits, on that group's versions (still
/// uncommitted) and on versions read for it on the side connection, and committed as planned.
#[tokio::test]
async fn a_group_planned_while_the_one_before_commits_is_committed_as_planned() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    // A stream another process wrote: the writer below has never seen its version.
    let before = open_with(&db, quiet()).await;
    for n in 1..=3 {
        append_one(&before, disabled("old", n)).await;
    }
    before.shutdown().await;

    let (options, commits) = recording();
    let ledger = open_with(&db, options).await;
    let hold = hold_append_lock(&db).await;
    let a = send(
        &ledger,
        Append::new(vec![client_registered("a")])
            .expect(StreamId::client("a"), ExpectedVersion::NoStream),
    )
    .await;
    // The writer holds group 1 (`a`) and waits for the lock; these queue behind it.
    let on_a = send(
        &ledger,
        Append::new(vec![disabled("a", 1)])
            .expect(StreamId::client("a"), ExpectedVersion::Exactly(1)),
    )
    .await;
    let a_again = send(
        &ledger,
        Append::new(vec![client_registered("a")])
            .expect(StreamId::client("a"), ExpectedVersion::NoStream),
    )
    .await;
    let on_old = send(
        &ledger,
        Append::new(vec![disabled("old", 4)])
            .expect(StreamId::client("old"), ExpectedVersion::Exactly(3)),
    )
    .await;
    let old_stale = send(
        &ledger,
        Append::new(vec![disabled("old", 5)])
            .expect(StreamId::client("old"), ExpectedVersion::Exactly(3)),
    )
    .await;
    let mut calls = Vec::new();
    for i in 0..20 {
        calls.push(send(&ledger, Append::new(vec![tool_call(i)])).await);
    }
    hold.release().await;

    let mut answers = ok(outcome(a).await);
    assert_eq!(answers[0].seq(), 4);
    let on_a = ok(outcome(on_a).await);
    assert_eq!(
        (on_a[0].seq(), on_a[0].envelope.version),
        (5, 2),
        "on the version of the group before"
    );
    assert_eq!(
        conflict(&outcome(a_again).await),
        (ExpectedVersion::NoStream, 2)
    );
    let on_old = ok(outcome(on_old).await);
    assert_eq!(
        (on_old[0].seq(), on_old[0].envelope.version),
        (6, 4),
        "on the version read aside"
    );
    assert_eq!(
        conflict(&outcome(old_stale).await),
        (ExpectedVersion::Exactly(3), 4)
    );
    answers.extend(on_a);
    answers.extend(on_old);
    for (i, c) in calls.into_iter().enumerate() {
        let r = ok(outcome(c).await);
        assert_eq!(r[0].seq(), 7 + i as u64);
        answers.extend(r);
    }

    let seen = groups(&commits);
    assert_eq!(
        seen,
        vec![(1, 1, true, None), (24, 24, true, Some(true))],
        "group 2 was planned during group 1's commit and committed as planned"
    );
    check(&ledger, 26, &answers).await;
}

/// Appends that arrive while the current group is inserted are taken at the start of its
/// commit step and planned into the next group too: the next group is what came during the
/// current one's write.
#[tokio::test]
async fn appends_that_came_while_a_group_was_planned_ahead_join_it() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let (options, commits) = recording();
    let ledger = open_with(&db, options).await;
    // Group 1's insert takes 600 ms: time for more appends to come after group 2 was planned.
    before_insert(
        &ledger,
        "IF NEW.stream = 'client:slow' THEN PERFORM pg_sleep(0.6); END IF;",
    )
    .await;
    let hold = hold_append_lock(&db).await;
    let slow = send(&ledger, Append::new(vec![client_registered("slow")])).await;
    let mut planned = Vec::new();
    for i in 0..5 {
        planned.push(send(&ledger, Append::new(vec![disabled("fast", i)])).await);
    }
    hold.release().await;
    // Group 1 is inserting; group 2 (the five above) is planned. These come now, and are
    // planned into group 2 while group 1 commits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = Vec::new();
    for i in 5..8 {
        late.push(send(&ledger, Append::new(vec![disabled("fast", i)])).await);
    }
    let mut answers = ok(outcome(slow).await);
    for (i, task) in planned.into_iter().chain(late).enumerate() {
        let r = ok(outcome(task).await);
        assert_eq!(
            (r[0].seq(), r[0].envelope.version),
            (2 + i as u64, 1 + i as u64)
        );
        answers.extend(r);
    }
    let seen = groups(&commits);
    assert_eq!(
        seen,
        vec![(1, 1, true, None), (8, 8, true, Some(true))],
        "the three late appends joined the five planned ahead"
    );
    check(&ledger, 9, &answers).await;
}

/// The group before fails (the database refuses its row): the group planned on top of it is
/// planned again, and what it had decided on the failed group's versions is decided again.
#[tokio::test]
async fn a_group_planned_ahead_of_a_failed_commit_is_planned_again() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let (options, commits) = recording();
    let ledger = open_with(&db, options).await;
    let first = append_one(&ledger, tool_call(0)).await;
    before_insert(
        &ledger,
        "IF NEW.stream = 'client:poison' THEN RAISE EXCEPTION 'poisoned row'; END IF;",
    )
    .await;
    commits.lock().unwrap().clear();

    let hold = hold_append_lock(&db).await;
    let poison = send(
        &ledger,
        Append::new(vec![client_registered("poison")])
            .expect(StreamId::client("poison"), ExpectedVersion::NoStream),
    )
    .await;
    // Planned ahead on `poison` being written: this one passes on version 1 …
    let after_poison = send(
        &ledger,
        Append::new(vec![tool_call(1)])
            .expect(StreamId::client("poison"), ExpectedVersion::Exactly(1)),
    )
    .await;
    // … and this one is a conflict on it. Neither holds once `poison` is refused.
    let before_poison = send(
        &ledger,
        Append::new(vec![tool_call(2)])
            .expect(StreamId::client("poison"), ExpectedVersion::NoStream),
    )
    .await;
    let mut calls = Vec::new();
    for i in 3..13 {
        calls.push(send(&ledger, Append::new(vec![tool_call(i)])).await);
    }
    hold.release().await;

    match outcome(poison).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("poisoned row"), "{m}"),
        other => panic!("the poisoned append: {other:?}"),
    }
    assert_eq!(
        conflict(&outcome(after_poison).await),
        (ExpectedVersion::Exactly(1), 0),
        "decided again on the version in the database"
    );
    let mut answers = vec![first];
    let before_poison = ok(outcome(before_poison).await);
    assert_eq!(before_poison[0].seq(), 2);
    answers.extend(before_poison);
    for (i, c) in calls.into_iter().enumerate() {
        let r = ok(outcome(c).await);
        assert_eq!(r[0].seq(), 3 + i as u64);
        answers.extend(r);
    }
    assert!(
        ledger.healthy(),
        "a refused row does not fail the ledger closed"
    );
    let seen = groups(&commits);
    assert_eq!(seen, vec![(1, 1, false, None), (12, 12, true, Some(false))]);
    check(&ledger, 12, &answers).await;
}

/// Under load, groups holding a row the database refuses are committed again in halves
/// while the next group, taken during their write, waits: every appender gets its answer —
/// the refused ones theirs, the others their rows — and the chain holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_refused_rows_fail_alone_and_every_appender_is_answered() {
    under_load_with_poisoned_rows("P0001").await;
}

/// The same when the database fails the whole group (an error that is not a refusal of the
/// rows): the ledger fails closed for that group — each of its appenders is told the ledger
/// is unavailable, none is answered from what the group had decided — and goes on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_failed_groups_answer_every_appender_and_the_ledger_goes_on() {
    under_load_with_poisoned_rows("XX000").await;
}

/// 96 appenders of 20 appends each (groups of more than 32, where the writer plans ahead for
/// as long as a write lasts); one append in seven is a row the database fails with the
/// SQLSTATE `code`.
async fn under_load_with_poisoned_rows(code: &str) {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let (options, commits) = recording();
    let ledger = open_with(&db, options).await;
    before_insert(
        &ledger,
        &format!(
            "IF NEW.stream LIKE 'client:poison%' THEN \
               RAISE EXCEPTION 'poisoned row' USING ERRCODE = '{code}'; \
             END IF;"
        ),
    )
    .await;
    let refusal = code == "P0001";
    let mut tasks = Vec::new();
    for t in 0..96u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut failed = 0;
            for i in 0..20u64 {
                let poisoned = (t + i) % 7 == 0;
                let event = if poisoned {
                    client_registered(&format!("poison{t}x{i}"))
                } else {
                    tool_call(t * 100 + i)
                };
                let append = ledger.append(Append::new(vec![event]));
                let outcome = tokio::time::timeout(Duration::from_secs(20), append)
                    .await
                    .expect("every append is answered");
                match outcome {
                    Ok(r) if !poisoned => answers.extend(r),
                    Err(StoreError::Invalid(m))
                        if poisoned && refusal && m.contains("poisoned row") =>
                    {
                        failed += 1
                    }
                    // A failed group fails each of its appends, closed: nothing of it was
                    // written, and the ledger says it could not write.
                    Err(StoreError::Unavailable(m)) if !refusal && m.contains("poisoned row") => {
                        failed += 1
                    }
                    other => panic!("append {t}/{i} (poisoned: {poisoned}): {other:?}"),
                }
            }
            (answers, failed)
        }));
    }
    let mut answers = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (a, f) = t.await.unwrap();
        answers.extend(a);
        failed += f;
    }
    assert_eq!(answers.len() + failed, 96 * 20);
    if refusal {
        let poisoned = (0..96u64)
            .flat_map(|t| (0..20u64).map(move |i| t + i))
            .filter(|n| n % 7 == 0)
            .count();
        assert_eq!(failed, poisoned, "only the poisoned appends failed");
    }
    let seen = commits.lock().unwrap().clone();
    assert!(
        seen.iter().any(|c| !c.ok && c.appends > 1),
        "no group of several appends failed"
    );
    assert!(
        seen.iter().any(|c| c.appends >= 32),
        "no group was large enough for the writer to be busy"
    );
    // The ledger goes on: the next append is written and the writer is healthy again.
    answers.push(append_one(&ledger, tool_call(9_999)).await);
    assert!(ledger.healthy());
    check(&ledger, answers.len() as u64, &answers).await;
}

/// Another process takes the lock between this writer's two groups: the group planned ahead
/// would chain to a head that is no longer the head, so it is planned again after the other's
/// rows.
#[tokio::test]
async fn a_group_planned_ahead_is_planned_again_after_another_process_appended() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let (options, commits) = recording();
    let ledger = open_with(&db, options).await;
    let other = open_with(&db, quiet()).await;
    let hold = hold_append_lock(&db).await;
    let a = send(&ledger, Append::new(vec![client_registered("a")])).await;
    let mut calls = Vec::new();
    for i in 0..10 {
        calls.push(send(&ledger, Append::new(vec![disabled("a", i)])).await);
    }
    // The other writer queues for the lock after this writer's first group and before its
    // second, which it plans while the first commits: PostgreSQL grants the lock in order.
    let b = send(&other, Append::new(vec![disabled("a", 100)])).await;
    hold.release().await;

    let mut answers = ok(outcome(a).await);
    let b = ok(outcome(b).await);
    assert_eq!((b[0].seq(), b[0].envelope.version), (2, 2));
    answers.extend(b);
    for (i, c) in calls.into_iter().enumerate() {
        let r = ok(outcome(c).await);
        assert_eq!(
            (r[0].seq(), r[0].envelope.version),
            (3 + i as u64, 3 + i as u64),
            "after the other process's event"
        );
        answers.extend(r);
    }
    let seen = groups(&commits);
    assert_eq!(seen, vec![(1, 1, true, None), (10, 10, true, Some(false))]);
    check(&ledger, 12, &answers).await;
}

/// Under steady load, groups are planned ahead and committed as planned, and appends that
/// share streams still get one version each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appenders_sharing_streams_under_load_make_one_chain() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let (options, commits) = recording();
    let ledger = open_with(&db, options).await;
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let own = format!("own{t}");
            let mut answers = Vec::new();
            for i in 0..40u64 {
                // Its own stream, expected exactly; and one of four streams all share.
                let expect = if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exactly(i)
                };
                let append = Append::new(vec![
                    disabled(&own, i),
                    disabled(&format!("shared{}", i % 4), t),
                ])
                .expect(StreamId::client(&own), expect);
                answers.extend(ledger.append(append).await.unwrap());
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    let ahead = commits
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.planned_ahead == Some(true))
        .count();
    assert!(ahead > 0, "no group was planned ahead");
    // Groups of 32 and more were planned while whole writes lasted (`BUSY_GROUP`).
    let busy = commits
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.appends >= 32 && c.planned_ahead == Some(true))
        .count();
    assert!(busy > 0, "no large group was planned ahead");
    check(&ledger, 64 * 40 * 2, &answers).await;
}

/// A checkpoint asked for while the next group is being taken ends that group: it is signed
/// over the appends sent before it, and those sent after it go into the group after.
#[tokio::test]
async fn a_checkpoint_asked_for_while_a_group_is_taken_ends_that_group() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let (options, commits) = recording();
    let ledger = open_with(&db, options).await;
    let hold = hold_append_lock(&db).await;
    let first = send(&ledger, Append::new(vec![tool_call(0)])).await;
    let mut before = Vec::new();
    for i in 1..4 {
        before.push(send(&ledger, Append::new(vec![tool_call(i)])).await);
    }
    let checkpoint = {
        let ledger = ledger.clone();
        let task = tokio::spawn(async move { ledger.checkpoint().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        task
    };
    let mut after = Vec::new();
    for i in 4..6 {
        after.push(send(&ledger, Append::new(vec![tool_call(i)])).await);
    }
    hold.release().await;

    let mut answers = ok(outcome(first).await);
    for (i, task) in before.into_iter().chain(after).enumerate() {
        let r = ok(outcome(task).await);
        assert_eq!(r[0].seq(), 2 + i as u64);
        answers.extend(r);
    }
    let size = tokio::time::timeout(Duration::from_secs(20), checkpoint)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(size, Some(4), "signed over the appends sent before it");
    let seen = groups(&commits);
    assert_eq!(
        seen,
        vec![
            (1, 1, true, None),
            (3, 3, true, Some(true)),
            (2, 2, true, None)
        ]
    );
    check(&ledger, 6, &answers).await;
}

/// The side connection is gone (its backend terminated): the versions of the next group's
/// streams cannot be read aside, so its appends wait and are planned under its lock, with the
/// versions read there; nothing fails.
#[tokio::test]
async fn without_the_side_connection_the_next_group_is_planned_under_its_lock() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    let (options, commits) = recording();
    let ledger = open_with(&db, options).await;
    // The first group connects the side connection.
    let mut answers = vec![append_one(&ledger, tool_call(0)).await];
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'grantline-ledger-side' AND datname = current_database()",
    )
    .fetch_all(match ledger.store().pool() {
        grantline_store::Pool::Postgres(p) => p,
        grantline_store::Pool::Sqlite(_) => unreachable!(),
    })
    .await
    .unwrap();
    assert_eq!(killed, vec![true], "one side connection, terminated");
    commits.lock().unwrap().clear();

    let hold = hold_append_lock(&db).await;
    let first = send(&ledger, Append::new(vec![tool_call(1)])).await;
    let mut new = Vec::new();
    for i in 0..3 {
        let id = format!("new{i}");
        let append = Append::new(vec![client_registered(&id)])
            .expect(StreamId::client(&id), ExpectedVersion::NoStream);
        new.push(send(&ledger, append).await);
    }
    hold.release().await;

    answers.extend(ok(outcome(first).await));
    for (i, task) in new.into_iter().enumerate() {
        let r = ok(outcome(task).await);
        assert_eq!((r[0].seq(), r[0].envelope.version), (3 + i as u64, 1));
        answers.extend(r);
    }
    assert_eq!(
        groups(&commits),
        vec![(1, 1, true, None), (3, 3, true, Some(true))],
        "taken during group 1's write, planned under group 2's lock"
    );
    assert!(ledger.healthy());
    check(&ledger, 5, &answers).await;
}
