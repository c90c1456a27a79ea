//! Realistic synthetic traffic: the real event kinds in the proportions of a busy MCP
//! deployment. A few thousand users and a few hundred clients with very uneven activity (a
//! handful of each do most of it), each user with a home address in one of several networks
//! and now and then another, a dozen user agents; per authorization a sign-in (sometimes after
//! a failed one), a consent, a code, its redemption, tokens, a listing, a varying number of
//! tool calls (each recorded when it starts and when it ends), refreshes — and occasionally a
//! denial, a rate limit, a revocation, a refresh-token reuse or a code replay. The time of
//! each event is the generator's clock, which the fill moves through weeks with a daily
//! rhythm (see `main.rs`).

use grantline_ledger::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub struct Generator {
    seed: u64,
    rng: u64,
    n: u64,
    queue: Vec<NewEvent>,
    population: Arc<Population>,
    /// The time events are generated for (expiry fields are relative to it, and new families
    /// take their ids from it, as the server's UUIDv7 ids take theirs from its clock).
    pub now: Timestamp,
}

/// What the generators of one simulated deployment share, as concurrent requests to one
/// server do: one set of users and clients, each registered once by whichever generator meets
/// it first, and the key their personal data is sealed under.
pub struct Population {
    key: SubjectKey,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    users: HashSet<usize>,
    clients: HashSet<usize>,
}

impl Population {
    /// A deployment whose personal data is sealed under the key `[seed as u8; 32]`
    /// (`audit::store_sample_keys` stores it for each user).
    pub fn new(seed: u64) -> Arc<Population> {
        Arc::new(Population {
            key: SubjectKey([seed as u8; 32]),
            seen: Mutex::new(Seen::default()),
        })
    }

    /// Whether this is the first time any generator meets user `u` (and client `c`).
    fn meet(&self, u: usize, c: usize) -> (bool, bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        (seen.users.insert(u), seen.clients.insert(c))
    }
}

/// User `u`'s id: 32 hex digits like the server's, spread over the id space as ids made at
/// different times are, so that busy users are not neighbours in the ledger's indexes.
pub fn user_id(u: usize) -> String {
    spread_id("usr", u as u64)
}

fn client_id(c: usize) -> String {
    spread_id("cli", 1 << 40 | c as u64)
}

fn grant_id(u: usize, c: usize) -> String {
    spread_id("gr", 2 << 40 | (u * CLIENTS + c) as u64)
}

fn spread_id(prefix: &str, x: u64) -> String {
    format!("{prefix}_{:016x}{:016x}", scatter(x), scatter(!x))
}

