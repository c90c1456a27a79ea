//! Given events → state: the projection and its rules, without a database.

use grantline_ledger::*;
use grantline_state::{State, apply, fold};
use proptest::prelude::*;

fn rec(seq: u64, payload: impl Into<Payload>) -> Recorded {
    let mut envelope = samples::envelope(seq, payload.into());
    envelope.time = Timestamp::from_secs(1_800_000_000 + seq as i64);
    Recorded {
        envelope,
        prev_hash: GENESIS,
        hash: GENESIS,
    }
}

const NOW: Timestamp = Timestamp(1_800_000_000_000_000);

fn access(id: &str) -> AccessTokenRecord {
    AccessTokenRecord {
        token_id: format!("at_{id}"),
        digest: secret_digest(format!("gla_{id}").as_bytes()),
        format: TokenFormat::Opaque,
        expires_at: NOW.plus_secs(3600),
    }
}

fn refresh(id: &str) -> RefreshTokenRecord {
    RefreshTokenRecord {
        token_id: format!("rt_{id}"),
        digest: secret_digest(format!("glr_{id}").as_bytes()),
        expires_at: NOW.plus_secs(86_400),
        absolute_expires_at: NOW.plus_secs(30 * 86_400),
    }
}

/// A client, a user, one grant with two families; family f1 refreshed once.
fn history() -> Vec<Recorded> {
    let mut out = Vec::new();
    let mut seq = 0;
    let mut push = |p: Payload| {
        seq += 1;
        out.push(rec(seq, p));
    };
    let mut all = samples::all();
    push(all.remove(0)); // client.registered (CLIENT)
    let user = match &all[4] {
        Payload::UserCreated(u) => u.clone(),
        _ => unreachable!(),
    };
    let client = "cli_0197a3c1f0d27c4e8b1a9d6e5f403a22".to_string();
    push(user.clone().into());
    push(
        ConsentGranted {
            consent_page: None,
            request: None,
            requested_scopes: Vec::new(),
            client_name: None,
            grant_id: "g1".into(),
            user_id: user.user_id.clone(),
            client_id: client.clone(),
            resource: "r".into(),
            scopes: vec!["read".into()],
            prompted: true,
        }
        .into(),
    );
    for f in ["f1", "f2"] {
        push(
            CodeIssued {
                request: None,
                family_id: f.into(),
                grant_id: "g1".into(),
                client_id: client.clone(),
                user_id: user.user_id.clone(),
                resource: "r".into(),
                scopes: vec!["read".into()],
                code_digest: secret_digest(f.as_bytes()),
                redirect_uri: "http://127.0.0.1/cb".into(),
                redirect_uri_in_request: true,
                code_challenge: "x".into(),
                expires_at: NOW.plus_secs(60),
            }
            .into(),
        );
        push(
            CodeRedeemed {
                request: None,
                family_id: f.into(),
                code_digest: secret_digest(f.as_bytes()),
                client_id: client.clone(),
            }
            .into(),
        );
        push(
            TokenIssued {
                request: None,
                family_id: Some(f.into()),
                grant_type: GrantType::AuthorizationCode,
                client_id: client.clone(),
                user_id: Some(user.user_id.clone()),
                resource: "r".into(),
                scopes: vec!["read".into()],
                access: access(&format!("{f}a")),
                refresh: Some(refresh(&format!("{f}a"))),
            }
            .into(),
        );
    }
    push(
        TokenRefreshed {
            request: None,
            family_id: "f1".into(),
            client_id: client.clone(),
            user_id: user.user_id.clone(),
            resource: "r".into(),
            scopes: vec!["read".into()],
            rotated_refresh_id: "rt_f1a".into(),
            access: access("f1b"),
            refresh: refresh("f1b"),
        }
        .into(),
    );
    out
}

/// `history()` and then one more event, with the seq it got.
fn history_then(payload: impl Into<Payload>) -> (Vec<Recorded>, u64) {
    let mut events = history();
    let n = events.len() as u64 + 1;
    events.push(rec(n, payload));
    (events, n)
}

/// Family f1 of `history()`: the refresh token `from` exchanged for `to`.
fn refreshed(from: &str, to: &str) -> TokenRefreshed {
    TokenRefreshed {
        request: None,
        family_id: "f1".into(),
        client_id: "cli_0197a3c1f0d27c4e8b1a9d6e5f403a22".into(),
        user_id: match &samples::all()[5] {
            Payload::UserCreated(u) => u.user_id.clone(),
            _ => unreachable!(),
        },
        resource: "r".into(),
        scopes: vec!["read".into()],
        rotated_refresh_id: format!("rt_{from}"),
        access: access(to),
        refresh: refresh(to),
    }
}

