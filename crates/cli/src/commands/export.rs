//! `grantline export`: events by seq from the ledger (not the index), in order, without gaps,
//! as JSON lines, OCSF, ECS or CEF — to standard output or a file, once or following new
//! events. Each batch written is recorded as `audit.exported`.

use crate::location::Location;
use anyhow::{Context, Result};
use grantline_audit::access::{Exported, Reader};
use grantline_audit::formats::Format;
use grantline_ledger::{AuditSurface, Recorded};
use grantline_store::{Store, Tail};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Start after this seq (the last one your SIEM acknowledged).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// The hash of the event at `--after`, as the last export printed it: the export is
    /// refused if the ledger no longer holds that event there (it was restored to an earlier
    /// point since), instead of silently skipping what it never exported.
    #[arg(long)]
    after_hash: Option<String>,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: ExportFormat,
    /// Only these kinds (comma-separated, e.g. tool.called,refresh.reuse_detected).
    #[arg(long)]
    kind: Option<String>,
    /// Keep going: wait for new events and export them as they are appended.
    #[arg(long)]
    follow: bool,
    /// Write here instead of standard output (appended to).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Leave personal data out (`[redacted]`).
    #[arg(long)]
    redact: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Ocsf,
    Ecs,
    Cef,
}

impl ExportFormat {
    fn format(self) -> Format {
        match self {
            ExportFormat::Jsonl => Format::Jsonl,
            ExportFormat::Ocsf => Format::Ocsf,
            ExportFormat::Ecs => Format::Ecs,
            ExportFormat::Cef => Format::Cef,
        }
    }
}

/// Events read from the ledger at a time (and the most one `audit.exported` covers).
const BATCH: u32 = 20_000;

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    let key = super::audit::reading_key(loc)?;
    let store = Store::connect(&loc.database, false)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))?;
    let (kinds, kind_filter) =
        match grantline_audit::access::kind_filter(args.kind.as_deref().unwrap_or(""))
            .map_err(anyhow::Error::msg)?
        {
            Some((k, f)) => (Some(k), Some(f)),
            None => (None, None),
        };
    let format = args.format.format();
    if let Some(given) = &args.after_hash {
        check_cursor(&store, args.after, given).await?;
    }
    let mut exporter = super::audit::exporter_from(loc, &store, args.after, args.redact).await?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new({
            // Only its owner reads a file it makes: unless --redact, it holds personal data
            // opened. (One that is there already keeps its mode.)
            let mut opts = std::fs::OpenOptions::new();
            opts.create(true).append(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            opts.open(p)
                .with_context(|| format!("opening {}", p.display()))?
        })),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let head = store.head().await?.map_or(0, |h| h.0);
    let bar = if args.output.is_some() && std::io::stderr().is_terminal() {
        let b = ProgressBar::new(head.saturating_sub(args.after));
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut tail = Tail::new(&store, args.after, None).await?;
    // The next batch is read, checked and decoded while this one is written.
    let (tx, mut batches) = tokio::sync::mpsc::channel(1);
    let follow = args.follow;
    let reader = tokio::spawn(async move {
        while follow || tail.position() < head {
            let from = tail.position();
            let batch = tail.next(BATCH).await.map(|e| (from, e, tail.position()));
            let failed = batch.is_err();
            if tx.send(batch).await.is_err() || failed {
                break;
            }
        }
    });
    let mut position = args.after;
    let mut exported_total = 0u64;
    let mut buf = Vec::with_capacity(BATCH as usize * 2048);
    while let Some(batch) = batches.recv().await {
        let (from, events, to) = batch?;
        position = to;
        let wanted = |r: &Recorded| {
            kinds
                .as_ref()
                .is_none_or(|k| k.contains(&r.envelope.kind()))
        };
        buf.clear();
        let count = exporter
            .write_page(&events, &wanted, format, &mut buf)
            .await?;
        let written = events.iter().filter(|r| wanted(r));
        // Recorded before it is written, as every other reading: a ledger that cannot record
        // the export gets nothing of the trail out.
        if count > 0 && !grantline_audit::access::only_receipts(written) {
            let event = grantline_audit::access::exported(
                &Reader::default(),
                AuditSurface::Cli,
                Exported {
                    format: format.as_str(),
                    after: from,
                    last_seq: Some(to),
                    count,
                    kind: kind_filter.clone(),
                    query: None,
                    redacted: args.redact,
                },
                None,
            );
            super::audit::record(loc, &key, event).await?;
            exported_total += count;
        }
        out.write_all(&buf)?;
        out.flush()?;
        bar.inc(events.len() as u64);
    }
    // The reader ends by closing the channel: after its last batch, after an error (sent
    // above), or by panicking, which must not pass for the end of the export.
    reader
        .await
        .context("the ledger reader stopped unexpectedly")?;
    if !args.follow && position < head {
        anyhow::bail!("the export stopped at seq {position}, before the head ({head})");
    }
    bar.finish_and_clear();
    let hash = match position {
        0 => String::new(),
        n => store
            .hash_at(n)
            .await?
            .map(|h| format!(" --after-hash {}", h.to_hex()))
            .unwrap_or_default(),
    };
    eprintln!(
        "exported {exported_total} events as {} through seq {position}; continue with --after {position}{hash}",
        format.as_str(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Refuses a cursor from another history: `given` must be the hash of the event at `after`.
async fn check_cursor(store: &Store, after: u64, given: &str) -> Result<()> {
    let given = grantline_ledger::Hash::from_hex(given)
        .context("--after-hash is the event's hash: 64 hexadecimal digits")?;
    if after == 0 {
        anyhow::bail!("--after-hash names the event at --after; there is none at --after 0");
    }
    let head = store.head().await?.map_or(0, |h| h.0);
    match store.hash_at(after).await? {
        Some(held) if held == given => Ok(()),
        Some(_) => anyhow::bail!(
            "the event at seq {after} is not the one this cursor stood on: the ledger was \
             restored to an earlier point and new events appended since (head {head}); \
             start again from an earlier cursor (receivers tell events apart by their id)"
        ),
        None => anyhow::bail!(
            "the ledger holds no event {after} (its head is {head}): it was restored to an \
             earlier point since this cursor was given; events after {head} are new"
        ),
    }
}
