//! Policy as events: a setting the rules read, changed in the configuration, is recorded as
//! `policy.changed` with the difference, so the audit trail shows it and replay judges each
//! seq by the settings in force then.

use crate::{Decision, Lifetimes};
use grantline_ledger::{Actor, ExpectedVersion, NewEvent, PolicyChange, PolicyChanged, StreamId};
use grantline_state::State;
use grantline_state::rules::settings::LIFETIMES_POLICY;

/// The lifetimes as recorded settings: name and seconds.
fn settings(lt: &Lifetimes) -> [(&'static str, u64); 6] {
    [
        // What is in force, not what was written: codes never outlive 60 s.
        ("code", lt.code_lifetime()),
        ("access_token", lt.access_token),
        ("refresh_idle", lt.refresh_idle),
        ("refresh_absolute", lt.refresh_absolute),
        ("refresh_grace", lt.refresh_grace),
        ("dynamic_client", lt.dynamic_client),
    ]
}

/// `policy.changed` for the lifetimes that differ from those in force on the ledger (the
/// recorded ones, else the defaults). Nothing when they agree. The answer: whether anything
/// changed.
pub fn record_lifetimes(state: &State, configured: &Lifetimes) -> Decision<bool> {
    let recorded = state.policies.get(LIFETIMES_POLICY);
    let defaults = settings(&Lifetimes::default());
    let mut changes = Vec::new();
    for ((name, value), (_, default)) in settings(configured).into_iter().zip(defaults) {
        let in_force = recorded
            .and_then(|p| p.get(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default);
        if in_force != value {
            changes.push(PolicyChange {
                setting: name.to_string(),
                from: Some(in_force.to_string()),
                to: Some(value.to_string()),
            });
        }
    }
    if changes.is_empty() {
        return Decision::new(Vec::new(), Ok(false));
    }
    Decision::new(
        vec![NewEvent::new(
            StreamId::new("policy", LIFETIMES_POLICY),
            Actor::Operator,
            PolicyChanged {
                policy: LIFETIMES_POLICY.to_string(),
                changes,
            },
        )],
        Ok(true),
    )
    .expect(
        StreamId::new("policy", LIFETIMES_POLICY),
        decided_on(state, LIFETIMES_POLICY),
    )
}

/// The version of `policy`'s stream the difference was computed against: another server's
/// change recorded meanwhile makes the append conflict, and the difference is computed again
/// from what that server recorded.
fn decided_on(state: &State, policy: &str) -> ExpectedVersion {
    match state.policy_versions.get(policy) {
        Some(v) => ExpectedVersion::Exactly(*v),
        None => ExpectedVersion::NoStream,
    }
}

/// `policy.changed` for the settings of `policy` that differ from those recorded on the ledger:
/// a setting configured now and not recorded (or recorded with another value) is recorded with
/// its new value, one recorded and no longer configured as removed. Nothing when they agree.
/// The answer: the number of settings that changed.
pub fn record(
    state: &State,
    policy: &str,
    configured: &std::collections::BTreeMap<String, String>,
) -> Decision<usize> {
    let empty = Default::default();
    let recorded = state.policies.get(policy).unwrap_or(&empty);
    let mut changes: Vec<PolicyChange> = configured
        .iter()
        .filter(|(k, v)| recorded.get(*k) != Some(*v))
        .map(|(k, v)| PolicyChange {
            setting: k.clone(),
            from: recorded.get(k).cloned(),
            to: Some(v.clone()),
        })
        .collect();
    let mut removed: Vec<&String> = recorded
        .keys()
        .filter(|k| !configured.contains_key(*k))
        .collect();
    removed.sort();
    changes.extend(removed.into_iter().map(|k| PolicyChange {
        setting: k.clone(),
        from: recorded.get(k).cloned(),
        to: None,
    }));
    let n = changes.len();
    if n == 0 {
        return Decision::new(Vec::new(), Ok(0));
    }
    Decision::new(
        vec![NewEvent::new(
            StreamId::new("policy", policy),
            Actor::Operator,
            PolicyChanged {
                policy: policy.to_string(),
                changes,
            },
        )],
        Ok(n),
    )
    .expect(StreamId::new("policy", policy), decided_on(state, policy))
}

/// `policy.changed` for every policy in `configured` that differs from the ledger, in one
/// append: a reload is on the ledger whole or not at all, never half recorded while the old
/// policy stays in force. The answer: each policy that changed, with its number of settings.
pub fn record_all(
    state: &State,
    configured: &[(&'static str, std::collections::BTreeMap<String, String>)],
) -> Decision<Vec<(&'static str, usize)>> {
    let mut events = Vec::new();
    let mut expect = Vec::new();
    let mut changed = Vec::new();
    for (policy, settings) in configured {
        let one = record(state, policy, settings);
        match one.outcome {
            Ok(0) => {}
            Ok(n) => {
                changed.push((*policy, n));
                events.extend(one.append.events);
                expect.extend(one.append.expect);
            }
            Err(e) => return Decision::refuse(e),
        }
    }
    let mut decision = Decision::new(events, Ok(changed));
    for (stream, version) in expect {
        decision = decision.expect(stream, version);
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_reload_is_one_decision_with_every_policy_that_changed() {
        let mut state = State::default();
        let mut roles = HashMap::new();
        roles.insert("user.demo".to_string(), "*".to_string());
        state.policies.insert("roles".into(), roles);
        let configured = vec![
            ("roles", map(&[("user.demo", "get_time")])),
            ("registration", map(&[])),
            ("rate_limits", map(&[("client_per_minute", "60")])),
        ];
        let d = record_all(&state, &configured);
        assert_eq!(
            d.outcome.clone().ok(),
            Some(vec![("roles", 1), ("rate_limits", 1)])
        );
        let policies: Vec<&str> = d
            .append
            .events
            .iter()
            .map(|e| match &e.payload {
                grantline_ledger::Payload::PolicyChanged(p) => p.policy.as_str(),
                other => panic!("not policy.changed: {}", other.kind().as_str()),
            })
            .collect();
        assert_eq!(policies, ["roles", "rate_limits"]);
        // What the ledger already shows records nothing.
        let same = vec![("roles", map(&[("user.demo", "*")]))];
        let d = record_all(&state, &same);
        assert!(d.append.events.is_empty());
        assert_eq!(d.outcome.ok(), Some(Vec::new()));
    }

    #[test]
    fn only_the_difference_is_recorded_removals_included() {
        let mut state = State::default();
        let d = record(&state, "roles", &map(&[("user.demo", "get_time")]));
        assert_eq!(d.outcome.clone().ok(), Some(1));
        let mut recorded = HashMap::new();
        recorded.insert("user.demo".to_string(), "get_time".to_string());
        recorded.insert("user.docs".to_string(), "*".to_string());
        state.policies.insert("roles".into(), recorded);
        // Unchanged: nothing.
        let same = map(&[("user.demo", "get_time"), ("user.docs", "*")]);
        assert!(record(&state, "roles", &same).append.events.is_empty());
        // One changed, one removed, one added.
        let next = map(&[("user.demo", "get_time, list_notes"), ("admin.demo", "*")]);
        let d = record(&state, "roles", &next);
        let [event] = &d.append.events[..] else {
            panic!("one event")
        };
        let grantline_ledger::Payload::PolicyChanged(p) = &event.payload else {
            panic!("policy.changed")
        };
        let seen: Vec<(&str, Option<&str>, Option<&str>)> = p
            .changes
            .iter()
            .map(|c| (c.setting.as_str(), c.from.as_deref(), c.to.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("admin.demo", None, Some("*")),
                ("user.demo", Some("get_time"), Some("get_time, list_notes")),
                ("user.docs", Some("*"), None),
            ]
        );
    }
}
