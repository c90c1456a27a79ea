#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for the given number of seconds each (default 600),
# one after the other, with the corpus kept in fuzz/corpus/<target>. A crash stops the run and
# leaves its input in fuzz/artifacts/<target>/: add it to the target's property test, fix,
# and record it in docs/security.md.
#
#   tools/fuzz.sh            # 10 minutes per target
#   tools/fuzz.sh 60         # one minute each
#   tools/fuzz.sh 600 cbor_decode stream_id
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The machine's stable toolchain builds the
# sanitizer flags cargo-fuzz passes when RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(jsonrpc_inspect registration_json authorize_params cbor_decode stream_id)
fi
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz.sh: $t for ${secs}s" >&2
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=4096 -print_final_stats=1 2>&1 \
    | tee "/tmp/fuzz-$t.log" | grep -E "^(#[0-9]+ +DONE|stat::|==[0-9]+== ERROR|SUMMARY|Done)" || true
  if grep -q "ERROR: libFuzzer\|panicked" "/tmp/fuzz-$t.log"; then
    echo "fuzz.sh: $t found a failure; see /tmp/fuzz-$t.log and fuzz/artifacts/$t" >&2
    exit 1
  fi
done
