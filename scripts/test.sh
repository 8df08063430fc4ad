#!/usr/bin/env bash
# The one test command, for developers and CI alike (.ci/run calls exactly this).
# Installs a pinned moto server into .venv-moto (once), starts it on 127.0.0.1 at a free port,
# runs fmt, clippy, any extra checks in scripts/checks.d/, then every test of the workspace
# against that moto. moto is stopped on exit, whatever happens. A missing moto is a failure.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -- <filter>     extra arguments after -- go to `cargo test`
#   RELAY_TEST_SKIP_LINT=1 scripts/test.sh   tests only (local iteration; CI never sets it)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MOTO_VERSION="5.2.5"
# moto's server needs flask + flask-cors; the [dynamodb,sqs,ssm] extras keep the venv small
# (moto[server] is ~300 MB). ssm serves the SecureString secrets test. Pinned so every
# machine runs the same emulator.
PY_PACKAGES=("moto[dynamodb,sqs,ssm]==${MOTO_VERSION}" "flask==3.1.3" "flask-cors==6.0.5")
VENV="$ROOT/.venv-moto"
MOTO_BIN="$VENV/bin/moto_server"
MOTO_LOG="$ROOT/target/moto-server.log"
MOTO_PID=""

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

stop_moto() {
    if [[ -n "$MOTO_PID" ]] && kill -0 "$MOTO_PID" 2>/dev/null; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    MOTO_PID=""
}
trap stop_moto EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

moto_installed() {
    [[ -x "$MOTO_BIN" ]] &&
        "$VENV/bin/python" - "$MOTO_VERSION" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
import yaml  # brought by the ssm extra: an older venv without it is reinstalled
sys.exit(0 if m.version("moto") == sys.argv[1] else 1)
PY
}

ensure_moto() {
    if moto_installed; then
        return
    fi
    command -v python3 >/dev/null || die "python3 is required to run the moto server"
    log "installing moto ${MOTO_VERSION} into .venv-moto (once)"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" ||
        die "pip could not install ${PY_PACKAGES[*]}"
    moto_installed || die "moto ${MOTO_VERSION} is not importable after install"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_moto() {
    mkdir -p "$(dirname "$MOTO_LOG")"
    local port attempt
    port="$(free_port)"
    "$MOTO_BIN" -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 &
    MOTO_PID=$!
    # Bounded wait: 200 x 50 ms = 10 s for the server to accept connections.
    for attempt in $(seq 1 200); do
        if ! kill -0 "$MOTO_PID" 2>/dev/null; then
            cat "$MOTO_LOG" >&2
            die "moto_server exited during start-up (log above)"
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            export RELAY_TEST_MOTO_URL="http://127.0.0.1:$port"
            return
        fi
        sleep 0.05
    done
    die "moto_server did not accept connections on 127.0.0.1:$port within 10 s (log: $MOTO_LOG)"
}

CARGO_TEST_ARGS=()
if [[ "${1:-}" == "--" ]]; then
    shift
    CARGO_TEST_ARGS=("$@")
fi

ensure_moto
start_moto

# The SDK finds moto through the environment alone, as a Lambda finds AWS.
export AWS_ENDPOINT_URL="$RELAY_TEST_MOTO_URL"
export AWS_ACCESS_KEY_ID="testing"
export AWS_SECRET_ACCESS_KEY="testing"
unset AWS_SESSION_TOKEN AWS_PROFILE
export AWS_REGION="us-east-1"
export AWS_DEFAULT_REGION="us-east-1"
export AWS_EC2_METADATA_DISABLED="true"
export RELAY_TEST_MOTO_BIN="$MOTO_BIN"
log "moto ${MOTO_VERSION} on ${RELAY_TEST_MOTO_URL}"

if [[ "${RELAY_TEST_SKIP_LINT:-}" != "1" ]]; then
    log "cargo fmt --check"
    cargo fmt --all -- --check
    log "cargo clippy -D warnings"
    cargo clippy --quiet --workspace --all-targets -- -D warnings
fi

# ---- Hook point: extra checks --------------------------------------------------------------
# Each scripts/checks.d/*.sh (cfn-lint, sam build, …) is sourced here in name order, after
# lint and before the tests, with ROOT, log and die available and moto running. A check
# fails the run by returning non-zero (set -e is on).
shopt -s nullglob
for check in "$ROOT"/scripts/checks.d/*.sh; do
    log "check: $(basename "$check")"
    # shellcheck source=/dev/null
    source "$check"
done
shopt -u nullglob
# --------------------------------------------------------------------------------------------

log "cargo test --workspace"
TEST_OUT="$ROOT/target/test-output.txt"
status=0
cargo test --workspace --no-fail-fast "${CARGO_TEST_ARGS[@]}" 2>&1 | tee "$TEST_OUT" || status=$?

# One closing line over every test binary (cargo prints one "test result" per binary).
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) passed += $(i - 1)
            if ($(i) ~ /^failed;?$/) failed += $(i - 1)
        }
     }
     END { printf "summary: %d passed, %d failed\n", passed, failed }' "$TEST_OUT"
exit "$status"
