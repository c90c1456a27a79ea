//! Following the ledger by seq: other instances, the audit index and SIEM sinks resume from
//! their own cursor and never skip an event, because seq is assigned under the append lock
//! and commits in order.

use crate::Result;
use crate::database::{Pool, Store};
use crate::writer::PG_CHANNEL;
use grantline_ledger::{Hash, Recorded};
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::watch;

enum Wake {
    /// Same process: the writer's head watch.
    Local(watch::Receiver<u64>),
    /// Another process on PostgreSQL: LISTEN grantline_events.
    Listen(Box<PgListener>),
    /// Another process on SQLite: poll.
    Poll,
}

/// A cursor over the ledger that waits for new events.
pub struct Tail {
    store: Store,
    after: u64,
    prev: Option<Hash>,
    wake: Wake,
    poll: Duration,
    /// The rows of the last page, whose buffers the next page is read into.
    rows: Vec<grantline_ledger::verify::RawRow>,
}

impl Tail {
    /// Follows events with seq > `after`. Pass the writer's watch (`Ledger::subscribe`) when in
    /// the same process; otherwise PostgreSQL uses LISTEN/NOTIFY and SQLite polls.
    pub async fn new(
        store: &Store,
        after: u64,
        local: Option<watch::Receiver<u64>>,
    ) -> Result<Tail> {
        let wake = match (local, store.pool()) {
            (Some(rx), _) => Wake::Local(rx),
            (None, Pool::Postgres(_)) => {
                let mut l = store.pg_listener().await?;
                store.pg(l.listen(PG_CHANNEL)).await?;
                Wake::Listen(Box::new(l))
            }
            (None, Pool::Sqlite(_)) => Wake::Poll,
        };
        // Read again at the first rows when `after` is past the head now.
        let prev = if after > 0 {
            store.hash_at(after).await?
        } else {
            None
        };
        Ok(Tail {
            store: store.clone(),
            after,
            prev,
            wake,
            poll: Duration::from_millis(200),
            rows: Vec::new(),
        })
    }

    /// The last seq returned.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// Waits for and returns the next events (at most `limit`), each checked against its row
    /// and chained to the one before.
    pub async fn next(&mut self, limit: u32) -> Result<Vec<Recorded>> {
        loop {
            let reuse = std::mem::take(&mut self.rows);
            let rows = self.store.raw_rows_into(self.after, limit, reuse).await?;
            if !rows.is_empty() {
                if self.prev.is_none() {
                    self.prev = self.store.link_to(self.after).await?;
                }
                // Large batches are checked and decoded on several cores.
                let (out, rows) = crate::database::decode_rows(rows, self.after, self.prev).await?;
                // Only SQLite's scan reads into them; PostgreSQL's rows would only be kept.
                if matches!(self.store.pool(), Pool::Sqlite(_)) {
                    self.rows = rows;
                }
                if let Some(last) = out.last() {
                    self.after = last.seq();
                    self.prev = Some(last.hash);
                }
                return Ok(out);
            }
            match &mut self.wake {
                Wake::Local(rx) => {
                    if *rx.borrow_and_update() <= self.after {
                        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
                    }
                }
                Wake::Listen(l) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), l.recv()).await;
                }
                Wake::Poll => tokio::time::sleep(self.poll).await,
            }
        }
    }
}
