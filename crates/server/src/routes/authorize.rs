//! `GET /oauth/authorize` and the consent form's `POST /oauth/consent`.

use crate::app::{App, AppError};
use crate::context::RequestContext;
use crate::http::{redirect, see_other};
use crate::pages;
use crate::refusals::{self, Attempt};
use crate::session;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use grantline_ledger::{OAuthEndpoint, pii};
use grantline_oauth::authorize::{
    Approval, AuthorizationQuery, FreshCode, Refusal, Validated, approve, deny, needs_consent,
    validate,
};
use grantline_oauth::{OAuthError, redirect as redirect_uri};

/// Appends `error`/`code`, `state` and `iss` (RFC 9207) to a redirect URI's query.
fn client_redirect(uri: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => uri.to_string(),
    }
}

fn error_location(ctx: &RequestContext, uri: &str, state: Option<&str>, e: &OAuthError) -> String {
    let description = e.wire_description();
    let mut p = vec![
        ("error", e.code.as_str()),
        ("error_description", description.as_ref()),
    ];
    if let Some(s) = state {
        p.push(("state", s));
    }
    p.push(("iss", &ctx.issuer));
    client_redirect(uri, &p)
}

fn error_redirect(
    ctx: &RequestContext,
    uri: &str,
    state: Option<&str>,
    e: &OAuthError,
) -> Response {
    redirect(&error_location(ctx, uri, state, e))
}

/// Answers a refused authorization request: an error page, or the error sent back to the
/// client's redirect URI — but only to a redirect URI the server trusts (RFC 9700 §4.11.2):
/// a client an administrator registered, or one the user consented to. Anyone may register a
/// client whose redirect URI is a phishing page; for those the page names the host and lets
/// the user decide.
fn refusal(ctx: &RequestContext, r: Refusal, trusted: bool) -> Response {
    match r {
        Refusal::Page(e) => pages::error(
            StatusCode::BAD_REQUEST,
            "This sign-in link is not valid",
            &format!("{} ({})", e.description, e.code.as_str()),
        ),
        Refusal::Redirect {
            redirect_uri,
            state,
            error,
        } if trusted => error_redirect(ctx, &redirect_uri, state.as_deref(), &error),
        Refusal::Redirect {
            redirect_uri,
            state,
            error,
        } => {
            let back = error_location(ctx, &redirect_uri, state.as_deref(), &error);
            pages::untrusted_error(
                "This sign-in request cannot be completed",
                &format!("{} ({})", error.description, error.code.as_str()),
                &redirect_uri::display_host(&redirect_uri),
                &back,
            )
        }
    }
}

/// The longest authorization request taken, in bytes of its query. The consent page carries
/// the request back in its form, whose body is bounded ([`super::MAX_BODY`]); an honest client's
/// request is far shorter (browsers and proxies cut URLs long before this).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

