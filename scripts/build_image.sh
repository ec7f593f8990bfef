#!/usr/bin/env bash
# `make image`: the service's container image, with Docker Hub or without it.
#
# With docker (a running daemon) or else podman, it builds the Dockerfile (FLAVOR=cpu unless
# set) on the default base, python:3.11-slim-bookworm. Where that base cannot be pulled (no
# route to Docker Hub), it builds a local Debian base instead (scripts/base_image.sh:
# mmdebstrap, root, podman) and builds on that, trusting this machine's CA bundle.
#
# Usage: scripts/build_image.sh [TAG]        (default lsrcnn:cpu, or lsrcnn:gpu for FLAVOR=gpu)
# Environment: FLAVOR (cpu|gpu), CONTAINER_ENGINE (docker|podman; default: a running docker,
# else podman), LSRCNN_BASE_IMAGE (the local base's tag), and PIP_INDEX_URL /
# PIP_EXTRA_INDEX_URL, handed to pip inside the build when set (a mirror or proxy index).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLAVOR=${FLAVOR:-cpu}
TAG=${1:-lsrcnn:$FLAVOR}
DEFAULT_BASE=python:3.11-slim-bookworm
LOCAL_BASE=${LSRCNN_BASE_IMAGE:-localhost/lsrcnn-base:bookworm}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

ENGINE=${CONTAINER_ENGINE:-}
if [[ -z $ENGINE ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman; fi
fi
if [[ $ENGINE == docker ]]; then
    engine=(docker)
    build=(docker build)
elif [[ $ENGINE == podman ]]; then
    # runc and explicit ulimits: what works on hosts whose defaults podman cannot apply;
    # the docker format keeps the image's HEALTHCHECK.
    engine=(podman)
    build=(podman build --runtime runc --ulimit nofile=16384:16384 --ulimit nproc=16384:16384
           --format docker)
else
    echo "FAIL: neither a running docker nor podman found" >&2
    exit 1
fi

args=(--build-arg "FLAVOR=$FLAVOR")
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    if [[ -n ${!var:-} ]]; then args+=(--build-arg "$var=${!var}"); fi
done
if timeout 120 "${engine[@]}" pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    echo "==> base $DEFAULT_BASE (pulled)" >&2
else
    echo "==> $DEFAULT_BASE cannot be pulled: building on the local base $LOCAL_BASE" >&2
    if ! "${engine[@]}" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        "$ROOT/scripts/base_image.sh" "$LOCAL_BASE"
    fi
    args+=(--build-arg "BASE_IMAGE=$LOCAL_BASE")
    if [[ -s $CA_BUNDLE ]]; then args+=(--build-arg "PIP_CERT=$CA_BUNDLE"); fi
fi
"${build[@]}" "${args[@]}" -t "$TAG" -f "$ROOT/Dockerfile" "$ROOT"
echo "==> built $TAG: $("${engine[@]}" image inspect --format '{{.Size}}' "$TAG" \
    | awk '{ printf "%.0f MB", $1 / 1e6 }')" >&2
