#!/usr/bin/env bash
# Builds `relay` and runs `relay serve` on the embedded store (.relay/ in this folder).
# Installs the Rust toolchain first if this machine has none. Arguments go to `relay serve`
# (e.g. --addr 0.0.0.0:3000); configuration is the RELAY_* environment (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "serve.sh: no Rust toolchain; installing it with rustup (minimal profile)" >&2
        command -v curl >/dev/null 2>&1 || { echo "serve.sh: curl is needed to install Rust" >&2; exit 1; }
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi
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
