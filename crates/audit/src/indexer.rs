//! The indexer: follows the ledger by seq into the index, with one long-lived writer, commits
//! batched by count and time, and the cursor (last indexed seq and its chain hash) stored in
//! each commit, so it is exactly as durable as the documents it describes.

use crate::index::{AuditIndex, IndexError, SCHEMA_VERSION};
use crate::keys::KeyCache;
use crate::mapping::Directory;
use crate::query::{Expr, Field, Value};
use crate::record::AuditRecord;
use grantline_ledger::{Hash, Payload, Recorded, pii::user_subject};
use grantline_store::{Keyring, Store, StoreError, Tail};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tantivy::{IndexWriter, TantivyDocument, Term};
use tokio::sync::watch;

/// What can stop the indexer.
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("reading the ledger: {0}")]
    Store(#[from] StoreError),
    #[error("the index writer is gone")]
    Writer,
}

/// How often the indexer commits.
#[derive(Debug, Clone)]
pub struct IndexerOptions {
    /// Commit after this many new documents…
    pub commit_every: usize,
    /// …or this long after the first uncommitted one, whichever comes first.
    pub commit_after: Duration,
    /// Indexing threads and their total memory.
    pub threads: usize,
    pub memory_bytes: usize,
    /// Events read from the ledger at a time.
    pub read_batch: u32,
}

impl Default for IndexerOptions {
    fn default() -> Self {
        IndexerOptions {
            commit_every: 50_000,
            commit_after: Duration::from_millis(250),
            threads: 1,
            memory_bytes: 64 << 20,
            read_batch: 2_000,
        }
    }
}

/// Merge when 16 segments of a size have gathered rather than tantivy's 8: half as many merge
/// passes over a growing index (measured on 1M events: 60k → 64k events/s), for a few more
/// segments for a search to visit.
fn merge_policy() -> Box<dyn tantivy::merge_policy::MergePolicy> {
    let mut merges = tantivy::merge_policy::LogMergePolicy::default();
    merges.set_min_num_segments(16);
    Box::new(merges)
}

/// The cursor kept in each commit's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cursor {
    schema: u32,
    seq: u64,
    hash: Option<String>,
}

/// Where the indexer is: shared with searchers (the lag figure) and the server.
#[derive(Debug, Default)]
pub struct Progress {
    /// The last seq committed to the index (searchable).
    pub committed: AtomicU64,
}

/// Follows the ledger into the index. There is one per index: it holds the only writer.
pub struct Indexer {
    index: AuditIndex,
    writer: Arc<Mutex<IndexWriter<TantivyDocument>>>,
    dir: Directory,
    keys: KeyCache,
    store: Store,
    position: u64,
    position_hash: Option<Hash>,
    pending: usize,
    first_pending: Option<Instant>,
    options: IndexerOptions,
    progress: Arc<Progress>,
    /// The names known as of the last commit, for exports that start mid-ledger.
    shared: Arc<RwLock<Directory>>,
    /// Whether an event since the last commit added or erased a name.
    names_changed: bool,
    /// Tests: fail every erasure's second commit.
    #[cfg(test)]
    fail_erasures: bool,
}

