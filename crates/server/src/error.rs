//! The application's error and its HTTP answer: an OAuth error as RFC 6749 JSON, or — when the
//! ledger cannot record the request — `temporarily_unavailable` (503): the server fails closed.

use crate::http::oauth_error;
use axum::response::{IntoResponse, Response};
use grantline_oauth::{ErrorCode, OAuthError};
use grantline_store::StoreError;

/// Why a request could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// The ledger could not append: fail closed.
    #[error("the ledger cannot record this request: {0}")]
    Unavailable(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::Unavailable(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::OAuth(e) => oauth_error(&e),
            AppError::Unavailable(why) => {
                answered_failed_closed(&why);
                oauth_error(&OAuthError::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the audit ledger cannot record this request right now; nothing was done",
                ))
            }
        }
    }
}

/// Work failed closed because the ledger could not record or read what it needed, as a run:
/// its first failure is logged as an error with the cause, the others at debug level (while
/// the database is down, one line per request would bury the log), and its end once, at the
/// next append that works ([`failed_closed_no_more`]).
static FAILING_CLOSED: std::sync::LazyLock<std::sync::Mutex<grantline_store::Failing>> =
    std::sync::LazyLock::new(Default::default);

/// Whether a run is on: the one thing every successful append reads (no lock). Written only
/// under [`FAILING_CLOSED`]'s lock, so that it says what the run does.
static IN_A_RUN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs work failed closed for `why` (see [`FAILING_CLOSED`]).
pub fn failing_closed(why: &str) {
    let first = match FAILING_CLOSED.lock() {
        Ok(mut f) => {
            IN_A_RUN.store(true, std::sync::atomic::Ordering::Relaxed);
            f.failed()
        }
        Err(_) => true,
    };
    if first {
        tracing::error!(%why, "failing closed: what needs the ledger is answered 503 until it works again (said once)");
    } else {
        tracing::debug!(%why, "failing closed");
    }
}

/// Logs a request answered 503 for `why`: a run already on was counted where the work failed
/// (`App::run`, `App::append`); one that failed elsewhere (a read) starts or counts in a run.
pub fn answered_failed_closed(why: &str) {
    if IN_A_RUN.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(%why, "failing closed");
    } else {
        failing_closed(why);
    }
}

/// The ledger recorded an append: a run of failures, if any, has ended.
pub fn failed_closed_no_more() {
    if !IN_A_RUN.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let ended = FAILING_CLOSED.lock().ok().and_then(|mut f| {
        IN_A_RUN.store(false, std::sync::atomic::Ordering::Relaxed);
        f.ok()
    });
    if let Some((lasted, failures)) = ended {
        tracing::info!(
            seconds = lasted.as_secs_f64(),
            failures,
            "the ledger works again; requests are served"
        );
    }
}
