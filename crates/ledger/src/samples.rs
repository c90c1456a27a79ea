//! One fully populated example of every event kind: used by the schema test, the docs and
//! as templates for the benchmark's synthetic traffic. Values are realistic in size and shape.

use crate::*;

/// The key every sample's sealed values are sealed under (readers' tests open them with it).
pub fn key() -> SubjectKey {
    SubjectKey([9u8; 32])
}

fn sealed(subject: &str, text: &str) -> Sealed {
    // A fixed key and nonce keep samples deterministic; real events use random nonces.
    // Each sample value has its own nonce (derived from its text), so samples open.
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&blake3::hash(format!("{subject}\n{text}").as_bytes()).as_bytes()[..24]);
    Sealed::seal_with_nonce(&key(), subject, text, nonce).unwrap_or_else(|_| Sealed {
        subject: subject.to_string(),
        nonce,
        ciphertext: text.as_bytes().to_vec(),
    })
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_secs(1_795_000_000 + secs)
}

const USER: &str = "usr_0197a3c1f0d27c4e8b1a9d6e5f403a21";
const CLIENT: &str = "cli_0197a3c1f0d27c4e8b1a9d6e5f403a22";
const FAMILY: &str = "fam_0197a3c1f0d27c4e8b1a9d6e5f403a23";
const GRANT: &str = "gr_0197a3c1f0d27c4e8b1a9d6e5f403a24";
const RESOURCE: &str = "https://mcp.example.com/mcp/demo";

fn digest(tag: &str) -> String {
    secret_digest(tag.as_bytes())
}

fn access() -> AccessTokenRecord {
    AccessTokenRecord {
        token_id: "at_0197a3c1f0d27c4e8b1a9d6e5f403a30".into(),
        digest: digest("gla_sample"),
        format: TokenFormat::Opaque,
        expires_at: ts(3600),
    }
}

fn refresh() -> RefreshTokenRecord {
    RefreshTokenRecord {
        token_id: "rt_0197a3c1f0d27c4e8b1a9d6e5f403a31".into(),
        digest: digest("glr_sample"),
        expires_at: ts(7 * 86_400),
        absolute_expires_at: ts(30 * 86_400),
    }
}

/// A W3C trace id (the example of the Trace Context recommendation).
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn meta(subject: &str) -> RequestMeta {
    RequestMeta {
        request_id: "0197a3c1-f0d2-7c4e-8b1a-9d6e5f403a50".into(),
        trace_id: Some(TRACE.into()),
        source_ip: Some(sealed(subject, "198.51.100.7")),
        user_agent: Some(sealed(subject, "python-httpx/0.28")),
    }
}

/// The stream an event of this payload belongs to.
pub fn stream_for(p: &Payload) -> StreamId {
    match p {
        Payload::ClientRegistered(e) => StreamId::client(&e.client_id),
        Payload::ClientUpdated(e) => StreamId::client(&e.client_id),
        Payload::ClientDisabled(e) => StreamId::client(&e.client_id),
        Payload::ClientExpired(e) => StreamId::client(&e.client_id),
        Payload::RegistrationRejected(_) => StreamId::named("registrations"),
        Payload::UserCreated(e) => StreamId::user(&e.user_id),
        Payload::UserDisabled(e) => StreamId::user(&e.user_id),
        Payload::UserRoleChanged(e) => StreamId::user(&e.user_id),
        Payload::UserEnabled(e) => StreamId::user(&e.user_id),
        Payload::UserPasswordSet(e) => StreamId::user(&e.user_id),
        Payload::UserErased(e) => StreamId::user(&e.user_id),
        Payload::UserLinked(e) => StreamId::user(&e.user_id),
        Payload::LoginSucceeded(e) => StreamId::user(&e.user_id),
        Payload::SessionEnded(e) => StreamId::user(&e.user_id),
        Payload::UserSessionsEnded(e) => StreamId::user(&e.user_id),
        Payload::LoginFailed(e) => match &e.user_id {
            Some(u) => StreamId::user(u),
            None => StreamId::named("logins"),
        },
        Payload::ConsentGranted(e) => StreamId::grant(&e.grant_id),
        Payload::ConsentDenied(e) => StreamId::user(&e.user_id),
        Payload::CodeIssued(e) => StreamId::family(&e.family_id),
        Payload::CodeRedeemed(e) => StreamId::family(&e.family_id),
        Payload::CodeReplayed(e) => StreamId::family(&e.family_id),
        Payload::TokenIssued(e) => match &e.family_id {
            Some(f) => StreamId::family(f),
            None => StreamId::client(&e.client_id),
        },
        Payload::TokenRefreshed(e) => StreamId::family(&e.family_id),
        Payload::TokenRevoked(e) => match &e.family_id {
            Some(f) => StreamId::family(f),
            None => StreamId::named("tokens"),
        },
        Payload::RefreshReuseDetected(e) => StreamId::family(&e.family_id),
        Payload::OAuthRefused(_) => StreamId::named("oauth-refusals"),
        Payload::FamilyRevoked(e) => StreamId::family(&e.family_id),
        Payload::GrantRevoked(e) => StreamId::grant(&e.grant_id),
        Payload::PatCreated(e) => StreamId::pat(&e.pat_id),
        Payload::PatRevoked(e) => StreamId::pat(&e.pat_id),
        Payload::ToolListed(e) => StreamId::resource(&e.resource),
        Payload::ToolCallStarted(e) => StreamId::resource(&e.resource),
        Payload::ToolCalled(e) => StreamId::resource(&e.resource),
        Payload::AuthorizationDenied(e) => StreamId::resource(&e.resource),
        Payload::RateLimitExceeded(e) => StreamId::resource(&e.resource),
        Payload::SigningKeyRotated(_) => StreamId::named("keys"),
        Payload::PolicyChanged(e) => StreamId::new("policy", &e.policy),
        Payload::AuditSearched(_) | Payload::AuditExported(_) => StreamId::named("audit"),
        Payload::UpstreamTokenExchanged(e) => StreamId::user(&e.user_id),
        Payload::ContentRead(e) => StreamId::resource(&e.resource),
    }
}

