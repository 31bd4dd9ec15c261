#!/usr/bin/env bash
# Sparse-write benchmark (issue 3), measured side by side in one run on this machine.
# A SIZE file is committed to the store; then, each on a cold mount (fresh process, page cache
# dropped):
#   fresh:  one 4 KiB write into the fresh, unfragmented file, fsync (= committed)
#   delta:  modify 1% of its bytes in 4 KiB writes at scattered offsets, fsync
#   after:  one more 4 KiB write, into the file the delta fragmented, fsync
#   full:   rewrite the whole file through the mount (dd conv=fsync)
# It reports time to committed, bytes fetched from the store, bytes of base re-read by the
# composition, and new bytes stored, from `xetmount stats`, and checks the content each time.
# Usage: bench/sparse.sh [SIZE-MIB]   (default 1024; needs root to drop the page cache)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
size_mib="${1:-1024}"
bin=""
build_bin
work="$(mktemp -d /var/tmp/xetmount-sparse.XXXXXX)"
mp="$work/mnt"
mkdir -p "$mp"
pid=""
cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u "$mp" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
start_mount() {
  sync; echo 3 > /proc/sys/vm/drop_caches
  mount_bg "$work/store" "$mp" "$work/mount.log"
}
stop_mount() { "$bin" unmount "$mp"; wait "$pid"; pid=""; }
stat_of() { awk -v k="$1" '$1==k{print $2}' <<<"$2"; }

# Writes 4 KiB blocks of fresh random bytes at COUNT pseudo-random 4 KiB-aligned offsets of
# FILE (same offsets and bytes for the same seed), then fsyncs. Prints the seconds taken.
patch_py='
import os, random, sys, time
path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
size = os.path.getsize(path)
t = time.monotonic()
fd = os.open(path, os.O_WRONLY)
for _ in range(count):
    off = rng.randrange(size // 4096) * 4096
    os.pwrite(fd, rng.randbytes(4096), off)
os.fsync(fd)
os.close(fd)
print(f"{time.monotonic() - t:.3f}")
'
mib=$((1 << 20))
blocks_1pct=$(( (size_mib * mib / 100) / 4096 ))

echo "preparing a $size_mib MiB file in the store"
head -c "$((size_mib * mib))" /dev/urandom >"$work/src.bin"
start_mount
dd if="$work/src.bin" of="$mp/ckpt.bin" bs=4M conv=fsync status=none
stop_mount

run_patch() { # name count seed
  cp "$work/want.bin" "$work/want.next" 2>/dev/null || cp "$work/src.bin" "$work/want.next"
  python3 -c "$patch_py" "$work/want.next" "$2" "$3" >/dev/null
  mv "$work/want.next" "$work/want.bin"
  start_mount
  local t; t=$(python3 -c "$patch_py" "$mp/ckpt.bin" "$2" "$3")
  local s; s=$("$bin" stats "$mp")
  cmp "$mp/ckpt.bin" "$work/want.bin" || { echo "$1: content differs"; exit 1; }
  stop_mount
  printf '%-38s %7ss  fetched %5s KiB  base re-read %7s KiB  new stored %7s KiB  terms %s\n' \
    "$1" "$t" "$(( $(stat_of bytes_fetched "$s") / 1024 ))" "$(( $(stat_of compose_base_bytes_read "$s") / 1024 ))" \
    "$(( $(stat_of bytes_uploaded_new "$s") / 1024 ))" "$(stat_of compose_terms_last "$s")"
  eval "time_$4=$t"
  eval "new_$4=$(stat_of bytes_uploaded_new "$s")"
  eval "fetched_$4=$(stat_of bytes_fetched "$s")"
  eval "rounded_$4=$(stat_of compose_dirty_chunk_bytes "$s")"
  eval "reread_$4=$(stat_of compose_base_bytes_read "$s")"
}

echo
run_patch "one 4 KiB write, fresh file" 1 2 single
run_patch "1% in 4 KiB writes ($blocks_1pct writes)" "$blocks_1pct" 1 delta
run_patch "one 4 KiB write after the delta" 1 3 after

# Full rewrite of the same content through a cold mount.
head -c "$((size_mib * mib))" /dev/urandom >"$work/want.bin"
start_mount
t0=$(date +%s.%N)
dd if="$work/want.bin" of="$mp/ckpt.bin" bs=4M conv=fsync status=none
t1=$(date +%s.%N)
s=$("$bin" stats "$mp")
stop_mount
time_full=$(echo "$t1 - $t0" | bc -l)
printf '%-34s %8.3fs  new stored %8s KiB\n' "full rewrite" "$time_full" "$(( $(stat_of bytes_uploaded_new "$s") / 1024 ))"

echo
echo "single edit, fresh file: base re-read $reread_single bytes (target <= 1 MiB); new stored $new_single / chunk-rounded dirty $rounded_single = $(echo "scale=2; $new_single / $rounded_single" | bc -l) (target <= 2); time vs full rewrite $(echo "scale=3; $time_single / $time_full" | bc -l) (target <= 0.05)"
echo "1% delta: fetched $fetched_delta bytes (target 0); base re-read / chunk-rounded dirty = $(echo "scale=2; $reread_delta / $rounded_delta" | bc -l) (target <= 4); new stored / chunk-rounded dirty = $(echo "scale=2; $new_delta / $rounded_delta" | bc -l) (target <= 2); time vs full rewrite $(echo "scale=3; $time_delta / $time_full" | bc -l) (target <= 0.33)"
echo "single edit after the delta: base re-read $reread_after bytes; time vs full rewrite $(echo "scale=3; $time_after / $time_full" | bc -l)"
