pub mod client;
pub mod events;
pub mod key;
pub mod pat;
pub mod proof;
pub mod serve;
pub mod user;
pub mod verify;
