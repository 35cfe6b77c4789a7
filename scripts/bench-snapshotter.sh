# Sourced by bench.sh: `scripts/bench.sh snapshotter`, our snapshotter
# beside containerd's overlayfs snapshotter, both driven by the same
# containerd with `ctr`, in the same run.
#
# Image (made once with umoci): busybox, then 100 MiB of random data and
# 2,000 small files, then another 100 MiB file: 3 layers, ~210 MB.

bench_snapshotter() {
  local sdir=$work/snap
  mkdir -p "$sdir"
  local img=$sdir/image
  if [ ! -f "$sdir/image.tar" ]; then
    echo "building the benchmark image ..." >&2
    rm -rf "$img" "$sdir/b"
    (
      cd "$sdir"
      umoci init --layout image >/dev/null
      umoci new --image image:v1 >/dev/null
      umoci unpack --image image:v1 b >/dev/null
      mkdir -p b/rootfs/bin && cp /bin/busybox b/rootfs/bin/busybox && ln -s busybox b/rootfs/bin/true
      umoci repack --image image:v1 b >/dev/null && rm -rf b
      umoci unpack --image image:v1 b >/dev/null
      mkdir -p b/rootfs/data/small
      head -c $((100 << 20)) /dev/urandom > b/rootfs/data/big-1
      for i in $(seq 2000); do head -c $((RANDOM * 2)) /dev/urandom > "b/rootfs/data/small/f$i"; done
      umoci repack --image image:v1 b >/dev/null && rm -rf b
      umoci unpack --image image:v1 b >/dev/null
      head -c $((100 << 20)) /dev/urandom > b/rootfs/data/big-2
      umoci repack --image image:v1 b >/dev/null && rm -rf b
      tar -C image -cf image.tar .
    )
  fi
  local bytes
  bytes=$(stat -c %s "$sdir/image.tar")

  local c=$sdir/containerd
  rm -rf "$c"
  mkdir -p "$c"
  printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s/containerd.sock"\n[proxy_plugins.slayerfs]\n  type = "snapshot"\n  address = "%s/slayerfs.sock"\n[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n' \
    "$c" "$c" "$c" "$c" > "$c/config.toml"
  "$bin/slayerfs-snapshotter" --root "$c/slayerfs" --address "$c/slayerfs.sock" --unmount-on-exit 2> "$c/slayerfs.log" &
  local snap_pid=$!
  containerd --config "$c/config.toml" 2> "$c/containerd.log" &
  local containerd_pid=$!
  stop_all() {
    kill "$containerd_pid" 2>/dev/null; wait "$containerd_pid" 2>/dev/null
    kill "$snap_pid" 2>/dev/null; wait "$snap_pid" 2>/dev/null
    return 0
  }
  trap stop_all EXIT
  for _ in $(seq 200); do [ -S "$c/containerd.sock" ] && [ -S "$c/slayerfs.sock" ] && break; sleep 0.1; done
  ctr() { command ctr --address "$c/containerd.sock" "$@"; }

  # Import + first run, each from an empty content store and snapshotter.
  forget() { # forget SNAPSHOTTER: no image, no content, no snapshots left
    local name
    for name in $(ctr images ls -q); do ctr images rm --sync "$name" >/dev/null; done
    sync
  }
  import_run() { # import_run SNAPSHOTTER
    ctr images import --snapshotter "$1" --index-name bench/image:v1 "$sdir/image.tar" >/dev/null
    ctr run --rm --snapshotter "$1" bench/image:v1 "first-$1" /bin/true
  }
  forget_slayerfs() { forget slayerfs; }
  forget_overlayfs() { forget overlayfs; }
  timed_call forget_overlayfs import_run overlayfs
  local t_overlay=$elapsed
  timed_call forget_slayerfs import_run slayerfs
  local t_ours=$elapsed
  forget slayerfs

  # Prepare / Mounts / Remove cycles on an empty parent.
  local cycles=${CYCLES:-1000}
  cycle() { # cycle SNAPSHOTTER: $cycles Prepare+Mounts+Remove
    local i
    for i in $(seq "$cycles"); do
      ctr snapshots --snapshotter "$1" prepare "cycle-$i" >/dev/null
      ctr snapshots --snapshotter "$1" mounts /tmp/unused "cycle-$i" >/dev/null
      ctr snapshots --snapshotter "$1" rm "cycle-$i"
    done
  }
  local rss0 fds0 db0
  rss0=$(awk '/VmRSS/ {print $2}' "/proc/$snap_pid/status")
  fds0=$(ls "/proc/$snap_pid/fd" | wc -l)
  db0=$(du -sk "$c/slayerfs/db" | cut -f1)
  local t0 t1 t_cycle_k t_cycle_o
  t0=$(now); cycle overlayfs; t1=$(now)
  t_cycle_k=$(awk -v a="$t0" -v b="$t1" -v n="$cycles" 'BEGIN { printf "%.1f", (b - a) / n * 1000 }')
  t0=$(now); cycle slayerfs; t1=$(now)
  t_cycle_o=$(awk -v a="$t0" -v b="$t1" -v n="$cycles" 'BEGIN { printf "%.1f", (b - a) / n * 1000 }')
  # containerd removes a finished container's snapshot in the background.
  sleep 5
  local rss1 fds1 db1 mounts_left
  rss1=$(awk '/VmRSS/ {print $2}' "/proc/$snap_pid/status")
  fds1=$(ls "/proc/$snap_pid/fd" | wc -l)
  db1=$(du -sk "$c/slayerfs/db" | cut -f1)
  mounts_left=$(grep -c "$c/slayerfs" /proc/self/mountinfo || true)

  echo
  echo "image: $(ratio "$bytes" 1000000) MB in 3 layers; best of $repeat for import + first run; $cycles cycles"
  echo
  echo "| figure | overlayfs snapshotter | slayerfs | ratio (ours / overlayfs) |"
  echo "|---|---|---|---|"
  echo "| ctr images import + first ctr run | $(awk -v t="$t_overlay" 'BEGIN { printf "%.2f s", t }') | $(awk -v t="$t_ours" 'BEGIN { printf "%.2f s", t }') | $(ratio "$t_ours" "$t_overlay") |"
  echo "| Prepare + Mounts + Remove, per cycle (three ctr calls) | $t_cycle_k ms | $t_cycle_o ms | $(ratio "$t_cycle_o" "$t_cycle_k") |"
  echo
  echo "our daemon over the cycles: RSS ${rss0} -> ${rss1} KiB, open fds ${fds0} -> ${fds1}, sled ${db0} -> ${db1} KiB, mounts left: ${mounts_left}"
  stop_all
  trap - EXIT
}
