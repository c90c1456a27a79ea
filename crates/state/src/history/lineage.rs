//! `grantline lineage <id>`: the whole story of a token, family, grant, user, client, personal
//! access token, request or event, in seq order, and nothing from another family.
//!
//! Two passes over the ledger: [`Index`] learns which family every token belongs to and what
//! the id is; [`Scope::includes`] then picks the events of its story.

use super::refs::{Refs, refs};
use grantline_ledger::{Kind, Payload, Recorded};
use std::collections::{HashMap, HashSet};

/// What the id given to `lineage` turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Family(String),
    /// An access or refresh token id: the story of its family (or, for a token without one,
    /// a client-credentials token, its own story and its client's registration), the token's
    /// own events marked.
    Token {
        token: String,
        family: String,
    },
    Grant(String),
    Pat(String),
    Client(String),
    User(String),
    /// A request id: the story of what the request acted on, its own events marked.
    Request(String),
    /// An event id (UUIDv7): the story of what the event names, the event marked.
    Event(String),
}

impl Subject {
    /// `family`, `token`, `grant`, … as a word.
    pub fn noun(&self) -> &'static str {
        match self {
            Subject::Family(_) => "family",
            Subject::Token { .. } => "token",
            Subject::Grant(_) => "grant",
            Subject::Pat(_) => "personal access token",
            Subject::Client(_) => "client",
            Subject::User(_) => "user",
            Subject::Request(_) => "request",
            Subject::Event(_) => "event",
        }
    }
}

#[derive(Debug, Clone)]
struct FamilyInfo {
    grant: String,
    client: String,
    user: String,
    created: u64,
}

/// What to follow an event to when the id names one event or one request: the most specific
/// thing it names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Anchor {
    Family(String),
    Pat(String),
    Grant(String),
    Client(String),
    User(String),
}

/// The first pass: families, their tokens and grants, and where the id appears.
#[derive(Debug)]
pub struct Index {
    id: String,
    families: HashMap<String, FamilyInfo>,
    token_family: HashMap<String, String>,
    /// The other way: each family's tokens, so that a client's or user's story (thousands of
    /// families) is not a scan of every token per family.
    family_tokens: HashMap<String, Vec<String>>,
    /// Tokens of no family (client credentials) → their client.
    loose_tokens: HashMap<String, String>,
    grants: HashMap<String, (String, String)>,
    pats: HashMap<String, String>,
    users: HashSet<String>,
    clients: HashSet<String>,
    /// The anchor of the first event recorded for the id as a request id.
    request: Option<Option<Anchor>>,
    /// The anchor of the event whose event id is the id.
    event: Option<Option<Anchor>>,
}

impl Index {
    /// An index looking for `id`.
    pub fn new(id: &str) -> Index {
        Index {
            id: id.to_string(),
            families: HashMap::new(),
            token_family: HashMap::new(),
            family_tokens: HashMap::new(),
            loose_tokens: HashMap::new(),
            grants: HashMap::new(),
            pats: HashMap::new(),
            users: HashSet::new(),
            clients: HashSet::new(),
            request: None,
            event: None,
        }
    }

    /// Learns from one event (in seq order).
    pub fn observe(&mut self, r: &Recorded) {
        let p = r.payload();
        let refs = refs(p);
        match p {
            Payload::CodeIssued(e) => {
                self.families.insert(
                    e.family_id.clone(),
                    FamilyInfo {
                        grant: e.grant_id.clone(),
                        client: e.client_id.clone(),
                        user: e.user_id.clone(),
                        created: r.seq(),
                    },
                );
            }
            Payload::TokenIssued(_) | Payload::TokenRefreshed(_) => {
                match (refs.family, refs.client) {
                    (Some(f), _) => {
                        for t in &refs.tokens {
                            if self
                                .token_family
                                .insert(t.to_string(), f.to_string())
                                .is_none()
                            {
                                self.family_tokens
                                    .entry(f.to_string())
                                    .or_default()
                                    .push(t.to_string());
                            }
                        }
                    }
                    (None, Some(c)) => {
                        for t in &refs.tokens {
                            self.loose_tokens.insert(t.to_string(), c.to_string());
                        }
                    }
                    (None, None) => {}
                }
            }
            Payload::ConsentGranted(e) => {
                self.grants
                    .insert(e.grant_id.clone(), (e.user_id.clone(), e.client_id.clone()));
            }
            Payload::PatCreated(e) => {
                self.pats.insert(e.pat_id.clone(), e.user_id.clone());
            }
            Payload::UserCreated(e) => {
                self.users.insert(e.user_id.clone());
            }
            Payload::ClientRegistered(e) => {
                self.clients.insert(e.client_id.clone());
            }
            _ => {}
        }
        if self.request.is_none() && refs.request == Some(self.id.as_str()) {
            self.request = Some(self.anchor(&refs));
        }
        if self.event.is_none() && r.envelope.id.to_string() == self.id {
            self.event = Some(self.anchor(&refs));
        }
    }

