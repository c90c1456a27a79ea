//! The audit trail inside the server: this instance's index following the shared ledger, and
//! who may read the trail (a signed-in auditor or admin, an `audit:read` token for the audit
//! resource, a personal access token with that scope, HTTP Basic as an auditor or admin).

use crate::app::{App, AppError};
use crate::context::RequestContext;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use grantline_audit::access::{self, Reader};
use grantline_audit::mapping::Directory;
use grantline_audit::{AuditIndex, Indexer, IndexerOptions, Progress};
use grantline_ledger::{AuditSurface, NewEvent};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// This instance's audit index and the task that keeps it following the ledger.
/// Why names could not be had for a view of events.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    #[error(transparent)]
    Index(#[from] grantline_audit::IndexError),
    #[error(transparent)]
    Store(#[from] grantline_store::StoreError),
}

pub struct AuditService {
    pub index: AuditIndex,
    pub progress: Arc<Progress>,
    /// Users' and clients' names as of the index's last commit (for exports).
    pub directory: Arc<RwLock<Directory>>,
    pub dir: PathBuf,
    stop: Arc<AtomicBool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Work on the index at once (searches, downloads, summaries): the rest wait their turn,
    /// so that readers cannot take every blocking thread and core between them.
    busy: Arc<tokio::sync::Semaphore>,
}

/// Index readings run at once; the others wait, at most [`TURN_WAIT`].
const READINGS_AT_ONCE: usize = 2;
/// The longest a reading waits for its turn.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How many indexes instances sharing a data directory keep beside each other.
const SIBLINGS: usize = 16;

/// The `n`th index beside `dir` (the first is `dir` itself).
fn sibling(dir: &std::path::Path, n: usize) -> PathBuf {
    if n == 1 {
        return dir.to_path_buf();
    }
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!("-{n}"));
    dir.with_file_name(name)
}

/// Removes each index beside `dir` (but this instance's `n`th) that no process writes and that
/// stopped before a `user.erased` event: it still holds that user's personal data, and nothing
/// may ever open it again to erase it. One that missed no erasure is kept (an instance that
/// takes it again only catches up). Also removes what an interrupted removal left.
async fn remove_stale_siblings(store: &grantline_store::Store, dir: &std::path::Path, n: usize) {
    let head = match store.head().await {
        Ok(head) => head.map_or(0, |(seq, _)| seq),
        Err(e) => {
            tracing::warn!(error = %e, "stale audit indexes beside this one were not looked at");
            return;
        }
    };
    for m in (1..=SIBLINGS).filter(|&m| m != n) {
        let path = sibling(dir, m);
        let unused = match AuditIndex::take_unused(&path) {
            Ok(Some(unused)) => unused,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "a stale audit index was not looked at");
                continue;
            }
        };
        let stale = async {
            if !unused.current() {
                return Ok(true);
            }
            if unused.seq() == 0 {
                return Ok(false);
            }
            // An index of another ledger (a restored one) is rebuilt by whoever opens it, and
            // what it holds may have been erased since: it is not kept either.
            let at = store.hash_at(unused.seq()).await?;
            if at.map(|h| h.to_hex()).as_deref() != unused.hash() {
                return Ok(true);
            }
            store
                .read_kinds(&[grantline_ledger::Kind::UserErased], unused.seq(), head)
                .await
                .map(|erasures| !erasures.is_empty())
        };
        match stale.await {
            Ok(false) => {}
            Ok(true) => match unused.remove() {
                Ok(()) => {
                    tracing::info!(dir = %path.display(), "removed a stale audit index that still held personal data erased since")
                }
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "a stale audit index holding erased personal data was not removed")
                }
            },
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "a stale audit index was not looked at")
            }
        }
    }
    // What a removal interrupted by a crash left aside (`<name>[-<n>].removed-<…>`): one whose
    // writer's lock is free, or that holds no index any more and was last touched long ago
    // (a removal in progress holds the lock, and deletes quickly).
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let prefix = name.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let ours = entry_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once(".removed-"))
            .is_some_and(|(n, _)| {
                n.is_empty()
                    || n.strip_prefix('-')
                        .is_some_and(|n| n.parse::<usize>().is_ok())
            });
        if !ours {
            continue;
        }
        let path = entry.path();
        let old = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(600))
        };
        let left = match AuditIndex::take_unused(&path) {
            Ok(Some(unused)) => Some(unused),
            // Held: being removed now.
            Ok(None) if path.join("meta.json").exists() => continue,
            // No index any more, or one that does not open: left long ago, or not.
            Ok(None) | Err(_) if old() => None,
            Ok(None) | Err(_) => continue,
        };
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(dir = %path.display(), error = %e, "what a removed audit index left was not removed");
        }
        drop(left);
    }
}

