//! One upstream provider at run time: discovery and keys (OIDC), the authorization request,
//! the code exchange with ID-token validation or userinfo, and refreshing the user's tokens.
//!
//! OAuth 2.0 requests go through the `oauth2` crate and ID tokens are verified by
//! `openidconnect` (signature against the provider's JWKS, `iss`, `aud`, `exp`, `iat`, `nonce`,
//! allowed algorithms); this module adds what those leave to the relying party: `azp`, clock
//! skew, RFC 9207's `iss` response parameter, JWKS refresh on key rotation, and Microsoft's
//! multi-tenant issuer.

use crate::config::{Flavor, Kind, Provider};
use crate::identity::{self, UpstreamIdentity, UpstreamTokens};
use crate::{FederationError, mapping};
use base64::Engine;
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use openidconnect::core::{
    CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{IssuerUrl, Nonce};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fields of a token response beyond RFC 6749's.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TokenExtra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
}
impl ExtraTokenFields for TokenExtra {}

type Tokens = StandardTokenResponse<TokenExtra, BasicTokenType>;
type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The JWKS is fetched again at most this often (on an unknown key, or when it is older than
/// the provider's `jwks_cache_secs`).
const JWKS_REFRESH: Duration = Duration::from_secs(10);
/// The most a discovery document, JWKS or userinfo answer may weigh.
const MAX_DOCUMENT: usize = 512 * 1024;

/// What the browser is sent to, and what must be remembered until it comes back.
#[derive(Clone)]
pub struct Begin {
    pub url: url::Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// Why a sign-in through the upstream failed. `code()` is recorded and shown.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the identity provider answered from another issuer ({0})")]
    IssuerMismatch(String),
    #[error("the identity provider did not say which issuer answered, though it promised to")]
    IssuerMissing,
    #[error("the identity provider refused the code: {0}")]
    TokenRefused(String),
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider sent no ID token")]
    NoIdToken,
    #[error("the ID token is not valid: {0}")]
    IdToken(String),
    #[error("the identity provider's user information could not be read: {0}")]
    Userinfo(String),
    #[error("the identity provider gave no subject")]
    NoSubject,
    #[error("{0}")]
    NotAllowed(#[from] mapping::NotAllowed),
}

impl SignInError {
    /// A short stable code for events and pages.
    pub fn code(&self) -> &'static str {
        match self {
            SignInError::IssuerMismatch(_) => "issuer_mismatch",
            SignInError::IssuerMissing => "issuer_missing",
            SignInError::TokenRefused(_) => "token_refused",
            SignInError::Unreachable(_) => "provider_unreachable",
            SignInError::NoIdToken => "no_id_token",
            SignInError::IdToken(_) => "id_token_invalid",
            SignInError::Userinfo(_) => "userinfo_failed",
            SignInError::NoSubject => "no_subject",
            SignInError::NotAllowed(n) => n.code(),
        }
    }
}

/// Why the user's upstream tokens could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The upstream said no (`invalid_grant`: revoked, expired, user disabled): the person
    /// is no longer signed in upstream.
    #[error("the identity provider refused the refresh: {0}")]
    Refused(String),
    /// No answer, or one that says nothing about the person: try again later.
    #[error("the identity provider could not be asked: {0}")]
    Unavailable(String),
}

struct Oidc {
    /// The issuer ID tokens must name (`{tenantid}` replaced by the token's `tid` for
    /// Microsoft's multi-tenant endpoints).
    issuer: String,
    /// RFC 9207: the provider puts `iss` in its authorization responses.
    iss_parameter: bool,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    jwks_uri: String,
    jwks: Mutex<(CoreJsonWebKeySet, Instant)>,
}

/// What a discovery document says that Grantline uses, once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// The issuer as published (Microsoft's multi-tenant template included).
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    /// The asymmetric algorithms ID tokens may be signed with.
    pub algorithms: Vec<CoreJwsSigningAlgorithm>,
    /// RFC 9207: `iss` comes with each authorization response.
    pub iss_parameter: bool,
    /// The token endpoint takes the client secret in the body only.
    pub secret_in_body: bool,
}

