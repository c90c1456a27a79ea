use crate::location::Location;
use anyhow::{Context, Result};
use grantline_ledger::Sealed;
use grantline_store::{Keyring, Store};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Start after this seq.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many events.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

/// What a reader shows for a field whose subject was erased.
pub const ERASED: &str = "[erased]";

pub async fn run(loc: &Location, args: Args) -> Result<ExitCode> {
    let store = Store::connect(&loc.database, false)
        .await
        .with_context(|| format!("opening {}", loc.database.display()))?;
    let keyring = Keyring::new(&store);
    let events = store.read(args.after, args.limit).await?;
    let mut out = std::io::stdout().lock();
    for r in events {
        let mut json = serde_json::to_value(&r.envelope)?;
        let mut sealed = Vec::new();
        collect_sealed(&json, &mut sealed);
        let mut opened = HashMap::new();
        for s in sealed {
            let text = match keyring.open(&s).await? {
                Ok(t) => t,
                Err(_) => ERASED.to_string(),
            };
            opened.insert(s.nonce, text);
        }
        replace_sealed(&mut json, &opened);
        json["hash"] = Value::String(r.hash.to_hex());
        writeln!(out, "{json}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn as_sealed(v: &Value) -> Option<Sealed> {
    let o = v.as_object()?;
    (o.len() == 3 && o.contains_key("subject") && o.contains_key("nonce") && o.contains_key("ct"))
        .then(|| serde_json::from_value(v.clone()).ok())
        .flatten()
}

fn collect_sealed(v: &Value, out: &mut Vec<Sealed>) {
    if let Some(s) = as_sealed(v) {
        out.push(s);
        return;
    }
    match v {
        Value::Object(o) => o.values().for_each(|v| collect_sealed(v, out)),
        Value::Array(a) => a.iter().for_each(|v| collect_sealed(v, out)),
        _ => {}
    }
}

fn replace_sealed(v: &mut Value, opened: &HashMap<[u8; 24], String>) {
    if let Some(s) = as_sealed(v) {
        *v = Value::String(
            opened
                .get(&s.nonce)
                .cloned()
                .unwrap_or_else(|| ERASED.into()),
        );
        return;
    }
    match v {
        Value::Object(o) => o.values_mut().for_each(|v| replace_sealed(v, opened)),
        Value::Array(a) => a.iter_mut().for_each(|v| replace_sealed(v, opened)),
        _ => {}
    }
}
