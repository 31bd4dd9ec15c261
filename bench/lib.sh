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
