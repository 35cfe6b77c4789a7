# Sourced by bench.sh: `scripts/bench.sh restart`, what a running container
# sees of a `kill -9` of our daemon followed at once by a new start.
#
# One containerd 1.6 with our snapshotter as a proxy plugin; a busybox image
# imported through it; N active snapshots prepared on it (N = 1, then 50;
# each one FUSE mount of ours). A process working on the first snapshot's
# mount (slayerfs-fs-workload: reads of a file through a kept descriptor
# and a mapping, a journal appended and read back, names created, renamed
# and removed) reports the longest any of its operations took. Baseline,
# in the same run: that longest operation over the same time with no
# restart. Figures, each the median of $REPEAT kills: the longest stall,
# and the new daemon's start time (spawn to listening, every connection
# taken over).

bench_restart() {
  r=$work/restart
  rm -rf "$r"
  mkdir -p "$r"
  (
    cd "$r"
    umoci init --layout image >/dev/null
    umoci new --image image:v1 >/dev/null
    umoci unpack --image image:v1 b >/dev/null
    mkdir -p b/rootfs/bin && cp /bin/busybox b/rootfs/bin/busybox
    umoci repack --image image:v1 b >/dev/null && rm -rf b
    tar -C image -cf image.tar .
  )
  c=$r/containerd
  mkdir -p "$c"
  printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s/containerd.sock"\n[proxy_plugins.slayerfs]\n  type = "snapshot"\n  address = "%s/slayerfs.sock"\n[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n' \
    "$c" "$c" "$c" "$c" > "$c/config.toml"
  # Globals: the EXIT trap runs after this function has returned.
  snap_pid="" containerd_pid="" work_pid=""
  start_ours() { # start_ours [FLAGS]: sets $snap_pid and $start_s
    rm -f "$c/slayerfs.sock"
    local t0; t0=$(now)
    "$bin/slayerfs-snapshotter" --root "$c/slayerfs" --address "$c/slayerfs.sock" "$@" 2>> "$c/slayerfs.log" &
    snap_pid=$!
    for _ in $(seq 6000); do [ -S "$c/slayerfs.sock" ] && break; sleep 0.005; done
    start_s=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.3f", a - b }')
  }
  stop_all() {
    set +e
    [ -n "$work_pid" ] && { touch "$r/stop"; wait "$work_pid" 2>/dev/null; }
    # The snapshots go first (an unmount waits for no one), then containerd.
    if [ -n "$snap_pid" ]; then
      kill -9 "$snap_pid" 2>/dev/null; wait "$snap_pid" 2>/dev/null
      # A last start that unmounts everything and stops the fd holder.
      start_ours --unmount-on-exit
      kill "$snap_pid"; wait "$snap_pid" 2>/dev/null
    fi
    kill "$containerd_pid" 2>/dev/null; wait "$containerd_pid" 2>/dev/null
    return 0
  }
  trap stop_all EXIT
  start_ours
  containerd --config "$c/config.toml" 2> "$c/containerd.log" &
  containerd_pid=$!
  for _ in $(seq 200); do [ -S "$c/containerd.sock" ] && break; sleep 0.1; done
  local ctr="ctr --address $c/containerd.sock"
  $ctr images import --snapshotter slayerfs --index-name bench/img:v1 "$r/image.tar" >/dev/null
  local base
  base=$($ctr snapshots --snapshotter slayerfs ls | awk '$3 == "Committed" { print $1 }' | tail -1)
  local made=0 mp
  # The median of the given numbers.
  median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
  # longest_of RUN_SECONDS [kill]: runs the workload on $mp for about
  # RUN_SECONDS, with a kill -9 and a new start in the middle if asked;
  # sets $longest_ms (and $start_s after a kill).
  longest_of() {
    rm -f "$r/stop" "$r/work.out"
    "$bin/slayerfs-fs-workload" run "$mp" "$mp/pattern" "$r/stop" > "$r/work.out" &
    work_pid=$!
    for _ in $(seq 200); do grep -q ready "$r/work.out" 2>/dev/null && break; sleep 0.05; done
    sleep "$(awk -v s="$1" 'BEGIN { print s / 2 }')"
    if [ "${2:-}" = kill ]; then
      kill -9 "$snap_pid"; wait "$snap_pid" 2>/dev/null || true
      start_ours
    fi
    sleep "$(awk -v s="$1" 'BEGIN { print s / 2 }')"
    touch "$r/stop"; wait "$work_pid"; work_pid=""
    grep -q "failures=0" "$r/work.out" || { cat "$r/work.out" >&2; echo "bench.sh: the workload saw failures" >&2; exit 1; }
    longest_ms=$(sed -n 's/.*longest_ms=\([0-9]*\).*/\1/p' "$r/work.out")
  }
  for n in 1 50; do
    while [ "$made" -lt "$n" ]; do
      made=$((made + 1))
      $ctr snapshots --snapshotter slayerfs prepare "active-$made" "$base" >/dev/null
    done
    mp=$($ctr snapshots --snapshotter slayerfs mounts /x active-1 | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /\/fs$/) print $i }')
    [ -f "$mp/pattern" ] || "$bin/slayerfs-fs-workload" fill "$mp/pattern" $((16 << 20))
    local stalls=() starts=() quiet=()
    for _ in $(seq "$repeat"); do
      longest_of 2; quiet+=("$longest_ms")
      longest_of 2 kill; stalls+=("$longest_ms"); starts+=("$start_s")
    done
    local q s t
    q=$(median "${quiet[@]}"); s=$(median "${stalls[@]}"); t=$(median "${starts[@]}")
    echo "$n active snapshot(s): longest operation ${q} ms without a restart, ${s} ms across kill -9 + start (ratio $(ratio "$s" "$(awk -v q="$q" 'BEGIN { print (q < 1 ? 1 : q) }')")); daemon start ${t} s (stalls ${stalls[*]} ms; starts ${starts[*]} s)"
  done
}
