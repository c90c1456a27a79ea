//! Client ID metadata documents: a `client_id` that is an HTTPS URL names a JSON document
//! describing the client. Fetched with a size and time limit, no redirects, and an SSRF guard
//! (no private, loopback, link-local or otherwise internal addresses unless configured);
//! cached per the response's `Cache-Control`.

use crate::config::MetadataDocumentsSection;
use grantline_oauth::OAuthError;
use grantline_oauth::register::{ClientMetadata, RegistrationRequest, check};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether a URL string is meant as a metadata-document client id.
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// Addresses a server on the public internet never has.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
                || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            // 6to4 (2002::/16) carries an IPv4 address a relay may route to.
            if s[0] == 0x2002 {
                let [a, b] = s[1].to_be_bytes();
                let [c, d] = s[2].to_be_bytes();
                return is_internal(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            v6.is_loopback()
                // IPv4-compatible (::a.b.c.d, deprecated): nothing public is reached that way.
                || s[..6].iter().all(|&x| x == 0)
                || (s[0] == 0x2001 && s[1] == 0) // Teredo: an IPv4 address behind a relay
                || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated, still routed inside)
                || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64
        }
    }
}

/// Resolves names and refuses internal addresses, so a DNS answer cannot point the fetch at
/// the server's own network.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || !is_internal(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A fetched and checked document.
#[derive(Debug, Clone)]
pub struct Document {
    pub url: String,
    pub metadata: ClientMetadata,
    pub request: RegistrationRequest,
}

struct Cached {
    /// The document, or why it could not be taken (a failure is kept too, so that a failing
    /// document is not fetched again at every request).
    doc: Result<Document, OAuthError>,
    until: Instant,
}

