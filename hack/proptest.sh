#!/usr/bin/env bash
# The property tests in their long mode: the base-XML layer (tests/domain_xml_props.rs, pure)
# and the admission rules on the test bed's API server (tests/admission_props.rs), each for
# the given minutes (default 10), one after the other. Each prints the number of cases run.
#
#   hack/proptest.sh [minutes]                # both; the test bed must be loaded:
#                                             #   eval "$(hack/testbed.sh env --instance dev)"
#   PROPTEST_ONLY=xml hack/proptest.sh 10     # only the XML layer (no test bed needed)
#
# By default (`cargo test`) both run a few dozen cases, in seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes=${1:-10}
[[ $minutes =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "usage: hack/proptest.sh [minutes]" >&2; exit 2; }
export SEAPATH_PROPTEST_MINUTES=$minutes
tests=(domain_xml_props admission_props)
case ${PROPTEST_ONLY:-} in
  xml) tests=(domain_xml_props) ;;
  admission) tests=(admission_props) ;;
  '') ;;
  *) echo "PROPTEST_ONLY must be xml or admission" >&2; exit 2 ;;
esac
status=0
for t in "${tests[@]}"; do
  echo "== $t: $minutes minute(s)"
  # pipefail: a failing test fails the script; the filter keeps the counts and any failure.
  if ! cargo test --test "$t" -- --nocapture --test-threads 1 2>&1 |
    grep -E -A40 '^proptest |^test |panicked|minimal failing input'; then
    status=1
  fi
done
exit $status
