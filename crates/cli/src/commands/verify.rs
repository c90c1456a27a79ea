use crate::location::Location;
use anyhow::{Context, Result};
use grantline_store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A verifier key trusted to sign checkpoints (repeatable). Default: the local key's public half.
    #[arg(long = "public-key")]
    public_keys: Vec<String>,
}

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    let store = Store::connect(&loc.database, false)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))?;
    let (trusted, source) = loc.trusted_keys(&args.public_keys)?;
    let total = store.count().await?;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let outcome = grantline_store::verify(&store, &trusted, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    match outcome {
        Ok(summary) => {
            println!("{summary} (checkpoint keys: {source})");
            Ok(ExitCode::SUCCESS)
        }
        Err(finding) => {
            println!("NOT INTACT: {finding}");
            Ok(ExitCode::from(1))
        }
    }
}
