#!/usr/bin/env bash
# Cost of making the CAS files durable before a commit (issue 20, item 7), side by side in one
# run on this machine: time to commit 1,000 small files, and one 1 GiB file, on a mount of a
# local store, with a build that fsyncs the xorbs, shards and their directories first and with
# one that does not.
# Each case: a fresh store, files written through the mount with a debounce longer than the
# run (nothing commits yet), `sync` so only the commit's own writes are pending, then the time
# of `xetmount unmount`, which commits everything in one batch and exits.
# Usage: bench/durable.sh WITHOUT-BIN [WITH-BIN] [RUNS]
#   WITHOUT-BIN: an xetmount built without the syncs (from the commit before them: check it
#     out, `cargo build --release`, copy target/release/xetmount aside).
#   WITH-BIN: default: this checkout's build. RUNS: per case and build, default 3 (median).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
without="${1:?usage: bench/durable.sh WITHOUT-BIN [WITH-BIN] [RUNS]}"
with="${2:-}"
runs="${3:-3}"
if [ -z "$with" ]; then
  cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin xetmount
  with="$repo/target/release/xetmount"
fi
work="$(mktemp -d /var/tmp/xetmount-durable.XXXXXX)"
mp="$work/mnt"
mkdir -p "$mp"
pid=""
cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u "$mp" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

head -c $((1 << 30)) /dev/urandom >"$work/big.bin"

# Prints the seconds `unmount` took to commit what case $1 wrote, with binary $bin.
commit_time() { # small|big
  rm -rf "$work/store"
  mount_bg "$work/store" "$mp" "$work/mount.log" --flush-debounce-ms 3600000
  if [ "$1" = small ]; then
    for i in $(seq 1 1000); do printf 'small file %s\n' "$i" >"$mp/f$i.txt"; done
  else
    cp "$work/big.bin" "$mp/big.bin"
  fi
  sync
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" unmount "$mp"
  wait "$pid"
  t1=$(date +%s.%N)
  pid=""
  if [ "$1" = big ]; then
    mount_bg "$work/store" "$mp" "$work/mount.log"
    cmp "$work/big.bin" "$mp/big.bin"
    "$bin" unmount "$mp"; wait "$pid"; pid=""
  fi
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", b - a}'
}

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

printf '%-22s %14s %14s %8s\n' case "without (s)" "with (s)" ratio
for c in small big; do
  a=(); b=()
  for _ in $(seq 1 "$runs"); do
    bin="$without"; a+=("$(commit_time "$c")")
    bin="$with"; b+=("$(commit_time "$c")")
  done
  ma=$(printf '%s\n' "${a[@]}" | median)
  mb=$(printf '%s\n' "${b[@]}" | median)
  name=$([ "$c" = small ] && echo "1,000 small files" || echo "one 1 GiB file")
  printf '%-22s %14.3f %14.3f %8.2f\n' "$name" "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN{print b / a}')"
  echo "  runs without: ${a[*]}; with: ${b[*]}"
done
