//! HTTP plumbing shared by the routes: OAuth error responses, redirects, form parsing and the
//! security headers of HTML pages. (The request context is `context.rs`.)

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use grantline_oauth::{ErrorCode, OAuthError};

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

/// A body over the limit is refused by the extractor in plain text; at the OAuth endpoints
/// it is an RFC 6749 error like any other (413, `invalid_request`).
pub async fn oauth_json_413(r: Response) -> Response {
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() != StatusCode::PAYLOAD_TOO_LARGE || json {
        return r;
    }
    let body = serde_json::json!({
        "error": "invalid_request",
        "error_description": format!(
            "the request body is larger than {} KiB",
            crate::routes::MAX_BODY / 1024
        ),
    });
    let (mut parts, _) = r.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut out = (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
    // Keep what layers outside the handler set (CORS, request id); the type is JSON now.
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    no_store(out.headers_mut());
    out
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

/// Whether a browser says the request was started by another site (`Sec-Fetch-Site:
/// cross-site` or `same-site`, which every current browser sends). A session cookie is sent on
/// such a request when it is a top-level navigation (`SameSite=Lax`), so a page that reads
/// and records with the session must not act on it: any site could make a signed-in browser
/// do so. A browser that sends no `Sec-Fetch-Site` (Safari before 16.4) is judged by the
/// `Origin` or `Referer` it sends instead: one of another origin than `issuer`'s is another
/// site's request (this server's pages send no referrer, so its own links carry neither).
/// None of them (a script, a referrer stripped by the other site): not known to be cross-site.
pub fn cross_site(headers: &HeaderMap, issuer: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.to_str().ok().is_some_and(|v| {
            v.eq_ignore_ascii_case("cross-site") || v.eq_ignore_ascii_case("same-site")
        });
    }
    let origin_of = |u: &str| url::Url::parse(u).ok().map(|u| u.origin());
    let Some(ours) = origin_of(issuer) else {
        return false;
    };
    [header::ORIGIN, header::REFERER].iter().any(|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            // `Origin: null` (a sandboxed or privacy-sensitive context) is no origin of ours.
            .is_some_and(|v| origin_of(v).is_none_or(|o| o != ours))
    })
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
    fn another_sites_request_is_told_by_fetch_metadata_else_by_origin_or_referer() {
        let issuer = "https://auth.example.com/gl";
        let with = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            cross_site(&h, issuer)
        };
        assert!(with(&[("sec-fetch-site", "cross-site")]));
        assert!(with(&[("sec-fetch-site", "same-site")]));
        // Fetch metadata, when sent, decides.
        assert!(!with(&[
            ("sec-fetch-site", "same-origin"),
            ("referer", "https://evil.example/")
        ]));
        assert!(!with(&[("sec-fetch-site", "none")]));
        // Without it (older browsers): the origin or referrer tells.
        assert!(with(&[("referer", "https://evil.example/page")]));
        assert!(with(&[("origin", "https://evil.example")]));
        assert!(with(&[("origin", "null")]));
        assert!(
            with(&[("referer", "http://auth.example.com/gl/admin/audit")]),
            "another scheme"
        );
        assert!(!with(&[(
            "referer",
            "https://auth.example.com/gl/admin/audit?q=x"
        )]));
        assert!(!with(&[("origin", "https://auth.example.com")]));
        assert!(!with(&[]), "a script sends neither");
    }

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
