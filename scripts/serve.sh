#!/usr/bin/env bash
# Builds `relay` and runs `relay serve` on the embedded store (.relay/ in this folder).
# Needs Rust; installs a C compiler through apt if missing. Arguments go to `relay serve`
# (e.g. --addr 0.0.0.0:3000); configuration is the RELAY_* environment (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
# The toolchain is a prerequisite, not something a script fetches from outside the package
# registries: say so plainly instead of piping an installer into sh.
command -v cargo >/dev/null 2>&1 || {
    echo "serve.sh: no Rust toolchain (cargo) found; install Rust (https://rustup.rs) and run again" >&2
    exit 1
}
# SQLite is compiled from source (rusqlite "bundled"), so a C compiler is needed.
if ! command -v cc >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "serve.sh: installing a C compiler (build-essential)" >&2
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq build-essential
    else
        echo "serve.sh: a C compiler (cc) is needed; install your system's build tools and run again" >&2
        exit 1
    fi
fi

profile="${RELAY_PROFILE:-release}"
if [ "$profile" = release ]; then
    cargo build --locked --release -p relay
else
    cargo build --locked -p relay
    profile=debug
fi
exec "target/$profile/relay" serve "$@"
