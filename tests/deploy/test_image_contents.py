"""The image's contents, without a Docker engine: what the Dockerfile copies (read from its COPY lines) is staged into
a fresh folder, its pip installs run into a new virtual environment (the lock with --require-hashes, from the package
index), and `python -m app` started there with the image's environment and CMD serves the checkpoints in weights/
(mounted there at run time): /ready is 200, the Kubernetes readiness probe passes, every sampling family answers
with an image, and SIGTERM stops it cleanly. A dependency missing from the lock, a file the image does not copy, or
an import of something outside app/ fails here before it fails in a container.

torch is the image's first layer, installed on its own (the Dockerfile's ARG versions, which must be the Makefile's
TORCH_SPEC); here it comes from this machine's disk as `make install` takes it (pip's configured indexes), into a
folder under .cache/staged-image/ that later runs reuse, as Docker reuses an unchanged layer. The first run installs
it (a minute or two, more on a busy machine); every run installs the lock afresh."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from app.models.pipelines import SAMPLE, families_with

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights"
LAYERS = ROOT / ".cache" / "staged-image"
INSTALL_TIMEOUT_S = 1800  # the torch layer's first install reads about 4 GB of wheels (torch and its CUDA runtime)
SERVE_BUDGET_S = 240.0  # importing torch and loading and warming every shipped model, on a busy core

pytestmark = pytest.mark.slow


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def build_args() -> dict[str, str]:
    pairs = (args.split("=", 1) for name, args in instructions() if name == "ARG" and "=" in args)
    return {key: value.strip('"') for key, value in pairs}


def image_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in instructions():
        if name == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def pip_installs() -> list[list[str]]:
    """The argument lists of the Dockerfile's `pip install` commands, in order, build args substituted."""
    values = build_args()
    commands = []
    for name, args in instructions():
        if name != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], command))
            if words[:2] == ["pip", "install"]:
                commands.append(words[2:])
    return commands


