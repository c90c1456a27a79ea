//! Administrative actions shared by the CLI and the admin API: users and clients.

use crate::app::{App, AppError};
use crate::signin::hash_password;
use grantline_ledger::{Actor, ApplicationType, GrantType, UserSource, pii};
use grantline_oauth::tokens::Secret;
use grantline_store::{Credential, StoreError};

/// Roles every server has. `admin` manages clients and users; `auditor` reads the audit trail;
/// `user` signs in and consents.
/// Roles named in the configuration's `[roles]` (which tools each may call) can be assigned
/// too; only `admin` reaches the admin API.
pub const ROLES: &[&str] = &["admin", "auditor", "user"];

/// Refuses a role that is neither built in nor configured.
fn known_role(app: &App, role: &str) -> Result<(), AdminError> {
    let config = app.policy_config();
    if ROLES.contains(&role) || config.roles.contains_key(role) {
        return Ok(());
    }
    let mut known: Vec<&str> = ROLES.to_vec();
    known.extend(config.roles.keys().map(String::as_str));
    known.sort_unstable();
    known.dedup();
    Err(AdminError::Invalid(format!(
        "unknown role {role:?}; roles are {known:?} (add others under [roles] in the configuration)"
    )))
}

/// Errors of admin actions, shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A containment of a user was recorded (`revoked` things revoked), but the upstream tokens
    /// Grantline holds for them could not be dropped; running it again drops them.
    #[error(
        "{revoked} revoked and recorded, but the upstream tokens held for the user could not be \
         dropped ({source}); run it again to drop them"
    )]
    UpstreamTokensKept { revoked: usize, source: StoreError },
}

/// A user to create: name, optional email (sealed in `user.created`), role.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: Option<&'a str>,
    pub role: &'a str,
}

/// Creates a local user with a password. Returns the user id.
pub async fn add_user(
    app: &App,
    user: &NewUser<'_>,
    password: &str,
    source: UserSource,
    actor: Actor,
) -> Result<String, AdminError> {
    let (username, role) = (user.username.trim(), user.role);
    if let Some(e) = user.email
        && (e.len() > 254
            || !e.contains('@')
            || e.chars()
                .any(|c| c.is_whitespace() || !grantline_oauth::limits::displayable(c)))
    {
        return Err(AdminError::Invalid(format!(
            "{e:?} is not an email address"
        )));
    }
    // Shown on the consent and account pages: no control, direction-override or zero-width
    // characters. Within what a sign-in takes (bytes, not characters), and without a colon,
    // which HTTP Basic (the admin API) cannot carry in a username.
    if username.is_empty()
        || username.chars().count() > 100
        || username.len() > crate::signin::MAX_USERNAME
        || username.contains(':')
        || !username.chars().all(grantline_oauth::limits::displayable)
    {
        return Err(AdminError::Invalid(format!(
            "usernames are 1–100 printable characters (at most {} bytes), without a colon",
            crate::signin::MAX_USERNAME
        )));
    }
    // Users are named by id or username everywhere (`revoke --user`, the admin API), and the id
    // wins: a name with an id's shape could make a command act on another user.
    if looks_like_user_id(username) {
        return Err(AdminError::Invalid(
            "a username may not have the form of a user id (usr_ and 32 hex digits)".into(),
        ));
    }
    known_role(app, role)?;
    password_ok(password)?;
    let user_id = crate::random::id("usr");
    let hash = hash_password(password).map_err(|e| AdminError::Invalid(e.to_string()))?;
    app.credentials
        .insert(&Credential {
            user_id: user_id.clone(),
            username: username.to_string(),
            password_hash: hash,
        })
        .await?;
    let created = NewUser {
        username,
        email: user.email,
        role,
    };
    if let Err(e) = record_user(app, &user_id, &created, source, actor).await {
        // No user without its `user.created`: a credential left behind would hold the name
        // for good (a retry refused as taken, no user to disable or erase). But an append
        // whose answer was lost may have been written: only what the ledger shows is not
        // there is undone.
        let known = |s: &grantline_state::State| s.users.contains_key(&user_id);
        match app.projection.catch_up(app.store()).await {
            Ok(()) if known(&app.projection.read()) => return Ok(user_id),
            Ok(()) => {
                if let Err(d) = app.credentials.delete(&user_id).await {
                    tracing::error!(error = %d, user_id, "a credential without its user was left behind");
                }
            }
            Err(c) => {
                tracing::error!(error = %c, user_id, "whether the user was recorded cannot be read; its credential is kept");
            }
        }
        return Err(e);
    }
    Ok(user_id)
}

