//! Federation inside the server: the configured upstream providers, the pending sign-in kept
//! in an encrypted cookie across the upstream round trip, the users' sealed upstream tokens
//! (refreshed when they expire), and deprovisioning when an upstream no longer accepts a
//! person.

use crate::app::{App, AppError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use grantline_federation::upstream::http_client;
use grantline_federation::{Provider, RefreshError, Upstream, UpstreamTokens};
use grantline_ledger::{Actor, Sealed, SubjectKey, pii};
use grantline_store::{Federation as Tables, StoredTokens};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a pending upstream sign-in may take (the browser's round trip).
pub const TRANSACTION_TTL: i64 = 600;
/// The longest a provider that could not be asked stands in for a check: each person's
/// requests wait for one timed-out attempt this often during an outage, not one each.
const OUTAGE_HOLD: Duration = Duration::from_secs(60);

/// The most upstream session checks remembered at once (a bounded cache).
const MAX_CHECKS: usize = 10_000;
/// Upstream tokens this close to expiry are refreshed before they are handed out.
const EXPIRY_MARGIN: i64 = 30;

/// (user id, provider id).
type UserAtProvider = (String, String);

/// One configured provider; `upstream` is `None` until its discovery succeeded (a provider
/// marked optional, or `--start-without-providers`, may start without it).
pub struct Slot {
    pub provider: Provider,
    upstream: tokio::sync::RwLock<Option<Arc<Upstream>>>,
    /// When a provider that could not be reached may be tried again.
    backoff: Mutex<Backoff>,
}

/// The wait before connecting again to a provider that could not be reached: 5 seconds after
/// the first failure, doubling up to 5 minutes, so a provider that is down is not asked again
/// at every press of its button (and each press does not wait out a connection time-out).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(5);
    const LONGEST: Duration = Duration::from_secs(300);

    /// `Err` with the last failure while the wait is not over.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        match self.retry_at {
            Some(at) if now < at => Err(format!(
                "{} (not tried again for {} s)",
                self.last_error,
                (at - now).as_millis().div_ceil(1000)
            )),
            _ => Ok(()),
        }
    }

    /// A connection failed at `now`.
    pub fn failed(&mut self, now: Instant, error: String) {
        let delay = Self::FIRST
            .saturating_mul(1 << self.failures.min(6))
            .min(Self::LONGEST);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + delay);
        self.last_error = error;
    }
}

/// The providers and federation's tables.
pub struct Federation {
    pub slots: Vec<Arc<Slot>>,
    pub tables: Tables,
    http: reqwest::Client,
    /// (user, provider) → until when the last check of the person's session stands: the
    /// cache period after a confirmation, a shorter one after the provider could not be asked.
    checks: Mutex<HashMap<(String, String), Instant>>,
    /// One upstream refresh at a time per (user, provider): a provider that rotates refresh
    /// tokens refuses the second of two concurrent refreshes with the same token, which would
    /// read as the person's access having ended.
    refreshing: Mutex<HashMap<UserAtProvider, Arc<tokio::sync::Mutex<()>>>>,
    /// Upstream tokens a provider rotated that could not be stored (the database failing at
    /// that moment): the provider has taken the old refresh token back, so the next refresh
    /// must use these, or its refusal of the old one would deprovision the person for a
    /// failure of Grantline's own. Per instance; dropped once stored.
    unkept: Mutex<HashMap<UserAtProvider, UpstreamTokens>>,
    /// States of callbacks already answered, until their transaction would have expired: a
    /// replayed callback is refused even with its cookie.
    used_states: Mutex<UsedStates>,
    /// Failed callbacks nobody is known for are recorded at most once a minute per provider
    /// and error; the rest are counted into the next record (anyone can send them).
    pub anonymous_failures: crate::refusal_window::RefusalLog<(String, String)>,
    /// Callbacks that reach a provider's token endpoint, per address
    /// ([`CALLBACK_EXCHANGES_PER_ADDRESS`] in [`CALLBACK_WINDOW_SECS`]): anyone can begin a
    /// sign-in and send its callback a made-up code, again and again, and each would have
    /// Grantline ask the provider with its client secret (providers limit those requests per
    /// client, so this would shut everyone out there).
    pub callback_exchanges: crate::throttle::AddressLimiter,
}

