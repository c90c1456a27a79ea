//! The event catalogue: one payload type per kind the platform records.
//!
//! Designed as one piece (issue 2) though most producers come later. Rules for every field:
//! no secret ever appears — tokens, codes and client secrets only as ids or `*_digest`
//! (blake3, lowercase hex); personal data (username, email, display name, IP, user agent) only
//! as [`Sealed`] values under the subject's erasable key. `schemas/events.schema.json` documents
//! every kind, and a test fails when it and these types disagree.

use crate::{Sealed, Timestamp};
use serde::{Deserialize, Serialize};

macro_rules! catalogue {
    ( $( $(#[$doc:meta])* $name:literal => $variant:ident($ty:ident), )* ) => {
        /// Every payload, by kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Payload { $( $(#[$doc])* $variant($ty), )* }

        /// The kind of an event: its dotted name is the `kind` column.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $( $(#[$doc])* $variant, )* }

        impl Kind {
            /// All kinds, in catalogue order.
            pub const ALL: &'static [Kind] = &[ $( Kind::$variant, )* ];

            /// The dotted name, e.g. `token.refreshed`.
            pub fn as_str(self) -> &'static str {
                match self { $( Kind::$variant => $name, )* }
            }

            pub fn parse(name: &str) -> Option<Kind> {
                match name { $( $name => Some(Kind::$variant), )* _ => None }
            }
        }

        impl Payload {
            pub fn kind(&self) -> Kind {
                match self { $( Payload::$variant(_) => Kind::$variant, )* }
            }

            pub(crate) fn serialize_body<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self { $( Payload::$variant(p) => p.serialize(s), )* }
            }
        }

        /// Deserializes the payload of a known kind (the kind is read first from the envelope).
        pub(crate) struct PayloadSeed(pub Kind);

        impl<'de> serde::de::DeserializeSeed<'de> for PayloadSeed {
            type Value = Payload;
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Payload, D::Error> {
                match self.0 { $( Kind::$variant => $ty::deserialize(d).map(Payload::$variant), )* }
            }
        }

        $( impl From<$ty> for Payload { fn from(p: $ty) -> Payload { Payload::$variant(p) } } )*
    };
}