/// Checks an OpenID Provider's discovery document against the configured provider: it must
/// parse as one (`openidconnect`), name the configured issuer (OIDC Discovery §4.3; for
/// Microsoft's `common`/`organizations`/`consumers` endpoints, the `{tenantid}` template),
/// have a token endpoint, and offer an asymmetric ID-token algorithm.
pub fn check_discovery(provider: &Provider, doc: &Value) -> Result<Discovered, FederationError> {
    let bad = |m: String| FederationError::Discovery(format!("{}: {m}", provider.id));
    let issuer = provider.issuer.clone().unwrap_or_default();
    let meta: CoreProviderMetadata = serde_json::from_value(doc.clone())
        .map_err(|e| bad(format!("not an OpenID Provider document: {e}")))?;
    let published = meta.issuer().as_str().to_string();
    let multi_tenant = ["/common/", "/organizations/", "/consumers/"]
        .iter()
        .any(|t| issuer.contains(t));
    let template =
        provider.flavor == Flavor::Microsoft && published.contains("{tenantid}") && multi_tenant;
    if published != issuer && !template {
        return Err(bad(format!(
            "the discovery document names the issuer {published:?}, not the configured {issuer:?} (check the URL, realm or tenant)"
        )));
    }
    let token_endpoint = meta
        .token_endpoint()
        .map(|t| t.as_str().to_string())
        .ok_or_else(|| bad("the discovery document has no token_endpoint".into()))?;
    let algorithms: Vec<CoreJwsSigningAlgorithm> = meta
        .id_token_signing_alg_values_supported()
        .iter()
        .filter(|a| {
            !matches!(
                a,
                CoreJwsSigningAlgorithm::None
                    | CoreJwsSigningAlgorithm::HmacSha256
                    | CoreJwsSigningAlgorithm::HmacSha384
                    | CoreJwsSigningAlgorithm::HmacSha512
            )
        })
        .cloned()
        .collect();
    if algorithms.is_empty() {
        return Err(bad(
            "the provider signs ID tokens with no asymmetric algorithm".into(),
        ));
    }
    let methods: Vec<&str> = doc
        .get("token_endpoint_auth_methods_supported")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // Absent means client_secret_basic (OIDC Discovery §3).
    let secret_in_body = !methods.is_empty()
        && !methods.contains(&"client_secret_basic")
        && methods.contains(&"client_secret_post");
    // The document chooses where the client secret, the code, the PKCE verifier and the
    // user's tokens go: each endpoint must be as safe as the issuer the operator wrote.
    let endpoints = [
        (
            "authorization_endpoint",
            Some(meta.authorization_endpoint().url()),
        ),
        ("token_endpoint", meta.token_endpoint().map(|u| u.url())),
        (
            "userinfo_endpoint",
            meta.userinfo_endpoint().map(|u| u.url()),
        ),
        ("jwks_uri", Some(meta.jwks_uri().url())),
    ];
    for (name, url) in endpoints {
        if let Some(url) = url
            && !crate::config::secure(url)
        {
            return Err(bad(format!(
                "the discovery document's {name} {url} is not https (plain http only on a loopback address)"
            )));
        }
    }
    Ok(Discovered {
        issuer: published,
        authorization_endpoint: meta.authorization_endpoint().as_str().to_string(),
        token_endpoint,
        userinfo_endpoint: meta.userinfo_endpoint().map(|u| u.as_str().to_string()),
        jwks_uri: meta.jwks_uri().url().to_string(),
        algorithms,
        iss_parameter: doc
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        secret_in_body,
    })
}

/// A provider ready to sign people in.
pub struct Upstream {
    pub provider: Provider,
    client: OAuthClient,
    http: reqwest::Client,
    userinfo_url: Option<String>,
    oidc: Option<Oidc>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("id", &self.provider.id)
            .finish_non_exhaustive()
    }
}

/// An HTTP client for talking to identity providers: no redirects followed (a token or
/// userinfo endpoint that redirects is misconfigured, and following could leak credentials),
/// bounded time.
pub fn http_client() -> Result<reqwest::Client, FederationError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .user_agent("Grantline federation")
        .build()
        .map_err(|e| FederationError::Unreachable(e.to_string()))
}

/// Why a document could not be read: no answer at all, or an answer that is not one.
#[derive(Debug)]
enum Fetch {
    Unreachable(String),
    Invalid(String),
}

impl std::fmt::Display for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fetch::Unreachable(m) | Fetch::Invalid(m) => f.write_str(m),
        }
    }
}

impl From<Fetch> for String {
    fn from(f: Fetch) -> String {
        f.to_string()
    }
}

async fn get_json(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> Result<Value, Fetch> {
    let mut req = http.get(url).header("accept", "application/json");
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| unreachable(url, e))?;
    read_json(url, resp).await
}

fn unreachable(url: &str, e: reqwest::Error) -> Fetch {
    Fetch::Unreachable(format!("{url}: {}", e.without_url()))
}

/// A successful answer's JSON body, at most [`MAX_DOCUMENT`] bytes: read a chunk at a time
/// and given up on as soon as it is longer, so an upstream cannot make the server hold an
/// answer of any size.
async fn read_json(url: &str, mut resp: reqwest::Response) -> Result<Value, Fetch> {
    let status = resp.status();
    let too_large = || Fetch::Invalid(format!("{url} answered more than {MAX_DOCUMENT} bytes"));
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(url, e))? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(Fetch::Invalid(format!("{url} answered {status}")));
    }
    serde_json::from_slice(&body)
        .map_err(|e| Fetch::Invalid(format!("{url} did not answer JSON: {e}")))
}

/// Why a token request got no usable answer.
#[derive(Debug, thiserror::Error)]
enum TokenHttpError {
    #[error("{0}")]
    Request(String),
    #[error("the token endpoint answered more than {MAX_DOCUMENT} bytes")]
    TooLarge,
}

