//! The incident responder's reads: `replay --until`, `state --at` and `lineage`. Each folds the
//! ledger with the same `apply` the server runs, so "then" is computed by the code that
//! computes "now". Nothing is appended.

use crate::location::Location;
use anyhow::{Context, Result, bail};
use grantline_ledger::{Recorded, Timestamp};
use grantline_server::snapshots::Snapshots;
use grantline_state::history::lineage::{Index, Scope, Subject};
use grantline_state::history::whatif::{Fate, Overrides, WhatIf};
use grantline_state::history::{Capabilities, Filter, Summary, Until, refs};
use grantline_state::{State, apply};
use grantline_store::{Credentials, Store};
use std::io::Write;
use std::process::ExitCode;

const PAGE: u32 = 20_000;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The moment: a seq, or an RFC 3339 time (the state after the last event at or before it).
    #[arg(long)]
    until: String,
    /// The summary as JSON.
    #[arg(long)]
    json: bool,
    /// What-if: replay under another rule setting (repeatable) and report the token families
    /// whose fate would have differed: refresh_grace, code_lifetime, refresh_idle,
    /// refresh_absolute, as `name=duration` (0s, 30s, 5m, 12h, 7d). Nothing is written.
    #[arg(long = "rule", value_name = "NAME=DURATION")]
    rules: Vec<String>,
    /// Fold from seq 1, not from a snapshot in the data directory (a snapshot is trusted as
    /// its tag says: whoever holds the checkpoint key could have written one).
    #[arg(long)]
    no_snapshot: bool,
}

#[derive(clap::Args)]
pub struct StateArgs {
    /// The moment: a seq, or an RFC 3339 time.
    #[arg(long)]
    at: String,
    /// Only this user's (id or username).
    #[arg(long)]
    user: Option<String>,
    /// Only this client's (id or exact name).
    #[arg(long)]
    client: Option<String>,
    /// Only this resource (its name in the configuration, or its identifier URL).
    #[arg(long)]
    resource: Option<String>,
    #[arg(long)]
    json: bool,
    /// Fold from seq 1, not from a snapshot in the data directory.
    #[arg(long)]
    no_snapshot: bool,
}

#[derive(clap::Args)]
pub struct LineageArgs {
    /// A token, family, grant, user (id or username), client, personal access token, request
    /// or event id — any id an audit search or a SIEM export shows.
    id: String,
    #[arg(long)]
    json: bool,
}

/// Opens the ledger for reading only: these commands append nothing, and an SQLite file (an
/// evidence copy, a backup's) is left as it is, its journal mode and directory included.
pub(crate) async fn open(loc: &Location) -> Result<Store> {
    Store::connect_read_only(&loc.database)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))
}

/// The state at `until`: from the newest snapshot in the data directory that matches the
/// ledger and is not past `until` (one that does not match is refused and logged), plus the
/// events after it (the log says which), or from seq 1 when `snapshots` is false; with a
/// progress bar on a terminal.
pub(crate) async fn fold_until(
    loc: &Location,
    store: &Store,
    until: Until,
    snapshots: bool,
) -> Result<State> {
    // Snapshots are tagged under the checkpoint key: without it here, fold from seq 1.
    let signer = match snapshots {
        true => grantline_store::keyfile::load_signer(&loc.data_dir)?,
        false => None,
    };
    let start = match signer {
        Some(signer) => Snapshots::in_data_dir(&loc.data_dir, &signer)
            .newest_valid(store, Some(until))
            .await
            .unwrap_or_default(),
        None => State::default(),
    };
    fold_from(store, start, until, |_, _| {}).await
}

/// Folds the events after `state` up to `until`, showing `watch` each event with the state
/// just before it.
async fn fold_from(
    store: &Store,
    mut state: State,
    until: Until,
    mut watch: impl FnMut(&State, &Recorded),
) -> Result<State> {
    let head = store.head().await?.map_or(0, |h| h.0);
    let total = match until {
        Until::Seq(n) => n.min(head),
        Until::Time(_) => head,
    };
    let bar = super::progress_bar(total.saturating_sub(state.seq), "events");
    if !(matches!(until, Until::Seq(_)) && state.seq >= total) {
        store
            .each_page(state.seq, PAGE, |events| {
                for r in events {
                    if !until.includes(r) {
                        return false;
                    }
                    watch(&state, r);
                    apply(&mut state, r);
                }
                bar.inc(events.len() as u64);
                !(matches!(until, Until::Seq(_)) && state.seq >= total)
            })
            .await?;
    }
    bar.finish_and_clear();
    Ok(state)
}

