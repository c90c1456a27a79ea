//! What let a request through, asked again later. A request is judged when it arrives, but a
//! tool call may wait for its tool's annotations before it is sent, and an event stream (the
//! server's own, a call's, any relayed one) may stay open for hours: a revocation, an expiry,
//! a disabled user or a role taken away by a reload must reach those too. A call is judged
//! again once its start is recorded (every event before it folded), and a relayed stream ends
//! within [`RECHECK`] of the answer changing.

use crate::app::App;
use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use grantline_gateway::{Caller, Denial, authenticate, authority};
use std::sync::Arc;
use std::time::Duration;

/// How often an open stream's standing is asked again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What the request needs beyond a live credential for the resource.
#[derive(Clone)]
pub enum Need {
    /// Nothing more (protocol messages, the rest of a stream whose answer was recorded).
    Live,
    /// The read scope and a role with the resource (reads, the server's own stream).
    Read { scope: String },
    /// A tool call: the scope it needs, and a role that allows the tool.
    Call { tool: String, scope: String },
}

/// The caller's credential (held in memory only, as the request held it), the resource it
/// was accepted for and what the request needs there; and what the judgement was made on.
#[derive(Clone)]
pub struct Standing {
    token: Arc<str>,
    resource: String,
    mount: String,
    default_scopes: Vec<String>,
    pub need: Need,
    /// [`crate::projection::Projection::authority`] before the request was judged.
    authority: u64,
    /// The roles and mounts in force then.
    mounts: Arc<crate::gateway::Mounts>,
    /// When it was judged.
    since: std::time::Instant,
    /// When the credential expires.
    expires_at: Option<grantline_ledger::Timestamp>,
}

/// What a request is judged on, taken before it is judged: see [`Standing::unchanged`].
pub struct JudgedOn {
    authority: u64,
    mounts: Arc<crate::gateway::Mounts>,
    since: std::time::Instant,
}

impl JudgedOn {
    pub fn now(app: &App) -> JudgedOn {
        JudgedOn {
            authority: app.projection.authority(),
            mounts: app.mounts(),
            since: std::time::Instant::now(),
        }
    }
}

impl Standing {
    pub fn new(
        token: &str,
        caller: &Caller,
        resource: &str,
        mount: &str,
        default_scopes: &[String],
        judged: JudgedOn,
    ) -> Standing {
        Standing {
            token: Arc::from(token),
            resource: resource.to_string(),
            mount: mount.to_string(),
            default_scopes: default_scopes.to_vec(),
            need: Need::Live,
            authority: judged.authority,
            mounts: judged.mounts,
            since: judged.since,
            expires_at: caller.expires_at,
        }
    }

    /// Whether nothing that could change the judgement can have happened since it was made:
    /// no event that may take authority away folded, the same roles and mounts, the
    /// credential not expired, and less than [`RECHECK`] gone. Then [`Standing::check`] would
    /// answer as the request's own check did, and need not take the state's lock to say so.
    pub fn unchanged(&self, app: &App) -> bool {
        app.projection.authority() == self.authority
            && Arc::ptr_eq(&app.mounts(), &self.mounts)
            && self.expires_at.is_none_or(|e| app.now() < e)
            && self.since.elapsed() < RECHECK
    }

    /// The same credential, needing `need`.
    pub fn needing(&self, need: Need) -> Standing {
        Standing {
            need,
            ..self.clone()
        }
    }

    /// The caller as the state knows them now, if they may still do what the request does.
    pub fn check(&self, app: &App) -> Result<Caller, Denial> {
        let caller = authenticate(
            &app.projection.read(),
            Some(&self.token),
            &self.resource,
            app.now(),
            &self.default_scopes,
        )?;
        let mounts = app.mounts();
        // Under a policy reloaded since the judgement, what the request needs is read from its
        // resource as configured now (a tool's scope may have changed), and a resource removed
        // or pointed at another upstream takes its requests with it: they were judged to go
        // where the policy in force no longer sends them.
        let reloaded = !Arc::ptr_eq(&mounts, &self.mounts);
        let now_mount = if reloaded {
            let before = self.mounts.by_name.get(&self.mount);
            match (before, mounts.by_name.get(&self.mount)) {
                (Some(b), Some(n)) if b.upstream == n.upstream => Some(n),
                _ => {
                    return Err(Denial::new(
                        grantline_gateway::challenge::DenialKind::Forbidden,
                        "role",
                        Vec::new(),
                    ));
                }
            }
        } else {
            None
        };
        match &self.need {
            Need::Live => Ok(()),
            Need::Read { scope } => {
                let scope = now_mount.map_or(scope.as_str(), |m| m.scopes.read.as_str());
                authority::check_read(&caller, &mounts.roles, &self.mount, scope)
            }
            Need::Call { tool, scope } => {
                // Only after a reload: otherwise the scope judged on is the one in force.
                let annotations = now_mount.and_then(|_| mounts.annotations(&self.mount, tool));
                let scope = now_mount.map_or(scope.as_str(), |m| {
                    m.scopes.for_tool(tool, annotations.as_ref())
                });
                authority::check_call(&caller, &mounts.roles, &self.mount, tool, scope)
            }
        }
        .map(|()| caller)
    }

    /// Resolves once the standing is lost (checked every [`RECHECK`], each stream at its own
    /// offset within the second so that many do not check at once), never before. A state
    /// that has not read the ledger for a while may miss a revocation: that ends the stream
    /// too, as it refuses new requests.
    async fn lost(self, app: App) {
        let offset = RECHECK.mul_f64(f64::from(crate::random::bytes32()[0]) / 256.0);
        let start = tokio::time::Instant::now() + RECHECK + offset;
        let mut tick = tokio::time::interval_at(start, RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !app.projection.fresh() {
                tracing::warn!("a relayed stream ended: the state cannot follow the ledger");
                return;
            }
            if let Err(d) = self.check(&app) {
                tracing::info!(
                    reason = d.reason,
                    "a relayed stream ended: its caller may no longer read it"
                );
                return;
            }
        }
    }
}

/// `r` as relayed, its body ended once `standing` is lost. A stream the client sees end is
/// one MCP allows a server to end at any time; the client connects again, and is judged anew.
pub fn while_standing(app: &App, standing: Standing, r: Response) -> Response {
    if !super::upstream::is_sse(&r) {
        return r;
    }
    let (parts, body) = r.into_parts();
    let stream = body
        .into_data_stream()
        .take_until(standing.lost(app.clone()));
    Response::from_parts(parts, Body::from_stream(stream))
}
