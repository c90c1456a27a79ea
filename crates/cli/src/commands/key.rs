use crate::location::Location;
use anyhow::{Result, bail};
use grantline_store::keyfile;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the checkpoint verifier key (signed-note format: name+keyid+base64 key).
    Show,
}

pub fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Show => match keyfile::load_signer(&loc.data_dir)? {
            Some(s) => {
                println!("{}", s.verifier());
                Ok(ExitCode::SUCCESS)
            }
            None => bail!(
                "no checkpoint key: neither {} nor {} exists",
                keyfile::KEY_ENV,
                keyfile::key_path(&loc.data_dir).display()
            ),
        },
    }
}
