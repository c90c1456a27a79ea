//! Planning a group commit: checking each append's expected stream versions, assigning seq,
//! version, id and time, framing and chaining every body. Pure: the writer plans under the
//! append lock, or — on PostgreSQL — ahead of it, while the group before commits
//! ([`Prepared`]); a plan made ahead can be taken apart again ([`unplan`]).

use super::{Framed, Reply};
use crate::{Result, StoreError};
use grantline_ledger::codec::{Head, Tail, frame};
use grantline_ledger::merkle::Frontier;
use grantline_ledger::{
    Envelope, ExpectedVersion, Hash, NewEvent, Recorded, StreamId, Timestamp, chain_hash,
};
use std::collections::HashMap;

/// An append of a group commit, once planned: its events and expectations (so that it can
/// be committed again on its own), or its answer.
pub(super) enum Planned {
    Rows {
        expect: Vec<(StreamId, ExpectedVersion)>,
        recorded: Vec<Recorded>,
        tails: Vec<Tail>,
    },
    /// Answered by the stream versions the plan assumed (a conflict; an append of no events):
    /// kept whole, as a plan made ahead may have to be made again.
    Decided(Framed, Result<Vec<Recorded>>),
    /// Answered whatever the versions (a body the head makes too large).
    Answered(Result<Vec<Recorded>>),
}

/// Takes planned appends back as their callers sent them, and the answers that stand. With
/// `replan`, appends decided by the versions the plan assumed are taken back too: the plan
/// was made ahead on a head that did not come to be.
#[allow(clippy::type_complexity)]
pub(super) fn unplan(
    planned: Vec<(Reply, Planned)>,
    replan: bool,
) -> (Vec<(Framed, Reply)>, Vec<(Reply, Result<Vec<Recorded>>)>) {
    let mut jobs = Vec::new();
    let mut answered = Vec::new();
    for (reply, p) in planned {
        match p {
            Planned::Rows {
                expect,
                recorded,
                tails,
            } => {
                let events = recorded
                    .into_iter()
                    .zip(tails)
                    .map(|(r, tail)| {
                        let e = NewEvent {
                            stream: r.envelope.stream,
                            actor: r.envelope.actor,
                            tenant: r.envelope.tenant,
                            payload: r.envelope.payload,
                        };
                        (e, tail)
                    })
                    .collect();
                jobs.push((Framed { events, expect }, reply))
            }
            Planned::Decided(framed, _) if replan => jobs.push((framed, reply)),
            Planned::Decided(_, r) | Planned::Answered(r) => answered.push((reply, r)),
        }
    }
    (jobs, answered)
}

/// The appends of one group commit as the writer takes them up.
pub(super) enum Batch {
    /// As their callers sent them.
    Jobs(Vec<(Framed, Reply)>),
    /// Planned ahead, while the group before committed.
    Prepared(Box<Prepared>),
}

impl Batch {
    /// Appends and events, for [`super::GroupCommit`].
    pub(super) fn size(&self) -> (usize, usize) {
        match self {
            Batch::Jobs(jobs) => (jobs.len(), jobs.iter().map(|(a, _)| a.events.len()).sum()),
            Batch::Prepared(p) => {
                let events = p.plan.planned.iter().map(|(_, planned)| match planned {
                    Planned::Rows { recorded, .. } => recorded.len(),
                    Planned::Decided(framed, _) => framed.events.len(),
                    Planned::Answered(_) => 0,
                });
                let more = p.more.iter().map(|(a, _)| a.events.len());
                (
                    p.plan.planned.len() + p.more.len(),
                    events.sum::<usize>() + more.sum::<usize>(),
                )
            }
        }
    }

    /// The appends to plan (again), and the answers that stand whatever the head.
    #[allow(clippy::type_complexity)]
    pub(super) fn into_jobs(self) -> (Vec<(Framed, Reply)>, Vec<(Reply, Result<Vec<Recorded>>)>) {
        match self {
            Batch::Jobs(jobs) => (jobs, Vec::new()),
            Batch::Prepared(p) => {
                let Prepared { plan, more, .. } = *p;
                let (mut jobs, answered) = unplan(plan.planned, true);
                jobs.extend(more);
                (jobs, answered)
            }
        }
    }
}

