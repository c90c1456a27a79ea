//! What the gateway writes to the ledger about one request: the events, built from what the
//! request was and what came of it.

use crate::app::App;
use crate::http::RequestContext;
use grantline_gateway::{Caller, Denial};
use grantline_ledger::{
    Actor, AuthorizationDenied, NewEvent, StreamId, ToolCallStarted, ToolCalled, ToolListed,
    ToolOutcome,
};
use serde_json::Value;
use std::time::Instant;

/// A `tools/call`: its JSON-RPC id, the tool, the digest of its arguments, the caller's intent.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: Value,
    pub tool: String,
    pub digest: String,
    pub intent: Option<String>,
}

/// The message whose answer the gateway waits for, to record (and for a listing, filter) it.
#[derive(Debug, Clone)]
pub enum Watched {
    Call(Call),
    List(Value),
}

impl Watched {
    pub fn id(&self) -> &Value {
        match self {
            Watched::Call(c) => &c.id,
            Watched::List(id) => id,
        }
    }
}

/// Everything the events of one gateway request carry.
#[derive(Clone)]
pub struct Audit {
    pub app: App,
    pub ctx: RequestContext,
    pub caller: Caller,
    pub resource: String,
    pub session_id: Option<String>,
    pub started: Instant,
}

impl Audit {
    fn actor(&self) -> Actor {
        match (&self.caller.user_id, &self.caller.client_id) {
            (Some(u), _) => Actor::User { id: u.clone() },
            (None, Some(c)) => Actor::Client { id: c.clone() },
            (None, None) => Actor::System,
        }
    }

    fn event(&self, payload: impl Into<grantline_ledger::Payload>) -> NewEvent {
        NewEvent::new(StreamId::resource(&self.resource), self.actor(), payload)
    }

    fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// `tool.call_started`: written before the call goes upstream.
    pub fn started(&self, call: &Call) -> NewEvent {
        self.event(ToolCallStarted {
            request_id: self.ctx.request_id.clone(),
            resource: self.resource.clone(),
            tool: call.tool.clone(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: self.caller.credential.clone(),
            arguments_digest: call.digest.clone(),
            intent: call.intent.clone(),
            session_id: self.session_id.clone(),
        })
    }

    /// `tool.called`: the outcome of a call.
    pub fn called(
        &self,
        call: &Call,
        outcome: ToolOutcome,
        reason: Option<String>,
        error_code: Option<i64>,
    ) -> NewEvent {
        self.event(ToolCalled {
            request_id: self.ctx.request_id.clone(),
            resource: self.resource.clone(),
            tool: call.tool.clone(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: self.caller.credential.clone(),
            outcome,
            reason,
            error_code,
            duration_us: self.elapsed_us(),
            arguments_digest: call.digest.clone(),
            intent: call.intent.clone(),
            source_ip: None,
        })
    }

    /// `tool.listed`: a listing and how many tools the caller was shown.
    pub fn listed(&self, outcome: ToolOutcome, tools_returned: u32) -> NewEvent {
        self.event(ToolListed {
            request_id: self.ctx.request_id.clone(),
            resource: self.resource.clone(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: self.caller.credential.clone(),
            outcome,
            tools_returned,
            duration_us: self.elapsed_us(),
            session_id: self.session_id.clone(),
        })
    }

    /// `tool.called` (denied) and `authorization.denied` for a call above the caller's authority.
    pub fn denied(&self, call: &Call, d: &Denial) -> Vec<NewEvent> {
        let denied = AuthorizationDenied {
            request_id: self.ctx.request_id.clone(),
            resource: self.resource.clone(),
            user_id: self.caller.user_id.clone(),
            client_id: self.caller.client_id.clone(),
            credential: Some(self.caller.credential.clone()),
            reason: d.reason.to_string(),
            required_scopes: d.required_scopes.clone(),
            method: "tools/call".into(),
            tool: Some(call.tool.clone()),
        };
        vec![
            self.called(
                call,
                ToolOutcome::Denied,
                Some(d.reason.to_string()),
                Some(-32003),
            ),
            self.event(denied),
        ]
    }

    /// Appends and waits until durable.
    pub async fn record(&self, events: Vec<NewEvent>) -> Result<(), crate::app::AppError> {
        self.app.append(events).await.map(|_| ())
    }
}
