//! Refused token and authorization requests on the ledger (`oauth.refused`), without letting
//! a caller that repeats a bad request write one event per attempt: at most one event per
//! endpoint, client and error code a minute; the refusals in between are counted and the
//! count travels with the next event for that key.

use crate::app::App;
use crate::context::RequestContext;
pub use crate::refusal_window::{RefusalLog, WINDOW_SECS};
use grantline_ledger::OAuthEndpoint;
use grantline_oauth::OAuthError;
pub use grantline_oauth::refused::Attempt;

/// The client a refusal's window is kept for: the one the request named when that client has
/// been used (an authorization completed) or an operator made it. Anyone may register clients
/// — with a secret, so proving who one is bounds nothing — or name metadata documents by the
/// thousand: keyed by each, refusals naming them would write that many events a minute. Those
/// share one window per endpoint and error (the event still names the client of its first
/// refusal, and the count holds the rest).
fn keyed_client(app: &App, attempt: &Attempt) -> Option<String> {
    use grantline_ledger::RegistrationMethod::{Dynamic, MetadataDocument};
    let id = attempt.client_id.as_ref()?;
    let state = app.projection.read();
    let known = state
        .clients
        .get(id)
        .is_some_and(|c| c.used || !matches!(c.method, Dynamic | MetadataDocument));
    known.then(|| id.clone())
}

/// Records `error` for `attempt` unless it is on the ledger already or its key had an event
/// within the window. The refusal is answered after the append is tried, and stands whether
/// or not it could be written. What the caller sent is clipped: an anonymous caller must not
/// be able to write large values into a ledger that cannot forget them.
pub async fn record(
    app: &App,
    ctx: &RequestContext,
    endpoint: OAuthEndpoint,
    attempt: Attempt,
    error: &OAuthError,
) {
    if attempt.recorded {
        return;
    }
    // Per family too: a replay under a shorter grace must see the first refused presentation
    // of every family, not one per client.
    let key = (
        endpoint,
        keyed_client(app, &attempt),
        error.code.as_str().to_string(),
        attempt.family_id.clone(),
    );
    let Some(suppressed) = app.refusals.admit(key, app.now().0 / 1_000_000) else {
        return;
    };
    let subject = app.sealing_subject(attempt.user_id.as_deref(), || match &attempt.client_id {
        Some(c) => format!("client:{c}"),
        None => format!("anon:{}", &app.now().to_string()[..10]),
    });
    let request = match ctx.meta(app, &subject).await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "could not seal the refused request's metadata");
            None
        }
    };
    let d = grantline_oauth::refused::record(endpoint, attempt, error, suppressed, request);
    let events = d.append.events;
    if let Err(e) = app.append(events).await {
        tracing::warn!(error = %e, "could not record a refused OAuth request");
    }
}
