//! Only deciders build events: the pure functions in `crates/oauth` and `crates/gateway`
//! validate and bound what goes into an event and state their version expectations; the
//! server and the CLI call them and append what they return. This test fails when an event
//! is put together anywhere else, so "who may write what" stays a grep.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The lines (from 0) of `text` that construct a `NewEvent`: code only, not comments, and not
/// a function returning one.
fn building_lines(text: &str) -> Vec<usize> {
    let forbidden = ["NewEvent::new(", "NewEvent {"];
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line
                .split("//")
                .next()
                .unwrap_or("")
                .replace("-> NewEvent {", "");
            forbidden.iter().any(|p| code.contains(p))
        })
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn events_are_built_only_by_deciders() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    // The layers above the deciders: the HTTP server and the command line.
    for dir in ["crates/server/src", "crates/cli/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for i in building_lines(&text) {
            let line = text.lines().nth(i).unwrap_or("").trim();
            found.push(format!("{}:{}: {line}", f.display(), i + 1));
        }
    }
    assert!(
        found.is_empty(),
        "events built outside a decider (move them into crates/oauth or crates/gateway):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_events_built_in_handlers_and_nothing_else() {
    let handler = "fn f() -> NewEvent {\n    // NewEvent::new( in a comment\n    app.append(vec![NewEvent::new(StreamId::user(&id), actor, event)]);\n    let e = NewEvent { stream, actor, tenant: None, payload };\n}";
    assert_eq!(building_lines(handler), vec![2, 3]);
}