/// Whether `name` has the shape of a local user's id (`usr_` and 32 hex digits).
fn looks_like_user_id(name: &str) -> bool {
    name.get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("usr_"))
        && name.len() == 36
        && name[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Appends `user.created` for a credential already stored.
pub async fn record_user(
    app: &App,
    user_id: &str,
    user: &NewUser<'_>,
    source: UserSource,
    actor: Actor,
) -> Result<(), AdminError> {
    let subject = pii::user_subject(user_id);
    let sealed = app
        .keyring
        .seal(&subject, user.username)
        .await
        .map_err(AppError::from)?;
    let email = match user.email {
        Some(e) => Some(
            app.keyring
                .seal(&subject, e)
                .await
                .map_err(AppError::from)?,
        ),
        None => None,
    };
    let new = grantline_oauth::users::NewUser {
        user_id: user_id.to_string(),
        username: sealed,
        email,
        role: user.role.to_string(),
        source,
    };
    let (outcome, _) = app
        .run(|s| {
            grantline_oauth::users::create(s, actor.clone(), new.clone(), |r| {
                known_role(app, r).is_ok()
            })
        })
        .await?;
    outcome.map_err(|e| AdminError::Invalid(e.description))?;
    Ok(())
}

/// Finds a user id by id or username.
pub async fn resolve_user(app: &App, who: &str) -> Result<String, AdminError> {
    if app.projection.read().users.contains_key(who) {
        return Ok(who.to_string());
    }
    // No account has a NUL in its name, and PostgreSQL would refuse to look it up (a 503).
    if who.contains('\0') {
        return Err(AdminError::NotFound(format!("user {who:?}")));
    }
    // A user another instance added moments ago is in the credentials table before this
    // instance has read its events: caught up then, so that what is decided next knows them.
    let user_id = match app.credentials.by_username(who).await? {
        Some(c) => c.user_id,
        None => {
            app.catch_up_unless(|s| s.users.contains_key(who)).await?;
            if app.projection.read().users.contains_key(who) {
                return Ok(who.to_string());
            }
            return Err(AdminError::NotFound(format!("user {who:?}")));
        }
    };
    app.catch_up_unless(|s| s.users.contains_key(&user_id))
        .await?;
    Ok(user_id)
}

/// Disables a user (by id or username): sign-in and all their tokens stop working. Returns the
/// user id and whether they were not disabled already.
pub async fn disable_user(
    app: &App,
    who: &str,
    reason: &str,
    actor: Actor,
) -> Result<(String, bool), AdminError> {
    let user_id = resolve_user(app, who).await?;
    let (outcome, _) = app
        .run(|s| grantline_oauth::users::disable(s, actor.clone(), &user_id, reason))
        .await?;
    let changed = outcome.map_err(|e| AdminError::Invalid(e.description))?;
    Ok((user_id, changed))
}

/// A password a local account may have: at least 8 characters, within what a sign-in takes.
fn password_ok(password: &str) -> Result<(), AdminError> {
    if password.chars().count() < 8 || password.len() > crate::signin::MAX_PASSWORD {
        return Err(AdminError::Invalid(format!(
            "passwords have at least 8 characters and at most {} bytes",
            crate::signin::MAX_PASSWORD
        )));
    }
    Ok(())
}

/// Lets a disabled user (by id or username) act again. Nothing they held before comes back:
/// every grant, token and personal access token of theirs is revoked and their sessions
/// ended with `user.enabled`. Returns the user id and whether they were disabled.
pub async fn enable_user(
    app: &App,
    who: &str,
    reason: &str,
    actor: Actor,
) -> Result<(String, bool), AdminError> {
    let user_id = resolve_user(app, who).await?;
    // Decided on everything the ledger holds: a token another instance recorded a moment ago
    // is revoked with the rest.
    app.projection.catch_up(app.store()).await?;
    let (outcome, _) = app
        .run(|s| grantline_oauth::users::enable(s, actor.clone(), &user_id, reason))
        .await?;
    let changed = outcome.map_err(|e| AdminError::Invalid(e.description))?;
    Ok((user_id, changed))
}

/// Sets a local user's password (by id or username), and ends every session they began (their
/// grants and tokens stay). The new hash is stored first, then `user.password_set` recorded,
/// which ends the sessions (so one signed in with the old password in between ends too).
/// Refused on the ledger, the old hash is put back; when whether it was recorded is not known
/// (the ledger's answer was lost), the new one stays, so a leaked old one does not come back.
/// Refused for a user who signs in
/// through an identity provider: a password would let them in past it.
pub async fn set_password(
    app: &App,
    who: &str,
    password: &str,
    reason: &str,
    actor: Actor,
) -> Result<String, AdminError> {
    password_ok(password)?;
    let user_id = resolve_user(app, who).await?;
    if app
        .projection
        .read()
        .users
        .get(&user_id)
        .is_none_or(|u| u.erased)
    {
        return Err(AdminError::Invalid("the user was erased".into()));
    }
    let Some(old) = app.credentials.by_user_id(&user_id).await? else {
        return Err(AdminError::NotFound(format!("a local account for {who:?}")));
    };
    if old.password_hash == crate::signin::NO_PASSWORD {
        return Err(AdminError::Invalid(
            "this user signs in through an identity provider; a password would let them in \
             past it"
                .into(),
        ));
    }
    // Decided once before anything is stored: a reason the ledger would refuse refuses the
    // change before the hash is swapped (and sessions checked against it are disturbed).
    if let Err(e) = grantline_oauth::users::set_password(
        &app.projection.read(),
        actor.clone(),
        &user_id,
        reason,
    )
    .outcome
    {
        return Err(AdminError::Invalid(e.description));
    }
    let hash = hash_password(password).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let head_before = app.projection.seq();
    // Only over the hash read above: of two changes at once, one is refused, not silently
    // undone by the other.
    if !app
        .credentials
        .replace_password(&user_id, &old.password_hash, &hash)
        .await?
    {
        return Err(AdminError::Invalid(
            "the password was changed by someone else meanwhile; look, and try again".into(),
        ));
    }
    let recorded = app
        .run(|s| grantline_oauth::users::set_password(s, actor.clone(), &user_id, reason))
        .await;
    match recorded {
        Ok((Ok(()), _)) => Ok(user_id),
        // Refused, so nothing was recorded: the old hash goes back (unless changed again).
        Ok((Err(e), _)) => {
            if let Err(err) = app
                .credentials
                .replace_password(&user_id, &hash, &old.password_hash)
                .await
            {
                tracing::error!(error = %err, user_id, "a password refused on the ledger could not be put back");
            }
            Err(AdminError::Invalid(e.description))
        }
        // The ledger failed: what it holds since says whether the change was recorded (a
        // commit whose answer was lost). Not recorded, the old hash goes back; when that
        // cannot be read, the new one stays, so that a leaked old one does not come back.
        Err(e) => match password_set_since(app, head_before, &user_id).await {
            Ok(true) => Ok(user_id),
            Ok(false) => {
                if let Err(err) = app
                    .credentials
                    .replace_password(&user_id, &hash, &old.password_hash)
                    .await
                {
                    tracing::error!(error = %err, user_id, "a password not recorded could not be put back");
                }
                Err(AdminError::App(e))
            }
            Err(read) => {
                tracing::error!(error = %e, read = %read, user_id, "a password was set, but whether it was recorded is not known; the new one is in force");
                Err(AdminError::App(e))
            }
        },
    }
}

/// Whether the ledger holds a `user.password_set` of `user_id` after `after` (at most the
/// next 100,000 events are read; past them, it cannot tell).
async fn password_set_since(
    app: &App,
    mut after: u64,
    user_id: &str,
) -> Result<bool, grantline_store::StoreError> {
    const BATCH: u32 = 10_000;
    for _ in 0..10 {
        let events = app.store().read(after, BATCH).await?;
        let found = events.iter().any(|e| {
            matches!(e.payload(), grantline_ledger::Payload::UserPasswordSet(p) if p.user_id == user_id)
        });
        if found {
            return Ok(true);
        }
        match events.last() {
            Some(last) if events.len() == BATCH as usize => after = last.seq(),
            _ => return Ok(false),
        }
    }
    Err(grantline_store::StoreError::Invalid(
        "too many events since the change to look for it".into(),
    ))
}

/// Gives a user (by id or username) another role. Returns the user id and whether the role
/// was another before.
pub async fn set_role(
    app: &App,
    who: &str,
    role: &str,
    actor: Actor,
) -> Result<(String, bool), AdminError> {
    known_role(app, role)?;
    let user_id = resolve_user(app, who).await?;
    let (outcome, _) = app
        .run(|s| {
            grantline_oauth::users::set_role(s, actor.clone(), &user_id, role, |r| {
                known_role(app, r).is_ok()
            })
        })
        .await?;
    let changed = outcome.map_err(|e| AdminError::Invalid(e.description))?;
    Ok((user_id, changed))
}

/// Revokes every grant, family and personal access token of a user (by id or username), ends
/// their browser sessions and drops their upstream tokens: the same containment as
/// `grantline revoke --user`. Returns how many grants and tokens were revoked.
pub async fn revoke_everything(
    app: &App,
    who: &str,
    reason: &str,
    actor: Actor,
) -> Result<usize, AdminError> {
    contain(app, &Containment::User(who.to_string()), reason, actor).await
}

/// What a responder names to contain: users by id or username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Containment {
    Family(String),
    Grant(String),
    User(String),
    Client(String),
    PatsOf(String),
}

