#!/usr/bin/env bash
# Container smoke test: proves the Dockerfile builds and the image serves, with podman.
#
# Meant for a Debian 12 machine as root (CI). It:
#   1. installs podman, runc, mmdebstrap and curl with apt-get when missing;
#   2. builds a minimal Debian base image with mmdebstrap from this machine's own apt sources,
#      with this machine's CA certificates in its system store (package downloads and pip may
#      go through a TLS-intercepting proxy), and imports it into podman -- skipped when the
#      base image already exists (LSRCNN_SMOKE_REBUILD_BASE=1 forces it);
#   3. builds the service image from the repo's Dockerfile (scripts/build_image.sh, what
#      `make image` runs; on that base where Docker Hub cannot be reached);
#   4. runs it, times start-to-ready, POSTs a test image to /upscale?scale=2 and checks that the
#      answer is a PNG twice as wide and high;
#   5. stops it with SIGTERM while a request is in flight and checks that the request still gets
#      its answer and that the server exits cleanly (0 or 143) within the grace period.
# Prints the timing of each stage and the image size. The container is removed on exit; the
# base and service images are kept as a cache for the next run.
#
# Usage: scripts/container_smoke.sh [REPO_ROOT]
# Environment (all optional):
#   LSRCNN_SMOKE_BASE_IMAGE    base image tag        (localhost/lsrcnn-base:bookworm)
#   LSRCNN_SMOKE_IMAGE         service image tag     (localhost/lsrcnn:cpu)
#   LSRCNN_SMOKE_CONTAINER     container name        (lsrcnn-smoke)
#   LSRCNN_SMOKE_PORT          host port on 127.0.0.1 (18000)
#   LSRCNN_SMOKE_READY_TIMEOUT seconds to wait for /health/ready (180)
#   LSRCNN_SMOKE_STOP_TIMEOUT  seconds `podman stop -t` waits before SIGKILL (25; the service's
#                              own graceful timeout is 20 s)
#   LSRCNN_SMOKE_REBUILD_BASE  1 = rebuild the base image even if it exists
#   LSRCNN_SMOKE_SUITE         Debian suite for the base (bookworm)
#   LSRCNN_SMOKE_SOURCES       apt sources file given to mmdebstrap
#                              (/etc/apt/sources.list.d/debian.sources)
set -euo pipefail

ROOT=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
BASE_IMAGE=${LSRCNN_SMOKE_BASE_IMAGE:-localhost/lsrcnn-base:bookworm}
IMAGE=${LSRCNN_SMOKE_IMAGE:-localhost/lsrcnn:cpu}
NAME=${LSRCNN_SMOKE_CONTAINER:-lsrcnn-smoke}
PORT=${LSRCNN_SMOKE_PORT:-18000}
READY_TIMEOUT=${LSRCNN_SMOKE_READY_TIMEOUT:-180}
STOP_TIMEOUT=${LSRCNN_SMOKE_STOP_TIMEOUT:-25}
SUITE=${LSRCNN_SMOKE_SUITE:-bookworm}
SOURCES=${LSRCNN_SMOKE_SOURCES:-/etc/apt/sources.list.d/debian.sources}
TEST_IMAGE="$ROOT/tests/data/Set5/bird.png"

# runc: the default OCI runtime is not always usable. Explicit ulimits: podman's default
# nofile (1048576) is above the hard limit of some sandboxes and then the container fails to start.
PODMAN_OPTS=(--runtime runc --ulimit nofile=16384:16384 --ulimit nproc=16384:16384)

# Without systemd, podman logs errors about healthcheck timers it cannot create; harmless here
# (the healthcheck is run by hand below), so they are filtered out.
no_systemd_noise() { grep -v 'unable to get systemd connection' >&2 || true; }
log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

[[ $(id -u) -eq 0 ]] || die "run as root (rootful podman and mmdebstrap --mode=root)"
[[ -f "$ROOT/Dockerfile" ]] || die "no Dockerfile in $ROOT"
[[ -f "$TEST_IMAGE" ]] || die "missing test image $TEST_IMAGE"

