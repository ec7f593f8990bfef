# syntax=docker/dockerfile:1
#
# LSRCNN upscaling service image.
#
# CPU (default):
#   docker build -t lsrcnn:cpu .
# GPU (onnxruntime-gpu): the base needs the CUDA runtime + cuDNN whose major versions match the
# onnxruntime-gpu release pip resolves (see "Requirements" in ONNX Runtime's CUDA execution
# provider docs). onnxruntime-gpu 1.31 from PyPI wants CUDA 13.x + cuDNN 9.x and Python >= 3.11
# (older 1.19-1.2x releases: CUDA 12.x + cuDNN 9.x), so e.g. an Ubuntu 24.04 (Python 3.12) image:
#   docker build -t lsrcnn:gpu --build-arg FLAVOR=gpu \
#       --build-arg BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 .
#   docker run --gpus all -p 8000:8000 -e LSRCNN_PROVIDERS=cuda lsrcnn:gpu
#
# Build args:
#   BASE_IMAGE  base for both stages. Must be glibc based (Debian/Ubuntu) and have python3 >= 3.10;
#               if python3 or its venv module is missing (CUDA images) it is installed with apt.
#   FLAVOR      cpu | gpu: the extra of the project that pip installs (onnxruntime or
#               onnxruntime-gpu; never both).
#   PIP_CERT, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL
#               optional, only seen by pip in the build stage and never stored in the final
#               image: e.g. PIP_CERT=/etc/ssl/certs/ca-certificates.crt makes pip trust the base
#               image's system CA store (needed behind a TLS-intercepting proxy) instead of certifi.
#
# Podman: build with `--format docker`, or the HEALTHCHECK is dropped (OCI images have none).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# base: the Python interpreter both stages share (the venv links to it) and the service user.
FROM ${BASE_IMAGE} AS base

SHELL ["/bin/sh", "-eu", "-c"]

# Package versions follow the base image's release, so they are not pinned here.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 10), sys.version'; \
    groupadd --system --gid 10001 app; \
    useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app

# ---------------------------------------------------------------------------------------------
# build: a self-contained venv with the project and its runtime dependencies (no torch).
FROM base AS build

ARG FLAVOR=cpu
ARG PIP_CERT
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN case "${FLAVOR}" in cpu|gpu) ;; *) echo "FLAVOR must be cpu or gpu, got '${FLAVOR}'" >&2; exit 1;; esac; \
    python3 -m venv /opt/venv

WORKDIR /src
COPY . .

# pip compiles the installed modules to .pyc, so the non-root runtime never needs to write them.
# The check (-I: /src is not on sys.path) imports the installed package and fails the build if
# the service (app.main: it imports model.contract) or the bundled ONNX weights did not make it
# into it. pip/setuptools are removed afterwards: the runtime image installs nothing.
RUN /opt/venv/bin/pip install --no-cache-dir ".[${FLAVOR}]"; \
    /opt/venv/bin/python -I -c "if True: \
        import pathlib, onnxruntime, app, app.main, model; \
        weights = sorted(p.name for p in (pathlib.Path(model.__file__).parent / 'weights').glob('*.onnx')); \
        print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), 'weights', weights); \
        assert weights, 'no ONNX weights in the installed package'; \
        assert (pathlib.Path(app.__file__).parent / 'http' / 'static' / 'index.html').is_file(), 'no web page'"; \
    /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel

# ---------------------------------------------------------------------------------------------
# runtime: interpreter + venv only; no compilers, no pip, no source tree, no caches.
FROM base AS runtime

ARG FLAVOR=cpu

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LSRCNN_HOST=0.0.0.0 \
    LSRCNN_ALLOWED_HOSTS="*" \
    LSRCNN_PORT=8000

LABEL org.opencontainers.image.title="lsrcnn" \
      org.opencontainers.image.description="LSTM super-resolution upscaling HTTP service (ONNX Runtime; OpenVINO on x86-64 CPUs)" \
      org.opencontainers.image.licenses="MIT" \
      lsrcnn.flavor="${FLAVOR}"

USER 10001:10001
WORKDIR /home/app

EXPOSE 8000

# Ready = models loaded and warmed (503 before). urlopen raises on any non-2xx status.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('LSRCNN_PORT', '8000'), timeout=4)"]

# uvicorn handles SIGTERM: stops accepting, lets in-flight requests finish
# (LSRCNN_GRACEFUL_TIMEOUT_S, default 20 s), then exits. Give `docker stop -t` / compose's
# stop_grace_period a few seconds more than that.
STOPSIGNAL SIGTERM

# Exec form: the server is PID 1 and receives SIGTERM itself.
CMD ["python", "-m", "app"]
