use crate::location::Location;
use anyhow::{Result, bail};
use grantline_ledger::Actor;
use grantline_server::admin;
use grantline_store::LedgerOptions;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a personal access token for a user; it is printed once.
    Create {
        /// The owner (id or username).
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// The resource, by name (`demo`) or identifier.
        #[arg(long)]
        resource: String,
        /// Scopes (space-separated); default: the resource's default scopes.
        #[arg(long)]
        scope: Option<String>,
        /// 7, 30, 90, 365 or never.
        #[arg(long, default_value = "30")]
        expires: String,
    },
    /// List personal access tokens (prefix only, never the token).
    List {
        /// Only this user's (id or username).
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token for good.
    Revoke {
        pat_id: String,
        /// Recorded with the revocation.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    let app = loc.existing_app(LedgerOptions::default()).await?;
    let result = run_with(&app, cmd).await;
    app.ledger.shutdown().await;
    result
}

async fn run_with(app: &grantline_server::App, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Create {
            user,
            name,
            resource,
            scope,
            expires,
        } => {
            let expires_in_days = match expires.as_str() {
                "never" => None,
                d => match d.parse() {
                    Ok(n) => Some(n),
                    Err(_) => bail!("--expires must be 7, 30, 90, 365 or never"),
                },
            };
            let req = grantline_oauth::pat::PatRequest {
                user_id: String::new(),
                name,
                resource,
                scope,
                expires_in_days,
                sealed_name: None,
                signed_in_seq: None,
            };
            let p = admin::create_pat(app, &app.settings(), &user, req, Actor::Operator).await?;
            // The resource identifier is the token's audience: a server answering at another
            // address (its public URL) refuses the token as `wrong_audience`.
            println!("pat_id: {}", p.pat_id);
            println!("resource: {}", p.resource);
            println!("scope: {}", p.scopes.join(" "));
            println!(
                "expires: {}",
                p.expires_at.map_or("never".to_string(), |e| e.to_string())
            );
            println!("token: {} (shown once)", p.token.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::List { user } => {
            let user = match user {
                Some(u) => Some(admin::resolve_user(app, &u).await?),
                None => None,
            };
            println!(
                "{:<40} {:<16} {:<14} {:<8} {:<28} {:<28} resource",
                "pat_id", "name", "prefix", "status", "expires", "last used"
            );
            for p in admin::pat_list(app, user.as_deref()).await {
                let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
                println!(
                    "{:<40} {:<16} {:<14} {:<8} {:<28} {:<28} {}",
                    s("pat_id"),
                    s("name"),
                    format!("{}…", s("prefix")),
                    s("status"),
                    p["expires_at"].as_str().unwrap_or("never"),
                    p["last_used"].as_str().unwrap_or("never"),
                    s("resource")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { pat_id, reason } => {
            admin::revoke_pat(app, &pat_id, &reason, Actor::Operator).await?;
            println!("revoked {pat_id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