catalogue! {
    /// A client was registered: dynamically (RFC 7591), from a metadata document, the config file or an admin.
    "client.registered" => ClientRegistered(ClientRegistered),
    /// A client's metadata changed; absent fields are unchanged.
    "client.updated" => ClientUpdated(ClientUpdated),
    /// A client was disabled; its tokens stop working.
    "client.disabled" => ClientDisabled(ClientDisabled),
    /// A dynamically registered client never completed an authorization within the TTL.
    "client.expired" => ClientExpired(ClientExpired),
    /// A registration request was refused (policy or invalid metadata).
    "registration.rejected" => RegistrationRejected(RegistrationRejected),
    /// A local user account was created.
    "user.created" => UserCreated(UserCreated),
    /// A user was disabled; their sessions and tokens stop working.
    "user.disabled" => UserDisabled(UserDisabled),
    /// A user's role changed (by an admin, or by an identity provider's claims at sign-in).
    "user.role_changed" => UserRoleChanged(UserRoleChanged),
    /// A disabled user may act again. Nothing they held before comes back: every grant, token family and personal access token of theirs is revoked, and their sessions ended, in the same append.
    "user.enabled" => UserEnabled(UserEnabled),
    /// An administrator set a local user's password (its hash is kept apart from the ledger, never here). Every session the user began before it ends with it, on every instance; their grants and tokens stay (a containment revokes them).
    "user.password_set" => UserPasswordSet(UserPasswordSet),
    /// A user was linked to an identity at an upstream provider: (provider, subject) signs them in from now on.
    "user.linked" => UserLinked(UserLinked),
    /// A user's personal-data key was destroyed; their sealed fields now read as erased.
    "user.erased" => UserErased(UserErased),
    /// A user signed in.
    "login.succeeded" => LoginSucceeded(LoginSucceeded),
    /// A sign-in attempt failed.
    "login.failed" => LoginFailed(LoginFailed),
    /// A user signed out: the session's cookie is refused from now on, on every instance.
    "session.ended" => SessionEnded(SessionEnded),
    /// Every session the user began before this event ended at once (deprovisioning, containment, the user's own "revoke everything"): their cookies are refused on every instance, and every grant and personal access token of the user made before it is revoked with them (what an ended session made while the containment was being decided included).
    "user.sessions_ended" => UserSessionsEnded(UserSessionsEnded),
    /// A user approved a client's access to a resource with these scopes.
    "consent.granted" => ConsentGranted(ConsentGranted),
    /// A user refused a client's request.
    "consent.denied" => ConsentDenied(ConsentDenied),
    /// An authorization code was issued; it starts a token family.
    "code.issued" => CodeIssued(CodeIssued),
    /// An authorization code was exchanged for tokens (once).
    "code.redeemed" => CodeRedeemed(CodeRedeemed),
    /// An already redeemed code was presented again; the family is revoked.
    "code.replayed" => CodeReplayed(CodeReplayed),
    /// Tokens were issued from a code or client credentials.
    "token.issued" => TokenIssued(TokenIssued),
    /// A refresh token was rotated: new access and refresh tokens replace it.
    "token.refreshed" => TokenRefreshed(TokenRefreshed),
    /// One token was revoked (RFC 7009 or an admin).
    "token.revoked" => TokenRevoked(TokenRevoked),
    /// A rotated refresh token was presented after the grace period; the family is revoked.
    "refresh.reuse_detected" => RefreshReuseDetected(RefreshReuseDetected),
    /// A token or authorization request was refused with an RFC 6749 error (at most one event per client and error a minute; the rest are counted).
    "oauth.refused" => OAuthRefused(OAuthRefused),
    /// A whole token family was revoked.
    "family.revoked" => FamilyRevoked(FamilyRevoked),
    /// A user's grant to a client was revoked, and every family under it.
    "grant.revoked" => GrantRevoked(GrantRevoked),
    /// A personal access token was created (shown once; only its prefix afterwards).
    "pat.created" => PatCreated(PatCreated),
    /// A personal access token was revoked, for good.
    "pat.revoked" => PatRevoked(PatRevoked),
    /// A caller listed the tools of a resource.
    "tool.listed" => ToolListed(ToolListed),
    /// A tool call was authorized and is about to go upstream: recorded first, so a call the ledger cannot record is never made. Its outcome follows in `tool.called` with the same request id.
    "tool.call_started" => ToolCallStarted(ToolCallStarted),
    /// A caller called a tool (or tried to): the outcome.
    "tool.called" => ToolCalled(ToolCalled),
    /// A request to a protected resource was refused (credential, audience or authority).
    "authorization.denied" => AuthorizationDenied(AuthorizationDenied),
    /// Requests over a rate limit in one window, aggregated: one event per bucket and window.
    "rate_limit.exceeded" => RateLimitExceeded(RateLimitExceeded),
    /// A signing key was introduced; old public keys stay published.
    "signing_key.rotated" => SigningKeyRotated(SigningKeyRotated),
    /// A policy (registration, roles, rate limits, resources) changed.
    "policy.changed" => PolicyChanged(PolicyChanged),
    /// Someone searched the audit trail: access to the trail is itself audited.
    "audit.searched" => AuditSearched(AuditSearched),
    /// Someone exported events from the audit trail (a SIEM pull, a download, the CLI).
    "audit.exported" => AuditExported(AuditExported),
    /// A resource exchanged a user's identity assertion for the user's upstream access token (RFC 8693); the token itself is never recorded.
    "upstream_token.exchanged" => UpstreamTokenExchanged(UpstreamTokenExchanged),
    /// A caller read a resource or got a prompt from an MCP server (`resources/read`, `prompts/get`): recorded before the request goes upstream, so a read the ledger cannot record is never made.
    "content.read" => ContentRead(ContentRead),
}

/// How a client came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationMethod {
    Dynamic,
    MetadataDocument,
    Config,
    Admin,
}

