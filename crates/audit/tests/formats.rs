//! The export formats over a scripted history holding every event kind: OCSF records validate
//! with the offline validator CI installs (and a wrong `type_uid` fails it), the OCSF mapping
//! table in `schemas/` matches the code, CEF escaping survives a third-party parser, CSV cells
//! are quoted and neutralised, ECS carries the fields a SIEM keys on.

use grantline_audit::formats::{Format, build_item, cef, csv, ocsf};
use grantline_audit::mapping::{Directory, Opener};
use grantline_audit::{AuditRecord, REDACTED};
use grantline_ledger::{Kind, Recorded, Sealed, chain_hash, encode, samples};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test virtualenv's Python (`tools/test.sh` creates it), or `None` with the reason
/// printed; under `CI=true` its absence is a failure.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("GRANTLINE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but {} does not exist: tools/test.sh creates it",
            p.display()
        );
    }
    eprintln!(
        "skipping: {} does not exist (run tools/test.sh once to create it)",
        p.display()
    );
    None
}

struct SampleKey;

impl Opener for SampleKey {
    fn open(&mut self, s: &Sealed) -> Option<String> {
        s.open(&samples::key()).ok()
    }
}

/// Every kind of the catalogue, as a chained history.
fn history() -> Vec<Recorded> {
    let mut prev = grantline_ledger::GENESIS;
    samples::all()
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let envelope = samples::envelope(i as u64 + 1, p);
            let hash = chain_hash(&prev, &encode(&envelope).unwrap());
            let r = Recorded {
                envelope,
                prev_hash: prev,
                hash,
            };
            prev = hash;
            r
        })
        .collect()
}

fn lines(format: Format, mask: Option<&'static str>) -> Vec<String> {
    let mut dir = Directory::default();
    history()
        .iter()
        .map(|r| format.line(&build_item(r, &mut dir, &mut SampleKey, mask)))
        .collect()
}

