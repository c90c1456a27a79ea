//! MCP sessions bound to who opened them. The upstream's `Mcp-Session-Id` reaches the client
//! with a MAC over the session, the resource and the caller (user or machine client, and the
//! client), and comes back to the upstream only from that caller: another caller's token with
//! a session id it saw (in a log, a shared proxy, an event) gets `404`, as for an unknown
//! session, and cannot read the session's server stream, answer its elicitations or end it.
//! Stateless, so it holds across restarts and across instances that share the signing key.

use subtle::ConstantTimeEq;

/// The longest session id accepted from an upstream (visible ASCII).
pub const MAX_UPSTREAM_SESSION_ID: usize = 256;
/// Hex digits of the MAC appended to it.
const MAC_HEX: usize = 32;
/// The longest session id a client may present: an upstream's, a separator and the MAC.
pub const MAX_SESSION_ID: usize = MAX_UPSTREAM_SESSION_ID + 1 + MAC_HEX;

/// Who a session belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub resource: &'a str,
    /// The user, or the machine client acting for itself.
    pub subject: &'a str,
    pub client_id: Option<&'a str>,
}

fn mac(key: &[u8; 32], binding: &Binding<'_>, upstream: &str) -> String {
    let mut h = blake3::Hasher::new_keyed(key);
    for part in [
        binding.resource,
        binding.subject,
        binding.client_id.unwrap_or(""),
        upstream,
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex()[..MAC_HEX].to_string()
}

/// The session id the client gets for the upstream's `upstream`, or `None` when the upstream's
/// is not one a client could send back (empty, too long, not visible ASCII).
pub fn wrap(key: &[u8; 32], binding: &Binding<'_>, upstream: &str) -> Option<String> {
    let visible = upstream.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if upstream.is_empty() || upstream.len() > MAX_UPSTREAM_SESSION_ID || !visible {
        return None;
    }
    Some(format!("{upstream}.{}", mac(key, binding, upstream)))
}

/// The upstream's session id inside `presented`, when `binding` is who it was given to.
pub fn unwrap<'p>(key: &[u8; 32], binding: &Binding<'_>, presented: &'p str) -> Option<&'p str> {
    let (upstream, given) = presented.rsplit_once('.')?;
    if given.len() != MAC_HEX || upstream.is_empty() {
        return None;
    }
    let expected = mac(key, binding, upstream);
    bool::from(expected.as_bytes().ct_eq(given.as_bytes())).then_some(upstream)
}

/// How a session appears in events: a digest of the upstream's id, which identifies the
/// session across its calls without being usable as it.
pub fn recorded(upstream: &str) -> String {
    format!("b3:{}", &blake3::hash(upstream.as_bytes()).to_hex()[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn alice() -> Binding<'static> {
        Binding {
            resource: "https://as.example/mcp/docs",
            subject: "usr_alice",
            client_id: Some("cli_claude"),
        }
    }

    #[test]
    fn a_session_comes_back_only_from_who_it_was_given_to() {
        let given = wrap(&KEY, &alice(), "upstream.session-1").unwrap();
        assert!(given.starts_with("upstream.session-1."));
        assert!(given.len() <= MAX_SESSION_ID);
        assert_eq!(unwrap(&KEY, &alice(), &given), Some("upstream.session-1"));
        let others = [
            Binding {
                subject: "usr_bob",
                ..alice()
            },
            Binding {
                client_id: Some("cli_other"),
                ..alice()
            },
            Binding {
                client_id: None,
                ..alice()
            },
            Binding {
                resource: "https://as.example/mcp/other",
                ..alice()
            },
        ];
        for b in others {
            assert_eq!(unwrap(&KEY, &b, &given), None, "{b:?}");
        }
        assert_eq!(unwrap(&[8; 32], &alice(), &given), None, "another key");
        // The upstream's own id, or one with its MAC changed, is nobody's.
        assert_eq!(unwrap(&KEY, &alice(), "upstream.session-1"), None);
        let mut forged = given.clone();
        forged.pop();
        forged.push(if given.ends_with('0') { '1' } else { '0' });
        assert_eq!(unwrap(&KEY, &alice(), &forged), None);
        // Parts are length-prefixed: moving a boundary is another binding.
        let shifted = Binding {
            resource: "https://as.example/mcp/docsusr_",
            subject: "alice",
            ..alice()
        };
        assert_eq!(unwrap(&KEY, &shifted, &given), None);
    }

    #[test]
    fn ids_a_client_could_not_send_back_are_not_wrapped() {
        for bad in [
            "",
            "a b",
            "x\u{7f}",
            &"s".repeat(MAX_UPSTREAM_SESSION_ID + 1),
        ] {
            assert_eq!(wrap(&KEY, &alice(), bad), None, "{bad:?}");
        }
        assert!(wrap(&KEY, &alice(), &"s".repeat(MAX_UPSTREAM_SESSION_ID)).is_some());
        assert!(recorded("s1").starts_with("b3:") && !recorded("s1").contains("s1"));
        assert_ne!(recorded("s1"), recorded("s2"));
    }
}
