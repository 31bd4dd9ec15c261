#!/usr/bin/env bash
# Remote benchmark (issue 12): a bucket hosted by `xetmount serve` on 127.0.0.1, mounted over
# HTTP, measured side by side in one run on this machine:
#   seqread  cold sequential read of a SIZE file through the mount (fresh mount, page cache
#            dropped) against xet-client's own download of the same file from the same server
#            (`hf buckets cp`, huggingface_hub 2.4.0 + hf_xet 1.8.0, fresh client caches)
#   edit     one 4 KiB write into the SIZE file, fsync (= committed), on a fresh mount: bytes
#            downloaded and time, against a full re-upload of the file through the mount
#   untar    tar -xf of /usr/share/doc until durable (unmount returns) onto the served bucket,
#            against the same onto a local store
# Usage: bench/remote.sh [SIZE-MIB]   (default 1024; needs root to drop the page cache, and
# scripts/install-tools.sh for the hf venv)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
size_mib="${1:-1024}"
bin=""
build_bin
hf="$repo/.tools/hf-venv/bin/hf"
[ -x "$hf" ] || { echo "run scripts/install-tools.sh first (it makes the hf venv)"; exit 1; }
work="$(mktemp -d /var/tmp/xetmount-remote.XXXXXX)"
mp="$work/mnt"
mkdir -p "$mp"
pid=""
serve_pid=""
cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u "$mp" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
ratio() { echo "scale=3; $1 / $2" | bc -l; }
stat_of() { awk -v k="$1" '$1==k{print $2}' <<<"$2"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

"$bin" serve "$work/srv" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 1 200); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
url="$(grep -o 'http://[0-9.:]*' "$work/serve.out")"
export HF_ENDPOINT="$url" HF_TOKEN=bench HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1
"$hf" buckets create local/bench >/dev/null
remote=(hf://buckets/local/bench --endpoint "$url" --cache-dir "$work/cache")
mount_remote() { drop_caches; mount_bg "${remote[0]}" "$mp" "$work/mount.log" "${remote[@]:1}"; }
stop_mount() { "$bin" unmount "$mp"; wait "$pid"; pid=""; }
mib=$((1 << 20))
bytes=$((size_mib * mib))

echo "preparing a $size_mib MiB file in the served bucket"
head -c "$bytes" /dev/urandom >"$work/src.bin"
mount_remote
dd if="$work/src.bin" of="$mp/big.bin" bs=4M conv=fsync status=none
stop_mount

# Cold sequential read: through the mount, then with xet-client itself.
mount_remote
t0=$(now); dd if="$mp/big.bin" of=/dev/null bs=4M status=none; t1=$(now)
mount_read=$(secs "$t0" "$t1")
stop_mount
drop_caches
t0=$(now); HF_HOME="$work/hfhome-read" "$hf" buckets cp hf://buckets/local/bench/big.bin "$work/dl.bin" >/dev/null; t1=$(now)
hf_read=$(secs "$t0" "$t1")
cmp "$work/dl.bin" "$work/src.bin"
rm -f "$work/dl.bin"

# One 4 KiB edit, committed, on a fresh mount.
mount_remote
t0=$(now)
python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, os.urandom(4096), 300 * 1024 * 1024 % max(1, os.path.getsize(sys.argv[1]) - 4096))
os.fsync(fd)
os.close(fd)' "$mp/big.bin"
t1=$(now)
edit=$(secs "$t0" "$t1")
s=$("$bin" stats "$mp")
stop_mount
edit_fetched=$(( $(stat_of bytes_fetched "$s") + $(stat_of compose_base_bytes_read "$s") ))
edit_new=$(stat_of bytes_uploaded_new "$s")

# Full re-upload of new content through the mount.
head -c "$bytes" /dev/urandom >"$work/src2.bin"
mount_remote
t0=$(now); dd if="$work/src2.bin" of="$mp/big.bin" bs=4M conv=fsync status=none; t1=$(now)
full=$(secs "$t0" "$t1")
stop_mount

# Untar until durable: served bucket, then a local store.
tar -ch --hard-dereference -f "$work/doc.tar" -C /usr/share doc 2>/dev/null || true
entries="$(tar -tf "$work/doc.tar" | wc -l)"
cat "$work/doc.tar" >/dev/null
mount_remote
mkdir "$mp/doc"
t0=$(now); tar -xf "$work/doc.tar" -C "$mp/doc"; stop_mount; t1=$(now)
untar_remote=$(secs "$t0" "$t1")
drop_caches
mount_bg "$work/local-store" "$mp" "$work/mount-local.log"
mkdir "$mp/doc"
t0=$(now); tar -xf "$work/doc.tar" -C "$mp/doc"; stop_mount; t1=$(now)
untar_local=$(secs "$t0" "$t1")

echo
echo "remote benchmark: xetmount serve on 127.0.0.1, $size_mib MiB file, untar of $entries entries"
printf '%-46s %10s %10s   %s\n' workload xetmount reference ratio
printf '%-46s %10.0f %10.0f   %s (target >= 0.7)\n' "cold seq read, MiB/s (reference: hf cp)" \
  "$(echo "$size_mib / $mount_read" | bc -l)" "$(echo "$size_mib / $hf_read" | bc -l)" \
  "$(ratio "$hf_read" "$mount_read")"
printf '%-46s %10.3f %10.3f   %s (target <= 0.1)\n' "4 KiB edit until committed, s (ref: full upload)" \
  "$edit" "$full" "$(ratio "$edit" "$full")"
printf '%-46s %10s %10s   (target <= 2048 KiB downloaded)\n' "4 KiB edit: KiB downloaded / KiB stored" \
  "$((edit_fetched / 1024))" "$((edit_new / 1024))"
printf '%-46s %10.1f %10.1f   %s (target <= 3)\n' "untar until durable, s (ref: local store)" \
  "$untar_remote" "$untar_local" "$(ratio "$untar_remote" "$untar_local")"
