//! The HTML pages: sign-in, consent and errors. Every value is escaped; every form carries a
//! CSRF token; every page is sent with `html_headers`.

use crate::http::html_headers;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#1d2330}\
h1{font-size:1.4rem}.box{border:1px solid #d6dbe4;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}\
.host{font-family:ui-monospace,monospace;font-weight:700;background:#eef1f6;padding:.1rem .3rem;border-radius:4px}\
.warn{background:#fff4e5;border-color:#f0b46b}.err{color:#a61b1b}label{display:block;margin:.6rem 0 .2rem}\
input[type=text],input[type=password]{width:100%;padding:.45rem;box-sizing:border-box}\
button{padding:.5rem 1.1rem;margin-right:.5rem;border-radius:6px;border:1px solid #888;cursor:pointer}\
button.primary{background:#1f5fd1;color:#fff;border-color:#1f5fd1}li{margin:.35rem 0}small{color:#5b6475}";

/// Renders a page with the security headers. `form_action` is the CSP `form-action` source list.
pub fn page(status: StatusCode, title: &str, body: &str, form_action: &str) -> Response {
    page_styled(status, title, body, form_action, "")
}

/// Styles added for wide pages with tables (the audit page).
pub const WIDE: &str = "body{max-width:78rem}table{border-collapse:collapse;width:100%;font-size:.88rem}\
td,th{border-bottom:1px solid #e2e6ee;padding:.3rem .4rem;text-align:left;vertical-align:top}\
th{background:#f3f5f9}pre{white-space:pre-wrap;word-break:break-all;background:#f6f8fb;padding:.6rem;font-size:.8rem}\
code{font-family:ui-monospace,monospace}.denied,.failure,.error{color:#a61b1b}nav a{margin-right:1rem}";

/// As [`page`], with `extra` CSS after the base style.
pub fn page_styled(
    status: StatusCode,
    title: &str,
    body: &str,
    form_action: &str,
    extra: &str,
) -> Response {
    let nonce =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&crate::random::bytes32()[..16]);
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · Grantline</title><style nonce=\"{nonce}\">{STYLE}{extra}</style></head>\
         <body>{body}</body></html>",
        esc(title)
    );
    let mut r = (status, html).into_response();
    html_headers(r.headers_mut(), &nonce, form_action);
    r
}

/// An error from an application the server does not trust enough to send the browser back
/// to unasked (RFC 9700 §4.11.2): the page names the host and offers the way back as a link.
pub fn untrusted_error(title: &str, detail: &str, host: &str, back: &str) -> Response {
    let body = format!(
        "<h1>{title}</h1><div class=\"box\"><p>{detail}</p></div>\
         <p>The application asked to be told at <span class=\"host\">{host}</span>. Go there only \
         if you recognise it.</p><p><a href=\"{back}\" rel=\"noreferrer\">Return to {host}</a></p>",
        title = esc(title),
        detail = esc(detail),
        host = esc(host),
        back = esc(back),
    );
    page(StatusCode::BAD_REQUEST, title, &body, "'none'")
}

/// An error page that never redirects.
pub fn error(status: StatusCode, title: &str, detail: &str) -> Response {
    page(
        status,
        title,
        &format!(
            "<h1>{}</h1><div class=\"box err\"><p>{}</p></div>\
             <p><small>Nothing was sent to the application. You can close this window.</small></p>",
            esc(title),
            esc(detail)
        ),
        "'none'",
    )
}

/// A failure on a page's way as a page, not the OAuth JSON an API answers: a refusal (400)
/// with its description, or — the ledger or a store failing — a 503 that says nothing was done
/// (the cause goes to the log).
pub fn app_error(e: crate::error::AppError) -> Response {
    match e {
        crate::error::AppError::OAuth(o) => {
            error(StatusCode::BAD_REQUEST, "Bad request", &o.description)
        }
        crate::error::AppError::Unavailable(why) => {
            crate::error::answered_failed_closed(&why);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "The server cannot record this right now; nothing was done. Try again shortly.",
            )
        }
    }
}

/// The fields of a page's form post, or the page that says the body is malformed.
#[allow(clippy::result_large_err)] // the error is the page the handler returns at once
pub fn form_fields(body: &[u8]) -> Result<Vec<(String, String)>, Response> {
    crate::http::parse_params(&String::from_utf8_lossy(body), &[])
        .map_err(|e| error(StatusCode::BAD_REQUEST, "Bad request", &e.description))
}

/// What the sign-in page offers.
pub struct Login<'a> {
    /// The issuer's path ([`crate::context::RequestContext::base_path`]).
    pub base: &'a str,
    pub return_to: &'a str,
    pub csrf: &'a str,
    pub message: Option<&'a str>,
    /// A button per identity provider: (id, display name).
    pub providers: Vec<(String, String)>,
    /// The password form: local accounts are on.
    pub local: bool,
    /// Local accounts are off but a break-glass admin is set: the password form is offered
    /// folded, for that administrator.
    pub break_glass: bool,
}

/// The sign-in page: a button per identity provider and, where local accounts are enabled,
/// the password form.
pub fn login(status: StatusCode, l: &Login<'_>) -> Response {
    let msg = l
        .message
        .map(|m| format!("<p class=\"err\">{}</p>", esc(m)))
        .unwrap_or_default();
    let buttons: String = l
        .providers
        .iter()
        .map(|(id, name)| {
            format!(
                "<form method=\"post\" action=\"{}/login/upstream/{}\" class=\"idp\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"return_to\" value=\"{}\">\
                 <button class=\"primary\" type=\"submit\">Sign in with {}</button></form>",
                esc(l.base),
                esc(id),
                esc(l.csrf),
                esc(l.return_to),
                esc(name)
            )
        })
        .collect();
    let form = format!(
        "<form method=\"post\" action=\"{}/login\" class=\"box\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"return_to\" value=\"{}\">\
         <label for=\"username\">Username</label>\
         <input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required{}>\
         <label for=\"password\">Password</label>\
         <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
         <p><button class=\"primary\" type=\"submit\">Sign in</button></p></form>",
        esc(l.base),
        esc(l.csrf),
        esc(l.return_to),
        if l.providers.is_empty() {
            " autofocus"
        } else {
            ""
        }
    );
    let password = if l.local {
        form
    } else if l.break_glass {
        format!("<details><summary>Administrator break-glass sign-in</summary>{form}</details>")
    } else {
        String::new()
    };
    let none = if l.providers.is_empty() && !l.local && !l.break_glass {
        "<p class=\"err\">No way to sign in is configured.</p>"
    } else {
        ""
    };
    let body = format!("<h1>Sign in to Grantline</h1>{msg}{buttons}{password}{none}");
    // After sign-in the browser follows redirects to the authorization endpoint (or to the
    // identity provider) and possibly on to the client; a form-action list here would block
    // that chain in some browsers.
    page(status, "Sign in", &body, "*")
}

/// What the consent page shows.
pub struct Consent<'a> {
    /// The issuer's path, prefixed to the form actions.
    pub base: &'a str,
    pub username: &'a str,
    pub client_name: &'a str,
    pub client_id: &'a str,
    pub redirect_host: &'a str,
    pub redirect_origin: &'a str,
    pub loopback_warning: bool,
    /// `None` for a client an administrator vouched for; else how and when it was
    /// registered, shown as an unverified application.
    pub unverified: Option<String>,
    /// A remembered consent, asked again with one click (the client's identity cannot be
    /// assured): "Continue to … as …".
    pub confirm: bool,
    pub resource_name: &'a str,
    pub resource_id: &'a str,
    pub scopes: Vec<(String, String)>,
    /// For a client that gets refresh tokens: how many days it may stay connected without
    /// asking again (the refresh tokens' absolute lifetime), shown whatever scopes it named.
    pub stays_connected_days: Option<u64>,
    pub request_id: &'a str,
    pub csrf: &'a str,
    pub logout_csrf: &'a str,
}

