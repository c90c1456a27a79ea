//! First-start and background housekeeping: the bootstrap admin, clients declared in the config
//! file, and expiry of dynamic registrations never used.

use crate::admin::{self, NewClient};
use crate::app::App;
use anyhow::{Context, Result};
use grantline_ledger::{
    Actor, ClientExpired, ClientUpdated, NewEvent, RegistrationMethod, StreamId, UserSource,
};
use grantline_oauth::tokens::Secret;

/// The bootstrap admin's username.
pub const ADMIN: &str = "admin";
/// Its password on first start, for scripted set-ups and tests.
pub const ADMIN_PASSWORD_ENV: &str = "GRANTLINE_ADMIN_PASSWORD";

/// Creates the user `admin` on first start. Its password comes from `GRANTLINE_ADMIN_PASSWORD`
/// or is generated and printed once, to standard error, not to the log.
pub async fn admin(app: &App) -> Result<()> {
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
        let wanted = admin::client_event(
            &NewClient {
                client_id: Some(c.client_id.clone()),
                client_name: c.client_name.clone(),
                redirect_uris: c.redirect_uris.clone(),
                grant_types: c.grant_types.clone(),
                scope: c.scope.clone(),
                application_type: c.application_type.clone(),
                auth_method: c.token_endpoint_auth_method.clone(),
            },
            RegistrationMethod::Config,
            secret.as_ref(),
        )
        .with_context(|| format!("config client {}", c.client_id))?;
        let existing = app.projection.read().clients.get(&c.client_id).cloned();
        let event = match existing {
            None => NewEvent::new(StreamId::client(&c.client_id), Actor::System, wanted),
            Some(have) => {
                let changed = have.client_name != wanted.client_name
                    || have.redirect_uris != wanted.redirect_uris
                    || have.grant_types != wanted.grant_types
                    || have.scope != wanted.scope
                    || have.secret_digest != wanted.secret_digest;
                if !changed {
                    continue;
                }
                NewEvent::new(
                    StreamId::client(&c.client_id),
                    Actor::System,
                    ClientUpdated {
                        client_id: c.client_id.clone(),
                        client_name: Some(wanted.client_name),
                        redirect_uris: Some(wanted.redirect_uris),
                        grant_types: Some(wanted.grant_types),
                        scope: wanted.scope,
                        secret_digest: wanted.secret_digest,
                    },
                )
            }
        };
        app.append(vec![event])
            .await
            .with_context(|| format!("recording config client {}", c.client_id))?;
    }
    Ok(())
}

/// Appends `client.expired` for each dynamic registration past its TTL that was never used.
pub async fn expire_unused_clients(app: &App) {
    let now = app.now();
    let ttl = app.config.oauth.dynamic_client_ttl;
    let due: Vec<String> = app
        .projection
        .read()
        .clients
        .values()
        .filter(|c| {
            c.method == RegistrationMethod::Dynamic
                && !c.used
                && !c.expired
                && c.expires_at.is_some_and(|e| e <= now)
        })
        .map(|c| c.client_id.clone())
        .collect();
    if due.is_empty() {
        return;
    }
    let events = due
        .iter()
        .map(|id| {
            NewEvent::new(
                StreamId::client(id),
                Actor::System,
                ClientExpired {
                    client_id: id.clone(),
                    ttl_seconds: ttl,
                },
            )
        })
        .collect();
    match app.append(events).await {
        Ok(_) => tracing::info!(count = due.len(), "expired unused dynamic registrations"),
        Err(e) => tracing::warn!(error = %e, "could not record client expiry"),
    }
}
