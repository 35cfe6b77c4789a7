#!/usr/bin/env bash
# Installs the Debian packages SlayerFS needs. Idempotent and quiet when
# everything is present already; exits 0 whenever the packages end up
# installed, whatever the machine had before (a policy-rc.d of its own or
# none, apt lists or none), and otherwise says what failed and why.
#
# It never removes a package: a container runtime installed from another
# package (Docker's containerd.io ships containerd and runc) is used as it
# is, and an install that would remove anything is refused with the names.
#
#   scripts/install-deps.sh          build + test dependencies
#
# Then the newer runtimes the tests run beside the system's containerd
# (containerd 2.x and 1.7, Docker Engine), unpacked into the checkout by
# scripts/install-runtimes.sh when it is beside this script.
set -euo pipefail

say() { echo "install-deps: $*" >&2; }
fail() { say "$*"; exit 1; }

packages=(
  protobuf-compiler   # protoc, for the protobuf definitions
  fuse3               # fusermount3, for FUSE mounts
  containerd runc     # the container runtime the snapshotter serves
  docker-registry     # a local OCI registry for lazy-pull tests
  apache2-utils       # htpasswd, for a registry that wants credentials
  umoci skopeo        # building and copying OCI images
  busybox-static      # a self-contained userland for test images
  zstd openssl time   # benchmark baselines and peak-memory measurement
  debootstrap         # a real Debian rootfs for the lazy-start benchmark
  prometheus          # a real scraper of the daemon's /metrics
  golang-go golang-github-containerd-containerd-dev  # containerd's snapshotter conformance suite
)
# Packages whose command may come from another package (Docker's
# containerd.io conflicts with Debian's containerd and runc and ships both
# commands): if the command is there, the package is not needed.
declare -A command_of=([containerd]=containerd [runc]=runc)

# The runtimes in the checkout, once the packages are in place.
runtimes() {
  local script
  script="$(dirname "$0")/install-runtimes.sh"
  if [ -x "$script" ]; then "$script"; fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${packages[@]}"; do
  installed "$p" && continue
  cmd=${command_of[$p]:-}
  if [ -n "$cmd" ] && path=$(command -v "$cmd"); then
    owner=$(dpkg-query -S "$(readlink -f "$path")" 2>/dev/null | cut -d: -f1 || true)
    say "using $path${owner:+ (package $owner)} instead of Debian's $p"
    continue
  fi
  missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  runtimes
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  fail "missing ${missing[*]}; run as root to install them"
fi
say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Packages must not start their services on install (containerd, the
# registry): the tests and the demo start their own, on their own sockets.
# A policy-rc.d the machine has is its owner's and stays as it is; one made
# here is removed on every way out.
policy=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
  if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
  if [ -n "${log:-}" ]; then rm -f "$log"; fi
}
trap cleanup EXIT
if [ ! -e "$policy" ] && [ ! -L "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  created_policy=1
fi
log=$(mktemp)

# What would the install remove? Nothing may go (a user's runtime above all).
# Simulated first, so that a refusal names the packages; --no-remove makes
# apt itself refuse too. Returns 2 when the lists should be fetched first.
install_once() {
  local simulated removed
  if ! simulated=$(apt-get -s install --no-install-recommends "${missing[@]}" 2>&1); then
    printf '%s\n' "$simulated" > "$log"
    return 2
  fi
  removed=$(printf '%s\n' "$simulated" | awk '$1 == "Remv" { print $2 }' | tr '\n' ' ')
  if [ -n "$removed" ]; then
    fail "installing ${missing[*]} would remove ${removed% }; nothing was changed. Install what conflicts by hand (or make its commands available on PATH) and run this again"
  fi
  apt-get install -y -q --no-install-recommends --no-remove "${missing[@]}" > "$log" 2>&1 || return 2
}
rc=0
install_once || rc=$?
if [ "$rc" -ne 0 ]; then
  # No lists yet, or stale ones naming versions the mirror no longer has.
  say "updating the package lists and trying again"
  if ! apt-get update > "$log" 2>&1; then
    sed 's/^/  apt-get: /' "$log" >&2
    fail "apt-get update failed (see above)"
  fi
  rc=0
  install_once || rc=$?
  if [ "$rc" -ne 0 ]; then
    sed 's/^/  apt-get: /' "$log" >&2
    fail "apt-get install ${missing[*]} failed (see above)"
  fi
fi
still=()
for p in "${missing[@]}"; do installed "$p" || still+=("$p"); done
if [ "${#still[@]}" -ne 0 ]; then
  fail "apt-get reported success but ${still[*]} is not installed"
fi
say "installed ${missing[*]}"
runtimes
