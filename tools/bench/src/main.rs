//! `grantline-bench`: ledger throughput on SQLite and PostgreSQL.
//!
//!   grantline-bench fill   --database URL --events N           # realistic synthetic ledger
//!   grantline-bench append --database URL --events N --writers W  # concurrent appends, group commit
//!   grantline-bench verify --database URL                       # full chain + checkpoint walk
//!   grantline-bench replay --database URL                       # read, check, decode, fold into State
//!   grantline-bench refresh --database URL --clients C --seconds S [--oidc-provider tests/e2e/idp]
//!                                                        # refresh rotations over HTTP
//!   grantline-bench gateway --database URL --clients C --seconds S  # tool-call overhead of the gateway
//!                           (both: --reqwest drives them with reqwest, the generator before 2026-12-05)
//!   grantline-bench audit-index  --database URL --index DIR   # build the audit index; baseline: map only
//!   grantline-bench audit-search --database URL --index DIR   # reviewer queries p50/p99; baseline: a full scan
//!   grantline-bench audit-export --database URL               # OCSF export; baseline: JSON lines
//!
//! Every run prints the command line, the machine and the figure.

mod audit;
mod gateway;
mod host;
mod load;
mod refresh;
mod synthetic;

use anyhow::Result;
use clap::{Parser, Subcommand};
use grantline_ledger::{Append, NoteSigner};
use grantline_store::{Database, Ledger, LedgerOptions, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "grantline-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// sqlite:PATH or postgres://…
    #[arg(long)]
    database: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fill a ledger with N realistic events spread over the last W weeks with a daily and
    /// weekly rhythm (appended in batches of 200, each stamped with the simulated time).
    Fill {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 6)]
        weeks: u64,
    },
    /// Build the audit index from the ledger, against a pass that only reads and maps.
    AuditIndex {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        index: std::path::PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The indexing memory budget per thread, MiB.
        #[arg(long, default_value_t = 128)]
        memory_mib: usize,
    },
    /// Typical reviewer queries against the index (p50/p99 over R runs), against a full scan
    /// of the ledger evaluating the same queries.
    AuditSearch {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        index: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Skip the full-scan baseline (it reads the whole ledger once).
        #[arg(long)]
        no_baseline: bool,
    },
    /// Seal and open N short personal values (an email, an address): the cost of
    /// XChaCha20-Poly1305 on what the ledger seals, per value.
    Pii {
        #[arg(long, default_value_t = 1_000_000)]
        values: u32,
    },
    /// Export the whole ledger as OCSF, against JSON lines (the event as recorded).
    AuditExport {
        #[command(flatten)]
        target: Target,
        /// Run one phase only (for profiling it).
        #[arg(long, value_enum)]
        only: Option<audit::ExportPhase>,
    },
    /// N events from W concurrent writers, one small append per request, as a server would.
    Append {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 512)]
        writers: u64,
    },
    /// Verify the whole ledger (as `grantline verify`).
    Verify {
        #[command(flatten)]
        target: Target,
        /// Only the events after a checkpoint, the newest or the one of tree size SIZE
        /// (`grantline verify --from-checkpoint`).
        #[arg(long, value_name = "SIZE")]
        from_checkpoint: Option<Option<u64>>,
    },
    /// Replay the whole ledger into State.
    Replay {
        #[command(flatten)]
        target: Target,
    },
    /// Inclusion proofs against the newest checkpoint, as the server computes them (over kept
    /// subtree roots: the first after a start, then R more at spread seqs), against the proof
    /// over every leaf that each one took before.
    Proofs {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 20)]
        runs: u64,
    },
    /// Refresh-token rotations per second over HTTP against an in-process `grantline serve`:
    /// C concurrent clients, each rotating its own token family for S seconds.
    Refresh {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Then the same rotations against node-oidc-provider: the directory with
        /// `bench-refresh.mjs` and its node_modules (tests/e2e/idp after `npm ci`).
        #[arg(long, value_name = "DIR")]
        oidc_provider: Option<std::path::PathBuf>,
        /// Drive both servers with reqwest (the load generator before 2026-12-05) instead of
        /// the lean one-connection-per-client generator.
        #[arg(long)]
        reqwest: bool,
        /// Run Grantline on a runtime of its own, as `grantline serve` does, with N worker
        /// threads (no N: one per core), instead of on the load generator's runtime.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "0")]
        apart: Option<usize>,
    },
    /// Gateway overhead: tool calls straight to a trivial upstream, then through the gateway.
    Gateway {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Drive both with reqwest (the load generator before 2026-12-05) instead of the
        /// lean one-connection-per-client generator.
        #[arg(long)]
        reqwest: bool,
        /// Run Grantline on a runtime of its own, as `grantline serve` does, with N worker
        /// threads (no N: one per core), instead of on the load generator's runtime.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "0")]
        apart: Option<usize>,
    },
}

