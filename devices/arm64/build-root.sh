#!/usr/bin/env bash
# Build (once) the arm64 Debian root the emulated device runs in, and print its path.
#
# The root is keyed by a hash of its recipe (suite, variant, packages, RECIPE_VERSION), so a
# changed recipe builds a new root next to the old; an unchanged one is reused at once.
# It is built in a temporary folder and renamed into place only when complete, so an
# interrupted build never leaves a half-made root that looks cached.
#
# Needs root, debootstrap and qemu-user-static with the qemu-aarch64 binfmt handler enabled
# (`make device-arm64` installs and enables them).
set -euo pipefail

# Bump RECIPE_VERSION when a change below alters what the root holds.
RECIPE_VERSION=1
SUITE="${EDGEOPS_ARM64_SUITE:-bookworm}"
VARIANT=minbase
PACKAGES="python3,python3-venv,ca-certificates"
CACHE_DIR="${EDGEOPS_DEVICE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeops}"

# The mirror is the one this machine's apt already uses, unless one is given.
host_mirror() {
  local uri
  uri="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list | grep -v -- '-security' | head -n 1 | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
    | awk '{print $1}')"
  [[ -n "$uri" ]] || { echo "build-root.sh: no Debian mirror found in /etc/apt; set EDGEOPS_DEBIAN_MIRROR" >&2; exit 2; }
  echo "$uri"
}
MIRROR="${EDGEOPS_DEBIAN_MIRROR:-$(host_mirror)}"

KEY="$(echo "$RECIPE_VERSION arm64 $SUITE $VARIANT $PACKAGES" | sha256sum | cut -c1-16)"
ROOT="$CACHE_DIR/arm64-root-$KEY"

if [[ -f "$ROOT/.edgeops-root-complete" ]]; then
  echo "$ROOT"
  exit 0
fi

[[ "$(id -u)" = 0 ]] || { echo "build-root.sh: debootstrap and chroot need root (run with sudo)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "build-root.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || {
  echo "build-root.sh: the qemu-aarch64 binfmt handler is not enabled (apt-get install qemu-user-static;" \
    "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64)" >&2
  exit 2
}

mkdir -p "$CACHE_DIR"
BUILD="$(mktemp -d "$CACHE_DIR/arm64-root-$KEY.build.XXXXXX")"
trap 'rm -rf --one-file-system "$BUILD"' EXIT

started=$SECONDS
# The second stage runs arm64 binaries in a chroot (binfmt's qemu handler, flag F, makes that
# work) and mounts /proc in it: a private mount namespace drops those mounts however it ends.
unshare --mount --propagation private \
  debootstrap --arch=arm64 --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$BUILD" "$MIRROR" >&2
rm -rf "$BUILD"/var/cache/apt/archives/*.deb
date -u +%FT%TZ > "$BUILD/.edgeops-root-complete"
mv "$BUILD" "$ROOT"
trap - EXIT
echo "build-root.sh: built $ROOT in $((SECONDS - started)) s" >&2
echo "$ROOT"