/// Revokes a family, a grant, everything of a user, everything of a client (and disables it)
/// or every personal access token of a user, with the responder's reason. Returns how many
/// things were revoked (0: all of it was already).
pub async fn contain(
    app: &App,
    what: &Containment,
    reason: &str,
    actor: Actor,
) -> Result<usize, AdminError> {
    use grantline_oauth::containment::Target;
    // Decided on everything the ledger holds: a token or a sign-in another instance recorded
    // a moment ago must not be missed.
    app.projection.catch_up(app.store()).await?;
    let target = match what {
        Containment::Family(f) => Target::Family(f.clone()),
        Containment::Grant(g) => Target::Grant(g.clone()),
        Containment::Client(c) => Target::Client(c.clone()),
        Containment::User(u) => Target::User(resolve_user(app, u).await?),
        Containment::PatsOf(u) => Target::PatsOf(resolve_user(app, u).await?),
    };
    let outcome = settle_containment(app, &target, reason, actor).await?;
    // Everything of a user includes the upstream tokens Grantline holds for them.
    if let (Target::User(u), Ok(revoked)) = (&target, &outcome)
        && let Err(source) = grantline_store::Federation::new(app.store())
            .drop_all_tokens(u)
            .await
    {
        return Err(AdminError::UpstreamTokensKept {
            revoked: *revoked,
            source,
        });
    }
    outcome.map_err(|e| {
        if e.description.starts_with("no ") {
            AdminError::NotFound(e.description.trim_start_matches("no ").to_string())
        } else {
            AdminError::Invalid(e.description)
        }
    })
}

