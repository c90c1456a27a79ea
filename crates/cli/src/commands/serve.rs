use crate::location::Location;
use anyhow::{Context, Result};
use grantline_store::LedgerOptions;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (overrides the config file and GRANTLINE_LISTEN).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Write a checkpoint at least every this many events.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
    /// And at least this often (seconds) while events are not yet covered.
    #[arg(long, default_value_t = 10)]
    checkpoint_interval: u64,
    /// With `[login] local_accounts = false`: this local user (an administrator) may still
    /// sign in with a password, for when the identity provider is down.
    #[arg(long, value_name = "USERNAME")]
    break_glass_admin: Option<String>,
    /// Start even when an identity provider cannot be reached or its discovery is invalid
    /// (its button fails until it can be reached).
    #[arg(long)]
    start_without_providers: bool,
}

/// What the command line changes in the configuration file's settings: applied the same way
/// at start and at every reload, so a reload compares like with like.
#[derive(Clone)]
struct Overrides {
    listen: Option<SocketAddr>,
    break_glass_admin: Option<String>,
    start_without_providers: bool,
    /// `http://<the address bound>` when the file names no public URL.
    public_url: Option<String>,
}

impl Overrides {
    fn load(&self, loc: &Location) -> Result<grantline_server::Config> {
        let mut config = grantline_server::Config::load(loc.config.as_deref())?;
        if let Some(l) = self.listen {
            config.server.listen = l;
        }
        config.login.break_glass_admin = self.break_glass_admin.clone();
        config.login.start_without_providers = self.start_without_providers;
        if config.server.public_url.is_none() {
            config.server.public_url = self.public_url.clone();
        }
        Ok(config)
    }
}

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    let mut overrides = Overrides {
        listen: args.listen,
        break_glass_admin: args.break_glass_admin,
        start_without_providers: args.start_without_providers,
        public_url: None,
    };
    let mut config = overrides.load(loc)?;
    // Before the connection cap is worked out from it (`[server] max_connections`).
    grantline_server::connections::raise_open_file_limit();
    // Held until the server has stopped: no restore swaps the ledger under it meanwhile.
    let _serving = match &loc.database {
        grantline_store::Database::Sqlite(path) => crate::lock::serving(path)?,
        grantline_store::Database::Postgres(_) => None,
    };
    let listener = grantline_server::connections::bind(config.server.listen)
        .with_context(|| format!("listening on {}", config.server.listen))?;
    if config.server.public_url.is_none() {
        // An address every interface answers on names no host a client can reach: the
        // issuer, the resource ids and the tokens' audiences would all be wrong.
        // (Behind a proxy that says the host, `trust_forwarded_headers`, the issuer is taken
        // from each request: that deployment is fine.)
        if config.server.listen.ip().is_unspecified() && !config.server.trust_forwarded_headers {
            anyhow::bail!(
                "listening on {} needs the URL clients reach the server at: set \
                 GRANTLINE_PUBLIC_URL (or [server] public_url), e.g. https://auth.example.com \
                 (or, behind a proxy that sends X-Forwarded-Host, trust_forwarded_headers)",
                config.server.listen
            );
        }
        // Port 0 picks a free port: the issuer must name the real one.
        let url = format!("http://{}", listener.local_addr()?);
        config.server.public_url = Some(url.clone());
        overrides.public_url = Some(url);
    }
    // OAuth 2.1 wants TLS everywhere but on loopback: over plain HTTP elsewhere, passwords,
    // codes and tokens cross the network in the clear, and cookies lose `Secure`.
    if let Some(u) = config
        .server
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        && !config.server.trust_forwarded_headers
        && u.scheme() == "http"
        && !u.host().is_some_and(|h| match h {
            url::Host::Domain(d) => d == "localhost",
            url::Host::Ipv4(a) => a.is_loopback(),
            url::Host::Ipv6(a) => a.is_loopback(),
        })
    {
        tracing::warn!(issuer = %u, "the issuer is plain http on a host that is not loopback: sign-ins, codes and tokens travel in the clear; terminate TLS in front and set public_url to https://…");
    }
    // Listened for before the (possibly long) start: a SIGHUP meanwhile (logrotate, a
    // service manager's reload) would otherwise end the process; it reloads once started.
    let hangup = hangup_signal();
    let first_start = grantline_store::keyfile::load_signer(&loc.data_dir)?.is_none();
    let app = grantline_server::App::start(grantline_server::Options {
        config,
        data_dir: loc.data_dir.clone(),
        database: loc.database.clone(),
        ledger: LedgerOptions {
            checkpoint_every_events: args.checkpoint_every.max(1),
            checkpoint_interval: Duration::from_secs(args.checkpoint_interval.max(1)),
            ..LedgerOptions::default()
        },
        serving: true,
        sign_in: None,
    })
    .await?;
    if let Some(signer) = grantline_store::keyfile::load_signer(&loc.data_dir)? {
        let verifier = signer.verifier().to_string();
        if first_start {
            // Printed once, for the operator to keep somewhere the server cannot change: with
            // it, `grantline verify --public-key` tells tampering from a missing key file.
            println!("checkpoint verifier key (record it outside this machine): {verifier}");
        }
        tracing::info!(key = %verifier, "checkpoint verifier key");
    }
    tracing::info!(
        database = %loc.database.display(),
        data_dir = %loc.data_dir.display(),
        events = app.projection.seq(),
        "ledger open"
    );
    // SIGHUP is handled before the pid file says where to send it (its default would end
    // the process).
    reload_on_hangup(app.clone(), loc, overrides, hangup);
    let pid_file = loc.data_dir.join(grantline_server::reload::PID_FILE);
    // Held (and removed) until the server stops: `config reload` signals only a live holder.
    // While another server on the data directory holds it, tried again now and then, so this
    // one is found once that one has stopped.
    let held_pid = std::sync::Arc::new(std::sync::Mutex::new(None));
    let claiming = {
        let held_pid = held_pid.clone();
        let pid_file = pid_file.clone();
        let config = loc.config.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match crate::lock::claim_pid_file(&pid_file, config.as_deref()) {
                    Ok(Some(held)) => {
                        if warned {
                            tracing::info!(path = %pid_file.display(), "this server holds the pid file now");
                        }
                        *held_pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(held);
                        return;
                    }
                    Ok(None) if !warned => {
                        warned = true;
                        tracing::warn!(path = %pid_file.display(), "another server on this data directory holds the pid file; `grantline config reload` signals that one until it stops");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), path = %pid_file.display(), "cannot write the pid file; `grantline config reload` will not find this server");
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let served = grantline_server::serve(app, listener, shutdown_signal()).await;
    claiming.abort();
    drop(held_pid.lock().unwrap_or_else(|e| e.into_inner()).take());
    served?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP, listened for from this call on (its default would end the process).
#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload needs a restart");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

/// SIGHUP: read the configuration file again and reload the policies (see
/// `grantline_server::reload`); the outcome is logged and written for `grantline config reload`.
/// One received while the server started is a reload as soon as it has.
#[cfg(unix)]
fn reload_on_hangup(
    app: grantline_server::App,
    loc: &Location,
    overrides: Overrides,
    hangup: Option<tokio::signal::unix::Signal>,
) {
    {
        let loc = Location {
            data_dir: loc.data_dir.clone(),
            database: loc.database.clone(),
            config: loc.config.clone(),
        };
        let Some(mut hangup) = hangup else {
            return;
        };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let outcome = match overrides.load(&loc) {
                    Ok(config) => app.reload(config).await.map_err(Into::into),
                    Err(e) => Err(grantline_server::reload::ReloadOutcome::Refused(format!(
                        "{e:#}"
                    ))),
                };
                let status = grantline_server::reload::Status::of(app.now().0, &outcome);
                if status.ok {
                    tracing::info!(message = %status.message, "SIGHUP");
                } else {
                    tracing::error!(message = %status.message, "SIGHUP");
                }
                if let Err(e) = status.write(&loc.data_dir) {
                    tracing::warn!(error = %e, "cannot write the reload status");
                }
            }
        });
    }
}

#[cfg(not(unix))]
fn reload_on_hangup(
    _app: grantline_server::App,
    _loc: &Location,
    _overrides: Overrides,
    _hangup: Option<()>,
) {
}

/// Ctrl-C or SIGTERM. A second one while the server stops ends the process at once: an
/// operator who asks twice does not want to wait out the drain (what was appended is durable
/// already; requests still open get no answer, and the final checkpoint is not written).
async fn shutdown_signal() {
    stop_signal().await;
    tokio::spawn(async {
        stop_signal().await;
        tracing::warn!("a second stop signal: exiting now, without waiting for the drain");
        std::process::exit(130);
    });
}

async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
