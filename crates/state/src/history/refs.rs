//! What an event names: the ids a responder follows from one event to the next.

use grantline_ledger::{CredentialKind, Payload};

/// The ids one event names. Every kind is listed in [`refs`], so a new kind does not compile
/// until it says what it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs<'a> {
    pub family: Option<&'a str>,
    pub grant: Option<&'a str>,
    pub client: Option<&'a str>,
    pub user: Option<&'a str>,
    /// Access and refresh token ids the event names (issued, presented, revoked, used).
    pub tokens: Vec<&'a str>,
    pub pat: Option<&'a str>,
    /// The HTTP request (or MCP request) the event was recorded for.
    pub request: Option<&'a str>,
}

/// The ids `p` names.
pub fn refs(p: &Payload) -> Refs<'_> {
    use Payload as P;
    let mut r = Refs::default();
    match p {
        P::ClientRegistered(e) => {
            r.client = Some(&e.client_id);
            r.request = req(&e.request);
        }
        P::ClientUpdated(e) => r.client = Some(&e.client_id),
        P::ClientDisabled(e) => r.client = Some(&e.client_id),
        P::ClientExpired(e) => r.client = Some(&e.client_id),
        P::RegistrationRejected(_) => {}
        P::UserCreated(e) => r.user = Some(&e.user_id),
        P::UserDisabled(e) => r.user = Some(&e.user_id),
        P::UserEnabled(e) => r.user = Some(&e.user_id),
        P::UserPasswordSet(e) => r.user = Some(&e.user_id),
        P::UserSessionsEnded(e) => r.user = Some(&e.user_id),
        P::UserRoleChanged(e) => r.user = Some(&e.user_id),
        P::UserErased(e) => r.user = Some(&e.user_id),
        P::UserLinked(e) => r.user = Some(&e.user_id),
        P::UpstreamTokenExchanged(e) => {
            r.user = Some(&e.user_id);
            r.client = Some(&e.client_id);
            r.request = req(&e.request);
        }
        P::LoginSucceeded(e) => r.user = Some(&e.user_id),
        P::SessionEnded(e) => {
            r.user = Some(&e.user_id);
            r.request = req(&e.request);
        }
        P::LoginFailed(e) => r.user = e.user_id.as_deref(),
        P::ConsentGranted(e) => {
            r.grant = Some(&e.grant_id);
            r.user = Some(&e.user_id);
            r.client = Some(&e.client_id);
            r.request = req(&e.request);
        }
        P::ConsentDenied(e) => {
            r.user = Some(&e.user_id);
            r.client = Some(&e.client_id);
            r.request = req(&e.request);
        }
        P::CodeIssued(e) => {
            r.family = Some(&e.family_id);
            r.grant = Some(&e.grant_id);
            r.user = Some(&e.user_id);
            r.client = Some(&e.client_id);
            r.request = req(&e.request);
        }
        P::CodeRedeemed(e) => {
            r.family = Some(&e.family_id);
            r.client = Some(&e.client_id);
            r.request = req(&e.request);
        }
        P::CodeReplayed(e) => {
            r.family = Some(&e.family_id);
            r.client = Some(&e.client_id);
            r.request = req(&e.request);
        }
        P::TokenIssued(e) => {
            r.family = e.family_id.as_deref();
            r.client = Some(&e.client_id);
            r.user = e.user_id.as_deref();
            r.tokens.push(&e.access.token_id);
            if let Some(t) = &e.refresh {
                r.tokens.push(&t.token_id);
            }
            r.request = req(&e.request);
        }
        P::TokenRefreshed(e) => {
            r.family = Some(&e.family_id);
            r.client = Some(&e.client_id);
            r.user = Some(&e.user_id);
            r.tokens = vec![
                &e.rotated_refresh_id,
                &e.access.token_id,
                &e.refresh.token_id,
            ];
            r.request = req(&e.request);
        }
        P::TokenRevoked(e) => {
            r.family = e.family_id.as_deref();
            r.tokens.push(&e.token_id);
            r.request = req(&e.request);
        }
        P::OAuthRefused(e) => {
            r.client = e.client_id.as_deref();
            r.user = e.user_id.as_deref();
            r.request = req(&e.request);
            r.family = e.family_id.as_deref();
            if let Some(t) = &e.refresh_token_id {
                r.tokens.push(t);
            }
        }
        P::RefreshReuseDetected(e) => {
            r.family = Some(&e.family_id);
            r.client = Some(&e.client_id);
            r.tokens.push(&e.refresh_token_id);
            r.request = req(&e.request);
        }
        P::FamilyRevoked(e) => {
            r.family = Some(&e.family_id);
            r.request = req(&e.request);
        }
        P::GrantRevoked(e) => {
            r.grant = Some(&e.grant_id);
            r.user = Some(&e.user_id);
            r.client = Some(&e.client_id);
            r.request = req(&e.request);
        }
        P::PatCreated(e) => {
            r.pat = Some(&e.pat_id);
            r.user = Some(&e.user_id);
        }
        P::PatRevoked(e) => {
            r.pat = Some(&e.pat_id);
            r.user = Some(&e.user_id);
        }
        P::ToolListed(grantline_ledger::ToolListed {
            request_id,
            user_id,
            client_id,
            credential,
            ..
        })
        | P::ToolCallStarted(grantline_ledger::ToolCallStarted {
            request_id,
            user_id,
            client_id,
            credential,
            ..
        })
        | P::ToolCalled(grantline_ledger::ToolCalled {
            request_id,
            user_id,
            client_id,
            credential,
            ..
        })
        | P::ContentRead(grantline_ledger::ContentRead {
            request_id,
            user_id,
            client_id,
            credential,
            ..
        }) => {
            r.request = Some(request_id);
            r.user = user_id.as_deref();
            r.client = client_id.as_deref();
            credential_ref(&mut r, credential);
        }
        P::AuthorizationDenied(e) => {
            r.request = Some(&e.request_id);
            r.user = e.user_id.as_deref();
            r.client = e.client_id.as_deref();
            if let Some(c) = &e.credential {
                credential_ref(&mut r, c);
            }
        }
        // The bucket's subject: a user's (read, write) or a client's.
        P::RateLimitExceeded(e) => match e.bucket {
            grantline_ledger::RateBucket::Client => r.client = Some(&e.subject),
            _ => r.user = Some(&e.subject),
        },
        P::SigningKeyRotated(_) | P::PolicyChanged(_) => {}
        P::AuditSearched(e) => {
            r.user = e.user_id.as_deref();
            r.client = e.client_id.as_deref();
            r.request = req(&e.request);
        }
        P::AuditExported(e) => {
            r.user = e.user_id.as_deref();
            r.client = e.client_id.as_deref();
            r.request = req(&e.request);
        }
    }
    r
}

