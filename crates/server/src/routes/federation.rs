//! Sign-in through an upstream identity provider: `POST /login/upstream/{provider}` (a button
//! on the sign-in page) sends the browser upstream with PKCE, `state` and `nonce`, keeping the
//! MCP client's pending authorization request in an encrypted cookie; the provider answers at
//! `GET /login/upstream/{provider}/callback`, where the answer is checked, the person becomes
//! (or is) a user with the role the mapping gives, and the authorization request resumes.
//! Every failure ends on a page that says what went wrong, and is recorded.

use crate::app::App;
use crate::context::RequestContext;
use crate::federation::{Pending, StateUse, TRANSACTION_TTL, open_pending, seal_pending};
use crate::http::see_other;
use crate::pages;
use crate::session::{self, LOGIN_NONCE, SESSION};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use grantline_federation::mapping;
use grantline_federation::{SignInError, UpstreamIdentity};
use grantline_ledger::{LoginFailure, pii};
use grantline_oauth::federation::{Account, FederatedSignIn};
use subtle::ConstantTimeEq;

/// The cookie that carried the pending upstream sign-in before each sign-in had its own
/// ([`pending_cookie`]); still read, so that a sign-in begun before an upgrade finishes.
pub const PENDING: &str = "grantline_upstream";

/// The cookie carrying one pending upstream sign-in, named after its `state`: two sign-ins
/// begun at once in one browser (two applications connecting) each find their own when the
/// provider sends the browser back, and a callback only ever ends its own.
pub fn pending_cookie(state: &str) -> String {
    let digest = blake3::hash(state.as_bytes()).to_hex();
    format!("{PENDING}_{}", &digest[..16])
}

/// What a person sees when the provider cannot be reached; the reason goes to the log.
const UNREACHABLE: &str = "The identity provider cannot be reached right now. Try again in a \
     few minutes; if it persists, tell your administrator (the server's log says why).";

fn callback_url(ctx: &RequestContext, provider: &str) -> String {
    format!("{}/login/upstream/{provider}/callback", ctx.issuer)
}