impl Indexer {
    /// Takes the index's writer and resumes from its cursor. An index whose cursor does not
    /// match the ledger (another ledger, or a restored one) is emptied and rebuilt.
    pub async fn open(
        index: AuditIndex,
        store: &Store,
        keyring: Keyring,
        options: IndexerOptions,
    ) -> Result<Indexer, IndexerError> {
        let writer: IndexWriter<TantivyDocument> = index
            .index
            .writer_with_num_threads(options.threads.max(1), options.memory_bytes.max(16 << 20))
            .map_err(IndexError::from)?;
        writer.set_merge_policy(merge_policy());
        let mut me = Indexer {
            index,
            writer: Arc::new(Mutex::new(writer)),
            dir: Directory::default(),
            keys: KeyCache::new(keyring),
            store: store.clone(),
            position: 0,
            position_hash: None,
            pending: 0,
            first_pending: None,
            options,
            progress: Arc::default(),
            shared: Arc::default(),
            names_changed: true,
            #[cfg(test)]
            fail_erasures: false,
        };
        let cursor: Option<Cursor> = me
            .index
            .committed_payload()?
            .and_then(|p| serde_json::from_str(&p).ok());
        let valid = match &cursor {
            Some(c) if c.schema == SCHEMA_VERSION && c.seq == 0 => true,
            Some(c) if c.schema == SCHEMA_VERSION => {
                let at = store.hash_at(c.seq).await?;
                at.map(|h| h.to_hex()) == c.hash
            }
            _ => me.index.is_empty() && cursor.is_none(),
        };
        match (valid, cursor) {
            (true, Some(c)) => {
                me.position = c.seq;
                me.position_hash = if c.seq > 0 {
                    store.hash_at(c.seq).await?
                } else {
                    None
                };
                me.restore_directory()?;
            }
            (true, None) => {}
            (false, Some(c)) if c.schema != SCHEMA_VERSION => {
                tracing::warn!(
                    from = c.schema,
                    to = SCHEMA_VERSION,
                    "the audit index was built for another version of its schema; rebuilding it"
                );
                me.clear().await?;
            }
            (false, c) => {
                tracing::warn!(
                    cursor = ?c.map(|c| c.seq),
                    "the audit index does not match this ledger; rebuilding it"
                );
                me.clear().await?;
            }
        }
        // The names first, as at each commit: an export that reads the position finds the
        // names up to it.
        me.share_directory();
        me.progress.committed.store(me.position, Ordering::SeqCst);
        Ok(me)
    }

    /// The index this indexer writes.
    pub fn index(&self) -> &AuditIndex {
        &self.index
    }

    /// Shared progress (the last committed seq).
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// The users' and clients' names known as of the last commit.
    pub fn directory(&self) -> Arc<RwLock<Directory>> {
        self.shared.clone()
    }

    /// Publishes the names for exports — only when an event since the last commit changed
    /// them (a copy on every commit would cost the indexer time proportional to the users).
    fn share_directory(&mut self) {
        if !std::mem::take(&mut self.names_changed) {
            return;
        }
        if let Ok(mut d) = self.shared.write() {
            *d = self.dir.clone();
        }
    }

    /// The last seq added (committed or not).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Empties the index: the next events indexed start from seq 1.
    pub async fn clear(&mut self) -> Result<(), IndexerError> {
        {
            let w = self.writer.lock().map_err(|_| IndexerError::Writer)?;
            w.delete_all_documents().map_err(IndexError::from)?;
        }
        self.position = 0;
        self.position_hash = None;
        self.dir = Directory::default();
        self.names_changed = true;
        self.pending = 1;
        self.commit().await
    }

    /// Names of users and clients come from their own events; after a restart they are read
    /// back from the index.
    fn restore_directory(&mut self) -> Result<(), IndexerError> {
        self.dir = directory_of(&self.index)?;
        for u in self.dir.erased_users() {
            self.keys.forget(&user_subject(&u));
        }
        Ok(())
    }

    /// Maps an event, with every key it needs loaded first.
    async fn record(&mut self, event: &Recorded) -> Result<AuditRecord, IndexerError> {
        Ok(self.keys.map(event, &mut self.dir).await?)
    }

    /// Adds events (the next in seq order) to the index; commits when a batch is due.
    pub async fn add(&mut self, events: &[Recorded]) -> Result<(), IndexerError> {
        for event in events {
            if event.seq() <= self.position {
                continue;
            }
            if let Payload::UserErased(e) = event.payload() {
                self.erase(event, &e.user_id).await?;
                continue;
            }
            let rec = self.record(event).await?;
            self.names_changed |= matches!(
                event.envelope.kind(),
                grantline_ledger::Kind::UserCreated
                    | grantline_ledger::Kind::UserErased
                    | grantline_ledger::Kind::ClientRegistered
                    | grantline_ledger::Kind::ClientUpdated
            );
            let doc = self.index.document(&rec);
            {
                let w = self.writer.lock().map_err(|_| IndexerError::Writer)?;
                w.add_document(doc).map_err(IndexError::from)?;
            }
            self.position = event.seq();
            self.position_hash = Some(event.hash);
            self.pending += 1;
            self.first_pending.get_or_insert_with(Instant::now);
        }
        if self.due() {
            self.commit().await?;
        }
        Ok(())
    }

