# Sourced by bench.sh: `scripts/bench.sh lazy`, time from the pull command
# to a container's first output, ours (image converted beforehand, pulled
# lazily with `slayerfs pull`) beside containerd's overlayfs snapshotter
# pulling the original gzip image with `ctr image pull`, from the same local
# registry, in the same run.
#
# Image (made once with umoci): busybox and a small file; a 520 MiB file of
# random data. The container runs `cat /etc/small`: it reads busybox and
# the small file, under 0.5 % of the image.

bench_lazy() {
  local ldir=$work/lazy
  mkdir -p "$ldir"
  if [ ! -f "$ldir/image/index.json" ]; then
    echo "building the benchmark image ..." >&2
    rm -rf "$ldir/image" "$ldir/b"
    (
      cd "$ldir"
      umoci init --layout image >/dev/null
      umoci new --image image:v1 >/dev/null
      umoci unpack --image image:v1 b >/dev/null
      mkdir -p b/rootfs/bin b/rootfs/etc b/rootfs/data
      cp /bin/busybox b/rootfs/bin/busybox && ln -s busybox b/rootfs/bin/cat
      echo "a small file" > b/rootfs/etc/small
      umoci repack --image image:v1 b >/dev/null && rm -rf b
      umoci unpack --image image:v1 b >/dev/null
      head -c $((520 << 20)) /dev/urandom > b/rootfs/data/big
      umoci repack --image image:v1 b >/dev/null && rm -rf b
    )
  fi
  local image_bytes
  image_bytes=$(du -sb "$ldir/image/blobs" | cut -f1)

  # A registry and an S3 server on 127.0.0.1.
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local reg=127.0.0.1:$port
  rm -rf "$ldir/registry"
  mkdir -p "$ldir/registry"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
    "$ldir/registry/data" "$reg" > "$ldir/registry/config.yml"
  docker-registry serve "$ldir/registry/config.yml" > "$ldir/registry/log" 2>&1 &
  # Not local: the EXIT trap that stops them runs after this function.
  reg_pid=$!
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  start_s3 --stats "$ldir/s3.stats"

  skopeo copy -q --dest-tls-verify=false "oci:$ldir/image:v1" "docker://$reg/plain:v1"
  "$bin/slayerfs" convert -q "docker://$reg/plain:v1" "docker://$reg/lazy:v1" \
    --store s3://bench --s3-endpoint "$endpoint" >/dev/null

  local c=$ldir/containerd
  rm -rf "$c"
  mkdir -p "$c"
  printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s/containerd.sock"\n[proxy_plugins.slayerfs]\n  type = "snapshot"\n  address = "%s/slayerfs.sock"\n[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n' \
    "$c" "$c" "$c" "$c" > "$c/config.toml"
  printf 'state_dir = "%s/state-slayerfs"\n[store]\nurl = "s3://bench"\n[store.s3]\nendpoint = "%s"\n' \
    "$c" "$endpoint" > "$c/slayerfs.toml"
  snap_pid=""
  start_ours() {
    SLAYERFS_CONFIG=$c/slayerfs.toml "$bin/slayerfs-snapshotter" --root "$c/slayerfs" \
      --address "$c/slayerfs.sock" --unmount-on-exit 2>> "$c/slayerfs.log" &
    snap_pid=$!
    for _ in $(seq 100); do [ -S "$c/slayerfs.sock" ] && break; sleep 0.1; done
  }
  stop_ours() {
    if [ -n "$snap_pid" ]; then
      kill "$snap_pid" 2>/dev/null || true
      wait "$snap_pid" 2>/dev/null || true
    fi
    snap_pid=""
  }
  start_ours
  containerd --config "$c/config.toml" 2> "$c/containerd.log" &
  containerd_pid=$!
  # (|| true: waits report the signal a process died of; errexit is on.)
  stop_lazy() {
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
    stop_ours
    kill "$s3_pid" "$reg_pid" 2>/dev/null || true
    wait "$s3_pid" "$reg_pid" 2>/dev/null || true
  }
  trap stop_lazy EXIT
  for _ in $(seq 200); do [ -S "$c/containerd.sock" ] && break; sleep 0.1; done
  ctr() { command ctr --address "$c/containerd.sock" "$@"; }

  forget() { # no image, no content, no snapshots; caches dropped
    local name
    for name in $(ctr images ls -q); do ctr images rm --sync "$name" >/dev/null; done
    drop_caches
  }
  # Ours: also a fresh daemon with no block cache, once containerd has
  # reconnected to it (outside the timing).
  prepare_ours() {
    forget
    stop_ours
    rm -rf "$c/slayerfs" "$c/state-slayerfs"
    start_ours
    # containerd redials the proxy after a back-off; `ctr snapshots ls`
    # reads containerd's own records, so probe with a Prepare instead.
    local probe
    for probe in $(seq 300); do
      if ctr snapshots --snapshotter slayerfs prepare "probe-$probe" >/dev/null 2>&1; then
        ctr snapshots --snapshotter slayerfs rm "probe-$probe"
        break
      fi
      sleep 0.1
    done
  }
  prepare_overlayfs() { forget; }
  run_ours() {
    "$bin/slayerfs" pull -q --address "$c/containerd.sock" "$reg/lazy:v1" &&
      ctr run --rm --snapshotter slayerfs "$reg/lazy:v1" "lazy-$RANDOM" /bin/cat /etc/small
  }
  run_overlayfs() {
    ctr image pull --plain-http --snapshotter overlayfs "$reg/plain:v1" >/dev/null &&
      ctr run --rm --snapshotter overlayfs "$reg/plain:v1" "overlay-$RANDOM" /bin/cat /etc/small
  }
  timed_call prepare_overlayfs run_overlayfs
  local t_overlay=$elapsed
  timed_call prepare_ours run_ours
  local t_ours=$elapsed

  # Read amplification, one more cold run: bytes from S3 over bytes the
  # container read (busybox and the small file).
  prepare_ours
  sleep 0.3
  local s0 s1 s2
  s0=$(awk '{print $4}' "$ldir/s3.stats")
  "$bin/slayerfs" pull -q --address "$c/containerd.sock" "$reg/lazy:v1" >/dev/null
  sleep 0.3
  s1=$(awk '{print $4}' "$ldir/s3.stats")
  ctr run --rm --snapshotter slayerfs "$reg/lazy:v1" "lazy-amp" /bin/cat /etc/small >/dev/null
  sleep 0.3
  s2=$(awk '{print $4}' "$ldir/s3.stats")
  local read_bytes
  read_bytes=$(( $(stat -c %s /bin/busybox) + 13 ))

  echo
  echo "image: $(ratio "$image_bytes" 1000000) MB (2 gzip layers); best of $repeat, cold each time"
  echo
  echo "| figure | overlayfs snapshotter (ctr image pull) | slayerfs (slayerfs pull) | ratio (ours / overlayfs) |"
  echo "|---|---|---|---|"
  echo "| pull + first output of \`cat /etc/small\` | $(awk -v t="$t_overlay" 'BEGIN { printf "%.2f s", t }') | $(awk -v t="$t_ours" 'BEGIN { printf "%.2f s", t }') | $(ratio "$t_ours" "$t_overlay") |"
  echo
  echo "from S3: $((s1 - s0)) bytes at pull (the indexes), $((s2 - s1)) bytes for the container, which read $read_bytes bytes: read amplification $(ratio "$((s2 - s1))" "$read_bytes")"
  stop_lazy
  trap - EXIT
}
