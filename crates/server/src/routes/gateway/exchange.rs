//! Forwarding a `tools/call` or `tools/list` and recording what came of it. Each exchange runs
//! in a task of its own (tracked, so that shutdown waits for it): a client that goes away
//! mid-call keeps neither the call's start nor its outcome off the ledger. The answer (or the
//! event of a stream that carries it) reaches the caller only once that outcome is durable;
//! an answer to any other request id is never passed on.

use super::record::{Audit, Watched};
use super::{MAX_BUFFERED, sse, unavailable_to, upstream};
use crate::gateway::Mount;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use grantline_gateway::{authority, jsonrpc};
use grantline_ledger::{NewEvent, ToolOutcome};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// The request as it goes upstream.
pub struct Outgoing {
    pub mount: Mount,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The identity assertion for the upstream.
    pub identity: String,
    /// Whose slot among the exchanges open with upstreams this is (`user:…` or `client:…`).
    pub caller_key: String,
    /// The id the watched message goes upstream under (a string of the gateway's own, see
    /// `grantline_gateway::jsonrpc::inspect_relabelled`): its answer is found by this id and
    /// given the caller's back.
    pub wire_id: String,
    /// The call's place among the calls in flight (for the caller's cancellation), given up
    /// when its outcome is recorded.
    pub in_flight: Option<crate::gateway::CallGuard>,
    /// A tool call's standing, judged again once its start is recorded: what was appended
    /// while the call waited (a revocation, a role reloaded away) is folded by then.
    pub recheck: Option<super::standing::Standing>,
    /// The resource's metadata URL, for the challenge of a refusal.
    pub metadata_url: String,
}

/// Why a call the caller cancelled has no answer (`tool.called`'s reason): the upstream took
/// the cancellation, but an MCP server may finish a call all the same (cancelling is a
/// request), so whether it did is not known.
const CANCELLED: &str = "the caller cancelled the call, and the MCP server sent no answer after it (whether the \
     call stopped is not known)";

/// How long an answer is still waited for after the caller cancelled the call (within the
/// call's deadline): an answer that comes is recorded as any other.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves [`CANCEL_GRACE`] after the call is cancelled, never if it is not. Made once per
/// exchange and handed on to the stream's pump, so the grace does not start over.
fn given_up(
    cancelled: tokio_util::sync::CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        cancelled.cancelled().await;
        tokio::time::sleep(CANCEL_GRACE).await;
    })
}

/// What a call that ended without an answer is recorded with: after the caller cancelled
/// it, that (whatever way the upstream then ended it: the stream ended or broke, no answer
/// came); else `why`.
fn without_answer<'a>(cancelled: &tokio_util::sync::CancellationToken, why: &'a str) -> &'a str {
    if cancelled.is_cancelled() {
        CANCELLED
    } else {
        why
    }
}

/// Records `start` (if any; a call is not made unless it is durable), forwards the request and
/// records the answer to `watched`; see the module docs.
pub async fn run(
    audit: Audit,
    out: Outgoing,
    watched: Watched,
    start: Option<NewEvent>,
) -> Response {
    let (tx, rx) = oneshot::channel();
    let tracker = audit.app.exchanges.clone();
    // In the request's span, so that the upstream call and the appends are its children (and
    // the `traceparent` sent upstream names the request's trace).
    tracker.spawn(
        async move {
            // Shutdown no longer waits for exchanges (a request that outlived the drain):
            // one begun now would not have its outcome recorded, so it is not begun.
            if audit.app.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = tx.send(unavailable_to(watched.id()));
                return;
            }
            if let Some(start) = start
                && audit.record(vec![start]).await.is_err()
            {
                // What cannot be recorded is not done: the upstream never sees this call.
                let _ = tx.send(unavailable_to(watched.id()));
                return;
            }
            // Judged again only if something could have changed the judgement since (the
            // common case, a call that did not wait, takes no lock here).
            if let (Some(standing), Watched::Call(call)) = (&out.recheck, &watched)
                && !standing.unchanged(&audit.app)
                && let Err(d) = standing.check(&audit.app)
            {
                tracing::info!(
                    reason = d.reason,
                    "a tool call refused when judged again at its start"
                );
                let answer = match audit.record(audit.denied(call, &d)).await {
                    Ok(()) => super::denial_response(&d, &out.metadata_url, Some(&call.id)),
                    Err(_) => unavailable_to(&call.id),
                };
                let _ = tx.send(answer);
                return;
            }
            let answer = exchange(audit, out, watched).await;
            let _ = tx.send(answer);
        }
        .in_current_span(),
    );
    rx.await.unwrap_or_else(|_| {
        (StatusCode::BAD_GATEWAY, "the gateway lost this exchange").into_response()
    })
}

