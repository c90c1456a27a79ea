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
/// The most upstream session checks remembered at once (a bounded cache).
const MAX_CHECKS: usize = 10_000;
/// Upstream tokens this close to expiry are refreshed before they are handed out.
const EXPIRY_MARGIN: i64 = 30;

/// One configured provider; `upstream` is `None` until its discovery succeeded (a provider
/// marked optional, or `--start-without-providers`, may start without it).
pub struct Slot {
    pub provider: Provider,
    upstream: tokio::sync::RwLock<Option<Arc<Upstream>>>,
}

/// The providers and federation's tables.
pub struct Federation {
    pub slots: Vec<Arc<Slot>>,
    pub tables: Tables,
    http: reqwest::Client,
    /// (user, provider) → when the upstream last confirmed the person's session.
    checks: Mutex<HashMap<(String, String), Instant>>,
    /// States of callbacks already answered, until their transaction would have expired: a
    /// replayed callback is refused even with its cookie.
    used_states: Mutex<HashMap<String, i64>>,
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
    #[error(transparent)]
    App(#[from] AppError),
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
            let upstream = match Upstream::connect(provider.clone(), http.clone()).await {
                Ok(u) => {
                    tracing::info!(provider = %provider.id, issuer = u.issuer().unwrap_or(""), "identity provider ready");
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
            }));
        }
        Ok(Federation {
            slots,
            tables,
            http,
            checks: Mutex::new(HashMap::new()),
            used_states: Mutex::new(HashMap::new()),
        })
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
        let u = Arc::new(
            Upstream::connect(slot.provider.clone(), self.http.clone())
                .await
                .map_err(|e| e.to_string())?,
        );
        *w = Some(u.clone());
        Ok(u)
    }

    /// Remembers a callback's state as answered; false when it was already.
    pub fn first_use(&self, state: &str, now: i64) -> bool {
        let mut used = self.used_states.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, until| *until > now);
        if used.contains_key(state) {
            return false;
        }
        if used.len() < 100_000 {
            used.insert(state.to_string(), now + TRANSACTION_TTL);
        }
        true
    }
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
        if tokens.expires_at.is_none_or(|e| e > now + EXPIRY_MARGIN) {
            return Ok((tokens, false));
        }
        let Some(refresh) = tokens.refresh_token.clone() else {
            return Err(TokenError::Unavailable(
                "the upstream token expired and the provider gave no refresh token".into(),
            ));
        };
        let upstream = fed
            .upstream(provider)
            .await
            .map_err(TokenError::Unavailable)?;
        match upstream.refresh(&refresh, now).await {
            Ok(fresh) => {
                self.keep_upstream_tokens(user_id, provider, &fresh).await?;
                Ok((fresh, true))
            }
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
        let (outcome, _) = self
            .run(|s| {
                grantline_oauth::containment::contain(
                    s,
                    Actor::System,
                    &grantline_oauth::containment::Target::User(user_id.to_string()),
                    &reason,
                )
            })
            .await?;
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
    /// `Err` carries the reason once the user has been deprovisioned. An upstream that cannot
    /// be asked does not end the user's access (logged): an outage there is not a revocation.
    pub async fn check_upstream_session(&self, user_id: &str, now: i64) -> Result<(), String> {
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
            let fresh = fed
                .checks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .is_some_and(|at| at.elapsed() < ttl);
            if fresh {
                continue;
            }
            match self.confirm_upstream(user_id, &provider, now).await {
                Ok(()) => {
                    let mut checks = fed.checks.lock().unwrap_or_else(|p| p.into_inner());
                    if checks.len() >= MAX_CHECKS {
                        checks.retain(|_, at| at.elapsed() < ttl);
                        if checks.len() >= MAX_CHECKS {
                            checks.clear();
                        }
                    }
                    checks.insert(key, Instant::now());
                }
                Err(TokenError::Refused(why)) => return Err(why),
                Err(e) => {
                    tracing::warn!(user_id, provider = %provider, error = %e, "upstream session could not be checked; access continues");
                }
            }
        }
        Ok(())
    }

    /// Asks the upstream: a refresh when Grantline holds a refresh token, else userinfo with
    /// the access token. A refusal deprovisions.
    async fn confirm_upstream(
        &self,
        user_id: &str,
        provider: &str,
        now: i64,
    ) -> Result<(), TokenError> {
        let fed = self.fed()?;
        let tokens = self.stored_upstream_tokens(fed, user_id, provider).await?;
        let upstream = fed
            .upstream(provider)
            .await
            .map_err(TokenError::Unavailable)?;
        let result = match &tokens.refresh_token {
            Some(r) => match upstream.refresh(r, now).await {
                Ok(fresh) => {
                    self.keep_upstream_tokens(user_id, provider, &fresh).await?;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            // An access token that expired by itself says nothing about the person.
            None if tokens.expires_at.is_some_and(|e| e <= now) => Err(RefreshError::Unavailable(
                "the upstream access token expired and there is no refresh token".into(),
            )),
            None => upstream.still_valid(&tokens.access_token).await,
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
