//! Liveness and readiness. `/healthz` says the process answers; `/readyz` says whether this
//! instance should be sent traffic: its schema is current, the ledger can be written (the
//! writer's probe, see [`grantline_store::Ledger::probe`]), the projection has read the store
//! recently, and the checkpoint key is loaded and still the one the ledger has in force. Both
//! answer JSON; `/readyz` answers 503 while any check fails. The background loop probes the
//! ledger and logs one line per change.

use crate::app::App;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Mutex;

/// What this process last learnt about its own health.
#[derive(Default)]
pub struct Health {
    /// Why the last write probe failed (cleared when one succeeds).
    probe_error: Mutex<Option<String>>,
    /// Readiness as last logged, so each change is logged once.
    logged: Mutex<Option<bool>>,
    /// The last readiness `/readyz` answered anyone on the main listener, and when: reused
    /// for [`PUBLIC_READINESS_REUSE`], so that callers nobody authenticated cannot make the
    /// database read at their own rate.
    public: Mutex<Option<(std::time::Instant, Readiness)>>,
    /// Held while one anonymous `/readyz` evaluates readiness: the others wait for its answer
    /// rather than each reading the database (most when the database is slow).
    evaluating: tokio::sync::Mutex<()>,
}

/// How long a readiness evaluated for an anonymous `/readyz` answers the next ones.
pub const PUBLIC_READINESS_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Checks,
}

#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    pub migrations: Check,
    pub ledger: Check,
    pub projection: Check,
    pub checkpoint_key: Check,
    /// Whether the server still takes connections: not once it has been told to stop (the
    /// metrics listener, where probes may point, answers until the very end).
    pub serving: Check,
}

/// One check: whether it holds, and what was seen.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(ok: bool, detail: impl Into<String>) -> Check {
        Check {
            ok,
            detail: detail.into(),
        }
    }
}

impl Readiness {
    /// The failing checks, as one line for the log.
    pub fn reasons(&self) -> String {
        let c = &self.checks;
        [
            ("migrations", &c.migrations),
            ("ledger", &c.ledger),
            ("projection", &c.projection),
            ("checkpoint_key", &c.checkpoint_key),
            ("serving", &c.serving),
        ]
        .iter()
        .filter(|(_, c)| !c.ok)
        .map(|(name, c)| format!("{name}: {}", c.detail))
        .collect::<Vec<_>>()
        .join("; ")
    }
}

/// Whether `own_key_id` is the checkpoint key the ledger has in force. After a rotation
/// (`grantline key rotate`, which wants every server stopped) a process still holding the
/// old key would sign checkpoints that verify as forged: it must not start, and a running one
/// is not ready. `Err` says which key is in force since when.
pub fn checkpoint_key_in_force(
    state: &grantline_state::State,
    own_key_id: &str,
) -> Result<(), String> {
    let in_force = state
        .signing_keys
        .values()
        .find(|k| k.purpose == grantline_ledger::KeyPurpose::Checkpoint && !k.retired);
    match in_force {
        Some(k) if k.key_id != own_key_id => Err(format!(
            "the ledger's checkpoint key is {} since a rotation at {}, but this process holds \
             key {own_key_id}: use the current key files of the data directory that rotated \
             them (docs/operations.md, \"Rotating keys\")",
            k.key_id, k.introduced_at
        )),
        _ => Ok(()),
    }
}

impl App {
    /// Runs the write probe and remembers its outcome for `/readyz`.
    pub async fn probe_ledger(&self) {
        let outcome = self.ledger.probe().await;
        if let Ok(mut e) = self.health.probe_error.lock() {
            *e = outcome.err().map(|e| e.to_string());
        }
    }