async fn exchange(audit: Audit, out: Outgoing, watched: Watched) -> Response {
    let Outgoing {
        mount,
        method,
        headers,
        body,
        identity,
        caller_key,
        wire_id,
        in_flight,
        ..
    } = out;
    let wire = serde_json::Value::from(wire_id.as_str());
    let deadline = tokio::time::Instant::now() + mount.timeout;
    let cancelled = in_flight
        .as_ref()
        .map(|g| g.cancelled.clone())
        .unwrap_or_default();
    // An answer that came wins over a cancellation (`biased`).
    let mut gave_up = given_up(cancelled.clone());
    let sent = tokio::select! {
        biased;
        sent = upstream::send(&audit.app, &mount, &method, &headers, body, identity, Some(&caller_key)) => sent,
        () = &mut gave_up => return fail(&audit, &watched, CANCELLED, StatusCode::OK).await,
    };
    let resp = match sent {
        Ok(r) => r,
        // The upstream ended a call the caller cancelled (not its refusal of the assertion).
        Err(e @ (upstream::UpstreamError::Timeout | upstream::UpstreamError::Unreachable(_)))
            if cancelled.is_cancelled() =>
        {
            tracing::info!(error = %e, "a cancelled call ended without an answer");
            return fail(&audit, &watched, CANCELLED, StatusCode::OK).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream failed");
            return fail(&audit, &watched, &e.to_string(), e.status()).await;
        }
    };
    if upstream::is_sse(&resp) {
        let awaiting = Awaiting {
            wire_id,
            in_flight,
            gave_up,
        };
        return pump(audit, mount, watched, awaiting, resp, deadline);
    }
    let (parts, body) = resp.into_parts();
    let read = tokio::select! {
        biased;
        read = tokio::time::timeout_at(deadline, axum::body::to_bytes(body, MAX_BUFFERED)) => read,
        () = &mut gave_up => return fail(&audit, &watched, CANCELLED, StatusCode::OK).await,
    };
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        not_read => {
            // Late is a time-out, as an answer whose headers never came is.
            let (why, status) = match not_read {
                Err(_) => (
                    "the MCP server did not finish its answer in time",
                    StatusCode::GATEWAY_TIMEOUT,
                ),
                Ok(_) => (
                    "the MCP server's answer was too large or broken",
                    StatusCode::BAD_GATEWAY,
                ),
            };
            return fail(&audit, &watched, without_answer(&cancelled, why), status).await;
        }
    };
    // JSON the caller might read otherwise than the gateway (a key twice, a number out of
    // range) is neither judged nor passed on: a listing in it would go unfiltered. A refusal
    // that is not JSON at all (a proxy's page) goes on as it is.
    if (parts.status.is_success() || sse::json_like(&bytes)) && !sse::readable_messages(&bytes) {
        let why = "the MCP server's answer is not JSON-RPC that reads the same to every client";
        return fail(&audit, &watched, why, StatusCode::BAD_GATEWAY).await;
    }
    let answers = sse::answer_count(false, &bytes, &wire);
    if parts.status.is_success() && answers == 0 {
        let why = "the MCP server's answer does not answer this request";
        return fail(
            &audit,
            &watched,
            without_answer(&cancelled, why),
            StatusCode::BAD_GATEWAY,
        )
        .await;
    }
    if answers > 1 {
        let why = "the MCP server answered this request more than once";
        return fail(&audit, &watched, why, StatusCode::BAD_GATEWAY).await;
    }
    if sse::answers_other(false, &bytes, &wire) {
        // An answer to another request would reach the caller unrecorded and unfiltered,
        // under an error status as under a success.
        let why = "the MCP server's answer carries answers to other requests";
        return fail(&audit, &watched, why, StatusCode::BAD_GATEWAY).await;
    }
    let (out, event) = settle(
        &audit,
        &mount,
        &watched,
        &wire_id,
        false,
        &bytes,
        !parts.status.is_success(),
    );
    if audit.record(vec![event]).await.is_err() {
        return unavailable_to(watched.id());
    }
    let mut r = Response::from_parts(parts, Body::from(out));
    r.headers_mut().remove(header::CONTENT_LENGTH);
    r
}

