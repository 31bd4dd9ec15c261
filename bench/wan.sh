#!/usr/bin/env bash
# Across a slow network (issue 21): `xetmount serve` (full) and `xetmount serve --hub-only`
# (plain, what a Hugging Face bucket offers) on 127.0.0.1, each behind `xetmount-delay-proxy`
# delaying every byte DELAY ms each way; `--public-url` names the proxy, so CAS fetches and
# uploads cross it too. For each delay, through the proxy, cold (fresh --cache-dir per mount,
# page cache dropped when root):
#   find     `find` of /usr/share/doc (untarred into the bucket beforehand)
#   ls -l    `ls -l` of a directory of WAN_FILES files
#   seqread  cold sequential read of a WAN_SIZE_MIB file, MiB/s, and `hf buckets cp` of the
#            same file through the same proxy (huggingface_hub 2.4.0 + hf_xet 1.8.0)
#   fio      cold 4 KiB random reads of that file, psync, 1 job and 4 jobs, IOPS
#   first    first byte of a cold 1 MiB file
#   untar    tar -xf of /usr/share/doc until durable (the unmount returned): whether the
#            unmount committed everything, and the server's requests per route meanwhile
#   edit     one 4 KiB write into the big file until fsync returns
# The tree is archived with symlinks followed (a plain bucket holds none) and extracted without
# owners or modes (a plain bucket refuses chmod). Setup (uploads) goes through the proxy at
# 0 ms; then the proxy restarts on the same port with each delay in turn.
# Usage: bench/wan.sh [DELAYS-MS...]   (default: 0 10 25)
# Environment: WAN_SIZE_MIB (256), WAN_FILES (1000), WAN_FIO_SECS (10 per fio run),
# WAN_STEP_SECS (300: the limit on any one step), WAN_BANDWIDTH (bytes/s per direction, 0: none),
# WAN_MOUNT_ARGS (extra mount arguments, e.g. "--memory-mib 320").
# Needs scripts/install-tools.sh (the hf venv); installs fio with apt-get if missing and root.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
delays=("$@")
[ ${#delays[@]} -gt 0 ] || delays=(0 10 25)
for d in "${delays[@]}"; do
  [[ "$d" =~ ^[0-9]+$ ]] || { echo "wan.sh: delay '$d' is not a whole number of milliseconds"; exit 2; }
done
size_mib="${WAN_SIZE_MIB:-256}"
nfiles="${WAN_FILES:-1000}"
fio_secs="${WAN_FIO_SECS:-10}"
step_secs="${WAN_STEP_SECS:-300}"
bandwidth="${WAN_BANDWIDTH:-0}"
read -r -a mount_args <<<"${WAN_MOUNT_ARGS:-}"
bin=""
build_bin --bin xetmount-delay-proxy
proxy_bin="$repo/target/release/xetmount-delay-proxy"
hf="$repo/.tools/hf-venv/bin/hf"
[ -x "$hf" ] || { echo "run scripts/install-tools.sh first (it makes the hf venv)"; exit 1; }
if ! command -v fio >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq fio >/dev/null 2>&1 || true; fi
  command -v fio >/dev/null || { echo "fio is needed for the random reads: apt-get install fio"; exit 1; }
fi

work="$(mktemp -d /var/tmp/xetmount-wan.XXXXXX)"
mp="$work/mnt"
mkdir -p "$mp"
pid=""
declare -A serve_pid proxy_pid proxy_port direct
cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u -z "$mp" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  for p in "${proxy_pid[@]}" "${serve_pid[@]}"; do
    kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# (Re)start kind $1's proxy with a one-way delay of $2 ms, on the port it had before.
start_proxy() {
  local k="$1" delay="$2"
  if [ -n "${proxy_pid[$k]:-}" ]; then kill "${proxy_pid[$k]}"; wait "${proxy_pid[$k]}" 2>/dev/null || true; fi
  # Gone before the new proxy starts, so `announced` never reads the old one's address.
  rm -f "$work/proxy-$k.out" "$work/proxy-$k.log"
  "$proxy_bin" --listen "127.0.0.1:${proxy_port[$k]}" --upstream "${direct[$k]#http://}" \
    --delay-ms "$delay" --bandwidth "$bandwidth" >"$work/proxy-$k.out" 2>"$work/proxy-$k.log" &
  proxy_pid[$k]=$!
  announced "$work/proxy-$k.out" "${proxy_pid[$k]}" >/dev/null
}

start_kind() { # kind extra-serve-args...
  local k="$1"
  shift
  local sport
  sport="$(free_port)"
  proxy_port[$k]="$(free_port)"
  direct[$k]="http://127.0.0.1:$sport"
  start_proxy "$k" 0
  "$bin" serve "$work/srv-$k" --listen "127.0.0.1:$sport" --public-url "http://127.0.0.1:${proxy_port[$k]}" "$@" \
    >"$work/serve-$k.out" 2>"$work/serve-$k.log" &
  serve_pid[$k]=$!
  announced "$work/serve-$k.out" "${serve_pid[$k]}" >/dev/null
  # The server answers on its own port once it printed its address.
  for _ in $(seq 1 200); do curl -sf "${direct[$k]}/v1/xetmount/metrics" >/dev/null && break; sleep 0.05; done
}

export NO_COLOR=1 HF_TOKEN=bench HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_UPDATE_CHECK=1
url_of() { echo "http://127.0.0.1:${proxy_port[$1]}"; }
ncache=0
mount_kind() { # kind: a fresh, cold mount of kind's bucket through its proxy
  ncache=$((ncache + 1))
  drop_caches
  : >"$work/mount.log"
  mount_bg hf://buckets/local/bench "$mp" "$work/mount.log" --endpoint "$(url_of "$1")" --cache-dir "$work/cache-$ncache" \
    ${mount_args[@]+"${mount_args[@]}"}
}
# Unmount, bounded by the step limit; sets `mount_rc` to the mount's exit status.
stop_mount() {
  timeout "$step_secs" "$bin" unmount "$mp" >/dev/null 2>&1 || fusermount3 -u -z "$mp" 2>/dev/null || true
  local deadline=$((SECONDS + step_secs))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  mount_rc=0
  wait "$pid" || mount_rc=$?
  pid=""
  rm -rf "$work/cache-$ncache"
}
# Run a command under the step limit; sets `took` (seconds) or "fail".
timed() {
  local t0 rc=0
  t0=$(now)
  timeout "$step_secs" "$@" || rc=$?
  if [ "$rc" = 0 ]; then took=$(since "$t0"); else took="fail"; echo "step failed (exit $rc): $*" >&2; fi
}
declare -A res
mib=$((1 << 20))
bytes=$((size_mib * mib))

echo "preparing: /usr/share/doc ($(find /usr/share/doc | wc -l) entries), $nfiles files, a $size_mib MiB file, on full and plain"
tar -ch --hard-dereference -f "$work/doc.tar" -C /usr/share doc 2>/dev/null || true
head -c "$bytes" /dev/urandom >"$work/big.src"
start_kind full
start_kind plain --hub-only
for k in full plain; do
  HF_ENDPOINT="$(url_of $k)" HF_HOME="$work/hfhome-setup" "$hf" buckets create local/bench >/dev/null
  mount_kind "$k"
  mkdir "$mp/tree" "$mp/many"
  tar --no-same-owner --no-same-permissions -xf "$work/doc.tar" -C "$mp/tree"
  (cd "$mp/many" && seq -f 'f%04g' 1 "$nfiles" | xargs -n 200 touch)
  head -c 1048576 /dev/urandom >"$mp/first.bin"
  dd if="$work/big.src" of="$mp/big.bin" bs=4M status=none
  stop_mount
  [ "$mount_rc" = 0 ] || { echo "setup of $k was not committed: $(tail -5 "$work/mount.log")"; exit 1; }
done
tree_entries=""

fio_iops() { # jobs
  timeout "$step_secs" fio --name=rand --filename="$mp/big.bin" --readonly --rw=randread --bs=4k --ioengine=psync \
    --size="$bytes" --numjobs="$1" --group_reporting --time_based --runtime="$fio_secs" \
    --output-format=json --output="$work/fio.json" >/dev/null 2>&1 || return 1
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]))' "$work/fio.json"
}
metrics() { route_counts "${direct[$1]}"; }

