//! What the gateway writes to the ledger about one request: the events come from
//! `grantline_gateway::record`; this wraps them with the request's context and appends them.

use crate::app::App;
use crate::context::RequestContext;
use grantline_gateway::record::Request;
pub use grantline_gateway::record::{Call, Read, Words};
use grantline_gateway::{Caller, Denial};
use grantline_ledger::{NewEvent, ToolOutcome};
use serde_json::Value;
use std::time::Instant;

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
    fn request(&self) -> Request<'_> {
        Request {
            request_id: &self.ctx.request_id,
            trace_id: self.ctx.trace_id.as_deref(),
            resource: &self.resource,
            caller: &self.caller,
            session_id: self.session_id.as_deref(),
        }
    }

    fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// `tool.call_started`: written before the call goes upstream.
    pub fn started(&self, call: &Call) -> NewEvent {
        self.request().started(call)
    }

    /// `tool.called`: the outcome of a call.
    pub fn called(
        &self,
        call: &Call,
        outcome: ToolOutcome,
        reason: Option<String>,
        error_code: Option<i64>,
    ) -> NewEvent {
        self.request()
            .called(call, outcome, reason, error_code, self.elapsed_us())
    }

    /// `tool.listed`: a listing and how many tools the caller was shown.
    pub fn listed(&self, outcome: ToolOutcome, tools_returned: u32) -> NewEvent {
        self.request()
            .listed(outcome, tools_returned, self.elapsed_us())
    }

    /// `content.read`: written before the read goes upstream.
    pub fn read(&self, read: &Read) -> NewEvent {
        self.request().read(read)
    }

    /// `authorization.denied` for a read above the caller's authority.
    pub fn refused(&self, method: &str, d: &Denial) -> NewEvent {
        self.request().refused(method, d)
    }

    /// `tool.called` (denied) and `authorization.denied` for a call above the caller's authority.
    pub fn denied(&self, call: &Call, d: &Denial) -> Vec<NewEvent> {
        self.request().denied(call, d, self.elapsed_us())
    }

    /// Appends and waits until durable.
    pub async fn record(&self, events: Vec<NewEvent>) -> Result<(), crate::app::AppError> {
        self.app.append(events).await.map(|_| ())
    }
}
