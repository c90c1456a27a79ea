use crate::location::Location;
use anyhow::{Context, Result};
use grantline_store::{Ledger, LedgerOptions};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Write a checkpoint at least every this many events.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
    /// And at least this often (seconds) while events are not yet covered.
    #[arg(long, default_value_t = 10)]
    checkpoint_interval: u64,
}

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    let signer = loc.signer()?;
    let options = LedgerOptions {
        checkpoint_every_events: args.checkpoint_every.max(1),
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval.max(1)),
        ..LedgerOptions::default()
    };
    let ledger = Ledger::open(&loc.database, signer.clone(), options)
        .await
        .with_context(|| format!("opening the ledger at {}", loc.database.display()))?;
    let head = ledger.store().count().await?;
    tracing::info!(
        database = %loc.database.display(),
        data_dir = %loc.data_dir.display(),
        events = head,
        checkpoint_key = %signer.verifier(),
        "ledger open; the OAuth server and MCP gateway are not part of this build yet"
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("shutting down: writing a final checkpoint");
    ledger.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
