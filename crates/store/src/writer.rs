//! The appender: one writer task per process commits concurrent appends together (group
//! commit), assigns seq, time, id and stream versions (under the append lock, or planned ahead
//! of it and checked under it), chains and encodes, and writes signed checkpoints every N
//! events or T seconds.
//!
//! Under the lock it always re-reads the head, so several processes can append to one
//! database: PostgreSQL serialises them with a transaction-level advisory lock, SQLite with
//! `BEGIN IMMEDIATE`. Cached stream versions and the Merkle frontier are trusted only while the
//! head is the one this writer last wrote.
//!
//! On PostgreSQL the writer plans the next group while the server inserts and commits the
//! current one (its unknown stream versions read on a second connection): a group planned
//! ahead is committed as planned only when the head under its lock is the one it assumed, and
//! is planned again otherwise (`plan::Prepared`).

mod link;
mod plan;

use crate::database::{Database, Store};
use crate::{Result, StoreError};
use grantline_ledger::codec::{Tail, encode_tail};
use grantline_ledger::merkle::Frontier;
use grantline_ledger::{
    Append, ExpectedVersion, GENESIS, Hash, NewEvent, NoteSigner, NoteVerifier, Recorded, StreamId,
    Timestamp,
};
use link::PgLink;
use plan::{Batch, Plan, Planned, PlannedRow, Prepared, plan_group, unknown_streams, unplan};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Key for `pg_advisory_xact_lock`: ASCII "grantlin".
const PG_APPEND_LOCK: i64 = 0x6772_616e_746c_696e;
/// Channel that `NOTIFY` announces new events on (payload: the new head seq).
pub const PG_CHANNEL: &str = "grantline_events";
const MAX_CACHED_STREAMS: usize = 1_000_000;

/// Called on the writer thread with every committed batch, in seq order, before any appender
/// is answered: a projection fed from here is current by the time a request sees its events.
pub type CommitHook = std::sync::Arc<dyn Fn(&[Recorded]) + Send + Sync>;

/// When checkpoints are written, and who hears of commits.
#[derive(Clone)]
pub struct LedgerOptions {
    /// A checkpoint at least every this many events.
    pub checkpoint_every_events: u64,
    /// And at least this often while events are uncovered, even when no more arrive.
    pub checkpoint_interval: Duration,
    /// Most events one group commit takes.
    pub max_batch_events: usize,
    /// Told of every commit (see [`CommitHook`]).
    pub on_commit: Option<CommitHook>,
    /// Told of every group commit's size and duration, and of failed ones (metrics).
    pub on_group_commit: Option<GroupCommitHook>,
    /// The clock appends are stamped with (never going back); default the system clock. A
    /// benchmark's synthetic history sets its own.
    pub clock: Option<Clock>,
    /// SQLite: once the WAL holds this many pages, the writer finishes a checkpoint between two
    /// commits so that it starts over; it goes somewhat past this meanwhile, and further while
    /// a reader holds an old snapshot. Not exposed by `grantline serve`. Each start-over holds up
    /// the next group commit by a `fsync` of the database file, so fewer are better; a longer
    /// WAL costs disk space and slightly slower lookups of recent pages.
    pub wal_restart_pages: i64,
    /// Sign no checkpoint until the caller has said through which seq it checked that this
    /// process's key is the one in force ([`Ledger::key_checked_through`]). A server and the
    /// commands that append set it: a checkpoint signed by a key handed over to another is a
    /// forgery to `verify`. Off for benchmarks and tests that write a ledger of their own.
    pub sign_after_key_check: bool,
    /// Keys a key that has signed no checkpoint yet (the first start after a rotation) may
    /// resume its Merkle tree from: the data directory's key history. Of them only the key the
    /// ledger's handover to this one names counts, and its checkpoints up to that handover.
    /// Without it, the tree is read again from every hash. A checkpoint row is not trusted for
    /// being in the database: anyone who can insert one could otherwise have this key sign
    /// roots that are not the events'.
    pub resume_keys: Vec<NoteVerifier>,
}

/// What one group commit took: for metrics.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    /// Appends (requests) committed together.
    pub appends: usize,
    /// Events they held.
    pub events: usize,
    /// From taking the lock to the durable commit (or the failure), including the planning of
    /// the next group done meanwhile.
    pub duration: Duration,
    /// Whether it committed.
    pub ok: bool,
    /// PostgreSQL: `Some(true)` when the group was taken while the one before committed and
    /// committed as planned then (appends that came later, or whose versions could not be read
    /// aside, planned under its lock); `Some(false)` when such a plan was dropped because the head
    /// had moved otherwise (another process appended, or the group before failed) and its
    /// appends were planned again; `None` when it was planned under the lock.
    pub planned_ahead: Option<bool>,
}

/// Called after each group commit, on the writer's thread: must not block.
pub type GroupCommitHook = std::sync::Arc<dyn Fn(&GroupCommit) + Send + Sync>;

/// A source of append times.
pub type Clock = std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>;

impl std::fmt::Debug for LedgerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerOptions")
            .field("checkpoint_every_events", &self.checkpoint_every_events)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("max_batch_events", &self.max_batch_events)
            .field("on_commit", &self.on_commit.is_some())
            .field("on_group_commit", &self.on_group_commit.is_some())
            .field("clock", &self.clock.is_some())
            .field("wal_restart_pages", &self.wal_restart_pages)
            .field("sign_after_key_check", &self.sign_after_key_check)
            .field("resume_keys", &self.resume_keys.len())
            .finish()
    }
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            checkpoint_every_events: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            max_batch_events: 20_000,
            on_commit: None,
            on_group_commit: None,
            clock: None,
            wal_restart_pages: WAL_RESTART_PAGES,
            sign_after_key_check: false,
            resume_keys: Vec::new(),
        }
    }
}

/// Where an appender waits for its events (or the reason they were not written).
type Reply = oneshot::Sender<Result<Vec<Recorded>>>;

/// An append as the writer receives it: each event with its body's tail already encoded and
/// checked by the appender ([`encode_tail`]), so under the append lock the writer only frames
/// the head it assigns, hashes and inserts.
struct Framed {
    events: Vec<(NewEvent, Tail)>,
    expect: Vec<(StreamId, ExpectedVersion)>,
}

impl Framed {
    /// Encodes every event's tail on the caller's task; the first event the ledger would not
    /// store refuses the whole append, as the writer did before.
    fn new(append: Append) -> Result<Framed> {
        let Append { events, expect } = append;
        let events = events
            .into_iter()
            .map(|e| {
                let tail = encode_tail(&e).map_err(|err| StoreError::Invalid(err.to_string()))?;
                Ok((e, tail))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Framed { events, expect })
    }
}

/// A group commit that wrote nothing: why, and the appends it held with their appenders, who
/// have not been answered yet.
struct Failed {
    error: StoreError,
    jobs: Vec<(Framed, Reply)>,
    answered: Vec<(Reply, Result<Vec<Recorded>>)>,
}

impl Failed {
    /// Answers the appends the group had decided without rows; returns the error and the
    /// appends still to answer.
    fn settle(self) -> (StoreError, Vec<(Framed, Reply)>) {
        answer(self.answered);
        (self.error, self.jobs)
    }

    /// Before planning: every append goes back (a plan made ahead is taken apart).
    fn batch(error: StoreError, batch: Batch) -> Failed {
        let (jobs, answered) = batch.into_jobs();
        Failed {
            error,
            jobs,
            answered,
        }
    }

    /// After planning: appends with rows go back to what their callers sent, and so do
    /// those decided on the versions the group assumed (its own appends may have decided them,
    /// and they were not written).
    fn planned(error: StoreError, planned: Vec<(Reply, Planned)>) -> Failed {
        let (jobs, answered) = unplan(planned, true);
        Failed {
            error,
            jobs,
            answered,
        }
    }
}

/// Tells each appender of `jobs` that its append failed with `error`.
fn fail(jobs: Vec<(Framed, Reply)>, error: &StoreError) {
    for (_, reply) in jobs {
        let _ = reply.send(Err(refused_or_unavailable(error)));
    }
}

/// Whether the database refused the rows themselves (a constraint, a trigger, a value it
/// cannot store) rather than failing as a whole: then the batch is committed again without the
/// append at fault, and the ledger stays healthy.
fn is_refusal(error: &StoreError) -> bool {
    match error {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
            e.code,
            rusqlite::ErrorCode::ConstraintViolation
                | rusqlite::ErrorCode::TooBig
                | rusqlite::ErrorCode::TypeMismatch
        ),
        // A seq taken already is no fault of one append: the head read under the lock was
        // not the head, and every append would be refused in turn. It fails the group closed.
        StoreError::Database(sqlx::Error::Database(e)) if e.constraint() == Some("events_pkey") => {
            false
        }
        StoreError::Database(sqlx::Error::Database(e)) => e.code().is_some_and(|c| {
            // 22: data exception; 23: integrity constraint; P0001: raised by a trigger.
            c.starts_with("22") || c.starts_with("23") || c == "P0001"
        }),
        _ => false,
    }
}

enum Job {
    Append(Framed, Reply),
    Checkpoint(oneshot::Sender<Result<Option<u64>>>),
    Probe(oneshot::Sender<Result<()>>),
    Shutdown(oneshot::Sender<()>),
}