    /// Evaluates every readiness check (two small reads; no write).
    pub async fn readiness(&self) -> Readiness {
        let migrations = match self.store().pending_migrations().await {
            Ok(p) if p.is_empty() => Check::new(true, "all applied"),
            Ok(p) => Check::new(false, format!("not applied: {p:?}")),
            Err(e) => Check::new(false, format!("cannot read the schema: {e}")),
        };
        let ledger = if self.ledger.healthy() {
            Check::new(true, "writable")
        } else {
            let why = self
                .health
                .probe_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_else(|| "the last commit failed".into());
            Check::new(false, format!("cannot be written: {why}"))
        };
        let folded = self.projection.seq();
        let since = self.projection.since_read();
        let projection = match self.store().head().await {
            Ok(head) => {
                let head = head.map_or(0, |h| h.0);
                let detail = format!(
                    "seq {folded} of {head}, store read {:.1} s ago",
                    since.as_secs_f64()
                );
                Check::new(self.projection.fresh(), detail)
            }
            Err(e) => Check::new(false, format!("cannot read the ledger head: {e}")),
        };
        let checkpoint_key = if self.checkpoint_verifier.is_empty() {
            Check::new(false, "no checkpoint key loaded")
        } else {
            let own = &self.checkpoint_key_id;
            match checkpoint_key_in_force(&self.projection.read(), own) {
                Ok(()) => Check::new(true, self.checkpoint_verifier.clone()),
                Err(why) => Check::new(false, why),
            }
        };
        let serving = if self.draining.is_cancelled() {
            Check::new(false, "stopping: no new connections are taken")
        } else {
            Check::new(true, "taking connections")
        };
        let checks = Checks {
            migrations,
            ledger,
            projection,
            checkpoint_key,
            serving,
        };
        Readiness {
            ready: checks.migrations.ok
                && checks.ledger.ok
                && checks.projection.ok
                && checks.checkpoint_key.ok
                && checks.serving.ok,
            checks,
        }
    }

    /// Logs readiness when it differs from what was last logged (one line per change).
    pub async fn log_readiness_change(&self) {
        let now = self.readiness().await;
        let Ok(mut logged) = self.health.logged.lock() else {
            return;
        };
        if *logged == Some(now.ready) {
            return;
        }
        *logged = Some(now.ready);
        if now.ready {
            tracing::info!("ready");
        } else {
            tracing::warn!(reasons = %now.reasons(), "not ready");
        }
    }
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /readyz` on the metrics listener: 200 when every check holds, 503 otherwise; the body
/// names each check and what it saw.
pub async fn readyz(State(app): State<App>) -> Response {
    let r = app.readiness().await;
    answer(r.ready, serde_json::to_value(&r).unwrap_or_default())
}

/// `GET /readyz` on the main listener, which anyone can reach: the same status and which
/// checks hold, but what each saw (database errors with hosts and paths, migration names,
/// the ledger's head, the keys) only with the metrics token (`Authorization: Bearer`), as
/// on the metrics listener.
pub async fn readyz_public(State(app): State<App>, headers: axum::http::HeaderMap) -> Response {
    if crate::metrics::bearer_is_token(&app, &headers) {
        let r = app.readiness().await;
        return answer(r.ready, serde_json::to_value(&r).unwrap_or_default());
    }
    let recent = || {
        app.health.public.lock().ok().and_then(|p| {
            p.as_ref()
                .filter(|(at, _)| at.elapsed() < PUBLIC_READINESS_REUSE)
                .map(|(_, r)| r.clone())
        })
    };
    let r = match recent() {
        Some(r) => r,
        None => {
            let _one = app.health.evaluating.lock().await;
            // Another caller may have evaluated it while this one waited.
            match recent() {
                Some(r) => r,
                None => {
                    let r = app.readiness().await;
                    if let Ok(mut p) = app.health.public.lock() {
                        *p = Some((std::time::Instant::now(), r.clone()));
                    }
                    r
                }
            }
        }
    };
    let c = &r.checks;
    let ok = |c: &Check| serde_json::json!({"ok": c.ok});
    let body = serde_json::json!({"ready": r.ready, "checks": {
        "migrations": ok(&c.migrations),
        "ledger": ok(&c.ledger),
        "projection": ok(&c.projection),
        "checkpoint_key": ok(&c.checkpoint_key),
        "serving": ok(&c.serving),
    }});
    answer(r.ready, body)
}

fn answer(ready: bool, body: serde_json::Value) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}
