# `sam build` of every function through cargo-lambda (for this machine's x86_64), as a user's
# `sam build` runs it: proves the template's build metadata and that every crate compiles and
# links for Lambda. Sourced by scripts/test.sh.
# The suite builds at opt-level 0 and without LTO: optimising the AWS SDK adds ~15 of the ~25
# cold minutes measured on 2 cores and proves nothing more about the build.
# `scripts/sam-build.sh` run on its own builds what is deployed (opt-level "s", fat LTO).
CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_LTO=off bash "$ROOT/scripts/sam-build.sh" ||
    die "sam build failed (output above)"
