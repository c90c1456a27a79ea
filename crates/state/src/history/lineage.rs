//! `grantline lineage <id>`: the whole story of a token, family, grant, user, client, personal
//! access token, request or event, in seq order, and nothing from another family.
//!
//! Two passes over the ledger: [`Index`] learns what the id is and the families, grants and
//! personal access tokens it may lead to; [`Scope::includes`] then picks the events of its
//! story, learning each family's tokens as they are issued. Neither pass keeps a map of every
//! token: a ledger of years of rotations holds far more tokens than families. A request or
//! event id whose event names a token but no family takes one more look, for that token's
//! family ([`Index::needs_another_look`]).

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

/// The event a request or event id names: what to follow it to, and the tokens it names
/// without their family, whose family (found by another look) is followed instead.
#[derive(Debug, Clone)]
struct Found {
    anchor: Option<Anchor>,
    unresolved: Vec<String>,
}

/// The id as a token: its family, or the client of a token of no family.
#[derive(Debug, Clone)]
enum TokenOf {
    Family(String),
    Client(String),
}

/// The first pass: families and grants, and where the id appears.
#[derive(Debug)]
pub struct Index {
    id: String,
    families: HashMap<String, FamilyInfo>,
    grants: HashMap<String, (String, String)>,
    pats: HashMap<String, String>,
    users: HashSet<String>,
    clients: HashSet<String>,
    /// The id as a token, from the event that issued it.
    token: Option<TokenOf>,
    /// The first event recorded for the id as a request id.
    request: Option<Found>,
    /// The event whose event id is the id.
    event: Option<Found>,
}