/// The most rounds [`settle_containment`] runs: each finds only what was made while the one
/// before was decided and appended, which takes a writer racing it (PAT creation is limited
/// per user; a consent needs a session, which a user's containment ends).
const CONTAINMENT_ROUNDS: usize = 5;

/// Runs a containment until a decision on everything the ledger holds finds nothing more, and
/// answers how many things it revoked in all.
///
/// One decision is not enough: a containment sets no expectation that a personal access token
/// being made, or a grant being consented to, would move (those write their own new streams),
/// so what a writer appended between the decision and its append — on another instance, or on
/// this one before its state followed — would survive it. After each round the state catches
/// up with the ledger's head and decides again; what it finds is revoked too, until a round
/// finds nothing. (A user's containment also ends their sessions on the user's stream, which
/// closes the rest for it: see [`grantline_oauth::containment::Target::User`].)
pub async fn settle_containment(
    app: &App,
    target: &grantline_oauth::containment::Target,
    reason: &str,
    actor: Actor,
) -> Result<Result<usize, grantline_oauth::OAuthError>, AppError> {
    settle(
        |first| {
            let actor = actor.clone();
            async move {
                use grantline_oauth::containment::{contain, contain_again};
                let decide = if first { contain } else { contain_again };
                let (outcome, recorded) = app
                    .run(|s| decide(s, actor.clone(), target, reason))
                    .await?;
                Ok((outcome, !recorded.is_empty()))
            }
        },
        || async { Ok(app.projection.catch_up(app.store()).await?) },
    )
    .await
}