impl AuditService {
    /// Runs `f` on the index on a blocking thread. A search decodes the stored records it
    /// returns, and a download or an assistant's summary reads up to 100,000 of them: seconds
    /// the async workers (two on a two-core machine, serving every other request and the
    /// probes) must not spend.
    pub async fn with_index<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AuditIndex) -> Result<T, grantline_audit::IndexError> + Send + 'static,
    ) -> Result<T, grantline_audit::IndexError> {
        let index = self.index.clone();
        // Held by the blocking work until it ends, even when its caller has hung up. A reader
        // that waits longer than a turn may take is answered "busy" (503), not left hanging.
        let turn = tokio::time::timeout(TURN_WAIT, self.busy.clone().acquire_owned())
            .await
            .map_err(|_| {
                grantline_audit::IndexError::Directory(
                    "the audit index is busy with other readings".into(),
                )
            })?
            .map_err(|_| {
                grantline_audit::IndexError::Directory("the audit index is closing".into())
            })?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            f(&index)
        })
        .await
        .map_err(|e| grantline_audit::IndexError::Directory(format!("a search stopped: {e}")))?
    }

    /// One page of `e` (as [`AuditIndex::search`]), on a blocking thread.
    pub async fn search(
        &self,
        e: &grantline_audit::Expr,
        order: grantline_audit::SortOrder,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<grantline_audit::index::Page, grantline_audit::IndexError> {
        let e = e.clone();
        self.with_index(move |index| index.search(&e, order, cursor, limit))
            .await
    }

    /// Opens (or creates) the index in `dir`; the indexer starts with [`App::start_audit`].
    /// Another instance sharing the data directory holds that index's writer: this one then
    /// keeps its own beside it (`dir-2`, `dir-3`, …).
    pub async fn open(
        store: &grantline_store::Store,
        keyring: grantline_store::Keyring,
        dir: PathBuf,
    ) -> anyhow::Result<(AuditService, Indexer)> {
        let mut last = None;
        for n in 1..=SIBLINGS {
            let candidate = sibling(&dir, n);
            let index = match AuditIndex::open(&candidate) {
                Ok(index) => index,
                Err(e) if e.is_lock_busy() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match Indexer::open(
                index.clone(),
                store,
                keyring.clone(),
                IndexerOptions::default(),
            )
            .await
            {
                Ok(indexer) => {
                    if n > 1 {
                        tracing::info!(dir = %candidate.display(), "another instance holds the audit index; keeping this one's own");
                    }
                    remove_stale_siblings(store, &dir, n).await;
                    return Ok((
                        AuditService {
                            index,
                            progress: indexer.progress(),
                            directory: indexer.directory(),
                            dir: candidate,
                            stop: Arc::default(),
                            task: Mutex::new(None),
                            busy: Arc::new(tokio::sync::Semaphore::new(READINGS_AT_ONCE)),
                        },
                        indexer,
                    ));
                }
                Err(grantline_audit::IndexerError::Index(e)) if e.is_lock_busy() => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(anyhow::anyhow!(
            "every audit index beside {} is in use: {}",
            dir.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    /// The users' and clients' names as they stood at seq `after` (for exporting the events
    /// after it), as far as the index knows: its names at its last commit, with the clients
    /// renamed since `after` named as they were then ([`grantline_audit::clients_as_of`]).
    pub async fn directory_as_of(
        &self,
        after: u64,
    ) -> Result<Directory, grantline_audit::IndexError> {
        let mut dir = self.directory.read().map(|d| d.clone()).unwrap_or_default();
        if self.indexed_through() <= after {
            return Ok(dir);
        }
        // Not behind the readers' turns: a SIEM's pull export must not wait on a reviewer's
        // download, and this lookup is bounded (the clients renamed since `after`).
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || {
            grantline_audit::clients_as_of(&index, &mut dir, after)?;
            Ok(dir)
        })
        .await
        .map_err(|e| grantline_audit::IndexError::Directory(format!("a lookup stopped: {e}")))?
    }

    /// An exporter that names users and clients as of `after`: from the index when it has
    /// reached that far, else (rebuilding, or behind) from its names at its last commit and
    /// the ledger's own name events since, so that no user goes unnamed and no name erased
    /// before `after` comes back. Every view of events (the pull export, one event's view,
    /// the audit tools) names them this way. Only the rows past the index are read: a
    /// poller at the head, or an `after` past it, costs a read of the index's lag, not of
    /// the ledger.
    pub async fn exporter_as_of(
        &self,
        app: &App,
        after: u64,
        redact: bool,
    ) -> Result<grantline_audit::formats::Exporter, NamesError> {
        use grantline_audit::formats::Exporter;
        // The position before the names: the names published are never older than it. The
        // indexer publishes its names, then its position: names read between the two are of
        // a commit past `through`, perhaps past `after` (a client renamed since would be named
        // so on earlier events), so the position is read again and, if it moved, taken anew.
        // (Left: names published an instant before their position, both reads seeing the
        // old one.)
        let mut through = self.indexed_through();
        let mut tries = 0;
        let dir = loop {
            if through >= after {
                let dir = self.directory_as_of(after).await?;
                return Ok(Exporter::new(app.keyring.clone(), dir, redact));
            }
            let dir = self.directory.read().map(|d| d.clone()).unwrap_or_default();
            let now = self.indexed_through();
            tries += 1;
            // At most three rounds while the index stays behind: an index rebuilding commits
            // often, and each round copies the names. One that reached `after` is taken from.
            if now == through || (tries == 3 && now < after) {
                break dir;
            }
            through = now;
        };
        let mut exporter = Exporter::new(app.keyring.clone(), dir, redact);
        let named = app
            .store()
            .read_kinds(&grantline_audit::mapping::NAME_KINDS, through, after)
            .await?;
        for r in &named {
            exporter.learn(r).await?;
        }
        Ok(exporter)
    }

    /// The last seq searchable here.
    pub fn indexed_through(&self) -> u64 {
        self.progress.committed.load(Ordering::SeqCst)
    }

    /// Stops the indexer after its last commit.
    pub async fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task
            && tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
        {
            tracing::warn!("the audit indexer did not stop in time");
        }
    }
}

impl App {
    /// Starts following the ledger into the index: first what it holds already (logged as it
    /// goes), then each new event within about a quarter of a second.
    pub fn start_audit(&self, mut indexer: Indexer) {
        let Some(audit) = &self.audit else { return };
        let stop = audit.stop.clone();
        let local = self.ledger.subscribe();
        let task = tokio::spawn(async move {
            let start = std::time::Instant::now();
            let from = indexer.position();
            let mut last_log = std::time::Instant::now();
            match indexer
                .catch_up(|done, head| {
                    if last_log.elapsed() > Duration::from_secs(5) {
                        last_log = std::time::Instant::now();
                        tracing::info!(done, head, "audit index catching up with the ledger");
                    }
                })
                .await
            {
                Ok(at) if at > from => tracing::info!(
                    indexed = at - from,
                    through = at,
                    seconds = start.elapsed().as_secs_f64(),
                    "audit index caught up"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "audit index catch-up failed; following anyway")
                }
            }
            indexer.follow(Some(local), stop).await;
        });
        if let Ok(mut t) = audit.task.lock() {
            *t = Some(task);
        }
    }

    /// The audit service, or the answer that audit is turned off here.
    #[allow(clippy::result_large_err)] // the early answer a handler returns as it is
    pub fn audit_service(&self) -> Result<&AuditService, Response> {
        self.audit.as_ref().ok_or_else(|| {
            api_error(
                StatusCode::NOT_FOUND,
                "audit_disabled",
                "audit search is turned off on this server",
            )
        })
    }

    /// Appends an audit-trail reading's event (durable before the answer is sent).
    pub async fn record_reading(&self, event: Option<NewEvent>) -> Result<(), Response> {
        let Some(event) = event else {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request is out of bounds",
            ));
        };
        self.append(vec![event])
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// A JSON error answer of the audit API.
pub fn api_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        axum::Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response();
    crate::http::no_store(r.headers_mut());
    r
}

fn unavailable(e: AppError) -> Response {
    tracing::warn!(error = %e, "cannot record an audit-trail reading");
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the ledger cannot record this reading of the audit trail; nothing was read",
    )
}

/// The audit resource's identifier for this request's issuer.
pub fn resource_id(ctx: &RequestContext) -> String {
    format!("{}{}", ctx.issuer, crate::config::AUDIT_PATH)
}

/// Who is reading the trail through the API or the page, or the refusal (recorded when the
/// caller was identified but lacks the role or scope).
pub async fn reader(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    method: &str,
) -> Result<Reader, Response> {
    // With audit off nothing of it answers: not the event views either, and not a token an
    // operator's own resource at the audit path might hand out with a scope of that name.
    app.audit_service()?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let resource = resource_id(ctx);
    if let Some(token) = grantline_gateway::caller::bearer(authorization) {
        let d = grantline_ledger::secret_digest(token.as_bytes());
        let _ = app
            .catch_up_unless(|s| {
                s.access_tokens.contains_key(&d) || s.pat_by_digest.contains_key(&d)
            })
            .await;
        if !app.projection.fresh() {
            return Err(api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the server is catching up with the ledger",
            ));
        }
        let caller = grantline_gateway::authenticate(
            &app.projection.read(),
            Some(token),
            &resource,
            app.now(),
            &[crate::config::AUDIT_SCOPE.to_string()],
        )
        .map_err(|d| {
            let mut r = api_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is not valid for the audit resource",
            );
            let challenge = format!(
                "Bearer error=\"invalid_token\", resource_metadata=\"{}{}\"",
                ctx.issuer,
                grantline_oauth::metadata::protected_resource_path(&resource)
            );
            if let Ok(v) = challenge.parse() {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            tracing::info!(reason = d.reason, "audit API request refused");
            r
        })?;
        // A personal access token meets the check a refresh would (see
        // `App::check_upstream_for`).
        if let Err(check) = app.check_upstream_for(&caller).await {
            use crate::federation::UpstreamCheck;
            return Err(match check {
                UpstreamCheck::Failed(_) => api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the identity provider's answer could not be checked here",
                ),
                UpstreamCheck::Deprovisioned(_) | UpstreamCheck::SignInAgain(_) => api_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the identity provider no longer vouches for this token's holder: sign in there again",
                ),
            });
        }
        let reader = Reader {
            user_id: caller.user_id.clone(),
            client_id: caller.client_id.clone(),
            credential: Some(caller.credential.clone()),
        };
        let refusal = if !caller.scopes.contains(crate::config::AUDIT_SCOPE) {
            Some((
                "insufficient_scope",
                "this token lacks the audit:read scope",
            ))
        } else if caller.user_id.is_some()
            && !caller.role.as_deref().is_some_and(access::role_allows)
        {
            Some((
                "role",
                "reading the audit trail needs the auditor or admin role",
            ))
        } else {
            None
        };
        if let Some((reason, description)) = refusal {
            record_refusal(app, ctx, &resource, &reader, reason, method).await?;
            return Err(api_error(StatusCode::FORBIDDEN, reason, description));
        }
        return Ok(reader);
    }
    if authorization.is_some_and(|a| a.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("basic "))) {
        let user_id =
            crate::routes::admin::basic_user(app, ctx, headers, access::AUDIT_ROLES).await?;
        return Ok(Reader {
            user_id: Some(user_id),
            ..Reader::default()
        });
    }
    if let Some(s) = crate::session::current(app, ctx, headers, app.now().0 / 1_000_000) {
        // Any site can send a signed-in browser here (a link, a redirect): it would read and
        // record a search of its choosing in the auditor's name.
        if crate::http::cross_site(headers, &ctx.issuer) {
            return Err(api_error(
                StatusCode::FORBIDDEN,
                "cross_site",
                "a signed-in browser reads the audit trail from this server's pages only; this request came from another site",
            ));
        }
        let reader = Reader {
            user_id: Some(s.user_id.clone()),
            ..Reader::default()
        };
        let allowed = app
            .projection
            .read()
            .users
            .get(&s.user_id)
            .is_some_and(|u| access::role_allows(&u.role));
        if !allowed {
            record_refusal(app, ctx, &resource, &reader, "role", method).await?;
            return Err(api_error(
                StatusCode::FORBIDDEN,
                "role",
                "reading the audit trail needs the auditor or admin role",
            ));
        }
        return Ok(reader);
    }
    let mut r = api_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "sign in as an auditor, or send a bearer token with the audit:read scope",
    );
    let challenge = format!(
        "Bearer resource_metadata=\"{}{}\"",
        ctx.issuer,
        grantline_oauth::metadata::protected_resource_path(&resource)
    );
    if let Ok(v) = challenge.parse() {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Err(r)
}