/// The ledger: reads through [`Store`], appends through the writer task.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
    jobs: mpsc::Sender<Job>,
    head: watch::Receiver<u64>,
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// See [`Ledger::key_checked_through`]; `u64::MAX` until a caller says.
    key_checked: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Ledger {
    /// Opens (creating and migrating if needed) the ledger and starts its writer task.
    pub async fn open(db: &Database, signer: NoteSigner, options: LedgerOptions) -> Result<Ledger> {
        let store = Store::connect(db, true).await?;
        store.migrate().await?;
        let head_now = store.head().await?.map(|h| h.0).unwrap_or(0);
        let (head_tx, head_rx) = watch::channel(head_now);
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer_health = healthy.clone();
        let key_checked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let writer_key_checked = key_checked.clone();
        let (tx, rx) = mpsc::channel(4096);
        // The writer runs on its own thread and runtime: on a busy server its wake-ups would
        // otherwise queue behind request tasks, and every group commit waits on it.
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let db = db.clone();
        std::thread::Builder::new()
            .name("grantline-ledger-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Io(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut wal_checkpointer = None;
                    let mut side = SideConn {
                        conn: None,
                        options: None,
                        retry_at: Instant::now(),
                    };
                    let mut link = None;
                    let conn = match &db {
                        Database::Sqlite(path) => open_sqlite_writer(path).and_then(|c| {
                            wal_checkpointer =
                                Some(WalCheckpointer::start(path, options.wal_restart_pages)?);
                            Ok(WriterConn::Sqlite(Some(c)))
                        }),
                        Database::Postgres(url) => match Database::pg_options(url) {
                            Ok(o) => {
                                let l =
                                    PgLink::new(o.clone(), crate::database::connect_timeout(url));
                                let conn = link::within(
                                    l.connect_timeout(),
                                    "the connection",
                                    link::connect(l.options()),
                                )
                                .await
                                .map(WriterConn::Postgres);
                                link = Some(l);
                                // The side connection connects at its first use.
                                side.options = Some(o);
                                conn
                            }
                            Err(e) => Err(e),
                        },
                    };
                    let conn = match conn {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let writer = Writer {
                        conn,
                        signer,
                        options,
                        rx,
                        head: None,
                        durable: None,
                        last_time: 0,
                        versions: HashMap::new(),
                        frontier: Frontier::new(),
                        last_cp_size: 0,
                        last_cp_at: Instant::now(),
                        head_tx,
                        healthy: writer_health,
                        wal_checkpointer,
                        key_retired: None,
                        key_checked: writer_key_checked,
                        key_vouched: false,
                        side,
                        link,
                        began: false,
                        carried: None,
                        stashed: None,
                        planned_ahead: None,
                        taken_late: (0, 0),
                    };
                    writer.run().await;
                });
            })?;
        ready_rx
            .await
            .map_err(|_| StoreError::Unavailable("the ledger writer did not start".into()))??;
        Ok(Ledger {
            store,
            jobs: tx,
            head: head_rx,
            healthy,
            key_checked,
        })
    }

    /// Appends atomically: all events or none. Returns once they are durable. The events'
    /// bodies are encoded and checked here, on the caller's task, before the writer sees them.
    pub async fn append(&self, append: Append) -> Result<Vec<Recorded>> {
        let framed = Framed::new(append)?;
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Append(framed, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the ledger writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the ledger writer has stopped".into()))?
    }

    /// Writes a checkpoint now if events are uncovered; returns its tree size. Fails with
    /// [`StoreError::Key`] once this process's checkpoint key was handed over to another key:
    /// it signs nothing from then on.
    pub async fn checkpoint(&self) -> Result<Option<u64>> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Checkpoint(tx))
            .await
            .map_err(|_| StoreError::Unavailable("the ledger writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the ledger writer has stopped".into()))?
    }

    /// Proves the ledger can be written without writing to it: takes the append lock and
    /// inserts a well-formed row after the head, then rolls back. Marks the ledger healthy or
    /// failing by the result, as a commit does (readiness, and the gateway's fail-closed check).
    pub async fn probe(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Probe(tx))
            .await
            .map_err(|_| StoreError::Unavailable("the ledger writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the ledger writer has stopped".into()))?
    }

    /// Covers every event with a final checkpoint and stops the writer.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the last commit succeeded and the writer is running: callers about to do
    /// something they must record (an upstream tool call) check this first and fail closed.
    pub fn healthy(&self) -> bool {
        !self.jobs.is_closed() && self.healthy.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Tells the writer that every key rotation up to `seq` was checked by the caller (the
    /// state folded to `seq` names this process's checkpoint key as the one in force). At its
    /// next catch-up with the database, under the append lock, the writer reads the rotations
    /// after `seq` it would not read otherwise (its Merkle tree may resume from a checkpoint
    /// past them): one that hands its key over stops it signing, as one appended later by
    /// another process does. With [`LedgerOptions::sign_after_key_check`], it signs nothing
    /// before this is called.
    pub fn key_checked_through(&self, seq: u64) {
        self.key_checked
            .store(seq, std::sync::atomic::Ordering::SeqCst);
    }

    /// The newest durable seq written by this process; changes on every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }
}

/// The writer's own connection. On SQLite it is a rusqlite connection used from the writer's
/// own thread: sqlx's SQLite worker hands each statement and row across threads, which capped
/// group commits far below what SQLite itself does.
enum WriterConn {
    Sqlite(Option<rusqlite::Connection>),
    Postgres(PgConnection),
}

impl WriterConn {
    /// Inserts a group's rows (taking them on SQLite).
    async fn insert_rows(&mut self, rows: &mut Vec<PlannedRow>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        match self {
            WriterConn::Sqlite(c) => {
                let rows = std::mem::take(rows);
                on_sqlite(c, move |c| {
                    let mut st = c.prepare_cached(
                        "INSERT INTO events (seq, id, time, stream, version, kind, body, prev_hash, hash) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?;
                    for r in &rows {
                        st.execute(rusqlite::params![
                            r.seq,
                            r.id.as_bytes().as_slice(),
                            r.time,
                            r.stream,
                            r.version,
                            r.kind,
                            r.body,
                            r.prev_hash.0.as_slice(),
                            r.hash.0.as_slice(),
                        ])?;
                    }
                    Ok(())
                })
                .await?;
            }
            WriterConn::Postgres(c) => {
                // One INSERT over nine arrays. `COPY … FROM STDIN BINARY` through sqlx was tried
                // and measured (docs/performance.md): no faster with 512 appenders, and with 32
                // it made each group commit take ~88 ms (refresh rotation fell from 8.5k/s to
                // 358/s), a stall like Nagle's algorithm meeting delayed ACKs (sqlx 0.9.0 set no
                // TCP_NODELAY). Tried again with sqlx 0.9.1, which sets it: at 512 appenders no
                // faster than this INSERT (five pairs, ratios 0.89-1.12).
                let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
                let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
                let times: Vec<i64> = rows.iter().map(|r| r.time).collect();
                let streams: Vec<&str> = rows.iter().map(|r| r.stream.as_str()).collect();
                let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
                let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
                let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
                let prevs: Vec<&[u8]> = rows.iter().map(|r| r.prev_hash.0.as_slice()).collect();
                let hashes: Vec<&[u8]> = rows.iter().map(|r| r.hash.0.as_slice()).collect();
                let insert = sqlx::query(
                    "INSERT INTO events (seq, id, time, stream, version, kind, body, prev_hash, hash) \
                     SELECT s, i, TIMESTAMPTZ 'epoch' + t * INTERVAL '1 microsecond', st, v, k, b, p, h \
                     FROM UNNEST($1::int8[], $2::uuid[], $3::int8[], $4::text[], $5::int8[], $6::text[], \
                                 $7::bytea[], $8::bytea[], $9::bytea[]) AS x(s, i, t, st, v, k, b, p, h)",
                )
                .bind(seqs)
                .bind(ids)
                .bind(times)
                .bind(streams)
                .bind(versions)
                .bind(kinds)
                .bind(bodies)
                .bind(prevs)
                .bind(hashes)
                .execute(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the INSERT", insert).await?;
            }
        }
        Ok(())
    }

    /// Writes a checkpoint of the tree at `size`: its root, signed note and frontier.
    async fn insert_checkpoint(
        &mut self,
        size: u64,
        now: i64,
        root: &Hash,
        note: &str,
        frontier: &[u8],
    ) -> Result<()> {
        match self {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, move |c| {
                    c.execute(
                        "INSERT INTO checkpoints (time, tree_size, root, note, frontier) VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![now, size as i64, root.0.as_slice(), note, frontier],
                    )?;
                    Ok(())
                })
                .await?;
            }
            WriterConn::Postgres(c) => {
                let insert = sqlx::query(
                    "INSERT INTO checkpoints (time, tree_size, root, note, frontier) \
                     VALUES (TIMESTAMPTZ 'epoch' + $1 * INTERVAL '1 microsecond', $2, $3, $4, $5)",
                )
                .bind(now)
                .bind(size as i64)
                .bind(root.0.as_slice())
                .bind(note)
                .bind(frontier)
                .execute(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the checkpoint's INSERT", insert).await?;
            }
        }
        Ok(())
    }

    /// Announces the new head (PostgreSQL) and commits.
    async fn finish(&mut self, head: u64, notify: bool) -> Result<()> {
        match self {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, |c| {
                    Ok(c.prepare_cached("COMMIT")?.execute([]).map(|_| ())?)
                })
                .await?;
            }
            WriterConn::Postgres(c) => {
                if notify {
                    let notify = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(PG_CHANNEL)
                        .bind(head.to_string())
                        .execute(&mut *c);
                    link::within(link::STATEMENT_DEADLINE, "NOTIFY", notify).await?;
                }
                let commit = sqlx::query("COMMIT").execute(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "COMMIT", commit).await?;
            }
        }
        Ok(())
    }
}

