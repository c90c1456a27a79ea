//! The background loop: catching up with other processes' events, recording closed rate-limit
//! windows, probing a failing ledger, expiring unused dynamic clients, writing snapshots.

use crate::app::App;
use std::time::Duration;

impl App {
    /// Background work: catch up with other processes' events, record closed rate-limit
    /// windows, probe a failing ledger, expire unused dynamic clients. Runs until the server
    /// stops; a round that panics is logged and the loop started again (catch-up stopping
    /// for good would turn every gateway request into a 503, and readiness would not say why).
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        tokio::spawn(async move {
            loop {
                match tokio::spawn(app.clone().background_loop()).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "the background loop failed; it starts again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if app.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                            return;
                        }
                    }
                }
            }
        })
    }

    /// The rounds of [`App::spawn_background`]. The slow steps — snapshots (a clone and an
    /// encoding of the whole state), expiring clients (an append, which may wait for the
    /// append lock) — run beside it, one of each at a time, so that catching up never waits
    /// for them.
    async fn background_loop(self) {
        let app = self;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut n: u64 = 0;
        let mut catching_up = grantline_store::Failing::default();
        let mut expiring: Option<tokio::task::JoinHandle<()>> = None;
        let mut snapshotting: Option<tokio::task::JoinHandle<()>> = None;
        let idle =
            |h: &Option<tokio::task::JoinHandle<()>>| h.as_ref().is_none_or(|h| h.is_finished());
        loop {
            tick.tick().await;
            if app.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                for h in [expiring, snapshotting].into_iter().flatten() {
                    let _ = h.await;
                }
                return;
            }
            n += 1;
            let was_failing = catching_up.is_failing();
            let caught_up = app.projection.catch_up(app.store()).await;
            catching_up.record("catching up with the ledger", &caught_up);
            // The store could no longer be read, or can again: the database may have gone
            // or come back, and readiness with it.
            let turned = was_failing != catching_up.is_failing();
            app.flush_rate_limits().await;
            // The write probe: every 5 s, every 2 s while the ledger is failing, and when
            // the store could no longer be read (the writer would otherwise find out only
            // at the next append). When it succeeds the ledger is healthy again and the
            // gateway resumes.
            if n.is_multiple_of(20)
                || (!app.ledger.healthy() && n.is_multiple_of(8))
                || (turned && catching_up.is_failing())
            {
                app.probe_ledger().await;
            }
            if n == 1 || n.is_multiple_of(4) || turned {
                app.log_readiness_change().await;
            }
            if n.is_multiple_of(20) && idle(&expiring) {
                let app = app.clone();
                expiring = Some(tokio::spawn(async move {
                    crate::bootstrap::expire_unused_clients(&app).await;
                }));
            }
            if n.is_multiple_of(240) && idle(&snapshotting) {
                let app = app.clone();
                snapshotting = Some(tokio::spawn(async move {
                    app.snapshot_if_due(crate::snapshots::EVERY_EVENTS).await;
                }));
            }
        }
    }

    /// Records the refusals of rate-limit windows that have closed: one
    /// `rate_limit.exceeded` per bucket and window.
    pub async fn flush_rate_limits(&self) {
        self.flush_rate_limits_at(self.now().0 / 1_000_000).await
    }

    /// As [`App::flush_rate_limits`], as of `now` (seconds).
    pub async fn flush_rate_limits_at(&self, now: i64) {
        let closed = self.rate_limiter.drain_closed(now);
        self.record_rate_limits(closed).await;
    }

    /// At shutdown: the refusals of every window, the open ones included.
    pub async fn flush_all_rate_limits(&self) {
        let all = self.rate_limiter.drain_all();
        self.record_rate_limits(all).await;
    }

    /// Appends one `rate_limit.exceeded` per window; what cannot be written now is kept for
    /// the next flush.
    async fn record_rate_limits(&self, closed: Vec<grantline_gateway::ratelimit::Exceeded>) {
        if closed.is_empty() {
            return;
        }
        let events = grantline_gateway::ratelimit::exceeded_events(&closed);
        // The ledger's answer, not the projection's: windows written are never restored and
        // recorded twice, even when the projection is slow to show them.
        let recorded = self
            .ledger
            .append(grantline_ledger::Append::new(events))
            .await;
        if recorded.is_err() {
            self.rate_limiter.restore(closed);
        }
        if let Ok(mut failing) = self.rate_limit_flush.lock() {
            failing.record("recording rate-limit refusals (kept until then)", &recorded);
        }
    }
}
