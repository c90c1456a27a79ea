//! Grantline's OAuth 2.1 rules as pure deciders.
//!
//! Every function here takes the current [`State`](grantline_state::State), a validated
//! request, `now` and whatever randomness it needs (fresh tokens, ids) and returns a
//! [`Decision`]: the events to append and the answer to give once they are durable. Nothing
//! here does I/O, reads a clock or draws random numbers, so every rule is testable as
//! "given these events, when this request, then these events (or this error)".

pub mod authorize;
pub mod client_auth;
pub mod clients;
pub mod containment;
mod decision;
mod error;
pub mod federation;
pub mod grant;
pub mod grants;
pub mod introspect;
pub mod keys;
pub mod limits;
pub mod metadata;
pub mod pat;
pub mod pkce;
pub mod policy;
pub mod properties;
pub mod redirect;
pub mod refused;
pub mod register;
mod resource;
pub mod revoke;
pub mod scope;
mod settings;
pub mod tokens;
pub mod users;

pub use decision::Decision;
pub use error::{ErrorCode, OAuthError};
pub use resource::{Resource, ScopeDef, canonical_resource};
pub use settings::{Lifetimes, Settings};
