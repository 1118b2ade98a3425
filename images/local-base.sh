#!/usr/bin/env bash
# Make a base image from Debian packages alone, for a build without a registry:
#
#   images/local-base.sh [NAME]            (default NAME: localhost/spacenit-base:bookworm)
#   BASE_IMAGE=localhost/spacenit-base:bookworm WHEELS=DIR images/build.sh cpu
#
# mmdebstrap writes a minimal Debian root filesystem (Python 3.11, its venv module, CA
# certificates, the user tools, and binutils: the build strips debug symbols from the
# wheels' libraries) as a tarball, and the engine imports it as an image. Both stages
# of images/Dockerfile.cpu then start from it. Needs root (or mmdebstrap's unshare mode)
# and a Debian mirror (DEBIAN_MIRROR, default deb.debian.org).
#
# Environment: CONTAINER_ENGINE (default podman, else docker), DEBIAN_SUITE (bookworm).
set -euo pipefail

name="${1:-localhost/spacenit-base:bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
engine="${CONTAINER_ENGINE:-$(command -v podman > /dev/null 2>&1 && echo podman || echo docker)}"
packages="python3,python3-venv,ca-certificates,passwd,binutils"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# No documentation, manual pages or translations: nothing in the image reads them.
mmdebstrap --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" "$tmp/rootfs.tar" "$mirror"
"$engine" import --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$name"
echo "base image $name ($(tar -tf "$tmp/rootfs.tar" | wc -l) files) from Debian $suite" >&2