/// Callbacks per address that reach a provider's token endpoint in a window: a person signs
/// in once.
pub const CALLBACK_EXCHANGES_PER_ADDRESS: u32 = 30;
/// Callbacks from one IPv6 /48 that reach a provider's token endpoint in a window: its 65,536
/// /64s would otherwise each have [`CALLBACK_EXCHANGES_PER_ADDRESS`].
pub const CALLBACK_EXCHANGES_PER_SITE: u32 = 300;
/// The window of [`CALLBACK_EXCHANGES_PER_ADDRESS`].
pub const CALLBACK_WINDOW_SECS: i64 = 600;

/// The most callback states remembered at once; past it, callbacks are refused until the
/// oldest expire (a replay must never slip through because the memory was full). Only
/// callbacks the provider answered with a person are remembered, so filling it takes that
/// many real sign-ins within a transaction's lifetime.
const MAX_USED_STATES: usize = 100_000;

/// Answered states in the order they expire, and as a set.
#[derive(Default)]
struct UsedStates {
    by_expiry: std::collections::VecDeque<(i64, String)>,
    set: std::collections::HashSet<String>,
}

impl UsedStates {
    fn forget_expired(&mut self, now: i64) {
        while let Some((until, _)) = self.by_expiry.front()
            && *until <= now
        {
            if let Some((_, old)) = self.by_expiry.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn answered(&mut self, state: &str, now: i64) -> bool {
        self.forget_expired(now);
        self.set.contains(state)
    }

    fn first_use(&mut self, state: &str, now: i64, max: usize) -> Result<(), StateUse> {
        self.forget_expired(now);
        if self.set.contains(state) {
            return Err(StateUse::Replayed);
        }
        if self.set.len() >= max {
            return Err(StateUse::Full);
        }
        self.set.insert(state.to_string());
        self.by_expiry
            .push_back((now + TRANSACTION_TTL, state.to_string()));
        Ok(())
    }

    /// Gives back a state's place (taken moments ago: found from the back).
    fn release(&mut self, state: &str) {
        if self.set.remove(state)
            && let Some(i) = self.by_expiry.iter().rposition(|(_, s)| s == state)
        {
            self.by_expiry.remove(i);
        }
    }
}

/// Why a refresh is refused after asking the upstream ([`App::check_upstream_session`]).
#[derive(Debug)]
pub enum UpstreamCheck {
    /// The upstream no longer accepts the person (its reason): they were deprovisioned.
    Deprovisioned(String),
    /// There is nothing to ask the provider with: the person must sign in through it again.
    SignInAgain(String),
    /// The check failed here (the stored tokens could not be read, or a deprovisioning the
    /// provider's refusal called for could not be recorded): no tokens until it can be made.
    Failed(AppError),
}

/// Why a callback's state cannot be accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum StateUse {
    /// The state was answered before.
    Replayed,
    /// Too many sign-ins finished within one transaction lifetime to remember another.
    Full,
}

/// What the browser carries across the upstream round trip, encrypted and authenticated
/// under a key derived from the server's MAC key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// Provider id.
    pub p: String,
    /// `state`, `nonce` and the PKCE verifier sent upstream.
    pub s: String,
    pub n: String,
    pub v: String,
    /// Where to go afterwards (the MCP client's pending authorization request).
    pub r: String,
    /// When it began (Unix seconds).
    pub t: i64,
    /// The application asked for a fresh sign-in (`prompt=login`): the provider was asked to
    /// sign the person in again, and its ID token must say it did after `t`.
    #[serde(default)]
    pub f: bool,
    /// When it began, in microseconds: which of a browser's pending sign-ins are the newest
    /// (0 in a cookie from before it was kept).
    #[serde(default)]
    pub m: i64,
}

