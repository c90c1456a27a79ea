//! `POST /oauth/token`: parse, authenticate the client, decide, append, answer.

use crate::app::{App, AppError};
use crate::context::RequestContext;
use crate::http::param;
use crate::refusals::{self, Attempt};
use crate::routes::client::{form_body, presented};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use grantline_ledger::OAuthEndpoint;
use grantline_oauth::OAuthError;
use grantline_oauth::client_auth::authenticate;
use grantline_oauth::grants::{Context, TokenRequest};

pub async fn token(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut attempt = Attempt::default();
    match handle(&app, &ctx, &headers, &body, &mut attempt).await {
        Ok(r) => r,
        Err(e) => {
            if let AppError::OAuth(o) = &e {
                tracing::info!(error = o.code.as_str(), reason = %o.wire_description(), "token request refused");
                refusals::record(&app, &ctx, OAuthEndpoint::Token, attempt, o).await;
            }
            e.into_response()
        }
    }
}

/// Parse, authenticate the client, decide (and append), answer.
async fn handle(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &[u8],
    attempt: &mut Attempt,
) -> Result<Response, AppError> {
    let body = std::str::from_utf8(body)
        .map_err(|_| OAuthError::invalid_request("the body is not UTF-8"))?;
    let params = form_body(headers, body)?;
    attempt.resource = param(&params, "resource");
    if super::token_exchange::is_exchange(&params) {
        let who = presented(headers, &params)?;
        tracing::Span::current().record("client_id", who.client_id.as_str());
        app.catch_up_unless(|s| s.clients.contains_key(&who.client_id))
            .await?;
        let client = {
            let state = app.projection.read();
            if state.clients.contains_key(&who.client_id) {
                attempt.client_id = Some(who.client_id.clone());
            }
            authenticate(&state, &who)?.clone()
        };
        attempt.client_authenticated = proved_itself(&client);
        return super::token_exchange::exchange(app, ctx, &client, &params).await;
    }
    attempt.requested_scopes = param(&params, "scope")
        .map(|s| {
            s.split(' ')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let req = TokenRequest::parse(&params)?;
    attempt.grant_type = Some(req.grant_type());
    let client = authenticated_client(app, headers, &params, &req, attempt).await?;
    let (user, presented) = {
        let state = app.projection.read();
        let presented = req.presented_refresh(&state);
        // A refresh token's user is its family's: one lookup serves both.
        let user = match &presented {
            Some((family, _)) => state.families.get(family).map(|f| f.user_id.clone()),
            None => req.user(&state),
        };
        (user, presented)
    };
    attempt.user_id = user.clone();
    if let Some((family, token)) = presented {
        attempt.family_id = Some(family);
        attempt.refresh_token_id = Some(token);
    }
    let settings = app.settings_for(&ctx.issuer);
    // Counted before anything slow, so that many at once cannot all pass the limit. Not a
    // request refused whatever the count says: a refresh token's reuse or a code's replay
    // must be recorded (and its family revoked), not lost behind a 429 — else whoever fills
    // the count (a thief rotating a stolen token) would shut the detection out.
    // A refresh token of a live family that is not refused whatever else is said (reuse, a
    // spent token past the grace, another client's): the two checks below ask this.
    let live_refresh = match (&req, attempt.family_id.as_deref()) {
        (TokenRequest::Refresh(r), Some(f)) => {
            let state = app.projection.read();
            state.family_live(f)
                && !grantline_oauth::grants::refresh_token::refused_at_once(
                    &state,
                    &client,
                    &r.refresh_token,
                    app.now(),
                    settings.lifetimes.refresh_grace,
                )
        }
        _ => false,
    };
    let issuable = {
        let state = app.projection.read();
        match &req {
            // A rotated token presented again within the grace period (a client retrying
            // after a lost answer) is counted but never refused: told to wait, it would come
            // back after the grace as reuse and lose its family. Counted, it brings a looping
            // client's next rotation to the limit all the same.
            TokenRequest::Refresh(_) if !live_refresh => Count::Not,
            TokenRequest::Refresh(r) => {
                let unused = state
                    .refresh_tokens
                    .get(&grantline_ledger::secret_digest(r.refresh_token.as_bytes()))
                    .is_some_and(|t| t.unused());
                if unused { Count::Enforced } else { Count::Only }
            }
            TokenRequest::Code(c) => {
                let redeemable = state
                    .codes
                    .get(&grantline_ledger::secret_digest(c.code.as_bytes()))
                    .is_some_and(|code| !code.redeemed && code.client_id == client.client_id);
                if redeemable {
                    Count::Enforced
                } else {
                    Count::Not
                }
            }
            TokenRequest::ClientCredentials(_) => Count::Enforced,
        }
    };
    let mut issuing = match Issuing::hit(app, &client, issuable, user.as_deref()) {
        Ok(i) => i,
        Err(over) => {
            app.metrics.throttled("token");
            let e = OAuthError::new(
                grantline_oauth::ErrorCode::TemporarilyUnavailable,
                format!(
                    "too many tokens issued to this client this hour (at most {} an hour); try again later",
                    app.config.oauth.tokens_per_hour
                ),
            );
            tracing::info!(error = e.code.as_str(), reason = %e.wire_description(), "token request refused");
            refusals::record(app, ctx, OAuthEndpoint::Token, std::mem::take(attempt), &e).await;
            return Ok(crate::http::too_many_requests(
                over.retry_after(),
                &e.wire_description(),
            ));
        }
    };
    // A provider that asks for it is consulted at each refresh (answered from a bounded
    // cache): a person it no longer accepts is deprovisioned, and this refresh fails.
    // Not for a token refused whatever the provider says: reuse must be recorded, not lost
    // behind "sign in again".
    if let Some(u) = &user
        && live_refresh
        // Without identity providers there is nothing to ask.
        && app.federation.is_some()
        && let Err(check) = app.check_upstream_session(u, app.now().0 / 1_000_000).await
    {
        use crate::federation::UpstreamCheck;
        let description = match check {
            UpstreamCheck::Deprovisioned(why) => {
                // The deprovisioning is on the ledger already.
                attempt.recorded = true;
                format!(
                    "the identity provider no longer accepts this user ({why}); their grants were revoked"
                )
            }
            UpstreamCheck::SignInAgain(provider) => format!(
                "the user's session at the identity provider {provider:?} cannot be checked any more: sign in again"
            ),
            UpstreamCheck::Failed(e) => return Err(e),
        };
        return Err(OAuthError::new(grantline_oauth::ErrorCode::InvalidGrant, description).into());
    }
    let meta = meta_for(app, ctx, user.as_deref(), &client.client_id).await?;
    let fresh = crate::random::fresh_tokens();
    issuing.committing();
    let (outcome, recorded) = app
        .run(|s| {
            let c = Context {
                settings: &settings,
                jwt: &app.jwt,
                now: app.now(),
                fresh: fresh.clone(),
                request: Some(meta.clone()),
            };
            req.decide(s, &client, &c)
        })
        .await
        // The ledger failed (down, or conflicts without end): whatever it may have kept, the
        // client got no tokens, and a client retrying through an outage must not find its
        // hour used up when the ledger is back. A caller cannot cause this; one who hangs up
        // mid-append is still counted (see `Issuing`).
        .inspect_err(|_| issuing.issued_nothing())?;
    // A refusal that is itself an event (code replay, refresh reuse) needs no second record.
    attempt.recorded = !recorded.is_empty();
    if outcome.is_err() {
        issuing.issued_nothing();
    }
    let mut r = Json(outcome?).into_response();
    crate::http::no_store(r.headers_mut());
    Ok(r)
}

/// How a token request counts against the hourly limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    /// It cannot issue tokens as the state stands (reuse, replay, unknown): not counted.
    Not,
    /// Counted, never refused (a retry within the grace period).
    Only,
    /// Counted, and refused over the limit.
    Enforced,
}

/// A token request's place in the hourly count of what its issuer was given
/// (`[oauth] tokens_per_hour`): per user and client for a code or a refresh token, per client
/// for client credentials. Given back when dropped before the decision is appended, or when
/// the decision refused; kept when dropped while the append is under way (the tokens may have
/// been issued), so that a caller who hangs up cannot rotate without counting.
struct Issuing<'a> {
    app: &'a App,
    /// None: not counted (a request that cannot issue tokens).
    key: Option<String>,
    at: i64,
    committing: bool,
}