/// Records a refused reading as `authorization.denied`: at most one event per reader and
/// reason a minute (the refusals between are answered the same and not recorded), so a caller
/// who keeps asking cannot grow the ledger without bound.
pub async fn record_refusal(
    app: &App,
    ctx: &RequestContext,
    resource: &str,
    reader: &Reader,
    reason: &'static str,
    method: &str,
) -> Result<(), Response> {
    let who = reader
        .user_id
        .clone()
        .or_else(|| reader.client_id.clone())
        .unwrap_or_default();
    if app
        .audit_refusals
        .admit((who, reason), app.now().0 / 1_000_000)
        .is_none()
    {
        return Ok(());
    }
    app.append(vec![access::denied(
        &ctx.request_id,
        ctx.trace_id.as_deref(),
        resource,
        reader,
        reason,
        method,
    )])
    .await
    .map(|_| ())
    .map_err(unavailable)
}

/// Seals what a reader typed (a query) under their key.
pub async fn seal_query(
    app: &App,
    reader: &Reader,
    q: &str,
) -> Result<grantline_ledger::Sealed, Response> {
    let today = app.now().to_string();
    let subject = reader.subject(&today[..10]);
    app.keyring
        .seal(&subject, q)
        .await
        .map_err(|e| unavailable(AppError::from(e)))
}

