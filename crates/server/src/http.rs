//! HTTP plumbing shared by the routes: the per-request context (id, address, user agent,
//! issuer), OAuth error responses, and the security headers of HTML pages.

use crate::app::{App, AppError};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use grantline_oauth::{ErrorCode, OAuthError};
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
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A host as `X-Forwarded-Host` may carry it: name or address, optional port.
fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

impl RequestContext {
    pub fn from_parts(app: &App, parts: &Parts) -> RequestContext {
        let h = &parts.headers;
        let trust = app.config.server.trust_forwarded_headers;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let forwarded_for = trust
            .then(|| header_str(h, "x-forwarded-for"))
            .flatten()
            // The proxy appends the address it saw: the rightmost entry is the one it vouches
            // for; entries to its left are whatever the client sent.
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim().to_string())
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok());
        let mut issuer = app.public_url.clone();
        if trust
            && let Some(host) = header_str(h, "x-forwarded-host")
                .map(|v| v.split(',').next().unwrap_or("").trim())
                .filter(|v| plausible_host(v))
        {
            let proto = match header_str(h, "x-forwarded-proto").map(str::trim) {
                Some("http") => "http",
                _ => "https",
            };
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

/// An RFC 6749 §5.2 JSON error, with `Cache-Control: no-store` and, for a failed client
/// authentication over HTTP Basic, `WWW-Authenticate`.
pub fn oauth_error(e: &OAuthError) -> Response {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (status, axum::Json(e.to_json())).into_response();
    no_store(r.headers_mut());
    if e.code == ErrorCode::InvalidClient {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"grantline\""),
        );
    }
    r
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::OAuth(e) => oauth_error(&e),
            AppError::Unavailable(why) => {
                tracing::error!(%why, "failing closed");
                oauth_error(&OAuthError::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the audit ledger cannot record this request right now; nothing was done",
                ))
            }
        }
    }
}

/// 429 with `Retry-After` and an RFC 6749-style JSON body (`slow_down` is not an RFC 6749
/// error; `temporarily_unavailable` is the code clients know).
pub fn too_many_requests(retry_after: i64, description: &str) -> Response {
    let body = serde_json::json!({
        "error": "temporarily_unavailable",
        "error_description": description,
    });
    let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    no_store(r.headers_mut());
    r
}

pub fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Headers of every HTML page: no framing, a strict CSP (`form_action` lists where forms on
/// the page may go, redirects included), no caching, no referrer, no sniffing.
pub fn html_headers(h: &mut HeaderMap, style_nonce: &str, form_action: &str) {
    let csp = format!(
        "default-src 'none'; style-src 'nonce-{style_nonce}'; img-src 'self'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(h);
}

/// A `302 Found` to `location`.
pub fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut r = StatusCode::FOUND.into_response();
            r.headers_mut().insert(header::LOCATION, v);
            no_store(r.headers_mut());
            r
        }
        Err(_) => (StatusCode::BAD_REQUEST, "bad redirect").into_response(),
    }
}

/// A `303 See Other` to `location` (after a form POST).
pub fn see_other(location: &str) -> Response {
    let mut r = redirect(location);
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

/// Parses an `application/x-www-form-urlencoded` body or query into pairs, refusing a
/// parameter that appears twice unless it is in `repeatable` (RFC 6749 §3.1).
pub fn parse_params(raw: &str, repeatable: &[&str]) -> Result<Vec<(String, String)>, OAuthError> {
    const MAX_PARAMS: usize = 64;
    let mut seen = std::collections::HashSet::new();
    let mut pairs = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if pairs.len() == MAX_PARAMS {
            return Err(OAuthError::invalid_request("too many parameters"));
        }
        if !repeatable.contains(&k.as_ref()) && !seen.insert(k.clone()) {
            return Err(OAuthError::invalid_request(format!(
                "parameter {k} appears more than once"
            )));
        }
        pairs.push((k.into_owned(), v.into_owned()));
    }
    Ok(pairs)
}

/// The first value of `name`, empty values treated as absent.
pub fn param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_once_each_and_not_too_many() {
        assert_eq!(parse_params("a=1&b=2", &[]).unwrap().len(), 2);
        assert!(parse_params("a=1&a=2", &[]).is_err());
        assert_eq!(
            parse_params("resource=x&resource=y", &["resource"])
                .unwrap()
                .len(),
            2
        );
        let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
        assert!(parse_params(&many.join("&"), &[]).is_err());
        assert_eq!(
            param(&parse_params("a=&b=1", &[]).unwrap(), "a"),
            None,
            "empty is absent"
        );
    }
}
