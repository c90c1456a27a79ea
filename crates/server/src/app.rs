//! The application: configuration, ledger, projection, keys, and the decide → append → apply
//! loop every handler goes through.

use crate::cimd::Fetcher;
use crate::config::Config;
use crate::projection::Projection;
use crate::signin::{PasswordSignIn, SignIn};
use anyhow::{Context, Result};
use grantline_ledger::{Append, KeyPurpose, NewEvent, Recorded, RequestMeta, Timestamp};
use grantline_oauth::register::Policy;
use grantline_oauth::tokens::JwtSigner;
use grantline_oauth::{Decision, OAuthError, Settings};
use grantline_state::State;
use grantline_store::{Credentials, Keyring, Ledger, LedgerOptions, Store, StoreError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the server was started.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Config,
    pub data_dir: PathBuf,
    pub database: grantline_store::Database,
    pub ledger: LedgerOptions,
}

/// Shared by every handler.
pub struct Inner {
    pub config: Config,
    pub data_dir: PathBuf,
    pub ledger: Ledger,
    pub projection: Arc<Projection>,
    pub keyring: Keyring,
    pub credentials: Credentials,
    pub jwt: JwtSigner,
    /// Signs the identity assertions sent to upstream MCP servers (a key of its own).
    pub identity: JwtSigner,
    pub checkpoint_key: ed25519_dalek::VerifyingKey,
    pub mac_key: [u8; 32],
    /// The configured public URL (no trailing slash): the issuer unless forwarded headers say
    /// otherwise.
    pub public_url: String,
    settings: Arc<Settings>,
    pub policy: Policy,
    pub metadata_documents: Fetcher,
    pub signin: Arc<dyn SignIn>,
    pub login_throttle: crate::throttle::LoginThrottle,
    /// Registrations per source address.
    pub registrations: crate::throttle::AddressLimiter,
    /// New metadata-document clients per source address.
    pub document_intake: crate::throttle::AddressLimiter,
    /// Windows of refused OAuth requests already on the ledger (`oauth.refused`).
    pub refusals: crate::refusals::RefusalLog,
    /// Resources behind the gateway, roles, tool annotations.
    pub mounts: crate::gateway::Mounts,
    /// The built-in demo MCP server.
    pub demo: crate::demo::Demo,
    /// For upstream MCP servers: no redirects, no cookies.
    pub upstream_http: reqwest::Client,
    pub rate_limiter: grantline_gateway::ratelimit::RateLimiter,
    /// Gateway exchanges in flight: shutdown waits for them so their outcomes are recorded.
    pub exchanges: tokio_util::task::TaskTracker,
    /// Set at shutdown: the background loop finishes its round and stops.
    pub stopping: std::sync::atomic::AtomicBool,
    /// What every decision takes as now.
    pub clock: crate::clock::Clock,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct App(pub Arc<Inner>);

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Why a request could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// The ledger could not append: fail closed.
    #[error("the ledger cannot record this request: {0}")]
    Unavailable(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::Unavailable(e.to_string())
    }
}

