#!/usr/bin/env bash
# Runs fsx on one file in DIR (a directory on a xetmount mount).
# Usage: run-fsx.sh DIR OPS SEED [CONFIG]   (default config: tests/posix/fsx.toml)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$1"; ops="$2"; seed="$3"; config="${4:-$repo/tests/posix/fsx.toml}"
artifacts="$(mktemp -d /tmp/fsx-artifacts.XXXXXX)"
if "$repo/.tools/bin/fsx" -f "$config" -N "$ops" -S "$seed" -P "$artifacts" \
     "$dir/fsx.data" >"$artifacts/fsx.log" 2>&1; then
  echo "fsx: $ops ops, seed $seed, no failure"
  rm -rf "$artifacts"
else
  tail -40 "$artifacts/fsx.log"
  echo "fsx: FAILED after $(grep -c . "$artifacts/fsx.log") log lines (seed $seed); artifacts in $artifacts"
  exit 1
fi
