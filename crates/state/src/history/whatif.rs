//! What-if replay: the recorded events replayed under other rule settings, reporting the token
//! families whose fate would have differed — revoked or not, and at which seq. The live state
//! and the ledger are not touched: the fold runs as recorded, and each decision that a setting
//! governs is judged again, just before its event is applied, on the state as it was then.
//!
//! What can be judged again is what was recorded: a refresh that was honoured (would it have
//! been reuse, or expired, under the other setting?), a reuse that was detected (would it still
//! have been?), a code that was redeemed (would it have expired?), and a rotated refresh token
//! refused inside the grace (it lost a race, or its successor was used; `oauth.refused` names
//! its family and token): under a shorter grace it would have been reuse. A refused request
//! is not replayed under a more lenient setting: its refusal left no tokens to follow. The
//! server records at most one such refusal per family, client and error a minute (the first;
//! the others are counted in it): a later presentation in that minute that a shorter grace
//! would have made reuse is not seen, so a what-if of a shorter grace may miss families. A
//! refusal of a token presented by another client than the family's is never reuse: the
//! server refuses it before judging reuse.

use crate::rules::settings::RuleSettings;
use crate::{Family, State};
use grantline_ledger::{Payload, Recorded, Timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The settings to replay under: each one given replaces the recorded one; the others stay
/// as recorded at each seq.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub refresh_grace: Option<u64>,
    pub code_lifetime: Option<u64>,
    pub refresh_idle: Option<u64>,
    pub refresh_absolute: Option<u64>,
}

/// The names `--rule` takes.
pub const RULE_NAMES: &[&str] = &[
    "refresh_grace",
    "code_lifetime",
    "refresh_idle",
    "refresh_absolute",
];

/// `30`, `30s`, `5m`, `12h`, `7d`: seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().ok()?;
    let k = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    // At most a century: beyond it a what-if expiry would not be a time.
    n.checked_mul(k).filter(|&secs| secs <= 100 * 365 * 86_400)
}

impl Overrides {
    /// Takes one `name=duration`.
    pub fn set(&mut self, rule: &str) -> Result<(), String> {
        let (name, value) = rule
            .split_once('=')
            .ok_or_else(|| format!("{rule:?}: expected name=duration, e.g. refresh_grace=0s"))?;
        let secs = parse_duration(value)
            .ok_or_else(|| format!("{value:?}: expected a duration (30s, 5m, 12h, 7d)"))?;
        let slot = match name.trim() {
            "refresh_grace" => &mut self.refresh_grace,
            "code_lifetime" => &mut self.code_lifetime,
            "refresh_idle" => &mut self.refresh_idle,
            "refresh_absolute" => &mut self.refresh_absolute,
            other => {
                return Err(format!(
                    "unknown rule {other:?}; the rules are {}",
                    RULE_NAMES.join(", ")
                ));
            }
        };
        *slot = Some(secs);
        Ok(())
    }

    /// The settings in force at a seq, with these overrides.
    pub fn over(&self, recorded: RuleSettings) -> RuleSettings {
        RuleSettings {
            refresh_grace: self.refresh_grace.unwrap_or(recorded.refresh_grace),
            code_lifetime: self.code_lifetime.unwrap_or(recorded.code_lifetime),
            refresh_idle: self.refresh_idle.unwrap_or(recorded.refresh_idle),
            refresh_absolute: self.refresh_absolute.unwrap_or(recorded.refresh_absolute),
        }
    }
}

/// How a family would have ended under the other settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "would_have", rename_all = "snake_case")]
pub enum Fate {
    /// A refresh that was honoured would have been refresh-token reuse: every token of the
    /// family revoked at this seq.
    BeenRevoked { seq: u64, at: Timestamp },
    /// A refresh that was honoured would have been refused as expired: the family's tokens
    /// stop at this seq, nothing revoked.
    Expired { seq: u64, at: Timestamp },
    /// Its code would have expired before it was redeemed: no token would have been issued.
    NotStarted { seq: u64, at: Timestamp },
    /// The reuse detected at this seq would have been within the grace period: not revoked.
    Survived { seq: u64, at: Timestamp },
}

impl Fate {
    pub fn seq(&self) -> u64 {
        match *self {
            Fate::BeenRevoked { seq, .. }
            | Fate::Expired { seq, .. }
            | Fate::NotStarted { seq, .. }
            | Fate::Survived { seq, .. } => seq,
        }
    }
}

