#!/usr/bin/env bash
# pjdfstest and fsx against a live FUSE mount of a fresh bucket, then a remount to check that
# what fsx left behind reads back identically, then paranoid fsx (every commit read back).
# Usage: posix-suites.sh [fsx-ops] [local|served|plain]
#   fsx-ops: default 10000; the long run is 100000
#   local:   the bucket is a local store directory (default)
#   served:  the bucket is hosted by `xetmount serve` on 127.0.0.1 and mounted over HTTP
#   plain:   as served, with `serve --hub-only`: a plain bucket as on the Hugging Face Hub
#            (files only, so fsx runs and pjdfstest, which needs modes and links, does not)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ops="${1:-10000}"
target="${2:-local}"
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
bin="$repo/target/release/xetmount"
work="$(mktemp -d /tmp/xetmount-posix.XXXXXX)"
# pjdfstest switches to unprivileged users, who must be able to reach the mountpoint.
chmod 755 "$work"
mp="$work/mnt"
mkdir -p "$mp"
pid=""
serve_pid=""

case "$target" in
  local) source=("$work/store") ;;
  served|plain)
    serve_opts=()
    if [ "$target" = plain ]; then serve_opts=(--hub-only); fi
    "$bin" serve "$work/srv" --listen 127.0.0.1:0 "${serve_opts[@]}" >"$work/serve.out" 2>"$work/serve.log" &
    serve_pid=$!
    for _ in $(seq 1 200); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
    url="$(grep -o 'http://[0-9.:]*' "$work/serve.out")"
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/api/buckets/local/posix", data=b"{}", method="POST"))' "$url"
    source=("hf://buckets/local/posix" --endpoint "$url" --cache-dir "$work/cache")
    echo "== $target bucket at $url"
    ;;
  *) echo "usage: posix-suites.sh [fsx-ops] [local|served|plain]"; exit 2 ;;
esac

start_mount() { # [debounce-ms [extra mount options]]
  local debounce="${1:-100}"
  shift || true
  "$bin" mount "${source[@]}" "$mp" --flush-debounce-ms "$debounce" --allow-other "$@" >>"$work/mount.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    if grep -q " $mp " /proc/self/mountinfo; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$work/mount.log"; echo "mount failed"; exit 1; fi
    sleep 0.05
  done
  echo "mount did not appear"; exit 1
}

stop_mount() {
  "$bin" unmount "$mp"
  wait "$pid"
  pid=""
}

cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u "$mp" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

start_mount
if [ "$target" != plain ]; then
  mkdir "$mp/pjd"
  bash "$repo/scripts/run-pjdfstest.sh" "$mp/pjd"
fi
mkdir "$mp/fsx"
bash "$repo/scripts/run-fsx.sh" "$mp/fsx" "$ops" 7
sum_before="$(cd "$mp/fsx" && find . -type f -exec sha256sum {} + | sort)"
stop_mount

start_mount
sum_after="$(cd "$mp/fsx" && find . -type f -exec sha256sum {} + | sort)"
if [ "$sum_before" != "$sum_after" ]; then
  echo "fsx files differ after remount"; diff <(echo "$sum_before") <(echo "$sum_after") || true; exit 1
fi
echo "remount: fsx files identical"
stop_mount

# Paranoid fsx: every close/fsync commits, is read back from the store and compared, and the
# next reopen starts sparse (compose route).
start_mount 0 --paranoid
mkdir -p "$mp/paranoid"
bash "$repo/scripts/run-fsx.sh" "$mp/paranoid" "${PARANOID_OPS:-1500}" 11 "$repo/tests/posix/fsx-paranoid.toml"
stats="$("$bin" stats "$mp")"
composed="$(awk '$1=="files_composed"{print $2}' <<<"$stats")"
bad="$(awk '$1=="commit_verify_failures"{print $2}' <<<"$stats")"
echo "paranoid: $composed files composed, $bad commits that did not read back"
stop_mount
if [ "$bad" != 0 ] || [ "$composed" -eq 0 ]; then
  grep -i "error" "$work/mount.log" | tail -20; exit 1
fi