fn query(raw: &str) -> Result<AuthorizationQuery, OAuthError> {
    if raw.len() > MAX_QUERY_BYTES {
        return Err(OAuthError::invalid_request(format!(
            "the authorization request is longer than {} KiB",
            MAX_QUERY_BYTES / 1024
        )));
    }
    let pairs = crate::http::parse_params(raw, &["resource"])?;
    let get = |k: &str| crate::http::param(&pairs, k);
    Ok(AuthorizationQuery {
        response_type: get("response_type"),
        client_id: get("client_id"),
        redirect_uri: get("redirect_uri"),
        scope: get("scope"),
        state: get("state"),
        code_challenge: get("code_challenge"),
        code_challenge_method: get("code_challenge_method"),
        resource: pairs
            .iter()
            .filter(|(k, v)| k == "resource" && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect(),
        prompt: get("prompt"),
    })
}

/// For a metadata-document client id: fetch (or take from cache) and record the client when it
/// is new or its metadata changed. New clients are taken in at most so often per address.
async fn ensure_document_client(
    app: &App,
    ctx: &RequestContext,
    client_id: &str,
) -> Result<(), Response> {
    // Another instance may have recorded it (an administrator's client under this URL, or the
    // document already taken in).
    app.catch_up_unless(|s| s.clients.contains_key(client_id))
        .await
        .map_err(pages::app_error)?;
    let (known, registered_otherwise) = {
        let state = app.projection.read();
        let c = state.clients.get(client_id);
        (
            c.is_some(),
            c.is_some_and(|c| c.method != grantline_ledger::RegistrationMethod::MetadataDocument),
        )
    };
    // A client an administrator or the configuration registered under a URL is not fetched:
    // its registration is theirs, not the document's.
    if registered_otherwise {
        return Ok(());
    }
    // No new clients at all: nothing to fetch.
    if !known
        && matches!(
            app.registration_policy(),
            grantline_oauth::register::Policy::Off
        )
    {
        return Err(not_admitted(
            "registration of new clients is turned off on this server",
        ));
    }
    if !known
        && let Err(over) = app
            .document_intake
            .hit(ctx.source_ip.as_deref(), app.now().0 / 1_000_000)
    {
        return Err(too_many_new_clients(app, over));
    }
    let doc = match app.metadata_documents.get(client_id).await {
        Ok(doc) => doc,
        // A client taken in before goes on as recorded while its document cannot be read (a
        // blip at its host); changes wait for the next good fetch.
        Err(e) if known => {
            tracing::warn!(error = %e.description, "a known client's metadata document could not be read; using its recorded registration");
            return Ok(());
        }
        Err(e) => {
            return Err(pages::error(
                StatusCode::BAD_REQUEST,
                "This application could not be verified",
                &format!("{} ({})", e.description, e.code.as_str()),
            ));
        }
    };
    // Each change taken in is an event kept for ever, and anyone may edit a document of
    // their own: at most so many a day per client.
    let changed = grantline_oauth::register::document_changed(
        &app.projection.read(),
        &doc.url,
        &doc.metadata,
    );
    let policy = app.registration_policy();
    // A change the policy refuses is not taken in (and not counted against the client's
    // changes of the day, or its users would be refused once the count ran out).
    if changed
        && let Err(why) = policy.admits(
            Some(&doc.metadata.client_name),
            doc.metadata.software_id.as_deref(),
            &doc.metadata.redirect_uris,
        )
    {
        tracing::warn!(
            reason = why,
            "a client's changed metadata document was not taken in"
        );
        return Ok(());
    }
    if changed
        && let Err(over) = app
            .document_updates
            .hit(Some(&doc.url), app.now().0 / 1_000_000)
    {
        app.metrics.throttled("client_documents");
        let mut r = pages::error(
            StatusCode::TOO_MANY_REQUESTS,
            "This application changes too often",
            "This application's registration changed too many times today. Try again later.",
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&over.retry_after().to_string()) {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        return Err(r);
    }
    // A new client's place in the hour's total, taken once its document is in hand (a slow
    // host must not hold it), kept if anything is written.
    let mut slot = if known {
        None
    } else {
        match app.document_intake.reserve(app.now().0 / 1_000_000) {
            Ok(slot) => Some(slot),
            Err(over) => return Err(too_many_new_clients(app, over)),
        }
    };
    if let Some(slot) = slot.as_mut() {
        slot.committing();
    }
    // A URL whose client expired unused is taken in again after the expiry on its stream.
    let history = if known {
        Vec::new()
    } else {
        app.store()
            .stream_kinds(&grantline_ledger::StreamId::client(&doc.url))
            .await
            .map_err(|e| pages::app_error(e.into()))?
    };
    let intake = grantline_oauth::register::DocumentIntake {
        url: &doc.url,
        metadata: &doc.metadata,
        policy: &policy,
        now: app.now(),
        unused_ttl: app.config.oauth.dynamic_client_ttl,
        recorded: &history,
    };
    let (outcome, recorded) = app
        .run(|s| grantline_oauth::register::decide_document(s, &intake))
        .await
        .map_err(pages::app_error)?;
    // Refused by the registration policy: a page, as every other refusal here (not the token
    // endpoint's 401, whose Basic challenge would make a browser ask for a password).
    if let Some(slot) = slot {
        if recorded.is_empty() {
            slot.wrote_nothing();
        } else {
            slot.taken(app.now().0 / 1_000_000);
        }
    }
    match outcome {
        Ok(()) => Ok(()),
        // A change of a known client's document the policy refuses is not taken in: the
        // client goes on as recorded.
        Err(e) if known => {
            tracing::warn!(reason = %e.wire_description(), "a client's changed metadata document was not taken in");
            Ok(())
        }
        // Another instance is taking the URL in again: its event is not read here yet.
        Err(e) if e.code == grantline_oauth::ErrorCode::TemporarilyUnavailable => Err(
            pages::error(StatusCode::SERVICE_UNAVAILABLE, "Try again", &e.description),
        ),
        Err(e) => Err(not_admitted(&e.description)),
    }
}

/// The page for a new metadata-document client over the address's limit or the hour's total.
fn too_many_new_clients(app: &App, over: crate::throttle::OverLimit) -> Response {
    app.metrics.throttled("client_documents");
    let mut r = pages::error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many new applications",
        match over {
            crate::throttle::OverLimit::Address(_) => {
                "Too many new applications were signed in from your address. Try again later."
            }
            crate::throttle::OverLimit::Total(_) => {
                "This server takes no more new applications for now. Try again later."
            }
        },
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&over.retry_after().to_string()) {
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    r
}

fn not_admitted(why: &str) -> Response {
    pages::error(
        StatusCode::FORBIDDEN,
        "This application is not admitted here",
        &format!("{why} (invalid_client)"),
    )
}

/// Validates an authorization request against the current state (reading another instance's
/// events first when the client is not known yet). A refusal is recorded (`oauth.refused`)
/// and answered: an error page, or a redirect to the client.
/// Who is asking, as far as trusting the client's redirect URI with an error goes.
enum Asking<'a> {
    /// Nobody signed in.
    Anonymous,
    /// A signed-in user, by id.
    User(&'a str),
    /// A signed-in user answering this client's consent page (which named its host).
    Answering,
}

async fn checked(
    app: &App,
    ctx: &RequestContext,
    q: &AuthorizationQuery,
    asking: Asking<'_>,
) -> Result<Validated, Response> {
    if let Some(id) = q.client_id.as_deref() {
        app.catch_up_unless(|s| s.clients.contains_key(id))
            .await
            .map_err(pages::app_error)?;
    }
    let settings = app.settings_for(&ctx.issuer);
    let validated = {
        let state = app.projection.read();
        validate(&state, &settings, q)
    };
    let r = match validated {
        Ok(v) => return Ok(v),
        Err(r) => r,
    };
    let error = match &r {
        Refusal::Page(e) | Refusal::Redirect { error: e, .. } => e,
    };
    let attempt = Attempt {
        client_id: q
            .client_id
            .clone()
            .filter(|id| app.projection.read().clients.contains_key(id)),
        resource: q.resource.first().cloned(),
        requested_scopes: q
            .scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect(),
        ..Attempt::default()
    };
    refusals::record(app, ctx, OAuthEndpoint::Authorize, attempt, error).await;
    // A redirect URI is trusted with an error when an administrator vouched for the client,
    // or the user has consented to it before (a live grant, for any resource), or is
    // answering its consent page. Being signed in is not trust: a signed-in visitor could otherwise be bounced
    // without a click to whatever URI anyone registered (RFC 9700 §4.11.2).
    let trusted = q.client_id.as_deref().is_some_and(|id| {
        let state = app.projection.read();
        let vouched = state.clients.get(id).is_some_and(|c| {
            matches!(
                c.method,
                grantline_ledger::RegistrationMethod::Admin
                    | grantline_ledger::RegistrationMethod::Config
            )
        });
        let consented = match asking {
            Asking::Anonymous => false,
            Asking::Answering => true,
            Asking::User(u) => {
                grantline_oauth::authorize::consented_to(&state, u, id, &settings.resources)
            }
        };
        vouched || consented
    });
    Err(refusal(ctx, r, trusted))
}

pub async fn authorize(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let (raw, signed_in_after) = without_sign_in_marker(&raw.unwrap_or_default());
    let q = match query(&raw) {
        Ok(q) => q,
        Err(e) => {
            return pages::error(
                StatusCode::BAD_REQUEST,
                "This sign-in link is not valid",
                &e.description,
            );
        }
    };
    if let Some(id) = q.client_id.as_deref() {
        // No client has a longer id: one that long goes on to "unknown client", unlogged.
        if id.len() <= grantline_oauth::limits::URL_BYTES {
            tracing::Span::current().record("client_id", id);
        }
        if crate::cimd::is_document_url(id)
            && let Err(r) = ensure_document_client(&app, &ctx, id).await
        {
            return r;
        }
    }
    let now_secs = app.now().0 / 1_000_000;
    let session = session::current(&app, &ctx, &headers, now_secs);
    let asking = match &session {
        Some(s) => Asking::User(&s.user_id),
        None => Asking::Anonymous,
    };
    let v = match checked(&app, &ctx, &q, asking).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // prompt=login: a session begun before the request was sent to sign in is not taken.
    // The request comes back from the sign-in page with the ledger's position at that moment,
    // under a MAC over it and the request: the sign-in page's return address opened again
    // (or the back button) under the old session only leads to the sign-in page again.
    let session_seq = session.as_ref().map_or(0, |s| s.signed_in_seq);
    let session = session.filter(|s| {
        !v.prompt_login
            || signed_in_after
                .as_deref()
                .and_then(|m| sign_in_marker_seq(&app, &raw, m, now_secs))
                .is_some_and(|after| s.signed_in_seq > after)
    });
    let Some(s) = session else {
        let return_to = if v.prompt_login {
            // Never below the session in hand: this instance's projection may not have read
            // that sign-in yet (made on another instance).
            let after = app.projection.seq().max(session_seq);
            format!(
                "/oauth/authorize?{raw}&{SIGNED_IN_AFTER}={}",
                sign_in_marker(&app, &raw, after, now_secs)
            )
        } else {
            format!("/oauth/authorize?{raw}")
        };
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("return_to", &return_to);
        let login = format!("{}/login?{}", ctx.issuer, query.finish());
        return redirect(&login);
    };
    tracing::Span::current().record("user_id", s.user_id.as_str());
    let ask = needs_consent(&app.projection.read(), &s.user_id, &v);
    // A public loopback client cannot prove which program it is (RFC 8252 §8.6): a
    // remembered consent is asked again with one click instead of silently.
    let confirm = !ask && v.confirm_each_time;
    if !ask && !confirm {
        return issue_code(&app, &ctx, &s, &v, None).await;
    }
    let request_id = consent_request_id(app.now().0 / 1_000_000, &raw, &v.redirect_uri);
    let username = app
        .credentials
        .by_user_id(&s.user_id)
        .await
        .ok()
        .flatten()
        .map(|c| c.username)
        .unwrap_or_else(|| s.user_id.clone());
    let origin = url::Url::parse(&v.redirect_uri)
        .map(|u| form_action_source(&u))
        .unwrap_or_default();
    let scopes = v
        .scopes
        .iter()
        .map(|sc| (sc.clone(), v.resource.describe(sc)))
        .collect();
    pages::consent(&pages::Consent {
        base: &ctx.base_path(),
        username: &username,
        client_name: &v.client_name,
        client_id: &v.client_id,
        redirect_host: &redirect_uri::display_host(&v.redirect_uri),
        redirect_origin: &origin,
        loopback_warning: v.loopback_only_metadata_client,
        unverified: (!v.verified()).then(|| {
            let how = match v.registration {
                grantline_ledger::RegistrationMethod::MetadataDocument => {
                    "It identified itself by a metadata document"
                }
                _ => "It registered itself",
            };
            format!(
                "{how} on {} (UTC).",
                v.registered_at
                    .to_string()
                    .get(..16)
                    .unwrap_or_default()
                    .replace('T', " ")
            )
        }),
        confirm,
        resource_name: &v.resource.name,
        resource_id: &v.resource.id,
        scopes,
        // Refresh tokens come with any scope to a client registered for them, so the page
        // says so whether or not it asked for `offline_access`.
        stays_connected_days: app
            .projection
            .read()
            .clients
            .get(&v.client_id)
            .is_some_and(|c| {
                c.grant_types
                    .contains(&grantline_ledger::GrantType::RefreshToken)
            })
            .then(|| {
                app.settings_for(&ctx.issuer)
                    .lifetimes
                    .refresh_absolute
                    .div_ceil(86_400)
            }),
        request_id: &request_id,
        csrf: &session::csrf(&app, &format!("{}|{request_id}", s.session_id), "consent"),
        logout_csrf: &session::csrf(&app, &s.session_id, "logout"),
    })
}

/// Records consent and the code, then sends the browser back to the client.
async fn issue_code(
    app: &App,
    ctx: &RequestContext,
    session: &crate::session::Session,
    v: &Validated,
    consent_page: Option<String>,
) -> Response {
    let user_id = session.user_id.as_str();
    let prompted = consent_page.is_some();
    let meta = match ctx.meta(app, &pii::user_subject(user_id)).await {
        Ok(m) => m,
        Err(e) => return pages::app_error(e),
    };
    let fresh = FreshCode {
        code: crate::random::secret(grantline_oauth::tokens::CODE_PREFIX),
        grant_id: crate::random::id("gr"),
        family_id: crate::random::id("fam"),
    };
    let settings = app.settings_for(&ctx.issuer);
    let now = app.now();
    let result = app
        .run(|s| {
            let approval = Approval {
                prompted,
                now,
                fresh: fresh.clone(),
                request: Some(meta.clone()),
                consent_page: consent_page.clone(),
                signed_in_seq: Some(session.signed_in_seq),
            };
            approve(s, &settings, user_id, v, approval)
        })
        .await;
    match result {
        Ok((Ok(code), _)) => {
            let mut p = vec![("code", code.as_str())];
            if let Some(st) = &v.state {
                p.push(("state", st));
            }
            p.push(("iss", &ctx.issuer));
            redirect(&client_redirect(&v.redirect_uri, &p))
        }
        Ok((Err(e), _)) => error_redirect(ctx, &v.redirect_uri, v.state.as_deref(), &e),
        Err(AppError::Unavailable(_)) => pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "The audit ledger cannot record this authorization right now; nothing was granted.",
        ),
        Err(AppError::OAuth(e)) => error_redirect(ctx, &v.redirect_uri, v.state.as_deref(), &e),
    }
}

/// The parameter a `prompt=login` request carries back from the sign-in page: the ledger's
/// position when it was sent there (a session must have begun after it), and a MAC over that
/// and the request. Not a parameter of the client's: removed before the request is read.
pub const SIGNED_IN_AFTER: &str = "grantline_signed_in_after";

/// `raw` without the [`SIGNED_IN_AFTER`] parameter, and that parameter's value (the last,
/// if several). Every other parameter stays as the client encoded it.
fn without_sign_in_marker(raw: &str) -> (String, Option<String>) {
    let mut marker = None;
    let kept: Vec<&str> = raw
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((SIGNED_IN_AFTER, v)) => {
                marker = Some(v.to_string());
                false
            }
            _ => *pair != SIGNED_IN_AFTER,
        })
        .collect();
    (kept.join("&"), marker)
}