fn open_sqlite_writer(path: &std::path::Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let c = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(30))?;
    // Same durability as the pool: WAL, fsync on every commit, deleted bytes overwritten.
    // No automatic checkpoint on this connection: it would copy the WAL into the database
    // file inside a commit, with the whole group waiting (~15 % of the appender's CPU);
    // [`WalCheckpointer`] does it beside the writer.
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -16384; \
         PRAGMA secure_delete = ON; PRAGMA wal_autocheckpoint = 0;",
    )?;
    Ok(c)
}

/// How long the WAL checkpointer lets commits gather before it copies them into the
/// database file.
const WAL_CHECKPOINT_AFTER: Duration = Duration::from_millis(100);

/// From this many pages in the WAL (64 MiB of 4 KiB pages) the writer finishes the
/// checkpointer's work itself between two commits, so that the next commit starts the WAL
/// over (see [`WalCheckpointer`]). The default of [`LedgerOptions::wal_restart_pages`]. At
/// 16 MiB, refresh rotation with 32 clients started the WAL over about five times a second,
/// and the commit after each waited 1–11 ms for the database file's `fsync`: over 1 % of
/// rotations, and so the p99 (docs/performance.md, 2026-12-05 afternoon).
const WAL_RESTART_PAGES: i64 = 16_384;

/// Before the writer finishes a checkpoint, the checkpointer copies the frames committed
/// during its own pass again, up to this many times, until at most [`WAL_RESIDUE_PAGES`] are
/// left: the writer's checkpoint then usually copies only those few (its `fsync` of the
/// database file remains; docs/performance.md).
const WAL_CATCH_UP_PASSES: usize = 4;

/// Frames the checkpointer may leave uncopied for the writer (see [`WAL_CATCH_UP_PASSES`]).
const WAL_RESIDUE_PAGES: i64 = 128;

/// The thread that copies the SQLite writer's WAL back into the database file: the passive
/// checkpoint SQLite would run every 1,000 pages inside a commit (~15 % of the appender's CPU,
/// with the whole group waiting), run on a connection of its own instead, at most every
/// [`WAL_CHECKPOINT_AFTER`] while commits come. A passive checkpoint never blocks the writer
/// or readers, and is held back by readers as SQLite's own is.
///
/// Under constant appends a checkpoint running beside the writer never finds the WAL fully
/// copied, and SQLite starts a WAL over only then: it would grow without end. So once the WAL
/// holds [`LedgerOptions::wal_restart_pages`], the checkpointer asks the writer to checkpoint between two of
/// its commits; the thread first copies again what came during its own pass (up to
/// [`WAL_CATCH_UP_PASSES`] times), so that only a few pages are left for the writer, and the
/// writer's next commit writes the WAL from the start again.
struct WalCheckpointer {
    nudge: std::sync::mpsc::SyncSender<()>,
    /// Set by the thread when the WAL is long; taken by the writer.
    finish: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WalCheckpointer {
    /// Starts the thread. It ends when the writer drops this (closing its connection does
    /// not checkpoint while the writer's is open).
    fn start(path: &std::path::Path, restart_pages: i64) -> Result<WalCheckpointer> {
        use rusqlite::OpenFlags;
        use std::sync::atomic::Ordering;
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let finish = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let long = finish.clone();
        std::thread::Builder::new()
            .name("grantline-wal-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    std::thread::sleep(WAL_CHECKPOINT_AFTER);
                    while nudged.try_recv().is_ok() {}
                    match passive_checkpoint(&conn) {
                        // Busy while another connection checkpoints (an erasure truncating
                        // the WAL): tried again at the next nudge.
                        Ok(Pass::Busy) => tracing::debug!("WAL checkpoint busy"),
                        Ok(Pass::Done { frames, backfilled }) => {
                            tracing::trace!(frames, backfilled, "WAL checkpoint");
                            if frames >= restart_pages {
                                // Copy what came meanwhile, at once and again, so that the
                                // writer's own checkpoint usually finds little left to copy.
                                // The writer is asked even when this does not get there (a
                                // reader holding an old snapshot): that keeps the WAL bounded
                                // as before.
                                for _ in 0..WAL_CATCH_UP_PASSES {
                                    match passive_checkpoint(&conn) {
                                        Ok(Pass::Done { frames, backfilled })
                                            if frames - backfilled > WAL_RESIDUE_PAGES =>
                                        {
                                            continue;
                                        }
                                        _ => break,
                                    }
                                }
                                long.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "WAL checkpoint failed"),
                    }
                }
            })?;
        Ok(WalCheckpointer { nudge, finish })
    }

    /// After a commit: wakes the thread, and returns whether the writer should finish a
    /// checkpoint now.
    fn committed(&self) -> bool {
        // Full means a nudge is already waiting.
        let _ = self.nudge.try_send(());
        self.finish
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

/// What a passive checkpoint found.
enum Pass {
    /// Another connection held the checkpoint lock; nothing was done.
    Busy,
    /// Frames in the WAL, and how many of them are now in the database file (all passes so
    /// far, not only this one).
    Done { frames: i64, backfilled: i64 },
}

/// A passive checkpoint on `conn`. SQLite reports a busy checkpoint in the row (1, -1, -1),
/// not as an error.
fn passive_checkpoint(conn: &rusqlite::Connection) -> rusqlite::Result<Pass> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(if r.get::<_, i64>(0)? != 0 {
            Pass::Busy
        } else {
            Pass::Done {
                frames: r.get(1)?,
                backfilled: r.get(2)?,
            }
        })
    })
}

/// Runs `f` on the SQLite writer connection. The writer has a thread of its own, so the call
/// blocks only the writer.
async fn on_sqlite<T>(
    slot: &mut Option<rusqlite::Connection>,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<T>,
) -> Result<T> {
    let conn = slot
        .as_mut()
        .ok_or_else(|| StoreError::Unavailable("the SQLite writer connection was lost".into()))?;
    f(conn)
}

