#!/usr/bin/env bash
# Builds every function of template.yaml for Lambda through `sam build` and cargo-lambda,
# exactly as a user's `sam build` would, then prints the build time and each bootstrap's size.
# Tools come from PyPI into project-local venvs: aws-sam-cli pins a boto3 that conflicts with
# moto's, so it never shares a venv with the test tools; cargo-lambda's wheel brings zig.
# Builds for this machine's architecture (x86_64): another Rust target would be a download
# outside the package registries, so no script here ever runs `rustup target add`.
set -euo pipefail

SAM_CLI_VERSION="1.170.0"
CARGO_LAMBDA_VERSION="1.9.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-sam"
ARCH="${SAM_BUILD_ARCH:-x86_64}"

export SAM_CLI_TELEMETRY=0

if ! "$VENV/bin/sam" --version 2>/dev/null | grep -q "$SAM_CLI_VERSION" \
    || ! "$VENV/bin/cargo-lambda" lambda --version 2>/dev/null | grep -q "$CARGO_LAMBDA_VERSION"; then
    echo "sam-build: installing aws-sam-cli $SAM_CLI_VERSION and cargo-lambda $CARGO_LAMBDA_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "aws-sam-cli==$SAM_CLI_VERSION" "cargo-lambda==$CARGO_LAMBDA_VERSION"
fi
# sam finds `cargo lambda` (and cargo-lambda finds zig) on PATH.
export PATH="$VENV/bin:$PATH"

# SAM runs `cargo lambda build --release`; cargo-lambda adds one codegen unit and panic=abort.
# These two make it build what [profile.lambda-release] (Cargo.toml) builds: 7.3 MiB per
# bootstrap instead of 12 (README, "Build numbers"). CI's check sets both itself (opt-level 0,
# no LTO: it proves the build, not the optimiser).
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-s}"
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-fat}"

cd "$ROOT"
start=$(date +%s)
sam build --beta-features --parameter-overrides "Architecture=$ARCH" "$@"
end=$(date +%s)

echo "sam-build: built for $ARCH in $((end - start)) s"
found=0
for bootstrap in .aws-sam/build/*/bootstrap; do
    [ -e "$bootstrap" ] || continue
    found=$((found + 1))
    printf 'sam-build: %-34s %8d KiB\n' "$(basename "$(dirname "$bootstrap")")" "$(( $(stat -c %s "$bootstrap") / 1024 ))"
done
expected=$(grep -c 'Type: AWS::Serverless::Function' template.yaml)
if [ "$found" -ne "$expected" ]; then
    echo "sam-build: $found bootstrap files under .aws-sam/build, but template.yaml has $expected functions" >&2
    exit 1
fi
