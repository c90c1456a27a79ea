//! Audit benchmarks: index build rate, search latency of typical reviewer queries, OCSF export
//! throughput — each beside a plain baseline measured in the same run, reported as a ratio.

use anyhow::{Context, Result};
use grantline_audit::formats::{Exporter, Format};
use grantline_audit::keys::KeyCache;
use grantline_audit::mapping::Directory;
use grantline_audit::scan::matches;
use grantline_audit::{AuditIndex, Indexer, IndexerOptions, SortOrder};
use grantline_ledger::{Recorded, Timestamp, pii};
use grantline_store::{Keyring, Ledger, Pool, Store};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Stores the synthetic generator's key for every user subject it sealed under, so readers
/// open the personal data as they would in a real deployment.
pub async fn store_sample_keys(ledger: &Ledger, seed: u64) -> Result<()> {
    let key = vec![seed as u8; 32];
    let now = Timestamp::now().0;
    for u in 0..crate::synthetic::USERS {
        let subject = pii::user_subject(&crate::synthetic::user_id(u));
        match ledger.store().pool() {
            Pool::Sqlite(p) => {
                sqlx::query(
                    "INSERT OR IGNORE INTO subject_keys (subject, key, created) VALUES (?, ?, ?)",
                )
                .bind(&subject)
                .bind(&key)
                .bind(now)
                .execute(p)
                .await?;
            }
            Pool::Postgres(p) => {
                sqlx::query("INSERT INTO subject_keys (subject, key) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(&subject)
                    .bind(&key)
                    .execute(p)
                    .await?;
            }
        }
    }
    Ok(())
}

fn header() {
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("machine: {}", crate::machine());
}

/// CPU seconds (user + system, all threads) this process has used so far, from
/// `/proc/self/stat`: what a phase costs on both cores, beside its wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Reads the whole ledger in pages, the next fetched while this one is handled.
pub(crate) async fn each_page(
    store: &Store,
    mut f: impl AsyncFnMut(&[Recorded]) -> Result<()>,
) -> Result<u64> {
    let page = 20_000;
    let head = store.head().await?.map_or(0, |h| h.0);
    // Read as `grantline export` reads: a `Tail` in its own task keeps the next page read,
    // checked and decoded while this one is handled.
    let mut tail = grantline_store::Tail::new(store, 0, None).await?;
    let (tx, mut pages) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        while tail.position() < head {
            let page = tail.next(page).await;
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                break;
            }
        }
    });
    let mut n = 0;
    while let Some(events) = pages.recv().await {
        let events = events.context("reading events")?;
        f(&events).await?;
        n += events.len() as u64;
    }
    reader.await?;
    Ok(n)
}