fn signer() -> Result<NoteSigner> {
    Ok(NoteSigner::from_seed("grantline.bench/ledger", [7u8; 32])?)
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn report(what: &str, events: u64, took: Duration) {
    let rate = events as f64 / took.as_secs_f64();
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("machine: {}", machine());
    println!(
        "{what}: {events} events in {:.3} s = {:.0} events/s",
        took.as_secs_f64(),
        rate
    );
}

/// The allocator `grantline` uses, so the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fill {
            target,
            events,
            weeks,
        } => {
            let db = Database::parse(&target.database)?;
            let clock = Arc::new(std::sync::atomic::AtomicI64::new(0));
            let c = clock.clone();
            let ledger = Ledger::open(
                &db,
                signer()?,
                LedgerOptions {
                    clock: Some(Arc::new(move || {
                        grantline_ledger::Timestamp(c.load(Ordering::SeqCst))
                    })),
                    ..LedgerOptions::default()
                },
            )
            .await?;
            let mut generator = synthetic::Generator::new(1, synthetic::Population::new(1));
            let end = grantline_ledger::Timestamp::now().0;
            let span = (weeks.max(1) * 7 * 86_400_000_000) as i64;
            const BATCH: u64 = 200;
            // Busy on working hours and weekdays, quiet at night and at weekends; the mean
            // weight is about 2, so the batches fill the span.
            let weight = |t: i64| {
                let day = t.div_euclid(86_400_000_000);
                let hour = t.rem_euclid(86_400_000_000) / 3_600_000_000;
                let weekend = (day + 4).rem_euclid(7) >= 5;
                let h = if (8..18).contains(&hour) { 0.25 } else { 2.5 };
                if weekend { h * 2.0 } else { h }
            };
            let mean_gap = span as f64 / (events.div_ceil(BATCH)) as f64 / 2.0;
            let mut t = end - span;
            let start = Instant::now();
            let mut left = events;
            while left > 0 {
                let n = left.min(BATCH);
                clock.store(t, Ordering::SeqCst);
                generator.now = grantline_ledger::Timestamp(t);
                let batch: Vec<_> = (0..n).map(|_| generator.next_event()).collect();
                ledger.append(Append::new(batch)).await?;
                left -= n;
                t = (t + (mean_gap * weight(t)) as i64).min(end);
            }
            ledger.shutdown().await;
            audit::store_sample_keys(&ledger, 1).await?;
            report("fill", events, start.elapsed());
        }
        Cmd::AuditIndex {
            target,
            index,
            threads,
            memory_mib,
        } => {
            let store = Store::connect(&Database::parse(&target.database)?, false).await?;
            audit::index(&store, &index, threads, memory_mib).await?;
        }
        Cmd::AuditSearch {
            target,
            index,
            runs,
            no_baseline,
        } => {
            let store = Store::connect(&Database::parse(&target.database)?, false).await?;
            audit::search(&store, &index, runs.max(1), !no_baseline).await?;
        }
        Cmd::Pii { values } => audit::pii(values)?,
        Cmd::AuditExport { target, only } => {
            let store = Store::connect(&Database::parse(&target.database)?, false).await?;
            audit::export(&store, only).await?;
        }
        Cmd::Append {
            target,
            events,
            writers,
        } => {
            let db = Database::parse(&target.database)?;
            let ledger = Ledger::open(&db, signer()?, LedgerOptions::default()).await?;
            let remaining = Arc::new(AtomicU64::new(events));
            // The writers are concurrent requests to one deployment: one population of users
            // and clients, new families named from the clock as the server names them.
            let population = synthetic::Population::new(1);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..writers {
                let ledger = ledger.clone();
                let remaining = remaining.clone();
                let mut generator = synthetic::Generator::new(1000 + w, population.clone());
                tasks.push(tokio::spawn(async move {
                    while remaining
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        generator.now = grantline_ledger::Timestamp::now();
                        ledger
                            .append(Append::new(vec![generator.next_event()]))
                            .await?;
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            let took = start.elapsed();
            ledger.shutdown().await;
            report(
                &format!("append ({writers} concurrent writers)"),
                events,
                took,
            );
        }
        Cmd::Verify {
            target,
            from_checkpoint,
        } => {
            let store = Store::connect(&Database::parse(&target.database)?, false).await?;
            let start = Instant::now();
            let trusted = [signer()?.verifier()];
            if let Some(at) = from_checkpoint {
                let summary = grantline_store::verify_from_checkpoint(&store, &trusted, at, |_| {})
                    .await?
                    .map_err(|e| anyhow::anyhow!("not verified: {e:?}"))?;
                println!(
                    "verify --from-checkpoint: {} events after the checkpoint at {} checked in {:.3} s",
                    summary.events - summary.from,
                    summary.from,
                    start.elapsed().as_secs_f64()
                );
            } else {
                let summary = grantline_store::verify(&store, &trusted, |_| {})
                    .await?
                    .map_err(|f| anyhow::anyhow!("NOT INTACT: {f}"))?;
                report("verify", summary.events, start.elapsed());
            }
        }
        Cmd::Proofs { target, runs } => {
            let store = Store::connect(&Database::parse(&target.database)?, false).await?;
            let size = store
                .checkpoint(None)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the ledger has no checkpoint"))?
                .tree_size as u64;
            let subtrees = grantline_audit::proof::Subtrees::default();
            let seq = |i: u64| 1 + (i * 7_919_993) % size;
            let start = Instant::now();
            grantline_audit::proof::inclusion(&store, &subtrees, seq(0), None, ())
                .await?
                .ok_or_else(|| anyhow::anyhow!("no proof"))?;
            println!(
                "proofs: the first of a tree of {size} (reads every chain hash once): {:.3} s",
                start.elapsed().as_secs_f64()
            );
            let mut took = Vec::new();
            for i in 1..=runs {
                let start = Instant::now();
                grantline_audit::proof::inclusion(&store, &subtrees, seq(i), None, ())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no proof"))?;
                took.push(start.elapsed());
            }
            took.sort();
            println!(
                "proofs: the next {runs}: p50 {:.2} ms, max {:.2} ms",
                took[took.len() / 2].as_secs_f64() * 1e3,
                took[took.len() - 1].as_secs_f64() * 1e3
            );
            // Before: every proof read and hashed every leaf.
            let start = Instant::now();
            let leaves: Vec<_> = store
                .chain_hashes(size)
                .await?
                .iter()
                .map(grantline_ledger::merkle::leaf_hash)
                .collect();
            grantline_ledger::merkle::inclusion_proof(&leaves, (seq(1) - 1) as usize)
                .ok_or_else(|| anyhow::anyhow!("no proof"))?;
            println!(
                "proofs: one over every leaf (each proof, before): {:.3} s",
                start.elapsed().as_secs_f64()
            );
        }
        Cmd::Replay { target } => {
            let store = Store::connect(&Database::parse(&target.database)?, false).await?;
            let start = Instant::now();
            let state = replay(&store).await?;
            report("replay", state.seq, start.elapsed());
            println!(
                "state: {} clients, {} users, {} families, {} access tokens, {} refresh tokens",
                state.clients.len(),
                state.users.len(),
                state.families.len(),
                state.access_tokens.len(),
                state.refresh_tokens.len()
            );
        }
        Cmd::Refresh {
            target,
            clients,
            seconds,
            oidc_provider,
            reqwest,
            apart,
        } => {
            println!(
                "command: {}",
                std::env::args().collect::<Vec<_>>().join(" ")
            );
            println!("machine: {}", machine());
            refresh::run(
                &target.database,
                clients.max(1),
                seconds.max(1),
                oidc_provider.as_deref(),
                reqwest,
                apart,
            )
            .await?;
        }
        Cmd::Gateway {
            target,
            clients,
            seconds,
            reqwest,
            apart,
        } => {
            println!(
                "command: {}",
                std::env::args().collect::<Vec<_>>().join(" ")
            );
            println!("machine: {}", machine());
            gateway::run(
                &target.database,
                clients.max(1),
                seconds.max(1),
                reqwest,
                apart,
            )
            .await?;
        }
    }
    Ok(())
}

/// Folds the whole ledger into State.
async fn replay(store: &Store) -> Result<grantline_state::State> {
    let mut state = grantline_state::State::default();
    audit::each_page(store, async |events| {
        for e in events {
            grantline_state::apply(&mut state, e);
        }
        Ok(())
    })
    .await?;
    Ok(state)
}
