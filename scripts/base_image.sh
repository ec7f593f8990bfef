#!/usr/bin/env bash
# A minimal Debian base image with Python 3.11 for the Dockerfile, built with mmdebstrap from
# this machine's own apt sources and imported into podman: the route for hosts that cannot
# reach Docker Hub. This machine's CA certificates go into the image's system store (package
# downloads and pip may pass a TLS-intercepting proxy).
#
# Usage (root, Debian 12 with podman and mmdebstrap): scripts/base_image.sh [TAG]
#   TAG                   default localhost/lsrcnn-base:bookworm
#   LSRCNN_BASE_SUITE     Debian suite (bookworm)
#   LSRCNN_BASE_SOURCES   apt sources file (/etc/apt/sources.list.d/debian.sources)
set -euo pipefail

TAG=${1:-localhost/lsrcnn-base:bookworm}
SUITE=${LSRCNN_BASE_SUITE:-bookworm}
SOURCES=${LSRCNN_BASE_SOURCES:-/etc/apt/sources.list.d/debian.sources}
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (mmdebstrap --mode=root, rootful podman)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing: apt-get install mmdebstrap"
[[ -f "$SOURCES" ]] || die "apt sources file $SOURCES not found (set LSRCNN_BASE_SOURCES)"
printf '==> building base image %s with mmdebstrap (%s, sources from %s)\n' \
    "$TAG" "$SUITE" "$SOURCES" >&2
# The host's extra CAs (e.g. a TLS proxy's) go into the image's system store; the host's
# bundle replaces the generated one so the image trusts exactly what the host trusts.
# shellcheck disable=SC2016  # $1 is the hook's argument (the rootfs), expanded by mmdebstrap
ca_hook='mkdir -p "$1/usr/local/share/ca-certificates"
    for f in /usr/local/share/ca-certificates/*; do
        if [ -e "$f" ]; then cp -r "$f" "$1/usr/local/share/ca-certificates/"; fi
    done
    chroot "$1" update-ca-certificates >/dev/null
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
    fi'
podman rmi -f "$TAG" >/dev/null 2>&1 || true
# shellcheck disable=SC2016
mmdebstrap --mode=root --variant=minbase --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3,python3-venv,ca-certificates \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="$ca_hook" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    "$SUITE" - "$SOURCES" \
    | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$TAG" >/dev/null
podman run --rm --runtime runc --ulimit nofile=16384:16384 --ulimit nproc=16384:16384 \
    "$TAG" python3 --version
