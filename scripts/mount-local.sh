#!/usr/bin/env bash
# README's first command: installs FUSE if missing, builds xetmount, and mounts a bucket kept
# in a local store directory (created on first use) in the foreground. Ctrl-C or
# `xetmount unmount MOUNTPOINT` commits pending writes and exits.
# Usage: mount-local.sh [STORE-DIR] [MOUNTPOINT]   (defaults: ~/xet-bucket ~/xet-mnt)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
store="${1:-$HOME/xet-bucket}"
mp="${2:-$HOME/xet-mnt}"
if ! command -v fusermount3 >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q fuse3
fi
if [ ! -x "$repo/target/release/xetmount" ]; then
  echo "building xetmount (cargo build --release): the first build compiles xet-core and takes about 8 minutes on 2 cores"
fi
# Cargo's progress line stays visible; only an up-to-date build is silent.
cargo build --release --bin xetmount --manifest-path "$repo/Cargo.toml"
mkdir -p "$mp"
echo "mounting $store at $mp (in another shell: ls $mp; stop with Ctrl-C)"
exec "$repo/target/release/xetmount" mount "$store" "$mp"