/// Fetches and caches documents.
pub struct Fetcher {
    config: MetadataDocumentsSection,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
    /// One fetch per document at a time: requests that arrive while it runs wait for its
    /// answer instead of fetching too.
    fetching: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

fn refuse(why: impl Into<String>) -> OAuthError {
    OAuthError::invalid_client(format!("client metadata document: {}", why.into()))
}

impl Fetcher {
    pub fn new(config: MetadataDocumentsSection) -> anyhow::Result<Fetcher> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the host itself, around the guarded resolver.
            .no_proxy()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: config.allow_private_addresses,
            }))
            .user_agent(concat!("grantline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Fetcher {
            config,
            http,
            cache: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        })
    }

    /// Checks the URL form: HTTPS (HTTP only when configured), a path, no fragment, no
    /// credentials, no dot segments, and no internal address literal.
    pub fn check_url(&self, client_id: &str) -> Result<url::Url, OAuthError> {
        if !self.config.enabled {
            return Err(refuse("metadata documents are turned off on this server"));
        }
        if client_id.len() > grantline_oauth::limits::URL_BYTES {
            return Err(refuse(format!(
                "the client_id URL is longer than {} bytes",
                grantline_oauth::limits::URL_BYTES
            )));
        }
        let url = url::Url::parse(client_id).map_err(|e| refuse(format!("bad URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.config.allow_http => {}
            _ => return Err(refuse("the client_id URL must use https")),
        }
        if url.path() == "/" || url.path().is_empty() {
            return Err(refuse("the client_id URL must have a path"));
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(refuse(
                "the client_id URL must not have a fragment or credentials",
            ));
        }
        if client_id.contains("/./") || client_id.contains("/../") {
            return Err(refuse("the client_id URL must not have dot segments"));
        }
        if url.as_str() != client_id {
            return Err(refuse("the client_id URL must be in normalized form"));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && is_internal(ip)
            && !self.config.allow_private_addresses
        {
            return Err(refuse("the client_id URL points at an internal address"));
        }
        Ok(url)
    }

    fn cached(&self, client_id: &str) -> Option<Result<Document, OAuthError>> {
        self.cache.lock().ok().and_then(|c| {
            c.get(client_id)
                .filter(|c| c.until > Instant::now())
                .map(|c| c.doc.clone())
        })
    }

    /// The document for `client_id`, from the cache or fetched now — at most one fetch at a
    /// time per document, and a failure kept for `min_cache_seconds` like a document.
    pub async fn get(&self, client_id: &str) -> Result<Document, OAuthError> {
        let url = self.check_url(client_id)?;
        if let Some(c) = self.cached(client_id) {
            return c;
        }
        let lock = {
            let Ok(mut f) = self.fetching.lock() else {
                return Err(refuse("the fetcher is unavailable"));
            };
            if f.len() > 10_000 {
                f.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
            }
            f.entry(client_id.to_string()).or_default().clone()
        };
        let _one = lock.lock().await;
        if let Some(c) = self.cached(client_id) {
            return c;
        }
        let fetched = self.fetch(client_id, url).await;
        let ttl = match &fetched {
            Ok((_, ttl)) => *ttl,
            Err(_) => self.config.min_cache_seconds,
        };
        let doc = fetched.map(|(doc, _)| doc);
        if ttl > 0
            && let Ok(mut c) = self.cache.lock()
        {
            if c.len() > 10_000 {
                c.clear();
            }
            c.insert(
                client_id.to_string(),
                Cached {
                    doc: doc.clone(),
                    until: Instant::now() + Duration::from_secs(ttl),
                },
            );
        }
        doc
    }

    /// Fetches and parses the document; with it, how long it may be kept.
    async fn fetch(&self, client_id: &str, url: url::Url) -> Result<(Document, u64), OAuthError> {
        let mut resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| refuse(format!("fetch failed: {}", without_url(&e))))?;
        if !resp.status().is_success() {
            return Err(refuse(format!(
                "fetch answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > self.config.max_bytes)
        {
            return Err(refuse(format!(
                "larger than {} bytes",
                self.config.max_bytes
            )));
        }
        let ttl = cache_seconds(
            resp.headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            self.config.default_cache_seconds,
            self.config.min_cache_seconds,
            self.config.max_cache_seconds,
        );
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| refuse(format!("reading failed: {}", without_url(&e))))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > self.config.max_bytes {
                return Err(refuse(format!(
                    "larger than {} bytes",
                    self.config.max_bytes
                )));
            }
        }
        Ok((parse(client_id, &body)?, ttl))
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "the document");
    }
    s
}

/// Seconds to cache per `Cache-Control`: `max-age=N` → N (capped at `max`), nothing → the
/// default, and never under `min` (`no-store`, `no-cache` and `max-age=0` included).
pub fn cache_seconds(cache_control: Option<&str>, default: u64, min: u64, max: u64) -> u64 {
    let Some(cc) = cache_control else {
        return default.min(max).max(min);
    };
    let mut out = default;
    for d in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if d == "no-store" || d == "no-cache" {
            return min;
        }
        if let Some(v) = d.strip_prefix("max-age=") {
            out = v.trim_matches('"').parse().unwrap_or(0);
        }
    }
    out.min(max).max(min)
}

/// Checks a document's content against the URL it came from.
pub fn parse(client_id: &str, body: &[u8]) -> Result<Document, OAuthError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| refuse(format!("not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| refuse("not a JSON object"))?;
    match obj.get("client_id").and_then(|c| c.as_str()) {
        Some(c) if c == client_id => {}
        Some(_) => {
            return Err(refuse(
                "its client_id differs from the URL it was fetched from",
            ));
        }
        None => return Err(refuse("client_id is missing")),
    }
    if obj
        .get("client_name")
        .and_then(|c| c.as_str())
        .is_none_or(|n| n.trim().is_empty())
    {
        return Err(refuse("client_name is missing"));
    }
    if obj
        .get("redirect_uris")
        .and_then(|r| r.as_array())
        .is_none_or(|r| r.is_empty())
    {
        return Err(refuse("redirect_uris is missing"));
    }
    for forbidden in ["client_secret", "client_secret_expires_at"] {
        if obj.contains_key(forbidden) {
            return Err(refuse(format!(
                "{forbidden} must not appear in a metadata document"
            )));
        }
    }
    let request: RegistrationRequest =
        serde_json::from_value(v.clone()).map_err(|e| refuse(format!("bad metadata: {e}")))?;
    match request.token_endpoint_auth_method.as_deref() {
        None | Some("none") => {}
        Some(m) => {
            return Err(refuse(format!(
                "token_endpoint_auth_method {m:?} is not supported for metadata-document clients (use none)"
            )));
        }
    }
    let mut normalized = request.clone();
    normalized.token_endpoint_auth_method = Some("none".into());
    let metadata = check(&normalized).map_err(|e| refuse(e.description))?;
    Ok(Document {
        url: client_id.to_string(),
        metadata,
        request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "::10.0.0.1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "64:ff9b:1::a00:1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2002:5db8:d822::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn cache_control() {
        assert_eq!(cache_seconds(None, 300, 60, 86400), 300);
        assert_eq!(
            cache_seconds(Some("public, max-age=90"), 300, 60, 86400),
            90
        );
        assert_eq!(cache_seconds(Some("max-age=999999"), 300, 60, 86400), 86400);
        // Never under the minimum: each authorization request would fetch again.
        assert_eq!(cache_seconds(Some("no-store"), 300, 60, 86400), 60);
        assert_eq!(cache_seconds(Some("max-age=0"), 300, 60, 86400), 60);
        assert_eq!(cache_seconds(None, 0, 60, 86400), 60);
        assert_eq!(cache_seconds(Some("no-store"), 300, 0, 86400), 0);
    }

    #[test]
    fn document_rules() {
        let url = "https://app.example/oauth/client.json";
        let ok = serde_json::json!({
            "client_id": url, "client_name": "App", "redirect_uris": ["http://127.0.0.1/cb"]
        });
        assert!(parse(url, ok.to_string().as_bytes()).is_ok());
        let mut other = ok.clone();
        other["client_id"] = "https://evil.example/client.json".into();
        assert!(parse(url, other.to_string().as_bytes()).is_err());
        let mut no_name = ok.clone();
        no_name.as_object_mut().unwrap().remove("client_name");
        assert!(parse(url, no_name.to_string().as_bytes()).is_err());
        let mut secret = ok.clone();
        secret["token_endpoint_auth_method"] = "client_secret_basic".into();
        assert!(parse(url, secret.to_string().as_bytes()).is_err());
        let mut bad_redirect = ok;
        bad_redirect["redirect_uris"] = serde_json::json!(["http://evil.example/cb"]);
        assert!(parse(url, bad_redirect.to_string().as_bytes()).is_err());
        assert!(parse(url, b"{not json").is_err());
    }

    #[test]
    fn url_rules() {
        let f = Fetcher::new(MetadataDocumentsSection::default()).unwrap();
        assert!(f.check_url("https://app.example/client.json").is_ok());
        for bad in [
            "http://app.example/client.json",
            "https://app.example/",
            "https://app.example/c.json#x",
            "https://u:p@app.example/c.json",
            "https://127.0.0.1/c.json",
            "https://[::1]/c.json",
            "https://169.254.169.254/latest/meta-data",
        ] {
            assert!(f.check_url(bad).is_err(), "{bad}");
        }
    }
}
