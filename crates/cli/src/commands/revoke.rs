//! `grantline revoke`: containment from the command line, each recorded with the reason.

use crate::location::Location;
use anyhow::Result;
use grantline_ledger::Actor;
use grantline_server::admin::{self, Containment};
use grantline_store::LedgerOptions;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
pub struct Args {
    /// A token family: every access and refresh token of it.
    #[arg(long, group = "target")]
    family: Option<String>,
    /// A grant: the consent, and every family under it.
    #[arg(long, group = "target")]
    grant: Option<String>,
    /// A user (id or username): every grant, family and personal access token.
    #[arg(long, group = "target")]
    user: Option<String>,
    /// A client: every grant to it, and the client is disabled.
    #[arg(long, group = "target")]
    client: Option<String>,
    /// Every personal access token of a user (id or username).
    #[arg(long, group = "target")]
    pats_of: Option<String>,
    /// Why: recorded in the events.
    #[arg(long)]
    reason: String,
}

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    let (what, label) = match (
        args.family,
        args.grant,
        args.user,
        args.client,
        args.pats_of,
    ) {
        (Some(f), ..) => (Containment::Family(f.clone()), format!("family {f}")),
        (_, Some(g), ..) => (Containment::Grant(g.clone()), format!("grant {g}")),
        (_, _, Some(u), ..) => (Containment::User(u.clone()), format!("everything of {u}")),
        (_, _, _, Some(c), _) => (
            Containment::Client(c.clone()),
            format!("everything of client {c}, and disabled it"),
        ),
        (.., Some(u)) => (
            Containment::PatsOf(u.clone()),
            format!("the personal access tokens of {u}"),
        ),
        _ => anyhow::bail!("name what to revoke"),
    };
    let app = loc.existing_app(LedgerOptions::default()).await?;
    let r = admin::contain(&app, &what, &args.reason, Actor::Operator).await;
    app.ledger.shutdown().await;
    let n = r?;
    let user = matches!(what, Containment::User(_));
    if n == 0 {
        println!(
            "nothing live to revoke found: {label} — each was revoked before, or none was issued"
        );
    } else {
        println!("revoked {label} ({n} revoked)");
    }
    if user {
        // Recorded every time: what another instance made while this was decided is revoked
        // with it, without being in the count.
        println!(
            "their browser sessions are ended (user.sessions_ended), and with that end anything \
             of theirs recorded before it is revoked, counted above or not (`grantline lineage \
             <user>` lists it)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