/// RFC 7591 `application_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationType {
    Native,
    Web,
}

/// RFC 7591 `token_endpoint_auth_method` values Grantline supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    None,
    ClientSecretPost,
    ClientSecretBasic,
}

/// OAuth grant types Grantline supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

/// Access-token encoding for a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    Opaque,
    Jwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserSource {
    Bootstrap,
    Admin,
    Cli,
    IdentityProvider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    UnknownUser,
    BadPassword,
    UserDisabled,
    RateLimited,
    IdentityProviderError,
    /// The password was right, but password sign-in is off for this name
    /// (`login.local_accounts = false`, or an account linked to an identity provider, and not
    /// the break-glass admin): someone holds a password that is no longer meant to be used.
    PasswordNotAllowed,
    /// The password was right, but the user's role may not use what was asked (the HTTP Basic
    /// admin API for a non-admin): recorded like a failure, so that a right guess is neither
    /// faster nor quieter than a wrong one.
    RoleNotAllowed,
}

/// The bearer credential a resource request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    AccessToken,
    PersonalAccessToken,
}

/// A credential by id — never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub kind: CredentialKind,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolOutcome {
    Ok,
    Denied,
    UpstreamError,
    RateLimited,
    /// The MCP server ran the tool and answered that it failed (`result.isError`): the call
    /// went through, and what it did may be partly done (since 2026-12-07; before, `ok`).
    ToolError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateBucket {
    UserRead,
    UserWrite,
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPurpose {
    AccessToken,
    IdentityAssertion,
    Checkpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRegistered {
    pub client_id: String,
    pub client_name: String,
    pub method: RegistrationMethod,
    pub application_type: ApplicationType,
    pub token_endpoint_auth_method: AuthMethod,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<GrantType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_uri: Option<String>,
    /// For metadata-document clients, the URL the document was fetched from (equal to `client_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_document_url: Option<String>,
    /// blake3 of the client secret, confidential clients only.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::digest::option"
    )]
    pub secret_digest: Option<String>,
    /// When an unused dynamic registration ages out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientUpdated {
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uris: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_types: Option<Vec<GrantType>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// A rotated client secret's digest.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::digest::option"
    )]
    pub secret_digest: Option<String>,
    /// A changed token endpoint authentication method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<AuthMethod>,
    /// What the update removes, by field name: `scope` (the client is no longer limited to a
    /// registered scope) and `secret_digest` (it has no secret any more). A field absent above
    /// is otherwise left as it was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleared: Vec<String>,
}

