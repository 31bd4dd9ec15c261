#!/usr/bin/env bash
# Installs a built xetmount (cargo build --release first, or let this do it):
#   /usr/local/bin/xetmount            the binary
#   /sbin/mount.xetmount               mount(8)'s helper (a link to the binary), so that
#                                      `mount -t xetmount SRC DIR -o ...` and fstab lines work
#   /etc/systemd/system/xetmount@.service   the unit template (where systemd is installed)
# PREFIX=/usr/local and SBIN=/sbin change where; run as root.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${PREFIX:-/usr/local}"
sbin="${SBIN:-/sbin}"
if [ ! -x "$repo/target/release/xetmount" ]; then
  echo "== building xetmount (cargo build --release; about 8 minutes on 2 cores the first time)"
  (cd "$repo" && cargo build --release --bin xetmount)
fi
install -D -m 755 "$repo/target/release/xetmount" "$prefix/bin/xetmount"
ln -sf "$prefix/bin/xetmount" "$sbin/mount.xetmount"
echo "installed $prefix/bin/xetmount and $sbin/mount.xetmount"
if [ -d /etc/systemd/system ]; then
  sed "s|/usr/local/bin/xetmount|$prefix/bin/xetmount|" "$repo/dist/systemd/xetmount@.service" \
    >/etc/systemd/system/xetmount@.service
  echo "installed /etc/systemd/system/xetmount@.service (configure with /etc/xetmount/NAME.toml)"
fi
