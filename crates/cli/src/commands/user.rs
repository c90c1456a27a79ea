use crate::location::Location;
use anyhow::Result;
use grantline_ledger::{Actor, UserSource};
use grantline_server::admin;
use grantline_store::LedgerOptions;
use std::process::ExitCode;

/// The new user's password when set; otherwise one is generated and printed once.
const PASSWORD_ENV: &str = "GRANTLINE_USER_PASSWORD";

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a local user. The password comes from $GRANTLINE_USER_PASSWORD, or is generated
    /// and printed once.
    Add {
        username: String,
        /// `user`, `admin`, `auditor`, or a role of the configuration's `[roles]`.
        #[arg(long, default_value = "user")]
        role: String,
        /// Email address (recorded sealed under the user's erasable key).
        #[arg(long)]
        email: Option<String>,
    },
    /// List users: id, username, role, state.
    List,
    /// Disable a user (by id or username): sign-in and all their tokens stop working.
    Disable {
        user: String,
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
    },
    /// Let a disabled user act again. Nothing they held before comes back: their grants,
    /// tokens and personal access tokens are revoked and their sessions ended with it.
    Enable {
        user: String,
        #[arg(long, default_value = "enabled by an operator")]
        reason: String,
    },
    /// Set a local user's password (from $GRANTLINE_USER_PASSWORD, or generated and printed
    /// once); every session they began ends with it. Revoke their tokens apart
    /// (`grantline revoke --user`) when the account was taken over.
    SetPassword {
        user: String,
        #[arg(long, default_value = "set by an operator")]
        reason: String,
    },
    /// Change a user's role.
    SetRole { user: String, role: String },
    /// Revoke every grant (and all tokens under them) and personal access token of a user.
    RevokeAll {
        user: String,
        /// Recorded with each revocation.
        #[arg(long, default_value = "revoked everything by an operator")]
        reason: String,
    },
    /// Destroy a user's personal-data key: their sealed fields read as erased from now on,
    /// and the chain still verifies. Records `user.erased`.
    Erase {
        /// The user id.
        user: String,
    },
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Add {
            username,
            role,
            email,
        } => {
            let app = loc.app(LedgerOptions::default()).await?;
            let (password, generated) = password();
            let user = admin::NewUser {
                username: &username,
                email: email.as_deref(),
                role: &role,
            };
            let r = admin::add_user(&app, &user, &password, UserSource::Cli, Actor::Operator).await;
            app.ledger.shutdown().await;
            let id = r?;
            println!("added user {username} ({id}), role {role}");
            if generated {
                println!("one-time password: {password}");
            } else {
                // A variable left in the shell from the last user added would give this one
                // the same password without a word.
                println!("the password is the one in {PASSWORD_ENV}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            let app = loc.existing_app(LedgerOptions::default()).await?;
            let creds = app.credentials.list().await?;
            {
                let state = app.projection.read();
                println!("{:<40} {:<20} {:<6} state", "id", "username", "role");
                for c in &creds {
                    let Some(u) = state.users.get(&c.user_id) else {
                        continue;
                    };
                    let st = if u.disabled { "disabled" } else { "active" };
                    println!("{:<40} {:<20} {:<6} {st}", u.user_id, c.username, u.role);
                }
            }
            app.ledger.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Disable { user, reason } => {
            let app = loc.existing_app(LedgerOptions::default()).await?;
            let r = admin::disable_user(&app, &user, &reason, Actor::Operator).await;
            app.ledger.shutdown().await;
            match r? {
                (id, true) => println!("disabled {id}"),
                (id, false) => println!("{id} was disabled already; nothing changed"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::RevokeAll { user, reason } => {
            let app = loc.existing_app(LedgerOptions::default()).await?;
            let r = admin::revoke_everything(&app, &user, &reason, Actor::Operator).await;
            app.ledger.shutdown().await;
            println!("revoked {} grants and personal access tokens of {user}", r?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Enable { user, reason } => {
            let app = loc.existing_app(LedgerOptions::default()).await?;
            let r = admin::enable_user(&app, &user, &reason, Actor::Operator).await;
            app.ledger.shutdown().await;
            match r? {
                (id, true) => println!(
                    "enabled {id}; what they held before was revoked and their sessions ended"
                ),
                (id, false) => println!("{id} was not disabled; nothing changed"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SetPassword { user, reason } => {
            let (password, generated) = password();
            let app = loc.existing_app(LedgerOptions::default()).await?;
            let r = admin::set_password(&app, &user, &password, &reason, Actor::Operator).await;
            app.ledger.shutdown().await;
            println!("set the password of {}; their sessions ended", r?);
            if generated {
                println!("one-time password: {password}");
            } else {
                // An old export in the shell (the very password that leaked, perhaps) would
                // otherwise be set again without a word.
                println!("the password is the one in {PASSWORD_ENV}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SetRole { user, role } => {
            let app = loc.existing_app(LedgerOptions::default()).await?;
            let r = admin::set_role(&app, &user, &role, Actor::Operator).await;
            app.ledger.shutdown().await;
            match r? {
                (id, true) => println!("{id} is now {role}"),
                (id, false) => println!("{id} was {role} already; nothing changed"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase { user } => {
            let app = loc.existing_app(LedgerOptions::default()).await?;
            let r = admin::erase_user(&app, &user, Actor::Operator).await;
            app.ledger.shutdown().await;
            let (user_id, revoked, had_key) = r?;
            println!(
                "erased personal data of {user_id}; revoked {revoked} grants and personal access tokens{}",
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

/// The password from $GRANTLINE_USER_PASSWORD, or a generated one (and whether it was).
fn password() -> (String, bool) {
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (
            grantline_server::random::secret("")
                .as_str()
                .chars()
                .take(24)
                .collect(),
            true,
        ),
    }
}