/// The [`SIGNED_IN_AFTER`] value for request `raw` sent to sign in at ledger position `seq`
/// at `now` (seconds).
fn sign_in_marker(app: &App, raw: &str, seq: u64, now: i64) -> String {
    let tag = session::csrf(app, &format!("{seq}|{now}|{raw}"), "signed-in-after");
    format!("{seq}.{now}.{tag}")
}

/// The position a [`SIGNED_IN_AFTER`] value names, if it was made for request `raw` and not
/// longer ago than a consent page lasts ([`CONSENT_TTL_SECS`]): a saved return address is not
/// a fresh sign-in's for good.
fn sign_in_marker_seq(app: &App, raw: &str, marker: &str, now: i64) -> Option<u64> {
    let mut parts = marker.splitn(3, '.');
    let (seq, at, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let (seq, at): (u64, i64) = (seq.parse().ok()?, at.parse().ok()?);
    let fresh = now >= at - 60 && now - at <= CONSENT_TTL_SECS;
    (fresh && session::csrf_ok(app, &format!("{seq}|{at}|{raw}"), "signed-in-after", tag))
        .then_some(seq)
}

/// Whether the address a sign-in returns to is an authorization request with `prompt=login`:
/// an identity provider is then asked to sign the person in again too (the application asked
/// for a fresh sign-in). Read from the request itself, not from a field of the sign-in form
/// that could be left out.
pub fn asks_fresh_sign_in(return_to: &str) -> bool {
    let Some(raw) = return_to.strip_prefix("/oauth/authorize?") else {
        return false;
    };
    url::form_urlencoded::parse(raw.as_bytes())
        .filter(|(k, _)| k == "prompt")
        .any(|(_, v)| v.split(' ').any(|p| p == "login"))
}

// A request of the longest kind, and the longest redirect URI the page names, fit the
// consent form's bounded body (both in the request id, base64), with room for the rest.
const _: () = assert!(
    (MAX_QUERY_BYTES + grantline_oauth::limits::URL_BYTES) * 4 / 3 + 4096 < super::MAX_BODY
);

/// How long a consent page may stay open before its answer is refused.
const CONSENT_TTL_SECS: i64 = 15 * 60;

/// The consent form's `request_id`: when the page was shown, the authorization request's
/// query, and the redirect URI the page named (resolved from the client's registration when
/// the request gave none), so that the answer can be checked against all three.
fn consent_request_id(now_secs: i64, raw_query: &str, redirect_uri: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{now_secs}.{}.{}", b64(raw_query), b64(redirect_uri))
}

/// The authorization request's query and the redirect URI its page named, from a consent
/// form's `request_id`, unless it is malformed or older than [`CONSENT_TTL_SECS`].
fn consent_request(request_id: &str, now_secs: i64) -> Option<(String, String)> {
    use base64::Engine;
    let mut parts = request_id.split('.');
    let (at, q, shown) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let at: i64 = at.parse().ok()?;
    if now_secs < at - 60 || now_secs - at > CONSENT_TTL_SECS {
        return None;
    }
    let text = |b: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b)
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
    };
    Some((text(q)?, text(shown)?))
}

