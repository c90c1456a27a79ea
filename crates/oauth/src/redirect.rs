//! Redirect URIs: validated at registration, matched exactly at request time (with any port
//! for loopback, RFC 8252 §7.3). HTTPS or loopback HTTP only; no fragments, no wildcards.

use grantline_ledger::ApplicationType;
use url::{Host, Url};

/// Whether a URL's host is a loopback interface (`127.0.0.1`, `[::1]`, `localhost`).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Checks a redirect URI offered at registration. `native` clients use loopback HTTP (or
/// HTTPS); `web` clients HTTPS on a non-loopback host.
pub fn validate(uri: &str, app: ApplicationType) -> Result<(), String> {
    if uri.contains('*') {
        return Err(format!("{uri}: wildcards are not allowed"));
    }
    // Stored and matched as sent, but checked as parsed: the two must name the same place.
    // The URL parser reads `\` as `/` and drops tabs, line breaks and outer spaces, so
    // `https://evil.example\.good.example/cb` would pass as a URI at `evil.example` while
    // every listing shows the other name.
    if uri
        .chars()
        .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{}: a redirect URI must not contain backslashes, spaces or control characters",
            uri.escape_debug()
        ));
    }
    let url = Url::parse(uri).map_err(|e| format!("{uri}: not an absolute URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{uri}: a redirect URI must not carry credentials"));
    }
    if let Some(host) = url.host_str()
        && !authority_is(uri, host)
    {
        return Err(format!(
            "{uri}: write the host as {host} (percent-encoded and international host names \
             are not accepted as written)"
        ));
    }
    if url.fragment().is_some() || uri.contains('#') {
        return Err(format!("{uri}: a redirect URI must not have a fragment"));
    }
    let loopback = is_loopback(&url);
    match (url.scheme(), app) {
        ("https", ApplicationType::Web) if loopback => Err(format!(
            "{uri}: web clients must not redirect to a loopback host; register as native"
        )),
        ("https", _) if url.host().is_some() => Ok(()),
        ("http", ApplicationType::Native) if loopback => Ok(()),
        ("http", ApplicationType::Web) if loopback => Err(format!(
            "{uri}: loopback redirect URIs are for native clients (application_type \"native\")"
        )),
        _ => Err(format!(
            "{uri}: redirect URIs must be HTTPS, or http://127.0.0.1, http://[::1] or http://localhost for native clients"
        )),
    }
}

