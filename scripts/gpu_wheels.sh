#!/usr/bin/env bash
# Download, on a machine with network, the service's Python packages as CPython 3.12 manylinux x86-64 wheels into
# $GPU_WHEELS (default .gpu-wheels/, ignored by git), for a GPU host that has torch but not them and no network:
# `make gpu-check` there installs them offline. The exact versions and hashes are requirements/service.lock's (what
# the Docker image installs); httpx is added for the check's test client.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.gpu-wheels}
target=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)
mkdir -p "$WHEELS"
"$PYTHON" -m pip download --quiet "${target[@]}" --require-hashes --no-deps -r requirements/service.lock -d "$WHEELS"
# pinned with its own needs the lock lacks (anyio, idna and h11 come from the lock: one version of each)
"$PYTHON" -m pip download --quiet "${target[@]}" --no-deps -d "$WHEELS" httpx==0.28.1 httpcore==1.0.9 certifi==2026.10.19.post1
du -sh "$WHEELS"
