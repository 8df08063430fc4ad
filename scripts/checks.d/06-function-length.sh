# No non-test function over 80 lines unless a comment just above it says why it must stay one
# piece: a reader should be able to hold a function in their head. scripts/long_functions.py
# lists the offenders (its docstring gives the rules). Sourced by scripts/test.sh (ROOT, log,
# die defined).
if ! long_functions="$(python3 "$ROOT/scripts/long_functions.py" 2>&1)"; then
    echo "$long_functions" >&2
    die "function length: split the functions above, or say why one must stay one piece"
fi
log "function length: no non-test function over 80 lines without a reason"
