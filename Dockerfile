# facegen service image for an NVIDIA GPU host.
#
# The torch wheel from PyPI bundles its CUDA runtime (nvidia-* wheels), so a slim Python base is enough: the host
# provides only the driver, through the NVIDIA Container Toolkit. PyPI's torch 2.14 is built for CUDA 13 (driver
# R580 or newer); for an older driver, build with TORCH_INDEX_URL set to PyTorch's wheel index of an older CUDA
# (and the matching TORCH_VERSION/TORCHVISION_VERSION, e.g. with a +cu126 suffix).
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL="https://pypi.org/simple"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FACEGEN_WEIGHTS_DIR=/app/weights \
    FACEGEN_DEVICE=auto

WORKDIR /app

# torch first, in its own layer: it is by far the largest and changes least.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The service's other dependencies, exactly as locked, every file checked against its sha256 (`make lock` writes
# requirements/service.lock from pyproject's dependencies, less torch/torchvision, which come from their own index
# above). The app itself is not pip-installed: `python -m app` runs it from /app, so no build backend is fetched.
COPY requirements/service.lock ./requirements/service.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/service.lock \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin facegen \
    && mkdir -p /app/weights \
    && chown 10001:10001 /app/weights
COPY app/ ./app/

# Checkpoints are mounted read-only at /app/weights (docker-compose.yml); nothing is baked in.
USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop): stop accepting, let requests in flight finish for up to 30 s, exit 0; compose waits longer
# (stop_grace_period 40s) before it sends SIGKILL.
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "30"]
