#!/usr/bin/env bash
# Peak memory of a mount (issue 23, bounded memory): the mount's VmHWM (peak RSS, from
# /proc/PID/status) after each phase, for one SIZE_MIB file of random bytes:
#   write    dd of the file into the mount (staging only)
#   commit   until the file is committed (stats: files_uploaded), upload and catalog commit
#   read     cold sequential read after a remount (a fresh process: empty read cache; on a
#            served bucket also a fresh --cache-dir, so the chunk cache is empty too)
# on the local store and on a bucket served by `xetmount serve` on 127.0.0.1. Each line
# shows the memory budget the mount ran with (--memory-mib, from MEMORY_ARGS or the default)
# beside the peak.
# Usage: bench/memory.sh [SIZE_MIB]   (default 4096)
# Environment: MEMORY_ARGS (extra mount arguments, e.g. "--memory-mib 150"),
# XETMOUNT_BIN (a prebuilt binary instead of building this checkout, e.g. to measure another
# version), MEMORY_STEP_SECS (1800: the limit on any one phase).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
size_mib="${1:-4096}"
[[ "$size_mib" =~ ^[0-9]+$ ]] && [ "$size_mib" -gt 0 ] || { echo "memory.sh: size '$size_mib' is not a whole number of MiB"; exit 2; }
step_secs="${MEMORY_STEP_SECS:-1800}"
read -r -a extra <<<"${MEMORY_ARGS:-}"
bin="${XETMOUNT_BIN:-}"
build_bin
# The budget line: what --help says the default is, unless MEMORY_ARGS sets it.
budget="$("$bin" mount --help | grep -A6 -e '--memory-mib' | grep -o 'default: [0-9]*' | head -1 | cut -d' ' -f2 || true)"
for ((i = 0; i < ${#extra[@]}; i++)); do
  if [ "${extra[$i]}" = "--memory-mib" ]; then budget="${extra[$((i + 1))]}"; fi
done
[ -n "$budget" ] || budget="(none: this binary has no --memory-mib)"

work="$(mktemp -d /var/tmp/xetmount-memory.XXXXXX)"
mp="$work/mnt"
mkdir -p "$mp"
pid=""
serve_pid=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$pid" ]; then fusermount3 -u -z "$mp" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'cleanup; exit 1' INT TERM
hwm() { awk '/^VmHWM/{printf "%d", $2/1024}' "/proc/$pid/status"; }
# Wait (at most the step limit) until the mount's stats line `$1` is at least `$2`.
wait_stat() {
  local deadline=$((SECONDS + step_secs))
  while [ "$("$bin" stats "$mp" | awk -v k="$1" '$1==k{print $2}')" -lt "$2" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $1 >= $2"; exit 1; }
    kill -0 "$pid" || { echo "the mount died; log:"; tail -20 "$work/mount.log"; exit 1; }
    sleep 0.2
  done
}
unmount() {
  fusermount3 -u "$mp"
  wait "$pid"
  pid=""
}
report() { printf '%-8s %-6s peak RSS %5s MiB   budget --memory-mib %s\n' "$1" "$2" "$3" "$budget"; }

# One store: write, commit, remount, read. $1: label; the rest: the store and its arguments.
phases() {
  local label="$1" cache_n=0
  shift
  local -a args=("$@")
  mount_bg "${args[@]:0:1}" "$mp" "$work/mount.log" "${args[@]:1}" "${extra[@]}"
  dd if=/dev/urandom of="$mp/big" bs=4M count=$((size_mib / 4)) iflag=fullblock status=none
  if [ $((size_mib % 4)) -ne 0 ]; then
    dd if=/dev/urandom bs=1M count=$((size_mib % 4)) status=none >>"$mp/big"
  fi
  report "$label" write "$(hwm)"
  wait_stat files_uploaded 1
  report "$label" commit "$(hwm)"
  unmount
  # Served: a fresh cache directory, so the read fetches everything (the old one, with the
  # staging copy, goes: a 10 GiB run needs the disk).
  if [ "$label" = served ]; then
    cache_n=1
    rm -rf "$work/cache-0"
    args=("${args[@]/$work\/cache-0/$work/cache-$cache_n}")
  fi
  mount_bg "${args[@]:0:1}" "$mp" "$work/mount.log" "${args[@]:1}" "${extra[@]}"
  if [ -w /proc/sys/vm/drop_caches ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  timeout "$step_secs" cat "$mp/big" >/dev/null
  report "$label" read "$(hwm)"
  unmount
}

export HF_TOKEN=bench
echo "file: $size_mib MiB of random bytes; mount arguments: ${extra[*]:-(defaults)}"
phases local "$work/store"
rm -rf "$work/store"

"$bin" serve "$work/srv" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
url=""
for _ in $(seq 1 400); do
  url="$(grep -o 'http://[0-9.:]*' "$work/serve.out" 2>/dev/null | head -1 || true)"
  [ -n "$url" ] && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.05
done
[ -n "$url" ] || { echo "serve did not start"; exit 1; }
curl -sf -X POST -H 'Authorization: Bearer bench' -H 'Content-Type: application/json' \
  -d '{}' "$url/api/buckets/local/mem" >/dev/null
phases served hf://buckets/local/mem --endpoint "$url" --cache-dir "$work/cache-0"
