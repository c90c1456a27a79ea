//! Starting the application: the ledger and its writer, the state folded from it, keys, the
//! bootstrap admin and the configured clients.

use crate::app::{App, Inner, Options};
use crate::cimd::Fetcher;
use crate::projection::Projection;
use crate::signin::PasswordSignIn;
use anyhow::{Context, Result};
use grantline_ledger::{KeyPurpose, Recorded};
use grantline_oauth::tokens::JwtSigner;
use grantline_state::State;
use grantline_store::{Credentials, Keyring, Ledger};
use std::sync::Arc;
use std::time::Duration;

impl App {
    /// Opens the ledger, rebuilds the state, and makes sure keys, the bootstrap admin and the
    /// configured clients are recorded.
    pub async fn start(opts: Options) -> Result<App> {
        // A server reads every secret it is given before it opens anything: one that is
        // missing stops it here, with its name. Other commands read none.
        let secrets = if opts.serving {
            opts.config.secrets()?
        } else {
            Vec::new()
        };
        let projection = Arc::new(Projection::new(State::default()));
        let mounts = crate::gateway::Mounts::from_config(&opts.config, &opts.config.public_url())?;
        let metrics = Arc::new(crate::metrics::Metrics::new(
            mounts.by_name.keys().cloned(),
            if opts.serving {
                opts.config.metrics.token()?
            } else {
                None
            },
        ));
        let hook = projection.clone();
        let counted = metrics.clone();
        let mut ledger_options = opts.ledger.clone();
        ledger_options.on_commit = Some(Arc::new(move |events: &[Recorded]| {
            counted.observe_events(events);
            hook.offer(events)
        }));
        let timed = metrics.clone();
        ledger_options.on_group_commit = Some(Arc::new(move |c: &grantline_store::GroupCommit| {
            timed.observe_commit(c)
        }));
        // No checkpoint until the key in force is checked below.
        ledger_options.sign_after_key_check = true;
        // After a rotation, the new key resumes the tree from a checkpoint of a key this data
        // directory has used, not from any row the database holds.
        ledger_options.resume_keys = grantline_store::keyfile::key_history(&opts.data_dir)
            .context("the checkpoint key history")?;
        // Events are stamped by the clock every decision reads, so a test that moves it moves
        // both (a benchmark's synthetic history brings its own).
        let clock = Arc::new(crate::clock::Clock::default());
        if ledger_options.clock.is_none() {
            let c = clock.clone();
            ledger_options.clock = Some(Arc::new(move || c.now()));
        }
        // A key is made on a ledger's first start only: one made for a ledger that has
        // history would sign checkpoints that verify as forged.
        if grantline_store::keyfile::load_signer(&opts.data_dir)
            .context("checkpoint signing key")?
            .is_none()
        {
            refuse_a_new_key_for_history(&opts.database, &opts.data_dir).await?;
        }
        let signer = grantline_store::keyfile::load_or_create_signer(
            &opts.data_dir,
            &std::env::var("GRANTLINE_LEDGER_ORIGIN")
                .unwrap_or_else(|_| grantline_store::keyfile::DEFAULT_ORIGIN.to_string()),
        )
        .context("checkpoint signing key")?;
        let own_verifier = signer.verifier();
        let checkpoint_key = *signer.verifier().public_key();
        let checkpoint_verifier = signer.verifier().to_string();
        let checkpoint_key_id = signer.verifier().key_id_hex();
        let snapshots = crate::snapshots::Snapshots::in_data_dir(&opts.data_dir, &signer);
        let ledger = Ledger::open(&opts.database, signer, ledger_options)
            .await
            .with_context(|| format!("opening the ledger at {}", opts.database.display()))?;
        if let Some(state) = snapshots.newest_valid(ledger.store(), None).await {
            projection.seed(state);
        }
        projection.catch_up(ledger.store()).await?;
        // After a rotation only the key the ledger names may sign: a server (or command)
        // holding another key — stale key files, another instance not updated — would make
        // every later checkpoint look forged.
        let in_force =
            crate::health::checkpoint_key_in_force(&projection.read(), &checkpoint_key_id);
        if let Err(why) = in_force {
            ledger.shutdown().await;
            anyhow::bail!(why);
        }
        // Before any rotation the ledger names no key: the one that signed its newest
        // checkpoint is the one in force.
        let rotated = projection
            .read()
            .signing_keys
            .values()
            .any(|k| k.purpose == grantline_ledger::KeyPurpose::Checkpoint);
        if !rotated
            && let Some(newest) = ledger.store().checkpoints().await?.last()
            && grantline_ledger::open_note(&newest.note, std::slice::from_ref(&own_verifier))
                .is_err()
        {
            ledger.shutdown().await;
            anyhow::bail!(
                "this process holds checkpoint key {checkpoint_key_id}, but the ledger's \
                 checkpoints are signed by another key: use the checkpoint.key (or \
                 GRANTLINE_CHECKPOINT_KEY) of the data directory that signed them"
            );
        }
        // Checked through the folded seq; the writer reads any rotation after it.
        ledger.key_checked_through(projection.seq());
        let access_key_in_use = projection
            .read()
            .signing_keys
            .values()
            .any(|k| k.purpose == grantline_ledger::KeyPurpose::AccessToken);
        let signing = crate::keys::load_or_create(&opts.data_dir, access_key_in_use)?;
        let mac_key = crate::keys::mac_key(&signing);
        let identity = JwtSigner::new(crate::keys::identity_key(&signing));
        let jwt = JwtSigner::new(signing);
        // A retired access-token key would sign tokens, assertions and sessions nobody
        // accepts once the JWKS drops it: a rotation that did not put the new one in place.
        if projection
            .read()
            .signing_keys
            .get(&jwt.kid)
            .is_some_and(|k| k.retired)
        {
            ledger.shutdown().await;
            anyhow::bail!(
                "the access-token key of this data directory ({}) was retired by a key rotation \
                 that did not put the new one in place: run `grantline key rotate` again to \
                 finish it",
                jwt.kid
            );
        }
        let config = opts.config;
        let public_url = config.public_url();
        let live = crate::reload::Live::build(config.clone(), &public_url, config.lifetimes())?;
        let metadata_documents = Fetcher::new(config.metadata_documents.clone())?;
        let store = ledger.store().clone();
        let (audit, indexer) = if config.audit.enabled && opts.serving {
            let dir = config
                .audit
                .index_dir
                .clone()
                .unwrap_or_else(|| opts.data_dir.join("audit-index"));
            let (service, indexer) =
                crate::audit::AuditService::open(&store, Keyring::new(&store), dir.clone())
                    .await
                    .with_context(|| format!("opening the audit index in {}", dir.display()))?;
            (Some(service), Some(indexer))
        } else {
            (None, None)
        };
        let federation = if opts.serving && !config.identity_providers.is_empty() {
            Some(Arc::new(
                crate::federation::Federation::start(
                    &config.identity_providers,
                    grantline_store::Federation::new(&store),
                    config.login.start_without_providers,
                )
                .await?,
            ))
        } else {
            None
        };
        let app = App(Arc::new(Inner {
            subtrees: Default::default(),
            federation,
            audit,
            health: Default::default(),
            metrics,
            sinks: Default::default(),
            data_dir: opts.data_dir,
            keyring: Keyring::new(&store),
            credentials: Credentials::new(&store),
            ledger,
            projection,
            jwt,
            identity,
            checkpoint_key,
            checkpoint_verifier,
            checkpoint_key_id,
            snapshots,
            mac_key,
            public_url,
            live: std::sync::RwLock::new(Arc::new(live)),
            reloading: Default::default(),
            secrets,
            metadata_documents,
            signin: opts
                .sign_in
                .clone()
                .unwrap_or_else(|| Arc::new(PasswordSignIn::new(Credentials::new(&store)))),
            login_throttle: Default::default(),
            registrations: crate::throttle::AddressLimiter::new(
                config.registration.per_address_per_hour,
                config.registration.total_per_hour,
                3600,
            ),
            document_intake: crate::throttle::AddressLimiter::new(
                config.metadata_documents.per_address_per_hour,
                config.metadata_documents.total_per_hour,
                3600,
            ),
            document_updates: crate::throttle::AddressLimiter::new(
                config.metadata_documents.updates_per_client_per_day,
                0,
                86_400,
            ),
            pat_creations: crate::throttle::AddressLimiter::new(
                crate::throttle::PAT_CREATIONS_PER_USER_PER_HOUR,
                0,
                3600,
            ),
            token_issues: crate::throttle::AddressLimiter::new(
                config.oauth.tokens_per_hour,
                0,
                3600,
            ),
            sign_ins: crate::throttle::AddressLimiter::new(
                crate::throttle::SIGN_INS_PER_USERNAME,
                0,
                crate::throttle::WINDOW_SECS,
            ),
            exchanged_assertions: Default::default(),
            pat_decisions: Default::default(),
            refusals: Default::default(),
            audit_refusals: Default::default(),
            demo: Default::default(),
            rate_limiter: Default::default(),
            upstream_in_flight: grantline_gateway::inflight::InFlight::new(
                config.server.upstream_exchanges_per_caller,
                config
                    .server
                    .max_connections
                    .unwrap_or_else(crate::connections::default_max_connections),
            ),
            rate_limit_flush: Default::default(),
            exchanges: tokio_util::task::TaskTracker::new(),
            calls_in_flight: Default::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            draining: tokio_util::sync::CancellationToken::new(),
            clock,
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
        if let Some(indexer) = indexer {
            app.start_audit(indexer);
        }
        if opts.serving {
            app.start_sinks()?;
        }
        app.record_signing_key().await?;
        crate::bootstrap::admin(&app).await?;
        // The server records the configured clients; a command run beside it leaves them as
        // the server recorded them (it may not hold their secrets, and a `[[clients]]` change
        // takes a restart of the server, not any command).
        if opts.serving {
            crate::bootstrap::config_clients(&app).await?;
            crate::bootstrap::lifetimes(&app).await?;
            crate::bootstrap::policies(&app).await?;
        }
        Ok(app)
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
}

/// Refuses to make a checkpoint key for a ledger that already holds events: its checkpoints
/// were signed by a key this data directory lacks.
async fn refuse_a_new_key_for_history(
    database: &grantline_store::Database,
    data_dir: &std::path::Path,
) -> Result<()> {
    if let grantline_store::Database::Sqlite(path) = database
        && !path.exists()
    {
        return Ok(());
    }
    let store = grantline_store::Store::connect(database, false)
        .await
        .with_context(|| format!("opening the ledger at {}", database.display()))?;
    // A database without the ledger's tables yet (migrations not run) has no history; any
    // other failure is the ledger's to report when it opens (and a key that does not match
    // the checkpoints is refused after it has).
    let head = store.head().await;
    store.close().await;
    if let Ok(Some((seq, _))) = head {
        anyhow::bail!(
            "the ledger at {} already holds {seq} events, but no checkpoint key is here ({} or \
             ${}): a new key would sign checkpoints that verify as forged. Copy checkpoint.key \
             (and access-token.key) from the data directory that made them (docs/operations.md, \
             \"Keys\")",
            database.display(),
            grantline_store::keyfile::key_path(data_dir).display(),
            grantline_store::keyfile::KEY_ENV
        );
    }
    Ok(())
}
