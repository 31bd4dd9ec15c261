#!/usr/bin/env bash
# Installs what the test suites need on a fresh Debian machine: FUSE (fusermount3 and the
# library headers), libacl (pjdfstest links it), libnfs-utils (the NFS client used by the NFS
# tests), strace (tests/durable.rs reads the order of fsyncs around a commit from it), systemd
# (systemd-analyze checks the unit template in tests/service.rs), PostgreSQL (throwaway
# clusters for `serve` on PostgreSQL, tests/common/pg.rs), the `tests` user pjdfstest switches
# to, the pjdfstest, fsx and s3s-fs binaries into ./.tools, and a Python venv with the
# official Hugging Face clients and Prometheus's parser (.tools/hf-venv).
# Idempotent: a second run installs nothing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

pkgs=(fuse3 libfuse3-dev pkg-config libacl1-dev libnfs-utils strace systemd postgresql)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
  # The package starts a system cluster the tests do not use (they start their own).
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
      $sudo pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
    done
  fi
fi

# pjdfstest's user-switching tests run as `nobody` and as `tests`.
if [ "$(id -u)" -eq 0 ] && ! getent passwd tests >/dev/null; then
  useradd --no-create-home --shell /usr/sbin/nologin tests
fi

tools="$repo/.tools"
install_crate() { # name version [cargo install args]
  local name="$1" version="$2"
  shift 2
  if ! "$tools/bin/$name" --version 2>/dev/null | grep -q "$version"; then
    echo "== cargo install $name $version"
    cargo install --locked --quiet --root "$tools" "$name" --version "$version" "$@"
  fi
}
install_crate pjdfstest 0.2.2
install_crate fsx 0.3.2
# A real S3-compatible server for `serve --objects s3://...` (tests/common/s3.rs). 0.14.1: later
# versions need a newer Rust than this toolchain.
install_crate s3s-fs 0.14.1 --features binary

# The official Hugging Face clients, the judge of `xetmount serve`'s protocol compatibility,
# and Prometheus's own Python client, whose OpenMetrics parser judges the metrics endpoints.
venv="$tools/hf-venv"
want_hf='import importlib.metadata as m; assert m.version("huggingface-hub") == "2.4.0" and m.version("hf-xet") == "1.8.0" and m.version("prometheus-client") == "0.26.0"'
if ! "$venv/bin/python" -c "$want_hf" 2>/dev/null; then
  echo "== venv with huggingface-hub 2.4.0, hf-xet 1.8.0 and prometheus-client 0.26.0"
  if ! python3 -m venv --help >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3 python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check huggingface-hub==2.4.0 hf-xet==1.8.0 prometheus-client==0.26.0
  "$venv/bin/python" -c "$want_hf"
fi
