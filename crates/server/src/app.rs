//! The application: what every handler shares, and the decide → append → apply loop every
//! handler goes through. Starting it is `startup.rs`; its background loop `background.rs`; its
//! error `error.rs`; a request's context `context.rs`.

use crate::cimd::Fetcher;
use crate::config::Config;
pub use crate::error::AppError;
use crate::projection::Projection;
use crate::signin::SignIn;
use grantline_ledger::{Append, NewEvent, Recorded, Timestamp};
use grantline_oauth::register::Policy;
use grantline_oauth::tokens::JwtSigner;
use grantline_oauth::{Decision, OAuthError, Settings};
use grantline_state::State;
use grantline_store::{Credentials, Keyring, Ledger, LedgerOptions, Store, StoreError};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

/// How the server was started.
#[derive(Clone)]
pub struct Options {
    pub config: Config,
    pub data_dir: PathBuf,
    pub database: grantline_store::Database,
    pub ledger: LedgerOptions,
    /// A server, as opposed to a one-off command: it keeps this instance's audit index, runs
    /// the push sinks, and records the configured policy (a command run without the server's
    /// configuration must not record its defaults over it).
    pub serving: bool,
    /// How local users sign in; `None`: argon2id hashes in `user_credentials`
    /// ([`crate::signin::PasswordSignIn`]).
    pub sign_in: Option<Arc<dyn SignIn>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database)
            .field("ledger", &self.ledger)
            .field("serving", &self.serving)
            .field(
                "sign_in",
                &self.sign_in.as_ref().map(|s| s.method().to_string()),
            )
            .finish()
    }
}