/// Why an upstream token could not be handed out.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Grantline holds no upstream token of this user for {0}")]
    None(String),
    #[error("the identity provider no longer accepts the user: {0}")]
    Refused(String),
    #[error("the identity provider could not be asked: {0}")]
    Unavailable(String),
    /// The upstream token expired and the provider gave no refresh token: only a new
    /// sign-in through the provider gets another (nothing is revoked).
    #[error("the upstream token from {0} expired and cannot be refreshed")]
    Expired(String),
    #[error(transparent)]
    App(#[from] AppError),
}

/// Names the issuer of `provider`'s links made before links did (see
/// `Tables::name_unnamed_links`).
async fn name_links(tables: &Tables, provider: &str, u: &Upstream) -> anyhow::Result<()> {
    if let Some(issuer) = u.link_issuer() {
        let n = tables.name_unnamed_links(provider, &issuer).await?;
        if n > 0 {
            tracing::info!(
                provider,
                issuer,
                links = n,
                "links made before links named their issuer now name it"
            );
        }
    }
    Ok(())
}

impl Federation {
    /// Resolves and connects every configured provider. A provider that cannot be reached or
    /// whose discovery is invalid stops the start with the reason, unless it is `optional`
    /// or `start_anyway` is set; it is then connected at its first use.
    pub async fn start(
        configs: &[grantline_federation::ProviderConfig],
        tables: Tables,
        start_anyway: bool,
    ) -> anyhow::Result<Federation> {
        let http = http_client()?;
        let mut slots = Vec::new();
        for c in configs {
            let provider = c.resolve(&|k| std::env::var(k).ok())?;
            if provider.check_upstream_on_refresh
                && provider.kind == grantline_federation::config::Kind::Oidc
                && !provider.scopes.iter().any(|s| s == "offline_access")
            {
                tracing::warn!(provider = %provider.id, "check_upstream_on_refresh without the offline_access scope: if the provider gives no refresh token, each person must sign in there again once their upstream access token expires");
            }
            let upstream = match Upstream::connect(provider.clone(), http.clone()).await {
                Ok(u) => {
                    tracing::info!(provider = %provider.id, issuer = u.issuer().unwrap_or(""), "identity provider ready");
                    name_links(&tables, &provider.id, &u).await?;
                    Some(Arc::new(u))
                }
                Err(e) if provider.optional || start_anyway => {
                    tracing::warn!(provider = %provider.id, error = %e, "identity provider not ready; its sign-in button fails until it is");
                    None
                }
                Err(e) => anyhow::bail!(
                    "{e}\n(fix the [[identity_providers]] entry {:?}, set optional = true on it, or start with --start-without-providers)",
                    provider.id
                ),
            };
            slots.push(Arc::new(Slot {
                provider,
                upstream: tokio::sync::RwLock::new(upstream),
                backoff: Mutex::new(Backoff::default()),
            }));
        }
        Ok(Federation {
            slots,
            tables,
            http,
            checks: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashMap::new()),
            unkept: Mutex::new(HashMap::new()),
            used_states: Mutex::new(UsedStates::default()),
            anonymous_failures: Default::default(),
            callback_exchanges: crate::throttle::AddressLimiter::new(
                CALLBACK_EXCHANGES_PER_ADDRESS,
                0,
                CALLBACK_WINDOW_SECS,
            )
            .with_site_limit(CALLBACK_EXCHANGES_PER_SITE),
        })
    }

    /// Whether a check of the person's session at the provider still stands.
    fn checked_lately(&self, key: &(String, String)) -> bool {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Remembers a check of the person's session for `hold`, in a bounded map.
    fn remember_check(&self, key: (String, String), hold: Duration) {
        if hold.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if checks.len() >= MAX_CHECKS {
            checks.retain(|_, until| *until > now);
            if checks.len() >= MAX_CHECKS {
                checks.clear();
            }
        }
        checks.insert(key, now + hold);
    }

    pub fn slot(&self, id: &str) -> Option<&Arc<Slot>> {
        self.slots.iter().find(|s| s.provider.id == id)
    }

    /// The provider ready to use, connecting it now if it was not at start.
    pub async fn upstream(&self, id: &str) -> Result<Arc<Upstream>, String> {
        let slot = self
            .slot(id)
            .ok_or_else(|| format!("no identity provider {id:?}"))?;
        if let Some(u) = slot.upstream.read().await.as_ref() {
            return Ok(u.clone());
        }
        let mut w = slot.upstream.write().await;
        if let Some(u) = w.as_ref() {
            return Ok(u.clone());
        }
        // Presses queued behind a failed attempt fail at once rather than try again.
        let lock = || slot.backoff.lock().unwrap_or_else(|p| p.into_inner());
        lock().check(Instant::now())?;
        match Upstream::connect(slot.provider.clone(), self.http.clone()).await {
            Ok(u) => {
                if let Err(e) = name_links(&self.tables, &slot.provider.id, &u).await {
                    return Err(e.to_string());
                }
                let u = Arc::new(u);
                *w = Some(u.clone());
                *lock() = Backoff::default();
                tracing::info!(provider = %slot.provider.id, "identity provider ready");
                Ok(u)
            }
            Err(e) => {
                lock().failed(Instant::now(), e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// The lock that serialises the upstream refreshes of one user at one provider. Locks
    /// nobody holds are dropped once there are many.
    fn refresh_lock(&self, user_id: &str, provider: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() >= 1024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks
            .entry((user_id.to_string(), provider.to_string()))
            .or_default()
            .clone()
    }

    /// Whether a callback's state was answered already (and its transaction has not yet
    /// expired).
    pub fn answered(&self, state: &str, now: i64) -> bool {
        self.used_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .answered(state, now)
    }

    /// Remembers a callback's state as answered once the provider has answered it, refusing
    /// one answered already; forgets states whose transaction has expired (they are refused
    /// as expired anyway).
    pub fn first_use(&self, state: &str, now: i64) -> Result<(), StateUse> {
        self.used_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_use(state, now, MAX_USED_STATES)
    }

    /// Takes a state off the answered ones: its sign-in was refused after the provider took
    /// the code (which cannot be used again, so the callback cannot succeed a second time),
    /// and a refused person must not fill the places of everyone's sign-ins.
    pub fn release_use(&self, state: &str) {
        self.used_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(state);
    }
}

/// Whether upstream tokens can be handed out as they are (not expired, nor about to).
fn usable(t: &UpstreamTokens, now: i64) -> bool {
    t.expires_at.is_none_or(|e| e > now + EXPIRY_MARGIN)
}

fn cookie_key(app: &App) -> SubjectKey {
    SubjectKey(blake3::derive_key(
        "grantline 2026 federation pending sign-in",
        &app.mac_key,
    ))
}

const COOKIE_AAD: &str = "federation-pending";

/// The cookie value for a pending sign-in.
pub fn seal_pending(app: &App, p: &Pending) -> Option<String> {
    let json = serde_json::to_string(p).ok()?;
    let sealed = Sealed::seal(&cookie_key(app), COOKIE_AAD, &json).ok()?;
    let mut bytes = sealed.nonce.to_vec();
    bytes.extend_from_slice(&sealed.ciphertext);
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// The pending sign-in a cookie carries, if it is authentic.
pub fn open_pending(app: &App, value: &str) -> Option<Pending> {
    let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
    if bytes.len() < 24 + 16 || bytes.len() > 4096 {
        return None;
    }
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&bytes[..24]);
    let sealed = Sealed {
        subject: COOKIE_AAD.into(),
        nonce,
        ciphertext: bytes[24..].to_vec(),
    };
    let json = sealed.open(&cookie_key(app)).ok()?;
    serde_json::from_str(&json).ok()
}

impl App {
    fn fed(&self) -> Result<&Federation, TokenError> {
        self.federation
            .as_deref()
            .ok_or_else(|| TokenError::None("(no identity providers)".into()))
    }

    /// The user's upstream tokens from `provider`, opened; `None` (as an error) when there are
    /// none or they no longer open (the user was erased).
    async fn stored_upstream_tokens(
        &self,
        fed: &Federation,
        user_id: &str,
        provider: &str,
    ) -> Result<UpstreamTokens, TokenError> {
        let none = || TokenError::None(provider.to_string());
        let stored = fed
            .tables
            .tokens(user_id, provider)
            .await
            .map_err(AppError::from)?
            .ok_or_else(none)?;
        let json = self
            .keyring
            .open(&stored.sealed)
            .await
            .map_err(AppError::from)?
            .map_err(|_| none())?;
        serde_json::from_str(&json).map_err(|_| none())
    }

    /// Seals and stores the user's upstream tokens from `provider`. A response without a
    /// refresh token (Google's after the first consent) keeps the one stored.
    pub async fn keep_upstream_tokens(
        &self,
        user_id: &str,
        provider: &str,
        t: &UpstreamTokens,
    ) -> Result<(), AppError> {
        let Some(fed) = self.federation.as_deref() else {
            return Ok(());
        };
        let mut t = t.clone();
        if t.refresh_token.is_none()
            && let Ok(old) = self.stored_upstream_tokens(fed, user_id, provider).await
        {
            t.refresh_token = old.refresh_token;
        }
        let t = &t;
        let json = serde_json::to_string(t).map_err(|e| AppError::Unavailable(e.to_string()))?;
        let sealed = self
            .keyring
            .seal(&pii::user_subject(user_id), &json)
            .await?;
        fed.tables
            .put_tokens(
                user_id,
                provider,
                &StoredTokens {
                    sealed,
                    expires_at: t.expires_at,
                },
            )
            .await?;
        Ok(())
    }

    /// The user's upstream access token from `provider`, refreshed first when it has expired
    /// (or is about to). Returns it and whether it was refreshed. An upstream that refuses the
    /// refresh deprovisions the user here.
    pub async fn upstream_token(
        &self,
        user_id: &str,
        provider: &str,
        now: i64,
    ) -> Result<(UpstreamTokens, bool), TokenError> {
        let fed = self.fed()?;
        let tokens = self.stored_upstream_tokens(fed, user_id, provider).await?;
        if usable(&tokens, now) {
            return Ok((tokens, false));
        }
        let lock = fed.refresh_lock(user_id, provider);
        let _one_at_a_time = lock.lock().await;
        // Another request may have refreshed them while this one waited.
        let tokens = self.stored_upstream_tokens(fed, user_id, provider).await?;
        if usable(&tokens, now) {
            return Ok((tokens, false));
        }
        if tokens.refresh_token.is_none() {
            return Err(TokenError::Expired(provider.to_string()));
        }
        match self
            .refresh_upstream(fed, user_id, provider, tokens, now)
            .await?
        {
            Ok(fresh) => Ok((fresh, true)),
            Err(RefreshError::Refused(why)) => {
                self.deprovision(
                    user_id,
                    provider,
                    &format!("refused to refresh the user's token ({why})"),
                )
                .await?;
                Err(TokenError::Refused(why))
            }
            Err(RefreshError::Unavailable(why)) => Err(TokenError::Unavailable(why)),
        }
    }

    /// Refreshes the user's upstream tokens (the caller holds the refresh lock) and keeps the
    /// fresh ones. A refusal is believed only for the refresh token still stored: when another
    /// instance rotated it meanwhile, the refresh is tried once more with the new one.
    async fn refresh_upstream(
        &self,
        fed: &Federation,
        user_id: &str,
        provider: &str,
        tokens: UpstreamTokens,
        now: i64,
    ) -> Result<Result<UpstreamTokens, RefreshError>, AppError> {
        let upstream = match fed.upstream(provider).await {
            Ok(u) => u,
            Err(e) => return Ok(Err(RefreshError::Unavailable(e))),
        };
        let key = (user_id.to_string(), provider.to_string());
        let unkept = fed
            .unkept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .and_then(|t| t.refresh_token.clone());
        // The newest refresh token: one the provider rotated to that could not be stored.
        let mut used = unkept.or(tokens.refresh_token);
        for attempt in 0..2 {
            let Some(refresh) = used.clone() else {
                break;
            };
            match upstream.refresh(&refresh, now).await {
                Ok(fresh) => {
                    // Grantline's own failure (the outer error), not the provider's: the
                    // caller must not go on as if the provider had been asked. The tokens
                    // are held here until they can be stored, for the next refresh.
                    if let Err(e) = self.keep_upstream_tokens(user_id, provider, &fresh).await {
                        let mut held = fed.unkept.lock().unwrap_or_else(|p| p.into_inner());
                        if held.len() >= MAX_CHECKS {
                            held.clear();
                        }
                        held.insert(key, fresh);
                        return Err(e);
                    }
                    fed.unkept
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    return Ok(Ok(fresh));
                }
                Err(RefreshError::Refused(why)) if attempt == 0 => {
                    let stored = self
                        .stored_upstream_tokens(fed, user_id, provider)
                        .await
                        .ok()
                        .and_then(|t| t.refresh_token);
                    if stored.is_none() || stored == used {
                        return Ok(Err(RefreshError::Refused(why)));
                    }
                    used = stored;
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Err(RefreshError::Unavailable(
            "the provider gave no refresh token".into(),
        )))
    }

    /// Deprovisioning: every grant, token family and personal access token of the user is
    /// revoked with the reason, and Grantline forgets the user's upstream tokens from the
    /// provider. The user stays (a later sign-in that the upstream allows works again).
    pub async fn deprovision(
        &self,
        user_id: &str,
        provider: &str,
        why: &str,
    ) -> Result<usize, AppError> {
        let reason = format!("deprovisioned by identity provider {provider}: {why}");
        let reason: String = reason
            .chars()
            .take(grantline_oauth::limits::REASON_CHARS)
            .collect();
        let target = grantline_oauth::containment::Target::User(user_id.to_string());
        // A person the provider turns away at every sign-in is deprovisioned at each: once
        // they hold nothing and have not signed in since their sessions were last ended, there
        // is nothing to record again (on everything the ledger holds).
        self.projection.catch_up(self.store()).await?;
        let idle = grantline_oauth::containment::contain_again(
            &self.projection.read(),
            Actor::System,
            &target,
            &reason,
        )
        .append
        .events
        .is_empty();
        let outcome = if idle {
            Ok(0)
        } else {
            crate::admin::settle_containment(self, &target, &reason, Actor::System).await?
        };
        if let Some(fed) = self.federation.as_deref() {
            fed.tables.drop_tokens(user_id, provider).await?;
            fed.checks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(user_id.to_string(), provider.to_string()));
        }
        let n = outcome.unwrap_or(0);
        tracing::warn!(user_id, provider, revoked = n, "user deprovisioned: {why}");
        Ok(n)
    }

    /// At a Grantline refresh: for each provider of the user that asks for it
    /// (`check_upstream_on_refresh`), whether the upstream still accepts the person —
    /// answered from a bounded cache for `upstream_check_cache_secs` after a confirmation.
    /// An upstream that cannot be asked does not end the user's access (logged): an outage
    /// there is not a revocation. But where there is nothing to ask with (no upstream token
    /// held, or an access token that expired with no refresh token) the check could never
    /// succeed again, and letting the refresh through would stop checking for good: the
    /// refresh is refused until the person signs in there again (nothing is revoked).
    pub async fn check_upstream_session(
        &self,
        user_id: &str,
        now: i64,
    ) -> Result<(), UpstreamCheck> {
        let Some(fed) = self.federation.as_deref() else {
            return Ok(());
        };
        let providers: Vec<String> = {
            let state = self.projection.read();
            state
                .users
                .get(user_id)
                .map(|u| u.links.keys().cloned().collect())
                .unwrap_or_default()
        };
        for provider in providers {
            let Some(slot) = fed.slot(&provider) else {
                continue;
            };
            if !slot.provider.check_upstream_on_refresh {
                continue;
            }
            let key = (user_id.to_string(), provider.clone());
            let ttl = Duration::from_secs(slot.provider.upstream_check_cache_secs);
            if fed.checked_lately(&key) {
                continue;
            }
            match self.confirm_upstream(user_id, &provider, now, ttl).await {
                Ok(()) => {}
                Err(TokenError::Refused(why)) => return Err(UpstreamCheck::Deprovisioned(why)),
                Err(e @ (TokenError::None(_) | TokenError::Expired(_))) => {
                    tracing::info!(user_id, provider = %provider, error = %e, "upstream session cannot be checked; the user must sign in there again");
                    return Err(UpstreamCheck::SignInAgain(provider));
                }
                // Fail closed on what went wrong here; only the provider being out of reach
                // lets access continue (an outage there must not lock everyone out).
                Err(TokenError::App(e)) => {
                    tracing::warn!(user_id, provider = %provider, error = %e, "upstream session could not be checked here; refused until it can be");
                    return Err(UpstreamCheck::Failed(e));
                }
                Err(e @ TokenError::Unavailable(_)) => {
                    tracing::warn!(user_id, provider = %provider, error = %e, "upstream session could not be checked; access continues");
                }
            }
        }
        Ok(())
    }

    /// At each use of a personal access token: the check a refresh makes
    /// ([`App::check_upstream_session`]), since a personal access token is never refreshed
    /// and would otherwise outlive the person's deprovisioning upstream for good. Nothing to
    /// do for other credentials (their refreshes are checked) or without providers.
    pub async fn check_upstream_for(
        &self,
        caller: &grantline_gateway::Caller,
    ) -> Result<(), UpstreamCheck> {
        use grantline_ledger::CredentialKind;
        match (&caller.credential.kind, caller.user_id.as_deref()) {
            (CredentialKind::PersonalAccessToken, Some(user)) if self.federation.is_some() => {
                self.check_upstream_session(user, self.now().0 / 1_000_000)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Asks the upstream: a refresh when Grantline holds a refresh token, else userinfo with
    /// the access token. A refusal deprovisions.
    /// Requests that waited for another's check take its answer. The answer is remembered
    /// before the lock is let go: a confirmation for `ttl`, a provider that could not be asked
    /// for at most [`OUTAGE_HOLD`] (an outage must not stand in for a confirmation for long).
    async fn confirm_upstream(
        &self,
        user_id: &str,
        provider: &str,
        now: i64,
        ttl: Duration,
    ) -> Result<(), TokenError> {
        let fed = self.fed()?;
        let lock = fed.refresh_lock(user_id, provider);
        let _one_at_a_time = lock.lock().await;
        let key = (user_id.to_string(), provider.to_string());
        if fed.checked_lately(&key) {
            return Ok(());
        }
        let answer = self.ask_upstream(fed, user_id, provider, now).await;
        match &answer {
            Ok(()) => fed.remember_check(key, ttl),
            Err(TokenError::Unavailable(_)) => fed.remember_check(key, ttl.min(OUTAGE_HOLD)),
            Err(_) => {}
        }
        answer
    }

    /// [`App::confirm_upstream`]'s question, under its lock.
    async fn ask_upstream(
        &self,
        fed: &Federation,
        user_id: &str,
        provider: &str,
        now: i64,
    ) -> Result<(), TokenError> {
        let tokens = self.stored_upstream_tokens(fed, user_id, provider).await?;
        let session = match &tokens.refresh_token {
            Some(_) => self
                .refresh_upstream(fed, user_id, provider, tokens, now)
                .await?
                .map(|fresh| fresh.access_token),
            // An access token that expired by itself says nothing about the person, and there
            // is nothing left to ask with: only a new sign-in there can answer.
            None if tokens.expires_at.is_some_and(|e| e <= now) => {
                return Err(TokenError::Expired(provider.to_string()));
            }
            None => match fed.upstream(provider).await {
                Ok(upstream) => upstream
                    .still_valid(&tokens.access_token)
                    .await
                    .map(|()| tokens.access_token),
                Err(e) => Err(RefreshError::Unavailable(e)),
            },
        };
        // The session stands; the admission rules the provider can answer for now, too.
        let result = match session {
            Ok(access_token) => match fed.upstream(provider).await {
                Ok(upstream) => upstream.still_admitted(&access_token).await,
                Err(e) => Err(RefreshError::Unavailable(e)),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(()),
            Err(RefreshError::Refused(why)) => {
                self.deprovision(
                    user_id,
                    provider,
                    &format!("the upstream session ended ({why})"),
                )
                .await?;
                Err(TokenError::Refused(why))
            }
            Err(RefreshError::Unavailable(why)) => Err(TokenError::Unavailable(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_state_gives_its_place_back() {
        let mut used = UsedStates::default();
        used.first_use("a", 0, 2).unwrap();
        used.first_use("b", 0, 2).unwrap();
        assert_eq!(used.first_use("c", 0, 2), Err(StateUse::Full));
        used.release("b");
        assert_eq!(used.by_expiry.len(), 1);
        used.first_use("c", 0, 2).unwrap();
        assert_eq!(
            used.first_use("a", 0, 2),
            Err(StateUse::Replayed),
            "the others stay"
        );
        used.release("never-used");
        assert_eq!(used.set.len(), 2);
    }

    #[test]
    fn a_provider_that_could_not_be_reached_is_tried_again_after_a_growing_wait() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.check(t0), Ok(()), "nothing failed yet");
        b.failed(t0, "connection refused".into());
        let e = b.check(t0 + Duration::from_secs(4)).unwrap_err();
        assert!(
            e.starts_with("connection refused (not tried again for 1 s)"),
            "{e}"
        );
        assert_eq!(b.check(t0 + Duration::from_secs(5)), Ok(()));
        // Each failure doubles the wait: 5, 10, 20, … up to 5 minutes.
        let mut now = t0;
        for want in [10, 20, 40, 80, 160, 300, 300, 300] {
            now += Duration::from_secs(1000);
            b.failed(now, "still down".into());
            assert!(
                b.check(now + Duration::from_secs(want - 1)).is_err(),
                "{want}"
            );
            assert_eq!(b.check(now + Duration::from_secs(want)), Ok(()), "{want}");
        }
    }

    #[test]
    fn a_state_is_answered_once_and_a_full_memory_refuses_rather_than_forgets() {
        let mut used = UsedStates::default();
        assert_eq!(used.first_use("a", 0, 2), Ok(()));
        assert_eq!(used.first_use("a", 1, 2), Err(StateUse::Replayed));
        assert_eq!(used.first_use("b", 2, 2), Ok(()));
        // Full: a third is refused, not let through unremembered.
        assert_eq!(used.first_use("c", 3, 2), Err(StateUse::Full));
        assert_eq!(used.first_use("b", 4, 2), Err(StateUse::Replayed));
        // Once "a"'s transaction has expired it is forgotten (it is refused as expired
        // before this check), which makes room.
        assert_eq!(used.first_use("c", TRANSACTION_TTL, 2), Ok(()));
        assert_eq!(
            used.first_use("c", TRANSACTION_TTL + 1, 2),
            Err(StateUse::Replayed)
        );
        assert_eq!((used.set.len(), used.by_expiry.len()), (2, 2));
        assert!(used.answered("c", TRANSACTION_TTL + 2));
        assert!(!used.answered("d", TRANSACTION_TTL + 2));
        assert!(!used.answered("c", 2 * TRANSACTION_TTL + 1), "expired");
    }
}