/// The next group, planned on PostgreSQL while the group before it was inserted and
/// committed, on the head that group leaves. It is committed as planned only if the head under
/// the next lock is that one (the group before committed and no other process appended in
/// between); otherwise its appends are planned again.
pub(super) struct Prepared {
    pub(super) plan: Plan,
    /// Versions of streams no cache knew, read on the writer's side connection while the
    /// group before held the append lock.
    pub(super) loaded: HashMap<StreamId, u64>,
    /// The Merkle frontier after the plan's rows.
    pub(super) frontier: Frontier,
    /// Appends taken after the side connection failed them: planned under the lock.
    pub(super) more: Vec<(Framed, Reply)>,
    /// Taken while the writer was busy: no late appends join it under its lock.
    pub(super) busy: bool,
}

impl Prepared {
    /// Nothing planned yet on `base`, whose Merkle frontier is `frontier`; `busy` as the writer
    /// was when it began.
    pub(super) fn empty(base: (u64, Hash), now: i64, frontier: Frontier, busy: bool) -> Prepared {
        Prepared {
            plan: Plan {
                base,
                end: base,
                now,
                rows: Vec::new(),
                planned: Vec::new(),
                pending: HashMap::new(),
            },
            loaded: HashMap::new(),
            frontier,
            more: Vec::new(),
            busy,
        }
    }
}

/// One row of the `events` table, as a plan writes it.
pub(super) struct PlannedRow {
    pub(super) seq: i64,
    pub(super) id: uuid::Uuid,
    pub(super) time: i64,
    pub(super) stream: String,
    pub(super) version: i64,
    pub(super) kind: &'static str,
    pub(super) body: Vec<u8>,
    pub(super) prev_hash: Hash,
    pub(super) hash: Hash,
}

/// A group of appends planned on top of a head: the rows it writes, what each appender is
/// told once they are durable, and the stream versions they leave.
pub(super) struct Plan {
    /// The head the group chains to.
    pub(super) base: (u64, Hash),
    /// The head once its rows are written.
    pub(super) end: (u64, Hash),
    /// The time every event of the group is stamped with.
    pub(super) now: i64,
    pub(super) rows: Vec<PlannedRow>,
    pub(super) planned: Vec<(Reply, Planned)>,
    /// The version each stream the group writes ends at.
    pub(super) pending: HashMap<StreamId, u64>,
}

impl Plan {
    /// Appends a plan made on this one's end: one group.
    pub(super) fn extend(&mut self, next: Plan) {
        debug_assert_eq!(next.base, self.end);
        self.end = next.end;
        self.rows.extend(next.rows);
        self.planned.extend(next.planned);
        self.pending.extend(next.pending);
    }
}

