//! `grantline config check` and `grantline config reload`: the configuration file checked as
//! the server would read it, and a running server told to reload its policies.

use crate::location::Location;
use anyhow::{Context, Result, bail};
use grantline_server::reload::{self, Status};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check the configuration file (--config or GRANTLINE_CONFIG) as `serve` would read it,
    /// and print the reloadable policies it sets.
    Check,
    /// Check the configuration file, then have the server running on this data directory
    /// reload its resources, roles, rate limits and registration policy (SIGHUP), and print
    /// what it recorded. Exit 1 when the server refuses the new configuration.
    Reload {
        /// How long to wait for the server's answer, in seconds.
        #[arg(long, default_value_t = 15)]
        wait: u64,
    },
}

/// Loads and checks the file the way the server builds its policy from it.
fn checked(loc: &Location) -> Result<grantline_server::Config> {
    let config = grantline_server::Config::load(loc.config.as_deref())?;
    reload::Live::build(config.clone(), &config.public_url(), config.lifetimes())?;
    Ok(config)
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Check => {
            let config = match checked(loc) {
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
            if let Err(e) = checked(loc) {
                println!(
                    "refused, the server was not asked: {}",
                    crate::chain_once(&e)
                );
                return Ok(ExitCode::from(1));
            }
            let pid_file = loc.data_dir.join(reload::PID_FILE);
            // Only a running server holds its pid file: one left by a server that did not
            // stop cleanly may name another process by now, which SIGHUP would end.
            let Some(pid) = crate::lock::running_server_pid(&pid_file)? else {
                bail!(
                    "no server runs on {} ({} is missing, or left by a server that stopped); \
                     nothing was signalled",
                    loc.data_dir.display(),
                    pid_file.display()
                );
            };
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
