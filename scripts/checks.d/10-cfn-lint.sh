# cfn-lint on template.yaml and the template property test (sourced by scripts/test.sh).
bash "$ROOT/scripts/lint-template.sh" || die "template.yaml: cfn-lint or the template property test failed"