impl<'a> Issuing<'a> {
    /// `count`: how the request counts as the state stands (see [`Count`]).
    fn hit(
        app: &'a App,
        client: &grantline_state::Client,
        count: Count,
        user: Option<&str>,
    ) -> Result<Self, crate::throttle::OverLimit> {
        let key = (count != Count::Not).then(|| match user {
            Some(u) => format!("user:{u} client:{}", client.client_id),
            None => format!("client:{}", client.client_id),
        });
        let at = app.now().0 / 1_000_000;
        if let Some(k) = &key {
            if count == Count::Enforced {
                app.token_issues.hit(Some(k), at)?;
            } else {
                app.token_issues.count(Some(k), at);
            }
        }
        Ok(Issuing {
            app,
            key,
            at,
            committing: false,
        })
    }

    /// The decision is about to be appended: from here on, dropping this counts it.
    fn committing(&mut self) {
        self.committing = true;
    }

    /// The decision refused: nothing was issued, the place goes back.
    fn issued_nothing(&mut self) {
        self.committing = false;
    }
}

impl Drop for Issuing<'_> {
    fn drop(&mut self) {
        if !self.committing
            && let Some(k) = &self.key
        {
            self.app.token_issues.give_back(Some(k), self.at);
        }
    }
}

/// The client the request authenticates as (RFC 6749 §2.3), reading another instance's events
/// first when the client, code or refresh token is not known here yet.
async fn authenticated_client(
    app: &App,
    headers: &HeaderMap,
    params: &[(String, String)],
    req: &TokenRequest,
    attempt: &mut Attempt,
) -> Result<grantline_state::Client, AppError> {
    let who = presented(headers, params)?;
    tracing::Span::current().record("client_id", who.client_id.as_str());
    let digest = req.credential_digest();
    app.catch_up_unless(|s| {
        s.clients.contains_key(&who.client_id)
            && digest
                .as_ref()
                .is_none_or(|d| s.codes.contains_key(d) || s.refresh_tokens.contains_key(d))
    })
    .await?;
    let state = app.projection.read();
    if state.clients.contains_key(&who.client_id) {
        attempt.client_id = Some(who.client_id.clone());
    }
    let client = authenticate(&state, &who)?.clone();
    attempt.client_authenticated = proved_itself(&client);
    Ok(client)
}

/// Whether authenticating `client` proved who is calling: a confidential client's secret
/// did. A public client is authenticated by its id alone, which anyone may send: its refused
/// requests are attributed to no client (`oauth.refused`'s actor), whatever they claimed.
fn proved_itself(client: &grantline_state::Client) -> bool {
    client.auth_method != grantline_ledger::AuthMethod::None
}

/// Request metadata sealed under the user's key (or the client's, for machine clients).
async fn meta_for(
    app: &App,
    ctx: &RequestContext,
    user: Option<&str>,
    client_id: &str,
) -> Result<grantline_ledger::RequestMeta, AppError> {
    if let Some(u) = user {
        tracing::Span::current().record("user_id", u);
    }
    let subject = app.sealing_subject(user, || format!("client:{client_id}"));
    ctx.meta(app, &subject).await
}