    fn anchor(&self, r: &Refs<'_>) -> Option<Anchor> {
        let family = r.family.map(str::to_string).or_else(|| {
            r.tokens
                .iter()
                .find_map(|t| self.token_family.get(*t).cloned())
        });
        family
            .map(Anchor::Family)
            .or_else(|| r.pat.map(|p| Anchor::Pat(p.into())))
            .or_else(|| r.grant.map(|g| Anchor::Grant(g.into())))
            .or_else(|| r.client.map(|c| Anchor::Client(c.into())))
            .or_else(|| r.user.map(|u| Anchor::User(u.into())))
    }

    /// What the id is, and which events tell its story. `None` when the ledger never names it.
    pub fn resolve(&self) -> Option<Scope> {
        let id = self.id.as_str();
        let subject = if self.families.contains_key(id) {
            Subject::Family(id.into())
        } else if let Some(f) = self.token_family.get(id) {
            Subject::Token {
                token: id.into(),
                family: f.clone(),
            }
        } else if self.loose_tokens.contains_key(id) {
            Subject::Token {
                token: id.into(),
                family: String::new(),
            }
        } else if self.grants.contains_key(id) {
            Subject::Grant(id.into())
        } else if self.pats.contains_key(id) {
            Subject::Pat(id.into())
        } else if self.clients.contains(id) {
            Subject::Client(id.into())
        } else if self.users.contains(id) {
            Subject::User(id.into())
        } else if self.request.is_some() {
            Subject::Request(id.into())
        } else if self.event.is_some() {
            Subject::Event(id.into())
        } else {
            return None;
        };
        let mut s = Scope {
            subject: subject.clone(),
            ..Scope::default()
        };
        match &subject {
            Subject::Token { token, family } if family.is_empty() => {
                s.tokens.insert(token.clone());
                if let Some(c) = self.loose_tokens.get(token) {
                    s.clients.insert(c.clone());
                }
            }
            Subject::Family(f) | Subject::Token { family: f, .. } => self.family(&mut s, f, true),
            Subject::Grant(g) => self.grant(&mut s, g),
            Subject::Pat(p) => self.pat(&mut s, p),
            Subject::Client(c) => self.whole_client(&mut s, c),
            Subject::User(u) => self.whole_user(&mut s, u),
            Subject::Request(_) | Subject::Event(_) => {
                let anchor = match &subject {
                    Subject::Request(_) => self.request.clone().flatten(),
                    _ => self.event.clone().flatten(),
                };
                match anchor {
                    Some(Anchor::Family(f)) => self.family(&mut s, &f, true),
                    Some(Anchor::Pat(p)) => self.pat(&mut s, &p),
                    Some(Anchor::Grant(g)) => self.grant(&mut s, &g),
                    Some(Anchor::Client(c)) => self.whole_client(&mut s, &c),
                    Some(Anchor::User(u)) => self.whole_user(&mut s, &u),
                    None => {}
                }
            }
        }
        Some(s)
    }

    fn family(&self, s: &mut Scope, f: &str, only_its_consents: bool) {
        s.families.insert(f.to_string());
        s.tokens
            .extend(self.family_tokens.get(f).into_iter().flatten().cloned());
        if let Some(info) = self.families.get(f) {
            s.grants.insert(info.grant.clone());
            if only_its_consents {
                // The consents that led to this family, not the later ones that led to others.
                s.consents_before.insert(info.grant.clone(), info.created);
            }
            s.clients.insert(info.client.clone());
            s.users.insert(info.user.clone());
        }
    }

    fn grant(&self, s: &mut Scope, g: &str) {
        s.grants.insert(g.to_string());
        if let Some((u, c)) = self.grants.get(g) {
            s.users.insert(u.clone());
            s.clients.insert(c.clone());
        }
        for (f, info) in &self.families {
            if info.grant == g {
                self.family(s, f, false);
            }
        }
    }

    fn pat(&self, s: &mut Scope, p: &str) {
        s.pats.insert(p.to_string());
        if let Some(u) = self.pats.get(p) {
            s.users.insert(u.clone());
        }
    }

    fn whole_user(&self, s: &mut Scope, u: &str) {
        s.whole_user = Some(u.to_string());
        s.users.insert(u.to_string());
        for (f, info) in &self.families {
            if info.user == u {
                self.family(s, f, false);
            }
        }
        for (p, owner) in &self.pats {
            if owner == u {
                s.pats.insert(p.clone());
            }
        }
    }

