#!/usr/bin/env bash
# `make gpu-check`: install the wheels of `make gpu-wheels` offline when they are here (into a folder put first on
# PYTHONPATH, so their versions win over the host's and torch stays the host's), then run the acceptance check.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.gpu-wheels}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=${GPU_CHECK_SITE:-/tmp/facegen-gpu-site}
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