/// The fields a `client.updated` can remove ([`ClientUpdated::cleared`]).
pub const CLEARED_SCOPE: &str = "scope";
pub const CLEARED_SECRET: &str = "secret_digest";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDisabled {
    pub client_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientExpired {
    pub client_id: String,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationRejected {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_id: Option<String>,
    pub redirect_uris: Vec<String>,
    /// RFC 7591 error code, e.g. `invalid_redirect_uri`.
    pub error: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Sealed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: String,
    pub username: Sealed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Sealed>,
    pub role: String,
    pub source: UserSource,
    /// The identity provider that created the user at their first sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDisabled {
    pub user_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEnabled {
    pub user_id: String,
    /// Why, in the administrator's words.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPasswordSet {
    pub user_id: String,
    /// Why, in the administrator's words (a reset after a leak, a first password).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRoleChanged {
    pub user_id: String,
    pub from: String,
    pub to: String,
    /// The identity provider whose claims changed it at a sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The claim that gave the new role (`groups=mcp-admins`); absent when no rule matched
    /// and the provider's default role applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLinked {
    pub user_id: String,
    /// The provider's id in the configuration.
    pub provider: String,
    /// The upstream subject, sealed under the user's key: personal data (it names the
    /// person upstream), erased with them.
    pub subject: Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserErased {
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSucceeded {
    pub user_id: String,
    /// `password`, or `idp:<name>` for an upstream identity provider.
    pub method: String,
    /// The session's id (not the cookie value).
    pub session_id: String,
    /// The identity provider the user signed in through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Who the provider said they are, sealed under the user's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_subject: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Sealed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub user_id: String,
    /// The `session_id` of the `login.succeeded` that began it.
    pub session_id: String,
    /// When the session's cookie would have expired; it need not be remembered after that.
    pub expires_at: Timestamp,
    /// The HTTP request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSessionsEnded {
    pub user_id: String,
    /// Why (the containment's or the deprovisioning's reason, or "the user revoked everything").
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFailed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The name that was tried, sealed (under the user's key, or a daily anonymous key if unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<Sealed>,
    pub reason: LoginFailure,
    /// The identity provider of a federated sign-in that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// What went wrong upstream, as a short code (`id_token_invalid`, `state_mismatch`,
    /// `access_denied`, …) with a bounded description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Sealed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentGranted {
    pub grant_id: String,
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
    /// The scopes granted: the whole consented set for this client and resource.
    pub scopes: Vec<String>,
    /// The scopes the client asked for in this authorization request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requested_scopes: Vec<String>,
    /// The client's display name as shown on the consent page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// False when an earlier consent covered the request and no page was shown.
    pub prompted: bool,
    /// The consent page answered (a digest of its request id): each page is answered once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::digest::option"
    )]
    pub consent_page: Option<String>,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentDenied {
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    /// The consent page answered (a digest of its request id): each page is answered once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::digest::option"
    )]
    pub consent_page: Option<String>,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeIssued {
    pub family_id: String,
    pub grant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    #[serde(with = "crate::digest")]
    pub code_digest: String,
    pub redirect_uri: String,
    /// Whether the authorization request named `redirect_uri` (RFC 6749 §4.1.3: then the token
    /// request must name it too).
    #[serde(default)]
    pub redirect_uri_in_request: bool,
    /// The PKCE S256 challenge (public; the verifier never appears).
    pub code_challenge: String,
    pub expires_at: Timestamp,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRedeemed {
    pub family_id: String,
    #[serde(with = "crate::digest")]
    pub code_digest: String,
    pub client_id: String,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeReplayed {
    pub family_id: String,
    #[serde(with = "crate::digest")]
    pub code_digest: String,
    pub client_id: String,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

/// An access token as recorded: id, digest, format and expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenRecord {
    pub token_id: String,
    #[serde(with = "crate::digest")]
    pub digest: String,
    pub format: TokenFormat,
    pub expires_at: Timestamp,
}

/// A refresh token as recorded: id, digest, idle and absolute expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshTokenRecord {
    pub token_id: String,
    #[serde(with = "crate::digest")]
    pub digest: String,
    pub expires_at: Timestamp,
    pub absolute_expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIssued {
    /// Absent for client credentials, which start no family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_id: Option<String>,
    pub grant_type: GrantType,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub resource: String,
    pub scopes: Vec<String>,
    pub access: AccessTokenRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshTokenRecord>,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRefreshed {
    pub family_id: String,
    pub client_id: String,
    pub user_id: String,
    pub resource: String,
    /// Equal to or narrower than the family's scopes.
    pub scopes: Vec<String>,
    /// The refresh token that was presented and is now rotated.
    pub rotated_refresh_id: String,
    pub access: AccessTokenRecord,
    pub refresh: RefreshTokenRecord,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub token_id: String,
    pub token_kind: TokenKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_id: Option<String>,
    pub reason: String,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

/// The OAuth endpoint a refused request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthEndpoint {
    Authorize,
    Token,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthRefused {
    pub endpoint: OAuthEndpoint,
    /// The registered client the request named (absent when it named none that exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Whether the client proved who it is with its secret. A public client names itself
    /// only (anyone may send its id), so its refused requests are attributed to no client.
    pub client_authenticated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_type: Option<GrantType>,
    /// The user behind the code or refresh token presented, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requested_scopes: Vec<String>,
    /// The RFC 6749 error code answered.
    pub error: String,
    pub description: String,
    /// Refusals of the same client with the same error that were counted but not recorded
    /// since the previous such event.
    pub suppressed: u64,
    /// The HTTP request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
    /// For a refused refresh: the family of the refresh token presented (an id, never the
    /// token), so that a replay under other rules can judge the presentation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_id: Option<String>,
    /// For a refused refresh: the id of the refresh token presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshReuseDetected {
    pub family_id: String,
    /// The rotated refresh token that was presented again.
    pub refresh_token_id: String,
    pub client_id: String,
    /// When that token had been rotated.
    pub rotated_at: Timestamp,
    pub grace_seconds: u64,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyRevoked {
    pub family_id: String,
    pub reason: String,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRevoked {
    pub grant_id: String,
    pub user_id: String,
    pub client_id: String,
    pub reason: String,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatCreated {
    pub pat_id: String,
    pub user_id: String,
    /// The token's name in plain text: only in events written before names were sealed
    /// (empty, and left out, since).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The token's name, sealed under the user's key (it is the user's own words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_name: Option<Sealed>,
    pub resource: String,
    pub scopes: Vec<String>,
    /// The visible start of the token (`glp_ab12…`), enough to recognise it, not to use it.
    pub prefix: String,
    #[serde(with = "crate::digest")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatRevoked {
    pub pat_id: String,
    pub user_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolListed {
    pub request_id: String,
    /// The W3C trace id of the request's trace (32 hex digits), when it was traced: the event
    /// leads to its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub credential: Credential,
    pub outcome: ToolOutcome,
    /// How many tools the caller was shown after filtering by authority.
    pub tools_returned: u32,
    pub duration_us: u64,
    /// As in `tool.call_started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallStarted {
    pub request_id: String,
    /// The W3C trace id of the request's trace (32 hex digits), when it was traced: the event
    /// leads to its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub resource: String,
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub credential: Credential,
    /// blake3 of the canonical arguments: the arguments themselves are never recorded.
    #[serde(with = "crate::digest")]
    pub arguments_digest: String,
    /// The caller's stated reason for the call, in plain text: for callers acting for no
    /// user (machine clients), and in events written before intents were sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// The stated reason of a call made for a user, sealed under the user's key (their own
    /// words, erased with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_intent: Option<Sealed>,
    /// The MCP session, when the client is in one: `b3:` and a digest of the upstream's
    /// `Mcp-Session-Id` (events before 2026-12-06 hold the id itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCalled {
    pub request_id: String,
    /// The W3C trace id of the request's trace (32 hex digits), when it was traced: the event
    /// leads to its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub resource: String,
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub credential: Credential,
    pub outcome: ToolOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// JSON-RPC or upstream error code, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    pub duration_us: u64,
    /// blake3 of the canonical arguments: the arguments themselves are never recorded.
    #[serde(with = "crate::digest")]
    pub arguments_digest: String,
    /// The caller's stated reason for the call, in plain text: for callers acting for no
    /// user (machine clients), and in events written before intents were sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// The stated reason of a call made for a user, sealed under the user's key (their own
    /// words, erased with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_intent: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<Sealed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationDenied {
    pub request_id: String,
    /// The W3C trace id of the request's trace (32 hex digits), when it was traced: the event
    /// leads to its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// e.g. `invalid_token`, `wrong_audience`, `insufficient_scope`, `role`.
    pub reason: String,
    pub required_scopes: Vec<String>,
    /// The JSON-RPC method or HTTP method that was refused.
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitExceeded {
    pub resource: String,
    pub bucket: RateBucket,
    /// The user id or client id the bucket belongs to.
    pub subject: String,
    pub window_start: Timestamp,
    pub window_seconds: u32,
    pub limit: u32,
    /// Requests refused in this window.
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRotated {
    pub purpose: KeyPurpose,
    pub key_id: String,
    /// `EdDSA`.
    pub algorithm: String,
    /// The Ed25519 public key, base64url without padding.
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// For a checkpoint key: the handover, a signed note by the key it replaces naming both
    /// keys (see `KeyHandover`), so that `verify` can follow rotations from the first key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement: Option<String>,
}

/// A W3C trace id as events record it: 32 lowercase hex digits, not all zeros; anything else
/// is recorded as no trace. The builders of events take it through here, so whatever reaches
/// them, a trace id in the ledger is bounded and well formed.
pub fn trace_id(id: Option<&str>) -> Option<String> {
    id.filter(|t| {
        t.len() == 32
            && t.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && t.bytes().any(|b| b != b'0')
    })
    .map(String::from)
}

/// The HTTP request behind an event: its id (as in the server's logs and the `X-Request-Id`
/// header) and the caller's address and user agent, sealed under the subject's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    pub request_id: String,
    /// The W3C trace id of the request's trace (32 hex digits), when it was traced: the event
    /// leads to its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Sealed>,
}

/// One setting that changed; values rendered as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub setting: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChanged {
    /// `registration`, `roles`, `rate_limits`, `resources`, …
    pub policy: String,
    pub changes: Vec<PolicyChange>,
}

/// Where an audit search or export was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSurface {
    /// The admin API (`/admin/api/audit/...`).
    Api,
    /// The audit page (`/admin/audit`).
    Page,
    /// The command line on the server host.
    Cli,
    /// The audit MCP server (`/mcp/audit`).
    Mcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSearched {
    pub surface: AuditSurface,
    /// The reviewer, when a user searched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The client that searched (an MCP client, a SIEM job), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The query as typed, sealed under the searcher's key: it may name a person.
    pub query: Sealed,
    /// How many results the search returned.
    pub results: u64,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExported {
    pub surface: AuditSurface,
    /// The reviewer, when a user exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The client that exported (a SIEM job), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `jsonl`, `ocsf`, `ecs`, `cef` or `csv`.
    pub format: String,
    /// The export began after this seq.
    pub after: u64,
    /// The last seq exported (absent when nothing was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// How many events were exported.
    pub count: u64,
    /// The event kinds asked for, when the export was filtered by kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The search whose results were downloaded, sealed under the exporter's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Sealed>,
    /// Whether personal data was left out.
    pub redacted: bool,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTokenExchanged {
    pub user_id: String,
    /// The confidential client the resource authenticated as.
    pub client_id: String,
    /// The resource whose identity assertion was exchanged.
    pub resource: String,
    /// The identity provider whose token was handed out.
    pub provider: String,
    /// The assertion's `jti` (the gateway request that made it).
    pub assertion_id: String,
    /// The upstream token had to be refreshed first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refreshed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRead {
    pub request_id: String,
    /// The W3C trace id of the request's trace (32 hex digits), when it was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub credential: Credential,
    /// `resources/read` or `prompts/get`.
    pub method: String,
    /// What was read (the resource's URI, the prompt's name), in plain text: for callers
    /// acting for no user (machine clients). Since 2026-12-07 a URI has its query and fragment
    /// as `k3:` and 16 hex digits of their blake3 digest keyed with the server's key (where
    /// presigned URLs carry their signatures), and a URI with an `@` (where a user and password
    /// can be) is its scheme and such a digest of the rest alone; a key rotation changes what
    /// the same URI digests to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What was read, for a user: sealed under the user's key (a URI can name the user's own
    /// files or messages), erased with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_target: Option<Sealed>,
    /// blake3 of a prompt's canonical arguments: the arguments themselves are never recorded.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::digest::option"
    )]
    pub arguments_digest: Option<String>,
    /// As in `tool.call_started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

#[cfg(test)]
mod trace_id_tests {
    use super::trace_id;

    #[test]
    fn only_a_well_formed_trace_id_is_recorded() {
        let good = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(Some(good)).as_deref(), Some(good));
        for bad in [
            "",
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "00000000000000000000000000000000",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "4bf92f3577b34da6a3ce929d0e0e47366",
            "4bf92f3577b34da6a3ce929d0e0e473\u{202e}",
            &"a".repeat(100_000),
        ] {
            assert_eq!(trace_id(Some(bad)), None, "{bad:.40}");
        }
        assert_eq!(trace_id(None), None);
    }
}
