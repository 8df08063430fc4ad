#!/usr/bin/env bash
# Lints template.yaml with cfn-lint (the rules `sam validate --lint` runs, without SAM's
# heavy install) and runs the template property test, which reads the template through
# cfn-lint's own decoder so CloudFormation short tags (!Ref, !GetAtt, !Sub) load as intrinsics.
# Both come from PyPI into a project-local venv, so a fresh machine needs nothing else.
set -euo pipefail

CFN_LINT_VERSION="1.58.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-cfn"

if ! "$VENV/bin/cfn-lint" --version 2>/dev/null | grep -q "$CFN_LINT_VERSION"; then
    echo "lint-template: installing cfn-lint $CFN_LINT_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
fi

cd "$ROOT"
echo "lint-template: cfn-lint template.yaml"
"$VENV/bin/cfn-lint" template.yaml
echo "lint-template: template property test"
"$VENV/bin/python" -m unittest discover -s tests/template -p 'test_*.py' -v
