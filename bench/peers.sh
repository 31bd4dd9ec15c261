#!/usr/bin/env bash
# Peer benchmark: the same workloads, in one run on this machine, on
#   xetmount (embedded local store), rclone mount (--vfs-cache-mode full, local backend),
#   bindfs (a plain FUSE passthrough) and the raw disk,
# each printed with its ratio to bindfs:
#   untar     tar -xf of /usr/share/doc (a tarball made once) until durable: xetmount until
#             its unmount returns (every file committed), rclone until its backing directory
#             holds every byte (it uploads after close, in the background) and it unmounted,
#             bindfs and the disk until sync returns
#   randread  cold 4 KiB random reads of a SIZE file, fio psync for 15 s (fresh mount, page
#             cache dropped)
#   seqwrite  dd of a SIZE file with conv=fsync, until durable as above
#   seqread   cold sequential read of that file (fresh mount, page cache dropped)
#   reread    warm re-read (second read through the same mount)
# Usage: bench/peers.sh [SIZE-MIB]   (default 1024; root: drops the page cache; installs fio,
# bindfs and rclone from Debian when missing)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
size_mib="${1:-1024}"
runtime="${RANDREAD_SECS:-15}"

need=()
for tool in fio bindfs rclone bc; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
bin=""
build_bin
work="$(mktemp -d /var/tmp/xetmount-peers.XXXXXX)"
pid=""
mp=""

cleanup() {
  if [ -n "$mp" ] && grep -q " $mp " /proc/self/mountinfo; then fusermount3 -u "$mp" || true; fi
  if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
file_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
secs() { echo "$2 - $1" | bc -l; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
wait_mounted() { # mountpoint
  for _ in $(seq 1 600); do
    grep -q " $1 " /proc/self/mountinfo && return 0
    sleep 0.05
  done
  echo "$1 did not mount"; exit 1
}

# start TARGET: make $mp usable; stop TARGET: return once everything written is durable.
start() {
  mp="$work/$1-mnt"
  mkdir -p "$mp" "$work/$1-data"
  case "$1" in
    disk) ;;
    bindfs) bindfs "$work/bindfs-data" "$mp"; wait_mounted "$mp" ;;
    rclone)
      rclone mount "$work/rclone-data" "$mp" --vfs-cache-mode full \
        --cache-dir "$work/rclone-cache" >>"$work/rclone.log" 2>&1 &
      pid=$!
      wait_mounted "$mp" ;;
    xetmount) mount_bg "$work/xetmount-data" "$mp" "$work/xetmount.log" ;;
  esac
}
stop() {
  case "$1" in
    disk) sync ;;
    bindfs) sync; fusermount3 -u "$mp" ;;
    rclone)
      # Written back once the backing directory holds all the bytes written so far.
      for _ in $(seq 1 6000); do
        [ "$(file_bytes "$work/rclone-data")" -ge "$expect_bytes" ] && break
        sleep 0.05
      done
      fusermount3 -u "$mp"; wait "$pid"; pid=""; sync ;;
    xetmount) "$bin" unmount "$mp"; wait "$pid"; pid="" ;;
  esac
}

echo "preparing: a $size_mib MiB random file and a tarball of /usr/share/doc"
head -c "$((size_mib << 20))" /dev/urandom >"$work/src.bin"
# Links dereferenced: rclone mount (Debian 12) can create neither symlinks nor hard links.
tar -ch --hard-dereference -f "$work/doc.tar" -C /usr/share doc 2>/dev/null || true
entries="$(tar -tf "$work/doc.tar" | wc -l)"
bytes=$((size_mib << 20))
# Counted from the listing, not by extracting and deleting a copy: on ext4 without a journal,
# creating files soon after thousands were deleted nearby is several times slower, which would
# penalise whichever target runs first.
doc_bytes="$(tar -tvf "$work/doc.tar" | awk '$1 ~ /^-/ {s += $3} END {print s + 0}')"
expect_bytes=0

declare -A untar randread seqwrite seqread reread
targets=(xetmount rclone bindfs disk)
for t in "${targets[@]}"; do
  echo "== $t"
  start "$t"
  mkdir "$mp/doc"
  cat "$work/doc.tar" >/dev/null
  expect_bytes=$doc_bytes
  t0=$(now); tar -xf "$work/doc.tar" -C "$mp/doc"; stop "$t"; t1=$(now)
  untar[$t]=$(secs "$t0" "$t1")

  start "$t"
  cat "$work/src.bin" >/dev/null
  expect_bytes=$((doc_bytes + bytes))
  t0=$(now); dd if="$work/src.bin" of="$mp/big.bin" bs=4M conv=fsync status=none; stop "$t"; t1=$(now)
  seqwrite[$t]=$(echo "$size_mib / $(secs "$t0" "$t1")" | bc -l)

  drop_caches
  start "$t"
  t0=$(now); dd if="$mp/big.bin" of=/dev/null bs=4M status=none; t1=$(now)
  seqread[$t]=$(echo "$size_mib / $(secs "$t0" "$t1")" | bc -l)
  t0=$(now); dd if="$mp/big.bin" of=/dev/null bs=4M status=none; t1=$(now)
  reread[$t]=$(echo "$size_mib / $(secs "$t0" "$t1")" | bc -l)
  cmp "$mp/big.bin" "$work/src.bin"
  stop "$t"

  drop_caches
  start "$t"
  randread[$t]=$(fio --name=randread --filename="$mp/big.bin" --rw=randread --bs=4k \
    --ioengine=psync --size="$bytes" --time_based --runtime="$runtime" \
    --output-format=terse --terse-version=3 | awk -F';' '{print $8}')
  stop "$t"
done

ratio() { echo "scale=3; $1 / $2" | bc -l; }
echo
echo "peer benchmark, $size_mib MiB file, untar of $entries entries, $runtime s of random reads"
printf '%-34s %10s %10s %10s %10s   %s\n' workload xetmount rclone bindfs disk "xetmount vs bindfs"
printf '%-34s %10.1f %10.1f %10.1f %10.1f   %sx the time\n' "untar until durable (s)" \
  "${untar[xetmount]}" "${untar[rclone]}" "${untar[bindfs]}" "${untar[disk]}" \
  "$(ratio "${untar[xetmount]}" "${untar[bindfs]}")"
printf '%-34s %10.0f %10.0f %10.0f %10.0f   %sx\n' "cold 4 KiB random reads (IOPS)" \
  "${randread[xetmount]}" "${randread[rclone]}" "${randread[bindfs]}" "${randread[disk]}" \
  "$(ratio "${randread[xetmount]}" "${randread[bindfs]}")"
for w in seqwrite seqread reread; do
  declare -n m="$w"
  label="$w (MiB/s)"
  [ "$w" = seqwrite ] && label="seq write until durable (MiB/s)"
  [ "$w" = seqread ] && label="cold seq read (MiB/s)"
  [ "$w" = reread ] && label="warm re-read (MiB/s)"
  printf '%-34s %10.0f %10.0f %10.0f %10.0f   %sx\n' "$label" \
    "${m[xetmount]}" "${m[rclone]}" "${m[bindfs]}" "${m[disk]}" \
    "$(ratio "${m[xetmount]}" "${m[bindfs]}")"
done
echo "warm re-read vs the disk: $(ratio "${reread[xetmount]}" "${reread[disk]}")x"