for delay in "${delays[@]}"; do
  for k in full plain; do
    echo "measuring $k at $delay ms each way" >&2
    start_proxy "$k" "$delay"
    u="$(url_of $k)"

    mount_kind "$k"
    timed bash -c "find '$mp/tree' | wc -l >'$work/count'"
    res[$k,$delay,find]=$took
    tree_entries="$(cat "$work/count")"
    stop_mount

    mount_kind "$k"
    timed bash -c "ls -l '$mp/many' >/dev/null"
    res[$k,$delay,ls]=$took
    stop_mount

    mount_kind "$k"
    timed dd if="$mp/big.bin" of=/dev/null bs=4M status=none
    res[$k,$delay,seq]=$([ "$took" = fail ] && echo fail || awk -v s="$size_mib" -v t="$took" 'BEGIN{printf "%.0f", s/t}')
    stop_mount
    drop_caches
    timed env HF_ENDPOINT="$u" HF_HOME="$work/hfhome-$k-$delay" "$hf" buckets cp hf://buckets/local/bench/big.bin "$work/dl.bin" >/dev/null 2>"$work/hfcp.log"
    [ "$took" != fail ] || cat "$work/hfcp.log" >&2
    if [ "$took" != fail ] && [ "$(stat -c %s "$work/dl.bin")" = "$bytes" ]; then
      res[$k,$delay,hfcp]=$(awk -v s="$size_mib" -v t="$took" 'BEGIN{printf "%.0f", s/t}')
    else
      res[$k,$delay,hfcp]=fail
    fi
    rm -rf "$work/dl.bin" "$work/hfhome-$k-$delay"

    for jobs in 1 4; do
      mount_kind "$k"
      res[$k,$delay,fio$jobs]=$(fio_iops "$jobs" || echo fail)
      stop_mount
    done

    mount_kind "$k"
    timed head -c 1 "$mp/first.bin" >/dev/null
    res[$k,$delay,first]=$took
    stop_mount

    mount_kind "$k"
    mkdir "$mp/doc-$delay"
    metrics "$k" >"$work/metrics-before"
    t0=$(now)
    timeout "$step_secs" tar --no-same-owner --no-same-permissions -xf "$work/doc.tar" -C "$mp/doc-$delay" || echo "untar failed or timed out" >&2
    res[$k,$delay,tar]=$(since "$t0")
    stop_mount
    res[$k,$delay,untar]=$(since "$t0")
    metrics "$k" >"$work/metrics-after"
    if [ "$mount_rc" = 0 ]; then
      res[$k,$delay,committed]="all"
    else
      left=$(grep -o '[0-9]* pending change(s) could not be committed' "$work/mount.log" | grep -o '^[0-9]*' || true)
      res[$k,$delay,committed]="${left:-?} left (exit $mount_rc)"
    fi
    # Requests per route during the untar and its unmount: after minus before.
    res[$k,$delay,routes]=$(awk 'NR==FNR{b[$1" "$2]=$3; next} $1!="fetch_bytes" && $1" "$2!="GET /v1/xetmount/metrics" {n=$3-b[$1" "$2]; if (n>0) printf "    %6d  %s %s\n", n, $1, $2}' \
      "$work/metrics-before" "$work/metrics-after" | sort -rn)

    mount_kind "$k"
    timed python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, os.urandom(4096), (os.path.getsize(sys.argv[1]) // 2) & ~4095)
os.fsync(fd)
os.close(fd)' "$mp/big.bin"
    res[$k,$delay,edit]=$took
    stop_mount
  done
done

bw=$([ "$bandwidth" = 0 ] && echo "no bandwidth cap" || echo "capped at $bandwidth B/s each way")
echo
echo "WAN benchmark: xetmount serve (full) and serve --hub-only (plain) behind xetmount-delay-proxy, $bw;"
echo "$tree_entries-entry tree, $nfiles files, $size_mib MiB file, fio ${fio_secs}s per run, $(nproc) cores, cold caches"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a/b; else print "-" }'; }
for delay in "${delays[@]}"; do
  echo
  printf '| at %s ms each way | xetmount full | xetmount plain |\n|---|---|---|\n' "$delay"
  row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3"; }
  r() { echo "${res[$1,$delay,$2]}"; }
  row "\`find\` of the $tree_entries-entry tree, s" "$(r full find)" "$(r plain find)"
  row "\`ls -l\` of $nfiles files, s" "$(r full ls)" "$(r plain ls)"
  row "cold sequential read of $size_mib MiB, MiB/s" "$(r full seq)" "$(r plain seq)"
  row "\`hf buckets cp\` of the same file, MiB/s" "$(r full hfcp)" "$(r plain hfcp)"
  row "cold 4 KiB random reads, fio psync, 1 job / 4 jobs, IOPS" "$(r full fio1) / $(r full fio4)" "$(r plain fio1) / $(r plain fio4)"
  row "first byte of a cold file, s" "$(r full first)" "$(r plain first)"
  row "\`tar -xf\` of the tree until durable (unmount done), s" "$(r full untar)" "$(r plain untar)"
  row "  of which \`tar\` itself, s" "$(r full tar)" "$(r plain tar)"
  row "  committed by the unmount" "$(r full committed)" "$(r plain committed)"
  row "4 KiB edit of the $size_mib MiB file until \`fsync\` returns, s" "$(r full edit)" "$(r plain edit)"
  row "ratio: cold read / \`hf buckets cp\`" "$(ratio "$(r full seq)" "$(r full hfcp)")" "$(ratio "$(r plain seq)" "$(r plain hfcp)")"
  if [ "$delay" != "${delays[0]}" ]; then
    row "ratio: untar / untar at ${delays[0]} ms" "$(ratio "$(r full untar)" "${res[full,${delays[0]},untar]}")" \
      "$(ratio "$(r plain untar)" "${res[plain,${delays[0]},untar]}")"
  fi
done
for delay in "${delays[@]}"; do
  echo
  echo "server requests per route during the plain untar at $delay ms (tar and unmount):"
  echo "${res[plain,$delay,routes]}"
done
