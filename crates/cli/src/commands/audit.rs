//! `grantline audit search` and `grantline audit reindex`: the audit index of this data
//! directory, from the command line. Searches are recorded (`audit.searched`, by the
//! operator) like any other.

use crate::location::Location;
use anyhow::{Context, Result, bail};
use grantline_audit::access::{self, Reader};
use grantline_audit::{AuditIndex, AuditRecord, Indexer, IndexerOptions, SortOrder};
use grantline_ledger::{AuditSurface, NewEvent, NoteSigner, Timestamp};
use grantline_store::{Keyring, Ledger, LedgerOptions, Store};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Search the audit trail with the query language (docs/audit.md), newest first.
    Search {
        /// e.g. 'kind:tool.called user:alice@example.com outcome:denied time:>-24h'
        query: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
        /// At most this many results (up to 1000 a page; use --cursor for the next).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Oldest first.
        #[arg(long)]
        asc: bool,
        /// The next_cursor a previous page printed.
        #[arg(long)]
        cursor: Option<u64>,
    },
    /// Delete this data directory's audit index and build it again from the ledger.
    Reindex,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Csv,
}

/// Where this data directory's audit index is.
pub fn index_dir(loc: &Location) -> Result<PathBuf> {
    let config = grantline_server::Config::load(loc.config.as_deref())?;
    Ok(config
        .audit
        .index_dir
        .unwrap_or_else(|| loc.data_dir.join("audit-index")))
}

