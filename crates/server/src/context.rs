//! What every handler knows about its request: its id, the caller's address and user agent
//! (taken from forwarded headers only behind a trusted proxy), and the issuer it was sent to.

use crate::app::App;
use crate::error::AppError;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use grantline_ledger::RequestMeta;
use std::net::SocketAddr;

/// What every handler knows about its request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// From `X-Request-Id` (set by the request-id layer when the client sent none).
    pub request_id: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The issuer for this request: the public URL, or scheme and host from trusted
    /// forwarded headers.
    pub issuer: String,
    pub https: bool,
    /// The request's trace id (see `trace.rs`), when it is traced.
    pub trace_id: Option<String>,
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The rightmost entry of a forwarded header, over all its lines: what the proxy in front
/// added, whether it appends to the client's line (nginx) or adds a line of its own
/// (HAProxy's `option forwardfor`). Entries to its left are whatever the client sent.
fn last_forwarded<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let line = h.get_all(name).iter().next_back()?.to_str().ok()?;
    line.rsplit(',').next().map(str::trim)
}

/// A host as `X-Forwarded-Host` may carry it: name or address, optional port.
fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The scheme and host a trusted proxy says the request was sent to.
fn forwarded_origin<'h>(app: &App, h: &'h HeaderMap) -> Option<(&'static str, &'h str)> {
    if !app.config.server.trust_forwarded_headers {
        return None;
    }
    let host = last_forwarded(h, "x-forwarded-host").filter(|v| plausible_host(v))?;
    let proto = match last_forwarded(h, "x-forwarded-proto") {
        Some("http") => "http",
        _ => "https",
    };
    Some((proto, host))
}

/// Whether the request's issuer is an `https` one (see [`RequestContext::https`]), without
/// the rest of the context.
pub fn over_https(app: &App, h: &HeaderMap) -> bool {
    match forwarded_origin(app, h) {
        Some((proto, _)) => proto == "https",
        None => app.public_url.starts_with("https://"),
    }
}

impl RequestContext {
    pub fn from_parts(app: &App, parts: &Parts) -> RequestContext {
        let h = &parts.headers;
        let trust = app.config.server.trust_forwarded_headers;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        // The proxy adds the address it saw: the rightmost entry is the one it vouches for.
        let forwarded_for = trust
            .then(|| last_forwarded(h, "x-forwarded-for"))
            .flatten()
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
            .map(str::to_string);
        let mut issuer = app.public_url.clone();
        if let Some((proto, host)) = forwarded_origin(app, h) {
            let prefix = url::Url::parse(&app.public_url)
                .map(|u| u.path().trim_end_matches('/').to_string())
                .unwrap_or_default();
            issuer = format!("{proto}://{host}{prefix}");
        }
        RequestContext {
            request_id: header_str(h, "x-request-id").unwrap_or("-").to_string(),
            source_ip: forwarded_for.or(peer),
            user_agent: header_str(h, "user-agent").map(|s| s.chars().take(300).collect()),
            https: issuer.starts_with("https://"),
            issuer,
            trace_id: crate::trace::trace_id(trust.then_some(h)),
        }
    }
}

impl RequestContext {
    /// The issuer's path (`""`, or `/auth` behind a proxy that mounts Grantline there): the
    /// prefix of every link and form action on the pages, so that they stay under the proxy.
    pub fn base_path(&self) -> String {
        url::Url::parse(&self.issuer)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default()
    }
}

impl FromRequestParts<App> for RequestContext {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        Ok(RequestContext::from_parts(app, parts))
    }
}

impl RequestContext {
    /// Request metadata for events, with address and user agent sealed under `subject`'s key.
    pub async fn meta(&self, app: &App, subject: &str) -> Result<RequestMeta, AppError> {
        let seal = |v: Option<String>| async move {
            match v {
                Some(v) => app.keyring.seal(subject, &v).await.map(Some),
                None => Ok(None),
            }
        };
        Ok(RequestMeta {
            request_id: self.request_id.clone(),
            trace_id: grantline_ledger::trace_id(self.trace_id.as_deref()),
            source_ip: seal(self.source_ip.clone()).await?,
            user_agent: seal(self.user_agent.clone()).await?,
        })
    }

    /// As [`RequestContext::meta`], for what must go through even when the key store cannot
    /// seal (a revocation, a sign-out: refusing those would keep access alive): then the
    /// request and trace ids alone, without address and user agent, and a warning saying so.
    pub async fn meta_best_effort(&self, app: &App, subject: &str) -> RequestMeta {
        match self.meta(app, subject).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "recorded without the caller's address and user agent: they could not be sealed");
                RequestMeta {
                    request_id: self.request_id.clone(),
                    trace_id: grantline_ledger::trace_id(self.trace_id.as_deref()),
                    source_ip: None,
                    user_agent: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_entry_is_the_last_lines_rightmost() {
        let mut h = HeaderMap::new();
        assert_eq!(last_forwarded(&h, "x-forwarded-for"), None);
        h.append(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        assert_eq!(last_forwarded(&h, "x-forwarded-for"), Some("198.51.100.7"));
        // A proxy that adds its own line leaves the client's (forged) line first.
        h.append("x-forwarded-for", " 192.0.2.1 ".parse().unwrap());
        assert_eq!(last_forwarded(&h, "x-forwarded-for"), Some("192.0.2.1"));
    }
}
