//! Where the benches run Grantline: on the bench's own runtime, sharing its worker threads
//! with the load generator (the default, as all figures before 2026-12-05 evening), or on a
//! runtime of its own, as `grantline serve` runs it (`--apart`). Neither is a deployment: in the
//! first the generator's and the server's tasks share queues, in the second their threads
//! compete for the same two cores (docs/performance.md compares them).

use anyhow::{Context, Result};
use grantline_server::{App, Config, Options};
use grantline_store::{Database, LedgerOptions};
use std::future::Future;

/// A running server. [`Server::stop`] ends it as `grantline serve` ends.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    running: Running,
}

enum Running {
    Task(tokio::task::JoinHandle<Result<()>>),
    Thread(std::thread::JoinHandle<Result<()>>),
}

/// Where the server runs: `None` on the bench's runtime; `Some(n)` on a runtime of its own
/// with `n` worker threads, `Some(0)` with `grantline serve`'s default (one per core, or
/// `TOKIO_WORKER_THREADS`).
pub type Placement = Option<usize>;

/// Starts Grantline with `config` (its public URL set to where it listens) where `placement`
/// says, runs `prepare` there (setup that needs the application itself, not HTTP), and serves.
pub async fn start<T, F, Fut>(
    mut config: Config,
    database: &str,
    placement: Placement,
    prepare: F,
) -> Result<(Server, T)>
where
    T: Send + 'static,
    F: FnOnce(App) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let base = format!("http://{}", listener.local_addr()?);
    config.server.public_url = Some(base.clone());
    let database = Database::parse(database)?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<T>>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = async move {
        let dir = tempfile::tempdir()?;
        let started = async {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let app = App::start(Options {
                config,
                data_dir: dir.path().to_path_buf(),
                database,
                ledger: LedgerOptions::default(),
                serving: false,
                sign_in: None,
            })
            .await?;
            let value = prepare(app.clone()).await?;
            Ok::<_, anyhow::Error>((app, listener, value))
        };
        let (app, listener, value) = match started.await {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return Ok(());
            }
        };
        let _ = ready_tx.send(Ok(value));
        // Ends as `grantline serve` does, its ledger's last checkpoint written.
        grantline_server::serve(app, listener, async {
            let _ = stopped.await;
        })
        .await
    };
    let running = match placement {
        None => Running::Task(tokio::spawn(served)),
        Some(workers) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.enable_all().thread_name("grantline-server");
            if workers > 0 {
                runtime.worker_threads(workers);
            }
            let runtime = runtime.build()?;
            Running::Thread(
                std::thread::Builder::new()
                    .name("grantline-server-main".into())
                    .spawn(move || runtime.block_on(served))?,
            )
        }
    };
    let value = ready_rx
        .await
        .context("the server's thread ended before it was ready")??;
    Ok((
        Server {
            base,
            stop,
            running,
        },
        value,
    ))
}

impl Server {
    /// Stops serving, lets the ledger finish, and waits for the server's thread.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        match self.running {
            Running::Task(task) => task.await?,
            Running::Thread(thread) => tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the server's thread panicked"))?,
        }
    }
}