pub fn consent(c: &Consent<'_>) -> Response {
    let warning = if c.loopback_warning {
        "<div class=\"box warn\"><strong>Check this is the app you are using.</strong> \
         This application identifies itself by a web address, but sends you back only to a program \
         on this computer. Any local program could use its name.</div>"
    } else {
        ""
    };
    let unverified = match &c.unverified {
        Some(how) => format!(
            "<div class=\"box warn\"><strong>Unverified application.</strong> {} Anyone \
             can register an application under any name: approve only if you started this from \
             the application you mean to use. It sends you back to \
             <span class=\"host\">{}</span>.</div>",
            esc(how),
            esc(c.redirect_host)
        ),
        None => "<p><small>Verified: registered by an administrator of this server.</small></p>"
            .to_string(),
    };
    let scopes: String = c
        .scopes
        .iter()
        .map(|(name, desc)| format!("<li>{} <small>({})</small></li>", esc(desc), esc(name)))
        .collect();
    let stays = c.stays_connected_days.map_or(String::new(), |days| {
        let days = if days == 1 {
            "a day".to_string()
        } else {
            format!("{days} days")
        };
        format!(
            "<p>It can keep its access for up to {days} without you signing in again; you \
             can disconnect it on your account page at any time.</p>"
        )
    });
    let (headline, ask, approve) = if c.confirm {
        (
            format!("Continue to {} as {}?", esc(c.client_name), esc(c.username)),
            "You allowed this before. Because any program on this computer could use this \
             application's name, confirm that you are signing in to it now."
                .to_string(),
            "Continue",
        )
    } else {
        (
            "Authorize an application".to_string(),
            String::new(),
            "Approve",
        )
    };
    let body = format!(
        "<h1>{headline}</h1>{warning}{unverified}\
         <div class=\"box\"><p>{ask}</p><p>The application <strong>{client}</strong> \
         <small>({client_id})</small> asks to use \
         <strong>{resource}</strong> <small>({resource_id})</small> on your behalf.</p>\
         <p>After you decide you will be sent to <span class=\"host\">{host}</span>.</p>\
         <p>It will be able to:</p><ul>{scopes}</ul>{stays}</div>\
         <form method=\"post\" action=\"{base}/oauth/consent\">\
         <input type=\"hidden\" name=\"request_id\" value=\"{rid}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button class=\"primary\" type=\"submit\" name=\"decision\" value=\"approve\">{approve}</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>\
         <form method=\"post\" action=\"{base}/logout\"><p><small>Signed in as {user}.</small> \
         <input type=\"hidden\" name=\"csrf\" value=\"{lcsrf}\">\
         <button type=\"submit\">Not you? Sign out</button></p></form>",
        base = esc(c.base),
        client = esc(c.client_name),
        client_id = esc(c.client_id),
        resource = esc(c.resource_name),
        resource_id = esc(c.resource_id),
        host = esc(c.redirect_host),
        rid = esc(c.request_id),
        csrf = esc(c.csrf),
        lcsrf = esc(c.logout_csrf),
        user = esc(c.username),
    );
    page(
        StatusCode::OK,
        "Authorize",
        &body,
        &format!("'self' {}", c.redirect_origin),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
