# `sam build` of every function through cargo-lambda (release, for this machine's x86_64), as a
# user's `sam build` runs it: proves the template and every crate build for Lambda. A cold run
# compiles the AWS SDK in release mode (~29 min measured on 2 cores shared with other builds;
# 12 s when nothing changed). Sourced by scripts/test.sh.
bash "$ROOT/scripts/sam-build.sh" || die "sam build failed (output above)"