fn with_cookie(mut r: Response, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The display name of a provider, for pages.
fn display(app: &App, id: &str) -> String {
    app.federation
        .as_deref()
        .and_then(|f| f.slot(id))
        .map(|s| s.provider.display_name.clone())
        .unwrap_or_else(|| id.to_string())
}

/// Records `login.failed` for the provider and shows what went wrong. A failure nobody is
/// known for (anyone can send a callback) is recorded at most once a minute per provider and
/// error; the record says how many more there were since the last one.
async fn fail(
    app: &App,
    ctx: &RequestContext,
    provider: &str,
    user_id: Option<String>,
    code: &str,
    detail: &str,
    status: StatusCode,
) -> Response {
    // Upstream text may be in it (an error code, an issuer): bounded for the log and the page
    // (the event bounds its own copy).
    let detail: String = detail.chars().take(1000).collect();
    let detail = detail.as_str();
    tracing::info!(provider, error = code, %detail, "upstream sign-in failed");
    let subject = match &user_id {
        Some(u) => pii::user_subject(u),
        None => format!("anon:{}", &app.now().to_string()[..10]),
    };
    let suppressed = match (&user_id, app.federation.as_deref()) {
        (None, Some(fed)) => fed.anonymous_failures.admit(
            (provider.to_string(), code.to_string()),
            app.now().0 / 1_000_000,
        ),
        _ => Some(0),
    };
    let recorded = async {
        let Some(suppressed) = suppressed else {
            return Ok(());
        };
        let meta = ctx.meta(app, &subject).await?;
        let more = match suppressed {
            0 => String::new(),
            n => format!(" (and {n} more since the last record)"),
        };
        let error = format!("{code}{more}: {detail}");
        let (outcome, _) = app
            .run(|_| {
                grantline_oauth::federation::sign_in_failed(
                    provider,
                    user_id.clone(),
                    LoginFailure::IdentityProviderError,
                    &error,
                    meta.clone(),
                )
            })
            .await?;
        outcome.map_err(crate::app::AppError::from)
    }
    .await;
    if let Err(e) = recorded {
        return pages::app_error(e);
    }
    let title = format!("Sign-in through {} failed", display(app, provider));
    pages::error(status, &title, &format!("{detail} ({code})"))
}

/// The federation, when `provider` is one of its providers; else the 404 page.
#[allow(clippy::result_large_err)] // the error is the page the handler returns at once
fn configured(
    app: &App,
    provider: &str,
) -> Result<std::sync::Arc<crate::federation::Federation>, Response> {
    let not_found = |why: &str| pages::error(StatusCode::NOT_FOUND, "Not found", why);
    let fed = app
        .federation
        .clone()
        .ok_or_else(|| not_found("No identity provider is configured."))?;
    if fed.slot(provider).is_none() {
        return Err(not_found("There is no identity provider by that name."));
    }
    Ok(fed)
}

/// `POST /login/upstream/{provider}`: the sign-in page's button.
/// The longest pending sign-in cookie value sent: with its name and attributes, within the
/// 4,096 bytes browsers keep of a cookie (and what [`open_pending`] takes back).
///
/// [`open_pending`]: crate::federation::open_pending
const MAX_PENDING_COOKIE: usize = 3_800;

pub async fn begin(
    State(app): State<App>,
    ctx: RequestContext,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match pages::form_fields(&body) {
        Ok(p) => p,
        Err(page) => return page,
    };
    let get = |k: &str| crate::http::param(&params, k).unwrap_or_default();
    let nonce =
        session::cookie(&headers, &session::cookie_name(&ctx, LOGIN_NONCE)).unwrap_or_default();
    if nonce.is_empty() || !session::csrf_ok(&app, &nonce, "login", &get("csrf")) {
        return pages::error(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            "This form expired or did not come from this server. Go back and sign in again.",
        );
    }
    let fed = match configured(&app, &provider) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let upstream = match fed.upstream(&provider).await {
        Ok(u) => u,
        Err(e) => {
            // What failed (addresses, discovery details) is for the operator's log.
            tracing::warn!(provider = %provider, error = %e, "identity provider unreachable");
            return fail(
                &app,
                &ctx,
                &provider,
                None,
                "provider_unreachable",
                UNREACHABLE,
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .await;
        }
    };
    let return_to = crate::routes::login::safe_return_to(Some(&get("return_to")));
    // The application asked for a fresh sign-in (`prompt=login`): the provider is asked to
    // sign the person in again too, and its answer must say they did.
    let fresh = crate::routes::authorize::asks_fresh_sign_in(&return_to);
    let started = match upstream.begin(&callback_url(&ctx, &provider), fresh) {
        Ok(b) => b,
        Err(e) => {
            return pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in unavailable",
                &e.to_string(),
            );
        }
    };
    let cookie_name = pending_cookie(&started.state);
    let pending = Pending {
        p: provider.clone(),
        s: started.state,
        n: started.nonce,
        v: started.pkce_verifier,
        r: return_to,
        t: app.now().0 / 1_000_000,
        f: fresh,
        m: app.now().0,
    };
    let Some(cookie) = seal_pending(&app, &pending) else {
        return pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "Please try again shortly.",
        );
    };
    // A browser drops a cookie over about 4 KB without a word, and the callback would then
    // say no sign-in is in progress: refused here, saying why.
    if cookie.len() > MAX_PENDING_COOKIE {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Sign-in refused",
            "The application's request is too long to carry through the identity provider. \
             Start again from the application; if this keeps happening, its authorization \
             request is too long.",
        );
    }
    let mut r = see_other(started.url.as_str());
    // Sign-ins begun and never finished would pile up cookies until the browser's requests
    // are too large to be taken: beyond the newest few, the older ones go.
    for old in superseded_pending(&app, &ctx, &headers, cookie_name.len() + cookie.len()) {
        r = with_cookie(r, &session::set_cookie(&ctx, &old, "", 0));
    }
    with_cookie(
        r,
        &session::set_cookie(&ctx, &cookie_name, &cookie, TRANSACTION_TTL),
    )
}

