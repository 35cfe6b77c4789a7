#!/usr/bin/env bash
# SlayerFS demo: installs what it needs, builds, makes a sample multi-layer
# image, converts it into the embedded default block store
# (/var/lib/slayerfs/store) and shows what was converted.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "== building (release)"
cargo build --release --bins --locked -q
bin=$PWD/target/release

state=${SLAYERFS_STATE_DIR:-/var/lib/slayerfs}
work=$state/demo
rm -rf "$work"
mkdir -p "$work"
cd "$work"

echo "== building a sample image with umoci + busybox (3 layers)"
umoci init --layout sample >/dev/null
umoci new --image sample:latest >/dev/null
layer() { # layer MESSAGE COMMANDS…: one umoci layer made by COMMANDS in rootfs/
  local msg=$1; shift
  rm -rf bundle
  umoci unpack --image sample:latest bundle >/dev/null
  (cd bundle/rootfs && eval "$@")
  umoci repack --image sample:latest --history.comment "$msg" bundle >/dev/null
}
layer "busybox" '
  mkdir -p bin etc tmp && chmod 1777 tmp
  cp /bin/busybox bin/busybox
  for a in sh ls cat echo head sha256sum; do ln -s busybox bin/$a; done
  printf "NAME=slayerfs-demo\n" > etc/os-release
  echo "from layer 1" > etc/motd'
layer "app" '
  mkdir -p app
  echo "hello from a lazily pulled layer" > app/hello.txt
  for i in 1 2 3 4 5; do cat /bin/busybox; done > app/data.bin   # ~10 MB: several 4 MiB blocks
  truncate -s 20M app/sparse.img
  ln app/hello.txt app/hello-hardlink.txt
  rm etc/motd'
layer "config" '
  rm -rf app/hello-hardlink.txt
  echo "from layer 3" > etc/motd
  mkdir -p etc/app && echo "debug = false" > etc/app/config.toml'
umoci config --image sample:latest --config.cmd /bin/sh >/dev/null
rm -rf bundle

echo "== converting into the block store ($state/store)"
"$bin/slayerfs" convert "oci:$work/sample:latest" "oci:$work/sample-slayerfs:latest"
echo
echo "== the converted image"
"$bin/slayerfs" inspect "oci:$work/sample-slayerfs:latest"
echo
echo "== layer 2 as its index records it"
"$bin/slayerfs" inspect --layer 2 "oci:$work/sample-slayerfs:latest"
echo
echo "== converting again writes no new blocks"
"$bin/slayerfs" convert -q "oci:$work/sample:latest" "oci:$work/sample-slayerfs:latest" | grep blocks