/// The index, brought up to the ledger's head here — unless a running server holds it (and
/// keeps it current itself).
pub async fn current_index(loc: &Location, store: &Store) -> Result<AuditIndex> {
    let dir = index_dir(loc)?;
    let index = AuditIndex::open(&dir)
        .with_context(|| format!("opening the audit index in {}", dir.display()))?;
    match Indexer::open(
        index.clone(),
        store,
        Keyring::new(store),
        IndexerOptions::default(),
    )
    .await
    {
        Ok(mut indexer) => {
            let head = store.head().await?.map_or(0, |h| h.0);
            let b = super::progress_bar(head, "events indexed");
            b.set_position(indexer.position());
            indexer.catch_up(|done, _| b.set_position(done)).await?;
            b.finish_and_clear();
        }
        Err(grantline_audit::IndexerError::Index(e)) if e.is_lock_busy() => {
            eprintln!(
                "note: a running server keeps this index; searching it as of seq {}",
                head_of(&index)
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(index)
}

fn head_of(index: &AuditIndex) -> u64 {
    index
        .search(&grantline_audit::Expr::All, SortOrder::Desc, None, 1)
        .ok()
        .and_then(|p| p.records.first().map(|r| r.seq))
        .unwrap_or(0)
}

/// An exporter that knows the names of users and clients created before `after`: from this
/// data directory's index when it has one, else from a pass over the ledger up to `after`.
pub async fn exporter_from(
    loc: &Location,
    store: &Store,
    after: u64,
    redact: bool,
) -> Result<grantline_audit::formats::Exporter> {
    let dir_path = index_dir(loc)?;
    // The index's names, when it has reached `after` (one left behind, or being rebuilt,
    // lacks the users created since it stopped); the clients renamed since `after` as they
    // were named then.
    let directory = if dir_path.join("meta.json").exists() {
        AuditIndex::open(&dir_path)
            .ok()
            .filter(|i| i.head() >= after)
            .and_then(|i| {
                let mut d = grantline_audit::directory_of(&i).ok()?;
                grantline_audit::clients_as_of(&i, &mut d, after).ok()?;
                Some(d)
            })
    } else {
        None
    };
    let indexed = directory.is_some();
    let mut exporter = grantline_audit::formats::Exporter::new(
        Keyring::new(store),
        directory.unwrap_or_default(),
        redact,
    );
    if !indexed && after > 0 {
        // Only the events that name users and clients, not the whole ledger before `after`.
        for r in store
            .read_kinds(&grantline_audit::mapping::NAME_KINDS, 0, after)
            .await?
        {
            exporter.learn(&r).await?;
        }
    }
    Ok(exporter)
}

/// The key a reading of the audit trail is recorded under: the server's, never a new one.
/// Asked for before a reading touches anything, since a data directory without a key is not a
/// server's (an evidence copy, a backup unpacked elsewhere) and a reading must leave neither a
/// key nor an event nor a personal-data key in it.
pub fn reading_key(loc: &Location) -> Result<NoteSigner> {
    match grantline_store::keyfile::load_signer(&loc.data_dir)? {
        Some(signer) => Ok(signer),
        None => bail!(
            "no checkpoint key in {}: every reading of the audit trail is recorded in the \
             ledger it reads, and this data directory is not a server's; give the server's \
             --data-dir, or read a copy that holds its key",
            loc.data_dir.display()
        ),
    }
}

/// Appends an event the operator's reading caused, signed by [`reading_key`]'s key.
pub async fn record(loc: &Location, key: &NoteSigner, event: Option<NewEvent>) -> Result<()> {
    let Some(event) = event else {
        bail!("the reading is out of bounds and cannot be recorded");
    };
    let signer = key.clone();
    // This command folds no state, so it does not check which checkpoint key is in force:
    // it signs no checkpoint (the server's next one covers this event).
    let options = LedgerOptions {
        sign_after_key_check: true,
        // After a rotation, the tree resumes as the server's does, not from every hash.
        resume_keys: grantline_store::keyfile::key_history(&loc.data_dir)?,
        ..LedgerOptions::default()
    };
    let ledger = Ledger::open(&loc.database, signer, options).await?;
    let result = ledger
        .append(grantline_ledger::Append::new(vec![event]))
        .await;
    ledger.shutdown().await;
    result.context("recording this reading of the audit trail")?;
    Ok(())
}

/// Seals what the operator typed under today's anonymous key.
pub async fn seal(store: &Store, text: &str) -> Result<grantline_ledger::Sealed> {
    let today = Timestamp::now().to_string();
    Ok(Keyring::new(store)
        .seal(&Reader::default().subject(&today[..10]), text)
        .await?)
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    // A search is a reading, recorded under the server's key: without one, nothing is opened.
    let key = match &cmd {
        Command::Search { .. } => Some(reading_key(loc)?),
        _ => None,
    };
    let store = Store::connect(&loc.database, false)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))?;
    match cmd {
        Command::Reindex => {
            let dir = index_dir(loc)?;
            let index = AuditIndex::open(&dir)?;
            let mut indexer = match Indexer::open(
                index,
                &store,
                Keyring::new(&store),
                IndexerOptions::default(),
            )
            .await
            {
                Ok(i) => i,
                Err(grantline_audit::IndexerError::Index(e)) if e.is_lock_busy() => {
                    bail!(
                        "a running server holds the audit index in {}; stop it first",
                        dir.display()
                    )
                }
                Err(e) => return Err(e.into()),
            };
            indexer.clear().await?;
            let head = store.head().await?.map_or(0, |h| h.0);
            let b = super::progress_bar(head, "events indexed");
            let start = std::time::Instant::now();
            let done = indexer.catch_up(|n, _| b.set_position(n)).await?;
            b.finish_and_clear();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "indexed {done} events in {secs:.1} s ({:.0} events/s) into {}",
                done as f64 / secs.max(1e-9),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Search {
            query,
            format,
            limit,
            asc,
            cursor,
        } => {
            let expr = match grantline_audit::parse(&query, Timestamp::now().0) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("error: the query does not parse {e}");
                    eprintln!("  {query}");
                    eprintln!("  {}^", " ".repeat(e.column.saturating_sub(1)));
                    return Ok(ExitCode::from(2));
                }
            };
            let Some(key) = key else {
                bail!("a search needs the server's checkpoint key");
            };
            let index = current_index(loc, &store).await?;
            let order = if asc { SortOrder::Asc } else { SortOrder::Desc };
            let page = index.search(&expr, order, cursor, limit)?;
            let sealed = seal(&store, &query).await?;
            record(
                loc,
                &key,
                access::searched(
                    &Reader::default(),
                    AuditSurface::Cli,
                    sealed,
                    page.records.len() as u64,
                    None,
                ),
            )
            .await?;
            let mut out = std::io::stdout().lock();
            match format {
                Output::Json => {
                    let v = serde_json::json!({
                        "query": query,
                        "results": page.records,
                        "next_cursor": page.next.map(|n| n.to_string()),
                    });
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                }
                Output::Csv => {
                    writeln!(out, "{}", grantline_audit::formats::csv::header())?;
                    for r in &page.records {
                        writeln!(out, "{}", grantline_audit::formats::csv::row(r))?;
                    }
                }
                Output::Table => {
                    table(&mut out, &page.records)?;
                    if let Some(n) = page.next {
                        eprintln!("more results: add --cursor {n}");
                    } else if page.records.is_empty() {
                        eprintln!("no events match");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `s` in at most `n` characters, each control character (a carriage return that would
/// overwrite the row on a terminal, an escape sequence) and bidirectional override shown as a
/// space: names and summaries
/// come from whoever registered a client or sent a request.
fn clip(s: &str, n: usize) -> String {
    let shown = s.chars().map(|c| {
        // Bidirectional marks and overrides reorder what follows on a terminal too.
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi { ' ' } else { c }
    });
    if s.chars().count() <= n {
        shown.collect()
    } else {
        format!("{}…", shown.take(n - 1).collect::<String>())
    }
}

/// The header of the results table.
pub fn header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>8}  {:<27}  {:<24}  {:<24}  {:<20}  {:<16}  {:<8}  SUMMARY",
        "SEQ", "TIME (UTC)", "EVENT", "USER", "CLIENT", "TOOL", "OUTCOME"
    )
}

/// One row of the results table.
pub fn row(out: &mut impl Write, r: &AuditRecord) -> std::io::Result<()> {
    let user = r
        .user_email
        .as_ref()
        .or(r.user_name.as_ref())
        .or(r.user_id.as_ref())
        .map(String::as_str)
        .unwrap_or("-");
    let client = r
        .client_name
        .as_ref()
        .or(r.client_id.as_ref())
        .map(String::as_str)
        .unwrap_or("-");
    writeln!(
        out,
        "{:>8}  {:<27}  {:<24}  {:<24}  {:<20}  {:<16}  {:<8}  {}",
        r.seq,
        Timestamp(r.time).to_string(),
        clip(&r.kind, 24),
        clip(user, 24),
        clip(client, 20),
        clip(r.tool.as_deref().unwrap_or("-"), 16),
        clip(&r.outcome, 8),
        clip(&r.summary, 80)
    )
}

/// The results as a table.
pub fn table(out: &mut impl Write, records: &[AuditRecord]) -> std::io::Result<()> {
    header(out)?;
    for r in records {
        row(out, r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client name that an anonymous registration chose, with a carriage return and an
    /// escape sequence in it, cannot rewrite the row on the reviewer's terminal.
    #[test]
    fn a_row_holds_no_control_character() {
        let r = AuditRecord {
            seq: 7,
            kind: "registration.rejected".into(),
            outcome: "denied".into(),
            client_name: Some("\rSEQ 1 all fine\u{1b}[2K\u{202e}gnp.exe".into()),
            summary: "refused\r\nnext".into(),
            ..AuditRecord::default()
        };
        let mut out = Vec::new();
        row(&mut out, &r).unwrap();
        let line = String::from_utf8(out).unwrap();
        let body = line.strip_suffix('\n').unwrap();
        assert!(!body.chars().any(char::is_control), "{body:?}");
        assert!(!body.contains('\u{202e}'), "{body:?}");
        assert!(
            body.contains("SEQ 1 all fine") && body.contains("refused  next"),
            "{body:?}"
        );
    }
}