fn live(s: &State, id: &str) -> bool {
    s.live_access_token(&access(id).digest, NOW).is_some()
}

#[test]
fn refresh_rotation_marks_the_old_token_and_issues_new_ones() {
    let s = fold(&history());
    assert!(live(&s, "f1a") && live(&s, "f1b") && live(&s, "f2a"));
    let old = &s.refresh_tokens[&refresh("f1a").digest];
    assert!(
        old.rotated_at.is_some(),
        "the presented refresh token is rotated"
    );
    assert!(
        s.refresh_tokens[&refresh("f1b").digest]
            .rotated_at
            .is_none()
    );
    assert!(
        s.clients["cli_0197a3c1f0d27c4e8b1a9d6e5f403a22"]
            .expires_at
            .is_none(),
        "first authorization keeps a dynamic client alive"
    );
}

#[test]
fn reuse_detected_revokes_every_token_of_that_family_only() {
    let (events, n) = history_then(RefreshReuseDetected {
        request: None,
        family_id: "f1".into(),
        refresh_token_id: "rt_f1a".into(),
        client_id: "c".into(),
        rotated_at: NOW,
        grace_seconds: 10,
    });
    let s = fold(&events);
    assert!(
        !live(&s, "f1a") && !live(&s, "f1b"),
        "every token descended from f1's code"
    );
    assert!(live(&s, "f2a"), "other families untouched");
    assert_eq!(s.families["f1"].revoked.as_ref().unwrap().seq, n);
}

#[test]
fn code_replay_revokes_the_family() {
    let (events, _) = history_then(CodeReplayed {
        request: None,
        family_id: "f2".into(),
        code_digest: secret_digest(b"f2"),
        client_id: "c".into(),
    });
    let s = fold(&events);
    assert!(!live(&s, "f2a"));
    assert!(live(&s, "f1b"));
}

#[test]
fn grant_revoked_revokes_every_family_under_it() {
    let (events, _) = history_then(GrantRevoked {
        request: None,
        grant_id: "g1".into(),
        user_id: "u".into(),
        client_id: "c".into(),
        reason: "revoked by user".into(),
    });
    let s = fold(&events);
    assert!(!live(&s, "f1b") && !live(&s, "f2a"));
    assert!(s.families.values().all(|f| f.revoked.is_some()));
}

/// Containment ends a user's sessions after deciding on what it saw; a grant or token a
/// session it ends made meanwhile is recorded before the end, and goes with it. What is made
/// after the end stays.
#[test]
fn a_users_sessions_ending_takes_what_was_made_before_it() {
    let user = match &samples::all()[5] {
        Payload::UserCreated(u) => u.user_id.clone(),
        _ => unreachable!(),
    };
    let pat = |id: &str| PatCreated {
        pat_id: id.into(),
        user_id: user.clone(),
        name: "laptop".into(),
        sealed_name: None,
        resource: "r".into(),
        scopes: vec!["read".into()],
        prefix: "glp_x".into(),
        digest: secret_digest(id.as_bytes()),
        expires_at: None,
    };
    let mut events = history();
    let mut push = |p: Payload| {
        let n = events.len() as u64 + 1;
        events.push(rec(n, p));
    };
    push(pat("pat_before").into());
    push(
        UserSessionsEnded {
            user_id: user.clone(),
            reason: "stolen cookie".into(),
        }
        .into(),
    );
    push(pat("pat_after").into());
    let s = fold(&events);
    assert!(!live(&s, "f1b") && !live(&s, "f2a"), "the grant's families");
    assert!(s.grants["g1"].revoked);
    assert_eq!(
        s.pats["pat_before"]
            .revoked
            .as_ref()
            .map(|r| r.reason.as_str()),
        Some("stolen cookie")
    );
    assert!(s.pats["pat_after"].revoked.is_none());
}

#[test]
fn expiry_and_single_token_revocation() {
    let (events, _) = history_then(TokenRevoked {
        request: None,
        token_id: "at_f2a".into(),
        token_kind: TokenKind::Access,
        family_id: Some("f2".into()),
        reason: "RFC 7009".into(),
    });
    let s = fold(&events);
    assert!(!live(&s, "f2a"));
    assert!(live(&s, "f1b"));
    assert!(
        s.live_access_token(&access("f1b").digest, NOW.plus_secs(3601))
            .is_none(),
        "expired"
    );
}

proptest! {
    #[test]
    fn folding_a_prefix_then_the_rest_equals_folding_all(split in 0usize..12) {
        let events = history();
        let split = split.min(events.len());
        let mut s = fold(&events[..split]);
        for e in &events[split..] {
            apply(&mut s, e);
        }
        prop_assert_eq!(s, fold(&events));
    }
}

