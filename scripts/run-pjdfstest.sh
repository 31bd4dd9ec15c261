#!/usr/bin/env bash
# Runs the pjdfstest suite in DIR (a directory on a xetmount mount) with the checked-in
# configuration, prints "pjdfstest: N passed, M failed, K skipped" and fails if any test failed.
# Usage: run-pjdfstest.sh DIR [TEST-PATTERN...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$1"; shift
log="$(mktemp /tmp/pjdfstest.XXXXXX.log)"
# A directory on another file system, for the EXDEV cases.
secondary="$(mktemp -d /tmp/pjdfstest-secondary.XXXXXX)"
status=0
NO_COLOR=1 RUST_BACKTRACE=0 "$repo/.tools/bin/pjdfstest" -c "$repo/tests/posix/pjdfstest.toml" \
  -p "$dir" -s "$secondary" "$@" >"$log" 2>&1 || status=$?
rm -rf "$secondary"
# Show every failure and every skip with its reason; passing tests are only counted.
grep -v -E '^\S+ +(ok|failed as expected)$' "$log" | grep -v '^$' || true
summary="$(grep -E '^Summary:' "$log" | tail -1)"
if [ -z "$summary" ]; then
  echo "pjdfstest did not finish (exit $status); full log: $log"; exit 1
fi
failed="$(sed -E 's/.*: ([0-9]+) failed.*/\1/' <<<"$summary")"
skipped="$(sed -E 's/.* ([0-9]+) skipped.*/\1/' <<<"$summary")"
passed="$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$summary")"
expected="$(sed -E 's/.* ([0-9]+) expected failures.*/\1/' <<<"$summary")"
echo "pjdfstest: $passed passed, $failed failed, $skipped skipped," \
  "$expected expected failures (see tests/posix/pjdfstest.toml)"
rm -f "$log"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