/// The rounds of [`settle_containment`]: `round` decides and appends (told whether it is the
/// first; answers what it revoked, and whether it recorded anything), `catch_up` brings the
/// state to the ledger's head. Once the
/// first round is durable, the containment has happened: a later round that fails is logged
/// and the answer is what was revoked (a retry would find it done and answer 0).
async fn settle<R, C>(
    mut round: impl FnMut(bool) -> R,
    mut catch_up: impl FnMut() -> C,
) -> Result<Result<usize, grantline_oauth::OAuthError>, AppError>
where
    R: Future<Output = Result<(Result<usize, grantline_oauth::OAuthError>, bool), AppError>>,
    C: Future<Output = Result<(), AppError>>,
{
    let (first, mut durable) = round(true).await?;
    let mut revoked = match first {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    for later in 1..CONTAINMENT_ROUNDS {
        // Nothing recorded yet (the first round found it all revoked already): a failure now
        // is the containment's own, not a check after it.
        let failed = |e: AppError| {
            if durable {
                tracing::warn!(error = %e, round = later, "the containment is recorded; checking again for what raced it failed");
                Ok(Ok(revoked))
            } else {
                Err(e)
            }
        };
        if let Err(e) = catch_up().await {
            return failed(e);
        }
        match round(false).await {
            Ok((Ok(n), recorded)) => {
                revoked += n;
                if !recorded {
                    return Ok(Ok(revoked));
                }
                durable = true;
            }
            // The target was there in the first round: what a later one cannot find was
            // forgotten meanwhile, and is contained.
            Ok((Err(_), _)) => return Ok(Ok(revoked)),
            Err(e) => return failed(e),
        }
    }
    tracing::warn!(
        rounds = CONTAINMENT_ROUNDS,
        revoked,
        "the containment still found more to revoke in its last round: something is making grants or tokens for the target as fast as they are revoked"
    );
    Ok(Ok(revoked))
}

/// Erases a person: every grant, token family and personal access token of theirs is revoked
/// together with `user.erased` (so nothing they left behind still works, on any instance),
/// then their personal-data key and sign-in credentials are destroyed. Returns the user id,
/// how many grants and tokens were revoked, and whether a key was still there.
pub async fn erase_user(
    app: &App,
    who: &str,
    actor: Actor,
) -> Result<(String, usize, bool), AdminError> {
    let user_id = resolve_user(app, who).await?;
    let (outcome, _) = app
        .run(|s| grantline_oauth::grant::erase(s, actor.clone(), &user_id))
        .await?;
    let revoked = outcome.map_err(|e| AdminError::Invalid(e.description))?;
    let had_key = app
        .keyring
        .erase(&grantline_ledger::pii::user_subject(&user_id))
        .await?;
    app.credentials.delete(&user_id).await?;
    grantline_store::Federation::new(app.store())
        .forget_user(&user_id)
        .await?;
    Ok((user_id, revoked, had_key))
}

pub use grantline_oauth::clients::NewClient;

/// Registers a client as an admin. Returns its id and, for a confidential client, the secret
/// (shown once).
pub async fn add_client(
    app: &App,
    c: &NewClient,
    confidential: bool,
    actor: Actor,
) -> Result<(String, Option<Secret>), AdminError> {
    let secret = confidential.then(|| crate::random::secret("gls_"));
    let fresh_id = crate::random::id("cli");
    if let Some(id) = &c.client_id {
        client_id_is_free(app, id).await?;
    }
    let (outcome, _) = app
        .run(|s| grantline_oauth::clients::add(s, actor.clone(), c, secret.as_ref(), &fresh_id))
        .await?;
    let id = outcome.map_err(|e| AdminError::Invalid(e.description))?;
    Ok((id, secret))
}

/// Refuses the id of a client that expired unused: such a registration leaves the state, not
/// the ledger, and a new client under its id would conflict with its stream at every try.
/// (A stream of a client this instance has not folded yet — another instance's, just
/// registered — is left to the decider, which catches up and finds it.)
pub async fn client_id_is_free(app: &App, id: &str) -> Result<(), AdminError> {
    // Its form first: an id no store can hold (a NUL, for PostgreSQL) is the caller's mistake.
    grantline_oauth::clients::client_id_form(id).map_err(|e| AdminError::Invalid(e.description))?;
    if app.projection.read().clients.contains_key(id) {
        return Ok(()); // the decider says it exists
    }
    let stream = grantline_ledger::StreamId::client(id);
    let kinds = app.store().stream_kinds(&stream).await?;
    if !kinds.iter().any(|k| k == "client.expired") {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "client id {id} was registered before (it expired unused; its story is in the \
             audit trail): choose another"
        )))
    }
}

