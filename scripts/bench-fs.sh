# Sourced by bench.sh: `scripts/bench.sh fs`, the mounted filesystem beside
# the kernel's overlayfs over the same layers, in the same run;
# `scripts/bench.sh fs random` runs only the random-reads figures.
#
# Images (generated once under $work): img-fs, 50,000 small files plus one
# 1 GiB file; img-l1 and img-l128, the same 20,000 small files in 1 and in
# 128 layers; img-large, the 1 GiB file alone (for the S3 figure).
# Ours: converted into a local store (the S3 figure: into the local S3
# server) and mounted with `slayerfs mount`; the kernel's: the same layer
# tars extracted into directories and mounted as overlayfs lower layers.

# timed_call PREPARE CMD…: like `timed`, for shell functions too: the best
# wall time of $repeat runs of CMD, each after PREPARE and a sync, in $elapsed.
timed_call() {
  local prepare=$1
  shift
  local best="" t0 t1 t
  for _ in $(seq "$repeat"); do
    "$prepare"
    sync
    t0=$(now)
    "$@" > /dev/null
    t1=$(now)
    t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
  done
  elapsed=$best
}

bench_fs() {
  local fs=$work/fs
  mkdir -p "$fs"
  if [ "${1:-}" = random ]; then
    m=$fs/mnt
    mkdir -p "$m"
    unmount_all() { if mountpoint -q "$m"; then fusermount3 -u "$m"; fi; sleep 0.3; }
    row() { echo "| $1 | $2 | $3 | $4 | $5 |"; }
    ms() { awk -v t="$1" 'BEGIN { printf "%.1f ms", t * 1000 }'; }
    trap unmount_all EXIT
    echo "| figure | baseline | slayerfs | ratio | goal |"
    echo "|---|---|---|---|---|"
    bench_random_reads
    return
  fi
  gen img-fs --small-files 50000 --large-files 1 --large-mib 1024
  gen img-l1 --small-files 20000 --large-files 0 --spread 1
  gen img-l128 --small-files 20000 --large-files 0 --spread 128

  # Our memory cache holds the 1 GiB file; no disk cache.
  local cfg=$fs/config.toml
  printf 'state_dir = "%s"\n[cache]\nmemory_bytes = 2147483648\ndisk_bytes = 0\n' "$fs/state" > "$cfg"
  export SLAYERFS_CONFIG=$cfg
  local name
  for name in img-fs img-l1 img-l128; do
    if [ ! -f "$fs/conv-$name/index.json" ]; then
      echo "converting $name ..." >&2
      "$bin/slayerfs" convert -q "oci:$work/$name:tar" "oci:$fs/conv-$name:tar" --store "$fs/store" >/dev/null
    fi
  done
  # The kernel's side: layer N extracted into directory N.
  for name in img-fs img-l1 img-l128; do
    if [ ! -d "$fs/lower-$name" ]; then
      echo "extracting $name ..." >&2
      rm -rf "$fs/lower-$name.part"
      mkdir -p "$fs/lower-$name.part"
      local i=0 blob
      while read -r blob; do
        mkdir -p "$fs/lower-$name.part/$i"
        tar -xf "$blob" -C "$fs/lower-$name.part/$i"
        i=$((i + 1))
      done < <(layer_blobs tar "$work/$name")
      mv "$fs/lower-$name.part" "$fs/lower-$name"
    fi
  done

  m=$fs/mnt
  k=$fs/kmnt
  mkdir -p "$m" "$k"
  unmount_all() {
    if mountpoint -q "$m"; then fusermount3 -u "$m"; fi
    if mountpoint -q "$k"; then umount "$k"; fi
    sleep 0.3
  }
  ours() { # ours IMAGE [ARGS…]: our mount of IMAGE at $m
    local img=$1
    shift
    "$bin/slayerfs" mount --daemon --log "$fs/mount.log" "oci:$fs/conv-$img:tar" "$m" --store "$fs/store" "$@" >/dev/null
  }
  kernel() { # kernel IMAGE [rw]: the kernel's overlayfs over IMAGE's layers at $k
    local img=$1 n lowers
    n=$(find "$fs/lower-$img" -mindepth 1 -maxdepth 1 -type d | wc -l)
    # Relative layer paths, top first, keep the options within a page.
    lowers=$(seq $((n - 1)) -1 0 | paste -sd:)
    # overlayfs wants two layers at least when it has no upper one.
    if [ "$n" = 1 ] && [ "${2:-}" != rw ]; then
      mkdir -p "$fs/lower-empty"
      lowers="$lowers:$fs/lower-empty"
    fi
    if [ "${2:-}" = rw ]; then
      rm -rf "$fs/kupper" "$fs/kwork"
      mkdir -p "$fs/kupper" "$fs/kwork"
      (cd "$fs/lower-$img" && mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$fs/kupper,workdir=$fs/kwork" "$k")
    else
      (cd "$fs/lower-$img" && mount -t overlay overlay -o "ro,lowerdir=$lowers" "$k")
    fi
  }
  trap unmount_all EXIT
  unmount_all

  local big=opt/models/large-0.bin size=$((1 << 30))
  echo
  echo "(best of $repeat runs each; ratio: overlayfs time / ours for throughput, ours / overlayfs for time taken)"
  echo
  echo "| figure | overlayfs | slayerfs | ratio | goal |"
  echo "|---|---|---|---|---|"
  row() { echo "| $1 | $2 | $3 | $4 | $5 |"; }
  ms() { awk -v t="$1" 'BEGIN { printf "%.1f ms", t * 1000 }'; }
  local to tk

  # Sequential read of a 1 GiB file.
  ours img-fs
  kernel img-fs
  cat "$m/$big" > /dev/null
  cat "$k/$big" > /dev/null
  tk=$(best_of cat "$k/$big")
  to=$(best_of cat "$m/$big")
  row "1 GiB sequential read, warm (page cache)" "$(mbps $size "$tk") MB/s" "$(mbps $size "$to") MB/s" "$(ratio "$tk" "$to")" "≥ 0.9"
  timed_call drop_caches cat "$k/$big"
  tk=$elapsed
  timed_call drop_caches cat "$m/$big"
  to=$elapsed
  row "1 GiB sequential read, page cache dropped (ours: memory block cache; overlayfs: disk)" "$(mbps $size "$tk") MB/s" "$(mbps $size "$to") MB/s" "$(ratio "$tk" "$to")" "—"

  # stat of every entry of the 50,000-entry tree.
  local n_entries
  n_entries=$(find "$k" | wc -l)
  remount_cold() { unmount_all; ours img-fs; kernel img-fs; drop_caches; }
  timed_call remount_cold find "$k" -printf '%s %m\n'
  tk=$elapsed
  timed_call remount_cold find "$m" -printf '%s %m\n'
  to=$elapsed
  row "stat of every entry ($n_entries), cold: fresh mount, caches dropped" "$(ms "$tk")" "$(ms "$to")" "$(ratio "$to" "$tk")" "≤ 1.5"
  tk=$(best_of find "$k" -printf '%s %m\n')
  to=$(best_of find "$m" -printf '%s %m\n')
  row "stat of every entry ($n_entries), warm" "$(ms "$tk")" "$(ms "$to")" "$(ratio "$to" "$tk")" "≤ 1.5"

  # A 1-byte write into the middle of the 1 GiB lower file.
  write_byte() { printf x | dd of="$1" bs=1 seek=$((size / 2)) conv=notrunc status=none; }
  fresh_rw() {
    unmount_all
    rm -rf "$fs/upper"
    ours img-fs --rw --upper "$fs/upper"
    kernel img-fs rw
    cat "$k/$big" > /dev/null
  }
  timed_call fresh_rw write_byte "$k/$big"
  tk=$elapsed
  timed_call fresh_rw write_byte "$m/$big"
  to=$elapsed
  row "1-byte write into a 1 GiB lower file (overlayfs copies the file up)" "$(ms "$tk")" "$(ms "$to")" "$(awk -v a="$to" -v b="$tk" 'BEGIN { printf "%.4f", a / b }')" "≤ 0.01"
  unmount_all
  rm -rf "$fs/upper" "$fs/kupper" "$fs/kwork"

  # Lookup latency: 20,000 files by path on a fresh mount, 1 layer vs 128.
  local i
  for i in $(seq 0 19999); do
    printf 'usr/share/bench/%03d/file-%06d.dat\n' $((i % 500)) "$i"
  done > "$fs/paths.txt"
  lookups() { # lookups ROOT: µs per stat of each listed path
    python3 -c '
import os, sys, time
root = sys.argv[1]
paths = [os.path.join(root, p.strip()) for p in open(sys.argv[2])]
t = time.perf_counter()
for p in paths:
    os.stat(p)
print(f"{(time.perf_counter() - t) / len(paths) * 1e6:.2f}")
' "$1" "$fs/paths.txt"
  }
  best_lookup() { # best_lookup IMAGE ours|kernel: best µs per lookup, fresh mounts
    local best="" t
    for _ in $(seq "$repeat"); do
      unmount_all
      if [ "$2" = ours ]; then
        ours "$1"
        drop_caches
        t=$(lookups "$m")
      else
        kernel "$1"
        drop_caches
        t=$(lookups "$k")
      fi
      if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
    done
    echo "$best"
  }
  local o1 o128 k1 k128
  o1=$(best_lookup img-l1 ours)
  o128=$(best_lookup img-l128 ours)
  k1=$(best_lookup img-l1 kernel)
  k128=$(best_lookup img-l128 kernel)
  unmount_all
  row "lookup by path, 1 layer (µs per path, fresh mount)" "$k1 µs" "$o1 µs" "—" "—"
  row "lookup by path, 128 layers (µs per path, fresh mount)" "$k128 µs" "$o128 µs" "ours 128/1 layers: **$(ratio "$o128" "$o1")**; overlayfs 128/1: $(ratio "$k128" "$k1")" "≤ 1.2"

  # Cold sequential read from the local S3 server vs raw GETs of the same blocks.
  gen img-large --small-files 0 --large-files 1 --large-mib 1024
  start_s3
  "$bin/slayerfs" convert -q "oci:$work/img-large:tar" "oci:$fs/conv-s3:tar" --store s3://bench --s3-endpoint "$endpoint" >/dev/null
  get_blocks() { "$bin/slayerfs-s3-get" --endpoint "$endpoint" --bucket bench --blocks "$work/s3/bench/blocks" --parallel "$1"; }
  local g1 g4 stored
  stored=$(get_blocks 1 | awk '{printf "%.0f", $1 / 1048576}')
  g1=$(best_of get_blocks 1)
  g4=$(best_of get_blocks 4)
  s3_mount() {
    unmount_all
    drop_caches
    "$bin/slayerfs" mount --daemon --log "$fs/mount.log" "oci:$fs/conv-s3:tar" "$m" --store s3://bench --s3-endpoint "$endpoint" >/dev/null
  }
  timed_call s3_mount cat "$m/$big"
  to=$elapsed
  unmount_all
  kill "$s3_pid"
  wait "$s3_pid" 2>/dev/null || true
  rm -rf "$work/s3" "$fs/conv-s3"
  row "1 GiB cold read from the local S3 server ($stored MiB stored) vs raw GETs of its blocks, one at a time" "GETs $(ms "$g1")" "$(ms "$to")" "$(ratio "$g1" "$to")" "≥ 0.8"
  row "the same vs raw GETs four at a time (our read-ahead window)" "GETs $(ms "$g4")" "$(ms "$to")" "$(ratio "$g4" "$to")" "—"
  bench_random_reads
}

# 100 random 4 KiB reads of a cold 512 MiB file in the local S3 server:
# bytes the server sent per byte read, blocks in parts (the default) beside
# the same image converted with one frame per block (part_kib = 4096, what
# every read fetched before parts); then a cold sequential read of the
# same file beside raw GETs of its blocks four at a time.
bench_random_reads() {
  gen img-512 --small-files 0 --large-files 1 --large-mib 512
  local big=opt/models/large-0.bin stats=$work/s3.stats
  # Cold means cold: no disk cache (the default one would outlive the
  # mounts and serve every block), a memory cache each mount starts empty.
  local cold_cfg=$fs/random.toml
  printf 'state_dir = "%s"\n[cache]\ndisk_bytes = 0\n' "$fs/state-random" > "$cold_cfg"
  export SLAYERFS_CONFIG=$cold_cfg
  start_s3 --stats "$stats"
  local whole_cfg=$fs/whole.toml
  printf 'state_dir = "%s"\n[convert]\npart_kib = 4096\n' "$fs/state-random" > "$whole_cfg"
  "$bin/slayerfs" convert -q "oci:$work/img-512:tar" "oci:$fs/conv-parts:tar" --store s3://bench/parts --s3-endpoint "$endpoint" >/dev/null
  SLAYERFS_CONFIG=$whole_cfg "$bin/slayerfs" convert -q "oci:$work/img-512:tar" "oci:$fs/conv-whole:tar" --store s3://bench/whole --s3-endpoint "$endpoint" >/dev/null
  sent() { sleep 0.3; awk '{print $4}' "$stats"; }
  random_reads() { # random_reads FILE: 100 preads of 4 KiB at fixed random offsets
    python3 -c '
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
rng = random.Random(14)
for _ in range(100):
    at = rng.randrange(1, size // 4096) * 4096
    assert len(os.pread(fd, 4096, at)) == 4096
' "$1"
  }
  s3_mount_of() { # s3_mount_of CONV PREFIX: a cold mount of CONV, blocks under s3://bench/PREFIX
    unmount_all
    drop_caches
    "$bin/slayerfs" mount --daemon --log "$fs/mount.log" "oci:$fs/$1:tar" "$m" --store "s3://bench/$2" --s3-endpoint "$endpoint" >/dev/null
  }
  local per_whole per_parts before t0 t1 t_whole t_parts per t_read
  per_read() { # per_read CONV PREFIX: bytes sent per byte read in $per, time in $t_read
    s3_mount_of "$1" "$2"
    before=$(sent)
    t0=$(now)
    random_reads "$m/$big"
    t1=$(now)
    t_read=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    per=$(awk -v a="$(sent)" -v b="$before" 'BEGIN { printf "%.1f", (a - b) / (100 * 4096) }')
  }
  per_read conv-whole whole
  per_whole=$per t_whole=$t_read
  per_read conv-parts parts
  per_parts=$per t_parts=$t_read
  row "100 random 4 KiB reads of a cold 512 MiB file: bytes fetched per byte read (baseline: one frame per block)" "$per_whole" "$per_parts" "$(ratio "$per_parts" "$per_whole")" "≤ 64"
  row "the same 100 reads, time taken" "$(ms "$t_whole")" "$(ms "$t_parts")" "$(ratio "$t_parts" "$t_whole")" "—"
  local g4
  get_blocks() { "$bin/slayerfs-s3-get" --endpoint "$endpoint" --bucket bench --prefix parts --blocks "$work/s3/bench/parts/blocks" --parallel "$1"; }
  g4=$(best_of get_blocks 4)
  mount_parts() { s3_mount_of conv-parts parts; }
  timed_call mount_parts cat "$m/$big"
  row "512 MiB cold sequential read (blocks in parts) vs raw GETs of its blocks four at a time" "GETs $(ms "$g4")" "$(ms "$elapsed")" "$(ratio "$g4" "$elapsed")" "≥ 0.8"
  unmount_all
  kill "$s3_pid"
  wait "$s3_pid" 2>/dev/null || true
  rm -rf "$work/s3" "$fs/conv-parts" "$fs/conv-whole"
}