/// Pending sign-ins one browser keeps at once.
pub const MAX_PENDING: usize = 3;

/// The most bytes of pending sign-in cookies one browser sends (names and values): with the
/// session's and the sign-in page's cookies, within the 8 KB a proxy takes for a header line
/// (nginx's `large_client_header_buffers`). A pending sign-in may be close to 4 KB.
pub const MAX_PENDING_BYTES: usize = 6_000;

/// The names (without a `__Host-` prefix) of the pending sign-in cookies this request carries
/// that go as a new one of `new_len` bytes is set: beyond the newest [`MAX_PENDING`] − 1, or
/// beyond [`MAX_PENDING_BYTES`] with the new one, and any that no longer open.
fn superseded_pending(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    new_len: usize,
) -> Vec<String> {
    let full = session::cookie_name(ctx, PENDING);
    let host = full.len() - PENDING.len();
    let mut held: Vec<(i64, usize, String)> = session::cookies(headers)
        .filter(|(k, _)| k.starts_with(&full) && k.len() > full.len())
        .map(|(k, v)| {
            let t = open_pending(app, v)
                .map_or(i64::MIN, |p| if p.m > 0 { p.m } else { p.t * 1_000_000 });
            (t, k.len() + v.len(), k[host..].to_string())
        })
        .collect();
    held.sort_by_key(|h| std::cmp::Reverse(h.0));
    let (mut kept, mut bytes) = (1, new_len);
    held.into_iter()
        .filter(|(t, len, _)| {
            let keep = *t != i64::MIN && kept < MAX_PENDING && bytes + len <= MAX_PENDING_BYTES;
            if keep {
                kept += 1;
                bytes += len;
            }
            !keep
        })
        .map(|(_, _, name)| name)
        .collect()
}

fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .take(32)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// At most `n` characters of text the upstream chose, without control or direction-changing
/// characters (it is shown on the page and written to the log).
fn bounded(s: &str, n: usize) -> String {
    s.chars()
        .filter(|c| grantline_oauth::limits::displayable(*c))
        .take(n)
        .collect()
}

/// `GET /login/upstream/{provider}/callback`: the upstream's answer. Whatever the outcome,
/// the sign-in its `state` names is over and its cookie goes; another in progress in the same
/// browser keeps its own.
pub async fn callback(
    State(app): State<App>,
    ctx: RequestContext,
    Path(provider): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query_params(query.as_deref());
    let state = q
        .iter()
        .find(|(k, _)| k == "state")
        .map_or("", |(_, v)| v.as_str());
    let name = pending_cookie(state);
    let legacy = session::cookie(&headers, &session::cookie_name(&ctx, PENDING));
    let cookie = session::cookie(&headers, &session::cookie_name(&ctx, &name));
    let ended_legacy = cookie.is_none() && legacy.is_some();
    // No sign-in of this `state`, but another in progress in this browser: this answer is
    // judged against that one (a state mismatch, not "no sign-in in progress"), which it
    // leaves in progress.
    let other = || {
        let prefix = format!("{}_", session::cookie_name(&ctx, PENDING));
        session::cookies(&headers)
            .find(|(k, v)| k.starts_with(&prefix) && !v.is_empty())
            .map(|(_, v)| v.to_string())
    };
    let cookie = cookie.or(legacy).or_else(other);
    let r = answer(app, ctx.clone(), provider, &q, cookie).await;
    let r = with_cookie(r, &session::set_cookie(&ctx, &name, "", 0));
    if ended_legacy {
        with_cookie(r, &session::set_cookie(&ctx, PENDING, "", 0))
    } else {
        r
    }
}