/// The event for an exchange that brought no answer.
fn failure(audit: &Audit, watched: &Watched, reason: &str) -> NewEvent {
    match watched {
        Watched::Call(c) => audit.called(c, ToolOutcome::UpstreamError, Some(reason.into()), None),
        Watched::List(_) => audit.listed(ToolOutcome::UpstreamError, 0),
    }
}

/// Records an upstream failure and answers with a JSON-RPC error.
async fn fail(audit: &Audit, watched: &Watched, reason: &str, status: StatusCode) -> Response {
    if audit
        .record(vec![failure(audit, watched, reason)])
        .await
        .is_err()
    {
        return unavailable_to(watched.id());
    }
    let err = jsonrpc::error(watched.id(), -32002, reason, None);
    (status, axum::Json(err)).into_response()
}

/// The answer as the caller gets it (under the caller's id, a listing filtered to what the
/// caller may call), and the event recording it. `wire_id` is the id the request went
/// upstream under.
fn settle(
    audit: &Audit,
    mount: &Mount,
    watched: &Watched,
    wire_id: &str,
    is_sse: bool,
    body: &[u8],
    upstream_failed: bool,
) -> (Vec<u8>, NewEvent) {
    let wire = serde_json::Value::from(wire_id);
    match watched {
        Watched::Call(c) => {
            let code = sse::error_code(is_sse, body, &wire);
            let outcome = if upstream_failed || code.is_some() || sse::is_error(is_sse, body, &wire)
            {
                ToolOutcome::UpstreamError
            } else if sse::tool_failed(is_sse, body, &wire) {
                ToolOutcome::ToolError
            } else {
                ToolOutcome::Ok
            };
            let out = sse::restore_id(is_sse, body, wire_id, &c.id);
            (out, audit.called(c, outcome, None, code))
        }
        Watched::List(id) => {
            let (app, caller) = (&audit.app, &audit.caller);
            let mut returned = 0;
            let out = sse::rewrite_all(is_sse, body, |m| {
                if m.get("id").is_some_and(|x| jsonrpc::same_id(x, &wire)) {
                    m["id"] = id.clone();
                    app.mounts().learn(mount, m);
                    returned = jsonrpc::filter_tools(m, |tool, _| {
                        authority::listed(caller, &app.mounts().roles, &mount.name, tool)
                    });
                }
            });
            // A listing that cannot be filtered is not passed on; a refusal that is no JSON (a
            // proxy's page) goes on as it is.
            let out = match out {
                None if upstream_failed && !is_sse && !sse::json_like(body) => Some(body.to_vec()),
                out => out,
            };
            let Some(out) = out else {
                let why = "the MCP server's listing cannot be read to be filtered";
                let err = jsonrpc::error(id, -32002, why, None).to_string();
                let out = if is_sse {
                    format!("data: {err}\n\n")
                } else {
                    err
                };
                return (
                    out.into_bytes(),
                    audit.listed(ToolOutcome::UpstreamError, 0),
                );
            };
            let outcome = if upstream_failed {
                ToolOutcome::UpstreamError
            } else {
                ToolOutcome::Ok
            };
            (out, audit.listed(outcome, returned))
        }
    }
}