fn validate(records: &[String]) -> Option<(bool, String)> {
    let python = python()?;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for r in records {
        writeln!(f, "{r}").unwrap();
    }
    let out = Command::new(python)
        .arg(root().join("tools/validate-ocsf.py"))
        .arg(f.path())
        .output()
        .unwrap();
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn every_kind_exports_ocsf_that_the_offline_validator_accepts() {
    let history = history();
    let kinds: std::collections::BTreeSet<Kind> =
        history.iter().map(|r| r.envelope.kind()).collect();
    assert_eq!(
        kinds.len(),
        Kind::ALL.len(),
        "the history covers every kind"
    );
    let mut records = lines(Format::Ocsf, None);
    records.extend(lines(Format::Ocsf, Some(REDACTED)));
    let mut traced_records = 0;
    for r in &records {
        let v: Value = serde_json::from_str(r).unwrap();
        let (c, a) = (
            v["class_uid"].as_u64().unwrap(),
            v["activity_id"].as_u64().unwrap(),
        );
        assert_eq!(v["type_uid"].as_u64().unwrap(), c * 100 + a);
        assert!(v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
        // Each record carries its own kind's class, activity and names.
        let kind = Kind::parse(v["metadata"]["event_code"].as_str().unwrap()).unwrap();
        let class = ocsf::class_of(kind);
        assert_eq!(
            (c, a),
            (class.class_uid.into(), class.activity_id.into()),
            "{r}"
        );
        assert_eq!(v["class_name"], class.class_name, "{r}");
        assert_eq!(v["category_name"], class.category_name, "{r}");
        assert_eq!(v["type_name"], class.type_name(), "{r}");
        // API Activity carries the request's trace under OCSF's trace profile.
        let payload = &v["unmapped"]["payload"];
        let trace = payload
            .get("trace_id")
            .or_else(|| payload.get("request").and_then(|m| m.get("trace_id")))
            .filter(|_| c == 6003);
        assert_eq!(v.get("trace").map(|t| &t["uid"]), trace, "{r}");
        if trace.is_some() {
            assert_eq!(
                v["metadata"]["profiles"],
                serde_json::json!(["trace"]),
                "{r}"
            );
            traced_records += 1;
        }
    }
    assert!(traced_records >= 4, "{traced_records}");
    let Some((ok, output)) = validate(&records) else {
        return;
    };
    assert!(ok, "the validator refused Grantline's OCSF:\n{output}");

    // The check can fail: one wrong type_uid is caught.
    let mut v: Value = serde_json::from_str(&records[9]).unwrap();
    v["type_uid"] = Value::from(v["type_uid"].as_u64().unwrap() + 1);
    let mut tampered = records.clone();
    tampered[9] = v.to_string();
    let (ok, output) = validate(&tampered).unwrap();
    assert!(!ok, "a wrong type_uid passed:\n{output}");
    assert!(output.contains("type_uid"), "{output}");
}

#[test]
fn the_ocsf_mapping_table_in_schemas_matches_the_code() {
    let path = root().join("schemas/ocsf-mapping.json");
    let table: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(table["ocsf_version"], ocsf::OCSF_VERSION);
    let kinds = table["kinds"].as_object().unwrap();
    assert_eq!(
        kinds.len(),
        Kind::ALL.len(),
        "one row per kind in {}",
        path.display()
    );
    for k in Kind::ALL {
        let row = &kinds[k.as_str()];
        let c = ocsf::class_of(*k);
        assert_eq!(row["class_uid"], c.class_uid, "{}", k.as_str());
        assert_eq!(row["class_name"], c.class_name, "{}", k.as_str());
        assert_eq!(row["category_uid"], c.category_uid, "{}", k.as_str());
        assert_eq!(row["activity_id"], c.activity_id, "{}", k.as_str());
        assert_eq!(row["activity_name"], c.activity_name, "{}", k.as_str());
        assert_eq!(row["type_uid"], c.type_uid(), "{}", k.as_str());
    }
}

#[test]
fn cef_escaping_survives_a_third_party_parser() {
    let nasty = "a|b=c\\d\nsecond line\r=end\\";
    let record = AuditRecord {
        seq: 7,
        id: "0197a3c1-f0d2-7c4e-8b1a-000000000007".into(),
        time: 1_796_000_000_123_456,
        kind: "tool.called".into(),
        category: "tool".into(),
        outcome: "denied".into(),
        severity: "high".into(),
        actor: "client:c1".into(),
        user_id: Some("u|1".into()),
        user_name: Some(nasty.into()),
        client_id: Some("https://client.example/cb?x=1|2".into()),
        tool: Some("delete=all\\now".into()),
        summary: nasty.into(),
        hash: "00".repeat(32),
        ..AuditRecord::default()
    };
    let item = grantline_audit::formats::ExportItem {
        json: b"null".to_vec(),
        stream: 0..4,
        payload: 0..4,
        record: record.clone(),
        prev_hash: "00".repeat(32),
    };
    let line = cef::line(&item);
    assert!(
        !line.contains('\n') && !line.contains('\r'),
        "one line: {line:?}"
    );
    assert!(line.starts_with("CEF:0|Grantline|Grantline|"));
    let Some(python) = python() else { return };
    let mut child = Command::new(python)
        .arg(root().join("tools/parse-cef.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{line}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ext = &parsed["extension"];
    assert_eq!(ext["suser"], nasty);
    assert_eq!(ext["msg"], nasty);
    assert_eq!(ext["suid"], "u|1");
    assert_eq!(ext["cs1"], "https://client.example/cb?x=1|2");
    assert_eq!(ext["cs1Label"], "clientId");
    assert_eq!(ext["cs3"], "delete=all\\now");
    assert_eq!(ext["cn1"], "7");
    assert_eq!(ext["rt"], "1796000000123");
    assert_eq!(parsed["severity"], "8");
    assert_eq!(parsed["device"]["event_class_id"], "tool.called");
    // A header value with the header's own escapes.
    assert_eq!(cef::header_escape("a|b\\c\nd"), "a\\|b\\\\c d");
    // No record can be made to look like two to a reader that splits on other breaks.
    let forged = "x\u{2028}CEF:0|G|G|1|code.replayed|Code replayed|10|a\u{85}b\u{b}c\0d\u{2029}";
    for escaped in [cef::header_escape(forged), cef::value_escape(forged)] {
        assert!(
            !escaped
                .chars()
                .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')),
            "{escaped:?}"
        );
    }
    assert_eq!(cef::value_escape("a\u{2028}b\nc"), "a b\\nc");
}

#[test]
fn csv_cells_are_quoted_and_formulas_neutralised() {
    assert_eq!(csv::cell("plain"), "plain");
    assert_eq!(csv::cell("a,b"), "\"a,b\"");
    assert_eq!(csv::cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv::cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    assert_eq!(csv::cell("+1"), "'+1");
    assert_eq!(csv::cell("@SUM(A1)"), "'@SUM(A1)");
    assert_eq!(csv::cell("line\nbreak"), "\"line\nbreak\"");
    assert_eq!(csv::cell("2026-12-07 a-b"), "2026-12-07 a-b");
    // A reader that splits on `;` or tabs, or takes a line break for a new row, starts a field
    // inside the cell, where the quotes mean nothing: no such field may start a formula.
    assert_eq!(csv::cell("x;=1+1"), "\"x;'=1+1\"");
    for hostile in [
        "x;=1+1;",
        "x\t=1+1",
        "x\n=1+1",
        "x\r\n@SUM(A1)",
        "a,+1;-2",
        ";;=cmd|' /C calc'!A0",
        "x;\"=1+1;",
        "x; =1+1",
        "\"=1+1",
    ] {
        let c = csv::cell(hostile);
        for sep in [',', ';', '\t', '\n', '\r'] {
            for field in c.split(sep) {
                let field = field.trim_start_matches(['"', ' ']);
                assert!(
                    !field.starts_with(['=', '+', '-', '@']),
                    "{hostile:?} gave {c:?}: a field {field:?} when split on {sep:?}"
                );
            }
        }
    }
    let rows = lines(Format::Csv, None);
    let columns = csv::COLUMNS.len();
    for r in rows.iter().filter(|r| !r.contains('"')) {
        assert_eq!(r.split(',').count(), columns, "{r}");
    }
}

#[test]
fn jsonl_is_the_event_as_recorded_and_ecs_has_what_a_siem_keys_on() {
    let history = history();
    let mut dir = Directory::default();
    let mut traced = 0;
    for r in &history {
        let item = build_item(r, &mut dir, &mut SampleKey, None);
        let j: Value = serde_json::from_str(&Format::Jsonl.line(&item)).unwrap();
        assert_eq!(j["seq"], r.seq());
        assert_eq!(j["id"], r.envelope.id.to_string());
        assert_eq!(j["hash"], r.hash.to_hex());
        assert_eq!(j["prev_hash"], r.prev_hash.to_hex());
        assert_eq!(j["kind"], r.envelope.kind().as_str());
        let text = j.to_string();
        assert!(!text.contains("\"ct\""), "no sealed value left: {text}");
        let e: Value = serde_json::from_str(&Format::Ecs.line(&item)).unwrap();
        assert_eq!(e["event"]["id"], r.envelope.id.to_string());
        assert_eq!(e["event"]["action"], r.envelope.kind().as_str());
        assert!(
            ["success", "failure", "unknown"].contains(&e["event"]["outcome"].as_str().unwrap())
        );
        assert!(e["@timestamp"].as_str().unwrap().ends_with('Z'));
        // ECS's `trace.id` (how Elastic links a log line to its trace) where the event has one.
        let trace = j["payload"]
            .get("trace_id")
            .or_else(|| j["payload"].get("request").and_then(|r| r.get("trace_id")));
        assert_eq!(e.get("trace").map(|t| &t["id"]), trace, "{}", j["kind"]);
        traced += usize::from(trace.is_some());
    }
    assert!(traced >= 5, "{traced} traced events in the samples");
    // Opened, the samples' address and agent appear; redacted, they do not.
    let opened = lines(Format::Jsonl, None).join("\n");
    assert!(opened.contains("198.51.100.7") && opened.contains("python-httpx/0.28"));
    let redacted = lines(Format::Ecs, Some(REDACTED)).join("\n");
    assert!(!redacted.contains("198.51.100.7") && redacted.contains(REDACTED));
    let ecs_opened = lines(Format::Ecs, None).join("\n");
    assert!(ecs_opened.contains("\"source\":{\"ip\":\"198.51.100.7\"}"));
}

/// What the event as recorded was before it was written without an intermediate value: the
/// envelope as a JSON value, every `{subject, nonce, ct}` object replaced by its text.
fn as_recorded_by_value(r: &Recorded, o: &mut dyn Opener) -> Value {
    fn open(v: &mut Value, o: &mut dyn Opener) {
        if let Ok(s) = serde_json::from_value::<Sealed>(v.clone())
            && v.as_object().is_some_and(|m| m.len() == 3)
        {
            *v = Value::String(o.open(&s).unwrap_or_else(|| "[erased]".into()));
            return;
        }
        match v {
            Value::Object(m) => m.values_mut().for_each(|v| open(v, o)),
            Value::Array(a) => a.iter_mut().for_each(|v| open(v, o)),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(&r.envelope).unwrap();
    open(&mut v, o);
    v["hash"] = r.hash.to_hex().into();
    v["prev_hash"] = r.prev_hash.to_hex().into();
    v
}

#[test]
fn the_event_as_recorded_holds_every_field_with_every_sealed_value_opened() {
    let mut dir = Directory::default();
    let mut sealed_kinds = 0;
    for r in &history() {
        let item = build_item(r, &mut dir, &mut SampleKey, None);
        let want = as_recorded_by_value(r, &mut SampleKey);
        assert_eq!(item.event(), want, "{}", r.envelope.kind().as_str());
        let text = String::from_utf8(item.json.clone()).unwrap();
        assert!(!text.contains("\"ct\""), "{text}");
        let payload: Value = serde_json::from_slice(item.payload_json()).unwrap();
        let stream: Value = serde_json::from_slice(item.stream_json()).unwrap();
        assert_eq!(
            (payload, stream),
            (want["payload"].clone(), want["stream"].clone())
        );
        // The line starts with the body's first fields, in the body's order.
        assert!(
            text.starts_with(&format!("{{\"seq\":{},\"id\":", r.seq())),
            "{text}"
        );
        let wire = serde_json::to_string(&r.envelope).unwrap();
        if wire.contains("\"ct\"") {
            sealed_kinds += 1;
        }
        // Masked, every sealed value reads as the mask.
        let masked = build_item(r, &mut dir, &mut SampleKey, Some(REDACTED));
        let want = as_recorded_by_value(r, &mut grantline_audit::mapping::Masked(REDACTED));
        assert_eq!(masked.event(), want, "{}", r.envelope.kind().as_str());
    }
    assert!(
        sealed_kinds >= 10,
        "the samples seal personal data in {sealed_kinds} kinds"
    );
    // Nothing is left revealing on this thread.
    let s = history().iter().find_map(|r| {
        serde_json::to_string(&r.envelope)
            .ok()
            .filter(|w| w.contains("\"ct\""))
    });
    assert!(s.is_some());
}

/// Text that every JSON writer must escape or pass through exactly: quotes, backslashes,
/// every control character, DEL, non-ASCII, a character outside the BMP, the line and
/// paragraph separators, and a long run between escapes (the JSON lines are written with a
/// SIMD writer, checked here against serde_json's reading of them).
#[test]
fn hard_text_survives_the_event_as_recorded_ocsf_and_ecs() {
    let mut hard: String = (0u8..0x20).map(char::from).collect();
    hard.push_str("\"quoted\" back\\slash / \u{7f} é ü 東京 🦀 \u{2028}\u{2029} ");
    hard.push_str(&"x".repeat(100));
    hard.push_str("\"\\end");
    let mut events = history();
    let r = events
        .iter_mut()
        .find(|r| r.envelope.kind() == Kind::ClientRegistered)
        .unwrap();
    let grantline_ledger::Payload::ClientRegistered(e) = &mut r.envelope.payload else {
        unreachable!()
    };
    e.client_name = hard.clone();
    e.redirect_uris = vec![format!("https://app.example/cb?q={hard}")];
    let item = build_item(r, &mut Directory::default(), &mut SampleKey, None);
    let event: Value = serde_json::from_slice(&item.json).unwrap();
    assert_eq!(event["payload"]["client_name"], hard.as_str());
    assert_eq!(
        event["payload"]["redirect_uris"][0],
        format!("https://app.example/cb?q={hard}")
    );
    assert_eq!(event, as_recorded_by_value(r, &mut SampleKey));
    let ocsf: Value = serde_json::from_str(&Format::Ocsf.line(&item)).unwrap();
    assert_eq!(ocsf["entity"]["name"], hard.as_str());
    assert_eq!(ocsf["unmapped"]["payload"]["client_name"], hard.as_str());
    let ecs = Format::Ecs.line(&item);
    assert!(!ecs.contains('\n'), "{ecs}");
    let ecs: Value = serde_json::from_str(&ecs).unwrap();
    assert!(
        ecs["message"].as_str().is_some_and(|m| m.ends_with(&hard)),
        "{ecs}"
    );
}

/// A traced request's trace id reaches the receivers that do not take the whole event: a
/// syslog message's structured data (`trace="…"`, beside `request="…"`), a CSV column and
/// CEF's first flex string.
#[test]
fn the_trace_id_is_in_syslog_structured_data_a_csv_column_and_cef() {
    use grantline_audit::sinks::syslog;
    let header = syslog::Header {
        facility: 13,
        hostname: "gl.example".into(),
        app_name: "grantline".into(),
        sd_id: syslog::DEFAULT_SD_ID.into(),
    };
    // Added at the end, so that header-less rows (sinks) keep every earlier column's place.
    assert_eq!(
        csv::COLUMNS[csv::COLUMNS.len() - 2..],
        ["trace_id", "target"]
    );
    let mut dir = Directory::default();
    let mut traced = 0;
    for r in &history() {
        let item = build_item(r, &mut dir, &mut SampleKey, None);
        let message = syslog::message(&header, &item, "-");
        let sd = &message[..message.find('\u{feff}').unwrap()];
        let row = csv::row(&item.record);
        // The samples' targets hold no comma.
        let last = row.rsplit(',').nth(1).unwrap();
        let cef = cef::line(&item);
        match &item.record.trace_id {
            Some(t) => {
                traced += 1;
                assert!(sd.contains(&format!(" trace=\"{t}\"")), "{sd}");
                assert_eq!(last, t, "{row}");
                assert!(
                    cef.contains(&format!("flexString1Label=traceId flexString1={t}")),
                    "{cef}"
                );
            }
            None => {
                assert!(!sd.contains(" trace="), "{sd}");
                assert_eq!(last, "", "{row}");
                assert!(!cef.contains("flexString1"), "{cef}");
            }
        }
    }
    assert!(traced >= 5, "{traced}");
}

/// What a read read reaches every format, and is masked where personal data is: a user's
/// read is theirs (sealed), so a redacted export shows `[redacted]` in its place.
#[test]
fn what_a_read_read_is_in_every_format_and_masked_when_redacted() {
    let mut dir = Directory::default();
    let read = history()
        .into_iter()
        .find(|r| r.envelope.kind() == Kind::ContentRead)
        .expect("a content.read sample");
    let item = build_item(&read, &mut dir, &mut SampleKey, None);
    let target = item.record.target.clone().expect("the target, opened");
    assert!(target.starts_with("file:///"), "{target}");
    assert!(item.record.text().contains(&target));
    let row = csv::row(&item.record);
    assert_eq!(row.rsplit(',').next(), Some(target.as_str()), "{row}");
    let cef = cef::line(&item);
    assert!(
        cef.contains(&format!("flexString2Label=target flexString2={target}")),
        "{cef}"
    );
    let ecs: Value = serde_json::from_str(&Format::Ecs.line(&item)).unwrap();
    assert_eq!(ecs["grantline"]["target"], target.as_str());
    let ocsf: Value = serde_json::from_str(&Format::Ocsf.line(&item)).unwrap();
    assert_eq!(ocsf["api"]["operation"], "prompts/get");
    assert_eq!(
        (&ocsf["resources"][0]["name"], &ocsf["resources"][0]["type"]),
        (&json!(target), &json!("mcp_prompt"))
    );
    // A reviewer's query is what they read too, but no MCP resource.
    let mut dir = Directory::default();
    for r in history()
        .iter()
        .filter(|r| matches!(r.envelope.kind(), Kind::AuditSearched | Kind::AuditExported))
    {
        let item = build_item(r, &mut dir, &mut SampleKey, None);
        assert!(item.record.target.is_some(), "{:?}", r.envelope.kind());
        let ocsf: Value = serde_json::from_str(&Format::Ocsf.line(&item)).unwrap();
        assert!(ocsf.get("resources").is_none(), "{ocsf}");
    }
    let mut dir = Directory::default();
    let redacted = build_item(&read, &mut dir, &mut SampleKey, Some(REDACTED));
    assert_eq!(redacted.record.target.as_deref(), Some(REDACTED));
    for line in [
        cef::line(&redacted),
        csv::row(&redacted.record),
        Format::Ecs.line(&redacted),
        Format::Ocsf.line(&redacted),
        Format::Jsonl.line(&redacted),
    ] {
        assert!(!line.contains(&target), "{line}");
    }
}

/// Who did what: an administrator who changes Bob's role is the actor (OCSF `actor.user`, ECS
/// `user`, CEF `suid`), Bob the user acted on (OCSF `user`, ECS `user.target`, CEF `duid`);
/// when Bob acts himself, or the operator does, each format says so.
#[test]
fn the_actor_is_who_acted_and_the_user_acted_on_is_the_target() {
    let item = |actor: &str, kind: &str, user: Option<&str>| {
        let json = br#"{"stream":"user:x","payload":{}}"#.to_vec();
        grantline_audit::formats::ExportItem {
            stream: 10..18,
            payload: 29..31,
            json,
            record: AuditRecord {
                seq: 9,
                id: "0197a3c1-f0d2-7c4e-8b1a-000000000009".into(),
                time: 1_796_000_000_123_456,
                kind: kind.into(),
                category: "account".into(),
                outcome: "success".into(),
                severity: "medium".into(),
                actor: actor.into(),
                user_id: user.map(str::to_string),
                user_name: user.map(|_| "bob".into()),
                user_email: user.map(|_| "bob@example.com".into()),
                summary: "role user -> admin".into(),
                hash: "00".repeat(32),
                ..AuditRecord::default()
            },
            prev_hash: "00".repeat(32),
        }
    };
    let cef_ext = |line: &str| -> Vec<(String, String)> {
        let ext = line.splitn(8, '|').nth(7).unwrap().to_string();
        ext.split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let has =
        |ext: &[(String, String)], k: &str, v: &str| ext.iter().any(|(a, b)| a == k && b == v);

    // An administrator changes Bob's role.
    let admin = item("user:u_admin", "user.role_changed", Some("u_bob"));
    let o: Value = serde_json::from_str(&Format::Ocsf.line(&admin)).unwrap();
    assert_eq!(o["actor"]["user"]["uid"], "u_admin", "{o}");
    assert_eq!(o["user"]["uid"], "u_bob", "{o}");
    let e: Value = serde_json::from_str(&Format::Ecs.line(&admin)).unwrap();
    assert_eq!(e["user"]["id"], "u_admin", "{e}");
    assert_eq!(e["user"]["target"]["id"], "u_bob", "{e}");
    assert_eq!(e["user"]["target"]["email"], "bob@example.com", "{e}");
    let c = cef_ext(&cef::line(&admin));
    assert!(
        has(&c, "suid", "u_admin") && has(&c, "duid", "u_bob") && has(&c, "duser", "bob"),
        "{c:?}"
    );
    assert!(!has(&c, "suid", "u_bob"), "{c:?}");

    // Bob changes something of his own: he is the actor, and no target is named.
    let own = item("user:u_bob", "user.role_changed", Some("u_bob"));
    let o: Value = serde_json::from_str(&Format::Ocsf.line(&own)).unwrap();
    assert_eq!(o["actor"]["user"]["uid"], "u_bob", "{o}");
    let e: Value = serde_json::from_str(&Format::Ecs.line(&own)).unwrap();
    assert_eq!(e["user"]["id"], "u_bob", "{e}");
    assert!(e["user"].get("target").is_none(), "{e}");
    let c = cef_ext(&cef::line(&own));
    assert!(
        has(&c, "suid", "u_bob") && !c.iter().any(|(k, _)| k == "duid"),
        "{c:?}"
    );

    // The operator (the CLI) acts on Bob: no user is the actor.
    let operator = item("operator", "user.role_changed", Some("u_bob"));
    let o: Value = serde_json::from_str(&Format::Ocsf.line(&operator)).unwrap();
    assert!(o["actor"].get("user").is_none(), "{o}");
    assert_eq!(o["actor"]["app_name"], "operator", "{o}");
    assert_eq!(o["user"]["uid"], "u_bob", "{o}");
    let e: Value = serde_json::from_str(&Format::Ecs.line(&operator)).unwrap();
    assert_eq!(
        (&e["user"]["name"], &e["user"]["target"]["id"]),
        (&json!("operator"), &json!("u_bob")),
        "{e}"
    );
    let c = cef_ext(&cef::line(&operator));
    assert!(
        has(&c, "suser", "operator") && has(&c, "duid", "u_bob"),
        "{c:?}"
    );

    // The server records a failed sign-in for Bob's account: Bob is the user (brute-force
    // rules key on it), not a target of the server.
    let failed = item("system", "login.failed", Some("u_bob"));
    let e: Value = serde_json::from_str(&Format::Ecs.line(&failed)).unwrap();
    assert_eq!(e["user"]["id"], "u_bob", "{e}");
    assert!(e["user"].get("target").is_none(), "{e}");
    let c = cef_ext(&cef::line(&failed));
    assert!(
        has(&c, "suid", "u_bob") && !c.iter().any(|(k, _)| k == "duid"),
        "{c:?}"
    );
    // An identity provider's mapping (the server) makes Bob an admin: the server acted on him.
    let mapped = item("system", "user.role_changed", Some("u_bob"));
    let e: Value = serde_json::from_str(&Format::Ecs.line(&mapped)).unwrap();
    assert_eq!(
        (&e["user"]["name"], &e["user"]["target"]["id"]),
        (&json!("system"), &json!("u_bob")),
        "{e}"
    );
    let o: Value = serde_json::from_str(&Format::Ocsf.line(&mapped)).unwrap();
    assert!(
        o["actor"].get("user").is_none() && o["actor"]["app_name"] == "system",
        "{o}"
    );
    // A machine client acting for no user: no user at all (the client has its own fields).
    let mut machine = item("client:billing", "tool.called", None);
    machine.record.client_id = Some("billing".into());
    let e: Value = serde_json::from_str(&Format::Ecs.line(&machine)).unwrap();
    assert!(e.get("user").is_none(), "{e}");
    let c = cef_ext(&cef::line(&machine));
    assert!(!c.iter().any(|(k, _)| k == "suser" || k == "suid"), "{c:?}");
    let o: Value = serde_json::from_str(&Format::Ocsf.line(&machine)).unwrap();
    assert_eq!(o["actor"]["app_uid"], "billing", "{o}");

    // An administrator changes a policy (no user acted on).
    let policy = item("user:u_admin", "policy.changed", None);
    let o: Value = serde_json::from_str(&Format::Ocsf.line(&policy)).unwrap();
    assert_eq!(o["actor"]["user"]["uid"], "u_admin", "{o}");
    let c = cef_ext(&cef::line(&policy));
    assert!(has(&c, "suid", "u_admin"), "{c:?}");
    if let Some((ok, why)) = validate(&[
        Format::Ocsf.line(&admin),
        Format::Ocsf.line(&operator),
        Format::Ocsf.line(&policy),
    ]) {
        assert!(ok, "{why}");
    }
}