/// A checkpoint-key handover between two fixed keys.
fn handover_sample() -> String {
    let old = NoteSigner::from_seed("grantline.example/ledger", [1; 32]);
    let new = NoteSigner::from_seed("grantline.example/ledger", [2; 32]);
    match (old, new) {
        (Ok(old), Ok(new)) => old.hand_over_to(&new.verifier()),
        _ => String::new(),
    }
}

/// One example of every kind, every optional field set; in [`Kind::ALL`] order.
pub fn all() -> Vec<Payload> {
    let user_subject = pii::user_subject(USER);
    let cred = Credential {
        kind: CredentialKind::AccessToken,
        id: "at_0197a3c1f0d27c4e8b1a9d6e5f403a30".into(),
    };
    let scopes = vec!["demo.read".to_string(), "demo.write".to_string()];
    vec![
        ClientRegistered {
            request: Some(meta(&user_subject)),
            client_id: CLIENT.into(),
            client_name: "Claude Desktop".into(),
            method: RegistrationMethod::Dynamic,
            application_type: ApplicationType::Native,
            token_endpoint_auth_method: AuthMethod::ClientSecretBasic,
            redirect_uris: vec!["http://127.0.0.1/callback".into()],
            grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            scope: Some("demo.read demo.write offline_access".into()),
            software_id: Some("com.anthropic.claude-desktop".into()),
            software_version: Some("1.4.2".into()),
            client_uri: Some("https://claude.ai".into()),
            logo_uri: Some("https://claude.ai/logo.png".into()),
            metadata_document_url: Some("https://claude.ai/oauth/client.json".into()),
            secret_digest: Some(digest("client secret")),
            expires_at: Some(ts(86_400)),
        }
        .into(),
        ClientUpdated {
            client_id: CLIENT.into(),
            client_name: Some("Claude".into()),
            redirect_uris: Some(vec!["http://127.0.0.1/callback".into()]),
            grant_types: Some(vec![GrantType::AuthorizationCode]),
            scope: Some("demo.read".into()),
            secret_digest: Some(digest("rotated secret")),
            token_endpoint_auth_method: Some(AuthMethod::ClientSecretPost),
            // Every field, so the sample sets a scope and removes one: removal wins.
            cleared: vec![crate::CLEARED_SCOPE.into()],
        }
        .into(),
        ClientDisabled {
            client_id: CLIENT.into(),
            reason: "disabled by admin".into(),
        }
        .into(),
        ClientExpired {
            client_id: CLIENT.into(),
            ttl_seconds: 86_400,
        }
        .into(),
        RegistrationRejected {
            client_name: Some("Unknown Assistant".into()),
            software_id: Some("org.example.unknown".into()),
            redirect_uris: vec!["http://evil.example/cb".into()],
            error: "invalid_redirect_uri".into(),
            description: "redirect URIs must be HTTPS or loopback".into(),
            source_ip: Some(sealed("anon:2026-11-22", "203.0.113.9")),
            user_agent: Some(sealed("anon:2026-11-22", "python-httpx/0.28")),
        }
        .into(),
        UserCreated {
            user_id: USER.into(),
            username: sealed(&user_subject, "alice"),
            email: Some(sealed(&user_subject, "alice@example.com")),
            display_name: Some(sealed(&user_subject, "Alice Liddell")),
            role: "member".into(),
            source: UserSource::IdentityProvider,
            provider: Some("okta".into()),
        }
        .into(),
        UserDisabled {
            user_id: USER.into(),
            reason: "left the company".into(),
        }
        .into(),
        UserRoleChanged {
            user_id: USER.into(),
            from: "member".into(),
            to: "admin".into(),
            provider: Some("okta".into()),
            claim: Some("groups=mcp-admins".into()),
        }
        .into(),
        UserEnabled {
            user_id: USER.into(),
            reason: "back from leave".into(),
        }
        .into(),
        UserPasswordSet {
            user_id: USER.into(),
            reason: "reset after INC-1234".into(),
        }
        .into(),
        UserLinked {
            user_id: USER.into(),
            provider: "okta".into(),
            subject: sealed(&user_subject, "00u1a2b3c4d5e6f7g8h9"),
        }
        .into(),
        UserErased {
            user_id: USER.into(),
        }
        .into(),
        LoginSucceeded {
            user_id: USER.into(),
            method: "idp:okta".into(),
            session_id: "ses_0197a3c1f0d27c4e8b1a9d6e5f403a40".into(),
            provider: Some("okta".into()),
            upstream_subject: Some(sealed(&user_subject, "00u1a2b3c4d5e6f7g8h9")),
            source_ip: Some(sealed(&user_subject, "198.51.100.7")),
            user_agent: Some(sealed(&user_subject, "Mozilla/5.0 (Macintosh)")),
        }
        .into(),
        LoginFailed {
            user_id: Some(USER.into()),
            username: Some(sealed(&user_subject, "alice")),
            reason: LoginFailure::IdentityProviderError,
            provider: Some("okta".into()),
            error: Some("id_token_invalid: the ID token expired".into()),
            source_ip: Some(sealed(&user_subject, "198.51.100.7")),
            user_agent: Some(sealed(&user_subject, "Mozilla/5.0 (Macintosh)")),
        }
        .into(),
        SessionEnded {
            user_id: USER.into(),
            session_id: "ses_0197a3c1f0d27c4e8b1a9d6e5f403a40".into(),
            expires_at: ts(43_200),
            request: Some(meta(&user_subject)),
        }
        .into(),
        UserSessionsEnded {
            user_id: USER.into(),
            reason: "deprovisioned by identity provider okta: refused to refresh".into(),
        }
        .into(),
        ConsentGranted {
            consent_page: Some(digest("consent-page")),
            request: Some(meta(&user_subject)),
            requested_scopes: scopes.clone(),
            client_name: Some("Claude Desktop".into()),
            grant_id: GRANT.into(),
            user_id: USER.into(),
            client_id: CLIENT.into(),
            resource: RESOURCE.into(),
            scopes: scopes.clone(),
            prompted: true,
        }
        .into(),
        ConsentDenied {
            consent_page: Some(digest("consent-page")),
            request: Some(meta(&user_subject)),
            user_id: USER.into(),
            client_id: CLIENT.into(),
            resource: RESOURCE.into(),
            scopes: scopes.clone(),
        }
        .into(),
        CodeIssued {
            request: Some(meta(&user_subject)),
            family_id: FAMILY.into(),
            grant_id: GRANT.into(),
            client_id: CLIENT.into(),
            user_id: USER.into(),
            resource: RESOURCE.into(),
            scopes: scopes.clone(),
            code_digest: digest("code"),
            redirect_uri: "http://127.0.0.1:53682/callback".into(),
            redirect_uri_in_request: true,
            code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
            expires_at: ts(60),
        }
        .into(),
        CodeRedeemed {
            request: Some(meta(&user_subject)),
            family_id: FAMILY.into(),
            code_digest: digest("code"),
            client_id: CLIENT.into(),
        }
        .into(),
        CodeReplayed {
            request: Some(meta(&user_subject)),
            family_id: FAMILY.into(),
            code_digest: digest("code"),
            client_id: CLIENT.into(),
        }
        .into(),
        TokenIssued {
            request: Some(meta(&user_subject)),
            family_id: Some(FAMILY.into()),
            grant_type: GrantType::AuthorizationCode,
            client_id: CLIENT.into(),
            user_id: Some(USER.into()),
            resource: RESOURCE.into(),
            scopes: scopes.clone(),
            access: access(),
            refresh: Some(refresh()),
        }
        .into(),
        TokenRefreshed {
            request: Some(meta(&user_subject)),
            family_id: FAMILY.into(),
            client_id: CLIENT.into(),
            user_id: USER.into(),
            resource: RESOURCE.into(),
            scopes: vec!["demo.read".into()],
            rotated_refresh_id: "rt_0197a3c1f0d27c4e8b1a9d6e5f403a31".into(),
            access: access(),
            refresh: refresh(),
        }
        .into(),
        TokenRevoked {
            request: Some(meta(&user_subject)),
            token_id: "at_0197a3c1f0d27c4e8b1a9d6e5f403a30".into(),
            token_kind: TokenKind::Access,
            family_id: Some(FAMILY.into()),
            reason: "revoked by client (RFC 7009)".into(),
        }
        .into(),
        RefreshReuseDetected {
            request: Some(meta(&user_subject)),
            family_id: FAMILY.into(),
            refresh_token_id: "rt_0197a3c1f0d27c4e8b1a9d6e5f403a31".into(),
            client_id: CLIENT.into(),
            rotated_at: ts(120),
            grace_seconds: 10,
        }
        .into(),
        OAuthRefused {
            endpoint: OAuthEndpoint::Token,
            client_id: Some(CLIENT.into()),
            client_authenticated: true,
            grant_type: Some(GrantType::AuthorizationCode),
            user_id: Some(USER.into()),
            resource: Some(RESOURCE.into()),
            requested_scopes: vec!["demo:read".into()],
            error: "invalid_grant".into(),
            description: "code_verifier does not match the code_challenge".into(),
            suppressed: 0,
            request: Some(meta(&user_subject)),
            family_id: Some(FAMILY.into()),
            refresh_token_id: Some("rt_0197a3c1f0d27c4e8b1a9d6e5f403a31".into()),
        }
        .into(),
        FamilyRevoked {
            request: Some(meta(&user_subject)),
            family_id: FAMILY.into(),
            reason: "refresh token revoked".into(),
        }
        .into(),
        GrantRevoked {
            request: Some(meta(&user_subject)),
            grant_id: GRANT.into(),
            user_id: USER.into(),
            client_id: CLIENT.into(),
            reason: "revoked by user".into(),
        }
        .into(),
        PatCreated {
            pat_id: "pat_0197a3c1f0d27c4e8b1a9d6e5f403a50".into(),
            user_id: USER.into(),
            name: "CI deploy".into(),
            sealed_name: Some(sealed(&user_subject, "CI deploy")),
            resource: RESOURCE.into(),
            scopes: vec!["demo.read".into()],
            prefix: "glp_3kQ9".into(),
            digest: digest("glp_sample"),
            expires_at: Some(ts(90 * 86_400)),
        }
        .into(),
        PatRevoked {
            pat_id: "pat_0197a3c1f0d27c4e8b1a9d6e5f403a50".into(),
            user_id: USER.into(),
            reason: "revoked by user".into(),
        }
        .into(),
        ToolListed {
            request_id: "req_0197a3c1f0d27c4e8b1a9d6e5f403a60".into(),
            trace_id: Some(TRACE.into()),
            resource: RESOURCE.into(),
            user_id: Some(USER.into()),
            client_id: Some(CLIENT.into()),
            credential: cred.clone(),
            outcome: ToolOutcome::Ok,
            tools_returned: 4,
            duration_us: 812,
            session_id: Some("mcp-session-5b2f".into()),
        }
        .into(),
        ToolCallStarted {
            request_id: "req_0197a3c1f0d27c4e8b1a9d6e5f403a61".into(),
            trace_id: Some(TRACE.into()),
            resource: RESOURCE.into(),
            tool: "search_documents".into(),
            user_id: Some(USER.into()),
            client_id: Some(CLIENT.into()),
            credential: cred.clone(),
            arguments_digest: digest("{\"query\":\"q3 numbers\"}"),
            intent: Some("summarise the quarterly report".into()),
            sealed_intent: Some(sealed(&user_subject, "summarise the quarterly report")),
            session_id: Some("4f7c2a9e-1b3d-4e5f-8a6b-7c8d9e0f1a2b".into()),
        }
        .into(),
        ToolCalled {
            request_id: "req_0197a3c1f0d27c4e8b1a9d6e5f403a61".into(),
            trace_id: Some(TRACE.into()),
            resource: RESOURCE.into(),
            tool: "search_documents".into(),
            user_id: Some(USER.into()),
            client_id: Some(CLIENT.into()),
            credential: cred.clone(),
            outcome: ToolOutcome::Denied,
            reason: Some("insufficient_scope".into()),
            error_code: Some(-32003),
            duration_us: 1432,
            arguments_digest: digest("{\"query\":\"q3 numbers\"}"),
            intent: Some("summarise the quarterly report".into()),
            sealed_intent: Some(sealed(&user_subject, "summarise the quarterly report")),
            source_ip: Some(sealed(&user_subject, "198.51.100.7")),
        }
        .into(),
        AuthorizationDenied {
            request_id: "req_0197a3c1f0d27c4e8b1a9d6e5f403a62".into(),
            trace_id: Some(TRACE.into()),
            resource: RESOURCE.into(),
            user_id: Some(USER.into()),
            client_id: Some(CLIENT.into()),
            credential: Some(cred.clone()),
            reason: "insufficient_scope".into(),
            required_scopes: vec!["demo.write".into()],
            method: "tools/call".into(),
            tool: Some("delete_document".into()),
        }
        .into(),
        RateLimitExceeded {
            resource: RESOURCE.into(),
            bucket: RateBucket::UserWrite,
            subject: USER.into(),
            window_start: ts(600),
            window_seconds: 60,
            limit: 30,
            rejected: 17,
        }
        .into(),
        SigningKeyRotated {
            purpose: KeyPurpose::AccessToken,
            key_id: "k_2026_11".into(),
            algorithm: "EdDSA".into(),
            public_key: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into(),
            previous_key_id: Some("k_2026_10".into()),
            endorsement: Some(handover_sample()),
        }
        .into(),
        PolicyChanged {
            policy: "registration".into(),
            changes: vec![PolicyChange {
                setting: "mode".into(),
                from: Some("open".into()),
                to: Some("allowlist".into()),
            }],
        }
        .into(),
        AuditSearched {
            surface: AuditSurface::Api,
            user_id: Some(USER.into()),
            client_id: Some(CLIENT.into()),
            query: sealed(&user_subject, "kind:tool.called outcome:denied"),
            results: 12,
            request: Some(meta(&user_subject)),
        }
        .into(),
        AuditExported {
            surface: AuditSurface::Api,
            user_id: Some(USER.into()),
            client_id: Some(CLIENT.into()),
            format: "ocsf".into(),
            after: 100,
            last_seq: Some(600),
            count: 500,
            kind: Some("tool.called".into()),
            query: Some(sealed(&user_subject, "outcome:denied")),
            redacted: false,
            request: Some(meta(&user_subject)),
        }
        .into(),
        UpstreamTokenExchanged {
            user_id: USER.into(),
            client_id: "jira-mcp".into(),
            resource: "https://grantline.example/mcp/jira".into(),
            provider: "atlassian".into(),
            assertion_id: "0197a3c1-f0d2-7c4e-8b1a-9d6e5f403a51".into(),
            refreshed: true,
            request: Some(meta(&user_subject)),
        }
        .into(),
        ContentRead {
            request_id: "req_0197a3c1f0d27c4e8b1a9d6e5f403a63".into(),
            trace_id: Some(TRACE.into()),
            resource: RESOURCE.into(),
            user_id: Some(USER.into()),
            client_id: Some(CLIENT.into()),
            credential: cred,
            method: "prompts/get".into(),
            target: Some("quarterly-summary".into()),
            sealed_target: Some(sealed(&user_subject, "file:///home/alice/q3.xlsx")),
            arguments_digest: Some(digest("{\"quarter\":\"q3\"}")),
            session_id: Some("b3:5b2f".into()),
        }
        .into(),
    ]
}

