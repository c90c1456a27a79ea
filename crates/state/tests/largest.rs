//! The fold reads the largest event of every kind the writer accepts (issue 9: one oversized
//! sign-in failure once stopped every reader, the fold at start among them).

use grantline_ledger::samples;
use grantline_ledger::{GENESIS, Recorded};
use grantline_state::{State, apply};

#[test]
fn the_fold_takes_the_largest_body_of_every_kind() {
    let mut state = State::default();
    let mut seq = 0;
    for sample in samples::all() {
        for (fits, _) in samples::largest(&sample) {
            seq += 1;
            let envelope = samples::envelope(seq, fits);
            let body = grantline_ledger::encode(&envelope).unwrap();
            assert!(body.len() <= grantline_ledger::MAX_BODY_BYTES);
            // What the fold gets is what a reader decodes from the stored body.
            let read = grantline_ledger::decode(&body).unwrap();
            apply(
                &mut state,
                &Recorded {
                    envelope: read,
                    prev_hash: GENESIS,
                    hash: GENESIS,
                },
            );
            assert_eq!(state.seq, seq);
        }
    }
    assert!(seq > 100, "{seq} events");
    assert!(!state.clients.is_empty() && !state.users.is_empty());
}