    fn due(&self) -> bool {
        self.pending >= self.options.commit_every
            || self
                .first_pending
                .is_some_and(|t| t.elapsed() >= self.options.commit_after)
    }

    /// Commits what was added, with the cursor, and makes it searchable.
    pub async fn commit(&mut self) -> Result<(), IndexerError> {
        if self.pending == 0 {
            return Ok(());
        }
        let cursor = serde_json::to_string(&Cursor {
            schema: SCHEMA_VERSION,
            seq: self.position,
            hash: self.position_hash.map(|h| h.to_hex()),
        })
        .unwrap_or_default();
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || -> Result<(), IndexerError> {
            let mut w = writer.lock().map_err(|_| IndexerError::Writer)?;
            let mut prepared = w.prepare_commit().map_err(IndexError::from)?;
            prepared.set_payload(&cursor);
            prepared.commit().map_err(IndexError::from)?;
            Ok(())
        })
        .await
        .map_err(|_| IndexerError::Writer)??;
        self.index.reader.reload().map_err(IndexError::from)?;
        self.index.set_head(self.position);
        self.pending = 0;
        self.first_pending = None;
        // The directory first: an export that sees the new position must find the names of
        // the users created up to it.
        self.share_directory();
        self.progress
            .committed
            .store(self.position, Ordering::SeqCst);
        Ok(())
    }

    /// Drops what was added since the last commit and goes back to the committed cursor.
    fn rollback(&mut self) -> Result<(), IndexerError> {
        {
            let mut w = self.writer.lock().map_err(|_| IndexerError::Writer)?;
            w.rollback().map_err(IndexError::from)?;
            // tantivy's rollback starts a writer with its default merge policy.
            w.set_merge_policy(merge_policy());
        }
        let cursor: Option<Cursor> = self
            .index
            .committed_payload()?
            .and_then(|p| serde_json::from_str(&p).ok());
        self.position = cursor.as_ref().map_or(0, |c| c.seq);
        // The committed cursor's own hash (checked against the ledger when the index was
        // opened, written by this indexer since): no read of the ledger, so a rollback while
        // the database is away leaves nothing half reset.
        self.position_hash = cursor
            .and_then(|c| c.hash)
            .and_then(|h| grantline_ledger::Hash::from_hex(&h));
        self.pending = 0;
        self.first_pending = None;
        self.keys.clear();
        self.dir = Directory::default();
        self.names_changed = true;
        self.restore_directory()
    }

    /// Indexes `user.erased` (`event`): removes the user's personal data from every document
    /// that held it, the records stored again with those fields reading `[erased]`.
    ///
    /// What came before is committed first (the rewrite searches committed documents), with
    /// the cursor before the erasure; the rewrite is committed with the erasure itself. So a
    /// failure or a crash in between resumes at the erasure and does it again: the cursor
    /// never passes an erasure the index has not done. The segments that held the old records
    /// are then merged away, so that the data leaves the index's files too, not only its
    /// searches.
    async fn erase(&mut self, event: &Recorded, user_id: &str) -> Result<(), IndexerError> {
        self.commit().await?;
        let rec = self.record(event).await?;
        let subject = user_subject(user_id);
        self.keys.forget(&subject);
        self.dir.forget_user(user_id);
        self.names_changed = true;
        let e = Expr::Or(vec![
            Expr::Match(
                Field::Actor,
                Value::Term(format!("user:{}", user_id.to_lowercase())),
            ),
            Expr::Match(Field::User, Value::Term(user_id.to_lowercase())),
            subject_match(&subject),
        ]);
        let records = self.index.all(&e)?;
        {
            let w = self.writer.lock().map_err(|_| IndexerError::Writer)?;
            for mut r in records {
                if !r.subjects.contains(&subject) && r.user_id.as_deref() != Some(user_id) {
                    continue;
                }
                r.erase_personal();
                w.delete_term(Term::from_field_u64(self.index.fields.seq, r.seq));
                w.add_document(self.index.document(&r))
                    .map_err(IndexError::from)?;
            }
            w.add_document(self.index.document(&rec))
                .map_err(IndexError::from)?;
        }
        self.position = event.seq();
        self.position_hash = Some(event.hash);
        self.pending += 1;
        // Tests: the rewrite's commit fails (a full disk), the position already moved on.
        #[cfg(test)]
        if self.fail_erasures {
            return Err(IndexerError::Writer);
        }
        self.commit().await?;
        self.merge_away_deleted().await
    }

    /// Writes every segment holding deleted documents again without them, and removes the
    /// files no commit needs any more.
    async fn merge_away_deleted(&mut self) -> Result<(), IndexerError> {
        let segments: Vec<tantivy::index::SegmentId> = self
            .index
            .index
            .searchable_segment_metas()
            .map_err(IndexError::from)?
            .into_iter()
            .filter(|m| m.has_deletes())
            .map(|m| m.id())
            .collect();
        if segments.is_empty() {
            return Ok(());
        }
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || -> Result<(), IndexerError> {
            let mut w = writer.lock().map_err(|_| IndexerError::Writer)?;
            // One by one: each segment keeps its size (and its place in the merge policy's
            // layers), only without its deleted documents. One that tantivy is merging by
            // itself already refuses a second merge; its own merge drops the deleted records
            // the same way, so that is no failure of the erasure (committed before this).
            for s in segments {
                if let Err(e) = w.merge(&[s]).wait() {
                    tracing::info!(segment = %s.short_uuid_string(), error = %e, "a segment with erased records was not merged now");
                }
            }
            w.garbage_collect_files().wait().map_err(IndexError::from)?;
            Ok(())
        })
        .await
        .map_err(|_| IndexerError::Writer)??;
        self.index.reader.reload().map_err(IndexError::from)?;
        Ok(())
    }

    /// Indexes every event up to the ledger's head; `progress(done, head)` after each batch.
    /// On a failure what was not committed is dropped and the indexer goes back to its
    /// committed cursor, so that whatever follows (the follower at start) reads again from
    /// there — an erasure cut short included.
    pub async fn catch_up(&mut self, progress: impl FnMut(u64, u64)) -> Result<u64, IndexerError> {
        let caught_up = self.catch_up_to_head(progress).await;
        if caught_up.is_err()
            && let Err(e) = self.rollback()
        {
            tracing::warn!(error = %e, "the audit index could not go back to its committed cursor");
        }
        caught_up
    }

    async fn catch_up_to_head(
        &mut self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, IndexerError> {
        let head = self.store.head().await?.map_or(0, |(s, _)| s);
        let tail = Tail::new(&self.store, self.position, None).await?;
        let batch = self.options.read_batch;
        // The next page is read while this one is indexed.
        let mut reading: Option<
            tokio::task::JoinHandle<(Tail, grantline_store::Result<Vec<Recorded>>)>,
        > = None;
        let mut idle = Some(tail);
        while self.position < head {
            let events = match reading.take() {
                Some(handle) => {
                    let (t, r) = handle.await.map_err(|_| IndexerError::Writer)?;
                    idle = Some(t);
                    r?
                }
                None => match idle.as_mut() {
                    Some(t) => t.next(batch).await?,
                    None => break,
                },
            };
            if let Some(mut t) = idle.take() {
                if t.position() < head {
                    reading = Some(tokio::spawn(async move {
                        let r = t.next(batch).await;
                        (t, r)
                    }));
                } else {
                    idle = Some(t);
                }
            }
            self.add(&events).await?;
            progress(self.position, head);
        }
        self.commit().await?;
        Ok(self.position)
    }

    /// Follows the ledger until `stop` is set: new events are searchable within about
    /// `commit_after` of being appended. Errors are retried with a back-off, cut short when
    /// `local`'s writer commits or PostgreSQL is found reachable again (see [`Wakes`]); a run
    /// of them (the database away) is logged once when it starts and once when it ends.
    pub async fn follow(mut self, local: Option<watch::Receiver<u64>>, stop: Arc<AtomicBool>) {
        const WHAT: &str = "the audit indexer";
        let mut tail = None;
        let mut backoff = FIRST_BACKOFF;
        let mut wakes = Wakes {
            commits: local.clone(),
            came_back: self.store.came_back(),
        };
        let mut failing = grantline_store::Failing::default();
        while !stop.load(Ordering::SeqCst) {
            if tail.is_none() {
                wakes.seen();
                match Tail::new(&self.store, self.position, local.clone()).await {
                    // Its success is not said to end a run of failures: made from the
                    // writer's watch at seq 0, it reads nothing. An indexed page is.
                    Ok(t) => tail = Some(t),
                    Err(e) => {
                        let wake = about_the_database(&e).then_some(&mut wakes);
                        failing.record(WHAT, &Err::<(), _>(e));
                        back_off(backoff, wake).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let Some(t) = tail.as_mut() else { continue };
            let wait = if self.pending > 0 {
                self.options.commit_after
            } else {
                Duration::from_millis(500)
            };
            wakes.seen();
            let result = match tokio::time::timeout(wait, t.next(self.options.read_batch)).await {
                Ok(Ok(events)) => {
                    let added = self.add(&events).await;
                    if added.is_ok() {
                        failing.record(WHAT, &added);
                    }
                    added
                }
                Ok(Err(e)) => Err(e.into()),
                Err(_) => self.commit().await,
            };
            match result {
                Ok(()) => backoff = FIRST_BACKOFF,
                Err(e) => {
                    tracing::debug!(
                        seq = self.position,
                        "audit indexer starts again from its last commit"
                    );
                    let wake = matches!(&e, IndexerError::Store(e) if about_the_database(e))
                        .then_some(&mut wakes);
                    failing.record(WHAT, &Err::<(), _>(e));
                    // Start again from what is committed: nothing is skipped or doubled.
                    tail = None;
                    back_off(backoff, wake).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if let Err(e) = self.rollback() {
                        tracing::warn!(error = %e, "audit index: rollback failed");
                    }
                }
            }
        }
        if let Err(e) = self.commit().await {
            tracing::warn!(error = %e, "audit index: last commit failed");
        }
    }
}

/// The follower's first wait after a failure; it doubles with each failure after it.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two attempts while nothing commits.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What cuts a back-off short: the local writer's commits, and PostgreSQL found reachable
/// again. Either means the database is back, and the index should not lag it by the rest of a
/// long back-off.
struct Wakes {
    commits: Option<watch::Receiver<u64>>,
    came_back: Option<watch::Receiver<u64>>,
}

impl Wakes {
    /// Marks what happened so far as seen: called as an attempt starts, so that only what
    /// happens after it ends the wait after its failure — a recovery while it ran included.
    fn seen(&mut self) {
        for rx in [&mut self.commits, &mut self.came_back]
            .into_iter()
            .flatten()
        {
            rx.borrow_and_update();
        }
    }
}

/// Whether a failure to read the ledger is the database's being away (which a commit or a
/// recovery ends), not something a retry at the commit rate would only repeat (an index on
/// a full disk, a row that does not check).
fn about_the_database(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Unreachable(_)
            | StoreError::Unavailable(_)
            | StoreError::Database(_)
            | StoreError::Sqlite(_)
    )
}

/// Waits for a change of `rx`, forever when there is none to wait for; a sender gone is
/// dropped, as it will never change again.
async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    if let Some(r) = rx.as_mut()
        && r.changed().await.is_ok()
    {
        return;
    }
    *rx = None;
    std::future::pending::<()>().await
}

/// Waits `backoff` after a failure, or only until one of `wakes` changes (when the failure
/// was the database's). [`FIRST_BACKOFF`] is waited in any case, so a database that takes
/// commits but still fails the indexer's reads is not tried at the commit rate.
async fn back_off(backoff: Duration, wakes: Option<&mut Wakes>) {
    let until = tokio::time::Instant::now() + backoff;
    tokio::time::sleep(backoff.min(FIRST_BACKOFF)).await;
    let Some(wakes) = wakes else {
        tokio::time::sleep_until(until).await;
        return;
    };
    tokio::select! {
        () = changed(&mut wakes.commits) => {}
        () = changed(&mut wakes.came_back) => {}
        () = tokio::time::sleep_until(until) => {}
    }
}

fn subject_match(subject: &str) -> Expr {
    Expr::Match(Field::Subject, Value::Term(subject.to_lowercase()))
}

/// The users' and clients' names an index holds (from their `user.created`,
/// `client.registered`/`client.updated` and `user.erased` records), for a reader that starts
/// mid-ledger.
pub fn directory_of(index: &AuditIndex) -> Result<Directory, IndexError> {
    let kinds = [
        "user.created",
        "client.registered",
        "client.updated",
        "user.erased",
    ];
    let e = Expr::Or(
        kinds
            .iter()
            .map(|k| Expr::Match(Field::Kind, Value::Term(k.to_string())))
            .collect(),
    );
    let mut dir = Directory::default();
    for r in index.all(&e)? {
        match r.kind.as_str() {
            "user.created" => {
                if let Some(u) = &r.user_id {
                    dir.remember_user(u, r.user_name.clone(), r.user_email.clone());
                }
            }
            "user.erased" => {
                if let Some(u) = &r.user_id {
                    dir.forget_user(u);
                }
            }
            _ => {
                if let (Some(c), Some(n)) = (&r.client_id, &r.client_name) {
                    dir.remember_client(c, n);
                }
            }
        }
    }
    Ok(dir)
}

/// The most renamed clients [`clients_as_of`] names as they were, and the most `client.updated`
/// records it reads to find them.
pub const MAX_RENAMED: usize = 1_000;
const MAX_RENAME_RECORDS: usize = 50_000;

/// Brings the clients' names in `dir` (as of the index's head, from [`directory_of`] or the
/// indexer) back to what they were at seq `after`, for an export of the events after it: a
/// client renamed since (`client.updated`) is named as it was then, not by the name it chose
/// later. Clients registered after `after` may stay (no event before their registration names
/// them); users are not renamed, and an erasure holds whatever the seq (the key is gone).
pub fn clients_as_of(
    index: &AuditIndex,
    dir: &mut Directory,
    after: u64,
) -> Result<(), IndexError> {
    // From the start, every client is named by its own registration first.
    if after == 0 {
        return Ok(());
    }
    let kind = |k: &str| Expr::Match(Field::Kind, Value::Term(k.to_string()));
    let since = Expr::And(vec![
        kind("client.updated"),
        Expr::Match(Field::Seq, Value::Seq(after.saturating_add(1), u64::MAX)),
    ]);
    // Bounded, as one export page's work must be: the clients renamed first after `after`
    // (the ones its events are likeliest to name), at most MAX_RENAMED of them; any beyond
    // keep the name the index knows now (logged).
    let mut renamed: Vec<String> = Vec::new();
    let mut cursor = None;
    let mut read = 0;
    loop {
        let page = index.search(&since, crate::SortOrder::Asc, cursor, crate::MAX_PAGE)?;
        read += page.records.len();
        for id in page.records.into_iter().filter_map(|r| r.client_id) {
            if !renamed.contains(&id) {
                renamed.push(id);
            }
        }
        match page.next {
            Some(_) if renamed.len() >= MAX_RENAMED || read >= MAX_RENAME_RECORDS => {
                tracing::warn!(
                    after,
                    "more than {MAX_RENAMED} clients renamed since the export's cursor: the rest keep their newest names"
                );
                break;
            }
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    renamed.truncate(MAX_RENAMED);
    for id in renamed {
        let then = Expr::And(vec![
            Expr::Or(vec![kind("client.registered"), kind("client.updated")]),
            Expr::Match(Field::Client, Value::Term(id.to_lowercase())),
            Expr::Match(Field::Seq, Value::Seq(0, after)),
        ]);
        // `client:` matches names too: the newest record of this very id.
        let mut cursor = None;
        loop {
            let page = index.search(&then, crate::SortOrder::Desc, cursor, 100)?;
            let found = page
                .records
                .iter()
                .find(|r| r.client_id.as_deref() == Some(id.as_str()))
                .and_then(|r| r.client_name.clone());
            if let Some(name) = found {
                dir.remember_client(&id, &name);
                break;
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SortOrder;
    use crate::record::ERASED;
    use tokio::time::Instant;

    /// How long `back_off(backoff, …)` waits (in the paused clock) after an attempt that
    /// failed, when the writer commits `commit_after` into the wait (never when `None`) and
    /// PostgreSQL comes back `came_back_after` into it.
    async fn waited(
        backoff: Duration,
        commit_after: Option<Duration>,
        came_back_after: Option<Duration>,
    ) -> Duration {
        let (commit, commits) = watch::channel(0u64);
        let (back, came_back) = watch::channel(0u64);
        let mut wakes = Wakes {
            commits: Some(commits),
            came_back: Some(came_back),
        };
        wakes.seen();
        let after = |when: Option<Duration>, tx: watch::Sender<u64>| async move {
            if let Some(when) = when {
                tokio::time::sleep(when).await;
                tx.send_replace(1);
            }
            // The sender stays until the test ends.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        };
        let tasks = [
            tokio::spawn(after(commit_after, commit)),
            tokio::spawn(after(came_back_after, back)),
        ];
        let start = Instant::now();
        back_off(backoff, Some(&mut wakes)).await;
        for t in tasks {
            t.abort();
        }
        start.elapsed()
    }

    /// The index's stored-record files (one per segment).
    fn store_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "store"))
            .collect()
    }

    /// An erasure that fails (or a process that dies) between the erasure's two commits is
    /// done again when the index resumes: the committed cursor never passes an erasure not
    /// done. And once done, the user's data is gone from the index's files, not only from its
    /// searches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_erasure_cut_short_is_done_again_and_leaves_the_files() {
        use grantline_ledger::{Actor, Append, NewEvent, StreamId, UserErased};
        use grantline_store::testing;
        let db = testing::sqlite().await;
        let ledger = grantline_store::Ledger::open(&db.db, testing::signer(), Default::default())
            .await
            .unwrap();
        let keyring = Keyring::new(ledger.store());
        let email = "alice.erasure@example.com";
        let mut events = vec![testing::user_created(&keyring, "u_alice", "alice", email).await];
        events.extend((0..20).map(testing::tool_call));
        ledger.append(Append::new(events)).await.unwrap();
        let found = |index: &AuditIndex| {
            let e = crate::query::parse(&format!("user:{email}"), 0).unwrap();
            index
                .search(&e, SortOrder::Asc, None, 10)
                .unwrap()
                .records
                .len()
        };
        let dir = tempfile::tempdir().unwrap();
        let index = AuditIndex::open(dir.path()).unwrap();
        let mut indexer = Indexer::open(
            index.clone(),
            ledger.store(),
            keyring.clone(),
            IndexerOptions::default(),
        )
        .await
        .unwrap();
        indexer.catch_up(|_, _| {}).await.unwrap();
        assert_eq!(found(&index), 1);
        // The records are stored compressed, so the email is no string of the files to look
        // for: the files of the segments that held it must go.
        let held = store_files(dir.path());
        assert!(!held.is_empty());

        let erased = ledger
            .append(Append::new(vec![NewEvent::new(
                StreamId::user("u_alice"),
                Actor::Operator,
                UserErased {
                    user_id: "u_alice".into(),
                },
            )]))
            .await
            .unwrap();
        let erasure = erased[0].seq();
        keyring
            .erase(&grantline_ledger::pii::user_subject("u_alice"))
            .await
            .unwrap();
        indexer.fail_erasures = true;
        assert!(indexer.catch_up(|_, _| {}).await.is_err());
        assert_eq!(
            indexer.position(),
            erasure - 1,
            "back at the committed cursor, before the erasure"
        );
        assert_eq!(found(&index), 1, "not done yet");
        drop(indexer);

        // Resumed (as after a restart, or by the follower after a failed start), the erasure
        // is done.
        let mut indexer = Indexer::open(
            index.clone(),
            ledger.store(),
            keyring.clone(),
            IndexerOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(indexer.position(), erasure - 1);
        indexer.catch_up(|_, _| {}).await.unwrap();
        assert_eq!(indexer.position(), erasure);
        assert_eq!(found(&index), 0);
        assert_eq!(
            index.get(1).unwrap().unwrap().user_email.as_deref(),
            Some(ERASED)
        );
        drop(indexer);
        let left: Vec<_> = held.iter().filter(|f| f.exists()).collect();
        assert!(left.is_empty(), "{left:?} still hold the erased records");
        let segments = index.index.searchable_segment_metas().unwrap();
        assert!(segments.iter().all(|m| !m.has_deletes()), "{segments:?}");
        ledger.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_or_postgresql_back_cuts_a_long_back_off_short() {
        let long = Duration::from_millis(6400);
        let second = Some(Duration::from_secs(1));
        assert_eq!(waited(long, None, None).await, long);
        assert_eq!(waited(long, second, None).await, Duration::from_secs(1));
        assert_eq!(waited(long, None, second).await, Duration::from_secs(1));
        // A commit at once still leaves the first part to wait: no retry at the commit rate.
        let soon = Some(Duration::from_millis(10));
        assert_eq!(waited(long, soon, None).await, FIRST_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_seen_before_the_attempt_and_a_writer_gone_change_nothing() {
        let backoff = Duration::from_millis(1600);
        let (tx, rx) = watch::channel(0u64);
        let mut wakes = Wakes {
            commits: Some(rx),
            came_back: None,
        };
        // A commit before the attempt began says nothing of how it failed.
        tx.send_replace(7);
        wakes.seen();
        let start = Instant::now();
        back_off(backoff, Some(&mut wakes)).await;
        assert_eq!(
            start.elapsed(),
            backoff,
            "a commit seen before waited nothing off"
        );
        // One while the attempt ran, before its failure, does.
        wakes.seen();
        tx.send_replace(8);
        let start = Instant::now();
        back_off(backoff, Some(&mut wakes)).await;
        assert_eq!(start.elapsed(), FIRST_BACKOFF);
        // The writer shut down: its channel's closing is no commit.
        wakes.seen();
        drop(tx);
        let start = Instant::now();
        back_off(backoff, Some(&mut wakes)).await;
        assert_eq!(start.elapsed(), backoff);
        assert!(wakes.commits.is_none());
    }

    /// A failure that is not the database's is retried on the back-off alone: the follower
    /// passes no wakes for it (an index on a full disk would be written again at every commit).
    #[tokio::test(start_paused = true)]
    async fn only_the_databases_failures_are_cut_short() {
        assert!(about_the_database(&StoreError::Unreachable(
            "refused".into()
        )));
        assert!(about_the_database(&StoreError::Unavailable(
            "no writer".into()
        )));
        assert!(!about_the_database(&StoreError::Corrupt {
            seq: 3,
            problem: "hash".into()
        }));
        let backoff = Duration::from_millis(3200);
        let start = Instant::now();
        back_off(backoff, None).await;
        assert_eq!(start.elapsed(), backoff);
    }
}