/// The most bytes of a stream one message to the caller's side carries: a caller that reads
/// slowly holds the channel's few messages, not as many whole events of up to
/// [`MAX_BUFFERED`] each.
const PIECE: usize = 64 << 10;

/// Passes `event` on in pieces of at most [`PIECE`] bytes (views of one buffer); `false`
/// when the caller's side has gone.
async fn send_in_pieces(tx: &mpsc::Sender<Result<Bytes, std::io::Error>>, event: Vec<u8>) -> bool {
    let event = Bytes::from(event);
    let mut at = 0;
    while at < event.len() {
        let end = (at + PIECE).min(event.len());
        if tx.send(Ok(event.slice(at..end))).await.is_err() {
            return false;
        }
        at = end;
    }
    true
}

/// What a stream's pump waits for the answer with: the id the call went upstream under, its
/// place among the calls in flight (given up once its outcome is recorded), and when to give
/// up after the caller cancelled it.
struct Awaiting {
    wire_id: String,
    in_flight: Option<crate::gateway::CallGuard>,
    gave_up: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Streams an SSE answer as it arrives. The event that answers `watched` is settled (filtered,
/// recorded) before it is passed on. If the caller goes away the stream is still read until
/// that answer is recorded; without an answer by the deadline, the failure is recorded. What
/// follows the answer is passed on until the caller or the upstream ends the stream, or the
/// server begins to stop.
fn pump(
    audit: Audit,
    mount: Mount,
    watched: Watched,
    awaiting: Awaiting,
    resp: Response,
    deadline: tokio::time::Instant,
) -> Response {
    let Awaiting {
        wire_id,
        mut in_flight,
        mut gave_up,
    } = awaiting;
    let cancelled = in_flight
        .as_ref()
        .map(|g| g.cancelled.clone())
        .unwrap_or_default();
    let (parts, body) = resp.into_parts();
    let upstream_failed = !parts.status.is_success();
    let wire = serde_json::Value::from(wire_id.as_str());
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    // Shutdown waits for this stream until its answer (or its failure) is recorded, as it
    // waits for the exchange that began it — even when the caller has gone — but not for the
    // rest of a stream the caller may keep open.
    let mut recording = Some(audit.app.exchanges.token());
    // In the request's span (see `run`): the appends it makes are the request's children.
    tokio::spawn(
        async move {
            let mut upstream = body.into_data_stream();
            let mut buf = sse::EventBuffer::default();
            let mut settled = false;
            let mut reading = true;
            let broken = |why: &str| std::io::Error::other(why.to_string());
            loop {
                while let Some(mut event) = buf.next_event() {
                    if sse::answers_other(true, &event, &wire) {
                        // A stream answers one request: an answer to another is not passed on.
                        tracing::warn!("dropped an upstream answer to another request id");
                        continue;
                    }
                    if sse::unreadable(&event) {
                        // Data that is no JSON message: the client could read it otherwise
                        // than the gateway did.
                        tracing::warn!("dropped an upstream event whose data is not JSON");
                        continue;
                    }
                    let answers = sse::answer_count(true, &event, &wire);
                    if answers > 1 || (settled && answers == 1) {
                        // One answer per request: a second one would reach the caller
                        // unrecorded.
                        tracing::warn!("dropped a second upstream answer to the same request");
                        continue;
                    }
                    if !settled && answers == 1 {
                        settled = true;
                        let (out, record) = settle(
                            &audit,
                            &mount,
                            &watched,
                            &wire_id,
                            true,
                            &event,
                            upstream_failed,
                        );
                        if audit.record(vec![record]).await.is_err() {
                            let _ = tx
                                .send(Err(broken("the audit ledger cannot record this call")))
                                .await;
                            return;
                        }
                        event = out;
                        drop(recording.take());
                        drop(in_flight.take());
                    }
                    // A caller that stops reading must not hold up the record: until the answer is
                    // settled, the deadline bounds the wait too.
                    if reading {
                        let sent = if settled {
                            send_in_pieces(&tx, event).await
                        } else {
                            tokio::time::timeout_at(deadline, send_in_pieces(&tx, event))
                                .await
                                .unwrap_or(false)
                        };
                        reading = sent;
                    }
                    if settled && !reading {
                        return;
                    }
                }
                if buf.pending() > MAX_BUFFERED {
                    let why = "an event from the MCP server is over the size limit";
                    if !settled {
                        let why = without_answer(&cancelled, why);
                        let _ = audit.record(vec![failure(&audit, &watched, why)]).await;
                    }
                    let _ = tx.send(Err(broken(why))).await;
                    return;
                }
                let next = if settled {
                    // Recorded: pass the rest on while the caller listens, until the server
                    // begins to stop (an upstream that keeps the stream open after its answer
                    // would otherwise keep it from stopping).
                    tokio::select! {
                        next = upstream.next() => next,
                        _ = tx.closed() => return,
                        _ = audit.app.draining.cancelled() => return,
                    }
                } else {
                    // An answer that came wins over the caller's cancellation (`biased`), and
                    // one is still waited for a while after it.
                    let next = tokio::select! {
                        biased;
                        next = tokio::time::timeout_at(deadline, upstream.next()) => next,
                        () = &mut gave_up => {
                            let _ = audit.record(vec![failure(&audit, &watched, CANCELLED)]).await;
                            return;
                        }
                    };
                    match next {
                        Ok(next) => next,
                        Err(_) => {
                            let why =
                                without_answer(&cancelled, "the MCP server did not answer in time");
                            let _ = audit.record(vec![failure(&audit, &watched, why)]).await;
                            let _ = tx.send(Err(broken(why))).await;
                            return;
                        }
                    }
                };
                match next {
                    Some(Ok(chunk)) => buf.push(&chunk),
                    Some(Err(e)) => {
                        if !settled {
                            let broke = format!("the stream broke: {e}");
                            let why = without_answer(&cancelled, &broke);
                            let _ = audit.record(vec![failure(&audit, &watched, why)]).await;
                        }
                        let _ = tx.send(Err(broken("the MCP server's stream broke"))).await;
                        return;
                    }
                    None => {
                        if !settled {
                            let why =
                                without_answer(&cancelled, "the stream ended without an answer");
                            let _ = audit.record(vec![failure(&audit, &watched, why)]).await;
                        }
                        // An event cut off by the end of the stream is dropped (as the SSE
                        // standard has a client do): passed on, a client that reads it anyway
                        // would get what the gateway never judged nor recorded.
                        return;
                    }
                }
            }
        }
        .in_current_span(),
    );
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = Response::from_parts(parts, Body::from_stream(stream));
    r.headers_mut().remove(header::CONTENT_LENGTH);
    r.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event goes to the caller's side in pieces of at most [`PIECE`] bytes, in order,
    /// whole; a side that has gone stops the sending.
    #[tokio::test]
    async fn an_event_is_passed_on_in_bounded_pieces() {
        let event: Vec<u8> = (0..(3 * PIECE + 17)).map(|i| (i % 251) as u8).collect();
        let (tx, mut rx) = mpsc::channel(2);
        let sending = tokio::spawn({
            let event = event.clone();
            async move { send_in_pieces(&tx, event).await }
        });
        let mut got = Vec::new();
        let mut pieces = 0;
        while let Some(piece) = rx.recv().await {
            let piece = piece.unwrap();
            assert!(!piece.is_empty() && piece.len() <= PIECE);
            got.extend_from_slice(&piece);
            pieces += 1;
        }
        assert!(sending.await.unwrap());
        assert_eq!((got, pieces), (event, 4));
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        assert!(!send_in_pieces(&tx, vec![0; 10]).await);
    }
}
