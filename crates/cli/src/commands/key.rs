use crate::location::Location;
use anyhow::{Result, bail};
use grantline_store::keyfile;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the checkpoint verifier key (signed-note format: name+keyid+base64 key).
    Show,
    /// Rotate the checkpoint, access-token and identity-assertion keys (servers stopped):
    /// recorded as `signing_key.rotated`, the checkpoint key's handover signed by the old key.
    Rotate,
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Rotate => {
            let config = grantline_server::Config::load(loc.config.as_deref())?;
            // A server running on the ledger would go on signing with the retired keys (and
            // its checkpoints would read as forged): refused while one holds an SQLite
            // ledger's lock, as a restore is. PostgreSQL's servers are the operator's to stop.
            let _alone = match &loc.database {
                grantline_store::Database::Sqlite(path) => Some(crate::lock::restoring(path)?),
                grantline_store::Database::Postgres(_) => None,
            };
            let r = grantline_server::rotation::rotate_keys(grantline_server::Options {
                config,
                data_dir: loc.data_dir.clone(),
                database: loc.database.clone(),
                ledger: grantline_store::LedgerOptions::default(),
                serving: false,
                sign_in: None,
            })
            .await?;
            println!("rotated at seq {}", r.seq);
            println!("previous checkpoint key: {}", r.previous_checkpoint_key);
            println!("new checkpoint key:      {}", r.checkpoint_key);
            println!("new access-token key id: {}", r.access_token_kid);
            println!(
                "record the new checkpoint key outside this machine; `grantline verify` follows \
                 the handover from the first key ({}). Start the servers again.",
                keyfile::HISTORY_FILE
            );
            Ok(ExitCode::SUCCESS)
        }
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