/// One family whose fate differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub family_id: String,
    pub client_id: String,
    pub user_id: String,
    /// What happened: revoked at a seq (with why), or not revoked by the end of the replay.
    pub live: Live,
    pub what_if: Fate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Live {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Watches a replay and judges the governed decisions again.
#[derive(Debug, Default)]
pub struct WhatIf {
    overrides: Overrides,
    fates: BTreeMap<String, Fate>,
    /// When a family's first refresh token was issued (the start of its absolute lifetime).
    started: HashMap<String, Timestamp>,
    /// Each family's client, user and grant, from its `code.issued`: the state at the end of
    /// the replay has forgotten families that expired unrevoked (`rules/expiry.rs`).
    families: HashMap<String, (String, String, String)>,
}

impl WhatIf {
    pub fn new(overrides: Overrides) -> WhatIf {
        WhatIf {
            overrides,
            ..WhatIf::default()
        }
    }

    /// Judges `r` on `before`, the state just before it is applied. Call for every event,
    /// in seq order, then apply it.
    pub fn observe(&mut self, before: &State, r: &Recorded) {
        let rules = self.overrides.over(before.rule_settings());
        let (seq, at) = (r.seq(), r.time());
        match r.payload() {
            Payload::CodeRedeemed(e) if self.overrides.code_lifetime.is_some() => {
                if self.fates.contains_key(&e.family_id) {
                    return;
                }
                if let Some(f) = before.families.get(&e.family_id)
                    && at >= f.created.at.plus_secs(rules.code_lifetime as i64)
                {
                    self.fates
                        .insert(e.family_id.clone(), Fate::NotStarted { seq, at });
                }
            }
            Payload::CodeIssued(e) => {
                self.families.insert(
                    e.family_id.clone(),
                    (e.client_id.clone(), e.user_id.clone(), e.grant_id.clone()),
                );
            }
            Payload::TokenIssued(e) => {
                if let Some(f) = &e.family_id {
                    self.started.entry(f.clone()).or_insert(at);
                }
            }
            Payload::TokenRefreshed(e) => {
                if self.fates.contains_key(&e.family_id) {
                    return;
                }
                let Some(t) = before
                    .refresh_by_id
                    .get(&e.rotated_refresh_id)
                    .and_then(|d| before.refresh_tokens.get(d))
                else {
                    return;
                };
                let spent = t.superseded_at.or(t.rotated_at);
                let fate = if let Some(s) = spent
                    && self.overrides.refresh_grace.is_some()
                    && at >= s.plus_secs(rules.refresh_grace as i64)
                {
                    Some(Fate::BeenRevoked { seq, at })
                } else if (self.overrides.refresh_idle.is_some()
                    && at >= t.issued.at.plus_secs(rules.refresh_idle as i64))
                    || (self.overrides.refresh_absolute.is_some()
                        && self
                            .started
                            .get(&e.family_id)
                            .is_some_and(|s| at >= s.plus_secs(rules.refresh_absolute as i64)))
                {
                    Some(Fate::Expired { seq, at })
                } else {
                    None
                };
                if let Some(f) = fate {
                    self.fates.insert(e.family_id.clone(), f);
                }
            }
            // A rotated token presented again within the live grace and refused (it lost a race,
            // or its successor was used): under a shorter grace it may have been reuse.
            Payload::OAuthRefused(e) if self.overrides.refresh_grace.is_some() => {
                let (Some(family), Some(token)) = (&e.family_id, &e.refresh_token_id) else {
                    return;
                };
                // Presented by another client than the family's (a thief's own registration):
                // refused before reuse is judged, whatever the grace, so never a revocation.
                if self.fates.contains_key(family)
                    || before.families.get(family).is_none_or(|f| {
                        f.revoked.is_some() || e.client_id.as_deref() != Some(f.client_id.as_str())
                    })
                {
                    return;
                }
                let spent = before
                    .refresh_by_id
                    .get(token)
                    .and_then(|d| before.refresh_tokens.get(d))
                    .and_then(|t| t.superseded_at.or(t.rotated_at));
                if let Some(s) = spent
                    && at >= s.plus_secs(rules.refresh_grace as i64)
                {
                    self.fates
                        .insert(family.clone(), Fate::BeenRevoked { seq, at });
                }
            }
            Payload::RefreshReuseDetected(e) if self.overrides.refresh_grace.is_some() => {
                if self.fates.contains_key(&e.family_id) {
                    return;
                }
                if at < e.rotated_at.plus_secs(rules.refresh_grace as i64) {
                    self.fates
                        .insert(e.family_id.clone(), Fate::Survived { seq, at });
                }
            }
            _ => {}
        }
    }

    /// The families whose fate differs, by the seq where they part, given the state at the end
    /// of the replay.
    pub fn differences(&self, end: &State) -> Vec<Difference> {
        let mut out: Vec<Difference> = self
            .fates
            .iter()
            .filter_map(|(id, fate)| {
                let (client_id, user_id, grant_id) = self.families.get(id)?;
                // A family missing at the end expired unrevoked and was forgotten: only its
                // grant's revocation can apply to it.
                let revoked = end
                    .families
                    .get(id)
                    .and_then(|f: &Family| f.revoked.as_ref())
                    .or_else(|| end.grants.get(grant_id).and_then(|g| g.revocation.as_ref()));
                // A family revoked anyway before the two histories part is no difference.
                if revoked.is_some_and(|r| r.seq < fate.seq()) {
                    return None;
                }
                Some(Difference {
                    family_id: id.clone(),
                    client_id: client_id.clone(),
                    user_id: user_id.clone(),
                    live: Live {
                        revoked_seq: revoked.map(|r| r.seq),
                        reason: revoked.map(|r| r.reason.clone()),
                    },
                    what_if: fate.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (a.what_if.seq(), &a.family_id).cmp(&(b.what_if.seq(), &b.family_id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_with_their_unit_and_bounded() {
        assert_eq!(parse_duration("30"), Some(30));
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration(" 7d "), Some(604_800));
        assert_eq!(parse_duration("36500d"), Some(3_153_600_000));
        // Past a century (or past u64) it is not a duration a what-if can use.
        for bad in [
            "36501d",
            "18446744073709551615",
            "99999999999999999999d",
            "5w",
            "-1s",
            "",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let mut o = Overrides::default();
        assert!(o.set("refresh_grace=18446744073709551615").is_err());
        assert!(o.set("refresh_grace=0s").is_ok());
    }
}