pub async fn index(store: &Store, dir: &Path, threads: usize, memory_mib: usize) -> Result<()> {
    header();
    // Baseline: read, decode, open personal data and map every event — all the indexer does
    // but indexing.
    let start = Instant::now();
    let mut keys = KeyCache::new(Keyring::new(store));
    let mut directory = Directory::default();
    let mut mapped = 0u64;
    let n = each_page(store, async |events| {
        for e in events {
            let r = keys.map(e, &mut directory).await?;
            mapped += r.seq & 1;
        }
        Ok(())
    })
    .await?;
    let base = start.elapsed();
    let _ = mapped;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let index = AuditIndex::open(dir)?;
    let mut indexer = Indexer::open(
        index.clone(),
        store,
        Keyring::new(store),
        IndexerOptions {
            threads,
            memory_bytes: (threads.max(1) * memory_mib.max(16)) << 20,
            commit_every: 1_000_000,
            ..IndexerOptions::default()
        },
    )
    .await?;
    let start = Instant::now();
    let done = indexer.catch_up(|_, _| {}).await?;
    let took = start.elapsed();
    let size: u64 = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "baseline (read, decode, open, map): {n} events in {:.1} s = {:.0} events/s",
        base.as_secs_f64(),
        rate(n, base)
    );
    println!(
        "index build ({threads} indexing threads): {done} events in {:.1} s = {:.0} events/s ({:.2}× the baseline's time), index {:.0} MiB",
        took.as_secs_f64(),
        rate(done, took),
        took.as_secs_f64() / base.as_secs_f64(),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// The reviewer's questions the benchmark asks, relative to the ledger's last event.
fn queries(end: i64) -> Vec<String> {
    let day = |d: i64| Timestamp(end - d * 86_400_000_000).to_string()[..10].to_string();
    vec![
        "kind:tool.called outcome:denied time:>-7d".into(),
        "user:user3@example.com time:>-24h".into(),
        "tool:delete_* -outcome:success".into(),
        "ip:10.0.0.0/8 kind:login.failed".into(),
        format!(
            "(kind:refresh.reuse_detected OR kind:code.replayed) time:{}..{}",
            day(14),
            day(7)
        ),
        "client:\"Cursor 1\" kind:tool.called".into(),
        "kind:authorization.denied user:user1".into(),
        "\"user's question\" tool:read_file".into(),
        "category:detection".into(),
        "ua:curl* time:>-2d".into(),
    ]
}

pub async fn search(store: &Store, dir: &Path, runs: usize, baseline: bool) -> Result<()> {
    header();
    let index = AuditIndex::open(dir)?;
    let end = store
        .read(store.head().await?.map_or(0, |h| h.0).saturating_sub(1), 1)
        .await?
        .first()
        .map_or(Timestamp::now().0, |r| r.time().0);
    let qs = queries(end);
    let exprs: Vec<_> = qs
        .iter()
        .map(|q| grantline_audit::parse(q, end).map_err(|e| anyhow::anyhow!("{q}: {e}")))
        .collect::<Result<_>>()?;
    println!(
        "index: {} documents; {runs} runs per query, first page of 50, newest first",
        index.len()
    );
    let mut rows = Vec::new();
    for (q, e) in qs.iter().zip(&exprs) {
        let mut lat = Vec::with_capacity(runs);
        let mut shown = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let page = index.search(e, SortOrder::Desc, None, 50)?;
            lat.push(start.elapsed());
            shown = page.records.len();
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        rows.push((q.clone(), shown, p(0.5), p(0.99)));
    }
    // Baseline: one pass over the whole ledger evaluating every query (each query alone
    // needs that same pass).
    let mut counts = vec![0u64; exprs.len()];
    let base = if baseline {
        let start = Instant::now();
        let mut keys = KeyCache::new(Keyring::new(store));
        let mut directory = Directory::default();
        each_page(store, async |events| {
            for ev in events {
                let r = keys.map(ev, &mut directory).await?;
                for (i, e) in exprs.iter().enumerate() {
                    if matches(e, &r) {
                        counts[i] += 1;
                    }
                }
            }
            Ok(())
        })
        .await?;
        Some(start.elapsed())
    } else {
        None
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut all = Vec::new();
    for (i, (q, shown, p50, p99)) in rows.iter().enumerate() {
        all.push(*p99);
        match base {
            Some(b) => println!(
                "{q:<70} shown {shown:>3} of {:>8} matches  p50 {:>7.2} ms  p99 {:>7.2} ms  scan {:>8.0} ms  ({:.0}× faster at p99)",
                counts[i],
                ms(*p50),
                ms(*p99),
                ms(b),
                ms(b) / ms(*p99)
            ),
            None => println!(
                "{q:<70} shown {shown:>3}  p50 {:>7.2} ms  p99 {:>7.2} ms",
                ms(*p50),
                ms(*p99)
            ),
        }
    }
    all.sort();
    println!(
        "worst p99 over the queries: {:.2} ms",
        ms(*all.last().unwrap_or(&Duration::ZERO))
    );
    Ok(())
}

/// The phases of the export benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportPhase {
    /// Rows read, checked and decoded, nothing written.
    Read,
    /// The event as recorded, as JSON lines.
    Jsonl,
    /// OCSF.
    Ocsf,
}

pub async fn export(store: &Store, only: Option<ExportPhase>) -> Result<()> {
    header();
    let runs = |p: ExportPhase| only.is_none_or(|o| o == p);
    let mut sink = std::io::sink();
    let mut buf = Vec::with_capacity(4096);
    let per_event = |cpu: f64, n: u64| cpu * 1e6 / n.max(1) as f64;
    let mut baseline = None;
    if runs(ExportPhase::Read) {
        // What reading alone costs: rows read, checked and decoded, nothing written.
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let n = each_page(store, async |_| Ok(())).await?;
        let (took, cpu) = (start.elapsed(), cpu_seconds() - cpu);
        println!(
            "reading alone (rows read, checked, decoded): {n} events in {:.1} s = {:.0} events/s, CPU {:.1} µs an event",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            per_event(cpu, n)
        );
    }
    // The pages are written as `grantline export` and the export API write them.
    let all = |_: &Recorded| true;
    for (phase, format, what) in [
        (
            ExportPhase::Jsonl,
            Format::Jsonl,
            "baseline (JSON lines, the event as recorded)",
        ),
        (ExportPhase::Ocsf, Format::Ocsf, "OCSF"),
    ] {
        if !runs(phase) {
            continue;
        }
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let mut exporter = Exporter::new(Keyring::new(store), Directory::default(), false);
        let n = each_page(store, async |events| {
            buf.clear();
            exporter.write_page(events, &all, format, &mut buf).await?;
            sink.write_all(&buf)?;
            Ok(())
        })
        .await?;
        let (took, cpu) = (start.elapsed(), cpu_seconds() - cpu);
        let ratio = match baseline {
            Some(b) => format!(" ({:.2}× the baseline's time)", took.as_secs_f64() / b),
            None => String::new(),
        };
        println!(
            "{what}: {n} events in {:.1} s = {:.0} events/s{ratio}, CPU {:.1} µs an event",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            per_event(cpu, n)
        );
        baseline.get_or_insert(took.as_secs_f64());
    }
    Ok(())
}

/// Seals and opens `n` short values under one subject's key, as the ledger does for an email
/// or an address, and prints the time of each per value.
pub fn pii(n: u32) -> Result<()> {
    header();
    let key = grantline_ledger::SubjectKey([7; 32]);
    let subject = pii::user_subject("usr_0000000000000001");
    let values = [
        "alice.example@example.com",
        "203.0.113.77",
        "Mozilla/5.0 (X11; Linux x86_64)",
    ];
    let start = Instant::now();
    let mut sealed = Vec::with_capacity(n as usize);
    for i in 0..n {
        let v = values[i as usize % values.len()];
        sealed.push(grantline_ledger::Sealed::seal(&key, &subject, v)?);
    }
    let seal = start.elapsed();
    let start = Instant::now();
    let mut bytes = 0;
    for s in &sealed {
        bytes += s.open(&key)?.len();
    }
    let open = start.elapsed();
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(n.max(1));
    println!(
        "{n} values of 12–31 bytes ({bytes} bytes opened): seal {:.0} ns, open {:.0} ns a value",
        per(seal),
        per(open)
    );
    Ok(())
}
