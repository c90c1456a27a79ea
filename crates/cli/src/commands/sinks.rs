//! `grantline sinks status`: each configured sink's cursor, lag behind the ledger, last
//! delivery and last error, from its cursor file.

use crate::location::Location;
use anyhow::{Context, Result};
use grantline_audit::sinks::SinkCursor;
use grantline_store::Store;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Cursor, lag, last delivery and last error of every configured sink.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    let Command::Status { json } = cmd;
    let config = grantline_server::Config::load(loc.config.as_deref())?;
    let store = Store::connect_read_only(&loc.database)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))?;
    let head = store.head().await?.map_or(0, |h| h.0);
    let dir = grantline_server::sinks::cursor_dir(&loc.data_dir);
    let mut rows = Vec::new();
    for s in &config.audit.sinks {
        let status = SinkCursor::new(&dir, &s.name).load()?;
        rows.push(serde_json::json!({
            "name": s.name,
            "kind": s.kind,
            "cursor": status.seq,
            "lag": head.saturating_sub(status.seq),
            "delivered": status.delivered,
            "delivered_at": status.delivered_at,
            "failures": status.failures,
            "last_error": status.last_error,
            "last_error_at": status.last_error_at,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"head": head, "sinks": rows}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no sinks configured ([[audit.sinks]] in the configuration file)");
        return Ok(ExitCode::SUCCESS);
    }
    println!("ledger head: seq {head}");
    println!(
        "{:<20} {:<11} {:>10} {:>8}  {:<28}  LAST ERROR",
        "NAME", "KIND", "CURSOR", "LAG", "LAST DELIVERY"
    );
    for r in &rows {
        let err = match (&r["last_error"], &r["last_error_at"]) {
            (serde_json::Value::String(e), serde_json::Value::String(at)) => {
                format!("{e} ({} failures, last at {at})", r["failures"])
            }
            _ => "-".into(),
        };
        println!(
            "{:<20} {:<11} {:>10} {:>8}  {:<28}  {err}",
            r["name"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["cursor"],
            r["lag"],
            r["delivered_at"].as_str().unwrap_or("never"),
        );
    }
    Ok(ExitCode::SUCCESS)
}
