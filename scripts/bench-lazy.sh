# Sourced by bench.sh: `scripts/bench.sh lazy`, time from the pull command
# to a container's first output, ours (image converted beforehand, pulled
# lazily with `slayerfs pull`) beside containerd's overlayfs snapshotter
# pulling the original gzip image with `ctr image pull`, from the same local
# registry and S3 server, in the same run, cold each time (no image, no
# content, no snapshots, page cache dropped; ours: a fresh snapshotter root,
# so no block cache either).
#
# Image (made once): a Debian minbase with python3 from debootstrap (the
# machine's own suite and mirror), and a second layer with a 400 MiB model
# file of random bytes that the container never reads. The container runs
# python3 importing a few modules. Ours is started three ways:
#   first start   no trace in the store: what any image gets the first time
#   second node   a fresh node, with the trace an earlier start on another
#                 node left in the shared store
#   build list    converted with `--prefetch-list` (the trace, saved with
#                 `slayerfs inspect --save-trace`), no trace in the store
# Each figure is the median of REPEAT runs (default 3) with their range;
# GETs and bytes are what the S3 server sent for one start (indexes, traces
# and blocks, including prefetch that finished after the container exited).

python_cmd=(/usr/bin/python3 -c 'import json, email.parser, http.client, decimal, sqlite3, asyncio; print("ready")')

