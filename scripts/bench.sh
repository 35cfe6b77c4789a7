#!/usr/bin/env bash
# Benchmarks. Every figure is printed beside a baseline measured in the same
# run; results and the command go to BENCHMARKS.md by hand.
#
#   scripts/bench.sh convert    conversion speed and peak memory
#   scripts/bench.sh fs         the mounted filesystem beside kernel overlayfs
#                               (`fs random`: only random reads in parts)
#   scripts/bench.sh snapshotter  the containerd snapshotter beside overlayfs's
#   scripts/bench.sh lazy       pull-to-first-output of a converted image beside
#                               a full pull into overlayfs
#   scripts/bench.sh restart    what a working container sees of a kill -9 and
#                               a new start, with 1 and 50 active snapshots
#   scripts/bench.sh hardening  Prepare latency idle vs under load, memory
#                               with 10 large images, metadata stalls while
#                               the store is sick
#   scripts/bench.sh nydus      our mount beside nydusd on the same files
#                               (nydus-image and nydusd from $NYDUS_IMAGE and
#                               $NYDUSD or the PATH; skipped without them)
#
# BENCH_DIR (default /var/tmp/slayerfs-bench) holds the generated image and
# the stores; the image is generated once and reused. Each figure, baseline
# included, is the best of REPEAT runs (default 3): this VM's speed swings by
# 20 % from one run to the next.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-convert}

scripts/install-deps.sh
cargo build --release --bins --locked -q
bin=$PWD/target/release
work=${BENCH_DIR:-/var/tmp/slayerfs-bench}
mkdir -p "$work"
export SLAYERFS_CONFIG=$work/empty.toml
: > "$SLAYERFS_CONFIG"

now() { date +%s.%N; }
mbps() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.0f", b / 1e6 / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

repeat=${REPEAT:-3}

# Runs a command under GNU time; sets $elapsed (s) and $peak_mib.
timed_once() {
  local out=$work/time.out
  /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null
  read -r elapsed peak_kib < "$out"
  peak_mib=$((peak_kib / 1024))
}

# timed PREPARE CMD…: best of $repeat runs of CMD, each after PREPARE (a
# function that resets state) and a sync; peak RSS is the largest seen.
timed() {
  local prepare=$1; shift
  local best="" worst_peak=0
  for _ in $(seq "$repeat"); do
    "$prepare"; sync
    timed_once "$@"
    if [ -z "$best" ] || awk -v a="$elapsed" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$elapsed; fi
    [ "$peak_mib" -gt "$worst_peak" ] && worst_peak=$peak_mib
  done
  elapsed=$best
  peak_mib=$worst_peak
}

# best_of CMD…: the shortest wall time of $repeat runs, in seconds.
best_of() {
  local best="" t0 t1 t
  for _ in $(seq "$repeat"); do
    t0=$(now); "$@" >/dev/null; t1=$(now)
    t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
  done
  echo "$best"
}

