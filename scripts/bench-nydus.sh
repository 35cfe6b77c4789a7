# Sourced by bench.sh: `scripts/bench.sh nydus`, our mount beside nydusd
# (RAFS v6, FUSE) on the same files, same run: a 1 GiB file and 20,000
# small files, blocks and blobs on the local disk. Nothing of nydus is built
# or kept here: `nydus-image` and `nydusd` are taken from $NYDUS_IMAGE and
# $NYDUSD, else from the PATH; without them the benchmark says so and
# stops.
#
# nydus gets the layers' merged tree as one RAFS (`nydus-image create`,
# zstd, 1 MiB chunks) read from its blob (localfs backend) through its blob
# cache, which RAFS v6 requires and which is emptied before every cold
# mount (ours has no disk cache here); it verifies nothing on read (RAFS v6
# refuses `digest_validate`). Ours checks every block against its sha256.

bench_nydus() {
  local nydus_image=${NYDUS_IMAGE:-$(command -v nydus-image || true)}
  local nydusd=${NYDUSD:-$(command -v nydusd || true)}
  if [ ! -x "$nydus_image" ] || [ ! -x "$nydusd" ]; then
    echo "bench nydus: skipped, no nydus-image and nydusd (set NYDUS_IMAGE and NYDUSD, or put them on the PATH)"
    return 0
  fi
  local fs=$work/fs nd=$work/nydus name=img-nydus
  mkdir -p "$fs" "$nd"
  gen "$name" --small-files 20000 --large-files 1 --large-mib 1024
  local cfg=$nd/slayerfs.toml
  printf 'state_dir = "%s"\n[cache]\ndisk_bytes = 0\n' "$nd/state" > "$cfg"
  export SLAYERFS_CONFIG=$cfg
  if [ ! -f "$nd/conv/index.json" ]; then
    echo "converting $name ..." >&2
    rm -rf "$nd/conv" "$nd/store"
    "$bin/slayerfs" convert -q "oci:$work/$name:tar" "oci:$nd/conv:tar" --store "$nd/store" >/dev/null
  fi
  if [ ! -f "$nd/image.boot" ]; then
    echo "building the RAFS of $name ..." >&2
    rm -rf "$nd/tree" "$nd/blobs" "$nd/image.boot"
    mkdir -p "$nd/tree" "$nd/blobs"
    local blob
    while read -r blob; do tar -xf "$blob" -C "$nd/tree"; done < <(layer_blobs tar "$work/$name")
    "$nydus_image" create --log-level warn --fs-version 6 --compressor zstd --chunk-size 0x100000 \
      --blob-dir "$nd/blobs" --bootstrap "$nd/image.boot.part" "$nd/tree" >/dev/null
    mv "$nd/image.boot.part" "$nd/image.boot"
  fi
  printf '{"device":{"backend":{"type":"localfs","config":{"dir":"%s"}},"cache":{"type":"blobcache","config":{"work_dir":"%s"}}},"mode":"direct","digest_validate":false,"iostats_files":false,"enable_xattr":true,"fs_prefetch":{"enable":false}}\n' \
    "$nd/blobs" "$nd/cache" > "$nd/nydusd.json"

  # Not local: the EXIT trap that unmounts them may run after this function.
  m=$nd/mnt n=$nd/nmnt nydusd_pid=""
  mkdir -p "$m" "$n"
  unmount_both() {
    if mountpoint -q "$m"; then fusermount3 -u "$m"; fi
    if [ -n "$nydusd_pid" ]; then
      if mountpoint -q "$n"; then umount "$n" 2>/dev/null || fusermount3 -u "$n" || true; fi
      kill "$nydusd_pid" 2>/dev/null || true
      wait "$nydusd_pid" 2>/dev/null || true
      nydusd_pid=""
    fi
    sleep 0.3
  }
  trap unmount_both EXIT
  unmount_both
  ours_up() { "$bin/slayerfs" mount --daemon --log "$nd/mount.log" "oci:$nd/conv:tar" "$m" --store "$nd/store" >/dev/null; }
  nydus_up() {
    rm -rf "$nd/cache" && mkdir -p "$nd/cache"
    "$nydusd" --config "$nd/nydusd.json" --bootstrap "$nd/image.boot" --mountpoint "$n" --rlimit-nofile 0 \
      --log-level warn > "$nd/nydusd.log" 2>&1 &
    nydusd_pid=$!
    local i
    for i in $(seq 100); do mountpoint -q "$n" && return 0; sleep 0.1; done
    echo "bench nydus: nydusd did not mount" >&2
    cat "$nd/nydusd.log" >&2
    return 1
  }
  # Fresh mounts, caches dropped; then the tools the figures run are
  # loaded again, so that neither side pays for reading them from disk.
  fresh_both() {
    unmount_both
    ours_up
    nydus_up
    drop_caches
    find "$nd/blobs" -maxdepth 0 -printf '%s %m %U\n' > /dev/null
    cat /dev/null
  }

  local big=opt/models/large-0.bin size=$((1 << 30))
  fresh_both
  cmp "$m/$big" "$n/$big" || { echo "bench nydus: the two mounts differ" >&2; return 1; }
  # (Directory sizes are the filesystem's own business.)
  tree_of() { (cd "$1" && find . \( -type d -printf '%p d %m %U\n' \) -o -printf '%p %s %m %U\n' | sort); }
  diff <(tree_of "$m") <(tree_of "$n") > /dev/null ||
    { echo "bench nydus: the two trees differ" >&2; return 1; }
  walk() { find "$1" -printf '%s %m %U\n' > /dev/null; }

  # cold_pair CMD: best of $repeat fresh mounts with caches dropped, each
  # side measured in turn, which goes first alternating; sets $t_ours and
  # $t_nydus.
  cold_pair() {
    local cmd=$1 best_o="" best_n="" t0 t1 t i side
    for i in $(seq "$repeat"); do
      fresh_both
      for side in $( ((i % 2)) && echo "$m $n" || echo "$n $m"); do
        t0=$(now); "$cmd" "$side"; t1=$(now)
        t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
        if [ "$side" = "$m" ]; then
          if [ -z "$best_o" ] || awk -v a="$t" -v b="$best_o" 'BEGIN { exit !(a < b) }'; then best_o=$t; fi
        else
          if [ -z "$best_n" ] || awk -v a="$t" -v b="$best_n" 'BEGIN { exit !(a < b) }'; then best_n=$t; fi
        fi
      done
    done
    t_ours=$best_o t_nydus=$best_n
  }
  read_big() { cat "$1/$big" > /dev/null; }
  local t_ours t_nydus
  echo
  echo "(best of $repeat; ratio: nydusd time / ours, > 1 is faster than nydusd)"
  echo
  echo "| figure | nydusd | slayerfs | ratio | goal |"
  echo "|---|---|---|---|---|"
  row() { echo "| $1 | $2 | $3 | $4 | $5 |"; }
  ms() { awk -v t="$1" 'BEGIN { printf "%.0f ms", t * 1000 }'; }

  cold_pair read_big
  row "1 GiB sequential read, cold (fresh mount, page cache dropped)" "$(mbps $size "$t_nydus") MB/s" "$(mbps $size "$t_ours") MB/s" "$(ratio "$t_nydus" "$t_ours")" "≥ 1.0"
  # Warm: the same mounts, the file read once already.
  read_big "$m"; read_big "$n"
  t_ours=$(best_of read_big "$m")
  t_nydus=$(best_of read_big "$n")
  row "1 GiB sequential read, warm (page cache)" "$(mbps $size "$t_nydus") MB/s" "$(mbps $size "$t_ours") MB/s" "$(ratio "$t_nydus" "$t_ours")" "≥ 1.0"
  local entries
  entries=$(find "$m" | wc -l)
  cold_pair walk
  row "tree walk, \`find -printf '%s %m %U'\` of $entries entries, cold" "$(ms "$t_nydus")" "$(ms "$t_ours")" "$(ratio "$t_nydus" "$t_ours")" "≥ 1.0"
  t_ours=$(best_of walk "$m")
  t_nydus=$(best_of walk "$n")
  row "the same walk, warm" "$(ms "$t_nydus")" "$(ms "$t_ours")" "$(ratio "$t_nydus" "$t_ours")" "≥ 1.0"
  unmount_both
  trap - EXIT
}