def makefile_torch_spec() -> list[str]:
    match = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: TORCH_SPEC"
    return match.group(1).split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{shlex.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def torch_layer(python: Path, torch_install: list[str]) -> Path:
    """The torch layer, built once per torch/torchvision pin into .cache/staged-image/ (a plain --target folder)."""
    pins = [word for word in torch_install if "==" in word]
    layer = LAYERS / "-".join(pin.replace("==", "-") for pin in sorted(pins))
    if not (layer / ".complete").is_file():
        partial = layer.with_name(layer.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        # Same pins as the Dockerfile, from the indexes pip is configured with here (as `make install` installs
        # TORCH_SPEC), not the Dockerfile's --index-url: torch lies on this machine's disk.
        command = [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(partial), *pins]
        run(command, timeout=INSTALL_TIMEOUT_S)
        (partial / ".complete").write_text(" ".join(pins) + "\n")
        shutil.rmtree(layer, ignore_errors=True)
        partial.rename(layer)
    return layer


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict:
    """The image's /app folder and its Python, built from the Dockerfile's own instructions."""
    base = tmp_path_factory.mktemp("image")
    workdir = next(args for name, args in instructions() if name == "WORKDIR")
    app_root = base / workdir.lstrip("/")
    app_root.mkdir(parents=True)
    for source, target in (args.split() for name, args in instructions() if name == "COPY"):
        destination = app_root / target
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, destination)

    venv = base / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", str(venv)], timeout=300)
    python = venv / "bin" / "python"
    # the venv's bundled setuptools would shadow the newer one torch's layer brings (as its install upgrades it in
    # the image)
    run([str(python), "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"], timeout=300)
    torch_install, *installs = pip_installs()
    assert sorted(word for word in torch_install if "==" in word) == sorted(makefile_torch_spec())
    layer = torch_layer(python, torch_install)
    site_packages = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    (site_packages / "torch-layer.pth").write_text(f"{layer}\n")  # below the venv's own packages, like a lower layer

    # this machine's environment (pip's configured indexes among it), less anything that would import from the
    # checkout or another environment, and any FACEGEN_ setting: the server gets the image's and the test's only
    hidden = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    environment = {k: v for k, v in os.environ.items() if k not in hidden and not k.startswith("FACEGEN_")}
    environment["PATH"] = f"{venv / 'bin'}:{os.environ['PATH']}"
    for install in installs:  # the lock, --require-hashes, exactly as the Dockerfile runs it, from WORKDIR
        run([str(python), "-m", "pip", "install", "--quiet", *install], cwd=app_root, env=environment, timeout=900)
    run([str(python), "-m", "pip", "check"], env=environment, timeout=120)
    return {"root": app_root, "python": python, "environment": environment, "base": base}


def readiness_probe_command() -> list[str]:
    """The Kubernetes Deployment's readiness probe (deploy/kubernetes/base), run here as the kubelet runs it."""
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["readinessProbe"]["exec"]["command"]


def request(port: int, method: str, path: str, key: str | None, body: dict | None = None) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"X-API-Key": key} if key else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(staged):
    """`python -m app` as the image's CMD starts it, on a loopback port, against weights/ and the CPU."""
    port, key = free_port(), secrets.token_hex(16)
    cmd = yaml.safe_load(next(args for name, args in instructions() if name == "CMD"))
    assert cmd[:3] == ["python", "-m", "app"]
    cmd = [str(staged["python"]), *cmd[1:]]
    cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1] = "127.0.0.1", str(port)
    environment = {
        **staged["environment"],
        **image_environment(),
        "FACEGEN_WEIGHTS_DIR": str(WEIGHTS),  # docker-compose mounts it at /app/weights
        "FACEGEN_DEVICE": "cpu",
        "FACEGEN_API_KEY": key,
        "FACEGEN_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = open(staged["base"] / "server.log", "w+b")
    process = subprocess.Popen(cmd, cwd=staged["root"], env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"port": port, "key": key, "process": process, "environment": environment, "log": log}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.close()


def server_log(server) -> str:
    server["log"].seek(0)
    return server["log"].read().decode(errors="replace")[-4000:]


def test_the_app_imports_from_the_staged_folder_only(staged):
    probe = "import app, importlib.util; print(app.__file__); print(importlib.util.find_spec('training'))"
    result = run([str(staged["python"]), "-c", probe], cwd=staged["root"], env=staged["environment"], timeout=120)
    app_file, training = result.stdout.split()
    assert Path(app_file).is_relative_to(staged["root"]), app_file
    assert training == "None"  # the image has no training package: the service must not need it


def test_the_readiness_probe_turns_ready_once_the_models_are_warm(staged, server):
    probe = [part.replace("127.0.0.1:8000", f"127.0.0.1:{server['port']}") for part in readiness_probe_command()]
    assert probe[0] == "python"
    probe[0] = str(staged["python"])
    deadline = time.monotonic() + SERVE_BUDGET_S
    while True:
        assert server["process"].poll() is None, f"python -m app exited:\n{server_log(server)}"
        result = subprocess.run(probe, env=server["environment"], capture_output=True, text=True, timeout=30)
        if result.returncode == 0:
            break
        assert time.monotonic() < deadline, f"not ready after {SERVE_BUDGET_S} s:\n{server_log(server)}"
        time.sleep(1)
    # the probe sends the container's key: with a wrong one it fails (401), as it must
    wrong = {**server["environment"], "FACEGEN_API_KEY": "not-the-key"}
    assert subprocess.run(probe, env=wrong, capture_output=True, timeout=30).returncode != 0


def test_ready_serves_every_shipped_checkpoint(server):
    status, _, body = request(server["port"], "GET", "/ready", server["key"])
    assert status == 200, body
    ready = json.loads(body)
    assert ready["status"] == "ready" and ready["weights_verified"] == "verified", ready
    assert ready["loaded"] == sorted(path.stem for path in WEIGHTS.glob("*.safetensors"))
    assert request(server["port"], "GET", "/ready", None)[0] == 401


@pytest.mark.parametrize("family", families_with(SAMPLE))
def test_every_sampling_family_answers_with_an_image(server, family):
    status, content_type, body = request(server["port"], "POST", f"/generate/{family}", server["key"], {"seed": 3})
    assert status == 200, body[:500]
    assert content_type == "image/png"
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.width >= 64 and image.height >= 64  # 64x64 faces, a grid of them with gutters
    low, high = zip(*image.getextrema())
    assert max(high) - min(low) > 64, "a flat image"


def test_sigterm_stops_it_cleanly(server):
    process = server["process"]
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, server_log(server)