/// Whether the authority of `uri` as written (between `://` and the path) is `host`, with a
/// port or without, ignoring case: the name every listing shows is the one the URI goes to.
fn authority_is(uri: &str, host: &str) -> bool {
    let Some((_, rest)) = uri.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let Some(tail) = authority
        .get(..host.len())
        .filter(|h| h.eq_ignore_ascii_case(host))
        .map(|_| &authority[host.len()..])
    else {
        return false;
    };
    tail.is_empty()
        || tail
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// The application type a registration implies when it does not say: `native` if any
/// redirect URI is loopback (what desktop MCP clients register), else `web`.
pub fn infer_application_type(uris: &[String]) -> ApplicationType {
    let any_loopback = uris
        .iter()
        .filter_map(|u| Url::parse(u).ok())
        .any(|u| is_loopback(&u));
    if any_loopback {
        ApplicationType::Native
    } else {
        ApplicationType::Web
    }
}

/// Whether `requested` is one of `registered`: exact string match, except that a loopback
/// HTTP URI matches with any port (RFC 8252 §7.3).
pub fn matches(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    // Bounded as a registered URI is, and without credentials: the requested string is what
    // the code goes to and what `code.issued` records.
    if requested.len() > crate::limits::URL_BYTES
        || requested
            .chars()
            .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let Ok(want) = Url::parse(requested) else {
        return false;
    };
    if want.scheme() != "http"
        || !is_loopback(&want)
        || want.fragment().is_some()
        || !want.username().is_empty()
        || want.password().is_some()
    {
        return false;
    }
    registered
        .iter()
        .filter_map(|r| Url::parse(r).ok())
        .any(|r| {
            r.scheme() == "http"
                && is_loopback(&r)
                && r.host() == want.host()
                && r.path() == want.path()
                && r.query() == want.query()
        })
}

/// The host (and port) a consent page shows the user.
pub fn display_host(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => uri.to_string(),
        },
        Err(_) => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApplicationType::*;

    #[test]
    fn a_loopback_uri_with_credentials_or_unbounded_length_matches_nothing() {
        let registered = vec!["http://127.0.0.1/callback".to_string()];
        assert!(matches(&registered, "http://127.0.0.1:5555/callback"));
        assert!(!matches(
            &registered,
            "http://user:pw@127.0.0.1:5555/callback"
        ));
        assert!(!matches(&registered, "http://user@127.0.0.1:5555/callback"));
        let long = format!(
            "http://127.0.0.1:5555/callback?{}",
            "x".repeat(crate::limits::URL_BYTES)
        );
        let registered_long = vec![long.replace(":5555", "")];
        assert!(!matches(&registered_long, &long));
    }

    #[test]
    fn registration_rules() {
        assert!(validate("https://app.example/cb", Web).is_ok());
        assert!(validate("https://app.example/cb", Native).is_ok());
        assert!(validate("http://127.0.0.1:3000/cb", Native).is_ok());
        assert!(validate("http://[::1]/cb", Native).is_ok());
        assert!(validate("http://localhost:8765/callback", Native).is_ok());
        assert!(validate("http://localhost:8765", Native).is_ok());
        assert!(validate("http://[::1]:9000/cb", Native).is_ok());
        assert!(validate("HTTPS://App.Example/cb", Web).is_ok());
        assert!(validate("https://xn--bcher-kva.example/cb", Web).is_ok());
        assert!(
            validate("https://user:pw@app.example/cb", Web)
                .unwrap_err()
                .contains("credentials")
        );
        for (bad, app) in [
            ("http://app.example/cb", Native),
            ("http://127.0.0.1/cb", Web),
            ("https://localhost/cb", Web),
            ("https://app.example/cb#frag", Web),
            ("https://*.example/cb", Web),
            ("cursor://callback", Native),
            ("/relative", Web),
            ("https://user:pw@app.example/cb", Web),
            // Parsed as a URI at evil.example, shown as another name.
            ("https://evil.example\\.good.example/cb", Web),
            ("https://app.example/c\tb", Web),
            ("https://app.example/cb\n", Web),
            (" https://app.example/cb", Web),
            ("https://evil%2Eexample/cb", Web),
            ("https://bücher.example/cb", Web),
            // The real host written once in the query does not make the authority it.
            ("https://%65vil.example/cb?evil.example", Web),
        ] {
            assert!(validate(bad, app).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn exact_match_and_any_loopback_port() {
        let reg = vec![
            "https://app.example/cb".to_string(),
            "http://127.0.0.1/callback".to_string(),
        ];
        assert!(matches(&reg, "https://app.example/cb"));
        assert!(!matches(&reg, "https://app.example/cb/"));
        assert!(!matches(&reg, "https://app.example/cb?x=1"));
        assert!(!matches(&reg, "https://app.example:8443/cb"));
        assert!(matches(&reg, "http://127.0.0.1:51234/callback"));
        assert!(!matches(&reg, "http://127.0.0.1:51234/other"));
        assert!(!matches(&reg, "http://localhost:51234/callback"));
        assert!(!matches(&reg, "https://127.0.0.1:51234/callback"));
        assert!(!matches(&reg, "http://127.0.0.1:51234\\callback"));
        assert!(!matches(&reg, "http://127.0.0.1:51234/call\tback"));
    }

    #[test]
    fn inference() {
        assert_eq!(
            infer_application_type(&["http://localhost:1/cb".into()]),
            Native
        );
        assert_eq!(
            infer_application_type(&["https://a.example/cb".into()]),
            Web
        );
    }
}
