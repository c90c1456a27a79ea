//! The in-memory read model. Wire types live in `grantline-ledger`; these are separate so a
//! change to one does not silently change the other.

use crate::table::Table;
use grantline_ledger::{
    ApplicationType, AuthMethod, GrantType, RegistrationMethod, Timestamp, TokenFormat,
};
use std::collections::{BTreeSet, HashMap};

/// When something became true: the seq and time of the event that made it so.
#[derive(
    Debug,
    Clone,
    serde::Serialize,
    serde::Deserialize,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
)]
pub struct Since {
    pub seq: u64,
    pub at: Timestamp,
}

/// Everything Grantline knows now, folded from the ledger up to `seq`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default, PartialEq)]
pub struct State {
    /// The last event folded.
    pub seq: u64,
    pub time: Timestamp,
    pub clients: HashMap<String, Client>,
    pub users: HashMap<String, User>,
    pub grants: HashMap<String, Grant>,
    /// The live (not revoked) grant for each user × client × resource.
    pub grant_index: HashMap<GrantKey, String>,
    pub families: HashMap<String, Family>,
    /// Authorization codes by digest.
    pub codes: HashMap<String, Code>,
    /// Access tokens by digest. Sharded ([`Table`]), like the three maps below: they grow with
    /// every token issued.
    pub access_tokens: Table<AccessToken>,
    /// Access token id → digest.
    pub access_by_id: Table<String>,
    /// Refresh tokens by digest.
    pub refresh_tokens: Table<RefreshToken>,
    /// Refresh token id → digest, for events that name a token by id.
    pub refresh_by_id: Table<String>,
    pub pats: HashMap<String, Pat>,
    /// Personal access token digest → id.
    pub pat_by_digest: HashMap<String, String>,
    /// Signing keys by id, old ones included (they stay published).
    pub signing_keys: HashMap<String, SigningKey>,
    pub policies: HashMap<String, HashMap<String, String>>,
    /// Each policy's stream version (`policy:<name>`): a change is recorded against the
    /// version it was decided on, so two servers never both record a difference from the same
    /// recorded policy.
    pub policy_versions: HashMap<String, u64>,
    /// Sessions signed out before their cookie expires: session id → cookie expiry.
    pub ended_sessions: HashMap<String, Timestamp>,
    /// Client stream → client id, so that any event on a client's stream moves its version.
    pub client_streams: HashMap<grantline_ledger::StreamId, String>,
    /// Consent pages already answered (digest of the page's request id) → when.
    pub answered_consent_pages: HashMap<String, Timestamp>,
    /// Checkpoint-key handovers in seq order: (seq, the note the old key signed). A witness
    /// that trusts the first key follows them to the key in force.
    pub checkpoint_handovers: Vec<(u64, String)>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Client {
    pub client_id: String,
    pub client_name: String,
    pub method: RegistrationMethod,
    pub application_type: ApplicationType,
    pub auth_method: AuthMethod,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<GrantType>,
    pub scope: Option<String>,
    pub secret_digest: Option<String>,
    pub registered_at: Timestamp,
    pub registered: Since,
    /// When it was disabled, and why.
    pub disabled_by: Option<Revocation>,
    /// When an unused dynamic registration ages out (cleared by its first authorization).
    pub expires_at: Option<Timestamp>,
    pub used: bool,
    pub disabled: bool,
    pub expired: bool,
    /// When its redirect URIs last changed after registration (`client.updated`): a consent
    /// given before then was given to a client that sent codes elsewhere, and is asked again.
    #[serde(default)]
    pub redirects_changed: Option<Since>,
    /// The version of the client's stream after the last event on it: what a decider that
    /// changes the client expects.
    pub version: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct User {
    pub user_id: String,
    pub role: String,
    /// When the user got their current role (creation or the last role change).
    pub role_since: Since,
    pub disabled: bool,
    pub erased: bool,
    pub created_at: Timestamp,
    pub last_login: Option<Timestamp>,
    /// The seq of the last `login.succeeded`.
    #[serde(default)]
    pub last_login_seq: Option<u64>,
    /// When the user's sessions were last ended (`user.sessions_ended`).
    #[serde(default)]
    pub sessions_ended_at: Option<Timestamp>,
    /// The seq of that `user.sessions_ended`: a session whose sign-in came before it is over.
    /// Sessions are dated by seq, not time: seqs never tie, times can.
    #[serde(default)]
    pub sessions_ended_seq: Option<u64>,
    /// Identity providers the user is linked to (`user.linked`), and since when.
    #[serde(default)]
    pub links: std::collections::BTreeMap<String, Since>,
    /// Who made the account: an administrator (or the CLI, or the bootstrap), or a sign-in
    /// through an identity provider. Only an account an administrator made is ever linked to
    /// an upstream identity by its email.
    pub source: grantline_ledger::UserSource,
    /// The version of the user's stream after the last event on it.
    pub version: u64,
}

impl User {
    /// Whether the user may still act: neither disabled nor erased (an erased person is gone
    /// for every liveness check, like a disabled one).
    pub fn active(&self) -> bool {
        !self.disabled && !self.erased
    }

    /// Whether the user's sessions were ended (`user.sessions_ended`) after the sign-in
    /// recorded at `signed_in_seq`: a session begun by it is over, and nothing may be decided
    /// for it any more.
    pub fn sessions_ended_since(&self, signed_in_seq: u64) -> bool {
        self.sessions_ended_seq
            .is_some_and(|ended| ended > signed_in_seq)
    }
}

/// Who consented to whom for what: one live grant per key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, Hash)]
pub struct GrantKey {
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
}

/// A user's consent to a client for one resource.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Grant {
    pub grant_id: String,
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
    pub scopes: BTreeSet<String>,
    pub granted_at: Timestamp,
    /// The first consent.
    pub granted: Since,
    /// The last consent (one that widened the scopes, or a renewal).
    pub consented: Since,
    pub revoked: bool,
    pub revocation: Option<Revocation>,
    pub families: Vec<String>,
    /// The version of the grant's stream after the last event on it.
    pub version: u64,
}

/// Every token descended from one authorization code.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Family {
    pub family_id: String,
    pub grant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub resource: String,
    pub scopes: BTreeSet<String>,
    pub created_at: Timestamp,
    /// The `code.issued` that started it.
    pub created: Since,
    pub revoked: Option<Revocation>,
    /// Until when something of it can be used: the latest expiry of its code and of every
    /// token issued in it. The daily sweep forgets the family after that (`rules/expiry.rs`).
    pub live_until: Timestamp,
    /// The version of the family's stream after the last event folded: what a decider expects
    /// when it appends to the family (optimistic concurrency).
    pub version: u64,
}