/// The answer to a consent page. Every answer that goes back to the client is a `303 See
/// Other` (RFC 9700 §4.12: after a POST), the refusals of a request no longer valid included.
pub async fn consent(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut r = answer_consent(app, ctx, headers, body).await;
    if r.status() == StatusCode::FOUND {
        *r.status_mut() = StatusCode::SEE_OTHER;
    }
    r
}

async fn answer_consent(
    app: App,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match pages::form_fields(&body) {
        Ok(p) => p,
        Err(page) => return page,
    };
    let get = |k: &str| crate::http::param(&params, k).unwrap_or_default();
    let now_secs = app.now().0 / 1_000_000;
    let Some(s) = session::current(&app, &ctx, &headers, now_secs) else {
        return pages::error(
            StatusCode::UNAUTHORIZED,
            "Signed out",
            "Your session ended. Start again from the application.",
        );
    };
    let request_id = get("request_id");
    if !session::csrf_ok(
        &app,
        &format!("{}|{request_id}", s.session_id),
        "consent",
        &get("csrf"),
    ) {
        return pages::error(
            StatusCode::FORBIDDEN,
            "Request refused",
            "This form did not come from this server.",
        );
    }
    // The request travels in the form, bound to the session by the CSRF token's MAC, and is
    // validated again now: no server-side memory, so any instance can take the answer.
    let Some((raw, shown_redirect)) = consent_request(&request_id, now_secs) else {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Request expired",
            "This authorization request expired. Start again from the application.",
        );
    };
    let q = match query(&raw) {
        Ok(q) => q,
        Err(e) => return pages::error(StatusCode::BAD_REQUEST, "Bad request", &e.description),
    };
    // Each page is answered once: a re-posted form (the back button) changes nothing. Its
    // digest names the user too: another person answering the same request in the same
    // second answers a page of their own.
    let page = grantline_ledger::secret_digest(format!("{}|{request_id}", s.user_id).as_bytes());
    if app
        .projection
        .read()
        .answered_consent_pages
        .contains_key(&page)
    {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Already answered",
            "This authorization request was already answered. Start again from the application.",
        );
    }
    let v = match checked(&app, &ctx, &q, Asking::Answering).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // The code goes where the page said it would, or nowhere: a client whose registration
    // changed while the page was open (a metadata document's one redirect URI, named by a
    // request that gave none) is not approved for an address the person never saw.
    if v.redirect_uri != shown_redirect {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "The application changed",
            "The application changed where it sends you back while this page was open. Start again from the application.",
        );
    }
    match get("decision").as_str() {
        "approve" => issue_code(&app, &ctx, &s, &v, Some(page)).await,
        "deny" => {
            let meta = Some(
                ctx.meta_best_effort(&app, &pii::user_subject(&s.user_id))
                    .await,
            );
            let denied = app
                .run(|state| deny(state, &s.user_id, &v, meta.clone(), Some(page.clone())))
                .await;
            match denied {
                Ok((Err(e), _)) => error_redirect(&ctx, &v.redirect_uri, v.state.as_deref(), &e),
                Ok((Ok(()), _)) => see_other(&v.redirect_uri),
                Err(e) => pages::app_error(e),
            }
        }
        _ => pages::error(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Choose Approve or Deny.",
        ),
    }
}

