//! The MCP gateway's rules, as pure functions: who is calling (an access token or a personal
//! access token, never one from the URL), whether the credential is for this resource, what a
//! JSON-RPC message asks for, whether the caller's consented scopes and role allow it, and the
//! `WWW-Authenticate` challenge when they do not. The HTTP proxying lives in the server.

pub mod authority;
pub mod caller;
pub mod challenge;
pub mod inflight;
pub mod jsonrpc;
pub mod properties;
pub mod ratelimit;
pub mod record;
pub mod session;

pub use authority::{Roles, ToolScopes};
pub use caller::{Caller, authenticate};
pub use challenge::{Denial, DenialKind};
