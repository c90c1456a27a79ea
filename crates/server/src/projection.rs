//! The in-memory `State`, kept current from the ledger.
//!
//! The writer thread offers every commit of this process (in seq order, before the appenders
//! are answered); events appended by other processes (another instance on the same PostgreSQL
//! database, the CLI on the same SQLite file) are read back from the store when a gap shows,
//! on an optimistic-concurrency conflict, and by a periodic catch-up.

use grantline_ledger::Recorded;
use grantline_state::{State, apply};
use grantline_store::{Result, Store};
use parking_lot::{RwLock, RwLockReadGuard};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// Called with the user id of every `user.erased` folded.
type ErasedHook = Box<dyn Fn(&str) + Send + Sync>;

/// The most events ahead of a gap that [`Projection::offer`] keeps until the gap is filled.
const MAX_PENDING: usize = 10_000;

pub struct Projection {
    state: RwLock<State>,
    /// Events offered ahead of a gap, waiting for the events before them.
    pending: Mutex<BTreeMap<u64, Recorded>>,
    applied: watch::Sender<u64>,
    catching_up: tokio::sync::Mutex<()>,
    /// When a read of the store last succeeded (every catch-up ends with one).
    caught_up: Mutex<std::time::Instant>,
    /// Told of every user erased, by whichever process: the key cache forgets the key.
    on_erased: std::sync::OnceLock<ErasedHook>,
    /// Counts the events folded that may take authority away ([`may_take_authority`]): a
    /// caller judged before can tell, without the state's lock, whether it must be judged
    /// again.
    authority: std::sync::atomic::AtomicU64,
    /// The seq and hash of the last event folded here (unknown after a start from a
    /// snapshot until the first): the next read must link to it, not to whatever the store
    /// holds at that seq now — a ledger rewritten or gone back under this process would
    /// otherwise be folded on top of a state that holds events it no longer has.
    folded: Mutex<Option<(u64, grantline_ledger::Hash)>>,
}

/// Whether an event of `kind` may take away what a credential could do: revoke or expire it,
/// disable its user or client, change a role or the policy. Exhaustive, so that a new kind is
/// classified when it is added.
pub fn may_take_authority(kind: grantline_ledger::Kind) -> bool {
    use grantline_ledger::Kind as K;
    match kind {
        K::ClientUpdated
        | K::ClientDisabled
        | K::ClientExpired
        | K::UserDisabled
        | K::UserRoleChanged
        | K::UserEnabled
        | K::UserErased
        | K::UserSessionsEnded
        | K::CodeReplayed
        | K::TokenRefreshed
        | K::TokenRevoked
        | K::RefreshReuseDetected
        | K::FamilyRevoked
        | K::GrantRevoked
        | K::PatRevoked
        | K::SigningKeyRotated
        | K::PolicyChanged => true,
        K::ClientRegistered
        | K::RegistrationRejected
        | K::UserCreated
        | K::UserPasswordSet
        | K::UserLinked
        | K::LoginSucceeded
        | K::LoginFailed
        | K::SessionEnded
        | K::ConsentGranted
        | K::ConsentDenied
        | K::CodeIssued
        | K::CodeRedeemed
        | K::TokenIssued
        | K::OAuthRefused
        | K::PatCreated
        | K::ToolListed
        | K::ToolCallStarted
        | K::ToolCalled
        | K::AuthorizationDenied
        | K::RateLimitExceeded
        | K::AuditSearched
        | K::AuditExported
        | K::UpstreamTokenExchanged
        | K::ContentRead => false,
    }
}

/// How long the projection may go without reading the store before callers that must not
/// miss another process's revocation (the gateway) refuse to trust it.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Events read from the store at a time.
const BATCH: u32 = 10_000;

impl Projection {
    pub fn new(state: State) -> Projection {
        let seq = state.seq;
        Projection {
            state: RwLock::new(state),
            pending: Mutex::new(BTreeMap::new()),
            applied: watch::channel(seq).0,
            catching_up: tokio::sync::Mutex::new(()),
            caught_up: Mutex::new(std::time::Instant::now()),
            on_erased: std::sync::OnceLock::new(),
            authority: std::sync::atomic::AtomicU64::new(0),
            folded: Mutex::new(None),
        }
    }

    /// Starts from `state` (a snapshot checked against the ledger) when it is ahead of what
    /// is folded; the tail is folded from there by [`Projection::catch_up`].
    pub fn seed(&self, state: State) {
        let mut current = self.state.write();
        if state.seq <= current.seq {
            return;
        }
        *current = state;
        let seq = current.seq;
        self.authority
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        drop(current);
        self.applied.send_replace(seq);
    }

    /// Calls `f` with the user id of every `user.erased` folded from now on.
    pub fn on_erased(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_erased.set(Box::new(f));
    }

    /// Builds the state from the whole ledger.
    pub async fn load(store: &Store) -> Result<Projection> {
        let p = Projection::new(State::default());
        p.catch_up(store).await?;
        Ok(p)
    }

