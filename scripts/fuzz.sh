#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo fuzz, libFuzzer):
# the layer index and trace decoders, layer import and the List filter parser. Needs a
# nightly toolchain (rustup); installs cargo-fuzz into target/tools if it is
# not on PATH.
#
#   scripts/fuzz.sh                 every target for 60 s (what test.sh runs)
#   scripts/fuzz.sh SECONDS         every target for SECONDS
#   scripts/fuzz.sh SECONDS TARGET  one target (a long run by hand)
#
# New inputs go to target/fuzz-corpus/TARGET (the committed corpus in
# fuzz/corpus/TARGET is read, never written); a crash stops the run with
# the input in fuzz/artifacts/TARGET. Copy a crash into
# fuzz/regressions/TARGET once fixed: the corpus tests replay it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
targets=(index_blob trace_blob layer_blob list_filter)
if [ -n "${2:-}" ]; then
  targets=("$2")
fi
# Bounded memory is part of what is checked: no input may make one
# allocation or the whole process grow past these.
rss_mb=${FUZZ_RSS_MB:-1536}
malloc_mb=${FUZZ_MALLOC_MB:-512}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain; fuzz targets not run" >&2
  exit 2
fi
tools=$PWD/target/tools
if ! cargo fuzz --version >/dev/null 2>&1; then
  if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "fuzz: installing cargo-fuzz into $tools" >&2
    cargo install cargo-fuzz --locked --version 0.13.2 --root "$tools" --quiet
  fi
  export PATH="$tools/bin:$PATH"
fi

# Safe Rust: no sanitizer (libFuzzer still finds panics, overflows with
# debug assertions, and memory past the limits).
one=()
[ "${#targets[@]}" -eq 1 ] && one=("${targets[0]}")
log=target/fuzz-corpus/build.log
mkdir -p target/fuzz-corpus
if ! cargo +nightly fuzz build --fuzz-dir fuzz -s none --debug-assertions "${one[@]}" >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "fuzz: building the targets failed" >&2
  exit 1
fi
for t in "${targets[@]}"; do
  out=target/fuzz-corpus/$t
  mkdir -p "$out" "fuzz/artifacts/$t"
  echo "fuzz: $t for ${seconds}s" >&2
  if ! cargo +nightly fuzz run --fuzz-dir fuzz -s none --debug-assertions "$t" "$out" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" \
    -timeout=20 -print_final_stats=1 >"$out.log" 2>&1; then
    tail -n 40 "$out.log" >&2
    echo "fuzz: $t failed; the input is in fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$out.log" | sed "s/^/fuzz: $t /" >&2
done
