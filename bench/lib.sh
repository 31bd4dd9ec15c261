# Shared by the benchmark scripts (sourced): start a mount of the xetmount binary `$bin` in
# the background and wait until it is live. Sets `pid`.
mount_bg() { # store mountpoint log [extra args]
  local store="$1" mp="$2" log="$3"
  shift 3
  "$bin" mount "$store" "$mp" "$@" >>"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q " $mp " /proc/self/mountinfo && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.05
  done
  echo "mount did not appear"; exit 1
}

# Build this checkout's xetmount (with any further cargo targets given) and point `bin` at
# it, unless `bin` already names a binary to measure.
build_bin() { # [cargo target args]
  if [ -z "${bin:-}" ]; then
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin xetmount "$@"
    bin="$repo/target/release/xetmount"
  fi
}

# Timing, caches, ports and servers starting in the background (wan.sh, repo_load.sh).
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
drop_caches() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The first line a starting server or proxy prints: "... listening on http://ADDR".
announced() { # stdout-file pid
  for _ in $(seq 1 400); do
    grep -q listening "$1" 2>/dev/null && { grep -o 'http://[0-9.:]*' "$1" | head -1; return 0; }
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  echo "did not start: $(cat "$1" "${1%.out}.log" 2>/dev/null)" >&2
  exit 1
}

# route_counts URL: `xetmount serve`'s request counts as `METHOD ROUTE COUNT` lines (summed
# over statuses) and `fetch_bytes N`, from its OpenMetrics text at URL/v1/xetmount/metrics.
route_counts() {
  curl -sf "$1/v1/xetmount/metrics" | awk '
    /^xetmount_serve_requests_total\{/ {
      m = $0; sub(/.*method="/, "", m); sub(/".*/, "", m)
      r = $0; sub(/.*route="/, "", r); sub(/".*/, "", r)
      n[m " " r] += $NF
    }
    /^xetmount_serve_fetch_bytes_total / { f = $NF }
    END { for (k in n) print k, n[k]; print "fetch_bytes", f + 0 }' || true
}
