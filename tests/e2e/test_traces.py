"""Traces over OTLP/HTTP: `grantline serve` with the standard OTEL_* variables exports to a
local OTLP/HTTP receiver (this test's, JSON encoding); the request span has its decide and
append children, a gateway call its upstream child (a tool call its decide, both appends and
the upstream call, made in a task of its own); a trusted proxy's `traceparent` is the
parent of the request span; the upstream MCP server receives the trace; and the event's request
metadata holds the trace id, by which the audit search finds it."""
import json

import requests

from conftest import Receiver, Server, Upstream
from test_backup import grantline

SECRET = "e2e-trace-service-secret-6d1f-93ab20c4e7d1"
CALL_REQUEST_ID = "trace-test-tools-call-1"


def spans_of(receiver):
    """Every span an OTLP/HTTP (JSON) receiver was sent."""
    out = []
    for path, ctype, body in receiver.bodies:
        assert path == "/v1/traces" and ctype.startswith("application/json"), (path, ctype)
        for rs in json.loads(body)["resourceSpans"]:
            service = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
            assert service["service.name"] == {"stringValue": "grantline"}, service
            for ss in rs["scopeSpans"]:
                out.extend(ss["spans"])
    return out


def descends(span, ancestor, by_id):
    """Whether `span` is `ancestor` or hangs under it."""
    while span["spanId"] != ancestor["spanId"]:
        if not span.get("parentSpanId") or span["parentSpanId"] not in by_id:
            return False
        span = by_id[span["parentSpanId"]]
    return True


def attrs(span):
    return {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}