/// oauth2's HTTP client for token requests: the shared client, reading at most
/// [`MAX_DOCUMENT`] bytes of the answer (a token endpoint is no reason to hold unbounded
/// memory).
async fn send_bounded(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, TokenHttpError> {
    let failed = |e: reqwest::Error| TokenHttpError::Request(e.without_url().to_string());
    let request = reqwest::Request::try_from(request).map_err(failed)?;
    let mut response = http.execute(request).await.map_err(failed)?;
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT as u64)
    {
        return Err(TokenHttpError::TooLarge);
    }
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(TokenHttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let status = if status.is_success() && is_error_body(&body) {
        oauth2::http::StatusCode::BAD_REQUEST
    } else {
        status
    };
    let mut answer = oauth2::http::Response::builder().status(status);
    for (name, value) in &headers {
        answer = answer.header(name, value);
    }
    answer
        .body(body)
        .map_err(|e| TokenHttpError::Request(e.to_string()))
}

/// The `prompt` of a fresh sign-in (beside `max_age=0`): `login`, and `consent` too where the
/// provider is asked for consent each time (Google where tokens are kept: its refresh token
/// comes only with it). Google lists `none`, `consent` and `select_account` as its values, not
/// `login`: there `max_age=0` asks for the sign-in, and `consent` is kept where it was asked.
fn fresh_prompt(params: &[(String, String)], google: bool) -> Option<&'static str> {
    let consent = params
        .iter()
        .any(|(k, v)| k == "prompt" && v.split(' ').any(|p| p == "consent"));
    match (google, consent) {
        (true, true) => Some("consent"),
        (true, false) => None,
        (false, true) => Some("login consent"),
        (false, false) => Some("login"),
    }
}

/// A token endpoint's `200 OK` that is an RFC 6749 §5.2 error: GitHub answers its errors so
/// (`{"error": "bad_refresh_token"}`). Read as the error it is rather than as a token response
/// that does not parse, which would say "the provider cannot be asked" when it said no.
fn is_error_body(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        error: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        access_token: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(body)
        .is_ok_and(|p| p.error.is_some() && p.access_token.is_none())
}

/// The shared client as oauth2's HTTP client, through [`send_bounded`].
struct Bounded<'a>(&'a reqwest::Client);

type BoundedFuture<'c> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, TokenHttpError>> + Send + 'c>,
>;

impl<'c> oauth2::AsyncHttpClient<'c> for Bounded<'_> {
    type Error = TokenHttpError;
    type Future = BoundedFuture<'c>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(send_bounded(self.0, request))
    }
}

/// A GitHub list, page by page (`per_page=100`, following `Link: <…>; rel="next"` while it
/// stays on the API's origin, so the token goes nowhere else), up to `max` items.
async fn get_list(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    max: usize,
) -> Result<Vec<Value>, Fetch> {
    let origin = url::Url::parse(url)
        .map_err(|e| Fetch::Invalid(format!("{url}: {e}")))?
        .origin();
    let mut next = Some(format!("{url}?per_page=100"));
    let mut items = Vec::new();
    // As many pages as `max` items need at GitHub's 100 a page, and one more: an upstream
    // answering a few items a page cannot keep a sign-in waiting page after page.
    let mut pages = max.div_ceil(100) + 1;
    while let Some(page) = next.take()
        && items.len() < max
        && pages > 0
    {
        pages -= 1;
        let resp = http
            .get(&page)
            .header("accept", "application/json")
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unreachable(&page, e))?;
        next = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link)
            .filter(|n| url::Url::parse(n).is_ok_and(|n| n.origin() == origin));
        match read_json(&page, resp).await? {
            Value::Array(a) if a.is_empty() => break,
            Value::Array(a) => items.extend(a),
            _ => return Err(Fetch::Invalid(format!("{page} did not answer a list"))),
        }
    }
    items.truncate(max);
    Ok(items)
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let next = params
            .split(';')
            .any(|p| p.trim().eq_ignore_ascii_case("rel=\"next\""));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        next.then(|| target.to_string())
    })
}

impl Upstream {
    /// Prepares the provider: for OIDC, fetches and checks its discovery document and keys.
    /// An error here means the provider cannot be used (unreachable, or a document that does
    /// not describe the configured issuer).
    pub async fn connect(
        provider: Provider,
        http: reqwest::Client,
    ) -> Result<Upstream, FederationError> {
        let bad = |m: String| FederationError::Discovery(format!("{}: {m}", provider.id));
        let mut body_auth = false;
        let (auth, token, userinfo, oidc) = match provider.kind {
            Kind::OAuth2 => (
                provider.authorization_url.clone().unwrap_or_default(),
                provider.token_url.clone().unwrap_or_default(),
                provider.userinfo_url.clone(),
                None,
            ),
            Kind::Oidc => {
                let issuer = provider.issuer.clone().unwrap_or_default();
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc = get_json(&http, &url, None).await.map_err(|e| match e {
                    Fetch::Unreachable(m) => {
                        FederationError::Unreachable(format!("{}: discovery: {m}", provider.id))
                    }
                    Fetch::Invalid(m) => bad(format!("discovery: {m}")),
                })?;
                let d = check_discovery(&provider, &doc)?;
                let jwks_uri = d.jwks_uri.clone();
                let jwks = fetch_jwks(&http, &jwks_uri).await.map_err(|e| {
                    FederationError::Unreachable(format!("{}: keys: {e}", provider.id))
                })?;
                body_auth = d.secret_in_body;
                (
                    d.authorization_endpoint,
                    d.token_endpoint,
                    d.userinfo_endpoint,
                    Some(Oidc {
                        issuer: d.issuer,
                        iss_parameter: d.iss_parameter,
                        algorithms: d.algorithms,
                        jwks_uri,
                        jwks: Mutex::new((jwks, Instant::now())),
                    }),
                )
            }
        };
        let auth = AuthUrl::new(auth).map_err(|e| bad(format!("authorization URL: {e}")))?;
        let token = TokenUrl::new(token).map_err(|e| bad(format!("token URL: {e}")))?;
        let client = oauth2::Client::new(ClientId::new(provider.client_id.clone()))
            .set_client_secret(ClientSecret::new(provider.client_secret.0.clone()))
            .set_auth_uri(auth)
            .set_token_uri(token)
            .set_auth_type(
                // GitHub and Atlassian take the secret in the body, and so does an OIDC
                // provider that offers client_secret_post but not client_secret_basic.
                if body_auth || matches!(provider.flavor, Flavor::GitHub | Flavor::Atlassian) {
                    AuthType::RequestBody
                } else {
                    AuthType::BasicAuth
                },
            );
        Ok(Upstream {
            provider,
            client,
            http,
            userinfo_url: userinfo,
            oidc,
        })
    }

