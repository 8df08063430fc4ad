# The cold-start harness on the ingest-deal bootstrap that 20-sam-build.sh just built (at
# opt-level 0, so its times mean nothing here): proves the harness still runs, that the
# function answers a Function URL event 202 on the Runtime API stand-in and that its message
# and the Python baseline's reach moto. Two cold starts of each, a few seconds. Sourced by
# scripts/test.sh.
python3 "$ROOT/scripts/coldstart.py" --runs 2 \
    --binary "$ROOT/.aws-sam/build/IngestDealFunction/bootstrap" ||
    die "scripts/coldstart.py failed (output above)"
