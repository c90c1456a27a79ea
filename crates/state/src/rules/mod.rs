//! Rules the fold applies. Each is named after what it does, one file each.

mod family;
mod grant;
mod replay;
mod reuse;
mod rotation;

pub(crate) use family::revoke_family;
pub(crate) use grant::on_grant_revoked;
pub(crate) use replay::on_code_replayed;
pub(crate) use reuse::on_reuse_detected;
pub(crate) use rotation::on_rotated;