pub async fn disable_client(
    app: &App,
    client_id: &str,
    reason: &str,
    actor: Actor,
) -> Result<(), AdminError> {
    app.catch_up_unless(|s| s.clients.contains_key(client_id))
        .await?;
    if !app.projection.read().clients.contains_key(client_id) {
        return Err(AdminError::NotFound(format!("client {client_id:?}")));
    }
    let (outcome, _) = app
        .run(|s| grantline_oauth::clients::disable(s, actor.clone(), client_id, reason))
        .await?;
    outcome.map_err(|e| AdminError::Invalid(e.description))?;
    Ok(())
}

/// Names for display.
pub fn grant_type_name(g: GrantType) -> &'static str {
    match g {
        GrantType::AuthorizationCode => "authorization_code",
        GrantType::RefreshToken => "refresh_token",
        GrantType::ClientCredentials => "client_credentials",
    }
}

pub fn app_type_name(a: ApplicationType) -> &'static str {
    match a {
        ApplicationType::Native => "native",
        ApplicationType::Web => "web",
    }
}

/// Creates a personal access token for a user (by id or username); the token is in the result,
/// shown once. `settings` are those of the address the request came to (its resources are
/// named after it), [`App::settings`] at the command line.
pub async fn create_pat(
    app: &App,
    settings: &grantline_oauth::Settings,
    who: &str,
    req: grantline_oauth::pat::PatRequest,
    actor: Actor,
) -> Result<grantline_oauth::pat::CreatedPat, AdminError> {
    create_pat_with_id(app, settings, who, req, actor, None).await
}

