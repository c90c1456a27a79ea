use crate::State;

/// The settings the rules run under, as recorded: the `lifetimes` policy of the ledger
/// (`policy.changed`), and the defaults before any was recorded. Replay reads them at each seq
/// so that a history is judged by the settings in force when it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSettings {
    /// Seconds a rotated refresh token is still honoured (a client that raced itself).
    pub refresh_grace: u64,
    /// Seconds an authorization code lives.
    pub code_lifetime: u64,
    /// Seconds an unused refresh token lives.
    pub refresh_idle: u64,
    /// Seconds a family's refresh tokens live at most, from its first.
    pub refresh_absolute: u64,
}

/// The policy name under which lifetimes are recorded.
pub const LIFETIMES_POLICY: &str = "lifetimes";

impl Default for RuleSettings {
    fn default() -> Self {
        RuleSettings {
            refresh_grace: 30,
            code_lifetime: 60,
            refresh_idle: 7 * 86_400,
            refresh_absolute: 30 * 86_400,
        }
    }
}

impl State {
    /// The rule settings recorded by now.
    pub fn rule_settings(&self) -> RuleSettings {
        let mut s = RuleSettings::default();
        let Some(p) = self.policies.get(LIFETIMES_POLICY) else {
            return s;
        };
        let get = |k: &str, v: &mut u64| {
            if let Some(n) = p.get(k).and_then(|x| x.parse().ok()) {
                *v = n;
            }
        };
        get("refresh_grace", &mut s.refresh_grace);
        get("code", &mut s.code_lifetime);
        get("refresh_idle", &mut s.refresh_idle);
        get("refresh_absolute", &mut s.refresh_absolute);
        s
    }
}
