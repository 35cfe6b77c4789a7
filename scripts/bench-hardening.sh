# Sourced by bench.sh: `scripts/bench.sh hardening`, the figures of issue
# 13's table, with release binaries:
# - Prepare latency idle, then while 16 stand-in containers work, garbage
#   collections run back to back and a 1 GiB upper is committed (the
#   baseline is the idle run of the same daemon, in the same run); and
#   again with the Commit and the collections alone;
# - the daemon's resident memory with 10 mounted images of 50,000 entries
#   each, every entry looked up (beside its memory at start);
# - the longest stall of a metadata operation while the store black-holes,
#   crawls at 1 MB/s, answers 5xx, resets mid-body or sends wrong bytes
#   (the fault test, run $REPEAT times; the slowest of all).
# The harness is ignored tests of the integration crate, built here in
# release like the binaries they start.

bench_hardening() {
  local log=$work/hardening.log
  : > "$log"
  for _ in $(seq "$repeat"); do
    cargo nextest run --release --locked -p slayerfs-integration --test bench_hardening \
      --run-ignored only --no-capture 2>&1 | grep '^bench:' | tee -a "$log"
    # The same load without the working containers: the Commit and the
    # collections alone.
    BENCH_CONTAINERS=0 cargo nextest run --release --locked -p slayerfs-integration \
      --test bench_hardening --run-ignored only --no-capture bench_prepare 2>&1 |
      grep '^bench:' | tee -a "$log"
  done
  for _ in $(seq "$repeat"); do
    cargo nextest run --release --locked -p slayerfs-integration --test faults \
      --no-capture 2>&1 | grep -E 'slowest metadata operation|fell back after' | tee -a "$log"
  done
  echo "== medians and maxima"
  for n in 16 0; do
    grep "loaded/idle.*($n containers)" "$log" |
      awk -v n="$n" '{ print "loaded/idle (" n " containers) p50 " $5 ", p99 " $7 }' |
      sort | sed -n "$(( (repeat + 1) / 2 ))p"
  done
  grep 'daemon RSS' "$log" | sort -t' ' -k7 -n | tail -n 1
  for f in black-hole slow 5xx-burst 5xx reset wrong-bytes; do
    grep "^$f: slowest" "$log" | awk -v f="$f" '
      { v = $NF
        if (v ~ /µs$/) { sub(/µs$/, "", v); v /= 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v) }
        else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }
        if (v + 0 > m) m = v + 0 }
      END { printf "%s: longest metadata stall %.1f ms\n", f, m }'
  done
}
