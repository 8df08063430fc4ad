# The crate split, held by the dependency graph rather than by convention:
# - relay-core (the domain) links no AWS SDK, no SQLite, no Lambda runtime and no HTTP server,
#   so the domain can reach a store only through a port;
# - relay-local links no AWS SDK, relay-aws no SQLite;
# - no Lambda function links SQLite or axum (they are `relay serve`'s alone).
# `cargo tree` resolves each package's features as `cargo build -p` would. Sourced by
# scripts/test.sh (ROOT, log, die defined).

# Prints the crates in one package's normal (non-dev, non-build) dependency tree that match
# the pattern, once each.
crates_matching() {
    local package="$1" pattern="$2"
    cargo tree --quiet --offline -p "$package" -e normal --prefix none --format '{p}' 2>/dev/null |
        awk '{print $1}' | grep -E "^(${pattern})$" | sort -u || true
}

# A hyper built with its `server` feature means some crate in the tree runs an HTTP server.
hyper_server_in() {
    cargo tree --quiet --offline -p "$1" -e features -i hyper --prefix none 2>/dev/null |
        grep -q 'hyper feature "server"' && echo 'hyper (feature "server")' || true
}

AWS_CRATES='aws-config|aws-sdk-[a-z0-9]+|aws-smithy-[a-z0-9-]+|aws-runtime'
SQLITE_CRATES='rusqlite|libsqlite3-sys'
SERVER_CRATES='axum|axum-core'
LAMBDA_CRATES='lambda_runtime|lambda_http|aws_lambda_events'

# The grep must be able to see what it forbids: `relay` (the CLI) links all of it.
for expected in rusqlite axum aws-sdk-dynamodb lambda_runtime; do
    [[ -n "$(crates_matching relay "$expected")" ]] ||
        die "crate-tree check is blind: cargo tree -p relay does not show $expected"
done

forbidden_in() {
    local package="$1" pattern="$2" found
    found="$(crates_matching "$package" "$pattern")"
    [[ -z "$found" ]] || die "$package must not depend on: $(echo "$found" | tr '\n' ' ')"
}

forbidden_in relay-core "${AWS_CRATES}|${SQLITE_CRATES}|${SERVER_CRATES}|${LAMBDA_CRATES}"
[[ -z "$(hyper_server_in relay-core)" ]] || die "relay-core must not link an HTTP server (hyper's server feature is on)"
forbidden_in relay-local "${AWS_CRATES}|${SERVER_CRATES}|${LAMBDA_CRATES}"
forbidden_in relay-aws "${SQLITE_CRATES}|${SERVER_CRATES}|${LAMBDA_CRATES}"
forbidden_in relay-lambda "${SQLITE_CRATES}|${SERVER_CRATES}"
for manifest in "$ROOT"/functions/*/Cargo.toml; do
    function_name="$(basename "$(dirname "$manifest")")"
    [[ "$function_name" == relay ]] && continue
    forbidden_in "$function_name" "${SQLITE_CRATES}|${SERVER_CRATES}"
done
log "crate tree: relay-core has no AWS SDK, SQLite, Lambda runtime or HTTP server; no Lambda links SQLite or axum"