/// [`create_pat`], the token's id given by the caller (the account page derives it from the
/// form, so that a form sent twice makes one token) or drawn when `None`.
pub async fn create_pat_with_id(
    app: &App,
    settings: &grantline_oauth::Settings,
    who: &str,
    req: grantline_oauth::pat::PatRequest,
    actor: Actor,
    pat_id: Option<String>,
) -> Result<grantline_oauth::pat::CreatedPat, AdminError> {
    let user_id = resolve_user(app, who).await?;
    // Before sealing: an erased user's key is gone, and the key store would refuse it as if
    // it were failing.
    if app
        .projection
        .read()
        .users
        .get(&user_id)
        .is_none_or(|u| !u.active())
    {
        return Err(AdminError::Invalid("no such active user".into()));
    }
    // A resource may be named by its short name as well as its identifier.
    let resource = settings
        .resources
        .iter()
        .find(|r| r.name == req.resource)
        .map(|r| r.id.clone())
        .unwrap_or(req.resource);
    // The name is the user's own words: sealed under their key, erased with them.
    let sealed_name = Some(
        app.keyring
            .seal(
                &grantline_ledger::pii::user_subject(&user_id),
                req.name.trim(),
            )
            .await?,
    );
    let req = grantline_oauth::pat::PatRequest {
        user_id,
        resource,
        sealed_name,
        ..req
    };
    let fresh = (
        pat_id.unwrap_or_else(|| crate::random::id("pat")),
        crate::random::secret(grantline_oauth::tokens::PAT_PREFIX),
    );
    let now = app.now();
    let _one_at_a_time = app.pat_decisions.lock().await;
    // And one at a time per user across instances (PostgreSQL), each deciding on a state
    // that holds every token the others made before it.
    let _one_on_every_instance = app
        .store()
        .exclusive(&format!("pat:{}", req.user_id))
        .await?;
    app.projection.catch_up(app.store()).await?;
    let (outcome, _) = app
        .run(|s| grantline_oauth::pat::create(s, settings, actor.clone(), &req, now, fresh.clone()))
        .await?;
    outcome.map_err(|e| AdminError::Invalid(e.description))
}

/// Revokes a personal access token, as its owner or an admin.
pub async fn revoke_pat(
    app: &App,
    pat_id: &str,
    reason: &str,
    actor: Actor,
) -> Result<(), AdminError> {
    // A token another instance made a moment ago is found.
    app.projection.catch_up(app.store()).await?;
    let owner = app
        .projection
        .read()
        .pats
        .get(pat_id)
        .map(|p| p.user_id.clone())
        .ok_or_else(|| AdminError::NotFound(format!("personal access token {pat_id:?}")))?;
    let (outcome, _) = app
        .run(|s| grantline_oauth::pat::revoke(s, actor.clone(), &owner, pat_id, reason))
        .await?;
    outcome.map_err(|e| AdminError::Invalid(e.description))
}