    /// For an OAuth 2.0 provider, who vouches for subjects: the origin of its userinfo URL
    /// (else its token URL).
    fn api_origin(&self) -> String {
        self.userinfo_url
            .as_deref()
            .or(self.provider.token_url.as_deref())
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }

    /// The issuer every sign-in through this provider names
    /// ([`UpstreamIdentity::issuer`]), when it is one: not for Microsoft's multi-tenant
    /// endpoints, whose issuer is each tenant's.
    pub fn link_issuer(&self) -> Option<String> {
        match &self.oidc {
            Some(o) if o.issuer.contains("{tenantid}") => None,
            Some(o) => Some(o.issuer.clone()),
            None => Some(self.api_origin()).filter(|o| !o.is_empty() && o != "null"),
        }
    }

    /// The issuer as published (OIDC), for RFC 9207 checks and documentation.
    pub fn issuer(&self) -> Option<&str> {
        self.oidc.as_ref().map(|o| o.issuer.as_str())
    }

    /// The authorization request: PKCE (S256), a fresh `state` and, for OIDC, a `nonce`.
    ///
    /// `fresh`: the application asked for a fresh sign-in (`prompt=login`); an OpenID
    /// provider is asked to sign the person in again (`prompt=login`, `max_age=0`) rather than
    /// answer from its own session, and [`Upstream::finish`] checks that it did.
    pub fn begin(&self, redirect_uri: &str, fresh: bool) -> Result<Begin, FederationError> {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| FederationError::Config(format!("callback URL: {e}")))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = Nonce::new_random();
        let mut req = self
            .client
            .authorize_url(CsrfToken::new_random)
            .set_redirect_uri(Cow::Owned(redirect))
            .set_pkce_challenge(challenge)
            .add_scopes(self.provider.scopes.iter().cloned().map(Scope::new));
        if self.oidc.is_some() {
            req = req.add_extra_param("nonce", nonce.secret().clone());
        }
        let fresh = fresh && self.oidc.is_some();
        for (k, v) in &self.provider.authorization_params {
            if fresh && (k == "prompt" || k == "max_age") {
                continue;
            }
            req = req.add_extra_param(k.clone(), v.clone());
        }
        if fresh {
            let google = self.provider.flavor == Flavor::Google;
            if let Some(prompt) = fresh_prompt(&self.provider.authorization_params, google) {
                req = req.add_extra_param("prompt", prompt);
            }
            req = req.add_extra_param("max_age", "0");
        }
        let (url, state) = req.url();
        Ok(Begin {
            url,
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// RFC 9207: when the provider promises `iss` in its authorization responses, it must be
    /// there and be the issuer; when present, it must match whatever the provider promised.
    pub fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInError> {
        let Some(o) = &self.oidc else {
            return Ok(());
        };
        match iss {
            Some(i) if issuer_matches(&o.issuer, i) => Ok(()),
            Some(i) => Err(SignInError::IssuerMismatch(i.chars().take(200).collect())),
            None if o.iss_parameter => Err(SignInError::IssuerMissing),
            None => Ok(()),
        }
    }

    /// Exchanges the code (with the PKCE verifier) and validates the ID token against the
    /// nonce (OIDC) or reads userinfo (OAuth 2.0). The caller checks the admission rules
    /// ([`mapping::admitted`]) so that a refusal can name the linked user.
    pub async fn finish(
        &self,
        code: &str,
        redirect_uri: &str,
        nonce: &str,
        pkce_verifier: &str,
        now_secs: i64,
        fresh_since: Option<i64>,
    ) -> Result<(UpstreamIdentity, UpstreamTokens), SignInError> {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| SignInError::TokenRefused(e.to_string()))?;
        let resp = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_redirect_uri(Cow::Owned(redirect))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&Bounded(&self.http))
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    SignInError::TokenRefused(r.error().as_ref().to_string())
                }
                RequestTokenError::Request(e) => SignInError::Unreachable(e.to_string()),
                RequestTokenError::Parse(e, _) => {
                    SignInError::TokenRefused(format!("unreadable token response: {e}"))
                }
                RequestTokenError::Other(e) => SignInError::TokenRefused(e),
            })?;
        let tokens = tokens_of(&resp, now_secs, None);
        let mut claims = match &self.oidc {
            Some(o) => {
                let raw = resp
                    .extra_fields()
                    .id_token
                    .as_deref()
                    .ok_or(SignInError::NoIdToken)?;
                let claims = self.verify_id_token(o, raw, nonce, now_secs).await?;
                // A fresh sign-in was asked for (OIDC Core 3.1.2.1: with `max_age` the
                // provider must send `auth_time`): the person signed in there since it began.
                if let Some(since) = fresh_since {
                    let skew = self.provider.clock_skew_secs as i64;
                    match claims.get("auth_time").and_then(Value::as_i64) {
                        Some(at) if at >= since - skew => {}
                        Some(at) => {
                            return Err(SignInError::IdToken(format!(
                                "a fresh sign-in was asked for, but the person signed in at \
                                 {at}, before it began ({since})"
                            )));
                        }
                        None => {
                            return Err(SignInError::IdToken(
                                "a fresh sign-in was asked for, and the ID token does not say \
                                 when the person signed in (auth_time)"
                                    .into(),
                            ));
                        }
                    }
                }
                claims
            }
            None => Map::new(),
        };
        let needs_userinfo = self.oidc.is_none()
            || !claims.contains_key(&self.provider.email_field)
            || !claims.contains_key(&self.provider.name_field);
        if needs_userinfo && let Some(url) = &self.userinfo_url {
            let info = get_json(&self.http, url, Some(&tokens.access_token))
                .await
                .map_err(|e| SignInError::Userinfo(e.into()))?;
            let Value::Object(info) = info else {
                return Err(SignInError::Userinfo("not a JSON object".into()));
            };
            if self.oidc.is_some() {
                // OIDC Core 5.3.2: userinfo's sub must be the ID token's.
                if info.get("sub") != claims.get("sub") {
                    return Err(SignInError::Userinfo(
                        "its subject is not the ID token's".into(),
                    ));
                }
                for (k, v) in info {
                    claims.entry(k).or_insert(v);
                }
            } else {
                claims = info;
            }
        }
        let mut who = self.identity_of(&claims)?;
        if self.provider.flavor == Flavor::GitHub {
            self.github_details(&tokens.access_token, &mut who).await?;
        }
        Ok((who, tokens))
    }

    fn identity_of(&self, claims: &Map<String, Value>) -> Result<UpstreamIdentity, SignInError> {
        let p = &self.provider;
        let subject = identity::field(claims, &p.subject_field).ok_or(SignInError::NoSubject)?;
        let verified = claims
            .get("email_verified")
            .is_some_and(|v| v == &Value::Bool(true) || v == "true");
        let email = identity::field(claims, &p.email_field)
            .filter(|_| verified)
            .map(|e| e.to_ascii_lowercase());
        let issuer = match &self.oidc {
            // Checked against the configured issuer with the ID token's signature.
            Some(_) => claims
                .get("iss")
                .and_then(Value::as_str)
                .ok_or_else(|| SignInError::IdToken("it names no issuer".into()))?
                .to_string(),
            None => self.api_origin(),
        };
        Ok(UpstreamIdentity {
            subject,
            issuer,
            email,
            name: identity::field(claims, &p.name_field),
            username: identity::field(claims, &p.username_field),
            claims: identity::claim_lists(claims, &mapping::rule_paths(p)),
        })
    }

    /// GitHub: the verified primary email, organisations and teams (for admission and roles).
    async fn github_details(
        &self,
        token: &str,
        who: &mut UpstreamIdentity,
    ) -> Result<(), SignInError> {
        let api = self
            .provider
            .api_url
            .as_deref()
            .unwrap_or(crate::presets::GITHUB_API);
        let emails = get_json(&self.http, &format!("{api}/user/emails"), Some(token))
            .await
            .map_err(|e| SignInError::Userinfo(e.into()))?;
        who.email = emails.as_array().and_then(|a| {
            a.iter()
                .find(|e| e["primary"] == true && e["verified"] == true)
                .and_then(|e| e["email"].as_str())
                .map(|e| e.to_ascii_lowercase())
        });
        let list = |path: &str| format!("{api}{path}");
        let max = identity::MAX_CLAIM_VALUES;
        let userinfo = |e: Fetch| SignInError::Userinfo(e.into());
        let orgs: Vec<String> = get_list(&self.http, &list("/user/orgs"), token, max)
            .await
            .map_err(userinfo)?
            .iter()
            .filter_map(|o| o["login"].as_str().map(str::to_ascii_lowercase))
            .collect();
        let teams: Vec<String> = get_list(&self.http, &list("/user/teams"), token, max)
            .await
            .map_err(userinfo)?
            .iter()
            .filter_map(|t| {
                Some(format!(
                    "{}/{}",
                    t["organization"]["login"].as_str()?.to_ascii_lowercase(),
                    t["slug"].as_str()?
                ))
            })
            .collect();
        who.claims.insert("orgs".into(), orgs);
        who.claims.insert("teams".into(), teams);
        Ok(())
    }

    async fn verify_id_token(
        &self,
        o: &Oidc,
        raw: &str,
        nonce: &str,
        now_secs: i64,
    ) -> Result<Map<String, Value>, SignInError> {
        let token: CoreIdToken = raw
            .parse()
            .map_err(|e| SignInError::IdToken(format!("not a JWT: {e}")))?;
        let payload = payload_of(raw)?;
        // Microsoft's multi-tenant issuer names the token's own tenant.
        let expected_issuer = match payload.get("tid").and_then(Value::as_str) {
            Some(tid) if o.issuer.contains("{tenantid}") => o.issuer.replace("{tenantid}", tid),
            _ => o.issuer.clone(),
        };
        let attempt =
            |jwks: CoreJsonWebKeySet| -> Result<(), openidconnect::ClaimsVerificationError> {
                let skew = self.provider.clock_skew_secs as i64;
                let now = chrono::DateTime::from_timestamp(now_secs, 0).unwrap_or_default();
                let earliest =
                    chrono::DateTime::from_timestamp(now_secs - skew, 0).unwrap_or_default();
                let verifier = CoreIdTokenVerifier::new_public_client(
                    ClientId::new(self.provider.client_id.clone()),
                    IssuerUrl::new(expected_issuer.clone()).map_err(|e| {
                        openidconnect::ClaimsVerificationError::Other(e.to_string())
                    })?,
                    jwks,
                )
                .set_allowed_algs(o.algorithms.clone())
                .set_time_fn(move || earliest)
                .set_issue_time_verifier_fn(move |iat| {
                    if iat > now + chrono::Duration::seconds(skew) {
                        Err(format!("issued in the future ({iat})"))
                    } else {
                        Ok(())
                    }
                });
                token
                    .claims(&verifier, &Nonce::new(nonce.to_string()))
                    .map(|_| ())
            };
        // Keys older than the provider's cache time are fetched again first, so a key the
        // provider withdrew is refused even when no token with a new key has come along (a
        // provider that cannot be asked leaves the cached keys in use).
        let (mut keys, fetched) = self.keys(o);
        if fetched.elapsed() >= Duration::from_secs(self.provider.jwks_cache_secs)
            && let Some(fresh) = self.refresh_keys(o).await
        {
            keys = fresh;
        }
        let result = match attempt(keys) {
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider may have rotated its keys: fetch them again (rate-limited).
                match self.refresh_keys(o).await {
                    Some(keys) => attempt(keys),
                    None => Err(
                        openidconnect::ClaimsVerificationError::SignatureVerification(
                            openidconnect::SignatureVerificationError::NoMatchingKey,
                        ),
                    ),
                }
            }
            other => other,
        };
        result.map_err(|e| SignInError::IdToken(chain(&e)))?;
        // OIDC Core 3.1.3.7 steps 4-5, which openidconnect leaves to the relying party: with
        // several audiences `azp` must be present, and when present it must be this client.
        let audiences = match payload.get("aud") {
            Some(Value::Array(a)) => a.len(),
            Some(_) => 1,
            None => 0,
        };
        match payload.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != self.provider.client_id => {
                return Err(SignInError::IdToken(format!(
                    "the authorized party (azp) is {azp:?}, not this client"
                )));
            }
            None if audiences > 1 => {
                return Err(SignInError::IdToken(
                    "several audiences and no authorized party (azp)".into(),
                ));
            }
            _ => {}
        }
        Ok(payload)
    }

    fn keys(&self, o: &Oidc) -> (CoreJsonWebKeySet, Instant) {
        match o.jwks.lock() {
            Ok(g) => (g.0.clone(), g.1),
            Err(p) => {
                let g = p.into_inner();
                (g.0.clone(), g.1)
            }
        }
    }

    /// Fetches the JWKS again unless it was fetched within [`JWKS_REFRESH`]; `None` when it
    /// was, or the fetch failed.
    async fn refresh_keys(&self, o: &Oidc) -> Option<CoreJsonWebKeySet> {
        let (_, fetched) = self.keys(o);
        if fetched.elapsed() < JWKS_REFRESH {
            return None;
        }
        match fetch_jwks(&self.http, &o.jwks_uri).await {
            Ok(k) => {
                if let Ok(mut g) = o.jwks.lock() {
                    *g = (k.clone(), Instant::now());
                }
                tracing::info!(provider = %self.provider.id, "identity provider keys fetched again");
                Some(k)
            }
            Err(e) => {
                tracing::warn!(provider = %self.provider.id, error = %e, "identity provider keys could not be fetched");
                None
            }
        }
    }

    /// Refreshes the user's upstream tokens. `Refused` means the upstream no longer accepts
    /// the person (revoked, disabled): the caller deprovisions.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        now_secs: i64,
    ) -> Result<UpstreamTokens, RefreshError> {
        let token = RefreshToken::new(refresh_token.to_string());
        let resp = self
            .client
            .exchange_refresh_token(&token)
            .request_async(&Bounded(&self.http))
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => match r.error() {
                    // Only invalid_grant is about the person; unauthorized_client and the
                    // rest are about Grantline's client there, and must not deprovision.
                    BasicErrorResponseType::InvalidGrant => {
                        RefreshError::Refused(r.error().as_ref().to_string())
                    }
                    // GitHub's name for it: the refresh token expired, or the person revoked
                    // the app or was suspended.
                    BasicErrorResponseType::Extension(e) if e == "bad_refresh_token" => {
                        RefreshError::Refused(e.clone())
                    }
                    other => RefreshError::Unavailable(other.as_ref().to_string()),
                },
                RequestTokenError::Request(e) => RefreshError::Unavailable(e.to_string()),
                RequestTokenError::Parse(e, _) => RefreshError::Unavailable(e.to_string()),
                RequestTokenError::Other(e) => RefreshError::Unavailable(e),
            })?;
        Ok(tokens_of(&resp, now_secs, Some(refresh_token)))
    }

    /// Whether the person is still admitted where the provider can say so at any time: for
    /// GitHub with `allowed_organizations`, a member of one of them (removal from the
    /// organisation is how GitHub people are deprovisioned, and their OAuth token outlives
    /// it). The other admission rules rest on what the provider vouched for at sign-in (a
    /// verified email's domain, a tenant, a hosted domain), which a refresh does not change.
    /// Asked with the person's token at each upstream check; only a list that names no
    /// allowed organisation is a refusal.
    pub async fn still_admitted(&self, access_token: &str) -> Result<(), RefreshError> {
        let p = &self.provider;
        if p.flavor != Flavor::GitHub || p.allowed_organizations.is_empty() {
            return Ok(());
        }
        let api = p.api_url.as_deref().unwrap_or(crate::presets::GITHUB_API);
        let orgs = get_list(
            &self.http,
            &format!("{api}/user/orgs"),
            access_token,
            identity::MAX_CLAIM_VALUES,
        )
        .await
        .map_err(|e| RefreshError::Unavailable(e.into()))?;
        let member = orgs.iter().any(|o| {
            o["login"]
                .as_str()
                .is_some_and(|l| p.allowed_organizations.contains(&l.to_ascii_lowercase()))
        });
        if member {
            Ok(())
        } else {
            Err(RefreshError::Refused(format!(
                "{}: no longer a member of an allowed organization",
                mapping::NotAllowed::Organization.code()
            )))
        }
    }

    /// Whether the person's upstream session still stands, for providers that issue no
    /// refresh token: userinfo answers 401 once the access token is revoked.
    pub async fn still_valid(&self, access_token: &str) -> Result<(), RefreshError> {
        let Some(url) = &self.userinfo_url else {
            return Ok(());
        };
        let resp = self
            .http
            .get(url)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| RefreshError::Unavailable(e.without_url().to_string()))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            // 401 only: a 403 is also how providers answer rate limits.
            401 => Err(RefreshError::Refused(format!(
                "userinfo answered {}",
                resp.status()
            ))),
            s => Err(RefreshError::Unavailable(format!("userinfo answered {s}"))),
        }
    }
}

