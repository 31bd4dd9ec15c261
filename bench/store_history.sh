#!/usr/bin/env bash
# Store cost against store history (issue 23, item 2): does a local store whose xorb and shard
# files number in the tens of thousands compose and read as cheaply as a fresh one?
#
# Two stores, each holding the same 16 MiB file:
#   fresh:   nothing else.
#   history: first, small files committed one at a time (each fsync is its own upload
#            batch: a xorb and a shard) until the store holds at least MIN-FILES xorb and
#            shard files.
# On each, through a fresh mount: 200 four-byte edits at scattered offsets of the file, each
# fsync'd (one composition and commit each), then 20000 cold 4 KiB reads at scattered offsets.
# It prints the mount process's CPU time (user + system, from /proc/PID/stat) for each phase
# and the history/fresh ratio (target <= 1.5), and checks the content.
# Usage: bench/store_history.sh [MIN-FILES] [BIN]   (default 20000; BIN: default this
#   checkout's release build)
set -euo pipefail
shopt -s inherit_errexit
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
min_files="${1:-20000}"
bin="${2:-}"
build_bin
work="$(mktemp -d /var/tmp/xetmount-history.XXXXXX)"
mp="$work/mnt"
mkdir -p "$mp"
pid=""
cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u "$mp" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

ticks=$(getconf CLK_TCK)
# CPU seconds (user + system) the mount process has used so far.
cpu() { awk -v t="$ticks" '{printf "%.2f", ($14 + $15) / t}' "/proc/$pid/stat"; }
stop_mount() { "$bin" unmount "$mp"; wait "$pid"; pid=""; }
# Xorb and shard files of store $1: xorbs, the CAS's shards, and the upload sessions' shard
# cache.
count_files() {
  local cas="$1/cas/xet"
  local x s c
  x=$(find "$cas/xorbs/xorbs" -maxdepth 1 -name 'default.*' ! -name '*.tagset' 2>/dev/null | wc -l)
  s=$(find "$cas/xorbs/shards" -maxdepth 1 -name '*.mdb' 2>/dev/null | wc -l)
  c=$(find "$cas/shard-cache" -maxdepth 1 -name '*.mdb' 2>/dev/null | wc -l)
  echo "$((x + s + c)) ($x xorbs, $s shards, $c cached shards)"
}

# Edits FILE in COUNT places (4 bytes at a pseudo-random offset each, fsync after each), the
# same places and bytes for the same seed.
edit_py='
import os, random, sys
path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
size = os.path.getsize(path)
fd = os.open(path, os.O_WRONLY)
for _ in range(count):
    os.pwrite(fd, rng.randbytes(4), rng.randrange(size - 4))
    os.fsync(fd)
os.close(fd)
'
# Reads COUNT 4 KiB blocks of FILE at pseudo-random offsets and checks them against WANT.
read_py='
import os, random, sys
path, want, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
size = os.path.getsize(want)
with open(path, "rb", buffering=0) as f, open(want, "rb") as w:
    for _ in range(count):
        off = rng.randrange(size - 4096)
        f.seek(off); w.seek(off)
        if f.read(4096) != w.read(4096):
            sys.exit(f"bytes at {off} differ")
'
# Commits small files one at a time (write, fsync) until the store at $1 holds $2 xorb and
# shard files.
history_py='
import os, sys
mp, store, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
cas = os.path.join(store, "cas/xet")
def count():
    n = 0
    for d, keep in (("xorbs/xorbs", lambda f: f.startswith("default.") and not f.endswith(".tagset")),
                    ("xorbs/shards", lambda f: f.endswith(".mdb")),
                    ("shard-cache", lambda f: f.endswith(".mdb"))):
        try:
            n += sum(1 for f in os.listdir(os.path.join(cas, d)) if keep(f))
        except FileNotFoundError:
            pass
    return n
os.makedirs(os.path.join(mp, "history"), exist_ok=True)
i = 0
while True:
    for _ in range(500):
        p = os.path.join(mp, "history", f"f{i}")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, os.urandom(64) + f"history file {i}\n".encode())
        os.fsync(fd)
        os.close(fd)
        i += 1
    if count() >= want:
        break
print(i)
'

head -c $((16 << 20)) /dev/urandom >"$work/src.bin"
cp "$work/src.bin" "$work/want.bin"
python3 -c "$edit_py" "$work/want.bin" 200 1

run() { # name
  local store="$work/$1"
  mount_bg "$store" "$mp" "$work/mount.log"
  cp "$work/src.bin" "$mp/big.bin"
  sync "$mp/big.bin"
  if [ "$1" = history ]; then
    local t0 n
    t0=$(date +%s)
    n=$(python3 -c "$history_py" "$mp" "$store" "$min_files")
    echo "history: $n small files committed one by one in $(( $(date +%s) - t0 )) s"
  fi
  stop_mount
  echo "$1 store: $(count_files "$store") xorb and shard files"
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  mount_bg "$store" "$mp" "$work/mount.log"
  local c0 c1 c1b c2
  c0=$(cpu)
  python3 -c "$edit_py" "$mp/big.bin" 200 1
  c1=$(cpu)
  stop_mount
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  mount_bg "$store" "$mp" "$work/mount.log"
  c1b=$(cpu)
  python3 -c "$read_py" "$mp/big.bin" "$work/want.bin" 20000
  c2=$(cpu)
  cmp "$mp/big.bin" "$work/want.bin" || { echo "$1: content differs"; exit 1; }
  stop_mount
  eval "edit_$1=$(echo "$c1 - $c0" | bc -l)"
  eval "read_$1=$(echo "$c2 - $c1b" | bc -l)"
  printf '%-8s 200 sparse edits: %6.2f s CPU   20000 cold 4 KiB reads: %6.2f s CPU\n' \
    "$1" "$(eval echo "\$edit_$1")" "$(eval echo "\$read_$1")"
}

run fresh
run history
ratio() { if [ "$(echo "$2 > 0" | bc -l)" = 1 ]; then echo "scale=2; $1 / $2" | bc -l; else echo "n/a"; fi; }
echo "sparse edits: history / fresh = $(ratio "$edit_history" "$edit_fresh") (target <= 1.5)"
echo "cold reads:   history / fresh = $(ratio "$read_history" "$read_fresh") (target <= 1.5)"