def test_requests_are_traced_to_an_otlp_receiver_and_events_name_their_trace(tmp_path):
    receiver = Receiver()
    upstream = Upstream(tmp_path).start()
    config = f"""
[server]
trust_forwarded_headers = true

[[resources]]
name = "up"
path = "/mcp/up"
upstream = "{upstream.url}"
scopes = [{{ name = "up:read", description = "Read" }}]
write_scope = "up:read"

[[clients]]
client_id = "svc"
client_name = "Traced service"
grant_types = ["client_credentials"]
scope = "up:read"
secret_env = "GRANTLINE_E2E_SVC_SECRET"
"""
    (tmp_path / "data").mkdir()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "GRANTLINE_E2E_SVC_SECRET": SECRET,
        # Logs turned down to warnings, as in many productions: what is traced is filtered
        # apart from what is logged, so every span below is still exported.
        "GRANTLINE_LOG": "warn",
    }
    server = Server(tmp_path / "data", tmp_path / "server.log", config, env=env).start()
    try:
        # A request a trusted proxy traced already.
        parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        r = requests.post(server.base + "/oauth/token", auth=("svc", SECRET), data={
            "grant_type": "client_credentials", "scope": "up:read",
            "resource": server.base + "/mcp/up"},
            headers={"traceparent": f"00-{parent_trace}-{parent_span}-01"}, timeout=10)
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        # A gateway call, traced from here.
        r = requests.post(server.base + "/mcp/up", json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "trace-test", "version": "1"}}},
            headers={"Authorization": f"Bearer {token}",
                     "Accept": "application/json, text/event-stream"}, timeout=10)
        assert r.status_code == 200, r.text
        # A tool call: its start and outcome are appended, and it goes upstream, in a task of
        # the gateway's own; all of it belongs to the call's trace, begun here.
        r = requests.post(server.base + "/mcp/up", json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "traced"}}},
            headers={"Authorization": f"Bearer {token}", "X-Request-Id": CALL_REQUEST_ID,
                     "Accept": "application/json, text/event-stream"}, timeout=10)
        assert r.status_code == 200 and "upstream echo: traced" in r.text, r.text
    finally:
        server.stop()
        upstream.stop()
    receiver.stop()
    log = (tmp_path / "server.log").read_text()
    assert " INFO " not in log, "GRANTLINE_LOG=warn: no info lines in the log"

    spans = spans_of(receiver)
    by_id = {s["spanId"]: s for s in spans}
    requests_ = [s for s in spans if s["name"] == "request"]
    token_span = next(s for s in requests_ if attrs(s).get("route") == "/oauth/token")
    # The proxy's trace continues: same trace id, its span is the parent.
    assert token_span["traceId"] == parent_trace
    assert token_span["parentSpanId"] == parent_span
    assert attrs(token_span)["status"] in ("200", 200)
    children = {s["name"] for s in spans if s.get("parentSpanId") == token_span["spanId"]}
    assert {"decide", "append"} <= children, children

    mcp_span = next(s for s in requests_ if attrs(s).get("route") == "/mcp/{name}"
                    and attrs(s).get("request_id") != CALL_REQUEST_ID)
    assert mcp_span["traceId"] != parent_trace and not mcp_span.get("parentSpanId")
    up_spans = [s for s in spans if s["name"] == "upstream" and s["traceId"] == mcp_span["traceId"]]
    assert len(up_spans) == 1, [s["name"] for s in spans]
    assert attrs(up_spans[0])["resource"] == "up"
    # The upstream span hangs under the request span (directly or through the gateway's own).
    assert descends(up_spans[0], mcp_span, by_id)
    # The upstream MCP server was sent the trace, with the upstream span as parent.
    sent = [s["traceparent"] for s in upstream.seen() if s.get("traceparent")]
    assert f"00-{mcp_span['traceId']}-{up_spans[0]['spanId']}-01" in sent, sent

    # The tool call: decide, both appends and the upstream call are in its trace, under its
    # request span; the upstream MCP server was sent that trace.
    call_span = next(s for s in requests_ if attrs(s).get("request_id") == CALL_REQUEST_ID)
    assert not call_span.get("parentSpanId")
    in_call = [s for s in spans if s["traceId"] == call_span["traceId"]]
    for s in in_call:
        assert descends(s, call_span, by_id), (s["name"], [x["name"] for x in in_call])
    names = sorted(s["name"] for s in in_call)
    assert names.count("append") == 2 and {"decide", "upstream"} <= set(names), names
    # Each request the call sent upstream (the call, and any listing the gateway made to learn
    # the tool's annotations) went in this trace, under the upstream span that made it.
    call_ups = {s["spanId"] for s in in_call if s["name"] == "upstream"}
    sent_in_call = {t.split("-")[2] for t in sent if t.split("-")[1] == call_span["traceId"]}
    assert sent_in_call == call_ups, (sent_in_call, call_ups)
    # No upstream call is a trace of its own (only work outside requests, such as the
    # start-up's own appends, has spans without a parent).
    orphans = [s for s in spans if s["name"] == "upstream" and not s.get("parentSpanId")]
    assert not orphans, orphans
    # Its events lead to that trace, begun by Grantline itself (no traceparent came in).
    for kind in ("tool.call_started", "tool.called"):
        out = grantline("--data-dir", str(server.data_dir), "events", "--kind", kind, "--json",
                        env={"GRANTLINE_E2E_SVC_SECRET": SECRET}).stdout
        event = [json.loads(l) for l in out.splitlines() if l.strip()][-1]["payload"]
        assert event["request_id"] == CALL_REQUEST_ID, event
        assert event["trace_id"] == call_span["traceId"], event
    # And a responder holding the trace finds those events in the audit trail.
    out = grantline("--data-dir", str(server.data_dir), "audit", "search",
                    f"trace:{call_span['traceId']}", "--format", "json", "--asc",
                    env={"GRANTLINE_E2E_SVC_SECRET": SECRET}).stdout
    found = json.loads(out)["results"]
    assert [r["kind"] for r in found] == ["tool.call_started", "tool.called"], found
    assert all(r["trace_id"] == call_span["traceId"] for r in found), found

    # The event leads to its trace.
    out = grantline("--data-dir", str(server.data_dir), "events", "--kind", "token.issued", "--json",
                    env={"GRANTLINE_E2E_SVC_SECRET": SECRET}).stdout
    issued = [json.loads(l) for l in out.splitlines() if l.strip()]
    assert issued[-1]["payload"]["request"]["trace_id"] == parent_trace, issued[-1]
