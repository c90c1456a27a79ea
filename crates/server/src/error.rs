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
                tracing::error!(%why, "failing closed");
                oauth_error(&OAuthError::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the audit ledger cannot record this request right now; nothing was done",
                ))
            }
        }
    }
}
