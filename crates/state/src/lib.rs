//! Grantline's current state as a projection of the ledger: one fold, [`apply`], from events
//! to [`State`]. Rules that follow from events (a detected refresh reuse revokes the family, a
//! replayed code revokes its family, a revoked grant revokes its families) live in [`rules`]
//! and run inside the fold, so a replay reproduces them exactly.

mod apply;
pub mod history;
mod model;
pub mod rules;
pub mod snapshot;
mod table;

pub use apply::{apply, fold};
pub use model::*;
pub use table::Table;