/// The callback's page, given the pending sign-in's cookie, if the browser sent one.
async fn answer(
    app: App,
    ctx: RequestContext,
    provider: String,
    q: &[(String, String)],
    cookie: Option<String>,
) -> Response {
    let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let fed = match configured(&app, &provider) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let now = app.now().0 / 1_000_000;
    let bad = |code: &'static str, detail: String| {
        let app = app.clone();
        let ctx = ctx.clone();
        let provider = provider.clone();
        async move {
            fail(
                &app,
                &ctx,
                &provider,
                None,
                code,
                &detail,
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    };
    let pending = cookie.and_then(|v| open_pending(&app, &v));
    let Some(pending) = pending.filter(|p| p.p == provider) else {
        return bad(
            "transaction_missing",
            "There is no sign-in in progress in this browser (it expired, or began elsewhere). Start again from the application.".into(),
        )
        .await;
    };
    let state = get("state").unwrap_or_default();
    if !bool::from(state.as_bytes().ct_eq(pending.s.as_bytes())) {
        return bad(
            "state_mismatch",
            "The answer does not belong to the sign-in this browser started (state mismatch). Start again from the application.".into(),
        )
        .await;
    }
    if pending.t + TRANSACTION_TTL < now {
        return bad(
            "transaction_expired",
            "The sign-in took too long and expired. Start again from the application.".into(),
        )
        .await;
    }
    // A callback answered already is refused before anything is asked upstream. The state
    // is remembered only once the provider has answered it with the person (below): a
    // callback anyone can make up (no code, a made-up one) takes no room in the memory.
    if fed.answered(&pending.s, now) {
        return bad(
            "state_replayed",
            "This answer was used already. Start again from the application.".into(),
        )
        .await;
    }
    let upstream = match fed.upstream(&provider).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(provider = %provider, error = %e, "identity provider unreachable");
            return fail(
                &app,
                &ctx,
                &provider,
                None,
                "provider_unreachable",
                UNREACHABLE,
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .await;
        }
    };
    if let Err(e) = upstream.check_response_issuer(get("iss")) {
        return bad(e.code(), e.to_string()).await;
    }
    if let Some(err) = get("error") {
        let desc = get("error_description")
            .map(|d| format!(": {}", bounded(d, 200)))
            .unwrap_or_default();
        let err = bounded(err, 64);
        let detail = if err == "access_denied" {
            format!("The identity provider refused the sign-in{desc}.")
        } else {
            format!("The identity provider answered {err}{desc}.")
        };
        let code = if err == "access_denied" {
            "access_denied"
        } else {
            "upstream_error"
        };
        return bad(code, detail).await;
    }
    let Some(code) = get("code").filter(|c| !c.is_empty() && c.len() <= 2048) else {
        return bad(
            "no_code",
            "The identity provider sent no authorization code.".into(),
        )
        .await;
    };
    if fed
        .callback_exchanges
        .hit(ctx.source_ip.as_deref(), now)
        .is_err()
    {
        app.metrics.throttled("sign_in");
        return fail(
            &app,
            &ctx,
            &provider,
            None,
            "rate_limited",
            "Too many sign-ins from this address. Wait a few minutes and start again from the \
             application.",
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
    }
    let (who, tokens) = match upstream
        .finish(
            code,
            &callback_url(&ctx, &provider),
            &pending.n,
            &pending.v,
            now,
            pending.f.then_some(pending.t),
        )
        .await
    {
        Ok(x) => x,
        // Addresses and network errors are for the log, not the page.
        Err(e @ (SignInError::Unreachable(_) | SignInError::Userinfo(_))) => {
            tracing::warn!(provider = %provider, error = %e, "sign-in could not be finished");
            let (page, status) = if matches!(e, SignInError::Unreachable(_)) {
                (UNREACHABLE, StatusCode::SERVICE_UNAVAILABLE)
            } else {
                (
                    "The identity provider did not answer who you are. Try again in a few \
                     minutes; if it keeps failing, an administrator finds the reason in the \
                     server's log.",
                    StatusCode::BAD_GATEWAY,
                )
            };
            return fail(&app, &ctx, &provider, None, e.code(), page, status).await;
        }
        Err(e) => return bad(e.code(), e.to_string()).await,
    };
    let linked = match fed
        .tables
        .linked_user(&provider, &who.issuer, &who.subject)
        .await
    {
        Ok(u) => u,
        Err(e) => return pages::app_error(crate::app::AppError::from(e)),
    };
    if let Err(refusal) = mapping::admitted(&upstream.provider, &who) {
        // A person the provider vouches for but who is no longer allowed here: if they were,
        // everything they hold is revoked now.
        if let Some(u) = &linked
            && let Err(e) = app
                .deprovision(
                    u,
                    &provider,
                    &format!("no longer allowed at sign-in ({})", refusal.code()),
                )
                .await
        {
            return pages::app_error(e);
        }
        let e = SignInError::NotAllowed(refusal);
        return fail(
            &app,
            &ctx,
            &provider,
            linked,
            e.code(),
            &e.to_string(),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    // One person's sign-ins through a provider are limited as a name's on the sign-in page
    // are (each appends `login.succeeded` and holds a callback state): a script driving an
    // account whose provider approves at once cannot loop without end.
    let person = format!(
        "fed:{}",
        blake3::hash(format!("{provider}\0{}\0{}", who.issuer, who.subject).as_bytes()).to_hex()
    );
    if app.sign_ins.over(Some(&person), now).is_err() {
        // Refused after the provider was asked: the address's callbacks are not given back,
        // so a loop of these is bounded by them (and so are the refusals recorded).
        app.metrics.throttled("sign_in");
        return fail(
            &app,
            &ctx,
            &provider,
            linked,
            "rate_limited",
            "Too many sign-ins of this account. Wait a few minutes and start again from the \
             application.",
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
    }
    // The provider took the code and the person is admitted. The state is remembered as
    // answered while the sign-in is recorded (a second callback with it is refused); a
    // sign-in refused after all gives its place back below, so that anyone with an account at
    // a public provider cannot fill those places and have every sign-in refused as busy.
    match fed.first_use(&pending.s, now) {
        Ok(()) => {}
        Err(StateUse::Replayed) => {
            return bad(
                "state_replayed",
                "This answer was used already. Start again from the application.".into(),
            )
            .await;
        }
        Err(StateUse::Full) => {
            return fail(
                &app,
                &ctx,
                &provider,
                None,
                "busy",
                "Too many sign-ins are finishing right now. Try again in a few minutes.",
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .await;
        }
    }
    match sign_in(&app, &ctx, &provider, &who, linked).await {
        Ok((user_id, session_id, recorded)) => {
            // A sign-in, not a made-up callback or someone refused: everyone behind one
            // address (an office, a VPN) signs in without using up the address's callbacks;
            // a refused one keeps using them up.
            fed.callback_exchanges
                .give_back(ctx.source_ip.as_deref(), now);
            let _ = app.sign_ins.hit(Some(&person), now);
            let slot = fed.slot(&provider).map(|s| s.provider.clone());
            if slot.is_some_and(|p| p.store_upstream_token || p.check_upstream_on_refresh)
                && let Err(e) = app.keep_upstream_tokens(&user_id, &provider, &tokens).await
            {
                return pages::app_error(e);
            }
            // A containment recorded after this sign-in dropped the user's upstream tokens
            // before they were stored here: drop them again (the session is void anyway).
            let signed_in_seq = recorded.last().map_or(0, |r| r.seq());
            let contained = app
                .projection
                .read()
                .users
                .get(&user_id)
                .is_some_and(|u| u.sessions_ended_since(signed_in_seq));
            if contained && let Err(e) = fed.tables.drop_tokens(&user_id, &provider).await {
                return pages::app_error(crate::app::AppError::from(e));
            }
            let (value, ttl) = session::issue(&app, &user_id, &session_id, &recorded, now);
            let r = see_other(&format!("{}{}", ctx.issuer, pending.r));
            with_cookie(r, &session::set_cookie(&ctx, SESSION, &value, ttl))
        }
        Err(r) => {
            fed.release_use(&pending.s);
            r
        }
    }
}

/// The user the sign-in is for, recorded: created or linked as the provider's provisioning
/// says, the mapped role applied, `login.succeeded`. Returns the user id and the session id,
/// or the page to show.
async fn sign_in(
    app: &App,
    ctx: &RequestContext,
    provider: &str,
    who: &UpstreamIdentity,
    linked: Option<String>,
) -> Result<(String, String, Vec<grantline_ledger::Recorded>), Response> {
    let Some(fed) = app.federation.as_deref() else {
        return Err(pages::error(
            StatusCode::NOT_FOUND,
            "Not found",
            "No identity provider.",
        ));
    };
    let Some(slot) = fed.slot(provider) else {
        return Err(pages::error(
            StatusCode::NOT_FOUND,
            "Not found",
            "No identity provider.",
        ));
    };
    let p = &slot.provider;
    let store_err =
        |e: grantline_store::StoreError| pages::app_error(crate::app::AppError::from(e));
    // Who: the link, else (provisioning `existing`) a local user with that verified email or
    // as their username, else a new user.
    let existing = match (&linked, p.provisioning) {
        (Some(u), _) => Some(u.clone()),
        (None, grantline_federation::config::Provisioning::Existing) => {
            let mut found = None;
            // The verified email only: a login name (`preferred_username`, GitHub `login`)
            // is chosen by the person and proves nothing.
            for name in [who.email.as_deref()].into_iter().flatten() {
                let c = app.credentials.by_email_username(name).await;
                if let Some(c) = c.map_err(store_err)? {
                    found = Some(c.user_id);
                    break;
                }
            }
            let Some(u) = found else {
                return Err(fail(
                    app,
                    ctx,
                    provider,
                    None,
                    "not_provisioned",
                    "You have no account here yet: an administrator must create it first.",
                    StatusCode::FORBIDDEN,
                )
                .await);
            };
            // Refused before the link row is written: an account a sign-in made, or one
            // linked to another identity at this provider, is never linked by its email.
            let refused = app.projection.read().users.get(&u).and_then(|user| {
                grantline_oauth::federation::may_link(user, provider, &Account::Link(u.clone()))
                    .err()
            });
            if let Some(why) = refused {
                return Err(fail(
                    app,
                    ctx,
                    provider,
                    Some(u),
                    "not_linkable",
                    why,
                    StatusCode::FORBIDDEN,
                )
                .await);
            }
            Some(u)
        }
        (None, grantline_federation::config::Provisioning::JustInTime) => None,
    };
    let user_id = match &existing {
        Some(u) => u.clone(),
        None => crate::random::id("usr"),
    };
    // The link row first (a concurrent first sign-in of the same person ends on one user).
    let (user_id, made_here) = fed
        .tables
        .link_first(provider, &who.issuer, &who.subject, &user_id)
        .await
        .map_err(store_err)?;
    let recorded = record_sign_in(app, ctx, p, who, linked.is_some(), &user_id, made_here).await;
    // A link row this sign-in made goes again when its sign-in was not recorded: left, it
    // would make the next sign-in of that subject one of a linked account, which the decider
    // does not ask again whether it may be linked (a second subject at one provider). Unless
    // the ledger records the user linked at this provider after all: a concurrent sign-in of
    // the same person that won the race, or this one's append whose answer was lost, relies
    // on the row. (When the ledger cannot be read to tell, the row goes: a person whose link
    // is lost signs in again, a subject let in by a stale row would be someone else.)
    if recorded.is_err() && made_here {
        // The recorded link can be this identity's only if no other identity's row links the
        // account at this provider (the ledger's links name the provider, not the subject):
        // with two, the other may be the one recorded, and this row would let a second person
        // in without being asked whether they may be linked.
        let alone = fed
            .tables
            .links_of(provider, &user_id)
            .await
            .is_ok_and(|rows| only_this_identity(&rows, who));
        let linked_since = alone
            && match app.projection.catch_up(app.store()).await {
                Ok(_) => app
                    .projection
                    .read()
                    .users
                    .get(&user_id)
                    .is_some_and(|u| u.links.contains_key(provider)),
                Err(_) => false,
            };
        if !linked_since
            && let Err(e) = fed
                .tables
                .unlink(provider, &who.issuer, &who.subject, &user_id)
                .await
        {
            tracing::error!(provider = %provider, error = %e, "a link row of a sign-in that was not recorded could not be removed");
        }
    }
    recorded
}

/// Whether every link row of an account at a provider (`rows`: issuer, subject) is `who`'s.
fn only_this_identity(rows: &[(String, String)], who: &UpstreamIdentity) -> bool {
    rows.iter()
        .all(|(issuer, subject)| *issuer == who.issuer && *subject == who.subject)
}

/// Records the sign-in of `user_id`, whose link row is in place (`made_here`: by this
/// sign-in): the account created, linked or signed in to, and `login.succeeded`.
async fn record_sign_in(
    app: &App,
    ctx: &RequestContext,
    p: &grantline_federation::Provider,
    who: &UpstreamIdentity,
    linked: bool,
    user_id: &str,
    made_here: bool,
) -> Result<(String, String, Vec<grantline_ledger::Recorded>), Response> {
    let provider = p.id.as_str();
    let user_id = user_id.to_string();
    let store_err =
        |e: grantline_store::StoreError| pages::app_error(crate::app::AppError::from(e));
    // Another instance (or the CLI) may have created or enabled the user moments ago.
    app.catch_up_unless(|s| s.users.get(&user_id).is_some_and(|u| u.active()))
        .await
        .map_err(pages::app_error)?;
    let known = app.projection.read().users.contains_key(&user_id);
    let subject = pii::user_subject(&user_id);
    let seal = |v: String| {
        let subject = subject.clone();
        async move { app.keyring.seal(&subject, &v).await }
    };
    let account = if known {
        // Linked before this callback, or by a concurrent first sign-in of the same person
        // (the same provider and subject): that person's own account, not one found by email.
        if linked || !made_here {
            Account::Linked(user_id.clone())
        } else {
            Account::Link(user_id.clone())
        }
    } else {
        let username = create_username(app, provider, who)
            .await
            .map_err(store_err)?;
        let account = Account::Create {
            user_id: user_id.clone(),
            username: seal(username.clone()).await.map_err(store_err)?,
            email: match &who.email {
                Some(e) => Some(seal(e.clone()).await.map_err(store_err)?),
                None => None,
            },
            display_name: match &who.name {
                Some(n) => Some(seal(n.clone()).await.map_err(store_err)?),
                None => None,
            },
        };
        // A username for the CLI and admin lists; no password ever matches it.
        let row = grantline_store::Credential {
            user_id: user_id.clone(),
            username,
            password_hash: crate::signin::NO_PASSWORD.into(),
        };
        if let Err(e) = app.credentials.insert(&row).await
            && !matches!(e, grantline_store::StoreError::Exists(_))
        {
            return Err(store_err(e));
        }
        account
    };
    let (role, claim) = mapping::role_for(p, who);
    let sealed_subject = seal(who.subject.clone()).await.map_err(store_err)?;
    let meta = ctx.meta(app, &subject).await.map_err(pages::app_error)?;
    let session_id = crate::random::id("ses");
    let signin = FederatedSignIn {
        provider: provider.to_string(),
        account,
        subject: sealed_subject,
        role: role.clone(),
        claim,
        session_id: session_id.clone(),
        request: meta,
    };
    let known_role =
        |r: &str| crate::admin::ROLES.contains(&r) || app.policy_config().roles.contains_key(r);
    match app
        .run(|s| grantline_oauth::federation::sign_in(s, signin.clone(), known_role))
        .await
    {
        Ok((Ok(u), recorded)) => {
            tracing::Span::current().record("user_id", u.as_str());
            Ok((u, session_id, recorded))
        }
        Ok((Err(e), _)) => Err(fail(
            app,
            ctx,
            provider,
            Some(user_id),
            "sign_in_refused",
            &e.description,
            StatusCode::FORBIDDEN,
        )
        .await),
        Err(e) => Err(pages::app_error(e)),
    }
}

/// A username for a new federated user: the first of [`username_candidates`] that is free,
/// else `<provider>:u_<random>`.
async fn create_username(
    app: &App,
    provider: &str,
    who: &UpstreamIdentity,
) -> Result<String, grantline_store::StoreError> {
    for c in username_candidates(provider, who) {
        if app.credentials.by_username(&c).await?.is_none() {
            return Ok(c);
        }
    }
    Ok(format!("{provider}:{}", crate::random::id("u")))
}

/// The usernames a new federated user may get, best first: the verified email,
/// `<provider>:<login>`, `<provider>:<subject>` — each only when it can be shown as local
/// usernames are (printable: no control, direction-override or zero-width characters) and is
/// within a sign-in's length in bytes. A login name is the person's own choice, and a
/// provider's subject is the provider's: one that does not fit is passed over, not cut.
fn username_candidates(provider: &str, who: &UpstreamIdentity) -> Vec<String> {
    let fits = |c: &String| {
        c.len() <= crate::signin::MAX_USERNAME
            && c.chars().all(grantline_oauth::limits::displayable)
            && !c.chars().any(char::is_whitespace)
    };
    who.email
        .iter()
        .cloned()
        .chain(who.username.iter().map(|u| format!("{provider}:{u}")))
        .chain(std::iter::once(format!("{provider}:{}", who.subject)))
        .filter(fits)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_row_is_kept_only_when_no_other_identity_links_the_account() {
        let who = UpstreamIdentity {
            subject: "00u-b".into(),
            issuer: "https://idp.example".into(),
            email: None,
            name: None,
            username: None,
            claims: Default::default(),
        };
        let row = |i: &str, s: &str| (i.to_string(), s.to_string());
        assert!(only_this_identity(
            &[row("https://idp.example", "00u-b")],
            &who
        ));
        assert!(!only_this_identity(
            &[
                row("https://idp.example", "00u-a"),
                row("https://idp.example", "00u-b")
            ],
            &who
        ));
        assert!(!only_this_identity(
            &[row("https://other.example", "00u-b")],
            &who
        ));
    }

    #[test]
    fn a_federated_username_is_shown_safely_and_never_cut() {
        let who = |email: Option<&str>, login: Option<&str>, subject: &str| UpstreamIdentity {
            subject: subject.into(),
            issuer: "https://idp.example".into(),
            email: email.map(String::from),
            name: None,
            username: login.map(String::from),
            claims: Default::default(),
        };
        assert_eq!(
            username_candidates("corp", &who(Some("a@example.com"), Some("al"), "00u1")),
            ["a@example.com", "corp:al", "corp:00u1"]
        );
        // A login with a direction override (it would show as another name), one with a
        // zero-width space, one past the length: passed over.
        for login in ["adm\u{202e}nimda", "ad\u{200b}min", &"x".repeat(300), "a b"] {
            assert_eq!(
                username_candidates("corp", &who(None, Some(login), "00u1")),
                ["corp:00u1"],
                "{login:?}"
            );
        }
        // Nothing fits: the caller names them with a random id.
        assert!(username_candidates("corp", &who(None, None, "\u{202e}")).is_empty());
    }
}