/// A sample payload as an event to append, with the actor and tenant of [`envelope`] (so the
/// stored body is as large as the sample's).
pub fn new_event(payload: Payload) -> crate::NewEvent {
    let mut e = crate::NewEvent::new(
        stream_for(&payload),
        Actor::User { id: USER.into() },
        payload,
    );
    e.tenant = Some("acme".into());
    e
}

/// A sample event with envelope: `seq`, `version` and `time` as given.
pub fn envelope(seq: u64, payload: Payload) -> Envelope {
    Envelope {
        seq,
        id: uuid::Uuid::from_u128(0x0197_a3c1_f0d2_7c4e_8b1a_9d6e_5f40_0000 + seq as u128),
        time: ts(seq as i64),
        stream: stream_for(&payload),
        version: 1,
        actor: Actor::User { id: USER.into() },
        tenant: Some("acme".into()),
        payload,
    }
}

/// How far below the body limit [`largest`] stops.
pub const LARGEST_SLACK: usize = 16;

/// The largest events of `payload`'s kind the writer accepts: one variant per text or byte
/// field of the payload that can grow, with that field grown until the body of
/// [`envelope`]`(1, …)` is within [`LARGEST_SLACK`] bytes of [`crate::MAX_BODY_BYTES`] (a
/// stored envelope's seq, version and time may take those few bytes more). Sealed fields grow
/// too (their ciphertext), so every reader is tried on the largest sealed value as well. Each
/// comes with the same field grown past the limit, which the writer must refuse.
pub fn largest(payload: &Payload) -> Vec<(Payload, Payload)> {
    use ciborium::Value;
    let base = envelope(1, payload.clone());
    let Ok(bytes) = encode(&base) else {
        return Vec::new();
    };
    let Ok(Value::Map(top)) = ciborium::from_reader::<Value, _>(bytes.as_slice()) else {
        return Vec::new();
    };
    let Some(pi) = top.iter().position(|(k, _)| k.as_text() == Some("payload")) else {
        return Vec::new();
    };
    // Every text or byte leaf of the payload, as a path of map keys and array indices.
    fn leaves(v: &Value, path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        match v {
            Value::Text(_) | Value::Bytes(_) => out.push(path.clone()),
            Value::Map(m) => m.iter().enumerate().for_each(|(i, (_, v))| {
                path.push(i);
                leaves(v, path, out);
                path.pop();
            }),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| {
                path.push(i);
                leaves(v, path, out);
                path.pop();
            }),
            _ => {}
        }
    }
    fn leaf<'a>(v: &'a mut Value, path: &[usize]) -> Option<&'a mut Value> {
        match (path.split_first(), v) {
            (None, v) => Some(v),
            (Some((i, rest)), Value::Map(m)) => leaf(&mut m.get_mut(*i)?.1, rest),
            (Some((i, rest)), Value::Array(a)) => leaf(a.get_mut(*i)?, rest),
            _ => None,
        }
    }
    let mut paths = Vec::new();
    leaves(&top[pi].1, &mut Vec::new(), &mut paths);
    // The envelope with the leaf grown by `n` bytes, if it still decodes.
    let grown = |path: &[usize], n: usize| -> Option<(Envelope, usize)> {
        let mut top = top.clone();
        match leaf(&mut top[pi].1, path)? {
            Value::Text(t) => t.push_str(&"x".repeat(n)),
            Value::Bytes(b) => b.extend(std::iter::repeat_n(7u8, n)),
            _ => return None,
        }
        let mut out = Vec::new();
        ciborium::into_writer(&Value::Map(top), &mut out).ok()?;
        let env = decode(&out).ok()?;
        // Only a grown value the encoder writes back the same way is a real event.
        if encode(&env).ok()? != out {
            return None;
        }
        // Measured as stored: the stream may depend on the grown field (a long client id).
        let size = encode(&envelope(1, env.payload.clone())).ok()?.len();
        Some((env, size))
    };
    let mut out = Vec::new();
    for path in paths {
        let Some((_, size0)) = grown(&path, 0) else {
            continue;
        };
        if grown(&path, 1).is_none() || size0 >= crate::MAX_BODY_BYTES {
            continue;
        }
        // Largest n with a body of at most MAX_BODY_BYTES - LARGEST_SLACK.
        let limit = crate::MAX_BODY_BYTES - LARGEST_SLACK;
        let (mut lo, mut hi) = (0usize, crate::MAX_BODY_BYTES);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            match grown(&path, mid) {
                Some((_, size)) if size <= limit => lo = mid,
                _ => hi = mid - 1,
            }
        }
        if let (Some((fits, _)), Some((over, _))) =
            (grown(&path, lo), grown(&path, lo + LARGEST_SLACK + 1))
        {
            out.push((fits.payload, over.payload));
        }
    }
    out
}
