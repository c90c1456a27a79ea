//! Witness-friendly proofs over HTTP: the newest signed checkpoint (C2SP signed-note), its
//! verifier key, and inclusion and consistency proofs in the form `grantline proof` prints and
//! `grantline verify-proof` checks. Public like a transparency log's: they carry hashes and
//! tree sizes, no event content. A proof reads the chain hashes of the chunks its path reaches
//! into, over subtree roots the server keeps ([`grantline_audit::proof::Subtrees`]); the first
//! one after a start reads every chain hash up to its tree size. So at most
//! [`PROOFS_AT_ONCE`] are computed at a time; beyond that the answer is 503 with
//! `Retry-After`, so that no queue of waiting requests builds up.

use crate::app::App;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Proofs computed at once, by the public endpoints and reviewers' event views together (the
/// public endpoints at most one fewer).
pub const PROOFS_AT_ONCE: usize = 2;
static PROOFS: std::sync::LazyLock<Arc<Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(Semaphore::new(PROOFS_AT_ONCE)));

/// Of those, the most the public endpoints may hold: anyone may ask for proofs, and a loop of
/// anonymous requests must leave a turn for the reviewers, who wait for one.
static PUBLIC_PROOFS: std::sync::LazyLock<Arc<Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(Semaphore::new(PROOFS_AT_ONCE - 1)));

/// A turn for a public proof, or `None` when the public's share (or every turn) is taken.
fn public_turn() -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let share = PUBLIC_PROOFS.clone().try_acquire_owned().ok()?;
    let turn = PROOFS.clone().try_acquire_owned().ok()?;
    Some((share, turn))
}

