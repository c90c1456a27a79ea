//! `grantline config check` and `grantline config reload`: the configuration file checked as
//! the server would read it, and a running server told to reload its policies.

use crate::location::Location;
use anyhow::{Context, Result, bail};
use grantline_server::reload::{self, Status};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check the configuration file (--config or GRANTLINE_CONFIG) as `serve` would read it,
    /// and print the reloadable policies it sets.
    Check,
    /// Check that the configuration file the server running on this data directory reads
    /// loads, then have that server check it and reload its resources, roles, rate limits and registration policy
    /// (SIGHUP), and print what it recorded. Exit 1 when the file is refused (also when
    /// --config names another file than the server's) or the server refuses it.
    Reload {
        /// How long to wait for the server's answer, in seconds.
        #[arg(long, default_value_t = 15)]
        wait: u64,
    },
}

/// Loads and checks the file the way the server builds its policy from it.
fn checked(file: Option<&Path>) -> Result<grantline_server::Config> {
    let config = grantline_server::Config::load(file)?;
    reload::Live::build(config.clone(), &config.public_url(), config.lifetimes())?;
    Ok(config)
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Check => {
            let config = match checked(loc.config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    println!("not valid: {}", crate::chain_once(&e));
                    return Ok(ExitCode::from(1));
                }
            };
            println!("valid");
            for (policy, settings) in reload::policies(&config) {
                for (k, v) in settings {
                    println!("{policy}.{k} = {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { wait } => {
            let pid_file = loc.data_dir.join(reload::PID_FILE);
            // Only a running server holds its pid file: one left by a server that did not
            // stop cleanly may name another process by now, which SIGHUP would end.
            let Some(server) = crate::lock::running_server(&pid_file)? else {
                bail!(
                    "no server runs on {} ({} is missing, or left by a server that stopped); \
                     nothing was signalled",
                    loc.data_dir.display(),
                    pid_file.display()
                );
            };
            let pid = server.pid;
            // The file the server reads again, not this command's own: checking another one
            // would refuse a good reload or pass a bad one.
            let file = match (server.config, &loc.config) {
                (Some(Some(theirs)), Some(ours)) if !same_file(&theirs, ours) => {
                    println!(
                        "refused, the server was not asked: the server on {} reads {}, not {}; \
                         edit that file, or leave out --config (and GRANTLINE_CONFIG)",
                        loc.data_dir.display(),
                        theirs.display(),
                        ours.display()
                    );
                    return Ok(ExitCode::from(1));
                }
                (Some(Some(theirs)), _) => Some(theirs),
                (Some(None), Some(ours)) => {
                    println!(
                        "refused, the server was not asked: the server on {} reads no \
                         configuration file (it was started without --config or \
                         GRANTLINE_CONFIG), so a reload would not read {}; restart it with \
                         --config {}",
                        loc.data_dir.display(),
                        ours.display(),
                        ours.display()
                    );
                    return Ok(ExitCode::from(1));
                }
                (Some(None), None) => None,
                // A server whose pid file does not say (an older version): this command's own.
                (None, ours) => ours.clone(),
            };
            // The file's syntax and settings, here; the rest (secrets from the server's own
            // variables, files only its user may read) is for the server, which answers with
            // the reason when it refuses.
            if let Err(e) = grantline_server::Config::parse(file.as_deref()) {
                println!(
                    "refused, the server was not asked: {}",
                    crate::chain_once(&e)
                );
                return Ok(ExitCode::from(1));
            }
            let before = Status::read(&loc.data_dir).map(|s| s.at);
            let sent = std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .context("running kill -HUP")?;
            if !sent.success() {
                bail!(
                    "could not signal process {pid} (from {})",
                    pid_file.display()
                );
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(wait);
            while std::time::Instant::now() < deadline {
                if let Some(s) = Status::read(&loc.data_dir)
                    && Some(s.at) != before
                {
                    println!("{}", s.message);
                    return Ok(if s.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("process {pid} did not answer within {wait} s; see its log")
        }
    }
}

/// Whether two names lead to one file (each resolved where it can be).
fn same_file(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    resolve(a) == resolve(b)
}
