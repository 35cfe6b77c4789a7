#!/usr/bin/env bash
# Installs the Debian packages SlayerFS needs. Idempotent and quiet when
# everything is present already.
#
#   scripts/install-deps.sh          build + test dependencies
set -euo pipefail

packages=(
  protobuf-compiler   # protoc, for the protobuf definitions
  fuse3               # fusermount3, for FUSE mounts
  containerd runc     # the container runtime the snapshotter serves
  docker-registry     # a local OCI registry for lazy-pull tests
  apache2-utils       # htpasswd, for a registry that wants credentials
  umoci skopeo        # building and copying OCI images
  busybox-static      # a self-contained userland for test images
  zstd openssl time   # benchmark baselines and peak-memory measurement
  golang-go golang-github-containerd-containerd-dev  # containerd's snapshotter conformance suite
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Packages must not start their services on install (containerd, the
# registry): the tests and the demo start their own, on their own sockets.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
cleanup() { [ "$created_policy" = 1 ] && rm -f "$policy"; }
trap cleanup EXIT
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
