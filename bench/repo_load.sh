#!/usr/bin/env bash
# The model-loading pattern across a slow network (issue 24): a loader opens a safetensors
# file, reads its header and then only the tensors it needs. `xetmount serve` on 127.0.0.1
# behind `xetmount-delay-proxy` delaying every byte DELAY ms each way (`--public-url` names the
# proxy, so CAS fetches cross it too) hosts the model repo local/model with one safetensors
# file, model.safetensors, of REPO_SIZE_MIB MiB of random tensor data (REPO_TENSORS F32
# tensors of equal size, laid out contiguously), uploaded with huggingface_hub 2.4.0 + hf_xet.
# For each delay, cold (fresh --cache-dir per mount, fresh HF_HOME per download, page cache
# dropped when root), the same reads: the 8-byte header length, the JSON header, then every
# 4th tensor (a quarter of them, in file order), each with one pread at its offset:
#   mount     `xetmount mount hf://local/model` and the reads through it; timed from open to
#             the last byte (the mount's start, until it is live, is shown apart), with the
#             bytes the mount fetched (`bytes_fetched` of `xetmount stats`)
#   download  `hf_hub_download` of the whole file into a fresh HF_HOME, then the reads from
#             the downloaded file; timed from the call to the last byte
# Both are timed inside one Python process each, after the imports. The reads through the
# mount, from the download and from the source file must hash alike (sha256 of the bytes
# read, in order), or the bench fails. The mount should win by roughly the fraction of the
# file it does not read (about 4x at a quarter of the tensors, more if its cold reads are
# faster than hf_xet's): measured here, not asserted.
# Setup (the upload) goes through the proxy at 0 ms; then the proxy restarts on the same port
# with each delay in turn.
# Usage: bench/repo_load.sh [DELAYS-MS...]   (default: 0 25)
# Environment: REPO_SIZE_MIB (1024), REPO_TENSORS (128), REPO_STEP_SECS (300: the limit on any
# one step), REPO_BANDWIDTH (bytes/s per direction, 0: none), REPO_MOUNT_ARGS (extra mount
# arguments), XETMOUNT_BIN (a built xetmount to measure instead of building this checkout's;
# the proxy is then XETMOUNT_PROXY_BIN, else the xetmount-delay-proxy next to it).
# Needs scripts/install-tools.sh (the hf venv).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
delays=("$@")
[ ${#delays[@]} -gt 0 ] || delays=(0 25)
for d in "${delays[@]}"; do
  [[ "$d" =~ ^[0-9]+$ ]] || { echo "repo_load.sh: delay '$d' is not a whole number of milliseconds"; exit 2; }
done
size_mib="${REPO_SIZE_MIB:-1024}"
ntensors="${REPO_TENSORS:-128}"
step_secs="${REPO_STEP_SECS:-300}"
bandwidth="${REPO_BANDWIDTH:-0}"
[[ "$size_mib" =~ ^[1-9][0-9]*$ ]] || { echo "repo_load.sh: REPO_SIZE_MIB '$size_mib' is not a positive whole number"; exit 2; }
[[ "$ntensors" =~ ^[1-9][0-9]*$ ]] || { echo "repo_load.sh: REPO_TENSORS '$ntensors' is not a positive whole number"; exit 2; }
read -r -a mount_args <<<"${REPO_MOUNT_ARGS:-}"
bin="${XETMOUNT_BIN:-}"
if [ -n "$bin" ]; then
  proxy_bin="${XETMOUNT_PROXY_BIN:-$(dirname "$bin")/xetmount-delay-proxy}"
else
  build_bin --bin xetmount-delay-proxy
  proxy_bin="$repo/target/release/xetmount-delay-proxy"
fi
[ -x "$bin" ] || { echo "repo_load.sh: no xetmount binary at $bin"; exit 1; }
[ -x "$proxy_bin" ] || { echo "repo_load.sh: no xetmount-delay-proxy at $proxy_bin (set XETMOUNT_PROXY_BIN)"; exit 1; }
py="$repo/.tools/hf-venv/bin/python"
[ -x "$py" ] || { echo "run scripts/install-tools.sh first (it makes the hf venv)"; exit 1; }

work="$(mktemp -d /var/tmp/xetmount-repo-load.XXXXXX)"
mp="$work/mnt"
mkdir -p "$mp"
pid="" serve_pid="" proxy_pid="" step="setup"
cleanup() {
  local rc=$?
  # A step that failed without a word (a mount or server that exited silently): say where.
  if [ "$rc" != 0 ]; then
    echo "repo_load.sh: exit $rc during: $step" >&2
    for f in mount.log serve.log proxy.log download.log; do
      [ -s "$work/$f" ] && { echo "--- last lines of $f:" >&2; tail -5 "$work/$f" >&2; }
    done
  fi
  if [ -n "$pid" ]; then fusermount3 -u -z "$mp" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  for p in "$proxy_pid" "$serve_pid"; do
    [ -n "$p" ] || continue
    kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

serve_port="$(free_port)"
proxy_port="$(free_port)"
direct="http://127.0.0.1:$serve_port"
url="http://127.0.0.1:$proxy_port"
# (Re)start the proxy with a one-way delay of $1 ms, on the port it had before.
start_proxy() {
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; fi
  # Gone before the new proxy starts: `announced` must not read the old one's address (the
  # shell truncates the file only once the new process runs, and then the address vanishes
  # under `announced`'s second grep, which fails the script without a word).
  rm -f "$work/proxy.out" "$work/proxy.log"
  "$proxy_bin" --listen "127.0.0.1:$proxy_port" --upstream "${direct#http://}" \
    --delay-ms "$1" --bandwidth "$bandwidth" >"$work/proxy.out" 2>"$work/proxy.log" &
  proxy_pid=$!
  announced "$work/proxy.out" "$proxy_pid" >/dev/null
}

export NO_COLOR=1 HF_TOKEN=bench HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_UPDATE_CHECK=1
export HF_ENDPOINT="$url"
ncache=0
mount_repo() { # a fresh, cold mount of the repo through the proxy; sets `up` (s until live)
  ncache=$((ncache + 1))
  drop_caches
  : >"$work/mount.log"
  local t0
  t0=$(now)
  mount_bg hf://local/model "$mp" "$work/mount.log" --endpoint "$url" --cache-dir "$work/cache-$ncache" \
    ${mount_args[@]+"${mount_args[@]}"}
  up=$(since "$t0")
}
# Unmount, bounded by the step limit.
stop_mount() {
  timeout "$step_secs" "$bin" unmount "$mp" >/dev/null 2>&1 || fusermount3 -u -z "$mp" 2>/dev/null || true
  local deadline=$((SECONDS + step_secs))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  wait "$pid" || true
  pid=""
  rm -rf "$work/cache-$ncache"
}
metrics() { route_counts "$direct"; }

# gen: the safetensors file; load: the loader's reads (prints "seconds bytes sha256");
# download: hf_hub_download then the same reads (prints "seconds download-seconds bytes sha256");
# upload: create local/model and upload the file (prints its xet hash).
cat >"$work/st.py" <<'EOF'
import hashlib, json, os, struct, sys, time

def gen(path, size_mib, ntensors):
    # Equal F32 tensors of [rows, 1024]; whatever does not divide evenly goes to the last one.
    data = size_mib << 20
    per = (data // ntensors) // 4096 * 4096
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for i in range(ntensors):
        n = per if i < ntensors - 1 else data - off
        header[f"model.layers.{i}.weight"] = {"dtype": "F32", "shape": [n // 4096, 1024], "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = data
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n

def pread_exact(fd, n, off):
    out = os.pread(fd, n, off)
    while len(out) < n:  # a pread may return less than asked; only EOF is an error
        more = os.pread(fd, n - len(out), off + len(out))
        if not more:
            sys.exit(f"unexpected end of file at {off + len(out)}")
        out += more
    return out

def load(path):
    """The loader: header length, header, then every 4th tensor in file order."""
    h, total = hashlib.sha256(), 0
    fd = os.open(path, os.O_RDONLY)
    try:
        head = pread_exact(fd, 8, 0)
        (n,) = struct.unpack("<Q", head)
        raw = pread_exact(fd, n, 8)
        h.update(head + raw)
        total += 8 + n
        tensors = sorted((v["data_offsets"] for k, v in json.loads(raw).items() if k != "__metadata__"))
        for a, b in tensors[::4]:
            h.update(pread_exact(fd, b - a, 8 + n + a))
            total += b - a
    finally:
        os.close(fd)
    return total, h.hexdigest()

cmd = sys.argv[1]
if cmd == "gen":
    gen(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
elif cmd == "load":
    t0 = time.perf_counter()
    total, digest = load(sys.argv[2])
    print(f"{time.perf_counter() - t0:.3f} {total} {digest}")
elif cmd == "upload":
    from huggingface_hub import HfApi
    api = HfApi()
    api.create_repo("local/model")
    api.upload_file(path_or_fileobj=sys.argv[2], path_in_repo="model.safetensors", repo_id="local/model")
    (info,) = api.get_paths_info("local/model", ["model.safetensors"])
    if not info.xet_hash:
        sys.exit(f"model.safetensors was not stored as a xet file: {info!r}")
    print(info.xet_hash)
elif cmd == "download":
    from huggingface_hub import hf_hub_download
    t0 = time.perf_counter()
    path = hf_hub_download(repo_id="local/model", filename="model.safetensors")
    t1 = time.perf_counter()
    total, digest = load(path)
    print(f"{time.perf_counter() - t0:.3f} {t1 - t0:.3f} {total} {digest}")
else:
    sys.exit(f"unknown command {cmd}")
EOF

echo "preparing: local/model with a $size_mib MiB model.safetensors ($ntensors tensors)" >&2
step="generating the file"
"$py" "$work/st.py" gen "$work/model.safetensors" "$size_mib" "$ntensors"
file_bytes=$(stat -c %s "$work/model.safetensors")
read -r _ want_bytes want_hash < <("$py" "$work/st.py" load "$work/model.safetensors")
step="starting the proxy and the server"
start_proxy 0
"$bin" serve "$work/srv" --listen "127.0.0.1:$serve_port" --public-url "$url" >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
announced "$work/serve.out" "$serve_pid" >/dev/null
# The server answers on its own port once it printed its address.
for _ in $(seq 1 200); do curl -sf "$direct/v1/xetmount/metrics" >/dev/null && break; sleep 0.05; done
step="uploading"
t0=$(now)
HF_HOME="$work/hfhome-setup" timeout "$step_secs" "$py" "$work/st.py" upload "$work/model.safetensors" >/dev/null
echo "uploaded in $(since "$t0") s" >&2
rm -rf "$work/hfhome-setup"

declare -A res
failed=""
mib=$((1 << 20))
for delay in "${delays[@]}"; do
  echo "measuring at $delay ms each way" >&2
  step="restarting the proxy at $delay ms"
  start_proxy "$delay"

  step="mount and reads at $delay ms"
  mount_repo
  res[$delay,up]=$up
  metrics >"$work/metrics-before"
  if out=$(timeout "$step_secs" "$py" "$work/st.py" load "$mp/model.safetensors"); then
    read -r "res[$delay,mount]" got_bytes got_hash <<<"$out"
    res[$delay,fetched]=$("$bin" stats "$mp" | awk '$1=="bytes_fetched"{print $2}')
    if [ "$got_bytes" != "$want_bytes" ] || [ "$got_hash" != "$want_hash" ]; then
      echo "mount at $delay ms: read $got_bytes bytes hashing $got_hash, the source gives $want_bytes bytes hashing $want_hash" >&2
      failed=1
    fi
  else
    echo "mount at $delay ms: the reads failed or timed out; $(tail -5 "$work/mount.log")" >&2
    res[$delay,mount]=fail res[$delay,fetched]="-" failed=1
  fi
  metrics >"$work/metrics-after"
  stop_mount
  # Requests per route for the mount's reads: after minus before.
  res[$delay,routes]=$(awk 'NR==FNR{b[$1" "$2]=$3; next} $1!="fetch_bytes" && $1" "$2!="GET /v1/xetmount/metrics" {n=$3-b[$1" "$2]; if (n>0) printf "    %6d  %s %s\n", n, $1, $2}' \
    "$work/metrics-before" "$work/metrics-after" | sort -rn)

  step="download and reads at $delay ms"
  drop_caches
  if out=$(HF_HOME="$work/hfhome-$delay" timeout "$step_secs" "$py" "$work/st.py" download 2>"$work/download.log"); then
    read -r "res[$delay,dl]" "res[$delay,dlonly]" got_bytes got_hash <<<"$out"
    if [ "$got_bytes" != "$want_bytes" ] || [ "$got_hash" != "$want_hash" ]; then
      echo "download at $delay ms: read $got_bytes bytes hashing $got_hash, the source gives $want_bytes bytes hashing $want_hash" >&2
      failed=1
    fi
  else
    echo "download at $delay ms failed or timed out: $(tail -5 "$work/download.log")" >&2
    res[$delay,dl]=fail res[$delay,dlonly]=fail failed=1
  fi
  rm -rf "$work/hfhome-$delay"
done

step="printing the results"
bw=$([ "$bandwidth" = 0 ] && echo "no bandwidth cap" || echo "capped at $bandwidth B/s each way")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a/b; else print "-" }'; }
in_mib() { awk -v b="$1" -v m="$mib" 'BEGIN{ if (b ~ /^[0-9]+$/) printf "%.1f", b/m; else print "-" }'; }
echo
echo "Model loading: xetmount serve behind xetmount-delay-proxy, $bw; model.safetensors of"
echo "$(in_mib "$file_bytes") MiB, $ntensors tensors; the loader reads the header and every 4th tensor:"
echo "$(in_mib "$want_bytes") MiB, $(ratio "$want_bytes" "$file_bytes") of the file (equal throughput would make the mount"
same=$([ -z "$failed" ] && echo "bytes read identical on both sides" || echo "BYTES READ DIFFER, see above")
echo "$(ratio "$file_bytes" "$want_bytes")x faster); $(nproc) cores, cold caches, $same"
echo
echo "| one-way delay, ms | mount: reads, s | mount start, s | hf_hub_download + reads, s | of which download, s | download+reads / mount reads | / (mount start + reads) | fetched by the mount, MiB (of the file) |"
echo "|---|---|---|---|---|---|---|---|"
for delay in "${delays[@]}"; do
  r() { echo "${res[$delay,$1]}"; }
  both=$(awk -v a="$(r up)" -v b="$(r mount)" 'BEGIN{ if (b+0 > 0) printf "%.3f", a+b; else print "-" }')
  fetched="$(in_mib "$(r fetched)")"
  [ "$fetched" = "-" ] || fetched="$fetched ($(ratio "$(r fetched)" "$file_bytes"))"
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$delay" "$(r mount)" "$(r up)" "$(r dl)" "$(r dlonly)" \
    "$(ratio "$(r dl)" "$(r mount)")" "$(ratio "$(r dl)" "$both")" "$fetched"
done
for delay in "${delays[@]}"; do
  echo
  echo "server requests per route during the mount's reads at $delay ms:"
  echo "${res[$delay,routes]}"
done
step="checking the bytes read"
[ -z "$failed" ] || { echo "repo_load.sh: FAILED (see above)"; exit 1; }