#[test]
fn an_expiry_recorded_after_the_first_authorization_is_void() {
    let client = "cli_0197a3c1f0d27c4e8b1a9d6e5f403a22";
    let expired = |seq| {
        rec(
            seq,
            ClientExpired {
                client_id: client.into(),
                ttl_seconds: 60,
            },
        )
    };
    // history() authorizes the client (code.issued) before this expiry: it lost the race.
    let mut events = history();
    let n = events.len() as u64;
    events.push(expired(n + 1));
    let s = fold(&events);
    assert!(s.clients[client].used && !s.clients[client].expired);
    // An unused dynamic registration does expire, and leaves the state.
    let registered = samples::all().remove(0);
    assert!(
        matches!(&registered, Payload::ClientRegistered(r) if r.method == grantline_ledger::RegistrationMethod::Dynamic)
    );
    let s = fold(&[rec(1, registered), expired(2)]);
    assert!(!s.clients.contains_key(client));
    assert!(s.client_streams.is_empty(), "nothing of it is left");
}

#[test]
fn using_one_sibling_supersedes_the_others_and_their_access_tokens() {
    let mut events = history();
    // history(): f1a → f1b. A retry of f1a within the grace period: f1c, a sibling of f1b.
    let n = events.len() as u64;
    events.push(rec(n + 1, refreshed("f1a", "f1c")));
    let s = fold(&events);
    assert!(
        live(&s, "f1b") && live(&s, "f1c"),
        "both answers usable until one is used"
    );
    let parent = &s.refresh_tokens[&refresh("f1a").digest];
    assert_eq!(parent.children.len(), 2);
    // The client kept f1c and uses it: f1b lost.
    events.push(rec(n + 2, refreshed("f1c", "f1d")));
    let s = fold(&events);
    let lost = &s.refresh_tokens[&refresh("f1b").digest];
    assert!(lost.superseded_at.is_some() && lost.rotated_at.is_none());
    assert!(
        !live(&s, "f1b"),
        "the losing sibling's access token dies with it"
    );
    assert!(live(&s, "f1c") && live(&s, "f1d"));
    let unused: Vec<_> = s
        .refresh_tokens
        .values()
        .filter(|t| t.family_id == "f1" && t.unused())
        .collect();
    assert_eq!(unused.len(), 1, "one live branch");
}

/// `history()` followed by an event that changes no token, stamped `secs` after `NOW`.
fn later(events: &mut Vec<Recorded>, secs: i64) {
    let seq = events.len() as u64 + 1;
    let mut e = rec(
        seq,
        TokenRevoked {
            request: None,
            token_id: "at_unknown".into(),
            token_kind: TokenKind::Access,
            family_id: None,
            reason: "RFC 7009".into(),
        },
    );
    e.envelope.time = NOW.plus_secs(secs);
    events.push(e);
}

/// NOW is 16 hours before a UTC midnight: the first event after it starts the daily sweep.
const TO_MIDNIGHT: i64 = 57_600;

#[test]
fn expired_access_tokens_are_forgotten_at_the_next_day_and_refresh_tokens_kept() {
    assert_eq!(
        (NOW.as_micros() / 1_000_000 + TO_MIDNIGHT) % 86_400,
        0,
        "the test's clock"
    );
    let mut events = history();
    // Same day, hours after every access token expired: no sweep yet.
    later(&mut events, TO_MIDNIGHT - 60);
    let s = fold(&events);
    assert_eq!(s.access_tokens.len(), 3);
    // The next day: the access tokens (expired at NOW + 1 h) go, with their ids.
    later(&mut events, TO_MIDNIGHT + 60);
    let s = fold(&events);
    assert!(s.access_tokens.is_empty() && s.access_by_id.is_empty());
    // The refresh tokens live until NOW + 1 day: every one stays, the rotated one too, so a
    // reuse of it is still detected; so do the families and their codes (code replay).
    let rotated = &s.refresh_tokens[&refresh("f1a").digest];
    assert!(rotated.rotated_at.is_some());
    assert_eq!((s.refresh_tokens.len(), s.refresh_by_id.len()), (3, 3));
    assert_eq!((s.families.len(), s.codes.len()), (2, 2));
    assert_eq!(s.grants["g1"].families, vec!["f1", "f2"]);
}

