#!/usr/bin/env bash
# Scale (issue 23): does a mount's cost per operation stay the same as it holds more entries,
# and does its memory stay bounded? For a local store and for a bucket served by
# `xetmount serve` on 127.0.0.1 (SCALE_TARGETS, default "local served"):
#   creates   N files (default 100,000) written through the mount into 100 directories; CPU
#             seconds of the mount (and of `serve`) for the first and the last 10k, and
#             their ratio (target <= 1.2)
#   ops       create+write, rename, open-for-write, open-for-read of SCALE_OPS files: mount CPU
#             per operation on a fresh mount, then again on another fresh mount after a `find`
#             listed every entry, and the ratio (target <= 1.2); `find` cold and warm, wall
#             seconds. Commits wait until unmount (10-minute debounce), so they cost nothing here
#   ls -l     of one directory of SCALE_LS files (default 50,000), cold and warm (target warm
#             <= 0.5 s)
#   rss       peak RSS of the mount (sampled every 0.1 s) writing a SCALE_BIG_GIB file (default
#             4), while it commits, and reading it back cold on a fresh mount (target <= 256 MiB)
#   history   (local target only; SCALE_HISTORY=0 skips it) bench/store_history.sh: sparse-edit
#             cost on a store with >= 20k xorb/shard files against a fresh store
# Mount CPU is read from /proc/PID/stat (user+system), so other load on the machine moves it
# less than wall time. SCALE_PHASES picks phases (default "creates ops ls rss"; history follows
# SCALE_HISTORY). Usage: bench/scale.sh [N]. Needs root for drop_caches (skipped
# otherwise) and, for `served`, scripts/install-tools.sh (the hf venv creates the bucket).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
n="${1:-100000}"
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 20000 ] || { echo "scale.sh: N must be a whole number >= 20000 (got '$n')"; exit 2; }
ops="${SCALE_OPS:-3000}"
ls_n="${SCALE_LS:-50000}"
big_gib="${SCALE_BIG_GIB:-4}"
targets="${SCALE_TARGETS:-local served}"
phases=" ${SCALE_PHASES:-creates ops ls rss} "
phase() { [[ "$phases" == *" $1 "* ]]; }
bin=""
build_bin
hf="$repo/.tools/hf-venv/bin/hf"
work="$(mktemp -d /var/tmp/xetmount-scale.XXXXXX)"
mp="$work/mnt"
mkdir -p "$mp"
pid=""
serve_pid=""
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  if [ -n "$pid" ]; then fusermount3 -u "$mp" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
drop_caches() { sync; [ "$(id -u)" = 0 ] && echo 3 >/proc/sys/vm/drop_caches || true; }
# CPU seconds (user + system) of process $1 so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
calc() { echo "scale=4; $1" | bc -l; }
fmt() { printf '%.3f' "$1"; }

long_debounce=(--flush-debounce-ms 600000 --flush-max-batch-window-ms 600000)
target=""
mount_it() { # [extra mount args]
  drop_caches
  if [ "$target" = local ]; then
    mount_bg "$work/store" "$mp" "$work/mount.log" "$@"
  else
    mount_bg hf://buckets/local/scale "$mp" "$work/mount.log" --endpoint "$url" \
      --cache-dir "$work/cache" --poll-interval-secs 1 "$@"
  fi
}
stop_mount() { "$bin" unmount "$mp" >/dev/null; wait "$pid"; pid=""; }
serve_cpu() { if [ -n "$serve_pid" ]; then cpu "$serve_pid"; else echo 0; fi; }

# Peak RSS (MiB) of process $1 while the rest of the command line runs.
peak_rss() {
  local p="$1" out="$work/rss.txt"
  shift
  : >"$out"
  (while kill -0 "$p" 2>/dev/null; do awk '/VmRSS/{print $2}' "/proc/$p/status" >>"$out" 2>/dev/null || true; sleep 0.1; done) &
  sampler=$!
  "$@"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  sampler=""
  sort -n "$out" | tail -1 | awk '{printf "%d", $1 / 1024}'
}

# Runs one kind of operation on $ops files in directory $1 and prints mount CPU ms per op.
op_cost() { # dir kind
  local d="$mp/$1" kind="$2" c0 c1 i
  c0=$(cpu "$pid")
  case "$kind" in
    create) mkdir -p "$d"; for ((i = 0; i < ops; i++)); do printf 'file %d\n' "$i" >"$d/f$i"; done ;;
    rename) for ((i = 0; i < ops; i++)); do mv "$d/f$i" "$d/g$i"; done ;;
    write) for ((i = 0; i < ops; i++)); do printf 'more\n' >>"$d/g$i"; done ;;
    read) for ((i = 0; i < ops; i++)); do read -r _ <"$d/g$i"; done ;;
  esac
  c1=$(cpu "$pid")
  calc "($c1 - $c0) * 1000 / $ops"
}

run_target() {
  target="$1"
  rm -rf "$work/store" "$work/cache"
  phase creates && run_creates
  phase ops && run_ops
  phase ls && run_wide_ls
  phase rss && [ "$big_gib" -gt 0 ] && run_big_rss
  return 0
}

