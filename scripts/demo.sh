#!/usr/bin/env bash
# SlayerFS demo: installs what it needs, builds, makes a sample multi-layer
# image, converts it into the embedded default block store
# (/var/lib/slayerfs/store), shows what was converted, and mounts it
# read-only and writable.
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

mnt=$work/mnt
mkdir -p "$mnt"
trap 'mountpoint -q "$mnt" && fusermount3 -u "$mnt"; true' EXIT
echo
echo "== mounting it read-only at $mnt"
"$bin/slayerfs" mount --daemon --log "$work/mount.log" "oci:$work/sample-slayerfs:latest" "$mnt"
ls -l "$mnt" "$mnt/app"
echo "etc/motd (layer 3 replaced layer 1's):  $(cat "$mnt/etc/motd")"
echo "app/hello.txt:                          $(cat "$mnt/app/hello.txt")"
echo "app/hello-hardlink.txt (whited out):     $(ls "$mnt/app/hello-hardlink.txt" 2>&1 | sed 's/.*: //')"
echo "app/data.bin sha256:                     $(sha256sum < "$mnt/app/data.bin" | cut -c1-16)… (5 x busybox: $(for _ in 1 2 3 4 5; do cat /bin/busybox; done | sha256sum | cut -c1-16)…)"
echo "app/sparse.img: $(stat -c %s "$mnt/app/sparse.img") bytes, non-zero bytes: $(tr -d '\0' < "$mnt/app/sparse.img" | wc -c)"
"$mnt/bin/busybox" echo "busybox from the image runs: $("$mnt/bin/busybox" | head -1)"
fusermount3 -u "$mnt"

echo
echo "== mounting it writable (upper layer in $work/upper), changing it, remounting"
"$bin/slayerfs" mount --rw --upper "$work/upper" --daemon --log "$work/mount.log" "oci:$work/sample-slayerfs:latest" "$mnt"
echo "changed in the upper layer" > "$mnt/etc/motd"
printf 'X' | dd of="$mnt/app/data.bin" bs=1 seek=5000000 conv=notrunc status=none
rm "$mnt/app/hello.txt"
fusermount3 -u "$mnt"
"$bin/slayerfs" mount --rw --upper "$work/upper" --daemon --log "$work/mount.log" "oci:$work/sample-slayerfs:latest" "$mnt"
echo "etc/motd: $(cat "$mnt/etc/motd")"
echo "app/: $(ls "$mnt/app" | tr '\n' ' ')"
echo "upper data files (bytes on disk): $(du -sh "$work/upper/data" | cut -f1) — the 1-byte change to the 10 MB data.bin copied nothing"
fusermount3 -u "$mnt"

echo
echo "== containerd with the slayerfs snapshotter"
cdir=$work/containerd
mkdir -p "$cdir"
cat > "$cdir/config.toml" <<EOF
version = 2
root = "$cdir/root"
state = "$cdir/state"
[grpc]
  address = "$cdir/containerd.sock"
[proxy_plugins.slayerfs]
  type = "snapshot"
  address = "$cdir/slayerfs.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable = true
EOF
"$bin/slayerfs-snapshotter" --root "$cdir/snapshotter" --address "$cdir/slayerfs.sock" 2> "$cdir/snapshotter.log" &
snap_pid=$!
containerd --config "$cdir/config.toml" 2> "$cdir/containerd.log" &
containerd_pid=$!
trap 'kill $containerd_pid 2>/dev/null; wait $containerd_pid 2>/dev/null; kill $snap_pid 2>/dev/null; wait $snap_pid 2>/dev/null; true' EXIT
for _ in $(seq 200); do [ -S "$cdir/containerd.sock" ] && [ -S "$cdir/slayerfs.sock" ] && break; sleep 0.1; done
ctr="ctr --address $cdir/containerd.sock"
tar -C "$work/sample" -cf "$work/sample.tar" .
$ctr images import --snapshotter slayerfs --index-name demo/sample:latest "$work/sample.tar"
$ctr snapshots --snapshotter slayerfs ls
echo "-- a container on the slayerfs snapshotter prints files of its image:"
$ctr run --rm --snapshotter slayerfs demo/sample:latest demo1 /bin/cat /app/hello.txt /etc/motd