/// SplitMix64's finaliser: a fixed, well-mixed permutation of `x`.
fn scatter(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Users of the simulated deployment.
pub const USERS: usize = 5_000;
const CLIENTS: usize = 400;

const RESOURCES: [&str; 4] = [
    "https://mcp.example.com/mcp/demo",
    "https://mcp.example.com/mcp/github",
    "https://mcp.example.com/mcp/drive",
    "https://mcp.example.com/mcp/jira",
];
const TOOLS: [&str; 8] = [
    "search_documents",
    "read_file",
    "list_issues",
    "create_issue",
    "summarise_thread",
    "delete_document",
    "delete_branch",
    "get_time",
];
const AGENTS: [&str; 12] = [
    "Claude-Desktop/1.4.2 (macOS 15.1)",
    "Claude-Desktop/1.4.1 (Windows 11)",
    "Cursor/1.7.3",
    "Code/1.106.0 (VS Code MCP)",
    "python-httpx/0.28.1",
    "mcp-python-sdk/2.3.0",
    "node/20.20.2 @modelcontextprotocol/sdk/1.32.2",
    "curl/8.5.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/144.0",
    "Go-http-client/2.0",
    "okhttp/4.12.0",
];
const CLIENT_NAMES: [&str; 6] = [
    "Claude Desktop",
    "Cursor",
    "VS Code",
    "Internal assistant",
    "Ops bot",
    "Research notebook",
];

impl Generator {
    /// A generator of its own random sequence (`seed`), in `population`.
    pub fn new(seed: u64, population: Arc<Population>) -> Self {
        Generator {
            seed,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            n: 0,
            queue: Vec::new(),
            population,
            now: Timestamp::now(),
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

    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Heavily skewed towards small indices: a few users and clients do most of the work.
    fn skewed(&mut self, n: usize) -> usize {
        ((n as f64) * self.unit().powi(3)) as usize % n
    }

    /// The id of this generator's `n`th family, made at [`Generator::now`] as the server makes
    /// one: `fam_` and a UUIDv7 (its random bits here drawn from the seed and `n`), so that new
    /// families are neighbours in the ledger's indexes, as they are in the server's.
    fn family_id(&self, n: u64) -> String {
        let ms = (self.now.as_micros() / 1000).max(0) as u64;
        let (a, b) = (scatter(self.seed << 40 ^ n), scatter(n << 20 ^ self.seed));
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&a.to_be_bytes());
        random[8..].copy_from_slice(&b.to_be_bytes()[..2]);
        let id = uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid();
        format!("fam_{}", id.simple())
    }

    fn sealed(&self, subject: &str, text: &str) -> Sealed {
        Sealed::seal(&self.population.key, subject, text).unwrap_or_else(|e| panic!("seal: {e}"))
    }

    /// A user's usual address, in one of several networks.
    fn home_ip(u: usize) -> String {
        let (a, b) = ((u / 250) % 250, u % 250 + 1);
        match u % 6 {
            0 | 1 => format!("10.{}.{a}.{b}", u % 16),
            2 => format!("172.{}.{a}.{b}", 16 + u % 16),
            3 => format!("192.168.{a}.{b}"),
            4 => format!("198.51.100.{b}"),
            _ => format!("2001:db8:{:x}::{:x}", a, b),
        }
    }

    fn meta(&self, subject: &str, n: u64, ip: &str, ua: &str) -> RequestMeta {
        RequestMeta {
            request_id: format!("req_{n:016x}{:04x}", self.queue.len()),
            trace_id: None,
            source_ip: Some(self.sealed(subject, ip)),
            user_agent: Some(self.sealed(subject, ua)),
        }
    }

    /// One authorization and what follows it.
    fn flow(&mut self) {
        self.n += 1;
        let n = self.n;
        let now = self.now;
        let u = self.skewed(USERS);
        let c = self.skewed(CLIENTS);
        let user = user_id(u);
        let client = client_id(c);
        let subject = pii::user_subject(&user);
        let family = self.family_id(n);
        let grant = grant_id(u, c);
        let (new_user, new_client) = self.population.meet(u, c);
        let resource = RESOURCES[(u + c) % 4];
        let ip = if self.chance(0.1) {
            format!("203.0.113.{}", self.next() % 254 + 1)
        } else {
            Self::home_ip(u)
        };
        let ua = AGENTS[(c + (self.next() % 3) as usize) % AGENTS.len()];
        let scopes = vec!["demo:read".to_string(), "demo:write".to_string()];
        let actor = Actor::User { id: user.clone() };
        let client_actor = Actor::Client { id: client.clone() };
        let mut out: Vec<NewEvent> = Vec::new();
        let mut push = |stream: StreamId, actor: &Actor, p: Payload| {
            out.push(NewEvent::new(stream, actor.clone(), p))
        };
        if new_client {
            push(
                StreamId::client(&client),
                &client_actor,
                ClientRegistered {
                    request: Some(self.meta(&subject, n, &ip, ua)),
                    client_id: client.clone(),
                    client_name: format!("{} {}", CLIENT_NAMES[c % CLIENT_NAMES.len()], c),
                    method: RegistrationMethod::Dynamic,
                    application_type: ApplicationType::Native,
                    token_endpoint_auth_method: AuthMethod::None,
                    redirect_uris: vec!["http://127.0.0.1/callback".into()],
                    grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
                    scope: Some("demo:read demo:write offline_access".into()),
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
        if new_user {
            push(
                StreamId::user(&user),
                &Actor::Operator,
                UserCreated {
                    user_id: user.clone(),
                    username: self.sealed(&subject, &format!("user{u}")),
                    email: Some(self.sealed(&subject, &format!("user{u}@example.com"))),
                    display_name: None,
                    role: if u.is_multiple_of(97) {
                        "auditor"
                    } else {
                        "user"
                    }
                    .into(),
                    source: UserSource::Admin,
                    provider: None,
                }
                .into(),
            );
        }
        let failed_login = self.chance(0.03);
        if failed_login {
            push(
                StreamId::user(&user),
                &Actor::System,
                LoginFailed {
                    user_id: Some(user.clone()),
                    username: Some(self.sealed(&subject, &format!("user{u}"))),
                    reason: LoginFailure::BadPassword,
                    provider: None,
                    error: None,
                    source_ip: Some(self.sealed(&subject, &ip)),
                    user_agent: Some(self.sealed(&subject, ua)),
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
                provider: None,
                upstream_subject: None,
                source_ip: Some(self.sealed(&subject, &ip)),
                user_agent: Some(self.sealed(&subject, ua)),
            }
            .into(),
        );
        push(
            StreamId::grant(&grant),
            &actor,
            ConsentGranted {
                consent_page: None,
                request: Some(self.meta(&subject, n, &ip, ua)),
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
                request: Some(self.meta(&subject, n, &ip, ua)),
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
                code_digest: code.clone(),
                client_id: client.clone(),
            }
            .into(),
        );
        let seed = self.seed;
        let tok = |kind: &str, i: u64| secret_digest(format!("{kind}{n}/{i}/{seed}").as_bytes());
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
        let cred = |i: u64| Credential {
            kind: CredentialKind::AccessToken,
            id: access(i).token_id,
        };
        push(
            StreamId::resource(resource),
            &actor,
            ToolListed {
                request_id: format!("req_{n:016x}00"),
                trace_id: None,
                resource: resource.into(),
                user_id: Some(user.clone()),
                client_id: Some(client.clone()),
                credential: cred(0),
                outcome: ToolOutcome::Ok,
                tools_returned: 6,
                duration_us: 900,
                session_id: Some(format!("mcp-{n:x}")),
            }
            .into(),
        );
        // Uneven: most sessions make a few calls, some many.
        let calls = (self.unit().powi(2) * 14.0) as u64;
        let rotations = 1 + calls / 5;
        let mut i = 0;
        for call in 0..calls {
            if call > 0 && call % 5 == 0 {
                i += 1;
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
            let tool = TOOLS[((self.next() % 8) as usize + u) % 8];
            let destructive = tool.starts_with("delete_");
            // Most users may not delete: those calls are refused.
            let denied = destructive && !u.is_multiple_of(5);
            let request_id = format!("req_{n:016x}{call:04x}");
            let args = tok("args", call);
            if denied {
                push(
                    StreamId::resource(resource),
                    &actor,
                    AuthorizationDenied {
                        request_id: request_id.clone(),
                        trace_id: None,
                        resource: resource.into(),
                        user_id: Some(user.clone()),
                        client_id: Some(client.clone()),
                        credential: Some(cred(i)),
                        reason: "insufficient_scope".into(),
                        required_scopes: vec!["demo:write".into()],
                        method: "tools/call".into(),
                        tool: Some(tool.into()),
                    }
                    .into(),
                );
            } else {
                push(
                    StreamId::resource(resource),
                    &actor,
                    ToolCallStarted {
                        request_id: request_id.clone(),
                        trace_id: None,
                        resource: resource.into(),
                        tool: tool.into(),
                        user_id: Some(user.clone()),
                        client_id: Some(client.clone()),
                        credential: cred(i),
                        arguments_digest: args.clone(),
                        intent: None,
                        sealed_intent: (call % 3 == 0)
                            .then(|| self.sealed(&subject, "answer the user's question")),
                        session_id: Some(format!("mcp-{n:x}")),
                    }
                    .into(),
                );
            }
            let upstream_error = !denied && self.chance(0.01);
            push(
                StreamId::resource(resource),
                &actor,
                ToolCalled {
                    request_id,
                    trace_id: None,
                    resource: resource.into(),
                    tool: tool.into(),
                    user_id: Some(user.clone()),
                    client_id: Some(client.clone()),
                    credential: cred(i),
                    outcome: if denied {
                        ToolOutcome::Denied
                    } else if upstream_error {
                        ToolOutcome::UpstreamError
                    } else {
                        ToolOutcome::Ok
                    },
                    reason: denied.then(|| "insufficient_scope".into()),
                    error_code: upstream_error.then_some(-32002),
                    duration_us: 400 + self.next() % 20_000,
                    arguments_digest: args,
                    intent: None,
                    sealed_intent: (call % 3 == 0)
                        .then(|| self.sealed(&subject, "answer the user's question")),
                    source_ip: Some(self.sealed(&subject, &ip)),
                }
                .into(),
            );
        }
        let _ = rotations;
        if self.chance(0.002) {
            push(
                StreamId::resource(resource),
                &Actor::System,
                RateLimitExceeded {
                    resource: resource.into(),
                    bucket: RateBucket::UserWrite,
                    subject: user.clone(),
                    window_start: now,
                    window_seconds: 60,
                    limit: 30,
                    rejected: 1 + self.next() % 40,
                }
                .into(),
            );
        }
        if self.chance(0.004) {
            push(
                StreamId::family(&family),
                &client_actor,
                RefreshReuseDetected {
                    request: Some(self.meta(&subject, n, &ip, ua)),
                    family_id: family.clone(),
                    refresh_token_id: refresh(0).token_id,
                    client_id: client.clone(),
                    rotated_at: now,
                    grace_seconds: 10,
                }
                .into(),
            );
            push(
                StreamId::family(&family),
                &Actor::System,
                FamilyRevoked {
                    request: None,
                    family_id: family.clone(),
                    reason: "refresh token reuse".into(),
                }
                .into(),
            );
        } else if self.chance(0.001) {
            push(
                StreamId::family(&family),
                &client_actor,
                CodeReplayed {
                    request: None,
                    family_id: family.clone(),
                    code_digest: code,
                    client_id: client.clone(),
                }
                .into(),
            );
        } else if self.chance(0.01) {
            push(
                StreamId::family(&family),
                &actor,
                FamilyRevoked {
                    request: Some(self.meta(&subject, n, &ip, ua)),
                    family_id: family.clone(),
                    reason: "signed out of the client".into(),
                }
                .into(),
            );
        } else if self.chance(0.005) {
            push(
                StreamId::grant(&grant),
                &actor,
                GrantRevoked {
                    request: Some(self.meta(&subject, n, &ip, ua)),
                    grant_id: grant.clone(),
                    user_id: user.clone(),
                    client_id: client.clone(),
                    reason: "revoked on the account page".into(),
                }
                .into(),
            );
        }
        self.queue.extend(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_of_one_population_register_each_user_and_client_once() {
        let population = Population::new(1);
        let mut a = Generator::new(1000, population.clone());
        let mut b = Generator::new(1001, population);
        let mut registered = std::collections::HashMap::<String, usize>::new();
        let mut users = [HashSet::new(), HashSet::new()];
        for _ in 0..5_000 {
            for (i, event) in [a.next_event(), b.next_event()].into_iter().enumerate() {
                let stream = event.stream.as_str().to_string();
                if matches!(
                    event.payload,
                    Payload::UserCreated(_) | Payload::ClientRegistered(_)
                ) {
                    *registered.entry(stream.clone()).or_default() += 1;
                }
                if stream.starts_with("user:") {
                    users[i].insert(stream);
                }
            }
        }
        assert!(
            registered.len() > 10,
            "too few registrations: {registered:?}"
        );
        assert!(
            registered.values().all(|&n| n == 1),
            "registered more than once: {:?}",
            registered
                .iter()
                .filter(|(_, n)| **n > 1)
                .collect::<Vec<_>>()
        );
        // Both generators draw from the same users.
        assert!(users[0].intersection(&users[1]).count() > 10);
    }

    #[test]
    fn new_families_are_named_in_the_order_they_are_made_and_never_twice() {
        let population = Population::new(1);
        let mut a = Generator::new(1000, population.clone());
        let mut b = Generator::new(1001, population);
        let t = Timestamp::from_secs(1_800_000_000);
        a.now = t;
        b.now = t;
        let early = [a.family_id(1), a.family_id(2), b.family_id(1)];
        a.now = t.plus_secs(1);
        let late = a.family_id(3);
        assert_eq!(early.iter().collect::<HashSet<_>>().len(), 3, "{early:?}");
        assert!(early.iter().all(|e| *e < late), "{early:?} {late}");
        let id = uuid::Uuid::parse_str(&late["fam_".len()..]).expect("a UUID");
        assert_eq!(id.get_version_num(), 7);
    }
}