/// Personal access tokens as listed: id, name, prefix, resource, scopes, dates, state. Never
/// the token.
pub async fn pat_list(app: &App, user_id: Option<&str>) -> Vec<serde_json::Value> {
    let now = app.now();
    // Each with whether its user may still act: a token of a disabled or erased user is
    // refused at every resource, and is listed as such.
    let mut pats: Vec<(grantline_state::Pat, bool)> = {
        let state = app.projection.read();
        state
            .pats
            .values()
            .filter(|p| user_id.is_none_or(|u| p.user_id == u))
            .map(|p| {
                let active = state.users.get(&p.user_id).is_some_and(|u| u.active());
                (p.clone(), active)
            })
            .collect()
    };
    pats.sort_by_key(|(p, _)| p.created_at);
    let mut out = Vec::with_capacity(pats.len());
    for (p, user_active) in pats {
        let status = if p.revoked.is_some() {
            "revoked"
        } else if p.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else if !user_active {
            "user_disabled"
        } else {
            "active"
        };
        // A sealed name opens while the user's key exists; after erasure it reads [erased]. A
        // key that could not be read now is not an erasure: a responder must not take it so.
        let name = match &p.sealed_name {
            Some(sealed) => match app.keyring.open(sealed).await {
                Ok(Ok(name)) => name,
                Ok(Err(grantline_ledger::pii::PiiError::Erased)) => "[erased]".to_string(),
                Ok(Err(_)) => "[unreadable]".to_string(),
                Err(e) => {
                    tracing::warn!(error = %e, "a token's name could not be opened");
                    "[unavailable]".to_string()
                }
            },
            None => p.name.clone(),
        };
        out.push(serde_json::json!({
            "pat_id": p.pat_id,
            "user_id": p.user_id,
            "name": name,
            "prefix": p.prefix,
            "resource": p.resource,
            "scopes": p.scopes,
            "created_at": p.created_at.to_string(),
            "expires_at": p.expires_at.map(|e| e.to_string()),
            "last_used": p.last_used.map(|e| e.to_string()),
            "status": status,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A scripted containment: each round revokes what another writer "made" since the last
    /// catch-up; `fail` makes a round or a catch-up fail.
    async fn scripted(
        made_between: &[usize],
        fail_round: Option<usize>,
        fail_catch_up: Option<usize>,
    ) -> (Result<usize, grantline_oauth::OAuthError>, usize, usize) {
        let (rounds, catch_ups, seen) = (Cell::new(0), Cell::new(0), Cell::new(0));
        let unavailable = || AppError::Unavailable("the database went away".into());
        let r = settle(
            |first| {
                let i = rounds.get();
                assert_eq!(first, i == 0);
                rounds.set(i + 1);
                let n = if i == 0 { 2 } else { seen.replace(0) };
                let r = if fail_round == Some(i) {
                    Err(unavailable())
                } else {
                    Ok((Ok(n), n > 0))
                };
                std::future::ready(r)
            },
            || {
                let i = catch_ups.get();
                catch_ups.set(i + 1);
                seen.set(made_between.get(i).copied().unwrap_or(0));
                std::future::ready(if fail_catch_up == Some(i) {
                    Err(unavailable())
                } else {
                    Ok(())
                })
            },
        )
        .await
        .unwrap();
        (r, rounds.get(), catch_ups.get())
    }

    #[tokio::test]
    async fn rounds_go_on_until_one_finds_nothing() {
        // Nothing raced it: a second round confirms.
        let (r, rounds, _) = scripted(&[], None, None).await;
        assert_eq!((r.unwrap(), rounds), (2, 2));
        // A token made during the first round, then one during the second.
        let (r, rounds, _) = scripted(&[1, 1], None, None).await;
        assert_eq!((r.unwrap(), rounds), (4, 4));
        // Something that never stops: bounded.
        let (r, rounds, _) = scripted(&[1; 10], None, None).await;
        assert_eq!(
            (r.unwrap(), rounds),
            (2 + CONTAINMENT_ROUNDS - 1, CONTAINMENT_ROUNDS)
        );
    }

    #[tokio::test]
    async fn a_later_failure_keeps_what_was_recorded() {
        let (r, rounds, _) = scripted(&[1, 1], Some(2), None).await;
        assert_eq!((r.unwrap(), rounds), (3, 3), "the first two rounds' count");
        let (r, _, catch_ups) = scripted(&[1], None, Some(0)).await;
        assert_eq!((r.unwrap(), catch_ups), (2, 1));
        // A first round that found everything revoked already records nothing: a later round
        // that fails to revoke what it found is the containment failing.
        let calls = Cell::new(0);
        let nothing_then_down = settle(
            |_| {
                calls.set(calls.get() + 1);
                std::future::ready(if calls.get() == 1 {
                    Ok((Ok(0), false))
                } else {
                    Err(AppError::Unavailable("down".into()))
                })
            },
            || std::future::ready(Ok(())),
        )
        .await;
        assert!(nothing_then_down.is_err());
        // A first round that fails is the containment failing.
        let unavailable = settle(
            |_| std::future::ready(Err(AppError::Unavailable("down".into()))),
            || std::future::ready(Ok(())),
        )
        .await;
        assert!(unavailable.is_err());
    }
}
