//! Properties of the CBOR codec and of stream names that must hold for any input: checked by
//! the fuzz targets `cbor_decode` and `stream_id` (fuzz/) and by property tests in CI, on the
//! same code.

use crate::{StreamId, decode, decode_header, encode};

/// Decodes `data` as a body: no panic; the fast header scanner accepts every body the full
/// decoder accepts, with the same columns; a decoded body encodes back to the same event.
pub fn decode_holds(data: &[u8]) {
    let full = decode(data);
    let header = decode_header(data);
    if let Ok(env) = full {
        let h = header.expect("the scanner accepts what the decoder accepts");
        assert_eq!(
            (h.seq, h.id, h.time, &h.stream, h.version, h.kind.as_str()),
            (
                env.seq,
                env.id,
                env.time,
                &env.stream,
                env.version,
                env.kind().as_str()
            )
        );
        let again = encode(&env).expect("a decoded event encodes");
        assert_eq!(decode(&again).expect("and decodes again"), env);
    }
}

/// Stream names from `data` (as text: kind and id split at the first `:`): a name that
/// parses is valid and unchanged; a derived name is always valid and the same for the same
/// id.
pub fn stream_id_holds(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(s) = StreamId::parse(&text) {
        assert!(s.is_valid());
        assert_eq!(s.as_str(), text);
    }
    let (kind, id) = text.split_once(':').unwrap_or(("client", &text));
    let kind: String = kind
        .chars()
        .filter(char::is_ascii_lowercase)
        .take(16)
        .collect();
    let kind = if kind.is_empty() {
        "client".to_string()
    } else {
        kind
    };
    let a = StreamId::new(&kind, id);
    assert!(a.is_valid(), "{a}");
    assert_eq!(a, StreamId::new(&kind, id));
    assert!(StreamId::parse(a.as_str()).is_some());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_decode(data in prop::collection::vec(any::<u8>(), 0..512)) {
            decode_holds(&data);
        }

        #[test]
        fn mutated_sample_bodies(i in 0usize..33, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let all = crate::samples::all();
            let env = crate::samples::envelope(1, all[i % all.len()].clone());
            let mut body = encode(&env).unwrap();
            let k = at.index(body.len());
            body[k] = byte;
            decode_holds(&body);
        }

        #[test]
        fn any_stream_name(data in prop::collection::vec(any::<u8>(), 0..400)) {
            stream_id_holds(&data);
        }
    }
}
