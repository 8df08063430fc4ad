#!/usr/bin/env bash
# A long fuzzing campaign over everything that reads a body before authentication (form and
# JSON decoders, Bitrix24/SalesMan parsers, envelope id, the ingress handler): the properties
# in crates/relay-core/tests/fuzz.rs, run for SECONDS in total (default 600) with fresh seeds each round.
# CI runs the same properties as ordinary tests for a fixed, small number of cases.
#
#   scripts/fuzz.sh          10 minutes
#   scripts/fuzz.sh 60       one minute
#
# A failure prints the minimal failing input: add it to crates/relay-core/tests/fuzz.rs (or to the unit
# tests of the module at fault) as a regression test before fixing it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_TOTAL="${1:-600}"
[[ "$SECONDS_TOTAL" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }

LOG="$ROOT/target/fuzz-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p "$ROOT/target"
echo "==> fuzzing for ${SECONDS_TOTAL} s; log: $LOG" >&2
# The targets share the time (their shares are in fuzz.rs); one test thread keeps the shares
# honest on a small machine.
START=$(date +%s)
status=0
RELAY_FUZZ_SECONDS="$SECONDS_TOTAL" cargo test -p relay-core --test fuzz -- \
    --nocapture --test-threads=1 2>&1 | tee "$LOG" || status=$?
END=$(date +%s)

echo "==> summary" >&2
# The harness prints "test <name> ... " and the target's line on one line: match the middle.
lines=$(grep -o 'fuzz: [^:]*: [0-9]* cases in [0-9.]* s' "$LOG" || true)
printf '%s\n' "$lines" >&2
total=$(printf '%s\n' "$lines" | awk '{ for (i = 1; i <= NF; i++) if ($i == "cases") s += $(i - 1) } END { print s + 0 }')
echo "==> ${total} cases in $((END - START)) s (including the build); exit status ${status}" >&2
exit "$status"