fn req(m: &Option<grantline_ledger::RequestMeta>) -> Option<&str> {
    m.as_ref().map(|m| m.request_id.as_str())
}

fn credential_ref<'a>(r: &mut Refs<'a>, c: &'a grantline_ledger::Credential) {
    match c.kind {
        CredentialKind::AccessToken => r.tokens.push(&c.id),
        CredentialKind::PersonalAccessToken => r.pat = Some(&c.id),
    }
}

/// The facts of an event a timeline shows beside its ids: what happened, in a few words
/// (reasons, scopes, tools, outcomes, lifetimes). No personal data and no digests.
pub fn facts(p: &Payload) -> Vec<(&'static str, String)> {
    use Payload as P;
    let scopes = |s: &[String]| s.join(" ");
    match p {
        P::ClientRegistered(e) => vec![
            ("client_name", e.client_name.clone()),
            ("redirect_uris", e.redirect_uris.join(" ")),
        ],
        P::ClientDisabled(e) => vec![("reason", e.reason.clone())],
        P::UserCreated(e) => {
            let mut v = vec![("role", e.role.clone())];
            v.extend(e.provider.clone().map(|p| ("provider", p)));
            v
        }
        P::UserLinked(e) => vec![("provider", e.provider.clone())],
        P::UpstreamTokenExchanged(e) => vec![
            ("resource", e.resource.clone()),
            ("provider", e.provider.clone()),
        ],
        P::UserDisabled(e) => vec![("reason", e.reason.clone())],
        P::UserEnabled(e) => vec![("reason", e.reason.clone())],
        P::UserPasswordSet(e) => vec![("reason", e.reason.clone())],
        P::UserSessionsEnded(e) => vec![("reason", e.reason.clone())],
        P::UserRoleChanged(e) => {
            let mut v = vec![("from", e.from.clone()), ("to", e.to.clone())];
            v.extend(e.claim.clone().map(|c| ("claim", c)));
            v
        }
        P::ConsentGranted(e) => vec![
            ("resource", e.resource.clone()),
            ("scopes", scopes(&e.scopes)),
        ],
        P::ConsentDenied(e) => vec![("resource", e.resource.clone())],
        P::CodeIssued(e) => vec![
            ("resource", e.resource.clone()),
            ("scopes", scopes(&e.scopes)),
            ("redirect_uri", e.redirect_uri.clone()),
        ],
        P::TokenIssued(e) => {
            let mut v = vec![
                ("access_token", e.access.token_id.clone()),
                ("scopes", scopes(&e.scopes)),
                ("expires", e.access.expires_at.to_string()),
            ];
            if let Some(r) = &e.refresh {
                v.push(("refresh_token", r.token_id.clone()));
            }
            v
        }
        P::TokenRefreshed(e) => vec![
            ("presented", e.rotated_refresh_id.clone()),
            ("refresh_token", e.refresh.token_id.clone()),
            ("access_token", e.access.token_id.clone()),
            ("scopes", scopes(&e.scopes)),
        ],
        P::TokenRevoked(e) => vec![("token", e.token_id.clone()), ("reason", e.reason.clone())],
        P::OAuthRefused(e) => vec![
            ("error", e.error.clone()),
            ("description", e.description.clone()),
        ],
        P::RefreshReuseDetected(e) => vec![
            ("presented", e.refresh_token_id.clone()),
            ("rotated_at", e.rotated_at.to_string()),
            ("grace_seconds", e.grace_seconds.to_string()),
        ],
        P::FamilyRevoked(e) => vec![("reason", e.reason.clone())],
        P::GrantRevoked(e) => vec![("reason", e.reason.clone())],
        P::PatCreated(e) => vec![
            ("resource", e.resource.clone()),
            ("scopes", scopes(&e.scopes)),
        ],
        P::PatRevoked(e) => vec![("reason", e.reason.clone())],
        P::ToolCalled(e) => {
            let mut v = vec![
                ("tool", e.tool.clone()),
                ("outcome", format!("{:?}", e.outcome).to_lowercase()),
            ];
            if let Some(r) = &e.reason {
                v.push(("reason", r.clone()));
            }
            v
        }
        P::ToolCallStarted(e) => vec![("tool", e.tool.clone())],
        P::ToolListed(e) => vec![("tools_returned", e.tools_returned.to_string())],
        // What was read is personal when read for a user (sealed): the method only.
        P::ContentRead(e) => vec![("method", e.method.clone())],
        P::AuthorizationDenied(e) => {
            vec![("reason", e.reason.clone()), ("method", e.method.clone())]
        }
        _ => Vec::new(),
    }
}