struct Writer {
    conn: WriterConn,
    signer: NoteSigner,
    options: LedgerOptions,
    /// The queue appenders and callers send their jobs on.
    rx: mpsc::Receiver<Job>,
    /// (seq, hash) this writer last committed or read under the lock; `None` = unknown.
    head: Option<(u64, Hash)>,
    /// The newest (seq, hash) this writer knows to be durable: kept across failures, so that
    /// a database that went back (a failover that lost acknowledged commits, a restore under
    /// a running server) or forked is found, not chained onto and signed over.
    durable: Option<(u64, Hash)>,
    last_time: i64,
    versions: HashMap<StreamId, u64>,
    frontier: Frontier,
    last_cp_size: u64,
    last_cp_at: Instant,
    head_tx: watch::Sender<u64>,
    /// False after a failed commit until the next one succeeds.
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// On SQLite: copies the WAL into the database beside the writer.
    wal_checkpointer: Option<WalCheckpointer>,
    /// Set when another process's rows hand this writer's checkpoint key over to a new one
    /// (`grantline key rotate` while this process ran): from then on it signs nothing, since
    /// its checkpoints would verify as forged. Appends go on; why, for errors and logs.
    key_retired: Option<String>,
    /// Set by [`Ledger::key_checked_through`] and taken (back to `u64::MAX`) by the next
    /// catch-up, which reads the rotations after it that it would not read otherwise.
    key_checked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether a caller has said through which seq it checked the key (see
    /// [`LedgerOptions::sign_after_key_check`]).
    key_vouched: bool,
    /// PostgreSQL: the connection on which the next group's unknown stream versions are read
    /// while the writer's own connection inserts and commits the current group (see
    /// `plan::Prepared`). Never connected on SQLite; not connected while it is broken.
    side: SideConn,
    /// PostgreSQL: how the writer's own connection comes back after it failed. `None` on
    /// SQLite.
    link: Option<PgLink>,
    /// PostgreSQL: whether the last group's or probe's `BEGIN` was answered. A connection lost
    /// before it died while idle, and nothing of the group reached the server.
    began: bool,
    /// The next group's appends, taken from the queue (and planned) during the last commit.
    carried: Option<Box<Prepared>>,
    /// A job other than an append met while taking them: it ends the next group.
    stashed: Option<Job>,
    /// For the [`GroupCommit`] being reported: whether its plan was made ahead, and held.
    planned_ahead: Option<bool>,
    /// For the [`GroupCommit`] being reported: appends and events that joined a group planned
    /// ahead under its lock.
    taken_late: (usize, usize),
}

/// The writer's second PostgreSQL connection (see [`Writer::side`]).
struct SideConn {
    conn: Option<PgConnection>,
    /// How to connect again after it broke; `None` on SQLite.
    options: Option<sqlx::postgres::PgConnectOptions>,
    /// Not before this: a broken side connection costs the next groups their planning ahead,
    /// not their commits, so it is retried now and then, not at every commit.
    retry_at: Instant,
}

/// How long the side connection may take to connect (before a group takes the append lock).
const SIDE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a read on it may take: the current group's commit waits for the planning it feeds.
const SIDE_QUERY_TIMEOUT: Duration = Duration::from_millis(200);
/// How long after a failure the side connection is tried again.
const SIDE_RETRY_AFTER: Duration = Duration::from_secs(30);

impl SideConn {
    /// Connects the side connection if it is not and it is time to try again. Called before
    /// a group takes the append lock, so a slow connect never holds the lock.
    async fn ensure(&mut self) {
        let Some(options) = self.options.as_ref() else {
            return;
        };
        if self.conn.is_some() || Instant::now() < self.retry_at {
            return;
        }
        self.retry_at = Instant::now() + SIDE_RETRY_AFTER;
        let options = options.clone().application_name("grantline-ledger-side");
        match tokio::time::timeout(SIDE_CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await
        {
            Ok(Ok(c)) => self.conn = Some(c),
            Ok(Err(e)) => tracing::warn!(error = %e,
                "the ledger writer's side connection failed to connect; appends are planned under the lock"),
            Err(_) => tracing::warn!(
                "the ledger writer's side connection did not connect within {} s; appends are planned under the lock",
                SIDE_CONNECT_TIMEOUT.as_secs()
            ),
        }
    }

    /// The stream versions of `streams` as committed, read on the side connection. `None`
    /// when it is not connected or the read fails or times out; the connection is then
    /// dropped (a read cut short leaves it in no known state) and tried again later.
    async fn load_versions(&mut self, streams: &[String]) -> Option<HashMap<String, u64>> {
        let conn = self.conn.as_mut()?;
        match tokio::time::timeout(SIDE_QUERY_TIMEOUT, pg_load_versions(conn, streams)).await {
            Ok(Ok(found)) => Some(found),
            outcome => {
                match outcome {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the ledger writer's side connection failed")
                    }
                    _ => {
                        tracing::warn!("the ledger writer's side connection did not answer in time")
                    }
                }
                self.conn = None;
                self.retry_at = Instant::now() + SIDE_RETRY_AFTER;
                None
            }
        }
    }
}

/// What wakes an idle writer.
enum Woke {
    Job(Option<Job>),
    Deadline,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let deadline = self.last_cp_at + self.options.checkpoint_interval;
            let mut control = Vec::new();
            let batch = if let Some(prepared) = self.carried.take() {
                control.extend(self.stashed.take());
                Batch::Prepared(prepared)
            } else {
                let mut next = self.stashed.take();
                if next.is_none() {
                    let woke = tokio::select! {
                        job = self.rx.recv() => Woke::Job(job),
                        _ = tokio::time::sleep_until(deadline) => Woke::Deadline,
                    };
                    match woke {
                        Woke::Deadline => {
                            if let Err(e) = self
                                .commit(Batch::Jobs(Vec::new()), false, true, false)
                                .await
                            {
                                tracing::warn!(error = %e, "scheduled checkpoint failed");
                            }
                            self.last_cp_at = Instant::now();
                            continue;
                        }
                        Woke::Job(None) => {
                            let _ = self
                                .commit(Batch::Jobs(Vec::new()), true, false, false)
                                .await;
                            return;
                        }
                        Woke::Job(Some(job)) => next = Some(job),
                    }
                }
                if let Some(Job::Probe(reply)) = next {
                    let _ = reply.send(self.probe().await);
                    continue;
                }
                let mut appends = Vec::new();
                let mut n_events = 0usize;
                while let Some(job) = next.take() {
                    match job {
                        Job::Append(a, reply) => {
                            n_events += a.events.len();
                            appends.push((a, reply));
                        }
                        other => control.push(other),
                    }
                    if n_events < self.options.max_batch_events && control.is_empty() {
                        next = self.rx.try_recv().ok();
                    }
                }
                Batch::Jobs(appends)
            };
            let force = control.iter().any(|j| !matches!(j, Job::Probe(_)));
            // Under constant load the queue is never empty, so the interval is checked here
            // too: a checkpoint at least every `checkpoint_interval` while events come.
            let scheduled = Instant::now() >= deadline;
            // Nothing is taken past a job that ends this group: after a shutdown nothing is
            // committed, and a checkpoint or probe answers for what came before it.
            let ahead = control.is_empty();
            tracing::trace!(size = ?batch.size(), "group commit");
            let outcome = self.commit(batch, force, scheduled, ahead).await;
            if scheduled {
                self.last_cp_at = Instant::now();
            }
            for job in control {
                match job {
                    Job::Checkpoint(reply) => {
                        let _ = reply.send(match (&outcome, &self.key_retired) {
                            (Ok(_), Some(why)) => Err(StoreError::Key(why.clone())),
                            (Ok(size), None) => Ok(*size),
                            (Err(e), _) => Err(StoreError::Unavailable(e.to_string())),
                        });
                    }
                    Job::Shutdown(reply) => {
                        // Appends taken for a next group are answered before the writer goes.
                        if let Some(prepared) = self.carried.take() {
                            let _ = self
                                .commit(Batch::Prepared(prepared), true, false, false)
                                .await;
                        }
                        let _ = reply.send(());
                        return;
                    }
                    Job::Probe(reply) => {
                        let _ = reply.send(self.probe().await);
                    }
                    Job::Append(..) => {}
                }
            }
        }
    }

    /// One group commit. Returns the size of the checkpoint written, if any.
    ///
    /// When the database refuses one append's rows, only that append fails: the batch is
    /// rolled back and committed again in halves, halving again what is refused, so one bad
    /// append never fails the unrelated requests that happened to share its commit.
    /// With `ahead`, the next group may be taken and planned meanwhile (see `try_commit`).
    async fn commit(
        &mut self,
        batch: Batch,
        force_checkpoint: bool,
        scheduled: bool,
        ahead: bool,
    ) -> Result<Option<u64>> {
        if ahead {
            self.side.ensure().await;
        }
        let failed = match self
            .try_commit(batch, force_checkpoint, scheduled, ahead)
            .await
        {
            Ok(cp) => return Ok(cp),
            Err(f) => f,
        };
        let (error, jobs) = failed.settle();
        if !is_refusal(&error) {
            fail(jobs, &error);
            return Err(error);
        }
        // The database refused rows of this batch: commit it again in halves, and halve again
        // whatever is refused, so only the append at fault fails (a lone append needs no second
        // try), then the checkpoint that was due. One bad append in a group of n costs about
        // 2·log2(n) commits, not n.
        let mut cp = None;
        if jobs.len() <= 1 {
            fail(jobs, &error);
            if force_checkpoint || scheduled {
                cp = self
                    .try_commit(Batch::Jobs(Vec::new()), force_checkpoint, scheduled, false)
                    .await
                    .map_err(|f| f.error)?;
            }
            return Ok(cp);
        }
        tracing::warn!(error = %error, appends = jobs.len(),
            "the database refused a row of a group commit; committing its appends again in halves");
        // Parts still to commit, the next on top: appends keep the order they came in.
        let mut parts = Vec::from(halves(jobs));
        while let Some(part) = parts.pop() {
            let failed = match self
                .try_commit(Batch::Jobs(part), false, false, false)
                .await
            {
                Ok(c) => {
                    cp = c.or(cp);
                    continue;
                }
                Err(failed) => failed,
            };
            let (error, jobs) = failed.settle();
            if is_refusal(&error) && jobs.len() > 1 {
                parts.extend(halves(jobs));
                continue;
            }
            // The append at fault, or a database that failed: the rest of the group is not
            // tried against it, and fails closed with it.
            fail(jobs, &error);
            if !is_refusal(&error) {
                fail(parts.into_iter().flatten().collect(), &error);
                return Err(error);
            }
        }
        if force_checkpoint || scheduled {
            cp = self
                .try_commit(Batch::Jobs(Vec::new()), force_checkpoint, scheduled, false)
                .await
                .map_err(|f| f.error)?
                .or(cp);
        }
        Ok(cp)
    }

    /// Commits a batch, or rolls it back and returns it unanswered. The ledger is marked
    /// unhealthy and the transaction rolled back *before* any appender can be answered: a
    /// caller that saw its append fail and retries, or checks [`Ledger::healthy`] before
    /// calling an upstream, never sees the old, healthy state. A refusal of one append's rows
    /// leaves the ledger healthy: the database works. With `ahead`, on PostgreSQL, the next
    /// group is taken from the queue and planned while this one is inserted and committed.
    async fn try_commit(
        &mut self,
        batch: Batch,
        force_checkpoint: bool,
        scheduled: bool,
        ahead: bool,
    ) -> std::result::Result<Option<u64>, Failed> {
        let frontier_before = self.frontier.clone();
        let started = Instant::now();
        let (appends, events) = batch.size();
        self.planned_ahead = None;
        self.taken_late = (0, 0);
        let outcome = self
            .commit_inner(batch, force_checkpoint, scheduled, ahead)
            .await;
        if let Some(hook) = &self.options.on_group_commit {
            hook(&GroupCommit {
                appends: appends + self.taken_late.0,
                events: events + self.taken_late.1,
                duration: started.elapsed(),
                ok: outcome.is_ok(),
                planned_ahead: self.planned_ahead,
            });
        }
        match outcome {
            Ok((cp, replies)) => {
                self.healthy
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                if let Some(hook) = &self.options.on_commit {
                    for recorded in replies.iter().filter_map(|(_, r)| r.as_ref().ok()) {
                        if !recorded.is_empty() {
                            hook(recorded);
                        }
                    }
                }
                answer(replies);
                if self
                    .wal_checkpointer
                    .as_ref()
                    .is_some_and(WalCheckpointer::committed)
                    && let WriterConn::Sqlite(Some(conn)) = &self.conn
                    && let Err(e) = passive_checkpoint(conn)
                {
                    tracing::debug!(error = %e, "the writer's WAL checkpoint failed");
                }
                Ok(cp)
            }
            Err(failed) => {
                let refused = is_refusal(&failed.error);
                if !refused {
                    // Said once when the ledger goes from healthy to failing, not at every
                    // group while the database is away.
                    if self
                        .healthy
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        tracing::error!(error = %failed.error, "ledger commit failed; failing closed");
                    } else {
                        tracing::debug!(error = %failed.error, "ledger commit failed; failing closed");
                    }
                }
                self.after_failure(&failed.error).await;
                self.head = None;
                self.versions.clear();
                self.frontier = frontier_before;
                Err(failed)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn commit_inner(
        &mut self,
        batch: Batch,
        force_checkpoint: bool,
        scheduled: bool,
        ahead: bool,
    ) -> std::result::Result<(Option<u64>, Vec<(Reply, Result<Vec<Recorded>>)>), Failed> {
        // Any failure before the commit fails every waiting append (see `commit`).
        if let Err(error) = self.take_lock().await {
            return Err(Failed::batch(error, batch));
        }
        let head = self.head.unwrap_or((0, GENESIS));
        let plan = match batch {
            // Planned ahead on the head that is still the head: as planned.
            Batch::Prepared(p) if self.head.is_some() && p.plan.base == head => {
                self.planned_ahead = Some(true);
                let Prepared {
                    plan,
                    loaded,
                    frontier,
                    more,
                    busy,
                } = *p;
                self.versions.extend(loaded);
                self.frontier = frontier;
                let mut plan = plan;
                // Planned now, on its end: appends taken while the side connection failed, and,
                // unless the writer is busy (see `BUSY_GROUP`), those that came after the last
                // step of the commit before: the group is what was waiting at its lock.
                let mut more = more;
                if ahead && self.stashed.is_none() && !busy {
                    let room = self
                        .options
                        .max_batch_events
                        .saturating_sub(plan.rows.len() + events_of(&more));
                    let late = take_jobs(&mut self.rx, &mut self.stashed, room);
                    self.taken_late = (late.len(), late.iter().map(|(a, _)| a.events.len()).sum());
                    more.extend(late);
                }
                if !more.is_empty() {
                    if let Err(error) = self.cache_versions(&more, &plan.pending).await {
                        let mut failed = Failed::planned(error, plan.planned);
                        failed.jobs.extend(more);
                        return Err(failed);
                    }
                    let (pending, versions) = (&plan.pending, &self.versions);
                    let extra = plan_group(
                        more,
                        plan.end,
                        plan.now,
                        |s| {
                            pending
                                .get(s)
                                .or_else(|| versions.get(s))
                                .copied()
                                .unwrap_or(0)
                        },
                        &mut self.frontier,
                    );
                    plan.extend(extra);
                }
                plan
            }
            batch => {
                if matches!(batch, Batch::Prepared(_)) {
                    self.planned_ahead = Some(false);
                }
                let (jobs, answered) = batch.into_jobs();
                let now = self
                    .options
                    .clock
                    .as_ref()
                    .map_or_else(Timestamp::now, |c| c())
                    .0
                    .max(self.last_time);
                if let Err(error) = self.cache_versions(&jobs, &HashMap::new()).await {
                    let mut failed = Failed::batch(error, Batch::Jobs(jobs));
                    failed.answered = answered;
                    return Err(failed);
                }
                let versions = &self.versions;
                let mut plan = plan_group(
                    jobs,
                    head,
                    now,
                    |s| versions.get(s).copied().unwrap_or(0),
                    &mut self.frontier,
                );
                plan.planned.extend(
                    answered
                        .into_iter()
                        .map(|(reply, r)| (reply, Planned::Answered(r))),
                );
                plan
            }
        };
        let Plan {
            end: (seq, prev),
            now,
            mut rows,
            planned,
            pending,
            ..
        } = plan;

        let wrote_rows = !rows.is_empty();
        let uncovered = seq.saturating_sub(self.last_cp_size);
        let want_cp = uncovered > 0
            && self.key_retired.is_none()
            && (self.key_vouched || !self.options.sign_after_key_check)
            && (force_checkpoint || scheduled || uncovered >= self.options.checkpoint_every_events);
        let checkpoint = want_cp.then(|| {
            let root = self.frontier.root();
            let note = self.signer.sign_checkpoint(self.signer.name(), seq, &root);
            (root, note, self.frontier.to_bytes())
        });

        // Insert, checkpoint and commit; on PostgreSQL, meanwhile, take the next group from
        // the queue and plan it on the head this one leaves (see `Prepared`).
        let ahead = ahead
            && wrote_rows
            && matches!(self.conn, WriterConn::Postgres(_))
            && self.side.conn.is_some()
            && self.carried.is_none()
            && self.stashed.is_none();
        let busy = planned.len() >= BUSY_GROUP;
        let mut ahead = ahead.then_some(Ahead {
            rx: &mut self.rx,
            stashed: &mut self.stashed,
            planner: Planner {
                side: &mut self.side,
                versions: &self.versions,
                pending: &pending,
                frontier: &self.frontier,
                options: &self.options,
                base: (seq, prev),
                now,
                busy,
            },
        });
        let mut next = None;
        let conn = &mut self.conn;
        let write = async {
            conn.insert_rows(&mut rows).await?;
            if let Some((root, note, frontier)) = &checkpoint {
                conn.insert_checkpoint(seq, now, root, note, frontier)
                    .await?;
            }
            Ok(())
        };
        let mut written = plan_ahead_during(write, ahead.as_mut(), &mut next).await;
        if written.is_ok() {
            let finish = conn.finish(seq, wrote_rows);
            written = plan_ahead_during(finish, ahead.as_mut(), &mut next).await;
        }
        // Kept even when this commit failed: the next lock shows whether the head the plan
        // assumed came to be (a COMMIT can reach the server and its answer be lost); if not,
        // the appends are planned again. A commit that planned nothing ahead leaves what an
        // earlier one carried: the appends of a refused group, committed again in parts, come
        // before the group planned on top of it.
        if next.is_some() {
            self.carried = next;
        }
        if let Err(error) = written {
            return Err(Failed::planned(error, planned));
        }

        // Durable: now the caches may move on.
        self.head = Some((seq, prev));
        self.durable = self.head;
        self.last_time = now;
        if self.versions.len() + pending.len() > MAX_CACHED_STREAMS {
            self.versions.clear();
        }
        self.versions.extend(pending);
        let cp_size = checkpoint.map(|_| seq);
        if let Some(size) = cp_size {
            self.last_cp_size = size;
            self.last_cp_at = Instant::now();
        }
        self.head_tx.send_replace(seq);
        let replies = planned
            .into_iter()
            .map(|(reply, p)| match p {
                Planned::Rows { recorded, .. } => (reply, Ok(recorded)),
                Planned::Decided(_, r) | Planned::Answered(r) => (reply, r),
            })
            .collect();
        Ok((cp_size, replies))
    }

    /// Reads into the cache, in one query, the versions of the streams `jobs` name (by the
    /// very name they are stored under) that neither the cache nor `planned` — the plan they
    /// will go on top of — knows.
    async fn cache_versions(
        &mut self,
        jobs: &[(Framed, Reply)],
        planned: &HashMap<StreamId, u64>,
    ) -> Result<()> {
        let missing = unknown_streams(jobs, |s| {
            planned.contains_key(s) || self.versions.contains_key(s)
        });
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = missing.iter().map(|s| s.as_str().to_string()).collect();
        let found = self.load_versions(&names).await?;
        for stream in missing {
            let v = found.get(stream.as_str()).copied().unwrap_or(0);
            self.versions.insert(stream, v);
        }
        Ok(())
    }

    /// [`Self::lock_and_sync`], once more on a new connection when its first statement finds
    /// the connection gone: it died while idle (a restart, a failover, a proxy's idle timeout)
    /// and nothing was written yet.
    async fn take_lock(&mut self) -> Result<()> {
        let Err(error) = self.lock_and_sync().await else {
            return Ok(());
        };
        match self.link.as_mut() {
            Some(link) if link.is_up() && link::lost(&error) && !self.began => {
                link.failed(&error, true);
                // The server most likely closed an idle connection and is there: the group
                // waits for the new one as long as a first connection may take.
                let wait = link.connect_timeout();
                self.restore_link(wait).await?;
                self.lock_and_sync().await
            }
            _ => Err(error),
        }
    }

    /// PostgreSQL, when the writer's connection is down: a new one, waiting at most `wait` for
    /// an attempt under way (see [`PgLink`]); an error while there is none.
    async fn restore_link(&mut self, wait: Duration) -> Result<()> {
        if let Some(link) = self.link.as_mut()
            && let Some(conn) = link.restore(wait).await?
        {
            self.conn = WriterConn::Postgres(conn);
            // The side connection most likely went with the old one: it connects again
            // before the next group, not at its next retry.
            self.side.conn = None;
            self.side.retry_at = Instant::now();
        }
        Ok(())
    }

    /// Takes the append lock and makes the caches match the database head.
    async fn lock_and_sync(&mut self) -> Result<()> {
        self.restore_link(link::GRACE).await?;
        let db_head = self.lock_and_read_head().await?;
        // A seq the caller checked the key through, said since the last catch-up: the
        // rotations after it that this catch-up does not read otherwise are read below. Put
        // back if the catch-up fails, for the next one to read.
        let checked = self
            .key_checked
            .swap(u64::MAX, std::sync::atomic::Ordering::SeqCst);
        if checked != u64::MAX {
            self.key_vouched = true;
        }
        let synced = self.sync_head(db_head, checked).await;
        if synced.is_err() && checked != u64::MAX {
            self.key_checked
                .fetch_min(checked, std::sync::atomic::Ordering::SeqCst);
        }
        synced
    }

    /// Under the lock: the caches follow the database head `db_head`, reading the rotations
    /// after `checked` (see [`Self::lock_and_sync`]).
    async fn sync_head(&mut self, db_head: Option<(u64, Hash, i64)>, checked: u64) -> Result<()> {
        let cached = self.head;
        let db_pair = db_head.as_ref().map(|(s, h, _)| (*s, *h));
        if cached == db_pair.or(Some((0, GENESIS))) && self.head.is_some() {
            let size = cached.map_or(0, |(s, _)| s);
            if checked < size {
                let rotations = self.read_rotations(checked, size).await?;
                self.notice_rotations(&rotations);
            }
            return Ok(());
        }
        // Someone else appended (or we start fresh): forget cached versions, catch up the tree.
        self.versions.clear();
        let (size, hash, time) = db_head.unwrap_or((0, GENESIS, 0));
        self.still_holds_what_was_durable(size, hash).await?;
        self.last_time = self.last_time.max(time);
        if self.frontier.size() > size {
            self.frontier = Frontier::new();
        }
        // What this writer's key has covered: only checkpoints newer than the last one known
        // are read (usually none, when another instance appended), unless the tree must be
        // resumed, which looks at every one up to the head.
        let known = if self.last_cp_size <= size {
            self.last_cp_size
        } else {
            0
        };
        let floor = if self.frontier.size() == 0 { 0 } else { known };
        match self.read_own_checkpoint(floor, size).await? {
            Some((covered, frontier)) => {
                self.last_cp_size = covered;
                if self.frontier.size() == 0
                    && let Some(f) = frontier
                {
                    self.frontier = f;
                }
            }
            None => self.last_cp_size = floor,
        }
        // No checkpoint of this key to resume from (the first start after a key rotation): the
        // newest frontier consistent with its own row, rather than every hash of the ledger
        // read under the append lock. What it covers is not counted as this key's, so the key
        // signs a checkpoint of its own at once.
        if self.frontier.size() == 0
            && let Some((predecessor, handed_over_at)) = self.predecessor().await?
            && let Some(f) = self
                .read_latest_frontier(size.min(handed_over_at), &[predecessor])
                .await?
        {
            self.frontier = f;
        }
        let from = self.frontier.size();
        // Rotations between what the caller checked and where the tree resumes: the rows the
        // tree, seeded from a checkpoint, does not read (`Ledger::key_checked_through`).
        if checked < from.min(size) {
            let rotations = self.read_rotations(checked, from.min(size)).await?;
            self.notice_rotations(&rotations);
        }
        if from < size {
            let (hashes, rotations) = self.read_hashes(from, size).await?;
            for h in hashes {
                self.frontier.push(&h);
            }
            self.notice_rotations(&rotations);
        }
        if self.frontier.size() != size {
            return Err(StoreError::Corrupt {
                seq: self.frontier.size() + 1,
                problem: "rows missing while rebuilding the Merkle tree".into(),
            });
        }
        self.head = Some((size, hash));
        self.durable = self.head;
        Ok(())
    }

    /// Fails closed when the database no longer holds what this writer saw durable: its head
    /// `(size, hash)` behind it, or another row at its seq. Chaining onto such a history would
    /// sign roots of a tree that mixes two histories, or a second root for a size already
    /// signed. Nothing is appended until an operator looks (`grantline verify`) and restarts.
    async fn still_holds_what_was_durable(&mut self, size: u64, hash: Hash) -> Result<()> {
        // Seq 0 (an empty ledger seen) holds nothing that could be lost.
        let Some((seq, want)) = self.durable.filter(|(seq, _)| *seq > 0) else {
            return Ok(());
        };
        let found = if size < seq {
            None
        } else if size == seq {
            Some(hash)
        } else {
            self.stored_hash(seq).await?
        };
        if found == Some(want) {
            return Ok(());
        }
        let problem = if size < seq {
            format!(
                "the ledger's head is seq {size}, behind seq {seq}, which this process saw \
                 durable: events it acknowledged are gone (a failover or a restore under a \
                 running server); it appends nothing more until restarted"
            )
        } else {
            format!(
                "seq {seq} is not the event this process saw durable there: the ledger was \
                 rewritten or forked under it; it appends nothing more until restarted"
            )
        };
        tracing::error!(seq, size, "{problem}");
        Err(StoreError::Corrupt { seq, problem })
    }

    /// The stored hash of the row at `seq`, read on the writer's connection (under the lock).
    async fn stored_hash(&mut self, seq: u64) -> Result<Option<Hash>> {
        const SQL: &str = "SELECT hash FROM events WHERE seq = $1";
        let bytes: Option<Vec<u8>> = match &mut self.conn {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, move |c| {
                    use rusqlite::OptionalExtension;
                    Ok(c.prepare_cached(SQL)?
                        .query_row([seq as i64], |r| r.get::<_, Vec<u8>>(0))
                        .optional()?)
                })
                .await?
            }
            WriterConn::Postgres(c) => {
                let read = sqlx::query_scalar(SQL)
                    .bind(seq as i64)
                    .fetch_optional(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "a stored hash", read).await?
            }
        };
        Ok(bytes.and_then(|b| Hash::from_slice(&b)))
    }

    /// Opens the transaction, takes the append lock and reads the head under it.
    ///
    /// (Sending BEGIN, the lock and the head read to PostgreSQL as one simple-query string,
    /// and NOTIFY with COMMIT as another, was tried and measured no steady gain over 25
    /// pairs; docs/performance.md.)
    async fn lock_and_read_head(&mut self) -> Result<Option<(u64, Hash, i64)>> {
        let row = match &mut self.conn {
            WriterConn::Sqlite(c) => on_sqlite(c, |c| {
                use rusqlite::OptionalExtension;
                // Cached, as COMMIT is in `finish`: parsing the three again at every commit was
                // ~4 % of the writer's time (`refresh`, 32 clients).
                c.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
                Ok(c.prepare_cached(
                    "SELECT seq, hash, time FROM events ORDER BY seq DESC LIMIT 1",
                )?
                .query_row([], |r| {
                    // A time that is not an integer (tampered: `verify` finds it) does not
                    // hold the writer's clock back, nor stop every append.
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<i64>>(2).ok().flatten().unwrap_or(0),
                    ))
                })
                .optional()?)
            })
            .await?
            .map(Ok),
            WriterConn::Postgres(c) => {
                // A connection a firewall silently dropped would hang here for the kernel's
                // retransmissions (~15 min): BEGIN answers at once on a live one, so past the
                // connect timeout the connection counts as lost (`link::lost`).
                let wait = self
                    .link
                    .as_ref()
                    .map_or(Duration::from_secs(10), PgLink::connect_timeout);
                self.began = false;
                // Read committed whatever the database's or role's default: under repeatable
                // read the snapshot is taken at the lock's statement, before the lock is
                // granted, so the head read after it would miss the commit just before.
                let begin = sqlx::query("BEGIN ISOLATION LEVEL READ COMMITTED").execute(&mut *c);
                link::within(wait, "BEGIN", begin).await?;
                self.began = true;
                let lock = sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_APPEND_LOCK)
                    .execute(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the append lock", lock).await?;
                let head = sqlx::query(concat!(
                    "SELECT seq, hash, ",
                    crate::database::pg_micros!("time"),
                    " FROM events ORDER BY seq DESC LIMIT 1"
                ))
                .fetch_optional(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the head", head)
                    .await?
                    .map(|r| -> Result<_> {
                        // A head whose time does not read (tampered: `verify` finds it)
                        // does not hold the writer's clock back.
                        Ok((
                            r.try_get::<i64, _>(0)?,
                            r.try_get::<Vec<u8>, _>(1)?,
                            r.try_get::<Option<i64>, _>(2)?.unwrap_or(0),
                        ))
                    })
            }
        };
        match row.transpose()? {
            None => Ok(None),
            Some((s, h, t)) => Ok(Some((
                s as u64,
                Hash::from_slice(&h).ok_or(StoreError::Corrupt {
                    seq: s as u64,
                    problem: "hash is not 32 bytes".into(),
                })?,
                t,
            ))),
        }
    }

    /// The newest checkpoint of a size in `(floor, upto]` that this writer's key signed (its
    /// note opens under the key, for the row's size and root), and the frontier saved with it
    /// when that is the checkpoint's tree. Anyone who may insert into `checkpoints` can add a
    /// row: the writer does not count as covered what its key did not sign (a size past the
    /// head would stop every checkpoint), and resumes its tree from its own checkpoints first
    /// (a forged frontier would have the real key sign wrong roots).
    async fn read_own_checkpoint(
        &mut self,
        floor: u64,
        upto: u64,
    ) -> Result<Option<(u64, Option<Frontier>)>> {
        // A few rows: forged ones above the newest genuine one are passed over, and past them
        // the writer takes none (and signs a checkpoint of its own at once).
        type Row = (i64, Vec<u8>, String, Vec<u8>);
        let rows: Vec<Row> = match &mut self.conn {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, move |c| {
                    let mut st = c.prepare(
                        "SELECT tree_size, root, note, frontier FROM checkpoints WHERE tree_size > ?1 AND tree_size <= ?2 ORDER BY tree_size DESC, id DESC LIMIT 8",
                    )?;
                    let rows = st
                        .query_map([floor as i64, upto as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })?
                        .collect::<std::result::Result<Vec<Row>, _>>()?;
                    Ok(rows)
                })
                .await?
            }
            WriterConn::Postgres(c) => {
                let read = sqlx::query_as(
                    "SELECT tree_size, root, note, frontier FROM checkpoints WHERE tree_size > $1 AND tree_size <= $2 ORDER BY tree_size DESC, id DESC LIMIT 8",
                )
                .bind(floor as i64)
                .bind(upto as i64)
                .fetch_all(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the newest checkpoints", read).await?
            }
        };
        let own = [self.signer.verifier()];
        for (size, root, note, frontier) in rows {
            let Ok(cp) = grantline_ledger::Checkpoint::open(&note, &own) else {
                continue;
            };
            if i64::try_from(cp.size) != Ok(size) || Hash::from_slice(&root) != Some(cp.root) {
                continue;
            }
            let frontier = Frontier::from_bytes(&frontier)
                .filter(|f| f.size() == cp.size && f.root() == cp.root);
            return Ok(Some((cp.size, frontier)));
        }
        Ok(None)
    }

    /// The key that handed over to this one, and the seq of that handover, when the caller
    /// trusts it ([`LedgerOptions::resume_keys`]): its checkpoints up to the handover are
    /// where this key may resume its tree. Read from the `keys` stream (a few rows, by index).
    async fn predecessor(&mut self) -> Result<Option<(NoteVerifier, u64)>> {
        if self.options.resume_keys.is_empty() {
            return Ok(None);
        }
        const SQL: &str = "SELECT seq, body FROM events WHERE stream = 'keys' \
                           AND kind = 'signing_key.rotated' ORDER BY seq";
        let rows: Vec<(i64, Vec<u8>)> = match &mut self.conn {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, move |c| {
                    let mut st = c.prepare(SQL)?;
                    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await?
            }
            WriterConn::Postgres(c) => {
                let read = sqlx::query_as(SQL).fetch_all(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the key handovers", read).await?
            }
        };
        let own = self.signer.verifier();
        let mut found = None;
        for (seq, body) in rows {
            let Ok(env) = grantline_ledger::decode(&body) else {
                continue;
            };
            let grantline_ledger::Payload::SigningKeyRotated(r) = env.payload else {
                continue;
            };
            if r.purpose != grantline_ledger::KeyPurpose::Checkpoint {
                continue;
            }
            let Some(h) = r
                .endorsement
                .as_deref()
                .and_then(|n| grantline_ledger::KeyHandover::parse_unverified(n).ok())
            else {
                continue;
            };
            // The first handover to this key, from a key the caller trusts, signed by it.
            if h.to == own
                && self.options.resume_keys.contains(&h.from)
                && r.endorsement.as_deref().is_some_and(|n| {
                    grantline_ledger::KeyHandover::open(n, std::slice::from_ref(&h.from)).is_ok()
                })
            {
                found = Some((h.from, seq.max(0) as u64));
                break;
            }
        }
        Ok(found)
    }

    /// The frontier saved with the newest checkpoint at or below `upto` signed by one of
    /// `trusted` whose frontier is of its size and leads to its root: where a key that signed
    /// no checkpoint yet resumes (see [`Self::sync_head`]). Rows no trusted key signed are
    /// passed over; past the newest 64, none is taken (the tree is read from the hashes).
    async fn read_latest_frontier(
        &mut self,
        upto: u64,
        trusted: &[NoteVerifier],
    ) -> Result<Option<Frontier>> {
        type Row = (i64, Vec<u8>, Vec<u8>, String);
        let rows: Vec<Row> = match &mut self.conn {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, move |c| {
                    let mut st = c.prepare(
                        "SELECT tree_size, frontier, root, note FROM checkpoints WHERE tree_size <= ?1 ORDER BY tree_size DESC, id DESC LIMIT 64",
                    )?;
                    let rows = st
                        .query_map([upto as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })?
                        .collect::<std::result::Result<Vec<Row>, _>>()?;
                    Ok(rows)
                })
                .await?
            }
            WriterConn::Postgres(c) => {
                let read = sqlx::query_as(
                    "SELECT tree_size, frontier, root, note FROM checkpoints WHERE tree_size <= $1 ORDER BY tree_size DESC, id DESC LIMIT 64",
                )
                .bind(upto as i64)
                .fetch_all(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the frontier", read).await?
            }
        };
        for (size, f, root, note) in rows {
            let Ok(cp) = grantline_ledger::Checkpoint::open(&note, trusted) else {
                continue;
            };
            if i64::try_from(cp.size) != Ok(size) || Hash::from_slice(&root) != Some(cp.root) {
                continue;
            }
            if let Some(f) =
                Frontier::from_bytes(&f).filter(|f| f.size() == cp.size && f.root() == cp.root)
            {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// The hashes of the rows in `(from, to]`, and the bodies of the key rotations among them.
    async fn read_hashes(&mut self, from: u64, to: u64) -> Result<(Vec<Hash>, Vec<Vec<u8>>)> {
        const SQL: &str = "SELECT hash, CASE WHEN kind = 'signing_key.rotated' THEN body END \
                           FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq";
        let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = match &mut self.conn {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, move |c| {
                    let mut st = c.prepare(SQL)?;
                    let rows = st.query_map([from as i64, to as i64], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await?
            }
            WriterConn::Postgres(c) => {
                let read = sqlx::query_as(SQL)
                    .bind(from as i64)
                    .bind(to as i64)
                    .fetch_all(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the hashes", read).await?
            }
        };
        let mut hashes = Vec::with_capacity(rows.len());
        let mut rotations = Vec::new();
        for (h, rotation) in rows {
            hashes.extend(Hash::from_slice(&h));
            rotations.extend(rotation);
        }
        Ok((hashes, rotations))
    }

    /// The bodies of the key rotations in `(from, to]` (a range scan by seq; rotations are rare).
    async fn read_rotations(&mut self, from: u64, to: u64) -> Result<Vec<Vec<u8>>> {
        const SQL: &str = "SELECT body FROM events WHERE seq > $1 AND seq <= $2 \
                           AND kind = 'signing_key.rotated' ORDER BY seq";
        Ok(match &mut self.conn {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, move |c| {
                    let mut st = c.prepare(SQL)?;
                    let rows =
                        st.query_map([from as i64, to as i64], |r| r.get::<_, Vec<u8>>(0))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await?
            }
            WriterConn::Postgres(c) => {
                let read = sqlx::query_scalar(SQL)
                    .bind(from as i64)
                    .bind(to as i64)
                    .fetch_all(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the key rotations", read).await?
            }
        })
    }

    /// Stops signing when one of `rotations` (bodies of `signing_key.rotated` another process
    /// appended) hands this writer's checkpoint key over.
    fn notice_rotations(&mut self, rotations: &[Vec<u8>]) {
        let own = self.signer.verifier().key_id_hex();
        for body in rotations {
            if self.key_retired.is_some() {
                return;
            }
            let why = match grantline_ledger::decode(body) {
                Ok(env) => match env.payload {
                    grantline_ledger::Payload::SigningKeyRotated(r)
                        if r.purpose == grantline_ledger::KeyPurpose::Checkpoint
                            && r.previous_key_id.as_deref() == Some(own.as_str()) =>
                    {
                        format!(
                            "this process's checkpoint key {own} was handed over to {}; it \
                             signs no more checkpoints (restart with the current key files)",
                            r.key_id
                        )
                    }
                    _ => continue,
                },
                // Fail closed: a rotation that does not read may be this key's handover.
                Err(e) => format!(
                    "a signing_key.rotated row does not decode ({e}); this process signs no \
                     more checkpoints until `grantline verify` has looked at the ledger"
                ),
            };
            tracing::error!("{why}");
            self.key_retired = Some(why);
        }
    }

    async fn load_versions(&mut self, streams: &[String]) -> Result<HashMap<String, u64>> {
        let mut out = HashMap::new();
        match &mut self.conn {
            WriterConn::Sqlite(c) => {
                let streams = streams.to_vec();
                let found = on_sqlite(c, move |c| {
                    let mut st =
                        c.prepare_cached("SELECT MAX(version) FROM events WHERE stream = ?1")?;
                    let mut out = Vec::with_capacity(streams.len());
                    for s in streams {
                        let v: Option<i64> = st.query_row([&s], |r| r.get(0))?;
                        if let Some(v) = v {
                            out.push((s, v as u64));
                        }
                    }
                    Ok(out)
                })
                .await?;
                out.extend(found);
            }
            WriterConn::Postgres(c) => {
                let read = pg_load_versions(c, streams);
                out = link::within(link::STATEMENT_DEADLINE, "the stream versions", read).await?
            }
        }
        Ok(out)
    }

    /// See [`Ledger::probe`]. The row is one an append could write next (seq after the head,
    /// chained to it), in a stream no event uses; it never commits.
    async fn probe(&mut self) -> Result<()> {
        let outcome = self.probe_inner().await;
        match &outcome {
            Ok(()) => self.rollback().await,
            Err(e) => self.after_failure(e).await,
        }
        self.healthy
            .store(outcome.is_ok(), std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = &outcome {
            tracing::debug!(error = %e, "ledger write probe failed");
        }
        outcome
    }

    async fn probe_inner(&mut self) -> Result<()> {
        if let Err(e) = self.take_lock().await {
            self.head = None;
            return Err(e);
        }
        let (seq, prev) = self.head.unwrap_or((0, GENESIS));
        let seq = seq as i64 + 1;
        let id = uuid::Uuid::now_v7();
        let time = Timestamp::now().0.max(self.last_time);
        let stream = "grantline:probe";
        let kind = "ledger.probe";
        match &mut self.conn {
            WriterConn::Sqlite(c) => {
                on_sqlite(c, |c| {
                    c.execute(
                        "INSERT INTO events (seq, id, time, stream, version, kind, body, prev_hash, hash) \
                         VALUES (?1, ?2, ?3, ?4, 1, ?5, X'', ?6, ?7)",
                        rusqlite::params![
                            seq,
                            id.as_bytes().as_slice(),
                            time,
                            stream,
                            kind,
                            prev.0.as_slice(),
                            [0u8; 32].as_slice()
                        ],
                    )?;
                    Ok(())
                })
                .await
            }
            WriterConn::Postgres(c) => {
                let insert = sqlx::query(
                    "INSERT INTO events (seq, id, time, stream, version, kind, body, prev_hash, hash) \
                     VALUES ($1, $2, TIMESTAMPTZ 'epoch' + $3 * INTERVAL '1 microsecond', $4, 1, $5, '\\x'::bytea, $6, $7)",
                )
                .bind(seq)
                .bind(id)
                .bind(time)
                .bind(stream)
                .bind(kind)
                .bind(prev.0.as_slice())
                .bind([0u8; 32].as_slice())
                .execute(&mut *c);
                link::within(link::STATEMENT_DEADLINE, "the probe's INSERT", insert).await?;
                Ok(())
            }
        }
    }

    /// After a failed commit or probe: a lost connection is given up at once (a statement cut
    /// off at its deadline leaves it in no known state, and a ROLLBACK would wait on it);
    /// otherwise the transaction is rolled back, and a connection that cannot even do that is
    /// given up too.
    async fn after_failure(&mut self, error: &StoreError) {
        if !is_refusal(error)
            && link::lost(error)
            && let Some(link) = self.link.as_mut()
        {
            link.failed(error, false);
        }
        self.rollback().await;
    }

    /// Rolls back whatever transaction is open. On PostgreSQL, a connection that cannot even do
    /// that is given up: were it used again, the next group could find the transaction still
    /// open — a probe's row in it — and commit it.
    async fn rollback(&mut self) {
        let wait = match &self.link {
            // Gone: the server ends its transaction with it (or, were it still waiting on a
            // connection cut halfway, after `idle_in_transaction_session_timeout`).
            Some(link) if !link.is_up() => return,
            Some(link) => link.connect_timeout(),
            None => Duration::ZERO,
        };
        let r = match &mut self.conn {
            WriterConn::Sqlite(c) => on_sqlite(c, |c| Ok(c.execute_batch("ROLLBACK")?)).await,
            WriterConn::Postgres(c) => {
                let rollback = sqlx::query("ROLLBACK").execute(&mut *c);
                link::within(wait, "ROLLBACK", rollback).await.map(|_| ())
            }
        };
        if let Err(e) = &r {
            tracing::debug!(error = %e, "rollback");
            if let Some(link) = self.link.as_mut() {
                link.failed(e, false);
            }
        }
    }
}

/// What the writer plans the next group with while the current one is written (PostgreSQL).
struct Ahead<'a> {
    rx: &'a mut mpsc::Receiver<Job>,
    stashed: &'a mut Option<Job>,
    planner: Planner<'a>,
}

/// What a group planned ahead is planned with.
struct Planner<'a> {
    side: &'a mut SideConn,
    /// The versions the writer knows, and those the group being written leaves.
    versions: &'a HashMap<StreamId, u64>,
    pending: &'a HashMap<StreamId, u64>,
    /// The Merkle frontier after the group being written.
    frontier: &'a Frontier,
    options: &'a LedgerOptions,
    /// The head the group being written leaves, and its time.
    base: (u64, Hash),
    now: i64,
    /// Whether the writer is busy (see `BUSY_GROUP`): the next group then takes no late
    /// appends under its lock.
    busy: bool,
}

impl Planner<'_> {
    /// Plans `taken` on what `next` holds, reading the versions no cache knows on the side
    /// connection; when it cannot, they (and all taken after them) wait to be planned under
    /// the lock.
    async fn plan(&mut self, next: &mut Option<Box<Prepared>>, taken: Vec<(Framed, Reply)>) {
        let (base, now) = (self.base, self.now);
        let p = next.get_or_insert_with(|| {
            let now = self
                .options
                .clock
                .as_ref()
                .map_or_else(Timestamp::now, |c| c())
                .0
                .max(now);
            Box::new(Prepared::empty(base, now, self.frontier.clone(), self.busy))
        });
        let p = &mut **p;
        if !p.more.is_empty() {
            p.more.extend(taken);
            return;
        }
        let (pending, versions) = (self.pending, self.versions);
        let missing = unknown_streams(&taken, |s| {
            p.plan.pending.contains_key(s)
                || pending.contains_key(s)
                || p.loaded.contains_key(s)
                || versions.contains_key(s)
        });
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|s| s.as_str().to_string()).collect();
            let Some(found) = self.side.load_versions(&names).await else {
                p.more.extend(taken);
                return;
            };
            for stream in missing {
                let v = found.get(stream.as_str()).copied().unwrap_or(0);
                p.loaded.insert(stream, v);
            }
        }
        let (planned_so_far, loaded) = (&p.plan.pending, &p.loaded);
        let chunk = plan_group(
            taken,
            p.plan.end,
            p.plan.now,
            |s| {
                planned_so_far
                    .get(s)
                    .or_else(|| pending.get(s))
                    .or_else(|| loaded.get(s))
                    .or_else(|| versions.get(s))
                    .copied()
                    .unwrap_or(0)
            },
            &mut p.frontier,
        );
        p.plan.extend(chunk);
    }
}

/// From this many appends a group, the writer is busy: it waits on its queue during the whole
/// write, planning each burst that comes into the next group, and what comes after the write
/// waits for the group after (a wake-up brings many appends, and planning under the lock is
/// what limits a busy writer). Below it, it takes what is waiting at the start of each write
/// step, when it is awake anyway, and what comes later joins the next group under its lock
/// (a wake-up for each of a few appends would cost more than planning them there).
const BUSY_GROUP: usize = 32;

/// Runs one step of the current group's write and, with `ahead`, meanwhile takes appends from
/// the queue and plans them into `next`, on the head the group will leave: those waiting at the
/// start of the step, and, when the writer is busy, each burst that comes until the step is
/// done. The step is driven all along (a slow read on the side connection never holds up the
/// COMMIT); a burst being planned when it is done is planned to the end first, since it holds
/// its appenders' replies.
async fn plan_ahead_during(
    step: impl std::future::Future<Output = Result<()>>,
    ahead: Option<&mut Ahead<'_>>,
    next: &mut Option<Box<Prepared>>,
) -> Result<()> {
    let Some(Ahead {
        rx,
        stashed,
        planner,
    }) = ahead
    else {
        return step.await;
    };
    let max = planner.options.max_batch_events;
    let room = |next: &Option<Box<Prepared>>| {
        let taken = next
            .as_ref()
            .map_or(0, |p| p.plan.rows.len() + events_of(&p.more));
        max.saturating_sub(taken)
    };
    tokio::pin!(step);
    let mut first = true;
    loop {
        let left = room(next);
        let open = stashed.is_none() && left > 0;
        let taken = if first {
            // What is waiting now.
            first = false;
            if open {
                take_jobs(rx, stashed, left)
            } else {
                Vec::new()
            }
        } else if planner.busy && open {
            // Busy: the next burst, unless the step is done first.
            tokio::select! {
                biased;
                written = &mut step => return written,
                job = rx.recv() => match job {
                    Some(Job::Append(a, reply)) => {
                        let left = left.saturating_sub(a.events.len());
                        let mut taken = vec![(a, reply)];
                        taken.extend(take_jobs(rx, stashed, left));
                        taken
                    }
                    Some(other) => {
                        **stashed = Some(other);
                        Vec::new()
                    }
                    // The ledger is being dropped; the run loop sees the queue closed too.
                    None => return step.await,
                },
            }
        } else {
            return step.await;
        };
        if taken.is_empty() {
            continue;
        }
        let plan = planner.plan(next, taken);
        tokio::pin!(plan);
        tokio::select! {
            biased;
            written = &mut step => {
                plan.await;
                return written;
            }
            () = &mut plan => {}
        }
    }
}

/// The events of `jobs`.
/// `jobs` split in two, as a stack of parts to commit: the first half on top.
fn halves(mut jobs: Vec<(Framed, Reply)>) -> [Vec<(Framed, Reply)>; 2] {
    let second = jobs.split_off(jobs.len() / 2);
    [second, jobs]
}

fn events_of(jobs: &[(Framed, Reply)]) -> usize {
    jobs.iter().map(|(a, _)| a.events.len()).sum()
}

/// Takes the appends waiting in the queue, up to `max_events` events; a job of another kind
/// ends the taking and is kept in `stashed`, to end the group these appends make.
fn take_jobs(
    rx: &mut mpsc::Receiver<Job>,
    stashed: &mut Option<Job>,
    max_events: usize,
) -> Vec<(Framed, Reply)> {
    let mut taken = Vec::new();
    let mut events = 0;
    while events < max_events {
        match rx.try_recv() {
            Ok(Job::Append(a, reply)) => {
                events += a.events.len();
                taken.push((a, reply));
            }
            Ok(other) => {
                *stashed = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    taken
}

/// The highest version of each of `streams` that has one, in one query.
async fn pg_load_versions(
    conn: &mut PgConnection,
    streams: &[String],
) -> Result<HashMap<String, u64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream, MAX(version) FROM events WHERE stream = ANY($1) GROUP BY stream",
    )
    .bind(streams)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(s, v)| (s, v as u64)).collect())
}

/// Sends each appender its answer.
fn answer(replies: Vec<(Reply, Result<Vec<Recorded>>)>) {
    for (reply, r) in replies {
        let _ = reply.send(r);
    }
}

/// What an appender of a failed commit is told: its rows were refused (only this append
/// failed), or the ledger cannot write (fail closed).
fn refused_or_unavailable(error: &StoreError) -> StoreError {
    if is_refusal(error) {
        StoreError::Invalid(format!("the database refused this append: {error}"))
    } else {
        StoreError::Unavailable(error.to_string())
    }
}
