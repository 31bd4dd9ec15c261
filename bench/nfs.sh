#!/usr/bin/env bash
# NFS vs FUSE throughput (issue 5), side by side in one run: a SIZE file written into the
# bucket and read back out, through a FUSE mount (dd) and through the NFSv3 server with the
# libnfs client (nfs-cp). Writes count until committed (FUSE: conv=fsync; NFS: the server's
# shutdown drain is timed separately). Reads run on a fresh server/mount with the page cache
# dropped.
# Usage: bench/nfs.sh [SIZE-MIB]   (default 256; needs root and libnfs-utils)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
size_mib="${1:-256}"
bin=""
build_bin
work="$(mktemp -d /var/tmp/xetmount-nfs.XXXXXX)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u "$work/mnt" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
rate() { echo "scale=0; $size_mib / ($2 - $1)" | bc -l; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
head -c "$((size_mib << 20))" /dev/urandom >"$work/src.bin"
mkdir -p "$work/mnt"

fuse_start() {
  mount_bg "$work/fuse-store" "$work/mnt" "$work/fuse.log"
}
fuse_stop() { "$bin" unmount "$work/mnt"; wait "$pid"; pid=""; }
nfs_start() {
  : >"$work/nfs.out.txt"
  "$bin" serve-nfs "$work/nfs-store" >"$work/nfs.out.txt" 2>>"$work/nfs.log" &
  pid=$!
  for _ in $(seq 1 600); do
    line="$(head -1 "$work/nfs.out.txt")"
    [ -n "$line" ] && break
    sleep 0.05
  done
  port="${line##*:}"
  url="nfs://127.0.0.1/bucket/big.bin?version=3&nfsport=$port&mountport=$port"
}
nfs_stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

sync
fuse_start
t0=$(now); dd if="$work/src.bin" of="$work/mnt/big.bin" bs=1M conv=fsync status=none; t1=$(now)
fuse_w=$(rate "$t0" "$t1")
fuse_stop
drop_caches
fuse_start
t0=$(now); dd if="$work/mnt/big.bin" of="$work/fuse.out" bs=1M status=none; t1=$(now)
fuse_r=$(rate "$t0" "$t1")
fuse_stop

sync
nfs_start
t0=$(now); nfs-cp "$work/src.bin" "$url" >/dev/null; t1=$(now)
nfs_stop
t2=$(now)
nfs_w=$(rate "$t0" "$t1")
nfs_wc=$(rate "$t0" "$t2")
drop_caches
nfs_start
t0=$(now); nfs-cp "$url" "$work/nfs.out" >/dev/null; t1=$(now)
nfs_r=$(rate "$t0" "$t1")
nfs_stop

cmp "$work/src.bin" "$work/fuse.out"
cmp "$work/src.bin" "$work/nfs.out"
echo "$size_mib MiB, $(nproc) cores; content verified both ways"
printf '%-48s %6s MiB/s\n' \
  "FUSE write (dd, until committed)" "$fuse_w" \
  "NFS write (nfs-cp, FILE_SYNC replies)" "$nfs_w" \
  "NFS write incl. commit at server stop" "$nfs_wc" \
  "FUSE cold read (dd)" "$fuse_r" \
  "NFS cold read (nfs-cp)" "$nfs_r"
echo "NFS/FUSE write: $(echo "scale=2; $nfs_wc / $fuse_w" | bc -l)   NFS/FUSE read: $(echo "scale=2; $nfs_r / $fuse_r" | bc -l)"
