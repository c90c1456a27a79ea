//! Rules the fold applies. Each is named after what it does, one file each.

mod consent_page;
pub mod expiry;
mod family;
mod grant;
mod replay;
mod reuse;
mod rotation;
mod sessions_ended;
pub mod settings;

pub(crate) use consent_page::on_consent_page_answered;
pub(crate) use expiry::{lives_until, sweep_if_due};
pub(crate) use family::revoke_family;
pub(crate) use grant::on_grant_revoked;
pub(crate) use replay::on_code_replayed;
pub(crate) use reuse::on_reuse_detected;
pub(crate) use rotation::on_rotated;
pub use rotation::{MAX_RETRIES_IN_GRACE, Redeemable};
pub(crate) use sessions_ended::on_sessions_ended;