/// The CSP `form-action` source that lets the consent form's answer reach `redirect`: its
/// origin, or for an IPv6 literal (`http://[::1]:…`, which RFC 8252 has native clients use)
/// its scheme, since CSP host sources cannot name an IPv6 address and browsers drop one that
/// tries (the approval's redirect would then be blocked).
fn form_action_source(redirect: &url::Url) -> String {
    match redirect.host() {
        Some(url::Host::Ipv6(_)) => format!("{}:", redirect.scheme()),
        _ => redirect.origin().ascii_serialization(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sign_in_marker_is_taken_out_and_nothing_else_is_touched() {
        use super::{SIGNED_IN_AFTER, without_sign_in_marker};
        let raw = "client_id=https%3A%2F%2Fa.example%2Fc&state=a/b:c~d&prompt=login+consent";
        let marked = format!("{raw}&{SIGNED_IN_AFTER}=12.tag");
        assert_eq!(
            without_sign_in_marker(&marked),
            (raw.to_string(), Some("12.tag".to_string()))
        );
        assert_eq!(without_sign_in_marker(raw), (raw.to_string(), None));
        let twice = format!("{SIGNED_IN_AFTER}=1.a&a=1&{SIGNED_IN_AFTER}=2.b");
        assert_eq!(
            without_sign_in_marker(&twice),
            ("a=1".to_string(), Some("2.b".to_string()))
        );
    }

    #[test]
    fn a_fresh_sign_in_is_read_from_the_request_it_returns_to() {
        use super::asks_fresh_sign_in;
        assert!(asks_fresh_sign_in("/oauth/authorize?a=1&prompt=login"));
        assert!(asks_fresh_sign_in("/oauth/authorize?prompt=consent+login"));
        assert!(!asks_fresh_sign_in("/oauth/authorize?prompt=consent"));
        assert!(!asks_fresh_sign_in(
            "/oauth/authorize?loginx=1&prompt=loginx"
        ));
        assert!(!asks_fresh_sign_in("/account?prompt=login"));
    }

    #[test]
    fn an_ipv6_loopback_redirect_is_allowed_by_its_scheme() {
        let source = |u: &str| super::form_action_source(&url::Url::parse(u).unwrap());
        assert_eq!(source("http://[::1]:49152/cb"), "http:");
        assert_eq!(
            source("http://127.0.0.1:49152/cb"),
            "http://127.0.0.1:49152"
        );
        assert_eq!(source("https://app.example/cb"), "https://app.example");
    }
}
