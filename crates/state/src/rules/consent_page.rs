use crate::State;
use grantline_ledger::Timestamp;

/// How long a consent page can be answered (the server refuses older answers anyway), and so
/// how long an answered page must be remembered.
pub const CONSENT_PAGE_SECS: i64 = 15 * 60;

/// A consent page was answered (approved or denied): a second answer to it is refused. Pages
/// older than their lifetime are forgotten, by event time, so replay prunes the same way.
pub(crate) fn on_consent_page_answered(state: &mut State, page: &str, at: Timestamp) {
    if state.answered_consent_pages.len() >= 1024 {
        let horizon = at.plus_secs(-2 * CONSENT_PAGE_SECS);
        state.answered_consent_pages.retain(|_, t| *t > horizon);
    }
    state.answered_consent_pages.insert(page.to_string(), at);
}