/// An error with its causes, `: `-separated (openidconnect puts the specific reason, such as
/// "no matching key", in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn issuer_matches(published: &str, presented: &str) -> bool {
    if published.contains("{tenantid}") {
        let (pre, post) = published
            .split_once("{tenantid}")
            .unwrap_or((published, ""));
        presented.len() > pre.len() + post.len()
            && presented.starts_with(pre)
            && presented.ends_with(post)
            && !presented[pre.len()..presented.len() - post.len()].contains('/')
    } else {
        published == presented
    }
}

fn tokens_of(resp: &Tokens, now_secs: i64, previous_refresh: Option<&str>) -> UpstreamTokens {
    UpstreamTokens {
        access_token: resp.access_token().secret().clone(),
        refresh_token: resp
            .refresh_token()
            .map(|r| r.secret().clone())
            .or_else(|| previous_refresh.map(String::from)),
        expires_at: resp.expires_in().map(|d| now_secs + d.as_secs() as i64),
        scope: resp
            .scopes()
            .map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" ")),
        instance_url: resp.extra_fields().instance_url.clone(),
    }
}

/// The claims of a JWT whose signature has been (or is about to be) verified.
fn payload_of(raw: &str) -> Result<Map<String, Value>, SignInError> {
    let part = raw
        .split('.')
        .nth(1)
        .ok_or_else(|| SignInError::IdToken("not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| SignInError::IdToken("payload is not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| SignInError::IdToken("payload is not a JSON object".into()))
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<CoreJsonWebKeySet, String> {
    let v = get_json(http, url, None).await.map_err(String::from)?;
    serde_json::from_value(v).map_err(|e| format!("{url} is not a JWK set: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// GitHub answers token-endpoint errors with `200 OK`: such a body is read as the error it
    /// is; a token answer, or something that is neither, is left to the token parser.
    #[test]
    fn a_fresh_sign_in_keeps_asking_for_consent_where_the_provider_asks_for_it() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let consent = p("prompt", "consent");
        assert_eq!(fresh_prompt(&consent, false), Some("login consent"));
        let both = p("prompt", "select_account consent");
        assert_eq!(fresh_prompt(&both, false), Some("login consent"));
        assert_eq!(
            fresh_prompt(&p("prompt", "select_account"), false),
            Some("login")
        );
        assert_eq!(
            fresh_prompt(&p("access_type", "consent"), false),
            Some("login")
        );
        assert_eq!(fresh_prompt(&[], false), Some("login"));
        // Google knows no `login`: `max_age=0` asks for the sign-in there.
        assert_eq!(fresh_prompt(&consent, true), Some("consent"));
        assert_eq!(fresh_prompt(&[], true), None);
    }

    #[test]
    fn a_success_status_with_an_error_body_is_an_error() {
        assert!(is_error_body(
            br#"{"error":"bad_refresh_token","error_description":"x"}"#
        ));
        assert!(!is_error_body(
            br#"{"access_token":"ghu_1","token_type":"bearer"}"#
        ));
        assert!(!is_error_body(br#"{"access_token":"ghu_1","error":"odd"}"#));
        assert!(!is_error_body(b"access_token=gho_1&token_type=bearer"));
        assert!(!is_error_body(b"[]"));
    }

    #[test]
    fn multi_tenant_issuers_admit_one_tenant_segment() {
        let t = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert!(issuer_matches(
            t,
            "https://login.microsoftonline.com/72f988bf/v2.0"
        ));
        assert!(!issuer_matches(
            t,
            "https://login.microsoftonline.com/a/b/v2.0"
        ));
        assert!(!issuer_matches(t, "https://evil.example/72f988bf/v2.0"));
        assert!(!issuer_matches(
            t,
            "https://login.microsoftonline.com//v2.0"
        ));
        assert!(issuer_matches("https://a.example", "https://a.example"));
        assert!(!issuer_matches("https://a.example", "https://a.example/"));
    }

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        let gh = "<https://api.github.com/user/orgs?per_page=100&page=2>; rel=\"next\", \
                  <https://api.github.com/user/orgs?per_page=100&page=3>; rel=\"last\"";
        assert_eq!(
            next_link(gh).as_deref(),
            Some("https://api.github.com/user/orgs?per_page=100&page=2")
        );
        let last = "<https://api.github.com/user/orgs?page=1>; rel=\"prev\", \
                    <https://api.github.com/user/orgs?page=1>; rel=\"first\"";
        assert_eq!(next_link(last), None);
        assert_eq!(next_link("garbage"), None);
        assert_eq!(
            next_link("https://x; rel=\"next\""),
            None,
            "the target needs <>"
        );
    }

    /// Serves one answer of `body_len` bytes (with or without a Content-Length) on a local
    /// port.
    async fn one_answer(body_len: usize, length_header: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let length = if length_header {
                format!("Content-Length: {body_len}\r\n")
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n"
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&vec![b' '; body_len]).await;
        });
        url
    }

    /// An HTTP server answering every request with `answer(n)` (the n-th request), then
    /// closing; counts the requests.
    async fn answers(
        answer: impl Fn(usize, &str) -> Vec<u8> + Send + Sync + 'static,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen, answer, me) = (count.clone(), Arc::new(answer), base.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (answer, me) = (answer.clone(), me.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(&answer(n, &me)).await;
                });
            }
        });
        (base, count)
    }

    #[tokio::test]
    async fn documents_are_read_up_to_a_bound_and_lists_up_to_a_few_pages() {
        let http = http_client().unwrap();
        // An answer that never ends (no length, no end): refused once over the bound, not
        // read until the time-out.
        let endless = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[";
                let _ = sock.write_all(head.as_bytes()).await;
                let spaces = vec![b' '; 64 * 1024];
                while sock.write_all(&spaces).await.is_ok() {}
            });
            url
        };
        let started = std::time::Instant::now();
        let e = get_json(&http, &format!("{endless}/jwks"), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // A list of one item a page, each pointing at the next: as many pages as the items
        // asked for need at 100 a page, and one more — not one request per item.
        let (pager, requests) = answers(|n, me| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLink: <{me}/user/orgs?page={}>; rel=\"next\"\r\nContent-Length: 12\r\nConnection: close\r\n\r\n[{{\"n\": {:>3}}}]",
                n + 2,
                n % 1000
            )
            .into_bytes()
        })
        .await;
        let items = get_list(&http, &format!("{pager}/user/orgs"), "t", 50)
            .await
            .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn token_answers_are_read_up_to_a_bound() {
        let http = http_client().unwrap();
        let request = |url: &str| {
            oauth2::http::Request::builder()
                .method("POST")
                .uri(url)
                .body(b"grant_type=x".to_vec())
                .unwrap()
        };
        for length_header in [true, false] {
            let url = one_answer(MAX_DOCUMENT + 1, length_header).await;
            let r = send_bounded(&http, request(&url)).await;
            assert!(
                matches!(r, Err(TokenHttpError::TooLarge)),
                "{length_header}: {r:?}"
            );
            let url = one_answer(1000, length_header).await;
            let r = send_bounded(&http, request(&url)).await.unwrap();
            assert_eq!((r.status().as_u16(), r.body().len()), (200, 1000));
        }
    }
}
