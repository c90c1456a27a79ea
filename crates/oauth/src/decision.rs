use crate::OAuthError;
use grantline_ledger::{Append, ExpectedVersion, NewEvent, StreamId};

/// What a decider concluded: events to append (possibly none) and the answer to give once
/// they are durable. A refused request can still carry events: a detected refresh-token reuse
/// is recorded even though the request fails, so that the family's revocation sticks.
#[derive(Debug)]
pub struct Decision<T> {
    pub append: Append,
    pub outcome: Result<T, OAuthError>,
}

impl<T> Decision<T> {
    /// A refusal that changes nothing.
    pub fn refuse(error: OAuthError) -> Self {
        Decision {
            append: Append::default(),
            outcome: Err(error),
        }
    }
    /// Events plus an answer.
    pub fn new(events: Vec<NewEvent>, outcome: Result<T, OAuthError>) -> Self {
        Decision {
            append: Append::new(events),
            outcome,
        }
    }
    /// Requires `stream` to be at `version` when the events are written.
    pub fn expect(mut self, stream: StreamId, version: ExpectedVersion) -> Self {
        self.append = self.append.expect(stream, version);
        self
    }
}

impl<T> From<OAuthError> for Decision<T> {
    fn from(e: OAuthError) -> Self {
        Decision::refuse(e)
    }
}
