#!/usr/bin/env bash
# Cost of making the CAS files durable before a commit (issue 20, item 7), side by side in one
# run on this machine: time to commit 1,000 small files, and one 1 GiB file, with a build that
# fsyncs the xorbs, shards and their directories first and with one that does not.
# mount: a fresh local store, files written through the mount with a debounce longer than the
#   run (nothing commits yet), `sync` so only the commit's own writes are pending, then the
#   time of `xetmount unmount`, which commits everything in one batch and exits.
# serve: a fresh `xetmount serve`, the time of `hf buckets sync` uploading the files (the
#   official client; the server syncs each xorb and shard before answering its upload).
# Usage: bench/durable.sh WITHOUT-BIN [WITH-BIN] [RUNS]
#   WITHOUT-BIN: an xetmount built without the syncs (from the commit before them: check it
#     out, `cargo build --release`, copy target/release/xetmount aside).
#   WITH-BIN: default: this checkout's build. RUNS: per case and build, default 3 (median).
set -euo pipefail
# The cases run in command substitutions: a failure there must stop the run too.
shopt -s inherit_errexit
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
without="${1:?usage: bench/durable.sh WITHOUT-BIN [WITH-BIN] [RUNS]}"
with="${2:-}"
runs="${3:-3}"
bin="$with"
build_bin
with="$bin"
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
  trap 'if [ -n "$pid" ]; then fusermount3 -u "$mp" 2>/dev/null || true; wait "$pid" || true; fi' EXIT
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

hf="$repo/.tools/hf-venv/bin/hf"
serve_pid=""
stop_serve() { if [ -n "$serve_pid" ]; then kill "$serve_pid"; wait "$serve_pid" || true; serve_pid=""; fi; }
mkdir -p "$work/up-small" "$work/up-big"
for i in $(seq 1 1000); do printf 'small file %s\n' "$i" >"$work/up-small/f$i.txt"; done
ln "$work/big.bin" "$work/up-big/big.bin"

# Prints the seconds `hf buckets sync` took to upload case $1 to `serve` run with binary $bin.
upload_time() { # small|big
  trap stop_serve EXIT
  rm -rf "$work/srv" "$work/hfhome"
  coproc SERVE { exec "$bin" serve "$work/srv" --listen 127.0.0.1:0 2>>"$work/serve.log"; }
  serve_pid=$SERVE_PID
  local url
  read -r line <&"${SERVE[0]}"
  url="${line##* }"
  export HF_ENDPOINT="$url" HF_TOKEN=anything HF_HOME="$work/hfhome" HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_UPDATE_CHECK=1
  "$hf" buckets create local/data >/dev/null
  sync
  local t0 t1
  t0=$(date +%s.%N)
  "$hf" buckets sync "$work/up-$1" hf://buckets/local/data >/dev/null
  t1=$(date +%s.%N)
  stop_serve
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", b - a}'
}

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

printf '%-28s %12s %12s %7s\n' case "without (s)" "with (s)" ratio
for how in commit_time upload_time; do
  if [ "$how" = upload_time ] && [ ! -x "$hf" ]; then
    echo "(serve cases skipped: $hf is missing; run scripts/install-tools.sh)"
    continue
  fi
  for c in small big; do
    a=(); b=()
    for _ in $(seq 1 "$runs"); do
      bin="$without"; a+=("$($how "$c")")
      bin="$with"; b+=("$($how "$c")")
    done
    ma=$(printf '%s\n' "${a[@]}" | median)
    mb=$(printf '%s\n' "${b[@]}" | median)
    name="$([ "$how" = commit_time ] && echo mount || echo serve): $([ "$c" = small ] && echo "1,000 small files" || echo "one 1 GiB file")"
    printf '%-28s %12.3f %12.3f %7.2f\n' "$name" "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN{print b / a}')"
    echo "  runs without: ${a[*]}; with: ${b[*]}"
  done
done
