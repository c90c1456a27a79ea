//! Reading client credentials from a request: HTTP Basic (RFC 6749 §2.3.1, form-encoded id and
//! secret) or `client_id`/`client_secret` in the body; never both.

use axum::http::{HeaderMap, header};
use base64::Engine;
use grantline_ledger::AuthMethod;
use grantline_oauth::OAuthError;
use grantline_oauth::client_auth::Presented;

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The client a request presents. An id longer than any client's (ids are at most
/// [`grantline_oauth::limits::URL_BYTES`]) is refused here, before it reaches a log line or
/// the state.
pub fn presented(
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<Presented, OAuthError> {
    let p = read_presented(headers, params)?;
    if p.client_id.len() > grantline_oauth::limits::URL_BYTES {
        return Err(OAuthError::invalid_client("no client has an id that long"));
    }
    Ok(p)
}

fn read_presented(
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<Presented, OAuthError> {
    let form_id = crate::http::param(params, "client_id");
    let form_secret = crate::http::param(params, "client_secret");
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then(|| rest.trim().to_string())
        });
    if let Some(b64) = basic {
        if form_secret.is_some() {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not both",
            ));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
        let (id, secret) = raw
            .split_once(':')
            .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
        let id = form_decode(id);
        if let Some(f) = &form_id
            && f != &id
        {
            return Err(OAuthError::invalid_request(
                "client_id differs from the Basic credentials",
            ));
        }
        return Ok(Presented {
            client_id: id,
            secret: Some(form_decode(secret)).filter(|s| !s.is_empty()),
            via: AuthMethod::ClientSecretBasic,
        });
    }
    let client_id =
        form_id.ok_or_else(|| OAuthError::invalid_client("client authentication required"))?;
    Ok(Presented {
        client_id,
        via: if form_secret.is_some() {
            AuthMethod::ClientSecretPost
        } else {
            AuthMethod::None
        },
        secret: form_secret,
    })
}

/// The body of a form POST, refusing other content types.
pub fn form_body(headers: &HeaderMap, body: &str) -> Result<Vec<(String, String)>, OAuthError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    crate::http::parse_params(body, &["resource"])
}