#[test]
fn a_family_is_forgotten_once_nothing_of_it_can_be_used_and_a_revoked_one_keeps_its_entry() {
    let (mut events, _) = history_then(FamilyRevoked {
        family_id: "f2".into(),
        reason: "contained".into(),
        request: None,
    });
    // The first sweep: the refresh tokens live until NOW + 1 day.
    later(&mut events, TO_MIDNIGHT + 60);
    // Half an hour after they expired, but the same UTC day: not swept yet…
    later(&mut events, 86_400 + 1_800);
    let s = fold(&events);
    assert_eq!(s.refresh_tokens.len(), 3, "within a day nothing more goes");
    // … the first event of the next day is.
    later(&mut events, TO_MIDNIGHT + 86_400 + 60);
    let s = fold(&events);
    assert!(s.refresh_tokens.is_empty() && s.refresh_by_id.is_empty());
    assert!(s.codes.is_empty() && s.access_tokens.is_empty());
    // f1 (live until it expired) is gone; f2, revoked, keeps its entry and why.
    assert_eq!(s.families.keys().collect::<Vec<_>>(), vec!["f2"]);
    assert_eq!(
        s.families["f2"].revoked.as_ref().map(|r| r.reason.as_str()),
        Some("contained")
    );
    assert_eq!(s.grants["g1"].families, vec!["f2"]);
    // The grant itself is a consent, not a token: it stays.
    assert!(
        s.grant_for(&s.grants["g1"].user_id, &s.grants["g1"].client_id, "r")
            .is_some()
    );
    // A replay forgets at the same seqs: folding a prefix and then the rest gives the same.
    for split in 0..events.len() {
        let mut t = fold(&events[..split]);
        for e in &events[split..] {
            apply(&mut t, e);
        }
        assert_eq!(t, s, "split at {split}");
    }
}

#[test]
fn a_family_refreshed_every_day_keeps_every_refresh_token_it_ever_had() {
    // Reuse detection needs every rotated token of a live family; only the access tokens go.
    let mut events = history();
    let mut prev = "f1b".to_string();
    for day in 1..5i64 {
        let id = format!("f1d{day}");
        let mut r = refreshed(&prev, &id);
        r.refresh.expires_at = NOW.plus_secs((day + 1) * 86_400);
        let mut e = rec(events.len() as u64 + 1, r);
        e.envelope.time = NOW.plus_secs(day * 86_400);
        events.push(e);
        prev = id;
    }
    let s = fold(&events);
    let f1: Vec<_> = s
        .refresh_tokens
        .values()
        .filter(|t| t.family_id == "f1")
        .collect();
    assert_eq!(f1.len(), 6, "f1a, f1b and four daily rotations");
    assert!(!s.families.contains_key("f2"), "f2 was never refreshed");
    assert_eq!(
        s.access_tokens.len(),
        1,
        "only the newest access token is unexpired"
    );
}

#[test]
fn a_sweep_counts_what_it_forgot_and_leaves_nothing_pointing_at_it() {
    use grantline_state::rules::expiry::{Forgotten, forget_dead};
    let mut s = fold(&history());
    // Between the access tokens' expiry (1 hour) and the refresh tokens' (1 day).
    let first = forget_dead(&mut s, NOW.plus_secs(7_200));
    assert_eq!(
        first,
        Forgotten {
            access_tokens: 3,
            ..Forgotten::default()
        }
    );
    assert_eq!(s.families["f1"].live_until, NOW.plus_secs(86_400));
    let second = forget_dead(&mut s, NOW.plus_secs(86_400));
    assert_eq!(
        second,
        Forgotten {
            access_tokens: 0,
            refresh_tokens: 3,
            codes: 2,
            families: 2,
        }
    );
    assert!(s.access_by_id.is_empty() && s.refresh_by_id.is_empty());
    assert!(s.grants["g1"].families.is_empty());
    assert_eq!(
        forget_dead(&mut s, NOW.plus_secs(86_400)),
        Forgotten::default()
    );
}

/// `events` folded, and replayed under a grace of 0 s beside.
fn what_if_no_grace(events: &[Recorded]) -> (grantline_state::history::whatif::WhatIf, State) {
    use grantline_state::history::whatif::{Overrides, WhatIf};
    let mut overrides = Overrides::default();
    overrides.set("refresh_grace=0s").unwrap();
    let mut w = WhatIf::new(overrides);
    let mut s = State::default();
    for e in events {
        w.observe(&s, e);
        apply(&mut s, e);
    }
    (w, s)
}

