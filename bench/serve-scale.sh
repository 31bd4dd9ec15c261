#!/usr/bin/env bash
# `xetmount serve` beyond one machine (issue 26): aggregate throughput of CLIENTS concurrent
# official clients (`hf buckets cp` of huggingface_hub 2.4.0 + hf_xet 1.8.0, each with its own
# HF_HOME and its own file of SIZE_MIB MiB of random bytes, so nothing dedups), uploading all
# files at once and then downloading them all at once, through:
#   dir         `xetmount serve DIR`: every byte passes through the one server
#   1 replica   `serve --catalog postgres://... --objects s3://...` over a throwaway PostgreSQL
#               (Debian's) and s3s-fs (a real S3 server): bytes go between client and S3
#   2 replicas  the same with the clients split between two replicas
# All on this machine (2 cores here): the numbers say what the shape costs, not what a fleet
# would do; no target. Each row also gives the bytes of client data that passed through the
# servers themselves (upload + fetch counters) and what the replicas read back to check grant
# uploads. Every download is compared with its source (sha256), or the bench fails.
# Usage: bench/serve-scale.sh   Environment: CLIENTS (8), SIZE_MIB (64), XETMOUNT_BIN.
# Needs scripts/install-tools.sh (PostgreSQL, s3s-fs, the hf venv).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
clients="${CLIENTS:-8}"
size_mib="${SIZE_MIB:-64}"
bin="${XETMOUNT_BIN:-}"
build_bin
hf="$repo/.tools/hf-venv/bin/hf"
s3s="$repo/.tools/bin/s3s-fs"
[ -x "$hf" ] && [ -x "$s3s" ] || { echo "serve-scale.sh: run scripts/install-tools.sh first"; exit 2; }
pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
[ -x "$pgbin/postgres" ] || { echo "serve-scale.sh: PostgreSQL is not installed (scripts/install-tools.sh)"; exit 2; }

work="$(mktemp -d /tmp/serve-scale.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL on a unix socket in $work/pg, as nobody when root.
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(setpriv --reuid=65534 --regid=65534 --clear-groups)
mkdir -p "$work/pg" && [ "$(id -u)" -eq 0 ] && chown 65534:65534 "$work/pg"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg/data" -U xetmount --auth=trust --no-locale -E UTF8 --no-sync >/dev/null
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg/data" -k "$work/pg" -c listen_addresses= -c fsync=off \
  >"$work/pg/log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do [ -S "$work/pg/.s.PGSQL.5432" ] && break; sleep 0.05; done
catalog="host=$work/pg user=xetmount dbname=postgres"

# s3s-fs with bucket `xet`.
mkdir -p "$work/s3/xet"
s3port="$(free_port)"
"$s3s" --host 127.0.0.1 --port "$s3port" --access-key bench --secret-key bench-secret "$work/s3" \
  >/dev/null 2>"$work/s3.log" &
pids+=($!)
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3port" AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$s3port") 2>/dev/null && break; sleep 0.05; done

echo "== $clients clients, a file of $size_mib MiB each (new random bytes for every row)"
total=$((clients * size_mib))

start_serve() { # name args...
  local name="$1"; shift
  "$bin" serve --listen 127.0.0.1:0 "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  announced "$work/$name.out" "$!"
}

client_bytes() { # url...: upload + fetch bytes, and verify bytes, summed over servers
  local up=0 ver=0 u
  for u in "$@"; do
    local m; m="$(curl -sf "$u/v1/xetmount/metrics")"
    up=$((up + $(awk '/^xetmount_serve_(upload|fetch)_bytes_total /{s+=$NF} END{printf "%d", s}' <<<"$m")))
    ver=$((ver + $(awk '/^xetmount_serve_verify_bytes_total /{s+=$NF} END{printf "%d", s}' <<<"$m")))
  done
  echo "$up $ver"
}

run() { # label bucket url...
  local label="$1" bucket="$2"; shift 2
  local urls=("$@") n=${#urls[@]} tag="${bucket//\//-}"
  HF_TOKEN=x HF_ENDPOINT="${urls[0]}" HF_HOME="$work/hfhome" "$hf" buckets create "$bucket" >/dev/null 2>&1
  # Fresh bytes: the stores are shared between rows, and stored chunks would be deduplicated.
  for i in $(seq 1 "$clients"); do head -c "$((size_mib << 20))" /dev/urandom >"$work/src$i.bin"; done
  local t; t="$(now)"
  local jobs=()
  for i in $(seq 1 "$clients"); do
    local u="${urls[$(( (i - 1) % n ))]}"
    HF_TOKEN=x HF_ENDPOINT="$u" HF_HOME="$work/hf-$tag-up$i" HF_HUB_DISABLE_PROGRESS_BARS=1 \
      "$hf" buckets cp "$work/src$i.bin" "hf://buckets/$bucket/f$i.bin" >"$work/$tag-up$i.log" 2>&1 &
    jobs+=($!)
  done
  for j in "${jobs[@]}"; do wait "$j" || { echo "an upload failed:"; cat "$work/$tag"-up*.log; exit 1; }; done
  local up; up="$(since "$t")"
  t="$(now)"; jobs=()
  for i in $(seq 1 "$clients"); do
    local u="${urls[$(( i % n ))]}"
    HF_TOKEN=x HF_ENDPOINT="$u" HF_HOME="$work/hf-$tag-down$i" HF_HUB_DISABLE_PROGRESS_BARS=1 \
      "$hf" buckets cp "hf://buckets/$bucket/f$i.bin" "$work/$tag-got$i.bin" >"$work/$tag-down$i.log" 2>&1 &
    jobs+=($!)
  done
  for j in "${jobs[@]}"; do wait "$j" || { echo "a download failed:"; cat "$work/$tag"-down*.log; exit 1; }; done
  local down; down="$(since "$t")"
  for i in $(seq 1 "$clients"); do
    cmp -s "$work/src$i.bin" "$work/$tag-got$i.bin" || { echo "f$i.bin came back different"; exit 1; }
    rm -f "$work/$tag-got$i.bin"
  done
  read -r through verified < <(client_bytes "${urls[@]}")
  awk -v l="$label" -v t="$total" -v u="$up" -v d="$down" -v c="$through" -v v="$verified" 'BEGIN{
    printf "%-11s upload %7.1f MiB/s (%6.2f s)   download %7.1f MiB/s (%6.2f s)   through the servers %7.1f MiB (%5.1f%%)   read back to check %7.1f MiB\n",
      l, t/u, u, t/d, d, c/1048576, 100*c/(t*1048576), v/1048576 }'
}

dir_url="$(start_serve dir "$work/dir")"
run "dir" "bench/dir" "$dir_url"
r1="$(start_serve r1 --catalog "$catalog" --objects s3://xet/deployment)"
run "1 replica" "bench/one" "$r1"
r2="$(start_serve r2 --catalog "$catalog" --objects s3://xet/deployment)"
# Fresh counters for the two-replica row: a new first replica as well.
r1b="$(start_serve r1b --catalog "$catalog" --objects s3://xet/deployment)"
run "2 replicas" "bench/two" "$r1b" "$r2"