/// How long a reviewer's view waits for a turn before it is shown without its proof.
pub const REVIEWER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A turn to compute a proof for a reviewer (the audit pages, API and MCP server): waited for
/// up to [`REVIEWER_WAIT`], since the reader is authenticated and each turn ends, while the
/// public endpoints answer `503` when none is free. `None` when none freed in time (the first
/// proof over a large ledger after a start takes seconds): the view is shown without it. The
/// proof holds the turn until it is computed.
pub async fn proof_turn() -> Option<OwnedSemaphorePermit> {
    tokio::time::timeout(REVIEWER_WAIT, PROOFS.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// The inclusion proof an event view shows: computed with a reviewer's turn, or, when none
/// freed in time, a note saying where to ask for it; `null` when no checkpoint covers `seq`.
pub async fn proof_for_view(
    app: &App,
    seq: u64,
) -> Result<serde_json::Value, grantline_store::StoreError> {
    let Some(turn) = proof_turn().await else {
        return Ok(serde_json::json!({
            "unavailable": format!(
                "every proof turn stayed taken for {} s: ask /ledger/proof/inclusion?seq={seq} \
                 again shortly",
                REVIEWER_WAIT.as_secs()
            )
        }));
    };
    Ok(
        grantline_audit::proof::inclusion(app.store(), &app.subtrees, seq, None, turn)
            .await?
            .map_or(serde_json::Value::Null, |p| p),
    )
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (
        status,
        Json(json!({"error": status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"),
                    "error_description": message.into()})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn busy() -> Response {
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "other proofs are being computed; try again shortly",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn text(body: String) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn store_failed(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "reading the ledger for a proof failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the ledger cannot be read right now",
    )
}

/// `GET /.well-known/grantline/checkpoint`: the newest signed checkpoint, as a C2SP
/// signed note (origin, tree size, root hash, then the signature lines).
pub async fn checkpoint(State(app): State<App>) -> Response {
    match app.store().checkpoint(None).await {
        Ok(Some(cp)) => text(cp.note),
        Ok(None) => problem(StatusCode::NOT_FOUND, "no checkpoint has been signed yet"),
        Err(e) => store_failed(e),
    }
}

/// `GET /.well-known/grantline/checkpoint-key`: the checkpoint verifier key
/// (`name+keyid+base64`), the `--public-key` of `grantline verify` and `verify-proof`.
/// Fetching it from the server it vouches for proves nothing: record it elsewhere once.
pub async fn checkpoint_key(State(app): State<App>) -> Response {
    text(format!("{}\n", app.checkpoint_verifier))
}

/// `GET /.well-known/grantline/key-handovers`: every checkpoint-key handover in seq order
/// (`[{"seq": …, "handover": <signed note>}]`). A witness that trusts the first key follows
/// them with `grantline verify-proof --handovers` to the key in force; each is signed by the
/// key it replaces, so fetching them from the server gives it nothing to forge.
pub async fn key_handovers(State(app): State<App>) -> Response {
    let list: Vec<serde_json::Value> = app
        .projection
        .read()
        .checkpoint_handovers
        .iter()
        .map(|(seq, note)| json!({"seq": seq, "handover": note}))
        .collect();
    let mut r = Json(list).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A query parameter as a tree size or seq: present, decimal, positive.
fn number(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Box<Response>> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Box::new(problem(
                StatusCode::BAD_REQUEST,
                format!("{name} must be a positive whole number, not {v:?}"),
            ))),
        },
    }
}

/// `GET /ledger/proof/inclusion?seq=N[&tree_size=M]`: event N is in the tree of the newest
/// checkpoint, or of the checkpoint of size M (the one a witness keeps).
pub async fn inclusion(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let seq = match number(&q, "seq") {
        Ok(Some(s)) => s,
        Ok(None) => return problem(StatusCode::BAD_REQUEST, "seq is required"),
        Err(r) => return *r,
    };
    let at = match number(&q, "tree_size") {
        Ok(at) => at,
        Err(r) => return *r,
    };
    let Some(turn) = public_turn() else {
        return busy();
    };
    match grantline_audit::proof::inclusion(app.store(), &app.subtrees, seq, at, turn).await {
        Ok(Some(proof)) => Json(proof).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            match at {
                Some(m) => format!("there is no checkpoint of tree size {m} covering event {seq}"),
                None => format!("event {seq} is not covered by the newest checkpoint yet"),
            },
        ),
        Err(e) => store_failed(e),
    }
}

/// `GET /ledger/proof/consistency?from=A[&to=B]`: the checkpoint of size B (the newest when
/// absent) extends the one of size A. Both are sizes of this ledger's checkpoints.
pub async fn consistency(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (from, to) = match (number(&q, "from"), number(&q, "to")) {
        (Ok(Some(f)), Ok(t)) => (f, t),
        (Ok(None), _) => return problem(StatusCode::BAD_REQUEST, "from is required"),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    if to.is_some_and(|t| t < from) {
        return problem(StatusCode::BAD_REQUEST, "from must not be above to");
    }
    let Some(turn) = public_turn() else {
        return busy();
    };
    match grantline_audit::proof::consistency(app.store(), &app.subtrees, from, to, turn).await {
        Ok(Some(proof)) => Json(proof).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            format!(
                "no checkpoint of tree size {from}{} here",
                to.map_or(String::new(), |t| format!(" or {t}"))
            ),
        ),
        Err(e) => store_failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The turns are the process's: tests that take them run one at a time (`cargo test`
    /// runs a binary's tests in threads).
    static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn anonymous_proofs_leave_a_turn_for_reviewers() {
        let _one = TURNS.lock().await;
        let held = public_turn().expect("a public turn");
        assert!(public_turn().is_none(), "the public's share is taken");
        let reviewer = tokio::time::timeout(std::time::Duration::from_secs(5), proof_turn()).await;
        assert!(
            matches!(reviewer, Ok(Some(_))),
            "a reviewer still gets a turn at once"
        );
        drop(held);
    }

    /// A reviewer's view waits for a turn a bounded time, then goes without its proof: a
    /// loop of other views (or one over a huge ledger) does not hold it for ever.
    #[tokio::test(start_paused = true)]
    async fn a_reviewer_waits_a_bounded_time_for_a_proof_turn() {
        let _one = TURNS.lock().await;
        let all: Vec<_> = (0..PROOFS_AT_ONCE)
            .map(|_| PROOFS.clone().try_acquire_owned().expect("a turn"))
            .collect();
        let waited = tokio::time::timeout(REVIEWER_WAIT * 2, proof_turn()).await;
        assert!(matches!(waited, Ok(None)), "given up after REVIEWER_WAIT");
        drop(all);
        assert!(proof_turn().await.is_some());
    }
}
