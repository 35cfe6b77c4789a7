#!/usr/bin/env bash
# Installs what the tests need and runs every test: formatting, lints, unit
# tests and the end-to-end tests against real servers. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/steps.sh

step "installing dependencies (scripts/install-deps.sh)"
scripts/install-deps.sh
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "build binaries"
# The end-to-end tests run the real binaries.
cargo build --workspace --bins --locked
step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked --no-fail-fast
fi
step "fuzz targets, a short run each (scripts/fuzz.sh; their corpora were replayed above)"
if cargo +nightly --version >/dev/null 2>&1; then
  scripts/fuzz.sh "${SLAYERFS_FUZZ_SECONDS:-60}"
else
  echo "WARNING: no nightly toolchain; fuzz targets not run" >&2
fi
step "install-deps.sh on a machine in other states (isolated roots)"
scripts/test-install-deps.sh
step "containerd's snapshotter conformance suite"
# The suite's runner lives beside the repository (shared with containerd's
# own snapshotters); it starts one daemon per sub-test and stops it with
# SIGTERM, which must then unmount everything (a plain SIGTERM is a restart).
conformance=${SLAYERFS_CONFORMANCE_RUN:-../shared/conformance/run}
if [ -x "$conformance" ]; then
  SNAPSHOTTER_ARGS=--unmount-on-exit "$conformance" target/debug/slayerfs-snapshotter
else
  echo "WARNING: conformance runner not found at $conformance; suite not run" >&2
fi
echo "== all tests passed"