WORK=$(mktemp -d)
cleanup() {
    local rc=$?
    if podman container exists "$NAME" 2>/dev/null; then
        if [[ $rc -ne 0 ]]; then
            echo "--- container logs (last 60 lines) ---" >&2
            podman logs --tail 60 "$NAME" >&2 || true
        fi
        podman rm -f "$NAME" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# --- 0. host tools ---------------------------------------------------------------------------
missing=()
for tool in podman runc mmdebstrap curl od; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing host packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends \
        podman runc mmdebstrap uidmap fuse-overlayfs curl ca-certificates coreutils
fi
podman --version

# --- 1. base image ---------------------------------------------------------------------------
base_s=cached
if [[ ${LSRCNN_SMOKE_REBUILD_BASE:-0} != 1 ]] && podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE exists; skipping mmdebstrap"
else
    t0=$(now)
    LSRCNN_BASE_SUITE=$SUITE LSRCNN_BASE_SOURCES=$SOURCES "$ROOT/scripts/base_image.sh" "$BASE_IMAGE"
    base_s=$(elapsed "$t0" "$(now)")
fi

# --- 2. service image ------------------------------------------------------------------------
log "building $IMAGE from $ROOT with make image's script (FLAVOR=cpu)"
t0=$(now)
# The script `make image` runs: it pulls the default base where Docker Hub answers, else
# builds on $BASE_IMAGE (made above); pip indexes given in the environment are handed on.
CONTAINER_ENGINE=podman FLAVOR=cpu LSRCNN_BASE_IMAGE=$BASE_IMAGE \
    "$ROOT/scripts/build_image.sh" "$IMAGE"
build_s=$(elapsed "$t0" "$(now)")
# Untagged leftovers (the previous image, build stages) would otherwise pile up run after run.
podman image prune -f >/dev/null
size_b=$(podman image inspect --format '{{.Size}}' "$IMAGE")
size_mb=$(awk -v s="$size_b" 'BEGIN { printf "%.1f", s / 1000000 }')
healthcheck=$(podman image inspect --format '{{json .HealthCheck}}' "$IMAGE" 2>/dev/null || true)
[[ -n $healthcheck && $healthcheck != null ]] || die "image has no HEALTHCHECK"
podman run --rm "${PODMAN_OPTS[@]}" --no-healthcheck --entrypoint /opt/venv/bin/python "$IMAGE" \
    -c 'import importlib.util as u, sys; import onnxruntime; sys.exit(u.find_spec("torch") is not None)' \
    || die "the serving image cannot import onnxruntime, or has torch installed"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[[ -n $user && $user != root && $user != 0 && $user != 0:* ]] || die "image runs as root"

# --- 3. start -> ready -----------------------------------------------------------------------
log "starting container $NAME on 127.0.0.1:$PORT"
podman rm -f "$NAME" >/dev/null 2>&1 || true
t0=$(now)
# Hardened like docker-compose.yml: read-only root, no capabilities, no privilege gain.
podman run -d --name "$NAME" "${PODMAN_OPTS[@]}" -p "127.0.0.1:$PORT:8000" \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -e LSRCNN_PROVIDERS=cpu "$IMAGE" \
    >/dev/null 2> >(no_systemd_noise)
url="http://127.0.0.1:$PORT"
deadline=$(( $(date +%s) + READY_TIMEOUT ))
until curl -fsS -o /dev/null --max-time 2 "$url/health/ready" 2>/dev/null; do
    [[ $(podman inspect --format '{{.State.Running}}' "$NAME") == true ]] \
        || die "container exited before it became ready"
    (( $(date +%s) < deadline )) || die "not ready after ${READY_TIMEOUT}s"
    sleep 0.2
done
ready_s=$(elapsed "$t0" "$(now)")
curl -fsS -o /dev/null --max-time 5 "$url/health/live" || die "/health/live failed"
podman healthcheck run "$NAME" >/dev/null || die "the image's HEALTHCHECK reports unhealthy"
# The web page and its script made it into the installed package.
curl -fsS -o /dev/null --max-time 5 "$url/" || die "the web page at / failed"
curl -fsS -o /dev/null --max-time 5 "$url/static/app.js" || die "/static/app.js failed"

# --- 4. upscale ------------------------------------------------------------------------------
png_size() {  # prints "W H" of a PNG, or nothing if the file is not a PNG
    local sig
    sig=$(od -An -tx1 -N8 "$1" | tr -d ' \n')
    [[ $sig == 89504e470d0a1a0a ]] || return 0
    od -An -tu1 -j16 -N8 "$1" | awk '{ printf "%d %d\n",
        (($1 * 256 + $2) * 256 + $3) * 256 + $4, (($5 * 256 + $6) * 256 + $7) * 256 + $8 }'
}
read -r in_w in_h <<<"$(png_size "$TEST_IMAGE")"
log "POST $(basename "$TEST_IMAGE") (${in_w}x${in_h}) to /upscale?scale=2"
code_time=$(curl -sS -o "$WORK/out.png" -w '%{http_code} %{time_total}' --max-time 120 \
    -H 'Content-Type: image/png' --data-binary "@$TEST_IMAGE" "$url/upscale?scale=2")
