//! Who the upstream says the person is, and the tokens it gave for them.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The person as the upstream describes them. The subject is the identity; the rest may
/// change between sign-ins.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamIdentity {
    /// The upstream's stable subject (`sub`, GitHub's numeric `id`, Atlassian's `account_id`).
    pub subject: String,
    /// Who vouched for the subject, which is unique only within it: the ID token's `iss`
    /// (Microsoft's multi-tenant endpoints: the tenant's), or for an OAuth 2.0 provider the
    /// origin of the API that answered (`https://api.github.com`, a GitHub Enterprise host).
    pub issuer: String,
    /// A verified email, if the upstream vouches for one.
    pub email: Option<String>,
    pub name: Option<String>,
    /// A login name (`preferred_username`, GitHub `login`).
    pub username: Option<String>,
    /// Claims a role mapping can test, each as a list of strings: `groups`, `roles`,
    /// `hd`, `tid`, GitHub `orgs` and `teams` (`org/team`), and any other string or
    /// string-array claim of the ID token or userinfo.
    pub claims: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for UpstreamIdentity {
    // Personal data stays out of logs: only the claim names.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamIdentity")
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Tokens the upstream issued to Grantline for the person. Never logged, never in the ledger:
/// they are sealed under the user's key before they are stored.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamTokens {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds, when the upstream said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Salesforce: the instance the token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokens")
            .field("expires_at", &self.expires_at)
            .field("refresh", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// The longest value of any claim kept, in bytes, and the most values per claim: an upstream
/// cannot make Grantline hold an unbounded identity.
pub const MAX_CLAIM_BYTES: usize = 512;
pub const MAX_CLAIM_VALUES: usize = 256;

/// A dotted path into a JSON object (`realm_access.roles`).
pub fn lookup<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = obj.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// A claim as strings: a string, a number or a boolean is one value; an array gives its
/// scalar members. Oversized values are dropped.
pub fn strings_of(v: &Value) -> Vec<String> {
    let one = |v: &Value| match v {
        Value::String(s) if s.len() <= MAX_CLAIM_BYTES => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Value::Array(a) => a.iter().filter_map(one).take(MAX_CLAIM_VALUES).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// Every top-level scalar or scalar-array claim, plus the dotted paths a rule names.
pub fn claim_lists(
    obj: &Map<String, Value>,
    extra_paths: &[&str],
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        if k.len() <= 64 {
            let vals = strings_of(v);
            if !vals.is_empty() {
                out.insert(k.clone(), vals);
            }
        }
    }
    for path in extra_paths {
        if let Some(v) = lookup(obj, path) {
            let vals = strings_of(v);
            if !vals.is_empty() {
                out.insert(path.to_string(), vals);
            }
        }
    }
    out
}

/// A single string field (dotted path); numbers become their decimal text.
pub fn field(obj: &Map<String, Value>, path: &str) -> Option<String> {
    match lookup(obj, path)? {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_CLAIM_BYTES => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
