use crate::location::Location;
use anyhow::{Result, bail};
use grantline_ledger::{Actor, Append, NewEvent, StreamId, UserErased, pii};
use grantline_store::{Keyring, Ledger, LedgerOptions};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Destroy a user's personal-data key: their sealed fields read as erased from now on,
    /// and the chain still verifies. Records `user.erased`.
    Erase {
        /// The user id.
        user: String,
    },
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Erase { user } => {
            let ledger =
                Ledger::open(&loc.database, loc.signer()?, LedgerOptions::default()).await?;
            let stream = StreamId::user(&user);
            let kinds = ledger.store().stream_kinds(&stream).await?;
            if !kinds.iter().any(|k| k == "user.created") {
                ledger.shutdown().await;
                bail!("no user {user:?} in this ledger");
            }
            let keyring = Keyring::new(ledger.store());
            let had_key = keyring.erase(&pii::user_subject(&user)).await?;
            if !kinds.iter().any(|k| k == "user.erased") {
                ledger
                    .append(Append::new(vec![NewEvent::new(
                        stream,
                        Actor::Operator,
                        UserErased {
                            user_id: user.clone(),
                        },
                    )]))
                    .await?;
            }
            ledger.shutdown().await;
            println!(
                "erased personal data of {user}{}",
                if had_key {
                    ""
                } else {
                    " (key was already gone)"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
