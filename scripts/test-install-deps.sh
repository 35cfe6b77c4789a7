#!/usr/bin/env bash
# Tests scripts/install-deps.sh on machines in other states. Each case runs
# in an isolated root: an overlay over this machine's root filesystem, in a
# private mount namespace, with its changes in a tmpfs that goes with the
# namespace. What the script installs or removes there never touches this
# machine.
#
# Cases: a policy-rc.d of the machine's own (kept as it was) or none (none
# left behind), one package missing; no apt lists; a container runtime from
# another package (a stand-in for Docker's containerd.io, which this
# machine's mirrors do not carry: same name, same conflicts, same commands)
# that is used as it is, or, when installing would remove it, a refusal that
# names it and removes nothing; nothing missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test-install-deps: needs root (mount namespaces, chroot)" >&2
  exit 1
fi
work=$(mktemp -d /var/tmp/slayerfs-deps-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp scripts/install-deps.sh "$work/install-deps.sh"

# A stand-in for Docker's containerd.io package: it conflicts with, replaces
# and provides Debian's containerd and runc, and ships their commands in
# $1 (a directory under /usr, or elsewhere: then they are not on PATH).
fake_runtime_deb() {
  local bindir=$1 out=$2 pkg
  pkg=$(mktemp -d "$work/deb.XXXXXX")
  mkdir -p "$pkg/DEBIAN" "$pkg$bindir"
  for cmd in containerd runc; do
    printf '#!/bin/sh\necho "%s from the stand-in containerd.io"\n' "$cmd" > "$pkg$bindir/$cmd"
    chmod 755 "$pkg$bindir/$cmd"
  done
  cat > "$pkg/DEBIAN/control" <<EOF
Package: containerd.io
Version: 1.7.99-1
Architecture: all
Maintainer: SlayerFS tests <tests@localhost>
Provides: containerd, runc
Conflicts: containerd, runc
Replaces: containerd, runc
Description: stand-in for Docker's containerd.io (tests only)
EOF
  dpkg-deb --root-owner-group -b "$pkg" "$out" > /dev/null
}
fake_runtime_deb /usr/bin "$work/runtime-on-path.deb"
fake_runtime_deb /opt/runtime/bin "$work/runtime-off-path.deb"

# isolated SCRIPT: runs SCRIPT with bash in a fresh isolated root, where
# the script under test is /deps/install-deps.sh and the stand-in packages
# are in /deps. Prints what SCRIPT prints; returns its status.
isolated() {
  local d
  d=$(mktemp -d "$work/root.XXXXXX")
  unshare --mount --propagation private bash -euo pipefail -c '
    d=$1 work=$2 script=$3
    mount -t tmpfs tmpfs "$d"
    mkdir "$d/upper" "$d/work" "$d/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$d/upper,workdir=$d/work" "$d/root"
    r=$d/root
    mount -t proc proc "$r/proc"
    mount --rbind /dev "$r/dev"
    mount -t tmpfs tmpfs "$r/tmp"
    mount -t tmpfs tmpfs "$r/run"
    rm -f "$r/etc/resolv.conf"
    cat /etc/resolv.conf > "$r/etc/resolv.conf"
    mkdir -p "$r/deps"
    cp "$work/install-deps.sh" "$work"/*.deb "$r/deps/"
    exec chroot "$r" /bin/bash -uo pipefail -c "$script"
  ' _ "$d" "$work" "$1"
}

passed=0 failed=0
# case NAME SCRIPT: SCRIPT sets the machine up, runs the script under test
# and checks what it must; its output names what was wrong.
case_() {
  local name=$1 out
  if out=$(isolated "$2" 2>&1); then
    echo "  ok: $name"
    passed=$((passed + 1))
  else
    echo "  FAILED: $name"
    printf '%s\n' "$out" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

# Shell helpers for the cases, inside the isolated root.
helpers='
installed() { dpkg-query -W -f="\${Status}" "$1" 2>/dev/null | grep -q "install ok installed"; }
check() { if ! eval "$1"; then echo "check failed: $1"; exit 1; fi; }
run_deps() { out=$(bash /deps/install-deps.sh 2>&1); rc=$?; printf "%s\n" "$out"; }
# reinstalls PKG: with PKG removed, the script installs it and succeeds.
reinstalls() { dpkg --purge "$1" > /dev/null; run_deps; check "[ $rc -eq 0 ]"; check "installed $1"; }
# runtime_instead DEB: Debian'"'"'s containerd and runc replaced by the stand-in DEB.
runtime_instead() { dpkg --purge --force-depends containerd runc > /dev/null 2>&1; dpkg -i "$1" > /dev/null; }
'

case_ "a policy-rc.d of its own, one package missing" "$helpers"'
printf "#!/bin/sh\n# the machine owner\x27s\nexit 101\n" > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
before=$(md5sum < /usr/sbin/policy-rc.d)
reinstalls time
check "[ \"\$(md5sum < /usr/sbin/policy-rc.d)\" = \"$before\" ]"
check "[ -x /usr/sbin/policy-rc.d ]"
'

case_ "no policy-rc.d, one package missing" "$helpers"'
rm -f /usr/sbin/policy-rc.d
reinstalls time
check "[ ! -e /usr/sbin/policy-rc.d ]"
'

case_ "no apt lists, one package missing" "$helpers"'
rm -rf /var/lib/apt/lists/*
reinstalls apache2-utils
'

case_ "a runtime from another package, its commands on PATH: used" "$helpers"'
runtime_instead /deps/runtime-on-path.deb
run_deps
check "[ $rc -eq 0 ]"
check "installed containerd.io"
check "! installed containerd && ! installed runc"
check "printf %s \"\$out\" | grep -q \"using /usr/bin/containerd (package containerd.io)\""
'

case_ "a runtime from another package that an install would remove: refused" "$helpers"'
runtime_instead /deps/runtime-off-path.deb
run_deps
check "[ $rc -ne 0 ]"
check "installed containerd.io"
check "printf %s \"\$out\" | grep -q \"would remove containerd.io\""
check "printf %s \"\$out\" | grep -q \"nothing was changed\""
'

case_ "nothing missing: silent" "$helpers"'
run_deps
check "[ $rc -eq 0 ]"
check "[ -z \"\$out\" ]"
'

echo "install-deps: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