/// The surface a request came through (the page sends cookies, the API tokens).
pub fn surface(page: bool) -> AuditSurface {
    if page {
        AuditSurface::Page
    } else {
        AuditSurface::Api
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantline_ledger::Append;
    use grantline_store::{Keyring, Ledger, testing};

    async fn open(ledger: &Ledger, dir: &std::path::Path) -> (AuditService, Indexer) {
        let keyring = Keyring::new(ledger.store());
        AuditService::open(ledger.store(), keyring, dir.to_path_buf())
            .await
            .unwrap()
    }

    /// An index another instance kept beside the first and left holds the personal data of
    /// the users it indexed; once one of them is erased, nothing may open it again to erase
    /// them, so the next instance to start removes it. One in use, and one that missed no
    /// erasure, are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_index_beside_that_missed_an_erasure_is_removed() {
        let db = testing::sqlite().await;
        let ledger = Ledger::open(&db.db, testing::signer(), Default::default())
            .await
            .unwrap();
        let keyring = Keyring::new(ledger.store());
        let mut events =
            vec![testing::user_created(&keyring, "u_alice", "alice", "alice@example.com").await];
        events.extend((0..3).map(testing::tool_call));
        ledger.append(Append::new(events)).await.unwrap();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("audit-index");
        let beside = |n: usize| root.path().join(format!("audit-index-{n}"));

        // A second and a third instance on this data directory keep their own indexes.
        let (first, first_indexer) = open(&ledger, &dir).await;
        let (second, mut second_indexer) = open(&ledger, &dir).await;
        assert_eq!(second.dir, beside(2));
        second_indexer.catch_up(|_, _| {}).await.unwrap();
        let (third, mut third_indexer) = open(&ledger, &dir).await;
        assert_eq!(third.dir, beside(3));
        third_indexer.catch_up(|_, _| {}).await.unwrap();
        drop((second, second_indexer));

        // The first restarts before any erasure: the second's index is kept.
        drop((first, first_indexer));
        let (first, first_indexer) = open(&ledger, &dir).await;
        assert_eq!(first.dir, dir);
        assert!(beside(2).join("meta.json").exists());

        ledger
            .append(Append::new(vec![testing::user_erased("u_alice")]))
            .await
            .unwrap();
        // What a removal cut short by a crash left (an index whose lock is free), and what a
        // process is removing now (the half of an index, just touched).
        let left = root.path().join("audit-index-5.removed-1-17");
        std::fs::create_dir_all(&left).unwrap();
        drop(AuditIndex::open(&left).unwrap());
        let removing = root.path().join("audit-index-6.removed-1-18");
        std::fs::create_dir_all(removing.join("segment")).unwrap();

        // The first restarts after it: the second's index (stale, missed it) is removed; the
        // third's (in use) is not.
        drop((first, first_indexer));
        let (first, first_indexer) = open(&ledger, &dir).await;
        assert_eq!(first.dir, dir);
        assert!(!beside(2).exists(), "the stale index was kept");
        assert!(
            beside(3).join("meta.json").exists(),
            "the index in use was removed"
        );
        assert!(!left.exists());
        assert!(removing.exists());
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with("audit-index-2")),
            "{names:?}"
        );
        drop((first, first_indexer, third, third_indexer));
        ledger.shutdown().await;
    }
}
