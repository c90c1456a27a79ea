//! The committed event catalogue (`schemas/events.schema.json`) and the code must agree:
//! every kind in both, every sample event valid, every field the code writes documented,
//! every documented field written by the code, and a field is required in the schema exactly
//! when the code cannot decode an event without it.

use grantline_ledger::{Envelope, Kind, decode, encode, samples};
use serde_json::Value;

fn schema() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/events.schema.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("schema JSON")
}

fn sample_envelopes() -> Vec<Envelope> {
    samples::all()
        .into_iter()
        .enumerate()
        .map(|(i, p)| samples::envelope(i as u64 + 1, p))
        .collect()
}

#[test]
fn every_kind_has_a_sample_and_a_schema_entry() {
    let schema = schema();
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let sampled: Vec<&str> = samples::all().iter().map(|p| p.kind().as_str()).collect();
    assert_eq!(
        sampled, kinds,
        "samples::all() must cover Kind::ALL in order"
    );
    let in_schema: Vec<&str> = schema["properties"]["kind"]["enum"]
        .as_array()
        .expect("kind enum")
        .iter()
        .map(|v| v.as_str().expect("kind name"))
        .collect();
    assert_eq!(in_schema, kinds, "schema kinds differ from the code's");
    for k in &kinds {
        assert!(schema["$defs"].get(*k).is_some(), "no $defs entry for {k}");
    }
}

#[test]
fn samples_validate_and_round_trip_through_cbor_and_json() {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for env in sample_envelopes() {
        let body = encode(&env).expect("encode");
        assert_eq!(decode(&body).expect("decode"), env, "CBOR round trip");
        let json = serde_json::to_value(&env).expect("to json");
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", env.kind().as_str());
        let back: Envelope = serde_json::from_value(json).expect("from json");
        assert_eq!(back, env, "JSON round trip");
    }
}

#[test]
fn schema_fields_and_required_lists_match_the_code() {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for env in sample_envelopes() {
        let kind = env.kind().as_str();
        let json = serde_json::to_value(&env).expect("to json");
        let payload = json["payload"].as_object().expect("payload object").clone();
        let def = &schema["$defs"][kind];
        let documented: Vec<&String> = def["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        for field in &documented {
            assert!(
                payload.contains_key(*field),
                "{kind}: schema documents `{field}` but the code does not write it"
            );
        }
        let required: Vec<&str> = def["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for field in payload.keys() {
            let mut without = json.clone();
            without["payload"]
                .as_object_mut()
                .expect("payload")
                .remove(field);
            let code_accepts = serde_json::from_value::<Envelope>(without.clone()).is_ok();
            let schema_accepts = validator.is_valid(&without);
            assert_eq!(
                code_accepts, schema_accepts,
                "{kind}.{field}: code accepts a missing field = {code_accepts}, schema = {schema_accepts}"
            );
            assert_eq!(
                required.contains(&field.as_str()),
                !code_accepts,
                "{kind}.{field}: `required` disagrees with the code"
            );
        }
    }
}

#[test]
fn no_sample_holds_a_raw_secret() {
    // Digest fields are 64 hex chars; token prefixes appear only in the PAT's visible prefix.
    for env in sample_envelopes() {
        let json = serde_json::to_string(&env).expect("json");
        for raw in [
            "gla_sample",
            "glr_sample",
            "glp_sample",
            "client secret",
            "alice@example.com",
        ] {
            assert!(
                !json.contains(raw),
                "{}: contains {raw}",
                env.kind().as_str()
            );
        }
    }
}

#[test]
fn the_event_catalogue_page_documents_every_kind() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    let page = std::fs::read_to_string(path).expect("docs/events.md");
    for k in Kind::ALL {
        assert!(
            page.contains(&format!("\n## {}\n", k.as_str())),
            "docs/events.md lacks {} (run python3 tools/gen-schema.py)",
            k.as_str()
        );
    }
}