/// Plans a group on top of `base`: checks each append's expectations against `version_of`
/// and the appends before it in the group, assigns seq, version, id and time, frames and
/// chains every body and pushes each row's hash onto `frontier`. No I/O: the writer plans
/// under the append lock, or (PostgreSQL) ahead of it while the group before commits.
pub(super) fn plan_group(
    jobs: Vec<(Framed, Reply)>,
    base: (u64, Hash),
    now: i64,
    version_of: impl Fn(&StreamId) -> u64,
    frontier: &mut Frontier,
) -> Plan {
    let (mut seq, mut prev) = base;
    let mut pending: HashMap<StreamId, u64> = HashMap::new();
    let mut rows: Vec<PlannedRow> = Vec::new();
    let mut planned: Vec<(Reply, Planned)> = Vec::with_capacity(jobs.len());
    let current = |s: &StreamId, pending: &HashMap<StreamId, u64>| {
        pending.get(s).copied().unwrap_or_else(|| version_of(s))
    };
    for (append, reply) in jobs {
        let Framed { events, expect } = append;
        if let Some((stream, expected, actual)) = expect
            .iter()
            .map(|(s, e)| (s, e, current(s, &pending)))
            .find(|(_, e, actual)| !e.admits(*actual))
        {
            let conflict = StoreError::Conflict {
                stream: stream.clone(),
                expected: *expected,
                actual,
            };
            planned.push((
                reply,
                Planned::Decided(Framed { events, expect }, Err(conflict)),
            ));
            continue;
        }
        if events.is_empty() {
            planned.push((
                reply,
                Planned::Decided(Framed { events, expect }, Ok(Vec::new())),
            ));
            continue;
        }
        let mut local: HashMap<StreamId, u64> = HashMap::new();
        let mut job_rows = Vec::with_capacity(events.len());
        let mut recorded = Vec::with_capacity(events.len());
        let mut tails = Vec::with_capacity(events.len());
        let (mut jseq, mut jprev) = (seq, prev);
        let mut failure = None;
        for (ev, tail) in events {
            let version = local
                .get(&ev.stream)
                .copied()
                .unwrap_or_else(|| current(&ev.stream, &pending))
                + 1;
            local.insert(ev.stream.clone(), version);
            jseq += 1;
            let id = uuid_v7(now);
            let kind = ev.payload.kind();
            let head = Head {
                seq: jseq,
                id,
                time: Timestamp(now),
                stream: &ev.stream,
                version,
                kind,
            };
            // The appender checked the tail; the framed body is refused only when the head
            // makes it too large. Refused here, for this append alone.
            let mut body = Vec::with_capacity(96 + tail.as_bytes().len());
            if let Err(e) = frame(&mut body, &head, &tail) {
                failure = Some(StoreError::Invalid(e.to_string()));
                break;
            }
            let hash = chain_hash(&jprev, &body);
            job_rows.push(PlannedRow {
                seq: jseq as i64,
                id,
                time: now,
                stream: ev.stream.as_str().to_string(),
                version: version as i64,
                kind: kind.as_str(),
                body,
                prev_hash: jprev,
                hash,
            });
            recorded.push(Recorded {
                envelope: Envelope {
                    seq: jseq,
                    id,
                    time: Timestamp(now),
                    stream: ev.stream,
                    version,
                    actor: ev.actor,
                    tenant: ev.tenant,
                    payload: ev.payload,
                },
                prev_hash: jprev,
                hash,
            });
            tails.push(tail);
            jprev = hash;
        }
        if let Some(e) = failure {
            planned.push((reply, Planned::Answered(Err(e))));
            continue;
        }
        for r in &job_rows {
            frontier.push(&r.hash);
        }
        pending.extend(local);
        rows.extend(job_rows);
        (seq, prev) = (jseq, jprev);
        planned.push((
            reply,
            Planned::Rows {
                expect,
                recorded,
                tails,
            },
        ));
    }
    Plan {
        base,
        end: (seq, prev),
        now,
        rows,
        planned,
        pending,
    }
}

/// The streams `jobs` name, expected or written, that `known` does not know: each once.
pub(super) fn unknown_streams(
    jobs: &[(Framed, Reply)],
    known: impl Fn(&StreamId) -> bool,
) -> Vec<StreamId> {
    let mut missing: Vec<&StreamId> = jobs
        .iter()
        .flat_map(|(a, _)| {
            a.expect
                .iter()
                .map(|e| &e.0)
                .chain(a.events.iter().map(|(e, _)| &e.stream))
        })
        .filter(|s| !known(s))
        .collect();
    missing.sort();
    missing.dedup();
    missing.into_iter().cloned().collect()
}

/// A UUIDv7 for an event stamped at `micros`.
fn uuid_v7(micros: i64) -> uuid::Uuid {
    let secs = micros.div_euclid(1_000_000) as u64;
    let nanos = (micros.rem_euclid(1_000_000) * 1000) as u32;
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos))
}