#[test]
fn what_if_still_names_a_family_the_sweep_forgot() {
    // f1a presented again a second after its rotation: honoured under the recorded grace,
    // reuse under a grace of 0 s. Then the family runs out and is forgotten.
    let (mut events, _) = history_then(refreshed("f1a", "f1c"));
    later(&mut events, TO_MIDNIGHT + 2 * 86_400);
    let (w, s) = what_if_no_grace(&events);
    assert!(!s.families.contains_key("f1"), "the sweep forgot f1");
    let d = w.differences(&s);
    assert_eq!(
        d.iter().map(|d| d.family_id.as_str()).collect::<Vec<_>>(),
        vec!["f1"]
    );
    assert_eq!(d[0].client_id, "cli_0197a3c1f0d27c4e8b1a9d6e5f403a22");
    assert_eq!(
        d[0].live.revoked_seq, None,
        "never revoked in what happened"
    );
}

/// `state --at` lists a refresh token used within the grace period, with nothing used after
/// it, as still exchangeable (a retry would be honoured), and drops it once the grace is over.
#[test]
fn the_summary_lists_a_token_within_its_grace_period() {
    let s = fold(&history());
    let rotated = s.refresh_tokens[&refresh("f1a").digest].rotated_at.unwrap();
    let refresh_rows = |now: Timestamp| {
        let summary = grantline_state::history::Summary::of(&s, now);
        summary
            .families
            .iter()
            .flat_map(|f| f.tokens.iter())
            .filter(|t| t.kind.starts_with("refresh"))
            .map(|t| (t.token_id.clone(), t.kind))
            .collect::<Vec<_>>()
    };
    let grace = s.rule_settings().refresh_grace as i64;
    let within = refresh_rows(rotated.plus_secs(grace - 1));
    assert!(
        within.contains(&("rt_f1a".to_string(), "refresh (grace)")),
        "{within:?}"
    );
    assert!(
        within.contains(&("rt_f1b".to_string(), "refresh")),
        "{within:?}"
    );
    let after = refresh_rows(rotated.plus_secs(grace));
    assert!(!after.iter().any(|(id, _)| id == "rt_f1a"), "{after:?}");
}

/// A rotated refresh token presented again and refused: under a shorter grace it would have
/// been reuse when its own client presented it, never when another client did (the server
/// refuses another client's presentation before it judges reuse).
#[test]
fn what_if_counts_a_refused_presentation_only_by_the_familys_client() {
    let family_client = "cli_0197a3c1f0d27c4e8b1a9d6e5f403a22";
    for (presenter, revoked) in [(family_client, true), ("cli_thief", false)] {
        let (mut events, n) = history_then(refreshed("f1b", "f1c"));
        events.push(rec(
            n + 1,
            OAuthRefused {
                endpoint: OAuthEndpoint::Token,
                client_id: Some(presenter.into()),
                client_authenticated: false,
                grant_type: Some(GrantType::RefreshToken),
                user_id: None,
                resource: None,
                requested_scopes: Vec::new(),
                error: "invalid_grant".into(),
                description: "refresh token already used".into(),
                suppressed: 0,
                request: None,
                family_id: Some("f1".into()),
                refresh_token_id: Some("rt_f1b".into()),
            },
        ));
        let (w, s) = what_if_no_grace(&events);
        let named: Vec<String> = w
            .differences(&s)
            .iter()
            .map(|d| d.family_id.clone())
            .collect();
        assert_eq!(
            named.contains(&"f1".to_string()),
            revoked,
            "{presenter}: {named:?}"
        );
    }
}

/// `replay --until` lists a machine client's live access tokens (client credentials: no
/// family), not only those of token families: a responder asking what was live misses none.
#[test]
fn the_summary_lists_live_tokens_of_no_family() {
    let (events, n) = history_then(TokenIssued {
        request: None,
        family_id: None,
        grant_type: GrantType::ClientCredentials,
        client_id: "cli_0197a3c1f0d27c4e8b1a9d6e5f403a22".into(),
        user_id: None,
        resource: "r".into(),
        scopes: vec!["read".into()],
        access: access("m1"),
        refresh: None,
    });
    let s = fold(&events);
    let summary = grantline_state::history::Summary::of(&s, NOW);
    let rows: Vec<_> = summary
        .client_tokens
        .iter()
        .map(|t| (t.token_id.as_str(), t.client_id.as_str(), t.since.seq))
        .collect();
    assert_eq!(rows, [("at_m1", "cli_0197a3c1f0d27c4e8b1a9d6e5f403a22", n)]);
    assert!(
        summary
            .families
            .iter()
            .flat_map(|f| &f.tokens)
            .all(|t| t.family_id.is_some()),
        "family tokens stay with their families"
    );
    // Expired, it is no longer live.
    let later = grantline_state::history::Summary::of(&s, NOW.plus_secs(3600));
    assert!(later.client_tokens.is_empty());
}