read -r code upscale_s <<<"$code_time"
[[ $code == 200 ]] || die "/upscale answered HTTP $code: $(head -c 500 "$WORK/out.png")"
out_size=$(png_size "$WORK/out.png")
[[ -n $out_size ]] || die "/upscale answer is not a PNG"
read -r out_w out_h <<<"$out_size"
[[ $out_w -eq $((2 * in_w)) && $out_h -eq $((2 * in_h)) ]] \
    || die "expected $((2 * in_w))x$((2 * in_h)), got ${out_w}x${out_h}"
echo "got a ${out_w}x${out_h} PNG in ${upscale_s}s"

# --- 5. graceful stop ------------------------------------------------------------------------
# A slower request (x4 of a larger image) is in flight when SIGTERM arrives: it must still
# get its full answer before the server exits.
DRAIN_IMAGE="$ROOT/tests/data/Set5/baby.png"
[[ -f $DRAIN_IMAGE ]] || DRAIN_IMAGE=$TEST_IMAGE
read -r d_w d_h <<<"$(png_size "$DRAIN_IMAGE")"
curl -sS -o "$WORK/drain.png" -w '%{http_code}' --max-time 120 -H 'Content-Type: image/png' \
    --data-binary "@$DRAIN_IMAGE" "$url/upscale?scale=4" >"$WORK/drain.code" 2>"$WORK/drain.err" &
drain_pid=$!
sleep 0.5
inflight=no
if kill -0 "$drain_pid" 2>/dev/null; then inflight=yes; fi
log "stopping (SIGTERM, podman stop -t $STOP_TIMEOUT; a request in flight: $inflight)"
t0=$(now)
podman stop -t "$STOP_TIMEOUT" "$NAME" >/dev/null 2> >(no_systemd_noise)
stop_s=$(elapsed "$t0" "$(now)")
wait "$drain_pid" || true
drain_code=$(cat "$WORK/drain.code")
[[ $drain_code == 200 ]] \
    || die "request in flight during shutdown failed: HTTP $drain_code $(cat "$WORK/drain.err")"
[[ $(png_size "$WORK/drain.png") == "$((4 * d_w)) $((4 * d_h))" ]] \
    || die "request in flight during shutdown got a wrong answer"
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
podman logs --tail 8 "$NAME" 2>&1 | sed 's/^/  | /'
case $exit_code in
    0|143) ;;
    137) die "container was killed (exit 137): it did not stop within ${STOP_TIMEOUT}s of SIGTERM" ;;
    *) die "container exited with code $exit_code after SIGTERM" ;;
esac
awk -v s="$stop_s" -v t="$STOP_TIMEOUT" 'BEGIN { exit !(s < t) }' \
    || die "stop took ${stop_s}s (limit ${STOP_TIMEOUT}s)"

# --- summary ---------------------------------------------------------------------------------
cat <<EOF

container smoke test passed
  base image build  : ${base_s}$([[ $base_s == cached ]] || echo s)
  service image build: ${build_s}s
  start -> ready    : ${ready_s}s
  upscale bird.png  : ${upscale_s}s (${in_w}x${in_h} -> ${out_w}x${out_h})
  stop (SIGTERM)    : ${stop_s}s, exit code ${exit_code}; request in flight: ${inflight}, answered 200
  image size        : ${size_mb} MB (${size_b} bytes) $IMAGE
EOF