impl Index {
    /// An index looking for `id`.
    pub fn new(id: &str) -> Index {
        Index {
            id: id.to_string(),
            families: HashMap::new(),
            grants: HashMap::new(),
            pats: HashMap::new(),
            users: HashSet::new(),
            clients: HashSet::new(),
            token: None,
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
            Payload::TokenIssued(_) | Payload::TokenRefreshed(_)
                if self.token.is_none() && refs.tokens.contains(&self.id.as_str()) =>
            {
                self.token = match (refs.family, refs.client) {
                    (Some(f), _) => Some(TokenOf::Family(f.to_string())),
                    (None, Some(c)) => Some(TokenOf::Client(c.to_string())),
                    (None, None) => None,
                };
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
            self.request = Some(found(&refs));
        }
        if self.event.is_none() && r.envelope.id.to_string() == self.id {
            self.event = Some(found(&refs));
        }
    }

    /// Whether the story hangs on the family of a token that the id's event names without
    /// it: then every event goes through [`Index::look_again`] before [`Index::resolve`].
    pub fn needs_another_look(&self) -> bool {
        self.by_anchor().is_some_and(|f| !f.unresolved.is_empty())
    }

    /// The other look: the family of a token the id's event names.
    pub fn look_again(&mut self, r: &Recorded) {
        if !matches!(r.envelope.kind(), Kind::TokenIssued | Kind::TokenRefreshed) {
            return;
        }
        let refs = refs(r.payload());
        let Some(family) = refs.family else { return };
        for found in [self.request.as_mut(), self.event.as_mut()]
            .into_iter()
            .flatten()
        {
            if found
                .unresolved
                .iter()
                .any(|t| refs.tokens.contains(&t.as_str()))
            {
                found.anchor = Some(Anchor::Family(family.to_string()));
                found.unresolved.clear();
            }
        }
    }

    /// The request or event the id names, when it is neither a token nor anything else known.
    fn by_anchor(&self) -> Option<&Found> {
        let id = self.id.as_str();
        let named = self.families.contains_key(id)
            || self.token.is_some()
            || self.grants.contains_key(id)
            || self.pats.contains_key(id)
            || self.clients.contains(id)
            || self.users.contains(id);
        if named {
            None
        } else {
            self.request.as_ref().or(self.event.as_ref())
        }
    }

    /// What the id is, and which events tell its story. `None` when the ledger never names it.
    pub fn resolve(&self) -> Option<Scope> {
        let id = self.id.as_str();
        let subject = if self.families.contains_key(id) {
            Subject::Family(id.into())
        } else if let Some(t) = &self.token {
            Subject::Token {
                token: id.into(),
                family: match t {
                    TokenOf::Family(f) => f.clone(),
                    TokenOf::Client(_) => String::new(),
                },
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
            Subject::Token { token, .. } => match &self.token {
                Some(TokenOf::Family(f)) => self.family(&mut s, f, true),
                Some(TokenOf::Client(c)) => {
                    s.tokens.insert(token.clone());
                    s.clients.insert(c.clone());
                }
                None => {}
            },
            Subject::Family(f) => self.family(&mut s, f, true),
            Subject::Grant(g) => self.grant(&mut s, g),
            Subject::Pat(p) => self.pat(&mut s, p),
            Subject::Client(c) => self.whole_client(&mut s, c),
            Subject::User(u) => self.whole_user(&mut s, u),
            Subject::Request(_) | Subject::Event(_) => {
                match self.by_anchor().and_then(|f| f.anchor.clone()) {
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

    /// A family's story; its tokens are learnt in the second pass, as they are issued.
    fn family(&self, s: &mut Scope, f: &str, only_its_consents: bool) {
        s.families.insert(f.to_string());
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

    /// A client's story; its tokens of no family (client credentials), whose revocation
    /// names no client, are learnt in the second pass as they are issued.
    fn whole_client(&self, s: &mut Scope, c: &str) {
        s.whole_client = Some(c.to_string());
        s.clients.insert(c.to_string());
        for (f, info) in &self.families {
            if info.client == c {
                self.family(s, f, false);
            }
        }
    }
}

/// What a request's or an event's story follows: the family it names, else the tokens it
/// names (for another look) and the next most specific id.
fn found(r: &Refs<'_>) -> Found {
    let anchor = r
        .family
        .map(|f| Anchor::Family(f.into()))
        .or_else(|| r.pat.map(|p| Anchor::Pat(p.into())))
        .or_else(|| r.grant.map(|g| Anchor::Grant(g.into())))
        .or_else(|| r.client.map(|c| Anchor::Client(c.into())))
        .or_else(|| r.user.map(|u| Anchor::User(u.into())));
    let unresolved = if r.family.is_none() {
        r.tokens.iter().map(|t| t.to_string()).collect()
    } else {
        Vec::new()
    };
    Found { anchor, unresolved }
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
    /// Events in seq order: a family's tokens are learnt from their issuance.
    pub fn includes(&mut self, r: &Recorded) -> Option<bool> {
        let p = r.payload();
        let refs = refs(p);
        let kind = r.envelope.kind();
        if matches!(kind, Kind::TokenIssued | Kind::TokenRefreshed) {
            let ours = match refs.family {
                Some(f) => self.families.contains(f),
                None => self.whole_client.is_some() && refs.client == self.whole_client.as_deref(),
            };
            if ours {
                self.tokens
                    .extend(refs.tokens.iter().map(|t| t.to_string()));
            }
        }
        let marked = match &self.subject {
            Subject::Token { token, .. } => refs.tokens.iter().any(|t| t == token),
            Subject::Request(q) => refs.request == Some(q.as_str()),
            Subject::Event(e) => r.envelope.id.to_string() == *e,
            _ => false,
        };
        let has = |set: &HashSet<String>, v: Option<&str>| v.is_some_and(|v| set.contains(v));
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

    /// The story of `id` as `grantline lineage` tells it: (seq, marked).
    fn story_of(events: &[Recorded], id: &str) -> (Subject, Vec<(u64, bool)>) {
        let mut index = Index::new(id);
        events.iter().for_each(|e| index.observe(e));
        if index.needs_another_look() {
            events.iter().for_each(|e| index.look_again(e));
        }
        let mut scope = index.resolve().expect("the id is known");
        let story = events
            .iter()
            .filter_map(|e| scope.includes(e).map(|m| (e.seq(), m)))
            .collect();
        (scope.subject, story)
    }

    fn seqs(story: &[(u64, bool)]) -> Vec<u64> {
        story.iter().map(|(s, _)| *s).collect()
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
        let (subject, story) = story_of(&events, &token);
        assert!(matches!(&subject, Subject::Token { family, .. } if family.is_empty()));
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
        assert_eq!(seqs(&story_of(&events, &client).1), vec![1, 2, 3, 4]);
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
        let story = |subject: &str| seqs(&story_of(&events, subject).1);
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
        let story = seqs(&story_of(&events, &pat.pat_id).1);
        assert!(story.contains(&2) && story.contains(&3), "{story:?}");
    }

    /// A tool call's request id tells the story of the family whose token made the call,
    /// though the call names only the token, issued by a rotation after the family began;
    /// another family of the same client is not part of it.
    #[test]
    fn a_requests_story_follows_the_family_of_the_token_it_used() {
        let Payload::CodeIssued(code) = sample(Kind::CodeIssued) else {
            unreachable!()
        };
        let Payload::TokenIssued(issued) = sample(Kind::TokenIssued) else {
            unreachable!()
        };
        let mut other_code = code.clone();
        other_code.family_id = "fam_other".into();
        let mut other = issued.clone();
        other.family_id = Some("fam_other".into());
        other.access.token_id = "at_other".into();
        if let Some(r) = other.refresh.as_mut() {
            r.token_id = "rt_other".into();
        }
        let Payload::TokenRefreshed(mut rotated) = sample(Kind::TokenRefreshed) else {
            unreachable!()
        };
        rotated.access.token_id = "at_new".into();
        rotated.refresh.token_id = "rt_new".into();
        let Payload::ToolCalled(mut call) = sample(Kind::ToolCalled) else {
            unreachable!()
        };
        call.request_id = "req_ours".into();
        call.credential.id = "at_new".into();
        let mut other_call = call.clone();
        other_call.request_id = "req_theirs".into();
        other_call.credential.id = "at_other".into();
        let Payload::TokenRevoked(mut revoked) = sample(Kind::TokenRevoked) else {
            unreachable!()
        };
        revoked.family_id = None;
        revoked.token_id = "at_new".into();
        revoked.request = None;
        let events = [
            rec(1, sample(Kind::ClientRegistered)),
            rec(2, Payload::CodeIssued(code)),
            rec(3, Payload::TokenIssued(issued)),
            rec(4, Payload::CodeIssued(other_code)),
            rec(5, Payload::TokenIssued(other)),
            rec(6, Payload::TokenRefreshed(rotated)),
            rec(7, Payload::ToolCalled(call)),
            rec(8, Payload::ToolCalled(other_call)),
            rec(9, Payload::TokenRevoked(revoked)),
        ];
        let (subject, story) = story_of(&events, "req_ours");
        assert_eq!(subject, Subject::Request("req_ours".into()));
        assert_eq!(
            story,
            vec![
                (1, false),
                (2, false),
                (3, false),
                (6, false),
                (7, true),
                (9, false)
            ]
        );
        // The token's own story is the same, its events marked.
        let (subject, story) = story_of(&events, "at_new");
        assert!(matches!(subject, Subject::Token { .. }));
        assert_eq!(seqs(&story), vec![1, 2, 3, 6, 7, 9]);
        assert!(story.iter().all(|(s, m)| *m == [6, 7, 9].contains(s)));
        // The client's story holds both families.
        let client = match events[0].payload() {
            Payload::ClientRegistered(c) => c.client_id.clone(),
            _ => unreachable!(),
        };
        assert_eq!(
            seqs(&story_of(&events, &client).1),
            (1..=9).collect::<Vec<_>>()
        );
    }
}
