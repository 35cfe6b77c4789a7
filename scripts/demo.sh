#!/usr/bin/env bash
# SlayerFS demo: installs what it needs, builds, makes a sample multi-layer
# image, converts it into the embedded default block store
# (/var/lib/slayerfs/store), shows what was converted, mounts it read-only
# and writable; then, with a local registry and S3 server, converts it
# registry to registry into S3, runs containerd with our snapshotter,
# imports and runs the image the usual way, and lazily pulls and runs the
# converted one.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/steps.sh

step "installing dependencies"
scripts/install-deps.sh
step "building (release)"
cargo build --release --bins --locked -q
bin=$PWD/target/release

state=${SLAYERFS_STATE_DIR:-/var/lib/slayerfs}
work=$state/demo
rm -rf "$work"
mkdir -p "$work"
cd "$work"

step "building a sample image with umoci + busybox (3 layers)"
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

step "converting into the block store ($state/store)"
"$bin/slayerfs" convert "oci:$work/sample:latest" "oci:$work/sample-slayerfs:latest"
echo
step "the converted image"
"$bin/slayerfs" inspect "oci:$work/sample-slayerfs:latest"
echo
step "layer 2 as its index records it"
"$bin/slayerfs" inspect --layer 2 "oci:$work/sample-slayerfs:latest"
echo
step "converting again writes no new blocks"
"$bin/slayerfs" convert -q "oci:$work/sample:latest" "oci:$work/sample-slayerfs:latest" | grep blocks

mnt=$work/mnt
mkdir -p "$mnt"
at_exit 'mountpoint -q "$mnt" && fusermount3 -u "$mnt"' 
echo
step "mounting it read-only at $mnt"
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
step "mounting it writable (upper layer in $work/upper), changing it, remounting"
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
step "a local registry and S3 server (127.0.0.1) for the lazy pull"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
reg=127.0.0.1:$(free_port)
mkdir -p "$work/registry"
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
  "$work/registry/data" "$reg" > "$work/registry/config.yml"
docker-registry serve "$work/registry/config.yml" > "$work/registry/log" 2>&1 &
reg_pid=$!
"$bin/slayerfs-test-s3" --root "$work/s3" --bucket demo --stats "$work/s3.stats" > "$work/s3.addr" &
s3_pid=$!
for _ in $(seq 100); do grep -q listening "$work/s3.addr" 2>/dev/null && (echo > "/dev/tcp/${reg%:*}/${reg#*:}") 2>/dev/null && break; sleep 0.1; done
s3=http://$(awk '{print $3}' "$work/s3.addr")
export AWS_ACCESS_KEY_ID=slayerfs-test AWS_SECRET_ACCESS_KEY=slayerfs-test-secret
stop_servers() { kill "$reg_pid" "$s3_pid" 2>/dev/null || true; wait "$reg_pid" "$s3_pid" 2>/dev/null || true; }
at_exit stop_servers
skopeo copy -q --dest-tls-verify=false "oci:$work/sample:latest" "docker://$reg/sample:latest"
echo "-- converting from the registry into S3, pushing the converted image back:"
"$bin/slayerfs" convert -q "docker://$reg/sample:latest" "docker://$reg/sample:slayerfs" --store s3://demo --s3-endpoint "$s3"

echo
step "containerd with the slayerfs snapshotter"
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
"$bin/slayerfs-snapshotter" --root "$cdir/snapshotter" --address "$cdir/slayerfs.sock" --unmount-on-exit \
  --store s3://demo --s3-endpoint "$s3" 2> "$cdir/snapshotter.log" &
snap_pid=$!
containerd --config "$cdir/config.toml" 2> "$cdir/containerd.log" &
containerd_pid=$!
at_exit 'kill $snap_pid; wait $snap_pid'
at_exit 'kill $containerd_pid; wait $containerd_pid'
for _ in $(seq 200); do [ -S "$cdir/containerd.sock" ] && [ -S "$cdir/slayerfs.sock" ] && break; sleep 0.1; done
ctr="ctr --address $cdir/containerd.sock"
echo
step "lazy pull: only the layer indexes move; file data comes from S3 on first read"
s3_bytes() { awk '{print $4}' "$work/s3.stats"; }
sleep 0.2; before=$(s3_bytes)
"$bin/slayerfs" pull --address "$cdir/containerd.sock" "$reg/sample:slayerfs"
sleep 0.2; pulled=$(s3_bytes)
echo "-- a container from the lazily pulled image:"
$ctr run --rm --snapshotter slayerfs "$reg/sample:slayerfs" demo1 /bin/cat /app/hello.txt /etc/motd
sleep 0.2; ran=$(s3_bytes)
echo "bytes from S3: $((pulled - before)) for the pull (the indexes), $((ran - pulled)) for the container's first run (the image's data: $(du -sb "$work/sample/blobs" | cut -f1) bytes compressed)"
$ctr snapshots --snapshotter slayerfs ls

# The original image has the same layers (chain ids) as the converted one:
# the converted one goes first, or the import would find them present.
for name in $($ctr images ls -q); do $ctr images rm --sync "$name" >/dev/null; done

echo
step "an image that was never converted: containerd unpacks it through our mounts"
tar -C "$work/sample" -cf "$work/sample.tar" .
$ctr images import --snapshotter slayerfs --index-name demo/sample:latest "$work/sample.tar"
echo "-- a container on the slayerfs snapshotter prints files of its image:"
$ctr run --rm --snapshotter slayerfs demo/sample:latest demo2 /bin/cat /app/hello.txt /etc/motd