    fn whole_client(&self, s: &mut Scope, c: &str) {
        s.whole_client = Some(c.to_string());
        s.clients.insert(c.to_string());
        for (f, info) in &self.families {
            if info.client == c {
                self.family(s, f, false);
            }
        }
        // Its tokens of no family (client credentials): their revocation names no client.
        for (t, owner) in &self.loose_tokens {
            if owner == c {
                s.tokens.insert(t.clone());
            }
        }
    }
}

/// Which events belong to one story (the second pass).
#[derive(Debug, Default, Clone)]
pub struct Scope {
    pub subject: Subject,
    families: HashSet<String>,
    tokens: HashSet<String>,
    grants: HashSet<String>,
    /// For a family's story: a grant's consents count only before the family started.
    consents_before: HashMap<String, u64>,
    pats: HashSet<String>,
    clients: HashSet<String>,
    users: HashSet<String>,
    whole_user: Option<String>,
    whole_client: Option<String>,
}

impl Default for Subject {
    fn default() -> Self {
        Subject::Event(String::new())
    }
}

impl Scope {
    /// Whether `r` is part of the story, and whether it is marked (the token, request or event
    /// asked about). `None`: not part of it.
    pub fn includes(&self, r: &Recorded) -> Option<bool> {
        let p = r.payload();
        let refs = refs(p);
        let marked = match &self.subject {
            Subject::Token { token, .. } => refs.tokens.iter().any(|t| t == token),
            Subject::Request(q) => refs.request == Some(q.as_str()),
            Subject::Event(e) => r.envelope.id.to_string() == *e,
            _ => false,
        };
        let has = |set: &HashSet<String>, v: Option<&str>| v.is_some_and(|v| set.contains(v));
        let kind = r.envelope.kind();
        let part = match &refs.family {
            // An event of a family belongs to that family's story — and to the story of the
            // whole client or user it names: a client presenting another client's refresh
            // token is recorded against the family it tried, and is part of what that client
            // did.
            Some(f) => {
                self.families.contains(*f)
                    || (self.whole_user.is_some() && refs.user == self.whole_user.as_deref())
                    || (self.whole_client.is_some() && refs.client == self.whole_client.as_deref())
            }
            None => {
                refs.tokens.iter().any(|t| self.tokens.contains(*t))
                    || has(&self.pats, refs.pat)
                    || (self.whole_user.is_some() && refs.user == self.whole_user.as_deref())
                    || (self.whole_client.is_some() && refs.client == self.whole_client.as_deref())
                    || match kind {
                        Kind::ConsentGranted => {
                            has(&self.grants, refs.grant)
                                && refs.grant.is_none_or(|g| {
                                    self.consents_before.get(g).is_none_or(|s| r.seq() < *s)
                                })
                        }
                        Kind::GrantRevoked => has(&self.grants, refs.grant),
                        Kind::ClientRegistered
                        | Kind::ClientUpdated
                        | Kind::ClientDisabled
                        | Kind::ClientExpired => has(&self.clients, refs.client),
                        // The end of a user's sessions revokes what they made before it.
                        Kind::UserCreated
                        | Kind::UserDisabled
                        | Kind::UserEnabled
                        | Kind::UserPasswordSet
                        | Kind::UserSessionsEnded
                        | Kind::UserRoleChanged
                        | Kind::UserErased => has(&self.users, refs.user),
                        _ => false,
                    }
            }
        };
        (part || marked).then_some(marked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantline_ledger::{GENESIS, samples};

    fn rec(seq: u64, payload: Payload) -> Recorded {
        Recorded {
            envelope: samples::envelope(seq, payload),
            prev_hash: GENESIS,
            hash: GENESIS,
        }
    }

    fn sample(kind: Kind) -> Payload {
        samples::all()
            .into_iter()
            .find(|p| p.kind() == kind)
            .unwrap()
    }

    #[test]
    fn a_client_credentials_token_has_a_story_of_its_own() {
        let Payload::TokenIssued(mut issued) = sample(Kind::TokenIssued) else {
            unreachable!()
        };
        issued.family_id = None;
        issued.refresh = None;
        let token = issued.access.token_id.clone();
        let events = [
            rec(1, sample(Kind::ClientRegistered)),
            rec(2, sample(Kind::CodeIssued)),
            rec(3, Payload::TokenIssued(issued)),
            rec(4, sample(Kind::ToolCalled)),
        ];
        let mut index = Index::new(&token);
        events.iter().for_each(|e| index.observe(e));
        let scope = index.resolve().expect("the token is known");
        assert!(matches!(&scope.subject, Subject::Token { family, .. } if family.is_empty()));
        let story: Vec<(u64, bool)> = events
            .iter()
            .filter_map(|e| scope.includes(e).map(|m| (e.seq(), m)))
            .collect();
        // Its client's registration, its issuance and the tool call made with it (both
        // marked); not the other family's code.
        assert_eq!(story, vec![(1, false), (3, true), (4, true)]);
    }

    /// A client's story holds the revocation of its client-credentials tokens (which names no
    /// client) and the rate limits of its bucket.
    #[test]
    fn a_clients_story_holds_its_loose_tokens_revoked_and_its_rate_limits() {
        let Payload::TokenIssued(mut issued) = sample(Kind::TokenIssued) else {
            unreachable!()
        };
        issued.family_id = None;
        issued.refresh = None;
        let client = issued.client_id.clone();
        let Payload::TokenRevoked(mut revoked) = sample(Kind::TokenRevoked) else {
            unreachable!()
        };
        revoked.family_id = None;
        revoked.token_id = issued.access.token_id.clone();
        let limited = grantline_ledger::RateLimitExceeded {
            resource: "https://mcp.example/mcp".into(),
            bucket: grantline_ledger::RateBucket::Client,
            subject: client.clone(),
            window_start: grantline_ledger::Timestamp(0),
            window_seconds: 60,
            limit: 10,
            rejected: 3,
        };
        let events = [
            rec(1, sample(Kind::ClientRegistered)),
            rec(2, Payload::TokenIssued(issued)),
            rec(3, Payload::TokenRevoked(revoked)),
            rec(4, Payload::RateLimitExceeded(limited)),
        ];
        let mut index = Index::new(&client);
        events.iter().for_each(|e| index.observe(e));
        let scope = index.resolve().expect("the client is known");
        let story: Vec<u64> = events
            .iter()
            .filter(|e| scope.includes(e).is_some())
            .map(|e| e.seq())
            .collect();
        assert_eq!(story, vec![1, 2, 3, 4]);
    }

    /// A client's story holds its attempts on another client's token family: the refusal is
    /// recorded against the family it tried, and names the client that tried.
    #[test]
    fn a_clients_story_holds_its_tries_with_another_clients_refresh_token() {
        let Payload::ClientRegistered(mut x) = sample(Kind::ClientRegistered) else {
            unreachable!()
        };
        x.client_id = "cli_intruder".into();
        let Payload::TokenIssued(victim) = sample(Kind::TokenIssued) else {
            unreachable!()
        };
        assert_ne!(victim.client_id, x.client_id);
        let family = victim.family_id.clone().expect("a family");
        let Payload::OAuthRefused(mut tried) = sample(Kind::OAuthRefused) else {
            unreachable!()
        };
        tried.client_id = Some(x.client_id.clone());
        tried.family_id = Some(family.clone());
        let Payload::CodeIssued(mut code) = sample(Kind::CodeIssued) else {
            unreachable!()
        };
        code.family_id = family.clone();
        code.client_id = victim.client_id.clone();
        let events = [
            rec(1, Payload::ClientRegistered(x.clone())),
            rec(2, Payload::CodeIssued(code)),
            rec(3, Payload::TokenIssued(victim)),
            rec(4, Payload::OAuthRefused(tried)),
        ];
        let story = |subject: &str| {
            let mut index = Index::new(subject);
            events.iter().for_each(|e| index.observe(e));
            let scope = index.resolve().expect("known");
            events
                .iter()
                .filter(|e| scope.includes(e).is_some())
                .map(|e| e.seq())
                .collect::<Vec<_>>()
        };
        assert_eq!(story(&x.client_id), vec![1, 4]);
        // The family's own story holds the try as well.
        assert!(story(&family).contains(&4));
    }

    /// A personal access token's story holds the end of its user's sessions: the fold
    /// revokes the token there, with no `pat.revoked` of its own.
    #[test]
    fn a_tokens_story_holds_the_end_of_its_users_sessions() {
        let Payload::PatCreated(pat) = sample(Kind::PatCreated) else {
            unreachable!()
        };
        let ended = grantline_ledger::UserSessionsEnded {
            user_id: pat.user_id.clone(),
            reason: "contained".into(),
        };
        let events = [
            rec(1, sample(Kind::UserCreated)),
            rec(2, Payload::PatCreated(pat.clone())),
            rec(3, Payload::UserSessionsEnded(ended)),
        ];
        let mut index = Index::new(&pat.pat_id);
        events.iter().for_each(|e| index.observe(e));
        let scope = index.resolve().expect("the token is known");
        let story: Vec<u64> = events
            .iter()
            .filter(|e| scope.includes(e).is_some())
            .map(|e| e.seq())
            .collect();
        assert!(story.contains(&2) && story.contains(&3), "{story:?}");
    }
}