/// Why and when something was revoked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Revocation {
    pub at: Timestamp,
    pub seq: u64,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Code {
    pub family_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    /// The authorization request named the redirect URI: the token request must too.
    pub redirect_uri_in_request: bool,
    pub code_challenge: String,
    pub expires_at: Timestamp,
    pub redeemed: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AccessToken {
    pub token_id: String,
    pub family_id: Option<String>,
    pub client_id: String,
    pub user_id: Option<String>,
    pub resource: String,
    pub scopes: BTreeSet<String>,
    pub format: TokenFormat,
    pub issued: Since,
    pub expires_at: Timestamp,
    pub revoked: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RefreshToken {
    pub token_id: String,
    pub family_id: String,
    pub issued: Since,
    pub expires_at: Timestamp,
    pub absolute_expires_at: Timestamp,
    /// When it was first exchanged for a successor; presenting it after the grace period is
    /// reuse.
    pub rotated_at: Option<Timestamp>,
    /// When a sibling (issued from the same parent by a retry within the grace period) was
    /// used first: this branch lost, and presenting it after the grace period is reuse.
    pub superseded_at: Option<Timestamp>,
    /// The digest of the refresh token this one was issued for (`None` for a code exchange).
    pub parent: Option<String>,
    /// Digests of the refresh tokens issued for this one: one, or more after retries within
    /// the grace period.
    pub children: Vec<String>,
    /// The access token issued together with it, which dies with it when it is superseded.
    pub access_digest: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Pat {
    pub pat_id: String,
    pub user_id: String,
    /// The name in plain text (tokens created before names were sealed), else empty.
    pub name: String,
    /// The name sealed under the user's key: lists open it, and show `[erased]` once the
    /// user is erased.
    pub sealed_name: Option<grantline_ledger::Sealed>,
    pub resource: String,
    pub scopes: BTreeSet<String>,
    pub prefix: String,
    pub created_at: Timestamp,
    pub created: Since,
    pub expires_at: Option<Timestamp>,
    pub revoked: Option<Revocation>,
    /// The last tool call or listing made with it (from `tool.called` / `tool.listed`).
    pub last_used: Option<Timestamp>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SigningKey {
    pub key_id: String,
    pub purpose: grantline_ledger::KeyPurpose,
    pub public_key: String,
    pub introduced_at: Timestamp,
    pub retired: bool,
    /// When a newer key of its purpose replaced it.
    pub retired_at: Option<Timestamp>,
}

impl RefreshToken {
    /// Neither exchanged, nor superseded, nor revoked (expiry and family aside).
    pub fn unused(&self) -> bool {
        self.rotated_at.is_none() && self.superseded_at.is_none() && !self.revoked
    }
}

impl State {
    /// The live grant of `user` to `client` for `resource`, if any.
    pub fn grant_for(&self, user_id: &str, client_id: &str, resource: &str) -> Option<&Grant> {
        let key = GrantKey {
            user_id: user_id.to_string(),
            client_id: client_id.to_string(),
            resource: resource.to_string(),
        };
        self.grants
            .get(self.grant_index.get(&key)?)
            .filter(|g| !g.revoked)
    }

    /// Whether the family exists and is not revoked (directly, or through its grant).
    pub fn family_live(&self, family_id: &str) -> bool {
        self.families.get(family_id).is_some_and(|f| {
            f.revoked.is_none() && self.grants.get(&f.grant_id).is_none_or(|g| !g.revoked)
        })
    }

    /// The access token with this digest, if it is usable at `now`: not expired, not revoked,
    /// its family, client and user all live.
    pub fn live_access_token(&self, digest: &str, now: Timestamp) -> Option<&AccessToken> {
        let t = self.access_tokens.get(digest)?;
        let ok = !t.revoked
            && t.expires_at > now
            && t.family_id.as_deref().is_none_or(|f| self.family_live(f))
            && self
                .clients
                .get(&t.client_id)
                .is_some_and(|c| !c.disabled && !c.expired)
            && t.user_id
                .as_deref()
                .is_none_or(|u| self.users.get(u).is_some_and(User::active));
        ok.then_some(t)
    }

    /// Live personal access tokens of a user.
    pub fn live_pat(&self, digest: &str, now: Timestamp) -> Option<&Pat> {
        let p = self.pats.get(self.pat_by_digest.get(digest)?)?;
        let ok = p.revoked.is_none()
            && p.expires_at.is_none_or(|e| e > now)
            && self.users.get(&p.user_id).is_some_and(User::active);
        ok.then_some(p)
    }
}
