//! Push sinks: what each receiver is sent (RFC 5424 syslog frames, Splunk HEC bodies, signed
//! webhook batches) and each sink's durable cursor. Sending is the server's (`sinks.rs`); what
//! is sent, and where a sink is, lives here.

pub mod cursor;
pub mod hec;
pub mod syslog;
pub mod webhook;

pub use cursor::{SinkCursor, SinkStatus};