    /// A read view of the state; never hold it across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// The last seq folded.
    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    /// Folds `events` (ascending seq) as far as they connect to the state. Events that
    /// follow the state directly are folded where they lie; only events ahead of a gap are
    /// copied, to wait for the events before them.
    pub fn offer(&self, events: &[Recorded]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.state.write();
        for e in events {
            if e.seq() == state.seq + 1 {
                self.fold(&mut state, e);
                self.fold_pending(&mut pending, &mut state);
            } else if e.seq() > state.seq {
                // A gap that no catch-up fills (the store unreadable while this process's own
                // appends go on) must not hold every later event in memory: past the bound the
                // copies are dropped, and the next catch-up reads them from the store.
                if pending.len() >= MAX_PENDING {
                    pending.clear();
                }
                pending.insert(e.seq(), e.clone());
            }
        }
        self.fold_pending(&mut pending, &mut state);
        let seq = state.seq;
        drop(state);
        drop(pending);
        self.applied.send_replace(seq);
    }

    /// Folds what is held and now follows the state; forgets what the state has passed.
    fn fold_pending(&self, pending: &mut BTreeMap<u64, Recorded>, state: &mut State) {
        while let Some(entry) = pending.first_entry() {
            let seq = *entry.key();
            if seq <= state.seq {
                entry.remove();
            } else if seq == state.seq + 1 {
                let e = entry.remove();
                self.fold(state, &e);
            } else {
                break;
            }
        }
    }

    /// How many events that may take authority away were folded (see [`may_take_authority`]).
    /// Read before a caller is judged, it changes if anything that could change the judgement
    /// is folded after.
    pub fn authority(&self) -> u64 {
        self.authority.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Folds the event that follows the state.
    fn fold(&self, state: &mut State, e: &Recorded) {
        apply(state, e);
        if let Ok(mut f) = self.folded.lock() {
            *f = Some((e.seq(), e.hash));
        }
        if may_take_authority(e.envelope.kind()) {
            self.authority
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if let (grantline_ledger::Payload::UserErased(u), Some(f)) =
            (e.payload(), self.on_erased.get())
        {
            f(&u.user_id);
        }
    }

    /// Reads and folds whatever the store has beyond the state.
    pub async fn catch_up(&self, store: &Store) -> Result<()> {
        let asked = std::time::Instant::now();
        let _one = self.catching_up.lock().await;
        // A catch-up whose read began after this call did everything it would: many callers
        // waiting here (a burst of unknown tokens) make one read, not one each.
        if self.caught_up.lock().is_ok_and(|t| *t >= asked) {
            return Ok(());
        }
        loop {
            let after = self.seq();
            let read_at = std::time::Instant::now();
            let folded = self
                .folded
                .lock()
                .ok()
                .and_then(|f| *f)
                .filter(|(seq, _)| *seq == after);
            let events = match folded {
                Some((_, hash)) => store.read_linked(after, hash, BATCH).await?,
                None => store.read(after, BATCH).await?,
            };
            let reached_end = events.len() < BATCH as usize;
            self.offer(&events);
            if reached_end {
                // Everything committed before this read began is folded now.
                if let Ok(mut t) = self.caught_up.lock() {
                    *t = read_at;
                }
                return Ok(());
            }
        }
    }

    /// Whether the store was read within [`STALE_AFTER`]: events other processes appended
    /// (a revocation from the CLI or another instance) are folded by then.
    pub fn fresh(&self) -> bool {
        self.caught_up
            .lock()
            .map(|t| t.elapsed() < STALE_AFTER)
            .unwrap_or(false)
    }

    /// How long ago the store was last read to its end.
    pub fn since_read(&self) -> std::time::Duration {
        self.caught_up
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(std::time::Duration::MAX)
    }

    /// Waits until `seq` is folded, reading from the store if another process wrote the events
    /// before it.
    pub async fn wait_for(&self, seq: u64, store: &Store) -> Result<()> {
        if self.seq() >= seq {
            return Ok(());
        }
        let mut rx = self.applied.subscribe();
        for _ in 0..3 {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), rx.changed()).await;
            if self.seq() >= seq {
                return Ok(());
            }
            self.catch_up(store).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantline_ledger::{GENESIS, Payload, samples};

    fn events(seqs: impl Iterator<Item = u64>) -> Vec<Recorded> {
        let failed = samples::all()
            .into_iter()
            .find(|p| matches!(p, Payload::LoginFailed(_)))
            .expect("a login.failed sample");
        let one = Recorded {
            envelope: samples::envelope(1, failed),
            prev_hash: GENESIS,
            hash: GENESIS,
        };
        seqs.map(|seq| {
            let mut e = one.clone();
            e.envelope.seq = seq;
            e
        })
        .collect()
    }

    #[test]
    fn events_ahead_of_a_gap_are_held_up_to_a_bound() {
        let p = Projection::new(State::default());
        let ahead = events(2..=(MAX_PENDING as u64 * 3));
        p.offer(&ahead);
        let held = p.pending.lock().unwrap().len();
        assert!(held <= MAX_PENDING && held > 0, "{held}");
        assert_eq!(p.seq(), 0, "nothing folded past the gap");
        // The gap filled: what is held follows at once.
        let first_held = *p.pending.lock().unwrap().keys().next().unwrap();
        let filler = events(1..first_held);
        p.offer(&filler);
        assert_eq!(p.seq(), MAX_PENDING as u64 * 3);
        assert!(p.pending.lock().unwrap().is_empty());
    }
}
