use crate::location::Location;
use anyhow::Result;
use grantline_ledger::Actor;
use grantline_server::admin::{self, NewClient};
use grantline_store::LedgerOptions;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Register a client. A confidential client's secret is printed once.
    Add {
        /// Display name shown on the consent page.
        #[arg(long)]
        name: String,
        /// A redirect URI (repeatable): HTTPS, or loopback HTTP for native clients.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// A grant type (repeatable): authorization_code, refresh_token, client_credentials.
        #[arg(long = "grant-type")]
        grant_types: Vec<String>,
        /// Scopes the client may ask for with client_credentials (required for such a client:
        /// nothing else limits what a machine client's tokens may do).
        #[arg(long)]
        scope: Option<String>,
        /// Give the client a secret (presented with HTTP Basic unless --auth-method says otherwise).
        #[arg(long)]
        confidential: bool,
        /// How a confidential client presents its secret: client_secret_basic or client_secret_post.
        #[arg(long = "auth-method")]
        auth_method: Option<String>,
        /// Choose the client id instead of generating one.
        #[arg(long)]
        id: Option<String>,
    },
    /// List clients.
    List,
    /// Disable a client: its tokens stop working and it cannot get new ones.
    Disable {
        client_id: String,
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
    },
}

pub async fn run(loc: &Location, cmd: Command) -> Result<ExitCode> {
    // Adding a client may start a ledger (before the first `serve`); the rest act on one.
    let app = if matches!(cmd, Command::Add { .. }) {
        loc.app(LedgerOptions::default()).await?
    } else {
        loc.existing_app(LedgerOptions::default()).await?
    };
    let result = run_with(&app, cmd).await;
    app.ledger.shutdown().await;
    result
}

async fn run_with(app: &grantline_server::App, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Add {
            name,
            redirect_uris,
            grant_types,
            scope,
            confidential,
            auth_method,
            id,
        } => {
            let c = NewClient {
                client_id: id,
                client_name: name,
                redirect_uris,
                grant_types: (!grant_types.is_empty()).then_some(grant_types),
                scope,
                application_type: None,
                auth_method,
            };
            let (id, secret) = admin::add_client(app, &c, confidential, Actor::Operator).await?;
            println!("client_id: {id}");
            if let Some(s) = secret {
                println!("client_secret: {} (shown once)", s.as_str());
            }
            if let Some(c) = app.projection.read().clients.get(&id) {
                println!(
                    "token_endpoint_auth_method: {}",
                    serde_json::to_value(c.auth_method)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            let state = app.projection.read();
            let mut clients: Vec<_> = state.clients.values().collect();
            clients.sort_by_key(|c| c.registered_at);
            println!(
                "{:<42} {:<24} {:<17} {:<12} state",
                "client_id", "name", "method", "auth"
            );
            for c in clients {
                let st = if c.disabled {
                    "disabled"
                } else if c.expired {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<42} {:<24} {:<17} {:<12} {st}",
                    c.client_id,
                    c.client_name,
                    format!("{:?}", c.method).to_lowercase(),
                    format!("{:?}", c.auth_method).to_lowercase(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Disable { client_id, reason } => {
            admin::disable_client(app, &client_id, &reason, Actor::Operator).await?;
            println!("disabled {client_id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
