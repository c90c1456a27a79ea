//! `Exporter::write_page`, which maps and formats long runs of a page on several cores, writes
//! exactly what exporting the events one at a time writes: in seq order, with names learned
//! and keys loaded as it goes, erased subjects as `[erased]`, a kind filter, redaction.

use grantline_audit::formats::{Exporter, Format};
use grantline_audit::mapping::Directory;
use grantline_ledger::*;
use grantline_store::testing;
use grantline_store::{Keyring, Ledger, LedgerOptions, backend_tests};
use std::time::Duration;

async fn tool_called(k: &Keyring, i: u64, user: &str) -> NewEvent {
    let mut e = testing::tool_call(i);
    if let Payload::ToolCalled(t) = &mut e.payload {
        t.user_id = Some(user.into());
        t.client_id = Some("c1".into());
        let ip = format!("10.0.{}.{}", i / 256 % 256, i % 256);
        t.source_ip = Some(k.seal(&pii::user_subject(user), &ip).await.unwrap());
    }
    e.actor = grantline_ledger::Actor::User { id: user.into() };
    e
}

/// Client `c1` registered under `name`, or renamed to it.
fn client(name: &str, registered: bool) -> NewEvent {
    let payload = if registered {
        let mut p = samples::all()
            .into_iter()
            .find_map(|p| match p {
                Payload::ClientRegistered(c) => Some(c),
                _ => None,
            })
            .unwrap();
        p.client_id = "c1".into();
        p.client_name = name.into();
        Payload::ClientRegistered(p)
    } else {
        Payload::ClientUpdated(ClientUpdated {
            client_id: "c1".into(),
            client_name: Some(name.into()),
            redirect_uris: None,
            grant_types: None,
            scope: None,
            secret_digest: None,
            token_endpoint_auth_method: None,
            cleared: Vec::new(),
        })
    };
    NewEvent::new(StreamId::client("c1"), Actor::Operator, payload)
}

fn erased(id: &str) -> NewEvent {
    NewEvent::new(
        StreamId::user(id),
        Actor::Operator,
        UserErased { user_id: id.into() },
    )
}

/// What exporting one event at a time writes (with a keyring of its own: what a reader
/// learns of erasures stays in its keyring).
async fn one_at_a_time(
    keyring: Keyring,
    events: &[Recorded],
    wanted: &dyn Fn(&Recorded) -> bool,
    format: Format,
    redact: bool,
) -> Vec<u8> {
    let mut e = Exporter::new(keyring, Directory::default(), redact);
    let mut out = Vec::new();
    for r in events {
        if wanted(r) {
            let item = e.item(r).await.unwrap();
            format.write_line(&item, &mut out);
            out.push(b'\n');
        } else {
            e.learn(r).await.unwrap();
        }
    }
    out
}

backend_tests! {
    async fn a_page_written_on_several_cores_equals_the_events_exported_one_at_a_time(db: TestDb) {
        let ledger = Ledger::open(
            &db.db,
            testing::signer(),
            LedgerOptions { checkpoint_interval: Duration::from_secs(3600), ..LedgerOptions::default() },
        )
        .await
        .unwrap();
        let k = Keyring::new(ledger.store());
        // Users appear, act in long runs (split over cores), one is erased mid-page, a new
        // one appears after it; each user's key is loaded the first time their data is read.
        // The client the calls are made with is renamed in the middle of a page: calls before
        // the rename name it by its old name, calls after by its new one.
        let users = ["u_a", "u_b", "u_c", "u_d"];
        let mut events = vec![client("Old name", true)];
        for (n, u) in users.iter().enumerate() {
            events.push(testing::user_created(&k, u, &format!("{u}-name"), &format!("{u}@example.com")).await);
            for i in 0..400u64 {
                let who = users[(i as usize) % (n + 1)];
                events.push(tool_called(&k, n as u64 * 1000 + i, who).await);
                if n == 1 && i == 150 {
                    events.push(client("New name", false));
                }
            }
            if n == 2 {
                events.push(erased("u_b"));
            }
        }
        for chunk in events.chunks(500) {
            ledger.append(Append::new(chunk.to_vec())).await.unwrap();
        }
        let recorded = ledger.store().read(0, 10_000).await.unwrap();
        assert_eq!(recorded.len(), events.len());
        let all = |_: &Recorded| true;
        let tool_calls = |r: &Recorded| r.envelope.kind() == Kind::ToolCalled;
        let users_only = |r: &Recorded| r.envelope.kind() == Kind::UserCreated;
        for format in [Format::Jsonl, Format::Ocsf, Format::Csv, Format::Cef] {
            for (name, wanted) in [
                ("all", &all as &(dyn Fn(&Recorded) -> bool + Sync)),
                ("tool calls", &tool_calls),
                ("user.created", &users_only),
            ] {
                for redact in [false, true] {
                    let fresh = || Keyring::new(ledger.store());
                    let want = one_at_a_time(fresh(), &recorded, wanted, format, redact).await;
                    // A fresh exporter per case: keys are loaded while writing the page.
                    let mut e = Exporter::new(fresh(), Directory::default(), redact);
                    let mut got = Vec::new();
                    let mut lines = 0;
                    for page in recorded.chunks(1200) {
                        lines += e.write_page(page, wanted, format, &mut got).await.unwrap();
                    }
                    assert_eq!(
                        lines as usize,
                        recorded.iter().filter(|r| wanted(r)).count(),
                        "{format:?} {name} redact={redact}"
                    );
                    if got != want {
                        let (g, w) = (String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
                        if let Some((a, b)) = g.lines().zip(w.lines()).find(|(a, b)| a != b) {
                            eprintln!("got  {a}\nwant {b}");
                        }
                    }
                    assert!(
                        got == want,
                        "{format:?} {name} redact={redact}: the page differs from one at a time"
                    );
                }
            }
        }
        // And what it wrote is what a reviewer expects: names learned from user.created,
        // [erased] after the erasure, addresses opened.
        let mut e = Exporter::new(Keyring::new(ledger.store()), Directory::default(), false);
        let mut out = Vec::new();
        e.write_page(&recorded, &tool_calls, Format::Jsonl, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"10.0.1.44\""), "addresses are opened");
        let after_erasure = text.lines().skip(3 * 400).collect::<Vec<_>>().join("\n");
        assert!(after_erasure.contains("[erased]"), "u_b reads as erased after user.erased");
        // The rename, in the middle of the second 1,200-event page, as CSV (client name column).
        let mut e = Exporter::new(Keyring::new(ledger.store()), Directory::default(), false);
        let mut out = Vec::new();
        for page in recorded.chunks(1200) {
            e.write_page(page, &tool_calls, Format::Csv, &mut out).await.unwrap();
        }
        let rows = String::from_utf8(out).unwrap();
        let rows: Vec<&str> = rows.lines().collect();
        let old = rows.iter().take_while(|r| r.contains("Old name")).count();
        assert_eq!(old, 400 + 151, "calls before the rename carry the old name");
        assert!(rows[old..].iter().all(|r| r.contains("New name") && !r.contains("Old name")));
        ledger.shutdown().await;
    }
}