/// A command about to exit does not free a state of a million events piece by piece (a third
/// of a replay's time went to `free`): the process's exit returns the memory at once.
fn exit_without_dropping(state: State) {
    std::mem::forget(state);
}

fn moment(s: &str) -> Result<Until> {
    Until::parse(s).with_context(|| {
        format!("{s:?} is neither a seq nor an RFC 3339 time (2026-11-22T10:00:00Z)")
    })
}

fn short(t: Timestamp) -> String {
    // RFC 3339 to the second: enough for a table.
    let s = t.to_string();
    format!("{}Z", &s[..s.len().min(19)])
}

pub async fn replay(loc: &Location, args: ReplayArgs) -> Result<ExitCode> {
    let until = moment(&args.until)?;
    if !args.rules.is_empty() {
        return what_if(loc, until, &args).await;
    }
    let store = open(loc).await?;
    let state = fold_until(loc, &store, until, !args.no_snapshot).await?;
    let summary = Summary::of(&state, until.clock(state.time));
    exit_without_dropping(state);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &summary)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    print_summary(&mut out, &summary)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn what_if(loc: &Location, until: Until, args: &ReplayArgs) -> Result<ExitCode> {
    let mut overrides = Overrides::default();
    for r in &args.rules {
        overrides.set(r).map_err(anyhow::Error::msg)?;
    }
    let store = open(loc).await?;
    let mut watcher = WhatIf::new(overrides);
    // From seq 1: the rules decide differently from the first event on.
    let state = fold_from(&store, State::default(), until, |s, r| {
        watcher.observe(s, r)
    })
    .await?;
    let recorded = state.rule_settings();
    let diffs = watcher.differences(&state);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({
                "seq": state.seq,
                "rules": args.rules,
                "differences": diffs,
            }),
        )?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "what-if up to seq {} with {} (recorded at the end: refresh_grace={}s code_lifetime={}s \
         refresh_idle={}s refresh_absolute={}s)",
        state.seq,
        args.rules.join(" "),
        recorded.refresh_grace,
        recorded.code_lifetime,
        recorded.refresh_idle,
        recorded.refresh_absolute
    )?;
    writeln!(out, "{} families would have fared otherwise", diffs.len())?;
    for d in &diffs {
        let live = match (&d.live.revoked_seq, &d.live.reason) {
            (Some(s), Some(r)) => format!("revoked at #{s} ({r})"),
            _ => "not revoked".to_string(),
        };
        let then = match &d.what_if {
            Fate::BeenRevoked { seq, .. } => format!("would have been revoked at #{seq} (reuse)"),
            Fate::Expired { seq, .. } => format!("would have expired at #{seq}"),
            Fate::NotStarted { seq, .. } => {
                format!("would not have started: code expired at #{seq}")
            }
            Fate::Survived { seq, .. } => format!("would not have been revoked at #{seq}"),
        };
        writeln!(
            out,
            "  {:<28} client {} user {}: {live}; {then}",
            d.family_id, d.client_id, d.user_id
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn print_summary(out: &mut impl Write, s: &Summary) -> Result<()> {
    writeln!(out, "state after seq {} (clock {})", s.seq, s.at)?;
    writeln!(out, "\nclients ({})", s.clients.len())?;
    for c in &s.clients {
        writeln!(
            out,
            "  {:<28} {:<24} {:<9} since #{}{}",
            c.client_id,
            c.client_name,
            c.status,
            c.registered.seq,
            c.disabled_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )?;
    }
    writeln!(out, "\nusers ({})", s.users.len())?;
    for u in &s.users {
        writeln!(
            out,
            "  {:<40} {:<8} {:<9} role since #{} {}",
            u.user_id,
            u.role,
            u.status,
            u.role_since.seq,
            short(u.role_since.time)
        )?;
    }
    writeln!(out, "\nlive grants ({})", s.grants.len())?;
    for g in &s.grants {
        writeln!(
            out,
            "  {:<28} user {} client {} {} [{}] since #{}",
            g.grant_id,
            g.user_id,
            g.client_id,
            g.resource,
            g.scopes.join(" "),
            g.since.seq
        )?;
    }
    writeln!(out, "\nlive token families ({})", s.families.len())?;
    for f in &s.families {
        writeln!(
            out,
            "  {:<28} grant {} client {} user {} [{}] since #{}",
            f.family_id,
            f.grant_id,
            f.client_id,
            f.user_id,
            f.scopes.join(" "),
            f.since.seq
        )?;
        for t in &f.tokens {
            writeln!(
                out,
                "      {:<7} {:<28} since #{} expires {}",
                t.kind,
                t.token_id,
                t.since.seq,
                short(t.expires_at)
            )?;
        }
    }
    writeln!(
        out,
        "\nlive client-credentials tokens ({})",
        s.client_tokens.len()
    )?;
    for t in &s.client_tokens {
        writeln!(
            out,
            "  {:<28} client {} {} [{}] since #{} expires {}",
            t.token_id,
            t.client_id,
            t.resource,
            t.scopes.join(" "),
            t.since.seq,
            short(t.expires_at)
        )?;
    }
    writeln!(out, "\nlive personal access tokens ({})", s.pats.len())?;
    for p in &s.pats {
        writeln!(
            out,
            "  {:<28} user {} {} [{}] since #{} expires {}",
            p.pat_id,
            p.user_id,
            p.resource,
            p.scopes.join(" "),
            p.since.seq,
            p.expires_at.map_or("never".into(), short)
        )?;
    }
    writeln!(out, "\nrevoked families ({})", s.revoked_families.len())?;
    for r in &s.revoked_families {
        writeln!(
            out,
            "  {:<28} client {} user {} at #{} {}: {}",
            r.family_id,
            r.client_id,
            r.user_id,
            r.seq,
            short(r.at),
            r.reason
        )?;
    }
    Ok(())
}

/// A user id from an id or a username (the credentials table keeps usernames, and the
/// state the ids of users who no longer have credentials).
pub(crate) async fn user_id(store: &Store, state: &State, who: &str) -> Result<String> {
    if state.users.contains_key(who) {
        return Ok(who.to_string());
    }
    match Credentials::new(store).by_username(who).await? {
        Some(c) => Ok(c.user_id),
        None => bail!("no user with the id or username {who:?}"),
    }
}

fn client_id(state: &State, which: &str) -> Result<String> {
    if state.clients.contains_key(which) {
        return Ok(which.to_string());
    }
    let named: Vec<_> = state
        .clients
        .values()
        .filter(|c| c.client_name == which)
        .collect();
    match named.as_slice() {
        [c] => Ok(c.client_id.clone()),
        [] => bail!("no client with the id or name {which:?} at that moment"),
        _ => bail!("{} clients are named {which:?}: give the id", named.len()),
    }
}

/// The identifier `which` names: a resource's name (as recorded in force, or configured), else
/// the identifier itself. A name recorded as a path is made an identifier with this command's
/// public URL, which may not be the server's (no `--config`, another host name): when no
/// grant, token or personal access token of the state has that identifier but exactly one has
/// an identifier ending in that path, that one is meant; several are refused, naming them.
fn resource_named(
    state: &grantline_state::State,
    resources: &[(String, String)],
    which: &str,
) -> Result<String> {
    let Some((_, id)) = resources.iter().find(|(name, _)| name == which) else {
        return Ok(which.trim_end_matches('/').to_string());
    };
    let known: std::collections::BTreeSet<&str> = state
        .grants
        .values()
        .map(|g| g.resource.as_str())
        .chain(state.families.values().map(|f| f.resource.as_str()))
        .chain(state.pats.values().map(|p| p.resource.as_str()))
        // A machine client's tokens belong to no family.
        .chain(state.access_tokens.values().map(|a| a.resource.as_str()))
        .collect();
    if known.contains(id.as_str()) {
        return Ok(id.clone());
    }
    let path = url::Url::parse(id)
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    if path.is_empty() {
        return Ok(id.clone());
    }
    // Not an identifier another named resource has (a resource elsewhere with the same path).
    let others: std::collections::BTreeSet<&str> = resources
        .iter()
        .filter(|(name, _)| name != which)
        .map(|(_, id)| id.as_str())
        .collect();
    let same_path: Vec<&str> = known
        .iter()
        .copied()
        .filter(|k| !others.contains(k))
        .filter(|k| url::Url::parse(k).is_ok_and(|u| u.path().trim_end_matches('/') == path))
        .collect();
    match same_path.as_slice() {
        [] => Ok(id.clone()),
        [one] => Ok(one.to_string()),
        several => bail!(
            "resource {which:?} is {path} under several public URLs in this ledger ({}): give the identifier",
            several.join(", ")
        ),
    }
}

pub async fn state(loc: &Location, args: StateArgs) -> Result<ExitCode> {
    let until = moment(&args.at)?;
    let store = open(loc).await?;
    let state = fold_until(loc, &store, until, !args.no_snapshot).await?;
    let config = grantline_server::Config::load(loc.config.as_deref())?;
    // The resources in force at that seq as recorded (`policy.changed`), by name and
    // identifier; a ledger older than recorded policies falls back to the configuration's.
    let base = config.public_url();
    let resources: Vec<(String, String)> =
        match grantline_server::reload::resources_in_force(&state.policies) {
            Some(recorded) => recorded
                .into_iter()
                .map(|(name, at)| {
                    let id = if at.starts_with('/') {
                        format!("{base}{}", at.trim_end_matches('/'))
                    } else {
                        grantline_oauth::canonical_resource(&at).to_string()
                    };
                    (name, id)
                })
                .collect(),
            None => config
                .resource_defs(&base)?
                .into_iter()
                .map(|r| (r.name, r.id))
                .collect(),
        };
    let resource = match &args.resource {
        None => None,
        Some(r) => Some(resource_named(&state, &resources, r)?),
    };
    let filter = Filter {
        user_id: match &args.user {
            Some(u) => Some(user_id(&store, &state, u).await?),
            None => None,
        },
        client_id: args
            .client
            .as_deref()
            .map(|c| client_id(&state, c))
            .transpose()?,
        resource,
    };
    let caps = Capabilities::of(&state, until.clock(state.time), &filter);
    // The tools the user's role permitted per resource, by the roles recorded in force at that
    // seq (`policy.changed`); a ledger older than recorded roles falls back to the
    // configuration file's.
    let recorded = grantline_server::reload::roles_in_force(&state.policies);
    let tools: Vec<(String, Vec<String>)> = match &caps.user {
        Some(u) => resources
            .iter()
            .map(|(name, _)| {
                let t = match &recorded {
                    Some(roles) => grantline_server::reload::role_tools(roles, &u.role, name),
                    None => config.role_tools(&u.role, name),
                };
                (name.clone(), t)
            })
            .collect(),
        None => Vec::new(),
    };
    exit_without_dropping(state);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let mut v = serde_json::to_value(&caps)?;
        if let Some(u) = v.get_mut("user") {
            u["tools"] = serde_json::json!(
                tools
                    .iter()
                    .map(|(r, t)| (r.clone(), t.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>()
            );
        }
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "at seq {} (clock {})", caps.seq, caps.at)?;
    if let Some(u) = &caps.user {
        writeln!(
            out,
            "user {}: role {} since #{} {}{}",
            u.user_id,
            u.role,
            u.role_since.seq,
            short(u.role_since.time),
            if u.active { "" } else { " — not active" }
        )?;
        for (r, t) in &tools {
            writeln!(out, "  tools on {r}: {}", t.join(", "))?;
        }
    }
    if let Some(c) = &caps.client {
        writeln!(
            out,
            "client {} ({}): registered #{}{}",
            c.client_id,
            c.client_name,
            c.registered.seq,
            if c.active { "" } else { " — not active" }
        )?;
    }
    writeln!(out, "\nlive grants ({})", caps.grants.len())?;
    for g in &caps.grants {
        writeln!(
            out,
            "  {:<28} client {} {} [{}] since #{} {}",
            g.grant_id,
            g.client_id,
            g.resource,
            g.scopes.join(" "),
            g.since.seq,
            short(g.since.time)
        )?;
    }
    writeln!(out, "\nlive tokens ({})", caps.tokens.len())?;
    for t in &caps.tokens {
        writeln!(
            out,
            "  {:<7} {:<28} family {} [{}] since #{} {} expires {}",
            t.kind,
            t.token_id,
            t.family_id.as_deref().unwrap_or("-"),
            t.scopes.join(" "),
            t.since.seq,
            short(t.since.time),
            short(t.expires_at)
        )?;
    }
    writeln!(out, "\nlive personal access tokens ({})", caps.pats.len())?;
    for p in &caps.pats {
        writeln!(
            out,
            "  {:<28} {} [{}] since #{} {} expires {}",
            p.pat_id,
            p.resource,
            p.scopes.join(" "),
            p.since.seq,
            short(p.since.time),
            p.expires_at.map_or("never".into(), short)
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Every event, in pages, to `f`.
async fn each(store: &Store, mut f: impl FnMut(&Recorded)) -> Result<()> {
    store
        .each_page(0, PAGE, |events| {
            events.iter().for_each(&mut f);
            true
        })
        .await?;
    Ok(())
}

/// What `id` is and which events tell its story: a pass over the ledger, and another when
/// the id's event names a token without its family.
async fn scope_of(store: &Store, id: &str) -> Result<Option<Scope>> {
    let mut index = Index::new(id);
    each(store, |r| index.observe(r)).await?;
    if index.needs_another_look() {
        each(store, |r| index.look_again(r)).await?;
    }
    Ok(index.resolve())
}

pub async fn lineage(loc: &Location, args: LineageArgs) -> Result<ExitCode> {
    let store = open(loc).await?;
    let mut id = args.id.clone();
    let mut scope = scope_of(&store, &id).await?;
    if scope.is_none()
        && let Some(c) = Credentials::new(&store).by_username(&args.id).await?
    {
        id = c.user_id;
        scope = scope_of(&store, &id).await?;
    }
    let Some(mut scope) = scope else {
        eprintln!("no event names {:?}", args.id);
        return Ok(ExitCode::from(1));
    };
    let mut entries = Vec::new();
    each(&store, |r| {
        if let Some(marked) = scope.includes(r) {
            entries.push((r.clone(), marked));
        }
    })
    .await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let subject = match &scope.subject {
        Subject::Token { token, family } if family.is_empty() => {
            format!("token {token} (client credentials: no family)")
        }
        Subject::Token { token, family } => format!("token {token} of family {family}"),
        s => format!("{} {id}", s.noun()),
    };
    if args.json {
        let events: Vec<_> = entries
            .iter()
            .map(|(r, marked)| {
                let rf = refs::refs(r.payload());
                let mut ids = serde_json::Map::new();
                let mut put = |k: &str, v: Option<&str>| {
                    if let Some(v) = v {
                        ids.insert(k.into(), v.into());
                    }
                };
                put("family_id", rf.family);
                put("grant_id", rf.grant);
                put("client_id", rf.client);
                put("user_id", rf.user);
                put("pat_id", rf.pat);
                put("request_id", rf.request);
                let facts: serde_json::Map<_, _> = refs::facts(r.payload())
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                serde_json::json!({
                    "seq": r.seq(),
                    "time": r.time().to_string(),
                    "kind": r.envelope.kind().as_str(),
                    "id": r.envelope.id.to_string(),
                    "ids": ids,
                    "facts": facts,
                    "marked": marked,
                })
            })
            .collect();
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({"subject": subject, "events": events}),
        )?;
        writeln!(out)?;
    } else {
        writeln!(out, "lineage of {subject}: {} events", entries.len())?;
        for (r, marked) in &entries {
            let rf = refs::refs(r.payload());
            let mut parts = Vec::new();
            for (k, v) in [
                ("family", rf.family),
                ("grant", rf.grant),
                ("client", rf.client),
                ("user", rf.user),
                ("pat", rf.pat),
            ] {
                if let Some(v) = v {
                    parts.push(format!("{k}={v}"));
                }
            }
            for (k, v) in refs::facts(r.payload()) {
                parts.push(format!("{k}={v:?}"));
            }
            writeln!(
                out,
                "{} #{:<8} {} {:<24} {}",
                if *marked { "»" } else { " " },
                r.seq(),
                short(r.time()),
                r.envelope.kind().as_str(),
                parts.join(" ")
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// Snapshot the state after this seq instead of at the head.
    #[arg(long)]
    at: Option<u64>,
}

/// Writes a snapshot of the state at the head (or `--at` a seq) into the data directory.
pub async fn snapshot(loc: &Location, args: SnapshotArgs) -> Result<ExitCode> {
    let store = open(loc).await?;
    let state = fold_until(loc, &store, Until::Seq(args.at.unwrap_or(u64::MAX)), true).await?;
    if state.seq == 0 {
        bail!("the ledger is empty: nothing to snapshot");
    }
    let seq = state.seq;
    let Some(signer) = grantline_store::keyfile::load_signer(&loc.data_dir)? else {
        bail!(
            "no checkpoint key in {}: snapshots are tagged with a key derived from it",
            loc.data_dir.display()
        );
    };
    let path = Snapshots::in_data_dir(&loc.data_dir, &signer)
        .write(&store, state)
        .await?;
    println!("snapshot of seq {seq} written to {}", path.display());
    let snapshots = Snapshots::in_data_dir(&loc.data_dir, &signer);
    let newer = snapshots.list().iter().filter(|(s, _)| *s > seq).count();
    if newer >= grantline_server::snapshots::KEEP {
        println!(
            "it is older than the {} newest, which are kept: the next snapshot written here \
             (the server writes one every {} events) removes it; copy it elsewhere to keep it",
            grantline_server::snapshots::KEEP,
            grantline_server::snapshots::EVERY_EVENTS
        );
    }
    Ok(ExitCode::SUCCESS)
}
