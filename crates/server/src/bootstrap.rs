//! First-start and background housekeeping: the bootstrap admin, clients declared in the config
//! file, and expiry of dynamic registrations never used.

use crate::admin;
use crate::app::App;
use anyhow::{Context, Result};
use grantline_ledger::{Actor, UserSource};
use grantline_oauth::tokens::Secret;

/// The bootstrap admin's username.
pub const ADMIN: &str = "admin";
/// Its password on first start, for scripted set-ups and tests.
pub const ADMIN_PASSWORD_ENV: &str = "GRANTLINE_ADMIN_PASSWORD";

/// Creates the user `admin` on first start. Its password comes from `GRANTLINE_ADMIN_PASSWORD`
/// or is generated and printed once, to standard error, not to the log. Never again once the
/// ledger holds a bootstrap admin, even one since erased or renamed: an operator who erased it
/// (having made admins of their own) must not find it back, with a password still in the
/// environment or printed to a log.
pub async fn admin(app: &App) -> Result<()> {
    let bootstrapped =
        |s: &grantline_state::State| s.users.values().any(|u| u.source == UserSource::Bootstrap);
    if let Some(c) = app.credentials.by_username(ADMIN).await? {
        // A crash between storing the credential and appending the event leaves no user: heal.
        if !app.projection.read().users.contains_key(&c.user_id) {
            admin::record_user(
                app,
                &c.user_id,
                &admin::NewUser {
                    username: ADMIN,
                    email: None,
                    role: "admin",
                },
                UserSource::Bootstrap,
                Actor::System,
            )
            .await?;
        }
        return Ok(());
    }
    if bootstrapped(&app.projection.read()) {
        return Ok(());
    }
    let (password, generated) = match std::env::var(ADMIN_PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (
            crate::random::secret("")
                .as_str()
                .chars()
                .take(24)
                .collect::<String>(),
            true,
        ),
    };
    let user_id = admin::add_user(
        app,
        &admin::NewUser {
            username: ADMIN,
            email: None,
            role: "admin",
        },
        &password,
        UserSource::Bootstrap,
        Actor::System,
    )
    .await
    .context("creating the bootstrap admin")?;
    if generated {
        eprintln!(
            "\n  Bootstrap admin created: username `{ADMIN}`, one-time password: {password}\n  \
             It is shown only now. Set {ADMIN_PASSWORD_ENV} before the first start to choose it.\n"
        );
    }
    tracing::info!(user_id, "bootstrap admin created");
    Ok(())
}

/// Registers (or updates) every client declared in the config file.
pub async fn config_clients(app: &App) -> Result<()> {
    for c in &app.config.clients {
        let secret = c.secret()?.map(Secret);
        let declared = c.declared();
        // An id the state does not hold may still have a story on the ledger (a client that
        // expired unused): the declaration takes it over on its stream.
        let recorded = if app.projection.read().clients.contains_key(&c.client_id) {
            Vec::new()
        } else {
            app.store()
                .stream_kinds(&grantline_ledger::StreamId::client(&c.client_id))
                .await?
        };
        let (outcome, _) = app
            .run(|s| {
                grantline_oauth::clients::sync_configured(
                    s,
                    &declared,
                    secret.as_ref(),
                    if s.clients.contains_key(&c.client_id) {
                        &[]
                    } else {
                        &recorded
                    },
                )
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("recording config client {}", c.client_id))?;
        outcome
            .map_err(|e| anyhow::anyhow!("{}", e.description))
            .with_context(|| format!("config client {}", c.client_id))?;
    }
    Ok(())
}

/// Records the configured lifetimes when they differ from those in force on the ledger
/// (`policy.changed`), so replay and what-if judge each seq by the settings of its time.
pub async fn lifetimes(app: &App) -> Result<()> {
    let configured = app.settings().lifetimes.clone();
    let (outcome, _) = app
        .run(|s| grantline_oauth::policy::record_lifetimes(s, &configured))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("recording the configured lifetimes")?;
    if outcome.map_err(|e| anyhow::anyhow!("{}", e.description))? {
        tracing::info!("lifetimes changed in the configuration: recorded as policy.changed");
    }
    Ok(())
}

/// Records the resources, roles, rate limits and registration policy when they differ from
/// those in force on the ledger (`policy.changed`): who could do what, since when.
pub async fn policies(app: &App) -> Result<()> {
    let config = app.policy_config();
    let changed = app
        .record_policies(&config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("recording the configured policies")?;
    for (policy, n) in changed {
        tracing::info!(
            policy,
            settings = n,
            "policy changed in the configuration: recorded as policy.changed"
        );
    }
    Ok(())
}

/// Appends `client.expired` for each dynamic registration or metadata-document client past its
/// TTL that was never used.
pub async fn expire_unused_clients(app: &App) {
    let now = app.now();
    let ttl = app.config.oauth.dynamic_client_ttl;
    match app
        .run(|s| grantline_oauth::clients::expire_unused(s, now, ttl))
        .await
    {
        Ok((Ok(n), _)) if n > 0 => {
            tracing::info!(count = n, "expired unused registrations")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not record client expiry"),
    }
}
