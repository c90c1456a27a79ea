//! Properties of the JSON-RPC inspector that must hold for any input: checked by the fuzz
//! target `jsonrpc_inspect` (fuzz/) and by property tests in CI, on the same code.

use crate::jsonrpc::{Inspected, inspect};

/// Inspects `data` and panics if a property fails: no panic inside; what is forwarded is
/// valid JSON without duplicate keys, and inspecting it again gives the same answer and the
/// same bytes (the upstream reads exactly what the gateway read); a tool call names a tool
/// within the bound.
pub fn inspect_holds(data: &[u8]) {
    let Ok(m) = inspect(data) else { return };
    let again = inspect(&m.forward).expect("what the gateway forwards, it accepts");
    assert_eq!(
        again.inspected, m.inspected,
        "forwarded message reads the same"
    );
    assert_eq!(again.forward, m.forward, "serialising again is stable");
    for i in &m.inspected {
        if let Inspected::ToolCall { tool, intent, .. } = i {
            assert!(!tool.is_empty() && tool.len() <= crate::jsonrpc::MAX_TOOL_NAME);
            assert!(
                intent
                    .as_ref()
                    .is_none_or(|s| s.len() <= crate::jsonrpc::MAX_INTENT)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("method".to_string()),
            Just("Method".to_string()),
            Just("name".to_string()),
            Just("NAME".to_string()),
            Just("params".to_string()),
            Just("id".to_string()),
            Just("jſonrpc".to_string()),
            Just("tas\u{212A}Id".to_string()),
            Just("_meta".to_string()),
            Just("intent".to_string()),
            Just("task".to_string()),
            "[a-zA-Z_]{0,6}",
        ]
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            prop_oneof![
                Just("tools/call".to_string()),
                Just("tools/list".to_string()),
                Just("tasks/get".to_string()),
                "[a-z/_]{0,12}",
            ]
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect()))
        })
    }

    /// Found by the fuzz target: a large integer parsed as a double was read back as another
    /// double after serialising (serde_json's fast float parsing is not correctly rounded; the
    /// workspace enables `float_roundtrip`).
    #[test]
    fn numbers_survive_the_round_trip() {
        inspect_holds(
            br#"{"":511111111111111111111111111111111111111111111111111111111111111113}"#,
        );
        inspect_holds(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":5.1111111111111112e+65,"y":0.1,"z":1e-320}}}"#);
    }

    proptest! {
        #[test]
        fn any_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
            inspect_holds(&data);
        }

        #[test]
        fn json_rpc_shaped_messages(v in value(), dup in any::<bool>()) {
            let mut text = v.to_string();
            // Duplicate the first key now and then: serde_json's Value cannot hold one.
            if dup && text.starts_with("{\"") && let Some(end) = text.find(',') {
                let first = text[1..end].to_string();
                text.insert_str(1, &format!("{first},"));
            }
            inspect_holds(text.as_bytes());
        }
    }
}
