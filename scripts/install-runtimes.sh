#!/usr/bin/env bash
# Fetches the newer container runtimes the tests run beside the system's
# containerd, without installing them over it: containerd 2.x (Debian's
# unstable suite), containerd 1.7 (trixie) and Docker Engine (docker.io +
# docker-cli, unstable). Each package is downloaded with `apt-get download`
# through a private sources list (the machine's own Debian mirror, another
# suite; the machine's apt state is not touched) and unpacked with
# `dpkg-deb -x` into its own directory under DEST. They need only libc ≥
# 2.34, which this Debian has.
#
# Idempotent: a runtime already unpacked at a version that is good enough
# is kept without asking the network. Versions in those suites move, so
# any version at or above the floor below is accepted.
#
#   scripts/install-runtimes.sh [DEST]   (default: .runtimes in the checkout)
#
# Environment: SLAYERFS_DEBIAN_MIRROR overrides the mirror read from the
# machine's apt sources.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "install-runtimes: $*" >&2; }
fail() { say "$*"; exit 1; }

dest=${1:-.runtimes}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

# name suite package... : floor (lowest accepted version of the first package)
runtimes=(
  "containerd-2 sid 2.1 containerd"
  "containerd-1.7 trixie 1.7 containerd"
  "docker sid 28 docker.io docker-cli"
)

# The directory holds a good enough unpack of NAME: its .version (written
# last, after a complete unpack) is at or above FLOOR.
good() {
  local dir=$1 floor=$2 version
  [ -f "$dir/.version" ] || return 1
  version=$(head -n1 "$dir/.version")
  dpkg --compare-versions "$version" ge "$floor"
}

todo=()
for r in "${runtimes[@]}"; do
  read -r name suite floor _ <<< "$r"
  good "$dest/$name" "$floor" || todo+=("$r")
done
[ "${#todo[@]}" -eq 0 ] && exit 0

for cmd in apt-get dpkg-deb; do
  command -v "$cmd" > /dev/null || fail "$cmd is missing (this script needs Debian's apt and dpkg)"
done

# The machine's own Debian mirror: the URI of the sources entry for its
# release (deb822 `.sources` or one-line `.list` files).
mirror() {
  if [ -n "${SLAYERFS_DEBIAN_MIRROR:-}" ]; then
    echo "$SLAYERFS_DEBIAN_MIRROR"
    return
  fi
  local codename files
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  files=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  local found=""
  if [ -n "$files" ] && [ -n "$codename" ]; then
    # shellcheck disable=SC2086
    found=$(awk -v want="$codename" '
      /^[[:space:]]*#/ { next }
      FILENAME ~ /\.sources$/ {
        if ($0 ~ /^[[:space:]]*$/) { uris = ""; suites = ""; next }
        if ($1 == "URIs:") uris = $2
        if ($1 == "Suites:") { for (i = 2; i <= NF; i++) if ($i == want) suites = want }
        if (uris != "" && suites != "") { print uris; exit }
        next
      }
      $1 == "deb" {
        i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == want) { print $i; exit }
      }' $files)
  fi
  echo "${found:-http://deb.debian.org/debian}"
}
uri=$(mirror)
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || fail "$keyring is missing (package debian-archive-keyring)"

work=$(mktemp -d "${TMPDIR:-/tmp}/slayerfs-runtimes.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

# apt NAME SUITE ARGS...: apt-get against SUITE alone, state in $work/NAME.
apt() {
  local tag=$1 suite=$2
  shift 2
  local d="$work/apt-$suite"
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  echo "deb [signed-by=$keyring] $uri $suite main" > "$d/sources.list"
  apt-get -q \
    -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" \
    -o Dir::State::status=/dev/null -o Debug::NoLocking=1 \
    -o APT::Sandbox::User=root "$@" > "$work/$tag.log" 2>&1
}

updated=" "
for r in "${todo[@]}"; do
  read -r name suite floor packages <<< "$r"
  if [[ "$updated" != *" $suite "* ]]; then
    say "reading $suite's package lists from $uri"
    apt "update-$suite" "$suite" update || {
      sed 's/^/  apt-get: /' "$work/update-$suite.log" >&2
      fail "apt-get update of suite $suite from $uri failed (see above)"
    }
    updated+="$suite "
  fi
  debs="$work/debs-$name"
  mkdir -p "$debs"
  # shellcheck disable=SC2086
  (cd "$debs" && apt "download-$name" "$suite" download $packages) || {
    sed 's/^/  apt-get: /' "$work/download-$name.log" >&2
    fail "downloading $packages from $suite failed (see above)"
  }
  first=${packages%% *}
  deb=$(ls "$debs/${first}_"*.deb)
  version=$(dpkg-deb -f "$deb" Version)
  dpkg --compare-versions "$version" ge "$floor" \
    || fail "$suite has $first $version; the tests need $floor or later"
  # Unpacked beside, then moved into place: a half-done unpack is never
  # taken for a runtime.
  rm -rf "$dest/$name.new"
  mkdir -p "$dest/$name.new"
  for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$dest/$name.new"; done
  echo "$version" > "$dest/$name.new/.version"
  rm -rf "$dest/$name"
  mv "$dest/$name.new" "$dest/$name"
  say "$name: $packages $version from $suite in $dest/$name"
done