layer_blobs() { # layer_blobs TAG [IMAGE_DIR]: paths of the image's layer blobs
  python3 - "${2:-$work/image}" "$1" <<'PY'
import json, sys
root, tag = sys.argv[1], sys.argv[2]
idx = json.load(open(f"{root}/index.json"))
m = next(d for d in idx["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
man = json.load(open(f"{root}/blobs/sha256/{m['digest'][7:]}"))
for l in man["layers"]:
    print(f"{root}/blobs/sha256/{l['digest'][7:]}")
PY
}

bench_convert() {
  local img=$work/image
  if [ ! -f "$img/index.json" ]; then
    echo "generating the benchmark image (20,000 small files + 4 x 200 MiB) ..." >&2
    "$bin/slayerfs-gen-image" --out "$img" --gzip >&2
  fi
  mapfile -t tars < <(layer_blobs tar)
  local bytes
  bytes=$(cat "${tars[@]}" | wc -c)
  cat "${tars[@]}" > /dev/null # warm the page cache for everyone alike

  # Baseline: sha256 (openssl, SHA-NI) + zstd -3, one core, same bytes.
  local t_sha t_zstd
  t_sha=$(best_of taskset -c 0 openssl dgst -sha256 "${tars[@]}")
  t_zstd=$(best_of taskset -c 0 zstd -3 -T1 -q -c "${tars[@]}")
  local base
  base=$(awk -v b="$bytes" -v s="$t_sha" -v z="$t_zstd" 'BEGIN { printf "%.0f", b / 1e6 / (s + z) }')

  echo
  echo "image: $(ratio "$bytes" 1073741824) GiB uncompressed in ${#tars[@]} layers; $(nproc) cores"
  echo "baseline, one core: sha256 $(mbps "$bytes" "$t_sha") MB/s + zstd -3 $(mbps "$bytes" "$t_zstd") MB/s = $base MB/s"
  echo
  echo "(best of $repeat runs each)"
  echo
  echo "| run | seconds | MB/s | vs one-core sha256+zstd | peak RSS MiB |"
  echo "|---|---|---|---|---|"
  row() { echo "| $1 | $elapsed | $(mbps "$bytes" "$elapsed") | $(ratio "$(mbps "$bytes" "$elapsed")" "$base") | $peak_mib |"; }

  fresh_local() { rm -rf "$work/store" "$work/out"; }
  keep_store() { rm -rf "$work/out"; }
  timed fresh_local "$bin/slayerfs" convert -q "oci:$img:tar" "oci:$work/out:tar" --store "$work/store" --workers 1
  row "tar -> local dir, 1 worker"
  timed fresh_local "$bin/slayerfs" convert -q "oci:$img:tar" "oci:$work/out:tar" --store "$work/store"
  row "tar -> local dir"
  timed keep_store "$bin/slayerfs" convert -q "oci:$img:tar" "oci:$work/out:again" --store "$work/store"
  row "tar -> local dir, again (all blocks present)"
  timed fresh_local "$bin/slayerfs" convert -q "oci:$img:gzip" "oci:$work/out:gzip" --store "$work/store"
  row "gzip -> local dir"
  fresh_local

  start_s3
  fresh_bucket() { rm -rf "$work/s3/bench" "$work/out"; mkdir -p "$work/s3/bench"; }
  timed fresh_bucket "$bin/slayerfs" convert -q "oci:$img:tar" "oci:$work/out:s3" --store s3://bench --s3-endpoint "$endpoint"
  row "tar -> local S3 server"
  timed fresh_bucket "$bin/slayerfs" convert -q "oci:$img:gzip" "oci:$work/out:s3gz" --store s3://bench --s3-endpoint "$endpoint"
  row "gzip -> local S3 server"
  kill "$s3_pid"; wait "$s3_pid" 2>/dev/null || true
  rm -rf "$work/s3" "$work/store" "$work/out"
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

gen() { # gen NAME ARGS…: a generated image under $work, made once
  local dir=$work/$1
  shift
  if [ ! -f "$dir/index.json" ]; then
    echo "generating $dir ..." >&2
    "$bin/slayerfs-gen-image" --out "$dir" "$@" >&2
  fi
}

# Starts the S3 test server on $work/s3 with bucket `bench`; sets $endpoint
# and $s3_pid.
start_s3() {
  rm -rf "$work/s3"
  local port_file=$work/s3.port
  "$bin/slayerfs-test-s3" --root "$work/s3" --bucket bench "$@" > "$port_file" &
  s3_pid=$!
  for _ in $(seq 100); do grep -q listening "$port_file" 2>/dev/null && break; sleep 0.1; done
  endpoint="http://$(awk '{print $3}' "$port_file")"
  export AWS_ACCESS_KEY_ID=slayerfs-test AWS_SECRET_ACCESS_KEY=slayerfs-test-secret
}

source scripts/bench-fs.sh
source scripts/bench-snapshotter.sh
source scripts/bench-lazy.sh
source scripts/bench-restart.sh
source scripts/bench-hardening.sh
source scripts/bench-nydus.sh

case "$what" in
  convert) bench_convert ;;
  fs) bench_fs "${2:-}" ;;
  snapshotter) bench_snapshotter ;;
  lazy) bench_lazy ;;
  restart) bench_restart ;;
  hardening) bench_hardening ;;
  nydus) bench_nydus ;;
  *) echo "bench.sh: unknown benchmark '$what' (known: convert, fs, snapshotter, lazy, restart, hardening, nydus)" >&2; exit 2 ;;
esac
