//! Realistic synthetic traffic: the real event kinds in the proportions of a busy MCP
//! deployment — registrations and users now and then, and per authorization a consent, a code,
//! its redemption, tokens, refreshes and tool calls — across many streams.

use grantline_ledger::*;

pub struct Generator {
    seed: u64,
    n: u64,
    queue: Vec<NewEvent>,
    key: SubjectKey,
}

const RESOURCES: [&str; 4] = [
    "https://mcp.example.com/mcp/demo",
    "https://mcp.example.com/mcp/github",
    "https://mcp.example.com/mcp/drive",
    "https://mcp.example.com/mcp/audit",
];
const TOOLS: [&str; 6] = [
    "search_documents",
    "read_file",
    "list_issues",
    "create_issue",
    "summarise_thread",
    "delete_document",
];

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator {
            seed,
            n: 0,
            queue: Vec::new(),
            key: SubjectKey([seed as u8; 32]),
        }
    }

    pub fn next_event(&mut self) -> NewEvent {
        if self.queue.is_empty() {
            self.flow();
            self.queue.reverse();
        }
        self.queue
            .pop()
            .unwrap_or_else(|| unreachable!("flow always produces events"))
    }

    fn id(&self, prefix: &str, n: u64) -> String {
        format!("{prefix}_{:016x}{:016x}", self.seed, n)
    }

    fn sealed(&self, subject: &str, text: &str) -> Sealed {
        Sealed::seal(&self.key, subject, text).unwrap_or_else(|e| panic!("seal: {e}"))
    }

    /// One authorization and what follows it (about a dozen events).
    fn flow(&mut self) {
        self.n += 1;
        let n = self.n;
        let client = self.id("cli", n / 50);
        let user = self.id("usr", n / 20);
        let subject = pii::user_subject(&user);
        let family = self.id("fam", n);
        let grant = self.id("gr", n / 3);
        let resource = RESOURCES[(n % 4) as usize];
        let scopes = vec!["demo.read".to_string(), "demo.write".to_string()];
        let actor = Actor::User { id: user.clone() };
        let client_actor = Actor::Client { id: client.clone() };
        let now = Timestamp::now();
        let mut push = |stream: StreamId, actor: &Actor, p: Payload| {
            self.queue.push(NewEvent::new(stream, actor.clone(), p))
        };
        if n % 50 == 1 {
            push(
                StreamId::client(&client),
                &client_actor,
                ClientRegistered {
                    request: None,
                    client_id: client.clone(),
                    client_name: format!("Assistant {}", n / 50),
                    method: RegistrationMethod::Dynamic,
                    application_type: ApplicationType::Native,
                    token_endpoint_auth_method: AuthMethod::None,
                    redirect_uris: vec!["http://127.0.0.1/callback".into()],
                    grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
                    scope: Some("demo.read demo.write offline_access".into()),
                    software_id: Some("com.example.assistant".into()),
                    software_version: Some("1.2.3".into()),
                    client_uri: None,
                    logo_uri: None,
                    metadata_document_url: None,
                    secret_digest: None,
                    expires_at: Some(now.plus_secs(86_400)),
                }
                .into(),
            );
        }
        let sealed_user = self.sealed(&subject, &format!("user{}", n / 20));
        let sealed_email = self.sealed(&subject, &format!("user{}@example.com", n / 20));
        let sealed_ip = self.sealed(&subject, "198.51.100.7");
        let sealed_ua = self.sealed(&subject, "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)");
        let mut push = |stream: StreamId, actor: &Actor, p: Payload| {
            self.queue.push(NewEvent::new(stream, actor.clone(), p))
        };
        if n % 20 == 1 {
            push(
                StreamId::user(&user),
                &Actor::Operator,
                UserCreated {
                    user_id: user.clone(),
                    username: sealed_user,
                    email: Some(sealed_email),
                    display_name: None,
                    role: "member".into(),
                    source: UserSource::Admin,
                }
                .into(),
            );
        }
        push(
            StreamId::user(&user),
            &actor,
            LoginSucceeded {
                user_id: user.clone(),
                method: "password".into(),
                session_id: format!("ses_{n:016x}"),
                source_ip: Some(sealed_ip.clone()),
                user_agent: Some(sealed_ua),
            }
            .into(),
        );
        push(
            StreamId::grant(&grant),
            &actor,
            ConsentGranted {
                consent_page: None,
                request: None,
                requested_scopes: Vec::new(),
                client_name: None,
                grant_id: grant.clone(),
                user_id: user.clone(),
                client_id: client.clone(),
                resource: resource.into(),
                scopes: scopes.clone(),
                prompted: n.is_multiple_of(3),
            }
            .into(),
        );
        let code = secret_digest(format!("code{n}{}", self.seed).as_bytes());
        push(
            StreamId::family(&family),
            &actor,
            CodeIssued {
                request: None,
                family_id: family.clone(),
                grant_id: grant.clone(),
                client_id: client.clone(),
                user_id: user.clone(),
                resource: resource.into(),
                scopes: scopes.clone(),
                code_digest: code.clone(),
                redirect_uri: "http://127.0.0.1:53682/callback".into(),
                redirect_uri_in_request: true,
                code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
                expires_at: now.plus_secs(60),
            }
            .into(),
        );
        push(
            StreamId::family(&family),
            &client_actor,
            CodeRedeemed {
                request: None,
                family_id: family.clone(),
                code_digest: code,
                client_id: client.clone(),
            }
            .into(),
        );
        let tok =
            |kind: &str, i: u64| secret_digest(format!("{kind}{n}/{i}/{}", self.seed).as_bytes());
        let access = |i: u64| AccessTokenRecord {
            token_id: format!("at_{n:016x}{i:04x}"),
            digest: tok("gla", i),
            format: TokenFormat::Opaque,
            expires_at: now.plus_secs(3600),
        };
        let refresh = |i: u64| RefreshTokenRecord {
            token_id: format!("rt_{n:016x}{i:04x}"),
            digest: tok("glr", i),
            expires_at: now.plus_secs(7 * 86_400),
            absolute_expires_at: now.plus_secs(30 * 86_400),
        };
        push(
            StreamId::family(&family),
            &client_actor,
            TokenIssued {
                request: None,
                family_id: Some(family.clone()),
                grant_type: GrantType::AuthorizationCode,
                client_id: client.clone(),
                user_id: Some(user.clone()),
                resource: resource.into(),
                scopes: scopes.clone(),
                access: access(0),
                refresh: Some(refresh(0)),
            }
            .into(),
        );
        let cred = Credential {
            kind: CredentialKind::AccessToken,
            id: access(0).token_id,
        };
        push(
            StreamId::resource(resource),
            &actor,
            ToolListed {
                request_id: format!("req_{n:016x}00"),
                resource: resource.into(),
                user_id: Some(user.clone()),
                client_id: Some(client.clone()),
                credential: cred.clone(),
                outcome: ToolOutcome::Ok,
                tools_returned: 5,
                duration_us: 900,
                session_id: Some(format!("mcp-{n:x}")),
            }
            .into(),
        );
        for i in 1..=2u64 {
            for j in 0..2u64 {
                let tool = TOOLS[((n + i + j) % 6) as usize];
                push(
                    StreamId::resource(resource),
                    &actor,
                    ToolCalled {
                        request_id: format!("req_{n:016x}{i}{j}"),
                        resource: resource.into(),
                        tool: tool.into(),
                        user_id: Some(user.clone()),
                        client_id: Some(client.clone()),
                        credential: cred.clone(),
                        outcome: if tool == "delete_document" {
                            ToolOutcome::Denied
                        } else {
                            ToolOutcome::Ok
                        },
                        reason: (tool == "delete_document").then(|| "insufficient_scope".into()),
                        error_code: None,
                        duration_us: 1200 + 37 * j,
                        arguments_digest: tok("args", i * 10 + j),
                        intent: (j == 0).then(|| "answer the user's question".into()),
                        sealed_intent: None,
                        source_ip: Some(sealed_ip.clone()),
                    }
                    .into(),
                );
            }
            push(
                StreamId::family(&family),
                &client_actor,
                TokenRefreshed {
                    request: None,
                    family_id: family.clone(),
                    client_id: client.clone(),
                    user_id: user.clone(),
                    resource: resource.into(),
                    scopes: scopes.clone(),
                    rotated_refresh_id: refresh(i - 1).token_id,
                    access: access(i),
                    refresh: refresh(i),
                }
                .into(),
            );
        }
        if n.is_multiple_of(25) {
            push(
                StreamId::family(&family),
                &client_actor,
                RefreshReuseDetected {
                    request: None,
                    family_id: family.clone(),
                    refresh_token_id: refresh(0).token_id,
                    client_id: client.clone(),
                    rotated_at: now,
                    grace_seconds: 10,
                }
                .into(),
            );
        }
    }
}
