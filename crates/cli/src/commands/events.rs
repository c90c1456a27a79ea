//! `grantline events`: the ledger's events in seq order, filtered, as a table with RFC 3339
//! times (or `--json`: each event as recorded, personal data opened), once or following.

use crate::location::Location;
use anyhow::{Context, Result};
use grantline_audit::scan::matches;
use grantline_ledger::{Kind, Timestamp};
use grantline_store::{Store, Tail};
use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Start after this seq.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Print at most this many events (says so, and where to continue, when it stops there).
    #[arg(long, default_value_t = 1000)]
    limit: u64,
    /// Only these kinds (comma-separated).
    #[arg(long)]
    kind: Option<String>,
    /// Only this user's events (id, username or email).
    #[arg(long)]
    user: Option<String>,
    /// Only this client's events (id or name).
    #[arg(long)]
    client: Option<String>,
    /// From this time on: a date, an RFC 3339 time, or relative (-24h, -7d).
    #[arg(long, allow_hyphen_values = true)]
    since: Option<String>,
    /// Before this time (same forms).
    #[arg(long, allow_hyphen_values = true)]
    until: Option<String>,
    /// Keep going: wait for new events and print them as they are appended.
    #[arg(long)]
    follow: bool,
    /// Each event as recorded, as JSON (times in microseconds), personal data opened.
    #[arg(long)]
    json: bool,
}

fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The filter flags as a query of the audit query language, and the query as text.
fn filter(args: &Args) -> Result<(grantline_audit::Expr, String)> {
    let mut q = Vec::new();
    if let Some(kinds) = args.kind.as_deref().filter(|k| !k.is_empty()) {
        let mut alt = Vec::new();
        for k in kinds.split(',') {
            let k = k.trim();
            Kind::parse(k).with_context(|| format!("unknown event kind {k:?}"))?;
            alt.push(format!("kind:{k}"));
        }
        q.push(format!("({})", alt.join(" OR ")));
    }
    if let Some(u) = &args.user {
        q.push(format!("user:{}", quoted(u)));
    }
    if let Some(c) = &args.client {
        q.push(format!("client:{}", quoted(c)));
    }
    if args.since.is_some() || args.until.is_some() {
        q.push(format!(
            "time:{}..{}",
            args.since.as_deref().unwrap_or(""),
            args.until.as_deref().unwrap_or("")
        ));
    }
    let query = q.join(" ");
    let expr = grantline_audit::parse(&query, Timestamp::now().0)
        .map_err(|e| anyhow::anyhow!("{query}: {e}"))?;
    Ok((expr, query))
}

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    let key = super::audit::reading_key(loc)?;
    let store = Store::connect(&loc.database, false)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))?;
    let (expr, query) = filter(&args)?;
    // What this reading asked for, sealed once: each batch shown is recorded with it.
    let sealed = super::audit::seal(&store, &query).await?;
    let mut exporter = super::audit::exporter_from(loc, &store, args.after, false).await?;
    let head = store.head().await?.map_or(0, |h| h.0);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !args.json {
        super::audit::header(&mut out)?;
    }
    let mut tail = Tail::new(&store, args.after, None).await?;
    let mut printed = 0u64;
    'reading: loop {
        if !args.follow && tail.position() >= head {
            break;
        }
        let events = tail.next(1_000).await?;
        let mut shown = Vec::new();
        let mut stopped_at = None;
        for r in &events {
            let item = exporter.item(r).await?;
            if !matches(&expr, &item.record) {
                continue;
            }
            if printed == args.limit {
                stopped_at = Some(r.seq() - 1);
                break;
            }
            shown.push((r, item));
            printed += 1;
        }
        // Every reading of the trail is recorded (personal data is opened here), before it is
        // shown; a batch of nothing but such records is not (following them would record for
        // ever).
        if !shown.is_empty()
            && !grantline_audit::access::only_readings(shown.iter().map(|(r, _)| *r))
        {
            super::audit::record(
                loc,
                &key,
                grantline_audit::access::searched(
                    &grantline_audit::access::Reader::default(),
                    grantline_ledger::AuditSurface::Cli,
                    sealed.clone(),
                    shown.len() as u64,
                    None,
                ),
            )
            .await?;
        }
        for (_, item) in &shown {
            if args.json {
                out.write_all(&item.json)?;
                writeln!(out)?;
            } else {
                super::audit::row(&mut out, &item.record)?;
            }
        }
        out.flush()?;
        if let Some(at) = stopped_at {
            eprintln!(
                "stopped at the limit of {} events; continue with --after {at}",
                args.limit
            );
            break 'reading;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