/// Shared by every handler.
pub struct Inner {
    pub config: Config,
    /// Subtree roots kept between inclusion and consistency proofs.
    pub subtrees: grantline_audit::proof::Subtrees,
    pub data_dir: PathBuf,
    pub ledger: Ledger,
    pub projection: Arc<Projection>,
    pub keyring: Keyring,
    pub credentials: Credentials,
    pub jwt: JwtSigner,
    /// Signs the identity assertions sent to upstream MCP servers (a key of its own).
    pub identity: JwtSigner,
    pub checkpoint_key: ed25519_dalek::VerifyingKey,
    /// The same key as a C2SP verifier key (`name+keyid+base64`).
    pub checkpoint_verifier: String,
    /// Its key id (hex), to compare with the key the ledger has in force.
    pub checkpoint_key_id: String,
    /// Where this process's state snapshots go, tagged under the checkpoint key.
    pub snapshots: crate::snapshots::Snapshots,
    pub mac_key: [u8; 32],
    /// The configured public URL (no trailing slash): the issuer unless forwarded headers say
    /// otherwise.
    pub public_url: String,
    /// The reloadable policy in force: resources (and so the gateway's mounts and the
    /// settings), roles, rate limits, registration. See `reload.rs`.
    pub(crate) live: std::sync::RwLock<Arc<crate::reload::Live>>,
    /// Held while a reload runs: one at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// The secrets read at start (`Config::secrets`, a digest each): a reload that would
    /// change one is refused, since each is read at start only. Empty unless serving.
    pub(crate) secrets: Vec<(String, blake3::Hash)>,
    pub metadata_documents: Fetcher,
    pub signin: Arc<dyn SignIn>,
    pub login_throttle: crate::throttle::LoginThrottle,
    /// Registrations per source address.
    pub registrations: crate::throttle::AddressLimiter,
    /// New metadata-document clients per source address.
    pub document_intake: crate::throttle::AddressLimiter,
    /// Changes of each metadata-document client taken in (`client.updated`), per client id:
    /// anyone can edit a document of their own, and each change is an event kept for ever.
    pub document_updates: crate::throttle::AddressLimiter,
    /// Personal access tokens a user makes on the account page, per user id: each is an event
    /// and an entry of the state kept for good, and a script holding one session could
    /// otherwise make and revoke them without end.
    pub pat_creations: crate::throttle::AddressLimiter,
    /// Tokens issued at the token endpoint per user and client, or per machine client
    /// (`[oauth] tokens_per_hour`).
    pub token_issues: crate::throttle::AddressLimiter,
    /// Identity assertions exchanged on this instance: each is good for one exchange.
    pub exchanged_assertions: crate::spent::Spent,
    /// Sign-ins on the sign-in page per username (see `throttle::SIGN_INS_PER_USERNAME`).
    pub sign_ins: crate::throttle::AddressLimiter,
    /// One personal access token decided and appended at a time on this instance: the limit
    /// of live tokens per user is counted on a state holding every token this instance made
    /// (a token's events touch no stream that another creation expects).
    pub pat_decisions: tokio::sync::Mutex<()>,
    /// Windows of refused OAuth requests already on the ledger (`oauth.refused`).
    pub refusals: crate::refusal_window::RefusalLog,
    /// Windows of refused readings of the audit trail already on the ledger
    /// (`authorization.denied`, per reader and reason).
    pub audit_refusals: crate::refusal_window::RefusalLog<(String, &'static str)>,
    /// The built-in demo MCP server.
    pub demo: crate::demo::Demo,
    /// For upstream MCP servers: no redirects, no cookies.
    pub upstream_http: reqwest::Client,
    pub rate_limiter: grantline_gateway::ratelimit::RateLimiter,
    /// Exchanges with upstream MCP servers open now, per caller and in all.
    pub upstream_in_flight: grantline_gateway::inflight::InFlight,
    /// Failures to record the rate limiter's closed windows, logged once a run.
    pub rate_limit_flush: std::sync::Mutex<grantline_store::Failing>,
    /// Gateway exchanges in flight: shutdown waits for them so their outcomes are recorded.
    pub exchanges: tokio_util::task::TaskTracker,
    /// The gateway's watched calls in flight, for the caller's cancellations.
    pub calls_in_flight: Arc<crate::gateway::CallsInFlight>,
    /// Set at shutdown: the background loop finishes its round and stops.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Cancelled when the server is told to stop, before it drains its connections: relayed
    /// event streams, which would otherwise never finish, end then ([`crate::serve`]).
    pub draining: tokio_util::sync::CancellationToken,
    /// What every decision takes as now.
    pub clock: Arc<crate::clock::Clock>,
    /// This instance's audit index (absent when `[audit] enabled = false`).
    pub audit: Option<crate::audit::AuditService>,
    /// The push sinks this instance runs.
    pub sinks: crate::sinks::Sinks,
    /// This instance's Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What the write probe and readiness last found.
    pub health: crate::health::Health,
    /// Upstream identity providers (absent when none is configured, or not serving).
    pub federation: Option<Arc<crate::federation::Federation>>,
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

impl App {
    pub fn store(&self) -> &Store {
        self.ledger.store()
    }

    /// Whether the user must sign in through their identity provider before a password of
    /// theirs is taken again: they are linked to one, and their sessions were ended (a
    /// deprovisioning, a containment, a password set, their own "revoke everything") after
    /// their last sign-in.
    pub fn needs_provider_sign_in(&self, user_id: &str) -> bool {
        self.projection
            .read()
            .users
            .get(user_id)
            .is_some_and(|u| !u.links.is_empty() && u.sessions_ended_seq > u.last_login_seq)
    }

    /// For a right password of a user linked to an identity provider: whether the providers
    /// that are asked at each refresh (`check_upstream_on_refresh`) still accept the person
    /// (a refusal deprovisions them, as at a refresh). Unlinked users, and providers not
    /// asked, pass.
    pub async fn upstream_still_accepts(&self, user_id: &str) -> bool {
        let linked = self
            .projection
            .read()
            .users
            .get(user_id)
            .is_some_and(|u| !u.links.is_empty());
        if !linked {
            return true;
        }
        let now = self.now().0 / 1_000_000;
        self.check_upstream_session(user_id, now).await.is_ok()
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The subject a request's metadata is sealed under: the user's while they have a key
    /// (known, not erased), else `otherwise` (the client's). An erased user's key is gone:
    /// sealing under it fails as if the key store did, and a request about their old tokens
    /// would be answered 503 instead of being refused (or accepted) by its decider.
    pub fn sealing_subject(
        &self,
        user: Option<&str>,
        otherwise: impl FnOnce() -> String,
    ) -> String {
        match user {
            Some(u)
                if self
                    .projection
                    .read()
                    .users
                    .get(u)
                    .is_some_and(|x| !x.erased) =>
            {
                grantline_ledger::pii::user_subject(u)
            }
            _ => otherwise(),
        }
    }

    /// The settings for an issuer: the configured one, or one derived from forwarded headers.
    pub fn settings_for(&self, issuer: &str) -> Arc<Settings> {
        let live = self.live();
        if issuer == live.settings.issuer {
            return live.settings.clone();
        }
        Arc::new(Settings {
            issuer: issuer.to_string(),
            resources: live.config.resource_defs(issuer).unwrap_or_default(),
            lifetimes: live.settings.lifetimes.clone(),
        })
    }

    /// What each HTTP connection is held to (`[server]`; not reloaded).
    pub fn connection_limits(&self) -> crate::connections::Limits {
        crate::connections::Limits {
            read_timeout: std::time::Duration::from_secs(self.config.server.read_timeout_secs),
            max_connections: self
                .config
                .server
                .max_connections
                .unwrap_or_else(crate::connections::default_max_connections),
        }
    }

    /// The configured settings (as last reloaded).
    pub fn settings(&self) -> Arc<Settings> {
        self.live().settings.clone()
    }

    /// The registration policy in force.
    pub fn registration_policy(&self) -> Policy {
        self.live().registration.clone()
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
                let _decide = tracing::info_span!("decide", attempt = attempts).entered();
                let state = self.projection.read();
                decide(&state)
            };
            if decision.append.events.is_empty() {
                return Ok((decision.outcome, Vec::new()));
            }
            let events = decision.append.events.len();
            let appended = self
                .ledger
                .append(decision.append)
                .instrument(tracing::info_span!("append", events))
                .await;
            match appended {
                Ok(recorded) => {
                    // The events are durable: the decision is the answer. A state that cannot
                    // follow at once (the database read back fails) must not turn it into a
                    // 503 — a client retrying a code exchange it was in fact granted would be
                    // taken for a replay and lose the family.
                    self.follow(&recorded).await;
                    return Ok((decision.outcome, recorded));
                }
                Err(StoreError::Conflict { .. }) if attempts < 8 => {
                    self.projection.catch_up(self.store()).await?;
                }
                // Logged once a run (`error::failing_closed`), here and where it is answered.
                Err(e) => {
                    if !matches!(e, StoreError::Conflict { .. }) {
                        crate::error::failing_closed(&e.to_string());
                    }
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
        let span = tracing::info_span!("append", events = events.len());
        let recorded = match self
            .ledger
            .append(Append::new(events))
            .instrument(span)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, StoreError::Conflict { .. }) {
                    crate::error::failing_closed(&e.to_string());
                }
                return Err(e.into());
            }
        };
        self.follow(&recorded).await;
        Ok(recorded)
    }

    /// Waits until the state has folded `recorded`, which is durable: a failure to read it
    /// back is logged, not returned (what was recorded happened; reporting it as failed would
    /// make a retry do it twice). The state follows at its next catch-up.
    async fn follow(&self, recorded: &[Recorded]) {
        crate::error::failed_closed_no_more();
        if let Some(last) = recorded.last()
            && let Err(e) = self.projection.wait_for(last.seq(), self.store()).await
        {
            tracing::warn!(
                error = %e,
                seq = last.seq(),
                "recorded, but the state could not read it back yet; answering as recorded"
            );
        }
    }
}