run_creates() {
  echo "== $target: creating $n files in 100 directories"
  mount_it
  local per_dir=$((n / 100)) block=10000 made=0 c0 s0 first="" first_s="" last="" last_s="" all=""
  c0=$(cpu "$pid"); s0=$(serve_cpu)
  for ((d = 0; d < 100; d++)); do
    mkdir "$mp/d$d"
    for ((i = 0; i < per_dir; i++)); do
      printf '%d/%d\n' "$d" "$i" >"$mp/d$d/f$i"
      made=$((made + 1))
      if ((made % block == 0)); then
        local c1 s1
        c1=$(cpu "$pid"); s1=$(serve_cpu)
        [ -z "$first" ] && { first=$(calc "$c1 - $c0"); first_s=$(calc "$s1 - $s0"); }
        last=$(calc "$c1 - $c0"); last_s=$(calc "$s1 - $s0")
        all+=" $(printf '%.2f' "$last")"
        c0=$c1; s0=$s1
      fi
    done
  done
  local t0 t1
  t0=$(now); stop_mount; t1=$(now)
  result+=("$target creates: mount CPU s per 10k first $(fmt "$first") last $(fmt "$last") ratio $(fmt "$(calc "$last / $first")") (target <= 1.2); serve CPU first $(fmt "$first_s") last $(fmt "$last_s"); unmount commit $(fmt "$(calc "$t1 - $t0")") s")
  result+=("$target creates: mount CPU s for each 10k:$all")
}

run_ops() {
  local t0 t1

  echo "== $target: operation cost, fresh mount vs after a full find"
  mount_it "${long_debounce[@]}"
  local fresh=() after=() k
  for k in create rename write read; do fresh+=("$(op_cost fresh "$k")"); done
  stop_mount
  mount_it "${long_debounce[@]}"
  t0=$(now); find "$mp" >/dev/null; t1=$(now)
  local find_cold find_warm
  find_cold=$(calc "$t1 - $t0")
  t0=$(now); find "$mp" >/dev/null; t1=$(now)
  find_warm=$(calc "$t1 - $t0")
  for k in create rename write read; do after+=("$(op_cost after "$k")"); done
  stop_mount
  local names=(create+write rename open-for-write open-for-read) line="$target ops (mount CPU ms/op, fresh -> after find, ratio):"
  for k in 0 1 2 3; do
    line+=" ${names[$k]} $(fmt "${fresh[$k]}") -> $(fmt "${after[$k]}") ($(fmt "$(calc "${after[$k]} / (${fresh[$k]} + 0.0001)")"))"
  done
  result+=("$line")
  result+=("$target find of $((n + 4 * ops + 100)) entries: cold $(fmt "$find_cold") s, warm $(fmt "$find_warm") s")
}

run_wide_ls() {
  local t0 t1
  echo "== $target: ls -l of $ls_n entries"
  mount_it
  mkdir "$mp/wide"
  for ((i = 0; i < ls_n; i++)); do : >"$mp/wide/e$i"; done
  stop_mount
  mount_it
  t0=$(now); ls -l "$mp/wide" >/dev/null; t1=$(now)
  local ls_cold ls_warm
  ls_cold=$(calc "$t1 - $t0")
  t0=$(now); ls -l "$mp/wide" >/dev/null; t1=$(now)
  ls_warm=$(calc "$t1 - $t0")
  stop_mount
  result+=("$target ls -l of $ls_n entries: cold $(fmt "$ls_cold") s, warm $(fmt "$ls_warm") s (target warm <= 0.5)")
}

run_big_rss() {
  echo "== $target: peak RSS for a $big_gib GiB file"
  mount_it
  local w c r
  w=$(peak_rss "$pid" dd if=/dev/urandom of="$mp/big.bin" bs=4M count=$((big_gib * 256)) status=none)
  c=$(peak_rss "$pid" "$bin" unmount "$mp")
  wait "$pid"; pid=""
  mount_it
  r=$(peak_rss "$pid" dd if="$mp/big.bin" of=/dev/null bs=4M status=none)
  stop_mount
  result+=("$target peak RSS MiB: write $w, commit $c, cold read $r (target <= 256)")
}

result=()
for t in $targets; do
  case "$t" in
    local) run_target local ;;
    served)
      [ -x "$hf" ] || { echo "served: run scripts/install-tools.sh first (it makes the hf venv)"; exit 1; }
      "$bin" serve "$work/srv" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
      serve_pid=$!
      for _ in $(seq 1 200); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
      url="$(grep -o 'http://[0-9.:]*' "$work/serve.out")"
      HF_ENDPOINT="$url" HF_TOKEN=bench HF_HUB_DISABLE_TELEMETRY=1 "$hf" buckets create local/scale >/dev/null
      run_target served
      kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=""
      ;;
    *) echo "scale.sh: unknown target '$t' (local or served)"; exit 2 ;;
  esac
done
if [ "${SCALE_HISTORY:-1}" != 0 ] && [[ " $targets " == *" local "* ]]; then
  echo "== store history"
  result+=("history: $("$repo/bench/store_history.sh" | tail -2 | paste -sd";")")
fi

echo
echo "scale benchmark: N=$n, $ops files per operation kind, $(nproc) cores"
printf '%s\n' "${result[@]}"
