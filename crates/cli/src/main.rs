//! `grantline`: the server and the incident responder's tools over one ledger.

mod commands;
mod location;
mod lock;
mod logline;
mod telemetry;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use location::Location;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "grantline",
    version,
    about = "OAuth 2.1 authorization server and MCP gateway on a hash-chained ledger"
)]
struct Cli {
    /// Data directory of the embedded default (SQLite ledger, checkpoint key). Default:
    /// $GRANTLINE_DATA_DIR, else $XDG_DATA_HOME/grantline, else ~/.local/share/grantline.
    #[arg(long, global = true, env = "GRANTLINE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Ledger database: sqlite:PATH or postgres://… (overrides the data directory's SQLite file).
    #[arg(long, global = true, env = "GRANTLINE_DATABASE_URL")]
    database: Option<String>,
    /// Configuration file (TOML). Without one, the embedded default: the demo resource, open
    /// registration, listening on 127.0.0.1:8080.
    #[arg(long, global = true, env = "GRANTLINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the OAuth 2.1 authorization server until Ctrl-C or SIGTERM.
    Serve(commands::serve::Args),
    /// Walk the whole chain and every checkpoint; exit 1 at the first problem.
    Verify(commands::verify::Args),
    /// Print an inclusion proof for an event (or a consistency proof between checkpoints).
    Proof(commands::proof::Args),
    /// Check a proof offline against a checkpoint and a public key.
    VerifyProof(commands::proof::VerifyArgs),
    /// Print events in seq order, filtered (kind, user, client, time), as a table or
    /// `--json`; personal data opened (or shown as erased); `--follow` to keep going.
    Events(commands::events::Args),
    /// The state as it was after a seq or at a time: clients, users and roles, live grants,
    /// families and tokens, personal access tokens, revoked families and why.
    Replay(commands::history::ReplayArgs),
    /// What a user or client could do at a moment, and since when.
    State(commands::history::StateArgs),
    /// The whole story of a token, family, grant, user, client, personal access token,
    /// request or event id, in seq order.
    Lineage(commands::history::LineageArgs),
    /// Write a snapshot of the state at the head into the data directory: replay, state and
    /// the server start from the newest one that matches the ledger.
    Snapshot(commands::history::SnapshotArgs),
    /// Containment: revoke a family, a grant, everything of a user or of a client (and
    /// disable it), or every personal access token of a user — with the reason.
    Revoke(commands::revoke::Args),
    /// Audit search over this data directory's index, and rebuilding it.
    #[command(subcommand)]
    Audit(commands::audit::Command),
    /// Export events by seq for a SIEM: JSON lines, OCSF, ECS or CEF; `--follow` to keep going.
    Export(commands::export::Args),
    /// Push sinks: where each stands.
    #[command(subcommand)]
    Sinks(commands::sinks::Command),
    /// Users: add, list, disable, set-role, erase.
    #[command(subcommand)]
    User(commands::user::Command),
    /// OAuth clients: add, list, disable.
    #[command(subcommand)]
    Client(commands::client::Command),
    /// Personal access tokens: create, list, revoke.
    #[command(subcommand)]
    Pat(commands::pat::Command),
    /// The checkpoint signing key.
    #[command(subcommand)]
    Key(commands::key::Command),
    /// Write a consistent online copy of the SQLite ledger, verified, with the checkpoint
    /// keys' public halves and a manifest (head, newest checkpoint, digest).
    Backup(commands::backup::BackupArgs),
    /// Restore a backup as this data directory's ledger; refuses one that does not verify.
    Restore(commands::backup::RestoreArgs),
    /// The configuration file: check it, or have the running server reload its policies.
    #[command(subcommand)]
    Config(commands::config::Command),
    /// Apply database migrations and exit (run as the owner role on PostgreSQL).
    Migrate,
}

/// mimalloc: faster than glibc's malloc for the many small strings that reading and
/// exporting the ledger allocate on one thread and free on another (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let traces = match telemetry::tracer_provider() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", chain_once(&e));
            return ExitCode::from(2);
        }
    };
    use tracing_subscriber::Layer;
    // Each layer has its own filter: `GRANTLINE_LOG` says what is logged, not what is traced.
    // Turning the log down to warnings must not stop the request, decide, append and upstream
    // spans (info) from being exported, sent upstream and named in the events.
    let otel = traces.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("grantline"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                // One event, one line, whatever text an upstream or a client put in a field.
                .with_writer(|| logline::Stderr)
                // Colour only for a person at a terminal: a log file or a journal gets plain
                // text.
                .with_ansi(
                    std::io::IsTerminal::is_terminal(&std::io::stderr())
                        && std::env::var_os("NO_COLOR").is_none(),
                )
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_env("GRANTLINE_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                ),
        )
        .with(otel)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain_once(&e));
            ExitCode::from(2)
        }
    };
    // Spans still batched are sent before the process ends.
    if let Some(p) = traces
        && let Err(e) = p.shutdown()
    {
        eprintln!("warning: exporting the last traces: {e}");
    }
    code
}

/// An error and its causes as one line, each cause once: many errors already repeat their
/// source in their own message, and `{:#}` would print it again.
pub(crate) fn chain_once(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let loc = Location::resolve(cli.data_dir, cli.database, cli.config)?;
    match cli.command {
        Command::Serve(a) => commands::serve::run(&loc, a).await,
        Command::Verify(a) => commands::verify::run(&loc, a).await,
        Command::Proof(a) => commands::proof::run(&loc, a).await,
        Command::VerifyProof(a) => commands::proof::verify(a),
        Command::Events(a) => commands::events::run(&loc, a).await,
        Command::Replay(a) => commands::history::replay(&loc, a).await,
        Command::State(a) => commands::history::state(&loc, a).await,
        Command::Lineage(a) => commands::history::lineage(&loc, a).await,
        Command::Snapshot(a) => commands::history::snapshot(&loc, a).await,
        Command::Revoke(a) => commands::revoke::run(&loc, a).await,
        Command::Audit(c) => commands::audit::run(&loc, c).await,
        Command::Export(a) => commands::export::run(&loc, a).await,
        Command::Sinks(c) => commands::sinks::run(&loc, c).await,
        Command::User(c) => commands::user::run(&loc, c).await,
        Command::Client(c) => commands::client::run(&loc, c).await,
        Command::Pat(c) => commands::pat::run(&loc, c).await,
        Command::Key(c) => commands::key::run(&loc, c).await,
        Command::Config(c) => commands::config::run(&loc, c).await,
        Command::Backup(a) => commands::backup::backup(&loc, a).await,
        Command::Restore(a) => commands::backup::restore(&loc, a).await,
        Command::Migrate => {
            let store = grantline_store::Store::connect(&loc.database, true)
                .await
                .with_context(|| format!("opening {}", loc.database.display()))?;
            store
                .migrate()
                .await
                .with_context(|| format!("migrating {}", loc.database.display()))?;
            println!("migrated {}", loc.database.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chain_once;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the ledger: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn each_cause_is_printed_once() {
        let io =
            || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        // A source already in its parent's message is not repeated...
        let e = anyhow::Error::new(Repeats(io())).context("grantline serve");
        assert_eq!(
            chain_once(&e),
            "grantline serve: cannot open the ledger: Connection refused"
        );
        // ...and a plain chain reads as {:#} does.
        let e = anyhow::Error::new(io()).context("connecting to PostgreSQL");
        assert_eq!(chain_once(&e), format!("{e:#}"));
    }
}