impl App {
    /// Opens the ledger, rebuilds the state, and makes sure keys, the bootstrap admin and the
    /// configured clients are recorded.
    pub async fn start(opts: Options) -> Result<App> {
        let projection = Arc::new(Projection::new(State::default()));
        let hook = projection.clone();
        let mut ledger_options = opts.ledger.clone();
        ledger_options.on_commit = Some(Arc::new(move |events: &[Recorded]| hook.offer(events)));
        let signer = grantline_store::keyfile::load_or_create_signer(
            &opts.data_dir,
            &std::env::var("GRANTLINE_LEDGER_ORIGIN")
                .unwrap_or_else(|_| grantline_store::keyfile::DEFAULT_ORIGIN.to_string()),
        )
        .context("checkpoint signing key")?;
        let checkpoint_key = *signer.verifier().public_key();
        let ledger = Ledger::open(&opts.database, signer, ledger_options)
            .await
            .with_context(|| format!("opening the ledger at {}", opts.database.display()))?;
        projection.catch_up(ledger.store()).await?;
        let signing = crate::keys::load_or_create(&opts.data_dir)?;
        let mac_key = crate::keys::mac_key(&signing);
        let identity = JwtSigner::new(crate::keys::identity_key(&signing));
        let jwt = JwtSigner::new(signing);
        let config = opts.config;
        let public_url = config
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.server.listen))
            .trim_end_matches('/')
            .to_string();
        let settings = Arc::new(Settings {
            issuer: public_url.clone(),
            resources: config.resource_defs(&public_url)?,
            lifetimes: config.lifetimes(),
        });
        let policy = config.registration_policy()?;
        let metadata_documents = Fetcher::new(config.metadata_documents.clone())?;
        let mounts = crate::gateway::Mounts::from_config(&config, &public_url)?;
        let store = ledger.store().clone();
        let app = App(Arc::new(Inner {
            data_dir: opts.data_dir,
            keyring: Keyring::new(&store),
            credentials: Credentials::new(&store),
            ledger,
            projection,
            jwt,
            identity,
            checkpoint_key,
            mac_key,
            public_url,
            settings,
            policy,
            metadata_documents,
            signin: Arc::new(PasswordSignIn::new(Credentials::new(&store))),
            login_throttle: Default::default(),
            registrations: crate::throttle::AddressLimiter::new(
                config.registration.per_address_per_hour,
                3600,
            ),
            document_intake: crate::throttle::AddressLimiter::new(
                config.metadata_documents.per_address_per_hour,
                3600,
            ),
            refusals: Default::default(),
            mounts,
            demo: Default::default(),
            rate_limiter: Default::default(),
            exchanges: tokio_util::task::TaskTracker::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            clock: Default::default(),
            upstream_http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            config,
        }));
        let keyring = app.keyring.clone();
        app.projection.on_erased(move |user| {
            keyring.forget(&grantline_ledger::pii::user_subject(user));
        });
        app.record_signing_key().await?;
        crate::bootstrap::admin(&app).await?;
        crate::bootstrap::config_clients(&app).await?;
        Ok(app)
    }

    pub fn store(&self) -> &Store {
        self.ledger.store()
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The settings for an issuer: the configured one, or one derived from forwarded headers.
    pub fn settings_for(&self, issuer: &str) -> Arc<Settings> {
        if issuer == self.settings.issuer {
            return self.settings.clone();
        }
        Arc::new(Settings {
            issuer: issuer.to_string(),
            resources: self.config.resource_defs(issuer).unwrap_or_default(),
            lifetimes: self.settings.lifetimes.clone(),
        })
    }

    /// The configured settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.clone()
    }

    /// Decide on the current state, append, and wait until the state has folded the events.
    /// On an optimistic-concurrency conflict (another request or instance won the race) the
    /// state is brought up to date and the decision taken again.
    pub async fn run<T>(
        &self,
        mut decide: impl FnMut(&State) -> Decision<T>,
    ) -> Result<(Result<T, OAuthError>, Vec<Recorded>), AppError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let decision = {
                let state = self.projection.read();
                decide(&state)
            };
            if decision.append.events.is_empty() {
                return Ok((decision.outcome, Vec::new()));
            }
            match self.ledger.append(decision.append).await {
                Ok(recorded) => {
                    if let Some(last) = recorded.last() {
                        self.projection.wait_for(last.seq(), self.store()).await?;
                    }
                    return Ok((decision.outcome, recorded));
                }
                Err(StoreError::Conflict { .. }) if attempts < 8 => {
                    self.projection.catch_up(self.store()).await?;
                }
                Err(e) => {
                    tracing::error!(error = %e, "ledger append failed; failing closed");
                    return Err(e.into());
                }
            }
        }
    }

    /// Reads events other processes appended when `known` says the state lacks something a
    /// request names (a client registered or a token issued by another instance moments ago).
    pub async fn catch_up_unless(&self, known: impl Fn(&State) -> bool) -> Result<(), AppError> {
        if !known(&self.projection.read()) {
            self.projection.catch_up(self.store()).await?;
        }
        Ok(())
    }

    /// Appends events that need no decision (bootstrap, admin actions).
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Recorded>, AppError> {
        let recorded = self.ledger.append(Append::new(events)).await?;
        if let Some(last) = recorded.last() {
            self.projection.wait_for(last.seq(), self.store()).await?;
        }
        Ok(recorded)
    }

    /// Request metadata for events, with address and user agent sealed under `subject`'s key.
    pub async fn request_meta(
        &self,
        ctx: &crate::http::RequestContext,
        subject: &str,
    ) -> Result<RequestMeta, AppError> {
        let seal = |v: Option<String>| async move {
            match v {
                Some(v) => self.keyring.seal(subject, &v).await.map(Some),
                None => Ok(None),
            }
        };
        Ok(RequestMeta {
            request_id: ctx.request_id.clone(),
            source_ip: seal(ctx.source_ip.clone()).await?,
            user_agent: seal(ctx.user_agent.clone()).await?,
        })
    }

    /// Records the access-token and identity-assertion keys in the ledger (once each), so that
    /// the JWKS and audits know them.
    async fn record_signing_key(&self) -> Result<()> {
        use base64::Engine;
        for (signer, purpose) in [
            (&self.jwt, KeyPurpose::AccessToken),
            (&self.identity, KeyPurpose::IdentityAssertion),
        ] {
            let public_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(signer.key.verifying_key().as_bytes());
            let (outcome, _) = self
                .run(|s| grantline_oauth::keys::introduce(s, purpose, &signer.kid, &public_key))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            outcome.map_err(|e| anyhow::anyhow!("{}", e.description))?;
        }
        Ok(())
    }

    /// Background work: catch up with other processes' events, record closed rate-limit
    /// windows, probe a failing ledger, expire unused dynamic clients. Runs until the server
    /// stops.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                if app.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                n += 1;
                if let Err(e) = app.projection.catch_up(app.store()).await {
                    tracing::warn!(error = %e, "catching up with the ledger failed");
                }
                app.flush_rate_limits().await;
                if !app.ledger.healthy() && n.is_multiple_of(8) {
                    // A checkpoint is a write through the same writer: when it succeeds the
                    // ledger is healthy again and the gateway resumes.
                    if let Err(e) = app.ledger.checkpoint().await {
                        tracing::warn!(error = %e, "the ledger is still failing");
                    }
                }
                if n.is_multiple_of(20) {
                    crate::bootstrap::expire_unused_clients(&app).await;
                }
            }
        })
    }

    /// Records the refusals of rate-limit windows that have closed: one
    /// `rate_limit.exceeded` per bucket and window.
    pub async fn flush_rate_limits(&self) {
        self.flush_rate_limits_at(self.now().0 / 1_000_000).await
    }

    /// As [`App::flush_rate_limits`], as of `now` (seconds).
    pub async fn flush_rate_limits_at(&self, now: i64) {
        let limits = self.config.rate_limits.limits();
        let closed = self.rate_limiter.drain_closed(&limits, now);
        self.record_rate_limits(closed).await;
    }

    /// At shutdown: the refusals of every window, the open ones included.
    pub async fn flush_all_rate_limits(&self) {
        let limits = self.config.rate_limits.limits();
        let all = self.rate_limiter.drain_all(&limits);
        self.record_rate_limits(all).await;
    }

    /// Appends one `rate_limit.exceeded` per window; what cannot be written now is kept for
    /// the next flush.
    async fn record_rate_limits(&self, closed: Vec<grantline_gateway::ratelimit::Exceeded>) {
        if closed.is_empty() {
            return;
        }
        let events = grantline_gateway::ratelimit::exceeded_events(&closed);
        if let Err(e) = self.append(events).await {
            tracing::warn!(error = %e, "could not record rate-limit refusals; keeping them");
            self.rate_limiter.restore(closed);
        }
    }
}