# The machine's Debian suite and mirror, for debootstrap.
debian_suite() { (. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}"); }
debian_mirror() {
  local m
  m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build_lazy_image() { # build_lazy_image DIR: DIR/image, tag v1
  local d=$1 rootfs=$1/rootfs
  if [ ! -d "$rootfs" ]; then
    echo "debootstrap of a minbase with python3 ($(debian_suite), $(debian_mirror)) ..." >&2
    rm -rf "$rootfs.part"
    debootstrap --variant=minbase --include=python3 "$(debian_suite)" "$rootfs.part" "$(debian_mirror)" \
      > "$d/debootstrap.log" 2>&1 || { tail -20 "$d/debootstrap.log" >&2; return 1; }
    # What an image carries: no package downloads or lists, empty /dev.
    rm -rf "$rootfs.part"/var/cache/apt/archives/*.deb "$rootfs.part"/var/lib/apt/lists/* \
      "$rootfs.part"/dev/* "$rootfs.part"/proc/* "$rootfs.part"/sys/*
    mv "$rootfs.part" "$rootfs"
  fi
  echo "building the benchmark image ..." >&2
  rm -rf "$d/image" "$d/b"
  (
    cd "$d"
    umoci init --layout image >/dev/null
    umoci new --image image:v1 >/dev/null
    umoci unpack --image image:v1 b >/dev/null
    rm -rf b/rootfs && cp -a "$rootfs" b/rootfs
    umoci repack --image image:v1 b >/dev/null && rm -rf b
    umoci unpack --image image:v1 b >/dev/null
    mkdir -p b/rootfs/opt/model
    head -c $((400 << 20)) /dev/urandom > b/rootfs/opt/model/weights.bin
    umoci repack --image image:v1 b >/dev/null && rm -rf b
  )
}

bench_lazy() {
  local ldir=$work/lazy
  mkdir -p "$ldir"
  [ -f "$ldir/image/index.json" ] && [ -d "$ldir/rootfs" ] || build_lazy_image "$ldir"
  local image_bytes files
  image_bytes=$(du -sb "$ldir/image/blobs" | cut -f1)
  files=$(find "$ldir/rootfs" | wc -l)

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
  local stats=$ldir/s3.stats
  start_s3 --stats "$stats"
  local traces=$work/s3/bench/traces

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
    : > "$c/slayerfs.log"
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
  # Ours: also a fresh daemon with no block cache (another node), once
  # containerd has reconnected to it (outside the timing).
  fresh_node() {
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
    drop_caches
  }
  no_traces() { rm -rf "$traces"; }
  prepare_overlayfs() { forget; }
  prepare_first() { no_traces; fresh_node; }
  prepare_traced() { fresh_node; }
  # Each start notes when its pull ended in $pulled_at.
  local pulled_at=$ldir/pulled-at
  start_overlayfs() {
    ctr image pull --plain-http --snapshotter overlayfs "$reg/plain:v1" >/dev/null &&
      now > "$pulled_at" &&
      ctr run --rm --snapshotter overlayfs "$reg/plain:v1" "overlay-$RANDOM" "${python_cmd[@]}"
  }
  start_ours_of() { # start_ours_of TAG
    "$bin/slayerfs" pull -q --address "$c/containerd.sock" "$reg/$1" >/dev/null &&
      now > "$pulled_at" &&
      ctr run --rm --snapshotter slayerfs "$reg/$1" "lazy-$RANDOM" "${python_cmd[@]}"
  }
  start_lazy() { start_ours_of lazy:v1; }
  start_listed() { start_ours_of listed:v1; }

  median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  # measure PREPARE START: $repeat cold starts; sets $t_med, $t_range (s),
  # $pull_med (s, the pull's part; 0 without one), $gets and $mbytes (the
  # S3 server's, for the last start).
  measure() {
    local prepare=$1 start=$2 times=() pulls=() out t0 t1 s0 s1 b0 b1 tp
    for _ in $(seq "$repeat"); do
      "$prepare"
      sleep 0.3
      read -r s0 _ _ b0 < "$stats"
      rm -f "$pulled_at"
      t0=$(now)
      out=$("$start")
      t1=$(now)
      [ "$out" = ready ] || { echo "bench lazy: $start printed '$out', not 'ready'" >&2; return 1; }
      times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
      tp=$(cat "$pulled_at" 2>/dev/null || echo "$t0")
      pulls+=("$(awk -v a="$t0" -v b="$tp" 'BEGIN { print b - a }')")
      sleep 2
      read -r s1 _ _ b1 < "$stats"
    done
    t_med=$(printf '%s\n' "${times[@]}" | median)
    pull_med=$(printf '%s\n' "${pulls[@]}" | median)
    t_range=$(printf '%s\n' "${times[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }')
    gets=$((s1 - s0))
    mbytes=$(awk -v b="$((b1 - b0))" 'BEGIN { printf "%.1f", b / 1e6 }')
  }

  measure prepare_overlayfs start_overlayfs
  local t_overlay=$t_med r_overlay=$t_range p_overlay=$pull_med
  measure prepare_first start_lazy
  local t_first=$t_med r_first=$t_range g_first=$gets m_first=$mbytes p_first=$pull_med

  # A start on one node leaves its trace in the store once the recording
  # window closes.
  prepare_first
  start_lazy > /dev/null
  local waited
  for waited in $(seq 300); do grep -q "trace of a start stored" "$c/slayerfs.log" && break; sleep 0.1; done
  grep -q "trace of a start stored" "$c/slayerfs.log" || { echo "bench lazy: no trace was stored" >&2; return 1; }
  measure prepare_traced start_lazy
  local t_traced=$t_med r_traced=$t_range g_traced=$gets m_traced=$mbytes p_traced=$pull_med
  local prefetch_line
  prefetch_line=$(grep -o 'prefetched the blocks a trace names.*' "$c/slayerfs.log" | tail -1 || true)

  # The floor: a start of an image already here, its blocks in our memory
  # cache, the page cache warm (no pull; `ctr run` alone).
  run_warm_ours() { ctr run --rm --snapshotter slayerfs "$reg/lazy:v1" "warm-$RANDOM" "${python_cmd[@]}"; }
  nothing() { :; }
  measure nothing run_warm_ours
  local t_warm_ours=$t_med r_warm_ours=$t_range
  forget
  ctr image pull --plain-http --snapshotter overlayfs "$reg/plain:v1" >/dev/null
  run_warm_overlayfs() { ctr run --rm --snapshotter overlayfs "$reg/plain:v1" "warm-$RANDOM" "${python_cmd[@]}"; }
  measure nothing run_warm_overlayfs
  local t_warm_overlay=$t_med r_warm_overlay=$t_range

  # The trace, saved, is the prefetch list of a second conversion.
  rm -rf "$ldir/seen" "$ldir/start.trace"
  skopeo copy -q --src-tls-verify=false "docker://$reg/lazy:v1" "oci:$ldir/seen:v1"
  SLAYERFS_CONFIG=$c/slayerfs.toml "$bin/slayerfs" inspect "oci:$ldir/seen:v1" --save-trace "$ldir/start.trace" > /dev/null
  "$bin/slayerfs" convert -q "docker://$reg/plain:v1" "docker://$reg/listed:v1" \
    --store s3://bench --s3-endpoint "$endpoint" --prefetch-list "$ldir/start.trace" >/dev/null
  measure prepare_first start_listed
  local t_listed=$t_med r_listed=$t_range g_listed=$gets m_listed=$mbytes p_listed=$pull_med

  local secs='BEGIN { printf "%.2f s", t }'
  pull_run() { awk -v p="$1" -v t="$2" 'BEGIN { printf "%.2f + %.2f s", p, t - p }'; }
  echo
  echo "image: $(ratio "$image_bytes" 1000000) MB as gzip layers (Debian $(debian_suite) minbase + python3, $files entries; a 400 MiB file never read); container: \`${python_cmd[*]}\`; median of $repeat cold starts (range)"
  echo
  echo "| start | pull + first output | pull + run | range | ratio (ours / overlayfs) | GETs | MB from S3 |"
  echo "|---|---|---|---|---|---|---|"
  echo "| overlayfs snapshotter, \`ctr image pull\` (full pull) | $(awk -v t="$t_overlay" "$secs") | $(pull_run "$p_overlay" "$t_overlay") | $r_overlay | — | — | — |"
  echo "| slayerfs, first start (no trace) | $(awk -v t="$t_first" "$secs") | $(pull_run "$p_first" "$t_first") | $r_first | $(ratio "$t_first" "$t_overlay") | $g_first | $m_first |"
  echo "| slayerfs, second node (trace in the store) | $(awk -v t="$t_traced" "$secs") | $(pull_run "$p_traced" "$t_traced") | $r_traced | $(ratio "$t_traced" "$t_overlay") | $g_traced | $m_traced |"
  echo "| slayerfs, build-time prefetch list | $(awk -v t="$t_listed" "$secs") | $(pull_run "$p_listed" "$t_listed") | $r_listed | $(ratio "$t_listed" "$t_overlay") | $g_listed | $m_listed |"
  echo "| floor: overlayfs, image here, \`ctr run\` alone | $(awk -v t="$t_warm_overlay" "$secs") | — | $r_warm_overlay | $(ratio "$t_warm_overlay" "$t_overlay") | — | — |"
  echo "| floor: slayerfs, image here, blocks in memory, \`ctr run\` alone | $(awk -v t="$t_warm_ours" "$secs") | — | $r_warm_ours | $(ratio "$t_warm_ours" "$t_overlay") | — | — |"
  echo
  echo "second node's prefetch: ${prefetch_line:-none logged}"
  stop_lazy
  trap - EXIT
}
